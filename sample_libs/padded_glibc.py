"""The padded glibc that tools/build-glibc builds (docs/glibc.md): where its cache entries live,
finding a complete one, and preparing its libc.so.6 and libm.so.6. The script uses this module,
and so do the tests that run programs on that glibc when an entry is cached."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from ulp_build.prepare.layout import CFLAGS

ROOT = Path(__file__).resolve().parent.parent

# Debian builds glibc with -O2 -g too; --disable-werror because gcc 12 warns where glibc 2.36
# did not expect it, and a warning is not what this build checks.
BUILD_CFLAGS = " ".join(["-O2", "-g", *CFLAGS])
CONFIGURE = ["--prefix=/usr", "--disable-werror"]
PREPARED = ("libc.so.6", "libm.so.6")


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ulp_build"


def flags_hash() -> str:
    """What decides the build besides the source version: the flags and configure options."""
    return hashlib.sha256(" ".join([BUILD_CFLAGS, *CONFIGURE]).encode()).hexdigest()[:12]


def entry_for(version: str) -> Path:
    return cache_root() / f"glibc-{version}-{flags_hash()}"


def is_complete(entry: Path) -> bool:
    """The stamp `complete` is written last: an entry without it is rebuilt from scratch."""
    return (entry / "complete").is_file()


def any_complete() -> Path | None:
    """A complete entry built with this checkout's flags, whatever its version (the highest
    name first), without asking apt which versions exist."""
    entries = sorted(cache_root().glob(f"glibc-*-{flags_hash()}"), reverse=True)
    return next((entry for entry in entries if is_complete(entry)), None)


def library_dir(prefix: Path) -> Path | None:
    """Where the install put libc.so.6 (glibc picks lib64 or lib by target and prefix)."""
    found = sorted(prefix.glob("usr/lib*/libc.so.6")) + sorted(prefix.glob("lib*/libc.so.6"))
    return found[0].parent if found else None


def prepare(original: Path, out: Path) -> bool:
    """Prepare `original` (a library as built) as `out` with `ulp rewrite`, replacing `out` only
    when this checkout's rewriter makes something else than what is there: an entry prepared by
    an older rewriter is brought up to date, one that is current is left alone (processes running
    on it keep it). Returns whether `out` was written; raises RuntimeError with ulp's message."""
    fresh = out.with_name(out.name + ".new")
    cmd = [sys.executable, "-m", "ulp_build", "rewrite", str(original), "-o", str(fresh)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        fresh.unlink(missing_ok=True)
        message = result.stderr.strip() or result.stdout.strip()
        raise RuntimeError(f"ulp rewrite {original} failed: {message}")
    if out.is_file() and out.read_bytes() == fresh.read_bytes():
        fresh.unlink()
        return False
    fresh.replace(out)
    return True
