"""`ulp diff` of a C++ library, with what g++ makes of C++ that gcc makes of little C: a changed
function that runs destructors as an exception passes through it carries its exception-handling
table (its LSDA), so that an exception thrown below the patched function, in a running program,
runs the patched code's landing pad and reaches the program's `catch` (a function that catches
is refused); a constructor with two names is replaced once; a string built from a literal that
the code reaches from its end, which the linker has merged another literal into, is copied
whole; and a switch's table that only got another number is the same table."""

from __future__ import annotations

import re
from pathlib import Path

import diff_builds
import pytest
from conftest import run, ulp
from live import running, triggered

from ulp_build.elf import ElfFile, lsda
from ulp_build.elf.eh_frame import EhFrame

PROGRAMS = Path(__file__).parent / "programs" / "diff_cxx"
SOURCE = PROGRAMS / "diffcxx.cc"


def build(text: str, out: Path) -> Path:
    return diff_builds.build("g++", SOURCE, text, out)


def fixed(before: str, after: str) -> str:
    text = SOURCE.read_text()
    assert text.count(before) == 1, before
    return text.replace(before, after)


@pytest.fixture(scope="module")
def old(tmp_path_factory: pytest.TempPathFactory, runtime: Path) -> tuple[Path, Path]:
    """The library as it runs (prepared) and the program using it."""
    driver = PROGRAMS / "diffcxx_main.cc"
    return diff_builds.running_build("g++", SOURCE, driver, tmp_path_factory.mktemp("diff-cxx"))


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
    made = diff_builds.diffed(lib, new, tmp_path / "patch")
    # Its landing pads' code went out of line with it (.cold), carried with it.
    assert diff_builds.changed(made) == [
        "changed: diffcxx.cc:_Z12cleanup_worki.cold",
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
        triggered(p.pid, tmp_path / "patch" / "fix.ulp")
        assert p.ask("work 42") == "102"
        # Thrown below the patched code, through its landing pad (the guard's destructor).
        assert p.ask("work -7") == "negative: -7, destroyed 4"
        assert p.ask("caught -3") == "-1"
        triggered(p.pid, tmp_path / "patch" / "fix.rev.ulp")
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
        f"ulp: diffcxx.cc:_Z14cleanup_caughti.cold: {why} specifications)",
        f"ulp: _Z14cleanup_caughti: {why} specifications)",
    ]
    assert not (tmp_path / "patch").exists()


def test_string_reached_from_its_end_is_copied_whole(
    old: tuple[Path, Path], runtime: Path, tmp_path: Path
) -> None:
    """`.LC0+8` is the literal "tagged: " (its end), not the data after it; and the literal's
    region, which the linker cut short by merging ": " into its tail, runs to its terminator.
    Read at the field's address instead, the other two functions built from literals compared
    changed too, and the patched code read its string from before the copied data."""
    lib, program = old
    source = fixed('"tagged: ") + m;', '"tagged: ") + (m + 1);')
    new = build(source, tmp_path / "new")
    code = run(["objdump", "-dr", "--disassemble=_Z14cleanup_taggedB5cxx11PKc", str(new)]).stdout
    assert re.search(r"R_X86_64_PC32\s+\.LC\d+\+0x4$", code, re.M), code  # 8 - 4
    made = diff_builds.diffed(lib, new, tmp_path / "patch")
    assert diff_builds.changed(made) == [
        "changed: diffcxx.cc:_Z14cleanup_taggedB5cxx11PKc.cold",
        "changed: _Z14cleanup_taggedB5cxx11PKc",
    ]
    with running(program, runtime) as p:
        assert p.ask("tagged word") == "tagged: word"
        triggered(p.pid, tmp_path / "patch" / "fix.ulp")
        assert p.ask("tagged word") == "tagged: ord"
        assert p.ask("separator") == "[: ]"


def test_constructor_with_two_names_is_replaced_once(
    old: tuple[Path, Path], runtime: Path, tmp_path: Path
) -> None:
    """C1 and C2 are one function: both compare changed, and `ulp pack` refuses to replace one
    function under two names."""
    lib, program = old
    symbols = {s.name: s.value for s in ElfFile.load(lib).symtab_symbols}
    assert symbols["_ZN7CountedC1Ei"] == symbols["_ZN7CountedC2Ei"]
    new = build(fixed("n(x + 0)", "n(x + 1)"), tmp_path / "new")
    made = diff_builds.diffed(lib, new, tmp_path / "patch")
    assert diff_builds.changed(made) == [
        "changed: _ZN7CountedC1Ei",
        "changed: _ZN7CountedC2Ei",
    ]
    toml = (tmp_path / "patch" / "fix.toml").read_text()
    replaced = toml[toml.index("[replace]") :].splitlines()[1:]
    assert [x for x in replaced if x] == ['"_ZN7CountedC1Ei" = "ulp_diff__ZN7CountedC1Ei"'], toml
    with running(program, runtime) as p:
        assert p.ask("counted 5") == "5"
        triggered(p.pid, tmp_path / "patch" / "fix.ulp")
        assert p.ask("counted 5") == "6"


def test_renumbered_switch_table_is_the_same(
    old: tuple[Path, Path], runtime: Path, tmp_path: Path
) -> None:
    """The fix instantiates more templates, so gcc numbers cleanup_kind's table anew; the
    table and its reader are the same, and only the fixed function is carried."""
    lib, program = old
    new = build(
        fixed("std::to_string(x).size());", 'std::to_string(x).size()) + std::stoi("1");'),
        tmp_path / "new",
    )

    def tables(path: Path) -> list[str]:
        return [s.name for s in ElfFile.load(path).symtab_symbols if s.name.startswith("CSWTCH")]

    assert len(tables(lib)) == 1 and tables(lib) != tables(new)
    made = diff_builds.diffed(lib, new, tmp_path / "patch")
    changed = diff_builds.changed(made)
    assert changed == ["changed: _Z14cleanup_digitsi"], made.stdout
    assert "new data:" not in made.stdout  # the renumbered table is not in the patch
    with running(program, runtime) as p:
        assert [p.ask("kind 2"), p.ask("digits 123")] == ["37", "3"]
        triggered(p.pid, tmp_path / "patch" / "fix.ulp")
        assert [p.ask("kind 2"), p.ask("digits 123")] == ["37", "4"]
