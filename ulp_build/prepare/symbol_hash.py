"""Symbol hash tables (`.gnu.hash`, SysV `.hash`) after inserting one undefined symbol.

The dynamic loader finds definitions through these tables, so inserting a symbol must keep every
existing lookup exact: indices at or above the insertion point move up by one, nothing else
changes. An undefined symbol is never looked up by name, but the SysV table lists every symbol
(its chain array is as long as `.dynsym`), so it gets a chain entry like GNU ld would give it.
"""

from __future__ import annotations

import struct

from ulp_build.elf import GNU_HASH_HEADER, SYSV_HASH_HEADER, GnuHash, SysvHash


def gnu_hash_shift(table: GnuHash, position: int) -> bytes:
    """`.gnu.hash` after inserting an unhashed symbol at index `position` (== symoffset)."""
    shifted = [b + 1 if b >= position else b for b in table.buckets]
    buckets_at = table.buckets_offset
    return (
        GNU_HASH_HEADER.pack(
            table.nbuckets, table.symoffset + 1, table.bloom_size, table.bloom_shift
        )
        + table.data[GNU_HASH_HEADER.size : buckets_at]
        + struct.pack(f"<{table.nbuckets}I", *shifted)
        + table.data[buckets_at + 4 * table.nbuckets :]
    )


def sysv_hash_insert(table: SysvHash, position: int, name: bytes) -> bytes:
    """SysV `.hash` after inserting symbol `name` at index `position`: every index at or above
    it moves up by one, and the new symbol heads its bucket's chain (as GNU ld would list it)."""
    buckets = [w + 1 if w >= position else w for w in table.buckets]
    chain = [w + 1 if w >= position else w for w in table.chain]
    h = 0
    for c in name:
        h = ((h << 4) + c) & 0xFFFFFFFF
        h ^= (h >> 24) & 0xF0
    slot = (h & 0x0FFFFFFF) % table.nbucket
    chain.insert(position, buckets[slot])
    buckets[slot] = position
    return SYSV_HASH_HEADER.pack(table.nbucket, table.nchain + 1) + struct.pack(
        f"<{table.nbucket + table.nchain + 1}I", *buckets, *chain
    )
