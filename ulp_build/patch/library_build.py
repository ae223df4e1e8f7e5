"""One build of a library as `ulp diff` compares it: its functions and data by name, and what
every address the linker filled in refers to.

Both builds are linked with `--emit-relocs`, so each field the linker filled keeps its
relocation (the symbol and addend it came from). A function's code is compared with those
fields blanked and replaced by what they refer to, resolved to a named function or object and
an offset in it ("the third byte of `table`"), or for data no symbol covers (string literals,
switch tables) to that data's own bytes: so code that only moved compares equal, and code
whose references changed does not. (docs/diff.md.)
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from functools import cached_property

from ulp_build.elf import ElfFile, Symbol
from ulp_build.elf.constants import (
    PT_TLS,
    R_X86_64_32,
    R_X86_64_32S,
    R_X86_64_64,
    R_X86_64_GOTPCREL,
    R_X86_64_GOTPCRELX,
    R_X86_64_PC32,
    R_X86_64_PC64,
    R_X86_64_PLT32,
    R_X86_64_REX_GOTPCRELX,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_WRITE,
    SHN_LORESERVE,
    SHN_UNDEF,
    SHT_NOBITS,
    STB_GLOBAL,
    STB_WEAK,
    STT_FILE,
    STT_FUNC,
    STT_GNU_IFUNC,
    STT_NOTYPE,
    STT_OBJECT,
    STT_SECTION,
    STT_TLS,
)
from ulp_build.elf.image import Section
from ulp_build.elf.relocations import Relocation
from ulp_build.errors import UlpError
from ulp_build.prepare import codegen, patchable, taken_addresses, x86_decoder
from ulp_build.prepare.layout import DESCRIPTOR, DESCRIPTOR_OFFSET, SECTION_DATA

# gcc names a static object NAME.N, N counting in its file (_renumbered_constant).
NUMBERED = re.compile(r"^(.*)\.\d+$")

# How deep references from data to data are followed when comparing (_key).
_DEEPEST = 4

# The part of a function the compiler moved out of line (`foo.cold`): only foo's own code (its
# jumps, its switch tables) enters it, and it has no entry of its own.
_COLD = ".cold"

GOT_LOADS = {R_X86_64_GOTPCREL, R_X86_64_GOTPCRELX, R_X86_64_REX_GOTPCRELX}
PC_RELATIVE = {R_X86_64_PC32, R_X86_64_PLT32, R_X86_64_PC64} | GOT_LOADS
# The thread-local kinds (TLSGD, GOTTPOFF, TLSDESC, ...): 16 to 23 and 34 to 36.
TLS = {16, 17, 18, 19, 20, 21, 22, 23, 34, 35, 36}
# The field's size, by type: 8 bytes for the 64-bit ones, none for TLSDESC_CALL (a mark on the
# call), 4 for the rest.
WIDTH = {R_X86_64_64: 8, R_X86_64_PC64: 8, 16: 8, 17: 8, 18: 8, 35: 0}

RELOCATION_NAMES = {
    R_X86_64_64: "R_X86_64_64",
    R_X86_64_PC32: "R_X86_64_PC32",
    R_X86_64_PLT32: "R_X86_64_PLT32",
    R_X86_64_GOTPCREL: "R_X86_64_GOTPCREL",
    R_X86_64_32: "R_X86_64_32",
    R_X86_64_32S: "R_X86_64_32S",
    R_X86_64_PC64: "R_X86_64_PC64",
    R_X86_64_GOTPCRELX: "R_X86_64_GOTPCRELX",
    R_X86_64_REX_GOTPCRELX: "R_X86_64_REX_GOTPCRELX",
}


def width(kind: int) -> int:
    return WIDTH.get(kind, 4)


@dataclass(frozen=True)
class Item:
    """A function or data object of the build: `key` names it in both builds (a static one
    with its source file, as two files may each have a static of that name)."""

    key: str
    symbol: Symbol
    section: Section

    @property
    def name(self) -> str:
        return self.symbol.name

    @property
    def start(self) -> int:
        return self.symbol.value

    @property
    def end(self) -> int:
        return self.symbol.value + self.symbol.size

    @property
    def is_function(self) -> bool:
        return self.symbol.type == STT_FUNC


@dataclass(frozen=True)
class Region:
    """Data no symbol covers, referred to at `start` (a string literal, a switch table):
    it runs to the next place anything refers to or a symbol starts."""

    section: Section
    start: int
    end: int


@dataclass(frozen=True)
class Target:
    """What one filled field refers to. `kind`: "item" (a function or object of the build,
    at `offset` from its start), "region", "external" (a symbol of another object, `name`),
    "got" (the GOT slot of `item` or of the external `name`: the field is a GOT load),
    "tls" or "ifunc" (a function the loader picks, `name`). `value` is the field's symbol
    plus addend, S + A, from which a moved field is computed again."""

    kind: str
    value: int
    item: Item | None = None
    offset: int = 0
    region: Region | None = None
    name: str = ""


class LibraryBuild:
    """The functions, objects and kept relocations of one linked build."""

    def __init__(self, elf: ElfFile) -> None:
        self.elf = elf
        # Those of the loaded sections only: DWARF's are not code or data of the library.
        self.relocations = sorted(
            (r for table in elf.link_relocations if table.applies_to.flags & SHF_ALLOC
             for r in table.every),
            key=lambda r: r.offset,
        )  # fmt: skip
        if not self.relocations:
            raise UlpError(
                f"{elf.name}: no link-time relocations: link it with -Wl,--emit-relocs"
                " (docs/diff.md)"
            )
        self.symbols = elf.symtab_symbols
        if not self.symbols:
            raise UlpError(f"{elf.name}: no .symtab (stripped?): `ulp diff` needs it")
        self._places = [r.offset for r in self.relocations]
        self._decoded: dict[int, list[tuple[int, int]]] = {}
        self._decoder = x86_decoder.decoder()

    # -- functions and objects ----------------------------------------------------------------

    @cached_property
    def items(self) -> dict[str, Item]:
        """Every function and data object with a size, by key (the first of those that share
        one: see `shared_keys`)."""
        return {key: found[0] for key, found in self._all_items.items()}

    @cached_property
    def shared_keys(self) -> dict[str, list[Item]]:
        """The keys more than one function or object has, with each of them in `.symtab`
        order: statics of one name in two source files of one name (`lib/util.c` and
        `src/util.c`, both compiled as `util.c`), which no key tells apart."""
        return {key: found for key, found in self._all_items.items() if len(found) > 1}

    def all_items(self, key: str) -> list[Item]:
        """Every function or object with this key, in `.symtab` order."""
        return self._all_items.get(key, [])

    def counterpart(self, item: Item, other: LibraryBuild) -> Item | None:
        """The function or object of `other` that is `item` of this build: the one with its
        key, or of several with its key, the one at its place among them (the link's order)."""
        mine, theirs = self.all_items(item.key), other.all_items(item.key)
        if len(mine) != len(theirs):
            return theirs[0] if len(theirs) == 1 == len(mine) else None
        at = next((n for n, i in enumerate(mine) if i.start == item.start), None)
        return None if at is None else theirs[at]

    @cached_property
    def _all_items(self) -> dict[str, list[Item]]:
        out: dict[str, list[Item]] = {}
        source = ""
        for sym in self.symbols:
            if sym.type == STT_FILE:
                source = sym.name
                continue
            if sym.type not in (STT_FUNC, STT_OBJECT, STT_TLS) or sym.size == 0:
                continue
            if sym.shndx == SHN_UNDEF or sym.shndx >= SHN_LORESERVE:
                continue
            if sym.bind in (STB_GLOBAL, STB_WEAK):
                key = sym.name
            else:
                key = f"{source}:{sym.name}" if source else sym.name
            out.setdefault(key, []).append(Item(key, sym, self.elf.sections[sym.shndx]))
        return out

    @cached_property
    def _by_address(self) -> tuple[list[int], list[Item]]:
        ordered = sorted(
            (i for found in self._all_items.values() for i in found if i.symbol.type != STT_TLS),
            key=lambda i: (i.start, -i.symbol.size),
        )
        return [i.start for i in ordered], ordered

    @cached_property
    def _reach(self) -> list[int]:
        """Per item of `_by_address`, the highest end of it and every item before it: where a
        search backwards from an address no item covers can stop (string literals, switch
        tables), rather than walk every item of the 16 MiB below it (six minutes of a `diff`
        of libcrypto)."""
        reach, highest = [], 0
        for item in self._by_address[1]:
            highest = max(highest, item.end)
            reach.append(highest)
        return reach

    def split_from(self, key: str) -> str | None:
        """The key of the function that `key`, a part the compiler moved out of line
        (`foo.cold`), was split from: a static of its file, or a global (the cold part is local
        either way). None for any other key."""
        if not key.endswith(_COLD):
            return None
        name = key[: -len(_COLD)]
        for parent in (name, name.split(":")[-1]):
            item = self.items.get(parent)
            if item is not None and item.is_function:
                return parent
        return None

    def item_at(self, addr: int) -> Item | None:
        """The function or object covering `addr` (its start, or inside it)."""
        starts, ordered = self._by_address
        reach = self._reach
        at = bisect.bisect_right(starts, addr) - 1
        while at >= 0 and starts[at] > addr - (1 << 24) and reach[at] > addr:
            item = ordered[at]
            if item.start <= addr < item.end:
                return item
            at -= 1
        return None

    def item_of_symbol(self, sym: Symbol) -> Item | None:
        starts, ordered = self._by_address
        at = bisect.bisect_left(starts, sym.value)
        while at < len(starts) and starts[at] == sym.value:
            if ordered[at].symbol.type == sym.type or sym.type not in (STT_FUNC, STT_OBJECT):
                return ordered[at]
            at += 1
        return self.item_at(sym.value)

    def relocations_in(self, start: int, end: int) -> list[Relocation]:
        lo = bisect.bisect_left(self._places, start)
        hi = bisect.bisect_left(self._places, end)
        return self.relocations[lo:hi]

    def code(self, item: Item) -> bytes:
        return self.elf.read(item.start, item.symbol.size)

    # -- what a field refers to ---------------------------------------------------------------

    def instruction_ends(self, item: Item) -> list[tuple[int, int]]:
        """(start, end) of each instruction of a function, decoded in order, once (by address:
        two statics may share a key)."""
        decoded = self._decoded.get(item.start)
        if decoded is None:
            lite = self._decoder.disasm_lite(self.code(item), item.start)
            decoded = [(a, a + n) for a, n, _m, _o in lite]
            if not decoded or decoded[-1][1] != item.end:
                raise UlpError(f"{self.elf.name}: {item.key}: its code does not decode to its end")
            self._decoded[item.start] = decoded
        return decoded

    @staticmethod
    def _referred_address(
        rel: Relocation, value: int, next_instruction: int | None, region_start: int | None
    ) -> int:
        """The address a field of `rel` with symbol plus addend `value` refers to: for a
        RIP-relative field, taken from its instruction's end (in code) or, in data, from where
        the region holding it starts (a switch table's entries are distances from its start)."""
        if rel.type not in PC_RELATIVE:
            return value
        base = next_instruction if next_instruction is not None else region_start
        return value if base is None else value + base - rel.offset

    def target(
        self, rel: Relocation, next_instruction: int | None, region_start: int | None = None
    ) -> Target:
        """What `rel` refers to: in code, given the end of its instruction (the base of a
        RIP-relative field); in data, given where the region or object holding it starts (a
        switch table's entries are distances from the table's start)."""
        if rel.symbol >= len(self.symbols):
            raise UlpError(f"{self.elf.name}: corrupt relocation at {rel.offset:#x}")
        sym = self.symbols[rel.symbol]
        value = sym.value + rel.addend
        if sym.shndx == SHN_UNDEF:
            return Target("got" if rel.type in GOT_LOADS else "external", value, name=sym.name)
        if rel.type in TLS or sym.type == STT_TLS:
            return Target("tls", value, name=sym.name)
        if sym.type == STT_GNU_IFUNC:
            # Its value is the resolver's address, not the function's: the field points to a
            # PLT entry the loader fills with what the resolver picks.
            return Target("ifunc", value, name=sym.name)
        named = sym.type != STT_SECTION and sym.name
        if rel.type in GOT_LOADS:
            item = self.item_of_symbol(sym) if named else None
            return Target("got", value, item=item, name=sym.name)
        if named and sym.type in (STT_FUNC, STT_OBJECT):
            item = self.item_of_symbol(sym)
            if item is not None:
                return Target("item", value, item=item, offset=value - item.start)
        if named and sym.type == STT_NOTYPE and self.item_at(sym.value) is None:
            # A label the assembler kept (`.LC0`, a constant in a mergeable section): the
            # constant starts there, wherever the field points (gcc passes `.LC0+9`, the end
            # of a 9-byte string, and computes its start from that).
            region = self.region_at(sym.value)
            if region is not None:
                return Target("region", value, region=region, offset=value - region.start)
        addr = self._referred_address(rel, value, next_instruction, region_start)
        item = self.item_at(addr)
        if item is not None:
            return Target("item", value, item=item, offset=value - item.start)
        region = self.region_at(addr)
        if region is None:
            return Target("external", value, name=sym.name or f"{addr:#x}")
        return Target("region", value, region=region, offset=value - region.start)

    @cached_property
    def _region_bounds(self) -> dict[int, list[int]]:
        """Per section index, the sorted places where a region may start or must end."""
        bounds: dict[int, set[int]] = {}
        every = [i for found in self._all_items.values() for i in found]
        for item in every:
            bounds.setdefault(item.section.index, set()).update((item.start, item.end))
        for sec in self.elf.sections:
            bounds.setdefault(sec.index, set()).add(sec.addr + sec.size)
        for item in every:
            if not item.is_function:
                continue
            for start, end in self.instruction_ends(item):
                for rel in self.relocations_in(start, end):
                    sym = self.symbols[rel.symbol] if rel.symbol < len(self.symbols) else None
                    # A section's symbol, or a local label: the assembler keeps `.LC0` for a
                    # constant in a mergeable section (`.rodata.cst8`), which the linker may
                    # merge, so its readers refer to it by name. Either starts a region.
                    if sym is None or sym.shndx == SHN_UNDEF:
                        continue
                    if sym.type not in (STT_SECTION, STT_NOTYPE):
                        continue
                    if sym.type == STT_NOTYPE and sym.name:
                        addr = sym.value  # where its constant starts (target)
                    else:
                        addr = self._referred_address(rel, sym.value + rel.addend, end, None)
                    sec = self.section_at(addr)
                    if sec is not None:
                        bounds.setdefault(sec.index, set()).add(addr)
        return {k: sorted(v) for k, v in bounds.items()}

    def section_at(self, addr: int) -> Section | None:
        for sec in self.elf.sections:
            if sec.addr and sec.contains(addr) and sec.flags & SHF_ALLOC:
                return sec
        return None

    def region_at(self, addr: int) -> Region | None:
        sec = self.section_at(addr)
        if sec is None:
            return None
        bounds = self._region_bounds.get(sec.index, [])
        after = bisect.bisect_right(bounds, addr)
        end = bounds[after] if after < len(bounds) else sec.addr + sec.size
        return Region(sec, addr, self._string_end(sec, addr, end))

    def _string_end(self, sec: Section, start: int, end: int) -> int:
        """Where read-only data from `start` that holds no zero byte before `end` ends: past
        its first zero byte. The linker merges a string into the tail of a longer one (": "
        into "error: "), so a reference to the short one cuts the long one's region short of
        its terminator; a copy of that region would be a string running into other data."""
        if sec.flags & (SHF_WRITE | SHF_EXECINSTR) or sec.type == SHT_NOBITS:
            return end
        if b"\0" in self.elf.read(start, end - start):
            return end
        # The rest of the section searched where it lies, not copied for every region: a
        # large .rodata has many.
        size = sec.addr + sec.size - end
        at = self.elf.offset_of(end, size)
        found = self.elf.data.find(b"\0", at, at + size)
        if found < 0:
            return end
        nul = found - at
        if self.relocations_in(start, end + nul + 1):
            return end  # a table of addresses, not a string
        return end + nul + 1

    def region_bytes(self, region: Region) -> bytes:
        if region.section.type == SHT_NOBITS:
            return bytes(region.end - region.start)
        return self.elf.read(region.start, region.end - region.start)

    @cached_property
    def trampolines(self) -> dict[int, int]:
        """A prepared build's trampolines: each one's address -> the function it enters
        (docs/preparing-libraries.md); none for a build not prepared."""
        data = self.elf.section(SECTION_DATA)
        if data is None:
            return {}
        d = DESCRIPTOR.unpack(self.elf.read(data.addr + DESCRIPTOR_OFFSET, DESCRIPTOR.size))
        out = {}
        for n in range(d["trampoline_count"]):
            at = d["trampolines"] + n * d["trampoline_size"]
            decoded = codegen.decode_trampoline(self.elf.read(at, d["trampoline_size"]), at)
            if decoded is not None and not decoded.indirect:
                out[at] = decoded.target
        return out

    # -- what compares equal ------------------------------------------------------------------

    def _key(self, target: Target, depth: int) -> tuple[object, ...]:
        if target.kind == "item":
            item = target.item
            assert item is not None
            if depth < _DEEPEST and self._renumbered_constant(item):
                shape = self.data_shape(item.start, item.end, item.section, depth + 1)
                return ("constant", target.offset, shape)
            return ("item", item.key, target.offset)
        if target.kind == "got":
            return ("got", target.item.key if target.item else target.name)
        if target.kind == "region" and target.region is not None:
            # Its bytes count wherever it is referred from: a table of pointers to strings
            # (`.data.rel.ro`) changes when one of its strings does. Past a few levels only
            # the bytes are compared, not what they refer to (data rarely chains that deep).
            region = target.region
            end = self._unpadded_end(region)
            if depth >= _DEEPEST:
                return ("region", target.offset, self.region_bytes(region)[: end - region.start])
            inner = self.data_shape(region.start, end, region.section, depth + 1)
            return ("region", target.offset, inner)
        return (target.kind, target.name, target.value if target.kind == "tls" else 0)

    @staticmethod
    def _renumbered_constant(item: Item) -> bool:
        """A read-only object of one file that gcc numbers (`CSWTCH.14`, the table it turns a
        switch into; `table.0`, a function's static const), counting in its file: a declaration
        added anywhere in the file renumbers it, so it is compared by its value, not its name.
        Readers of the same values, under another number, are the same code."""
        sym = item.symbol
        return (
            not item.is_function
            and sym.bind not in (STB_GLOBAL, STB_WEAK)
            and not item.section.flags & SHF_WRITE
            and item.section.type != SHT_NOBITS
            and NUMBERED.match(item.name) is not None
        )

    def _unpadded_end(self, region: Region) -> int:
        """Where a region's data ends without the zeros after its last nonzero byte: the
        padding that aligns what follows it (a switch table, a 16-byte constant) goes, as its
        length depends on the data before, not on this. A string literal's terminator goes
        with it: one zero byte of padding (an 8-byte constant before a 16-byte one) could not
        be told from it, and every string has one."""
        if region.section.type == SHT_NOBITS:
            return region.end
        raw = self.elf.read(region.start, region.end - region.start)
        fields = [r.offset + width(r.type) for r in self.relocations_in(region.start, region.end)]
        return max([region.start + len(raw.rstrip(b"\0")), *fields])

    def data_shape(
        self, start: int, end: int, section: Section, depth: int = 0
    ) -> tuple[object, ...]:
        """Data compared: its bytes with filled fields blanked, and what each field refers to
        (a switch table's entries, as places in their function)."""
        kind = "bss" if section.type == SHT_NOBITS else "data"
        writable = bool(section.flags & SHF_WRITE)
        if section.type == SHT_NOBITS:
            return (kind, writable, end - start)
        raw = bytearray(self.elf.read(start, end - start))
        fields = []
        for rel in self.relocations_in(start, end):
            at = rel.offset - start
            raw[at : at + width(rel.type)] = bytes(width(rel.type))
            target = self.target(rel, None, region_start=start)
            fields.append((at, rel.type, self._key(target, depth + 1)))
        return (kind, writable, bytes(raw), tuple(fields))

    def function_shape(self, item: Item) -> tuple[object, ...]:
        """A function compared: its code with filled fields blanked, the two entry bytes a
        prepared library rewrites blanked, and what each field refers to."""
        raw = bytearray(self.code(item))
        nop = patchable.entry_nop(self.elf, item.start)
        if nop is not None:
            at = nop[0] - item.start
            raw[at : at + 2] = b"\0\0"
        fields = []
        for start, end in self.instruction_ends(item):
            relocations = self.relocations_in(start, end)
            if not relocations and end - start == taken_addresses.LEA_SIZE:
                self._undo_redirect(raw, start - item.start, end)
            for rel in relocations:
                at = rel.offset - item.start
                raw[at : at + width(rel.type)] = bytes(width(rel.type))
                fields.append((at, rel.type, self._key(self.target(rel, end), 0)))
        return (bytes(raw), tuple(fields))

    def _undo_redirect(self, raw: bytearray, at: int, end: int) -> None:
        """Point a `lea` the rewriter redirected to a trampoline (the instruction at `at` in a
        function's code `raw`, ending at address `end`) at the function again. A function that
        stores its own address (`parser->processor = this_processor`) has a `lea` into its own
        section, which the assembler resolved and kept no relocation for: its bytes are all
        there is to compare, and the build not prepared has the function's address there."""
        disp = taken_addresses.lea_displacement(bytes(raw[at : at + taken_addresses.LEA_SIZE]))
        entered = None if disp is None else self.trampolines.get(end + disp)
        if entered is not None:
            raw[at + 3 : at + 7] = (entered - end).to_bytes(4, "little", signed=True)

    def _fields(self, item: Item) -> list[tuple[Relocation, int | None]]:
        """Each filled field of a function or object, with the address its value is relative
        to when it is RIP-relative (its instruction's end; None in data)."""
        if item.is_function:
            return [
                (r, end)
                for start, end in self.instruction_ends(item)
                for r in self.relocations_in(start, end)
            ]
        if item.symbol.type == STT_TLS:
            return []
        return [(r, None) for r in self.relocations_in(item.start, item.end)]

    def referred(self, item: Item) -> set[str]:
        """The keys of the functions and objects a function's or object's fields refer to."""
        out = set()
        for rel, end in self._fields(item):
            target = self.target(rel, end, region_start=item.start)
            if target.item is not None:
                out.add(target.item.key)
        return out

    def inside(self, item: Item) -> set[str]:
        """The keys of the functions a function's or object's fields point inside of, past
        their entry: a `foo.cold` jumping back into foo, a table of label addresses."""
        out = set()
        for rel, end in self._fields(item):
            target = self.target(rel, end, region_start=item.start)
            if target.item is None or not target.item.is_function:
                continue
            addr = self._referred_address(rel, target.value, end, item.start)
            if addr != target.item.start:
                out.add(target.item.key)
        return out

    def object_shape(self, item: Item) -> tuple[object, ...]:
        start = item.start
        if item.symbol.type == STT_TLS:
            # A thread-local variable's value is its offset in the TLS template.
            tls = next((s for s in self.elf.segments if s.type == PT_TLS), None)
            start += tls.vaddr if tls is not None else 0
        return self.data_shape(start, start + item.symbol.size, item.section)
