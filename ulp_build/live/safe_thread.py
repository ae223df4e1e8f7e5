"""Which thread may load the patch object: the prepare step (protocol.py) runs the runtime's
loader and allocator in one stopped thread while the others run.

The loader and the allocator take locks; a lock held by a running thread is released in due
course, so only the chosen thread itself must hold none: it must not be stopped inside the
dynamic loader, the C library's code, the runtime, or an allocator system call. These are
heuristics read from where the thread stopped, on the safe side: a thread they pass over costs
a retry, one they wrongly accepted could deadlock the process. When no thread qualifies, the
attempt is let go and retried.
"""

from __future__ import annotations

from pathlib import Path

from ulp_build.live.process import Mapping, thread_ids
from ulp_build.live.registers import NO_SYSCALL, Registers

# System calls the allocator makes while holding its locks.
_ALLOCATOR_SYSCALLS = {
    9: "mmap", 10: "mprotect", 11: "munmap", 12: "brk", 25: "mremap", 28: "madvise",
}  # fmt: skip


def threads_to_try(pid: int) -> list[int]:
    """Threads to try for the prepare step, the main thread first (often the idlest)."""
    return sorted(thread_ids(pid), key=lambda t: t != pid)


def unsafe_to_load(regs: Registers, regions: list[Mapping], runtime: str) -> str | None:
    """Why a thread stopped with `regs` may hold a lock that loading the patch object needs."""
    where = next((m.path for m in regions if m.start <= regs.rip < m.end), "")
    name = Path(where).name
    if name.startswith("ld-linux") or name.startswith("ld-"):
        return "is inside the dynamic loader"
    if where == runtime:
        return "is inside the ulp runtime"
    if regs.orig_rax != NO_SYSCALL:
        call = _ALLOCATOR_SYSCALLS.get(regs.orig_rax)
        return f"is in {call}() (maybe inside the allocator)" if call else None
    if name.startswith("libc.so") or name.startswith("libc-"):
        return "is running C library code"
    return None
