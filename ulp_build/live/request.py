"""The request the trigger hands the runtime's `ulp_prepare`: `struct ulp_request` of
runtime/ulp.h, byte for byte, followed by its function and reference entries. Everything in it
is a plain address or offset the trigger has already checked; the runtime only loads, fills
and publishes."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ulp_build.errors import UlpError

MAGIC = b"ULPREQ\0\0"
VERSION = 1
HEADER = struct.Struct("<8sIIIIIIQ32s128s256s1024s32sII512s")
FUNCTION = struct.Struct("<QQQII")  # entry, nop, replacement; out: record index
REFERENCE = struct.Struct("<IIQQ")
MESSAGE_OFFSET = HEADER.size - 512

REVERT_ALL = 1
APPLY = 2
REVERT = 4

REF_KINDS = {"data": 0, "tls": 1, "function": 2}

# Statuses ulp_prepare and ulp_commit return, negated, that the trigger acts on (the others
# come with a message).
EALREADY = 2
EBUSY = 4


@dataclass(frozen=True)
class FunctionEntry:
    entry: int  # run-time address in the target
    nop: int  # run-time address of its entry nop
    replacement: int  # offset in the patch object


@dataclass(frozen=True)
class ReferenceEntry:
    kind: str
    pointer: int  # offset in the patch object of the variable to fill
    value: int  # run-time address; for tls the offset in the target's TLS block


@dataclass
class Request:
    flags: int
    descriptor: int
    build_id: bytes
    id: str = ""
    description: str = ""
    object: str = ""
    object_build_id: bytes = b""
    functions: list[FunctionEntry] = field(default_factory=list)
    references: list[ReferenceEntry] = field(default_factory=list)

    def encode(self) -> bytes:
        size = (
            HEADER.size
            + FUNCTION.size * len(self.functions)
            + REFERENCE.size * len(self.references)
        )
        out = bytearray(
            HEADER.pack(
                MAGIC,
                VERSION,
                size,
                self.flags,
                len(self.functions),
                len(self.references),
                len(self.build_id),
                self.descriptor,
                self.build_id,
                _field(self.id, 128, "patch id"),
                _truncated(self.description, 256),
                _field(self.object, 1024, "patch object path"),
                self.object_build_id,
                len(self.object_build_id),
                0,
                b"",
            )
        )
        for f in self.functions:
            out += FUNCTION.pack(f.entry, f.nop, f.replacement, 0, 0)
        for r in self.references:
            out += REFERENCE.pack(REF_KINDS[r.kind], 0, r.pointer, r.value)
        return bytes(out)


def _field(text: str, size: int, what: str) -> bytes:
    raw = text.encode()
    if len(raw) >= size or b"\0" in raw:
        raise UlpError(f"{what} {text!r} is too long for the runtime (at most {size - 1} bytes)")
    return raw


def _truncated(text: str, size: int) -> bytes:
    raw = text.encode()[: size - 1]
    return raw.decode(errors="ignore").encode()


def message(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def indexes(raw: bytes, count: int) -> list[int]:
    """The record index ulp_prepare wrote back for each function of a request."""
    return [FUNCTION.unpack_from(raw, HEADER.size + i * FUNCTION.size)[3] for i in range(count)]
