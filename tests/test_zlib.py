"""A real third-party library: Debian's zlib, built with `ulp cflags`, prepared, passes its own
`make test` (static, shared and 64-bit tests) with the prepared shared library."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from conftest import run, ulp

from sample_libs import debian, zlib
from ulp_build.elf import ElfFile
from ulp_build.prepare.check import check


@pytest.fixture(scope="module")
def zlib_build(tmp_path_factory: pytest.TempPathFactory, zlib_source: Path) -> Path:
    tree = tmp_path_factory.mktemp("zlib") / "src"
    zlib.build(zlib_source, tree)
    return tree


@pytest.fixture(scope="module")
def prepared_zlib(zlib_build: Path) -> Path:
    (lib,) = [p for p in zlib_build.glob("libz.so.*.*") if not p.is_symlink()]
    assert ElfFile.load(lib).section("__patchable_function_entries") is not None
    result = ulp("rewrite", str(lib))
    assert result.returncode == 0, result.stderr
    report = check(ElfFile.load(lib))
    # Every exported function has a trampoline or is a leaf (deflate and inflate are no leaves).
    assert report.usable and report.trampolines + len(report.leaves) > 80 and report.patchable > 80
    assert not {"deflate", "inflate"} & set(report.leaves)
    assert report.tracked_not_patchable == []
    return lib


def _make_test(zlib_build: Path, lib: Path, env: dict[str, str]) -> None:
    result = run(["make", "test"], cwd=zlib_build, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    for banner in ("zlib test OK", "zlib shared test OK", "zlib 64-bit test OK"):
        assert banner in result.stdout
    # The shared test ran against the prepared file, which make did not rebuild.
    assert ElfFile.load(lib).section(".ulp") is not None
    ldd = run(
        ["ldd", str(zlib_build / "examplesh")],
        env=dict(os.environ, LD_LIBRARY_PATH=str(zlib_build)),
    )
    assert f"libz.so.1 => {zlib_build}/libz.so.1" in ldd.stdout
    assert (zlib_build / "libz.so.1").resolve() == lib.resolve()


def test_zlib_make_test_with_prepared_library(zlib_build: Path, prepared_zlib: Path) -> None:
    _make_test(zlib_build, prepared_zlib, dict(os.environ))


def test_zlib_make_test_under_the_runtime(
    zlib_build: Path, prepared_zlib: Path, runtime: Path
) -> None:
    _make_test(zlib_build, prepared_zlib, dict(os.environ, LD_PRELOAD=str(runtime)))


def test_debian_versions_newest_first_by_dpkg() -> None:
    listed = debian.versions("zlib")
    assert len(listed) >= 2 and len(set(listed)) == len(listed)
    for newer, older in itertools.pairwise(listed):
        assert run(["dpkg", "--compare-versions", newer, "gt", older]).returncode == 0


def test_debian_fetch_of_an_unknown_package_says_why(tmp_path: Path) -> None:
    with pytest.raises(debian.SourceError, match=r"no-such-package-ulp.*lists no version"):
        debian.fetch("no-such-package-ulp", tmp_path)
