"""A prepared copy of the system's C library under the runtime, started with `ulp run --libc DIR`:
the runtime's own calls into it are never tracked (it would enter itself), the program's are,
and the C library's corners work: exceptions through qsort, vfork, posix_spawn, fork in a
threaded process, swapcontext, dlsym(RTLD_NEXT) from an interposer, gdb's backtrace, CPython."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run, ulp

from ulp_build.live import runtime_state
from ulp_build.prepare.rewrite import rewrite

PROGRAMS = REPO / "tests" / "programs"


@pytest.fixture(scope="module")
def libc_dir(libc_copy: Path, tmp_path_factory: pytest.TempPathFactory, runtime: Path) -> Path:
    out = tmp_path_factory.mktemp("prepared-libc") / "libc.so.6"
    rewrite(libc_copy, out)
    return out.parent


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """libc_user and libinterposer.so (tests/programs), built once."""
    out = tmp_path_factory.mktemp("libc-programs")
    interposer = PROGRAMS / "malloc_interposer.c"
    for cmd in (
        ["g++", "-O2", "-pthread", "-o", out / "libc_user", PROGRAMS / "libc_user.cpp"],
        ["gcc", "-O2", "-shared", "-fPIC", "-o", out / "libinterposer.so", interposer, "-ldl"],
    ):
        result = run([str(c) for c in cmd])
        assert result.returncode == 0, result.stderr
    return out


def on_libc(libc_dir: Path, *cmd: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """`ulp run --libc DIR -- CMD`, exactly as a user runs it."""
    return ulp("run", "--libc", str(libc_dir), "--", *cmd, **kwargs)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_prepared_libc_and_the_runtime_are_loaded(libc_dir: Path, runtime: Path) -> None:
    maps = _ok(on_libc(libc_dir, "/bin/cat", "/proc/self/maps"))
    assert f"{libc_dir}/libc.so.6" in maps
    assert str(runtime) in maps
    assert "/libc.so.6" not in maps.replace(f"{libc_dir}/libc.so.6", "")


def test_system_programs(libc_dir: Path) -> None:
    _ok(on_libc(libc_dir, "/bin/true"))
    # Not / itself: the link counts of /proc and the times of /tmp change all the time.
    listing = _ok(on_libc(libc_dir, "/bin/ls", "-l", "/usr"))
    assert listing.count("\n") > 5
    assert listing == _ok(run(["/bin/ls", "-l", "/usr"]))
    assert _ok(on_libc(libc_dir, "/bin/sh", "-c", "echo x | cat")) == "x\n"


def test_python_thread_json_sqlite(libc_dir: Path) -> None:
    code = (
        "import json, sqlite3, threading\n"
        "out = []\n"
        "t = threading.Thread(target=lambda: out.append(json.loads(json.dumps({'a': [1, 2]}))))\n"
        "t.start(); t.join()\n"
        "db = sqlite3.connect(':memory:')\n"
        "db.execute('create table t (x)')\n"
        "db.executemany('insert into t values (?)', [(1,), (2,)])\n"
        "print(out, db.execute('select sum(x) from t').fetchone()[0])\n"
    )
    assert _ok(on_libc(libc_dir, sys.executable, "-c", code)) == "[{'a': [1, 2]}] 3\n"


def test_exception_through_qsort(libc_dir: Path, programs: Path) -> None:
    out = _ok(on_libc(libc_dir, str(programs / "libc_user"), "qsort-throw"))
    assert out == "caught after 500 comparisons: thrown by the comparator\n"


def test_longjmp_out_of_qsort(libc_dir: Path, programs: Path) -> None:
    out = _ok(on_libc(libc_dir, str(programs / "libc_user"), "qsort-longjmp"))
    assert out == "jumped out after 500 comparisons\n"


def test_vfork_and_posix_spawn(libc_dir: Path, programs: Path) -> None:
    out = _ok(on_libc(libc_dir, str(programs / "libc_user"), "spawn"))
    assert out.splitlines() == [
        "spawned",
        "posix_spawn: 0",
        "spawned",
        "vfork execve: 0",
        "vfork _exit: 7",
    ]


def test_fork_in_a_threaded_process(libc_dir: Path, programs: Path) -> None:
    out = _ok(on_libc(libc_dir, str(programs / "libc_user"), "fork-threaded"))
    assert out == "forked children ok: 20\n"


def test_swapcontext_coroutines(libc_dir: Path, programs: Path) -> None:
    out = _ok(on_libc(libc_dir, str(programs / "libc_user"), "coroutines"))
    assert out == "coroutines: 2890 2890\n"  # the digits of 0..999, in each


def test_dlsym_next_from_an_interposer(libc_dir: Path, programs: Path) -> None:
    # The runtime is preloaded first, the interposer after it: a dlsym that took the runtime for
    # its caller would find the interposer's own malloc as the next one.
    env = dict(os.environ, LD_PRELOAD=str(programs / "libinterposer.so"))
    out = _ok(on_libc(libc_dir, str(programs / "libc_user"), "next-malloc", env=env))
    assert out.splitlines() == [
        "next malloc is libc's: yes",
        f"next malloc in: {libc_dir}/libc.so.6",
    ]


def _wait_until_reading(pid: int) -> None:
    """Until the process's main thread is blocked in read(2) on stdin (after "ready", it is
    still returning from the tracked calls that wrote it)."""
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}/syscall").read_text().split()[:2] != ["0", "0x0"]:
        assert time.monotonic() < deadline, "the program never blocked in read(2)"
        time.sleep(0.01)


def test_libc_calls_are_tracked_and_the_runtimes_are_not(
    libc_dir: Path, programs: Path, runtime: Path
) -> None:
    # After an exception and a longjmp left qsort, children left frames, and threads came and
    # went (a thread's exit runs the runtime's key destructor; the C library calls in after it,
    # and those calls, tracked, would give the dead thread a new state), the main thread blocked
    # in read(2) is one tracked call deep, and alone in the registry.
    cmd = [sys.executable, "-m", "ulp_build", "run", "--libc", str(libc_dir), "--"]
    cmd += [str(programs / "libc_user"), "qsort-throw", "qsort-longjmp", "spawn"]
    cmd += ["fork-threaded", "wait"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        lines = []
        for line in proc.stdout:
            if line == "ready\n":
                break
            lines.append(line)
        else:
            pytest.fail(f"the program ended before it was ready: {lines}")
        assert "forked children ok: 20\n" in lines
        _wait_until_reading(proc.pid)
        state = runtime_state.read(proc.pid)
        assert Path(state.runtime) == runtime
        libc = state.library("libc.so.6")
        assert Path(libc.name) == libc_dir / "libc.so.6"
        assert [lib.name for lib in state.libraries] == [libc.name]
        # Every entry is named if there is more than one: which thread stayed registered.
        others = [(t.tid, t.frames, t.libraries) for t in state.threads if t.tid != proc.pid]
        assert not others, f"threads registered besides the main one: {others}"
        (main,) = state.threads
        assert main.tid == proc.pid
        assert main.frames == 1
        assert main.libraries[libc.index].depth == 1
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_gdb_backtrace_inside_a_tracked_call(libc_dir: Path, programs: Path, runtime: Path) -> None:
    # The comparator runs inside qsort, a tracked call into the prepared libc.
    script = [
        "-batch",
        "-ex", f"set environment LD_PRELOAD={runtime}",
        "-ex", f"set environment LD_LIBRARY_PATH={libc_dir}",
        "-ex", "break by_value",
        "-ex", "run",
        "-ex", "bt",
        "--args", str(programs / "libc_user"), "sort",
    ]  # fmt: skip
    result = run(["gdb", "-q", "-nx", *script], timeout=120)
    output = result.stdout + result.stderr
    assert "previous frame identical" not in output
    frames = [line for line in result.stdout.splitlines() if re.match(r"#\d+ ", line)]
    assert frames and "by_value" in frames[0], output
    assert any("ulp_track" in f for f in frames), output
    assert "main" in frames[-1], output


def test_libc_that_is_not_prepared_is_refused(libc_copy: Path, tmp_path: Path) -> None:
    result = ulp("run", "--libc", str(libc_copy.parent), "--", "/bin/true")
    assert result.returncode == 1
    assert (
        result.stderr == f"ulp: {libc_copy}: not prepared (`ulp rewrite {libc_copy}` prepares it)\n"
    )
    result = ulp("run", "--libc", str(tmp_path), "--", "/bin/true")
    assert result.stderr == f"ulp: {tmp_path}: no libc.so.6 in this directory\n"
    # A prepared C library of another build (musl's, named as glibc's): the system's loader
    # would fail on it, so `ulp run` says so first, and runs nothing.
    other = tmp_path / "libc.so.6"
    assert ulp("rewrite", "/lib/x86_64-linux-musl/libc.so", "-o", str(other)).returncode == 0
    marker = tmp_path / "ran"
    result = ulp("run", "--libc", str(tmp_path), "--", "/bin/touch", str(marker))
    assert result.returncode == 1 and not marker.exists()
    assert result.stderr.startswith(f"ulp: {other}: another build than this system's C library ")
    assert len(result.stderr.splitlines()) == 1


# CPython's regression tests for threads, signals, the os module, json and sqlite3 (about 30 s;
# test_subprocess, which passes too, doubles that and is left out of this file's budget).
CPYTHON_TESTS = ["test_json", "test_os", "test_signal", "test_thread", "test_sqlite3"]


def test_cpython_regression_tests(libc_dir: Path) -> None:
    # The interpreter running these tests, with its `test` package; it links the system's libc.
    # -w runs a failed test file again, verbosely: test_signal has timing tests that fail on a
    # loaded machine without the runtime too; a failure that stays is printed in full. SIGINT
    # as a program normally starts: test_signal expects KeyboardInterrupt, and a test run
    # started in the background (as `cmd &` in a script) inherits SIGINT ignored.
    result = on_libc(
        libc_dir, sys.executable, "-m", "test", "-w", *CPYTHON_TESTS, timeout=900,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert re.search(r"Tests result: (FAILURE then )?SUCCESS", result.stdout), result.stdout
