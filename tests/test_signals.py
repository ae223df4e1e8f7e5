"""Signals at any instruction of a tracked call: a thread calls into a prepared library in a loop
while timers interrupt it at 20 kHz for 10 s, its handlers calling into the library too, on an
alternate signal stack above or below the thread's stack (tests/programs/signals.c), nested,
or leaving by siglongjmp (from inside a tracked call or after one) whatever the thread was
doing; or, stepped by the trap flag, at every instruction of the thread's tracked calls, two
handlers in a row at any two of them (the timers find those pairs only rarely). No live shadow
frame may be dropped (the runtime would abort), every call returns the right value, and the
thread ends at depth 0 with an empty shadow stack: a frame left at any instruction of a tracked
entry or return took its depth along."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import REPO, BuiltSample, run

from ulp_build.live import runtime_state

SECONDS = 10


@pytest.fixture(scope="module")
def program(built: dict[str, BuiltSample], tmp_path_factory: pytest.TempPathFactory) -> Path:
    b = built["tracking"]
    out = tmp_path_factory.mktemp("signals") / "signals"
    run(["gcc", "-O2", "-g", "-pthread", f"-I{REPO / 'sample_libs' / 'tracking'}",
         "-o", str(out), str(REPO / "tests" / "programs" / "signals.c"),
         f"-L{b.raw.parent}", "-ltracking"])  # fmt: skip
    return out


@pytest.mark.parametrize(
    ("placement", "variant"),
    [
        ("above", "plain"),
        ("below", "plain"),
        ("above", "nested"),
        ("below", "nested"),
        ("above", "jump"),
        ("below", "jump"),
        ("above", "step"),
        ("below", "step"),
    ],
)
def test_signals_during_tracked_calls(
    built: dict[str, BuiltSample], runtime: Path, program: Path, placement: str, variant: str
) -> None:
    env = dict(os.environ, LD_LIBRARY_PATH=str(built["tracking"].prepared.parent))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ulp_build", "run", "--", str(program), placement, variant,
         str(SECONDS)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, cwd=REPO,
    )  # fmt: skip
    watchdog = threading.Timer(SECONDS + 60, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None and proc.stdin is not None
        report = proc.stdout.readline().strip()
        ready = proc.stdout.readline().strip()
        assert ready == "ready", (report, proc.wait(), proc.stderr and proc.stderr.read())
        found = re.fullmatch(
            r"tid (\d+): (\w+) (\w+): (\d+) calls, (\d+) handler calls, (\d+) deep,"
            r" (\d+) jumps, (\d+) wrong",
            report,
        )
        assert found, report
        tid, where, how, calls, handled, deep, jumps, wrong = found.groups()
        assert (where, how, wrong) == (placement, variant, "0")
        # Signals did land, many of them, and the loop went on between them (stepped, at a
        # signal per instruction, it goes slowly).
        assert int(handled) > 10 * SECONDS * 100
        assert int(calls) > (10 if variant == "step" else 1000), report
        assert (int(deep) > 1) == (variant == "nested")
        assert (int(jumps) > 1000) == (variant == "jump"), report
        state = runtime_state.read(proc.pid)
        (thread,) = [t for t in state.threads if t.tid == int(tid)]
        assert thread.frames == 0
        assert thread.libraries[state.library("libtracking.so").index].depth == 0
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
