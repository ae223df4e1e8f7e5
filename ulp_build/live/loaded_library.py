"""A patch's target library as one process has it loaded: which file, where, which build (read
from the process's memory, not from the file on disk, which may have been rebuilt since), its
prepared-library descriptor, and the state of each patched function's bytes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ulp_build.elf import ElfFile
from ulp_build.errors import UlpError
from ulp_build.live.process import Mapping, Snapshot, maps, proc_dir, read_memory
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

_PRISTINE_PAD = b"\x90" * PAD_BEFORE


class CodeState(Enum):
    PRISTINE = "pristine"  # the prepared padding: not patched (or reverted, transition done)
    CHECKER = "checker"  # our universe checker: a transition is under way
    DIRECT = "direct"  # a jump straight to the newest version: the transition is done


@dataclass(frozen=True)
class FunctionCode:
    function: Function
    pad: int  # run-time address of the 14-byte pad
    nop: int  # run-time address of the entry nop
    state: CodeState

    def checker(self, dispatch_slot: int, index: int) -> tuple[bytes, bytes]:
        """The bytes of the universe checker of the runtime's function record `index`:
        (pad, entry jump)."""
        return (
            codegen.checker_pad(self.pad, dispatch_slot, index),
            codegen.checker_jump(self.nop, self.pad),
        )


@dataclass(frozen=True)
class LoadedLibrary:
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

    def registration(self) -> int:
        """The descriptor's runtime-private word in the process: this load's place in the
        runtime's tables (0 before its first tracked call)."""
        magic, version, _flags, _link, private, *_ = DESCRIPTOR.unpack(
            read_memory(self.pid, self.descriptor, DESCRIPTOR.size)
        )
        if magic != DESCRIPTOR_MAGIC or version != DESCRIPTOR_VERSION:
            raise UlpError(
                f"process {self.pid}: {self.path} was not prepared by this version of ulp"
                f" (descriptor version {version}, this ulp makes {DESCRIPTOR_VERSION})"
            )
        return private

    def snapshot(self, functions: list[Function]) -> Snapshot:
        """The bytes of the functions' pads and entry nops, now."""
        return Snapshot(self.pid, [self._place(f) for f in functions])

    def _place(self, f: Function) -> tuple[int, int]:
        pad = self.base + f.offset - PAD_BEFORE
        return pad, self.base + f.nop_offset + 2 - pad

    def function_codes(
        self, functions: list[Function], snapshot: Snapshot | None = None
    ) -> list[FunctionCode]:
        """Where each function is and what its padding holds (in `snapshot`, or now); an
        error naming the first that is neither the prepared padding, nor our checker, nor a
        finished transition."""
        snapshot = snapshot or self.snapshot(functions)
        out = []
        for f in functions:
            pad, size = self._place(f)
            out.append(self._classify(f, pad, pad + size - 2, snapshot.read(pad, size)))
        return out

    def _classify(self, function: Function, pad: int, nop: int, raw: bytes) -> FunctionCode:
        code = FunctionCode(function, pad, nop, CodeState.PRISTINE)
        head, entry_nop = raw[:PAD_BEFORE], raw[-2:]
        if head == _PRISTINE_PAD and entry_nop == codegen.NOP2:
            return code
        if entry_nop == codegen.checker_jump(nop, pad):
            if codegen.checker_index(pad, head, self.dispatch_slot) is not None:
                return FunctionCode(function, pad, nop, CodeState.CHECKER)
            if codegen.direct_target(pad, head) is not None:
                return FunctionCode(function, pad, nop, CodeState.DIRECT)
        raise UlpError(
            f"process {self.pid}: {function.name} in {self.path}: the bytes at {pad:#x} are not"
            f" as recorded (padding {head.hex()}, entry {entry_nop.hex()})"
        )


def _build_id_in_memory(pid: int, base: int, elf: ElfFile) -> str | None:
    note = elf.build_id_note
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


def _open_mapped(pid: int, m: Mapping) -> ElfFile | None:
    # map_files is the inode the process mapped, even if the path now names a rebuilt file.
    for path in (f"{proc_dir(pid)}/map_files/{m.start:x}-{m.end:x}", m.path):
        try:
            return ElfFile.load_shared(path)
        except (UlpError, OSError):
            continue
    return None


def find(pid: int, name: str, build_id: str) -> LoadedLibrary:
    """The library loaded in `pid` whose file name or SONAME is `name` and whose build-id is
    `build_id`; a clear error when it is not loaded or is another build."""
    files = _loaded_files(pid)
    named = [m for path, m in files.items() if Path(path).name == name]
    others = [m for path, m in files.items() if Path(path).name != name]
    seen: list[str] = []
    for group in (named, others):
        for m in group:
            elf = _open_mapped(pid, m)
            if elf is None or (group is others and elf.soname != name):
                continue
            loaded = _build_id_in_memory(pid, m.start, elf)
            if loaded == build_id:
                return LoadedLibrary(pid, m.path, m.start, build_id, elf)
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
        if name not in (path, Path(path).name):
            elf = _open_mapped(pid, m)
            if elf is None or elf.soname != name:
                continue
        else:
            elf = _open_mapped(pid, m)
            if elf is None:
                continue
        build_id = _build_id_in_memory(pid, m.start, elf) or ""
        return LoadedLibrary(pid, m.path, m.start, build_id, elf)
    raise UlpError(f"process {pid}: library {name} is not loaded")
