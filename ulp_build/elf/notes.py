"""Notes (PT_NOTE segments) and the two the package reads: the GNU build-id, and the GNU
property note that marks a file for Intel IBT.
"""

from __future__ import annotations

import struct
from functools import cached_property
from typing import NamedTuple

from ulp_build.elf.constants import (
    GNU_PROPERTY,
    GNU_PROPERTY_X86_FEATURE_1_AND,
    GNU_PROPERTY_X86_FEATURE_1_IBT,
    NHDR,
    NT_GNU_BUILD_ID,
    NT_GNU_PROPERTY_TYPE_0,
    PT_NOTE,
    align,
)
from ulp_build.elf.image import ElfImage, Segment


class Note(NamedTuple):
    owner: str
    type: int
    desc: bytes
    desc_addr: int  # the link-time address of `desc`


class Notes:
    """Every note of one file's PT_NOTE segments. A note cut off by its segment's end ends that
    segment's list; it does not refuse the file."""

    def __init__(self, elf: ElfImage) -> None:
        self.elf = elf

    @cached_property
    def all(self) -> list[Note]:
        out = []
        for seg in self.elf.segments:
            if seg.type != PT_NOTE:
                continue
            self.elf.check_range(seg.offset, seg.filesz, "note segment")
            out += notes_in(self.elf.data[seg.offset : seg.offset + seg.filesz], seg)
        return out

    @cached_property
    def build_id_note(self) -> tuple[bytes, int] | None:
        """The build-id bytes and their link-time address."""
        return build_id_note(self.all)

    @cached_property
    def build_id(self) -> str | None:
        found = self.build_id_note
        return None if found is None else found[0].hex()

    @cached_property
    def uses_ibt(self) -> bool:
        """Whether the x86 feature property has the IBT bit (-fcf-protection=branch/full)."""
        for note in self.all:
            if note.owner != "GNU" or note.type != NT_GNU_PROPERTY_TYPE_0:
                continue
            desc = note.desc
            pos = 0
            while pos + GNU_PROPERTY.size <= len(desc):
                ptype, size = GNU_PROPERTY.unpack_from(desc, pos)
                if pos + GNU_PROPERTY.size + size > len(desc):
                    break  # cut off by its note's end: the list ends there, like a cut note
                if ptype == GNU_PROPERTY_X86_FEATURE_1_AND and size >= 4:
                    (bits,) = struct.unpack_from("<I", desc, pos + GNU_PROPERTY.size)
                    return bool(bits & GNU_PROPERTY_X86_FEATURE_1_IBT)
                pos += GNU_PROPERTY.size + align(size, 8)
        return False


def notes_in(blob: bytes, seg: Segment) -> list[Note]:
    """The notes of one PT_NOTE segment whose bytes are `blob`."""
    out = []
    alignment = 8 if seg.align == 8 else 4
    pos = 0
    while pos + NHDR.size <= len(blob):
        namesz, descsz, ntype = NHDR.unpack_from(blob, pos)
        name_end = pos + NHDR.size + namesz
        desc = align(name_end, alignment)
        if desc + descsz > len(blob):
            break
        owner = blob[pos + NHDR.size : name_end].rstrip(b"\0").decode("ascii", "replace")
        out.append(Note(owner, ntype, blob[desc : desc + descsz], seg.vaddr + desc))
        pos = align(desc + descsz, alignment)
    return out


def build_id_note(notes: list[Note]) -> tuple[bytes, int] | None:
    """The GNU build-id among `notes`: its bytes and their link-time address."""
    for note in notes:
        if note.owner == "GNU" and note.type == NT_GNU_BUILD_ID:
            return note.desc, note.desc_addr
    return None
