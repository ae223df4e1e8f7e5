"""An x86-64 ELF file held in memory: its bytes and headers (image.py), loaded from a file, and
the tables read from them (one class per table, in the modules beside this one).

A small validating reader of our own rather than pyelftools or LIEF: every offset and size is
checked against the file before it is used, so a truncated or corrupt input ends in one clear
`ElfError` instead of a traceback or a crash inside a C++ parser, and reading libc's 3000 dynamic
symbols takes a few milliseconds (the rewriter's speed target is relative to a LIEF round trip).
The test suite cross-checks this reader against pyelftools.

The headers are read and checked at once; each table is read on first use, so a corrupt table
refuses the file only for a caller that needs that table.
"""

from __future__ import annotations

import os
import stat
from functools import cached_property
from pathlib import Path

from ulp_build.elf.constants import DT_NEEDED, DT_SONAME, SHF_ALLOC, SHT_RELA, SHT_SYMTAB
from ulp_build.elf.dynamic import Dynamic
from ulp_build.elf.errors import ElfError
from ulp_build.elf.image import ElfImage
from ulp_build.elf.notes import Notes
from ulp_build.elf.relocations import LinkRelocations, Relocation, Relocations
from ulp_build.elf.symbols import DynamicSymbols, Symbol, SymbolTable, function_names

# The largest file read. Big real libraries are a few hundred MB (CUDA's, libxul with debug
# info); 2 GiB leaves them ample room while a mistaken path (a disk image, a core dump) is
# refused before it is read. Nothing larger could be prepared anyway: the trampolines reach
# their functions with 32-bit displacements, so code and trampolines must lie within 2 GiB.
MAX_FILE_SIZE = 2 << 30


class ElfFile(ElfImage):
    """An ELF file and its tables, each read on first use."""

    @classmethod
    def load(cls, path: str | Path) -> ElfFile:
        """Read the regular file at `path`, of at most MAX_FILE_SIZE bytes, and its headers.

        Opened once and checked through the open descriptor, so what is checked is what is
        read: a device (/dev/zero), a FIFO or a directory is refused instead of read until
        memory runs out or blocking forever (O_NONBLOCK: opening a FIFO does not wait).
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, ValueError) as exc:
            raise ElfError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
        try:
            return cls.from_descriptor(fd, str(path))
        finally:
            os.close(fd)

    @classmethod
    def from_descriptor(cls, fd: int, name: str) -> ElfFile:
        """Read the file open as `fd` (left open), refused unless it is a regular file of at
        most MAX_FILE_SIZE bytes; `name` names it in errors."""
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ElfError(f"{name}: not a regular file")
        too_large = ElfError(f"{name}: larger than {MAX_FILE_SIZE >> 30} GiB; not a library")
        if info.st_size > MAX_FILE_SIZE:
            raise too_large
        # A duplicate, so that closing the file object leaves `fd` to its owner.
        with os.fdopen(os.dup(fd), "rb") as file:
            try:
                file.seek(0)
                data = file.read(MAX_FILE_SIZE + 1)  # + 1: a file that grew since fstat
            except OSError as exc:
                raise ElfError(f"{name}: {exc.strerror or exc}") from None
        if len(data) > MAX_FILE_SIZE:
            raise too_large
        return cls(data, name)

    # -- the tables, each read on first use ---------------------------------------------------

    @cached_property
    def dynamic(self) -> Dynamic:
        return Dynamic(self)

    @cached_property
    def dynsym(self) -> DynamicSymbols:
        return DynamicSymbols(self, self.dynamic)

    @cached_property
    def symtab(self) -> SymbolTable:
        return SymbolTable(self, self.section_of_type(SHT_SYMTAB))

    @cached_property
    def relocations(self) -> Relocations:
        return Relocations(self, self.dynamic)

    @cached_property
    def link_relocations(self) -> list[LinkRelocations]:
        """The relocation sections the link left (non-allocated SHT_RELA: `--emit-relocs`)."""
        return [
            LinkRelocations(self, sec)
            for sec in self.sections
            if sec.type == SHT_RELA and not sec.flags & SHF_ALLOC
        ]

    @cached_property
    def notes(self) -> Notes:
        return Notes(self)

    # -- what callers ask of the tables most ------------------------------------------------

    def dynamic_value(self, tag: int) -> int | None:
        return self.dynamic.value(tag)

    @cached_property
    def soname(self) -> str | None:
        value = self.dynamic.value(DT_SONAME)
        return None if value is None else self.dynsym.strings.get(value)

    @cached_property
    def needed(self) -> list[str]:
        """The names of the libraries the file depends on (its DT_NEEDED entries), in order."""
        strings = self.dynsym.strings
        return [strings.get(e.value) for e in self.dynamic.entries if e.tag == DT_NEEDED]

    @property
    def is_pie_executable(self) -> bool:
        return self.dynamic.is_pie_executable

    @property
    def binds_now(self) -> bool:
        return self.dynamic.binds_now

    @property
    def dynamic_symbols(self) -> list[Symbol]:
        return self.dynsym.symbols

    @property
    def symtab_symbols(self) -> list[Symbol]:
        return self.symtab.symbols

    @property
    def versioned_names(self) -> list[str]:
        """Dynamic symbol names as `name@@VERSION` (default) or `name@VERSION`, by index."""
        return self.dynsym.versioned_names

    @cached_property
    def _function_names(self) -> dict[int, str]:
        return function_names(self.symtab_symbols + self.dynamic_symbols)

    def name_at(self, vaddr: int) -> str:
        """The name of the function at `vaddr` (from .symtab first), or the address in hex."""
        return self._function_names.get(vaddr, f"{vaddr:#x}")

    def relocations_at(self, vaddr: int, size: int) -> list[Relocation]:
        """RELA relocations from DT_RELA whose target lies in [vaddr, vaddr + size)."""
        return self.relocations.at(vaddr, size)

    @property
    def build_id(self) -> str | None:
        return self.notes.build_id

    @property
    def build_id_note(self) -> tuple[bytes, int] | None:
        """The build-id bytes and their link-time address."""
        return self.notes.build_id_note

    @property
    def uses_ibt(self) -> bool:
        """Whether the file is marked for Intel IBT (built with -fcf-protection=branch/full)."""
        return self.notes.uses_ibt
