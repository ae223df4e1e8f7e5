"""What `ulp patches` shows: the processes that have the runtime, their prepared libraries, the
patches applied to them, and the threads that keep a transition from finishing. Read from
outside (/proc and the runtime's introspection structure): looking changes nothing."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from ulp_build.elf import ElfFile
from ulp_build.errors import UlpError
from ulp_build.live import runtime_state, transition
from ulp_build.live.process import maps, proc_dir
from ulp_build.prepare import patchable


@dataclass(frozen=True)
class AppliedPatch:
    id: str
    description: str
    object: str
    applied: str  # ISO 8601, local time
    universe: int
    functions: int


@dataclass
class LibraryStatus:
    path: str
    build_id: str
    patchable_functions: int
    patches: list[AppliedPatch] = field(default_factory=list)
    transition: str = "none"  # none | done | pending: of its last change, as the runtime says
    universe: int = 0  # of its last change
    holders: list[transition.Holder] = field(default_factory=list)  # each with its reason


@dataclass
class ProcessStatus:
    pid: int
    command: str
    universe: int
    libraries: list[LibraryStatus] = field(default_factory=list)


def processes() -> list[int]:
    """Every process whose mappings include the runtime (that we may read)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = Path(proc_dir(int(entry.name)), "maps").read_text()
        except OSError:
            continue
        if "/libulp" in text:
            out.append(int(entry.name))
    return sorted(out)


@cache
def _patchable(path: str) -> int:
    try:
        return len(patchable.find(ElfFile.load_shared(path)).functions)
    except (UlpError, OSError):
        return 0


def _command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(a.decode(errors="replace") for a in raw.split(b"\0") if a) or "?"


def of(pid: int, found: list[transition.Transition] | None = None) -> ProcessStatus:
    """What `ulp patches` shows of `pid`; `found`: its transitions as `transition.finish` just
    left them (with the holders only a stop can see), else read now."""
    state = runtime_state.read(pid)
    status = ProcessStatus(pid, _command(pid), state.universe)
    if found is None:
        found = transition.transitions(state)
    moving = {t.library.index: t for t in found}
    paths = {m.start: m.path for m in maps(pid) if m.offset == 0}
    for lib in state.libraries:
        path = paths.get(lib.base, lib.name)
        out = LibraryStatus(path, lib.build_id, _patchable(path))
        for p in state.patches_of(lib.descriptor, lib.registration):
            if p.active:
                when = datetime.datetime.fromtimestamp(p.time_ns / 1e9).isoformat("T", "seconds")
                out.patches.append(
                    AppliedPatch(p.id, p.description, p.object, when, p.applied, len(p.functions))
                )
        t = moving.get(lib.index)
        if t is not None:
            out.transition = "done" if t.done else "pending"
            out.universe = t.universe
            out.holders = t.holders if not t.done else []
        status.libraries.append(out)
    return status
