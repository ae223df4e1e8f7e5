"""The dynamic tables grown by the runtime's symbol.

The loader binds the weak undefined RUNTIME_SYMBOL through one GOT relocation, so `.dynsym`,
`.dynstr`, `.gnu.version` and the hash tables get one symbol more and `.rela.dyn` one relocation
more. The grown copies go in the R segment and `.dynamic` is pointed at them; in the original
bytes only `.dynamic` values and the symbol indices in `.rela.plt` change. In the copy of
`.dynsym` every tracked symbol is pointed at its trampoline (an IFUNC at its wrapper), so a
caller that binds by name calls through the trampoline, and in the copy of `.rela.dyn` every
relative relocation that takes a tracked function's address is pointed at it too.
"""

from __future__ import annotations

from dataclasses import dataclass

from ulp_build.elf import (
    DT_GNU_HASH,
    DT_HASH,
    DT_RELA,
    DT_RELASZ,
    DT_STRSZ,
    DT_STRTAB,
    DT_SYMTAB,
    DT_VERSYM,
    DYN,
    R_X86_64_GLOB_DAT,
    R_X86_64_RELATIVE,
    RELA,
    STB_WEAK,
    STT_GNU_IFUNC,
    STT_NOTYPE,
    SYM,
    VER_NDX_GLOBAL,
    VERSYM,
    ElfFile,
    Symbol,
)
from ulp_build.prepare import codegen, symbol_hash
from ulp_build.prepare.dynamic_tables import DynamicTables
from ulp_build.prepare.layout import RUNTIME_SLOT_OFFSET, RUNTIME_SYMBOL
from ulp_build.prepare.segments import Layout
from ulp_build.prepare.trampolines import CodeSegment


@dataclass(frozen=True)
class RuntimeSymbol:
    """Where the runtime's symbol goes: its index in `.dynsym`, and `.dynstr` with its name."""

    index: int
    name: int  # offset of the name in `dynstr`
    dynstr: bytes

    def renumber(self, info: int) -> int:
        """A relocation's `r_info` with its symbol index moved past the inserted symbol."""
        index = info >> 32
        if index >= self.index:
            index += 1
        return (index << 32) | (info & 0xFFFFFFFF)


def runtime_symbol(elf: ElfFile, tables: DynamicTables) -> RuntimeSymbol:
    dynstr = elf.section_data(tables.dynstr)
    # The runtime symbol is undefined, so with .gnu.hash it belongs before `symoffset`,
    # with the other unhashed symbols; every later index moves up by one.
    gnu_hash = tables.gnu_hash_table
    index = gnu_hash.symoffset if gnu_hash else tables.nsyms
    return RuntimeSymbol(index, len(dynstr), dynstr + RUNTIME_SYMBOL.encode() + b"\0")


def grow(
    elf: ElfFile,
    tables: DynamicTables,
    lay: Layout,
    runtime: RuntimeSymbol,
    tracked: list[Symbol],
    code: CodeSegment,
    addends: dict[int, int],
    ibt: bool,
) -> dict[int, bytes]:
    """The grown dynamic tables by their address in the R segment; `addends` are the new
    addends of the `R_X86_64_RELATIVE` relocations redirected to a trampoline, by place."""
    syms = bytearray(elf.section_data(tables.dynsym))
    tracked_size = codegen.TRAMPOLINE_CODE + (4 if ibt else 0)
    # .ulp and .ulp.track are the first two section headers after the input's (output_file.py).
    ulp_index, track_index = elf.header.shnum, elf.header.shnum + 1
    # Symbol i is 24 bytes: st_shndx is half-word 12i+3, st_value and st_size are quad
    # words 3i+1 and 3i+2. Indexed stores through casts beat a struct call per symbol.
    with memoryview(syms) as raw, raw.cast("H") as half, raw.cast("Q") as quad:
        for sym in tracked:
            i = sym.index
            if sym.type == STT_GNU_IFUNC:
                half[12 * i + 3] = track_index
                quad[3 * i + 1] = code.wrapper_at[sym.value]
                quad[3 * i + 2] = code.wrapper_size[sym.value]
            else:
                half[12 * i + 3] = ulp_index
                quad[3 * i + 1] = code.trampoline_at[sym.value]
                quad[3 * i + 2] = tracked_size
    at = runtime.index * SYM.size
    syms[at:at] = SYM.pack(runtime.name, (STB_WEAK << 4) | STT_NOTYPE, 0, 0, 0, 0)

    rela = bytearray()
    for r_offset, info, addend in RELA.iter_unpack(elf.section_data(tables.rela)):
        if info & 0xFFFFFFFF == R_X86_64_RELATIVE:
            addend = addends.get(r_offset, addend)
        rela += RELA.pack(r_offset, runtime.renumber(info), addend)
    rela += RELA.pack(lay.w_va + RUNTIME_SLOT_OFFSET, (runtime.index << 32) | R_X86_64_GLOB_DAT, 0)

    grown = {lay.dynsym: bytes(syms), lay.dynstr: runtime.dynstr, lay.rela: bytes(rela)}
    if tables.versym is not None:
        versym = bytearray(elf.section_data(tables.versym))
        at = VERSYM.size * runtime.index
        versym[at:at] = VERSYM.pack(VER_NDX_GLOBAL)
        grown[lay.versym] = bytes(versym)
    if tables.gnu_hash_table is not None:
        grown[lay.gnu_hash] = symbol_hash.gnu_hash_shift(tables.gnu_hash_table, runtime.index)
    if tables.sysv_hash_table is not None:
        grown[lay.hash] = symbol_hash.sysv_hash_insert(
            tables.sysv_hash_table, runtime.index, RUNTIME_SYMBOL.encode()
        )
    return grown


def renumber_plt_relocations(out: bytearray, tables: DynamicTables, runtime: RuntimeSymbol) -> None:
    """`.rela.plt` stays where it is; only the symbol indices it names move."""
    sec = tables.plt_rela
    if sec is None or runtime.index >= tables.nsyms:
        return
    for pos in range(sec.offset, sec.offset + sec.size, RELA.size):
        r_offset, info, addend = RELA.unpack_from(out, pos)
        RELA.pack_into(out, pos, r_offset, runtime.renumber(info), addend)


def point_dynamic_at(
    out: bytearray, elf: ElfFile, tables: DynamicTables, lay: Layout, grown: dict[int, bytes]
) -> None:
    """Rewrite in place the `.dynamic` entries the loader finds the grown tables by."""
    moved = {
        DT_SYMTAB: lay.dynsym,
        DT_STRTAB: lay.dynstr,
        DT_STRSZ: len(grown[lay.dynstr]),
        DT_RELA: lay.rela,
        DT_RELASZ: len(grown[lay.rela]),
    }
    if tables.versym is not None:
        moved[DT_VERSYM] = lay.versym
    if tables.gnu_hash is not None:
        moved[DT_GNU_HASH] = lay.gnu_hash
    if tables.hash is not None:
        moved[DT_HASH] = lay.hash
    base = elf.dynamic.segment.offset
    for k in range(len(elf.dynamic.entries)):
        tag, _value = DYN.unpack_from(out, base + k * DYN.size)
        if tag in moved:
            DYN.pack_into(out, base + k * DYN.size, tag, moved[tag])
