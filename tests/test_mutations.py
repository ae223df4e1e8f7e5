"""Property-based attacks on the file readers: libraries (unprepared and prepared) and patch
descriptions mutated where their structure lives (headers, tables, dynamic entries, hash
tables, relocations, notes). Whatever the input, `rewrite`, `check` and `pack` end in their own
one-line error or succeed, and what `rewrite` accepts from a library the loader runs is a
library that `check` passes and that runs the same."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest
from conftest import BuiltSample, run
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ulp_build.elf import ElfFile
from ulp_build.errors import UlpError
from ulp_build.patch.packer import pack
from ulp_build.prepare.check import check
from ulp_build.prepare.rewrite import rewrite

# Where a mutation lands: the structures the readers interpret, not code or string contents.
STRUCTURAL = (
    ".dynamic", ".dynsym", ".gnu.hash", ".hash", ".rela.dyn", ".rela.plt", ".gnu.version",
    ".gnu.version_d", ".gnu.version_r", ".note.gnu.build-id", ".note.gnu.property", ".ulp.data",
    "__patchable_function_entries", ".symtab",
)  # fmt: skip
# The tables the loader finds through DT_* entries and the rewriter through section headers;
# targeted mutations make the two disagree.
DYNAMIC_TABLES = (
    ".dynsym",
    ".dynstr",
    ".gnu.hash",
    ".hash",
    ".rela.dyn",
    ".rela.plt",
    ".gnu.version",
)
# Section header fields by (offset, width): sh_addr, sh_offset, sh_size, sh_link.
SECTION_FIELDS = ((16, 8), (24, 8), (32, 8), (40, 4))
# Dynamic tags whose values are those tables' addresses and sizes: DT_PLTRELSZ, DT_HASH,
# DT_STRTAB, DT_SYMTAB, DT_RELA, DT_RELASZ, DT_STRSZ, DT_JMPREL, DT_GNU_HASH, DT_VERSYM,
# DT_VERNEED.
TABLE_TAGS = (2, 4, 5, 6, 7, 8, 10, 23, 0x6FFFFEF5, 0x6FFFFFF0, 0x6FFFFFFE)
# Each property runs this many mutants: the whole file takes about a minute on 2 cores.
EXAMPLES = 1800


def _regions(path: Path) -> list[tuple[int, int]]:
    """(offset, size) of the ELF header, both header tables and every structural section."""
    with path.open("rb") as f:
        elf = ELFFile(f)
        h = elf.header
        out = [
            (0, h.e_ehsize),
            (h.e_phoff, h.e_phentsize * h.e_phnum),
            (h.e_shoff, h.e_shentsize * h.e_shnum),
        ]
        for sec in elf.iter_sections():
            if sec.name in STRUCTURAL and sec["sh_type"] != "SHT_NOBITS" and sec["sh_size"]:
                out.append((sec["sh_offset"], sec["sh_size"]))
    return out


@st.composite
def _mutations(draw: st.DrawFn, regions: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
    """1 to 3 edits, each a 1, 2, 4 or 8-byte field of a region set to a value that readers
    trip over: zero, all ones, a small change, a power of two, or anything."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        start, size = draw(st.sampled_from(regions))
        width = draw(st.sampled_from([1, 2, 4, 8]))
        if size < width:
            continue
        at = start + draw(st.integers(0, (size - width) // width)) * width
        value = draw(
            st.one_of(
                st.just(0),
                st.just((1 << (8 * width)) - 1),
                st.integers(1, 64),
                st.integers(0, 8 * width - 1).map(lambda b: 1 << b),
                st.integers(0, (1 << (8 * width)) - 1),
            )
        )
        edits.append((at, value.to_bytes(width, "little")))
    return edits


def _fields(path: Path) -> list[tuple[int, int, list[int]]]:
    """(offset, width, plausible wrong values) of each field that ties a dynamic table to the
    loader: the tables' section header fields (wrong values: the same field of the others), their
    DT_* values (the other DT_* values), and the `.gnu.hash` header (nbuckets, symoffset, bloom
    size and shift: small numbers)."""
    data = path.read_bytes()
    out: list[tuple[int, int, list[int]]] = []
    with path.open("rb") as f:
        elf = ELFFile(f)
        shoff = elf.header.e_shoff
        tables = [i for i, sec in enumerate(elf.iter_sections()) if sec.name in DYNAMIC_TABLES]
        dynamic_at = elf.get_section_by_name(".dynamic")["sh_offset"]
        dynamic = elf.get_section_by_name(".dynamic").data()
        gnu_hash = elf.get_section_by_name(".gnu.hash")["sh_offset"]
    for at, width in SECTION_FIELDS:
        spots = [shoff + 64 * i + at for i in tables]
        others = [int.from_bytes(data[o : o + width], "little") for o in spots]
        out += [(o, width, others) for o in spots]
    entries = [
        (dynamic_at + 16 * k + 8, value)
        for k, (tag, value) in enumerate(struct.iter_unpack("<qQ", dynamic))
        if tag in TABLE_TAGS
    ]
    out += [(o, 8, [v for _o, v in entries]) for o, _v in entries]
    out += [(gnu_hash + 4 * k, 4, list(range(9))) for k in range(4)]
    return out


@st.composite
def _disagreements(
    draw: st.DrawFn, fields: list[tuple[int, int, list[int]]], original: bytes
) -> list[tuple[int, bytes]]:
    """One or two of those fields set to another table's value, or moved by a few bytes or a
    few entries: a section header and its DT_* entry that disagree, plausibly."""
    edits = []
    for _ in range(draw(st.integers(1, 2))):
        at, width, others = draw(st.sampled_from(fields))
        old = int.from_bytes(original[at : at + width], "little")
        value = draw(
            st.one_of(
                st.sampled_from(others),
                st.integers(-64, 64).map(lambda d, old=old: old + d),
                st.integers(-4, 4).map(lambda k, old=old: old + 24 * k),
            )
        )
        edits.append((at, (value % (1 << (8 * width))).to_bytes(width, "little")))
    return edits


@st.composite
def _cut_notes(draw: st.DrawFn, note_at: int) -> list[tuple[int, bytes]]:
    """The build-id note turned into a GNU property note (NT_GNU_PROPERTY_TYPE_0) holding the
    x86 feature property, the note or the property cut short or overlong."""
    descsz = draw(st.integers(0, 40))
    datasz = draw(st.integers(0, 40))
    edits = [(note_at + 4, struct.pack("<II", descsz, 5))]
    if draw(st.booleans()):
        edits.append((note_at + 16, struct.pack("<II", 0xC0000002, datasz)))
    return edits


def _apply(original: bytes, edits: list[tuple[int, bytes]], delta: dict[int, int]) -> bytes:
    data = bytearray(original)
    for at, raw in edits:
        # A small change relative to the old value hits "off by a few" bugs, which setting a
        # value seldom does.
        if at in delta:
            old = int.from_bytes(data[at : at + len(raw)], "little")
            raw = ((old + delta[at]) % (1 << (8 * len(raw)))).to_bytes(len(raw), "little")
        data[at : at + len(raw)] = raw
    return bytes(data)


def _runs(sample: BuiltSample, library: Path) -> str | None:
    """The test program's output through dlopen, or None if it did not run to the end."""
    try:
        result = run([str(sample.dlopened), str(library)], timeout=10)
    except Exception:
        return None
    return result.stdout if result.returncode == 0 else None


def _one_line_naming(error: UlpError, path: Path) -> None:
    assert "\n" not in str(error) and str(error).startswith(f"{path}: "), str(error)


def _attack(sample: BuiltSample, work: Path, data: bytes) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    mutant = work / "in" / sample.raw.name
    mutant.parent.mkdir()
    mutant.write_bytes(data)
    output = work / "out" / sample.raw.name
    output.parent.mkdir()
    try:
        check(ElfFile.load(mutant))
    except UlpError as error:
        _one_line_naming(error, mutant)
    try:
        rewrite(mutant, output)
    except UlpError as error:
        _one_line_naming(error, mutant)
        assert not output.exists()
        return
    if not output.exists():  # already prepared, nothing written: judge the input itself
        output = mutant
    before = _runs(sample, mutant)
    report = check(ElfFile.load(output))
    if before is not None:
        assert report.usable, (report.errors, sorted(os.listdir(work)))
        # A mutant can run differently each time (a PLT slot bound to data prints what lies
        # at a randomized address): its output is a reference only if a second run agrees.
        if _runs(sample, mutant) == before:
            assert _runs(sample, output) == before


@pytest.mark.parametrize("kind", ["raw", "prepared"])
def test_mutated_libraries(built: dict[str, BuiltSample], tmp_path: Path, kind: str) -> None:
    sample = built["basic"]
    original_path = sample.raw if kind == "raw" else sample.prepared
    original = original_path.read_bytes()
    regions = _regions(original_path)
    fields = _fields(original_path)
    with original_path.open("rb") as f:
        note_at = ELFFile(f).get_section_by_name(".note.gnu.build-id")["sh_offset"]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        edits=st.one_of(_mutations(regions), _disagreements(fields, original), _cut_notes(note_at)),
        delta=st.dictionaries(st.integers(0, len(original)), st.integers(-16, 16), max_size=2),
    )
    def attack(edits: list[tuple[int, bytes]], delta: dict[int, int]) -> None:
        _attack(sample, tmp_path / "work", _apply(original, edits, delta))

    attack()


def test_mutated_descriptions(tree: Path, tmp_path: Path) -> None:
    source = tree / "patches" / "square_fix"
    text = (source / "patch.toml").read_text()
    text = text.replace("../../basic/libbasic.so", str(tree / "basic" / "libbasic.so"))

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True)
    @given(
        cut=st.integers(0, len(text)),
        insert=st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
        drop=st.integers(0, 8),
    )
    def attack(cut: int, insert: str, drop: int) -> None:
        work = tmp_path / "work"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        shutil.copy(source / "patch.so", work / "patch.so")
        desc = work / "p.toml"
        desc.write_text(text[:cut] + insert + text[cut + drop :])
        try:
            pack(desc)
        except UlpError as error:
            for line in str(error).splitlines():
                assert line.startswith(str(desc)), line
                assert line.isprintable(), repr(line)
            assert sorted(p.name for p in work.iterdir()) == ["p.toml", "patch.so"]

    attack()


def test_mutations_reach_the_structures(built: dict[str, BuiltSample]) -> None:
    """The control: the regions cover the tables rewrite reads, so a mutation there is seen
    (a zeroed .dynamic entry count or section header table breaks the library)."""
    sample = built["basic"]
    regions = _regions(sample.raw)
    assert len(regions) >= 10
    original = sample.raw.read_bytes()
    # e_shoff pointing past the end of the file: refused with rewrite's own error.
    broken = bytearray(original)
    struct.pack_into("<Q", broken, 0x28, len(original) + 4096)
    with pytest.raises(UlpError, match="section header"):
        ElfFile(bytes(broken), "mutant")
