"""Symbol hash tables (`.gnu.hash`, SysV `.hash`) after inserting one undefined symbol.

The dynamic loader finds definitions through these tables, so inserting a symbol must keep every
existing lookup exact: indices at or above the insertion point move up by one, nothing else
changes. An undefined symbol is never looked up by name, but the SysV table lists every symbol
(its chain array is as long as `.dynsym`), so it gets a chain entry like GNU ld would give it.
"""

from __future__ import annotations

import struct


def fits(table: bytes, gnu: bool) -> bool:
    """Whether the counts in a hash table's header fit in the table's size."""
    if gnu:
        if len(table) < 16:
            return False
        nbuckets, _symoffset, bloom_size, _shift = struct.unpack_from("<IIII", table)
        return 16 + 8 * bloom_size + 4 * nbuckets <= len(table)
    if len(table) < 8:
        return False
    nbucket, nchain = struct.unpack_from("<II", table)
    return 8 + 4 * (nbucket + nchain) <= len(table) and nbucket > 0


def gnu_hash_shift(table: bytes, position: int) -> bytes:
    """`.gnu.hash` after inserting an unhashed symbol at index `position` (== symoffset)."""
    nbuckets, symoffset, bloom_size, bloom_shift = struct.unpack_from("<IIII", table)
    buckets_at = 16 + 8 * bloom_size
    buckets = struct.unpack_from(f"<{nbuckets}I", table, buckets_at)
    shifted = [b + 1 if b >= position else b for b in buckets]
    return (
        struct.pack("<IIII", nbuckets, symoffset + 1, bloom_size, bloom_shift)
        + table[16:buckets_at]
        + struct.pack(f"<{nbuckets}I", *shifted)
        + table[buckets_at + 4 * nbuckets :]
    )


def sysv_hash_insert(table: bytes, position: int, name: bytes) -> bytes:
    """SysV `.hash` after inserting symbol `name` at index `position`: every index at or above
    it moves up by one, and the new symbol heads its bucket's chain (as GNU ld would list it)."""
    nbucket, nchain = struct.unpack_from("<II", table)
    words = struct.unpack_from(f"<{nbucket + nchain}I", table, 8)
    moved = [w + 1 if w >= position else w for w in words]
    buckets, chain = moved[:nbucket], moved[nbucket:]
    h = 0
    for c in name:
        h = ((h << 4) + c) & 0xFFFFFFFF
        h ^= (h >> 24) & 0xF0
    slot = (h & 0x0FFFFFFF) % nbucket
    chain.insert(position, buckets[slot])
    buckets[slot] = position
    return struct.pack(f"<II{nbucket + nchain + 1}I", nbucket, nchain + 1, *buckets, *chain)
