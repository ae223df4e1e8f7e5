"""Where the rewrite's additions go: three loadable segments above the highest address of the
input (`Layout`), and the program header table that maps them.

Why not LIEF's writer: adding the dynamic symbol through LIEF 1.0 left `.gnu.version`,
`.hash` and `.rela.dyn` of libc at odd addresses and `eu-elflint` reported about 3000 new
errors; the layout below is small enough to own, and it is byte-for-byte deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

from ulp_build.elf import PF_R, PF_W, PF_X, PHDR, PT_LOAD, PT_PHDR, RELA, SYM, ElfFile, align
from ulp_build.prepare import codegen
from ulp_build.prepare.dynamic_tables import DynamicTables
from ulp_build.prepare.inputs import is_musl_loader
from ulp_build.prepare.layout import IFUNC_SLOTS_OFFSET

PAGE = 0x1000
# Zeros the file may grow by so that its program headers lie at e_phoff's address (lay_out).
MAX_ZEROS = 1 << 20


def wrapper_stride(ibt: bool, leaves: int) -> int:
    """The room an IFUNC wrapper comparing its resolver's answer with `leaves` implementations
    takes in the RX segment."""
    return align(codegen.ifunc_wrapper_size(ibt, leaves), 16)


@dataclass(frozen=True)
class Layout:
    """Link-time addresses of everything the rewrite appends.

    Three segments above the highest address of the input, each starting on a page: R (program
    headers and the dynamic tables), RX (trampolines, then ulp_entry and IFUNC wrappers), RW
    (runtime slot, descriptor, IFUNC slots). The appended file part mirrors them page for page,
    from `r_offset` (usually equal to `r_va`: see `lay_out`).
    """

    r_va: int
    r_offset: int
    phdrs: int
    dynsym: int
    dynstr: int
    versym: int
    hash: int
    gnu_hash: int
    rela: int
    r_size: int
    x_va: int
    ulp_size: int  # the trampolines exactly; .ulp.track starts at the next 16-byte boundary
    track: int
    wrappers: int
    x_size: int
    w_va: int
    w_size: int

    def offset(self, va: int) -> int:
        return self.r_offset + va - self.r_va

    def ifunc_slot(self, index: int) -> int:
        return self.w_va + IFUNC_SLOTS_OFFSET + 8 * index


def lay_out(
    elf: ElfFile,
    tables: DynamicTables,
    dynstr_size: int,
    nfunctions: int,
    ifunc_leaves: list[int],
    ibt: bool,
) -> Layout:
    """Place the grown tables (one symbol or relocation longer than in `tables`, `.dynstr`
    `dynstr_size` bytes, `.gnu.hash` as long: the new symbol is unhashed), a trampoline per
    function and IFUNC, and an IFUNC wrapper and slot per IFUNC (`ifunc_leaves`: how many leaf
    implementations each wrapper hands out plain)."""
    # The R segment, and the program header table at its start, is loaded at the address equal
    # to its file offset: musl's loader finds its own headers at base + e_phoff (it is the
    # libc.so every musl program maps), so a table anywhere else sends it reading other bytes.
    # Either the file grows to the highest address (zeros, a .bss's worth) or the address rises
    # to the end of the file (unmapped address space, debug sections' worth), whichever is
    # larger; both are appended, so nothing of the input moves. Other loaders, and musl's for
    # every other library, find the table through the segment that maps it: for a library with
    # a .bss larger than MAX_ZEROS, the file does not grow by that much for nothing.
    highest = align(max(s.vaddr + s.memsz for s in elf.loads), PAGE)
    end = align(len(elf.data), PAGE)
    r_va = max(highest, end)
    r_offset = r_va if r_va - end <= MAX_ZEROS or is_musl_loader(elf) else end
    cursor = r_va

    def place(size: int, alignment: int) -> int:
        nonlocal cursor
        at = align(cursor, alignment)
        cursor = at + size
        return at

    phdrs = place((elf.header.phnum + 3) * PHDR.size, 8)
    dynsym = place(tables.dynsym.size + SYM.size, 8)
    dynstr = place(dynstr_size, 1)
    versym = place(tables.versym.size + 2, 2) if tables.versym else 0
    hash_ = place(tables.hash.size + 4, 8) if tables.hash else 0
    gnu_hash = place(tables.gnu_hash.size, 8) if tables.gnu_hash else 0
    rela = place(tables.rela.size + RELA.size, 8)
    r_size = cursor - r_va

    x_va = align(cursor, PAGE)
    ulp_size = codegen.trampoline_size(ibt) * (nfunctions + len(ifunc_leaves))
    track = align(x_va + ulp_size, 16)
    wrappers = track + align(codegen.ULP_ENTRY_SIZE, 16)
    x_size = wrappers + sum(wrapper_stride(ibt, n) for n in ifunc_leaves) - x_va
    w_va = align(x_va + x_size, PAGE)
    return Layout(
        r_va,
        r_offset,
        phdrs,
        dynsym,
        dynstr,
        versym,
        hash_,
        gnu_hash,
        rela,
        r_size,
        x_va,
        ulp_size,
        track,
        wrappers,
        x_size,
        w_va,
        IFUNC_SLOTS_OFFSET + 8 * len(ifunc_leaves),
    )


def program_headers(elf: ElfFile, lay: Layout) -> bytes:
    """The input's program headers, PT_PHDR moved, the three loads after the last PT_LOAD
    (the loader requires PT_LOAD entries sorted by address)."""
    size = (elf.header.phnum + 3) * PHDR.size
    loads = [
        (PF_R, lay.r_va, lay.r_size),
        (PF_R | PF_X, lay.x_va, lay.x_size),
        (PF_R | PF_W, lay.w_va, lay.w_size),
    ]
    last_load = max(s.index for s in elf.loads)
    out = bytearray()
    for seg in elf.segments:
        if seg.type == PT_PHDR:
            out += PHDR.pack(
                PT_PHDR,
                seg.flags,
                lay.offset(lay.phdrs),
                lay.phdrs,
                lay.phdrs,
                size,
                size,
                seg.align,
            )
        else:
            start = elf.header.phoff + seg.index * PHDR.size
            out += elf.data[start : start + PHDR.size]
        if seg.index == last_load:
            for flags, va, length in loads:
                out += PHDR.pack(PT_LOAD, flags, lay.offset(va), va, va, length, length, PAGE)
    return bytes(out)
