"""The runtime on real processes: behaviour unchanged, the unwinder still walks through tracked
calls, abandoned entries are pruned, and the introspection structure tells the truth."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import REPO, BuiltSample, run, ulp

from ulp_build.elf import ElfFile
from ulp_build.live import runtime_state

SAMPLES = ["basic", "abi", "versioned", "ifunc", "symbolic", "cet", "cxx", "tracking"]


def with_runtime(cmd: list[str], libdir: Path | None = None, **kwargs: object):
    """Run through `ulp run`, exactly as a user starts a program under the runtime."""
    env = dict(os.environ)
    if libdir is not None:
        env["LD_LIBRARY_PATH"] = str(libdir)
    return ulp("run", "--", *cmd, env=env, **kwargs)


def test_runtime_exports_only_its_symbols(runtime: Path) -> None:
    exported = run(["nm", "-D", "--defined-only", str(runtime)]).stdout.split()[2::3]
    # Its own symbols, and the C library's ways out of a call it must see first (jumps.c).
    assert sorted(exported) == [
        "__longjmp_chk",
        "_longjmp",
        "longjmp",
        "setcontext",
        "siglongjmp",
        "ulp_buffer",
        "ulp_buffer_free",
        "ulp_commit",
        "ulp_prepare",
        "ulp_resume",
        "ulp_resume_return",
        "ulp_resume_signal",
        "ulp_resume_signal_return",
        "ulp_runtime",
        "ulp_track",
        "vfork",
    ]
    dynamic = run(["readelf", "-d", str(runtime)]).stdout
    assert "TEXTREL" not in dynamic
    imports = run(["objdump", "-T", str(runtime)]).stdout
    assert "GLIBC_PRIVATE" not in imports


@pytest.mark.parametrize("name", SAMPLES)
def test_samples_behave_the_same_with_the_runtime(
    built: dict[str, BuiltSample], runtime: Path, name: str
) -> None:
    b = built[name]
    expected = b.run_linked(b.raw)
    assert expected.returncode == 0
    linked = with_runtime([str(b.linked)], b.prepared.parent)
    dlopened = with_runtime([str(b.dlopened), str(b.prepared)])
    assert (linked.returncode, linked.stdout) == (0, expected.stdout), linked.stderr
    assert (dlopened.returncode, dlopened.stdout) == (0, expected.stdout), dlopened.stderr


def test_exceptions_cross_tracked_calls(built: dict[str, BuiltSample], runtime: Path) -> None:
    b = built["cxx"]
    out = with_runtime([str(b.linked)], b.prepared.parent).stdout
    assert "caught invalid_argument: negative input" in out
    assert "caught through two library frames: negative input" in out
    assert "rethrown across the boundary: from the callback (rethrows 1)" in out
    assert "catch (...) works" in out


def _tracking(built: dict[str, BuiltSample], *args: str, **kwargs: object):
    b = built["tracking"]
    return with_runtime([str(b.linked), *args], b.prepared.parent, **kwargs)


def test_threads_in_parallel(built: dict[str, BuiltSample], runtime: Path) -> None:
    result = _tracking(built, "threads")
    assert result.returncode == 0 and "8 threads agree" in result.stdout


def test_cancel_of_threads_blocked_inside(built: dict[str, BuiltSample], runtime: Path) -> None:
    start = time.monotonic()
    result = _tracking(built, "cancel", timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "cancel in read: joined",
        "cancel in nanosleep: joined",
        "cancel in pause: joined",
    ]
    assert time.monotonic() - start < 10


def test_backtrace_reaches_main(built: dict[str, BuiltSample], runtime: Path) -> None:
    result = _tracking(built, "backtrace")
    assert result.returncode == 0
    frames = result.stdout.splitlines()
    assert "libtracking.so" in frames[0]
    assert "ulp_track" in frames[1]
    assert any("(main+" in f for f in frames[2:])


def _gdb_backtrace(b: BuiltSample, runtime: Path, breakpoint: str, *args: str) -> list[str]:
    script = [
        "-batch",
        "-ex", f"set environment LD_PRELOAD={runtime}",
        "-ex", f"set environment LD_LIBRARY_PATH={b.prepared.parent}",
        "-ex", "set breakpoint pending on",
        "-ex", f"break {breakpoint}",
        "-ex", "run",
        "-ex", "bt",
        "--args", str(b.linked), *args,
    ]  # fmt: skip
    result = run(["gdb", "-q", "-nx", *script], timeout=120)
    assert "previous frame identical" not in result.stdout + result.stderr
    frames = [line for line in result.stdout.splitlines() if re.match(r"#\d+ ", line)]
    assert frames and breakpoint in frames[0], result.stdout + result.stderr
    return frames


def test_gdb_bt_reaches_main(built: dict[str, BuiltSample], runtime: Path) -> None:
    frames = _gdb_backtrace(built["tracking"], runtime, "tracking_backtrace", "backtrace")
    assert any("ulp_track" in f for f in frames)
    assert "main" in frames[-1]


@contextmanager
def waiting(
    built: dict[str, BuiltSample], *args: str, dlopen: bool = False
) -> Iterator[tuple[int, list[str]]]:
    """Start the tracking program under the runtime; once it says ready, yield its pid and
    what it printed before."""
    b = built["tracking"]
    cmd = [str(b.dlopened), str(b.prepared)] if dlopen else [str(b.linked)]
    env = dict(os.environ, LD_LIBRARY_PATH=str(b.prepared.parent))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ulp_build", "run", "--", *cmd, *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdin is not None
        printed = []
        for line in proc.stdout:
            if line.strip() == "ready":
                break
            printed.append(line.strip())
        else:
            pytest.fail("the program ended before it was ready")
        yield proc.pid, printed
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _main_thread(pid: int) -> tuple[runtime_state.RuntimeState, runtime_state.ThreadInfo, int]:
    """The runtime's state, its record of the main thread, and libtracking.so's index."""
    state = runtime_state.read(pid)
    (main,) = [t for t in state.threads if t.tid == pid]
    return state, main, state.library("libtracking.so").index


def _assert_left_the_library(pid: int) -> None:
    _state, main, lib = _main_thread(pid)
    assert main.frames == 0
    assert main.libraries[lib].depth == 0


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))


def test_longjmp_out_of_callbacks_is_pruned(built: dict[str, BuiltSample], runtime: Path) -> None:
    with waiting(built, "longjmp", "1000") as (pid, _):
        small = _rss_kib(pid)
    with waiting(built, "longjmp", "100000") as (pid, printed):
        assert printed == ["landed 100000 of 100000"]
        _assert_left_the_library(pid)
        # 100000 leaked shadow frames would be 3 MiB.
        assert _rss_kib(pid) - small < 1024


def test_tail_calls_between_tracked_functions(built: dict[str, BuiltSample], runtime: Path) -> None:
    """tracking_tail is `jmp tracking_spin@PLT`: the second tracked entry reuses the first's
    return slot. Neither may be pruned, and both must be popped."""
    tail = run(["objdump", "-d", "--no-show-raw-insn", str(built["tracking"].raw)]).stdout
    body = tail.split("<tracking_tail>:")[1].split("\n\n")[0]
    assert "jmp" in body and "tracking_spin@plt" in body
    with waiting(built, "tail", "10000") as (pid, printed):
        assert printed == ["tail calls: 0 mismatches"]
        _assert_left_the_library(pid)


def test_signal_handler_on_alternate_stack(built: dict[str, BuiltSample], runtime: Path) -> None:
    with waiting(built, "altstack", "1000") as (pid, printed):
        assert printed == ["altstack: 1000 returns, 1000 handler calls"]
        _assert_left_the_library(pid)


def test_alternate_stack_above_with_autodisarm(
    built: dict[str, BuiltSample], runtime: Path
) -> None:
    """With SS_AUTODISARM the kernel hides that a handler runs on the alternate stack, here
    placed above the frames it interrupts: they must not be taken for abandoned."""
    with waiting(built, "autodisarm") as (pid, printed):
        assert printed == ["autodisarm: returned 2, 1 handler calls"]
        _assert_left_the_library(pid)


def test_longjmp_from_a_full_shadow_stack(
    built: dict[str, BuiltSample], runtime: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ULP_SHADOW_FRAMES", "64")
    with waiting(built, "deepjump", "100") as (pid, printed):
        assert printed == ["jumped out of 100"]
        _assert_left_the_library(pid)


def test_cancelled_threads_leave_the_registry(built: dict[str, BuiltSample], runtime: Path) -> None:
    with waiting(built, "cancel", "1") as (pid, printed):
        assert printed[-1] == "cancel in pause: joined"
        state = runtime_state.read(pid)
        assert [t.tid for t in state.threads] == [pid]
        assert all(lib.depth == 0 for lib in state.threads[0].libraries.values())


def test_gdb_bt_through_a_tail_call(built: dict[str, BuiltSample], runtime: Path) -> None:
    frames = _gdb_backtrace(built["tracking"], runtime, "tracking_spin", "tail", "1")
    assert "main" in frames[-1]


def test_fork_child_calls_in(built: dict[str, BuiltSample], runtime: Path) -> None:
    result = _tracking(built, "fork")
    assert result.returncode == 0
    child, parent = result.stdout.splitlines()
    assert child.split(": ")[1] == parent.split(": ")[1].split(",")[0]


def test_exited_threads_leave_the_registry(built: dict[str, BuiltSample], runtime: Path) -> None:
    with waiting(built, "wait") as (pid, printed):
        assert printed[0].startswith("8 threads agree")
        state = runtime_state.read(pid)
        assert [t.tid for t in state.threads] == [pid]


def test_shadow_stack_exhaustion_fails_safe(
    built: dict[str, BuiltSample], runtime: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its limit, entries run untracked: the results stay right, nothing is corrupted."""
    monkeypatch.setenv("ULP_SHADOW_FRAMES", "64")
    with waiting(built, "deep", "1000") as (pid, _):
        state = runtime_state.read(pid)
        (main,) = [t for t in state.threads if t.tid == pid]
        assert main.frames == 64
        assert main.libraries[state.library("libtracking.so").index].depth == 64
    # `waiting` checked the exit status: 0 only if 1001 nested calls returned the right sum.


def test_introspection_of_a_thread_inside(built: dict[str, BuiltSample], runtime: Path) -> None:
    b = built["tracking"]
    with waiting(built, "inside") as (pid, _):
        state = runtime_state.read(pid)
        assert Path(state.runtime) == runtime
        assert state.universe == 1
        lib = state.library("libtracking.so")
        assert Path(lib.name) == b.prepared
        assert lib.build_id == ElfFile.load(b.prepared).build_id
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert f"{lib.base:x}-" in maps
        (main,) = [t for t in state.threads if t.tid == pid]
        assert main.frames == 1
        assert main.libraries[lib.index].depth == 1
        assert main.libraries[lib.index].universe == 1


def test_library_dlopened_after_start_is_tracked(
    built: dict[str, BuiltSample], runtime: Path
) -> None:
    with waiting(built, "inside", dlopen=True) as (pid, _):
        state = runtime_state.read(pid)
        lib = state.library("libtracking.so")
        (main,) = [t for t in state.threads if t.tid == pid]
        assert main.libraries[lib.index].depth == 1


def test_process_without_runtime_is_reported(built: dict[str, BuiltSample]) -> None:
    b = built["tracking"]
    proc = subprocess.Popen(
        [str(b.linked), "inside"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, LD_LIBRARY_PATH=str(b.prepared.parent)),
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(runtime_state.UlpError, match="runtime not loaded"):
            runtime_state.read(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_libraries_past_the_limit_run_untracked(
    built: dict[str, BuiltSample], runtime: Path, tmp_path: Path
) -> None:
    """1030 copies of a prepared library in one process: the first 1024 are tracked, the rest
    run untracked (and correctly)."""
    paths = []
    for i in range(1030):
        copy = tmp_path / str(i) / "libtracking.so"
        copy.parent.mkdir()
        shutil.copy(built["tracking"].prepared, copy)
        paths.append(str(copy))
    script = f"""
import ctypes, os, sys
sys.path.insert(0, {str(REPO)!r})
from ulp_build.live import runtime_state
libs = [ctypes.CDLL(p) for p in {paths!r}]
results = {{lib.tracking_spin(100) for lib in libs for _ in range(3)}}
state = runtime_state.read(os.getpid())
print(len(state.libraries), len(results))
"""
    result = with_runtime([sys.executable, "-c", script], timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1024", "1"]


def test_run_keeps_existing_preload(runtime: Path) -> None:
    libm = "/lib/x86_64-linux-gnu/libm.so.6"
    result = ulp("run", "--", "sh", "-c", "echo $LD_PRELOAD", env=dict(os.environ, LD_PRELOAD=libm))
    assert result.stdout.strip() == f"{runtime}:{libm}"


def test_the_runtime_refuses_to_be_prepared(runtime: Path, tmp_path: Path) -> None:
    result = ulp("rewrite", str(runtime), "-o", str(tmp_path / "x.so"))
    assert result.returncode == 1
    assert "defines ulp_track: it is the ulp runtime" in result.stderr
    assert not (tmp_path / "x.so").exists()


def test_runtime_path(runtime: Path) -> None:
    result = ulp("runtime-path")
    assert result.returncode == 0 and result.stdout.strip() == str(runtime)


def test_installed_package_has_the_runtime() -> None:
    """`pip install .` put libulp.so beside the installed package (no ULP_RUNTIME override)."""
    env = {k: v for k, v in os.environ.items() if k != "ULP_RUNTIME"}
    result = run(["ulp", "runtime-path"], env=env, cwd="/")
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path.name == "libulp.so" and path.is_file()
    assert "site-packages" in str(path) or "dist-packages" in str(path)
