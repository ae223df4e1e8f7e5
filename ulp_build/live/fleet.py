"""`ulp trigger --all`: one operation in every process that has the runtime and its target
loaded, several processes at a time, until no such process is left untried.

One process cannot stop the others: whatever goes wrong in one (an error, a bug its memory
triggers, a worker that dies) is that process's result, "failed", and the rest go on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ulp_build.live import inventory, loaded_library, trust
from ulp_build.live.operation import Operation
from ulp_build.live.protocol import Result, run

# Processes patched at once unless told otherwise: one per CPU, at most 8.
JOBS = min(8, os.cpu_count() or 1)


def candidates(op: Operation, uid: int | None = None) -> list[int]:
    """Every process with the runtime and the operation's target loaded (with the patch's
    build-id), of the user `uid` if one is given."""
    out = []
    for pid in inventory.scan().pids:
        try:
            if uid is not None and trust.owners(pid)[0] != uid:
                continue
            if op.patch is not None:
                loaded_library.find(pid, op.patch.target_name, op.patch.target_build_id)
            else:
                assert op.revert_all is not None
                loaded_library.find_by_name(pid, op.revert_all)
        except Exception:  # whatever it is, that process is not a candidate
            continue
        out.append(pid)
    return out


def run_all(
    op: Operation,
    *,
    jobs: int = JOBS,
    uid: int | None = None,
    progress: Callable[[Result, int, int], None] | None = None,
    **kwargs: Any,
) -> list[Result]:
    """`run` in every candidate process, `jobs` at a time, in worker processes (the work is
    mostly Python, which threads would not spread over CPUs; and each target is traced from
    start to end by one worker, as ptrace requires). Processes that start meanwhile are found
    by a new scan at the end, until a scan finds none. With `uid`, only that user's
    processes."""
    results: dict[int, Result] = {}
    pool = ProcessPoolExecutor(max_workers=max(1, jobs))
    try:
        while True:
            new = [pid for pid in candidates(op, uid) if pid not in results and pid != os.getpid()]
            if not new:
                break
            total = len(results) + len(new)
            futures = {pool.submit(run, pid, op, **kwargs): pid for pid in new}
            for future in as_completed(futures):
                result = _result(futures[future], future)
                results[result.pid] = result
                if progress:
                    progress(result, len(results), total)
            if any(isinstance(f.exception(), BrokenProcessPool) for f in futures):
                pool.shutdown(wait=True)
                pool = ProcessPoolExecutor(max_workers=max(1, jobs))
    finally:
        pool.shutdown(wait=True)
    return [results[pid] for pid in sorted(results)]


def _result(pid: int, future: Future[Result]) -> Result:
    """The worker's result, or, when it raised or died, the failure of its process."""
    try:
        return future.result()
    except BrokenProcessPool:
        return Result(pid, "failed", f"process {pid}: the worker patching it died")
    except Exception as exc:  # reported as that process's failure
        text = " ".join(str(exc).split()) or type(exc).__name__
        return Result(pid, "failed", f"process {pid}: {type(exc).__name__}: {text}")
