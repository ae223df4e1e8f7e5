"""`ulp pack` and `ulp dump`: round trips against readelf, every refusal with its line, and a
reader that never fails with anything but its own error."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import run, ulp
from hypothesis import given, settings
from hypothesis import strategies as st

from sample_libs import samples
from ulp_build.elf import ElfFile
from ulp_build.errors import UlpError
from ulp_build.patch import metadata


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return samples.build_patch_tree(tmp_path_factory.mktemp("patches"))


def _symtab(lib: Path) -> dict[str, int]:
    """Name -> value in .symtab, as readelf prints them (real addresses, static symbols too)."""
    listing = run(["readelf", "-sW", str(lib)]).stdout.split("'.symtab'")[1]
    out = {}
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) == 8 and fields[0][:-1].isdigit() and fields[6] != "UND":
            out.setdefault(fields[7], int(fields[1], 16))
    return out


def _build_id(lib: Path) -> str:
    return re.search(r"Build ID: ([0-9a-f]+)", run(["readelf", "-n", str(lib)]).stdout).group(1)


@pytest.mark.parametrize("name", samples.patch_names())
def test_round_trip(tree: Path, name: str, tmp_path: Path) -> None:
    desc = tree / "patches" / name / "patch.toml"
    out = tmp_path / "out" / f"{name}.ulp"
    out.parent.mkdir()
    result = ulp("pack", str(desc), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert out.is_file() and (tmp_path / "out" / f"{name}.rev.ulp").is_file()

    dumped = json.loads(ulp("dump", str(out), "--json").stdout)
    reverse = json.loads(ulp("dump", str(tmp_path / "out" / f"{name}.rev.ulp"), "--json").stdout)
    import tomllib

    spec = tomllib.loads(desc.read_text())
    target = tree / "basic" / "libbasic.so"
    symbols = _symtab(target)
    assert dumped["kind"] == "apply" and reverse["kind"] == "revert"
    assert dumped["id"] == reverse["id"] == spec["id"]
    assert dumped["description"] == spec["description"]
    assert dumped["target_name"] == "libbasic.so"
    assert dumped["target_build_id"] == _build_id(target)
    assert (out.parent / dumped["object"]).resolve() == (desc.parent / "patch.so").resolve()
    obj = desc.parent / "patch.so"
    assert dumped["object_build_id"] == reverse["object_build_id"] == _build_id(obj)
    sha = run(["sha256sum", str(obj)]).stdout.split()[0]
    assert dumped["object_sha256"] == reverse["object_sha256"] == sha
    assert {f["name"]: f["replacement"] for f in dumped["functions"]} == spec["replace"]
    for f in dumped["functions"]:
        assert f["offset"] == symbols[f["name"]]
        assert f["nop_offset"] == f["offset"]  # no endbr64 in this library
    assert {r["name"]: r["pointer"] for r in dumped["references"]} == spec.get("references", {})
    for r in dumped["references"]:
        assert r["offset"] == symbols[r["name"]]
    assert reverse["functions"] == dumped["functions"]
    # The target's exported functions the object calls by name, at their .dynsym values (the
    # trampolines a call by name enters, not the functions' entries .symtab gives).
    dynsym = ElfFile.load(target).dynamic_symbols
    imported = {i["name"]: i["offset"] for i in dumped["imports"]}
    assert imported == {s.name: s.value for s in dynsym if s.name in imported}
    assert set(imported) == ({"basic_add"} if name == "square_calls_add" else set())
    assert all(offset != symbols[n] for n, offset in imported.items())
    # Near references: the target's offsets its placeholders name, from fields in the object's
    # code, as readelf lists the relocations the link kept.
    near = {(n["offset"], n["addend"], n["field"]) for n in dumped["near"]}
    kept = re.findall(
        r"^([0-9a-f]+) +[0-9a-f]+ R_X86_64_PL?[TC]32 .* __ulp_near_([0-9a-f]+) ([+-]) (\d+)$",
        run(["readelf", "-rW", str(obj)]).stdout,
        re.M,
    )
    assert near == {
        (int(o, 16), int(a) * (-1 if s == "-" else 1), int(f, 16)) for f, o, s, a in kept
    }
    if name == "near_static":
        assert {n["name"] for n in dumped["near"]} == {"factor", "scale"}
        assert all(n["offset"] == symbols[n["name"]] for n in dumped["near"])
    assert bool(near) == (name == "near_static")


def test_reference_kinds(tree: Path) -> None:
    kinds = {}
    for name in ("scaled_factor", "calls_tls", "add_logged"):
        result = ulp("pack", str(tree / "patches" / name / "patch.toml"), "--json")
        assert result.returncode == 0, result.stderr
        (ref,) = json.loads(result.stdout)["patch"]["references"]
        kinds[ref["name"]] = ref["kind"]
    assert kinds == {"factor": "data", "basic_calls": "tls", "basic_add": "function"}


def test_text_dump(tree: Path) -> None:
    desc = tree / "patches" / "add_logged" / "patch.toml"
    assert ulp("pack", str(desc)).returncode == 0
    text = ulp("dump", str(desc.with_suffix(".ulp"))).stdout
    assert "patch 'basic-add-wrapped'" in text
    assert "basic_add at 0x" in text and "-> basic_add_wrapped" in text
    assert "basic_add (function) at 0x" in text


def _describe(tmp_path: Path, tree: Path, body: str, *, target: str | None = None) -> Path:
    work = tmp_path / "desc"
    work.mkdir(exist_ok=True)
    shutil.copy(tree / "patches" / "square_fix" / "patch.so", work / "patch.so")
    target = target or str(tree / "basic" / "libbasic.so")
    desc = work / "p.toml"
    desc.write_text(f'target = "{target}"\nobject = "patch.so"\n' + body)
    return desc


REFUSALS = {
    "missing target": (
        {"target": "/nonexistent/libnope.so"},
        '[replace]\nbasic_square = "basic_square_fixed"\n',
        r"p\.toml:1: target: .*No such file",
    ),
    "device target": (
        {"target": "/dev/zero"},
        '[replace]\nbasic_square = "basic_square_fixed"\n',
        r"p\.toml:1: target: /dev/zero: not a regular file",
    ),
    "function not in target": (
        {},
        '[replace]\nno_such = "basic_square_fixed"\n',
        r"p\.toml:4: replace: no_such: not found in target",
    ),
    "replacement missing": (
        {},
        '[replace]\nbasic_square = "nope"\n',
        r"p\.toml:4: replace: nope: not exported by the object",
    ),
    "pointer missing": (
        {},
        '[replace]\nbasic_square = "basic_square_fixed"\n[references]\nfactor = "nope_ref"\n',
        r"p\.toml:6: references: nope_ref: not exported by the object",
    ),
    "data as function": (
        {},
        '[replace]\nbasic_counter = "basic_square_fixed"\n',
        r"p\.toml:4: replace: basic_counter: is data, not a function",
    ),
    "duplicate": (
        {},
        '[replace]\nbasic_add = "basic_square_fixed"\nbasic_sum = "basic_square_fixed"\n',
        r"p\.toml:5: replace: basic_sum: the same function as basic_add \(line 4\)",
    ),
    "one replacement for two functions": (
        {},
        '[replace]\nbasic_square = "basic_square_fixed"\nbasic_add = "basic_square_fixed"\n',
        r"p\.toml:5: replace: basic_add: has the same replacement basic_square_fixed as"
        r" basic_square \(line 4\)",
    ),
    "misspelt table": (
        {},
        '[replce]\nbasic_square = "basic_square_fixed"\n',
        r"p\.toml:3: unknown key 'replce'",
    ),
    "NUL in the target path": (
        {"target": "libbasic\\u0000.so"},
        '[replace]\nbasic_square = "basic_square_fixed"\n',
        r"p\.toml:1: target contains the unprintable character '\\x00'",
    ),
    "escape in the id": (
        {},
        'id = "x\\u001b[31my"\n[replace]\nbasic_square = "basic_square_fixed"\n',
        r"p\.toml:3: id contains the unprintable character '\\x1b'",
    ),
    "NUL in a symbol name": (
        {},
        '[replace]\n"basic_square\\u0000" = "basic_square_fixed"\n',
        r"p\.toml:\?: replace: 'basic_square\\x00' = 'basic_square_fixed' contains the"
        r" unprintable character '\\x00'",
    ),
    "invalid toml": ({}, "[replace\nbasic_square = 1\n", r"p\.toml:3: invalid TOML"),
    "duplicate key": (
        {},
        '[replace]\nbasic_square = "a"\nbasic_square = "b"\n',
        r"p\.toml:5: invalid TOML",
    ),
    "unknown key": (
        {},
        'colour = "blue"\n[replace]\nbasic_square = "basic_square_fixed"\n',
        r"p\.toml:3: unknown key 'colour'",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals(tree: Path, tmp_path: Path, case: str) -> None:
    overrides, body, expected = REFUSALS[case]
    desc = _describe(tmp_path, tree, body, target=overrides.get("target"))
    before = sorted(p.name for p in desc.parent.iterdir())
    result = ulp("pack", str(desc))
    assert result.returncode == 1
    assert re.search(expected, result.stderr), result.stderr
    assert all(line.startswith("ulp: ") for line in result.stderr.splitlines())
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in desc.parent.iterdir()) == before


def test_unprepared_target(tree: Path, tmp_path: Path) -> None:
    desc = _describe(
        tmp_path,
        tree,
        '[replace]\nbasic_square = "basic_square_fixed"\n',
        target=str(tree / "raw" / "libbasic.so"),
    )
    result = ulp("pack", str(desc))
    assert result.returncode == 1
    assert re.search(r"p\.toml:1: target: .* is not prepared", result.stderr)


def test_function_without_padding(tmp_path: Path, tree: Path) -> None:
    basic = samples.load()["basic"]
    src = tmp_path / "plain"
    src.mkdir()
    # Built without `ulp cflags`, then prepared: trampolines, but no padding to patch.
    lib = src / "libbasic.so"
    built = run(["gcc", "-O2", "-fPIC", "-shared", "-o", str(lib), *map(str, basic.sources)])
    assert built.returncode == 0, built.stderr
    assert ulp("rewrite", str(lib)).returncode == 0
    desc = _describe(
        tmp_path, tree, '[replace]\nbasic_square = "basic_square_fixed"\n', target=str(lib)
    )
    result = ulp("pack", str(desc))
    assert result.returncode == 1
    assert "p.toml:4: replace: basic_square: has no patchable padding" in result.stderr


def test_every_problem_in_one_run(tree: Path, tmp_path: Path) -> None:
    desc = _describe(
        tmp_path,
        tree,
        '[replace]\nno_such = "basic_square_fixed"\n'
        'basic_counter = "basic_square_fixed"\nbasic_square = "nope"\n'
        '[references]\nfactor = "nope_ref"\n',
    )
    result = ulp("pack", str(desc))
    lines = result.stderr.splitlines()
    assert [re.search(r"p\.toml:(\d+)", line).group(1) for line in lines] == ["4", "5", "6", "8"]


VALID = metadata.dumps(metadata.Patch(
    "apply", "id-1", "a patch", "libbasic.so", "ab" * 20, "patch.so", "cd" * 20, "ef" * 32,
    [metadata.Function("basic_square", 0x11AE, 0x11AE, "basic_square_fixed")],
    [metadata.Reference("factor", "data", 0x4010, "basic_factor")],
)).encode()  # fmt: skip


def test_reader_accepts_what_the_writer_writes() -> None:
    patch = metadata.parse(VALID, "x.ulp")
    assert metadata.parse(metadata.dumps(patch).encode(), "x.ulp") == patch
    assert VALID.startswith(b"ULPPATCH 4\n")
    # Version 3 had no near references: read as none; version 4 needs them.
    v3 = VALID.replace(b"ULPPATCH 4", b"ULPPATCH 3").replace(b',\n "near": []', b"")
    assert v3 != VALID and metadata.parse(v3, "x.ulp") == patch
    with pytest.raises(UlpError, match=re.escape("missing 'near'")):
        metadata.parse(v3.replace(b"ULPPATCH 3", b"ULPPATCH 4"), "x.ulp")
    # Version 2 had no imports either: read as none; version 3 needs them.
    old = v3.replace(b"ULPPATCH 3", b"ULPPATCH 2").replace(b',\n "imports": []', b"")
    assert old != v3 and metadata.parse(old, "x.ulp") == patch
    with pytest.raises(UlpError, match=re.escape("missing 'imports'")):
        metadata.parse(old.replace(b"ULPPATCH 2", b"ULPPATCH 3"), "x.ulp")


NEAR = VALID.replace(
    b'"near": []',
    b'"near": [{"name": "factor", "offset": 16400, "addend": -5, "field": 4112}]',
)
assert NEAR != VALID and metadata.parse(NEAR, "x.ulp").near


CALLS_ADD = "int basic_add(int, int);\nint fixed(int x) { return basic_add(x * x, 1); }\n"
NOT_IMPORTABLE = {
    "called through its address (-fno-plt)": (
        CALLS_ADD,
        ["-fno-plt"],
        r"p\.toml:2: object: basic_add: the target's function is used through its address"
        r" \(R_X86_64_GLOB_DAT: .*; call it by name \(without -fno-plt\), or take its address"
        r" from a \[references\] function reference",
    ),
    "its address in a table": (
        "int basic_add(int, int);\nint (*table[])(int, int) = {basic_add};\n"
        "int fixed(int x) { return table[0](x, x); }\n",
        [],
        r"p\.toml:2: object: basic_add: the target's function is used through its address"
        r" \(R_X86_64_64: ",
    ),
    "a variable": (
        "extern int basic_counter;\nint fixed(int x) { return x + basic_counter; }\n",
        [],
        r"p\.toml:2: object: basic_counter: the target's variable is used directly"
        r" \(R_X86_64_GLOB_DAT\), .*; reach it through a \[references\] entry",
    ),
    "linked with -z now": (
        CALLS_ADD,
        ["-Wl,-z,now"],
        r"p\.toml:2: object: linked with -z now, the object has the loader bind its calls of the"
        r" target \(basic_add\) as it loads; link it with -z lazy",
    ),
}


@pytest.mark.parametrize("case", sorted(NOT_IMPORTABLE))
def test_uses_of_the_target_that_only_the_loader_could_bind(
    tree: Path, tmp_path: Path, case: str
) -> None:
    """Whatever scope the target is loaded in, the runtime can fill only the GOT slots of the
    object's calls by name: every other use of a symbol of the target is refused, one line
    each, naming the symbol and the fix."""
    source, flags, expected = NOT_IMPORTABLE[case]
    desc = _describe(tmp_path, tree, '[replace]\nbasic_square = "fixed"\n')
    (tmp_path / "fix.c").write_text(source)
    built = run(["gcc", "-O2", "-fPIC", "-shared", *flags, "-o", str(desc.parent / "patch.so"),
                 str(tmp_path / "fix.c")])  # fmt: skip
    assert built.returncode == 0, built.stderr
    result = ulp("pack", str(desc))
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert re.search(expected, result.stderr), result.stderr
    # The same source, called by name and linked lazily, packs with its import.
    if flags:
        built = run(["gcc", "-O2", "-fPIC", "-shared", "-o", str(desc.parent / "patch.so"),
                     str(tmp_path / "fix.c")])  # fmt: skip
        assert built.returncode == 0, built.stderr
        packed = json.loads(ulp("pack", str(desc), "--json").stdout)
        assert [i["name"] for i in packed["patch"]["imports"]] == ["basic_add"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "not a ulp patch file"),
        (b"\x7fELF\x02\x01\x01", "not a ulp patch file"),
        (b"ULPPATCH 5\n{}", "version '5' unsupported"),
        (NEAR.replace(b"-5", b"-2147483649"), "corrupt patch metadata (near[0].addend: not a 32"),
        (NEAR.replace(b"-5", b"true"), "corrupt patch metadata (near[0].addend: not a 32"),
        (NEAR.replace(b"4112", b"-1"), "corrupt patch metadata (near[0].field: not an offset"),
        (b"ULPPATCH 1\n{}", "version '1' unsupported"),
        (VALID.replace(b'"ef', b'"e'), "corrupt patch metadata (object_sha256"),
        (VALID[: len(VALID) // 2], "corrupt patch metadata"),
        (VALID.replace(b'"apply"', b'"sideways"'), "corrupt patch metadata (kind"),
        (VALID.replace(b"4526", b"-1"), "corrupt patch metadata"),
    ],
)
def test_reader_refuses(raw: bytes, message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.ulp"
    path.write_bytes(raw)
    with pytest.raises(UlpError, match=re.escape(message)):
        metadata.read(path)
    result = ulp("dump", str(path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"ulp: {path}: ")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_reader_on_random_bytes(raw: bytes) -> None:
    for data in (raw, b"ULPPATCH 3\n" + raw):
        with contextlib.suppress(UlpError):
            metadata.parse(data, "fuzz.ulp")


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=8),
    st.integers(0, len(VALID)),
)
def test_reader_on_mutated_metadata(edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(VALID)
    for at, value in edits:
        data[at] = value
    with contextlib.suppress(UlpError):
        metadata.parse(bytes(data[:cut]), "fuzz.ulp")


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_reader_on_random_json(document: object) -> None:
    with contextlib.suppress(UlpError):
        metadata.parse(b"ULPPATCH 3\n" + json.dumps(document).encode(), "fuzz.ulp")


def test_outputs_never_overwrite_inputs(tree: Path, tmp_path: Path) -> None:
    desc = _describe(tmp_path, tree, '[replace]\nbasic_square = "basic_square_fixed"\n')
    target = tree / "basic" / "libbasic.so"
    before = target.read_bytes(), desc.read_text()
    for output, message in (
        (desc, "is the description"),
        (target, "is the target"),
        (desc.parent / "patch.so", "is the object"),
        (tmp_path / "x.rev.ulp", "a .rev.ulp name is for the reverse"),
    ):
        result = ulp("pack", str(desc), "-o", str(output))
        assert result.returncode == 1, output
        assert message in result.stderr
    assert (target.read_bytes(), desc.read_text()) == before
    assert not list(desc.parent.glob("*.ulp"))


def test_object_that_is_the_target(tree: Path, tmp_path: Path) -> None:
    target = tree / "basic" / "libbasic.so"
    desc = tmp_path / "self.toml"
    desc.write_text(
        f'target = "{target}"\nobject = "{target}"\n[replace]\nbasic_square = "basic_square"\n'
    )
    result = ulp("pack", str(desc))
    assert result.returncode == 1
    assert "self.toml:2: object: is the target itself" in result.stderr


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (
            lambda p: p.write_bytes(b'target = "libbasic.so"\nid = "caf\xe9"\n'),
            "p.toml:2: not UTF-8",
        ),
        (lambda p: p.symlink_to("/dev/zero"), "p.toml: not a regular file"),
        (lambda p: os.mkfifo(p), "p.toml: not a regular file"),
        (lambda p: p.mkdir(), "p.toml: not a regular file"),
        (lambda p: p.write_bytes(b"#" * (2 << 20)), "p.toml: larger than 1048576 bytes"),
    ],
    ids=["latin-1", "dev-zero", "fifo", "directory", "huge"],
)
def test_description_that_is_not_one(
    tmp_path: Path, make: Callable[[Path], object], expected: str
) -> None:
    desc = tmp_path / "p.toml"
    make(desc)
    result = ulp("pack", str(desc), timeout=20)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.toml"]


# The replacement reads the target's `factor` through a near reference (4010: its offset, as
# the test finds it); each case adds what makes the object wrong.
NEAR_OBJECT = """\
        .section .ulp.near, "a"
        .globl __ulp_near_4010
        .hidden __ulp_near_4010
__ulp_near_4010: .long 0
        .text
        .globl fixed
        .type fixed, @function
fixed:  movl __ulp_near_4010(%rip), %eax
        ret
        .size fixed, .-fixed
        .section .note.GNU-stack, "", @progbits
"""
PLACEHOLDER = '.globl {0}\n.hidden {0}\n.section .ulp.near, "a"\n{0}: .byte 0\n'
NEAR_REFUSALS = {
    "not a RIP-relative operand or call": (
        ".text\n.quad __ulp_near_4010\n",
        r"__ulp_near_4010: referenced by relocation type 1 at 0x[0-9a-f]+: a near reference is"
        r" R_X86_64_PC32 or R_X86_64_PLT32",
    ),
    "from data": (
        ".data\n.quad __ulp_near_4010\n",
        r"__ulp_near_4010: referenced from \.data, which is not code",
    ),
    "offset outside the target": (
        PLACEHOLDER.format("__ulp_near_7fff0000") + ".text\ncall __ulp_near_7fff0000\n",
        r"__ulp_near_7fff0000: offset 0x7fff0000 is not in the target's loaded segments",
    ),
    "field outside the object's loaded code": (
        '.section .unloaded, "x"\nmovl __ulp_near_4010(%rip), %eax\n',
        r"__ulp_near_4010: its field at 0x2 is not in the object's executable segment",
    ),
    "malformed name": (
        PLACEHOLDER.format("__ulp_near_0x10") + ".text\ncall __ulp_near_0x10\n",
        r"__ulp_near_0x10: malformed placeholder name: __ulp_near_ then the target's offset in"
        r" lowercase hex \(no 0x\)",
    ),
    "placeholder elsewhere": (
        ".globl __ulp_near_10\n.hidden __ulp_near_10\n.section .rodata\n__ulp_near_10: .byte 0\n"
        ".text\ncall __ulp_near_10\n",
        r"__ulp_near_10: a placeholder must be defined in \.ulp\.near",
    ),
    "local placeholder": (
        '.section .ulp.near, "a"\n__ulp_near_10: .byte 0\n.text\ncall __ulp_near_10\n',
        r"\.text\+0x[0-9a-f]+: refers into \.ulp\.near by its section, not by a __ulp_near_"
        r" symbol \(make the placeholders \.globl and \.hidden",
    ),
    "linked without --emit-relocs": (
        "",
        r"\.ulp\.near: the object has placeholders but not the relocations of its code \(link it"
        r" with -Wl,--emit-relocs\)",
    ),
}


@pytest.mark.parametrize("case", sorted(NEAR_REFUSALS))
def test_near_refusals(tree: Path, tmp_path: Path, case: str) -> None:
    """What cannot be a near reference is refused, one line naming the symbol; the same object
    without the fault packs, with its near reference."""
    factor = f"{_symtab(tree / 'basic' / 'libbasic.so')['factor']:x}"
    extra, expected = (text.replace("4010", factor) for text in NEAR_REFUSALS[case])
    desc = _describe(tmp_path, tree, '[replace]\nbasic_square = "fixed"\n')
    relocs = [] if case == "linked without --emit-relocs" else ["-Wl,--emit-relocs"]
    for source, out, flags in (
        (NEAR_OBJECT.replace("4010", factor) + extra, desc.parent / "patch.so", relocs),
        (NEAR_OBJECT.replace("4010", factor), tmp_path / "good.so", ["-Wl,--emit-relocs"]),
    ):
        (tmp_path / "fix.s").write_text(source)
        built = run(["gcc", "-shared", *flags, "-Wl,--build-id", "-o", str(out),
                     str(tmp_path / "fix.s")])  # fmt: skip
        assert built.returncode == 0, built.stderr
    result = ulp("pack", str(desc))
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert re.search(r"p\.toml:2: object: " + expected, result.stderr), result.stderr
    shutil.copy(tmp_path / "good.so", desc.parent / "patch.so")
    packed = json.loads(ulp("pack", str(desc), "--json").stdout)
    assert [(n["name"], n["addend"]) for n in packed["patch"]["near"]] == [("factor", -4)]
