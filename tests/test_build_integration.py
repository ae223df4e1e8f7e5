"""Meson, meson-python and setuptools builds that ship prepared libraries and modules, and the
CI gate, each run for real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, run, ulp

from ulp_build.elf import ElfFile
from ulp_build.prepare.check import check

EXAMPLES = REPO / "examples"


def _copy(example: str, dest: Path) -> Path:
    """The example as a user would have it: symlinks to the subproject resolved."""
    out = dest / example
    shutil.copytree(EXAMPLES / example, out, symlinks=False)
    return out


def _prepared(path: Path) -> bool:
    return check(ElfFile.load(path)).usable


def _pip(*args: str, cwd: Path, env: dict[str, str] | None = None):
    result = run(
        [sys.executable, "-m", "pip", *args], cwd=cwd, env=env or dict(os.environ), timeout=900
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _wheel(
    source: Path | str, tmp_path: Path, *options: str, env: dict[str, str] | None = None
) -> Path:
    """`pip wheel` of `source` (with --no-deps and `options`), unpacked: its directory."""
    dist = tmp_path / "dist"
    _pip("wheel", *options, "--no-deps", "-w", str(dist), str(source), cwd=tmp_path, env=env)
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp_path / "wheel")
    return tmp_path / "wheel"


def test_meson_c_library(tmp_path: Path) -> None:
    project = _copy("meson-c-library", tmp_path)
    build = project / "build"
    for cmd in (
        ["meson", "setup", str(build)],
        ["meson", "compile", "-C", str(build)],
        ["meson", "test", "-C", str(build)],
        # --strip strips only what a compiler linked, never the prepared custom_target output.
        ["meson", "install", "-C", str(build), "--strip", "--destdir", str(tmp_path / "dest")],
    ):
        result = run(cmd, cwd=project, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
    assert _prepared(build / "libgreeter.so")
    assert not _prepared(build / "raw" / "libgreeter.so")
    # The test ran against the prepared library.
    ldd = run(["ldd", str(build / "greeter_test")]).stdout
    assert f"libgreeter.so => {build}/libgreeter.so" in ldd
    (installed,) = (tmp_path / "dest").rglob("libgreeter.so*")
    assert installed.parent.name in ("lib", "x86_64-linux-gnu", "lib64")
    assert _prepared(installed)


def test_meson_python_wheel(tmp_path: Path) -> None:
    project = _copy("meson-python-extension", tmp_path)
    unpacked = _wheel(project, tmp_path, "--no-build-isolation")
    (module,) = unpacked.rglob("_shout*.so")
    assert _prepared(module)
    assert list(unpacked.rglob("_shout_raw*")) == []
    out = run(
        [sys.executable, "-c", "import shouter; print(shouter.shout('hey'))"],
        env=dict(os.environ, PYTHONPATH=str(unpacked)),
        cwd=tmp_path,
    )
    assert out.stdout == "hey!\n", out.stderr


def _greeting_wheel_works(tmp_path: Path, project: Path, *extra: str) -> None:
    unpacked = _wheel(project, tmp_path, *extra)
    (module,) = unpacked.rglob("_greet*.so")
    assert _prepared(module)
    out = run(
        [
            sys.executable,
            "-c",
            "import greeting; print(greeting.greet('ulp'), greeting.shout('abc'))",
        ],
        env=dict(os.environ, PYTHONPATH=str(unpacked)),
        cwd=tmp_path,
    )
    assert out.stdout == "hello, ulp ABC\n", out.stderr


def test_setuptools_cmdclass(tmp_path: Path) -> None:
    project = _copy("setuptools-extension", tmp_path)
    _greeting_wheel_works(tmp_path, project, "--no-build-isolation")


def _without_cmdclass(project: Path) -> None:
    """The example's setup.py as a project that never heard of ulp_build."""
    setup = project / "setup.py"
    text = setup.read_text().replace("import ulp_build.integrations.setuptools\n", "")
    setup.write_text("\n".join(line for line in text.splitlines() if "cmdclass" not in line))
    assert "ulp_build" not in setup.read_text()


def test_setuptools_pyproject_table(tmp_path: Path) -> None:
    project = _copy("setuptools-extension", tmp_path)
    _without_cmdclass(project)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n[tool.ulp_build]\nprepare-extensions = true\n")
    _greeting_wheel_works(tmp_path, project, "--no-build-isolation")


def test_setuptools_without_switch_builds_plain(tmp_path: Path) -> None:
    """The entry point is installed everywhere ulp_build is: it must do nothing unasked."""
    project = _copy("setuptools-extension", tmp_path)
    _without_cmdclass(project)
    env = {k: v for k, v in os.environ.items() if k != "ULP_BUILD_PREPARE"}
    unpacked = _wheel(project, tmp_path, "--no-build-isolation", env=env)
    (module,) = unpacked.rglob("_greet*.so")
    assert ElfFile.load(module).section(".ulp") is None


def test_setuptools_editable_and_rebuild(tmp_path: Path) -> None:
    project = _copy("setuptools-extension", tmp_path)
    built = []
    for _ in range(3):  # the first builds, the others find everything up to date
        _pip(
            "install",
            "--no-build-isolation",
            "--no-deps",
            "--prefix",
            str(tmp_path / "prefix"),
            "-e",
            ".",
            cwd=project,
        )
        (module,) = (project / "src" / "greeting").glob("_greet*.so")
        assert _prepared(module)
        built.append(module.read_bytes())
    assert built[1] == built[2]


@pytest.fixture(scope="module")
def ulp_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This project as a wheel, for isolated builds to find."""
    out = tmp_path_factory.mktemp("ulp-wheel")
    _pip("wheel", "--no-deps", "-w", str(out), str(REPO), cwd=out)
    return out


def test_setuptools_isolated_build(tmp_path: Path, ulp_wheel: Path) -> None:
    project = _copy("setuptools-extension", tmp_path)
    _greeting_wheel_works(tmp_path, project, "--find-links", str(ulp_wheel))


def test_third_party_sdist_with_the_environment_switch(tmp_path: Path, runtime: Path) -> None:
    """MarkupSafe, built unchanged from its sdist, passes its own tests with the prepared
    _speedups module, and its static `escape` is live-patched in a running Python."""
    sdist_dir = tmp_path / "sdist"
    _pip(
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "-d",
        str(sdist_dir),
        "markupsafe==2.1.5",
        cwd=tmp_path,
    )
    (sdist,) = sdist_dir.glob("*.tar.gz")
    env = dict(os.environ, ULP_BUILD_PREPARE="1")
    unpacked = _wheel(sdist, tmp_path, "--no-build-isolation", env=env)
    (module,) = unpacked.rglob("_speedups*.so")
    assert _prepared(module)
    (tmp_path / "src").mkdir()
    assert run(["tar", "xzf", str(sdist), "-C", str(tmp_path / "src")]).returncode == 0
    (tests,) = (tmp_path / "src").glob("MarkupSafe-*/tests")
    result = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
        env=dict(os.environ, PYTHONPATH=str(unpacked)),
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout
    where = run(
        [sys.executable, "-c", "import markupsafe._speedups as s; print(s.__file__)"],
        env=dict(os.environ, PYTHONPATH=str(unpacked)),
        cwd=tmp_path,
    )
    assert where.stdout.strip() == str(module)
    _live_patch_markupsafe(tmp_path, module, unpacked, runtime)


MARKUPSAFE_PATCH = """
#include <Python.h>
/* The original escape(), past its universe checker: filled by the runtime. */
PyObject *(*escape_original)(PyObject *, PyObject *);

PyObject *escape_marked(PyObject *self, PyObject *text)
{
    PyObject *escaped = escape_original(self, text);
    if (!escaped)
        return NULL;
    PyObject *out = PyUnicode_FromFormat("%S [patched]", escaped);
    Py_DECREF(escaped);
    return out;
}
"""


def _live_patch_markupsafe(tmp: Path, module: Path, unpacked: Path, runtime: Path) -> None:
    work = tmp / "live"
    work.mkdir()
    (work / "patch.c").write_text(MARKUPSAFE_PATCH)
    include = sysconfig.get_paths()["include"]
    cc = ["gcc", "-O2", "-fPIC", "-shared", f"-I{include}", "-o", "patch.so", "patch.c"]
    assert run(cc, cwd=work).returncode == 0
    (work / "patch.toml").write_text(
        f"target = {json.dumps(str(module))}\nobject = 'patch.so'\nid = 'markupsafe-marked'\n"
        "[replace]\nescape = 'escape_marked'\n[references]\nescape = 'escape_original'\n"
    )
    assert ulp("pack", str(work / "patch.toml")).returncode == 0
    loop = "import sys, markupsafe\nprint('ready', flush=True)\n" + (
        "for line in sys.stdin: print(markupsafe.escape(line.strip()), flush=True)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(unpacked), LD_PRELOAD=str(runtime))
    proc = subprocess.Popen(
        [sys.executable, "-c", loop],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp,
    )
    assert proc.stdin is not None and proc.stdout is not None

    def escape(text: str) -> str:
        proc.stdin.write(text + "\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        return proc.stdout.readline().strip()  # type: ignore[union-attr]

    try:
        assert proc.stdout.readline().strip() == "ready"
        assert escape("<a>") == "&lt;a&gt;"
        result = ulp("trigger", "-p", str(proc.pid), str(work / "patch.ulp"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert escape("<a>") == "&lt;a&gt; [patched]"
        assert ulp("trigger", "-p", str(proc.pid), str(work / "patch.rev.ulp")).returncode == 0
        assert escape("<a>") == "&lt;a&gt;"
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0


def test_ci_gate(tmp_path: Path, libc_copy: Path) -> None:
    plain = tmp_path / "libc.so.6"
    assert ulp("rewrite", str(libc_copy), "-o", str(plain)).returncode == 0
    lenient = ulp("check", "--json", str(plain))
    assert lenient.returncode == 0
    assert json.loads(lenient.stdout)["tracked_not_patchable"]
    assert ulp("check", "--strict", "--json", str(plain)).returncode == 1


def test_ci_example_script_on_zlib(tmp_path: Path, zlib_source: Path) -> None:
    tree = tmp_path / "zlib"
    shutil.copytree(zlib_source, tree)
    result = run(["sh", str(REPO / "docs" / "ci" / "prepare-and-test.sh"), str(tree)], timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "zlib shared test OK" in result.stdout
    (report,) = tree.glob("*.ulp-check.json")
    data = json.loads(report.read_text())
    assert data["usable"] and data["tracked_not_patchable"] == []
