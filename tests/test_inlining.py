"""Copies of a replaced function (ulp_build/patch/copies.py): `pack` warns when the function is
inlined into other functions or cloned and the patch leaves those old, refuses with `--strict`,
and a process patched that way really does keep running the old code in the inlined copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import REPO, run, ulp
from live import running, triggered

from ulp_build.elf import ElfFile
from ulp_build.errors import UlpError
from ulp_build.patch.packer import pack
from ulp_build.prepare.layout import CFLAGS

PROGRAM = REPO / "tests" / "programs" / "inlining"
GUIDE = '(docs/writing-patches.md, "Inlined copies")'
FIX = {
    "parse_header": "parse_header_v2",
    "read_file": "read_file_v2",
    "parse_all": "parse_all_v2",
    "checksum": "checksum_v2",
}


def _library(directory: Path, *debug: str) -> Path:
    """libinlining.so built as issue #16's was (-fno-semantic-interposition), prepared."""
    directory.mkdir()
    raw = directory / "raw.so"
    flags = [*CFLAGS, "-O2", *debug, "-fno-semantic-interposition", "-fPIC", "-shared"]
    command = ["gcc", *flags, "-Wl,-soname,libinlining.so", "-o", str(raw)]
    result = run([*command, str(PROGRAM / "inlining.c")])
    assert result.returncode == 0, result.stderr
    # The copies are really there: parse_header's callers never call it, checksum's callers
    # jump to its split-off part, not to it.
    for caller in ("read_file", "parse_all", "checksum_small", "checksum_large"):
        code = run(["objdump", "-d", f"--disassemble={caller}", str(raw)]).stdout
        assert "<parse_header>" not in code and "<checksum>" not in code, code
        assert ("<checksum.part.0>" in code) == caller.startswith("checksum"), code
    lib = directory / "libinlining.so"
    assert ulp("rewrite", str(raw), "-o", str(lib)).returncode == 0
    return lib


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The library with and without -g, and the fix: tmp/{debug,plain}/libinlining.so, fix.so."""
    root = tmp_path_factory.mktemp("inlining")
    _library(root / "debug", "-g")
    _library(root / "plain")
    # Its functions leaves, as those they replace are: parse_header_v2 is inlined too.
    flags = ["-O2", "-fno-semantic-interposition", "-fPIC", "-shared"]
    command = ["gcc", *flags, "-o", str(root / "fix.so")]
    result = run([*command, str(PROGRAM / "fix.c")])
    assert result.returncode == 0, result.stderr
    return root


def _describe(built: Path, tmp_path: Path, replace: list[str], build: str = "debug") -> Path:
    lines = "".join(f'{name} = "{FIX[name]}"\n' for name in replace)
    description = tmp_path / "fix.toml"
    description.write_text(
        f'target = "{built / build / "libinlining.so"}"\nobject = "{built / "fix.so"}"\n'
        f'id = "fix"\ndescription = "x"\n\n[replace]\n{lines}'
    )
    return description


def test_pack_names_the_callers_holding_copies(built: Path, tmp_path: Path) -> None:
    description = _describe(built, tmp_path, ["parse_header", "checksum"])
    packed = pack(description)
    assert packed.warnings == [
        f"{description}:7: replace: parse_header: inlined into parse_all, read_file: those keep"
        f" the old code unless the patch replaces them too {GUIDE}",
        f"{description}:8: replace: checksum: inlined into checksum_large, checksum_small (and"
        " cloned as checksum.part.0): those keep the old code unless the patch replaces them"
        f" too {GUIDE}",
    ]
    assert len(packed.patch.functions) == 2  # written all the same
    cli = ulp("pack", str(description), "-o", str(tmp_path / "cli.ulp"))
    assert cli.returncode == 0 and (tmp_path / "cli.ulp").is_file()
    assert [f"warning: {w}" for w in packed.warnings] == cli.stderr.splitlines()


def test_replacing_the_callers_too_is_fine(built: Path, tmp_path: Path) -> None:
    description = _describe(built, tmp_path, ["parse_header", "read_file", "parse_all"])
    assert pack(description).warnings == []
    # Only one of the callers: the other is still named.
    description = _describe(built, tmp_path, ["parse_header", "read_file"])
    (warning,) = pack(description).warnings
    assert ": replace: parse_header: inlined into parse_all: those keep" in warning


def test_strict_refuses_and_writes_nothing(built: Path, tmp_path: Path) -> None:
    description = _describe(built, tmp_path, ["parse_header", "checksum"])
    with pytest.raises(UlpError) as refused:
        pack(description, strict=True)
    assert str(refused.value).splitlines() == pack(tmp_path / "fix.toml").warnings
    (tmp_path / "fix.ulp").unlink()
    (tmp_path / "fix.rev.ulp").unlink()
    cli = ulp("pack", str(description), "--strict")
    assert cli.returncode == 1 and cli.stdout == ""
    assert [line.split(": replace: ")[1][:13] for line in cli.stderr.splitlines()] == [
        "parse_header:",
        "checksum: inl",
    ]
    assert all(line.startswith(f"ulp: {description}:") for line in cli.stderr.splitlines())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fix.toml"]
    whole = _describe(built, tmp_path, ["parse_header", "read_file", "parse_all"])
    assert ulp("pack", str(whole), "--strict").returncode == 0


def test_without_debug_info_only_clones_are_found(built: Path, tmp_path: Path) -> None:
    """Without -g nothing records where a function was inlined: see docs/writing-patches.md."""
    plain = built / "plain" / "libinlining.so"
    assert "debug_info" not in run(["readelf", "-S", str(plain)]).stdout
    description = _describe(built, tmp_path, ["parse_header", "checksum"], build="plain")
    assert pack(description).warnings == [
        f"{description}:8: replace: checksum: cloned as checksum.part.0: those keep the old code"
        f" unless the patch replaces them too {GUIDE}"
    ]


def test_the_inlined_copies_really_keep_the_old_code(
    built: Path, tmp_path: Path, runtime: Path
) -> None:
    """Why the warning matters: patched alone, parse_header rejects a bad header when called,
    while read_file and parse_all, holding their own copies of it, still accept it."""
    lib = built / "debug" / "libinlining.so"
    program = tmp_path / "main"
    command = ["gcc", "-O2", "-o", str(program), str(PROGRAM / "main.c"), str(lib)]
    result = run([*command, f"-Wl,-rpath,{lib.parent}"])
    assert result.returncode == 0, result.stderr
    for replace, after in (
        (["parse_header"], "-1 112 112"),
        (["parse_header", "read_file", "parse_all"], "-1 -1 -1"),
    ):
        patch = built / f"live-{len(replace)}.ulp"  # next to its object
        pack(_describe(built, tmp_path, replace), patch)
        with running(program, runtime) as p:
            assert p.ask("4x") == "112 112 112"  # '4' * 10 + 'x' - '0'
            applied = triggered(p.pid, patch)
            assert applied.stdout.startswith(f"{p.pid}: applied:"), applied.stdout
            assert p.ask("4x") == after
            assert p.ask("42") == "42 42 42"


@pytest.mark.parametrize("section", [".debug_abbrev", ".debug_info"])
def test_unreadable_dwarf_is_a_warning(built: Path, tmp_path: Path, section: str) -> None:
    lib = tmp_path / "debug" / "libinlining.so"
    lib.parent.mkdir()
    data = bytearray((built / "debug" / "libinlining.so").read_bytes())
    found = ElfFile.load(built / "debug" / "libinlining.so").section(section)
    assert found is not None
    data[found.offset : found.offset + found.size] = b"\xff" * found.size
    lib.write_bytes(data)
    description = _describe(tmp_path, tmp_path, ["parse_header"])
    shutil.copy(built / "fix.so", tmp_path)
    (warning,) = pack(description).warnings
    assert warning.startswith(f"{description}:1: target: {lib}: unreadable DWARF (")
    assert warning.endswith("); inlined copies of the replaced functions were not looked for")
    cli = ulp("pack", str(description), "--strict")
    assert cli.returncode == 1 and cli.stderr == f"ulp: {warning}\n"
