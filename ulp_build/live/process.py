"""A live process seen from outside: its mappings, its memory, where an ELF file is loaded,
and its root directory (a path handed to it is opened from there)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ulp_build.errors import UlpError


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    offset: int
    path: str


def proc_dir(pid: int) -> str:
    """/proc/PID, or, once the main thread has exited (the process lives on in its other
    threads, but its /proc/PID/maps and mem read empty), a live thread's directory."""
    leader = f"/proc/{pid}"
    if _state(f"{leader}/stat") != "Z":
        return leader
    for tid in thread_ids(pid):
        if tid != pid and _state(f"{leader}/task/{tid}/stat") not in ("Z", "X", ""):
            return f"{leader}/task/{tid}"
    return leader


def _state(stat: str) -> str:
    try:
        return Path(stat).read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def maps(pid: int) -> list[Mapping]:
    try:
        text = Path(f"{proc_dir(pid)}/maps").read_text()
    except FileNotFoundError:
        raise UlpError(f"process {pid}: no such process") from None
    except PermissionError:
        raise UlpError(f"process {pid}: permission denied reading its mappings") from None
    out = []
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        path = fields[5] if len(fields) > 5 else ""
        out.append(Mapping(start, end, fields[1], int(fields[2], 16), path))
    return out


def read_memory(pid: int, address: int, size: int) -> bytes:
    try:
        fd = os.open(f"{proc_dir(pid)}/mem", os.O_RDONLY)
    except FileNotFoundError:
        raise UlpError(f"process {pid}: no such process") from None
    except OSError as exc:
        raise UlpError(
            f"process {pid}: cannot read memory at {address:#x}: {exc.strerror}"
        ) from None
    try:
        return read_at(pid, fd, address, size)
    finally:
        os.close(fd)


def read_at(pid: int, fd: int, address: int, size: int) -> bytes:
    """Exactly `size` bytes at `address` of /proc/PID/mem open as `fd`, or a clear error."""
    try:
        data = os.pread(fd, size, address)
    except OSError as exc:
        raise UlpError(
            f"process {pid}: cannot read memory at {address:#x}: {exc.strerror}"
        ) from None
    if len(data) != size:
        raise UlpError(f"process {pid}: short read at {address:#x}")
    return data


def write_at(pid: int, fd: int, address: int, data: bytes) -> None:
    """All of `data` at `address` of /proc/PID/mem open as `fd` (read-only code too: the
    kernel writes through the process's own mapping), or a clear error."""
    try:
        written = os.pwrite(fd, data, address)
    except OSError as exc:
        raise UlpError(
            f"process {pid}: cannot write memory at {address:#x}: {exc.strerror}"
        ) from None
    if written != len(data):
        raise UlpError(f"process {pid}: short write at {address:#x}")


def thread_ids(pid: int) -> list[int]:
    try:
        return sorted(int(t.name) for t in Path(f"/proc/{pid}/task").iterdir() if t.name.isdigit())
    except FileNotFoundError:
        raise UlpError(f"process {pid}: no such process") from None


class Snapshot:
    """Bytes of a process read in spans (ranges less than `gap` apart read as one), and the
    same spans with edits applied: one system call per span, however many functions a patch
    has, and, under a stop, one comparison and one write per span."""

    def __init__(self, pid: int, ranges: list[tuple[int, int]], gap: int = 4096) -> None:
        bounds: list[list[int]] = []
        for address, size in sorted(ranges):
            if bounds and address <= bounds[-1][1] + gap:
                bounds[-1][1] = max(bounds[-1][1], address + size)
            else:
                bounds.append([address, address + size])
        self.spans = [(start, read_memory(pid, start, end - start)) for start, end in bounds]

    def _span(self, address: int, size: int) -> tuple[int, bytes]:
        for start, data in self.spans:
            if start <= address and address + size <= start + len(data):
                return start, data
        raise KeyError(address)

    def read(self, address: int, size: int) -> bytes:
        start, data = self._span(address, size)
        return data[address - start : address - start + size]

    def edited(self, writes: list[tuple[int, bytes]]) -> list[tuple[int, bytes, bytes]]:
        """(start, bytes now, bytes after the writes) of each span the writes touch."""
        images = {start: bytearray(data) for start, data in self.spans}
        touched: set[int] = set()
        for address, data in writes:
            start, _ = self._span(address, len(data))
            images[start][address - start : address - start + len(data)] = data
            touched.add(start)
        return [
            (start, data, bytes(images[start])) for start, data in self.spans if start in touched
        ]
