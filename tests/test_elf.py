"""Our ELF reader agrees with pyelftools and readelf on real files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import BuiltSample, run, system_libc
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from ulp_build.elf import ElfFile


def _files(built: dict[str, BuiltSample]) -> list[Path]:
    out = [Path(system_libc())]
    for b in built.values():
        out += [b.raw, b.prepared]
    return out


def test_reader_matches_pyelftools(built: dict[str, BuiltSample]) -> None:
    for path in _files(built):
        ours = ElfFile.load(path)
        with path.open("rb") as f:
            theirs = ELFFile(f)
            assert [
                (s.name, s["sh_addr"], s["sh_offset"], s["sh_size"], s["sh_type"])
                for s in theirs.iter_sections()
            ] == [
                (s.name, s.addr, s.offset, s.size, _sh_type(theirs, s.index)) for s in ours.sections
            ], path
            assert [
                (p["p_vaddr"], p["p_offset"], p["p_filesz"], p["p_memsz"])
                for p in theirs.iter_segments()
            ] == [(s.vaddr, s.offset, s.filesz, s.memsz) for s in ours.segments], path
            for sec in theirs.iter_sections():
                if not isinstance(sec, SymbolTableSection):
                    continue
                mine = (
                    ours.dynamic_symbols if sec["sh_type"] == "SHT_DYNSYM" else ours.symtab_symbols
                )
                assert [(s.name, s["st_value"], s["st_size"]) for s in sec.iter_symbols()] == [
                    (s.name, s.value, s.size) for s in mine
                ], (path, sec.name)


def _sh_type(theirs: ELFFile, index: int) -> str:
    return theirs.get_section(index)["sh_type"]


def test_build_id_matches_readelf(built: dict[str, BuiltSample]) -> None:
    for path in _files(built):
        notes = run(["readelf", "-n", str(path)]).stdout
        match = re.search(r"Build ID: ([0-9a-f]+)", notes)
        assert match and ElfFile.load(path).build_id == match.group(1)


def test_versioned_names_match_readelf(built: dict[str, BuiltSample]) -> None:
    path = built["versioned"].raw
    listing = run(["readelf", "--dyn-syms", "-W", str(path)]).stdout
    readelf = {line.split()[-1] for line in listing.splitlines() if "versioned_get@" in line}
    ours = {n for n in ElfFile.load(path).versioned_names if n.startswith("versioned_get@")}
    assert readelf == ours == {"versioned_get@VERS_1", "versioned_get@@VERS_2"}


@pytest.mark.parametrize(("name", "ibt"), [("cet", True), ("basic", False)])
def test_ibt_marking(built: dict[str, BuiltSample], name: str, ibt: bool) -> None:
    notes = run(["readelf", "-n", str(built[name].raw)]).stdout
    assert ("IBT" in notes) == ibt
    assert ElfFile.load(built[name].raw).uses_ibt == ibt
