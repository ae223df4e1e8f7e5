"""What a target process says cannot hang, exhaust, crash or fool root's `ulp patches` and
`ulp trigger --all`: a fake runtime (tests/programs/hostile_runtime.c, named libulp-hostile.so so
that the tools take it for one) publishes a crafted introspection header, in a process that also
loads the real prepared library; a normal process beside it must be listed and patched as ever,
each command finishing in seconds and small memory."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, run
from live import SATURATED, patch_file, running
from users import as_user, ensure, shared_directory

from ulp_build import cli

# What one command may take however hostile a process is.
SECONDS = 5.0
RSS_MB = 100

VARIANTS = {
    "fifo": '-DFIFO_NAME="{fifo}"',
    "dev_zero": '-DFIFO_NAME="/dev/zero"',
    "thread_loop": "-DTHREAD_LOOP",
    "huge_counts": "-DHUGE_COUNTS",
    "huge_stride": "-DHUGE_STRIDE",
    "escapes": "-DESCAPES",
}


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    rss_mb: float


def measured(*args: str, limit: float = 60.0) -> Measured:
    """`ulp ARGS`, with its wall time and the peak RSS of it and its workers (wait4 reports
    the largest of a process and its reaped descendants); killed after `limit` seconds."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "ulp_build", *args], stdout=out, stderr=err)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > limit:
                proc.kill()
                os.wait4(proc.pid, 0)
                raise AssertionError(f"ulp {' '.join(args)}: still running after {limit} s")
            time.sleep(0.02)
        seconds = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    return Measured(proc.returncode, *text, seconds, usage.ru_maxrss / 1024)


def _build_hostile(variant: str, work: Path) -> Path:
    fifo = work / "fifo-libbasic.so"
    os.mkfifo(fifo)
    out = work / "libulp-hostile.so"
    define = VARIANTS[variant].format(fifo=fifo)
    source = REPO / "tests" / "programs" / "hostile_runtime.c"
    built = run(["gcc", "-shared", "-fPIC", "-std=gnu11", f"-I{REPO / 'runtime'}", define,
                 "-o", str(out), str(source)])  # fmt: skip
    assert built.returncode == 0, built.stderr
    return out


def _clean(text: str) -> None:
    assert "\x1b" not in text and "\r" not in text and "\x07" not in text, repr(text)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hostile_runtime_is_reported_and_the_others_patched(
    variant: str, tree: Path, patchee: Path, runtime: Path, tmp_path: Path
) -> None:
    hostile = _build_hostile(variant, tmp_path)
    library = str(tree / "basic" / "libbasic.so")
    with running(patchee, runtime, library) as normal, running(patchee, hostile, library) as bad:
        shown = measured("patches")
        assert shown.seconds < SECONDS and shown.rss_mb < RSS_MB, shown
        _clean(shown.stdout + shown.stderr)
        assert f"\n{normal.pid}  " in f"\n{shown.stdout}", shown
        listed = f"\n{bad.pid}  " in f"\n{shown.stdout}"
        skipped = [line for line in shown.stderr.splitlines() if f"process {bad.pid}:" in line]
        assert listed or len(skipped) == 1, shown
        assert "Traceback" not in shown.stderr

        done = measured("trigger", "--all", patch_file(tree, "square_fix"))
        assert done.seconds < SECONDS and done.rss_mb < RSS_MB, done
        _clean(done.stdout + done.stderr)
        assert "Traceback" not in done.stderr, done
        lines = done.stdout.splitlines()
        assert any(line.startswith(f"{normal.pid}: applied:") for line in lines), done
        assert any(line.startswith(f"{bad.pid}: failed:") for line in lines), done
        assert normal.ask("square 100000") == str(SATURATED)


def test_a_large_mapped_file_is_not_read(tree: Path, runtime: Path, tmp_path: Path) -> None:
    """Every file a candidate maps is looked at for the target's build-id: by its headers, not
    read whole."""
    big = tmp_path / "big.img"
    with big.open("wb") as f:
        f.truncate(1 << 30)  # sparse: nothing written
    mapper = tmp_path / "mapper"
    built = run(["gcc", "-O2", "-o", str(mapper), str(REPO / "tests" / "programs" / "mapper.c")])
    assert built.returncode == 0, built.stderr
    with running(mapper, runtime, str(big)):
        done = measured("trigger", "--all", patch_file(tree, "square_fix"))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done
    assert done.seconds < SECONDS and done.rss_mb < RSS_MB, done


def test_an_unprivileged_user_is_told_what_it_could_not_read(
    tree: Path, patchee: Path, runtime: Path
) -> None:
    """Root's processes with the runtime are not readable by a user: `ulp patches` says how
    many processes it could not read instead of "no process"."""
    user = ensure("ulp-test-alice")
    output = shared_directory() / "out"
    output.touch()
    output.chmod(0o666)

    def patches() -> None:
        with output.open("w") as f:  # pytest's capture holds sys.stdout: replace it
            sys.stdout = sys.stderr = f
            cli.main(["patches"])

    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")):
        assert as_user(user, patches) is None
    text = output.read_text()
    assert text.startswith("no process with the runtime among those you may read; "), text
    assert "processes are not readable by you (run as root)" in text, text
