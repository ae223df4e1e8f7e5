"""A stopped thread's whole state as a signal frame (`struct rt_sigframe`, x86-64), so that the
thread can put itself back with `rt_sigreturn` if the trigger dies while the thread runs a call
(runtime/resume.S). The layout is the kernel's user ABI (arch/x86/include/uapi/asm/sigcontext.h
and ucontext.h): rt_sigreturn reads the ucontext at %rsp, restores the general registers from
its sigcontext, the FP/SSE/AVX state from the XSAVE image its `fpstate` points to, the
alternate signal stack and the signal mask from its last fields.
"""

from __future__ import annotations

import struct

from ulp_build.live.registers import NO_SYSCALL, Registers

# struct rt_sigframe: pretcode, struct ucontext (flags, link, stack_t, sigcontext, sigset),
# struct siginfo.
UCONTEXT = struct.Struct("<QQQiiQ")  # uc_flags, uc_link, uc_stack {ss_sp, ss_flags, ss_size}
SIGCONTEXT = struct.Struct("<18QHHHHQQQQQ64x")
FRAME_SIZE = 8 + UCONTEXT.size + SIGCONTEXT.size + 8 + 128
MCONTEXT_AT = 8 + UCONTEXT.size
UC_FP_XSTATE, UC_SIGCONTEXT_SS, UC_STRICT_RESTORE_SS = 1, 2, 4

# The XSAVE image's software-reserved bytes, which the kernel checks before restoring it.
SW_BYTES = struct.Struct("<IIQI")
SW_BYTES_AT = 464
XSTATE_BV_AT = 512
FP_XSTATE_MAGIC1 = 0x46505853
FP_XSTATE_MAGIC2 = 0x46505845

ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK = 512, 513, 514, 516
SYS_RESTART_SYSCALL = 219

assert FRAME_SIZE == 440 and MCONTEXT_AT == 48


def restarted(regs: Registers) -> Registers:
    """`regs` as the thread must resume them when nobody else will restart the system call
    it was stopped in: at the `syscall` instruction again, with its number back in %rax (or
    restart_syscall, which picks up an interrupted sleep where it was), and no system call in
    progress (orig_rax = -1)."""
    out = regs.copy()
    if regs.orig_rax != NO_SYSCALL:
        error = (1 << 64) - regs.rax
        if error in (ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND):
            out.rax, out.rip = regs.orig_rax, regs.rip - 2
        elif error == ERESTART_RESTARTBLOCK:
            out.rax, out.rip = SYS_RESTART_SYSCALL, regs.rip - 2
    out.orig_rax = NO_SYSCALL
    return out


def build(regs: Registers, xstate: bytes, top: int) -> tuple[int, bytes]:
    """(frame address, bytes from there up to `top`): the frame, then the XSAVE image it
    points to, 64-byte aligned as XRSTOR wants it, with the trailing magic."""
    image = bytearray(xstate)
    magic1, _extended, _features, size = SW_BYTES.unpack_from(image, SW_BYTES_AT)
    if magic1 != FP_XSTATE_MAGIC1:
        (features,) = struct.unpack_from("<Q", image, XSTATE_BV_AT)
        size = len(image)
        SW_BYTES.pack_into(image, SW_BYTES_AT, FP_XSTATE_MAGIC1, size + 4, features, size)
    image = image[:size] + struct.pack("<I", FP_XSTATE_MAGIC2)
    fpstate = (top - len(image)) & ~63
    frame = (fpstate - FRAME_SIZE) & ~15
    r = restarted(regs)
    context = SIGCONTEXT.pack(
        r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx,
        r.rdx, r.rax, r.rcx, r.rsp, r.rip, r.eflags,
        r.cs, r.gs, r.fs, r.ss,
        0, 0, 0, 0, fpstate,
    )  # fmt: skip
    flags = UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS
    head = bytes(8) + UCONTEXT.pack(flags, 0, 0, 0, 0, 0) + context
    blob = head.ljust(fpstate - frame, b"\0") + image
    return frame, blob.ljust(top - frame, b"\0")
