"""Helpers for the tests that patch live processes: a command-driven program (patchee.c) and
what to read out of a process."""

from __future__ import annotations

import os
import select
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import REPO, ulp
from users import User

from ulp_build.elf import ElfFile
from ulp_build.live.process import maps, read_memory

PROGRAMS = REPO / "tests" / "programs"
OVERFLOWED = 1410065408  # basic_square(100000) in 32-bit arithmetic
SATURATED = 2**31 - 1


def patch_file(tree: Path, name: str, reverse: bool = False) -> str:
    return str(tree / "patches" / name / ("patch.rev.ulp" if reverse else "patch.ulp"))


class Process:
    """A patchee: one command line in, one line out."""

    def __init__(
        self,
        binary: Path,
        runtime: Path | None,
        *args: str,
        user: User | None = None,
        preload: Path | None = None,  # after the runtime
    ) -> None:
        env = dict(os.environ)
        env["LD_PRELOAD"] = ":".join(str(p) for p in (runtime, preload) if p is not None)
        self.proc = subprocess.Popen(
            [str(binary), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd="/",
            **({} if user is None else {"user": user.uid, "group": user.gid, "extra_groups": []}),
        )
        self.pid = self.proc.pid
        assert self.line() == "ready"

    def line(self, timeout: float = 20.0) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"process {self.pid} did not answer"
        return self.proc.stdout.readline().strip()

    def ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.line()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.ask("stats")  # still answering: not stopped, not dead
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")  # the patchee stops here, the drivers at the end
            self.proc.stdin.close()
            assert self.proc.wait(timeout=20) == 0
        self.proc.kill()


@contextmanager
def running(
    binary: Path, runtime: Path | None, *args: str, preload: Path | None = None
) -> Iterator[Process]:
    p = Process(binary, runtime, *args, preload=preload)
    try:
        yield p
    finally:
        p.close()


def trigger_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return ulp("trigger", *args)


def triggered(pid: int, patch: Path) -> subprocess.CompletedProcess[str]:
    """`ulp trigger -p PID PATCH`, which must succeed."""
    result = trigger_cli("-p", str(pid), str(patch))
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def code_bytes(pid: int, library: Path) -> bytes:
    """The library's executable mappings in the process, as they are now."""
    out = b""
    for m in maps(pid):
        if m.path == str(library) and "x" in m.perms:
            out += read_memory(pid, m.start, m.end - m.start)
    return out


def base_of(pid: int, library: Path) -> int:
    return next(m.start for m in maps(pid) if m.path == str(library) and m.offset == 0)


def patch_object_bases(pid: int, patch_id: str) -> list[int]:
    """Where the objects of patch `patch_id` are loaded: the runtime loads each from a memfd
    named after the patch (runtime/load.c), one per apply that loaded it."""
    name = f"/memfd:ulp-patch:{patch_id} (deleted)"
    return [m.start for m in maps(pid) if m.path == name and m.offset == 0]


def entry_of(library: Path, name: str) -> int:
    return next(s.value for s in ElfFile.load(library).symtab_symbols if s.name == name)
