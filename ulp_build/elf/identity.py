"""What tells one ELF file from another without reading it whole: its build-id and its SONAME,
and the first bytes of its last writable segment (where a prepared library keeps its
descriptor: prepare/layout.py reads them).

The trigger looks at every file a candidate process maps for the patch's target, and a process
maps what it likes (a 2 GiB image, a file another user controls). So only the ELF header, the
program headers, the note segments and the dynamic section are read, each where the headers
say and each bounded in size, through an open descriptor; the whole file (ElfFile) only for
the one that matched.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import NamedTuple

from ulp_build.elf.constants import (
    DT_SONAME,
    DT_STRTAB,
    EHDR,
    PF_W,
    PHDR,
    PT_DYNAMIC,
    PT_LOAD,
    PT_NOTE,
)
from ulp_build.elf.dynamic import dynamic_entries
from ulp_build.elf.errors import ElfError
from ulp_build.elf.image import ElfHeader, Segment
from ulp_build.elf.notes import build_id_note, notes_in

# Bytes read of each part: the program headers, one note segment, the dynamic section. Real
# files need a few KiB; a part larger than this is not looked at (no build-id, no SONAME).
MAX_PART = 1 << 16
MAX_SONAME = 4096
WRITABLE_HEAD = 128  # bytes read at most at the start of the last writable segment


class ElfIdentity(NamedTuple):
    """A file's build-id note, soname and writable head, read from its headers alone."""

    build_id_note: tuple[bytes, int] | None  # its bytes and their link-time address
    soname: str | None
    # The last writable PT_LOAD's link-time address and its first bytes in the file.
    writable_head: tuple[int, bytes] | None = None

    @property
    def build_id(self) -> str | None:
        return None if self.build_id_note is None else self.build_id_note[0].hex()

    @classmethod
    def read(cls, fd: int, name: str) -> ElfIdentity:
        """The identity of the regular file open as `fd`; `name` names it in errors."""
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ElfError(f"{name}: not a regular file")

        def part(offset: int, size: int) -> bytes:
            try:
                return os.pread(fd, min(size, MAX_PART), offset)
            except (OSError, OverflowError) as exc:
                raise ElfError(f"{name}: {getattr(exc, 'strerror', None) or exc}") from None

        header = ElfHeader.read(part(0, EHDR.size), name)
        if header.phentsize != PHDR.size:
            raise ElfError(f"{name}: corrupt ELF header (e_phentsize {header.phentsize})")
        table = part(header.phoff, header.phnum * PHDR.size)
        table = table[: len(table) - len(table) % PHDR.size]
        segments = [Segment(i, *fields) for i, fields in enumerate(PHDR.iter_unpack(table))]
        notes = [
            note
            for seg in segments
            if seg.type == PT_NOTE and seg.filesz <= MAX_PART
            for note in notes_in(part(seg.offset, seg.filesz), seg)
        ]
        writable = [s for s in segments if s.type == PT_LOAD and s.flags & PF_W]
        head = None
        if writable:
            last = writable[-1]
            head = (last.vaddr, part(last.offset, min(last.filesz, WRITABLE_HEAD)))
        return cls(build_id_note(notes), _soname(segments, part), head)


def _soname(segments: list[Segment], part: Callable[[int, int], bytes]) -> str | None:
    dynamic = next((s for s in segments if s.type == PT_DYNAMIC), None)
    if dynamic is None or dynamic.filesz > MAX_PART:
        return None
    raw = part(dynamic.offset, dynamic.filesz)
    entries = {e.tag: e.value for e in reversed(dynamic_entries(raw))}  # the first of a tag
    if DT_SONAME not in entries or DT_STRTAB not in entries:
        return None
    at = entries[DT_STRTAB] + entries[DT_SONAME]
    for seg in segments:
        if seg.type == PT_LOAD and seg.vaddr <= at < seg.vaddr + seg.filesz:
            raw = part(seg.offset + at - seg.vaddr, min(MAX_SONAME, seg.vaddr + seg.filesz - at))
            end = raw.find(b"\0")
            return raw[:end].decode("utf-8", "replace") if end >= 0 else None
    return None
