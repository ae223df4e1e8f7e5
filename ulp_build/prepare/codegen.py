"""x86-64 machine code the rewriter adds to a library, and its decoding for `check`.

Every routine is a handful of fixed instructions whose only variable parts are rip-relative
displacements, so they are encoded here by hand; the tests assemble the same text with keystone
and disassemble the output with capstone to prove the bytes say what the comments say.

All displacements are relative to the end of the instruction, as the CPU computes them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

from ulp_build.errors import UlpError

ENDBR64 = bytes.fromhex("f30f1efa")
NOP2 = bytes.fromhex("6690")
INT3 = b"\xcc"

# lea disp(%rip),%r11 / mov disp(%rip),%r11: 7 bytes each; push %r11; jmp rel32.
_LEA_R11 = bytes.fromhex("4c8d1d")
_MOV_R11 = bytes.fromhex("4c8b1d")
_PUSH_R11 = bytes.fromhex("4153")
_JMP_REL32 = b"\xe9"
TRAMPOLINE_CODE = 14


_TRAMPOLINE = struct.Struct("<3si3si")


def _rel32(target: int, next_ip: int) -> bytes:
    disp = target - next_ip
    if not -(1 << 31) <= disp < (1 << 31):
        raise UlpError(f"displacement {disp:#x} from {next_ip:#x} to {target:#x} exceeds 32 bits")
    return struct.pack("<i", disp)


def trampoline_size(ibt: bool) -> int:
    """Bytes reserved per trampoline: the code rounded up to keep them 8-byte aligned."""
    return 24 if ibt else 16


def trampoline(at: int, function: int, entry: int, ibt: bool) -> bytes:
    """`lea function(%rip),%r11; push %r11; jmp entry`, padded with int3.

    The real entry travels on the stack so the shared `ulp_entry` needs no per-function code,
    and %r11 is free: the SysV ABI passes no argument in it and callers may not expect it kept.
    """
    return trampoline_table(at, [(False, function)], entry, ibt)


def ifunc_trampoline(at: int, slot: int, entry: int, ibt: bool) -> bytes:
    """Like `trampoline`, but the real entry is loaded from the slot the IFUNC wrapper filled."""
    return trampoline_table(at, [(True, slot)], entry, ibt)


def trampoline_table(at: int, targets: list[tuple[bool, int]], entry: int, ibt: bool) -> bytes:
    """Consecutive trampolines from `at`, one per (indirect, function or slot) in `targets`.

    Built in one buffer with one struct.pack_into per trampoline: a libc has 3000 of them.
    """
    size = trampoline_size(ibt)
    table = bytearray(INT3 * (size * len(targets)))
    skip = 4 if ibt else 0
    pack = _TRAMPOLINE.pack_into
    tail = _PUSH_R11 + _JMP_REL32
    try:
        for i, (indirect, operand) in enumerate(targets):
            pos = i * size
            if ibt:
                table[pos : pos + 4] = ENDBR64
            start = at + pos + skip
            pack(
                table,
                pos + skip,
                _MOV_R11 if indirect else _LEA_R11,
                operand - (start + 7),
                tail,
                entry - (start + 14),
            )
    except struct.error:
        raise UlpError(f"trampolines at {at:#x}: a target beyond a 32-bit displacement") from None
    return bytes(table)


def ulp_entry(at: int, runtime_slot: int, descriptor: int) -> bytes:
    """The library's tracking entry, reached from every trampoline with the real entry pushed.

    Without a runtime the GOT slot holds 0 (weak undefined symbol) and the entry pops the real
    address and jumps there, leaving the stack exactly as the caller built it. With the runtime
    it jumps to the runtime's routine with this library's descriptor in %r11 and the real entry
    still on the stack.
    """
    code = bytearray()
    code += bytes.fromhex("48833d") + _rel32(runtime_slot, at + 8) + b"\x00"  # cmpq $0,slot(%rip)
    code += bytes.fromhex("740d")  # je over the 13 bytes of lea + jmp
    code += _LEA_R11 + _rel32(descriptor, at + len(code) + 7)
    code += bytes.fromhex("ff25") + _rel32(runtime_slot, at + len(code) + 6)  # jmp *slot(%rip)
    code += bytes.fromhex("415b")  # pop %r11
    code += bytes.fromhex("41ffe3")  # jmp *%r11
    return bytes(code)


def ifunc_wrapper(
    at: int, resolver: int, slot: int, trampoline_at: int, ibt: bool, leaves: Sequence[int] = ()
) -> bytes:
    """A resolver that runs the original resolver, keeps its answer in `slot` and returns the
    trampoline, so callers of an IFUNC symbol are tracked like any other function; unless the
    answer is one of `leaves` (implementations that are leaves, leaves.py), which it returns
    itself: which variant the CPU gets decides whether its calls are tracked.

    The original resolver gets the argument registers untouched (some ABIs pass hwcaps there).
    %rcx, which the comparisons use, is a scratch register for any caller of a function.
    """
    code = bytearray(ENDBR64 if ibt else b"")
    code += bytes.fromhex("4883ec08")  # sub $8,%rsp: keep the call 16-byte aligned
    code += b"\xe8" + _rel32(resolver, at + len(code) + 5)
    code += bytes.fromhex("488905") + _rel32(slot, at + len(code) + 7)  # mov %rax,slot(%rip)
    done = at + len(code) + _WRAPPER_LEAF * len(leaves) + 7  # the add below
    for leaf in leaves:
        code += _LEA_RCX + _rel32(leaf, at + len(code) + 7)
        code += _CMP_RCX_RAX
        code += _JE_REL32 + _rel32(done, at + len(code) + 6)
    code += bytes.fromhex("488d05") + _rel32(trampoline_at, at + len(code) + 7)
    code += bytes.fromhex("4883c408")  # add $8,%rsp
    code += b"\xc3"
    return bytes(code)


_LEA_RCX = bytes.fromhex("488d0d")  # lea rel32(%rip),%rcx
_CMP_RCX_RAX = bytes.fromhex("4839c8")  # cmp %rcx,%rax
_JE_REL32 = bytes.fromhex("0f84")
_WRAPPER_LEAF = 16  # the bytes of one leaf's comparison
_WRAPPER_HEAD = 16  # sub, call, mov to the slot
_WRAPPER_TAIL = 12  # lea of the trampoline, add, ret


ULP_ENTRY_SIZE = len(ulp_entry(0, 0, 0))


def ifunc_wrapper_size(ibt: bool, leaves: int = 0) -> int:
    return (4 if ibt else 0) + _WRAPPER_HEAD + _WRAPPER_LEAF * leaves + _WRAPPER_TAIL


class DecodedTrampoline(NamedTuple):
    """What a trampoline at some address jumps to."""

    indirect: bool  # True: the target is read from `target` (an IFUNC slot)
    target: int
    entry: int


def decode_trampoline(code: bytes, at: int) -> DecodedTrampoline | None:
    """Inverse of `trampoline`/`ifunc_trampoline`; None when the bytes are not one of ours."""
    pos = 4 if code.startswith(ENDBR64) else 0
    if len(code) < pos + TRAMPOLINE_CODE:
        return None
    op = code[pos : pos + 3]
    if op not in (_LEA_R11, _MOV_R11):
        return None
    if code[pos + 7 : pos + 10] != _PUSH_R11 + _JMP_REL32:
        return None
    (disp,) = struct.unpack_from("<i", code, pos + 3)
    (jdisp,) = struct.unpack_from("<i", code, pos + 10)
    return DecodedTrampoline(op == _MOV_R11, at + pos + 7 + disp, at + pos + 14 + jdisp)


class DecodedWrapper(NamedTuple):
    """What an IFUNC wrapper at some address runs and returns."""

    resolver: int
    slot: int
    trampoline: int
    leaves: tuple[int, ...]  # the implementations it returns themselves when chosen


def decode_ifunc_wrapper(code: bytes, at: int) -> DecodedWrapper | None:
    """Inverse of `ifunc_wrapper`, from its bytes (as many as its symbol's size), or None."""
    pos = 4 if code.startswith(ENDBR64) else 0
    if len(code) < pos + _WRAPPER_HEAD + _WRAPPER_TAIL:
        return None
    if code[pos : pos + 5] != bytes.fromhex("4883ec08e8") or code[pos + 9 : pos + 12] != (
        bytes.fromhex("488905")
    ):
        return None
    (call,) = struct.unpack_from("<i", code, pos + 5)
    (slot,) = struct.unpack_from("<i", code, pos + 12)
    resolver, slot = at + pos + 9 + call, at + pos + 16 + slot
    leaves = []
    pos += _WRAPPER_HEAD
    while code[pos : pos + 3] == _LEA_RCX:
        if len(code) < pos + _WRAPPER_LEAF + _WRAPPER_TAIL:
            return None
        if code[pos + 7 : pos + 12] != _CMP_RCX_RAX + _JE_REL32:
            return None
        (leaf,) = struct.unpack_from("<i", code, pos + 3)
        leaves.append(at + pos + 7 + leaf)
        pos += _WRAPPER_LEAF
    if code[pos : pos + 3] != bytes.fromhex("488d05"):
        return None
    (tramp,) = struct.unpack_from("<i", code, pos + 3)
    # Every comparison must lead to the return of %rax, as the rewriter writes them.
    done = pos + 7
    for k in range(len(leaves)):
        jump = pos - _WRAPPER_LEAF * (len(leaves) - k) + 10
        if jump + 6 + struct.unpack_from("<i", code, jump + 2)[0] != done:
            return None
    if code[done : done + 5] != bytes.fromhex("4883c408c3"):
        return None
    return DecodedWrapper(resolver, slot, at + pos + 7 + tramp, tuple(leaves))


# The universe checker (docs/design.md, "The universe checker and the dispatcher"). The 14-byte
# pad before a patched entry becomes
#     mov $index, %r11d        the function's record in the runtime: the dispatcher's one load
#     jmp *dispatch(%rip)      through the library's dispatch slot, into the runtime
#     nop; nop
# and the entry's 2-byte nop becomes `jmp pad` (eb rel8). The pad is never executed before the
# entry jump exists; the jump is one aligned 2-byte store over a 2-byte instruction.
_MOV_R11D = bytes.fromhex("41bb")
_JMP_INDIRECT = bytes.fromhex("ff25")
CHECKER_JUMP_AT = 6  # the indirect jump's place in the pad


def checker_pad(pad_at: int, dispatch_slot: int, index: int) -> bytes:
    code = _MOV_R11D + struct.pack("<I", index) + _JMP_INDIRECT
    return code + _rel32(dispatch_slot, pad_at + 12) + b"\x90\x90"


def checker_index(pad_at: int, pad: bytes, dispatch_slot: int) -> int | None:
    """Inverse of `checker_pad`: the function's index, or None."""
    if len(pad) != 14 or pad[:2] != _MOV_R11D or pad[6:8] != _JMP_INDIRECT:
        return None
    if (
        pad[12:] != b"\x90\x90"
        or pad_at + 12 + struct.unpack_from("<i", pad, 8)[0] != dispatch_slot
    ):
        return None
    return struct.unpack_from("<I", pad, 2)[0]


def checker_jump(nop_at: int, pad_at: int) -> bytes:
    disp = pad_at - (nop_at + 2)
    if not -128 <= disp < 0:
        raise UlpError(f"entry nop at {nop_at:#x} cannot reach its pad at {pad_at:#x}")
    return bytes([0xEB, disp & 0xFF])


# A finished transition: the pad jumps straight to the function's newest version, with a
# 32-bit displacement when it is in reach, else through the absolute address stored right after
# the jump.
_JMP_NEXT_QWORD = _JMP_INDIRECT + struct.pack("<i", 0)


def direct_pad(pad_at: int, target: int) -> bytes:
    disp = target - (pad_at + 5)
    if -(1 << 31) <= disp < (1 << 31):
        return _JMP_REL32 + struct.pack("<i", disp) + b"\x90" * 9
    return _JMP_NEXT_QWORD + struct.pack("<Q", target)


def direct_target(pad_at: int, pad: bytes) -> int | None:
    """Inverse of `direct_pad`."""
    if len(pad) == 14 and pad[:1] == _JMP_REL32 and pad[5:] == b"\x90" * 9:
        return pad_at + 5 + struct.unpack_from("<i", pad, 1)[0]
    if len(pad) == 14 and pad[:6] == _JMP_NEXT_QWORD:
        return struct.unpack_from("<Q", pad, 6)[0]
    return None
