"""`ulp diff` on sample_libs/diff: the library built as it is (prepared, running) and with one
fix applied, turned into a patch by `ulp diff` alone and applied with `ulp trigger` to a running
program; and the changes it refuses, one line each, with nothing written."""

from __future__ import annotations

import re
from pathlib import Path

import diff_builds
import pytest
from conftest import run, ulp
from live import running, triggered

from sample_libs import samples
from ulp_build.elf import STT_SECTION, ElfFile
from ulp_build.elf.eh_frame import EhFrame
from ulp_build.patch.library_build import LibraryBuild

SOURCE = samples.ROOT / "diff" / "diffed.c"
DRIVER = samples.ROOT / "diff" / "diffed_main.c"


def build(text: str, out: Path) -> Path:
    return diff_builds.build("gcc", SOURCE, text, out)


@pytest.fixture(scope="module")
def old(tmp_path_factory: pytest.TempPathFactory, runtime: Path) -> tuple[Path, Path]:
    """The library as it runs (prepared) and the program using it."""
    return diff_builds.running_build("gcc", SOURCE, DRIVER, tmp_path_factory.mktemp("diff-old"))


def test_prepared_build_keeps_its_section_symbols_true(old: tuple[Path, Path]) -> None:
    """Linked with --emit-relocs, the library keeps a STT_SECTION symbol per section in
    `.symtab`; the dynamic tables the rewriter moves take theirs along, so each still holds its
    section's address and eu-elflint finds nothing (it did: `st_value out of bounds`)."""
    lib, _ = old
    elf = ElfFile.load(lib)
    symbols = {s.shndx: s.value for s in elf.symtab_symbols if s.type == STT_SECTION}
    moved = [s for s in elf.sections if s.name in (".dynsym", ".dynstr", ".rela.dyn")]
    assert len(moved) == 3 and all(s.index in symbols for s in moved)
    assert all(symbols[s.index] == s.addr for s in elf.sections if s.index in symbols)
    lint = run(["eu-elflint", "--gnu-ld", str(lib)])
    assert lint.returncode == 0, lint.stdout


def fixed(old_text: str, new_text: str) -> str:
    source = SOURCE.read_text()
    assert source.count(old_text) == 1, old_text
    return source.replace(old_text, new_text)


# name: (the line(s) changed, the fix, the functions reported changed, (command, old, new)...)
FIXES = {
    "a one-line logic fix": (
        "return a + b;",
        "return a + b + 1;",
        ["changed: diffed_add"],
        [("add 2 3", "5", "6")],
    ),
    "a fix in a static function": (
        "return x > diffed_limit ? diffed_limit : x;",
        "return x > diffed_limit ? diffed_limit - 1 : x;",
        ["changed: diffed.c:clamp"],
        [("clamped 50", "100", "99"), ("clamped 10", "30", "30")],
    ),
    "a fix adding a static helper": (
        "int diffed_scaled(int x)\n{\n    return x * 7;\n}",
        "static __attribute__((noinline)) int seven(int x)\n{\n    return x * 7;\n}\n\n"
        "int diffed_scaled(int x)\n{\n    return seven(x) + 1;\n}",
        ["changed: diffed_scaled", "new: diffed.c:seven"],
        [("scaled 2", "14", "15")],
    ),
    "a fix to a function inlined into two callers": (
        "return 2 * x;",
        "return 3 * x;",
        ["changed: diffed_double_a", "changed: diffed_double_b"],
        [("double_a 5", "11", "16"), ("double_b 5", "12", "17")],
    ),
    "a fix changing a string literal": (
        'return x ? "yes" : "no";',
        'return x ? "yes!" : "no";',
        ["changed: diffed_name"],
        [("name 1", "yes", "yes!"), ("name 0", "no", "no")],
    ),
    "a fix in a function with a stack frame, calling the C library": (
        "return (int)strlen(text) * 3 + n;",
        "return (int)strlen(text) * 4 + n;",
        ["changed: diffed_digits"],
        [("digits 12", "18", "20")],
    ),
    "a fix in a function with a jump table": (
        "case 2: return a - 7;",
        "case 2: return a - 8;",
        ["changed: diffed.c:diffed_op.cold", "changed: diffed_op"],
        [("op 2 10", "3", "2"), ("op 5 0", "85", "85"), ("op 9 1", "0", "0")],
    ),
    "a fix in a function whose cold part jumps back into it": (
        "return r + 7;",
        "return r + 8;",
        ["changed: diffed.c:diffed_cold.cold", "changed: diffed_cold"],
        [("cold 1", "32", "33"), ("cold 7", "34", "35")],
    ),
    # The running library's cold part was reached before the patch, the patch's after it (its
    # copy of the switch table jumps into its own copy), and the library's again once reverted.
    "a fix in a function whose switch table jumps into its cold part": (
        "case 2: return x - 7;",
        "case 2: return x - 8;",
        ["changed: diffed.c:diffed_kind.cold", "changed: diffed_kind"],
        [
            ("kind 2 10", "3", "2"),
            ("kind 4 5", "-395", "-395"),
            ("kind_from", "libdiffed.so", "memfd:ulp-patch:libdiffed-diff"),
            ("kind 9 1", "-899", "-899"),
        ],
    ),
    "a fix in a function taking the plain address of local assembly": (
        "return through(x) + 1;",
        "return through(x) + 2;",
        ["changed: diffed_via"],
        [("via 5", "-4", "-3")],
    ),
    "a fix adding a constant that moves another": (
        "return x + 0.0;",
        "return x + 2.25;",
        ["changed: diffed_shift"],
        [("shift 1", "1", "3.25"), ("scale 2", "3", "3")],
    ),
}


def unwind_programs(lib: Path, names: list[str]) -> list[bytes]:
    """The FDE instructions of each named function of `lib`."""
    elf = ElfFile.load(lib)
    where = {s.name: s.value for s in elf.symtab_symbols}
    frames = EhFrame(elf)
    out = []
    for name in names:
        fde = frames.at(where[name])
        assert fde is not None, name
        out.append(fde.instructions.rstrip(b"\0"))
    return out


@pytest.mark.parametrize("case", list(FIXES))
def test_fix_made_into_a_live_patch(
    case: str, old: tuple[Path, Path], runtime: Path, tmp_path: Path
) -> None:
    lib, program = old
    before, after, reported, checks = FIXES[case]
    new = build(fixed(before, after), tmp_path / "new")
    made = diff_builds.diffed(lib, new, tmp_path / "patch")
    lines = made.stdout.splitlines()
    assert [x for x in lines if x.startswith(("changed:", "new:"))] == reported, made.stdout
    assert {p.name for p in (tmp_path / "patch").iterdir()} == {
        "patch.s", "patch.so", "fix.toml", "fix.ulp", "fix.rev.ulp"
    }  # fmt: skip
    # Each carried function keeps its unwind information (unwinders, exceptions, backtraces).
    names = [x.split(": ")[1].split(":")[-1] for x in reported]
    carried = unwind_programs(tmp_path / "patch" / "patch.so", [f"ulp_diff_{n}" for n in names])
    assert carried == unwind_programs(new, names)
    with running(program, runtime) as p:
        assert [p.ask(c) for c, _old, _new in checks] == [o for _c, o, _n in checks]
        triggered(p.pid, tmp_path / "patch" / "fix.ulp")
        assert [p.ask(c) for c, _old, _new in checks] == [n for _c, _o, n in checks]
        triggered(p.pid, tmp_path / "patch" / "fix.rev.ulp")
        assert [p.ask(c) for c, _old, _new in checks] == [o for _c, o, _n in checks]


def test_default_id_drops_the_version(old: tuple[Path, Path], tmp_path: Path) -> None:
    """NEW installed under its full versioned name: the patch's id is the library's name (the
    file name's stem was `libdiffed.so.1.2`)."""
    lib, _ = old
    built = build(fixed("return x + 0.0;", "return x + 1.0;"), tmp_path / "new")
    new = built.rename(built.with_name("libdiffed.so.1.2.3"))
    diff_builds.diffed(lib, new, tmp_path / "patch")
    assert 'id = "libdiffed-diff"' in (tmp_path / "patch" / "fix.toml").read_text().splitlines()


def test_switch_table_jumps_into_the_cold_part(tmp_path: Path) -> None:
    """The control for the case above: gcc really put places of diffed_kind.cold into the
    switch table of diffed_kind (the default case, for the values the switch leaves out), and
    the cold part never jumps back into diffed_kind (nothing but the table and its function
    carries it along)."""
    lib = build(SOURCE.read_text(), tmp_path)
    code = run(["objdump", "-d", "--disassemble=diffed_kind", str(lib)]).stdout
    # `lea TABLE(%rip), %reg`, then `movslq (%reg,%index,4)`: objdump names TABLE in a comment.
    lea = re.search(r"lea\s+0x[0-9a-f]+\(%rip\),%\w+\s+# ([0-9a-f]+)", code)
    assert lea is not None, code
    table = int(lea.group(1), 16)
    cold = run(["objdump", "-d", "--disassemble=diffed_kind.cold", str(lib)]).stdout
    places = [int(a, 16) for a in re.findall(r"^\s+([0-9a-f]+):", cold, re.M)]
    assert places, cold
    start, end = min(places), max(places) + 1
    raw = ElfFile.load(lib).read(table, 4 * 9)  # cases 0 to 8
    entries = [table + int.from_bytes(raw[i : i + 4], "little", signed=True)
               for i in range(0, len(raw), 4)]  # fmt: skip
    assert [n for n, e in enumerate(entries) if start <= e < end] == [4, 7]
    assert "<diffed_kind+" not in cold and "<diffed_kind>" not in cold


def test_fix_touching_a_static_variable_shares_it(
    old: tuple[Path, Path], runtime: Path, tmp_path: Path
) -> None:
    """The patched function counts on from the running library's own counter, and the
    library's unchanged code sees what the patch wrote: one variable, not a copy."""
    lib, program = old
    new = build(fixed("return ++calls;", "calls += 10;\n    return calls;"), tmp_path / "new")
    diff_builds.diffed(lib, new, tmp_path / "patch")
    with running(program, runtime) as p:
        assert [p.ask("count") for _ in range(3)] == ["1", "2", "3"]
        triggered(p.pid, tmp_path / "patch" / "fix.ulp")
        assert [p.ask("count") for _ in range(2)] == ["13", "23"]
        triggered(p.pid, tmp_path / "patch" / "fix.rev.ulp")
        assert p.ask("count") == "24"


def test_accepted_data_change_keeps_the_running_value(
    old: tuple[Path, Path], runtime: Path, tmp_path: Path
) -> None:
    """A changed initializer is refused; accepted by name, the patch keeps the running
    variable as it is (the limit stays 100) while the fixed function is patched."""
    lib, program = old
    text = fixed("int diffed_limit = 100;", "int diffed_limit = 200;")
    new = build(text.replace("return a + b;", "return a + b + 1;"), tmp_path / "new")
    refused = ulp("diff", str(lib), str(new), "-o", str(tmp_path / "refused"))
    assert refused.returncode == 1
    assert "diffed_limit: data changed" in refused.stderr
    assert not (tmp_path / "refused").exists()
    made = diff_builds.diffed(lib, new, tmp_path / "patch", "--accept", "diffed_limit")
    assert "changed: diffed_add" in made.stdout.splitlines()
    with running(program, runtime) as p:
        triggered(p.pid, tmp_path / "patch" / "fix.ulp")
        assert p.ask("add 2 3") == "6"
        assert p.ask("clamped 50") == "100"


REFUSED = {
    "a changed constant whose address the library keeps": (
        "{2, 3, 5, 7}",
        "{2, 3, 5, 11}",
        "ulp: diffed_primes: holds the address of diffed.c:primes, which changed",
    ),
    "a changed struct layout of a global": (
        "    int offset;\n};",
        "    int offset;\n    int extra;\n};",
        "ulp: diffed_config: data changed (size or initial value)",
        "ulp: struct config: layout changed (size or members)",
    ),
    "a changed initializer": (
        "int diffed_limit = 100;",
        "int diffed_limit = 200;",
        "ulp: diffed_limit: data changed (size or initial value)",
    ),
    "a changed signature": (
        "int diffed_add(int a, int b)\n{\n    return a + b;",
        "int diffed_add(int a, long b)\n{\n    return a + (int)b + 1;",
        "ulp: diffed_add: signature changed (diffed_add: int(int, int) -> int(int, long int))",
    ),
    "a static variable renumbered by a static added before it": (
        "    return ++calls;",
        "    static int seen;\n    return ++calls + seen++ * 0;",
        "ulp: diffed.c:labels.2: new, and diffed.c:labels.1 is gone",
    ),
    "a changed string of a table of pointers to strings": (
        '"zero", "one", "two"',
        '"zero", "uno", "two"',
        "ulp: diffed.c:words: data changed (size or initial value)",
    ),
    "a changed function that a table of label addresses points into": (
        "plus:\n    return x + 1;",
        "plus:\n    return x + 2;",
        "ulp: diffed.c:labels.1: holds addresses inside diffed_goto, which changed",
    ),
    "a changed function calling an IFUNC": (
        "return diffed_which() + x;",
        "return diffed_which() + x + 1;",
        "ulp: diffed_which_plus: calls diffed_which, an IFUNC",
    ),
    "a changed initial value of thread-local data": (
        "diffed_per_thread = 5;",
        "diffed_per_thread = 6;",
        "ulp: diffed_per_thread: data changed (size or initial value)",
    ),
    "a static variable whose name a static of another function took": (
        "    return a + b;",
        "    static int tally;\n    return a + b + tally++ * 0;",
        "ulp: diffed.c:labels.2: new, and diffed.c:labels.1 is gone",
        "ulp: diffed.c:tally.0: the static of diffed_tally in",
    ),
    "an assembly function": (
        "    movl %edi, %eax\\n",
        "    leal 1(%rdi), %eax\\n",
        "ulp: diffed_asm: changed, but has no patchable entry",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused(case: str, old: tuple[Path, Path], tmp_path: Path) -> None:
    lib, _program = old
    before, after, *expected = REFUSED[case]
    new = build(fixed(before, after), tmp_path / "new")
    result = ulp("diff", str(lib), str(new), "-o", str(tmp_path / "patch"))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == len(expected), result.stderr
    assert all(line.startswith(e) for line, e in zip(lines, expected, strict=True)), lines
    assert not (tmp_path / "patch").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]  # no work directory left


def test_inputs_without_kept_relocations(old: tuple[Path, Path], tmp_path: Path) -> None:
    lib, _program = old
    (tmp_path / "diffed.c").write_text(SOURCE.read_text())
    plain = tmp_path / "libplain.so"
    built = run(
        ["gcc", *diff_builds.FLAGS, "-shared", "-o", str(plain), str(tmp_path / "diffed.c")]
    )
    assert built.returncode == 0, built.stderr
    result = ulp("diff", str(lib), str(plain), "-o", str(tmp_path / "patch"))
    assert result.returncode == 1
    assert result.stderr == (
        f"ulp: {plain}: no link-time relocations: link it with -Wl,--emit-relocs (docs/diff.md)\n"
    )


def test_statics_of_one_name_in_files_of_one_name(tmp_path: Path) -> None:
    """Two `util.c` in two directories, each with a static `helper`: their keys are the same,
    so a change to the second one is refused, never taken for the first one's sameness."""

    def library(where: Path, second: str) -> Path:
        for part, body in (("a", "return x + 1;"), ("b", second)):
            (where / part).mkdir(parents=True)
            (where / part / "util.c").write_text(
                f"static __attribute__((noinline)) int helper(int x) {{ {body} }}\n"
                f"int {part}_value(int x) {{ return helper(x) * 2; }}\n"
            )
            built = run(
                ["gcc", *diff_builds.FLAGS, "-c", "util.c", "-o", "util.o"], cwd=where / part
            )
            assert built.returncode == 0, built.stderr
        lib = where / "libtwo.so"
        linked = run(["gcc", "-shared", "-Wl,--emit-relocs", "-o", str(lib),
                      str(where / "a" / "util.o"), str(where / "b" / "util.o")])  # fmt: skip
        assert linked.returncode == 0, linked.stderr
        return lib

    old = library(tmp_path / "old", "return x + 2;")
    assert ulp("rewrite", str(old)).returncode == 0
    # Each one is read where it is, not as the first of its key.
    build = LibraryBuild(ElfFile.load(old))
    helpers = build.all_items("util.c:helper")
    assert len(helpers) == 2
    assert [build.instruction_ends(h)[0][0] for h in helpers] == [h.start for h in helpers]
    same = ulp("diff", str(old), str(library(tmp_path / "same", "return x + 2;")),
               "-o", str(tmp_path / "p1"))  # fmt: skip
    assert same.returncode == 1
    assert "no function differs" in same.stderr
    changed = ulp("diff", str(old), str(library(tmp_path / "new", "return x + 3;")),
                  "-o", str(tmp_path / "p2"))  # fmt: skip
    assert changed.returncode == 1
    assert changed.stderr.startswith("ulp: util.c:helper: several statics of this name"), (
        changed.stderr
    )
    assert not (tmp_path / "p2").exists()


class _CountingList(list):  # type: ignore[type-arg]
    """A list that counts the elements read from it."""

    reads = 0

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        type(self).reads += 1
        return super().__getitem__(index)


def test_address_no_item_covers_is_found_uncovered_at_once(tmp_path: Path) -> None:
    """A field referring to a string literal (no symbol covers it) is looked up among the
    items below it: the search stops where no earlier item reaches the address, instead of
    reading every function of the 16 MiB below (a diff of libcrypto took six minutes)."""
    text = "".join(
        f'const char *f{i}(int x) {{ return x ? "yes {i}" : "no {i}"; }}\n' for i in range(300)
    )
    (tmp_path / "many.c").write_text(text)
    lib = tmp_path / "libmany.so"
    built = run(["gcc", *diff_builds.FLAGS, "-shared", "-Wl,--emit-relocs", "-o", str(lib),
                 str(tmp_path / "many.c")])  # fmt: skip
    assert built.returncode == 0, built.stderr
    build = LibraryBuild(ElfFile.load(lib))
    starts, ordered = build._by_address
    rodata = build.elf.section(".rodata")
    assert rodata is not None and rodata.size > 300 * 5
    assert sum(start < rodata.addr for start in starts) >= 300  # the functions, below it
    build._by_address = (starts, _CountingList(ordered))  # type: ignore[misc]
    for addr in range(rodata.addr, rodata.addr + rodata.size, 7):
        assert build.item_at(addr) is None
    assert _CountingList.reads <= 2 * len(range(rodata.addr, rodata.addr + rodata.size, 7))


def test_the_same_builds_give_the_same_patch(old: tuple[Path, Path], tmp_path: Path) -> None:
    """A patch is checked against the builds it came from: two runs of `diff` on the same pair
    write the same bytes (gcc names the object it assembles at random, and the linker gave
    the source's local symbols that name)."""
    lib, _ = old
    new = build(fixed("return x + 0.0;", "return x + 1.0;"), tmp_path / "new")
    made = []
    for run_ in ("one", "two"):
        diff_builds.diffed(lib, new, tmp_path / run_)
        made.append({f.name: f.read_bytes() for f in (tmp_path / run_).iterdir()})
    assert set(made[0]) == {"patch.s", "patch.so", "fix.toml", "fix.ulp", "fix.rev.ulp"}
    assert made[0] == made[1]
