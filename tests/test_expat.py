"""A real security fix made into a live patch by `ulp diff` alone: Debian 12's expat 2.5.0 built
as fetched (CVE-2024-45490 fixed: XML_ParseBuffer rejects a negative length) and with that one
Debian patch reversed, OLD prepared; the patch applied to a running program that still has the
unfixed library, and reverted (docs/diff.md, "A real fix: expat's CVE-2024-45490")."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run, ulp
from live import PROGRAMS, running, trigger_cli

from sample_libs import expat
from ulp_build.elf import ElfFile
from ulp_build.patch.library_build import LibraryBuild

DRIVER = PROGRAMS / "expat" / "expat_driver.c"
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
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    source = expat.source(tmp_path_factory.mktemp("expat-source"))
    where = tmp_path_factory.mktemp("expat")
    old = expat.build(source, where / "old", fixed=False)
    new = expat.build(source, where / "new", fixed=True)
    rewritten = ulp("rewrite", str(old))
    assert rewritten.returncode == 0, rewritten.stderr
    made = ulp("diff", str(old), str(new), "-o", str(where / "patch"))
    assert made.returncode == 0, made.stderr
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
        for start, end in new.instruction_ends_cached(item):
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
        applied = trigger_cli("-p", str(p.pid), str(builds.patch / "fix.ulp"))
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert [p.ask("negative"), p.ask("parse")] == [FIXED, PARSED]
        reverted = trigger_cli("-p", str(p.pid), str(builds.patch / "fix.rev.ulp"))
        assert reverted.returncode == 0, reverted.stdout + reverted.stderr
        assert [p.ask("negative"), p.ask("parse")] == [UNFIXED, PARSED]
