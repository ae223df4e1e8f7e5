"""The request the trigger hands the runtime's `ulp_prepare`: `struct ulp_request` of
runtime/ulp.h, byte for byte, followed by its function and reference entries. Everything in it
is a plain address or offset the trigger has already checked; the runtime only loads, fills
and publishes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from ulp_build.cstruct import CStruct
from ulp_build.errors import UlpError

MAGIC = b"ULPREQ\0\0"
VERSION = 2
HEADER = CStruct(
    "ulp_request",
    [
        ("magic", "8s"),
        ("version", "I"),
        ("size", "I"),  # of the whole request
        ("flags", "I"),
        ("function_count", "I"),
        ("reference_count", "I"),
        ("build_id_size", "I"),
        ("descriptor", "Q"),  # the target's, at its run-time address
        ("build_id", "32s"),  # the target's, as the patch was made for
        ("id", "128s"),
        ("description", "256s"),
        ("object", "1024s"),  # where the trigger read the patch object (shown only)
        ("object_build_id", "32s"),
        ("object_build_id_size", "I"),
        ("reserved", "I"),
        ("object_offset", "Q"),  # the object's bytes, in this request (after the entries)
        ("object_size", "Q"),
        ("message", "512s"),  # out: why it failed
    ],
)
FUNCTION = CStruct(
    "ulp_request_function",
    [
        ("entry", "Q"),
        ("nop", "Q"),
        ("replacement", "Q"),  # offset in the patch object
        ("index", "I"),  # out: the function's record, for its universe checker
        ("reserved", "I"),
    ],
)
REFERENCE = CStruct(
    "ulp_request_reference",
    [("kind", "I"), ("reserved", "I"), ("pointer", "Q"), ("value", "Q")],
)
MESSAGE_OFFSET = HEADER.offset("message")

REVERT_ALL = 1
APPLY = 2
REVERT = 4

# import: a GOT slot of the object's PLT, filled with a function of the target, which has the
# runtime load the object lazily (runtime/load.c); near: a 32-bit RIP-relative field of the
# object's code (pointer) to point at an address of the target (value: the address plus the
# relocation's addend), written before anything else (patch/near.py)
REF_KINDS = {"data": 0, "tls": 1, "function": 2, "import": 3, "near": 4}

# Statuses ulp_prepare and ulp_commit return, negated, that the trigger acts on (the others
# come with a message).
EALREADY = 2
EBUSY = 4


# The entries are NamedTuples, as runtime_state.py's records are: cheaper to define at each
# start of the trigger than frozen dataclasses.
class FunctionEntry(NamedTuple):
    """A function the request replaces: its entry and entry nop in the process, and its
    replacement in the patch object."""

    entry: int  # run-time address in the target
    nop: int  # run-time address of its entry nop
    replacement: int  # offset in the patch object


class ReferenceEntry(NamedTuple):
    """A variable of the patch object the runtime fills before the patch runs (REF_KINDS)."""

    kind: str
    pointer: int  # offset in the patch object of the variable (GOT slot, near field) to fill
    value: int  # run-time address (near: plus the addend); for tls the offset in the TLS block


@dataclass
class Request:
    """What ulp_prepare is given: the target library, the patch's names, the patch object's
    bytes, and its function and reference entries (runtime/ulp.h, struct ulp_request)."""

    flags: int
    descriptor: int
    build_id: bytes
    id: str = ""
    description: str = ""
    object: str = ""
    object_build_id: bytes = b""
    object_data: bytes = b""  # the patch object, as the trigger read and checked it
    functions: list[FunctionEntry] = field(default_factory=list)
    references: list[ReferenceEntry] = field(default_factory=list)

    @property
    def entries_size(self) -> int:
        """Header and entries: what ulp_prepare writes back into (the object follows)."""
        return (
            HEADER.size
            + FUNCTION.size * len(self.functions)
            + REFERENCE.size * len(self.references)
        )

    def encode(self) -> bytes:
        size = self.entries_size + len(self.object_data)
        out = bytearray(
            HEADER.pack(
                magic=MAGIC,
                version=VERSION,
                size=size,
                flags=self.flags,
                function_count=len(self.functions),
                reference_count=len(self.references),
                build_id_size=len(self.build_id),
                descriptor=self.descriptor,
                build_id=self.build_id,
                id=_field(self.id, 128, "patch id"),
                description=_truncated(self.description, 256),
                object=_field(self.object, 1024, "patch object path"),
                object_build_id=self.object_build_id,
                object_build_id_size=len(self.object_build_id),
                object_offset=self.entries_size if self.object_data else 0,
                object_size=len(self.object_data),
            )
        )
        for f in self.functions:
            out += FUNCTION.pack(entry=f.entry, nop=f.nop, replacement=f.replacement)
        for r in self.references:
            out += REFERENCE.pack(kind=REF_KINDS[r.kind], pointer=r.pointer, value=r.value)
        return bytes(out + self.object_data)


def _field(text: str, size: int, what: str) -> bytes:
    raw = text.encode()
    if len(raw) >= size or b"\0" in raw:
        raise UlpError(f"{what} {text!r} is too long for the runtime (at most {size - 1} bytes)")
    return raw


def _truncated(text: str, size: int) -> bytes:
    raw = text.encode()[: size - 1]
    return raw.decode(errors="ignore").encode()


def indexes(raw: bytes, count: int) -> list[int]:
    """The record index ulp_prepare wrote back for each function of a request."""
    return [FUNCTION.unpack(raw, HEADER.size + i * FUNCTION.size)["index"] for i in range(count)]
