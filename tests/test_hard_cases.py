"""Processes that make patching hard: many threads, threads born and dying meanwhile, a main
thread that has exited, a chroot; and a trigger killed halfway."""

from __future__ import annotations

import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

import pytest
from conftest import run
from live import OVERFLOWED, PROGRAMS, SATURATED, base_of, patch_file, running, trigger_cli

from ulp_build.elf import ElfFile
from ulp_build.errors import UlpError
from ulp_build.live import protocol, runtime_state
from ulp_build.live.operation import operation
from ulp_build.live.process import maps, thread_ids
from ulp_build.live.ptrace import ReturnPoint, Tracee


def test_a_thousand_threads(tree: Path, patchee: Path, runtime: Path) -> None:
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        assert p.ask("threads 1000") == "1000"
        assert len(thread_ids(p.pid)) >= 1003
        result = trigger_cli("-p", str(p.pid), "--timeout", "30", patch_file(tree, "square_fix"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert p.ask("square 100000") == str(SATURATED)
        # Every thread that called in since runs in the new universe; the transition finished.
        assert "transition pending" not in result.stdout


def test_threads_created_and_exiting_meanwhile(tree: Path, patchee: Path, runtime: Path) -> None:
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        assert p.ask("churn") == "churning"
        ops = [
            operation(patch_file(tree, "square_fix")),
            operation(patch_file(tree, "square_fix"), revert=True),
        ]
        for i in range(40):
            result = protocol.run(p.pid, ops[i % 2], wait=0.2)
            assert not result.failed, f"operation {i}: {result.message}"
        assert p.ask("square 100000") == str(OVERFLOWED)


def test_main_thread_exited(tree: Path, patchee: Path, runtime: Path) -> None:
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        assert p.ask("exitmain") == "main exits"
        for _ in range(10):
            result = trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix"))
            assert result.returncode == 0, result.stdout + result.stderr
            assert p.ask("square 100000") == str(SATURATED)
            result = trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix", reverse=True))
            assert result.returncode == 0, result.stdout + result.stderr
            assert p.ask("square 100000") == str(OVERFLOWED)


def test_chrooted_process(tree: Path, patchee: Path, runtime: Path, tmp_path: Path) -> None:
    """The patch object reaches the process as bytes, not as a path it would resolve in its
    own root: an object outside the chroot loads, through /proc; without /proc in the root,
    the trigger says so and nothing changes."""
    root = tmp_path / "root"
    shutil.copytree(tree, root / "tree")
    lib = root / "tree" / "basic" / "libbasic.so"
    (root / "proc").mkdir()
    with running(patchee, runtime, str(lib)) as p:
        assert p.ask(f"chroot {root}") == "0"
        no_proc = trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix"))
        assert no_proc.returncode == 1
        assert "no /proc in this process's root directory" in no_proc.stdout, no_proc.stdout
        assert p.ask("square 100000") == str(OVERFLOWED)
        subprocess.run(["mount", "--bind", "/proc", str(root / "proc")], check=True)
        try:
            outside = trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix"))
            assert outside.returncode == 0, outside.stdout + outside.stderr
            assert p.ask("square 100000") == str(SATURATED)
        finally:
            subprocess.run(["umount", "-l", str(root / "proc")], check=True)
        (patch,) = [x for x in runtime_state.read(p.pid).patches if x.active]
        assert patch.object == str(tree / "patches" / "square_fix" / "patch.so")


def test_trigger_killed_at_random_points(tree: Path, patchee: Path, runtime: Path) -> None:
    """SIGKILL the trigger at a random moment of each of 100 runs: the process keeps running,
    patched completely or not at all, and its threads blocked in read() and nanosleep() never
    notice."""
    lib = tree / "basic" / "libbasic.so"
    apply = operation(patch_file(tree, "square_fix"))
    revert = operation(patch_file(tree, "square_fix"), revert=True)
    rng = random.Random(20261126)
    outcomes = {"applied": 0, "not applied": 0}
    with running(patchee, runtime, str(lib)) as p:

        def forked_apply() -> float:
            """How long a trigger forked as below takes to apply, whole (then reverted)."""
            started = time.perf_counter()
            child = os.fork()
            if child == 0:
                os._exit(0 if not protocol.run(p.pid, apply).failed else 1)
            assert os.waitpid(child, 0)[1] == 0
            elapsed = time.perf_counter() - started
            assert not protocol.run(p.pid, revert).failed
            return elapsed

        # Measured the way the killed triggers run (forked, caches as they find them), so that
        # the kills spread over the whole of a run however fast the trigger is.
        typical = statistics.median(forked_apply() for _ in range(5))
        for _ in range(100):
            child = os.fork()
            if child == 0:  # the trigger, to be killed
                protocol.run(p.pid, apply)
                os._exit(0)
            time.sleep(rng.uniform(0, typical * 1.5))
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            answer = p.ask("square 100000")
            applied = any(x.active for x in runtime_state.read(p.pid).patches)
            assert answer == str(SATURATED if applied else OVERFLOWED)
            outcomes["applied" if applied else "not applied"] += 1
            if applied:
                result = protocol.run(p.pid, revert, retries=50)
                assert not result.failed, result.message
                assert p.ask("square 100000") == str(OVERFLOWED)
        assert p.ask("stats") == "eintr 0 usr1 0 rt 0"
    # The kills landed before, during and after the patching.
    print(f"killed at random in {typical * 1.5 * 1000:.1f} ms: {outcomes}")
    assert outcomes["applied"] >= 5 and outcomes["not applied"] >= 5, outcomes


def _usleep_and_return_point(pid: int, runtime: Path) -> tuple[int, ReturnPoint]:
    """libc's usleep in `pid` (a call that takes as long as we like) and the runtime's
    ulp_resume, where calls return."""
    libc = next(m for m in maps(pid) if Path(m.path).name.startswith("libc.so") and m.offset == 0)
    usleep = libc.start + next(
        s.value for s in ElfFile.load(libc.path).dynamic_symbols if s.name == "usleep"
    )
    return usleep, runtime_state.return_point(ElfFile.load(runtime), base_of(pid, runtime))


def test_tracer_killed_during_a_call(tree: Path, patchee: Path, runtime: Path) -> None:
    """The thread finishes the call alone, returns into ulp_resume and restores itself, down
    to the read() it was blocked in, which it restarts."""
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        usleep, resume = _usleep_and_return_point(p.pid, runtime)
        child = os.fork()
        if child == 0:
            with Tracee(p.pid) as tracee:
                tracee.call(usleep, 400_000, tid=p.pid, resume=resume)
            os._exit(0)
        time.sleep(0.15)
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        time.sleep(0.4)
        assert p.ask("square 3") == "9"
        assert p.ask("stats") == "eintr 0 usr1 0 rt 0"


def _recorded_endings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """How each call into a process ends from now on ("getpid" or the signal's name), recorded
    on its way to the real process."""
    endings: list[str] = []
    real = Tracee._run_until_resumed

    def recorded(self: Tracee, thread: object, frame: int, marker: int, sig: int) -> int:
        endings.append(signal.Signals(sig).name if sig else "getpid")
        return real(self, thread, frame, marker, sig)  # type: ignore[arg-type]

    monkeypatch.setattr(Tracee, "_run_until_resumed", recorded)
    return endings


def test_calls_end_with_a_signal_nobody_catches_else_a_system_call(
    tree: Path, patchee: Path, runtime: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call into the runtime ends with a signal the thread sends itself, one the process
    does not catch (SIGURG, else SIGWINCH): the trigger takes it at its delivery and discards
    it, and lets the call's own system calls run without stopping at each. With both caught,
    the call ends with getpid, and the trigger follows the thread's system calls to it. Each
    way, the patch is applied and reverted, and the process's handlers never see a signal."""
    endings = _recorded_endings(monkeypatch)
    apply = operation(patch_file(tree, "square_fix"))
    revert = operation(patch_file(tree, "square_fix"), revert=True)
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        for catch, ending in ((None, "SIGURG"), (signal.SIGURG, "SIGWINCH"),
                              (signal.SIGWINCH, "getpid")):  # fmt: skip
            if catch is not None:
                assert p.ask(f"catch {int(catch)}") == "catching"
            endings.clear()
            assert protocol.run(p.pid, apply).status == "applied"
            assert p.ask("square 100000") == str(SATURATED)
            assert protocol.run(p.pid, revert).status == "reverted"
            assert p.ask("square 100000") == str(OVERFLOWED)
            # ulp_buffer, ulp_prepare, ulp_buffer_free and ulp_commit, each way.
            assert endings == [ending] * 8, (catch, endings)
        assert p.ask("caught") == "caught 0"
        assert p.ask("stats") == "eintr 0 usr1 0 rt 0"
        # The control: the handler counts what it is sent.
        os.kill(p.pid, signal.SIGWINCH)
        time.sleep(0.1)
        assert p.ask("caught") == "caught 1"
    # Under a seccomp filter, which might forbid sending a signal, calls end with getpid.
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        assert p.ask("seccomp") == "0"
        endings.clear()
        assert protocol.run(p.pid, apply).status == "applied"
        assert endings == ["getpid"] * 4
        assert p.ask("square 100000") == str(SATURATED)


def test_a_thread_under_a_seccomp_filter_of_its_own_ends_calls_with_a_system_call(
    tree: Path, patchee: Path, runtime: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread may install a seccomp filter for itself alone, which /proc/PID/status (the main
    thread's) does not show: this one kills the process at any tgkill. A call in that thread
    ends with getpid; in the main thread of the same process, with a signal (the control)."""
    endings = _recorded_endings(monkeypatch)
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        sandboxed = int(p.ask("sandbox").split()[1])
        usleep, resume = _usleep_and_return_point(p.pid, runtime)
        with Tracee(p.pid) as tracee:
            assert tracee.call(usleep, 1000, tid=sandboxed, resume=resume) == 0
            assert tracee.call(usleep, 1000, tid=p.pid, resume=resume) == 0
        assert endings == ["getpid", "SIGURG"]
        assert p.ask("square 3") == "9"
        assert p.ask("stats") == "eintr 0 usr1 0 rt 0"


def _state(pid: int) -> str:
    """The process's state letter in /proc/PID/stat (T: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize("stop", [signal.SIGSTOP, signal.SIGTSTP], ids=["SIGSTOP", "SIGTSTP"])
@pytest.mark.parametrize("attached", ["one thread", "every thread"])
def test_a_process_stopped_and_continued_during_a_call_runs_on(
    tree: Path, patchee: Path, runtime: Path, stop: signal.Signals, attached: str
) -> None:
    """SIGSTOP (or a SIGTSTP the patchee does not catch) then SIGCONT, sent to the process
    during a call: it runs on after the detach, the call having completed. The stop is not
    lost either (the control): a SIGSTOP with no SIGCONT leaves the process stopped. (Not a
    SIGTSTP: the kernel drops it in an orphaned process group, as the tests' may be.)"""
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        usleep, resume = _usleep_and_return_point(p.pid, runtime)
        only = frozenset({p.pid}) if attached == "one thread" else None
        for cont in (True, False) if stop == signal.SIGSTOP else (True,):

            def send(cont: bool = cont) -> None:
                time.sleep(0.05)
                os.kill(p.pid, stop)
                if cont:
                    time.sleep(0.05)
                    os.kill(p.pid, signal.SIGCONT)

            sender = threading.Thread(target=send)
            with Tracee(p.pid, only=only) as tracee:
                sender.start()
                assert tracee.call(usleep, 200_000, tid=p.pid, resume=resume) == 0
            sender.join()
            deadline = time.monotonic() + 2
            expected = "T" if not cont else "S"
            while _state(p.pid) != expected and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _state(p.pid) == expected, (cont, _state(p.pid))
            if not cont:
                os.kill(p.pid, signal.SIGCONT)
            assert p.ask("square 3") == "9"
        assert p.ask("stats") == "eintr 0 usr1 0 rt 0"


def test_call_that_times_out_finishes_alone(tree: Path, patchee: Path, runtime: Path) -> None:
    """Cut short, a call could leave a lock held for ever: it is left to finish, and the
    thread restores itself as if the trigger had died."""
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        usleep, resume = _usleep_and_return_point(p.pid, runtime)
        with (
            Tracee(p.pid, timeout=0.1) as tracee,
            pytest.raises(UlpError, match="finishes it alone"),
        ):
            tracee.call(usleep, 300_000, tid=p.pid, resume=resume)
        time.sleep(0.5)
        assert p.ask("square 3") == "9"
        assert p.ask("stats") == "eintr 0 usr1 0 rt 0"


def test_fork_during_a_prepare(tree: Path, patchee: Path, runtime: Path, tmp_path: Path) -> None:
    """A child forked by one thread while another runs the runtime's prepare (holding its lock:
    a preloaded fcntl makes the sealing of the object's memfd take two seconds) inherits no
    half-done state: it is patched by a later trigger of its own."""
    slow = tmp_path / "slow_seal.so"
    built = run(["gcc", "-O2", "-fPIC", "-shared", "-o", str(slow),
                 str(PROGRAMS / "slow_seal.c"), "-ldl"])  # fmt: skip
    assert built.returncode == 0, built.stderr
    patch = patch_file(tree, "square_fix")
    fifo, out = tmp_path / "go", tmp_path / "child.out"
    os.mkfifo(fifo)
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so"), preload=slow) as p:
        assert p.ask(f"forker {fifo} {out}") == "forker"
        parent = subprocess.Popen(
            [sys.executable, "-m", "ulp_build", "trigger", "-p", str(p.pid), patch],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not any(f.startswith("/memfd:ulp-patch:") for f in _open_files(p.pid)):
            assert time.monotonic() < deadline, "the prepare did not start"
            time.sleep(0.02)
        fifo.write_bytes(b"x")  # the prepare is sealing the object now
        while not Path(f"{out}.pid").exists() or not Path(f"{out}.pid").read_text():
            assert time.monotonic() < deadline, "no child"
            time.sleep(0.02)
        child = int(Path(f"{out}.pid").read_text())
        try:
            assert parent.poll() is None  # the fork came before the prepare ended
            assert parent.wait(timeout=30) == 0
            assert p.ask("square 100000") == str(SATURATED)
            assert out.read_text() == f"{OVERFLOWED}\n"  # forked before the commit
            result = trigger_cli("-p", str(child), patch)
            assert result.returncode == 0, result.stdout + result.stderr
            # The child rewrites its answer in a loop: the next one after the trigger.
            deadline = time.monotonic() + 10
            while out.read_text() != f"{SATURATED}\n" and time.monotonic() < deadline:
                time.sleep(0.02)
            assert out.read_text() == f"{SATURATED}\n"
        finally:
            os.kill(child, signal.SIGKILL)  # the patchee's child: it reaps it


def _open_files(pid: int) -> list[str]:
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with suppress(OSError):
            out.append(os.readlink(fd))
    return out
