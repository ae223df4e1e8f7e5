"""The places where a library takes the address of one of its own functions, and pointing them
at the function's trampoline, so that a call through the pointer (an ops table, a vtable, a
thread start routine, a signal handler, a qsort comparator) enters the library tracked.

A library computes a function's address at load time or run time in two ways only: a relative
relocation (a `R_X86_64_RELATIVE` addend in DT_RELA, or a DT_RELR place's own 8 bytes) whose
value is the entry, or a RIP-relative `lea` in its code whose target is the entry. Calls through
`.dynsym` (GOT slots and `dlsym`) already reach the trampoline. Every way of taking a function's
address then yields the trampoline: pointers stay equal, whoever took them.

The code is not disassembled whole (libc has 400 000 instructions and capstone in Python is
slow per instruction): the bytes are searched for a RIP-relative memory operand (a ModRM byte
of mode 00, r/m 101) whose displacement reaches a known entry, and only the functions holding
such a candidate are disassembled, from their start, so a site is an instruction proven by
decoding, never a guess from bytes.

Not redirected, by design:
- `R_X86_64_IRELATIVE` addends: resolvers, called once by the loader;
- `lea`s inside an IFUNC resolver: they are the implementations it returns, which an exported
  IFUNC already tracks through its wrapper and trampoline (redirected, a call would be tracked
  twice);
- the init, fini and preinit arrays: the loader calls them once, nobody can take them out;
- `__patchable_function_entries` records: they name pads, not entries, and the padding scan
  reads them;
- functions left untracked (the caller removes them from the entries).
A RIP-relative operand at an entry in any other instruction (a `mov` or `cmp` reading the
code there, a 32-bit `lea`) is not an address we can redirect: the function is named.
"""

from __future__ import annotations

import bisect
import re
import struct
from dataclasses import dataclass, field

from ulp_build.elf import (
    DT_FINI_ARRAY,
    DT_FINI_ARRAYSZ,
    DT_INIT_ARRAY,
    DT_INIT_ARRAYSZ,
    DT_PREINIT_ARRAY,
    DT_PREINIT_ARRAYSZ,
    R_X86_64_IRELATIVE,
    R_X86_64_RELATIVE,
    SHF_EXECINSTR,
    STT_FUNC,
    STT_GNU_IFUNC,
    ElfError,
    ElfFile,
)
from ulp_build.prepare import x86_decoder
from ulp_build.prepare.patchable import RECORDS_SECTION

# Where a site's field is: a RELA addend (by the relocation's place), a RELR place's 8 bytes,
# a `lea`'s 32-bit displacement.
RELA, RELR, LEA = "rela", "relr", "lea"

# A ModRM byte with mode 00 and r/m 101 (RIP-relative in 64-bit mode, any register); its
# displacement follows. One byte per match, so that candidates may overlap.
_RIP_MODRM = re.compile(rb"[\x05\x0d\x15\x1d\x25\x2d\x35\x3d]")
_DISP32 = struct.Struct("<i")
# What capstone prints for that operand.
_RIP_OPERAND = re.compile(r"\[rip ([+-]) (0x[0-9a-f]+|\d+)\]")
# The one form redirected: `lea disp32(%rip), %r64`, REX.W 8D ModRM disp32, 7 bytes.
LEA_SIZE = 7
_LEA = re.compile(rb"[\x48-\x4f]\x8d[\x05\x0d\x15\x1d\x25\x2d\x35\x3d](....)", re.DOTALL)
# The sizes of the immediate that may follow the displacement (the RIP base is the end of the
# instruction): none, imm8, imm16, imm32.
_IMMEDIATES = (0, 1, 2, 4)


@dataclass(frozen=True)
class Site:
    """One place where the library takes a function's address, to point at its trampoline."""

    kind: str  # RELA, RELR or LEA
    place: int  # link-time address of the relocated word, or of the displacement
    target: int  # the function entry whose address is taken there


@dataclass
class TakenAddresses:
    """The sites to redirect, and the functions whose address is also taken in a way that
    cannot be (a call through such a pointer enters untracked)."""

    sites: list[Site] = field(default_factory=list)  # sorted by place
    not_redirectable: list[str] = field(default_factory=list)  # function names, sorted

    @property
    def functions(self) -> set[int]:
        return {s.target for s in self.sites}


def resolvers(elf: ElfFile) -> dict[int, int]:
    """IFUNC resolvers: address -> size (0 when unknown), from the symbols and the IRELATIVE
    addends (a stripped library has only those for its local IFUNCs)."""
    found: dict[int, int] = {}
    for sym in elf.symtab_symbols + elf.dynamic_symbols:
        if sym.type == STT_GNU_IFUNC and sym.defined:
            found[sym.value] = max(found.get(sym.value, 0), sym.size)
    for r in elf.relocations.every():
        if r.type == R_X86_64_IRELATIVE:
            found.setdefault(r.addend, 0)
    return found


def find(elf: ElfFile, entries: set[int]) -> TakenAddresses:
    """Every site taking the address of one of `entries` (function entries the caller wants
    tracked), and the names of those whose address is taken in a way that cannot be
    redirected."""
    ifuncs = resolvers(elf)
    entries = entries - ifuncs.keys()
    taken = TakenAddresses()
    unredirectable: set[int] = set()
    _data_sites(elf, entries, taken.sites)
    _code_sites(elf, entries, ifuncs, taken.sites, unredirectable)
    taken.sites.sort(key=lambda s: s.place)
    taken.not_redirectable = sorted({elf.name_at(a) for a in unredirectable})
    return taken


def _called_by_the_loader(elf: ElfFile) -> list[tuple[int, int]]:
    """Ranges whose relocated words are left alone: the init, fini and preinit arrays (the
    loader calls each entry once, at load or exit, and no code can read a pointer out of
    them, so a trampoline there would only cost a tracked call nobody asked for), and the
    `__patchable_function_entries` records."""
    ranges = []
    for start, size in (
        (DT_INIT_ARRAY, DT_INIT_ARRAYSZ),
        (DT_FINI_ARRAY, DT_FINI_ARRAYSZ),
        (DT_PREINIT_ARRAY, DT_PREINIT_ARRAYSZ),
    ):
        addr = elf.dynamic_value(start)
        if addr is not None:
            ranges.append((addr, addr + (elf.dynamic_value(size) or 0)))
    ranges += [(s.addr, s.addr + s.size) for s in elf.sections if s.name == RECORDS_SECTION]
    return ranges


def _data_sites(elf: ElfFile, entries: set[int], sites: list[Site]) -> None:
    skipped = _called_by_the_loader(elf)

    def kept(place: int) -> bool:
        return not any(lo <= place < hi for lo, hi in skipped)

    for r in elf.relocations.every():
        if r.type == R_X86_64_RELATIVE and r.addend in entries and kept(r.offset):
            sites.append(Site(RELA, r.offset, r.addend))
    for place in elf.relocations.relr_places():
        (value,) = struct.unpack("<Q", elf.read(place, 8))
        if value in entries and kept(place):
            sites.append(Site(RELR, place, value))


def _code_sites(
    elf: ElfFile,
    entries: set[int],
    ifuncs: dict[int, int],
    sites: list[Site],
    unredirectable: set[int],
) -> None:
    candidates = _candidates(elf, entries)
    if not candidates:
        return
    # Every address a function is known to start at, so that each candidate is decoded from
    # the start of the function holding it (or of the code before it, in a stripped library).
    sizes = dict(ifuncs)
    for sym in elf.symtab_symbols + elf.dynamic_symbols:
        if sym.type == STT_FUNC and sym.defined:
            sizes[sym.value] = max(sizes.get(sym.value, 0), sym.size)
    for sec in elf.sections:
        if sec.flags & SHF_EXECINSTR and sec.size:
            sizes.setdefault(sec.addr, 0)
    starts = sorted(sizes.keys() | entries)
    groups: dict[int, list[int]] = {}
    for at in candidates:
        start = starts[bisect.bisect_right(starts, at) - 1]
        groups.setdefault(start, []).append(at)

    decoder = x86_decoder.decoder()
    code_sections = [s for s in elf.sections if s.flags & SHF_EXECINSTR]
    for start, group in groups.items():
        size = sizes.get(start, 0)
        in_resolver = start in ifuncs
        # Decode up to the end of the last candidate's longest possible instruction (15 bytes),
        # within the section.
        limit = next((s.addr + s.size for s in code_sections if s.contains(start)), start)
        code = elf.code_at(start, min(group[-1] + 15, limit) - start)
        if not code:
            continue
        pending = iter(group)
        at = next(pending, None)
        for addr, length, mnemonic, operands in decoder.disasm_lite(code, start):
            end = addr + length
            if at is None:
                break
            if at >= end:
                continue
            while at is not None and at < end:
                at = next(pending, None)
            target = rip_target(operands, end)
            if target is None:
                continue  # the candidate's bytes were part of another instruction
            if target not in entries:
                continue
            if in_resolver and (size == 0 or addr < start + size):
                continue  # an IFUNC implementation, tracked by the IFUNC's trampoline
            raw = code[addr - start : end - start]
            if mnemonic == "lea" and length == LEA_SIZE and raw[0] & 0xF8 == 0x48:
                sites.append(Site(LEA, addr + 3, target))
            else:
                unredirectable.add(target)


def rip_target(operands: str, next_ip: int) -> int | None:
    """The address a RIP-relative operand of capstone's text names, for the instruction that
    ends at `next_ip`; None without one."""
    operand = _RIP_OPERAND.search(operands)
    if operand is None:
        return None
    disp = int(operand.group(2), 0)
    return next_ip + (disp if operand.group(1) == "+" else -disp)


def _candidates(elf: ElfFile, entries: set[int]) -> list[int]:
    """Addresses of ModRM bytes whose RIP-relative displacement could reach one of `entries`,
    sorted. Most are chance bytes; decoding tells."""
    # One set lookup per match: libc's code has some 25 000 of them.
    reached = {entry - k for entry in entries for k in _IMMEDIATES}
    found = []
    for sec in elf.sections:
        if not sec.flags & SHF_EXECINSTR:
            continue
        data, end = elf.section_data(sec), sec.addr + 5
        unpack = _DISP32.unpack_from
        found += [
            end + pos - 5
            for m in _RIP_MODRM.finditer(data, 0, len(data) - 4)
            if end + (pos := m.start()) + unpack(data, pos + 1)[0] in reached
        ]
    return found


def redirect(
    out: bytearray, elf: ElfFile, sites: list[Site], trampoline_at: dict[int, int]
) -> dict[int, int]:
    """Point each site at its function's trampoline: a RELR place's 8 bytes and a `lea`'s
    displacement are rewritten in `out`; the new RELA addends are returned by place, for the
    copy of the relocations the loader will read."""
    addends: dict[int, int] = {}
    for site in sites:
        tramp = trampoline_at[site.target]
        if site.kind == RELA:
            addends[site.place] = tramp
        elif site.kind == RELR:
            off = elf.offset_of(site.place, 8)
            out[off : off + 8] = tramp.to_bytes(8, "little")
        else:
            disp = tramp - (site.place + 4)
            if not -(1 << 31) <= disp < 1 << 31:
                raise ElfError(
                    f"{elf.name}: the trampoline of {elf.name_at(site.target)} is out of reach"
                    f" of the lea at {site.place - 3:#x}"
                )
            off = elf.offset_of(site.place, 4)
            out[off : off + 4] = disp.to_bytes(4, "little", signed=True)
    return addends


def lea_displacement(raw: bytes) -> int | None:
    """The displacement of `raw` if it is the form redirected, `lea disp32(%rip), %r64`."""
    m = _LEA.fullmatch(raw)
    return None if m is None else int.from_bytes(m.group(1), "little", signed=True)


def leas_into(elf: ElfFile, lo: int, hi: int, skip: set[str]) -> list[tuple[int, int]]:
    """(displacement's address, target) of the bytes of a `lea disp32(%rip), %r64` in the code
    sections not named in `skip` whose target lies in [lo, hi): how `check` finds redirected
    `lea`s without trusting the rewriter (a target inside the rewriter's own section does not
    happen by chance)."""
    found = []
    for sec in elf.sections:
        if not sec.flags & SHF_EXECINSTR or sec.name in skip:
            continue
        data, base = elf.section_data(sec), sec.addr
        for m in _LEA.finditer(data):
            target = base + m.end() + int.from_bytes(m.group(1), "little", signed=True)
            if lo <= target < hi:
                found.append((base + m.start() + 3, target))
    return found
