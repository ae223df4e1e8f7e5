"""Symbol tables: `.symtab` (every symbol the link left, static ones included) and `.dynsym`
(what other objects link against), with the GNU symbol versions of `.dynsym`.

Only the version definitions (`.gnu.version_d`, found through DT_VERDEF) are read: they name
the versions of the symbols a library defines, which are all the package shows. The versions a
library requires of others (`.gnu.version_r`) are not read.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property
from typing import NamedTuple

from ulp_build.elf.constants import (
    DT_VERDEF,
    DT_VERDEFNUM,
    SHN_UNDEF,
    SHT_DYNSYM,
    SHT_GNU_VERSYM,
    STT_FUNC,
    SYM,
    VER_FLG_BASE,
    VERDAUX,
    VERDEF,
    VERSYM,
    VERSYM_HIDDEN,
    VERSYM_INDEX,
)
from ulp_build.elf.dynamic import Dynamic
from ulp_build.elf.errors import ElfError
from ulp_build.elf.image import ElfImage, Section
from ulp_build.elf.strings import StringTable


class Symbol(NamedTuple):
    """One Elf64_Sym, every field: st_info split into type and binding, st_name both as the
    name and as its offset in the string table."""

    # A NamedTuple, not a dataclass: libc has 3000 dynamic symbols and building frozen
    # dataclasses for them would cost more than the whole rest of a rewrite.
    index: int
    name: str
    value: int
    size: int
    type: int
    bind: int
    other: int  # st_other: the visibility in its low two bits
    shndx: int
    name_offset: int

    @property
    def defined(self) -> bool:
        return self.shndx != SHN_UNDEF


class SymbolTable:
    """One symbol table section (`.symtab`, or `.dynsym`: see DynamicSymbols), or none."""

    def __init__(self, elf: ElfImage, section: Section | None) -> None:
        self.elf = elf
        self.section = section

    @cached_property
    def symbols(self) -> list[Symbol]:
        elf, sec = self.elf, self.section
        if sec is None:
            return []
        if sec.entsize != SYM.size or sec.size % SYM.size:
            raise ElfError(f"{elf.name}: corrupt symbol table {sec.name}")
        if sec.link >= len(elf.sections):
            raise ElfError(f"{elf.name}: corrupt symbol table {sec.name} (bad string table)")
        strings = StringTable(elf.section_data(elf.sections[sec.link]), elf.name)
        rows = list(SYM.iter_unpack(elf.section_data(sec)))
        names = strings.names([row[0] for row in rows], sec.name)
        new = tuple.__new__  # Symbol._make without its Python-level frame
        return [
            new(Symbol, (i, label, value, size, info & 0xF, info >> 4, other, shndx, name))
            for i, (label, (name, info, other, shndx, value, size)) in enumerate(
                zip(names, rows, strict=True)
            )
        ]


class DynamicSymbols(SymbolTable):
    """`.dynsym`, its string table (where the dynamic section's names are too) and the
    symbols' versions (`.gnu.version`, naming versions `.gnu.version_d` defines)."""

    def __init__(self, elf: ElfImage, dynamic: Dynamic) -> None:
        super().__init__(elf, elf.section_of_type(SHT_DYNSYM))
        self.dynamic = dynamic
        self.version_section = elf.section_of_type(SHT_GNU_VERSYM)

    @cached_property
    def string_section(self) -> Section | None:
        sym = self.section
        if sym is None or sym.link >= len(self.elf.sections):
            return None
        return self.elf.sections[sym.link]

    @cached_property
    def strings(self) -> StringTable:
        sec = self.string_section
        if sec is None:
            raise ElfError(f"{self.elf.name}: no dynamic string table")
        return StringTable(self.elf.section_data(sec), self.elf.name)

    @cached_property
    def versioned_names(self) -> list[str]:
        """Symbol names as `name@@VERSION` (default) or `name@VERSION`, by index."""
        versions = self._versions()
        out = []
        for sym in self.symbols:
            version, default = versions[sym.index] if versions else (None, True)
            out.append(
                sym.name if version is None else f"{sym.name}{'@@' if default else '@'}{version}"
            )
        return out

    def _versions(self) -> list[tuple[str | None, bool]] | None:
        """(version name or None, whether it is the default version) of each symbol."""
        versym = self.version_section
        dynsym = self.section
        if versym is None or dynsym is None:
            return None
        count = dynsym.size // SYM.size
        if versym.size < VERSYM.size * count:
            raise ElfError(f"{self.elf.name}: corrupt symbol version table")
        names = self._version_definitions()
        data = self.elf.section_data(versym)[: VERSYM.size * count]
        return [
            (names.get(ndx & VERSYM_INDEX), not ndx & VERSYM_HIDDEN)
            for (ndx,) in VERSYM.iter_unpack(data)
        ]

    def _version_definitions(self) -> dict[int, str]:
        """Version index -> name, for versions this file defines (not the base version)."""
        elf = self.elf
        addr = self.dynamic.value(DT_VERDEF)
        count = self.dynamic.value(DT_VERDEFNUM) or 0
        if addr is None:
            return {}
        names: dict[int, str] = {}
        off = elf.offset_of(addr, VERDEF.size)
        for _ in range(count):
            elf.check_range(off, VERDEF.size, "version definition")
            _version, flags, ndx, _count, _hash, aux, nxt = VERDEF.unpack_from(elf.data, off)
            elf.check_range(off + aux, VERDAUX.size, "version definition")
            name, _next = VERDAUX.unpack_from(elf.data, off + aux)
            if not flags & VER_FLG_BASE:  # the base "version" names the file itself
                names[ndx] = self.strings.get(name)
            if nxt == 0:
                break
            off += nxt
        return names


def function_names(symbols: Iterable[Symbol]) -> dict[int, str]:
    """Address -> name of each defined, named function; the first symbol at an address wins."""
    names: dict[int, str] = {}
    for sym in symbols:
        if sym.type == STT_FUNC and sym.defined and sym.name:
            names.setdefault(sym.value, sym.name)
    return names
