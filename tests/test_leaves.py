"""Leaves (ulp_build/prepare/leaves.py): exported functions that run no other code of their
library keep a plain entry, `check` finds the same ones again from the code, `--track-leaves`
tracks them, a leaf stays patchable, and `pack` warns when a leaf's replacement is no leaf."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, run, ulp

from ulp_build.elf import ElfFile
from ulp_build.patch.packer import pack
from ulp_build.prepare import patchable
from ulp_build.prepare.layout import CFLAGS, SECTION_TRAMPOLINES

SOURCE = REPO / "tests" / "programs" / "leaves" / "leaves.c"
LEAVES = [
    "leaf_add",
    "leaf_count",
    "leaf_guarded",
    "leaf_into_middle",
    "leaf_pick",
    "leaf_with_tail",
]
NOT_LEAVES = [
    "calls_getpid",
    "calls_helper",
    "calls_libc",
    "calls_pick",
    "hands_out_callback",
    "into_middle_of_caller",
    "tail_call",
    "through_pointer",
]


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("leaves") / "libleaves.so"
    cmd = ["gcc", *CFLAGS, "-O2", "-fstack-protector-all", "-fPIC", "-shared", "-o", str(out)]
    result = run([*cmd, str(SOURCE)])
    assert result.returncode == 0, result.stderr
    calls = run(["objdump", "-d", "--disassemble=leaf_guarded", str(out)]).stdout
    assert "__stack_chk_fail@plt" in calls  # the exception the rule makes is really there
    return out


def _entries(lib: Path) -> dict[str, int]:
    return {s.name: s.value for s in ElfFile.load(lib).dynamic_symbols if s.defined}


def test_rewrite_leaves_exactly_the_leaves_untracked(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "libleaves.so"
    result = json.loads(ulp("rewrite", str(raw), "-o", str(out), "--json").stdout)
    assert result["leaves"] == LEAVES and result["untracked"] == []
    # One more: by_value, the static comparator whose address the library takes.
    assert result["trampolines"] == len(NOT_LEAVES) + 1
    ulp_section = ElfFile.load(out).section(SECTION_TRAMPOLINES)
    before, after = _entries(raw), _entries(out)
    for name in LEAVES:
        assert after[name] == before[name], name  # the real entry (or resolver), untouched
    for name in NOT_LEAVES:
        # A trampoline; for the IFUNC, a wrapper resolver that returns one.
        assert ulp_section.contains(after[name]) or name == "calls_pick", name
    assert after["calls_pick"] != before["calls_pick"]

    report = json.loads(ulp("check", str(out), "--json").stdout)
    assert report["usable"] and report["leaves"] == LEAVES and report["untracked"] == []
    text = ulp("check", str(out)).stdout
    assert f"leaves (untracked)      6  ({', '.join(LEAVES)})" in text
    # Unprepared, `check` says which functions `rewrite` would leave untracked as leaves.
    assert json.loads(ulp("check", str(raw), "--json").stdout)["leaves"] == LEAVES


def test_track_leaves_tracks_every_exported_function(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "libleaves.so"
    args = ("rewrite", str(raw), "-o", str(out), "--track-leaves", "--json")
    result = json.loads(ulp(*args).stdout)
    assert result["leaves"] == [] and result["trampolines"] == len(LEAVES + NOT_LEAVES) + 1
    report = json.loads(ulp("check", str(out), "--json").stdout)
    assert report["usable"] and report["leaves"] == [] and report["untracked"] == []


def test_a_leaf_stays_patchable(tree: Path) -> None:
    """basic_square is a leaf of the patch tree's libbasic.so, which test_trigger.py's
    test_apply_then_revert patches live; here: it is untracked and keeps its padding."""
    lib = tree / "basic" / "libbasic.so"
    report = json.loads(ulp("check", str(lib), "--json").stdout)
    assert "basic_square" in report["leaves"]
    nop = patchable.entry_nop(ElfFile.load(lib), _entries(lib)["basic_square"])
    assert nop is not None and nop[1]


@pytest.mark.parametrize(
    ("body", "warned"),
    [
        ("return a * b;", False),
        ("return calls_helper(a) + b;", True),  # a function of the target, through the PLT
        ("return getpid() * 0 + a + b;", True),  # another library's
    ],
)
def test_pack_warns_when_a_leaf_is_replaced_by_a_non_leaf(
    raw: Path, tmp_path: Path, body: str, warned: bool
) -> None:
    lib = tmp_path / "libleaves.so"
    assert ulp("rewrite", str(raw), "-o", str(lib)).returncode == 0
    source = tmp_path / "patch.c"
    source.write_text(
        f"int calls_helper(int);\nint getpid(void);\nint leaf_add_v2(int a, int b) {{ {body} }}\n"
    )
    obj = tmp_path / "patch.so"
    result = run(["gcc", "-O2", "-fPIC", "-shared", "-o", str(obj), str(source)])
    assert result.returncode == 0, result.stderr
    description = tmp_path / "patch.toml"
    description.write_text(
        f'target = "{lib}"\nobject = "{obj}"\nid = "leaf"\ndescription = "x"\n\n'
        '[replace]\nleaf_add = "leaf_add_v2"\n'
    )
    packed = pack(description)
    assert len(packed.patch.functions) == 1
    if warned:
        (warning,) = packed.warnings
        assert warning == (
            f"{description}:7: replace: leaf_add: is a leaf of the target (entered untracked),"
            " but its replacement leaf_add_v2 calls other code: a call of it can mix versions"
            ' (docs/writing-patches.md, "Leaves")'
        )
        cli = ulp("pack", str(description))
        assert cli.returncode == 0 and "warning: " + warning in cli.stderr
    else:
        assert packed.warnings == []
