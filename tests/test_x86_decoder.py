"""The package's own binding of libcapstone (ulp_build/prepare/x86_decoder.py) decodes what
capstone's binding decodes: the whole code of the system's libc, instruction for instruction,
and its `cs_insn` layout is the capstone package's."""

from __future__ import annotations

import ctypes
from pathlib import Path

import capstone
import pytest
from conftest import run, system_libc

from ulp_build.elf import ElfFile
from ulp_build.prepare import x86_decoder


@pytest.fixture(scope="module")
def libc_text() -> tuple[bytes, int]:
    elf = ElfFile.load(system_libc())
    text = elf.section(".text")
    assert text is not None
    return elf.section_data(text), text.addr


def capstones(code: bytes, address: int) -> list[x86_decoder.Instruction]:
    return list(capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64).disasm_lite(code, address))


def test_the_wheels_library_is_bound() -> None:
    """Otherwise the comparisons below would compare capstone's binding with itself."""
    assert isinstance(x86_decoder.decoder(), x86_decoder._Handle)


def test_libc_decodes_as_with_capstone(libc_text: tuple[bytes, int]) -> None:
    code, address = libc_text
    ours = list(x86_decoder.decoder().disasm_lite(code, address))
    assert len(ours) > 100_000  # many batches
    assert ours == capstones(code, address)


def test_the_comparison_sees_a_difference(libc_text: tuple[bytes, int]) -> None:
    """The control: the same bytes decoded 16 bytes higher give the same instructions with
    other addresses and other branch targets, and the comparison above tells them apart."""
    code, address = libc_text
    code = code[:4096]
    ours = list(x86_decoder.decoder().disasm_lite(code, address + 16))
    theirs = capstones(code, address)
    assert ours != theirs
    assert [(n, m) for _a, n, m, _o in ours] == [(n, m) for _a, n, m, _o in theirs]
    assert [o for *_, o in ours] != [o for *_, o in theirs]


def test_decoding_stops_where_capstone_stops() -> None:
    """At the first bytes that are no instruction, past a batch boundary: 300 nops, then
    `push es` (06, invalid in 64-bit code), then more nops."""
    code = b"\x90" * 300 + b"\x06" + b"\x90" * 10
    ours = list(x86_decoder.decoder().disasm_lite(code, 0x1000))
    assert len(ours) == 300
    assert ours == capstones(code, 0x1000)


def test_the_instruction_layout_is_capstones() -> None:
    ours, theirs = x86_decoder.CsInsn, capstone._cs_insn
    assert ctypes.sizeof(ours) == ctypes.sizeof(theirs) == 248
    names = [name for name, _ in theirs._fields_]
    assert [name for name, _ in ours._fields_] == names
    for name in names:
        assert getattr(ours, name).offset == getattr(theirs, name).offset, name
        assert getattr(ours, name).size == getattr(theirs, name).size, name


def test_another_major_version_is_left_to_capstones_binding(tmp_path: Path) -> None:
    """A libcapstone whose cs_version says 6 is not bound (its cs_insn differs); the wheel's
    is."""
    source = tmp_path / "cs6.c"
    source.write_text(
        "int cs_version(int *major, int *minor) { *major = 6; *minor = 0; return 0x600; }\n"
    )
    run(["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "libcapstone.so"), str(source)])
    assert x86_decoder._bound(str(tmp_path / "libcapstone.so")) is None
    wheel = Path(capstone.__file__).parent / "lib" / "libcapstone.so"
    assert x86_decoder._bound(str(wheel)) is not None
