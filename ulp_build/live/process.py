"""A live process seen from outside: its mappings, its memory, the files it maps, where an ELF
file is loaded, and its root directory (a path handed to it is opened from there).

Whatever a process says may be hostile: the paths in its mappings name files it may have
replaced since (with a FIFO, a device, a huge file), and its memory says what it likes. So a
mapped file is opened as the inode mapped (map_files), never blocking, and only a regular one is
read; memory is read in bounded pieces, only inside the process's mappings (`Memory`)."""

from __future__ import annotations

import os
import stat
from collections import OrderedDict
from typing import NamedTuple

from ulp_build.elf import ElfFile, ElfIdentity
from ulp_build.errors import UlpError


class Mapping(NamedTuple):
    """One line of /proc/PID/maps (a tuple: a process has hundreds, read again at each step)."""

    start: int
    end: int
    perms: str
    offset: int
    path: str
    inode: int = 0


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
        with open(stat) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def maps(pid: int) -> list[Mapping]:
    # The leader's maps, unless they cannot be read or read empty (a user process always maps
    # something): then the main thread may have exited, and proc_dir finds the directory that
    # has them. One read in the common case, where asking proc_dir first would be two.
    try:
        text = _maps_text(pid, f"/proc/{pid}")
    except UlpError:
        text = ""
    if not text:
        text = _maps_text(pid, proc_dir(pid))
    cached = _PARSED.get(text)  # read afresh, maybe parsed before: a step reads them often
    if cached is not None:
        return list(cached)
    out = []
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        start, end = fields[0].split("-")
        path = fields[5] if len(fields) > 5 else ""
        out.append(
            Mapping(int(start, 16), int(end, 16), fields[1], int(fields[2], 16), path,
                    int(fields[4]))
        )  # fmt: skip
    _PARSED.clear()
    _PARSED[text] = out
    return list(out)


# The last maps text parsed, and its parse.
_PARSED: dict[str, list[Mapping]] = {}


def _maps_text(pid: int, directory: str) -> str:
    try:
        with open(f"{directory}/maps") as f:
            return f.read()
    except FileNotFoundError:
        raise UlpError(f"process {pid}: no such process") from None
    except PermissionError:
        raise UlpError(f"process {pid}: permission denied reading its mappings") from None


def read_memory(pid: int, address: int, size: int) -> bytes:
    # As for maps: the leader's memory first; once the main thread has exited it cannot be
    # read, and proc_dir finds where it can (or the same directory: the same error again).
    try:
        data = _read_memory(pid, f"/proc/{pid}", address, size)
    except UlpError:
        data = b""
    if len(data) != size:
        data = _read_memory(pid, proc_dir(pid), address, size)
    if len(data) != size:
        raise UlpError(f"process {pid}: short read at {address:#x}")
    return data


def _read_memory(pid: int, directory: str, address: int, size: int) -> bytes:
    try:
        fd = os.open(f"{directory}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UlpError(f"process {pid}: no such process") from None
    except OSError as exc:
        raise UlpError(
            f"process {pid}: cannot read memory at {address:#x}: {exc.strerror}"
        ) from None
    try:
        return os.pread(fd, size, address)
    except OSError as exc:
        raise UlpError(
            f"process {pid}: cannot read memory at {address:#x}: {exc.strerror}"
        ) from None
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
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if t.isdigit())
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


def open_mapped(pid: int, m: Mapping) -> int:
    """A read-only descriptor of the file `m` maps, the caller's to close: through
    /proc/PID/map_files, the very inode mapped (the kernel resolves that link itself, whatever
    the path names now); for a user who may not open map_files (it needs
    CAP_CHECKPOINT_RESTORE) or once the main thread has exited (ESRCH, and a thread's directory
    has no map_files), the path, not followed if a symbolic link and refused unless
    it is that inode. Opening never waits (O_NONBLOCK: a FIFO); only a regular file is kept."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        try:
            fd = os.open(f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}", flags)
            same = True
        except OSError:
            fd = os.open(m.path, flags | os.O_NOFOLLOW)
            # The inode only: the device number maps shows is not always stat's (overlayfs).
            same = os.fstat(fd).st_ino == m.inode
    except OSError as exc:
        raise UlpError(f"process {pid}: {m.path}: {exc.strerror or exc}") from None
    if not same or not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UlpError(f"process {pid}: {m.path}: not the regular file it maps")
    return fd


def mapped_identity(pid: int, m: Mapping) -> ElfIdentity:
    """The build-id and SONAME of the file `m` maps, from its headers alone."""
    fd = open_mapped(pid, m)
    try:
        return ElfIdentity.read(fd, m.path)
    finally:
        os.close(fd)


# The few whole files read lately (the runtime and the patch's target, for process after
# process under `--all`), by what identifies an unchanged file.
_READ: OrderedDict[tuple[int, int, int, int], ElfFile] = OrderedDict()
_READ_KEPT = 4


def mapped_elf(pid: int, m: Mapping) -> ElfFile:
    """The whole file `m` maps (at most ElfFile's MAX_FILE_SIZE), named by its path."""
    fd = open_mapped(pid, m)
    try:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in _READ:
            _READ[key] = ElfFile.from_descriptor(fd, m.path)
            if len(_READ) > _READ_KEPT:
                _READ.popitem(last=False)
        _READ.move_to_end(key)
        return _READ[key]
    finally:
        os.close(fd)


class Memory:
    """/proc/PID/mem open once, read only inside the process's readable mappings, at most
    `limit` bytes in all: what a corrupt or hostile process publishes cannot send the reader
    outside its memory, or make it read without end.

    A running process maps memory while it is read (a new thread's state): an address outside
    the mappings known is looked up again in fresh ones, a bounded number of times."""

    REFRESHES = 8

    def __init__(self, pid: int, limit: int, mappings: list[Mapping] | None = None) -> None:
        """`mappings`: the process's, if just read."""
        self.pid = pid
        self.left = limit
        self.refreshes = self.REFRESHES
        self.regions = self._readable_regions(mappings)
        try:
            self.fd = os.open(f"{proc_dir(pid)}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise UlpError(f"process {pid}: cannot read its memory: {exc.strerror}") from None

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def _readable_regions(self, mappings: list[Mapping] | None = None) -> list[tuple[int, int]]:
        regions: list[tuple[int, int]] = []
        for m in maps(self.pid) if mappings is None else mappings:
            if "r" not in m.perms:
                continue
            if regions and regions[-1][1] == m.start:
                regions[-1] = (regions[-1][0], m.end)
            else:
                regions.append((m.start, m.end))
        return regions

    def mapped(self, address: int, size: int) -> bool:
        if any(a <= address and address + size <= b for a, b in self.regions):
            return True
        if self.refreshes == 0:
            return False
        self.refreshes -= 1
        self.regions = self._readable_regions()
        return any(a <= address and address + size <= b for a, b in self.regions)

    def read(self, address: int, size: int) -> bytes:
        if not self.mapped(address, size):
            raise UlpError(
                f"process {self.pid}: its runtime points to {address:#x} ({size} bytes),"
                " outside its memory: its memory is corrupt"
            )
        if size > self.left:
            raise UlpError(
                f"process {self.pid}: its runtime publishes more than a runtime can hold:"
                " its memory is corrupt"
            )
        self.left -= size
        return read_at(self.pid, self.fd, address, size)
