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
from ulp_build.process import maps, read_memory

INFO_SYMBOL = "ulp_runtime"
INFO_MAGIC = b"ULPRUN\0\0"
INFO_VERSION = 1
HEADER = struct.Struct("<8sIIQQQIIQIIIIIIII")
LIBRARY = struct.Struct("<QQI32s256s")
THREAD_LIB = struct.Struct("<IIQ")
# Bounds against a corrupt or hostile process: the runtime never has more.
MAX_THREADS = 1 << 20


@dataclass(frozen=True)
class LibraryInfo:
    index: int
    name: str
    base: int
    build_id: str


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


def read(pid: int) -> RuntimeState:
    path, base = find_runtime(pid)
    symbols = {s.name: s for s in ElfFile.load(path).dynamic_symbols}
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
        _reserved,
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
        _desc, lib_base, id_size, build_id, name = LIBRARY.unpack(raw)
        libraries.append(
            LibraryInfo(
                i,
                name.split(b"\0", 1)[0].decode(errors="replace"),
                lib_base,
                build_id[: min(id_size, 32)].hex(),
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
    return RuntimeState(pid, path, universe, libraries, threads)
