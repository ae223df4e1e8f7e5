"""A function's exception-handling table (its LSDA, in `.gcc_except_table`), as gcc writes it
for the C++ personality routine: which ranges of the function's code may throw, and where the
landing pad (a destructor's cleanup, a `catch`) of each is. Read for `ulp diff`, which moves the
function: a table whose places are all offsets from the function's start, with no type table,
stays true for the same code anywhere and moves as bytes."""

from __future__ import annotations

from dataclasses import dataclass

from ulp_build.elf.eh_frame import leb128

# DW_EH_PE encodings: the field is left out; an unsigned LEB128.
OMIT, ULEB128 = 0xFF, 0x01


@dataclass(frozen=True)
class CallSite:
    start: int  # from the landing pads' base, as `landing_pad`
    length: int
    landing_pad: int  # 0: none (an exception passes through)
    action: int  # 0: a cleanup only; else 1 + the offset of its first action record


@dataclass(frozen=True)
class Lsda:
    data: bytes  # the table, from its header to the end of its last action record
    has_types: bool  # a type table: `catch` clauses or exception specifications
    call_sites: tuple[CallSite, ...]

    def within(self, size: int) -> bool:
        """Whether every range and landing pad lies in a function of `size` bytes (offsets
        from its start: a table read here has no LPStart field)."""
        return all(s.start + s.length <= size and s.landing_pad < size for s in self.call_sites)


def read(data: bytes) -> Lsda | None:
    """The table at the start of `data` (which may run on past it), or None for one gcc does
    not write: an LPStart field, or call sites not in LEB128."""
    try:
        lp_start, at = data[0], 1
        if lp_start != OMIT:
            return None
        types, at = data[at], at + 1
        if types != OMIT:
            _types_offset, at = leb128(data, at)
        encoding, at = data[at], at + 1
        if encoding != ULEB128:
            return None
        length, at = leb128(data, at)
        sites, end_of_sites = [], at + length
        while at < end_of_sites:
            start, at = leb128(data, at)
            size, at = leb128(data, at)
            pad, at = leb128(data, at)
            action, at = leb128(data, at)
            sites.append(CallSite(start, size, pad, action))
        end = end_of_sites
        for site in sites:
            end = max(end, _actions_end(data, end_of_sites, site.action))
    except IndexError:
        return None
    return Lsda(data[:end], types != OMIT, tuple(sites))


def _actions_end(data: bytes, table: int, action: int) -> int:
    """Where the chain of action records that starts at `action` (1 + its offset in the action
    table at `table`; 0 for none) ends, the furthest of its records."""
    end, at = table, table + action - 1
    for _ in range(len(data) if action else 0):  # a corrupt table's chain may loop
        if not 0 <= at < len(data):
            raise IndexError(at)
        _filter, after_filter = leb128(data, at, signed=True)
        step, end_of_record = leb128(data, after_filter, signed=True)
        end = max(end, end_of_record)
        if step == 0:
            break
        at = after_filter + step
    return end
