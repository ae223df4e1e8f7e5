"""`ulp diff` of a C++ library whose changed function runs destructors as an exception passes
through it: the patch carries the function's exception-handling table (its LSDA) with its code,
and an exception thrown below the patched function, in a running program, runs the patched
code's landing pad and reaches the program's `catch`. A function that catches is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run, ulp
from live import running, trigger_cli

from ulp_build.elf import ElfFile, lsda
from ulp_build.elf.eh_frame import EhFrame
from ulp_build.prepare.layout import CFLAGS

PROGRAMS = Path(__file__).parent / "programs" / "diff_cleanup"
SOURCE = PROGRAMS / "cleanup.cc"
FLAGS = [*CFLAGS, "-O2", "-g", "-fPIC", "-ffunction-sections", "-fdata-sections", "-Wall"]


def build(text: str, out: Path) -> Path:
    """libcleanup.so from `text`, linked with --emit-relocs."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "cleanup.cc").write_text(text)
    lib = out / "libcleanup.so"
    built = run(["g++", *FLAGS, "-shared", "-Wl,--emit-relocs", "-o", str(lib),
                 str(out / "cleanup.cc")], cwd=out)  # fmt: skip
    assert built.returncode == 0, built.stderr
    return lib


def fixed(before: str, after: str) -> str:
    text = SOURCE.read_text()
    assert text.count(before) == 1, before
    return text.replace(before, after)


@pytest.fixture(scope="module")
def old(tmp_path_factory: pytest.TempPathFactory, runtime: Path) -> tuple[Path, Path]:
    """The library as it runs (prepared) and the program using it."""
    where = tmp_path_factory.mktemp("diff-cleanup")
    lib = build(SOURCE.read_text(), where)
    assert ulp("rewrite", str(lib)).returncode == 0
    program = where / "cleanup_main"
    linked = run(["g++", "-O2", "-o", str(program), str(PROGRAMS / "cleanup_main.cc"), str(lib),
                  f"-Wl,-rpath,{where}"])  # fmt: skip
    assert linked.returncode == 0, linked.stderr
    return lib, program


def exception_table(lib: Path, name: str) -> bytes:
    """The exception-handling table of the function `name` of `lib`."""
    elf = ElfFile.load(lib)
    entry = next(s.value for s in elf.symtab_symbols if s.name == name)
    fde = EhFrame(elf).at(entry)
    assert fde is not None and fde.lsda, name
    sec = next(s for s in elf.sections if s.name == ".gcc_except_table")
    table = lsda.read(elf.read(fde.lsda, sec.addr + sec.size - fde.lsda))
    assert table is not None and table.call_sites, name
    return table.data


def test_cleanup_runs_in_the_patched_function(
    old: tuple[Path, Path], runtime: Path, tmp_path: Path
) -> None:
    lib, program = old
    new = build(fixed("digits.size()) + 0;", "digits.size()) + 100;"), tmp_path / "new")
    made = ulp("diff", str(lib), str(new), "-o", str(tmp_path / "patch"))
    assert made.returncode == 0, made.stderr
    # Its landing pads' code went out of line with it (.cold), carried with it.
    assert [x for x in made.stdout.splitlines() if x.startswith("changed:")] == [
        "changed: cleanup.cc:_Z12cleanup_worki.cold",
        "changed: _Z12cleanup_worki",
    ]
    patch = tmp_path / "patch" / "patch.so"
    # The same table, which holds only offsets from the function's start.
    assert exception_table(patch, "ulp_diff__Z12cleanup_worki") == exception_table(
        new, "_Z12cleanup_worki"
    )
    with running(program, runtime) as p:
        assert p.ask("work 42") == "2"
        assert p.ask("work -1") == "negative: -1, destroyed 2"
        applied = trigger_cli("-p", str(p.pid), str(tmp_path / "patch" / "fix.ulp"))
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert p.ask("work 42") == "102"
        # Thrown below the patched code, through its landing pad (the guard's destructor).
        assert p.ask("work -7") == "negative: -7, destroyed 4"
        assert p.ask("caught -3") == "-1"
        reverted = trigger_cli("-p", str(p.pid), str(tmp_path / "patch" / "fix.rev.ulp"))
        assert reverted.returncode == 0, reverted.stdout + reverted.stderr
        assert p.ask("work 42") == "2"
        assert p.ask("work -5") == "negative: -5, destroyed 6"


def test_function_that_catches_is_refused(old: tuple[Path, Path], tmp_path: Path) -> None:
    """Its table has a type table: typeinfo objects of the running program, not carried."""
    lib, _program = old
    new = build(fixed("return x + 0;", "return x + 1;"), tmp_path / "new")
    result = ulp("diff", str(lib), str(new), "-o", str(tmp_path / "patch"))
    assert result.returncode == 1
    why = "its exception-handling table cannot be carried (catches exceptions or has exception"
    assert result.stderr.splitlines() == [
        f"ulp: cleanup.cc:_Z14cleanup_caughti.cold: {why} specifications)",
        f"ulp: _Z14cleanup_caughti: {why} specifications)",
    ]
    assert not (tmp_path / "patch").exists()
