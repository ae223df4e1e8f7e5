"""Debian's jansson as a musl program's workload: its source fetched fresh with `apt-get source`
(debian.py), built with `musl-gcc` by its CMake build, its test programs started by the loader
the caller names, and its own test suite run with ctest, which counts each test (213). Debian
builds it with autotools, whose `make check` runs the same suites but needs autoreconf first and
counts suites, not tests."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from sample_libs import debian

# ctest's summary line, e.g. "100% tests passed, 0 tests failed out of 213".
_SUMMARY = re.compile(r"(\d+)% tests passed, (\d+) tests failed out of (\d+)")


def source(root: Path) -> Path:
    """Fetch the source into `root` (new or empty); return the unpacked tree."""
    return debian.fetch("jansson", root)


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{result.stdout}{result.stderr}")
    return result.stdout


def build(source_tree: Path, tree: Path, loader: Path) -> None:
    """Configure and build `source_tree` in the new directory `tree` (static libjansson, its
    test programs dynamic musl programs whose interpreter is `loader`)."""
    tree.mkdir(parents=True)
    configure = [
        "cmake",
        "-DJANSSON_BUILD_DOCS=OFF",
        "-DJANSSON_EXAMPLES=OFF",
        f"-DCMAKE_EXE_LINKER_FLAGS=-Wl,--dynamic-linker={loader}",
        str(source_tree),
    ]
    _run(configure, tree, dict(os.environ, CC="musl-gcc"))
    _run(["make", "-j2"], tree)


def run_tests(tree: Path) -> tuple[int, int, str]:
    """Run the test suite built in `tree`; return (passed, total, ctest's output). A failure is
    counted, not raised."""
    result = subprocess.run(
        ["ctest", "-j2", "--output-on-failure"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    found = _SUMMARY.search(output)
    if found is None:
        return 0, 0, output
    total, failed = int(found.group(3)), int(found.group(2))
    return total - failed, total, output
