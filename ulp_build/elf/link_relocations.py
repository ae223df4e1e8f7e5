"""The link-time relocations a linked file keeps when it is linked with `--emit-relocs`: one
non-allocated SHT_RELA section per allocated section they apply to (`.rela.text`,
`.rela.rodata`, ...), against `.symtab`. They say, for every address the linker filled in, which
symbol and addend it was filled from: what `ulp diff` needs to tell moved code from changed
code, and to move code itself. (The loader's relocations, DT_RELA, are relocations.py.)"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ulp_build.elf.constants import RELA, SHF_ALLOC, SHT_RELA, SHT_SYMTAB
from ulp_build.elf.errors import ElfError
from ulp_build.elf.image import ElfImage, Section


@dataclass(frozen=True)
class LinkRelocation:
    """One Elf64_Rela of a kept section: `offset` is the run-time address of the field (the
    linked file's virtual address), `section` the section it lies in."""

    offset: int
    type: int
    symbol: int  # index in .symtab
    addend: int
    section: Section


class LinkRelocations:
    """Every kept relocation of one linked file, by the section it applies to."""

    def __init__(self, elf: ElfImage) -> None:
        self.elf = elf

    @cached_property
    def every(self) -> list[LinkRelocation]:
        """Sorted by address; empty for a file linked without --emit-relocs."""
        elf, out = self.elf, []
        for sec in elf.sections:
            if sec.type != SHT_RELA or sec.flags & SHF_ALLOC:
                continue
            if not 0 < sec.info < len(elf.sections) or not 0 < sec.link < len(elf.sections):
                raise ElfError(f"{elf.name}: corrupt relocation section {sec.name}")
            if elf.sections[sec.link].type != SHT_SYMTAB:
                continue
            target = elf.sections[sec.info]
            if not target.flags & SHF_ALLOC:
                continue  # debug information: not code or data of the library
            data = elf.section_data(sec)
            out += [
                LinkRelocation(r_offset, info & 0xFFFFFFFF, info >> 32, addend, target)
                for r_offset, info, addend in RELA.iter_unpack(data[: len(data) - len(data) % 24])
            ]
        out.sort(key=lambda r: r.offset)
        return out
