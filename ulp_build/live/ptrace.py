"""Stopping a whole process with ptrace, calling a function inside it, and letting it go
exactly as it was (docs/design.md, "Stopping a process and calling into it"). The syscall layer
only: what to call is the trigger's.

- Every thread is seized and interrupted (PTRACE_SEIZE, so neither the process nor a parent
  waiting on it sees a stop), repeating until no new thread appears.
- A signal that arrives meanwhile is held and handed back at detach, not lost.
- General registers and the extended state (FP/SSE/AVX, NT_X86_XSTATE) of every thread are
  saved on attach and written back on detach, whatever happened in between.
- A call runs below the red zone, 16-byte aligned, with orig_rax = -1 so an interrupted system
  call is neither restarted at the wrong place nor ends in EINTR; it returns to address 0 and
  the resulting SIGSEGV stop, never delivered, ends it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ulp_build.errors import UlpError
from ulp_build.live import sigframe, tracer_signals
from ulp_build.live.process import Mapping, maps, proc_dir, read_at, thread_ids, write_at
from ulp_build.live.registers import NO_SYSCALL, Registers

PTRACE_CONT = 7
PTRACE_SYSCALL = 24
PTRACE_O_TRACESYSGOOD = 1
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_DETACH = 17
PTRACE_GETSIGINFO = 0x4202
PTRACE_GETSIGMASK = 0x420A
PTRACE_SECCOMP_GET_FILTER = 0x420C
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_EVENT_STOP = 128
NT_X86_XSTATE = 0x202
WALL = 0x40000000
RED_ZONE = 128
XSTATE_MAX = 1 << 16
_ASYNC_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGALRM, signal.SIGHUP}
SYS_TGKILL = 234
SYS_GETPID = 39
_SYSCALL_STOP = signal.SIGTRAP | 0x80  # with PTRACE_O_TRACESYSGOOD

# The C library this Python runs on, from the symbols already loaded (dlopen(NULL)): where
# ctypes.util.find_library would import subprocess and run ldconfig, at every start of `ulp`.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]


def _status(directory: str) -> dict[str, str]:
    """DIRECTORY/status (of a process or a thread in /proc) as {field: value}; empty if it
    cannot be read."""
    try:
        with open(f"{directory}/status") as f:
            return {key: value.strip() for key, _, value in (line.partition(":") for line in f)}
    except OSError:
        return {}


def _task_status(pid: int, tid: int) -> dict[str, str]:
    return _status(f"/proc/{pid}/task/{tid}")


def _blocked_signals(pid: int, tid: int) -> int:
    return int(_task_status(pid, tid).get("SigBlk", "0"), 16)


def _tgkill(pid: int, tid: int, sig: int) -> None:
    if _libc.syscall(SYS_TGKILL, pid, tid, sig) != 0:
        raise PtraceError(
            f"thread {tid}: tgkill: {os.strerror(ctypes.get_errno())}", ctypes.get_errno()
        )


class _Wait:
    """Waiting for one thread's wait statuses (its stops, its exit) until a deadline. Polled,
    so that the deadline holds, with pauses between polls: first a few yields of the CPU (a
    stop or a call usually takes microseconds, and the process needs the CPU to get there),
    then sleeps that grow, so that waiting on a slow one, or on many processes at once, leaves
    the CPU to them. One per stop or call: the deadline runs on across the stops that a
    call goes through; the pauses start small again at each (a call into the loader stops
    at every one of its system calls, each a few microseconds after the last: a pause grown
    long while the first was awaited would be slept at each of them)."""

    YIELDS = 200
    DELAY = 0.00005

    def __init__(self, tid: int, timeout: float) -> None:
        self.tid = tid
        self.deadline = time.monotonic() + timeout
        self.yields = self.YIELDS
        self.delay = self.DELAY

    def status(self) -> int | None:
        """The thread's next wait status, or None once the deadline has passed (raises
        ChildProcessError if there is nothing left to wait for)."""
        while True:
            got, status = os.waitpid(self.tid, WALL | os.WNOHANG)
            if got != 0:
                self.yields, self.delay = self.YIELDS, self.DELAY
                return status
            if time.monotonic() > self.deadline:
                return None
            self._pause()

    def _pause(self) -> None:
        if self.yields:
            self.yields -= 1
            os.sched_yield()
            return
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, 0.002)


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class PtraceError(UlpError):
    def __init__(self, message: str, err: int) -> None:
        super().__init__(message)
        self.errno = err


class Traced(UlpError):
    """Another tracer holds the process: another trigger, or a debugger. Worth waiting for."""


def caught_signals(pid: int) -> int:
    """The signals process `pid` has handlers for, as a mask (bit N-1 for signal N); all of
    them when its status cannot be read."""
    try:
        return int(_status(proc_dir(pid))["SigCgt"], 16)
    except (KeyError, ValueError):
        return (1 << 64) - 1


def _tracer(pid: int) -> str | None:
    """Who traces process `pid` now, as "PID (NAME)", or None."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        tracer = next(int(line.split()[1]) for line in status.splitlines()
                      if line.startswith("TracerPid:"))  # fmt: skip
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    if tracer == 0:
        return None
    try:
        name = Path(f"/proc/{tracer}/comm").read_text().strip()
    except OSError:
        name = "?"
    return f"{tracer} ({name})"


def _ptrace(request: int, tid: int, addr: int | None = 0, data: object = 0) -> int:
    ctypes.set_errno(0)
    result = _libc.ptrace(request, tid, addr, data)
    if result == -1 and ctypes.get_errno():
        err = ctypes.get_errno()
        raise PtraceError(f"thread {tid}: ptrace request {request:#x}: {os.strerror(err)}", err)
    return result


@dataclass
class _Thread:
    """One attached thread: what it had when stopped, and what it is doing now."""

    tid: int
    regs: Registers  # to restore: as stopped, or with its system call restarted after a call
    xstate: bytes
    pending: list[int] = field(default_factory=list)  # signals held while attached
    running: bool = False  # continued for a call and not seen stopped since
    abandoned: bool = False  # left in a call that timed out: it restores itself (ulp_resume)
    stopped: Registers | None = None  # as stopped, once `regs` was changed
    marker_signal: int | None = None  # what ulp_resume_signal sends in it (0: none will do)


class ReturnPoint(NamedTuple):
    """Where calls return (the runtime's ulp_resume) and the address right after its getpid,
    where the tracer takes over; and the same for ulp_resume_signal, where the thread sends
    itself a signal instead (runtime/resume.S)."""

    address: int
    marker: int
    signal_address: int
    signal_marker: int


# What ulp_resume_signal may send, in this order: signals whose default action is to ignore them
# (dropped as they are sent when no tracer is there), that few programs catch.
_MARKER_SIGNALS = (signal.SIGURG, signal.SIGWINCH)
_SI_TKILL = -6  # siginfo's si_code of a signal sent by tgkill
# Stop signals a process may catch (SIGSTOP it may not).
_TERMINAL_STOPS = (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
_SIGINFO = 128  # bytes of a siginfo_t, for PTRACE_GETSIGINFO


@dataclass
class Tracee:
    """A process with all its threads stopped. Use as a context manager: leaving it restores
    every thread and detaches, also on errors and KeyboardInterrupt."""

    pid: int
    timeout: float = 5.0
    only: frozenset[int] | None = None  # attach these alone (none, if gone); the others run
    threads: dict[int, _Thread] = field(default_factory=dict)
    stopped_for: float = 0.0  # seconds from the first attach to the last detach
    # The process's mappings, for where a call may leave its frame: read once per stop, or
    # given by a caller that read them before stopping the process (stacks stay put).
    regions: list[Mapping] | None = None
    # The signals the process catches (caught_signals), for calls that end with a signal: read
    # by a caller before it stopped the process (handlers change rarely), or at the first call.
    caught: int | None = None

    def __enter__(self) -> Tracee:
        self._since = time.perf_counter()
        self._proc = proc_dir(self.pid)
        self._mem: int | None = None
        try:
            self._attach_all()
        except BaseException:
            self.detach()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()
        self.stopped_for = time.perf_counter() - self._since

    # -- attach and detach -----------------------------------------------------------------

    def _attach_all(self) -> None:
        """Seize threads until listing /proc finds none we do not hold (threads may be born
        while we attach). Threads that are exiting, and a main thread that already exited
        (a zombie that stays listed), cannot be seized and need not be."""
        if not Path(f"/proc/{self.pid}").exists():
            raise UlpError(f"process {self.pid}: no such process")
        gone: dict[int, str] = {}  # thread -> why it was passed over
        while True:
            new = [t for t in thread_ids(self.pid) if t not in self.threads and t not in gone]
            if self.only is not None:
                new = [t for t in new if t in self.only]
            if not new:
                if not self.threads and self.only is None:
                    why = ", ".join(f"{t} {reason}" for t, reason in sorted(gone.items()))
                    raise UlpError(f"process {self.pid}: no live thread to attach to ({why})")
                return
            for tid in new:
                try:
                    _ptrace(PTRACE_SEIZE, tid, 0, PTRACE_O_TRACESYSGOOD)
                    _ptrace(PTRACE_INTERRUPT, tid)
                except PtraceError as exc:
                    if self._exiting(tid):
                        gone[tid] = f"exiting ({os.strerror(exc.errno)})"
                        continue
                    tracer = _tracer(self.pid) if exc.errno == errno.EPERM else None
                    if tracer is not None:
                        raise Traced(
                            f"process {self.pid}: busy, traced by process {tracer}"
                            " (another trigger, or a debugger)"
                        ) from None
                    raise UlpError(
                        f"process {self.pid}: cannot attach to thread {tid}:"
                        f" {os.strerror(exc.errno)}"
                    ) from None
                pending = self._wait_stopped(tid)
                if pending is None:
                    gone[tid] = "exited"
                    continue
                self.threads[tid] = _Thread(
                    tid, self._get_regs(tid), self._get_xstate(tid), [pending] if pending else []
                )

    def _exiting(self, tid: int) -> bool:
        try:
            stat = Path(f"/proc/{self.pid}/task/{tid}/stat").read_text()
        except OSError:
            return True
        return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")

    def _wait_stopped(self, tid: int) -> int | None:
        """Wait until `tid` is in a ptrace stop; return the signal that stopped it if that is
        a real signal to hand back later (0 for our interrupt), None if it exited."""
        wait = _Wait(tid, self.timeout)
        while True:
            try:
                status = wait.status()
            except ChildProcessError:
                return None
            if status is None:
                raise UlpError(f"process {self.pid}: thread {tid} did not stop in time")
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                return None
            if os.WIFSTOPPED(status):
                # Our interrupt, or a system call stop of a thread followed through a call.
                if status >> 16 == PTRACE_EVENT_STOP or os.WSTOPSIG(status) == _SYSCALL_STOP:
                    return 0
                return os.WSTOPSIG(status)

    def detach(self) -> None:
        """Put every thread's registers back and let it run, each one whatever happens to
        another. Held signals are queued to the thread again (a detach from an event stop
        would drop a signal passed with it)."""
        failure: PtraceError | None = None
        if self._mem is not None:
            os.close(self._mem)
            self._mem = None
        for thread in list(self.threads.values()):
            del self.threads[thread.tid]
            try:
                if thread.running:
                    self._stop(thread)
                if not thread.abandoned:
                    # The extended state first: until the general registers are back, a
                    # thread that a call left in ulp_resume restores both itself if we die.
                    self._set_xstate(thread.tid, thread.xstate)
                    self._set_regs(thread.tid, self._final_regs(thread))
                for sig in thread.pending:
                    _tgkill(self.pid, thread.tid, sig)
            except PtraceError as exc:
                if exc.errno != errno.ESRCH:
                    failure = failure or exc
            finally:
                try:
                    _ptrace(PTRACE_DETACH, thread.tid, 0, 0)
                except PtraceError as exc:
                    if exc.errno != errno.ESRCH:
                        failure = failure or exc
        if failure is not None:
            raise failure

    def _final_regs(self, thread: _Thread) -> Registers:
        """After a call, `regs` restart the interrupted system call by hand, which is what the
        kernel does when no signal intervenes. A held signal the thread does not block will be
        delivered as it leaves: then the kernel must decide (restart, or EINTR for a handler
        without SA_RESTART) from the registers as they were."""
        if thread.stopped is None or not thread.pending:
            return thread.regs
        blocked = _blocked_signals(self.pid, thread.tid)
        if any(not blocked >> (sig - 1) & 1 for sig in thread.pending):
            return thread.stopped
        return thread.regs

    def _stop(self, thread: _Thread) -> None:
        """Stop a thread we continued, holding any signal that stops it first."""
        _ptrace(PTRACE_INTERRUPT, thread.tid)
        sig = self._wait_stopped(thread.tid)
        thread.running = False
        if sig:
            thread.pending.append(sig)

    # -- registers -------------------------------------------------------------------------

    @staticmethod
    def _get_regs(tid: int) -> Registers:
        regs = Registers()
        _ptrace(PTRACE_GETREGS, tid, 0, ctypes.addressof(regs))
        return regs

    @staticmethod
    def _set_regs(tid: int, regs: Registers) -> None:
        _ptrace(PTRACE_SETREGS, tid, 0, ctypes.addressof(regs))

    @staticmethod
    def _get_xstate(tid: int) -> bytes:
        buf = ctypes.create_string_buffer(XSTATE_MAX)
        iov = _IoVec(ctypes.addressof(buf), XSTATE_MAX)
        _ptrace(PTRACE_GETREGSET, tid, NT_X86_XSTATE, ctypes.addressof(iov))
        return buf.raw[: iov.len]

    @staticmethod
    def _set_xstate(tid: int, xstate: bytes) -> None:
        buf = ctypes.create_string_buffer(xstate, len(xstate))
        iov = _IoVec(ctypes.addressof(buf), len(xstate))
        _ptrace(PTRACE_SETREGSET, tid, NT_X86_XSTATE, ctypes.addressof(iov))

    def registers(self, tid: int) -> Registers:
        """The registers `tid` was stopped with (a copy)."""
        return self.threads[tid].regs.copy()

    # -- memory ----------------------------------------------------------------------------

    def write(self, address: int, data: bytes) -> None:
        write_at(self.pid, self._memory(), address, data)

    def _memory(self) -> int:
        """/proc/PID/mem, opened at the first write of this stop and closed by the detach:
        opening it takes as long as a call's write."""
        if self._mem is None:
            self._mem = os.open(f"{self._proc}/mem", os.O_RDWR | os.O_CLOEXEC)
        return self._mem

    def replace(self, edits: list[tuple[int, bytes, bytes]]) -> bool:
        """For each (address, expected, new): if every span still holds what it is expected
        to, write the new bytes over each and return True; else change nothing and return
        False. Also into read-only code (/proc/PID/mem); one read and one write per span."""
        fd = self._memory()
        for address, expected, _new in edits:
            if read_at(self.pid, fd, address, len(expected)) != expected:
                return False
        for address, _expected, new in edits:
            write_at(self.pid, fd, address, new)
        return True

    # -- calls -----------------------------------------------------------------------------

    def call(
        self, function: int, *args: int, tid: int | None = None, resume: ReturnPoint | None = None
    ) -> int:
        """Run `function(*args)` (at most six integer arguments) in one stopped thread and
        return %rax. The thread's registers are restored afterwards.

        With `resume` (the runtime's ulp_resume), the call returns there, and the thread's
        state is left below its red zone as a signal frame first: should this process die
        during the call, the thread restores itself and carries on; and a call that does not
        return in time is left to finish and restore itself the same way, rather than be cut
        off holding locks. Without (or if the frame does not fit the thread's stack), it
        returns to address 0, and the resulting SIGSEGV stop (never delivered) ends it."""
        if len(args) > 6:
            raise ValueError("at most six integer arguments")
        thread = self.threads[tid if tid is not None else min(self.threads)]
        if thread.abandoned:
            raise UlpError(f"process {self.pid}: thread {thread.tid} is still in a call")
        regs = thread.regs.copy()
        top = regs.rsp - RED_ZONE
        frame, blob = None, b""
        if resume is not None:
            frame, blob = sigframe.build(thread.regs, thread.xstate, top)
            if self._on_stack(regs.rsp, frame - 512):
                regs.r12 = frame  # callee-saved: ulp_resume finds the frame there
                top = frame
            else:
                frame, blob = None, b""
        # Aligned so that the callee sees %rsp = 8 mod 16; its return address, then the frame.
        sp = ((top - 256) & ~0xF) - 8
        back, sig = 0, 0
        if frame is not None and resume is not None:
            sig = self._marker_signal(thread) if resume.signal_address else 0
            back = resume.signal_address if sig else resume.address
            regs.r13 = sig  # callee-saved: ulp_resume_signal finds it there
        self.write(sp, struct.pack("<Q", back).ljust(top - sp, b"\0") + blob)
        regs.rsp = sp
        regs.rip = function
        regs.rax = 0
        regs.orig_rax = NO_SYSCALL  # not in a system call: nothing to restart
        for name, value in zip(("rdi", "rsi", "rdx", "rcx", "r8", "r9"), args, strict=False):
            setattr(regs, name, value & ((1 << 64) - 1))
        self._set_regs(thread.tid, regs)
        try:
            if frame is None or resume is None:
                return self._run_until_return(thread)
            marker = resume.signal_marker if sig else resume.marker
            return self._run_until_resumed(thread, frame, marker, sig)
        except BaseException:
            # Whatever interrupted us (a timeout, Ctrl-C): the thread must be stopped before
            # its registers can be put back.
            if thread.tid in self.threads and thread.running:
                self._stop(thread)
            raise
        finally:
            if thread.tid in self.threads and not thread.abandoned:
                self._set_xstate(thread.tid, thread.xstate)  # first: see detach
                self._set_regs(thread.tid, thread.regs)

    def _on_stack(self, sp: int, lowest: int) -> bool:
        """Whether [lowest, sp) lies in the mapping that holds `sp` (a thread's stack, or the
        alternate signal stack it runs a handler on): writing below it would hit other data,
        and a main thread's stack does not grow for /proc/PID/mem."""
        if self.regions is None:
            self.regions = maps(self.pid)
        return any(m.start <= lowest and sp <= m.end for m in self.regions if m.start <= sp)

    def _marker_signal(self, thread: _Thread) -> int:
        """The signal ulp_resume_signal may send in `thread`: the first of _MARKER_SIGNALS
        that the process does not catch (`_caught`) and the thread
        does not block; 0 if none, or if the thread runs under a seccomp filter, which may
        forbid sending one, even kill the process for it (calls then return through
        ulp_resume: filters allow getpid). The thread's own filter: a thread may install one
        for itself alone, and /proc/PID/status shows the main thread's. A program that
        installs a handler for the signal during a call, just as the tracer dies, would see
        it once."""
        if thread.marker_signal is None:
            if self._filtered(thread.tid):
                thread.marker_signal = 0
                return 0
            blocked = ctypes.c_uint64()
            _ptrace(PTRACE_GETSIGMASK, thread.tid, 8, ctypes.addressof(blocked))
            unusable = blocked.value | self._caught()
            thread.marker_signal = next(
                (int(s) for s in _MARKER_SIGNALS if not unusable >> (s - 1) & 1), 0
            )
        return thread.marker_signal

    def _caught(self) -> int:
        """The signals the process catches: as the caller read them before the stop, else
        read now, once."""
        if self.caught is None:
            self.caught = caught_signals(self.pid)
        return self.caught

    def _filtered(self, tid: int) -> bool:
        """Whether thread `tid` runs under a seccomp filter: asked of the kernel with ptrace
        (this is under the stop, where a file read would cost ten times as much), else read in
        its status (the request needs CAP_SYS_ADMIN)."""
        ctypes.set_errno(0)
        if _libc.ptrace(PTRACE_SECCOMP_GET_FILTER, tid, 0, None) >= 0:
            return True
        if ctypes.get_errno() == errno.EINVAL:  # not in filter mode
            return False
        return _task_status(self.pid, tid).get("Seccomp", "") != "0"

    def _run_until_resumed(self, thread: _Thread, frame: int, marker: int, sig: int) -> int:
        """Let the thread run the call until the runtime's return point takes it to `marker`
        (with %r12 = `frame`), and return the call's result; its registers are then put back
        as after a system call, with any interrupted call restarted by hand.
        - `sig` 0: ulp_resume's getpid. The thread is followed from system call to system call
          (a dlopen makes some twenty) to that call's exit; the result is in %rdi.
        - Else ulp_resume_signal's signal `sig`, which stops the thread as it is delivered
          (tgkill had returned); the thread runs freely until then. The result is in %rbx, and
          the signal is discarded (resumed, the thread gets none), unless someone else sent
          it too (one pending signal of a kind absorbs the next): then it is held for the
          detach, as is every other signal that stops the thread meanwhile."""
        wait = _Wait(thread.tid, self.timeout)
        resume = PTRACE_CONT if sig else PTRACE_SYSCALL
        # Signals to the trigger are held once for the whole call rather than at each resume,
        # and every stop's registers are read into one buffer.
        regs = Registers()
        with tracer_signals.held(_ASYNC_SIGNALS):
            self._resume(thread, resume)
            while True:
                status = wait.status()
                if status is None:
                    # Cut short, the call could leave a lock held for ever: let it finish on
                    # its own, and restore itself in ulp_resume as if we had died.
                    self._stop(thread)
                    thread.abandoned = True
                    raise UlpError(
                        f"process {self.pid}: the call did not return within {self.timeout} s"
                        f" (thread {thread.tid} finishes it alone)"
                    )
                stopped_by = self._stopped_by(thread, status)
                deliver = 0
                if stopped_by == (sig or _SYSCALL_STOP) and status >> 16 == 0:
                    _ptrace(PTRACE_GETREGS, thread.tid, 0, ctypes.addressof(regs))
                    if sig:
                        ours = regs.rip == marker and regs.r12 == frame
                    else:
                        at_exit = regs.rax != (1 << 64) - errno.ENOSYS
                        ours = (
                            regs.rip == marker
                            and regs.orig_rax == SYS_GETPID
                            and regs.r12 == frame
                            and at_exit
                        )
                    if ours:
                        if sig and self._signal_code(thread.tid) != _SI_TKILL:
                            thread.pending.append(sig)
                        thread.stopped = thread.stopped or thread.regs
                        thread.regs = sigframe.restarted(thread.regs)
                        return regs.rbx if sig else regs.rdi
                    if sig:
                        thread.pending.append(stopped_by)
                elif stopped_by == signal.SIGSEGV:
                    regs = self._get_regs(thread.tid)
                    raise UlpError(f"process {self.pid}: the call crashed at {regs.rip:#x}")
                elif status >> 16 != PTRACE_EVENT_STOP:
                    deliver = self._held(thread, stopped_by)
                self._resume(thread, resume, deliver)

    def _stopped_by(self, thread: _Thread, status: int) -> int:
        """The signal of the stop `status` reports for `thread`, running a call; an error if
        the thread died instead."""
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            del self.threads[thread.tid]
            raise UlpError(f"process {self.pid}: thread {thread.tid} died during the call")
        thread.running = False
        return os.WSTOPSIG(status)

    @staticmethod
    def _signal_code(tid: int) -> int:
        """si_code of the signal thread `tid` is stopped at the delivery of."""
        info = ctypes.create_string_buffer(_SIGINFO)
        _ptrace(PTRACE_GETSIGINFO, tid, 0, ctypes.addressof(info))
        return struct.unpack_from("<i", info, 8)[0]

    def _run_until_return(self, thread: _Thread) -> int:
        wait = _Wait(thread.tid, self.timeout)
        self._continue(thread)
        while True:
            deliver = 0
            status = wait.status()
            if status is None:
                self._stop(thread)
                regs = self._get_regs(thread.tid)
                if thread.pending[-1:] == [signal.SIGSEGV] and regs.rip == 0:
                    thread.pending.pop()  # it returned just as time ran out
                    return regs.rax
                raise UlpError(
                    f"process {self.pid}: the call did not return within {self.timeout} s"
                )
            sig = self._stopped_by(thread, status)
            if sig == signal.SIGSEGV:
                regs = self._get_regs(thread.tid)
                if regs.rip == 0:
                    return regs.rax
                raise UlpError(f"process {self.pid}: the call crashed at {regs.rip:#x}")
            if status >> 16 != PTRACE_EVENT_STOP:
                deliver = self._held(thread, sig)
            self._continue(thread, PTRACE_CONT, deliver)

    def _held(self, thread: _Thread, sig: int) -> int:
        """A signal that stopped `thread` during a call, by its delivery: held for the detach
        (0 returned), but for a stop signal that stops the process (SIGSTOP, and SIGTSTP,
        SIGTTIN and SIGTTOU when not caught), returned to be delivered now. Held, it would stop
        the process at the detach even if a SIGCONT came meanwhile, taken by another thread;
        delivered, it stops the others now, the call goes on (a traced thread is resumed out
        of the group stop), and the kernel puts the thread in the group stop at the detach if
        the process is still stopped then."""
        stops = sig == signal.SIGSTOP
        if sig in _TERMINAL_STOPS:
            stops = not self._caught() >> (sig - 1) & 1
        if stops:
            return sig
        thread.pending.append(sig)
        return 0

    @classmethod
    def _continue(cls, thread: _Thread, request: int = PTRACE_CONT, sig: int = 0) -> None:
        # No Python signal handler (Ctrl-C, an alarm) may run between resuming the thread and
        # recording that it runs: the cleanup would then treat a running thread as stopped.
        with tracer_signals.held(_ASYNC_SIGNALS):
            cls._resume(thread, request, sig)

    @staticmethod
    def _resume(thread: _Thread, request: int, sig: int = 0) -> None:
        """`_continue` for a caller that holds _ASYNC_SIGNALS already; `sig` is delivered."""
        _ptrace(request, thread.tid, 0, sig)
        thread.running = True
