"""An x86-64 ELF file held in memory: its header, program headers and section headers, its bytes
by address, and the tables read from them (one class per table, in the modules beside this one).

A small validating reader of our own rather than pyelftools or LIEF: every offset and size is
checked against the file before it is used, so a truncated or corrupt input ends in one clear
`ElfError` instead of a traceback or a crash inside a C++ parser, and reading libc's 3000 dynamic
symbols takes a few milliseconds (the rewriter's speed target is relative to a LIEF round trip).
The test suite cross-checks this reader against pyelftools.

The headers are read and checked at once; each table is read on first use, so a corrupt table
refuses the file only for a caller that needs that table.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

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
    SHT_SYMTAB,
)
from ulp_build.elf.dynamic import Dynamic
from ulp_build.elf.errors import ElfError
from ulp_build.elf.notes import Notes
from ulp_build.elf.relocations import Relocation, Relocations
from ulp_build.elf.strings import StringTable
from ulp_build.elf.symbols import DynamicSymbols, Symbol, SymbolTable, function_names

# The largest file read. Big real libraries are a few hundred MB (CUDA's, libxul with debug
# info); 2 GiB leaves them ample room while a mistaken path (a disk image, a core dump) is
# refused before it is read. Nothing larger could be prepared anyway: the trampolines reach
# their functions with 32-bit displacements, so code and trampolines must lie within 2 GiB.
MAX_FILE_SIZE = 2 << 30


@dataclass(frozen=True)
class ElfHeader:
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


@dataclass(frozen=True)
class Segment:
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


@dataclass(frozen=True)
class Section:
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


class ElfFile:
    """An x86-64 ELF64 little-endian file held in memory, validated as it is read."""

    def __init__(self, data: bytes, name: str = "<memory>") -> None:
        self.data = data
        self.name = name
        self.header = ElfHeader.read(data, name)
        self.segments = self._read_segments()
        self.sections = self._read_sections()

    @classmethod
    def load(cls, path: str | Path) -> ElfFile:
        """Read the regular file at `path`, of at most MAX_FILE_SIZE bytes, and its headers.

        Opened once and checked through the open descriptor, so what is checked is what is
        read: a device (/dev/zero), a FIFO or a directory is refused instead of read until
        memory runs out or blocking forever (O_NONBLOCK: opening a FIFO does not wait).
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, ValueError) as exc:
            raise ElfError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
        try:
            return cls.from_descriptor(fd, str(path))
        finally:
            os.close(fd)

    @classmethod
    def from_descriptor(cls, fd: int, name: str) -> ElfFile:
        """Read the file open as `fd` (left open), refused unless it is a regular file of at
        most MAX_FILE_SIZE bytes; `name` names it in errors."""
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ElfError(f"{name}: not a regular file")
        too_large = ElfError(f"{name}: larger than {MAX_FILE_SIZE >> 30} GiB; not a library")
        if info.st_size > MAX_FILE_SIZE:
            raise too_large
        # A duplicate, so that closing the file object leaves `fd` to its owner.
        with os.fdopen(os.dup(fd), "rb") as file:
            try:
                file.seek(0)
                data = file.read(MAX_FILE_SIZE + 1)  # + 1: a file that grew since fstat
            except OSError as exc:
                raise ElfError(f"{name}: {exc.strerror or exc}") from None
        if len(data) > MAX_FILE_SIZE:
            raise too_large
        return cls(data, name)

    @classmethod
    def load_shared(cls, path: str | Path) -> ElfFile:
        """`load`, sharing one parse among callers that read the same unchanged file (the
        trigger reads the runtime and the target once per process: with `--all`, the same
        files again and again). Only for reading."""
        try:
            st = os.stat(path)
        except OSError as exc:
            raise ElfError(f"{path}: {exc.strerror or exc}") from None
        return _shared(str(path), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))

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

    # -- the tables, each read on first use ---------------------------------------------------

    @cached_property
    def dynamic(self) -> Dynamic:
        return Dynamic(self)

    @cached_property
    def dynsym(self) -> DynamicSymbols:
        return DynamicSymbols(self)

    @cached_property
    def symtab(self) -> SymbolTable:
        return SymbolTable(self, self.section_of_type(SHT_SYMTAB))

    @cached_property
    def relocations(self) -> Relocations:
        return Relocations(self)

    @cached_property
    def notes(self) -> Notes:
        return Notes(self)

    # -- what callers ask of the tables most ------------------------------------------------

    def dynamic_value(self, tag: int) -> int | None:
        return self.dynamic.value(tag)

    @property
    def soname(self) -> str | None:
        return self.dynamic.soname

    @property
    def is_pie_executable(self) -> bool:
        return self.dynamic.is_pie_executable

    @property
    def dynamic_symbols(self) -> list[Symbol]:
        return self.dynsym.symbols

    @property
    def symtab_symbols(self) -> list[Symbol]:
        return self.symtab.symbols

    @property
    def versioned_names(self) -> list[str]:
        """Dynamic symbol names as `name@@VERSION` (default) or `name@VERSION`, by index."""
        return self.dynsym.versioned_names

    @cached_property
    def _function_names(self) -> dict[int, str]:
        return function_names(self.symtab_symbols + self.dynamic_symbols)

    def name_at(self, vaddr: int) -> str:
        """The name of the function at `vaddr` (from .symtab first), or the address in hex."""
        return self._function_names.get(vaddr, f"{vaddr:#x}")

    def relocations_at(self, vaddr: int, size: int) -> list[Relocation]:
        """RELA relocations from DT_RELA whose target lies in [vaddr, vaddr + size)."""
        return self.relocations.at(vaddr, size)

    @property
    def build_id(self) -> str | None:
        return self.notes.build_id

    @property
    def build_id_note(self) -> tuple[bytes, int] | None:
        """The build-id bytes and their link-time address."""
        return self.notes.build_id_note

    @property
    def uses_ibt(self) -> bool:
        """Whether the file is marked for Intel IBT (built with -fcf-protection=branch/full)."""
        return self.notes.uses_ibt


@lru_cache(maxsize=64)
def _shared(path: str, identity: tuple[int, int, int, int]) -> ElfFile:
    return ElfFile.load(path)
