"""The patching protocol: apply, revert or revert-all in one running process (docs/design.md,
"The two-stop protocol").

Everything that can be checked from outside has been checked (preflight.py). Then two stops:

1. **Prepare**, in one thread while the others run: the runtime loads the patch object and
   allocates what the commit needs. The loader and the allocator take locks, so the thread is
   one that holds none (safe_thread.py); when no thread qualifies, the attempt is let go and
   retried.
2. **Commit**, with every thread stopped: the trigger writes the universe checkers (harmless
   until the commit: they lead to the versions that ran before), then the runtime's lock-free
   commit publishes every new version in one new universe. If it cannot (another trigger got
   in between), the whole attempt is retried; the checkers stay, still harmless.

The process is never left stopped (ptrace.Tracee restores and detaches on every path) and
never half-patched: until the commit nothing any thread runs has changed, and the commit is one
call that runs to completion with Ctrl-C and SIGTERM held off; a trigger killed outright leaves
the call to finish alone (runtime/resume.S).

Then the transition is finished when it can be (transition.py).
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import suppress
from dataclasses import dataclass, field, replace

from ulp_build.cstruct import c_string
from ulp_build.errors import UlpError
from ulp_build.live import request as rq
from ulp_build.live import runtime_state, tracer_signals, transition, trust
from ulp_build.live.loaded_library import LoadedLibrary
from ulp_build.live.operation import Operation
from ulp_build.live.preflight import AlreadyApplied, CheckedOperation, NotApplied, check
from ulp_build.live.process import maps, read_memory
from ulp_build.live.ptrace import Traced, Tracee, caught_signals
from ulp_build.live.safe_thread import threads_to_try, unsafe_to_load
from ulp_build.prepare.layout import PAD_BEFORE

# Ctrl-C and SIGTERM wait until a call into the runtime has returned: abandoning it halfway
# would leave its lock held in the process.
_HELD = {signal.SIGINT, signal.SIGTERM}


@dataclass(frozen=True)
class Result:
    """What became of the operation in one process."""

    pid: int
    status: str  # applied | reverted | already applied | not applied | exited | failed
    message: str
    # The universe the change took effect in (for "already applied", when the patch was
    # applied); None where nothing took effect.
    universe: int | None = None
    pending: list[transition.Holder] = field(default_factory=list)  # transition not finished
    uid: int | None = None  # the user the process runs as

    @property
    def failed(self) -> bool:
        """For a process named on the command line; `--all` passes over "not applied"."""
        return self.status in ("failed", "not applied")


class _Busy(UlpError):
    """This attempt could not proceed now; let the process go and try again."""


def run(
    pid: int,
    op: Operation,
    *,
    timeout: float = 5.0,
    retries: int = 20,
    wait: float = 3.0,
    library: LoadedLibrary | None = None,
) -> Result:
    """Carry `op` out in process `pid`, then wait up to `wait` seconds to finish transitions;
    never raises for a problem of that process. `library`: its target, if just found."""
    if not os.path.exists(f"/proc/{pid}"):
        return Result(pid, "failed", f"process {pid}: no such process")
    try:
        uid = trust.credentials(pid).uid
    except UlpError:
        uid = None
    return replace(_run(pid, op, timeout, retries, wait, library), uid=uid)


def _run(
    pid: int,
    op: Operation,
    timeout: float,
    retries: int,
    wait: float,
    library: LoadedLibrary | None,
) -> Result:
    try:
        checked = check(pid, op, library)
        last = ""
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(min(0.01 * attempt, 0.2))
            try:
                universe = execute(checked, timeout)
            except (_Busy, Traced) as exc:
                last = str(exc)
                continue
            status = "reverted" if checked.reverting else "applied"
            return _finished(Result(pid, status, checked.summary, universe), wait, timeout)
        return Result(pid, "failed", f"gave up after {retries + 1} attempts: {last}")
    except NotApplied as exc:
        return Result(pid, "not applied", str(exc))
    except AlreadyApplied as exc:
        return _finished(Result(pid, "already applied", str(exc), exc.universe), wait, timeout)
    except UlpError as exc:
        if not os.path.exists(f"/proc/{pid}"):
            return Result(pid, "exited", "the process exited")
        return Result(pid, "failed", str(exc))


def _finished(result: Result, wait: float, timeout: float) -> Result:
    """`result`, with the threads that keep a transition of the process from finishing."""
    try:
        found = transition.wait_and_finish(result.pid, wait, timeout)
    except UlpError as exc:
        return replace(result, message=f"{result.message}; transition not finished: {exc}")
    unfinished = [t for t in found if not t.done]
    result = replace(result, pending=[h for t in unfinished for h in t.holders])
    if unfinished and not result.pending:
        # Nothing held it under the stop, yet the bytes had changed since they were read:
        # another trigger was at work. Said, so that no pending transition goes unreported.
        names = ", ".join(t.library.name for t in unfinished)
        why = "another trigger changed it meanwhile; `ulp patches --finish`"
        result = replace(result, message=f"{result.message}; transition pending in {names} ({why})")
    return result


def _as_checked(checked: CheckedOperation) -> None:
    """Under a stop, before anything is called or written: the process still has the
    credentials its patch's files were judged by. Between the check and the stop it may have
    executed a setuid program: another user's process by now, with a layout that the check's
    addresses know nothing of. Once one of its threads is stopped, no exec can happen without
    ending that thread, and so the stop."""
    now = trust.credentials(checked.pid)
    if now != checked.credentials:
        raise UlpError(
            f"process {checked.pid}: its user or group ids or capabilities changed since it was"
            " checked (it executed a setuid program?): not patched"
        )


def execute(checked: CheckedOperation, timeout: float) -> int:
    """One attempt, both stops: the new universe."""
    ticket, tid = prepare(checked, timeout)
    universe, _stopped_for = commit(checked, ticket, tid, timeout)
    return universe


def _call(checked: CheckedOperation, tracee: Tracee, name: str, *args: int, tid: int) -> int:
    value = tracee.call(checked.runtime_base + checked.symbols[name], *args, tid=tid,
                        resume=checked.return_point)  # fmt: skip
    return value - (1 << 64) if value >= 1 << 63 else value


def prepare(checked: CheckedOperation, timeout: float) -> tuple[int, int]:
    """The first stop: (ticket, thread that prepared)."""
    pid = checked.pid
    raw = checked.request.encode()
    regions = maps(pid)
    caught = caught_signals(pid)
    reasons: list[str] = []
    for tid in threads_to_try(pid):
        with Tracee(pid, timeout, only=frozenset({tid}), regions=regions, caught=caught) as tracee:
            if tid not in tracee.threads:
                continue
            _as_checked(checked)
            why = unsafe_to_load(tracee.registers(tid), regions, checked.runtime)
            if why:
                reasons.append(f"thread {tid} {why}")
                continue
            with tracer_signals.held(_HELD):
                buffer = _call(checked, tracee, "ulp_buffer", len(raw), tid=tid)
                if buffer <= 0:
                    raise UlpError(f"process {pid}: the runtime could not map memory")
                try:
                    tracee.write(buffer, raw)
                    status = _call(checked, tracee, "ulp_prepare", buffer, tid=tid)
                    back = read_memory(pid, buffer, checked.request.entries_size)
                    why = c_string(back[rq.MESSAGE_OFFSET :])
                finally:
                    # Not in a thread still finishing a call that timed out: the buffer is
                    # then left, a few KiB.
                    with suppress(UlpError):
                        _call(checked, tracee, "ulp_buffer_free", buffer, len(raw), tid=tid)
            if status > 0:
                found = rq.indexes(back, len(checked.request.functions))
                for f, index in zip(checked.request.functions, found, strict=True):
                    checked.indexes[f.entry - PAD_BEFORE] = index
                return status, tid
            if status == -rq.EALREADY:
                raise AlreadyApplied(f"process {pid}: {why}")
            if status == -rq.EBUSY:
                raise _Busy(f"process {pid}: {why}")
            raise UlpError(f"process {pid}: {why or f'the runtime refused ({status})'}")
    raise _Busy(
        f"process {pid}: no thread is outside the loader and the allocator"
        f" ({'; '.join(reasons) or 'no thread'})"
    )


def commit(checked: CheckedOperation, ticket: int, tid: int, timeout: float) -> tuple[int, float]:
    """The second stop: write the checkers that are missing, then commit; (the new universe,
    seconds every thread was stopped). A checker written by an attempt that does not commit
    stays, harmlessly: the prepare made its function's record, with the versions that run now,
    before any checker could lead there."""
    pid, library = checked.pid, checked.library
    slot = library.dispatch_slot
    # Worked out while the process runs; under the stop, each span is compared with what was
    # read here (another trigger may have written since: then start over) and written in one
    # go. Nothing runs meanwhile, so the order of the bytes written does not matter; a thread
    # stopped at a direct jump's pad runs the checker's first instruction instead.
    functions = [c.function for c in checked.code]
    # Another trigger may have changed the records since the preflight.
    regions = maps(pid)
    state = runtime_state.read(pid, regions)
    checked.records = state.records_of(library.descriptor, library.lib_offset())
    snapshot = library.snapshot(functions)
    writes = []
    for c in library.function_codes(functions, checked.records, snapshot):
        pad, jump = c.checker(slot, checked.indexes[c.pad])
        if c.code[:PAD_BEFORE] != pad:
            writes.append((c.pad, pad))
        if c.code[-2:] != jump:
            writes.append((c.nop, jump))
    edits = snapshot.edited(writes)
    caught = caught_signals(pid)
    with tracer_signals.held(_HELD), Tracee(pid, timeout, regions=regions, caught=caught) as tracee:
        _as_checked(checked)
        if not tracee.replace(edits):
            raise _Busy(f"process {pid}: its code changed while being patched")
        caller = tid if tid in tracee.threads else min(tracee.threads)
        universe = _call(checked, tracee, "ulp_commit", ticket, tid=caller)
    if universe == -rq.EBUSY:
        raise _Busy(f"process {pid}: another trigger is patching it")
    if universe <= 0:
        raise UlpError(f"process {pid}: the runtime refused the commit ({universe})")
    return universe, tracee.stopped_for
