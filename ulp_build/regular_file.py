"""Reading an input file whole, as a tool that may run as root must: only a regular file (a
FIFO would block for ever, /dev/zero never end, a directory is no input), opened once and judged
by the open descriptor, and bounded in size. The ELF reader has its own, larger-bounded twin in
elf/file.py, since elf/ stands on nothing of the package."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ulp_build.errors import UlpError


def read_regular(path: Path, limit: int, *, follow: bool = True) -> tuple[bytes, os.stat_result]:
    """The bytes of the regular file at `path` (at most `limit`) and its status as opened;
    with `follow` false, a symbolic link as the last component is refused."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise UlpError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UlpError(f"{path}: not a regular file")
        if info.st_size > limit:
            raise UlpError(f"{path}: larger than {limit} bytes")
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(fd, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise UlpError(f"{path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if size > limit:  # it grew since fstat
        raise UlpError(f"{path}: larger than {limit} bytes")
    return b"".join(chunks), info
