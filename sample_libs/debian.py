"""Debian 12 source packages, fetched with `apt-get source` (needs a deb-src entry;
tools/install-deps adds one).

The mirror's index (`apt-cache showsrc`) can name versions whose files it no longer serves: the
newest, which `apt-get source NAME` picks, fails with a 404 while an older one downloads. So the
versions the index lists are tried newest first and the first that downloads is taken. Nothing is
cached between runs: a source tree left by an earlier run would hide a version that stopped
downloading.

Also a command, for scripts: `python -m sample_libs.debian NAME DEST` prints the unpacked tree.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path


class SourceError(RuntimeError):
    pass


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, check=False)


def _newer(a: str, b: str) -> int:
    """cmp-style order of two Debian versions, by dpkg's own rules."""
    if a == b:
        return 0
    return 1 if _run(["dpkg", "--compare-versions", a, "gt", b]).returncode == 0 else -1


def versions(package: str) -> list[str]:
    """The versions of source package `package` the index lists, newest first."""
    result = _run(["apt-cache", "showsrc", package])
    found: set[str] = set()
    current = None
    for line in result.stdout.splitlines():
        if line.startswith("Package: "):
            current = line.split(":", 1)[1].strip()
        elif line.startswith("Version: ") and current == package:
            found.add(line.split(":", 1)[1].strip())
    return sorted(found, key=functools.cmp_to_key(_newer), reverse=True)


def fetch(package: str, dest: Path) -> Path:
    """Download and unpack `package` into the empty or new directory `dest`; return the source
    tree (the one directory `apt-get source` unpacked)."""
    listed = versions(package)
    if not listed:
        raise SourceError(
            f"apt-cache showsrc {package} lists no version: run tools/install-deps"
            " (it adds a deb-src entry and runs apt-get update)"
        )
    failures = []
    for version in listed:
        attempt = dest / f"attempt-{len(failures)}"
        attempt.mkdir(parents=True)
        result = _run(["apt-get", "source", f"{package}={version}"], cwd=attempt)
        trees = [p for p in attempt.iterdir() if p.is_dir()]
        if result.returncode == 0 and len(trees) == 1:
            return trees[0]
        last = (result.stderr.strip().splitlines() or ["no source tree unpacked"])[-1]
        failures.append(f"{version}: {last}")
        shutil.rmtree(attempt)
    raise SourceError(f"no listed version of {package} downloads: " + "; ".join(failures))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m sample_libs.debian NAME DEST")
    try:
        print(fetch(sys.argv[1], Path(sys.argv[2])))
    except SourceError as error:
        sys.exit(f"sample_libs.debian: {error}")
