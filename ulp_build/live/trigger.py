"""The patching protocol (DESIGN section 5): apply, revert or revert-all in one running process.

Everything that can be checked from outside is checked before the process is touched: the
runtime is loaded, the target is loaded with the patch's build-id, every function's bytes are
the prepared padding or our own checker, the patch object has every replacement and reference
variable. Then two stops:

1. **Prepare**, in one thread while the others run: the runtime loads the patch object and
   allocates what the commit needs. The loader and the allocator take locks; a lock held by a
   running thread is released in due course, so only the chosen thread itself must hold none:
   it must not be stopped inside the dynamic loader, the C library's code, the runtime, or an
   allocator system call. When no thread qualifies, the attempt is let go and retried.
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
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ulp_build.elf import SHN_UNDEF, STT_FUNC, STT_OBJECT, ElfFile
from ulp_build.errors import UlpError
from ulp_build.live import inventory, loaded_library, runtime_state, transition
from ulp_build.live import request as rq
from ulp_build.live.process import Mapping, maps, proc_dir, read_memory, thread_ids
from ulp_build.live.ptrace import Landing, Registers, Tracee
from ulp_build.patch import metadata
from ulp_build.patch.metadata import Function, Patch
from ulp_build.prepare.layout import PAD_BEFORE

# System calls the allocator makes while holding its locks.
_ALLOCATOR_SYSCALLS = {
    9: "mmap", 10: "mprotect", 11: "munmap", 12: "brk", 25: "mremap", 28: "madvise",
}  # fmt: skip
_NO_SYSCALL = (1 << 64) - 1
_HELD = {signal.SIGINT, signal.SIGTERM}


@dataclass(frozen=True)
class Operation:
    """What to do in each process: revert everything of one library, then apply a patch, or
    revert one patch."""

    patch: Patch | None = None
    patch_path: Path | None = None
    revert: bool = False  # revert `patch` instead of applying it
    revert_all: str | None = None  # a library: revert all its patches first

    def describe(self) -> str:
        if self.patch is None:
            return f"revert all patches of {self.revert_all}"
        verb = "revert" if self.revert else "apply"
        prefix = f"revert all patches of {self.revert_all}, then " if self.revert_all else ""
        return f"{prefix}{verb} {self.patch.id}"


@dataclass(frozen=True)
class Result:
    pid: int
    status: str  # applied | reverted | already applied | exited | failed
    message: str
    universe: int = 0
    pending: list[transition.Holder] = field(default_factory=list)  # transition not finished

    @property
    def failed(self) -> bool:
        return self.status == "failed"


class _Busy(UlpError):
    """This attempt could not proceed now; let the process go and try again."""


class _AlreadyApplied(UlpError):
    pass


def run(
    pid: int, op: Operation, *, timeout: float = 5.0, retries: int = 20, wait: float = 3.0
) -> Result:
    """Carry `op` out in process `pid`, then wait up to `wait` seconds to finish transitions;
    never raises for a problem of that process."""
    try:
        plan = Plan.make(pid, op)
        last = ""
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(min(0.01 * attempt, 0.2))
            try:
                universe = plan.execute(timeout)
            except _Busy as exc:
                last = str(exc)
                continue
            status = "reverted" if plan.reverting else "applied"
            return _finished(Result(pid, status, plan.summary, universe), wait, timeout)
        return Result(pid, "failed", f"gave up after {retries + 1} attempts: {last}")
    except _AlreadyApplied as exc:
        return _finished(Result(pid, "already applied", str(exc)), wait, timeout)
    except UlpError as exc:
        if not Path(f"/proc/{pid}").exists():
            return Result(pid, "exited", "the process exited")
        return Result(pid, "failed", str(exc))


def candidates(op: Operation) -> list[int]:
    """Every process with the runtime and the operation's target loaded (with the patch's
    build-id)."""
    out = []
    for pid in inventory.processes():
        try:
            if op.patch is not None:
                loaded_library.find(pid, op.patch.target_name, op.patch.target_build_id)
            else:
                assert op.revert_all is not None
                loaded_library.find_by_name(pid, op.revert_all)
        except UlpError:
            continue
        out.append(pid)
    return out


def run_all(
    op: Operation,
    *,
    jobs: int = min(8, os.cpu_count() or 1),
    progress: Callable[[Result, int, int], None] | None = None,
    **kwargs: Any,
) -> list[Result]:
    """`run` in every candidate process, `jobs` at a time, in worker processes (the work is
    mostly Python, which threads would not spread over CPUs; and each target is traced from
    start to end by one worker, as ptrace requires). Processes that start meanwhile are found
    by a new scan at the end, until a scan finds none."""
    results: dict[int, Result] = {}
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        while True:
            new = [pid for pid in candidates(op) if pid not in results and pid != os.getpid()]
            if not new:
                break
            total = len(results) + len(new)
            futures = [pool.submit(run, pid, op, **kwargs) for pid in new]
            for future in as_completed(futures):
                result = future.result()
                results[result.pid] = result
                if progress:
                    progress(result, len(results), total)
    return [results[pid] for pid in sorted(results)]


def _finished(result: Result, wait: float, timeout: float) -> Result:
    """`result`, with the threads that keep a transition of the process from finishing."""
    try:
        found = transition.wait_and_finish(result.pid, wait, timeout)
    except UlpError as exc:
        return replace(result, message=f"{result.message}; transition not finished: {exc}")
    holders = [h for t in found if not t.done for h in t.holders]
    return replace(result, pending=holders)


@dataclass
class Plan:
    """One operation in one process: everything it needs, checked before the process is
    touched (`make`), then its two stops (`prepare`, `commit`)."""

    pid: int
    op: Operation
    runtime: str
    runtime_base: int
    symbols: dict[str, int]
    landing: Landing
    library: loaded_library.LoadedLibrary
    code: list[loaded_library.FunctionCode]
    request: rq.Request
    stopped_for: float = 0.0  # seconds every thread was stopped by the last commit
    indexes: dict[int, int] = field(default_factory=dict)  # pad -> the runtime's record
    # pad -> the runtime's record of each function patched on this load of the library: what
    # its bytes may be (loaded_library.LoadedLibrary.function_codes)
    records: dict[int, runtime_state.FunctionRecord] = field(default_factory=dict)

    @property
    def reverting(self) -> bool:
        return self.op.revert or self.op.patch is None

    @property
    def summary(self) -> str:
        return self.op.describe()

    # -- checks, all before the process is touched -------------------------------------------

    @classmethod
    def make(cls, pid: int, op: Operation) -> Plan:
        state = runtime_state.read(pid)
        elf = ElfFile.load_shared(state.runtime)
        symbols = {s.name: s.value for s in elf.dynamic_symbols if s.defined}
        for name in ("ulp_buffer", "ulp_buffer_free", "ulp_prepare", "ulp_commit", "ulp_resume"):
            if name not in symbols:
                raise UlpError(f"{state.runtime}: no {name}: a runtime too old for this trigger")
        base = next(m.start for m in maps(pid) if m.path == state.runtime and m.offset == 0)
        landing = runtime_state.landing(elf, base)
        patch = op.patch
        if patch is not None:
            library = loaded_library.find(pid, patch.target_name, patch.target_build_id)
            if op.revert_all and op.revert_all not in (
                patch.target_name,
                library.path,
                Path(library.path).name,
            ):
                raise UlpError(
                    f"--revert-all {op.revert_all}: the patch {patch.id} is for"
                    f" {patch.target_name}, not that library"
                )
        else:
            assert op.revert_all is not None
            library = loaded_library.find_by_name(pid, op.revert_all)
        mine = state.patches_of(library.descriptor, library.registration())
        active = [p for p in mine if p.active]
        flags = rq.REVERT_ALL if op.revert_all else 0
        req = rq.Request(flags, library.descriptor, bytes.fromhex(library.build_id))
        code: list[loaded_library.FunctionCode] = []
        plan = cls(pid, op, state.runtime, base, symbols, landing, library, code, req)
        plan.records = state.records_of(library.descriptor, library.registration())
        if op.revert_all and not active and patch is None:
            raise UlpError(f"process {pid}: no patch is applied to {library.path}")
        if op.revert_all:
            plan.add_reverted(active)
        if patch is None:
            return plan
        req.id, req.description = patch.id, patch.description
        applied = [p for p in active if p.id == patch.id]
        if op.revert:
            req.flags |= rq.REVERT
            if not applied:
                raise UlpError(f"process {pid}: patch {patch.id} is not applied")
            plan.add_reverted(applied)
            return plan
        if applied and not op.revert_all:
            raise _AlreadyApplied(f"process {pid}: patch {patch.id} is already applied")
        req.flags |= rq.APPLY
        assert op.patch_path is not None
        obj = patch.object_path(op.patch_path)
        req.object = _seen_from(pid, obj)
        replacements, pointers, req.object_build_id = _object_symbols(obj, patch)
        patched = {f.offset: f for f in patch.functions}
        code += library.function_codes(patch.functions, plan.records)
        for f in patch.functions:
            req.functions.append(
                rq.FunctionEntry(library.base + f.offset, library.base + f.nop_offset,
                                 replacements[f.replacement])
            )  # fmt: skip
        for r in patch.references:
            if r.kind == "tls":
                value = r.offset
            elif r.kind == "function" and r.offset in patched:
                # The replacement calls the original: past the checker, or it would call itself.
                value = library.base + patched[r.offset].nop_offset + 2
            else:
                value = library.base + r.offset
            req.references.append(rq.ReferenceEntry(r.kind, pointers[r.pointer], value))
        return plan

    def add_reverted(self, patches: list[runtime_state.PatchInfo]) -> None:
        """The functions that reverting `patches` changes need a checker again, wherever
        their transition was finished with a direct jump."""
        seen = {c.pad for c in self.code}
        metas = []
        for p in patches:
            for f in p.functions:
                if f.pad in seen:
                    continue
                seen.add(f.pad)
                self.indexes[f.pad] = f.index
                entry = f.pad + PAD_BEFORE - self.library.base
                name = self.library.elf.name_at(entry)
                metas.append(Function(name, entry, f.entry_nop - self.library.base, ""))
        self.code += self.library.function_codes(metas, self.records)

    # -- the two stops -------------------------------------------------------------------------

    def execute(self, timeout: float) -> int:
        ticket, tid = self.prepare(timeout)
        return self.commit(ticket, tid, timeout)

    def _call(self, tracee: Tracee, name: str, *args: int, tid: int) -> int:
        value = tracee.call(self.runtime_base + self.symbols[name], *args, tid=tid,
                            resume=self.landing)  # fmt: skip
        return value - (1 << 64) if value >= 1 << 63 else value

    def prepare(self, timeout: float) -> tuple[int, int]:
        """The first stop: (ticket, thread that prepared)."""
        raw = self.request.encode()
        regions = maps(self.pid)
        reasons: list[str] = []
        for tid in _thread_ids(self.pid):
            with Tracee(self.pid, timeout, only=frozenset({tid}), regions=regions) as tracee:
                if tid not in tracee.threads:
                    continue
                why = _unsafe_to_load(tracee.registers(tid), regions, self.runtime)
                if why:
                    reasons.append(f"thread {tid} {why}")
                    continue
                with _held_signals():
                    buffer = self._call(tracee, "ulp_buffer", len(raw), tid=tid)
                    if buffer <= 0:
                        raise UlpError(f"process {self.pid}: the runtime could not map memory")
                    try:
                        tracee.write(buffer, raw)
                        status = self._call(tracee, "ulp_prepare", buffer, tid=tid)
                        back = read_memory(self.pid, buffer, len(raw))
                        why = rq.message(back[rq.MESSAGE_OFFSET :])
                    finally:
                        # Not in a thread still finishing a call that timed out: the buffer
                        # is then left, a few KiB.
                        with suppress(UlpError):
                            self._call(tracee, "ulp_buffer_free", buffer, len(raw), tid=tid)
                if status > 0:
                    found = rq.indexes(back, len(self.request.functions))
                    for f, index in zip(self.request.functions, found, strict=True):
                        self.indexes[f.entry - PAD_BEFORE] = index
                    return status, tid
                if status == -rq.EALREADY:
                    raise _AlreadyApplied(f"process {self.pid}: {why}")
                if status == -rq.EBUSY:
                    raise _Busy(f"process {self.pid}: {why}")
                raise UlpError(f"process {self.pid}: {why or f'the runtime refused ({status})'}")
        raise _Busy(
            f"process {self.pid}: no thread is outside the loader and the allocator"
            f" ({'; '.join(reasons) or 'no thread'})"
        )

    def commit(self, ticket: int, tid: int, timeout: float) -> int:
        """Write the checkers that are missing, then commit. A checker written by an attempt
        that does not commit stays, harmlessly: the prepare made its function's record, with
        the versions that run now, before any checker could lead there."""
        slot = self.library.dispatch_slot
        # Worked out while the process runs; under the stop, each span is compared with what
        # was read here (another trigger may have written since: then start over) and
        # written in one go. Nothing runs meanwhile, so the order of the bytes written does
        # not matter; a thread stopped at a direct jump's pad runs the checker's first
        # instruction instead.
        functions = [c.function for c in self.code]
        # Another trigger may have changed the records since `make`.
        self.records = runtime_state.read(self.pid).records_of(
            self.library.descriptor, self.library.registration()
        )
        snapshot = self.library.snapshot(functions)
        writes = []
        for c in self.library.function_codes(functions, self.records, snapshot):
            pad, jump = c.checker(slot, self.indexes[c.pad])
            if c.code[:PAD_BEFORE] != pad:
                writes.append((c.pad, pad))
            if c.code[-2:] != jump:
                writes.append((c.nop, jump))
        edits = snapshot.edited(writes)
        regions = maps(self.pid)
        with _held_signals(), Tracee(self.pid, timeout, regions=regions) as tracee:
            if not tracee.replace(edits):
                raise _Busy(f"process {self.pid}: its code changed while being patched")
            caller = tid if tid in tracee.threads else min(tracee.threads)
            universe = self._call(tracee, "ulp_commit", ticket, tid=caller)
        self.stopped_for = tracee.stopped_for
        if universe == -rq.EBUSY:
            raise _Busy(f"process {self.pid}: another trigger is patching it")
        if universe <= 0:
            raise UlpError(f"process {self.pid}: the runtime refused the commit ({universe})")
        return universe


def _seen_from(pid: int, path: Path) -> str:
    """`path` as the process opens it: relative to its root directory if it chroot'ed."""
    try:
        root = Path(os.readlink(f"{proc_dir(pid)}/root"))
    except OSError as exc:
        raise UlpError(f"process {pid}: cannot read its root directory: {exc.strerror}") from None
    if root == Path("/"):
        return str(path)
    if not path.is_relative_to(root):
        raise UlpError(
            f"process {pid} runs in a chroot ({root}): the patch object {path} must be inside it"
        )
    return "/" + str(path.relative_to(root))


def _object_symbols(obj: Path, patch: Patch) -> tuple[dict[str, int], dict[str, int], bytes]:
    """Offsets of the replacements and reference variables in the patch object, and its
    build-id; an error naming every missing one, before anything is loaded."""
    try:
        elf = ElfFile.load_shared(obj)
    except OSError as exc:
        raise UlpError(f"{obj}: {exc.strerror or exc}") from None
    symbols = {s.name: s for s in elf.dynamic_symbols if s.shndx != SHN_UNDEF}
    missing = []
    replacements: dict[str, int] = {}
    pointers: dict[str, int] = {}
    for f in patch.functions:
        s = symbols.get(f.replacement)
        if s is None or s.type != STT_FUNC:
            missing.append(f"function {f.replacement}")
        else:
            replacements[f.replacement] = s.value
    for r in patch.references:
        s = symbols.get(r.pointer)
        if s is None or s.type != STT_OBJECT or s.size < (16 if r.kind == "tls" else 8):
            missing.append(f"variable {r.pointer}")
        else:
            pointers[r.pointer] = s.value
    if missing:
        raise UlpError(f"{obj}: the patch object lacks {', '.join(missing)}")
    note = elf.build_id_note
    return replacements, pointers, note[0][:32] if note else b""


def _thread_ids(pid: int) -> list[int]:
    """Threads to try for the prepare step, the main thread first (often the idlest)."""
    return sorted(thread_ids(pid), key=lambda t: t != pid)


def _unsafe_to_load(regs: Registers, regions: list[Mapping], runtime: str) -> str | None:
    """Why a thread stopped with `regs` may hold a lock that loading the patch object needs."""
    where = next((m.path for m in regions if m.start <= regs.rip < m.end), "")
    name = Path(where).name
    if name.startswith("ld-linux") or name.startswith("ld-"):
        return "is inside the dynamic loader"
    if where == runtime:
        return "is inside the ulp runtime"
    if regs.orig_rax != _NO_SYSCALL:
        call = _ALLOCATOR_SYSCALLS.get(regs.orig_rax)
        return f"is in {call}() (maybe inside the allocator)" if call else None
    if name.startswith("libc.so") or name.startswith("libc-"):
        return "is running C library code"
    return None


@contextmanager
def _held_signals() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the runtime call in progress has returned: abandoning it
    halfway would leave its lock held in the process."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def operation(
    patch_file: str | None, *, revert: bool = False, revert_all: str | None = None
) -> Operation:
    """The operation a command line asks for. A reverse patch (`.rev.ulp`) reverts."""
    if patch_file is None:
        if revert_all is None:
            raise UlpError("nothing to do: give a patch file, --revert-all LIB, or both")
        if revert:
            raise UlpError("--revert needs the patch file to revert")
        return Operation(revert_all=revert_all)
    patch = metadata.read(patch_file)
    revert = revert or patch.kind == "revert"
    if revert and revert_all:
        raise UlpError("--revert-all with a patch applies that patch; it cannot revert it")
    return Operation(patch, Path(patch_file), revert, revert_all)
