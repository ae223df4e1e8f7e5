"""Preparing a shared library for live patching (docs/design.md, "The prepared library").

The transformation only appends: three new loadable segments after the highest address of the
input, a new program header table, new copies of the dynamic symbol, string, version, hash and
relocation tables (one weak undefined symbol and one GOT relocation longer), and a new section
header table. In the original bytes only fields change: ELF header pointers, `.dynamic` values,
symbol indices in `.rela.plt`, the two entry nops of each padded function, and where the
library takes the address of one of its functions, the field that holds it: the 8 bytes of a
DT_RELR place and the 32-bit displacement of a RIP-relative `lea` (a `R_X86_64_RELATIVE`
addend changes in the appended copy of `.rela.dyn`). No code or data address moves, so
separate debug info and every absolute address stay valid.

`_prepared_image` reads as the steps: what is tracked (tracked.py, with leaves.py and
taken_addresses.py),
where the additions go (segments.py), the code and data (trampolines.py), the redirected
address takings (taken_addresses.py), the grown dynamic tables (grown_tables.py), and the file
assembled (output_file.py).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ulp_build.atomic_write import write_atomically
from ulp_build.elf import SHN_LORESERVE, ElfError, ElfFile
from ulp_build.errors import UlpError
from ulp_build.prepare import (
    grown_tables,
    output_file,
    patchable,
    segments,
    taken_addresses,
    tracked,
    trampolines,
)
from ulp_build.prepare.check import check
from ulp_build.prepare.dynamic_tables import DynamicTables
from ulp_build.prepare.inputs import check_input, exported_functions
from ulp_build.prepare.layout import DEFAULT_UNTRACKED, is_prepared


@dataclass
class RewriteResult:
    """What `rewrite` did, as `ulp rewrite` reports it (its --json output: these fields)."""

    input: str
    output: str
    already_prepared: bool = False
    trampolines: int = 0
    ifuncs: int = 0
    exported_functions: int = 0
    patchable: int = 0
    normalized: int = 0
    redirected_sites: int = 0
    untracked: list[str] = field(default_factory=list)
    leaves: list[str] = field(default_factory=list)
    # tracked IFUNCs entered plain when the CPU gets a variant that is a leaf
    choosing_leaves: list[str] = field(default_factory=list)
    not_patchable: list[str] = field(default_factory=list)
    padding_without_record: list[str] = field(default_factory=list)
    records_without_padding: list[str] = field(default_factory=list)
    not_redirectable: list[str] = field(default_factory=list)


def rewrite(
    path: str | Path,
    output: str | Path | None = None,
    untracked: Iterable[str] = (),
    strict: bool = False,
    track_leaves: bool = False,
) -> RewriteResult:
    """Prepare the library at `path`, in place (atomically) or into `output`.

    A library that is already prepared is left byte-identical (and copied if `output` is given).
    With `strict`, a function whose address is taken in a way that cannot be redirected is an
    error, and nothing is written. With `track_leaves`, the leaves (leaves.py) get trampolines
    too.
    """
    source = Path(path)
    elf = ElfFile.load(source)
    data, result = prepare(elf, untracked, strict, track_leaves)
    # In place means the file behind any symlink, so the link stays a link.
    target = Path(output) if output is not None else source.resolve()
    result.output = str(output if output is not None else source)
    if output is None and result.already_prepared:
        return result
    write_atomically(target, data, source.stat().st_mode & 0o7777)
    return result


def prepare(
    elf: ElfFile,
    untracked: Iterable[str] = (),
    strict: bool = False,
    track_leaves: bool = False,
) -> tuple[bytes | bytearray, RewriteResult]:
    """The prepared image of `elf` and what was done, without touching any file."""
    tables = check_input(elf)
    result = RewriteResult(elf.name, elf.name)
    if is_prepared(elf):
        # Build integrations ship what passes here: a prepared library is taken as it is only
        # if `check` finds nothing wrong with it.
        errors = check(elf).errors
        if errors:
            raise ElfError(f"{elf.name}: prepared, but {errors[0]}")
        result.already_prepared = True
        return elf.data, result
    try:
        untracked_names = set(DEFAULT_UNTRACKED) | set(untracked)
        image = _prepared_image(elf, tables, untracked_names, result, strict, track_leaves)
        return image, result
    except (struct.error, IndexError) as exc:
        # A table whose counts disagree with its size: the headers said nothing wrong, but
        # the contents do not add up.
        raise ElfError(f"{elf.name}: corrupt ELF file ({exc})") from None
    except UlpError as exc:
        # Raised where the file is not known (code generation): name it here.
        if str(exc).startswith(f"{elf.name}: "):
            raise
        raise ElfError(f"{elf.name}: {exc}") from None


def _prepared_image(
    elf: ElfFile,
    tables: DynamicTables,
    untracked: set[str],
    result: RewriteResult,
    strict: bool,
    track_leaves: bool,
) -> bytearray:
    """One preparation of one library: layout first, then the bytes."""
    ibt = elf.uses_ibt
    out = bytearray(elf.data)
    exported = exported_functions(elf)
    _check_room(elf, tables)

    pads = patchable.find(elf)
    chosen = tracked.select(elf, exported, untracked, pads, track_leaves)
    result.exported_functions = len(exported)
    result.untracked = chosen.untracked
    result.leaves = chosen.leaves
    result.choosing_leaves = chosen.choosing_leaves
    result.trampolines = chosen.trampolines
    result.ifuncs = len(chosen.ifuncs)
    result.redirected_sites = len(chosen.taken.sites)
    result.not_redirectable = chosen.taken.not_redirectable
    if strict and result.not_redirectable:
        raise ElfError(
            f"{elf.name}: the address of {', '.join(result.not_redirectable)} is taken in a way"
            " that cannot be redirected to a trampoline (--strict)"
        )
    padding = tracked.normalize_padding(elf, out, exported, chosen.functions, pads)
    result.patchable = padding.patchable
    result.not_patchable = padding.not_patchable
    result.padding_without_record = padding.padding_without_record
    result.records_without_padding = padding.records_without_padding
    result.normalized = padding.normalized

    runtime = grown_tables.runtime_symbol(elf, tables)
    ifunc_leaves = [len(chosen.leaf_choices.get(r, ())) for r in chosen.ifuncs]
    lay = segments.lay_out(
        elf, tables, len(runtime.dynstr), len(chosen.functions), ifunc_leaves, ibt
    )
    code = trampolines.code_segment(lay, chosen, ibt)
    addends = taken_addresses.redirect(out, elf, chosen.taken.sites, code.trampoline_at)
    grown = grown_tables.grow(elf, tables, lay, runtime, chosen.symbols, code, addends, ibt)
    grown_tables.renumber_plt_relocations(out, tables, runtime)
    grown_tables.point_dynamic_at(out, elf, tables, lay, grown)

    data = trampolines.data_segment(elf, lay, chosen.trampolines, ibt)
    r_segment = {lay.phdrs: segments.program_headers(elf, lay), **grown}
    output_file.append_segments(out, lay, r_segment, code.code, data)
    # One account of what moved, for the section headers and the section symbols alike.
    moved = output_file.moved_tables(tables, lay)
    shoff = output_file.append_section_headers(out, elf, moved, lay, grown)
    output_file.repoint_section_symbols(out, elf, moved)
    output_file.update_elf_header(out, elf, lay, shoff)
    return out


def _check_room(elf: ElfFile, tables: DynamicTables) -> None:
    """What the additions need that `check_input` does not ask of every library: relocations to
    append the runtime's GOT relocation to, a hash table to add its symbol to, and section
    indices for three more sections."""
    name = elf.name
    if tables.rela is None:
        raise ElfError(f"{name}: no DT_RELA relocations; cannot add the runtime's GOT slot")
    if tables.hash is None and tables.gnu_hash is None:
        raise ElfError(f"{name}: no symbol hash table (DT_HASH or DT_GNU_HASH)")
    if elf.header.shnum + 3 >= SHN_LORESERVE:
        raise ElfError(f"{name}: too many sections to add three more")
