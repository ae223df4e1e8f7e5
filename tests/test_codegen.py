"""The hand-encoded routines say what their comments say: keystone assembles the same text to
the same bytes, and capstone reads the bytes back as the intended instructions."""

from __future__ import annotations

import capstone
import keystone
import pytest

from ulp_build.errors import UlpError
from ulp_build.prepare import codegen

AT = 0x6000
FUNCTION = 0x111E
ENTRY = 0x6100
SLOT = 0x7000


def assemble(text: str, at: int) -> bytes:
    ks = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)
    encoding, _count = ks.asm(text, at)
    return bytes(encoding)


def disassemble(code: bytes, at: int) -> list[str]:
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    return [f"{i.mnemonic} {i.op_str}".strip() for i in cs.disasm(code, at)]


@pytest.mark.parametrize("ibt", [False, True])
def test_trampoline(ibt: bool) -> None:
    code = codegen.trampoline(AT, FUNCTION, ENTRY, ibt)
    assert len(code) == codegen.trampoline_size(ibt)
    body = code[4:] if ibt else code
    start = AT + (4 if ibt else 0)
    # keystone does not compute rip-relative displacements: give it the displacement itself.
    disp = FUNCTION - (start + 7)
    expected = assemble(f"lea r11, [rip + {disp}]; push r11; jmp {ENTRY:#x}", start)
    assert body[: len(expected)] == expected
    listing = disassemble(code, AT)
    assert listing[: 4 if ibt else 3] == (["endbr64"] if ibt else []) + [
        f"lea r11, [rip - {-disp:#x}]",
        "push r11",
        f"jmp {ENTRY:#x}",
    ]
    assert set(code[codegen.TRAMPOLINE_CODE + (4 if ibt else 0) :]) <= {0xCC}
    decoded = codegen.decode_trampoline(code, AT)
    assert decoded == codegen.DecodedTrampoline(False, FUNCTION, ENTRY)


def test_ifunc_trampoline_loads_the_slot() -> None:
    code = codegen.ifunc_trampoline(AT, SLOT, ENTRY, False)
    assert disassemble(code, AT)[:3] == [
        f"mov r11, qword ptr [rip + {SLOT - (AT + 7):#x}]",
        "push r11",
        f"jmp {ENTRY:#x}",
    ]
    assert codegen.decode_trampoline(code, AT) == codegen.DecodedTrampoline(True, SLOT, ENTRY)


def test_ulp_entry() -> None:
    desc = SLOT + 8
    code = codegen.ulp_entry(ENTRY, SLOT, desc)
    listing = disassemble(code, ENTRY)
    assert listing == [
        f"cmp qword ptr [rip + {SLOT - (ENTRY + 8):#x}], 0",
        f"je {ENTRY + 23:#x}",
        f"lea r11, [rip + {desc - (ENTRY + 17):#x}]",
        f"jmp qword ptr [rip + {SLOT - (ENTRY + 23):#x}]",
        "pop r11",
        "jmp r11",
    ]
    assert len(code) == codegen.ULP_ENTRY_SIZE == 28


def _rip(target: int, next_ip: int) -> str:
    return (
        f"[rip - {next_ip - target:#x}]" if target < next_ip else f"[rip + {target - next_ip:#x}]"
    )


@pytest.mark.parametrize("ibt", [False, True])
@pytest.mark.parametrize("leaves", [(), (0x1300, 0x7100)])
def test_ifunc_wrapper(ibt: bool, leaves: tuple[int, ...]) -> None:
    resolver, tramp = 0x1200, AT + 0x40
    code = codegen.ifunc_wrapper(ENTRY, resolver, SLOT, tramp, ibt, leaves)
    assert len(code) == codegen.ifunc_wrapper_size(ibt, len(leaves))
    listing = disassemble(code, ENTRY)
    base = ENTRY + (4 if ibt else 0)
    done = base + 16 + 16 * len(leaves) + 7  # the add, where every match goes
    compares = []
    for k, leaf in enumerate(leaves):
        at = base + 16 + 16 * k
        compares += [f"lea rcx, {_rip(leaf, at + 7)}", "cmp rax, rcx", f"je {done:#x}"]
    assert listing == (["endbr64"] if ibt else []) + [
        "sub rsp, 8",
        f"call {resolver:#x}",
        f"mov qword ptr [rip + {SLOT - (base + 16):#x}], rax",
        *compares,
        f"lea rax, {_rip(tramp, done)}",
        "add rsp, 8",
        "ret",
    ]
    assert codegen.decode_ifunc_wrapper(code, ENTRY) == codegen.DecodedWrapper(
        resolver, SLOT, tramp, leaves
    )


def test_a_wrapper_whose_comparison_leads_elsewhere_is_not_ours() -> None:
    """`check` relies on the decoder: a match must return the variant, nothing else."""
    code = bytearray(codegen.ifunc_wrapper(ENTRY, 0x1200, SLOT, AT, False, (0x1300,)))
    assert codegen.decode_ifunc_wrapper(bytes(code), ENTRY) is not None
    code[16 + 12] += 1  # the je's displacement: one byte past the add
    assert codegen.decode_ifunc_wrapper(bytes(code), ENTRY) is None
    assert codegen.decode_ifunc_wrapper(bytes(code[:-1]), ENTRY) is None


def test_decoders_refuse_foreign_bytes() -> None:
    assert codegen.decode_trampoline(b"\x90" * 24, AT) is None
    assert codegen.decode_trampoline(b"\x4c\x8d\x1d", AT) is None
    assert codegen.decode_ifunc_wrapper(b"\xc3" * 40, AT) is None


def test_displacement_out_of_range_is_an_error() -> None:
    with pytest.raises(Exception, match="32-bit"):
        codegen.trampoline(0, 1 << 40, 0, False)


def test_universe_checker() -> None:
    pad = 0x5FF2  # 14 bytes before an entry at 0x6000
    code = codegen.checker_pad(pad, SLOT, 4321)
    assert len(code) == 14
    assert disassemble(code, pad) == [
        "mov r11d, 0x10e1",
        f"jmp qword ptr [rip + {SLOT - (pad + 12):#x}]",
        "nop",
        "nop",
    ]
    assert codegen.checker_index(pad, code, SLOT) == 4321
    assert codegen.checker_index(pad, code, SLOT + 8) is None
    assert disassemble(codegen.checker_jump(0x6000, pad), 0x6000) == [f"jmp {pad:#x}"]
    assert disassemble(codegen.checker_jump(0x6004, pad), 0x6004) == [f"jmp {pad:#x}"]
    with pytest.raises(UlpError):
        codegen.checker_jump(0x6100, pad)


@pytest.mark.parametrize("target", [0x7FF0_0000_1000, 0x6000 + (1 << 30)])
def test_direct_pad(target: int) -> None:
    pad = 0x5FF2
    code = codegen.direct_pad(pad, target)
    assert len(code) == 14
    listing = disassemble(code, pad)
    if target - pad < 1 << 31:
        assert listing == [f"jmp {target:#x}"] + ["nop"] * 9
    else:
        assert listing[0] == "jmp qword ptr [rip]"
    assert codegen.direct_target(pad, code) == target
    assert codegen.direct_target(pad, codegen.checker_pad(pad, SLOT, 1)) is None
