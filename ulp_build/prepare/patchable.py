"""Finding the patchable functions of a library: the nop padding `-fpatchable-function-entry`
leaves around each entry.

GCC 12 loses `__patchable_function_entries` records under `--gc-sections` and COMDAT groups, so
the records alone cannot be trusted: every function symbol and every record is checked against
the bytes (14 single-byte nops before the entry, then an optional `endbr64`, then a 2-byte nop),
and the two kinds of disagreement are reported.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ulp_build.elf import R_X86_64_RELATIVE, SHN_UNDEF, STT_FUNC, ElfFile
from ulp_build.prepare import codegen
from ulp_build.prepare.layout import PAD_BEFORE

RECORDS_SECTION = "__patchable_function_entries"
_PAD = b"\x90" * PAD_BEFORE
_ENTRY_NOPS = (b"\x90\x90", codegen.NOP2)


@dataclass(frozen=True)
class PatchableFunction:
    """A function with the padding around its entry, checked against the bytes."""

    entry: int  # the symbol's address (the endbr64, when there is one)
    nop_at: int  # the 2-byte entry nop the universe checker's jump will replace
    normalized: bool  # already one 2-byte nop (66 90), so no thread can stop between two nops
    recorded: bool  # listed in __patchable_function_entries


@dataclass
class Padding:
    """The padded functions of a library by entry, and the records that name no padding."""

    functions: dict[int, PatchableFunction] = field(default_factory=dict)
    records_without_padding: list[int] = field(default_factory=list)

    @property
    def padding_without_record(self) -> list[int]:
        return sorted(e for e, f in self.functions.items() if not f.recorded)


def records(elf: ElfFile) -> list[int]:
    """Pad-start addresses listed in every `__patchable_function_entries` section.

    In a shared library each record is an R_X86_64_RELATIVE slot, so its addend is the truth and
    the section's own bytes may be zero.
    """
    out = []
    for sec in elf.sections:
        if sec.name != RECORDS_SECTION or sec.size == 0:
            continue
        relocated = {
            r.offset: r.addend
            for r in elf.relocations_at(sec.addr, sec.size)
            if r.type == R_X86_64_RELATIVE
        }
        raw = elf.section_data(sec)
        for i, (value,) in enumerate(struct.iter_unpack("<Q", raw[: len(raw) - len(raw) % 8])):
            out.append(relocated.get(sec.addr + 8 * i, value))
    return out


def entry_nop(elf: ElfFile, entry: int) -> tuple[int, bool] | None:
    """(address of the entry nop, already normalized) when `entry` has the padding, else None."""
    # Only the bytes the padding itself needs are read: a padded function can be the last thing
    # in its segment (ld.so's 3-byte __rtld_version_placeholder is), and reading the 4 bytes an
    # endbr64 would take past it would call it unpadded.
    code = elf.code_at(entry - PAD_BEFORE, PAD_BEFORE + 2)
    # The byte before the entry rejects almost every unpadded function before any slicing.
    if code is None or code[PAD_BEFORE - 1] != 0x90 or code[:PAD_BEFORE] != _PAD:
        return None
    at = PAD_BEFORE
    if code[at:] == codegen.ENDBR64[:2]:
        # Only an endbr64 starts so (neither entry nop does): read it and the nop after it.
        code = elf.code_at(entry - PAD_BEFORE, PAD_BEFORE + len(codegen.ENDBR64) + 2)
        if code is None or code[at : at + len(codegen.ENDBR64)] != codegen.ENDBR64:
            return None
        at += len(codegen.ENDBR64)
    nop = code[at : at + 2]
    if nop not in _ENTRY_NOPS:
        return None
    return entry - PAD_BEFORE + at, nop == codegen.NOP2


def find(elf: ElfFile) -> Padding:
    recorded = set()
    result = Padding()
    for pad in records(elf):
        found = entry_nop(elf, pad + PAD_BEFORE)
        if found is None:
            result.records_without_padding.append(pad)
        else:
            recorded.add(pad + PAD_BEFORE)
    candidates = recorded | {
        s.value
        for s in elf.symtab_symbols + elf.dynamic_symbols
        if s.type == STT_FUNC and s.shndx != SHN_UNDEF
    }
    for entry in sorted(candidates):
        found = entry_nop(elf, entry)
        if found is not None:
            result.functions[entry] = PatchableFunction(
                entry, found[0], found[1], entry in recorded
            )
    result.records_without_padding.sort()
    return result
