"""Assembling the output file: the input's bytes, then the three segments page for page as
`segments.Layout` placed them, a new `.shstrtab` and section header table at the end, and the
ELF header pointed at the new program and section header tables.

The loader never reads section headers, but `check`, the packer and debuggers do: the moved
tables keep their sections, re-pointed, and the new code and data get sections of their own.
"""

from __future__ import annotations

from ulp_build.elf import (
    EHDR,
    SHDR,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_WRITE,
    SHT_PROGBITS,
    STT_SECTION,
    SYM,
    ElfFile,
    align,
)
from ulp_build.prepare.dynamic_tables import DynamicTables
from ulp_build.prepare.layout import SECTION_DATA, SECTION_TRACK, SECTION_TRAMPOLINES
from ulp_build.prepare.segments import Layout


def _pad_to(out: bytearray, offset: int) -> None:
    out += bytes(offset - len(out))


def append_segments(
    out: bytearray, lay: Layout, r_segment: dict[int, bytes], code: bytes, data: bytes
) -> None:
    """Append the R segment (its contents by address), the RX and the RW segment."""
    _pad_to(out, lay.r_offset)
    segment = bytearray(lay.r_size)
    for va, blob in r_segment.items():
        segment[va - lay.r_va : va - lay.r_va + len(blob)] = blob
    out += segment
    _pad_to(out, lay.offset(lay.x_va))
    out += code
    _pad_to(out, lay.offset(lay.w_va))
    out += data


def moved_tables(tables: DynamicTables, lay: Layout) -> dict[int, int]:
    """Section index -> address of its grown copy, for every dynamic table that moves."""
    moved = {
        tables.dynsym.index: lay.dynsym,
        tables.dynstr.index: lay.dynstr,
        tables.rela.index: lay.rela,
    }
    for sec, va in (
        (tables.versym, lay.versym),
        (tables.gnu_hash, lay.gnu_hash),
        (tables.hash, lay.hash),
    ):
        if sec is not None:
            moved[sec.index] = va
    return moved


def repoint_section_symbols(out: bytearray, elf: ElfFile, moved: dict[int, int]) -> None:
    """A library linked with --emit-relocs (as `ulp diff` wants it) keeps in `.symtab` one
    STT_SECTION symbol per section, valued at the section's address: those of the moved tables
    follow their section headers, or eu-elflint finds their values outside their sections."""
    symtab = elf.symtab.section
    if symtab is None:
        return
    for sym in elf.symtab_symbols:
        if sym.type == STT_SECTION and sym.shndx in moved:
            at = symtab.offset + sym.index * SYM.size
            fields = list(SYM.unpack_from(out, at))
            fields[4] = moved[sym.shndx]  # st_value
            SYM.pack_into(out, at, *fields)


def append_section_headers(
    out: bytearray, elf: ElfFile, moved: dict[int, int], lay: Layout, grown: dict[int, bytes]
) -> int:
    """A new `.shstrtab` and section header table at the end: the `moved` tables
    (moved_tables) re-pointed, `.ulp`, `.ulp.track` and `.ulp.data` appended. Returns the
    table's file offset."""
    shstrtab = bytearray(elf.section_data(elf.sections[elf.header.shstrndx]))
    names = {}
    for name in (SECTION_TRAMPOLINES, SECTION_TRACK, SECTION_DATA):
        names[name] = len(shstrtab)
        shstrtab += name.encode() + b"\0"
    shstrtab_offset = len(out)
    out += shstrtab
    _pad_to(out, align(len(out), 8))
    shoff = len(out)

    for sec in elf.sections:
        start = elf.header.shoff + sec.index * SHDR.size
        fields = list(SHDR.unpack(elf.data[start : start + SHDR.size]))
        if sec.index in moved:
            va = moved[sec.index]
            fields[3:6] = [va, lay.offset(va), len(grown[va])]
        elif sec.index == elf.header.shstrndx:
            fields[4:6] = [shstrtab_offset, len(shstrtab)]
        out += SHDR.pack(*fields)
    code = SHF_ALLOC | SHF_EXECINSTR
    for name, flags, va, size, alignment in (
        (SECTION_TRAMPOLINES, code, lay.x_va, lay.ulp_size, 16),
        (SECTION_TRACK, code, lay.track, lay.x_va + lay.x_size - lay.track, 16),
        (SECTION_DATA, SHF_ALLOC | SHF_WRITE, lay.w_va, lay.w_size, 8),
    ):
        out += SHDR.pack(
            names[name], SHT_PROGBITS, flags, va, lay.offset(va), size, 0, 0, alignment, 0
        )
    return shoff


def update_elf_header(out: bytearray, elf: ElfFile, lay: Layout, shoff: int) -> None:
    fields = list(EHDR.unpack_from(out))
    fields[5] = lay.offset(lay.phdrs)  # e_phoff
    fields[6] = shoff  # e_shoff
    fields[10] = elf.header.phnum + 3  # e_phnum
    fields[12] = elf.header.shnum + 3  # e_shnum
    EHDR.pack_into(out, 0, *fields)
