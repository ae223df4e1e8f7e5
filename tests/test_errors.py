"""Bad input: one clear line naming the file and the problem, exit 1, the file untouched."""

from __future__ import annotations

import hashlib
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


def _gnu_hash_offset(path: Path) -> int:
    from ulp_build.elf import ElfFile

    return ElfFile.load(path).section(".gnu.hash").offset


def _text(tmp_path: Path) -> Path:
    out = tmp_path / "notes.txt"
    out.write_text("hello\n")
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
