"""Finding the runtime (`libulp.so`) and starting programs with it preloaded."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

from ulp_build.errors import UlpError

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


def preload_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with the runtime first in LD_PRELOAD, keeping whatever was preloaded."""
    env = dict(environ)
    runtime = str(runtime_path())
    preloaded = [p for p in env.get("LD_PRELOAD", "").replace(" ", ":").split(":") if p]
    if runtime not in preloaded:
        preloaded.insert(0, runtime)
    env["LD_PRELOAD"] = ":".join(preloaded)
    return env


def exec_with_runtime(argv: list[str]) -> NoReturn:
    """Replace this process by `argv` running with the runtime preloaded."""
    env = preload_environment(os.environ)
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        raise UlpError(f"{argv[0]}: {exc.strerror or exc}") from None
