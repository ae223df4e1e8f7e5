"""Which functions get a trampoline, and the entry padding they will be patched through.

Every exported function is tracked, and every function whose address the library takes itself
(taken_addresses.py), except the untracked ones (layout.DEFAULT_UNTRACKED and
`rewrite --untracked`), the leaves (leaves.py: entered untracked they cannot mix versions, and
tracking them costs the most, as the most called functions are leaves; `rewrite --track-leaves`
tracks them), and their aliases: a name untracks its address, whatever other names it has, and
the library's own address takings of it stay plain, so `&f` is still one value. An IFUNC with
leaves among its implementations, but not only leaves, stays tracked, and its wrapper hands out
the CPU's choice plain when that is one of them (`leaf_choices`). The functions
whose address takings are redirected are the exported ones and the padded ones, so a stripped
library gets the same redirections. A function that is neither was not compiled by gcc with
`ulp cflags`: assembly, mostly, whose address need not be a C function pointer (libffi maps its
trampoline table from the file by that address, and its closures enter
`ffi_closure_unix64_alt` by a jump with two words pushed above the return address); pointed at
a trampoline it would read the trampoline's bytes, or be entered tracked with no return
address on top of the stack. Its address stays plain. A tracked function with the nop padding
of `-fpatchable-function-entry` at its entry can later be replaced live; one without is still
tracked, and reported as not patchable.
"""

from __future__ import annotations

from dataclasses import dataclass

from ulp_build.elf import STT_GNU_IFUNC, ElfFile, Symbol
from ulp_build.prepare import codegen, leaves, patchable, taken_addresses
from ulp_build.prepare.taken_addresses import TakenAddresses


@dataclass(frozen=True)
class Tracked:
    """What gets a trampoline: one per distinct entry address.

    Aliases and symbol versions of one function share its address, so they share one
    trampoline and `&f` is the same whichever name it was looked up by, or wherever the library
    took it.
    """

    functions: list[int]  # entry addresses of tracked FUNC symbols and taken functions, sorted
    ifuncs: list[int]  # addresses of tracked IFUNC resolvers, sorted
    # tracked IFUNC resolver -> its implementations that are leaves, handed out plain when chosen
    leaf_choices: dict[int, tuple[int, ...]]
    symbols: list[Symbol]  # the tracked exported symbols, in .dynsym order
    untracked: list[str]  # the exported names left with a plain entry by name, sorted
    leaves: list[str]  # the exported names left with a plain entry as leaves, sorted
    choosing_leaves: list[str]  # the exported IFUNC names in `leaf_choices`, sorted
    taken: TakenAddresses  # where the library takes its functions' addresses

    @property
    def trampolines(self) -> int:
        return len(self.functions) + len(self.ifuncs)


def select(
    elf: ElfFile,
    exported: list[Symbol],
    untracked: set[str],
    pads: patchable.Padding,
    track_leaves: bool = False,
) -> Tracked:
    every = elf.symtab_symbols + elf.dynamic_symbols
    plain = {s.value for s in every if s.defined and s.name in untracked}
    found = leaves.Leaves(set(), {})
    if not track_leaves:
        found = leaves.find(elf, [s for s in exported if s.value not in plain])
    leaf_entries = found.entries
    functions: set[int] = set()
    ifuncs: set[int] = set()
    left: set[str] = set()
    as_leaves: set[str] = set()
    for sym in exported:
        if sym.name in untracked or sym.value in plain:
            left.add(sym.name)
        elif sym.value in leaf_entries:
            as_leaves.add(sym.name)
        elif sym.type == STT_GNU_IFUNC:
            ifuncs.add(sym.value)
        else:
            functions.add(sym.value)
    known = pads.functions.keys() | functions
    plain |= leaf_entries
    taken = taken_addresses.find(elf, known - plain)
    symbols = [sym for sym in exported if sym.value not in plain and sym.name not in left]
    choices = {r: tuple(sorted(i)) for r, i in found.chosen.items() if r in ifuncs}
    return Tracked(
        sorted(functions | taken.functions),
        sorted(ifuncs),
        choices,
        symbols,
        sorted(left),
        sorted(as_leaves),
        sorted({s.name for s in symbols if s.value in choices}),
        taken,
    )


@dataclass(frozen=True)
class EntryPadding:
    """The padded functions found, how they disagree with their records, and how many entries
    were normalized."""

    patchable: int
    not_patchable: list[str]  # tracked exported names without padding, in .dynsym order
    padding_without_record: list[str]
    records_without_padding: list[str]
    normalized: int


def normalize_padding(
    elf: ElfFile,
    out: bytearray,
    exported: list[Symbol],
    functions: list[int],
    pads: patchable.Padding,
) -> EntryPadding:
    """Make each entry's `90 90` one `66 90` in `out`: a thread is never stopped between two
    nops, so the universe checker's 2-byte jump can later replace it in one write."""
    no_padding = set(functions) - pads.functions.keys()
    # In .dynsym order, which is deterministic; sorting 3000 names would cost more than
    # the trampolines do.
    not_patchable = list(dict.fromkeys(s.name for s in exported if s.value in no_padding))
    padding_without_record = [elf.name_at(a) for a in pads.padding_without_record]
    records_without_padding = [
        elf.name_at(a + patchable.PAD_BEFORE) for a in pads.records_without_padding
    ]
    normalized = 0
    for func in pads.functions.values():
        if not func.normalized:
            off = elf.offset_of(func.nop_at, 2)
            out[off : off + 2] = codegen.NOP2
            normalized += 1
    return EntryPadding(
        len(pads.functions),
        not_patchable,
        padding_without_record,
        records_without_padding,
        normalized,
    )
