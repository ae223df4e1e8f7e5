"""Preparing a shared library for live patching (docs/design.md, "The prepared library").

The transformation only appends: three new loadable segments after the highest address of the
input, a new program header table, new copies of the dynamic symbol, string, version, hash and
relocation tables (one weak undefined symbol and one GOT relocation longer), and a new section
header table. In the original bytes only fields change: ELF header pointers, `.dynamic` values,
symbol indices in `.rela.plt`, and the two entry nops of each padded function. No code or data
address moves, so separate debug info and every absolute address stay valid.

Why not LIEF's writer: adding the dynamic symbol through LIEF 1.0 left `.gnu.version`,
`.hash` and `.rela.dyn` of libc at odd addresses and `eu-elflint` reported about 3000 new
errors; the layout below is small enough to own, and it is byte-for-byte deterministic.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ulp_build.atomic_write import write_atomically
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
    EHDR,
    PF_R,
    PF_W,
    PF_X,
    PHDR,
    PT_LOAD,
    PT_PHDR,
    R_X86_64_GLOB_DAT,
    RELA,
    SHDR,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_WRITE,
    SHN_LORESERVE,
    SHT_PROGBITS,
    STB_WEAK,
    STT_GNU_IFUNC,
    STT_NOTYPE,
    SYM,
    VER_NDX_GLOBAL,
    VERSYM,
    ElfError,
    ElfFile,
    Section,
    align,
)
from ulp_build.errors import UlpError
from ulp_build.prepare import codegen, patchable, symbol_hash
from ulp_build.prepare.check import check
from ulp_build.prepare.dynamic_tables import DynamicTables
from ulp_build.prepare.inputs import check_input, exported_functions
from ulp_build.prepare.layout import (
    DEFAULT_UNTRACKED,
    DESCRIPTOR,
    DESCRIPTOR_FLAG_IBT,
    DESCRIPTOR_MAGIC,
    DESCRIPTOR_OFFSET,
    DESCRIPTOR_VERSION,
    IFUNC_SLOTS_OFFSET,
    RUNTIME_SLOT_OFFSET,
    RUNTIME_SYMBOL,
    SECTION_DATA,
    SECTION_TRACK,
    SECTION_TRAMPOLINES,
    is_prepared,
)

PAGE = 0x1000


@dataclass
class RewriteResult:
    input: str
    output: str
    already_prepared: bool = False
    trampolines: int = 0
    ifuncs: int = 0
    exported_functions: int = 0
    patchable: int = 0
    normalized: int = 0
    untracked: list[str] = field(default_factory=list)
    not_patchable: list[str] = field(default_factory=list)
    padding_without_record: list[str] = field(default_factory=list)
    records_without_padding: list[str] = field(default_factory=list)


def rewrite(
    path: str | Path, output: str | Path | None = None, untracked: Iterable[str] = ()
) -> RewriteResult:
    """Prepare the library at `path`, in place (atomically) or into `output`.

    A library that is already prepared is left byte-identical (and copied if `output` is given).
    """
    source = Path(path)
    elf = ElfFile.load(source)
    data, result = prepare(elf, untracked)
    # In place means the file behind any symlink, so the link stays a link.
    target = Path(output) if output is not None else source.resolve()
    result.output = str(output if output is not None else source)
    if output is None and result.already_prepared:
        return result
    write_atomically(target, data, source.stat().st_mode & 0o7777)
    return result


def prepare(elf: ElfFile, untracked: Iterable[str] = ()) -> tuple[bytes | bytearray, RewriteResult]:
    """The prepared image of `elf` and what was done, without touching any file."""
    tables = check_input(elf)
    result = RewriteResult(elf.name, elf.name)
    if is_prepared(elf):
        # Build integrations ship what passes here: a prepared library is taken as it is only
        # if `check` finds nothing wrong with it.
        errors = check(elf).errors
        if errors:
            raise ElfError(f"{elf.name}: prepared, but {errors[0]}")
        result.already_prepared = True
        return elf.data, result
    try:
        rewriter = _Rewriter(elf, tables, set(DEFAULT_UNTRACKED) | set(untracked), result)
        return rewriter.build(), result
    except (struct.error, IndexError) as exc:
        # A table whose counts disagree with its size: the headers said nothing wrong, but
        # the contents do not add up.
        raise ElfError(f"{elf.name}: corrupt ELF file ({exc})") from None
    except UlpError as exc:
        # Raised where the file is not known (code generation): name it here.
        if str(exc).startswith(f"{elf.name}: "):
            raise
        raise ElfError(f"{elf.name}: {exc}") from None


@dataclass(frozen=True)
class _Layout:
    """Link-time addresses of everything the rewrite appends.

    Three segments above the highest address of the input, each starting on a page: R (program
    headers and the dynamic tables), RX (trampolines, then ulp_entry and IFUNC wrappers), RW
    (runtime slot, descriptor, IFUNC slots). The appended file part mirrors them page for page.
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


class _Rewriter:
    """One preparation of one library: layout first, then the bytes."""

    def __init__(
        self, elf: ElfFile, tables: DynamicTables, untracked: set[str], result: RewriteResult
    ) -> None:
        self.elf = elf
        self.untracked = untracked
        self.result = result
        self.ibt = elf.uses_ibt
        self.out = bytearray(elf.data)
        self.exported = exported_functions(elf)
        self.dyn = tables.dyn
        name = elf.name
        if tables.rela is None:
            raise ElfError(f"{name}: no DT_RELA relocations; cannot add the runtime's GOT slot")
        if tables.hash is None and tables.gnu_hash is None:
            raise ElfError(f"{name}: no symbol hash table (DT_HASH or DT_GNU_HASH)")
        if elf.header.shnum + 3 >= SHN_LORESERVE:
            raise ElfError(f"{name}: too many sections to add three more")
        # Each section below is the one the loader reads through its DT_* entry (checked).
        self.sec_dynsym: Section = tables.dynsym
        self.sec_dynstr: Section = tables.dynstr
        self.sec_versym = tables.versym
        self.sec_hash = tables.hash
        self.sec_gnu_hash = tables.gnu_hash
        self.sec_rela: Section = tables.rela
        self.sec_plt_rela = tables.plt_rela
        self.nsyms = tables.nsyms
        # The runtime symbol is undefined, so with .gnu.hash it belongs before `symoffset`,
        # with the other unhashed symbols; every later index moves up by one.
        self.gnu_hash = tables.gnu_hash_table
        self.sysv_hash = tables.sysv_hash_table
        self.insert_at = self.gnu_hash.symoffset if self.gnu_hash else self.nsyms

    def build(self) -> bytearray:
        functions, ifuncs = self._select()
        self._normalize_padding(functions)
        dynstr = self.elf.section_data(self.sec_dynstr) + RUNTIME_SYMBOL.encode() + b"\0"
        layout = self._layout(len(functions), len(ifuncs), len(dynstr))
        code, tramp_at, wrapper_at = self._code(layout, functions, ifuncs)
        tables = self._tables(layout, dynstr, tramp_at, wrapper_at)
        self._renumber_plt_relocations()
        self._point_dynamic_at(layout, tables)
        self._append(layout, tables, code, self._data(layout, len(functions) + len(ifuncs)))
        self._append_section_headers(layout, tables)
        self._update_elf_header(layout)
        return self.out

    def _select(self) -> tuple[list[int], list[int]]:
        """Distinct entry addresses of tracked FUNC symbols and of IFUNC resolvers.

        Aliases and symbol versions of one function share its address, so they share one
        trampoline and `&f` is the same whichever name it was looked up by.
        """
        functions: set[int] = set()
        ifuncs: set[int] = set()
        untracked: set[str] = set()
        for sym in self.exported:
            if sym.name in self.untracked:
                untracked.add(sym.name)
            elif sym.type == STT_GNU_IFUNC:
                ifuncs.add(sym.value)
            else:
                functions.add(sym.value)
        self.result.exported_functions = len(self.exported)
        self.result.untracked = sorted(untracked)
        self.result.trampolines = len(functions) + len(ifuncs)
        self.result.ifuncs = len(ifuncs)
        return sorted(functions), sorted(ifuncs)

    def _normalize_padding(self, functions: list[int]) -> None:
        """Make each entry's `90 90` one `66 90`: a thread is never stopped between two nops,
        so the universe checker's 2-byte jump can later replace it in one write."""
        pads = patchable.find(self.elf)
        r = self.result
        r.patchable = len(pads.functions)
        no_padding = set(functions) - pads.functions.keys()
        # In .dynsym order, which is deterministic; sorting 3000 names would cost more than
        # the trampolines do.
        r.not_patchable = list(
            dict.fromkeys(s.name for s in self.exported if s.value in no_padding)
        )
        r.padding_without_record = [self.elf.name_at(a) for a in pads.padding_without_record]
        r.records_without_padding = [
            self.elf.name_at(a + patchable.PAD_BEFORE) for a in pads.records_without_padding
        ]
        for func in pads.functions.values():
            if not func.normalized:
                off = self.elf.offset_of(func.nop_at, 2)
                self.out[off : off + 2] = codegen.NOP2
                r.normalized += 1

    def _layout(self, nfunctions: int, nifuncs: int, dynstr_size: int) -> _Layout:
        elf = self.elf
        r_va = align(max(s.vaddr + s.memsz for s in elf.loads), PAGE)
        cursor = r_va

        def place(size: int, alignment: int) -> int:
            nonlocal cursor
            at = align(cursor, alignment)
            cursor = at + size
            return at

        phdrs = place((elf.header.phnum + 3) * PHDR.size, 8)
        dynsym = place(self.sec_dynsym.size + SYM.size, 8)
        dynstr = place(dynstr_size, 1)
        versym = place(self.sec_versym.size + 2, 2) if self.sec_versym else 0
        hash_ = place(self.sec_hash.size + 4, 8) if self.sec_hash else 0
        gnu_hash = place(self.sec_gnu_hash.size, 8) if self.sec_gnu_hash else 0
        rela = place(self.sec_rela.size + RELA.size, 8)
        r_size = cursor - r_va

        x_va = align(cursor, PAGE)
        ulp_size = codegen.trampoline_size(self.ibt) * (nfunctions + nifuncs)
        track = align(x_va + ulp_size, 16)
        wrappers = track + align(codegen.ULP_ENTRY_SIZE, 16)
        x_size = wrappers + self._wrapper_stride * nifuncs - x_va
        w_va = align(x_va + x_size, PAGE)
        return _Layout(
            r_va,
            align(len(elf.data), PAGE),
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
            IFUNC_SLOTS_OFFSET + 8 * nifuncs,
        )

    @property
    def _wrapper_stride(self) -> int:
        return align(codegen.ifunc_wrapper_size(self.ibt), 16)

    def _code(
        self, lay: _Layout, functions: list[int], ifuncs: list[int]
    ) -> tuple[bytes, dict[int, int], dict[int, int]]:
        """The RX segment: trampolines, ulp_entry, IFUNC wrappers; and where each landed."""
        tsize = codegen.trampoline_size(self.ibt)
        tramp_at = {func: lay.x_va + i * tsize for i, func in enumerate(functions)}
        ifunc_tramps = [lay.x_va + (len(functions) + j) * tsize for j in range(len(ifuncs))]
        targets = [(False, f) for f in functions]
        targets += [(True, self._ifunc_slot(lay, j)) for j in range(len(ifuncs))]
        code = bytearray(codegen.trampoline_table(lay.x_va, targets, lay.track, self.ibt))
        code = code.ljust(lay.track - lay.x_va, codegen.INT3)
        entry = codegen.ulp_entry(
            lay.track, lay.w_va + RUNTIME_SLOT_OFFSET, lay.w_va + DESCRIPTOR_OFFSET
        )
        code += entry.ljust(lay.wrappers - lay.track, codegen.INT3)
        wrapper_at: dict[int, int] = {}
        for j, resolver in enumerate(ifuncs):
            wrapper_at[resolver] = at = lay.x_va + len(code)
            wrapper = codegen.ifunc_wrapper(
                at, resolver, self._ifunc_slot(lay, j), ifunc_tramps[j], self.ibt
            )
            code += wrapper.ljust(self._wrapper_stride, codegen.INT3)
        return bytes(code), tramp_at, wrapper_at

    @staticmethod
    def _ifunc_slot(lay: _Layout, index: int) -> int:
        return lay.w_va + IFUNC_SLOTS_OFFSET + 8 * index

    def _data(self, lay: _Layout, ntrampolines: int) -> bytes:
        """The RW segment: runtime slot (0 until relocated), descriptor, IFUNC slots."""
        data = bytearray(lay.w_size)
        flags = DESCRIPTOR_FLAG_IBT if self.ibt else 0
        note = self.elf.build_id_note
        build_id, build_id_addr = note if note is not None else (b"", 0)
        DESCRIPTOR.pack_into(
            data,
            DESCRIPTOR_OFFSET,
            magic=DESCRIPTOR_MAGIC,
            version=DESCRIPTOR_VERSION,
            flags=flags,
            link_address=lay.w_va + DESCRIPTOR_OFFSET,
            trampolines=lay.x_va,
            trampoline_count=ntrampolines,
            trampoline_size=codegen.trampoline_size(self.ibt),
            build_id=build_id_addr,
            build_id_size=len(build_id),
        )
        return bytes(data)

    def _renumber(self, info: int) -> int:
        index = info >> 32
        if index >= self.insert_at:
            index += 1
        return (index << 32) | (info & 0xFFFFFFFF)

    def _tables(
        self, lay: _Layout, dynstr: bytes, tramp_at: dict[int, int], wrapper_at: dict[int, int]
    ) -> dict[int, bytes]:
        """The R segment's contents by address: program headers and the grown dynamic tables."""
        elf = self.elf
        syms = bytearray(elf.section_data(self.sec_dynsym))
        tracked_size = codegen.TRAMPOLINE_CODE + (4 if self.ibt else 0)
        wrapper_size = codegen.ifunc_wrapper_size(self.ibt)
        ulp_index, track_index = elf.header.shnum, elf.header.shnum + 1
        # Symbol i is 24 bytes: st_shndx is half-word 12i+3, st_value and st_size are quad
        # words 3i+1 and 3i+2. Indexed stores through casts beat a struct call per symbol.
        with memoryview(syms) as raw, raw.cast("H") as half, raw.cast("Q") as quad:
            for sym in self.exported:
                if sym.name in self.untracked:
                    continue
                i = sym.index
                if sym.type == STT_GNU_IFUNC:
                    half[12 * i + 3] = track_index
                    quad[3 * i + 1] = wrapper_at[sym.value]
                    quad[3 * i + 2] = wrapper_size
                else:
                    half[12 * i + 3] = ulp_index
                    quad[3 * i + 1] = tramp_at[sym.value]
                    quad[3 * i + 2] = tracked_size
        at = self.insert_at * SYM.size
        new_name = len(elf.section_data(self.sec_dynstr))
        syms[at:at] = SYM.pack(new_name, (STB_WEAK << 4) | STT_NOTYPE, 0, 0, 0, 0)

        rela = bytearray()
        for r_offset, info, addend in RELA.iter_unpack(elf.section_data(self.sec_rela)):
            rela += RELA.pack(r_offset, self._renumber(info), addend)
        rela += RELA.pack(
            lay.w_va + RUNTIME_SLOT_OFFSET, (self.insert_at << 32) | R_X86_64_GLOB_DAT, 0
        )

        tables = {
            lay.phdrs: self._program_headers(lay),
            lay.dynsym: bytes(syms),
            lay.dynstr: dynstr,
            lay.rela: bytes(rela),
        }
        if self.sec_versym is not None:
            versym = bytearray(elf.section_data(self.sec_versym))
            at = VERSYM.size * self.insert_at
            versym[at:at] = VERSYM.pack(VER_NDX_GLOBAL)
            tables[lay.versym] = bytes(versym)
        if self.gnu_hash is not None:
            tables[lay.gnu_hash] = symbol_hash.gnu_hash_shift(self.gnu_hash, self.insert_at)
        if self.sysv_hash is not None:
            tables[lay.hash] = symbol_hash.sysv_hash_insert(
                self.sysv_hash, self.insert_at, RUNTIME_SYMBOL.encode()
            )
        return tables

    def _program_headers(self, lay: _Layout) -> bytes:
        """The input's program headers, PT_PHDR moved, the three loads after the last PT_LOAD
        (the loader requires PT_LOAD entries sorted by address)."""
        elf = self.elf
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

    def _renumber_plt_relocations(self) -> None:
        """`.rela.plt` stays where it is; only the symbol indices it names move."""
        sec = self.sec_plt_rela
        if sec is None or self.insert_at >= self.nsyms:
            return
        for pos in range(sec.offset, sec.offset + sec.size, RELA.size):
            r_offset, info, addend = RELA.unpack_from(self.out, pos)
            RELA.pack_into(self.out, pos, r_offset, self._renumber(info), addend)

    def _point_dynamic_at(self, lay: _Layout, tables: dict[int, bytes]) -> None:
        moved = {
            DT_SYMTAB: lay.dynsym,
            DT_STRTAB: lay.dynstr,
            DT_STRSZ: len(tables[lay.dynstr]),
            DT_RELA: lay.rela,
            DT_RELASZ: len(tables[lay.rela]),
        }
        if self.sec_versym is not None:
            moved[DT_VERSYM] = lay.versym
        if self.sec_gnu_hash is not None:
            moved[DT_GNU_HASH] = lay.gnu_hash
        if self.sec_hash is not None:
            moved[DT_HASH] = lay.hash
        base = self.elf.dynamic.segment.offset
        for k in range(len(self.elf.dynamic.entries)):
            tag, _value = DYN.unpack_from(self.out, base + k * DYN.size)
            if tag in moved:
                DYN.pack_into(self.out, base + k * DYN.size, tag, moved[tag])

    def _pad_to(self, offset: int) -> None:
        self.out += bytes(offset - len(self.out))

    def _append(self, lay: _Layout, tables: dict[int, bytes], code: bytes, data: bytes) -> None:
        self._pad_to(lay.r_offset)
        segment = bytearray(lay.r_size)
        for va, blob in tables.items():
            segment[va - lay.r_va : va - lay.r_va + len(blob)] = blob
        self.out += segment
        self._pad_to(lay.offset(lay.x_va))
        self.out += code
        self._pad_to(lay.offset(lay.w_va))
        self.out += data

    def _append_section_headers(self, lay: _Layout, tables: dict[int, bytes]) -> None:
        """A new `.shstrtab` and section header table at the end: the moved tables re-pointed,
        `.ulp`, `.ulp.track` and `.ulp.data` appended."""
        elf = self.elf
        shstrtab = bytearray(elf.section_data(elf.sections[elf.header.shstrndx]))
        names = {}
        for name in (SECTION_TRAMPOLINES, SECTION_TRACK, SECTION_DATA):
            names[name] = len(shstrtab)
            shstrtab += name.encode() + b"\0"
        shstrtab_offset = len(self.out)
        self.out += shstrtab
        self._pad_to(align(len(self.out), 8))
        self.shoff = len(self.out)

        repoint = {
            self.sec_dynsym.index: lay.dynsym,
            self.sec_dynstr.index: lay.dynstr,
            self.sec_rela.index: lay.rela,
        }
        for sec, va in (
            (self.sec_versym, lay.versym),
            (self.sec_gnu_hash, lay.gnu_hash),
            (self.sec_hash, lay.hash),
        ):
            if sec is not None:
                repoint[sec.index] = va
        for sec in elf.sections:
            start = elf.header.shoff + sec.index * SHDR.size
            fields = list(SHDR.unpack(elf.data[start : start + SHDR.size]))
            if sec.index in repoint:
                va = repoint[sec.index]
                fields[3:6] = [va, lay.offset(va), len(tables[va])]
            elif sec.index == elf.header.shstrndx:
                fields[4:6] = [shstrtab_offset, len(shstrtab)]
            self.out += SHDR.pack(*fields)
        code = SHF_ALLOC | SHF_EXECINSTR
        for name, flags, va, size, alignment in (
            (SECTION_TRAMPOLINES, code, lay.x_va, lay.ulp_size, 16),
            (SECTION_TRACK, code, lay.track, lay.x_va + lay.x_size - lay.track, 16),
            (SECTION_DATA, SHF_ALLOC | SHF_WRITE, lay.w_va, lay.w_size, 8),
        ):
            self.out += SHDR.pack(
                names[name], SHT_PROGBITS, flags, va, lay.offset(va), size, 0, 0, alignment, 0
            )

    def _update_elf_header(self, lay: _Layout) -> None:
        fields = list(EHDR.unpack_from(self.out))
        fields[5] = lay.offset(lay.phdrs)  # e_phoff
        fields[6] = self.shoff  # e_shoff
        fields[10] = self.elf.header.phnum + 3  # e_phnum
        fields[12] = self.elf.header.shnum + 3  # e_shnum
        EHDR.pack_into(self.out, 0, *fields)
