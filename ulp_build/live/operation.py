"""What the trigger is asked to do in each process: apply a patch, revert one, or revert every
patch of one library (first, then apply a patch in the same step, if one is given). Parsed from
the command line and the patch's `.ulp` file; what it takes in one process is worked out by
preflight.py, and carried out by protocol.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ulp_build.elf import ElfFile
from ulp_build.errors import UlpError
from ulp_build.live import trust
from ulp_build.live.trust import TrustedFile
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
    # What was read, once, to be judged per process (trust.py): the metadata file, and for an
    # apply the patch object, whose bytes are the ones the process will load.
    patch_file: TrustedFile | None = None
    object_file: TrustedFile | None = None
    object_elf: ElfFile | None = None

    def describe(self) -> str:
        if self.patch is None:
            return f"revert all patches of {self.revert_all}"
        verb = "revert" if self.revert else "apply"
        prefix = f"revert all patches of {self.revert_all}, then " if self.revert_all else ""
        return f"{prefix}{verb} {self.patch.id}"


def operation(
    patch_file: str | None,
    *,
    revert: bool = False,
    revert_all: str | None = None,
    object_outside: bool = False,
) -> Operation:
    """The operation a command line asks for. A reverse patch (`.rev.ulp`) reverts. The patch
    object must lie in the directory of the `.ulp` (or below it) unless `object_outside`."""
    if patch_file is None:
        if revert_all is None:
            raise UlpError("nothing to do: give a patch file, --revert-all LIB, or both")
        if revert:
            raise UlpError("--revert needs the patch file to revert")
        return Operation(revert_all=revert_all)
    read = trust.read(Path(patch_file))
    patch = metadata.parse(read.data, patch_file)
    revert = revert or patch.kind == "revert"
    if revert and revert_all:
        raise UlpError("--revert-all with a patch applies that patch; it cannot revert it")
    if revert:
        return Operation(patch, Path(patch_file), revert, revert_all, read)
    obj = _object(patch, read, object_outside)
    elf = ElfFile(obj.data, str(obj.path))
    if elf.build_id != patch.object_build_id:
        raise UlpError(
            f"{obj.path}: build-id {elf.build_id} is not the {patch.object_build_id} that"
            f" {patch_file} records (rebuilt since `ulp pack`?)"
        )
    return Operation(patch, Path(patch_file), revert, revert_all, read, obj, elf)


def _object(patch: Patch, metadata_file: TrustedFile, outside: bool) -> TrustedFile:
    """The patch object, read and checked against what the metadata records."""
    import hashlib  # here: its OpenSSL takes 2 ms to load, and only an apply needs it

    obj = trust.read(metadata_file.path.parent / patch.object)
    if not outside and not obj.path.is_relative_to(metadata_file.path.parent):
        raise UlpError(
            f"{obj.path}: the patch object is outside {metadata_file.path.parent}, the"
            " directory of its metadata (--object-outside allows it)"
        )
    digest = hashlib.sha256(obj.data).hexdigest()
    if digest != patch.object_sha256:
        raise UlpError(
            f"{obj.path}: SHA-256 {digest[:16]}... is not the {patch.object_sha256[:16]}..."
            f" that {metadata_file.path} records (changed since `ulp pack`?)"
        )
    return obj
