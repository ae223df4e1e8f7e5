"""What `ulp patches` shows: the processes that have the runtime, their prepared libraries, the
patches applied to them, and the threads that keep a transition from finishing. Read from
outside (/proc and the runtime's introspection structure): looking changes nothing.

The processes looked at may belong to anyone, and say what they like: a library's name in the
runtime's memory is only shown, never opened (its patchable functions are counted in the file
the process maps there, opened as that inode), and a process that cannot be read is counted, so
that "no process" is never said of processes one may not see."""

from __future__ import annotations

import datetime
import os
from collections.abc import Container
from dataclasses import dataclass, field
from functools import lru_cache

from ulp_build.elf import ElfFile
from ulp_build.errors import UlpError
from ulp_build.live import loaded_library, runtime_state, transition
from ulp_build.live.process import Mapping, mapped_elf, maps, proc_dir
from ulp_build.prepare import patchable
from ulp_build.prepare.layout import prepared_by_headers


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


@dataclass(frozen=True)
class Scan:
    pids: list[int]  # the processes with the runtime among those readable
    unreadable: int  # processes whose mappings this user may not read

    def unreadable_note(self) -> str:
        """What a user who found nothing should know, if anything."""
        if not self.unreadable:
            return ""
        if os.geteuid() == 0:  # a sandbox root cannot look into, say
            return f"{self.unreadable} processes are not readable"
        return f"{self.unreadable} processes are not readable by you (run as root)"


def scan(known: Container[int] = ()) -> Scan:
    """Every process whose mappings include the runtime (that we may read), but the `known`
    ones, whose mappings are not read."""
    out = []
    unreadable = 0
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in known:
            continue
        try:
            with open(f"/proc/{name}/maps", "rb") as f:
                text = f.read()
            if not text:  # its main thread has exited, and the others live on: ask one
                with open(f"{proc_dir(int(name))}/maps", "rb") as f:
                    text = f.read()
            if b"/libulp" in text:
                out.append(int(name))
        except PermissionError:
            unreadable += 1
        except (OSError, UlpError):  # gone meanwhile
            continue
    return Scan(sorted(out), unreadable)


@lru_cache(maxsize=4)
def _patchable(elf: ElfFile) -> int:
    try:
        return len(patchable.find(elf).functions)
    except UlpError:
        return 0


def _patchable_at(pid: int, m: Mapping | None) -> int:
    """The patchable functions of the file mapped by `m` (0 for none or one not readable)."""
    if m is None:
        return 0
    try:
        return _patchable(mapped_elf(pid, m))
    except (UlpError, OSError):
        return 0


# Bytes of a command line shown: the kernel keeps up to its argument limit (megabytes).
MAX_COMMAND = 4096


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(MAX_COMMAND)
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
    mapped = {m.start: m for m in maps(pid) if m.offset == 0 and m.path.startswith("/")}
    for lib in state.libraries:
        m = mapped.get(lib.base)
        # The name the runtime keeps is only shown: the file is the one mapped at the base.
        out = LibraryStatus(m.path if m else lib.name, lib.build_id, _patchable_at(pid, m))
        for p in state.patches_of(lib.descriptor, lib.lib_offset):
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
    # Prepared libraries the runtime has not met yet (loaded later, and so far called only
    # through their leaves, or not at all): no patch, no transition.
    registered = {lib.base for lib in state.libraries}
    for base, m in sorted(mapped.items()):
        identity = None if base in registered else loaded_library.identity_of(pid, m)
        if identity is not None and prepared_by_headers(identity):
            status.libraries.append(
                LibraryStatus(m.path, identity.build_id or "", _patchable_at(pid, m))
            )
    return status
