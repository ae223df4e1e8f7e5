"""Writing output files the way a build step must: atomically."""

from __future__ import annotations

import os
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
            out.write(data)
        os.chmod(tmp, mode)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise UlpError(f"{target}: cannot write: {exc.strerror or exc}") from None
        raise
    return tmp


def write_atomically(target: Path, data: bytes | bytearray, mode: int) -> None:
    """A temporary file in the same directory and a rename: a process or build step that opens
    `target` meanwhile sees the old file or the new one, never a partial one. No fsync, as for
    the compiler and linker that wrote the input: this guards readers, not power loss."""
    write_all_atomically([(target, data, mode)])
