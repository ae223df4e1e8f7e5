"""tools/build-glibc without the ten-minute build: its refusal when glibc's build tools are
missing, and a complete cache entry used as it is (the report and the `run` command printed)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from conftest import run, system_libc, ulp

SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "build-glibc"


def _script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("build_glibc", str(SCRIPT))
    spec = importlib.util.spec_from_loader("build_glibc", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_missing_tools_named_in_one_line(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"))
    result = run([sys.executable, str(SCRIPT)], env=env)
    assert result.returncode == 1
    assert result.stderr == (
        "tools/build-glibc: gawk, bison, make, gcc not found: apt-get install gawk bison make gcc\n"
    )
    assert not (tmp_path / "cache").exists()


def test_complete_cache_entry_is_used(tmp_path: Path) -> None:
    script = _script()
    versions = script.debian.versions("glibc")
    assert versions, "apt-cache showsrc glibc lists nothing: run tools/install-deps"
    entry = tmp_path / "ulp_build" / f"glibc-{versions[0]}-{script.flags_hash()}"
    libdir = entry / "prefix" / "lib64"  # where glibc installs with --prefix=/usr
    libdir.mkdir(parents=True)
    libm = Path(system_libc()).parent / "libm.so.6"
    for lib, name in ((Path(system_libc()), "libc.so.6"), (libm, "libm.so.6")):
        # As a build leaves them: the library as built beside the prepared one.
        (libdir / f"{name}.unprepared").write_bytes(lib.read_bytes())
        prepared = ulp("rewrite", str(lib), "-o", str(libdir / name))
        assert prepared.returncode == 0, prepared.stderr
    (entry / "build-seconds").write_text("600\n")
    (entry / "complete").write_text("flags\n")
    result = run([sys.executable, str(SCRIPT)], env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"cached: {entry}"
    assert f"prefix: {entry / 'prefix'}" in lines
    assert "build seconds: 600" in lines
    assert any(line.startswith("libc.so.6: ") and " patchable, " in line for line in lines)
    assert any(line.startswith("libm.so.6: ") for line in lines)
    assert lines[-1] == f"run a program on it: {entry / 'prefix' / 'run'} PROGRAM [ARGS]"
