"""`ulp demo`: the whole story in one command, on a real library and a real process.

It builds libshop (a 10% discount that should be 20%) with the flags `ulp cflags` prints,
prepares it, builds the fix and packs it, starts a program that prints a total from the library
every half second under the runtime, patches it live, reverts, and removes everything it made.
The sources are in ulp_build/demo_sources/.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from ulp_build.errors import UlpError
from ulp_build.live import protocol
from ulp_build.live.operation import operation
from ulp_build.live.runtime import runtime_path
from ulp_build.patch.packer import pack
from ulp_build.prepare.layout import CFLAGS
from ulp_build.prepare.rewrite import rewrite

BEFORE, AFTER = 540, 480  # total(200, 3) with the bug and with the fix


def _compile(work: Path, *args: str) -> None:
    cmd = ["gcc", "-O2", *args]
    try:
        result = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise UlpError("demo: gcc not found (install it: apt-get install gcc)") from None
    if result.returncode != 0:
        raise UlpError(f"demo: {' '.join(cmd)} failed: {result.stderr.strip()}")


def _build(work: Path) -> tuple[Path, Path]:
    sources = resources.files("ulp_build") / "demo_sources"
    for name in ("shop.c", "shop_fix.c", "shop_fix.toml", "till.c"):
        (work / name).write_text((sources / name).read_text())
    _compile(work, "-fPIC", *CFLAGS, "-shared", "-o", "libshop.so", "shop.c")
    rewrite(work / "libshop.so")
    _compile(work, "-fPIC", "-shared", "-o", "shop_fix.so", "shop_fix.c")
    _compile(work, "-o", "till", "till.c", "-L.", "-lshop", "-Wl,-rpath,$ORIGIN")
    return work / "till", pack(work / "shop_fix.toml").metadata


class _Program:
    def __init__(self, path: Path, say: Callable[[str], None]) -> None:
        env = dict(os.environ, LD_PRELOAD=str(runtime_path()))
        self.proc = subprocess.Popen([str(path)], stdout=subprocess.PIPE, text=True, env=env)
        self.say = say

    def show(self, lines: int) -> list[int]:
        """Echo the next lines the program prints; return the totals in them."""
        assert self.proc.stdout is not None
        totals = []
        for _ in range(lines):
            ready, _, _ = select.select([self.proc.stdout], [], [], 5)
            line = self.proc.stdout.readline() if ready else ""
            if not line:
                raise UlpError(f"demo: the program (pid {self.proc.pid}) stopped printing")
            self.say(f"  till[{self.proc.pid}] | {line.rstrip()}")
            totals.append(int(line.rsplit(maxsplit=1)[1]))
        return totals

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=5)


def _step(pid: int, patch: Path, revert: bool, say: Callable[[str], None]) -> None:
    say(f"$ ulp trigger -p {pid} {'--revert ' if revert else ''}{patch.name}")
    started = time.monotonic()
    result = protocol.run(pid, operation(str(patch), revert=revert))
    if result.failed:
        raise UlpError(f"demo: {result.message}")
    took = (time.monotonic() - started) * 1000
    say(f"{pid}: {result.status} (universe {result.universe}, {took:.0f} ms)")


def run(say: Callable[[str], None] = print, keep: bool = False) -> None:
    work = Path(tempfile.mkdtemp(prefix="ulp-demo-"))
    program = None
    try:
        say(f"Building libshop (bug: 10% discount instead of 20%) and its fix in {work}")
        till, patch = _build(work)
        say("Prepared libshop.so for live patching; packed the fix into shop_fix.ulp")
        say("Starting the program under the runtime; it prints a total every half second:")
        program = _Program(till, say)
        if set(program.show(3)) != {BEFORE}:
            raise UlpError("demo: unexpected output before patching")
        say("Applying the fix to the running process (no restart):")
        _step(program.proc.pid, patch, False, say)
        # A line may have been computed just before the patch landed.
        if program.show(4)[-3:] != [AFTER] * 3:
            raise UlpError("demo: the output did not change after patching")
        say("Reverting it:")
        _step(program.proc.pid, patch, True, say)
        if program.show(4)[-3:] != [BEFORE] * 3:
            raise UlpError("demo: the output did not change back after reverting")
        say(f"Done: {BEFORE} -> {AFTER} -> {BEFORE} in one process, pid {program.proc.pid}.")
    finally:
        if program is not None:
            program.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
