"""What preparation accepts: a shared library (not an executable, an object file or the runtime
itself) with readable tables, and the functions it exports, which are what gets tracked.

`rewrite` and `check` both start with `check_input`, so they refuse such a file alike.
"""

from __future__ import annotations

from ulp_build.elf import (
    ET_DYN,
    ET_EXEC,
    SHN_ABS,
    SHN_UNDEF,
    SHT_GNU_HASH,
    SHT_HASH,
    STB_GLOBAL,
    STB_WEAK,
    STT_FUNC,
    STT_GNU_IFUNC,
    ElfError,
    ElfFile,
    GnuHash,
    Symbol,
    SysvHash,
)
from ulp_build.prepare.layout import RUNTIME_SYMBOL


def check_input(elf: ElfFile) -> None:
    """Refuse, with the reason, every file that is not a shared library we can prepare."""
    name = elf.name
    if elf.header.type == ET_EXEC:
        if elf.dynamic.segment is None:
            raise ElfError(f"{name}: static executable; only shared libraries can be prepared")
        raise ElfError(f"{name}: executable (ET_EXEC); only shared libraries can be prepared")
    if elf.header.type != ET_DYN:
        raise ElfError(f"{name}: ELF type {elf.header.type} is not a shared library (ET_DYN)")
    if elf.dynamic.segment is None:
        raise ElfError(f"{name}: no dynamic section; only shared libraries can be prepared")
    if elf.is_pie_executable:
        raise ElfError(
            f"{name}: PIE executable; only shared libraries can be prepared"
            " (an executable's functions are not called through .dynsym)"
        )
    if not elf.sections:
        raise ElfError(f"{name}: no section headers (sstrip'ed?); rebuild or strip with strip")
    if all(s.shndx == SHN_UNDEF for s in elf.dynamic_symbols):
        raise ElfError(f"{name}: no dynamic symbols (the library exports nothing)")
    if any(s.name == RUNTIME_SYMBOL and s.shndx != SHN_UNDEF for s in elf.dynamic_symbols):
        raise ElfError(
            f"{name}: defines {RUNTIME_SYMBOL}: it is the ulp runtime, which cannot track itself"
        )
    # The rewriter renumbers the hash tables: reading each checks its counts against its size.
    for sec in elf.sections:
        if sec.type == SHT_GNU_HASH:
            GnuHash(elf, sec)
        elif sec.type == SHT_HASH:
            SysvHash(elf, sec)


def exported_functions(elf: ElfFile) -> list[Symbol]:
    """Dynamic symbols other objects can call: defined FUNC/IFUNC, global or weak, in code."""
    is_code = elf.is_code
    callable_types = (STT_FUNC, STT_GNU_IFUNC)
    visible = (STB_GLOBAL, STB_WEAK)
    return [
        sym
        for sym in elf.dynamic_symbols
        if sym.type in callable_types
        and sym.bind in visible
        and sym.shndx not in (SHN_UNDEF, SHN_ABS)
        and is_code(sym.value)
    ]
