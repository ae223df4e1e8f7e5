"""What preparation accepts: a shared library (not an executable, an object file or the runtime
itself) with readable tables, and the functions it exports, which are what gets tracked.

`rewrite` and `check` both start with `check_input`, so they refuse such a file alike.
"""

from __future__ import annotations

import re
from pathlib import Path

from ulp_build.elf import (
    ET_DYN,
    ET_EXEC,
    SHN_ABS,
    SHN_UNDEF,
    STB_GLOBAL,
    STB_WEAK,
    STT_FUNC,
    STT_GNU_IFUNC,
    ElfError,
    ElfFile,
    Symbol,
)
from ulp_build.prepare.dynamic_tables import DynamicTables
from ulp_build.prepare.layout import RUNTIME_SYMBOL


def check_input(elf: ElfFile) -> DynamicTables:
    """Refuse, with the reason, every file that is not a shared library we can prepare; return
    its dynamic tables, checked to be what the loader reads."""
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
    if is_dynamic_loader(elf):
        raise ElfError(
            f"{name}: the dynamic loader; it relocates itself before any symbol can be bound,"
            " so it cannot be prepared"
        )
    return DynamicTables(elf)


# A dynamic loader binds its own relocations in its bootstrap, before it can look anything up:
# the weak runtime symbol the rewriter adds would be bound to the loader's own base, and every
# tracked call would jump there. ld.so has no PT_INTERP (it is nobody's client) but neither have
# many plain libraries, and libc.so.6 exports `_dl_*` functions too, so neither tells it apart.
# Two signs do, either one enough: the names loaders are installed and linked under (its soname,
# or the file's name, for musl, whose loader is its libc.so under the name ld-musl-*), and the
# debugger rendezvous (`_r_debug`, `_dl_debug_state`), which by definition lives in the loader.
# A false positive refuses a library that poses as a loader; a false negative ships a crash.
# musl's loader is the exception: its libc.so (installed also as ld-musl-*) binds only relative
# relocations before it can look names up, then binds its symbolic ones by lookup, the weak
# runtime symbol to 0 (and again once preloads are in), so it can be prepared. `__dls3`, the
# stage its bootstrap looks up by name, is exported by musl's libc.so alone.
_LOADER_NAMES = re.compile(r"^(ld-linux[-.].*|ld-musl-.*|ld64\.so\..*|ld\.so(\..*)?)$")
_LOADER_SYMBOLS = {"_r_debug", "_dl_debug_state"}
_MUSL_LOADER_SYMBOL = "__dls3"


def is_musl_loader(elf: ElfFile) -> bool:
    """musl's libc.so, which is also its loader."""
    return any(s.defined and s.name == _MUSL_LOADER_SYMBOL for s in elf.dynamic_symbols)


def is_dynamic_loader(elf: ElfFile) -> bool:
    """A loader that binds its own symbols before it can look any up (glibc's ld.so)."""
    if is_musl_loader(elf):
        return False
    names = (elf.soname or "", Path(elf.name).name)
    if any(_LOADER_NAMES.match(n) for n in names):
        return True
    return any(s.defined and s.name in _LOADER_SYMBOLS for s in elf.dynamic_symbols)


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
