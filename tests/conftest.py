"""Shared fixtures: the sample libraries built once per session, raw and prepared."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sample_libs import samples  # noqa: E402
from ulp_build.prepare.rewrite import rewrite  # noqa: E402


@dataclass(frozen=True)
class BuiltSample:
    sample: samples.Sample
    raw: Path  # the library as gcc built it
    prepared: Path  # the same after `rewrite -o`
    linked: Path  # test program linked against lib<name>.so (found via LD_LIBRARY_PATH)
    dlopened: Path  # test program that dlopen()s argv[1]

    def run_linked(self, library: Path) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, LD_LIBRARY_PATH=str(library.parent))
        return run([str(self.linked)], env=env)

    def run_dlopen(self, library: Path) -> subprocess.CompletedProcess[str]:
        return run([str(self.dlopened), str(library)])


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("timeout", 120)
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]


def ulp(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """The command line, exactly as a user runs it."""
    return run([sys.executable, "-m", "ulp_build", *args], **kwargs)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuiltSample]:
    root = tmp_path_factory.mktemp("samples")
    out = {}
    for name, sample in samples.load().items():
        raw = samples.build_library(sample, root / "raw" / name)
        prepared = root / "prepared" / name / sample.library_name
        prepared.parent.mkdir(parents=True)
        # Every exported function tracked: these samples test the trampolines and the tracking
        # themselves, with small functions most of which are leaves (tests/test_leaves.py).
        rewrite(raw, prepared, track_leaves=True)
        linked = samples.build_test(sample, root / "bin", raw.parent, dlopen=False)
        dlopened = samples.build_test(sample, root / "bin", raw.parent, dlopen=True)
        out[name] = BuiltSample(sample, raw, prepared, linked, dlopened)
    return out


@pytest.fixture(scope="session")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return samples.build_probe(tmp_path_factory.mktemp("probe"))


@pytest.fixture(scope="session")
def zlib_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Debian's zlib source, fetched fresh for this session (no cache outside the run)."""
    from sample_libs import zlib

    return zlib.source(tmp_path_factory.mktemp("zlib-source"))


@pytest.fixture(scope="session")
def libc_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the system's libc.so.6 (not built with padding: trampolines only)."""
    out = tmp_path_factory.mktemp("libc") / "libc.so.6"
    out.write_bytes(Path(system_libc()).read_bytes())
    return out


def system_libc() -> str:
    result = run(["gcc", "-print-file-name=libc.so.6"])
    path = result.stdout.strip()
    if not os.path.isabs(path):
        path = "/lib/x86_64-linux-gnu/libc.so.6"
    return os.path.realpath(path)


@pytest.fixture(scope="session")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """libulp.so built from this source tree with the project's own Meson build, and named
    in ULP_RUNTIME so that `ulp run` and the tests use it."""
    path = samples.build_runtime(tmp_path_factory.mktemp("meson-build"))
    os.environ["ULP_RUNTIME"] = str(path)
    return path


@pytest.fixture(scope="session")
def tree(tmp_path_factory: pytest.TempPathFactory, runtime: Path) -> Path:
    """The prepared libbasic.so and every sample patch, packed."""
    from ulp_build.patch.packer import pack

    build = samples.build_patch_tree(tmp_path_factory.mktemp("patch-tree"))
    for name in samples.patch_names():
        pack(build / "patches" / name / "patch.toml")
    return build


@pytest.fixture(scope="session")
def patchee(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/programs/patchee.c: a process that answers commands, to patch while it runs."""
    out = tmp_path_factory.mktemp("patchee") / "patchee"
    source = REPO / "tests" / "programs" / "patchee.c"
    result = run(["gcc", "-O2", "-g", "-pthread", "-o", str(out), str(source)])
    assert result.returncode == 0, result.stderr
    return out
