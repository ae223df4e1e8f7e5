"""setuptools integration: extension modules compiled with the flags `ulp cflags` prints and
prepared right after they are built.

Three ways in, from most to least explicit:

- `setup(cmdclass={"build_ext": ulp_build.integrations.setuptools.build_ext}, ...)` in setup.py;
- `[tool.ulp_build] prepare-extensions = true` in pyproject.toml (list `ulp_build` in
  `[build-system] requires`);
- `ULP_BUILD_PREPARE=1` in the environment, for packages you do not control (build them with
  `--no-build-isolation` in an environment that has ulp_build installed).

The last two go through setuptools' `setuptools.finalize_distribution_options` entry point,
which wraps whatever `build_ext` the package defines, so its own customizations keep working.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from setuptools import Distribution
from setuptools.command.build_ext import build_ext as _setuptools_build_ext

from ulp_build.prepare.layout import CFLAGS
from ulp_build.prepare.rewrite import rewrite

ENVIRONMENT_SWITCH = "ULP_BUILD_PREPARE"


def preparing(base: type[_setuptools_build_ext]) -> type[_setuptools_build_ext]:
    """A subclass of the build_ext command `base` that prepares every extension it builds."""
    if getattr(base, "ulp_prepares", False):
        return base

    class PreparingBuildExt(base):  # type: ignore[misc, valid-type]
        ulp_prepares = True

        def build_extension(self, ext: Any) -> None:
            flags = [f for f in CFLAGS if f not in (ext.extra_compile_args or [])]
            ext.extra_compile_args = [*flags, *(ext.extra_compile_args or [])]
            super().build_extension(ext)
            # Also on rebuilds where the compile was skipped: preparing is idempotent. A
            # package may skip an optional extension that failed to build: nothing to prepare.
            path = self.get_ext_fullpath(ext.name)
            if os.path.exists(path):
                rewrite(path)

    PreparingBuildExt.__name__ = f"Preparing{base.__name__}"
    PreparingBuildExt.__qualname__ = PreparingBuildExt.__name__
    return PreparingBuildExt


build_ext = preparing(_setuptools_build_ext)


def _enabled_in_pyproject(project: Path) -> bool:
    # Runs in every setuptools build where ulp_build is installed: never fail on a pyproject
    # that is not ours to judge.
    try:
        data = tomllib.loads((project / "pyproject.toml").read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    tool = data.get("tool")
    ours = tool.get("ulp_build") if isinstance(tool, dict) else None
    return isinstance(ours, dict) and ours.get("prepare-extensions") is True


def finalize_distribution_options(dist: Distribution) -> None:
    """The entry point setuptools calls for every distribution it builds: a no-op unless the
    project or the environment asks for prepared extensions."""
    if os.environ.get(ENVIRONMENT_SWITCH) != "1" and not _enabled_in_pyproject(Path.cwd()):
        return
    # Wrap at lookup time, not now: setuptools applies [tool.setuptools.cmdclass] after this
    # hook, and the package's own build_ext must be the one wrapped.
    lookup = dist.get_command_class

    def get_command_class(command: str) -> type:
        cls = lookup(command)
        if command == "build_ext":
            cls = dist.cmdclass[command] = preparing(cls)
        return cls

    dist.get_command_class = get_command_class  # type: ignore[method-assign]
