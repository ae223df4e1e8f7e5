"""A shared object moved to another link-time address: the same file, every virtual address in
it shifted by one page-aligned amount, as if it had been linked there (`-Ttext-segment`).

Why: the loader maps an ET_DYN object where its first PT_LOAD says if that range is free (glibc
passes the link-time address to mmap as a hint), and a patch object's code reaches the running
target's data and functions with 32-bit displacements, so it must lie within 2 GiB of the
target. The trigger rebases the object to a free range next to the target
(live/placement.py) and hands the runtime those bytes; loaded there, its load bias is 0.

What holds an address, and is shifted: the ELF header's entry, every program header (but one
that maps nothing, PT_GNU_STACK, whose address means nothing and stays 0 as ld leaves it), the
allocated sections' addresses, the address tags of the dynamic section, the values of symbols
defined in allocated sections (not thread-local ones: those are offsets in the TLS block), the
places of relocations, the addends of R_X86_64_RELATIVE and R_X86_64_IRELATIVE, and the
link-time addresses the linker wrote into the file without a relocation of their own: the
first GOT word (the address of _DYNAMIC), the lazy GOT slots of the PLT (their PLT stubs, to
which the loader adds the load bias) and the implicit addends of DT_RELR. The values ld writes
at a RELATIVE place (the addend, which the loader overwrites) are shifted too, so that the
result is the very file ld would have written at the new address.

Not shifted: what holds offsets (notes, hash and version tables, string tables, .eh_frame's
PC-relative pointers), and debugging information, which keeps link-time addresses (a debugger
shown the rebased object sees its code at the old addresses). The build-id note is untouched:
the runtime checks it, and the object's code is the same.

What it cannot rebase safely it refuses, naming the problem: a dynamic tag it does not know
(it might hold an address), REL relocations (their addends are in the places, in forms this
does not read), a relocation type of the dynamic tables it does not know.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ulp_build.elf import ElfFile, ElfImage
from ulp_build.elf.constants import (
    DT_ADDRRNGHI,
    DT_ADDRRNGLO,
    DT_AUXILIARY,
    DT_BIND_NOW,
    DT_DEBUG,
    DT_FILTER,
    DT_FINI,
    DT_FINI_ARRAY,
    DT_FINI_ARRAYSZ,
    DT_FLAGS,
    DT_FLAGS_1,
    DT_HASH,
    DT_INIT,
    DT_INIT_ARRAY,
    DT_INIT_ARRAYSZ,
    DT_JMPREL,
    DT_NEEDED,
    DT_PLTGOT,
    DT_PLTREL,
    DT_PLTRELSZ,
    DT_PREINIT_ARRAY,
    DT_PREINIT_ARRAYSZ,
    DT_REL,
    DT_RELA,
    DT_RELACOUNT,
    DT_RELAENT,
    DT_RELASZ,
    DT_RELCOUNT,
    DT_RELENT,
    DT_RELR,
    DT_RELRENT,
    DT_RELRSZ,
    DT_RELSZ,
    DT_RPATH,
    DT_RUNPATH,
    DT_SONAME,
    DT_STRSZ,
    DT_STRTAB,
    DT_SYMBOLIC,
    DT_SYMENT,
    DT_SYMTAB,
    DT_SYMTAB_SHNDX,
    DT_TEXTREL,
    DT_VALRNGHI,
    DT_VALRNGLO,
    DT_VERDEF,
    DT_VERDEFNUM,
    DT_VERNEED,
    DT_VERNEEDNUM,
    DT_VERSYM,
    DT_X86_64_PLT,
    DT_X86_64_PLTENT,
    DT_X86_64_PLTSZ,
    DYN,
    ET_DYN,
    PHDR,
    PT_DYNAMIC,
    R_X86_64_64,
    R_X86_64_DTPMOD64,
    R_X86_64_DTPOFF64,
    R_X86_64_GLOB_DAT,
    R_X86_64_IRELATIVE,
    R_X86_64_JUMP_SLOT,
    R_X86_64_NONE,
    R_X86_64_RELATIVE,
    R_X86_64_TLSDESC,
    R_X86_64_TPOFF64,
    RELA,
    SHDR,
    SHF_ALLOC,
    SHT_DYNSYM,
    SHT_REL,
    SHT_RELA,
    SHT_SYMTAB,
    STT_TLS,
    SYM,
)
from ulp_build.elf.symbols import SymbolTable
from ulp_build.errors import UlpError

PAGE = 4096
# The end of the user half of the x86-64 address space (4-level paging): nothing maps above.
USER_END = 1 << 47

# Dynamic tags whose value is an address in the object. (DT_DEBUG is one too, but the loader
# writes it at run time: it stays 0.)
_ADDRESS_TAGS = {
    DT_PLTGOT, DT_HASH, DT_STRTAB, DT_SYMTAB, DT_RELA, DT_INIT, DT_FINI, DT_JMPREL,
    DT_INIT_ARRAY, DT_FINI_ARRAY, DT_PREINIT_ARRAY, DT_SYMTAB_SHNDX, DT_RELR, DT_VERSYM,
    DT_VERDEF, DT_VERNEED, DT_X86_64_PLT,
}  # fmt: skip
# Dynamic tags whose value is a size, a count, flags or a string offset.
_VALUE_TAGS = {
    DT_NEEDED, DT_PLTRELSZ, DT_RELASZ, DT_RELAENT, DT_STRSZ, DT_SYMENT, DT_SONAME, DT_RPATH,
    DT_SYMBOLIC, DT_PLTREL, DT_TEXTREL, DT_BIND_NOW, DT_INIT_ARRAYSZ, DT_FINI_ARRAYSZ,
    DT_RUNPATH, DT_FLAGS, DT_PREINIT_ARRAYSZ, DT_RELRSZ, DT_RELRENT, DT_RELACOUNT, DT_FLAGS_1,
    DT_VERDEFNUM, DT_VERNEEDNUM, DT_X86_64_PLTSZ, DT_X86_64_PLTENT, DT_AUXILIARY, DT_FILTER,
}  # fmt: skip
_REL_TAGS = {DT_REL, DT_RELSZ, DT_RELENT, DT_RELCOUNT}
# Relocation types of the dynamic tables: those whose addend is an address in the object, and
# the others (their addend is relative to a symbol, or an offset in a TLS block).
_ADDRESS_ADDEND = {R_X86_64_RELATIVE, R_X86_64_IRELATIVE}
_OTHER_DYNAMIC_TYPES = {
    R_X86_64_NONE, R_X86_64_64, R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT, R_X86_64_DTPMOD64,
    R_X86_64_DTPOFF64, R_X86_64_TPOFF64, R_X86_64_TLSDESC,
}  # fmt: skip

_WORD = struct.Struct("<Q")
_E_ENTRY = 24  # offsets of the address fields in their records
_P_VADDR, _P_PADDR = 16, 24
_SH_ADDR = 16
_ST_VALUE = 8
_D_VAL = 8
_R_ADDEND = 16


class Footprint(NamedTuple):
    """The address range an object's loaded segments take, and how it must be aligned."""

    start: int  # page-aligned: the address glibc asks mmap for
    size: int  # whole pages, from `start` to the end of the last segment in memory
    alignment: int  # the largest p_align of its PT_LOAD segments, at least a page


def footprint(elf: ElfImage) -> Footprint:
    """Where `elf`'s loaded segments lie at their link-time addresses."""
    if not elf.loads:
        raise UlpError(f"{elf.name}: no loadable segment")
    start = min(s.vaddr for s in elf.loads) & -PAGE
    end = max(s.vaddr + s.memsz for s in elf.loads)
    alignment = max([PAGE] + [s.align for s in elf.loads])
    if alignment & (alignment - 1):
        raise UlpError(f"{elf.name}: segment alignment {alignment:#x} is not a power of two")
    return Footprint(start, (end - start + PAGE - 1) & -PAGE, alignment)


def rebase(image: bytes, delta: int, name: str = "<patch object>") -> bytes:
    """The shared object `image` with every virtual address shifted by `delta`, a multiple of
    its segments' alignment; UlpError (one line, naming `name`) if it cannot be safely."""
    return Rebasing(ElfFile(image, name)).moved(delta)


class Rebasing:
    """Where a shared object holds addresses: the file offsets of its 8-byte address words,
    found once, with every refusal but the ones that depend on the distance. `ulp trigger
    --all` moves one patch object to a different place in each process: each move is then one
    addition per word, not a walk of the object's tables."""

    def __init__(self, elf: ElfFile) -> None:
        self.elf = elf
        self.offsets: set[int] = set()
        if elf.header.type != ET_DYN:
            raise self.refuse("not a shared object (ET_DYN)")
        if not elf.sections:
            raise self.refuse("no section headers, which name its symbol and relocation tables")
        self.place = footprint(elf)
        self.dynamic()
        self.headers()
        self.symbols()
        self.relocations()
        self.relr()
        self.got_header()

    def moved(self, delta: int) -> bytes:
        """The object's bytes with every address `delta` further on."""
        place = self.place
        if delta % place.alignment:
            raise self.refuse(
                f"{delta:#x} is not a multiple of its segments' alignment {place.alignment:#x}"
            )
        if place.start + delta < 0 or place.start + place.size + delta > USER_END:
            raise self.refuse(f"moved by {delta:#x} it would lie outside user memory")
        out = bytearray(self.elf.data)
        for offset in self.offsets:
            _WORD.pack_into(out, offset, (self.word(offset) + delta) % (1 << 64))
        return bytes(out)

    def refuse(self, why: str) -> UlpError:
        return UlpError(f"{self.elf.name}: cannot rebase: {why}")

    # -- words -------------------------------------------------------------------------------

    def word(self, offset: int) -> int:
        return _WORD.unpack_from(self.elf.data, offset)[0]

    def shift(self, offset: int) -> None:
        """The address at file offset `offset` moves with the object."""
        self.offsets.add(offset)

    def file_offset(self, vaddr: int) -> int | None:
        """The file offset of the 8 bytes at `vaddr`, or None where the file holds none
        (.bss)."""
        return None if self.elf.segment_at(vaddr, 8) is None else self.elf.offset_of(vaddr, 8)

    # -- the tables --------------------------------------------------------------------------

    def dynamic(self) -> None:
        dyn = self.elf.dynamic
        if dyn.segment is None:
            raise self.refuse("no dynamic section")
        for i, (tag, value) in enumerate(dyn.entries):
            if tag in _ADDRESS_TAGS or DT_ADDRRNGLO <= tag <= DT_ADDRRNGHI:
                self.shift(dyn.segment.offset + i * DYN.size + _D_VAL)
            elif tag in _REL_TAGS:
                raise self.refuse("it has REL relocations (DT_REL), whose addends it cannot read")
            elif tag == DT_PLTREL and value != DT_RELA:
                raise self.refuse(f"DT_PLTREL {value} is not DT_RELA")
            elif tag == DT_DEBUG:
                if value:
                    raise self.refuse("DT_DEBUG is not 0 in the file")
            elif tag not in _VALUE_TAGS and not DT_VALRNGLO <= tag <= DT_VALRNGHI:
                raise self.refuse(f"dynamic tag {tag:#x} is unknown and may hold an address")

    def headers(self) -> None:
        elf = self.elf
        if elf.header.entry:
            self.shift(_E_ENTRY)
        for seg in elf.segments:
            if seg.memsz == 0 and seg.vaddr == 0:
                continue
            at = elf.header.phoff + seg.index * PHDR.size
            self.shift(at + _P_VADDR)
            self.shift(at + _P_PADDR)
        for sec in elf.sections:
            if sec.flags & SHF_ALLOC:
                self.shift(elf.header.shoff + sec.index * SHDR.size + _SH_ADDR)

    def allocated(self, index: int) -> bool:
        sections = self.elf.sections
        return 0 < index < len(sections) and bool(sections[index].flags & SHF_ALLOC)

    def symbols(self) -> None:
        for sec in self.elf.sections:
            if sec.type not in (SHT_SYMTAB, SHT_DYNSYM):
                continue
            for sym in SymbolTable(self.elf, sec).symbols:
                # A symbol of a section that is not loaded (a debugging section's) has no
                # address, nor has an undefined, absolute or common one.
                if self.allocated(sym.shndx) and sym.type != STT_TLS:
                    self.shift(sec.offset + sym.index * SYM.size + _ST_VALUE)

    def relocations(self) -> None:
        elf = self.elf
        if any(sec.type == SHT_REL for sec in elf.sections):
            raise self.refuse("it has REL relocations, whose addends it cannot read")
        dynamic_tables = []
        for sec in elf.sections:
            if sec.type != SHT_RELA:
                continue
            if sec.entsize != RELA.size or sec.size % RELA.size:
                raise self.refuse(f"corrupt relocation section {sec.name}")
            loaded = bool(sec.flags & SHF_ALLOC)
            if loaded:
                dynamic_tables.append((sec.addr, sec.addr + sec.size))
            # A relocation of a section that is not loaded (kept by --emit-relocs for a
            # debugging section) has a place that is an offset in it, not an address.
            elif not self.allocated(sec.info):
                continue
            for i, (r_offset, info, addend) in enumerate(RELA.iter_unpack(elf.section_data(sec))):
                at = sec.offset + i * RELA.size
                self.shift(at)
                if loaded:
                    self.dynamic_relocation(sec.name, at, r_offset, info & 0xFFFFFFFF, addend)
        for address_tag, size_tag in ((DT_RELA, DT_RELASZ), (DT_JMPREL, DT_PLTRELSZ)):
            addr, size = elf.dynamic_value(address_tag), elf.dynamic_value(size_tag) or 0
            if (
                addr is not None
                and size
                and not any(lo <= addr and addr + size <= hi for lo, hi in dynamic_tables)
            ):
                raise self.refuse("a dynamic relocation table is not a relocation section")

    def dynamic_relocation(self, table: str, at: int, place: int, kind: int, addend: int) -> None:
        content = self.file_offset(place)
        if kind in _ADDRESS_ADDEND:
            self.shift(at + _R_ADDEND)
            # ld writes the addend at the place too (the loader overwrites it).
            if content is not None and self.word(content) == addend & (2**64 - 1):
                self.shift(content)
        elif kind == R_X86_64_JUMP_SLOT:
            # A lazy slot holds the link-time address of its PLT stub, which the loader
            # adds the load bias to (0 once loaded at the new address).
            if content is not None and self.word(content):
                self.shift(content)
        elif kind not in _OTHER_DYNAMIC_TYPES:
            raise self.refuse(f"relocation type {kind} in {table} is unknown")

    def relr(self) -> None:
        """DT_RELR's places hold their link-time addresses, and its even words are places."""
        elf = self.elf
        addr, size = elf.dynamic_value(DT_RELR), elf.dynamic_value(DT_RELRSZ) or 0
        if addr is None or not size:
            return
        table = elf.offset_of(addr, size)
        for i in range(size // 8):
            if self.word(table + 8 * i) & 1 == 0:
                self.shift(table + 8 * i)
        for place in elf.relocations.relr_places():
            content = self.file_offset(place)
            if content is None:
                raise self.refuse(f"a DT_RELR place {place:#x} is not in the file")
            self.shift(content)

    def got_header(self) -> None:
        """The GOT's first word: the link-time address of _DYNAMIC, without a relocation."""
        elf = self.elf
        got = elf.dynamic_value(DT_PLTGOT)
        dynamic = next(s for s in elf.segments if s.type == PT_DYNAMIC)
        at = None if got is None else self.file_offset(got)
        if at is not None and self.word(at) == dynamic.vaddr:
            self.shift(at)
