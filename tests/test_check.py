"""`ulp check`: what it reports on good libraries and which damage it finds."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

from conftest import BuiltSample, run, ulp

from ulp_build.elf import PF_X, ElfFile
from ulp_build.prepare import patchable
from ulp_build.prepare.layout import DESCRIPTOR_OFFSET, SECTION_DATA


def _check(path: Path) -> tuple[int, dict]:
    result = ulp("check", str(path), "--json")
    return result.returncode, json.loads(result.stdout)


def test_prepared_sample(built: dict[str, BuiltSample]) -> None:
    code, report = _check(built["basic"].prepared)
    assert code == 0
    assert report["prepared"] and report["usable"]
    assert report["exported_functions"] == 8  # seven functions, one of them with two names
    assert report["trampolines"] == 7
    assert report["patchable_functions"] == 8  # the seven, plus the static `scale`
    assert report["tracked_not_patchable"] == [] and report["untracked"] == []
    assert report["errors"] == [] and report["warnings"] == []


def test_unprepared_sample_exits_1(built: dict[str, BuiltSample]) -> None:
    code, report = _check(built["basic"].raw)
    assert code == 1
    assert not report["prepared"]
    assert report["patchable_functions"] == 8
    assert any("not prepared" in e for e in report["errors"])


def test_ifunc_counted(built: dict[str, BuiltSample]) -> None:
    code, report = _check(built["ifunc"].prepared)
    assert code == 0 and report["ifuncs"] == 1


def test_text_output(built: dict[str, BuiltSample]) -> None:
    result = ulp("check", str(built["cet"].prepared))
    assert result.returncode == 0
    assert result.stdout.splitlines()[0].startswith(f"{built['cet'].prepared}: prepared")
    assert "trampolines             7" in result.stdout


def test_finds_unnormalized_entry(built: dict[str, BuiltSample], tmp_path: Path) -> None:
    copy = tmp_path / "libbasic.so"
    shutil.copy(built["basic"].prepared, copy)
    elf = ElfFile.load(copy)
    func = next(iter(patchable.find(elf).functions.values()))
    data = bytearray(copy.read_bytes())
    off = elf.offset_of(func.nop_at)
    data[off : off + 2] = b"\x90\x90"
    copy.write_bytes(bytes(data))
    code, report = _check(copy)
    assert code == 1
    assert any("entry nops" in e for e in report["errors"])


def test_finds_broken_trampoline(built: dict[str, BuiltSample], tmp_path: Path) -> None:
    copy = tmp_path / "libbasic.so"
    shutil.copy(built["basic"].prepared, copy)
    elf = ElfFile.load(copy)
    sym = next(s for s in elf.dynamic_symbols if s.name == "basic_square")
    data = bytearray(copy.read_bytes())
    data[elf.offset_of(sym.value)] = 0xCC
    copy.write_bytes(bytes(data))
    code, report = _check(copy)
    assert code == 1
    assert any(
        e.startswith("basic_square: .dynsym points into .ulp but not at a trampoline")
        for e in report["errors"]
    )


def test_finds_bad_descriptor(built: dict[str, BuiltSample], tmp_path: Path) -> None:
    copy = tmp_path / "libbasic.so"
    shutil.copy(built["basic"].prepared, copy)
    elf = ElfFile.load(copy)
    data = bytearray(copy.read_bytes())
    struct.pack_into(
        "<8s", data, elf.offset_of(elf.section(SECTION_DATA).addr + DESCRIPTOR_OFFSET), b"garbage!"
    )
    copy.write_bytes(bytes(data))
    code, report = _check(copy)
    assert code == 1
    assert any("descriptor" in e for e in report["errors"])


def test_record_without_padding_and_padding_without_record(tmp_path: Path) -> None:
    """GCC emits records only for what it padded; a function that lost its record (as under
    --gc-sections) or a record whose padding is gone must both be reported."""
    src = tmp_path / "lost.c"
    src.write_text(
        "int keep(int x) { return x + 1; }\n"
        "__attribute__((patchable_function_entry(0, 0))) int bare(int x) { return x * 2; }\n"
        '__asm__(".pushsection __patchable_function_entries,\\"awo\\",@progbits,bare\\n'
        ' .quad bare - 14\\n .popsection");\n'
    )
    lib = tmp_path / "liblost.so"
    from conftest import run

    result = run(
        [
            "gcc",
            "-O2",
            "-fPIC",
            "-shared",
            "-fpatchable-function-entry=16,14",
            str(src),
            "-o",
            str(lib),
        ]
    )
    assert result.returncode == 0, result.stderr
    _code, report = _check(lib)
    assert any("record without padding" in w for w in report["warnings"])
    # Remove keep()'s record: its padding is still there.
    elf = ElfFile.load(lib)
    keep = next(s for s in elf.dynamic_symbols if s.name == "keep")
    data = bytearray(lib.read_bytes())
    for sec in elf.sections:
        if sec.name == patchable.RECORDS_SECTION:
            for r in elf.relocations_at(sec.addr, sec.size):
                if r.addend == keep.value - patchable.PAD_BEFORE:
                    rela_at = _rela_offset(elf, r.offset)
                    struct.pack_into("<QQq", data, rela_at, r.offset, 8, 0)
                    struct.pack_into("<Q", data, elf.offset_of(r.offset), 0)
    lib.write_bytes(bytes(data))
    _code, report = _check(lib)
    assert any(w.endswith(": keep") and "padding without" in w for w in report["warnings"])


def _rela_offset(elf: ElfFile, target: int) -> int:
    from ulp_build.elf import DT_RELA, DT_RELASZ, RELA

    start = elf.offset_of(elf.dynamic_value(DT_RELA))
    for k in range(elf.dynamic_value(DT_RELASZ) // RELA.size):
        (r_offset,) = struct.unpack_from("<Q", elf.data, start + k * RELA.size)
        if r_offset == target:
            return start + k * RELA.size
    raise AssertionError("relocation not found")


def test_every_prepared_sample_checks_clean(built: dict[str, BuiltSample]) -> None:
    for name, b in built.items():
        code, report = _check(b.prepared)
        assert code == 0, (name, report["errors"])
        assert report["errors"] == [], name


# Two padded functions, the second (66 90 c3) the last bytes of the code segment: ld.so's
# __rtld_version_placeholder is laid out so. -nostdlib leaves no .fini after .text.
_LAST_IN_SEGMENT = """
    .text
    .globl with_endbr, last
    .type with_endbr, @function
    .type last, @function
    .rept 14
    nop
    .endr
with_endbr:
    endbr64
    xchg %ax, %ax
    ret
    .size with_endbr, .-with_endbr
    .rept 14
    nop
    .endr
last:
    xchg %ax, %ax
    ret
    .size last, .-last
    .section .note.GNU-stack,"",@progbits
"""


def test_padded_function_ending_the_code_segment(tmp_path: Path) -> None:
    (tmp_path / "last.s").write_text(_LAST_IN_SEGMENT)
    lib = tmp_path / "liblast.so"
    built = run(["gcc", "-shared", "-nostdlib", "-o", str(lib), str(tmp_path / "last.s")])
    assert built.returncode == 0, built.stderr
    elf = ElfFile.load(lib)
    last = next(s for s in elf.dynamic_symbols if s.name == "last")
    code_end = max(p.vaddr + p.filesz for p in elf.loads if p.flags & PF_X)
    assert last.value + last.size == code_end  # nothing after it in the segment
    found = patchable.find(elf).functions
    assert sorted(found) == sorted(s.value for s in elf.dynamic_symbols if s.size)
    assert found[last.value].nop_at == last.value
    _code, report = _check(lib)
    assert report["patchable_functions"] == 2
