"""Leaves (ulp_build/prepare/leaves.py): exported functions that run no other code of their
library keep a plain entry, `check` finds the same ones again from the code, `--track-leaves`
tracks them, a leaf stays patchable, and `pack` warns when a leaf's replacement is no leaf."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
from conftest import REPO, run, ulp

from ulp_build.elf import ElfFile
from ulp_build.patch.packer import Packed, pack
from ulp_build.prepare import codegen, leaves, patchable
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
    "hands_out_static",
    "into_middle_of_caller",
    "tail_call",
    "through_pointer",
    "where_pick",
]
# IFUNCs with a leaf variant and one that is not: tracked unless the resolver picks the leaf.
CHOOSING_LEAVES = ["calls_pick", "where_pick"]


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
    assert result["choosing_leaves"] == CHOOSING_LEAVES
    # Two more: by_value and handed_out, static functions whose address the library takes.
    assert result["trampolines"] == len(NOT_LEAVES) + 2
    ulp_section = ElfFile.load(out).section(SECTION_TRAMPOLINES)
    before, after = _entries(raw), _entries(out)
    for name in LEAVES:
        assert after[name] == before[name], name  # the real entry (or resolver), untouched
    for name in NOT_LEAVES:
        # A trampoline; for an IFUNC, a wrapper resolver that returns one.
        assert ulp_section.contains(after[name]) or name in CHOOSING_LEAVES, name
    for name in CHOOSING_LEAVES:
        assert after[name] != before[name]

    report = json.loads(ulp("check", str(out), "--json").stdout)
    assert report["usable"] and report["leaves"] == LEAVES and report["untracked"] == []
    assert report["choosing_leaves"] == CHOOSING_LEAVES
    text = ulp("check", str(out)).stdout
    assert f"leaves (untracked)      6  ({', '.join(LEAVES)})" in text
    assert f"IFUNCs choosing leaves  2  ({', '.join(CHOOSING_LEAVES)})" in text
    # Unprepared, `check` says which functions `rewrite` would leave untracked as leaves.
    unprepared = json.loads(ulp("check", str(raw), "--json").stdout)
    assert unprepared["leaves"] == LEAVES and unprepared["choosing_leaves"] == CHOOSING_LEAVES


def test_track_leaves_tracks_every_exported_function(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "libleaves.so"
    args = ("rewrite", str(raw), "-o", str(out), "--track-leaves", "--json")
    result = json.loads(ulp(*args).stdout)
    assert result["leaves"] == [] and result["trampolines"] == len(LEAVES + NOT_LEAVES) + 2
    assert result["choosing_leaves"] == []
    report = json.loads(ulp("check", str(out), "--json").stdout)
    assert report["usable"] and report["leaves"] == [] and report["untracked"] == []
    assert report["choosing_leaves"] == []


WHERE = r"""
#include <dlfcn.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    void *lib = dlopen(argv[1], RTLD_NOW);
    void *(*where)(void) = lib ? (void *(*)(void))dlsym(lib, "where_pick") : NULL;
    if (!where)
        return 2;
    /* Entered plain, it returns right here, into main. */
    char *back = where(), *start = (char *)main;
    puts(back > start && back < start + 4096 ? "plain" : "tracked");
    return 0;
}
"""


@pytest.mark.parametrize(
    ("pick", "track_leaves", "entered"),
    [
        ("leaf", False, "plain"),
        ("calls", False, "tracked"),
        ("leaf", True, "tracked"),  # the control: the same variant, tracked, is seen as such
    ],
)
def test_an_ifunc_is_entered_plain_when_the_cpu_gets_a_leaf(
    raw: Path, tmp_path: Path, runtime: Path, pick: str, track_leaves: bool, entered: str
) -> None:
    """The wrapper hands out the resolver's choice itself when it is a leaf variant, and the
    IFUNC trampoline otherwise: under the runtime, a tracked call returns through the runtime,
    which the function sees as its return address. Without the runtime every call is plain."""
    lib = tmp_path / "libleaves.so"
    args = ["--track-leaves"] if track_leaves else []
    assert ulp("rewrite", str(raw), "-o", str(lib), *args).returncode == 0
    source, program = tmp_path / "where.c", tmp_path / "where"
    source.write_text(WHERE)
    result = run(["gcc", "-O2", "-o", str(program), str(source), "-ldl"])
    assert result.returncode == 0, result.stderr
    env = {**os.environ, "LEAVES_PICK": pick}
    under = ulp("run", "--", str(program), str(lib), env=env)
    assert under.returncode == 0, under.stderr
    assert under.stdout.strip() == entered
    plain = run([str(program), str(lib)], env=env)
    assert plain.returncode == 0 and plain.stdout.strip() == "plain"


def test_a_leaf_stays_patchable(tree: Path) -> None:
    """basic_square is a leaf of the patch tree's libbasic.so, which test_trigger.py's
    test_apply_then_revert patches live; here: it is untracked and keeps its padding."""
    lib = tree / "basic" / "libbasic.so"
    report = json.loads(ulp("check", str(lib), "--json").stdout)
    assert "basic_square" in report["leaves"]
    nop = patchable.entry_nop(ElfFile.load(lib), _entries(lib)["basic_square"])
    assert nop is not None and nop[1]


def _packed(
    raw: Path, tmp_path: Path, source: str, replaced: str, replacement: str
) -> tuple[Path, Packed]:
    """The leaves library prepared, and a patch of it replacing one function by `source`'s."""
    lib = tmp_path / "libleaves.so"
    assert ulp("rewrite", str(raw), "-o", str(lib)).returncode == 0
    (tmp_path / "patch.c").write_text(source)
    obj = tmp_path / "patch.so"
    result = run(["gcc", "-O2", "-fPIC", "-shared", "-o", str(obj), str(tmp_path / "patch.c")])
    assert result.returncode == 0, result.stderr
    description = tmp_path / "patch.toml"
    description.write_text(
        f'target = "{lib}"\nobject = "{obj}"\nid = "leaf"\ndescription = "x"\n\n'
        f'[replace]\n{replaced} = "{replacement}"\n'
    )
    return description, pack(description)


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
    source = (
        f"int calls_helper(int);\nint getpid(void);\nint leaf_add_v2(int a, int b) {{ {body} }}\n"
    )
    description, packed = _packed(raw, tmp_path, source, "leaf_add", "leaf_add_v2")
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


def test_pack_warns_when_a_leaf_variant_of_an_ifunc_is_replaced_by_a_non_leaf(
    raw: Path, tmp_path: Path
) -> None:
    """where_leaf is no exported function, but where_pick hands it out plain when chosen."""
    source = "int getpid(void);\nvoid *where_v2(void) { return (void *)(long)getpid(); }\n"
    description, packed = _packed(raw, tmp_path, source, "where_leaf", "where_v2")
    assert [f.name for f in packed.patch.functions] == ["where_leaf"]
    (warning,) = packed.warnings
    assert warning.startswith(f"{description}:7: replace: where_leaf: is a leaf of the target")


def test_a_function_address_taken_through_a_trampoline_is_no_leaf(
    raw: Path, tmp_path: Path
) -> None:
    """`check` decides the variants a wrapper lists again, on the prepared file, where the
    rewriter has pointed a `lea` of a function at its trampoline: still no leaf."""
    lib = tmp_path / "libleaves.so"
    assert ulp("rewrite", str(raw), "-o", str(lib)).returncode == 0
    for path in (raw, lib):
        elf = ElfFile.load(path)
        entry = next(s.value for s in elf.symtab_symbols if s.name == "hands_out_static")
        leaf = next(s.value for s in elf.symtab_symbols if s.name == "leaf_add")
        assert leaves.are_leaves(elf, [entry, leaf]) == {leaf}, path


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        ("leaf", "where_pick: IFUNC wrapper hands out plain what is no leaf: where_calls"),
        ("slot", "where_pick: IFUNC wrapper fills slot"),
        ("size", "where_pick: IFUNC wrapper's symbol size is not its code's"),
    ],
)
def test_check_refuses_an_edited_wrapper(raw: Path, tmp_path: Path, edit: str, error: str) -> None:
    """The wrapper's list is what makes calls untracked: `check` decides again, from the code,
    that each variant it hands out plain is a leaf (here where_pick's wrapper is edited to hand
    out where_calls, which calls the C library), that it fills the slot its trampoline reads,
    and that its symbol's size is its code's."""
    lib = tmp_path / "libleaves.so"
    assert ulp("rewrite", str(raw), "-o", str(lib)).returncode == 0
    elf = ElfFile.load(lib)
    (sym,) = [s for s in elf.dynamic_symbols if s.name == "where_pick"]
    wrapper = codegen.decode_ifunc_wrapper(elf.read(sym.value, sym.size), sym.value)
    assert wrapper is not None
    (leaf,) = wrapper.leaves
    assert elf.name_at(leaf) == "where_leaf"
    assert json.loads(ulp("check", str(lib), "--json").stdout)["usable"]
    data = bytearray(lib.read_bytes())
    head = sym.value + (4 if elf.uses_ibt else 0)  # after endbr64, if any: sub, call, mov
    if edit == "leaf":  # the first comparison's lea
        calls = next(s.value for s in elf.symtab_symbols if s.name == "where_calls")
        at = head + 16
        assert at + 7 + struct.unpack("<i", elf.read(at + 3, 4))[0] == leaf
        struct.pack_into("<i", data, elf.offset_of(at + 3), calls - (at + 7))
    elif edit == "slot":  # the mov of the resolver's answer into the slot
        at = head + 9
        assert at + 7 + struct.unpack("<i", elf.read(at + 3, 4))[0] == wrapper.slot
        struct.pack_into("<i", data, elf.offset_of(at + 3), wrapper.slot + 8 - (at + 7))
    else:  # st_size in .dynsym
        dynsym = elf.section(".dynsym")
        assert dynsym is not None
        struct.pack_into("<Q", data, dynsym.offset + 24 * sym.index + 16, sym.size + 1)
    lib.write_bytes(bytes(data))
    report = json.loads(ulp("check", str(lib), "--json").stdout)
    assert not report["usable"] and report["choosing_leaves"] == ["calls_pick"]
    (found,) = report["errors"]
    assert found.startswith(error)


# Code that runs off the end of its symbol falls into the next function's entry (and its
# checker, once patched) as surely as by a jump: glibc's 16-byte `__strcasecmp_avx2` falls into
# `__strcasecmp_l_avx2`, which jumps to a padded C function. No leaf, nor a leaf variant.
FALLS_THROUGH = r"""
#include <unistd.h>

/* falls_through has no ret: after its one instruction comes calls_out's entry, which calls
 * the C library. */
__asm__(".text\n"
        ".globl falls_through\n.type falls_through, @function\n"
        "falls_through:\n mov %edi, %eax\n"
        ".size falls_through, .-falls_through\n"
        ".globl calls_out\n.type calls_out, @function\n"
        "calls_out:\n jmp getpid@PLT\n"
        ".size calls_out, .-calls_out\n");

/* The same as an IFUNC variant, beside a leaf variant and one that calls the C library. */
__asm__(".text\n"
        ".type falls_through_variant, @function\n"
        "falls_through_variant:\n mov %edi, %eax\n"
        ".size falls_through_variant, .-falls_through_variant\n"
        ".type calls_out_variant, @function\n"
        "calls_out_variant:\n jmp getpid@PLT\n"
        ".size calls_out_variant, .-calls_out_variant\n");

int falls_through_variant(int);
static __attribute__((noinline)) int leaf_variant(int x) { return x + 1; }
static __attribute__((noinline)) int calls_variant(int x) { return x + getpid(); }

volatile int choose;
static void *resolve_falls_pick(void)
{
    return choose == 0 ? (void *)leaf_variant
         : choose == 1 ? (void *)falls_through_variant
                       : (void *)calls_variant;
}
int falls_pick(int) __attribute__((ifunc("resolve_falls_pick")));
"""


def test_a_function_falling_through_into_another_is_no_leaf(tmp_path: Path) -> None:
    source, raw, out = tmp_path / "ft.c", tmp_path / "libft-raw.so", tmp_path / "libft.so"
    source.write_text(FALLS_THROUGH)
    result = run(["gcc", *CFLAGS, "-O2", "-fPIC", "-shared", "-o", str(raw), str(source)])
    assert result.returncode == 0, result.stderr
    rewritten = json.loads(ulp("rewrite", str(raw), "-o", str(out), "--json").stdout)
    assert "falls_through" not in rewritten["leaves"]
    assert rewritten["choosing_leaves"] == ["falls_pick"]
    elf = ElfFile.load(out)
    (sym,) = [s for s in elf.dynamic_symbols if s.name == "falls_pick"]
    wrapper = codegen.decode_ifunc_wrapper(elf.read(sym.value, sym.size), sym.value)
    assert wrapper is not None
    assert [elf.name_at(a) for a in wrapper.leaves] == ["leaf_variant"]
