"""A real security fix made into a live patch by `ulp diff` alone: Debian 12's expat 2.5.0 built
as fetched (CVE-2024-45490 fixed: XML_ParseBuffer rejects a negative length) and with that one
Debian patch reversed, OLD prepared; the patch applied to a running program that still has the
unfixed library, and reverted; and expat's own test suite run in a process that the installed
patch patched as it started (docs/diff.md, "A real fix: expat's CVE-2024-45490")."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import diff_builds
import pytest
from conftest import run, ulp
from live import PROGRAMS, running, triggered

from sample_libs import expat
from ulp_build.elf import STT_FUNC, ElfFile, Symbol
from ulp_build.patch.library_build import LibraryBuild

DRIVER = PROGRAMS / "expat" / "expat_driver.c"
PROBE = PROGRAMS / "expat" / "fix_probe.c"
# XML_ParseBuffer(parser, -1, 0) on a fresh parser: "STATUS ERROR_CODE". Unfixed, the negative
# length is taken (XML_STATUS_OK, XML_ERROR_NONE); fixed, it is refused (XML_STATUS_ERROR,
# XML_ERROR_INVALID_ARGUMENT).
UNFIXED, FIXED = "1 0", "0 41"
PARSED = "ok 3 3 x<y>"  # elements, attributes, text of the driver's document
# The fix adds six lines to xmlparse.c: every later function that passes __LINE__ (assert's
# message, the entity and amplification accounting's debug output) passes a number six higher.
LINES_ADDED = 6
LINE_SHIFTED = [
    "xmlparse.c:entityTrackingReportStats",
    "xmlparse.c:accountingGetCurrentAmplification.part.0",
    "xmlparse.c:processEntity",
    "XML_StopParser",
    "XML_GetParsingStatus",
    "xmlparse.c:accountingDiffTolerated.part.0",
    "xmlparse.c:processXmlDecl",
    "xmlparse.c:doIgnoreSection",
    "xmlparse.c:epilogProcessor",
    "xmlparse.c:storeEntityValue",
    "xmlparse.c:entityValueInitProcessor",
    "xmlparse.c:appendAttributeValue",
    "xmlparse.c:storeAttributeValue",
    "xmlparse.c:doCdataSection",
    "xmlparse.c:doContent",
    "xmlparse.c:doProlog",
    "xmlparse.c:externalParEntProcessor",
    "xmlparse.c:internalEntityProcessor",
    "xmlparse.c:externalEntityInitProcessor2",
]


@dataclass(frozen=True)
class Builds:
    old: Path  # libexpat as it runs: unfixed, prepared
    new: Path  # as fetched: fixed
    old_driver: Path
    new_driver: Path
    patch: Path  # ulp diff's DIR
    reported: list[str]  # ulp diff's output lines


def _driver(lib: Path, tree: Path) -> Path:
    out = tree / "expat_driver"
    built = run(["gcc", "-O2", "-Wall", "-Werror", f"-I{tree / 'src' / 'expat' / 'lib'}",
                 "-o", str(out), str(DRIVER), str(lib), f"-Wl,-rpath,{lib.parent}"])  # fmt: skip
    assert built.returncode == 0, built.stderr
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return expat.source(tmp_path_factory.mktemp("expat-source"))


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory, source: Path) -> Builds:
    where = tmp_path_factory.mktemp("expat")
    old = expat.build(source, where / "old", fixed=False)
    new = expat.build(source, where / "new", fixed=True)
    rewritten = ulp("rewrite", str(old))
    assert rewritten.returncode == 0, rewritten.stderr
    made = diff_builds.diffed(old, new, where / "patch")
    # The packer's one warning (DWARF shows a split-off part inlined into a caller whose code
    # did not change) names the file as it is now, not the directory it was made in.
    assert made.stderr.startswith(f"warning: {where / 'patch' / 'fix.toml'}:"), made.stderr
    return Builds(old, new, _driver(old, where / "old"), _driver(new, where / "new"),
                  where / "patch", made.stdout.splitlines())  # fmt: skip


def _answers(driver: Path) -> list[str]:
    result = run([str(driver)], input="negative\nparse\nquit\n")
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_builds_behave_as_fixed_and_unfixed(builds: Builds) -> None:
    """The control: the library built with the fix refuses the negative length, the one
    without it (prepared) takes it; both parse a document the same."""
    assert _answers(builds.new_driver) == ["ready", FIXED, PARSED]
    assert _answers(builds.old_driver) == ["ready", UNFIXED, PARSED]


def test_diff_finds_the_fix_and_the_shifted_line_numbers(builds: Builds) -> None:
    """XML_ParseBuffer changed, and every function after it in xmlparse.c that passes
    __LINE__; nothing else (no data, nothing new or removed), and the others differ only by
    that number."""
    assert [x for x in builds.reported if not x.startswith("/")] == [
        f"changed: {k}" for k in [*LINE_SHIFTED[:3], "XML_ParseBuffer", *LINE_SHIFTED[3:]]
    ]
    old = LibraryBuild(ElfFile.load(builds.old))
    new = LibraryBuild(ElfFile.load(builds.new))
    for key in LINE_SHIFTED:
        before, after = old.function_shape(old.items[key]), new.function_shape(new.items[key])
        assert before[1] == after[1] and len(before[0]) == len(after[0]), key
        item = new.items[key]
        shifts = set()
        for start, end in new.instruction_ends(item):
            a = before[0][start - item.start : end - item.start]
            b = after[0][start - item.start : end - item.start]
            if a != b:
                assert a[:-4] == b[:-4], key  # only the trailing 32-bit immediate differs
                shifts.add(int.from_bytes(b[-4:], "little") - int.from_bytes(a[-4:], "little"))
        assert shifts == {LINES_ADDED}, key
    replaced = (builds.patch / "fix.toml").read_text()
    assert '"XML_ParseBuffer" = "ulp_diff_XML_ParseBuffer"' in replaced


def test_fix_applied_to_a_running_program_and_reverted(builds: Builds, runtime: Path) -> None:
    with running(builds.old_driver, runtime) as p:
        assert [p.ask("negative"), p.ask("parse")] == [UNFIXED, PARSED]
        triggered(p.pid, builds.patch / "fix.ulp")
        assert [p.ask("negative"), p.ask("parse")] == [FIXED, PARSED]
        triggered(p.pid, builds.patch / "fix.rev.ulp")
        assert [p.ask("negative"), p.ask("parse")] == [UNFIXED, PARSED]


@dataclass(frozen=True)
class SuiteBuilds:
    """The same pair built with every non-static symbol exported, and expat's test suite
    linked against each library."""

    old: Path  # prepared
    new: Path
    old_suite: Path
    new_suite: Path
    patch: Path  # ulp diff's DIR
    reported: list[str]
    probe: Path  # fix_probe.c, built


@pytest.fixture(scope="module")
def suite_builds(tmp_path_factory: pytest.TempPathFactory, source: Path) -> SuiteBuilds:
    where = tmp_path_factory.mktemp("expat-exported")
    old = expat.build(source, where / "old", fixed=False, internals_exported=True)
    new = expat.build(source, where / "new", fixed=True, internals_exported=True)
    rewritten = ulp("rewrite", str(old))
    assert rewritten.returncode == 0, rewritten.stderr
    made = diff_builds.diffed(old, new, where / "patch")
    assert made.stderr.startswith(f"warning: {where / 'patch' / 'fix.toml'}:"), made.stderr
    probe = where / "fix_probe.so"
    built = run(["gcc", "-O2", "-Wall", "-Werror", "-fPIC", "-shared",
                 f"-I{where / 'new' / 'src' / 'expat' / 'lib'}", "-o", str(probe), str(PROBE),
                 str(new)])  # fmt: skip
    assert built.returncode == 0, built.stderr
    return SuiteBuilds(old, new, expat.suite(old), expat.suite(new), where / "patch",
                       made.stdout.splitlines(), probe)  # fmt: skip


def _functions(symbols: list[Symbol]) -> list[Symbol]:
    return [s for s in symbols if s.defined and s.type == STT_FUNC]


def _exported(lib: Path) -> set[str]:
    return {s.name for s in ElfFile.load(lib).dynamic_symbols if s.defined}


def test_exported_build_differs_in_exports_and_diffs_the_same(
    builds: Builds, suite_builds: SuiteBuilds
) -> None:
    """The internals the suite needs are exported from the second pair only; `ulp diff` finds
    the same changed functions (and nothing else) in both pairs; the suite programs link
    against the libraries."""
    internals = set(expat.SUITE_INTERNALS)
    assert internals <= _exported(suite_builds.old) and internals <= _exported(suite_builds.new)
    assert not internals & (_exported(builds.old) | _exported(builds.new))
    changed = [x for x in suite_builds.reported if not x.startswith("/")]
    assert changed == [x for x in builds.reported if not x.startswith("/")]
    assert "changed: XML_ParseBuffer" in changed
    # The suite runs the library's code in the library: none of its functions is linked in
    # (its two variables are, as copy relocations: the library uses the program's copies).
    for lib, program in [(suite_builds.old, suite_builds.old_suite),
                         (suite_builds.new, suite_builds.new_suite)]:  # fmt: skip
        library_functions = {s.name for s in _functions(ElfFile.load(lib).dynamic_symbols)}
        assert "XML_ParseBuffer" in library_functions
        linked = {s.name for s in _functions(ElfFile.load(program).symtab_symbols)}
        assert not library_functions & linked, program


def _suite(program: Path, probe: Path, *, under_runtime: bool) -> tuple[int, int, str]:
    """Run `program` (runtests) with the probe preloaded: (checks, failed, the probe's answer)."""
    env = os.environ | {"LD_PRELOAD": str(probe)}
    cmd = [str(program)]
    result = ulp("run", "--", *cmd, env=env) if under_runtime else run(cmd, env=env)
    counts = re.search(r"^\d+%: Checks: (\d+), Failed: (\d+)$", result.stdout, re.M)
    assert counts, result.stdout + result.stderr
    checks, failed = int(counts[1]), int(counts[2])
    assert result.returncode == (0 if failed == 0 else 1), result.stderr
    (answer,) = re.findall(r"^expat probe: (.*)$", result.stderr, re.M)
    assert "not applied" not in result.stderr, result.stderr
    return checks, failed, answer


@pytest.fixture
def patch_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty patch directory (root's, as pytest's temporary directories are), named in
    ULP_PATCH_DIR for the runtime and the commands."""
    where = tmp_path / "patches"
    monkeypatch.setenv("ULP_PATCH_DIR", str(where))
    return where


def test_expat_suite_passes_in_a_process_the_installed_patch_patched(
    suite_builds: SuiteBuilds, runtime: Path, patch_dir: Path
) -> None:
    """expat's own suite, one process against the prepared OLD library, with the fix installed
    and the runtime applying it before main: every test passes, and as that process exits the
    probe finds XML_ParseBuffer fixed. The controls: the suite against OLD with nothing
    installed, and with the patch installed but no runtime, finds it unfixed; against NEW,
    fixed, with the same tests passing."""
    old, probe = suite_builds.old_suite, suite_builds.probe
    unpatched = _suite(old, probe, under_runtime=True)
    checks = unpatched[0]
    assert checks > 0 and unpatched == (checks, 0, UNFIXED)
    installed = ulp("install", str(suite_builds.patch / "fix.ulp"))
    assert installed.returncode == 0, installed.stderr
    assert [p.parent for p in patch_dir.iterdir()] == [patch_dir]
    assert _suite(old, probe, under_runtime=False) == (checks, 0, UNFIXED)
    assert _suite(old, probe, under_runtime=True) == (checks, 0, FIXED)
    assert _suite(suite_builds.new_suite, probe, under_runtime=False) == (checks, 0, FIXED)
