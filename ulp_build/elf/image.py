"""The bytes of an x86-64 ELF file and its three headers: the ELF header, the program headers
and the section headers, every field kept, each checked against the file when read; and the
file's contents by address and by section. The tables built on them (dynamic section, symbols,
relocations, notes, hash tables) are read by the modules beside this one, from an `ElfImage`.
"""

from __future__ import annotations

from functools import cached_property
from typing import NamedTuple

from ulp_build.elf.constants import (
    EHDR,
    ELFCLASS64,
    ELFDATA2LSB,
    EM_X86_64,
    PF_X,
    PHDR,
    PT_LOAD,
    SHDR,
    SHT_NOBITS,
    SHT_NULL,
)
from ulp_build.elf.errors import ElfError
from ulp_build.elf.strings import StringTable


# The headers are NamedTuples, as the tables' entries are (symbols.Symbol): a frozen dataclass
# of a section's fields takes 0.7 ms to define (7 times a NamedTuple's), and 4 times as long
# to build, and every command that reads an ELF file pays for it.
class ElfHeader(NamedTuple):
    """The ELF header, every field."""

    ident: bytes
    type: int
    machine: int
    version: int
    entry: int
    phoff: int
    shoff: int
    flags: int
    ehsize: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int
    shstrndx: int

    @classmethod
    def read(cls, data: bytes, file_name: str) -> ElfHeader:
        """The header of `data`, refused unless it is one of an x86-64 ELF64 file."""
        if len(data) < 4 or data[:4] != b"\x7fELF":
            raise ElfError(f"{file_name}: not an ELF file")
        if len(data) < EHDR.size:
            raise ElfError(f"{file_name}: truncated ELF header")
        header = cls(*EHDR.unpack_from(data))
        if header.ident[4] != ELFCLASS64:
            raise ElfError(f"{file_name}: 32-bit ELF file; only x86-64 (ELF64) is supported")
        if header.ident[5] != ELFDATA2LSB:
            raise ElfError(f"{file_name}: big-endian ELF file; only x86-64 is supported")
        if header.machine != EM_X86_64:
            raise ElfError(f"{file_name}: ELF machine {header.machine} is not x86-64")
        if header.ehsize != EHDR.size:
            raise ElfError(f"{file_name}: corrupt ELF header (e_ehsize {header.ehsize})")
        return header


class Segment(NamedTuple):
    """One program header, every field, and its index in the table."""

    index: int
    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int

    def contains(self, vaddr: int, size: int = 1) -> bool:
        return self.vaddr <= vaddr and vaddr + size <= self.vaddr + self.memsz


class Section(NamedTuple):
    """One section header, every field (`name_offset` is sh_name), and its index and name."""

    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    align: int
    entsize: int
    name_offset: int

    def contains(self, vaddr: int) -> bool:
        return self.addr <= vaddr < self.addr + self.size


class ElfImage:
    """An x86-64 ELF64 little-endian file's bytes and headers, validated as they are read."""

    def __init__(self, data: bytes, name: str = "<memory>") -> None:
        self.data = data
        self.name = name
        self.header = ElfHeader.read(data, name)
        self.segments = self._read_segments()
        self.sections = self._read_sections()

    def check_range(self, offset: int, size: int, what: str) -> None:
        """Refuse the file unless `size` bytes at `offset` lie inside it."""
        if offset < 0 or size < 0 or offset + size > len(self.data):
            raise ElfError(
                f"{self.name}: truncated or corrupt ELF file ({what} at offset {offset:#x},"
                f" size {size:#x}, beyond the end of the file at {len(self.data):#x})"
            )

    def _read_segments(self) -> list[Segment]:
        hdr = self.header
        if hdr.phnum == 0:
            return []
        if hdr.phentsize != PHDR.size:
            raise ElfError(f"{self.name}: corrupt ELF header (e_phentsize {hdr.phentsize})")
        self.check_range(hdr.phoff, hdr.phnum * PHDR.size, "program headers")
        segments = []
        table = self.data[hdr.phoff : hdr.phoff + hdr.phnum * PHDR.size]
        for i, fields in enumerate(PHDR.iter_unpack(table)):
            seg = Segment(i, *fields)
            if seg.type == PT_LOAD:
                self.check_range(seg.offset, seg.filesz, f"segment {i}")
                if seg.filesz > seg.memsz:
                    raise ElfError(
                        f"{self.name}: corrupt segment {i} (file size above memory size)"
                    )
            segments.append(seg)
        return segments

    def _read_sections(self) -> list[Section]:
        hdr = self.header
        if hdr.shnum == 0 or hdr.shoff == 0:
            return []
        if hdr.shentsize != SHDR.size:
            raise ElfError(f"{self.name}: corrupt ELF header (e_shentsize {hdr.shentsize})")
        self.check_range(hdr.shoff, hdr.shnum * SHDR.size, "section headers")
        raw = list(SHDR.iter_unpack(self.data[hdr.shoff : hdr.shoff + hdr.shnum * SHDR.size]))
        if hdr.shstrndx >= len(raw):
            raise ElfError(f"{self.name}: corrupt ELF header (e_shstrndx {hdr.shstrndx})")
        strtab = raw[hdr.shstrndx]
        self.check_range(strtab[4], strtab[5], "section name table")
        names = StringTable(self.data[strtab[4] : strtab[4] + strtab[5]], self.name)
        sections = []
        for i, fields in enumerate(raw):
            name_offset, typ, _flags, _addr, offset, size = fields[:6]
            if typ not in (SHT_NOBITS, SHT_NULL):
                self.check_range(offset, size, f"section {i}")
            sections.append(Section(i, names.get(name_offset), *fields[1:], name_offset))
        return sections

    # -- addresses -------------------------------------------------------------------------

    @cached_property
    def loads(self) -> list[Segment]:
        return [s for s in self.segments if s.type == PT_LOAD]

    def segment_at(self, vaddr: int, size: int = 1) -> Segment | None:
        for seg in self.loads:
            if seg.vaddr <= vaddr and vaddr + size <= seg.vaddr + seg.filesz:
                return seg
        return None

    def is_loaded(self, vaddr: int) -> bool:
        """Whether `vaddr` lies in a loaded segment, its file part or its zero-filled rest."""
        return any(s.vaddr <= vaddr < s.vaddr + s.memsz for s in self.loads)

    def offset_of(self, vaddr: int, size: int = 1) -> int:
        """File offset of `size` bytes at `vaddr`, which must all be backed by the file."""
        seg = self.segment_at(vaddr, size)
        if seg is None:
            raise ElfError(f"{self.name}: address {vaddr:#x} is not in any loaded segment")
        return seg.offset + vaddr - seg.vaddr

    def read(self, vaddr: int, size: int) -> bytes:
        off = self.offset_of(vaddr, size)
        return self.data[off : off + size]

    @cached_property
    def _code_ranges(self) -> list[tuple[int, int, int]]:
        return [(s.vaddr, s.vaddr + s.filesz, s.offset) for s in self.loads if s.flags & PF_X]

    def is_code(self, vaddr: int, size: int = 1) -> bool:
        return self.code_at(vaddr, size) is not None

    def code_at(self, vaddr: int, size: int) -> bytes | None:
        """The `size` bytes at `vaddr` if they all lie in one executable segment, else None.

        Called for every function symbol of a libc, hence the plain loop over few ranges.
        """
        for lo, hi, offset in self._code_ranges:
            if lo <= vaddr and vaddr + size <= hi:
                start = offset + vaddr - lo
                return self.data[start : start + size]
        return None

    # -- sections --------------------------------------------------------------------------

    def section(self, name: str) -> Section | None:
        for sec in self.sections:
            if sec.name == name:
                return sec
        return None

    def section_of_type(self, sh_type: int) -> Section | None:
        """The first section of type `sh_type` (a file has at most one .dynsym, .symtab, ...)."""
        for sec in self.sections:
            if sec.type == sh_type:
                return sec
        return None

    def section_data(self, sec: Section) -> bytes:
        if sec.type == SHT_NOBITS:
            return b""
        return self.data[sec.offset : sec.offset + sec.size]
