"""Debian's zlib as a real third-party sample: fetched with `apt-get source` (needs a deb-src
entry; tools/install-deps adds one) and built with the flags `ulp cflags` prints."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ulp_build.prepared import CFLAGS

CACHE = Path(os.environ.get("ULP_TEST_CACHE", Path.home() / ".cache" / "ulp_build-tests"))


def source() -> Path:
    """The unpacked source tree, fetched once into the cache."""
    root = CACHE / "zlib"
    found = sorted(root.glob("zlib-*/configure"))
    if not found:
        root.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["apt-get", "source", "zlib"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                "apt-get source zlib failed (run tools/install-deps first):\n" + result.stderr
            )
        found = sorted(root.glob("zlib-*/configure"))
    if not found:
        raise RuntimeError(f"no zlib source tree in {root}")
    return found[-1].parent


def build(tree: Path) -> Path:
    """Copy the source to `tree`, configure and build it; return the shared library (the real
    file behind libz.so.1)."""
    shutil.copytree(source(), tree)
    env = dict(os.environ, CFLAGS=" ".join(["-O2", "-g", *CFLAGS]))
    for cmd in (["./configure"], ["make", "-j2"]):
        result = subprocess.run(
            cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed in {tree}:\n{result.stdout}{result.stderr}")
    (lib,) = [p for p in tree.glob("libz.so.*.*") if not p.is_symlink()]
    return lib
