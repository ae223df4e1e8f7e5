"""Everything about one operation in one process that can be checked from outside, checked
before the process is touched: the runtime is loaded (and new enough), the target is loaded
with the patch's build-id, the patch is applied or not as the operation needs, the patch object
has every replacement, reference variable and near field. The result is the request for the
runtime and the code the commit must change, all worked out while the process runs: the stops
(protocol.py) then only do what cannot be done outside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ulp_build.elf import SHN_UNDEF, STT_FUNC, STT_OBJECT, ElfFile
from ulp_build.elf.constants import PT_TLS
from ulp_build.errors import UlpError
from ulp_build.live import loaded_library, placement, runtime_state, trust
from ulp_build.live import request as rq
from ulp_build.live.operation import Operation
from ulp_build.live.process import mapped_elf, maps
from ulp_build.live.ptrace import ReturnPoint
from ulp_build.patch import imports
from ulp_build.patch.metadata import Function, Patch
from ulp_build.prepare.layout import PAD_BEFORE


class AlreadyApplied(UlpError):
    """The patch to apply is applied in the process already: nothing to do, and no failure."""

    def __init__(self, message: str, universe: int) -> None:
        super().__init__(message)
        self.universe = universe  # the one it was applied in


class NotApplied(UlpError):
    """What is to be reverted (a patch, or with --revert-all any patch) is not applied in the
    process: nothing to do. A failure when the process was named, not when `--all` meets it."""


@dataclass
class CheckedOperation:
    """One operation in one process: everything it needs, checked before the process is
    touched (`check`); protocol.py carries it out."""

    pid: int
    op: Operation
    # As the files were judged: each stop checks them again (protocol.py), since the process
    # may have executed a setuid program since.
    credentials: trust.Credentials
    runtime: str
    runtime_base: int
    symbols: dict[str, int]
    return_point: ReturnPoint
    library: loaded_library.LoadedLibrary
    code: list[loaded_library.FunctionCode]
    request: rq.Request
    # pad -> the runtime's record of the function: known here for the functions a revert
    # changes, and told by each prepare (protocol.py) for the functions a patch replaces.
    indexes: dict[int, int] = field(default_factory=dict)
    # pad -> the runtime's record of each function patched on this load of the library: what
    # its bytes may be (loaded_library.LoadedLibrary.function_codes)
    records: dict[int, runtime_state.FunctionRecord] = field(default_factory=dict)

    @property
    def reverting(self) -> bool:
        return self.op.revert or self.op.patch is None

    @property
    def summary(self) -> str:
        return self.op.describe()

    def add_reverted(self, patches: list[runtime_state.PatchInfo]) -> None:
        """The functions that reverting `patches` changes need a checker again, wherever
        their transition was finished with a direct jump."""
        seen = {c.pad for c in self.code}
        metas = []
        for p in patches:
            for f in p.functions:
                if f.pad in seen:
                    continue
                seen.add(f.pad)
                self.indexes[f.pad] = f.index
                entry = f.pad + PAD_BEFORE - self.library.base
                name = self.library.elf.name_at(entry)
                metas.append(Function(name, entry, f.entry_nop - self.library.base, ""))
        self.code += self.library.function_codes(metas, self.records)


def check(
    pid: int, op: Operation, library: loaded_library.LoadedLibrary | None = None
) -> CheckedOperation:
    """`op` in process `pid`, checked and worked out; raises AlreadyApplied, or UlpError for
    anything that stands in its way. `library`: the target, if the caller has just found it
    (`--all` looks for it in every process with the runtime, to know which to patch)."""
    credentials = trust.credentials(pid)
    for file in (op.patch_file, op.object_file):
        reason = file and trust.refusal(file.chain, credentials.owners(), pid, credentials.uid)
        if reason:
            raise UlpError(reason)
    # Read once for the runtime's state and the placement of the patch object, which both
    # tolerate a mapping made since.
    mappings = maps(pid)
    state = runtime_state.read(pid, mappings)
    # The runtime file the process has mapped (its inode, not the path in /proc/PID/maps,
    # which the process's owner may have replaced since).
    mapping = state.runtime_mapping
    elf = mapped_elf(pid, mapping)
    symbols = {s.name: s.value for s in elf.dynamic_symbols if s.defined}
    for name in ("ulp_buffer", "ulp_buffer_free", "ulp_prepare", "ulp_commit", "ulp_resume"):
        if name not in symbols:
            raise UlpError(f"{state.runtime}: no {name}: a runtime too old for this trigger")
    base = mapping.start
    return_point = runtime_state.return_point(elf, base)
    patch = op.patch
    if patch is not None:
        if library is None:
            library = loaded_library.find(pid, patch.target_name, patch.target_build_id)
        _check_offsets(patch, op.patch_path, library)
        if op.revert_all and op.revert_all not in (
            patch.target_name,
            library.path,
            Path(library.path).name,
        ):
            raise UlpError(
                f"--revert-all {op.revert_all}: the patch {patch.id} is for"
                f" {patch.target_name}, not that library"
            )
    else:
        assert op.revert_all is not None
        if library is None:
            library = loaded_library.find_by_name(pid, op.revert_all)
    mine = state.patches_of(library.descriptor, library.lib_offset())
    active = [p for p in mine if p.active]
    flags = rq.REVERT_ALL if op.revert_all else 0
    req = rq.Request(flags, library.descriptor, bytes.fromhex(library.build_id))
    code: list[loaded_library.FunctionCode] = []
    checked = CheckedOperation(
        pid, op, credentials, state.runtime, base, symbols, return_point, library, code, req
    )
    checked.records = state.records_of(library.descriptor, library.lib_offset())
    if op.revert_all and not active and patch is None:
        raise NotApplied(f"process {pid}: no patch is applied to {library.path}")
    if op.revert_all:
        checked.add_reverted(active)
    if patch is None:
        return checked
    req.id, req.description = patch.id, patch.description
    applied = [p for p in active if p.id == patch.id]
    if op.revert:
        req.flags |= rq.REVERT
        if not applied:
            raise NotApplied(f"process {pid}: patch {patch.id} is not applied")
        checked.add_reverted(applied)
        return checked
    if applied and not op.revert_all:
        raise AlreadyApplied(
            f"process {pid}: patch {patch.id} is already applied", applied[0].applied
        )
    assert op.object_elf is not None
    add_application(req, op, library.base, *placement.placed(library, op.object_elf, mappings))
    code += library.function_codes(patch.functions, checked.records)
    return checked


def add_application(
    req: rq.Request, op: Operation, base: int, object_data: bytes, shift: int = 0
) -> None:
    """What applying `op`'s patch adds to `req`, for the target loaded at `base` (0 for an
    installed patch, whose addresses the runtime adds its load base to: runtime/installed.c),
    with the patch object's bytes: the ones `op` read, or those rebased `shift` bytes further
    on (placement.py), whose every address, symbols and near fields alike, is then `shift`
    further on."""
    patch = op.patch
    assert patch is not None and op.object_file is not None and op.object_elf is not None
    req.flags |= rq.APPLY
    # The runtime loads these bytes, not the path (shown by `ulp patches` only).
    obj = op.object_file.path
    req.object, req.object_data = str(obj), object_data
    replacements, pointers, slots, req.object_build_id = _object_symbols(obj, op.object_elf, patch)
    replacements = {name: at + shift for name, at in replacements.items()}
    pointers = {name: at + shift for name, at in pointers.items()}
    slots = {name: at + shift for name, at in slots.items()}
    patched = {f.offset: f for f in patch.functions}
    for f in patch.functions:
        req.functions.append(
            rq.FunctionEntry(base + f.offset, base + f.nop_offset, replacements[f.replacement])
        )
    for r in patch.references:
        if r.kind == "tls":
            value = r.offset
        elif r.kind == "function" and r.offset in patched:
            # The replacement calls the original: past the checker, or it would call itself.
            value = base + patched[r.offset].nop_offset + 2
        else:
            value = base + r.offset
        req.references.append(rq.ReferenceEntry(r.kind, pointers[r.pointer], value))
    # A call by name enters where the loader would have bound it: the trampoline, tracked.
    for i in patch.imports:
        req.references.append(rq.ReferenceEntry("import", slots[i.name], base + i.offset))
    # A near reference addresses the target's code or data as the target's own code does.
    # Modulo 2**64: the addend may be negative, and the runtime's addition of an installed
    # patch's base wraps the same way.
    for n in patch.near:
        value = (base + n.offset + n.addend) % (1 << 64)
        req.references.append(rq.ReferenceEntry("near", n.field + shift, value))


def _check_offsets(patch: Patch, path: Path | None, library: loaded_library.LoadedLibrary) -> None:
    """Every offset the metadata gives lies where the target has what it says: a function's
    entry and entry nop in its code, a variable in its loaded segments. The build-id matched, so
    only a corrupt or forged metadata file fails here, before any address is computed."""
    elf = library.elf
    for f in patch.functions:
        if not (elf.is_code(f.offset) and elf.is_code(f.nop_offset, 2)):
            raise UlpError(
                f"{path}: function {f.name}: offset {f.offset:#x} (entry nop {f.nop_offset:#x})"
                f" is not code of {library.path}"
            )
    tls = next((s.memsz for s in elf.segments if s.type == PT_TLS), 0)
    for r in patch.references:
        if r.kind == "tls":
            wrong = r.offset >= tls  # an offset in the library's TLS block
        elif r.kind == "function":
            wrong = not elf.is_code(r.offset)
        else:  # a variable: in a loaded segment, its file part or its .bss
            wrong = not elf.is_loaded(r.offset)
        if wrong:
            raise UlpError(
                f"{path}: reference {r.name}: offset {r.offset:#x} is not in {library.path}"
            )
    for i in patch.imports:
        if not elf.is_code(i.offset):
            raise UlpError(
                f"{path}: import {i.name}: offset {i.offset:#x} is not code of {library.path}"
            )
    for n in patch.near:
        if not elf.is_loaded(n.offset):
            raise UlpError(
                f"{path}: near reference {n.name}: offset {n.offset:#x} is not in {library.path}"
            )


def _object_symbols(
    obj: Path, elf: ElfFile, patch: Patch
) -> tuple[dict[str, int], dict[str, int], dict[str, int], bytes]:
    """Offsets of the replacements, reference variables and GOT slots of the imports in the
    patch object, and its build-id; an error naming every missing one (and every near field
    outside its code), before anything is loaded."""
    symbols = {s.name: s for s in elf.dynamic_symbols if s.shndx != SHN_UNDEF}
    missing = []
    replacements: dict[str, int] = {}
    pointers: dict[str, int] = {}
    for f in patch.functions:
        s = symbols.get(f.replacement)
        if s is None or s.type != STT_FUNC:
            missing.append(f"function {f.replacement}")
        else:
            replacements[f.replacement] = s.value
    for r in patch.references:
        s = symbols.get(r.pointer)
        if s is None or s.type != STT_OBJECT or s.size < (16 if r.kind == "tls" else 8):
            missing.append(f"variable {r.pointer}")
        else:
            pointers[r.pointer] = s.value
    slots = imports.plt_slots(elf)
    missing += [f"a call slot of {i.name}" for i in patch.imports if i.name not in slots]
    missing += [
        f"code at the near field {n.field:#x}" for n in patch.near if not elf.is_code(n.field, 4)
    ]
    if missing:
        raise UlpError(f"{obj}: the patch object lacks {', '.join(missing)}")
    note = elf.build_id_note
    return replacements, pointers, slots, note[0][:32] if note else b""
