"""Other copies of a function's code in its library, which a patch of the function leaves alone.

A patch redirects a function's entry. Code the compiler copied elsewhere never passes through
that entry: the bodies inlined into callers (any exported function built with
`-fno-semantic-interposition` may be, like every static one) and the out-of-line clones
(`foo.constprop.0`, `foo.isra.0`, `foo.part.0`). Those keep running the old code unless the
patch replaces the functions holding them too.

Clones are found by name in `.symtab`. Inlined instances only DWARF records
(`DW_TAG_inlined_subroutine`): a target built without `-g` cannot be checked for them, and
separate debug info (a `.debug` file found by build-id) is not looked for.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ulp_build.elf import STB_GLOBAL, STB_WEAK, STT_FUNC, ElfFile, Symbol

if TYPE_CHECKING:
    from elftools.dwarf.compileunit import CompileUnit
    from elftools.dwarf.die import DIE
    from elftools.dwarf.dwarfinfo import DWARFInfo

# The clones GCC makes of a function: constant-propagated, with scalar-replaced arguments, the
# part a partial inlining left out of line (and clones of those). `foo.cold`, the cold part of
# foo itself, and `foo.localalias`, foo under a local name, are not copies.
_CLONE_SUFFIX = r"(?:\.(?:constprop|isra|part)\.\d+)+"

_GLOBAL = (STB_GLOBAL, STB_WEAK)

# The forms that give DW_AT_high_pc as a length from DW_AT_low_pc rather than an address.
_LENGTH_FORMS = {
    "DW_FORM_data1",
    "DW_FORM_data2",
    "DW_FORM_data4",
    "DW_FORM_data8",
    "DW_FORM_udata",
    "DW_FORM_sdata",
    "DW_FORM_implicit_const",
}


@dataclass
class Copies:
    """Where a function's code also is: the functions it is inlined into, and its clones."""

    inlined_into: set[str] = field(default_factory=set)
    clones: set[str] = field(default_factory=set)


def find(elf: ElfFile, functions: dict[int, str]) -> tuple[dict[int, Copies], str | None]:
    """The copies of each function (entry address -> name) found outside every function of
    `functions` (a copy inside one of them is replaced along with it), only for functions with
    copies; and why the DWARF could not be read, if it could not."""
    out = {addr: Copies() for addr in functions}
    symbols = [s for s in elf.symtab_symbols if s.type == STT_FUNC and s.defined and s.name]
    for addr, name in functions.items():
        clone = re.compile(re.escape(name) + _CLONE_SUFFIX)
        out[addr].clones = {
            s.name for s in symbols if s.value not in functions and clone.fullmatch(s.name)
        }
    unreadable = None
    if elf.section(".debug_info") is not None:
        unreadable = _find_inlined(elf, functions, symbols, out)
    found = {addr: copies for addr, copies in out.items() if copies.inlined_into or copies.clones}
    return found, unreadable


def _find_inlined(
    elf: ElfFile, functions: dict[int, str], symbols: list[Symbol], out: dict[int, Copies]
) -> str | None:
    # Imported here: only a target with DWARF needs pyelftools.
    from elftools.common.exceptions import DWARFError, ELFError
    from elftools.construct import ConstructError
    from elftools.elf.elffile import ELFFile

    try:
        # A linked file's DWARF is final: the relocations --emit-relocs keeps beside it were
        # applied already, and applying them again corrupts it.
        dwarf = ELFFile(io.BytesIO(elf.data)).get_dwarf_info(relocate_dwarf_sections=False)
        _Scan(dwarf, functions, symbols, out).run()
        return None
    # pyelftools reports malformed DWARF with its own errors, and with what a bad offset, form
    # or string raises on the way.
    except (
        ELFError,
        DWARFError,
        ConstructError,
        struct.error,
        ValueError,
        KeyError,
        IndexError,
        EOFError,
    ) as exc:
        return str(exc) or type(exc).__name__


class _Scan:
    """One pass over the DIEs of the units that can hold copies: the subprograms holding the
    functions' entries give their origins, then each inlined instance of one of those origins
    is attributed to the concrete function it sits in."""

    def __init__(
        self,
        dwarf: DWARFInfo,
        functions: dict[int, str],
        symbols: list[Symbol],
        out: dict[int, Copies],
    ) -> None:
        self.dwarf = dwarf
        self.functions = functions
        self.out = out
        self.at: dict[int, list[Symbol]] = {}
        for sym in symbols:
            self.at.setdefault(sym.value, []).append(sym)

    def run(self) -> None:
        origin_of: dict[int, int] = {}  # origin DIE offset -> replaced function's entry
        inlined: list[tuple[DIE, CompileUnit]] = []
        for cu in self._units():
            for die in cu.iter_DIEs():
                if die.tag == "DW_TAG_inlined_subroutine":
                    inlined.append((die, cu))
                elif die.tag == "DW_TAG_subprogram":
                    for lo, _ in self._ranges(die, cu):
                        if lo in self.functions:
                            origin_of[_origin(die).offset] = lo
        for die, cu in inlined:
            addr = origin_of.get(_origin(die).offset)
            if addr is None:
                continue
            holder = die.get_parent()
            while holder is not None and holder.tag != "DW_TAG_subprogram":
                holder = holder.get_parent()
            if holder is None:
                continue
            ranges = self._ranges(holder, cu)
            if not ranges or any(lo <= f < hi for f in self.functions for lo, hi in ranges):
                continue  # an abstract instance (no code), or a function the patch replaces
            self.out[addr].inlined_into.add(self._name(holder, ranges))

    def _units(self) -> list[CompileUnit]:
        """The units to read whole. Without references from one unit into another (as LTO
        and dwz make), an inlined instance is in the unit of its origin, which is the unit of
        the function's code: reading only those keeps a libc's 6 MB of DWARF from costing 20
        seconds. The units are found by .debug_aranges, else by each unit's own ranges."""
        if _refers_across_units(self.dwarf):
            return list(self.dwarf.iter_CUs())
        aranges = self.dwarf.get_aranges()
        if aranges is not None and aranges.entries:
            offsets = {aranges.cu_offset_at_addr(f) for f in self.functions}
            if None not in offsets:
                return [self.dwarf.get_CU_at(offset) for offset in offsets if offset is not None]
        return [
            cu
            for cu in self.dwarf.iter_CUs()
            if any(
                lo <= f < hi
                for lo, hi in self._ranges(cu.get_top_DIE(), cu)
                for f in self.functions
            )
        ]

    def _ranges(self, die: DIE, cu: CompileUnit) -> list[tuple[int, int]]:
        """The address ranges of a DIE's code; none for a DIE without code."""
        attrs = die.attributes
        if "DW_AT_low_pc" in attrs and "DW_AT_high_pc" in attrs:
            lo, high = attrs["DW_AT_low_pc"].value, attrs["DW_AT_high_pc"]
            return [(lo, lo + high.value if high.form in _LENGTH_FORMS else high.value)]
        if "DW_AT_ranges" not in attrs:
            return []
        lists = self.dwarf.range_lists()
        if lists is None:
            return []
        base = cu.get_top_DIE().attributes.get("DW_AT_low_pc")
        base_address = base.value if base is not None else 0
        out = []
        for entry in lists.get_range_list_at_offset(attrs["DW_AT_ranges"].value, cu=cu):
            if hasattr(entry, "base_address"):
                base_address = entry.base_address
            elif entry.is_absolute:
                out.append((entry.begin_offset, entry.end_offset))
            else:
                out.append((base_address + entry.begin_offset, base_address + entry.end_offset))
        return out

    def _name(self, holder: DIE, ranges: list[tuple[int, int]]) -> str:
        """The symbol a patch names the function by (a clone's DWARF name is its origin's):
        the one at the start of its code, global before local, its own name before a
        suffixed one; else its DWARF name."""
        named = [
            s
            for lo, _ in ranges
            for s in self.at.get(lo, [])
            if not s.name.endswith((".cold", ".localalias"))
        ]
        if named:
            best = min(named, key=lambda s: (s.bind not in _GLOBAL, s.name.count("."), s.name))
            return best.name
        die = _origin(holder)
        for attr in ("DW_AT_linkage_name", "DW_AT_name"):
            value: Any = holder.attributes.get(attr) or die.attributes.get(attr)
            if value is not None:
                return value.value.decode(errors="replace")
        return f"the function at {ranges[0][0]:#x}"


def _origin(die: DIE) -> DIE:
    """The DIE a concrete or inlined instance (DW_AT_abstract_origin) or an out-of-line
    definition (DW_AT_specification) comes from, followed to its end: the same for every copy
    of one function."""
    seen = {die.offset}
    while True:
        attr = next(
            (a for a in ("DW_AT_abstract_origin", "DW_AT_specification") if a in die.attributes),
            None,
        )
        if attr is None:
            return die
        die = die.get_DIE_from_attribute(attr)
        if die.offset in seen:  # a malformed cycle
            return die
        seen.add(die.offset)


# Forms of a reference that may leave its unit (DWARF 5, 7.5.5; the GNU one into a dwz file).
_CROSS_UNIT_FORMS = {0x10, 0x16, 0x1C, 0x24, 0x1F20}  # ref_addr, indirect, ref_sup4/8, GNU_ref_alt
_IMPLICIT_CONST = 0x21


def _refers_across_units(dwarf: DWARFInfo) -> bool:
    """Whether any abbreviation of .debug_abbrev has an attribute of a cross-unit form: read
    whole, it is small (a few KB per unit) next to the DIEs it describes."""
    section = dwarf.debug_abbrev_sec
    if section is None:
        return False
    section.stream.seek(0)
    data = section.stream.read(section.size)
    pos = 0

    def uleb() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            byte = data[pos]  # an IndexError past the end: a truncated table
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while pos < len(data):
        if uleb() == 0:  # a table's end
            continue
        uleb()  # the tag
        pos += 1  # DW_CHILDREN_yes or _no
        while True:
            attr, form = uleb(), uleb()
            if attr == 0 and form == 0:
                break
            if form in _CROSS_UNIT_FORMS:
                return True
            if form == _IMPLICIT_CONST:
                uleb()  # its value (signed: skipped alike)
    return False
