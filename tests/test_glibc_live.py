"""A fix to glibc's own getenv (examples/glibc-getenv) applied and reverted 20 times with
`ulp trigger` in running processes on the padded glibc that tools/build-glibc builds, through
that glibc's own loader with the runtime preloaded: a C program whose 8 threads call getenv
without pause, and CPython calling it through ctypes. Every call gives the old or the fixed
answer, both are seen, `ulp patches` shows each state and the processes exit cleanly.

Without a complete cache entry the fixture builds it with tools/build-glibc, as CI does on a
fresh machine (about ten minutes on two cores; then seconds). The libc is prepared again here
from the file as built, so this checkout's rewriter is what runs."""

from __future__ import annotations

import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, run, ulp

from sample_libs import padded_glibc

EXAMPLE = REPO / "examples" / "glibc-getenv"
PATCH_ID = "glibc-getenv-equals"
CYCLES = 20
# The main thread waits in read(), inside libc, when a patch comes: the transition stays pending
# until its next line, so waiting for it to finish would only cost time.
WAIT = ["--wait", "0"]
PYTHON = "/usr/bin/python3"
# The old getenv finds "ULP_GETENV_DEMO=a" inside the value "a=b"; the fix returns NULL.
PYTHON_CALLER = """
import ctypes, os, sys, threading
os.environ["ULP_GETENV_DEMO"] = "a=b"
getenv = ctypes.CDLL(None).getenv
getenv.argtypes, getenv.restype = [ctypes.c_char_p], ctypes.c_char_p
counts = {"old": 0, "new": 0, "failed": 0}
stop = threading.Event()
def answer():
    if getenv(b"ULP_GETENV_DEMO") != b"a=b":
        return "failed"
    found = getenv(b"ULP_GETENV_DEMO=a")
    return "new" if found is None else "old" if found == b"b" else "failed"
def loop():
    while not stop.is_set():
        counts[answer()] += 1
caller = threading.Thread(target=loop)
caller.start()
print("ready", flush=True)
for line in sys.stdin:
    if line == "quit\\n":
        break
    print(answer(), flush=True)
stop.set()
caller.join()
print("calls", sum(counts.values()), "old", counts["old"], "new", counts["new"],
      "failed", counts["failed"], flush=True)
"""


@dataclass(frozen=True)
class Glibc:
    loader: Path
    library_path: str  # the prepared libc first, then the build's other libraries, the system's
    libc: Path

    def command(self, runtime: Path, *argv: str) -> list[str]:
        preload = ["--preload", str(runtime)]
        return [str(self.loader), "--library-path", self.library_path, *preload, *argv]


@pytest.fixture(scope="module")
def glibc(tmp_path_factory: pytest.TempPathFactory) -> Glibc:
    entry = padded_glibc.any_complete()
    if entry is None:
        built = run([sys.executable, str(REPO / "tools" / "build-glibc")], timeout=40 * 60)
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        entry = padded_glibc.any_complete()
    assert entry is not None, "tools/build-glibc left no complete cache entry"
    libdir = padded_glibc.library_dir(entry / "prefix")
    assert libdir is not None, f"{entry}: no libc.so.6 installed"
    out = tmp_path_factory.mktemp("padded-libc") / "libc.so.6"
    padded_glibc.prepare(libdir / "libc.so.6.unprepared", out)
    system = "/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu"
    return Glibc(libdir / "ld-linux-x86-64.so.2", f"{out.parent}:{libdir}:{system}", out)


@pytest.fixture(scope="module")
def fix(glibc: Glibc, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's fix, built and packed against the prepared libc as a user does it."""
    out = tmp_path_factory.mktemp("getenv-fix")
    shutil.copy(EXAMPLE / "fix.toml", out)
    (out / "libc.so.6").symlink_to(glibc.libc)
    built = run(["gcc", "-O2", "-Wall", "-Werror", "-fPIC", "-shared", "-o",
                 str(out / "getenv_fix.so"), str(EXAMPLE / "getenv_fix.c")])  # fmt: skip
    assert built.returncode == 0, built.stderr
    packed = ulp("pack", str(out / "fix.toml"), "-o", str(out / "getenv-fix.ulp"))
    assert packed.returncode == 0, packed.stderr
    return out / "getenv-fix.ulp"


class Caller:
    """A process on the padded glibc answering "old" or "new" per line, counts at "quit"."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.pid = self.proc.pid
        assert self.line().startswith("ready"), self.proc.stderr

    def line(self, timeout: float = 20.0) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"process {self.pid} did not answer"
        return self.proc.stdout.readline().strip()

    def ask(self) -> str:
        """The answer the main thread's next getenv call gives: old, new or failed."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("probe\n")
        self.proc.stdin.flush()
        return self.line().split(":")[0]

    def quit(self) -> dict[str, int]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        words = self.line().split()
        assert self.proc.wait(timeout=30) == 0, self.proc.stderr
        return {words[i]: int(words[i + 1]) for i in range(0, len(words), 2)}


@contextmanager
def caller(argv: list[str]) -> Iterator[Caller]:
    c = Caller(argv)
    try:
        yield c
    finally:
        c.proc.kill()
        c.proc.wait()


def _mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _cycles(c: Caller, fix: Path) -> list[float]:
    """CYCLES applies and reverts with the CLI; the main thread's answer and `ulp patches` after
    each. Returns the seconds each trigger took."""
    reverse = fix.with_name("getenv-fix.rev.ulp")
    seconds = []
    assert c.ask() == "old"
    for _ in range(CYCLES):
        for patch, verb, answer in ((fix, "applied", "new"), (reverse, "reverted", "old")):
            started = time.monotonic()
            result = ulp("trigger", "-p", str(c.pid), str(patch), *WAIT)
            seconds.append(time.monotonic() - started)
            assert result.returncode == 0, result.stdout + result.stderr
            assert result.stdout.startswith(f"{c.pid}: {verb}: "), result.stdout
            assert c.ask() == answer
            shown = ulp("patches", "-p", str(c.pid))
            assert shown.returncode == 0, shown.stderr
            assert str(fix.with_name("libc.so.6").resolve()) in shown.stdout
            assert (f"{PATCH_ID}  applied" in shown.stdout) == (verb == "applied"), shown.stdout
    return seconds


def _check(counts: dict[str, int]) -> None:
    assert counts["failed"] == 0, counts
    assert counts["old"] > 0 and counts["new"] > 0, counts
    assert counts["calls"] == counts["old"] + counts["new"]


def _patched_live(
    glibc: Glibc,
    command: list[str],
    fix: Path,
    runtime: Path,
    capsys: pytest.CaptureFixture[str],
    label: str,
) -> None:
    """Run `command` on the padded libc under the runtime, patch and revert it, check its
    counts."""
    with caller(command) as c:
        maps = _mapped(c.pid)
        assert str(glibc.libc) in maps and str(runtime) in maps and str(glibc.loader) in maps
        seconds = _cycles(c, fix)
        counts = c.quit()
    _check(counts)
    with capsys.disabled():
        print(f"\n{label}: {counts}, trigger {min(seconds):.2f}-{max(seconds):.2f} s")


def test_eight_threads_in_c(
    glibc: Glibc, fix: Path, runtime: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    program = tmp_path / "getenv_threads"
    source = EXAMPLE / "getenv_threads.c"
    built = run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-pthread", "-o",
                 str(program), str(source)])  # fmt: skip
    assert built.returncode == 0, built.stderr
    _patched_live(glibc, glibc.command(runtime, str(program)), fix, runtime, capsys, "8 threads")


def test_python_through_ctypes(
    glibc: Glibc, fix: Path, runtime: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command = glibc.command(runtime, PYTHON, "-c", PYTHON_CALLER)
    _patched_live(glibc, command, fix, runtime, capsys, "python3")
