"""Finishing transitions (docs/design.md, "Transitions").

After an apply or a revert, a patched function's universe checker sends every call through
the dispatcher, because a thread that was inside the library at that moment must keep the
versions of its universe. The runtime keeps, per library, the state of its last change, as
Linux livepatch keeps klp_target_state (runtime/ulp.h, struct ulp_library): the target
universe, whether a patch is active after it, and whether the transition to it is finished.
The commit sets it, unfinished; this module finishes it. Whether a library is in transition is
read from that state, never guessed from code bytes.

Once no thread holds an older universe of the library than its last change, the checkers have
nothing left to decide: each pad becomes a direct jump to its function's newest version, or,
when that is the original code, the prepared padding with the entry nop (`66 90`). One short
stop of the process writes them and, in the same write, the library's `finished` word (through
/proc/PID/mem: the runtime itself never reads it, so no call into the process is needed). Only
when it is safe; otherwise the holders are reported, each with its reason:

- INSIDE_LIBRARY: a thread inside the library with an older universe (read again while every
  thread is stopped);
- INSIDE_RUNTIME: a thread inside the runtime, where it may have read the global universe and
  not yet stored it as its own (it would enter the library with an old universe unseen). Not
  in the runtime's own `vfork` and jumps (runtime/vfork.S, jumps.c), which read no universe: a
  thread whose vfork child runs waits in `vfork` for as long as the child does;
- AT_CHECKER_JUMP: a thread stopped at a checker's second instruction (its indirect jump), which
  the new pad may cut in the middle (a thread at the pad's first instruction is fine: the new
  one starts there too).

The bytes overwritten must be exactly each function's checker or already its finished code;
anything else is an error, and nothing is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ulp_build.errors import UlpError
from ulp_build.live import runtime_state
from ulp_build.live.process import Mapping, Snapshot, mapped_elf, maps
from ulp_build.live.ptrace import Tracee
from ulp_build.prepare import codegen
from ulp_build.prepare.layout import DESCRIPTOR, PAD_BEFORE

INSIDE_LIBRARY = "inside the library"
INSIDE_RUNTIME = "inside the runtime"
AT_CHECKER_JUMP = "at a checker's jump"

# The C library's ways out of a call, as the runtime defines them.
WAYS_OUT = frozenset(("vfork", "longjmp", "_longjmp", "siglongjmp", "__longjmp_chk", "setcontext"))

# A function's pad and entry nop as prepared (an endbr64 may come between them).
PRISTINE = (b"\x90" * PAD_BEFORE, codegen.NOP2)
_FINISHED_WORD = (b"\0\0\0\0", b"\1\0\0\0")  # struct ulp_library.finished: 0, then 1


@dataclass(frozen=True)
class Holder:
    """A thread that keeps a library's transition from finishing, and why."""

    tid: int
    name: str
    universe: int  # its universe of the library (0: none)
    reason: str  # INSIDE_LIBRARY, INSIDE_RUNTIME or AT_CHECKER_JUMP


@dataclass
class Transition:
    """One library's last change, as the runtime records it, and what finishing it writes."""

    library: runtime_state.LibraryInfo
    universe: int  # the target universe: of the library's last change
    patched: bool  # a patch is active after it
    finished: bool
    functions: list[runtime_state.FunctionRecord]
    holders: list[Holder] = field(default_factory=list)
    edits: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # to finish it
    unexpected: list[str] = field(default_factory=list)  # functions whose bytes are foreign

    @property
    def done(self) -> bool:
        return self.finished


def thread_name(pid: int, tid: int) -> str:
    try:
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        return "?"


def settled_code(f: runtime_state.FunctionRecord) -> tuple[bytes, bytes]:
    """The pad and entry nop of `f` once no transition is under way: a direct jump to its newest
    version (the entry jump into the pad stays), or the prepared padding when that is the
    original code."""
    if f.newest == f.original:
        return PRISTINE
    return codegen.direct_pad(f.pad, f.newest), codegen.checker_jump(f.entry_nop, f.pad)


def checker_code(f: runtime_state.FunctionRecord, dispatch_slot: int) -> tuple[bytes, bytes]:
    """The pad and entry jump of `f`'s universe checker."""
    pad = codegen.checker_pad(f.pad, dispatch_slot, f.index)
    return pad, codegen.checker_jump(f.entry_nop, f.pad)


def transitions(state: runtime_state.RuntimeState) -> list[Transition]:
    """Per library changed on its current load: its last change as the runtime records it, and,
    when unfinished, which threads hold an older universe and the writes that finish it."""
    out = []
    for lib in state.libraries:
        if lib.target_universe == 0:
            continue
        mine = state.patches_of(lib.descriptor, lib.lib_offset)
        functions = list({f.pad: f for p in mine for f in p.functions}.values())
        t = Transition(lib, lib.target_universe, lib.patched, lib.finished, functions)
        out.append(t)
        if t.finished:
            continue
        slot = lib.descriptor + DESCRIPTOR.offset("dispatch")
        ranges = [(f.pad, f.entry_nop + 2 - f.pad) for f in functions]
        snapshot = Snapshot(state.pid, [*ranges, (lib.finished_word, len(_FINISHED_WORD[0]))])
        writes = []
        for f in functions:
            now = (snapshot.read(f.pad, PAD_BEFORE), snapshot.read(f.entry_nop, 2))
            settled = settled_code(f)
            if now == checker_code(f, slot):
                writes += [(f.pad, settled[0]), (f.entry_nop, settled[1])]
            elif now != settled:
                t.unexpected.append(f"{f.pad:#x} ({now[0].hex()} {now[1].hex()})")
        if snapshot.read(lib.finished_word, 4) == _FINISHED_WORD[0]:
            writes.append((lib.finished_word, _FINISHED_WORD[1]))
        t.edits = snapshot.edited(writes)
        for thread in state.threads:
            held = thread.libraries.get(lib.index)
            if held and held.depth > 0 and held.universe < t.universe:
                name = thread_name(state.pid, thread.tid)
                t.holders.append(Holder(thread.tid, name, held.universe, INSIDE_LIBRARY))
    return out


def finish(
    pid: int,
    timeout: float = 5.0,
    found: list[Transition] | None = None,
    mappings: list[Mapping] | None = None,
) -> list[Transition]:
    """Finish every transition of `pid` that can be finished now; return them all, the ones
    left pending with their holders. `found`: its transitions just read, if they were, and
    `mappings` its maps read with them."""
    if found is None or mappings is None:
        mappings = maps(pid)
        found = transitions(runtime_state.read(pid, mappings))
    if not any(not t.done and not t.holders for t in found):
        return found
    for t in found:
        if t.unexpected and not t.done:
            raise UlpError(
                f"process {pid}: {t.library.name}: the bytes at {', '.join(t.unexpected)} are"
                " neither a universe checker nor a finished transition; not finishing it"
            )
    universe_code = _universe_code(pid, mappings)
    with Tracee(pid, timeout) as tracee:
        # The bytes to write were worked out above, while the process ran; `replace` writes
        # them only where nothing changed since. Who holds what is read again, now that
        # nothing moves.
        state = runtime_state.read(pid, mappings)
        now = {t.library.index: t for t in transitions(state)}
        rips = {tid: tracee.registers(tid).rip for tid in tracee.threads}
        in_runtime = [tid for tid, rip in rips.items() if universe_code(rip)]
        for t in found:
            current = now.get(t.library.index)
            if current is None or current.universe != t.universe:
                continue  # changed since the bytes were worked out: the next time
            if current.done:
                t.finished, t.holders = True, []
                continue
            # A thread stopped in a checker's second instruction would resume in the middle
            # of the new pad; one at its first runs the new first instruction.
            jumps = {f.pad + codegen.CHECKER_JUMP_AT for f in current.functions}
            t.holders = [
                *current.holders,
                *(_holder(state, t, tid, INSIDE_RUNTIME) for tid in in_runtime),
                *(_holder(state, t, tid, AT_CHECKER_JUMP) for tid, rip in rips.items()
                  if rip in jumps),
            ]  # fmt: skip
            if not t.holders and tracee.replace(t.edits):
                t.finished = True
    return found


def _universe_code(pid: int, mappings: list[Mapping]) -> Callable[[int], bool]:
    """Whether an address is runtime code that may read the global universe: its executable
    mappings (among `mappings`, just read) but the WAYS_OUT functions."""
    first = runtime_state.runtime_mapping(pid, mappings)
    code = [(m.start, m.end) for m in mappings if m.path == first.path and "x" in m.perms]
    ways_out = [
        (first.start + s.value, first.start + s.value + s.size)
        for s in mapped_elf(pid, first).dynamic_symbols
        if s.defined and s.name in WAYS_OUT
    ]

    def inside(rip: int) -> bool:
        return any(a <= rip < b for a, b in code) and not any(a <= rip < b for a, b in ways_out)

    return inside


def _holder(state: runtime_state.RuntimeState, t: Transition, tid: int, reason: str) -> Holder:
    held = next((th.libraries.get(t.library.index) for th in state.threads if th.tid == tid), None)
    return Holder(tid, thread_name(state.pid, tid), held.universe if held else 0, reason)


def wait_and_finish(pid: int, wait: float, timeout: float = 5.0) -> list[Transition]:
    """Poll from outside (no stop) until no thread holds an old universe or `wait` seconds
    pass, then finish what can be finished; while `wait` lasts, again, since a thread found
    passing through the runtime or a checker's jump at that stop (a moment's business, likely
    among a thousand threads) or entering the library since is gone a moment later."""
    deadline = time.monotonic() + wait
    while True:
        while True:
            mappings = maps(pid)
            found = transitions(runtime_state.read(pid, mappings))
            if all(not t.holders for t in found if not t.done) or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        found = finish(pid, timeout, found, mappings)
        if all(t.done for t in found) or time.monotonic() >= deadline:
            return found
        time.sleep(0.02)
