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

expat's own test suite (`tests/runtests.c`) uses internals that `-fvisibility=hidden`, which
expat's build adds, keeps out of the shared library's exports; expat's build compiles the
library's sources into the test program instead. To run that suite against the shared library
(suite()), build() can leave that flag out: the same sources, flags and patches, with every
non-static symbol exported.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from sample_libs import debian
from ulp_build.prepare.layout import CFLAGS

FIX = Path("debian/patches/CVE-2024-45490.patch")
# runtests' sources besides the library's, as expat's tests/Makefile.am lists them.
SUITE = ("runtests.c", "chardata.c", "memcheck.c", "minicheck.c", "structdata.c")
# The internals runtests uses: a library exports them only when built with internals_exported.
SUITE_INTERNALS = (
    "unsignedCharToPrintable",
    "_INTERNAL_trim_to_complete_utf8_characters",
    "g_reparseDeferralEnabledDefault",
    "g_parseAttempts",
    "testingAccountingGetCountBytesDirect",
    "testingAccountingGetCountBytesIndirect",
)
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


def build(source_tree: Path, tree: Path, *, fixed: bool, internals_exported: bool = False) -> Path:
    """Copy `source_tree` to `tree`/src (with the fix reversed unless `fixed`), configure and
    build libexpat there in `tree`/build; return the shared library (the real file behind
    libexpat.so.1). Its headers are in `tree`/src/expat/lib and `tree`/build.

    `internals_exported`: without `-fvisibility=hidden`, so that the internals expat's test
    suite uses are exported too (suite() links against the library)."""
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
        # The compiler check's cached answer: "no", so CMake adds neither -fvisibility=hidden
        # nor XML_ENABLE_VISIBILITY (which only marks the API visible).
        *(["-DFLAG_VISIBILITY=OFF"] if internals_exported else []),
        str(src / "expat"),
    ]
    _run(configure, out)
    config = out / "expat_config.h"
    text = re.sub(r"^#define (XML_DTD|XML_NS)$", r"#define \1 1", config.read_text(), flags=re.M)
    config.write_text(text)
    _run(["make", "-j2", "expat"], out)
    (lib,) = [p for p in out.glob("libexpat.so.*.*") if not p.is_symlink()]
    return lib


def suite(lib: Path) -> Path:
    """Build expat's test suite `runtests` from the tree `lib` was built in (by build() with
    internals_exported), linked against `lib` itself, with an rpath to its directory; return
    the program, in that tree. It runs as one process and prints "100%: Checks: N, Failed: 0"
    when every test passes."""
    tree = lib.parent.parent
    tests = tree / "src" / "expat" / "tests"
    program = tree / "runtests"
    _run(["gcc", "-O2", f"-I{tree / 'build'}", f"-I{tree / 'src' / 'expat' / 'lib'}",
          "-o", str(program), *(str(tests / name) for name in SUITE), str(lib),
          f"-Wl,-rpath,{lib.parent}", "-lm"], tree)  # fmt: skip
    return program
