"""The dynamic section (the PT_DYNAMIC segment): the (tag, value) entries the dynamic loader
reads, and what the package asks of them: whether an ET_DYN file is a PIE executable rather
than a shared library. (The soname is a string of .dynstr: ElfFile reads it.)
"""

from __future__ import annotations

from functools import cached_property
from typing import NamedTuple

from ulp_build.elf.constants import (
    DF_1_NOW,
    DF_1_PIE,
    DF_BIND_NOW,
    DT_BIND_NOW,
    DT_FLAGS,
    DT_FLAGS_1,
    DT_NULL,
    DYN,
    PT_DYNAMIC,
)
from ulp_build.elf.image import ElfImage


class DynamicEntry(NamedTuple):
    tag: int
    value: int


def dynamic_entries(blob: bytes) -> list[DynamicEntry]:
    """The entries of a dynamic section whose bytes are `blob`, up to and excluding DT_NULL."""
    entries = []
    for tag, value in DYN.iter_unpack(blob[: len(blob) - len(blob) % DYN.size]):
        if tag == DT_NULL:
            break
        entries.append(DynamicEntry(tag, value))
    return entries


class Dynamic:
    """The dynamic section of one file; `segment` is None for a static file."""

    def __init__(self, elf: ElfImage) -> None:
        self.elf = elf
        self.segment = next((s for s in elf.segments if s.type == PT_DYNAMIC), None)

    @cached_property
    def entries(self) -> list[DynamicEntry]:
        """The entries up to and excluding DT_NULL."""
        seg = self.segment
        if seg is None:
            return []
        self.elf.check_range(seg.offset, seg.filesz, "dynamic section")
        return dynamic_entries(self.elf.data[seg.offset : seg.offset + seg.filesz])

    def value(self, tag: int) -> int | None:
        """The value of the first entry with `tag`, or None."""
        for entry in self.entries:
            if entry.tag == tag:
                return entry.value
        return None

    @cached_property
    def is_pie_executable(self) -> bool:
        return bool((self.value(DT_FLAGS_1) or 0) & DF_1_PIE)

    @cached_property
    def binds_now(self) -> bool:
        """Whether the loader binds every symbol as it loads the file (`-z now`), whatever
        mode dlopen is asked for."""
        return (
            self.value(DT_BIND_NOW) is not None
            or bool((self.value(DT_FLAGS) or 0) & DF_BIND_NOW)
            or bool((self.value(DT_FLAGS_1) or 0) & DF_1_NOW)
        )
