"""Debian's musl as a padded C library: its source fetched fresh with `apt-get source`
(debian.py), built as Debian builds it (with Debian's fts added) plus the flags `ulp cflags`
prints, and linked without `--gc-sections`. musl's configure adds `--gc-sections` on its own,
and under it GCC 12 loses `__patchable_function_entries` records of functions the link keeps,
padding and all (36 in this libc.so: calloc, fork, pthread_create, ...; `ulp check` warns of
each)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from sample_libs import debian
from ulp_build.prepare.layout import CFLAGS

# Debian configures with --enable-debug (-g) and its default -O2; musl takes any -O in CFLAGS
# as the whole choice. The link flags come after configure's own, so the last word is ours.
BUILD_CFLAGS = " ".join(["-O2", "-g", *CFLAGS])
BUILD_LDFLAGS = "-Wl,--no-gc-sections"


def source(root: Path) -> Path:
    """Fetch the source into `root` (new or empty); return the unpacked tree."""
    return debian.fetch("musl", root)


def build(source_tree: Path, tree: Path) -> Path:
    """Copy `source_tree` to `tree`, configure and build musl's libc.so (which is also its
    dynamic loader) there; return it."""
    shutil.copytree(source_tree, tree)
    # What debian/rules' copy_fts does: Debian's libc.so has fts_open and the rest, which a
    # program linked against the installed musl may need.
    (tree / "src" / "fts").mkdir()
    for name in ("fts.c", "config.h"):
        shutil.copy(tree / "debian" / "musl-fts" / name, tree / "src" / "fts")
    shutil.copy(tree / "debian" / "musl-fts" / "fts.h", tree / "include")
    env = dict(os.environ, CFLAGS=BUILD_CFLAGS, LDFLAGS=BUILD_LDFLAGS)
    for cmd in (["./configure", "--prefix=/usr"], ["make", "-j2", "lib/libc.so"]):
        result = subprocess.run(
            cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=900, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed in {tree}:\n{result.stdout}{result.stderr}")
    return tree / "lib" / "libc.so"
