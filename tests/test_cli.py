"""The command line surface: help, cflags, JSON output."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
from conftest import BuiltSample, run, ulp

from ulp_build.prepare.layout import CFLAGS


@pytest.mark.parametrize("command", ["rewrite", "check", "cflags"])
def test_help(command: str) -> None:
    result = ulp(command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: ulp {command}")


def test_cflags_work_with_gcc(tmp_path: Path) -> None:
    result = ulp("cflags")
    assert result.returncode == 0
    flags = shlex.split(result.stdout)
    assert flags == list(CFLAGS)
    assert json.loads(ulp("cflags", "--json").stdout) == flags
    src = tmp_path / "f.c"
    src.write_text("int f(int x) { return x; }\n")
    built = run(["gcc", *flags, "-O2", "-fPIC", "-shared", str(src), "-o", str(tmp_path / "f.so")])
    assert built.returncode == 0, built.stderr


def test_rewrite_json(built: dict[str, BuiltSample], tmp_path: Path) -> None:
    out = tmp_path / "libabi.so"
    result = ulp("rewrite", str(built["abi"].raw), "-o", str(out), "--track-leaves", "--json")
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert data["output"] == str(out)
    assert data["trampolines"] == 7 and data["normalized"] == 7 and not data["already_prepared"]
    again = json.loads(ulp("rewrite", str(out), "--json").stdout)
    assert again["already_prepared"]


def test_console_script_is_installed() -> None:
    import shutil

    assert shutil.which("ulp"), "pip install . provides the `ulp` console script"
    assert run(["ulp", "cflags"]).stdout.split() == list(CFLAGS)


_EVERYTHING = ("ulp_build.live", "ulp_build.elf", "ulp_build.prepare")
# Standard modules that cost milliseconds each to import: loaded by the commands that use them.
_HEAVY_STDLIB = ("typing", "dataclasses", "inspect", "json", "pathlib", "concurrent", "ctypes")


@pytest.mark.parametrize(
    ("argv", "unloaded"),
    [
        (["--version"], (*_EVERYTHING, *_HEAVY_STDLIB)),
        (["--help"], (*_EVERYTHING, *_HEAVY_STDLIB)),
        (["cflags"], ("ulp_build.live",)),
    ],
)
def test_quick_commands_load_only_what_they_use(argv: list[str], unloaded: tuple[str]) -> None:
    """Start-up is imports: the trigger and ptrace (and for --version and --help, everything)
    stay unloaded for commands that do not need them (every build step runs `ulp`)."""
    result = run([sys.executable, "-X", "importtime", "-m", "ulp_build", *argv])
    assert result.returncode == 0, result.stderr
    loaded = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "ulp_build.cli" in loaded  # the control: the listing is read right
    assert not {m for m in loaded if m.startswith(unloaded)}


def test_main_leaves_its_callers_heap_to_the_collector(capsys: pytest.CaptureFixture[str]) -> None:
    """Only the `ulp` command, which exits right after, freezes what it loaded: a program that
    calls `main` and goes on keeps collecting its cycles. The control: `console` freezes."""
    import gc

    from ulp_build import cli

    gc.unfreeze()
    try:
        assert cli.main(["cflags"]) == 0
        assert gc.get_freeze_count() == 0
        assert cli.console(["cflags"]) == 0
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    assert capsys.readouterr().out.split() == [*CFLAGS, *CFLAGS]
