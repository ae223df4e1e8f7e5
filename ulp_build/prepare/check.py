"""Inspecting a library: is it prepared, what is tracked and patchable, and what is wrong.

`check` trusts nothing the rewriter might have written: it decodes every trampoline and IFUNC
wrapper back to the function it reaches and compares that with the padding found in the code,
so it also catches a prepared library that was later stripped, edited or truncated. The
redirected address takings it counts itself, from the relocations and the code: every
relative relocation and RIP-relative `lea` whose value is in `.ulp` must be a trampoline's
start (a trampoline reached that way and not from `.dynsym` is a taken local function's).
Which of the untracked exported functions are leaves it decides again from their code
(leaves.py), by the rewriter's rule, as the file records no such list; the variants an IFUNC
wrapper hands out plain it reads from the wrapper, and checks that each is a leaf by that rule.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ulp_build.elf import (
    PHDR,
    PT_PHDR,
    R_X86_64_GLOB_DAT,
    R_X86_64_RELATIVE,
    STT_GNU_IFUNC,
    ElfFile,
    Section,
    Symbol,
)
from ulp_build.prepare import codegen, leaves, patchable, taken_addresses
from ulp_build.prepare.inputs import check_input, exported_functions, is_musl_loader
from ulp_build.prepare.layout import (
    DEFAULT_UNTRACKED,
    DESCRIPTOR,
    DESCRIPTOR_MAGIC,
    DESCRIPTOR_OFFSET,
    DESCRIPTOR_VERSION,
    RUNTIME_SLOT_OFFSET,
    RUNTIME_SYMBOL,
    SECTION_DATA,
    SECTION_TRACK,
    SECTION_TRAMPOLINES,
    is_prepared,
)


@dataclass
class CheckReport:
    """What `ulp check` finds in one library."""

    library: str
    prepared: bool
    build_id: str | None
    ibt: bool
    exported_functions: int = 0
    trampolines: int = 0
    patchable: int = 0
    ifuncs: int = 0
    redirected_sites: int = 0
    tracked_not_patchable: list[str] = field(default_factory=list)
    untracked: list[str] = field(default_factory=list)  # plain entries but the leaves
    leaves: list[str] = field(default_factory=list)  # plain entries that are leaves
    # tracked IFUNCs whose wrapper hands out leaf variants plain (when the CPU gets one)
    choosing_leaves: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        """Prepared, and nothing found that would make tracking or patching go wrong."""
        return self.prepared and not self.errors


def check(elf: ElfFile) -> CheckReport:
    check_input(elf)
    report = CheckReport(elf.name, is_prepared(elf), elf.build_id, elf.uses_ibt)
    pads = patchable.find(elf)
    exported = exported_functions(elf)
    names = elf.versioned_names
    report.exported_functions = len(exported)
    report.patchable = len(pads.functions)
    report.ifuncs = sum(1 for s in exported if s.type == STT_GNU_IFUNC)
    for entry in pads.padding_without_record:
        report.warnings.append(
            f"padding without a __patchable_function_entries record: {elf.name_at(entry)}"
        )
    for pad in pads.records_without_padding:
        report.warnings.append(f"__patchable_function_entries record without padding at {pad:#x}")
    if not pads.functions:
        report.warnings.append("no patchable functions (build with the flags `ulp cflags` prints)")
    if not report.prepared:
        # What `rewrite` would leave untracked: by name (with their aliases), and the leaves.
        _split_leaves(elf, exported, report, prepared=False)
        report.errors.append("not prepared (run `ulp rewrite` on it)")
        return report

    _check_program_headers(elf, report)
    for func in pads.functions.values():
        if not func.normalized:
            report.errors.append(
                f"entry nops of {elf.name_at(func.entry)} are not one 2-byte"
                " nop (the library was prepared, then modified?)"
            )
    sections = {n: elf.section(n) for n in (SECTION_TRAMPOLINES, SECTION_TRACK, SECTION_DATA)}
    missing = [n for n, sec in sections.items() if sec is None]
    if missing:
        report.errors.append(f"missing section(s) {', '.join(missing)}")
        return report
    ulp, track, data = (
        sections[SECTION_TRAMPOLINES],
        sections[SECTION_TRACK],
        sections[SECTION_DATA],
    )
    entry = _check_data(elf, data, ulp, report)

    tracked: set[int] = set()
    untracked: list[Symbol] = []
    handed_out: dict[str, tuple[int, ...]] = {}  # IFUNC -> the variants it hands out plain
    for sym in exported:
        label = names[sym.index]
        if ulp.contains(sym.value):
            decoded = codegen.decode_trampoline(
                elf.read(sym.value, codegen.TRAMPOLINE_CODE + 4), sym.value
            )
            if decoded is None or decoded.indirect:
                report.errors.append(
                    f"{label}: .dynsym points into {ulp.name} but not at a trampoline"
                )
                continue
            target = decoded.target
        elif track.contains(sym.value) and sym.type == STT_GNU_IFUNC:
            wrapper = None
            if track.contains(sym.value + sym.size - 1):
                wrapper = codegen.decode_ifunc_wrapper(elf.read(sym.value, sym.size), sym.value)
            if wrapper is None:
                report.errors.append(
                    f"{label}: IFUNC points into {track.name} but not at a resolver wrapper"
                )
                continue
            tramp = wrapper.trampoline
            decoded = codegen.decode_trampoline(elf.read(tramp, codegen.TRAMPOLINE_CODE + 4), tramp)
            if decoded is None or not decoded.indirect:
                report.errors.append(f"{label}: IFUNC wrapper returns no IFUNC trampoline")
                continue
            if decoded.target != wrapper.slot:
                # The trampoline would jump through a slot the resolver's answer never reaches.
                report.errors.append(
                    f"{label}: IFUNC wrapper fills slot {wrapper.slot:#x}, its trampoline"
                    f" reads {decoded.target:#x}"
                )
                continue
            if sym.size != codegen.ifunc_wrapper_size(report.ibt, len(wrapper.leaves)):
                report.errors.append(f"{label}: IFUNC wrapper's symbol size is not its code's")
                continue
            if wrapper.leaves:
                handed_out[label] = wrapper.leaves
            target = wrapper.resolver
        elif track.contains(sym.value) or data.contains(sym.value):
            report.errors.append(
                f"{label}: .dynsym points into {SECTION_TRACK} or"
                f" {SECTION_DATA}, where no function starts"
            )
            continue
        else:
            untracked.append(sym)
            continue
        if entry is not None and decoded.entry != entry:
            report.errors.append(f"{label}: trampoline does not jump to this library's ulp_entry")
        if not elf.is_code(target):
            report.errors.append(f"{label}: trampoline targets {target:#x}, outside the code")
            continue
        tracked.add(target)
        if sym.type != STT_GNU_IFUNC and target not in pads.functions:
            report.tracked_not_patchable.append(label)
    _split_leaves(elf, untracked, report, prepared=True)
    _check_leaf_choices(elf, handed_out, report)
    report.tracked_not_patchable.sort()
    report.redirected_sites = _redirected_sites(elf, ulp, report)
    return report


def _split_leaves(elf: ElfFile, plain: list[Symbol], report: CheckReport, prepared: bool) -> None:
    """Sort the exported functions with a plain entry (in an unprepared library: all of them)
    into leaves and the rest. A function untracked by name (layout.DEFAULT_UNTRACKED, with
    every alias) stays untracked, as the rewriter says; in a prepared library, a name given to
    `rewrite --untracked` that is a leaf is reported as one, since the file does not record
    that list. In an unprepared one, the rest is what `rewrite` would leave plain by name."""
    every = elf.symtab_symbols + elf.dynamic_symbols
    named = {s.value for s in every if s.defined and s.name in DEFAULT_UNTRACKED}
    found = leaves.find(elf, [s for s in plain if s.value not in named])
    report.leaves = sorted({s.name for s in plain if s.value in found.entries})
    report.untracked = sorted(
        {s.name for s in plain if s.value not in found.entries and (prepared or s.value in named)}
    )
    if not prepared:
        report.choosing_leaves = sorted({s.name for s in plain if s.value in found.chosen})


def _check_leaf_choices(
    elf: ElfFile, handed_out: dict[str, tuple[int, ...]], report: CheckReport
) -> None:
    """An IFUNC wrapper hands out the variants it lists plain: each must be a function of the
    code that is a leaf by the rewriter's rule, or its calls could mix versions untracked."""
    found = leaves.are_leaves(elf, {a for variants in handed_out.values() for a in variants})
    for label, variants in sorted(handed_out.items()):
        wrong = [a for a in variants if a not in found]
        if wrong:
            names = ", ".join(elf.name_at(a) for a in wrong)
            report.errors.append(f"{label}: IFUNC wrapper hands out plain what is no leaf: {names}")
        else:
            report.choosing_leaves.append(label)


def _check_program_headers(elf: ElfFile, report: CheckReport) -> None:
    """The rewriter moves the program header table. Loaders find it through the segment that
    maps e_phoff, and PT_PHDR must say the same address; musl's loader, which is musl's
    libc.so, finds its own at base + e_phoff, so there the two must be equal, or it reads other
    bytes as headers and every program dies before main, while readelf and elflint find
    nothing wrong."""
    phoff = elf.header.phoff
    size = elf.header.phnum * PHDR.size
    loaded_at = [
        s.vaddr + phoff - s.offset
        for s in elf.loads
        if s.offset <= phoff and phoff + size <= s.offset + s.filesz
    ]
    phdr = [s.vaddr for s in elf.segments if s.type == PT_PHDR]
    if is_musl_loader(elf) and loaded_at[:1] != [phoff]:
        report.errors.append(
            "program headers not at e_phoff's address; musl's loader would not find them"
        )
    elif not loaded_at or any(vaddr != loaded_at[0] for vaddr in phdr):
        report.errors.append("program headers not loaded where PT_PHDR says")


def _redirected_sites(elf: ElfFile, ulp: Section, report: CheckReport) -> int:
    """The relative relocations and `lea`s whose value is a trampoline; an error for each whose
    value is in `.ulp` but not a trampoline to a function in the code."""
    size = codegen.trampoline_size(report.ibt)
    values = [(r.offset, r.addend) for r in elf.relocations.every() if r.type == R_X86_64_RELATIVE]
    for place in elf.relocations.relr_places():
        values.append((place, struct.unpack("<Q", elf.read(place, 8))[0]))
    sites = [(place, v) for place, v in values if ulp.contains(v)]
    # The rewriter's own code (the IFUNC wrappers return IFUNC trampolines) is not the library's.
    own = {SECTION_TRAMPOLINES, SECTION_TRACK}
    sites += taken_addresses.leas_into(elf, ulp.addr, ulp.addr + ulp.size, own)
    for place, value in sites:
        decoded = None
        if (value - ulp.addr) % size == 0:
            decoded = codegen.decode_trampoline(elf.read(value, codegen.TRAMPOLINE_CODE + 4), value)
        if decoded is None or decoded.indirect or not elf.is_code(decoded.target):
            report.errors.append(
                f"the address taken at {place:#x} points into {ulp.name} but not at a"
                " trampoline to a function"
            )
    return len(sites)


def _check_data(elf: ElfFile, data: Section, ulp: Section, report: CheckReport) -> int | None:
    """Check the descriptor and the runtime's GOT slot; return ulp_entry's address."""
    if data.size < DESCRIPTOR_OFFSET + DESCRIPTOR.size:
        report.errors.append(f"{SECTION_DATA} is too small for the library descriptor")
        return None
    d = DESCRIPTOR.unpack(elf.read(data.addr + DESCRIPTOR_OFFSET, DESCRIPTOR.size))
    magic, version, link = d["magic"], d["version"], d["link_address"]
    tramps, count, size = d["trampolines"], d["trampoline_count"], d["trampoline_size"]
    if magic != DESCRIPTOR_MAGIC or version != DESCRIPTOR_VERSION:
        report.errors.append(f"{SECTION_DATA}: no descriptor of version {DESCRIPTOR_VERSION}")
        return None
    if link != data.addr + DESCRIPTOR_OFFSET or tramps != ulp.addr or count * size != ulp.size:
        report.errors.append(f"{SECTION_DATA}: descriptor does not match the sections")
    report.trampolines = count
    slot = data.addr + RUNTIME_SLOT_OFFSET
    relocs = [r for r in elf.relocations_at(slot, 8) if r.type == R_X86_64_GLOB_DAT]
    syms = elf.dynamic_symbols
    if not relocs or relocs[0].symbol >= len(syms) or syms[relocs[0].symbol].name != RUNTIME_SYMBOL:
        report.errors.append(
            f"no GOT relocation of {RUNTIME_SYMBOL}: the runtime would never see this library"
        )
    track = elf.section(SECTION_TRACK)
    return track.addr if track is not None else None


def summary(report: CheckReport) -> dict[str, object]:
    """The report as plain data, for `--json`."""
    return {
        "library": report.library,
        "prepared": report.prepared,
        "usable": report.usable,
        "build_id": report.build_id,
        "ibt": report.ibt,
        "exported_functions": report.exported_functions,
        "trampolines": report.trampolines,
        "patchable_functions": report.patchable,
        "ifuncs": report.ifuncs,
        "redirected_sites": report.redirected_sites,
        "tracked_not_patchable": report.tracked_not_patchable,
        "untracked": report.untracked,
        "leaves": report.leaves,
        "choosing_leaves": report.choosing_leaves,
        "errors": report.errors,
        "warnings": report.warnings,
    }
