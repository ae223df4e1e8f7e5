"""Reading x86-64 ELF files: headers, segments, sections, dynamic entries, symbols, notes.

A small validating reader of our own rather than pyelftools or LIEF: every offset and size is
checked against the file before it is used, so a truncated or corrupt input ends in one clear
`ElfError` instead of a traceback or a crash inside a C++ parser, and reading libc's 3000 dynamic
symbols takes a few milliseconds (the rewriter's speed target is relative to a LIEF round trip).
The test suite cross-checks this reader against pyelftools.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import NamedTuple

from ulp_build.errors import UlpError

ELFCLASS64 = 2
ELFDATA2LSB = 1
EM_X86_64 = 62
ET_EXEC = 2
ET_DYN = 3

PT_LOAD = 1
PT_DYNAMIC = 2
PT_NOTE = 4
PT_PHDR = 6
PF_X = 1
PF_W = 2
PF_R = 4

SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_RELA = 4
SHT_HASH = 5
SHT_NOBITS = 8
SHT_DYNSYM = 11
SHT_GNU_HASH = 0x6FFFFFF6
SHT_GNU_VERSYM = 0x6FFFFFFF
SHF_WRITE = 1
SHF_ALLOC = 2
SHF_EXECINSTR = 4

SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
SHN_ABS = 0xFFF1

STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_TLS = 6
STT_GNU_IFUNC = 10
STB_GLOBAL = 1
STB_WEAK = 2

DT_NULL = 0
DT_HASH = 4
DT_STRTAB = 5
DT_SYMTAB = 6
DT_RELA = 7
DT_RELASZ = 8
DT_STRSZ = 10
DT_SONAME = 14
DT_JMPREL = 23
DT_PLTRELSZ = 2
DT_FLAGS_1 = 0x6FFFFFFB
DT_GNU_HASH = 0x6FFFFEF5
DT_VERSYM = 0x6FFFFFF0
DT_VERDEF = 0x6FFFFFFC
DT_VERDEFNUM = 0x6FFFFFFD
DF_1_PIE = 0x08000000

R_X86_64_GLOB_DAT = 6
R_X86_64_RELATIVE = 8

NT_GNU_BUILD_ID = 3
NT_GNU_PROPERTY_TYPE_0 = 5
GNU_PROPERTY_X86_FEATURE_1_AND = 0xC0000002
GNU_PROPERTY_X86_FEATURE_1_IBT = 1

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
SHDR = struct.Struct("<IIQQQQIIQQ")
SYM = struct.Struct("<IBBHQQ")
DYN = struct.Struct("<qQ")
RELA = struct.Struct("<QQq")


class ElfError(UlpError):
    """The file is not an ELF file this project can read, with the reason."""


@dataclass(frozen=True)
class Segment:
    index: int
    type: int
    flags: int
    offset: int
    vaddr: int
    filesz: int
    memsz: int
    align: int

    def contains(self, vaddr: int, size: int = 1) -> bool:
        return self.vaddr <= vaddr and vaddr + size <= self.vaddr + self.memsz


@dataclass(frozen=True)
class Section:
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

    def contains(self, vaddr: int) -> bool:
        return self.addr <= vaddr < self.addr + self.size


class Symbol(NamedTuple):
    # A NamedTuple, not a dataclass: libc has 3000 dynamic symbols and building frozen
    # dataclasses for them would cost more than the whole rest of a rewrite.
    index: int
    name: str
    value: int
    size: int
    type: int
    bind: int
    visibility: int
    shndx: int

    @property
    def defined(self) -> bool:
        return self.shndx != SHN_UNDEF


@dataclass(frozen=True)
class Relocation:
    offset: int
    type: int
    symbol: int
    addend: int


class ElfFile:
    """An x86-64 ELF64 little-endian file held in memory, validated as it is read."""

    def __init__(self, data: bytes, name: str = "<memory>") -> None:
        self.data = data
        self.name = name
        if len(data) < 4 or data[:4] != b"\x7fELF":
            raise ElfError(f"{name}: not an ELF file")
        if len(data) < EHDR.size:
            raise ElfError(f"{name}: truncated ELF header")
        (
            ident,
            self.type,
            self.machine,
            _version,
            self.entry,
            self.phoff,
            self.shoff,
            _flags,
            ehsize,
            self.phentsize,
            self.phnum,
            self.shentsize,
            self.shnum,
            self.shstrndx,
        ) = EHDR.unpack_from(data)
        if ident[4] != ELFCLASS64:
            raise ElfError(f"{name}: 32-bit ELF file; only x86-64 (ELF64) is supported")
        if ident[5] != ELFDATA2LSB:
            raise ElfError(f"{name}: big-endian ELF file; only x86-64 is supported")
        if self.machine != EM_X86_64:
            raise ElfError(f"{name}: ELF machine {self.machine} is not x86-64")
        if ehsize != EHDR.size:
            raise ElfError(f"{name}: corrupt ELF header (e_ehsize {ehsize})")
        self.segments = self._read_segments()
        self.sections = self._read_sections()

    @classmethod
    def load(cls, path: str | Path) -> ElfFile:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ElfError(f"{path}: {exc.strerror or exc}") from None
        return cls(data, str(path))

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

    def _check_range(self, offset: int, size: int, what: str) -> None:
        if offset < 0 or size < 0 or offset + size > len(self.data):
            raise ElfError(
                f"{self.name}: truncated or corrupt ELF file ({what} at offset {offset:#x},"
                f" size {size:#x}, beyond the end of the file at {len(self.data):#x})"
            )

    def _read_segments(self) -> list[Segment]:
        if self.phnum == 0:
            return []
        if self.phentsize != PHDR.size:
            raise ElfError(f"{self.name}: corrupt ELF header (e_phentsize {self.phentsize})")
        self._check_range(self.phoff, self.phnum * PHDR.size, "program headers")
        segments = []
        for i, fields in enumerate(
            PHDR.iter_unpack(self.data[self.phoff : self.phoff + self.phnum * PHDR.size])
        ):
            seg = Segment(
                i, fields[0], fields[1], fields[2], fields[3], fields[5], fields[6], fields[7]
            )
            if seg.type == PT_LOAD:
                self._check_range(seg.offset, seg.filesz, f"segment {i}")
                if seg.filesz > seg.memsz:
                    raise ElfError(
                        f"{self.name}: corrupt segment {i} (file size above memory size)"
                    )
            segments.append(seg)
        return segments

    def _read_sections(self) -> list[Section]:
        if self.shnum == 0 or self.shoff == 0:
            return []
        if self.shentsize != SHDR.size:
            raise ElfError(f"{self.name}: corrupt ELF header (e_shentsize {self.shentsize})")
        self._check_range(self.shoff, self.shnum * SHDR.size, "section headers")
        raw = list(SHDR.iter_unpack(self.data[self.shoff : self.shoff + self.shnum * SHDR.size]))
        if self.shstrndx >= len(raw):
            raise ElfError(f"{self.name}: corrupt ELF header (e_shstrndx {self.shstrndx})")
        strtab = raw[self.shstrndx]
        self._check_range(strtab[4], strtab[5], "section name table")
        names = self.data[strtab[4] : strtab[4] + strtab[5]]
        sections = []
        for i, (name, typ, flags, addr, offset, size, link, info, align, entsize) in enumerate(raw):
            if typ not in (SHT_NOBITS, SHT_NULL):
                self._check_range(offset, size, f"section {i}")
            sections.append(
                Section(
                    i,
                    _cstring(names, name, self.name),
                    typ,
                    flags,
                    addr,
                    offset,
                    size,
                    link,
                    info,
                    align,
                    entsize,
                )
            )
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

    def section_data(self, sec: Section) -> bytes:
        if sec.type == SHT_NOBITS:
            return b""
        return self.data[sec.offset : sec.offset + sec.size]

    # -- dynamic section -------------------------------------------------------------------

    @cached_property
    def dynamic_segment(self) -> Segment | None:
        for seg in self.segments:
            if seg.type == PT_DYNAMIC:
                return seg
        return None

    @cached_property
    def dynamic(self) -> list[tuple[int, int]]:
        """(tag, value) pairs up to and excluding DT_NULL."""
        seg = self.dynamic_segment
        if seg is None:
            return []
        self._check_range(seg.offset, seg.filesz, "dynamic section")
        entries = []
        for tag, value in DYN.iter_unpack(
            self.data[seg.offset : seg.offset + seg.filesz - seg.filesz % DYN.size]
        ):
            if tag == DT_NULL:
                break
            entries.append((tag, value))
        return entries

    def dynamic_value(self, tag: int) -> int | None:
        for t, v in self.dynamic:
            if t == tag:
                return v
        return None

    @cached_property
    def soname(self) -> str | None:
        value = self.dynamic_value(DT_SONAME)
        return None if value is None else self._dynstr(value)

    @cached_property
    def is_pie_executable(self) -> bool:
        return bool((self.dynamic_value(DT_FLAGS_1) or 0) & DF_1_PIE)

    def _dynstr(self, index: int) -> str:
        sec = self.dynstr_section
        if sec is None:
            raise ElfError(f"{self.name}: no dynamic string table")
        return _cstring(self.section_data(sec), index, self.name)

    # -- symbols ---------------------------------------------------------------------------

    @cached_property
    def dynsym_section(self) -> Section | None:
        for sec in self.sections:
            if sec.type == SHT_DYNSYM:
                return sec
        return None

    @cached_property
    def dynstr_section(self) -> Section | None:
        sym = self.dynsym_section
        if sym is None or sym.link >= len(self.sections):
            return None
        return self.sections[sym.link]

    @cached_property
    def symtab_section(self) -> Section | None:
        for sec in self.sections:
            if sec.type == SHT_SYMTAB:
                return sec
        return None

    def _symbols(self, sec: Section | None) -> list[Symbol]:
        if sec is None:
            return []
        if sec.entsize != SYM.size or sec.size % SYM.size:
            raise ElfError(f"{self.name}: corrupt symbol table {sec.name}")
        if sec.link >= len(self.sections):
            raise ElfError(f"{self.name}: corrupt symbol table {sec.name} (bad string table)")
        strings = self.section_data(self.sections[sec.link])
        # Decoding the string table once and slicing str is cheaper than one decode per
        # symbol; fall back per symbol only for the rare non-ASCII table.
        text = strings.decode("ascii") if strings.isascii() else None
        find = strings.find
        new = tuple.__new__  # Symbol._make without its Python-level frame
        out = []
        for i, (name, info, other, shndx, value, size) in enumerate(
            SYM.iter_unpack(self.section_data(sec))
        ):
            end = find(b"\0", name)
            if end < 0:
                raise ElfError(f"{self.name}: corrupt string table of {sec.name}")
            if text is not None:
                label = text[name:end]
            else:
                label = strings[name:end].decode("utf-8", "replace")
            fields = (i, label, value, size, info & 0xF, info >> 4, other & 3, shndx)
            out.append(new(Symbol, fields))
        return out

    @cached_property
    def dynamic_symbols(self) -> list[Symbol]:
        return self._symbols(self.dynsym_section)

    @cached_property
    def symtab_symbols(self) -> list[Symbol]:
        return self._symbols(self.symtab_section)

    @cached_property
    def _function_names(self) -> dict[int, str]:
        names: dict[int, str] = {}
        for sym in self.symtab_symbols + self.dynamic_symbols:
            if sym.type == STT_FUNC and sym.defined and sym.name:
                names.setdefault(sym.value, sym.name)
        return names

    def name_at(self, vaddr: int) -> str:
        """The name of the function at `vaddr` (from .symtab first), or the address in hex."""
        return self._function_names.get(vaddr, f"{vaddr:#x}")

    @cached_property
    def versym_section(self) -> Section | None:
        for sec in self.sections:
            if sec.type == SHT_GNU_VERSYM:
                return sec
        return None

    @cached_property
    def versioned_names(self) -> list[str]:
        """Dynamic symbol names as `name@@VERSION` (default) or `name@VERSION`, by index."""
        versions = self._symbol_versions()
        out = []
        for sym in self.dynamic_symbols:
            version, default = versions[sym.index] if versions else (None, True)
            out.append(
                sym.name if version is None else f"{sym.name}{'@@' if default else '@'}{version}"
            )
        return out

    def _symbol_versions(self) -> list[tuple[str | None, bool]] | None:
        versym = self.versym_section
        dynsym = self.dynsym_section
        if versym is None or dynsym is None:
            return None
        count = dynsym.size // SYM.size
        if versym.size < 2 * count:
            raise ElfError(f"{self.name}: corrupt symbol version table")
        names = self._version_definitions()
        out: list[tuple[str | None, bool]] = []
        for (ndx,) in struct.iter_unpack("<H", self.section_data(versym)[: 2 * count]):
            hidden = bool(ndx & 0x8000)
            name = names.get(ndx & 0x7FFF)
            out.append((name, not hidden))
        return out

    def _version_definitions(self) -> dict[int, str]:
        """Version index -> name, for versions this file defines (not the base version)."""
        addr = self.dynamic_value(DT_VERDEF)
        count = self.dynamic_value(DT_VERDEFNUM) or 0
        if addr is None:
            return {}
        names: dict[int, str] = {}
        off = self.offset_of(addr, 20)
        for _ in range(count):
            self._check_range(off, 20, "version definition")
            _ver, flags, ndx, _cnt, _hash, aux, nxt = struct.unpack_from("<HHHHIII", self.data, off)
            self._check_range(off + aux, 8, "version definition")
            (name,) = struct.unpack_from("<I", self.data, off + aux)
            if not flags & 1:  # VER_FLG_BASE names the file itself, not a version
                names[ndx] = self._dynstr(name)
            if nxt == 0:
                break
            off += nxt
        return names

    # -- relocations -----------------------------------------------------------------------

    def relocations_at(self, vaddr: int, size: int) -> list[Relocation]:
        """RELA relocations from DT_RELA whose target lies in [vaddr, vaddr + size)."""
        addr = self.dynamic_value(DT_RELA)
        total = self.dynamic_value(DT_RELASZ) or 0
        if addr is None or total == 0:
            return []
        off = self.offset_of(addr, total)
        out = []
        for r_offset, info, addend in RELA.iter_unpack(
            self.data[off : off + total - total % RELA.size]
        ):
            if vaddr <= r_offset < vaddr + size:
                out.append(Relocation(r_offset, info & 0xFFFFFFFF, info >> 32, addend))
        return out

    # -- notes -----------------------------------------------------------------------------

    def _notes(self) -> list[tuple[str, int, bytes, int]]:
        """(owner, type, descriptor bytes, descriptor's link-time address) of every note."""
        out = []
        for seg in self.segments:
            if seg.type != PT_NOTE:
                continue
            self._check_range(seg.offset, seg.filesz, "note segment")
            blob = self.data[seg.offset : seg.offset + seg.filesz]
            align = 8 if seg.align == 8 else 4
            pos = 0
            while pos + 12 <= len(blob):
                namesz, descsz, ntype = struct.unpack_from("<III", blob, pos)
                name_end = pos + 12 + namesz
                desc = _align(name_end, align)
                if desc + descsz > len(blob):
                    break
                out.append(
                    (
                        blob[pos + 12 : name_end].rstrip(b"\0").decode("ascii", "replace"),
                        ntype,
                        blob[desc : desc + descsz],
                        seg.vaddr + desc,
                    )
                )
                pos = _align(desc + descsz, align)
        return out

    @cached_property
    def build_id(self) -> str | None:
        found = self.build_id_note
        return None if found is None else found[0].hex()

    @cached_property
    def build_id_note(self) -> tuple[bytes, int] | None:
        """The build-id bytes and their link-time address."""
        for owner, ntype, desc, addr in self._notes():
            if owner == "GNU" and ntype == NT_GNU_BUILD_ID:
                return desc, addr
        return None

    @cached_property
    def uses_ibt(self) -> bool:
        """Whether the file is marked for Intel IBT (built with -fcf-protection=branch/full)."""
        for owner, ntype, desc, _addr in self._notes():
            if owner != "GNU" or ntype != NT_GNU_PROPERTY_TYPE_0:
                continue
            pos = 0
            while pos + 8 <= len(desc):
                ptype, size = struct.unpack_from("<II", desc, pos)
                if ptype == GNU_PROPERTY_X86_FEATURE_1_AND and size >= 4:
                    (bits,) = struct.unpack_from("<I", desc, pos + 8)
                    return bool(bits & GNU_PROPERTY_X86_FEATURE_1_IBT)
                pos += 8 + _align(size, 8)
        return False


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) & -alignment


def _cstring(table: bytes, index: int, name: str) -> str:
    if index == 0 and not table:
        return ""
    if index >= len(table):
        raise ElfError(f"{name}: corrupt string table (index {index} beyond its end)")
    end = table.find(b"\0", index)
    if end < 0:
        raise ElfError(f"{name}: corrupt string table (unterminated string)")
    return table[index:end].decode("utf-8", "replace")


@lru_cache(maxsize=64)
def _shared(path: str, identity: tuple[int, int, int, int]) -> ElfFile:
    return ElfFile.load(path)
