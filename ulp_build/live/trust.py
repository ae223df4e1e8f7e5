"""Whom the trigger believes: the rules a patch's files must pass before any of their bytes
reach a process (docs/security.md).

The trigger usually runs as root and makes other processes run code. So a patch counts as
written by whoever could have written its files: the `.ulp`, the patch object, and every
directory above them. Each must belong to root or to the user the target process runs as, and
be writable by nobody else (a directory writable by everyone is accepted only with the sticky
bit, as /tmp has it: there, nobody can rename or replace another user's entry). A process whose
real, effective, saved and filesystem uids differ (a setuid program) trusts root alone.

Each file is read once, into memory, and judged by what was read: the trigger then hands the
process those very bytes (through a sealed memfd, see runtime/load.c), never a path that could
name another file by the time it is opened, or in another mount namespace.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ulp_build.errors import UlpError
from ulp_build.live.process import proc_dir
from ulp_build.regular_file import read_regular

# Larger than any patch object or metadata file; a bound against /dev/zero-like inputs.
MAX_FILE_SIZE = 256 << 20


class Entry(NamedTuple):
    """One file or directory on the way to a patch file, as stat saw it."""

    path: Path
    uid: int
    gid: int
    mode: int


@dataclass(frozen=True)
class TrustedFile:
    """A regular file's bytes, with the ownership of it and of every directory above it."""

    path: Path  # with every symbolic link resolved
    data: bytes
    chain: tuple[Entry, ...]  # the file first, then its directories up to /


def read(path: Path) -> TrustedFile:
    """Read `path` whole (a regular file, at most MAX_FILE_SIZE bytes), recording who could
    have written it."""
    try:
        real = Path(os.path.realpath(path))
    except ValueError as exc:  # a NUL in the path
        raise UlpError(f"{path}: {exc}") from None
    data, info = read_regular(real, MAX_FILE_SIZE, follow=False)
    file = Entry(real, info.st_uid, info.st_gid, info.st_mode)
    return TrustedFile(real, data, (file, *directories(real.parent)))


def directories(path: Path) -> tuple[Entry, ...]:
    """The directory `path` (resolved: no symbolic link on the way) and every one above it, as
    lstat sees them now."""
    chain = []
    for directory in (path, *path.parents):
        try:
            d = os.lstat(directory)
        except OSError as exc:
            raise UlpError(f"{directory}: {exc.strerror or exc}") from None
        if not stat.S_ISDIR(d.st_mode):  # replaced by a link since realpath() looked
            raise UlpError(f"{directory}: changed while it was read")
        chain.append(Entry(directory, d.st_uid, d.st_gid, d.st_mode))
    return tuple(chain)


class Credentials(NamedTuple):
    """What a process may do, from its /proc/PID/status: user and group ids (real, effective,
    saved, filesystem), permitted capabilities, and the owner of the file itself, which the
    kernel makes root for a process that is not dumpable (one that changed its ids and may
    still hold what it opened before, or asked for it with prctl)."""

    uids: tuple[int, ...]
    gids: tuple[int, ...]
    capabilities: int
    status_owner: int

    @property
    def uid(self) -> int:
        return self.uids[0]

    def owners(self) -> frozenset[int]:
        """Whose files the process may be given: root's, and its owner's unless it has
        privileges its owner has not (a setuid or setgid program, file capabilities) or is not
        dumpable, where the kernel would not let the owner trace it either."""
        privileged = (
            any(u != self.uid for u in self.uids)
            or any(g != self.gids[0] for g in self.gids)
            or (self.uid != 0 and self.capabilities != 0)
            or self.status_owner != self.uid
        )
        return frozenset({0}) if privileged else frozenset({0, self.uid})


def credentials(pid: int) -> Credentials:
    """Process `pid`'s credentials, as they are now. Read in every stop of every process that
    `--all` patches: only the three lines needed are parsed."""
    try:
        fd = os.open(f"{proc_dir(pid)}/status", os.O_RDONLY | os.O_CLOEXEC)
        try:
            text = os.read(fd, 1 << 16)  # the kernel makes it whole in one read
            owner = os.fstat(fd).st_uid
        finally:
            os.close(fd)
    except OSError as exc:
        raise UlpError(f"process {pid}: {exc.strerror or exc}") from None
    try:
        uids = _numbers(text, b"\nUid:", 10)
        gids = _numbers(text, b"\nGid:", 10)
        capabilities = int(_numbers(text, b"\nCapPrm:", 16)[0])
    except (ValueError, IndexError):
        uids = gids = ()
    if len(uids) != 4 or len(gids) != 4:
        raise UlpError(f"process {pid}: no Uid, Gid or CapPrm line in its status")
    return Credentials(uids, gids, capabilities, owner)


def _numbers(text: bytes, label: bytes, base: int) -> tuple[int, ...]:
    """The numbers on the line of /proc/PID/status that starts with `label`."""
    start = text.index(label) + len(label)
    return tuple(int(n, base) for n in text[start : text.index(b"\n", start)].split())


def refusal(
    chain: tuple[Entry, ...],
    allowed: frozenset[int],
    pid: int | None = None,
    uid: int | None = None,
    *,
    patch_directory: Path | None = None,
) -> str | None:
    """Why the file (or directory) whose `chain` this is must not be given to process `pid`
    (running as `uid`), or None. Without a process (an installed patch, for every process),
    `allowed` is root alone. The `patch_directory` of installed patches, whose every entry
    processes apply, gets no sticky bit's exception: there, anyone could add a patch."""
    for entry in chain:
        what = "directory" if stat.S_ISDIR(entry.mode) else "file"
        if entry.uid not in allowed:
            if pid is None:
                # The words of runtime/installed.c, which judges the same files.
                return (
                    f"{entry.path}: {what} owned by uid {entry.uid}, not root: it could have"
                    " written the patch"
                )
            if uid in allowed:
                return (
                    f"{entry.path}: {what} owned by uid {entry.uid}, neither root nor the owner"
                    f" of process {pid} (uid {uid}): it could have written the patch"
                )
            return (
                f"{entry.path}: {what} owned by uid {entry.uid}, not root, and process {pid}"
                f" (uid {uid}) may not be traced by its owner (setuid, setgid,"
                " capabilities, or not dumpable): it could have written the patch"
            )
        sticky_dir = (
            stat.S_ISDIR(entry.mode) and entry.mode & stat.S_ISVTX and entry.path != patch_directory
        )
        if entry.mode & stat.S_IWOTH and not sticky_dir:
            return f"{entry.path}: {what} writable by every user (mode {entry.mode & 0o7777:o})"
        if entry.mode & stat.S_IWGRP and entry.gid != 0 and not sticky_dir:
            return (
                f"{entry.path}: {what} writable by group {entry.gid} (mode {entry.mode & 0o7777:o})"
            )
    return None
