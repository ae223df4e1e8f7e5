"""`.eh_frame`: the call frame information unwinders read (C++ exceptions, pthread_cancel,
backtraces), one FDE per function. Read for `ulp diff`, which moves a function's code and must
move the FDE's instructions with it: they describe offsets from the function's start, so they
stay true for the same bytes anywhere. Only what gcc and binutils write on x86-64 is read
(CIE version 1 or 3, a "z" augmentation); anything else reads as no FDE."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property

from ulp_build.elf.image import ElfImage

# DW_EH_PE encodings of an FDE's address: absolute 8 bytes, or PC-relative signed 4 bytes.
_ABSOLUTE, _PCREL_SDATA4 = 0x00, 0x1B
# Marks a pointer to the slot holding the address rather than the address (DW_EH_PE_indirect).
_INDIRECT = 0x80


@dataclass(frozen=True)
class Cie:
    augmentation: str
    code_align: int
    data_align: int
    return_column: int
    initial: bytes  # the initial instructions
    encoding: int  # of the FDEs' addresses
    has_lsda: bool  # FDEs point at exception-handling tables of their function
    lsda_encoding: int  # of the FDEs' pointers to those tables
    personality_encoding: int  # of `personality`; with 0x80, it is a slot holding the address
    personality: int  # the routine that reads the tables (or its slot); 0: none


@dataclass(frozen=True)
class Fde:
    start: int
    end: int
    instructions: bytes
    cie: Cie
    lsda: int  # 0: none


def leb128(data: bytes, at: int, signed: bool = False) -> tuple[int, int]:
    """The LEB128 number at `at`, and where the next field starts."""
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return (value - (1 << shift) if signed and byte & 0x40 else value), at


class EhFrame:
    """The FDEs of one file's `.eh_frame`, by the address range each describes."""

    def __init__(self, elf: ElfImage) -> None:
        self.elf = elf

    def _pointer(self, encoding: int, data: bytes, at: int, base: int) -> tuple[int, int] | None:
        if encoding == _PCREL_SDATA4:
            return base + at + struct.unpack_from("<i", data, at)[0], at + 4
        if encoding == _ABSOLUTE:
            return struct.unpack_from("<Q", data, at)[0], at + 8
        return None

    def _cie(self, data: bytes, at: int, end: int, base: int) -> Cie | None:
        version = data[at]
        nul = data.index(b"\0", at + 1)
        augmentation = data[at + 1 : nul].decode("ascii", "replace")
        if version not in (1, 3) or not augmentation.startswith("z"):
            return None
        at = nul + 1
        code_align, at = leb128(data, at)
        data_align, at = leb128(data, at, signed=True)
        if version == 1:
            column, at = data[at], at + 1
        else:
            column, at = leb128(data, at)
        length, at = leb128(data, at)
        after = at + length
        encoding, has_lsda, lsda_encoding = _ABSOLUTE, False, _ABSOLUTE
        handler = personality = 0
        for letter in augmentation[1:]:
            if letter == "R":
                encoding, at = data[at], at + 1
            elif letter == "L":
                has_lsda, lsda_encoding, at = True, data[at], at + 1
            elif letter == "P":
                handler = data[at]
                found = self._pointer(handler & ~_INDIRECT, data, at + 1, base)
                if found is None:
                    return None
                personality, at = found
            elif letter != "S":
                return None
        return Cie(augmentation, code_align, data_align, column, data[after:end], encoding,
                   has_lsda, lsda_encoding, handler, personality)  # fmt: skip

    @cached_property
    def fdes(self) -> list[Fde]:
        sec = self.elf.section(".eh_frame")
        if sec is None:
            return []
        data, base = self.elf.section_data(sec), sec.addr
        cies: dict[int, Cie | None] = {}
        out, at = [], 0
        try:
            while at + 4 <= len(data):
                (length,) = struct.unpack_from("<I", data, at)
                if length == 0 or length == 0xFFFFFFFF:
                    break  # the terminator, or a 64-bit record gcc never writes
                body, end = at + 4, at + 4 + length
                (pointer,) = struct.unpack_from("<I", data, body)
                if pointer == 0:
                    cies[at] = self._cie(data, body + 4, end, base)
                else:
                    cie = cies.get(body - pointer)
                    fde = self._fde(data, body + 4, end, base, cie) if cie else None
                    if fde is not None:
                        out.append(fde)
                at = end
        except (IndexError, struct.error, ValueError):
            return out  # a corrupt tail: what was read stays usable
        return out

    def _fde(self, data: bytes, at: int, end: int, base: int, cie: Cie) -> Fde | None:
        found = self._pointer(cie.encoding, data, at, base)
        if found is None:
            return None
        start, at = found
        size = struct.unpack_from("<I" if cie.encoding == _PCREL_SDATA4 else "<Q", data, at)[0]
        at += 4 if cie.encoding == _PCREL_SDATA4 else 8
        length, at = leb128(data, at)
        lsda = 0
        if cie.has_lsda and length:
            found = self._pointer(cie.lsda_encoding, data, at, base)
            lsda = found[0] if found else 0
        return Fde(start, start + size, data[at + length : end], cie, lsda)

    def at(self, addr: int) -> Fde | None:
        """The FDE whose range starts at `addr`."""
        for fde in self.fdes:
            if fde.start == addr:
                return fde
        return None
