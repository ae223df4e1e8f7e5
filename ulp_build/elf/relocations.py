"""The relocations with addends that the dynamic section lists at DT_RELA (`.rela.dyn`)."""

from __future__ import annotations

from dataclasses import dataclass

from ulp_build.elf.constants import DT_RELA, DT_RELASZ, RELA
from ulp_build.elf.dynamic import Dynamic
from ulp_build.elf.image import ElfImage


@dataclass(frozen=True)
class Relocation:
    """One Elf64_Rela: r_info split into its relocation type and symbol index."""

    offset: int
    type: int
    symbol: int
    addend: int


class Relocations:
    """DT_RELA of one file, read on each question: callers ask about a few small ranges, and
    libc has thousands of relocations."""

    def __init__(self, elf: ElfImage, dynamic: Dynamic) -> None:
        self.elf = elf
        self.dynamic = dynamic

    def at(self, vaddr: int, size: int) -> list[Relocation]:
        """The relocations whose target lies in [vaddr, vaddr + size)."""
        elf = self.elf
        addr = self.dynamic.value(DT_RELA)
        total = self.dynamic.value(DT_RELASZ) or 0
        if addr is None or total == 0:
            return []
        off = elf.offset_of(addr, total)
        out = []
        for r_offset, info, addend in RELA.iter_unpack(
            elf.data[off : off + total - total % RELA.size]
        ):
            if vaddr <= r_offset < vaddr + size:
                out.append(Relocation(r_offset, info & 0xFFFFFFFF, info >> 32, addend))
        return out
