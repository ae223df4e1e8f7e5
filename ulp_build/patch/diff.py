"""`ulp diff OLD NEW -o DIR`: a live patch from two builds of a library, with no hand-written
code (docs/diff.md).

OLD is the library as it runs (prepared by `ulp rewrite`), NEW the same source with the fix,
both built with the flags `ulp cflags` prints and linked with `-Wl,--emit-relocs`. The two are
compared function by function (changes.py); the patch carries the new build's code of every
changed and new function (patch_source.py), replaces each changed one that has an entry in the
running library, and is linked and packed like a hand-written one. Everything is checked before
anything is written, and DIR appears whole or not at all.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ulp_build.elf import ElfFile
from ulp_build.elf.constants import SHF_WRITE
from ulp_build.errors import UlpError
from ulp_build.patch import changes, patch_source, signatures
from ulp_build.patch.library_build import NUMBERED, Item, LibraryBuild
from ulp_build.patch.packer import Packed, pack
from ulp_build.prepare import patchable
from ulp_build.prepare.layout import is_prepared


@dataclass
class Diff:
    """What `ulp diff` found and wrote: one line per function or object it reports."""

    lines: list[str] = field(default_factory=list)
    packed: Packed | None = None
    directory: Path | None = None


def _entries(
    old: LibraryBuild, new: LibraryBuild, found: changes.Changes, problems: list[str]
) -> tuple[list[Item], dict[str, Item]]:
    """The new build's functions the patch carries, and those of them that replace a running
    function (by its name)."""
    carried = {k: new.items[k] for k in found.changed + found.new}
    entries: dict[str, Item] = {}
    # The running functions replaced, by address: C++'s complete and base constructors (C1, C2)
    # and destructors are often one function with two names, both changed; it is replaced
    # once, under the first name.
    replaced: set[int] = set()
    for key in found.changed:
        before = old.items[key]
        if before.start in replaced:
            continue
        if patchable.entry_nop(old.elf, before.start) is not None:
            entries[before.name] = new.items[key]
            replaced.add(before.start)
            continue
        parent = _parent(key, old, new)
        if parent is not None:
            carried.setdefault(parent, new.items[parent])
            running = old.items[parent].start
            if running in replaced:
                continue
            if patchable.entry_nop(old.elf, running) is not None:
                entries[old.items[parent].name] = new.items[parent]
                replaced.add(running)
                continue
        problems.append(
            f"{key}: changed, but has no patchable entry in {old.elf.name} (assembly, or"
            " built without the flags `ulp cflags` prints)"
        )
    ordered = sorted(carried.values(), key=lambda i: i.start)
    return ordered, entries


def _parent(key: str, old: LibraryBuild, new: LibraryBuild) -> str | None:
    """The function `foo.cold` was split from, in both builds."""
    parent = new.split_from(key)
    return parent if parent is not None and parent in old.items else None


def _renumbered(old: LibraryBuild, new: LibraryBuild, found: changes.Changes) -> list[str]:
    """A line per new writable object that may be a removed one renumbered (gcc numbers a
    static NAME.N in its file, library_build.NUMBERED: one added before it renumbers it): the
    patch would give it a fresh copy, apart from the running one."""
    removed = {}
    for key in found.removed_data:
        numbered = NUMBERED.match(key)
        if numbered:
            removed.setdefault(numbered.group(1), key)
    out = []
    for key in found.new_data:
        numbered = NUMBERED.match(key)
        item = new.items[key]
        if numbered and numbered.group(1) in removed and item.section.flags & SHF_WRITE:
            out.append(
                f"{key}: new, and {removed[numbered.group(1)]} is gone: if it is the same"
                " static variable renumbered, the patch would use a fresh copy of it"
            )
    return out


def diff(
    old_path: str | Path,
    new_path: str | Path,
    out: str | Path,
    *,
    patch_id: str | None = None,
    description: str | None = None,
    accept: tuple[str, ...] = (),
) -> Diff:
    old_path, new_path, out = Path(old_path), Path(new_path), Path(out)
    old, new = LibraryBuild(ElfFile.load(old_path)), LibraryBuild(ElfFile.load(new_path))
    if not is_prepared(old.elf):
        raise UlpError(
            f"{old_path}: not prepared: OLD is the library as it runs (`ulp rewrite` it)"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UlpError(f"{out}: exists and is not an empty directory; nothing written")
    found = changes.compare(old, new)
    problems: list[str] = []
    accepted = set(accept)
    for key in accept:
        if key not in found.changed_data:
            problems.append(f"--accept {key}: no changed data of that name")
    # Read-only data that changed (a constant table, a switch's values) is state of no one:
    # the patch carries the new copy for its code. Writable data is the running process's.
    writable = [k for k in found.changed_data if new.items[k].section.flags & SHF_WRITE]
    for key in writable:
        if key not in accepted:
            problems.append(
                f"{key}: data changed (size or initial value): a patch keeps the running"
                f" one; if it may stay as it is, accept it with --accept {key}"
            )
    problems += [
        f"{key}: holds addresses inside {function}, which changed: the running library's copy"
        " points into the old code"
        for key, function in found.stale
    ]
    problems += [
        f"{key}: holds the address of {constant}, which changed: the running library's copy"
        " points at the old one, which its readers would still use"
        for key, constant in found.pointing_at_old
    ]
    problems += [
        f"{key}: several statics of this name in source files of this name, and one of them"
        " differs: which cannot be told by name (build the files under distinct names)"
        for key in found.ambiguous
    ]
    problems += _renumbered(old, new, found)
    numbered = [(old.items[k], i) for k, i in new.items.items()
                if NUMBERED.match(k) and k in old.items and not i.is_function]  # fmt: skip
    functions = [new.items[k] for k in found.changed]
    problems += signatures.changed(old.elf, new.elf, functions, numbered)
    if not found.changed and not problems:
        problems.append(f"{new_path}: no function differs from {old_path}; nothing to patch")
    carried, entries = _entries(old, new, found, problems)
    if problems:
        raise UlpError("\n".join(problems))
    source = patch_source.write(old, new, carried, entries, accepted)
    if source.problems:
        raise UlpError("\n".join(source.problems))

    result = Diff()
    result.lines += [f"changed: {k}" for k in found.changed]
    result.lines += [f"new: {k}" for k in found.new]
    result.lines += [f"removed: {k} (stays in the running library, unused)" for k in found.removed]
    result.lines += [f"data kept: {k} (accepted: the running one, as it is)" for k in accepted]
    result.lines += [
        f"data copied: {k} (read-only, changed: the patch has the new one)"
        for k in found.changed_data
        if k not in writable
    ]
    # New data nothing carried reads is not in the patch: a constant gcc only renumbered.
    used = {k for item in carried for k in new.referred(item)}
    result.lines += [f"new data: {k} (in the patch)" for k in found.new_data if k in used]
    ident = patch_id or f"{_library_name(new_path)}-diff"
    text = description or f"ulp diff {old_path.name} {new_path.name}: " + ", ".join(sorted(entries))
    result.packed = _write(out, old_path, source, ident, text)
    result.directory = out
    return result


def _library_name(path: Path) -> str:
    """The library's name without `.so` and the version after it: `libzstd` for
    `libzstd.so.1.5.4`, where the file name's stem would leave `libzstd.so.1.5`."""
    return re.sub(r"\.so(\.\d+)*$", "", path.name) or path.stem


def _toml(target: Path, ident: str, text: str, replace: dict[str, str]) -> str:
    lines = [
        "# Written by `ulp diff`.",
        f"target = {json.dumps(str(target.resolve()))}",
        'object = "patch.so"',
        f"id = {json.dumps(ident)}",
        f"description = {json.dumps(text)}",
        "",
        "[replace]",
    ]
    lines += [f"{json.dumps(name)} = {json.dumps(label)}" for name, label in replace.items()]
    return "\n".join(lines) + "\n"


def _write(
    out: Path, target: Path, source: patch_source.PatchSource, ident: str, text: str
) -> Packed:
    """Write the source, the linked object, the description and the packed patch into a
    directory beside `out`, then rename it to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (work / "patch.s").write_text(source.text)
        link = ["gcc", "-shared", "-Wl,--emit-relocs", "-Wl,-z,lazy", "-o", str(work / "patch.so")]
        linked = subprocess.run(
            [*link, str(work / "patch.s")],
            capture_output=True,
            text=True,
            check=False,
        )
        if linked.returncode != 0:
            raise UlpError(f"{work / 'patch.s'}: gcc failed: {linked.stderr.strip()}")
        (work / "fix.toml").write_text(_toml(target, ident, text, source.replace))
        packed = pack(work / "fix.toml")
        if out.exists():
            out.rmdir()
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    # The packer's warnings name the files where they were made, renamed since.
    warnings = [w.replace(str(work), str(out)) for w in packed.warnings]
    return Packed(out / packed.metadata.name, out / packed.reverse.name, packed.patch, warnings)
