"""Finding the runtime (`libulp.so`) and starting programs with it preloaded, optionally on a
prepared copy of the C library."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

from ulp_build.elf import ElfFile
from ulp_build.errors import UlpError
from ulp_build.prepare.layout import is_prepared

# The C library's file name: the dynamic loader looks it up along LD_LIBRARY_PATH like any other.
LIBC = "libc.so.6"

# Overrides the installed runtime: a custom build, or the tests' build from the source tree.
RUNTIME_ENV = "ULP_RUNTIME"


def runtime_path() -> Path:
    """The absolute path of the runtime this installation uses."""
    override = os.environ.get(RUNTIME_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise UlpError(f"{path}: {RUNTIME_ENV} names no file")
        return path.resolve()
    # Installed at the top of the package (runtime/meson.build), one level above this module.
    path = Path(__file__).resolve().parent.parent / "libulp.so"
    if not path.is_file():
        raise UlpError(f"{path}: runtime not installed (`pip install .` builds it)")
    return path


def preload_environment(environ: Mapping[str, str], libc: Path | None = None) -> dict[str, str]:
    """`environ` with the runtime first in LD_PRELOAD, keeping whatever was preloaded, and, given
    the directory `libc` of a prepared C library (prepared_libc_dir), that directory first in
    LD_LIBRARY_PATH."""
    env = dict(environ)
    runtime = str(runtime_path())
    preloaded = [p for p in env.get("LD_PRELOAD", "").replace(" ", ":").split(":") if p]
    if runtime not in preloaded:
        preloaded.insert(0, runtime)
    env["LD_PRELOAD"] = ":".join(preloaded)
    if libc is not None:
        paths = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p and p != str(libc)]
        env["LD_LIBRARY_PATH"] = ":".join([str(libc), *paths])
    return env


def prepared_libc_dir(directory: Path) -> Path:
    """`directory`, absolute, after checking that it holds a prepared libc.so.6 of the same build
    as the C library this process runs on: libc and the system's dynamic loader share private
    interfaces, so a libc of another build would fail in the loader, not here."""
    libc = directory / LIBC
    if not libc.is_file():
        raise UlpError(f"{directory}: no {LIBC} in this directory")
    elf = ElfFile.load(libc)
    if not is_prepared(elf):
        raise UlpError(f"{libc}: not prepared (`ulp rewrite {libc}` prepares it)")
    running = _running_libc()
    if running is not None and elf.build_id != ElfFile.load(running).build_id:
        raise UlpError(f"{libc}: another build than this system's C library {running}")
    return libc.parent.resolve()


def _running_libc() -> str | None:
    """The path of the C library mapped into this process (None if it cannot be told)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.rstrip("\n").split(maxsplit=5)
                if len(fields) == 6 and fields[5].endswith("/" + LIBC):
                    return fields[5]
    except OSError:
        pass
    return None


def exec_with_runtime(argv: list[str], libc: Path | None = None) -> NoReturn:
    """Replace this process by `argv` running with the runtime preloaded, on the prepared C
    library in the directory `libc` (prepared_libc_dir) if given."""
    env = preload_environment(os.environ, libc)
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        raise UlpError(f"{argv[0]}: {exc.strerror or exc}") from None
