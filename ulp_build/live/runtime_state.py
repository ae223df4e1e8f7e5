"""Reading the runtime's introspection structure (`ulp_runtime`, runtime/info.c) out of a live
process: the global universe, the prepared libraries it has seen, and per thread the shadow
stack depth and, per library, the depth and universe. Read from outside through /proc/PID/mem,
so it works on a stopped process and changes nothing in it."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from ulp_build.elf import ElfFile
from ulp_build.errors import UlpError
from ulp_build.live.process import maps, read_memory
from ulp_build.live.ptrace import ReturnPoint

INFO_SYMBOL = "ulp_runtime"
INFO_MAGIC = b"ULPRUN\0\0"
INFO_VERSION = 2
HEADER = struct.Struct("<8sIIQQQIIQIIIIIIIIQ")
LIBRARY = struct.Struct("<QQI32s256s")
THREAD_LIB = struct.Struct("<IIQ")
# struct ulp_patch: next, id, description, object, target descriptor, handle, applied and
# reverted universes, time, function count (its functions follow), the target's registration
# (its libs[] offset: another after the target was closed and loaded again).
PATCH = struct.Struct("<Q128s256s1024sQQQQQII")
PATCH_FUNCTION = struct.Struct("<QQ")  # its record, its replacement
# struct ulp_function: pad, original, lib offset, newest version, versions, index
FUNCTION = struct.Struct("<QQQQQII")
MAX_PATCHES = 1 << 16
# Bounds against a corrupt or hostile process: the runtime never has more.
MAX_THREADS = 1 << 20


@dataclass(frozen=True)
class LibraryInfo:
    index: int
    name: str
    base: int
    build_id: str
    descriptor: int


@dataclass(frozen=True)
class FunctionRecord:
    """A patched function as the runtime has it: where, and the code it runs now."""

    pad: int
    original: int  # the original code, right after the entry nop
    newest: int  # the code of its newest version (the original after a full revert)
    index: int  # in the runtime's records, named by its universe checker

    @property
    def entry_nop(self) -> int:
        return self.original - 2


@dataclass(frozen=True)
class PatchInfo:
    id: str
    description: str
    object: str
    target: int  # the target library's descriptor address
    applied: int  # universe
    reverted: int  # universe, 0 while active
    time_ns: int
    functions: tuple[FunctionRecord, ...]
    lib_offset: int

    @property
    def active(self) -> bool:
        return self.reverted == 0


@dataclass(frozen=True)
class LibraryState:
    depth: int
    universe: int


@dataclass
class ThreadInfo:
    tid: int
    frames: int  # tracked entries on its shadow stack
    libraries: dict[int, LibraryState] = field(default_factory=dict)  # by library index


@dataclass
class RuntimeState:
    pid: int
    runtime: str
    universe: int
    libraries: list[LibraryInfo]
    threads: list[ThreadInfo]
    patches: list[PatchInfo]  # newest first, reverted ones included

    def library(self, name_part: str) -> LibraryInfo:
        for lib in self.libraries:
            if name_part in lib.name:
                return lib
        raise KeyError(name_part)


def find_runtime(pid: int) -> tuple[str, int]:
    """Path and load base of the libulp.so mapped in `pid`."""
    for m in maps(pid):
        if m.offset == 0 and Path(m.path).name.startswith("libulp"):
            return m.path, m.start
    raise UlpError(f"process {pid}: runtime not loaded (start it with `ulp run`)")


def landing(runtime: ElfFile, base: int) -> ReturnPoint:
    """Where the trigger's calls return: ulp_resume, and the address after its first system
    call, where the trigger takes over (runtime/resume.S)."""
    resume = next(
        (s.value for s in runtime.dynamic_symbols if s.name == "ulp_resume" and s.defined), None
    )
    code = runtime.code_at(resume, 32) if resume is not None else None
    at = code.find(b"\x0f\x05") if code else -1
    if resume is None or at < 0:
        raise UlpError(f"{runtime.name}: no ulp_resume: a runtime too old for this trigger")
    return ReturnPoint(base + resume, base + resume + at + 2)


def read(pid: int) -> RuntimeState:
    path, base = find_runtime(pid)
    symbols = {s.name: s for s in ElfFile.load_shared(path).dynamic_symbols}
    if INFO_SYMBOL not in symbols:
        raise UlpError(f"{path}: no {INFO_SYMBOL} symbol; not a ulp_build runtime")
    header = HEADER.unpack(read_memory(pid, base + symbols[INFO_SYMBOL].value, HEADER.size))
    (
        magic,
        version,
        _size,
        universe_at,
        libraries_at,
        count_at,
        max_libs,
        lib_size,
        threads_at,
        libs_offset,
        lib_stride,
        next_off,
        tid_off,
        top_off,
        base_off,
        frame_size,
        patch_size,
        patches_at,
    ) = header
    if magic != INFO_MAGIC or version != INFO_VERSION:
        raise UlpError(f"process {pid}: runtime introspection version {version} unsupported")

    def word(address: int) -> int:
        return struct.unpack("<Q", read_memory(pid, address, 8))[0]

    universe = word(universe_at)
    (count,) = struct.unpack("<I", read_memory(pid, count_at, 4))
    count = min(count, max_libs)
    libraries = []
    for i in range(count):
        raw = read_memory(pid, libraries_at + i * lib_size, LIBRARY.size)
        desc, lib_base, id_size, build_id, name = LIBRARY.unpack(raw)
        libraries.append(
            LibraryInfo(
                i,
                name.split(b"\0", 1)[0].decode(errors="replace"),
                lib_base,
                build_id[: min(id_size, 32)].hex(),
                desc,
            )
        )
    threads = []
    at = word(threads_at)
    seen = 0
    while at and seen < MAX_THREADS:
        seen += 1
        (tid,) = struct.unpack("<i", read_memory(pid, at + tid_off, 4))
        if tid:
            top, frames_base = word(at + top_off), word(at + base_off)
            info = ThreadInfo(tid, (top - frames_base) // frame_size if top else 0)
            raw = read_memory(pid, at + libs_offset, lib_stride * count) if count else b""
            for i in range(count):
                depth, _pad, lib_universe = THREAD_LIB.unpack_from(raw, i * lib_stride)
                if depth or lib_universe:
                    info.libraries[i] = LibraryState(depth, lib_universe)
            threads.append(info)
        at = word(at + next_off)
    patches = _patches(pid, patches_at, patch_size)
    return RuntimeState(pid, path, universe, libraries, threads, patches)


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _patches(pid: int, head_at: int, patch_size: int) -> list[PatchInfo]:
    if patch_size != PATCH.size:
        raise UlpError(f"process {pid}: runtime patch record of {patch_size} bytes unsupported")
    out = []
    (at,) = struct.unpack("<Q", read_memory(pid, head_at, 8))
    records: dict[int, FunctionRecord] = {}
    while at and len(out) < MAX_PATCHES:
        fields = PATCH.unpack(read_memory(pid, at, PATCH.size))
        nxt, patch_id, desc, obj, target, _handle, applied, reverted, when, count, lib = fields
        raw = read_memory(pid, at + PATCH.size, PATCH_FUNCTION.size * count) if count else b""
        functions = []
        for record, _replacement in PATCH_FUNCTION.iter_unpack(raw):
            if record not in records:
                records[record] = _function(pid, record)
            functions.append(records[record])
        out.append(
            PatchInfo(
                _text(patch_id),
                _text(desc),
                _text(obj),
                target,
                applied,
                reverted,
                when,
                tuple(functions),
                lib,
            )
        )
        at = nxt
    return out


def _function(pid: int, at: int) -> FunctionRecord:
    pad, original, _lib, latest, _versions, index, _ = FUNCTION.unpack(
        read_memory(pid, at, FUNCTION.size)
    )
    (newest,) = struct.unpack("<Q", read_memory(pid, latest + 8, 8))
    return FunctionRecord(pad, original, newest, index)
