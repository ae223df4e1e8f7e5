"""Patch metadata files (`.ulp`, and the reverse `.rev.ulp`): what the trigger needs to apply
or revert a patch, with nothing left to look up in the description.

Format: the magic line `ULPPATCH 4`, then one JSON object. Text, because people read these
when something goes wrong (`ulp dump` shows them), and because nothing in a running process
parses them: the trigger does, and hands the runtime plain addresses. The reader checks every
field's presence and type and turns anything else into one clear error.

Version 2 records the patch object's build-id and SHA-256: the trigger loads exactly the bytes
the packer saw, or nothing (docs/security.md). Version 1 files, which named the object by path
alone, are refused: pack the description again. Version 3 adds `imports`, the target's exported
functions the object calls by name; a version 2 file is read as having none (what it meant: the
loader alone bound those calls, as it could). Version 4 adds `near`, the fields of the object's
code that must reach the target's own code or data (near.py); an older file is read as having
none.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ulp_build.errors import UlpError

MAGIC = "ULPPATCH"
VERSION = 4
READS = (2, 3, 4)  # versions read
KINDS = ("apply", "revert")
REFERENCE_KINDS = ("data", "tls", "function")
MAX_SIZE = 64 << 20


@dataclass(frozen=True)
class Function:
    """A function of the target the patch replaces, and its replacement."""

    name: str  # in the target
    offset: int  # of its entry (the symbol's address) in the target
    nop_offset: int  # of the 2-byte entry nop the universe checker replaces
    replacement: str  # in the patch object


@dataclass(frozen=True)
class Reference:
    """A variable of the patch object that receives the address (or TLS offset) of a
    symbol of the target."""

    name: str  # in the target
    kind: str  # data: address; tls: {module, offset} for __tls_get_addr; function: address
    offset: int  # symbol value in the target (for tls: offset in its TLS block)
    pointer: str  # variable in the patch object that receives it


@dataclass(frozen=True)
class Import:
    """A function of the target the patch object calls by name, through its PLT: the runtime
    fills the object's GOT slot for it, whatever scope the target was loaded in."""

    name: str  # in the target's .dynsym and among the object's undefined symbols
    offset: int  # its .dynsym value: a prepared function's trampoline, as a call by name enters


@dataclass(frozen=True)
class Near:
    """A 32-bit RIP-relative field of the object's code that must reach the running target's own
    code or data: the runtime writes `target base + offset + addend - field's address` into it
    (near.py)."""

    name: str  # what the target has there (its symbol, or the offset), for people
    offset: int  # in the target, from the placeholder's name
    addend: int  # the relocation's, signed
    field: int  # the field's address in the object


@dataclass
class Patch:
    """A patch's metadata (a `.ulp` file): its target, its object and what it changes."""

    kind: str  # "apply", or "revert" for a reverse patch
    id: str
    description: str
    target_name: str  # SONAME, or the file name without one
    target_build_id: str  # hex, as `readelf -n` prints it
    object: str  # the patch object, relative to the metadata file's directory
    object_build_id: str  # hex
    object_sha256: str  # hex, of the whole file
    functions: list[Function] = field(default_factory=list)
    references: list[Reference] = field(default_factory=list)
    imports: list[Import] = field(default_factory=list)
    near: list[Near] = field(default_factory=list)

    def object_path(self, metadata_path: str | Path) -> Path:
        return Path(metadata_path).resolve().parent / self.object

    def reverse(self) -> Patch:
        """The patch that reverts this one: the same functions, kind "revert"."""
        return Patch(
            "revert",
            self.id,
            self.description,
            self.target_name,
            self.target_build_id,
            self.object,
            self.object_build_id,
            self.object_sha256,
            list(self.functions),
            list(self.references),
            list(self.imports),
            list(self.near),
        )


def to_json(patch: Patch) -> dict[str, Any]:
    return {"format": MAGIC, "version": VERSION, **asdict(patch)}


def dumps(patch: Patch) -> str:
    return f"{MAGIC} {VERSION}\n" + json.dumps(asdict(patch), indent=1) + "\n"


def read(path: str | Path) -> Patch:
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SIZE + 1)
    except OSError as exc:
        raise UlpError(f"{path}: {exc.strerror or exc}") from None
    return parse(raw, str(path))


def parse(raw: bytes, name: str) -> Patch:
    if len(raw) > MAX_SIZE:
        raise UlpError(f"{name}: too large for patch metadata")
    head, _, body = raw.partition(b"\n")
    words = head.split()
    if len(words) != 2 or words[0] != MAGIC.encode():
        raise UlpError(f"{name}: not a ulp patch file")
    version = next((v for v in READS if words[1] == str(v).encode()), None)
    if version is None:
        raise UlpError(
            f"{name}: patch format version {words[1].decode(errors='replace')!r}"
            f" unsupported (this ulp reads versions {', '.join(map(str, READS))})"
        )
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise UlpError(f"{name}: corrupt patch metadata ({exc})") from None
    return _patch(data, name, version)


def _field(obj: Any, key: str, kind: type, name: str, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise UlpError(f"{name}: corrupt patch metadata ({where}: missing {key!r})")
    value = obj[key]
    if kind is int and (
        isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= 1 << 64
    ):
        raise UlpError(f"{name}: corrupt patch metadata ({where}.{key}: not an offset)")
    if kind is not int and not isinstance(value, kind):
        raise UlpError(f"{name}: corrupt patch metadata ({where}.{key}: not a {kind.__name__})")
    return value


def _patch(data: Any, name: str, version: int) -> Patch:
    def text(obj: Any, key: str, where: str = "patch") -> str:
        return _field(obj, key, str, name, where)

    def number(obj: Any, key: str, where: str) -> int:
        return _field(obj, key, int, name, where)

    def addend(obj: Any, key: str, where: str) -> int:
        """A relocation's addend: signed, and no larger than the 32-bit field it goes into."""
        value = _field(obj, key, object, name, where)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not -(1 << 31) <= value < 1 << 31
        ):
            raise UlpError(f"{name}: corrupt patch metadata ({where}.{key}: not a 32-bit addend)")
        return value

    kind = text(data, "kind")
    if kind not in KINDS:
        raise UlpError(f"{name}: corrupt patch metadata (kind {kind!r})")
    functions = []
    for i, f in enumerate(_field(data, "functions", list, name, "patch")):
        where = f"functions[{i}]"
        functions.append(
            Function(
                text(f, "name", where),
                number(f, "offset", where),
                number(f, "nop_offset", where),
                text(f, "replacement", where),
            )
        )
    references = []
    for i, r in enumerate(_field(data, "references", list, name, "patch")):
        where = f"references[{i}]"
        ref = Reference(
            text(r, "name", where),
            text(r, "kind", where),
            number(r, "offset", where),
            text(r, "pointer", where),
        )
        if ref.kind not in REFERENCE_KINDS:
            raise UlpError(f"{name}: corrupt patch metadata ({where}.kind {ref.kind!r})")
        references.append(ref)
    imports = []
    for i, m in enumerate(_field(data, "imports", list, name, "patch") if version >= 3 else []):
        where = f"imports[{i}]"
        imports.append(Import(text(m, "name", where), number(m, "offset", where)))
    near = []
    for i, n in enumerate(_field(data, "near", list, name, "patch") if version >= 4 else []):
        where = f"near[{i}]"
        near.append(
            Near(
                text(n, "name", where),
                number(n, "offset", where),
                addend(n, "addend", where),
                number(n, "field", where),
            )
        )
    if not functions:
        raise UlpError(f"{name}: corrupt patch metadata (no functions)")

    def hex_digits(key: str, size: int | None = None) -> str:
        value = text(data, key)
        if (
            not value
            or len(value) % 2
            or len(value) > 128
            or (size is not None and len(value) != size)
            or any(c not in "0123456789abcdef" for c in value)
        ):
            raise UlpError(f"{name}: corrupt patch metadata ({key} {value[:130]!r})")
        return value

    return Patch(
        kind,
        text(data, "id"),
        text(data, "description"),
        text(data, "target_name"),
        hex_digits("target_build_id"),
        text(data, "object"),
        hex_digits("object_build_id"),
        hex_digits("object_sha256", 64),
        functions,
        references,
        imports,
        near,
    )
