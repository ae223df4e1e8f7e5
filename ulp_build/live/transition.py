"""Finishing transitions (DESIGN section 4).

After an apply or a revert, a patched function's universe checker sends every call through
the dispatcher, because a thread that was inside the library at that moment must keep the
versions of its universe. Once no thread holds an older universe of the library than its last
change, the checker has nothing left to decide: its pad becomes a direct jump to the newest
version, or, when that is the original code, the entry nop comes back (`66 90`). One short stop
of the process, and only when it is safe:

- no thread holds an old universe (read again while every thread is stopped);
- no thread is inside the runtime, where it may have read the global universe and not yet
  stored it as its own (it would enter the library with an old universe unseen);
- no thread is stopped at a checker's second instruction (its indirect jump), which the new pad
  may cut in the middle (a thread at the pad's first instruction is fine: the new one starts
  there too).

Otherwise the transition stays as it is, correct, and is reported as pending.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ulp_build.live import runtime_state
from ulp_build.live.process import Snapshot, maps
from ulp_build.live.ptrace import Tracee
from ulp_build.prepare import codegen
from ulp_build.prepare.layout import PAD_BEFORE

LIB_RECORDS = 64  # ULP_THREAD_LIBS: offset of the first library's record in a thread
LIB_RECORD_SIZE = 16


@dataclass(frozen=True)
class Holder:
    tid: int
    name: str
    universe: int


@dataclass
class Transition:
    """One library's patched functions and whether they can be finished."""

    library: runtime_state.LibraryInfo
    universe: int  # of the library's last change
    functions: list[runtime_state.FunctionRecord]
    holders: list[Holder] = field(default_factory=list)
    unfinished: list[runtime_state.FunctionRecord] = field(default_factory=list)
    edits: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # to finish it

    @property
    def done(self) -> bool:
        return not self.unfinished


def thread_name(pid: int, tid: int) -> str:
    try:
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        return "?"


def transitions(state: runtime_state.RuntimeState) -> list[Transition]:
    """Per library with patches on its current load: its functions, which still run through a
    checker, and which threads hold an older universe than its last change."""
    out = []
    for lib in state.libraries:
        offset = LIB_RECORDS + LIB_RECORD_SIZE * lib.index
        mine = [p for p in state.patches if p.target == lib.descriptor and p.lib_offset == offset]
        if not mine:
            continue
        universe = max(max(p.applied, p.reverted) for p in mine)
        functions = list({f.pad: f for p in mine for f in p.functions}.values())
        t = Transition(lib, universe, functions)
        snapshot = Snapshot(state.pid, [(f.pad, f.entry_nop + 2 - f.pad) for f in functions])
        writes = []
        for f in functions:
            pad, nop = _finished_bytes(f)
            if snapshot.read(f.pad, PAD_BEFORE) != pad or (
                nop and snapshot.read(f.entry_nop, 2) != nop
            ):
                t.unfinished.append(f)
                # Back to the prepared padding, the nop included, or a direct jump in the pad
                # (the entry jump stays).
                writes.append((f.pad, pad))
                if nop:
                    writes.append((f.entry_nop, nop))
        t.edits = snapshot.edited(writes)
        for thread in state.threads:
            held = thread.libraries.get(lib.index)
            if held and held.depth > 0 and held.universe < universe:
                t.holders.append(
                    Holder(thread.tid, thread_name(state.pid, thread.tid), held.universe)
                )
        out.append(t)
    return out


def _finished_bytes(f: runtime_state.FunctionRecord) -> tuple[bytes, bytes]:
    """The pad and entry nop of `f` once its transition is done (no nop: the entry jump
    stays)."""
    if f.newest == f.original:
        return b"\x90" * PAD_BEFORE, codegen.NOP2
    return codegen.direct_pad(f.pad, f.newest), b""


def finish(pid: int, timeout: float = 5.0) -> list[Transition]:
    """Finish every transition of `pid` that can be finished now; return them all, the ones
    left pending with their holders (and `unfinished` functions)."""
    found = transitions(runtime_state.read(pid))
    if not any(t.unfinished and not t.holders for t in found):
        return found
    runtime = runtime_state.find_runtime(pid)[0]
    runtime_code = [(m.start, m.end) for m in maps(pid) if m.path == runtime and "x" in m.perms]
    with Tracee(pid, timeout) as tracee:
        # The bytes to write were worked out above, while the process ran; `replace` writes
        # them only where nothing changed since. Who holds what is read again, now that
        # nothing moves.
        now = {t.library.index: t for t in transitions(runtime_state.read(pid))}
        rips = [tracee.registers(tid).rip for tid in tracee.threads]
        if any(start <= rip < end for rip in rips for start, end in runtime_code):
            return found  # see the module's comment; the next trigger tries again
        for t in found:
            current = now.get(t.library.index)
            if current is None or current.universe != t.universe:
                continue  # changed since the bytes were worked out: the next time
            t.holders = current.holders
            if t.holders or not t.unfinished:
                continue
            # A thread stopped in a checker's second instruction would resume in the middle
            # of the new pad; one at its first runs the new first instruction.
            jumps = {f.pad + codegen.CHECKER_JUMP_AT for f in t.unfinished}
            if any(rip in jumps for rip in rips):
                continue
            if tracee.replace(t.edits):
                t.unfinished = []
    return found


def wait_and_finish(pid: int, wait: float, timeout: float = 5.0) -> list[Transition]:
    """Poll from outside (no stop) until no thread holds an old universe or `wait` seconds
    pass, then finish what can be finished."""
    deadline = time.monotonic() + wait
    while True:
        found = transitions(runtime_state.read(pid))
        if all(not t.holders for t in found if t.unfinished) or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    return finish(pid, timeout)
