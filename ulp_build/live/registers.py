"""A stopped thread's general registers as ptrace reads and writes them: `struct
user_regs_struct` of the kernel's user ABI (x86-64, arch/x86/include/asm/user_64.h). Its own
module because the tracer (ptrace.py), the signal frame built from them (sigframe.py) and the
choice of a thread to load code in (safe_thread.py) all read them.
"""

from __future__ import annotations

import ctypes

# orig_rax of a thread that is not in a system call (-1): nothing for the kernel to restart.
NO_SYSCALL = (1 << 64) - 1


class Registers(ctypes.Structure):
    """struct user_regs_struct (x86-64)."""

    _fields_ = [(name, ctypes.c_ulonglong) for name in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
        "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
        "gs_base", "ds", "es", "fs", "gs",
    )]  # fmt: skip

    def copy(self) -> Registers:
        out = Registers()
        ctypes.pointer(out)[0] = self
        return out
