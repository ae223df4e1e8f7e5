"""A patch's target library as one process has it loaded: which file, where, which build (read
from the process's memory, not from the file on disk, which may have been rebuilt since), its
prepared-library descriptor, and the bytes of each patched function's pad and entry, checked
against what the runtime's records say they may be before anything is written over them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ulp_build.elf import ElfFile, ElfIdentity
from ulp_build.errors import UlpError
from ulp_build.live.process import (
    Mapping,
    Snapshot,
    mapped_elf,
    mapped_identity,
    maps,
    read_memory,
)
from ulp_build.live.runtime_state import FunctionRecord
from ulp_build.live.transition import PRISTINE, settled_code
from ulp_build.patch.metadata import Function
from ulp_build.prepare import codegen
from ulp_build.prepare.layout import (
    DESCRIPTOR,
    DESCRIPTOR_MAGIC,
    DESCRIPTOR_OFFSET,
    DESCRIPTOR_VERSION,
    DISPATCH_SLOT_OFFSET,
    PAD_BEFORE,
    SECTION_DATA,
)


@dataclass(frozen=True)
class FunctionCode:
    """A patched function as the process has it: its pad and entry nop, and their bytes."""

    function: Function
    pad: int  # run-time address of the 14-byte pad
    nop: int  # run-time address of the entry nop
    code: bytes  # from the pad to the entry nop included, as read

    def checker(self, dispatch_slot: int, index: int) -> tuple[bytes, bytes]:
        """The bytes of the universe checker of the runtime's function record `index`:
        (pad, entry jump)."""
        return (
            codegen.checker_pad(self.pad, dispatch_slot, index),
            codegen.checker_jump(self.nop, self.pad),
        )


@dataclass(frozen=True)
class LoadedLibrary:
    """The target as loaded in one process: its file, base, build-id and headers (from memory)."""

    pid: int
    path: str
    base: int
    build_id: str
    elf: ElfFile

    @property
    def descriptor(self) -> int:
        return self.base + self._data_section() + DESCRIPTOR_OFFSET

    @property
    def dispatch_slot(self) -> int:
        return self.base + self._data_section() + DISPATCH_SLOT_OFFSET

    def _data_section(self) -> int:
        data = self.elf.section(SECTION_DATA)
        if data is None:
            raise UlpError(f"process {self.pid}: {self.path} is not a prepared library")
        return data.addr

    def lib_offset(self) -> int:
        """The descriptor's runtime-private word in the process: which load of the library
        this is (runtime_state.LibraryInfo.lib_offset; 0 before its first tracked call)."""
        d = DESCRIPTOR.unpack(read_memory(self.pid, self.descriptor, DESCRIPTOR.size))
        magic, version = d["magic"], d["version"]
        if magic != DESCRIPTOR_MAGIC or version != DESCRIPTOR_VERSION:
            raise UlpError(
                f"process {self.pid}: {self.path} was not prepared by this version of ulp"
                f" (descriptor version {version}, this ulp makes {DESCRIPTOR_VERSION})"
            )
        return d["runtime_private"]

    def snapshot(self, functions: list[Function]) -> Snapshot:
        """The bytes of the functions' pads and entry nops, now."""
        return Snapshot(self.pid, [self._place(f) for f in functions])

    def _place(self, f: Function) -> tuple[int, int]:
        pad = self.base + f.offset - PAD_BEFORE
        return pad, self.base + f.nop_offset + 2 - pad

    def function_codes(
        self,
        functions: list[Function],
        records: dict[int, FunctionRecord],
        snapshot: Snapshot | None = None,
    ) -> list[FunctionCode]:
        """Where each function is and its bytes (in `snapshot`, or now). `records`: the
        runtime's function records of this load, by pad. An error naming the first function
        whose bytes are neither what its record says once no transition is under way (the
        prepared padding without a record) nor a universe checker of this library (its
        record's, when it has one; one made by an attempt that did not commit otherwise)."""
        snapshot = snapshot or self.snapshot(functions)
        out = []
        for f in functions:
            pad, size = self._place(f)
            code = FunctionCode(f, pad, pad + size - 2, snapshot.read(pad, size))
            self._check(code, records.get(pad))
            out.append(code)
        return out

    def _check(self, code: FunctionCode, record: FunctionRecord | None) -> None:
        settled = settled_code(record) if record is not None else PRISTINE
        head, entry = code.code[:PAD_BEFORE], code.code[-2:]
        index = codegen.checker_index(code.pad, head, self.dispatch_slot)
        is_checker = entry == codegen.checker_jump(code.nop, code.pad) and index is not None
        if (head, entry) == settled or (is_checker and (record is None or index == record.index)):
            return
        raise UlpError(
            f"process {self.pid}: {code.function.name} in {self.path}: the bytes at"
            f" {code.pad:#x} are not as recorded (padding {head.hex()}, entry {entry.hex()})"
        )


def _build_id_in_memory(pid: int, base: int, note: tuple[bytes, int] | None) -> str | None:
    if note is None:
        return None
    value, at = note
    return read_memory(pid, base + at, len(value)).hex()


def _loaded_files(pid: int) -> dict[str, Mapping]:
    """Each mapped file's first mapping (offset 0), by path."""
    first: dict[str, Mapping] = {}
    for m in maps(pid):
        if m.path.startswith("/") and m.offset == 0 and m.path not in first:
            first[m.path] = m
    return first


def identity_of(pid: int, m: Mapping) -> ElfIdentity | None:
    """The identity of the file `m` maps, or None when it cannot be read as ELF."""
    try:
        return mapped_identity(pid, m)
    except (UlpError, OSError):
        return None


def _loaded(pid: int, m: Mapping, build_id: str) -> LoadedLibrary | None:
    """The library `m` maps, read whole (the one file that is, of all it maps)."""
    try:
        return LoadedLibrary(pid, m.path, m.start, build_id, mapped_elf(pid, m))
    except (UlpError, OSError):
        return None


def find(pid: int, name: str, build_id: str) -> LoadedLibrary:
    """The library loaded in `pid` whose file name or SONAME is `name` and whose build-id is
    `build_id`; a clear error when it is not loaded or is another build. Each mapped file is
    looked at by its headers alone (elf.identity); only the one that matched is read whole."""
    files = _loaded_files(pid)
    named = [m for path, m in files.items() if os.path.basename(path) == name]
    others = [m for path, m in files.items() if os.path.basename(path) != name]
    seen: list[str] = []
    for group in (named, others):
        for m in group:
            identity = identity_of(pid, m)
            if identity is None or (group is others and identity.soname != name):
                continue
            loaded = _build_id_in_memory(pid, m.start, identity.build_id_note)
            if loaded == build_id:
                found = _loaded(pid, m, build_id)
                if found is not None:
                    return found
            seen.append(f"{m.path} has build-id {loaded or 'none'}")
        if seen:
            break
    if seen:
        raise UlpError(
            f"process {pid}: build-id mismatch: {'; '.join(seen)}; the patch is for {build_id}"
        )
    raise UlpError(f"process {pid}: target {name} is not loaded")


def find_by_name(pid: int, name: str) -> LoadedLibrary:
    """The prepared library loaded in `pid` with this path, file name or SONAME."""
    for path, m in _loaded_files(pid).items():
        identity = identity_of(pid, m)
        if identity is None or name not in (path, Path(path).name, identity.soname):
            continue
        build_id = _build_id_in_memory(pid, m.start, identity.build_id_note) or ""
        found = _loaded(pid, m, build_id)
        if found is not None:
            return found
    raise UlpError(f"process {pid}: library {name} is not loaded")
