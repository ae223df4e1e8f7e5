"""Turning a patch description into patch metadata and its reverse (`ulp pack`).

Everything that can be checked without a running process is checked here, and every problem is
reported at once with the description's line, so a patch author fixes them in one round and a
bad patch never reaches a process.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ulp_build.atomic_write import write_all_atomically
from ulp_build.elf import (
    ET_DYN,
    STT_FUNC,
    STT_GNU_IFUNC,
    STT_OBJECT,
    STT_TLS,
    ElfError,
    ElfFile,
    Symbol,
)
from ulp_build.errors import UlpError
from ulp_build.patch import copies, imports, near
from ulp_build.patch.description import Description, Entry
from ulp_build.patch.description import load as load_description
from ulp_build.patch.metadata import Function, Patch, Reference, dumps
from ulp_build.prepare import codegen, leaves, patchable
from ulp_build.prepare.layout import SECTION_TRAMPOLINES, is_prepared

_KIND_OF = {STT_OBJECT: "data", STT_TLS: "tls", STT_FUNC: "function"}
_POINTER_SIZE = {"data": 8, "function": 8, "tls": 16}  # tls: a tls_index {module, offset}


@dataclass(frozen=True)
class Packed:
    metadata: Path
    reverse: Path
    patch: Patch
    warnings: list[str]


def reverse_path(metadata: Path) -> Path:
    name = metadata.name
    stem = name[: -len(".ulp")] if name.endswith(".ulp") else name
    return metadata.with_name(stem + ".rev.ulp")


def pack(
    description_path: str | Path, output: str | Path | None = None, *, strict: bool = False
) -> Packed:
    """Check the description and write the patch and its reverse. `strict`: every warning is
    a problem too, and nothing is written."""
    desc = load_description(description_path)
    out = Path(output) if output is not None else desc.path.with_suffix(".ulp")
    rev = reverse_path(out)
    _check_outputs(desc, out, rev)
    warnings: list[str] = []
    patch = _build(desc, out, warnings, strict)
    write_all_atomically(
        [(out, dumps(patch).encode(), 0o644), (rev, dumps(patch.reverse()).encode(), 0o644)]
    )
    return Packed(out, rev, patch, warnings)


def _check_outputs(desc: Description, out: Path, rev: Path) -> None:
    if out.name.endswith(".rev.ulp"):
        raise UlpError(f"{out}: a .rev.ulp name is for the reverse patch; choose another")
    inputs = {"description": desc.path, "target": desc.target, "object": desc.object}
    for path in (out, rev):
        for role, source in inputs.items():
            if path.resolve() == source.resolve():
                raise UlpError(f"{path}: is the {role}; refusing to overwrite it")


def _load(path: Path, role: str, desc: Description, problems: list[str]) -> ElfFile | None:
    line = desc.lines.get(role)
    try:
        elf = ElfFile.load(path)
    except ElfError as exc:
        problems.append(f"{desc.where(line)}: {role}: {exc}")
        return None
    if elf.header.type != ET_DYN or elf.dynamic.segment is None or elf.is_pie_executable:
        problems.append(f"{desc.where(line)}: {role}: {path} is not a shared library")
        return None
    return elf


class _Symbols:
    """Symbols of one file by name: .symtab first (real addresses, static symbols), then
    .dynsym (exported names only a stripped file still has)."""

    def __init__(self, elf: ElfFile) -> None:
        self.elf = elf
        self.by_name: dict[str, list[Symbol]] = {}
        for sym in elf.symtab_symbols + elf.dynamic_symbols:
            if sym.defined and sym.name:
                self.by_name.setdefault(sym.name, []).append(sym)

    def address(self, sym: Symbol) -> int:
        """The real entry of a function symbol (a prepared .dynsym points at a trampoline)."""
        ulp = self.elf.section(SECTION_TRAMPOLINES)
        if sym.type == STT_FUNC and ulp is not None and ulp.contains(sym.value):
            decoded = codegen.decode_trampoline(self.elf.read(sym.value, 18), sym.value)
            if decoded is not None and not decoded.indirect:
                return decoded.target
        return sym.value

    def resolve(self, name: str) -> list[tuple[Symbol, int]]:
        """Distinct (symbol, address) for `name`: more than one means it is ambiguous."""
        seen: dict[int, Symbol] = {}
        for sym in self.by_name.get(name, []):
            seen.setdefault(self.address(sym), sym)
        return [(sym, addr) for addr, sym in seen.items()]


def _build(desc: Description, out: Path, warnings: list[str], strict: bool) -> Patch:
    problems: list[str] = []
    target = _load(desc.target, "target", desc, problems)
    obj = _load(desc.object, "object", desc, problems)
    if target is not None and not is_prepared(target):
        problems.append(
            f"{desc.where(desc.lines.get('target'))}: target: {desc.target} is not"
            " prepared (run `ulp rewrite` on it)"
        )
        target = None
    if target is not None and obj is not None and desc.target.resolve() == desc.object.resolve():
        problems.append(f"{desc.where(desc.lines.get('object'))}: object: is the target itself")
        obj = None
    if target is None or obj is None:
        raise UlpError("\n".join(problems))
    for role, elf, path in (("target", target, desc.target), ("object", obj, desc.object)):
        if elf.build_id is None:
            raise UlpError(
                f"{desc.where(desc.lines.get(role))}: {role}: {path} has no build-id"
                " (link it with --build-id)"
            )
    in_target, in_object = _Symbols(target), _Symbols(obj)
    functions = _functions(desc, in_target, in_object, problems)
    warnings += _leaves_that_stop_being_leaves(desc, target, obj, functions)
    warnings += _copies_left_old(desc, target, functions)
    references = _references(desc, in_target, in_object, problems)
    calls, refused = imports.find(target, obj)
    near_references, far = near.find(target, obj)
    problems += [f"{desc.where(desc.lines.get('object'))}: object: {p}" for p in refused + far]
    if strict:
        problems += warnings
    if problems:
        raise UlpError("\n".join(problems))
    object_rel = os.path.relpath(desc.object.resolve(), out.resolve().parent)
    return Patch(
        "apply",
        desc.id,
        desc.description,
        target.soname or desc.target.name,
        target.build_id,
        object_rel,
        obj.build_id,
        hashlib.sha256(obj.data).hexdigest(),
        functions,
        references,
        calls,
        near_references,
    )


def _one(
    entry: Entry, table: str, symbols: _Symbols, what: str, desc: Description, problems: list[str]
) -> tuple[Symbol, int] | None:
    found = symbols.resolve(entry.name)
    where = desc.where(entry.line)
    if not found:
        problems.append(f"{where}: {table}: {entry.name}: not found in {what}")
        return None
    if len(found) > 1:
        problems.append(
            f"{where}: {table}: {entry.name}: ambiguous in {what}"
            f" ({len(found)} different symbols have this name)"
        )
        return None
    return found[0]


def _object_symbol(
    entry: Entry, table: str, obj: _Symbols, desc: Description, problems: list[str]
) -> Symbol | None:
    """The patch object's symbol named by the entry's value, exported (the runtime finds it
    with dlsym)."""
    where = desc.where(entry.line)
    exported = [s for s in obj.elf.dynamic_symbols if s.defined and s.name == entry.value]
    if not exported:
        problems.append(
            f"{where}: {table}: {entry.value}: not exported by the object {desc.object}"
        )
        return None
    return exported[0]


def _functions(
    desc: Description, target: _Symbols, obj: _Symbols, problems: list[str]
) -> list[Function]:
    out = []
    first_line: dict[int, Entry] = {}
    by_replacement: dict[str, Entry] = {}
    for entry in desc.replace:
        where = desc.where(entry.line)
        found = _one(entry, "replace", target, f"target {desc.target}", desc, problems)
        replacement = _object_symbol(entry, "replace", obj, desc, problems)
        if replacement is not None and replacement.type != STT_FUNC:
            problems.append(f"{where}: replace: {entry.value}: is not a function in the object")
        if found is None:
            continue
        sym, addr = found
        if sym.type == STT_GNU_IFUNC:
            problems.append(
                f"{where}: replace: {entry.name}: is an IFUNC; replace the"
                " implementation its resolver returns instead"
            )
            continue
        if sym.type != STT_FUNC:
            problems.append(f"{where}: replace: {entry.name}: is data, not a function")
            continue
        if addr in first_line:
            other = first_line[addr]
            problems.append(
                f"{where}: replace: {entry.name}: the same function as"
                f" {other.name} (line {other.line}); name it once"
            )
            continue
        first_line[addr] = entry
        # Two functions replaced by one: almost always a copy-and-paste slip, which would
        # silently turn the second function into the first one's fix.
        other = by_replacement.setdefault(entry.value, entry)
        if other is not entry:
            problems.append(
                f"{where}: replace: {entry.name}: has the same replacement {entry.value} as"
                f" {other.name} (line {other.line})"
            )
            continue
        nop = patchable.entry_nop(target.elf, addr)
        if nop is None:
            problems.append(
                f"{where}: replace: {entry.name}: has no patchable padding (was"
                " the target built with the flags `ulp cflags` prints?)"
            )
            continue
        if not nop[1]:
            problems.append(
                f"{where}: replace: {entry.name}: padding is not normalized"
                " (the target was modified after `ulp rewrite`)"
            )
            continue
        if replacement is not None:
            out.append(Function(entry.name, addr, nop[0], entry.value))
    return out


def _leaves_that_stop_being_leaves(
    desc: Description, target: ElfFile, obj: ElfFile, functions: list[Function]
) -> list[str]:
    """A leaf of the target keeps a plain entry (`ulp rewrite`), and so does an IFUNC variant
    that is a leaf (handed out by the IFUNC itself when the CPU gets it): a call of it is
    untracked, and cannot mix versions only while the code it runs is its own. A replacement
    that is no leaf (it calls a function of the target or of any other library, or through a
    pointer) could: a commit between its start and a call back into the target would give
    that call a newer version. Decided by the rewriter's own rule, applied to the target's code
    and to the object's."""
    replaced = {f.offset: f for f in functions}
    exported = [s for s in target.dynamic_symbols if s.defined and s.value in replaced]
    entered_plain = leaves.find(target, exported).entries | leaves.leaf_variants(
        target, target.dynamic_symbols, replaced.keys()
    )
    if not entered_plain.intersection(replaced):
        return []
    by_name = {s.name: s for s in obj.dynamic_symbols if s.defined and s.type == STT_FUNC}
    out = []
    for addr in sorted(entered_plain.intersection(replaced)):
        f = replaced[addr]
        sym = by_name.get(f.replacement)
        if sym is not None and sym.value in leaves.find(obj, [sym]).entries:
            continue
        out.append(
            f"{desc.where(_line(desc, f.name))}: replace: {f.name}: is a leaf of the target"
            f" (entered untracked), but its replacement {f.replacement} calls other code: a"
            ' call of it can mix versions (docs/writing-patches.md, "Leaves")'
        )
    return out


def _copies_left_old(desc: Description, target: ElfFile, functions: list[Function]) -> list[str]:
    """A replaced function's code inlined into other functions, or cloned, is not reached
    through its entry: those keep the old code (a real bug: half the calls of a function
    inlined into its caller still ran the old version)."""
    found, unreadable = copies.find(target, {f.offset: f.name for f in functions})
    out = []
    if unreadable is not None:
        out.append(
            f"{desc.where(desc.lines.get('target'))}: target: {desc.target}: unreadable DWARF"
            f" ({unreadable}); inlined copies of the replaced functions were not looked for"
        )
    for f in functions:
        if f.offset not in found:
            continue
        inlined = ", ".join(sorted(found[f.offset].inlined_into))
        clones = ", ".join(sorted(found[f.offset].clones))
        if inlined and clones:
            where = f"inlined into {inlined} (and cloned as {clones})"
        else:
            where = f"inlined into {inlined}" if inlined else f"cloned as {clones}"
        out.append(
            f"{desc.where(_line(desc, f.name))}: replace: {f.name}: {where}: those keep the old"
            ' code unless the patch replaces them too (docs/writing-patches.md, "Inlined copies")'
        )
    return out


def _line(desc: Description, name: str) -> int | None:
    return next((e.line for e in desc.replace if e.name == name), None)


def _references(
    desc: Description, target: _Symbols, obj: _Symbols, problems: list[str]
) -> list[Reference]:
    out = []
    for entry in desc.references:
        where = desc.where(entry.line)
        found = _one(entry, "references", target, f"target {desc.target}", desc, problems)
        pointer = _object_symbol(entry, "references", obj, desc, problems)
        if found is None:
            continue
        sym, addr = found
        kind = _KIND_OF.get(sym.type)
        if kind is None:
            problems.append(
                f"{where}: references: {entry.name}: neither data, thread-local data nor a function"
            )
            continue
        if pointer is None:
            continue
        size = _POINTER_SIZE[kind]
        if pointer.type != STT_OBJECT or pointer.size != size:
            problems.append(
                f"{where}: references: {entry.value}: must be a {size}-byte"
                f" variable in the object to receive the {kind} reference"
            )
            continue
        out.append(Reference(entry.name, kind, addr, entry.value))
    return out
