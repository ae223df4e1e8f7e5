"""What the trigger is asked to do in each process: apply a patch, revert one, or revert every
patch of one library (first, then apply a patch in the same step, if one is given). Parsed from
the command line and the patch's `.ulp` file; what it takes in one process is worked out by
preflight.py, and carried out by protocol.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ulp_build.errors import UlpError
from ulp_build.patch import metadata
from ulp_build.patch.metadata import Patch


@dataclass(frozen=True)
class Operation:
    """What to do in each process: revert everything of one library, then apply a patch, or
    revert one patch."""

    patch: Patch | None = None
    patch_path: Path | None = None
    revert: bool = False  # revert `patch` instead of applying it
    revert_all: str | None = None  # a library: revert all its patches first

    def describe(self) -> str:
        if self.patch is None:
            return f"revert all patches of {self.revert_all}"
        verb = "revert" if self.revert else "apply"
        prefix = f"revert all patches of {self.revert_all}, then " if self.revert_all else ""
        return f"{prefix}{verb} {self.patch.id}"


def operation(
    patch_file: str | None, *, revert: bool = False, revert_all: str | None = None
) -> Operation:
    """The operation a command line asks for. A reverse patch (`.rev.ulp`) reverts."""
    if patch_file is None:
        if revert_all is None:
            raise UlpError("nothing to do: give a patch file, --revert-all LIB, or both")
        if revert:
            raise UlpError("--revert needs the patch file to revert")
        return Operation(revert_all=revert_all)
    patch = metadata.read(patch_file)
    revert = revert or patch.kind == "revert"
    if revert and revert_all:
        raise UlpError("--revert-all with a patch applies that patch; it cannot revert it")
    return Operation(patch, Path(patch_file), revert, revert_all)
