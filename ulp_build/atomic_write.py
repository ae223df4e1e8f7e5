"""Writing output files the way a build step must: atomically, and without changing who owns a
file that is replaced.

A file replaced in place keeps its owner and group, or is not replaced: as root, a rename would
otherwise hand another user's library to root; as a user, a library in a shared directory would
silently become that user's. The setuid and setgid bits are never carried over: a rewritten
file is new code, and nobody reviewed it as a privileged program."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from ulp_build.errors import UlpError


def write_all_atomically(files: list[tuple[Path, bytes | bytearray, int]]) -> None:
    """Several files, all or none: every temporary file is written before the first rename."""
    temporaries: list[str] = []
    try:
        for target, data, mode in files:
            temporaries.append(_temporary(target, data, mode))
        for (target, _data, _mode), tmp in zip(files, temporaries, strict=True):
            try:
                os.replace(tmp, target)
            except OSError as exc:
                raise UlpError(f"{target}: cannot write: {exc.strerror or exc}") from None
    finally:
        for tmp in temporaries:
            Path(tmp).unlink(missing_ok=True)


def _temporary(target: Path, data: bytes | bytearray, mode: int) -> str:
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".ulp-tmp", dir=target.parent)
    except OSError as exc:
        raise UlpError(f"{target}: cannot write: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            _keep_owner(target, out.fileno())
            out.write(data)
            os.fchmod(out.fileno(), mode & ~(stat.S_ISUID | stat.S_ISGID))
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise UlpError(f"{target}: cannot write: {exc.strerror or exc}") from None
        raise
    return tmp


def _keep_owner(target: Path, fd: int) -> None:
    try:
        old = os.stat(target)
    except FileNotFoundError:
        return
    new = os.fstat(fd)
    if (old.st_uid, old.st_gid) == (new.st_uid, new.st_gid):
        return
    try:
        os.fchown(fd, old.st_uid, old.st_gid)
    except PermissionError:
        raise UlpError(
            f"{target}: owned by uid {old.st_uid} gid {old.st_gid}; replacing it would make it"
            " yours: refusing (run as its owner or as root)"
        ) from None


def write_atomically(target: Path, data: bytes | bytearray, mode: int) -> None:
    """A temporary file in the same directory and a rename: a process or build step that opens
    `target` meanwhile sees the old file or the new one, never a partial one. No fsync, as for
    the compiler and linker that wrote the input: this guards readers, not power loss."""
    write_all_atomically([(target, data, mode)])
