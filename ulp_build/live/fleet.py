"""`ulp trigger --all`: one operation in every process that has the runtime and its target
loaded, several processes at a time, until no such process is left untried.

The parent scans /proc once per round (which processes map the runtime) and hands the pids out
in chunks to worker processes, each of which was given the operation once, when it started: a
process is looked at (is it a candidate?) and patched by the same worker, and nothing is sent
per process but its pid and its result. A thousand idle processes then cost about what their
stops cost, not what starting work for each of them would.

One process cannot stop the others: whatever goes wrong in one (an error, a bug its memory
triggers) is that process's result, "failed", and the rest go on. A worker that dies loses its
chunk (and the chunks still queued): their processes are tried again one per worker task,
those lost again one at a time, so that only a process that kills its worker is reported as
failed for it (one a lost worker had already patched then reports what it finds: already
applied, or not applied for a revert).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ulp_build.live import inventory, loaded_library, trust
from ulp_build.live.loaded_library import LoadedLibrary
from ulp_build.live.operation import Operation
from ulp_build.live.protocol import Result, run

# Processes patched at once unless told otherwise: one per CPU, at most 8.
JOBS = min(8, os.cpu_count() or 1)
# Processes per worker task, at most: small enough for progress to move and for the chunks to
# spread evenly over the workers, large enough that handing them out costs nothing.
CHUNK = 16

# Progress: the results of the processes just done (the candidates among them), how many
# processes with the runtime have been looked at, and how many there are so far.
Progress = Callable[[list[Result], int, int], None]


def target(pid: int, op: Operation, uid: int | None = None) -> LoadedLibrary | None:
    """The operation's target in `pid` (loaded, with the patch's build-id), if `pid` has it
    and runs as `uid` when one is given: then `pid` is a candidate."""
    try:
        if uid is not None and trust.credentials(pid).uid != uid:
            return None
        if op.patch is not None:
            return loaded_library.find(pid, op.patch.target_name, op.patch.target_build_id)
        assert op.revert_all is not None
        return loaded_library.find_by_name(pid, op.revert_all)
    except Exception:  # whatever it is, that process is not a candidate
        return None


# What a worker does for every process it is given, set once when it starts (_start).
_job: tuple[Operation, int | None, dict[str, Any]] | None = None


def _start(op: Operation, uid: int | None, options: dict[str, Any]) -> None:
    global _job
    _job = (op, uid, options)


def _chunk(pids: list[int]) -> list[Result]:
    """In a worker: the results of the candidates among `pids`."""
    assert _job is not None
    op, uid, options = _job
    out = []
    for pid in pids:
        try:
            library = target(pid, op, uid)
            if library is not None:
                out.append(run(pid, op, library=library, **options))
        except Exception as exc:  # reported as that process's failure
            out.append(_failure(pid, exc))
    return out


def run_all(
    op: Operation,
    *,
    jobs: int = JOBS,
    uid: int | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> list[Result]:
    """`run` in every candidate process, `jobs` at a time, in worker processes (the work is
    mostly Python, which threads would not spread over CPUs; and each target is traced from
    start to end by one worker, as ptrace requires). Processes that start meanwhile are found
    by a new scan at the end, until a scan finds none. With `uid`, only that user's
    processes."""
    results: dict[int, Result] = {}
    seen = {os.getpid()}
    looked = 0
    workers = max(1, jobs)

    def pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, initializer=_start, initargs=(op, uid, options))

    def done(chunk: list[Result], count: int, total: int) -> None:
        nonlocal looked
        looked += count
        for result in chunk:
            results[result.pid] = result
        if progress:
            progress(chunk, looked, total)

    executor = pool()
    try:
        while True:
            new = inventory.scan(seen).pids
            if not new:
                break
            seen.update(new)
            total = looked + len(new)
            size = max(1, min(CHUNK, len(new) // (workers * 4)))
            chunks = [new[i : i + size] for i in range(0, len(new), size)]
            lost: list[int] = []
            futures = {executor.submit(_chunk, c): c for c in chunks}
            for future in as_completed(futures):
                try:
                    done(future.result(), len(futures[future]), total)
                except BrokenProcessPool:
                    lost += futures[future]
            # A worker died: its chunk, and every chunk still queued, are lost. Their
            # processes are tried again one per task; those lost again, one at a time, so
            # that only a process that kills its worker is reported as failed for it.
            for one_at_a_time in (False, True):
                if not lost:
                    break
                executor.shutdown(wait=True)
                executor = pool()
                retry, lost = lost, []
                if one_at_a_time:
                    for pid in retry:
                        try:
                            done(executor.submit(_chunk, [pid]).result(), 1, total)
                        except BrokenProcessPool:
                            message = f"process {pid}: the worker patching it died"
                            done([Result(pid, "failed", message)], 1, total)
                            executor.shutdown(wait=True)
                            executor = pool()
                    break
                futures = {executor.submit(_chunk, [pid]): [pid] for pid in retry}
                for future in as_completed(futures):
                    try:
                        done(future.result(), 1, total)
                    except BrokenProcessPool:
                        lost += futures[future]
    finally:
        executor.shutdown(wait=True)
    return [results[pid] for pid in sorted(results)]


def _failure(pid: int, exc: Exception) -> Result:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return Result(pid, "failed", f"process {pid}: {type(exc).__name__}: {text}")
