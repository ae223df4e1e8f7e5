"""Stopping a real process, calling into it and letting it go, without it noticing."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run

from ulp_build.elf import ElfFile
from ulp_build.errors import UlpError
from ulp_build.live.process import maps
from ulp_build.live.ptrace import WALL, Tracee

PROGRAM = Path(__file__).parent / "programs" / "victim.c"


@pytest.fixture(scope="module")
def victim_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("victim") / "victim"
    result = run(["gcc", "-O2", "-g", "-pthread", "-rdynamic", "-o", str(out), str(PROGRAM)])
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture
def victim(victim_binary: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [str(victim_binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "ready\n"
    yield proc
    if proc.poll() is None:
        threads = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")]
        proc.kill()
        # A thread that a failed test left traced by this process must be reaped by it, with
        # __WALL, before its leader can be: else the wait below would never return.
        for tid in threads:
            if tid != proc.pid:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(tid, WALL)
        proc.wait()


def _address(proc: subprocess.Popen[str], binary: Path, name: str) -> int:
    (sym,) = [s for s in ElfFile.load(binary).symtab_symbols if s.name == name]
    base = min(m.start for m in maps(proc.pid) if m.path == str(binary))
    return base + sym.value


def _finish(proc: subprocess.Popen[str]) -> str:
    try:
        out, _ = proc.communicate("", timeout=30)
    except subprocess.TimeoutExpired:
        threads = {
            t.name: [
                *(t / "stat").read_text().split(")")[1].split()[:1],
                (t / "wchan").read_text(),
                *(line for line in (t / "status").read_text().splitlines() if "TracerPid" in line),
            ]
            for t in Path(f"/proc/{proc.pid}/task").iterdir()
        }
        raise AssertionError(f"victim stuck: {threads}") from None
    assert proc.returncode == 0
    return out.strip()


def test_call_and_let_go_unnoticed(victim: subprocess.Popen[str], victim_binary: Path) -> None:
    add = _address(victim, victim_binary, "victim_add")
    for i in range(30):
        with Tracee(victim.pid) as tracee:
            assert len(tracee.threads) == 3
            # In turn in each thread: the spinning main thread, and the two stopped inside
            # nanosleep() and read(), whose system calls must restart cleanly afterwards.
            tid = sorted(tracee.threads)[i % 3]
            assert tracee.call(add, 40, i, tid=tid) == 40 + i
            if i == 10:
                os.kill(victim.pid, signal.SIGUSR1)  # arrives while every thread is stopped
        # The parent (this test) saw no stop and no continue.
        assert os.waitpid(victim.pid, os.WNOHANG | os.WUNTRACED | os.WCONTINUED) == (0, 0)
    assert _finish(victim) == "eintr_sleep=0 eintr_read=0 corrupt=0 usr1=1"


def test_a_crashing_call_leaves_the_process_intact(
    victim: subprocess.Popen[str], victim_binary: Path
) -> None:
    with Tracee(victim.pid) as tracee, pytest.raises(UlpError, match="crashed at 0x10"):
        tracee.call(0x10)
    assert _finish(victim) == "eintr_sleep=0 eintr_read=0 corrupt=0 usr1=0"


def test_a_call_that_never_returns_times_out(
    victim: subprocess.Popen[str], victim_binary: Path
) -> None:
    hang = _address(victim, victim_binary, "victim_hang")
    with Tracee(victim.pid, timeout=0.5) as tracee, pytest.raises(UlpError, match="did not return"):
        tracee.call(hang)
    assert _finish(victim) == "eintr_sleep=0 eintr_read=0 corrupt=0 usr1=0"


def test_interrupted_tracer_leaves_the_process_intact(
    victim: subprocess.Popen[str], victim_binary: Path
) -> None:
    """Ctrl-C in the middle of a call: the thread is stopped, restored and let go."""
    hang = _address(victim, victim_binary, "victim_hang")

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with Tracee(victim.pid, timeout=10) as tracee, pytest.raises(KeyboardInterrupt):
            tracee.call(hang)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert _finish(victim) == "eintr_sleep=0 eintr_read=0 corrupt=0 usr1=0"


def test_signal_during_a_timed_out_call_is_delivered(
    victim: subprocess.Popen[str], victim_binary: Path
) -> None:
    hang = _address(victim, victim_binary, "victim_hang")
    with Tracee(victim.pid, timeout=0.5) as tracee, pytest.raises(UlpError, match="did not"):
        os.kill(victim.pid, signal.SIGUSR1)
        tracee.call(hang)
    assert _finish(victim) == "eintr_sleep=0 eintr_read=0 corrupt=0 usr1=1"


def test_no_such_process() -> None:
    with pytest.raises(UlpError, match="no such process"), Tracee(2**22 + 12345):
        pass
