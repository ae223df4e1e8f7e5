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

import struct
from dataclasses import dataclass, field
from pathlib import Path

from ulp_build.cstruct import CStruct
from ulp_build.elf import ElfFile
from ulp_build.errors import UlpError
from ulp_build.live.process import maps, read_memory
from ulp_build.live.ptrace import ReturnPoint

INFO_SYMBOL = "ulp_runtime"
INFO_MAGIC = b"ULPRUN\0\0"
# ULP_LAYOUT_VERSION: every layout below and the request's (request.py).
LAYOUT_VERSION = 4
RESUME_SYMBOL = "ulp_resume"
RESUME_RETURN_SYMBOL = "ulp_resume_return"

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
        ("padding", "24s"),
    ],
    tail="libs",
)
THREAD_LIB = CStruct("ulp_thread_lib", [("depth", "I"), ("reserved", "I"), ("universe", "Q")])
# A patch: its target's registration (its libs[] offset) tells loads of one library apart (a
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

# Bounds against a corrupt or hostile process: the runtime never has more.
MAX_LIBRARIES = 1 << 16
MAX_RECORD = 1 << 12  # bytes of a library, thread-lib or frame record, of a thread's fixed part
MAX_PATCHES = 1 << 16
MAX_PATCH_FUNCTIONS = 1 << 16
MAX_THREADS = 1 << 20


@dataclass(frozen=True)
class LibraryInfo:
    index: int
    name: str
    base: int
    build_id: str
    descriptor: int
    # Its registration: the offset of its record in a thread (libs[]), which its descriptor's
    # runtime-private word caches (loaded_library.LoadedLibrary.registration reads it there)
    # and patches name their target's load by.
    registration: int
    target_universe: int  # of its last change (0: none)
    patched: bool  # a patch is active after its last change
    finished: bool  # the transition to its last change is finished
    finished_word: int  # where the process keeps `finished` (transition.py writes it)


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

    def patches_of(self, descriptor: int, registration: int) -> list[PatchInfo]:
        """The patches committed to one load of a library (its descriptor's address, and its
        registration: a library closed and loaded again at the same address has another),
        newest first, reverted ones included."""
        return [p for p in self.patches if (p.target, p.lib_offset) == (descriptor, registration)]

    def records_of(self, descriptor: int, registration: int) -> dict[int, FunctionRecord]:
        """The function records of every patch of that load, by pad."""
        return {f.pad: f for p in self.patches_of(descriptor, registration) for f in p.functions}

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


def return_point(runtime: ElfFile, base: int) -> ReturnPoint:
    """Where the trigger's calls return: ulp_resume, and the label after its first system call,
    where the trigger takes over (runtime/resume.S)."""
    symbols = {s.name: s.value for s in runtime.dynamic_symbols if s.defined}
    if RESUME_SYMBOL not in symbols or RESUME_RETURN_SYMBOL not in symbols:
        raise UlpError(
            f"{runtime.name}: no {RESUME_RETURN_SYMBOL}: a runtime too old for this trigger"
        )
    return ReturnPoint(base + symbols[RESUME_SYMBOL], base + symbols[RESUME_RETURN_SYMBOL])


def _bounded(pid: int, what: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise UlpError(
            f"process {pid}: the runtime publishes {what} {value}, not in [{low}, {high}]:"
            " its memory is corrupt"
        )
    return value


def read(pid: int) -> RuntimeState:
    path, base = find_runtime(pid)
    symbols = {s.name: s for s in ElfFile.load_shared(path).dynamic_symbols}
    if INFO_SYMBOL not in symbols:
        raise UlpError(f"{path}: no {INFO_SYMBOL} symbol; not a ulp_build runtime")
    at = base + symbols[INFO_SYMBOL].value
    magic, version = struct.unpack("<8sI", read_memory(pid, at, 12))
    if magic != INFO_MAGIC or version != LAYOUT_VERSION:
        raise UlpError(
            f"process {pid}: its runtime {path} has layout version {version},"
            f" this ulp reads {LAYOUT_VERSION} (use the ulp that came with that runtime)"
        )
    h = RUNTIME_INFO.unpack(read_memory(pid, at, RUNTIME_INFO.size))
    _bounded(pid, "a header of size", h["size"], RUNTIME_INFO.size, RUNTIME_INFO.size)
    max_libs = _bounded(pid, "a library table of", h["max_libraries"], 0, MAX_LIBRARIES)
    lib_size = _bounded(pid, "library records of", h["library_size"], LIBRARY.size, MAX_RECORD)
    libs_at = _bounded(
        pid, "thread library records at", h["thread_libs_offset"], THREAD.size, MAX_RECORD
    )
    lib_stride = _bounded(
        pid, "thread library records of", h["thread_lib_size"], THREAD_LIB.size, MAX_RECORD
    )
    frame_size = _bounded(pid, "shadow frames of", h["frame_size"], 8, MAX_RECORD)
    patch_size = _bounded(pid, "patch records of", h["patch_size"], PATCH.size, MAX_RECORD)
    thread_fields = {
        name: _bounded(pid, f"thread {name} at", h[f"thread_{name}_offset"], 0, libs_at - 8)
        for name in ("next", "tid", "top", "base")
    }

    def word(address: int) -> int:
        return struct.unpack("<Q", read_memory(pid, address, 8))[0]

    universe = word(h["universe"])
    (count,) = struct.unpack("<I", read_memory(pid, h["library_count"], 4))
    count = _bounded(pid, "a library count of", count, 0, max_libs)
    libraries = []
    for i in range(count):
        record = h["libraries"] + i * lib_size
        lib = LIBRARY.unpack(read_memory(pid, record, LIBRARY.size))
        libraries.append(
            LibraryInfo(
                i,
                _text(lib["name"]),
                lib["base"],
                lib["build_id"][: min(lib["build_id_size"], 32)].hex(),
                lib["descriptor"],
                libs_at + i * lib_stride,
                lib["target_universe"],
                lib["target_state"] == PATCHED,
                lib["finished"] != 0,
                record + LIBRARY.offset("finished"),
            )
        )
    threads = []
    at = word(h["threads"])
    seen = 0
    while at and seen < MAX_THREADS:
        seen += 1
        record = read_memory(pid, at, libs_at)
        tid, top, frames_base, nxt = (
            struct.unpack_from(fmt, record, thread_fields[name])[0]
            for name, fmt in (("tid", "<i"), ("top", "<Q"), ("base", "<Q"), ("next", "<Q"))
        )
        if tid:
            info = ThreadInfo(tid, (top - frames_base) // frame_size if top else 0)
            raw = read_memory(pid, at + libs_at, lib_stride * count) if count else b""
            for i in range(count):
                held = THREAD_LIB.unpack(raw, i * lib_stride)
                if held["depth"] or held["universe"]:
                    info.libraries[i] = LibraryState(held["depth"], held["universe"])
            threads.append(info)
        at = nxt
    patches = _patches(pid, h["patches"], patch_size)
    return RuntimeState(pid, path, universe, libraries, threads, patches)


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _patches(pid: int, head_at: int, patch_size: int) -> list[PatchInfo]:
    out = []
    (at,) = struct.unpack("<Q", read_memory(pid, head_at, 8))
    records: dict[int, FunctionRecord] = {}
    while at and len(out) < MAX_PATCHES:
        p = PATCH.unpack(read_memory(pid, at, PATCH.size))
        count = _bounded(pid, "a patch of functions:", p["function_count"], 0, MAX_PATCH_FUNCTIONS)
        size = PATCH_FUNCTION.size
        raw = read_memory(pid, at + patch_size, size * count) if count else b""
        functions = []
        for i in range(count):
            record = PATCH_FUNCTION.unpack(raw, i * size)["function"]
            if record not in records:
                records[record] = _function(pid, record)
            functions.append(records[record])
        out.append(
            PatchInfo(
                _text(p["id"]),
                _text(p["description"]),
                _text(p["object"]),
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


def _function(pid: int, at: int) -> FunctionRecord:
    f = FUNCTION.unpack(read_memory(pid, at, FUNCTION.size))
    newest = VERSION.unpack(read_memory(pid, f["latest"], VERSION.size))["code"]
    return FunctionRecord(f["pad"], f["original"], newest, f["index"])
