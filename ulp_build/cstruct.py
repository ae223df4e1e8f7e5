"""C structures shared with the runtime (runtime/ulp.h), declared once on the Python side.

A `CStruct` names every field of a C struct in order, with its `struct` format; every byte is
named (C's padding included, as the `reserved` fields ulp.h spells out), so its size and each
field's offset are the C compiler's. tests/test_layouts.py compiles ulp.h and compares them,
field by field and by name: a field added on one side only fails there, not in a live process.

Ground level: it imports nothing of the package, so the prepared-library format (prepare/) and
the trigger (live/) declare their structs with it alike.
"""

from __future__ import annotations

import struct
from typing import Any


class CStruct:
    """One C struct, little-endian. `tail` names a member that follows the fixed part (a
    flexible array, or a table read by stride): it has an offset and no size here."""

    def __init__(self, name: str, fields: list[tuple[str, str]], tail: str | None = None) -> None:
        self.name = name
        self.fields = tuple(field for field, _ in fields)
        self._struct = struct.Struct("<" + "".join(fmt for _, fmt in fields))
        self._text = {field: fmt.endswith("s") for field, fmt in fields}
        self.offsets: dict[str, int] = {}
        at = 0
        for field, fmt in fields:
            self.offsets[field] = at
            at += struct.calcsize("<" + fmt)
        if tail is not None:
            self.offsets[tail] = at
        self.tail = tail
        self.size = self._struct.size

    def offset(self, field: str) -> int:
        return self.offsets[field]

    def unpack(self, raw: bytes, at: int = 0) -> dict[str, Any]:
        """The fields of the struct at `at` in `raw`, by name."""
        return dict(zip(self.fields, self._struct.unpack_from(raw, at), strict=True))

    def pack(self, **values: Any) -> bytes:
        """The struct with `values`; fields not given (reserved ones, outputs) are zero."""
        unknown = set(values) - set(self.fields)
        if unknown:
            raise TypeError(f"struct {self.name} has no field {', '.join(sorted(unknown))}")
        return self._struct.pack(*(values.get(f, b"" if self._text[f] else 0) for f in self.fields))

    def pack_into(self, buffer: bytearray, at: int, **values: Any) -> None:
        buffer[at : at + self.size] = self.pack(**values)


def c_string(raw: bytes) -> str:
    """The text of a `char[]` field: up to its first NUL, bytes that are not UTF-8 replaced."""
    return raw.split(b"\0", 1)[0].decode(errors="replace")
