"""Leaves: exported functions whose whole execution runs no code but their own (and the
kernel's), so that entering them untracked cannot mix versions, and tracking them would only
cost time (memcpy, strlen and their kind are called hundreds of millions of times).

Why an untracked leaf never mixes: a call mixes versions only if two pieces of the library's
code that a commit can change are reached within it, one before and one after the commit. A leaf
reaches one: itself, and a patched leaf's universe checker picks one version for the whole call
(the newest, entered untracked). So a function is a leaf when, decoding every instruction of its
symbol's extent, each branch stays inside that extent without coming back to its own entry
(which would pass its checker again), and:
- no call or jump out of the extent, to this library or to any other: code of another library
  can call back into this one, by a pointer it was handed earlier or by name, and that call,
  entered tracked by a thread that holds no universe of this library, would run the newest
  version while the leaf runs an older one. The one exception is a call through the PLT to a
  function of another library that ends the process (`__stack_chk_fail`, `abort`: the
  stack-protector and assertion failure paths of otherwise plain functions), which runs no
  code of this library again;
- no indirect call or jump: a pointer could reach any function, and a jump table is not told
  apart from one (not a leaf when unsure);
- no RIP-relative `lea` of a function entry of the library, nor of the rewriter's code (in a
  prepared library, such a `lea` was pointed at a trampoline): a function handing out its own
  functions' addresses is not the plain code this rule is for;
- no other known function's entry inside its extent (code falling through into it passes that
  function's checker); a branch into the middle of another function meets no checker, and is
  fine when the whole of that function is a leaf;
- a known size (the symbol's, the same for every alias), all of it decoded, ending with an
  instruction that does not run on into what follows (a return, a jump, a trap, or a call that
  ends the process): a function whose code runs off its end falls into the next one's entry,
  as glibc's 16-byte `__strcasecmp_avx2` falls into `__strcasecmp_l_avx2`. Anything else is
  not a leaf.
An IFUNC is a leaf when every function whose address its resolver takes is one (whichever the
CPU gets), and the resolver has no indirect jump. When only some are (glibc's `memcpy` has one
variant, for CPUs without AVX, that jumps through a table), the CPU decides: the IFUNC stays
tracked, and its wrapper resolver (codegen.ifunc_wrapper) hands out the chosen variant itself
when it is one of the leaves found here. System calls are fine: the kernel runs no code of the
library. A signal handler that runs while a leaf runs makes calls of its own, as it would
between two calls.

Decoding 400 000 instructions of a libc with capstone in Python would cost seconds, so a byte
scan decides first what it can: a `call` or `jmp rel32` (E8, E9) whose target is a known
function start of the library or any PLT stub, outside the extent or at the entry, makes the
function not a leaf. A chance byte can only make a leaf look like a non-leaf, which merely keeps
it tracked; every function called a leaf has been decoded whole.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ulp_build.elf import (
    R_X86_64_GLOB_DAT,
    R_X86_64_JUMP_SLOT,
    SHF_EXECINSTR,
    STT_FUNC,
    STT_GNU_IFUNC,
    ElfFile,
    Symbol,
)
from ulp_build.prepare import x86_decoder
from ulp_build.prepare.layout import SECTION_TRACK, SECTION_TRAMPOLINES
from ulp_build.prepare.taken_addresses import resolvers, rip_target

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ulp_build.prepare.x86_decoder import Decoder

_REL32 = re.compile(rb"[\xe8\xe9]", re.DOTALL)
# What a PLT stub starts with: `jmp *slot(%rip)`, after an optional endbr64 and bnd prefix.
_PLT_JUMP = re.compile(rb"(?:\xf3\x0f\x1e\xfa)?\xf2?\xff\x25(....)", re.DOTALL)
_BRANCHES = {"call", "jmp", "jrcxz", "jecxz", "loop", "loope", "loopne", "xbegin"}
# Last instructions after which nothing runs on into the next bytes (with `call` when it ends
# the process).
_ENDS = {"ret", "jmp", "ud2", "hlt", "int3"}
# Functions of another library that end the process: a leaf may call them (its failure paths).
ENDS_PROCESS = frozenset(
    {"__stack_chk_fail", "abort", "__assert_fail", "__chk_fail", "__fortify_fail"}
)


class _Library:
    """What the decision needs to know of the library, computed once."""

    def __init__(self, elf: ElfFile) -> None:
        self.elf = elf
        starts = set(resolvers(elf))
        for sym in elf.symtab_symbols + elf.dynamic_symbols:
            if sym.type in (STT_FUNC, STT_GNU_IFUNC) and sym.defined:
                starts.add(sym.value)
        self.sorted_starts = sorted(starts)
        # Every function's extent the symbols give (0 when aliases disagree: unknown).
        self.extents = _extents(
            s for s in elf.symtab_symbols + elf.dynamic_symbols if s.type == STT_FUNC and s.defined
        )
        self._sized = sorted((a, n) for a, n in self.extents.items() if n > 0)
        # GOT slots bound to a function of another library that ends the process.
        syms = elf.dynamic_symbols
        self.ending_slots = {
            r.offset
            for r in elf.relocations.every() + elf.relocations.plt()
            if r.type in (R_X86_64_JUMP_SLOT, R_X86_64_GLOB_DAT)
            and 0 < r.symbol < len(syms)
            and not syms[r.symbol].defined
            and syms[r.symbol].name in ENDS_PROCESS
        }
        self.plt = [
            (s.addr, s.addr + s.size)
            for s in elf.sections
            if s.flags & SHF_EXECINSTR and s.name.startswith(".plt")
        ]
        # Where a direct call or jump certainly leaves the function for other code: a known
        # function start, or a PLT stub but those of the functions that end the process.
        self.other_code = starts | {
            stub for lo, hi in self.plt for stub in range(lo, hi, 8) if not self.ends_process(stub)
        }
        # In a prepared library: the trampolines and wrappers, our code, not the library's.
        self.rewriter_code = [
            (s.addr, s.addr + s.size)
            for s in elf.sections
            if s.name in (SECTION_TRAMPOLINES, SECTION_TRACK)
        ]

    def ends_process(self, target: int) -> bool:
        """Whether a branch to `target` calls a function that ends the process: a PLT stub
        jumping through the GOT slot of such a function."""
        if not any(lo <= target < hi for lo, hi in self.plt):
            return False
        code = self.elf.code_at(target, 15)
        m = _PLT_JUMP.match(code or b"")
        if m is None:
            return False
        slot = target + m.end() + int.from_bytes(m.group(1), "little", signed=True)
        return slot in self.ending_slots

    def function_around(self, address: int) -> int | None:
        """The start of the function whose extent holds `address`, if one does."""
        i = bisect.bisect_right(self._sized, (address, 1 << 64)) - 1
        if i >= 0 and self._sized[i][0] <= address < sum(self._sized[i]):
            return self._sized[i][0]
        return None

    def start_inside(self, lo: int, hi: int) -> bool:
        """Whether a known function starts in (lo, hi)."""
        i = bisect.bisect_right(self.sorted_starts, lo)
        return i < len(self.sorted_starts) and self.sorted_starts[i] < hi


@dataclass(frozen=True)
class Leaves:
    """What `find` decided, by address."""

    entries: set[int]  # FUNC entries that are leaves, and IFUNC resolvers all of whose are
    # IFUNC resolver -> its implementations that are leaves, for every IFUNC with at least one
    implementations: dict[int, frozenset[int]]

    @property
    def chosen(self) -> dict[int, frozenset[int]]:
        """The IFUNCs with leaves among their implementations but not only leaves: tracked,
        unless the CPU gets one of these."""
        return {r: i for r, i in self.implementations.items() if r not in self.entries}


def find(elf: ElfFile, exported: Iterable[Symbol]) -> Leaves:
    """The entries of the exported FUNC symbols that are leaves, the resolvers of the exported
    IFUNCs whose every implementation is one, and each IFUNC's implementations that are."""
    exported = list(exported)
    functions = [s for s in exported if s.type == STT_FUNC]
    ifuncs = _extents(s for s in exported if s.type == STT_GNU_IFUNC)
    if not functions and not ifuncs:
        return Leaves(set(), {})
    lib = _Library(elf)
    # The byte scan first: most non-leaves are never decoded.
    candidates = {
        s.value
        for s in functions
        if s.size > 0 and lib.extents.get(s.value) == s.size and _scanned_leaf(lib, s.value)
    }
    if not candidates and not ifuncs:
        return Leaves(set(), {})
    decide = _Decider(lib, x86_decoder.decoder())
    out = {entry for entry in candidates if decide.leaf(entry)}
    implementations = {}
    for resolver, size in ifuncs.items():
        chosen = decide.implementations(resolver, size)
        found = frozenset(a for a in chosen if decide.leaf(a))
        if found:
            implementations[resolver] = found
            if found == chosen:
                out.add(resolver)
    return Leaves(out, implementations)


def leaf_variants(elf: ElfFile, exported: Iterable[Symbol], among: Iterable[int]) -> set[int]:
    """Which of the functions at `among` are implementations of an exported IFUNC that are
    leaves (handed out plain when the CPU gets them). Only those are decided: for `pack`,
    which asks about the few functions a patch replaces, not every variant of a libc."""
    ifuncs = _extents(s for s in exported if s.type == STT_GNU_IFUNC)
    among = set(among)
    if not ifuncs or not among:
        return set()
    decide = _Decider(_Library(elf), x86_decoder.decoder())
    variants = set().union(*(decide.implementations(r, n) for r, n in ifuncs.items()))
    return {a for a in variants & among if decide.leaf(a)}


def are_leaves(elf: ElfFile, starts: Iterable[int]) -> set[int]:
    """Which of these function starts are leaves by the same rule (for `check`, which finds the
    variants an IFUNC wrapper hands out plain in the wrapper's own code)."""
    starts = list(starts)
    if not starts:
        return set()
    decide = _Decider(_Library(elf), x86_decoder.decoder())
    return {a for a in starts if decide.leaf(a)}


def _extents(symbols: Iterable[Symbol]) -> dict[int, int]:
    """Address -> size; aliases that disagree on the size leave it unknown (0: not a leaf)."""
    out: dict[int, int] = {}
    for sym in symbols:
        out[sym.value] = sym.size if out.get(sym.value, sym.size) == sym.size else 0
    return out


def _scanned_leaf(lib: _Library, entry: int) -> bool:
    size = lib.extents[entry]
    code = lib.elf.code_at(entry, size)
    return (
        code is not None
        and not lib.start_inside(entry, entry + size)
        and not _calls_out(lib, code, entry, size)
    )


def _calls_out(lib: _Library, code: bytes, entry: int, size: int) -> bool:
    """The byte scan: an E8 or E9 whose rel32 reaches a function start of the library or a PLT
    stub outside the extent, or the entry itself. Possibly a chance byte: then the function
    merely stays tracked."""
    end = entry + size
    into = lib.other_code
    for m in _REL32.finditer(code, 0, len(code) - 4):
        pos = m.start()
        target = entry + pos + 5 + int.from_bytes(code[pos + 1 : pos + 5], "little", signed=True)
        if target in into and (target == entry or not entry <= target < end):
            return True
    return False


class _Decider:
    """Leaf or not, per function start, decoded once. A branch into the middle of another
    function passes no checker: it is fine when all of that function's code is (the whole
    of it is then a leaf's code too). That is a greatest fixed point, so a function met again
    while it is being decided counts as a leaf until proven otherwise: two functions that jump
    into each other are leaves when nothing else in them is wrong."""

    def __init__(self, lib: _Library, decoder: Decoder) -> None:
        self.lib = lib
        self.decoder = decoder
        self.known: dict[int, bool] = {}

    def leaf(self, entry: int) -> bool:
        if entry not in self.known:
            self.known[entry] = True  # meanwhile: see the class
            self.known[entry] = self._decoded(entry)
        return self.known[entry]

    def _decoded(self, entry: int) -> bool:
        lib = self.lib
        size = lib.extents.get(entry, 0)
        code = lib.elf.code_at(entry, size) if size > 0 else None
        if code is None or lib.start_inside(entry, entry + size):
            return False
        end = entry + size
        decoded_to = entry
        stops = False  # whether the last instruction keeps the CPU from running on past it
        for addr, length, mnemonic, operands in self.decoder.disasm_lite(code, entry):
            decoded_to = addr + length
            op = mnemonic.rsplit(" ", 1)[-1]  # without notrack, bnd, rep prefixes
            stops = op in _ENDS
            if op in _BRANCHES or op.startswith("j"):
                if operands.startswith("0x"):
                    target = int(operands, 16)
                    if not self._may_branch(target, entry, end):
                        return False
                    stops = stops or (op == "call" and lib.ends_process(target))
                    continue
                slot = rip_target(operands, decoded_to)
                if slot is None or op not in ("call", "jmp") or slot not in lib.ending_slots:
                    return False
                stops = True  # into a function that ends the process
            elif op in ("lcall", "ljmp"):
                return False
            elif op == "lea":
                taken = rip_target(operands, decoded_to)
                if taken is not None and (
                    taken in lib.other_code or any(lo <= taken < hi for lo, hi in lib.rewriter_code)
                ):
                    return False
        return decoded_to == end and stops

    def _may_branch(self, target: int, entry: int, end: int) -> bool:
        if entry < target < end or self.lib.ends_process(target):
            return True
        if target in self.lib.other_code:  # an entry (its checker) or the PLT
            return False
        around = self.lib.function_around(target)
        return around is not None and self.leaf(around)

    def implementations(self, resolver: int, size: int) -> set[int]:
        """The functions an IFUNC resolver may return: every function whose address its code
        takes (`lea f(%rip)`, as glibc's resolvers pick one). Empty, which is no leaf, when it
        is unknown: no size, undecodable code, or an indirect jump (a table could hold
        others)."""
        code = self.lib.elf.code_at(resolver, size) if size > 0 else None
        if code is None:
            return set()
        out = set()
        decoded_to = resolver
        for addr, length, mnemonic, operands in self.decoder.disasm_lite(code, resolver):
            decoded_to = addr + length
            op = mnemonic.rsplit(" ", 1)[-1]
            if op == "jmp" and not operands.startswith("0x"):
                return set()
            taken = rip_target(operands, decoded_to) if op == "lea" else None
            if taken is not None and taken in self.lib.extents:
                out.add(taken)
        return out if decoded_to == resolver + size else set()
