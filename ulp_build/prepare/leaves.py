"""Leaves: exported functions whose whole execution runs no code of their library but their own,
so that entering them untracked cannot mix versions, and tracking them would only cost time
(memcpy, strlen and their kind are called hundreds of millions of times).

Why an untracked leaf never mixes: a call mixes versions only if two pieces of the library's
code that a commit can change are reached within it, one before and one after the commit. A leaf
reaches one: itself, and a patched leaf's universe checker picks one version for the whole call
(the newest, entered untracked). So a function is a leaf when, decoding every instruction of its
symbol's extent, each branch, call or jump stays inside that extent without coming back to its
own entry (which would pass its checker again), or goes to a PLT stub whose GOT slot is bound to
a symbol this library does not define (code of another library), and:
- no indirect call or jump, but one through the GOT slot of such a symbol (`-fno-plt`): a
  pointer could reach any function of the library, and a jump table is not told apart from one
  (not a leaf when unsure);
- no call through this library's own PLT (its exported functions, its IFUNCs): after `rewrite`
  that is a tracked entry, which picks the newest universe, not the one the leaf started in;
- no RIP-relative `lea` of a function entry of the library: a callback handed to another library
  (qsort's comparator) enters tracked and could run a newer universe than its caller;
- no other known function's entry inside its extent (code falling through into it passes that
  function's checker);
- a known size (the symbol's, the same for every alias), all of it decoded: anything else is
  not a leaf.
System calls are fine: the kernel runs no code of the library. Still not seen: another library
calling back into this one by a pointer it was handed earlier, or by name, while a leaf calls it
(docs/writing-patches.md says so).

Decoding 400 000 instructions of a libc with capstone in Python would cost seconds, so a byte
scan decides first what it can: a `call` or `jmp rel32` (E8, E9) whose target is a known
function start of the library, or one of its own PLT stubs, outside the extent or at the entry
makes the function not a leaf. A chance byte can only make a leaf look like a non-leaf, which
merely keeps it tracked; every function called a leaf has been decoded whole.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable

from ulp_build.elf import (
    R_X86_64_GLOB_DAT,
    R_X86_64_JUMP_SLOT,
    SHF_EXECINSTR,
    STT_FUNC,
    STT_GNU_IFUNC,
    ElfFile,
    Symbol,
)
from ulp_build.prepare.taken_addresses import resolvers

_REL32 = re.compile(rb"[\xe8\xe9]", re.DOTALL)
# What a PLT stub starts with: `jmp *slot(%rip)`, after an optional endbr64 and bnd prefix.
_PLT_JUMP = re.compile(rb"(?:\xf3\x0f\x1e\xfa)?\xf2?\xff\x25(....)", re.DOTALL)
_RIP_OPERAND = re.compile(r"\[rip ([+-]) (0x[0-9a-f]+|\d+)\]$")
_BRANCHES = {"call", "jmp", "jrcxz", "jecxz", "loop", "loope", "loopne", "xbegin"}


class _Library:
    """What the decision needs to know of the library, computed once."""

    def __init__(self, elf: ElfFile, library_names: frozenset[str]) -> None:
        self.elf = elf
        starts = set(resolvers(elf))
        for sym in elf.symtab_symbols + elf.dynamic_symbols:
            if sym.type in (STT_FUNC, STT_GNU_IFUNC) and sym.defined:
                starts.add(sym.value)
        self.sorted_starts = sorted(starts)
        # GOT slots bound to a symbol this library does not define: code of another library
        # (but the names the caller says are the library's, for a patch object's imports).
        syms = elf.dynamic_symbols
        self.foreign_slots = {
            r.offset
            for r in elf.relocations.every() + elf.relocations.plt()
            if r.type in (R_X86_64_JUMP_SLOT, R_X86_64_GLOB_DAT)
            and 0 < r.symbol < len(syms)
            and not syms[r.symbol].defined
            and syms[r.symbol].name not in library_names
        }
        self.plt = [
            (s.addr, s.addr + s.size)
            for s in elf.sections
            if s.flags & SHF_EXECINSTR and s.name.startswith(".plt")
        ]
        # Where a direct call or jump certainly enters the library: a known function start,
        # or a stub of its own PLT.
        self.into_library = starts | {
            stub for lo, hi in self.plt for stub in range(lo, hi, 8) if self._own_stub(stub)
        }

    def _own_stub(self, at: int) -> bool:
        code = self.elf.code_at(at, 15)
        m = _PLT_JUMP.match(code or b"")
        return (
            m is not None
            and at + m.end() + int.from_bytes(m.group(1), "little", signed=True)
            not in self.foreign_slots
        )

    def foreign(self, target: int) -> bool:
        """Whether a branch to `target` leaves for another library's code: a PLT stub jumping
        through a GOT slot of a symbol this library does not define."""
        if not any(lo <= target < hi for lo, hi in self.plt):
            return False
        code = self.elf.code_at(target, 15)
        m = _PLT_JUMP.match(code or b"")
        if m is None:
            return False
        slot = target + m.end() + int.from_bytes(m.group(1), "little", signed=True)
        return slot in self.foreign_slots

    def start_inside(self, lo: int, hi: int) -> bool:
        """Whether a known function starts in (lo, hi)."""
        i = bisect.bisect_right(self.sorted_starts, lo)
        return i < len(self.sorted_starts) and self.sorted_starts[i] < hi


def find(
    elf: ElfFile, exported: Iterable[Symbol], library_names: frozenset[str] = frozenset()
) -> set[int]:
    """The entries of the exported FUNC symbols that are leaves. `library_names`: imported
    names that count as code of the library (the packer asks about a patch object, whose calls
    to the target's functions go through its own PLT)."""
    extents: dict[int, int] = {}
    for sym in exported:
        if sym.type == STT_FUNC:
            # Aliases that disagree on the size leave the extent unknown: 0, not a leaf.
            extents[sym.value] = sym.size if extents.get(sym.value, sym.size) == sym.size else 0
    extents = {a: n for a, n in extents.items() if n > 0}
    if not extents:
        return set()
    lib = _Library(elf, library_names)
    to_decode = []
    for entry, size in extents.items():
        code = elf.code_at(entry, size)
        if code is None or lib.start_inside(entry, entry + size):
            continue
        if not _calls_into(lib, code, entry, size):
            to_decode.append((entry, code))
    if not to_decode:
        return set()
    # Imported here: only a rewrite or a check needs it, and `ulp --version` must stay fast.
    import capstone

    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    return {entry for entry, code in to_decode if _decoded_leaf(lib, cs, code, entry)}


def _calls_into(lib: _Library, code: bytes, entry: int, size: int) -> bool:
    """The byte scan: an E8 or E9 whose rel32 reaches a function start of the library or its own
    PLT outside the extent, or the entry itself. Possibly a chance byte: then the function
    merely stays tracked."""
    end = entry + size
    into = lib.into_library
    for m in _REL32.finditer(code, 0, len(code) - 4):
        pos = m.start()
        target = entry + pos + 5 + int.from_bytes(code[pos + 1 : pos + 5], "little", signed=True)
        if target in into and (target == entry or not entry <= target < end):
            return True
    return False


def _decoded_leaf(lib: _Library, cs: object, code: bytes, entry: int) -> bool:
    end = entry + len(code)
    decoded_to = entry
    for addr, length, mnemonic, operands in cs.disasm_lite(code, entry):  # type: ignore[attr-defined]
        decoded_to = addr + length
        op = mnemonic.rsplit(" ", 1)[-1]  # without notrack, bnd, rep prefixes
        if op in _BRANCHES or op.startswith("j"):
            if operands.startswith("0x"):
                target = int(operands, 16)
                inside = entry < target < end
                if not inside and not lib.foreign(target):
                    return False
                continue
            rip = _RIP_OPERAND.search(operands)
            if rip is None or op not in ("call", "jmp"):
                return False
            disp = int(rip.group(2), 0)
            slot = decoded_to + (disp if rip.group(1) == "+" else -disp)
            if slot not in lib.foreign_slots:
                return False
        elif op in ("lcall", "ljmp"):
            return False
        elif op == "lea":
            rip = _RIP_OPERAND.search(operands)
            if rip is not None:
                disp = int(rip.group(2), 0)
                taken = decoded_to + (disp if rip.group(1) == "+" else -disp)
                if taken in lib.into_library:
                    return False
    return decoded_to == end
