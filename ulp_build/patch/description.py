"""The patch description a patch author writes (TOML; docs/design.md, "Patches: description and
metadata"), parsed and checked for shape, with the line of every entry so that each later
problem can point at it."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ulp_build.errors import UlpError
from ulp_build.regular_file import read_regular

# A description is a few lines; anything larger is not one (and /dev/zero never ends).
MAX_SIZE = 1 << 20
TOP_LEVEL_KEYS = {"target", "object", "id", "description", "replace", "references"}
_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"""^\s*(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_.$@-]+))\s*=""")


@dataclass(frozen=True)
class Entry:
    name: str  # the symbol in the target
    value: str  # the symbol in the patch object
    line: int


@dataclass
class Description:
    path: Path
    target: Path
    object: Path
    id: str
    description: str
    replace: list[Entry] = field(default_factory=list)
    references: list[Entry] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=dict)  # top-level key -> line

    def where(self, line: int | None) -> str:
        return f"{self.path}:{line}" if line else str(self.path)


def _line_numbers(text: str) -> dict[tuple[str, str], int]:
    """(table, key) -> line, from the raw text: tomllib keeps no positions."""
    table = ""
    out: dict[tuple[str, str], int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            table = header.group(1)
            # A misspelt table ([replce]) is an unknown top-level key: report its header's line.
            out.setdefault(("", table), number)
            continue
        key = _KEY.match(line)
        if key:
            name = next(g for g in key.groups() if g is not None)
            out.setdefault((table, name), number)
    return out


def _read(path: Path) -> str:
    """The text of a regular file of at most MAX_SIZE bytes, as UTF-8 (TOML's encoding)."""
    raw, _ = read_regular(path, MAX_SIZE)
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise UlpError(f"{path}:{line}: not UTF-8 text (byte {exc.start})") from None


def _unprintable(text: str) -> str | None:
    """The first character of `text` that does not print (NUL, escapes, C1 controls...): no path,
    name or description here has one, and each ends up in messages printed to a terminal."""
    return next((c for c in text if not c.isprintable()), None)


def load(path: str | Path) -> Description:
    """Parse and shape-check a description; raise UlpError listing every problem found."""
    path = Path(path)
    text = _read(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"at line (\d+)", str(exc))
        where = f"{path}:{line.group(1)}" if line else str(path)
        raise UlpError(f"{where}: invalid TOML: {exc}") from None
    lines = _line_numbers(text)
    problems = []

    def here(table: str, key: str) -> str:
        return f"{path}:{lines.get((table, key), 0) or '?'}"

    for key in sorted(set(data) - TOP_LEVEL_KEYS):
        problems.append(
            f"{here('', key)}: unknown key {key!r} (known: {', '.join(sorted(TOP_LEVEL_KEYS))})"
        )
    strings = {}
    for key in ("target", "object", "id", "description"):
        if key in data and not isinstance(data[key], str):
            problems.append(f"{here('', key)}: {key} must be a string")
        elif key in data and (bad := _unprintable(data[key])) is not None:
            problems.append(f"{here('', key)}: {key} contains the unprintable character {bad!r}")
        else:
            strings[key] = data.get(key)
    for key in ("target", "object"):
        if key not in data:
            problems.append(f"{path}: missing {key!r}")
    tables: dict[str, list[Entry]] = {"replace": [], "references": []}
    for table in tables:
        value = data.get(table, {})
        if not isinstance(value, dict):
            problems.append(f"{here('', table)}: [{table}] must be a table")
            continue
        for name, other in value.items():
            if not isinstance(other, str):
                problems.append(
                    f"{here(table, name)}: {table}.{name} must be a symbol name (a string)"
                )
                continue
            bad = _unprintable(name + other)
            if bad is not None:
                problems.append(
                    f"{here(table, name)}: {table}: {name!r} = {other!r} contains the"
                    f" unprintable character {bad!r}"
                )
                continue
            tables[table].append(Entry(name, other, lines.get((table, name), 0)))
    if "replace" not in data or not data.get("replace"):
        problems.append(f"{path}: [replace] names no function")
    if problems:
        raise UlpError("\n".join(problems))
    base = path.parent
    return Description(
        path=path,
        target=base / strings["target"],
        object=base / strings["object"],
        id=strings["id"] or path.stem,
        description=strings["description"] or "",
        replace=tables["replace"],
        references=tables["references"],
        lines={key: lines.get(("", key), 0) for key in data},
    )
