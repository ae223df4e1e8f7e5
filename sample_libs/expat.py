"""Debian's expat as a real security fix to make into a live patch: its source fetched fresh with
`apt-get source` (debian.py), every Debian patch applied, built twice by expat's own CMake build
with the flags `ulp diff` takes (docs/diff.md): as fetched (fixed) and with Debian's
CVE-2024-45490.patch reversed (the library as it ran before the fix).

Debian builds expat with autotools; the tree has no `configure` (Debian runs `buildconf.sh`,
which needs autoreconf), so CMake, expat's other build system, builds it here. Two differences
from the autotools build matter:
- CMake's expat_config.h defines XML_DTD and XML_NS empty where autotools defines them as 1, and
  Debian's backport of CVE-2024-8176 tests `#if XML_DTD == 1`: the two lines are given autotools'
  value after configuring.
- The two trees lie in different directories: `-ffile-prefix-map` makes the source path that
  `assert` prints the same in both, as Debian's own flags do, so that it is no difference.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from sample_libs import debian
from ulp_build.prepare.layout import CFLAGS

FIX = Path("debian/patches/CVE-2024-45490.patch")
LDFLAGS = "-Wl,--emit-relocs"


def cflags(tree: Path) -> str:
    return " ".join(
        ["-O2", "-g", *CFLAGS, "-ffunction-sections", "-fdata-sections",
         f"-ffile-prefix-map={tree}=."]
    )  # fmt: skip


def source(root: Path) -> Path:
    """Fetch the source into `root` (new or empty); return the unpacked tree."""
    return debian.fetch("expat", root)


def _run(cmd: list[str], cwd: Path) -> None:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{result.stdout}{result.stderr}")


def build(source_tree: Path, tree: Path, *, fixed: bool) -> Path:
    """Copy `source_tree` to `tree`/src (with the fix reversed unless `fixed`), configure and
    build libexpat there in `tree`/build; return the shared library (the real file behind
    libexpat.so.1). Its headers are in `tree`/src/expat/lib and `tree`/build."""
    src, out = tree / "src", tree / "build"
    shutil.copytree(source_tree, src)
    if not fixed:
        _run(["patch", "-R", "-p1", "-i", str(FIX)], src)
    out.mkdir()
    configure = [
        "cmake",
        f"-DCMAKE_C_FLAGS={cflags(tree)}",
        f"-DCMAKE_SHARED_LINKER_FLAGS={LDFLAGS}",
        "-DEXPAT_BUILD_TOOLS=OFF",
        "-DEXPAT_BUILD_EXAMPLES=OFF",
        "-DEXPAT_BUILD_TESTS=OFF",
        "-DEXPAT_BUILD_DOCS=OFF",
        "-DEXPAT_BUILD_PKGCONFIG=OFF",
        str(src / "expat"),
    ]
    _run(configure, out)
    config = out / "expat_config.h"
    text = re.sub(r"^#define (XML_DTD|XML_NS)$", r"#define \1 1", config.read_text(), flags=re.M)
    config.write_text(text)
    _run(["make", "-j2", "expat"], out)
    (lib,) = [p for p in out.glob("libexpat.so.*.*") if not p.is_symlink()]
    return lib
