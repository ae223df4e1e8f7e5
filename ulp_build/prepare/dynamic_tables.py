"""The dynamic tables of a library, found by their section headers and checked to be exactly the
bytes the dynamic loader finds through the dynamic section.

The loader never reads section headers: it finds `.dynsym`, `.dynstr`, the hash tables, the
version table and the relocations through DT_* addresses and sizes. The rewriter copies and
grows the tables it finds through section headers. Where the two disagree, a file that loads
would be rewritten from tables the loader never used, and the output would load someone else's
symbols, or abort `ld.so`. So every table the rewriter relies on must be the same bytes both
ways: the section lies at its DT_* address, is as long as its DT_* size says, its `sh_offset`
is where the PT_LOAD holding its `sh_addr` maps it from, and its counts agree with `.dynsym`
(which has no size entry: the loader bounds it through the hash tables and `.gnu.version`).
`rewrite` and `check` refuse a file that fails any of this, with the table named.
"""

from __future__ import annotations

from ulp_build.elf import (
    DT_GNU_HASH,
    DT_HASH,
    DT_JMPREL,
    DT_PLTREL,
    DT_PLTRELSZ,
    DT_RELA,
    DT_RELAENT,
    DT_RELASZ,
    DT_STRSZ,
    DT_STRTAB,
    DT_SYMENT,
    DT_SYMTAB,
    DT_VERDEF,
    DT_VERNEED,
    DT_VERSYM,
    RELA,
    SHT_DYNAMIC,
    SHT_GNU_HASH,
    SHT_GNU_VERDEF,
    SHT_GNU_VERNEED,
    SHT_HASH,
    SHT_NOBITS,
    SHT_RELA,
    SHT_STRTAB,
    SYM,
    VERSYM,
    ElfError,
    ElfFile,
    GnuHash,
    Section,
    SysvHash,
)

_TAG_NAMES = {
    DT_SYMTAB: "DT_SYMTAB",
    DT_STRTAB: "DT_STRTAB",
    DT_STRSZ: "DT_STRSZ",
    DT_GNU_HASH: "DT_GNU_HASH",
    DT_HASH: "DT_HASH",
    DT_VERSYM: "DT_VERSYM",
    DT_VERDEF: "DT_VERDEF",
    DT_VERNEED: "DT_VERNEED",
    DT_RELA: "DT_RELA",
    DT_RELASZ: "DT_RELASZ",
    DT_JMPREL: "DT_JMPREL",
    DT_PLTRELSZ: "DT_PLTRELSZ",
    DT_PLTREL: "DT_PLTREL",
    DT_SYMENT: "DT_SYMENT",
    DT_RELAENT: "DT_RELAENT",
}


class DynamicTables:
    """The sections behind the DT_* entries of one file, each None when the file has neither the
    entry nor the section; constructing it refuses a file where they disagree."""

    def __init__(self, elf: ElfFile) -> None:
        self.elf = elf
        self.dyn: dict[int, int] = {}
        for tag, value in elf.dynamic.entries:
            # glibc keeps the last entry of a tag and this package reads the first: for the
            # tags relied on here, only agreeing duplicates mean the same to both.
            if self.dyn.setdefault(tag, value) != value and tag in _TAG_NAMES:
                raise self._error(f"two different {_TAG_NAMES[tag]} entries")
        self._check_dynamic_segment()
        self._check_entry_sizes()
        self.dynsym = self._table(DT_SYMTAB, elf.dynsym.section)
        self.dynstr = self._table(DT_STRTAB, elf.dynsym.string_section, DT_STRSZ)
        if self.dynsym is None or self.dynstr is None:
            raise self._error("no dynamic symbol table (.dynsym and DT_SYMTAB)")
        if self.dynstr.type != SHT_STRTAB:
            raise self._error(f"{self.dynsym.name}'s sh_link is not a string table")
        self.nsyms = self.dynsym.size // SYM.size  # the reader checked it is a whole number
        self.versym = self._table(DT_VERSYM, elf.dynsym.version_section)
        if self.versym is not None and self.versym.size != VERSYM.size * self.nsyms:
            raise self._error(f"{self.versym.name} has not one entry per {self.dynsym.name} symbol")
        rela, relasz, jmprel = (
            self.dyn.get(DT_RELA),
            self.dyn.get(DT_RELASZ, 0),
            self.dyn.get(DT_JMPREL),
        )
        if rela is not None and jmprel is not None and rela <= jmprel < rela + relasz:
            # Some linkers let DT_RELA cover the PLT relocations too: valid, but the rewriter
            # grows DT_RELA and would have to move DT_JMPREL's entries with it.
            raise ElfError(f"{elf.name}: DT_RELA overlaps DT_JMPREL; unsupported relocation layout")
        self.gnu_hash = self._table_at(DT_GNU_HASH, SHT_GNU_HASH)
        self.hash = self._table_at(DT_HASH, SHT_HASH)
        self.rela = self._table_at(DT_RELA, SHT_RELA, DT_RELASZ)
        self.plt_rela = self._table_at(DT_JMPREL, SHT_RELA, DT_PLTRELSZ)
        for sec in (self.rela, self.plt_rela):
            if sec is not None and sec.size % RELA.size:
                raise self._error(f"{sec.name} is not a whole number of relocations")
        self._table_at(DT_VERDEF, SHT_GNU_VERDEF)
        self._table_at(DT_VERNEED, SHT_GNU_VERNEED)
        self.gnu_hash_table = self._gnu_hash() if self.gnu_hash is not None else None
        self.sysv_hash_table = self._sysv_hash() if self.hash is not None else None

    def _error(self, reason: str) -> ElfError:
        return ElfError(f"{self.elf.name}: inconsistent dynamic tables: {reason}")

    def _check_dynamic_segment(self) -> None:
        """The dynamic section itself: the loader reads it at PT_DYNAMIC's address and the
        rewriter edits it at PT_DYNAMIC's offset, so the two must be the same bytes."""
        seg = self.elf.dynamic.segment
        assert seg is not None  # check_input refused a file without one
        self._mapped("PT_DYNAMIC", seg.vaddr, seg.offset, seg.filesz)
        sec = next((s for s in self.elf.sections if s.type == SHT_DYNAMIC), None)
        if sec is not None and (sec.addr, sec.offset) != (seg.vaddr, seg.offset):
            raise self._error(f"{sec.name} is not where PT_DYNAMIC is")

    def _check_entry_sizes(self) -> None:
        dyn = self.dyn
        if dyn.get(DT_SYMENT, SYM.size) != SYM.size or dyn.get(DT_RELAENT, RELA.size) != RELA.size:
            raise self._error("DT_SYMENT or DT_RELAENT is not the x86-64 entry size")
        if dyn.get(DT_PLTREL, DT_RELA) != DT_RELA:
            raise self._error("DT_PLTREL is not DT_RELA")

    def _mapped(self, what: str, addr: int, offset: int, size: int) -> None:
        """Refuse unless the PT_LOAD holding [addr, addr + size) maps it from `offset`."""
        seg = self.elf.segment_at(addr, max(size, 1))
        if seg is None or seg.offset + addr - seg.vaddr != offset:
            raise self._error(
                f"{what} at address {addr:#x} is not loaded from its file offset {offset:#x}"
            )

    def _table(self, tag: int, sec: Section | None, size_tag: int | None = None) -> Section | None:
        """`sec`, the section the rewriter found for `tag`, checked against the entry."""
        name = _TAG_NAMES[tag]
        addr = self.dyn.get(tag)
        if sec is None and addr is None:
            return None
        if sec is None:
            raise self._error(f"{name} at {addr:#x} has no section header")
        if addr is None:
            raise self._error(f"{sec.name} has no {name} entry")
        if sec.addr != addr:
            raise self._error(f"{name} is {addr:#x} but {sec.name} is at {sec.addr:#x}")
        if sec.type == SHT_NOBITS:
            raise self._error(f"{sec.name} has no bytes in the file")
        if size_tag is not None and self.dyn.get(size_tag) != sec.size:
            raise self._error(
                f"{_TAG_NAMES[size_tag]} is {self.dyn.get(size_tag)} but {sec.name} is"
                f" {sec.size} bytes"
            )
        self._mapped(sec.name, sec.addr, sec.offset, sec.size)
        return sec

    def _table_at(self, tag: int, sh_type: int, size_tag: int | None = None) -> Section | None:
        """The section of type `sh_type` at `tag`'s address, checked; None without the tag (a
        section of that type the loader is not told about is ignored by both)."""
        addr = self.dyn.get(tag)
        if addr is None or (size_tag is not None and not self.dyn.get(size_tag)):
            return None  # no entry, or an empty table: nothing is read there
        sec = next((s for s in self.elf.sections if s.type == sh_type and s.addr == addr), None)
        return self._table(tag, sec, size_tag)

    def _gnu_hash(self) -> GnuHash:
        """`.gnu.hash` whose every lookup stays inside `.dynsym` and inside the table: the
        rewriter inserts the runtime symbol at `symoffset` and renumbers the buckets."""
        assert self.gnu_hash is not None
        table = GnuHash(self.elf, self.gnu_hash)
        name = self.gnu_hash.name
        if table.nbuckets == 0 or table.bloom_size & (table.bloom_size - 1) or not table.bloom_size:
            raise self._error(f"{name}: no buckets, or a Bloom filter size not a power of two")
        if table.symoffset > self.nsyms:
            raise self._error(f"{name}: symoffset {table.symoffset} is beyond .dynsym")
        chain = self.gnu_hash.size - table.buckets_offset - 4 * table.nbuckets
        if chain != 4 * (self.nsyms - table.symoffset):
            raise self._error(f"{name}: not one hash value per hashed .dynsym symbol")
        if any(b and not table.symoffset <= b < self.nsyms for b in table.buckets):
            raise self._error(f"{name}: a bucket outside the hashed symbols")
        return table

    def _sysv_hash(self) -> SysvHash:
        """SysV `.hash`: its chain count is the loader's symbol count."""
        assert self.hash is not None
        table = SysvHash(self.elf, self.hash)
        if table.nchain != self.nsyms:
            raise self._error(f"{self.hash.name}: {table.nchain} chains for {self.nsyms} symbols")
        if any(w >= self.nsyms for w in table.buckets + table.chain):
            raise self._error(f"{self.hash.name}: a symbol index beyond .dynsym")
        return table
