"""Installed patches (docs/design.md, "Installed patches"): `ulp install` puts a patch into the
patch directory, and every process that starts later under the runtime, or loads the target
later, applies it itself (runtime/installed.c), with no trigger and no ptrace.

An installed patch is the request the trigger would hand the runtime to apply it (request.py),
with the target's addresses as offsets from its load base (the runtime adds the base) and the
patch object's bytes inside: the runtime needs no parser and opens no other file. Its name is
`BUILDID.SEQUENCE.ID.ulpreq`: the runtime reads only its own library's, in the order they were
installed.

Trust: installed patches run in every user's processes, so the files and every directory
above them must pass the rule for a patch the trigger gives a process as root (trust.py, with
root alone trusted), at install time for the patch's own files, and in each process, which
refuses otherwise and says why on its stderr; `listing` gives the same reasons.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ulp_build.atomic_write import write_atomically
from ulp_build.cstruct import c_string
from ulp_build.errors import UlpError
from ulp_build.live import request as rq
from ulp_build.live import trust
from ulp_build.live.operation import operation
from ulp_build.live.preflight import add_application

DEFAULT_DIRECTORY = Path("/var/lib/ulp/patches")
SUFFIX = ".ulpreq"
# What a patch id may be to name a file (and so that no name can reach outside the directory).
_ID = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*")
_NAME = re.compile(r"([0-9a-f]+)\.(\d+)\.(.+)" + re.escape(SUFFIX))
_ROOT = frozenset({0})


@dataclass(frozen=True)
class Installed:
    path: Path
    id: str
    description: str
    target_build_id: str
    refusal: str | None  # why processes refuse it, or None


def directory(given: str | Path | None = None) -> Path:
    """The patch directory: `given`, else $ULP_PATCH_DIR (as the runtime reads it), else
    /var/lib/ulp/patches; with every symbolic link resolved."""
    # Resolved, as the runtime resolves it before it checks and reads it.
    return Path(os.path.realpath(given or os.environ.get("ULP_PATCH_DIR") or DEFAULT_DIRECTORY))


def install(patch_file: str, where: Path) -> tuple[Installed, bool]:
    """Install the patch `patch_file` (its `.ulp`) into `where`; (what is installed, whether
    it was newly installed: False when the same patch already is)."""
    op = operation(patch_file)
    patch = op.patch
    if patch is None or op.revert:
        raise UlpError(f"{patch_file}: a reverse patch cannot be installed (`ulp uninstall`)")
    for file in (op.patch_file, op.object_file):
        assert file is not None
        reason = trust.refusal(file.chain, _ROOT)
        if reason:
            raise UlpError(f"{reason}: every process would refuse it once installed")
    if not _ID.fullmatch(patch.id):
        raise UlpError(
            f"{patch_file}: patch id {patch.id!r} cannot name a file (letters, digits, ._+-)"
        )
    req = rq.Request(0, 0, bytes.fromhex(patch.target_build_id), patch.id, patch.description)
    # As `ulp` read it, not rebased: the runtime loads it as the process starts, when the
    # loader puts it next to the libraries just loaded anyway (docs/live-patching.md).
    assert op.object_elf is not None
    add_application(req, op, 0, op.object_elf.data)
    data = req.encode()
    # Judged before its files are read: in a directory others may write, any could be a FIFO.
    try:
        where.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise UlpError(f"{where}: {exc.strerror or exc}") from None
    real = Path(os.path.realpath(where))  # as the runtime resolves it, then judges each level
    reason = trust.refusal(trust.directories(real), _ROOT, patch_directory=real)
    if reason:
        raise UlpError(f"{reason}: every process would refuse a patch installed there")
    present = [i for i in listing(where) if i.target_build_id == patch.target_build_id]
    for i in present:
        if i.id == patch.id:
            if i.path.read_bytes() == data:
                return i, False
            raise UlpError(
                f"{i.path}: another patch {patch.id} is installed for this build of"
                f" {patch.target_name}: `ulp uninstall {patch.id}` first"
            )
    sequence = 1 + max((int(_NAME.fullmatch(i.path.name)[2]) for i in present), default=0)
    path = where / f"{patch.target_build_id}.{sequence:06d}.{patch.id}{SUFFIX}"
    write_atomically(path, data, 0o644)
    return _read(path), True


def uninstall(name: str, where: Path) -> list[Path]:
    """Remove the installed patches with id `name` (or the patch of the `.ulp` file `name`);
    the removed files. Processes that applied them keep them until reverted (`ulp trigger
    --revert`): uninstalling only stops new ones from applying them."""
    if name.endswith(".ulp") and Path(name).is_file():
        op = operation(name)
        assert op.patch is not None
        name = op.patch.id
    removed = []
    for i in listing(where):
        if i.id == name:
            try:
                i.path.unlink()
            except OSError as exc:
                raise UlpError(f"{i.path}: {exc.strerror or exc}") from None
            removed.append(i.path)
    if not removed:
        raise UlpError(f"{where}: no installed patch {name}")
    return removed


def listing(where: Path) -> list[Installed]:
    """Every installed patch in `where`, in the order processes apply them."""
    try:
        names = sorted(n for n in os.listdir(where) if _NAME.fullmatch(n))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise UlpError(f"{where}: {exc.strerror or exc}") from None
    return [_read(where / n) for n in names]


def _read(path: Path) -> Installed:
    build_id = _NAME.fullmatch(path.name)[1]  # type: ignore[index]
    if path.is_symlink():  # the runtime opens it with O_NOFOLLOW
        return Installed(
            path, "", "", build_id, f"{path}: a symbolic link: processes do not follow it"
        )
    try:
        file = trust.read(path)
    except UlpError as exc:
        return Installed(path, "", "", build_id, str(exc))
    data = file.data
    fields = rq.HEADER.unpack(data[: rq.HEADER.size]) if len(data) >= rq.HEADER.size else None
    if (
        fields is None
        or fields["magic"] != rq.MAGIC
        or fields["size"] != len(data)
        or fields["flags"] != rq.APPLY
    ):
        return Installed(path, "", "", build_id, f"{path}: not an installed patch")
    # The directories first, then the file, as the runtime judges them.
    file_entry, *directories = file.chain
    refusal = trust.refusal(tuple(directories), _ROOT, patch_directory=file.path.parent)
    return Installed(
        path,
        c_string(fields["id"]),
        c_string(fields["description"]),
        build_id,
        refusal or trust.refusal((file_entry,), _ROOT),
    )
