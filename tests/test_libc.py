"""A copy of the system's libc, prepared (trampolines only: Debian does not build it with
padding), runs real programs through the dynamic loader."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import run, ulp

from ulp_build.elf import ElfFile
from ulp_build.prepare.rewrite import rewrite

LOADER = "/lib64/ld-linux-x86-64.so.2"


@pytest.fixture(scope="module")
def prepared_libc(libc_copy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("libc-prepared") / "libc.so.6"
    result = rewrite(libc_copy, out)
    # Some 600 of its 2200 functions are leaves, left untracked: __errno_location is one.
    assert result.trampolines > 1400 and result.ifuncs > 40
    assert len(result.leaves) > 500 and "__errno_location" in result.leaves
    # Its vtables (DT_RELR places) and `lea`s of exported functions (hidden aliases).
    assert result.redirected_sites > 200 and result.not_redirectable == []
    return out


def _through(libdir: Path, *cmd: str) -> str:
    result = run([LOADER, "--library-path", str(libdir), *cmd])
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_ls(prepared_libc: Path, libc_copy: Path) -> None:
    expected = _through(libc_copy.parent, "/bin/ls", "-l", "/")
    assert expected.count("\n") > 5
    assert _through(prepared_libc.parent, "/bin/ls", "-l", "/") == expected


def test_python_json(prepared_libc: Path) -> None:
    python = shutil.which("python3") or sys.executable
    real = Path(python).resolve()
    out = _through(prepared_libc.parent, str(real), "-c", "import json; print(json.dumps([1]))")
    assert out == "[1]\n"


def test_the_prepared_libc_is_the_one_loaded(prepared_libc: Path) -> None:
    result = run([LOADER, "--list", "--library-path", str(prepared_libc.parent), "/bin/ls"])
    assert f"libc.so.6 => {prepared_libc}" in result.stdout


def test_check_prepared_libc(prepared_libc: Path) -> None:
    result = ulp("check", str(prepared_libc), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["patchable_functions"] == 0
    assert report["ifuncs"] > 40
    assert "__libc_start_main" in report["untracked"]
    assert "vfork" in report["untracked"]
    assert len(report["tracked_not_patchable"]) > 1500
    # Found again from the code, as the rewriter found them; IFUNCs are never leaves.
    assert len(report["leaves"]) > 500 and "__errno_location" in report["leaves"]
    assert "memcpy" not in report["leaves"] and "malloc" not in report["leaves"]
    assert report["redirected_sites"] > 200


def test_elflint_nothing_new(prepared_libc: Path, libc_copy: Path) -> None:
    def lint(p: Path) -> set[str]:
        return set(run(["eu-elflint", "--gnu-ld", str(p)]).stdout.replace(str(p), "F").splitlines())

    assert lint(prepared_libc) <= lint(libc_copy)
    assert ElfFile.load(prepared_libc).build_id == ElfFile.load(libc_copy).build_id
