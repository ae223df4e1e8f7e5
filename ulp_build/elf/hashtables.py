"""The symbol hash tables the dynamic loader looks names up in: GNU `.gnu.hash` and SysV `.hash`.

Read as far as the package needs them: the header, checked against the section's size (a table
whose counts run past its section is refused), and the bucket and chain arrays, the parts that
hold symbol indices. prepare/symbol_hash.py writes new tables from these.
"""

from __future__ import annotations

import struct

from ulp_build.elf.constants import GNU_HASH_HEADER, SYSV_HASH_HEADER
from ulp_build.elf.errors import ElfError
from ulp_build.elf.image import ElfImage, Section


def _too_large(elf: ElfImage, section: Section) -> ElfError:
    return ElfError(f"{elf.name}: corrupt ELF file ({section.name} is larger than its section)")


class GnuHash:
    """`.gnu.hash`: the header (bucket count, index of the first hashed symbol, Bloom filter
    size and shift), the Bloom filter words, the buckets, then one hash value per hashed
    symbol. Symbols below `symoffset` are not in the table."""

    def __init__(self, elf: ElfImage, section: Section) -> None:
        self.data = data = elf.section_data(section)
        if len(data) < GNU_HASH_HEADER.size:
            raise _too_large(elf, section)
        self.nbuckets, self.symoffset, self.bloom_size, self.bloom_shift = (
            GNU_HASH_HEADER.unpack_from(data)
        )
        if self.buckets_offset + 4 * self.nbuckets > len(data):
            raise _too_large(elf, section)

    @property
    def buckets_offset(self) -> int:
        return GNU_HASH_HEADER.size + 8 * self.bloom_size

    @property
    def buckets(self) -> tuple[int, ...]:
        """The lowest symbol index of each bucket's chain (0 for an empty bucket)."""
        return struct.unpack_from(f"<{self.nbuckets}I", self.data, self.buckets_offset)


class SysvHash:
    """SysV `.hash`: the header (bucket count, chain count = symbol count), the buckets, then
    the chains, one entry per symbol, each the next symbol index of its bucket's chain."""

    def __init__(self, elf: ElfImage, section: Section) -> None:
        self.data = data = elf.section_data(section)
        if len(data) < SYSV_HASH_HEADER.size:
            raise _too_large(elf, section)
        self.nbucket, self.nchain = SYSV_HASH_HEADER.unpack_from(data)
        size = SYSV_HASH_HEADER.size + 4 * (self.nbucket + self.nchain)
        if size > len(data) or self.nbucket == 0:
            raise _too_large(elf, section)

    @property
    def buckets(self) -> tuple[int, ...]:
        return struct.unpack_from(f"<{self.nbucket}I", self.data, SYSV_HASH_HEADER.size)

    @property
    def chain(self) -> tuple[int, ...]:
        at = SYSV_HASH_HEADER.size + 4 * self.nbucket
        return struct.unpack_from(f"<{self.nchain}I", self.data, at)
