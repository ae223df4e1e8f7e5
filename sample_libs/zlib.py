"""Debian's zlib as a real third-party sample: fetched fresh with `apt-get source` (debian.py)
and built with the flags `ulp cflags` prints."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from sample_libs import debian
from ulp_build.prepare.layout import CFLAGS


def source(root: Path) -> Path:
    """Fetch the source into `root` (new or empty); return the unpacked tree."""
    return debian.fetch("zlib", root)


def build(source_tree: Path, tree: Path, environment: dict[str, str] | None = None) -> Path:
    """Copy `source_tree` to `tree`, configure and build it there; return the shared library
    (the real file behind libz.so.1). `environment` adds to configure's (CC, LDFLAGS)."""
    shutil.copytree(source_tree, tree)
    env = dict(os.environ, CFLAGS=" ".join(["-O2", "-g", *CFLAGS]), **(environment or {}))
    for cmd in (["./configure"], ["make", "-j2"]):
        result = subprocess.run(
            cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed in {tree}:\n{result.stdout}{result.stderr}")
    (lib,) = [p for p in tree.glob("libz.so.*.*") if not p.is_symlink()]
    return lib
