"""Bad input: one clear line naming the file and the problem, exit 1, the file untouched."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest
from conftest import BuiltSample, run, ulp


def _variant(path: Path, tmp_path: Path, name: str, edit) -> Path:
    data = bytearray(path.read_bytes())
    edit(data)
    out = tmp_path / name
    out.write_bytes(bytes(data))
    return out


def _compile(tmp_path: Path, name: str, *flags: str, source: str = "int main(void){return 0;}"):
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    out = tmp_path / name
    result = run(["gcc", *flags, str(src), "-o", str(out)])
    assert result.returncode == 0, result.stderr
    return out


CASES = {
    "text": ("not an ELF file", lambda b, t: _text(t)),
    "32bit": ("32-bit", lambda b, t: _variant(b, t, "lib32.so", lambda d: d.__setitem__(4, 1))),
    "aarch64": (
        "not x86-64",
        lambda b, t: _variant(b, t, "libarm.so", lambda d: struct.pack_into("<H", d, 18, 183)),
    ),
    "bigendian": (
        "big-endian",
        lambda b, t: _variant(b, t, "libbe.so", lambda d: d.__setitem__(5, 2)),
    ),
    "truncated": (
        "truncated",
        lambda b, t: _variant(b, t, "libcut.so", lambda d: d.__delitem__(slice(1200, None))),
    ),
    "header-only": (
        "truncated ELF header",
        lambda b, t: _variant(b, t, "libhdr.so", lambda d: d.__delitem__(slice(40, None))),
    ),
    "bad-shoff": (
        "truncated or corrupt",
        lambda b, t: _variant(
            b, t, "libshoff.so", lambda d: struct.pack_into("<Q", d, 40, len(d) + 4096)
        ),
    ),
    "bad-phentsize": (
        "corrupt ELF header",
        lambda b, t: _variant(b, t, "libph.so", lambda d: struct.pack_into("<H", d, 54, 40)),
    ),
    "bad-gnu-hash": (
        "corrupt ELF file",
        lambda b, t: _variant(
            b, t, "libhash.so", lambda d: struct.pack_into("<I", d, _gnu_hash_offset(b), 0xFFFFFF)
        ),
    ),
    # .dynsym's string table (sh_link) is .shstrtab, not DT_STRTAB's .dynstr.
    "dynsym-link": (
        "inconsistent dynamic tables: DT_STRTAB",
        lambda b, t: _variant(
            b, t, "liblink.so", lambda d: _set_field(b, d, ".dynsym", 40, "<I", -1)
        ),
    ),
    # .gnu.hash's symoffset beyond .dynsym: the rewriter would insert past the table's end.
    "gnu-hash-symoffset": (
        "symoffset 99 is beyond .dynsym",
        lambda b, t: _variant(
            b, t, "libsymoff.so", lambda d: _set_field(b, d, ".gnu.hash", None, "<I", 99, 4)
        ),
    ),
    # .rela.dyn's sh_offset 8 bytes off: the rewriter would copy relocations the loader never read.
    "rela-offset": (
        "inconsistent dynamic tables: .rela.dyn at address",
        lambda b, t: _variant(
            b, t, "librela.so", lambda d: _set_field(b, d, ".rela.dyn", 24, "<Q", 8, add=True)
        ),
    ),
    "dynamic-loader": (
        "the dynamic loader",
        lambda b, t: _copy(Path("/lib64/ld-linux-x86-64.so.2"), t),
    ),
    "directory": ("not a regular file", lambda b, t: _directory(t)),
    "static": ("static executable", lambda b, t: _compile(t, "static", "-static")),
    "pie": ("PIE executable", lambda b, t: _compile(t, "pie", "-pie", "-fPIE")),
    "exec": ("executable (ET_EXEC)", lambda b, t: _compile(t, "nopie", "-no-pie")),
    "object": ("not a shared library", lambda b, t: _compile(t, "obj.o", "-c")),
    "no-dynsym": (
        "no dynamic symbols",
        lambda b, t: _compile(
            t,
            "libnothing.so",
            "-shared",
            "-nostdlib",
            "-fvisibility=hidden",
            source="static int x; int get(void) { return x; }",
        ),
    ),
}


def _set_field(
    path: Path,
    data: bytearray,
    section: str,
    field: int | None,
    fmt: str,
    value: int,
    at: int = 0,
    add: bool = False,
) -> None:
    """Set a section header field (`field`: its offset in the header) of `section`, or with
    `field` None a word `at` bytes into its contents; value -1 is e_shstrndx."""
    from ulp_build.elf import ElfFile

    elf = ElfFile.load(path)
    sec = elf.section(section)
    where = sec.offset + at if field is None else elf.header.shoff + 64 * sec.index + field
    if value == -1:
        value = elf.header.shstrndx
    if add:
        value += struct.unpack_from(fmt, data, where)[0]
    struct.pack_into(fmt, data, where, value)


def _prepared(raw: Path) -> Path:
    return raw.parent.parent.parent / "prepared" / raw.parent.name / raw.name


def _zero_descriptor(raw: Path, data: bytearray) -> None:
    from ulp_build.elf import ElfFile

    sec = ElfFile.load(_prepared(raw)).section(".ulp.data")
    data[sec.offset + 8 : sec.offset + 16] = bytes(8)


def _copy(path: Path, tmp_path: Path) -> Path:
    out = tmp_path / path.name
    out.write_bytes(path.read_bytes())
    return out


def _directory(tmp_path: Path) -> Path:
    out = tmp_path / "lib.so"
    out.mkdir()
    return out


def _gnu_hash_offset(path: Path) -> int:
    from ulp_build.elf import ElfFile

    return ElfFile.load(path).section(".gnu.hash").offset


def _text(tmp_path: Path) -> Path:
    out = tmp_path / "notes.txt"
    out.write_text("hello\n")
    return out


def _digest(path: Path) -> str:
    return "directory" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", ["rewrite", "rewrite-o", "check"])
def test_bad_input(built: dict[str, BuiltSample], tmp_path: Path, case: str, command: str) -> None:
    expected, make = CASES[case]
    path = make(built["basic"].raw, tmp_path)
    before = _digest(path)
    out = tmp_path / "out.so"
    args = {
        "rewrite": ["rewrite", str(path)],
        "rewrite-o": ["rewrite", str(path), "-o", str(out)],
        "check": ["check", str(path)],
    }[command]
    result = ulp(*args)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"ulp: {path}: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr
    assert _digest(path) == before
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if "ulp-tmp" in p.name) == []


def test_missing_file(tmp_path: Path) -> None:
    result = ulp("rewrite", str(tmp_path / "nope.so"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"ulp: {tmp_path / 'nope.so'}: No such file or directory"


def test_unwritable_output_directory(built: dict[str, BuiltSample], tmp_path: Path) -> None:
    result = ulp("rewrite", str(built["basic"].raw), "-o", str(tmp_path / "no" / "dir" / "x.so"))
    assert result.returncode == 1
    assert result.stderr.startswith("ulp: ") and len(result.stderr.splitlines()) == 1


def test_bad_usage_exits_2() -> None:
    assert ulp("rewrite").returncode == 2
    assert ulp("frobnicate").returncode == 2


@pytest.mark.parametrize("command", ["rewrite", "rewrite-o"])
def test_corrupt_prepared_input(
    built: dict[str, BuiltSample], tmp_path: Path, command: str
) -> None:
    """A prepared library that `check` finds errors in is refused, not passed on as prepared."""
    raw = built["basic"].raw
    path = _variant(_prepared(raw), tmp_path, "libprep.so", lambda d: _zero_descriptor(raw, d))
    out = tmp_path / "out.so"
    result = ulp("rewrite", str(path), *(["-o", str(out)] if command == "rewrite-o" else []))
    assert result.returncode == 1
    assert result.stderr == f"ulp: {path}: prepared, but .ulp.data: no descriptor of version 2\n"
    assert not out.exists()


@pytest.mark.parametrize("kind", ["device", "fifo"])
@pytest.mark.parametrize("command", ["rewrite", "check"])
def test_not_a_regular_file(tmp_path: Path, kind: str, command: str) -> None:
    """Read whole, /dev/zero never ends and a FIFO blocks: both are refused unread."""
    path = Path("/dev/zero")
    if kind == "fifo":
        path = tmp_path / "lib.so"
        os.mkfifo(path)
    result = ulp(command, str(path), timeout=20)
    assert result.returncode == 1
    assert result.stderr == f"ulp: {path}: not a regular file\n"


def test_truncated_property_note(built: dict[str, BuiltSample], tmp_path: Path) -> None:
    """A GNU property note whose x86 feature property is cut short by the note's end is read
    as ending there (as the loader reads it): no traceback, and the file is not taken for IBT."""
    from ulp_build.elf import ElfFile

    cet = built["cet"].raw
    note = next(n for n in ElfFile.load(cet).notes.all if n.type == 5)
    assert struct.unpack_from("<I", note.desc)[0] == 0xC0000002
    at = ElfFile.load(cet).offset_of(note.desc_addr) - 12  # n_descsz, before n_type and "GNU"
    path = _variant(cet, tmp_path, "libcet.so", lambda d: struct.pack_into("<I", d, at, 10))
    for args in (["check", str(path)], ["rewrite", str(path), "-o", str(tmp_path / "o.so")]):
        result = ulp(*args)
        assert "Traceback" not in result.stderr
        assert result.returncode == (0 if args[0] == "rewrite" else 1), result.stderr
    assert not ElfFile.load(path).uses_ibt


def test_rewriter_errors_name_the_file(built: dict[str, BuiltSample], tmp_path: Path) -> None:
    """A loadable segment so large that trampolines after it cannot reach the code: `check`
    reads it fine, `rewrite` refuses it with code generation's error, naming the file."""
    raw = built["basic"].raw
    path = _variant(raw, tmp_path, "libhuge.so", lambda d: struct.pack_into("<H", d, 162, 0xFFFF))
    result = ulp("rewrite", str(path), "-o", str(tmp_path / "out.so"))
    assert result.returncode == 1
    assert result.stderr.startswith(f"ulp: {path}: trampolines at 0x"), result.stderr
    assert result.stderr.endswith(": a target beyond a 32-bit displacement\n")
    assert not (tmp_path / "out.so").exists()
