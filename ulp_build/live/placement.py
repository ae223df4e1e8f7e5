"""Where a patch object is loaded in a process: in a free range next to its target, so that its
code can reach the target's data and functions with 32-bit displacements (±2 GiB).

dlopen alone would map the object below every mapping the process has, which in a service with
big heaps, thread stacks and malloc arenas can be many GiB from the target. But glibc asks mmap
for the address the object's first PT_LOAD gives, and the kernel grants it when the range is
free: so the trigger chooses a free range next to the target, just below its lowest mapping
(or, failing that, just above its highest), a guard page away from its neighbours, and hands
the runtime the object rebased there (patch/rebase.py). No such range within reach: the object
goes as it is, wherever the loader puts it. The range is chosen from /proc/PID/maps before the
process is stopped; should a thread map something there meanwhile, the kernel puts the object
elsewhere, and it works as well (the runtime adds its load bias to every offset), only not near.
"""

from __future__ import annotations

from functools import lru_cache

from ulp_build.elf import ElfFile
from ulp_build.live.loaded_library import LoadedLibrary
from ulp_build.live.process import Mapping
from ulp_build.patch.rebase import PAGE, USER_END, Footprint, Rebasing, footprint

# What a rel32 reaches, either way: every byte of the target within it of every byte of the
# object.
REACH = 1 << 31
# Left free on either side of the object, so that an overrun of a neighbour faults.
GUARD = PAGE
# Left free below the main stack: the kernel keeps this gap (stack_guard_gap, 256 pages by
# default) below a stack it grows, and would stop growing it at a mapping closer than that.
STACK_GAP = 256 * PAGE
# The lowest address mmap grants by default (vm.mmap_min_addr).
LOWEST = 0x10000
# Room left free for the buffer the trigger has the runtime map for the request, the object
# and its entries (protocol.py), before the runtime loads the object: the kernel puts it at
# the top of the highest free range it fits in, which may be the range chosen here, so the
# object is placed that far from the top. This much on top of the object's size serves
# some 30000 functions and references.
ENTRIES_ROOM = 1 << 20


def placed(library: LoadedLibrary, obj: ElfFile, mappings: list[Mapping]) -> tuple[bytes, int]:
    """The bytes of the patch object `obj` rebased next to `library` in a process that has
    `mappings`, and how far its addresses moved: `obj`'s own bytes and 0 if no free range is
    near enough."""
    rebasing = _rebasing(obj)
    fp = rebasing.place
    target = footprint(library.elf)
    start = library.base + target.start
    room = (len(obj.data) + ENTRIES_ROOM + PAGE - 1) & -PAGE
    address = near_address(mappings, (start, start + target.size), fp, room)
    if address is None or address == fp.start:
        return obj.data, 0
    return rebasing.moved(address - fp.start), address - fp.start


# The patch object's address words are found once per command (`--all` moves it in every
# process); the last few objects are kept, as a worker is given one operation.
@lru_cache(maxsize=4)
def _rebasing(obj: ElfFile) -> Rebasing:
    return Rebasing(obj)


def near_address(
    mappings: list[Mapping], target: tuple[int, int], fp: Footprint, room: int = 0
) -> int | None:
    """A free address, aligned as `fp` needs, for an object of footprint `fp` within REACH of
    the target's range [start, end) among `mappings`, with `room` bytes left free above it in
    its free range; below the target if one is, else above; None if neither."""
    lo, hi = target
    # glibc maps an object aligned above a page with room for the alignment, then trims it.
    need = fp.size + (fp.alignment if fp.alignment > PAGE else 0)

    def near(address: int) -> bool:
        return max(hi, address + need) - min(lo, address) <= REACH

    gaps = _free(mappings)
    for start, end in reversed([g for g in gaps if g[1] <= lo]):
        address = (end - GUARD - room - need) & -fp.alignment
        if not near(address):
            break
        if address >= start + GUARD:
            return address
    for start, end in (g for g in gaps if g[0] >= hi):
        address = (start + GUARD + fp.alignment - 1) & -fp.alignment
        if not near(address):
            break
        if address + need + room + GUARD <= end:
            return address
    return None


def _free(mappings: list[Mapping]) -> list[tuple[int, int]]:
    """The free ranges between `mappings`, in address order (none above the highest)."""
    gaps = []
    below = LOWEST
    for m in sorted(mappings):
        if m.start >= USER_END:  # [vsyscall]
            break
        end = m.start - STACK_GAP if m.path == "[stack]" else m.start
        if end > below:
            gaps.append((below, end))
        below = max(below, m.end)
    return gaps
