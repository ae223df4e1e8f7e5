"""The relocations with addends that the dynamic section lists at DT_RELA (`.rela.dyn`) and at
DT_JMPREL (`.rela.plt`), the places of the packed relative relocations at DT_RELR, and the
link-time relocations `ld --emit-relocs` leaves in non-allocated sections (`.rela.text`, ...),
found by their section headers."""

from __future__ import annotations

import struct
from functools import cached_property
from typing import NamedTuple

from ulp_build.elf.constants import (
    DT_JMPREL,
    DT_PLTRELSZ,
    DT_RELA,
    DT_RELASZ,
    DT_RELR,
    DT_RELRSZ,
    RELA,
    SHT_SYMTAB,
)
from ulp_build.elf.dynamic import Dynamic
from ulp_build.elf.errors import ElfError
from ulp_build.elf.image import ElfImage, Section
from ulp_build.elf.symbols import Symbol, SymbolTable


class Relocation(NamedTuple):
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

    def every(self) -> list[Relocation]:
        """Every relocation of DT_RELA, in table order."""
        return self._table(DT_RELA, DT_RELASZ)

    def plt(self) -> list[Relocation]:
        """Every relocation of DT_JMPREL (the PLT's GOT slots), in table order."""
        return self._table(DT_JMPREL, DT_PLTRELSZ)

    def _table(self, address_tag: int, size_tag: int) -> list[Relocation]:
        elf = self.elf
        addr = self.dynamic.value(address_tag)
        total = self.dynamic.value(size_tag) or 0
        if addr is None or total == 0:
            return []
        off = elf.offset_of(addr, total)
        return [
            Relocation(r_offset, info & 0xFFFFFFFF, info >> 32, addend)
            for r_offset, info, addend in RELA.iter_unpack(
                elf.data[off : off + total - total % RELA.size]
            )
        ]

    def at(self, vaddr: int, size: int) -> list[Relocation]:
        """The relocations whose target lies in [vaddr, vaddr + size)."""
        return [r for r in self.every() if vaddr <= r.offset < vaddr + size]

    def relr_places(self) -> list[int]:
        """The places DT_RELR relocates by the load base: the value added to is the place's own
        8 bytes. An even word is a place; an odd one is a bitmap of the 63 words after the
        last place (bit i: the i-th word), and moves the place 63 words on."""
        elf = self.elf
        addr = self.dynamic.value(DT_RELR)
        total = self.dynamic.value(DT_RELRSZ) or 0
        if addr is None or total == 0:
            return []
        off = elf.offset_of(addr, total)
        places = []
        where = 0
        for (word,) in struct.iter_unpack("<Q", elf.data[off : off + total - total % 8]):
            if word & 1 == 0:
                places.append(word)
                where = word + 8
                continue
            bits, at = word >> 1, where
            while bits:
                if bits & 1:
                    places.append(at)
                bits >>= 1
                at += 8
            where += 63 * 8
        return places


class LinkRelocations:
    """One relocation section the link left in the file (`ld --emit-relocs`): not loaded, so
    found by its section header, not by the dynamic section. Its offsets are addresses in the
    output file; `applies_to` is the section they patch (sh_info), `symbols` the symbol table
    they index (sh_link, the `.symtab`)."""

    def __init__(self, elf: ElfImage, section: Section) -> None:
        self.elf = elf
        self.section = section

    def _linked(self, index: int, what: str, sh_type: int | None = None) -> Section:
        sections = self.elf.sections
        if not 0 < index < len(sections) or sh_type not in (None, sections[index].type):
            raise ElfError(
                f"{self.elf.name}: corrupt relocation section {self.section.name} ({what})"
            )
        return sections[index]

    @cached_property
    def applies_to(self) -> Section:
        return self._linked(self.section.info, "the section it applies to")

    @cached_property
    def symbols(self) -> list[Symbol]:
        table = self._linked(self.section.link, "its symbol table", SHT_SYMTAB)
        return SymbolTable(self.elf, table).symbols

    @cached_property
    def every(self) -> list[Relocation]:
        sec = self.section
        if sec.entsize != RELA.size or sec.size % RELA.size:
            raise ElfError(f"{self.elf.name}: corrupt relocation section {sec.name}")
        return [
            Relocation(r_offset, info & 0xFFFFFFFF, info >> 32, addend)
            for r_offset, info, addend in RELA.iter_unpack(self.elf.section_data(sec))
        ]
