"""Reading the runtime's introspection structure (`ulp_runtime`, runtime/info.c) out of a live
process: the global universe, the prepared libraries it has seen with their transition state,
per thread the shadow stack depth and, per library, the depth and universe, and every patch
committed with its function records. Read from outside through /proc/PID/mem, so it works on a
stopped process and changes nothing in it.

Every struct is declared here once, by name (runtime/ulp.h; tests/test_layouts.py compares
them). A runtime of another LAYOUT_VERSION is refused. The geometry the header publishes
(strides, offsets) is what the walk uses, bounded by what a real runtime can have: a process
that publishes more is corrupt or hostile, and reading it is an error.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from ulp_build.cstruct import CStruct, c_string
from ulp_build.elf import ElfFile
from ulp_build.errors import UlpError
from ulp_build.live.process import Mapping, Memory, mapped_elf, maps, read_memory
from ulp_build.live.ptrace import ReturnPoint
from ulp_build.prepare.layout import PAD_BEFORE

INFO_SYMBOL = "ulp_runtime"
INFO_MAGIC = b"ULPRUN\0\0"
# ULP_LAYOUT_VERSION: every layout below and the request's (request.py).
LAYOUT_VERSION = 6
RESUME_SYMBOL = "ulp_resume"
RESUME_RETURN_SYMBOL = "ulp_resume_return"
RESUME_SIGNAL_SYMBOL = "ulp_resume_signal"
RESUME_SIGNAL_RETURN_SYMBOL = "ulp_resume_signal_return"

RUNTIME_INFO = CStruct(
    "ulp_runtime_info",
    [
        ("magic", "8s"),
        ("layout_version", "I"),
        ("size", "I"),
        ("universe", "Q"),
        ("libraries", "Q"),
        ("library_count", "Q"),
        ("max_libraries", "I"),
        ("library_size", "I"),
        ("threads", "Q"),
        ("thread_libs_offset", "I"),
        ("thread_lib_size", "I"),
        ("thread_next_offset", "I"),
        ("thread_tid_offset", "I"),
        ("thread_top_offset", "I"),
        ("thread_base_offset", "I"),
        ("frame_size", "I"),
        ("patch_size", "I"),
        ("patches", "Q"),
    ],
)
# The first fields, the same in every layout: what tells this reader whether it can go on.
_PREFIX = 16
LIBRARY = CStruct(
    "ulp_library",
    [
        ("descriptor", "Q"),
        ("base", "Q"),
        ("build_id_size", "I"),
        ("build_id", "32s"),
        ("name", "256s"),
        ("target_state", "I"),  # ULP_PATCHED: a patch is active after its last change
        ("target_universe", "Q"),  # the universe of its last change, 0: none yet
        ("finished", "I"),  # the transition to it is finished (transition.py writes it)
        ("reserved", "I"),
    ],
)
PATCHED = 1  # ULP_PATCHED
# A thread's record, read at the offsets the header publishes; `libs` follows.
THREAD = CStruct(
    "ulp_thread",
    [
        ("top", "Q"),
        ("end", "Q"),
        ("base", "Q"),
        ("next", "Q"),
        ("tid", "i"),
        ("reserved", "I"),
        ("zero", "Q"),  # always 0: the depth the dispatcher reads for untracked libraries
        ("stack_top", "Q"),  # above every frame of the thread's own stack
        ("padding", "Q"),
    ],
    tail="libs",
)
THREAD_LIB = CStruct("ulp_thread_lib", [("depth", "I"), ("reserved", "I"), ("universe", "Q")])
# A patch: its target's lib_offset (its libs[] offset) tells loads of one library apart (a
# library closed and loaded again at the same address gets another). Its functions follow.
PATCH = CStruct(
    "ulp_patch",
    [
        ("next", "Q"),
        ("id", "128s"),
        ("description", "256s"),
        ("object", "1024s"),
        ("target", "Q"),
        ("handle", "Q"),
        ("applied", "Q"),
        ("reverted", "Q"),
        ("time", "Q"),
        ("function_count", "I"),
        ("lib_offset", "I"),
    ],
    tail="functions",
)
PATCH_FUNCTION = CStruct("ulp_patch_function", [("function", "Q"), ("replacement", "Q")])
FUNCTION = CStruct(
    "ulp_function",
    [
        ("pad", "Q"),
        ("original", "Q"),
        ("lib_offset", "Q"),
        ("latest", "Q"),  # its newest struct ulp_version
        ("versions", "Q"),
        ("index", "I"),
        ("reserved", "I"),
    ],
)
VERSION = CStruct("ulp_version", [("universe", "Q"), ("code", "Q")])

FRAME_SIZE = 40  # sizeof(struct ulp_frame)

# Bounds against a corrupt or hostile process: the runtime never has more.
MAX_LIBRARIES = 1024  # ULP_MAX_LIBRARIES
MAX_RECORD = 1 << 12  # bytes of a library, thread-lib or frame record, of a thread's fixed part
MAX_PATCHES = 1 << 16
MAX_PATCH_FUNCTIONS = 1 << 16
MAX_FUNCTIONS = 1 << 16  # distinct function records, over every patch
# Each thread's record is a mapping of its own, and a process has at most vm.max_map_count
# (65530 by default) of them.
MAX_THREADS = 1 << 16
MAX_SHADOW_FRAMES = 1 << 20  # ULP_SHADOW_FRAMES
# Bytes read of the process in all: 1024 threads in 1024 libraries, or 16Ki threads in 64.
MAX_READ = 1 << 24


# What is read of the runtime's structs is kept in NamedTuples: the trigger defines these at
# each start, and a frozen dataclass takes several times as long (elf/image.py).
class LibraryInfo(NamedTuple):
    """A prepared library the runtime has seen (struct ulp_library)."""

    index: int
    name: str
    base: int
    build_id: str
    descriptor: int
    # The offset of its record in every thread (libs[]): which load of the library this is.
    # Its descriptor's runtime-private word caches it (loaded_library.LoadedLibrary.lib_offset
    # reads it there), and patches name their target's load by it (PatchInfo.lib_offset).
    lib_offset: int
    target_universe: int  # of its last change (0: none)
    patched: bool  # a patch is active after its last change
    finished: bool  # the transition to its last change is finished
    finished_word: int  # where the process keeps `finished` (transition.py writes it)


class FunctionRecord(NamedTuple):
    """A patched function as the runtime has it: where, and the code it runs now."""

    pad: int
    original: int  # the original code, right after the entry nop
    newest: int  # the code of its newest version (the original after a full revert)
    index: int  # in the runtime's records, named by its universe checker

    @property
    def entry_nop(self) -> int:
        return self.original - 2


class PatchInfo(NamedTuple):
    """A patch the runtime committed, with its function records (struct ulp_patch)."""

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


class LibraryState(NamedTuple):
    """One thread's shadow stack depth in one library, and its universe of it."""

    depth: int
    universe: int


@dataclass
class ThreadInfo:
    """A thread the runtime tracks: its shadow stack, and its state per library."""

    tid: int
    frames: int  # tracked entries on its shadow stack
    libraries: dict[int, LibraryState] = field(default_factory=dict)  # by library index


@dataclass
class RuntimeState:
    """Everything the runtime publishes of one process, as read at one moment."""

    pid: int
    runtime: str
    universe: int
    libraries: list[LibraryInfo]
    threads: list[ThreadInfo]
    patches: list[PatchInfo]  # newest first, reverted ones included
    # The runtime's first mapping, as it was read: the file (its inode) and its base.
    runtime_mapping: Mapping

    def patches_of(self, descriptor: int, lib_offset: int) -> list[PatchInfo]:
        """The patches committed to one load of a library (its descriptor's address, and its
        lib_offset: a library closed and loaded again at the same address has another),
        newest first, reverted ones included."""
        return [p for p in self.patches if (p.target, p.lib_offset) == (descriptor, lib_offset)]

    def records_of(self, descriptor: int, lib_offset: int) -> dict[int, FunctionRecord]:
        """The function records of every patch of that load, by pad."""
        return {f.pad: f for p in self.patches_of(descriptor, lib_offset) for f in p.functions}

    def library(self, name_part: str) -> LibraryInfo:
        for lib in self.libraries:
            if name_part in lib.name:
                return lib
        raise KeyError(name_part)


def runtime_mapping(pid: int, mappings: list[Mapping] | None = None) -> Mapping:
    """The first mapping of the libulp.so mapped in `pid` (among `mappings`, if just read)."""
    for m in maps(pid) if mappings is None else mappings:
        if m.offset == 0 and os.path.basename(m.path).startswith("libulp"):
            return m
    raise UlpError(f"process {pid}: runtime not loaded (start it with `ulp run`)")


def find_runtime(pid: int) -> tuple[str, int]:
    """Path and load base of the libulp.so mapped in `pid`."""
    m = runtime_mapping(pid)
    return m.path, m.start


def return_point(runtime: ElfFile, base: int) -> ReturnPoint:
    """Where the trigger's calls return: ulp_resume and ulp_resume_signal, and the labels after
    their system calls, where the trigger takes over (runtime/resume.S)."""
    symbols = {s.name: s.value for s in runtime.dynamic_symbols if s.defined}
    for name in (RESUME_SYMBOL, RESUME_RETURN_SYMBOL, RESUME_SIGNAL_SYMBOL,
                 RESUME_SIGNAL_RETURN_SYMBOL):  # fmt: skip
        if name not in symbols:
            raise UlpError(f"{runtime.name}: no {name}: a runtime too old for this trigger")
    return ReturnPoint(
        base + symbols[RESUME_SYMBOL],
        base + symbols[RESUME_RETURN_SYMBOL],
        base + symbols[RESUME_SIGNAL_SYMBOL],
        base + symbols[RESUME_SIGNAL_RETURN_SYMBOL],
    )


def _bounded(pid: int, what: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise UlpError(
            f"process {pid}: the runtime publishes {what} {value}, not in [{low}, {high}]:"
            " its memory is corrupt"
        )
    return value


def read(pid: int, mappings: list[Mapping] | None = None) -> RuntimeState:
    """The runtime's state in `pid`. `mappings`: its maps if just read (the runtime never moves;
    an address outside them is looked up in fresh ones, see Memory)."""
    if mappings is None:
        mappings = maps(pid)
    mapping = runtime_mapping(pid, mappings)
    path, base = mapping.path, mapping.start
    symbols = {s.name: s for s in mapped_elf(pid, mapping).dynamic_symbols}
    if INFO_SYMBOL not in symbols:
        raise UlpError(f"{path}: no {INFO_SYMBOL} symbol; not a ulp_build runtime")
    at = base + symbols[INFO_SYMBOL].value
    magic, version = struct.unpack("<8sI", read_memory(pid, at, 12))
    if magic != INFO_MAGIC or version != LAYOUT_VERSION:
        raise UlpError(
            f"process {pid}: its runtime {path} has layout version {version},"
            f" this ulp reads {LAYOUT_VERSION} (use the ulp that came with that runtime)"
        )
    with Memory(pid, MAX_READ, mappings) as memory:
        return _read(memory, mapping, at)


def _read(memory: Memory, mapping: Mapping, at: int) -> RuntimeState:
    pid, path = memory.pid, mapping.path
    h = RUNTIME_INFO.unpack(memory.read(at, RUNTIME_INFO.size))
    # This ulp's layout is the runtime's (the version says so): the geometry the header
    # publishes must be it exactly.
    _bounded(pid, "a header of size", h["size"], RUNTIME_INFO.size, RUNTIME_INFO.size)
    max_libs = _bounded(pid, "a library table of", h["max_libraries"], 0, MAX_LIBRARIES)
    _bounded(pid, "library records of", h["library_size"], LIBRARY.size, LIBRARY.size)
    libs_at = _bounded(
        pid, "thread library records at", h["thread_libs_offset"], THREAD.size, THREAD.size
    )
    lib_stride = _bounded(
        pid, "thread library records of", h["thread_lib_size"], THREAD_LIB.size, THREAD_LIB.size
    )
    frame_size = _bounded(pid, "shadow frames of", h["frame_size"], FRAME_SIZE, FRAME_SIZE)
    _bounded(pid, "patch records of", h["patch_size"], PATCH.size, PATCH.size)
    for name in ("next", "tid", "top", "base"):
        offset = THREAD.offset(name)
        _bounded(pid, f"thread {name} at", h[f"thread_{name}_offset"], offset, offset)

    def word(address: int) -> int:
        return struct.unpack("<Q", memory.read(address, 8))[0]

    universe = word(h["universe"])
    (count,) = struct.unpack("<I", memory.read(h["library_count"], 4))
    count = _bounded(pid, "a library count of", count, 0, max_libs)
    libraries = []
    table = memory.read(h["libraries"], count * LIBRARY.size) if count else b""
    for i in range(count):
        lib = LIBRARY.unpack(table, i * LIBRARY.size)
        libraries.append(
            LibraryInfo(
                i,
                c_string(lib["name"]),
                lib["base"],
                lib["build_id"][: min(lib["build_id_size"], 32)].hex(),
                lib["descriptor"],
                libs_at + i * lib_stride,
                lib["target_universe"],
                lib["target_state"] == PATCHED,
                lib["finished"] != 0,
                h["libraries"] + i * LIBRARY.size + LIBRARY.offset("finished"),
            )
        )
    threads = []
    at = word(h["threads"])
    visit = _ListWalk(pid, "thread list", MAX_THREADS)
    while at:
        visit(at)
        record = THREAD.unpack(memory.read(at, libs_at))
        tid, top, frames_base = record["tid"], record["top"], record["base"]
        if tid:
            frames = (top - frames_base) // frame_size if top else 0
            _bounded(pid, "a shadow stack of", frames, 0, MAX_SHADOW_FRAMES)
            info = ThreadInfo(tid, frames)
            raw = memory.read(at + libs_at, lib_stride * count) if count else b""
            if raw.count(0) != len(raw):
                for i in range(count):
                    held = THREAD_LIB.unpack(raw, i * lib_stride)
                    if held["depth"] or held["universe"]:
                        info.libraries[i] = LibraryState(held["depth"], held["universe"])
            threads.append(info)
        at = record["next"]
    patches = _patches(memory, h["patches"])
    return RuntimeState(pid, path, universe, libraries, threads, patches, mapping)


class _ListWalk:
    """The records of one linked list in a process's memory, seen so far: a list that loops or
    runs on past what the real runtime can have is corrupt (or forged), not read for ever."""

    def __init__(self, pid: int, what: str, limit: int) -> None:
        self.pid, self.what, self.limit = pid, what, limit
        self.seen: set[int] = set()

    def __call__(self, at: int) -> None:
        if at in self.seen or len(self.seen) >= self.limit:
            how = "loops" if at in self.seen else f"is longer than {self.limit}"
            raise UlpError(
                f"process {self.pid}: its runtime's {self.what} {how}: its memory is corrupt"
            )
        self.seen.add(at)


def _patches(memory: Memory, head_at: int) -> list[PatchInfo]:
    pid = memory.pid
    out = []
    (at,) = struct.unpack("<Q", memory.read(head_at, 8))
    records: dict[int, FunctionRecord] = {}
    visit = _ListWalk(pid, "patch list", MAX_PATCHES)
    while at:
        visit(at)
        p = PATCH.unpack(memory.read(at, PATCH.size))
        count = _bounded(pid, "a patch of functions:", p["function_count"], 0, MAX_PATCH_FUNCTIONS)
        size = PATCH_FUNCTION.size
        raw = memory.read(at + PATCH.size, size * count) if count else b""
        functions = []
        for i in range(count):
            record = PATCH_FUNCTION.unpack(raw, i * size)["function"]
            if record not in records:
                _bounded(pid, "function records:", len(records) + 1, 0, MAX_FUNCTIONS)
                records[record] = _function(memory, record)
            functions.append(records[record])
        out.append(
            PatchInfo(
                c_string(p["id"]),
                c_string(p["description"]),
                c_string(p["object"]),
                p["target"],
                p["applied"],
                p["reverted"],
                p["time"],
                tuple(functions),
                p["lib_offset"],
            )
        )
        at = p["next"]
    return out


# A function's pad to its original code: the pad, an endbr64 or not, the entry nop.
_PAD_TO_CODE = (PAD_BEFORE + 2, PAD_BEFORE + 4 + 2)


def _function(memory: Memory, at: int) -> FunctionRecord:
    f = FUNCTION.unpack(memory.read(at, FUNCTION.size))
    if f["original"] - f["pad"] not in _PAD_TO_CODE or not memory.mapped(f["pad"], PAD_BEFORE):
        raise UlpError(
            f"process {memory.pid}: its runtime records a function at {f['pad']:#x} whose"
            f" code would be at {f['original']:#x}: its memory is corrupt"
        )
    newest = VERSION.unpack(memory.read(f["latest"], VERSION.size))["code"]
    return FunctionRecord(f["pad"], f["original"], newest, f["index"])
