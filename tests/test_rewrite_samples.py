"""The rewriter on every sample library: behaviour unchanged, symbols reach trampolines, the
file stays valid for the system's tools, and the transformation is exact and repeatable."""

from __future__ import annotations

import re
import shutil
import stat
from pathlib import Path

import pytest
from conftest import BuiltSample, run, ulp

from ulp_build.elf import STT_FUNC, STT_GNU_IFUNC, ElfFile
from ulp_build.prepare import codegen, patchable
from ulp_build.prepare.inputs import exported_functions
from ulp_build.prepare.layout import CFLAGS, SECTION_TRACK, SECTION_TRAMPOLINES
from ulp_build.prepare.rewrite import rewrite

SAMPLES = ["basic", "abi", "versioned", "ifunc", "symbolic", "cet", "cxx"]


@pytest.mark.parametrize("name", SAMPLES)
def test_output_identical_linked_and_dlopen(built: dict[str, BuiltSample], name: str) -> None:
    b = built[name]
    runs = {
        "linked, unprepared": b.run_linked(b.raw),
        "linked, prepared": b.run_linked(b.prepared),
        "dlopen, unprepared": b.run_dlopen(b.raw),
        "dlopen, prepared": b.run_dlopen(b.prepared),
    }
    for label, result in runs.items():
        assert result.returncode == 0, f"{label}: {result.stderr}"
    reference = runs["linked, unprepared"].stdout
    assert reference.count("\n") >= 3
    for label, result in runs.items():
        assert result.stdout == reference, label


def _trampoline_targets(elf: ElfFile) -> dict[int, int]:
    """Trampoline address -> real entry, decoded from the prepared file."""
    ulp = elf.section(SECTION_TRAMPOLINES)
    assert ulp is not None
    out = {}
    for sym in elf.dynamic_symbols:
        if sym.type == STT_FUNC and ulp.contains(sym.value):
            decoded = codegen.decode_trampoline(elf.read(sym.value, 18), sym.value)
            assert decoded is not None and not decoded.indirect
            out[sym.value] = decoded.target
    return out


@pytest.mark.parametrize("name", SAMPLES)
def test_dlsym_returns_trampolines(built: dict[str, BuiltSample], probe: Path, name: str) -> None:
    b = built[name]
    raw, prepared = ElfFile.load(b.raw), ElfFile.load(b.prepared)
    funcs = [s for s in exported_functions(raw) if s.type == STT_FUNC]
    assert funcs
    names = sorted({s.name for s in funcs})
    result = run([str(probe), str(b.prepared), *names])
    assert result.returncode == 0, result.stderr
    ulp = prepared.section(SECTION_TRAMPOLINES)
    targets = _trampoline_targets(prepared)
    # dlsym finds the default version of a versioned name.
    real = {
        s.name: s.value
        for s in funcs
        if "@" not in raw.versioned_names[s.index] or "@@" in raw.versioned_names[s.index]
    }
    for line in result.stdout.splitlines():
        sym, addr = line.split()
        value = int(addr, 16)
        assert ulp.contains(value), f"{sym} resolves to {addr}, outside {SECTION_TRAMPOLINES}"
        # The trampoline reaches the function the unprepared library exported by that name.
        assert targets[value] == real[sym]


def test_aliases_share_one_trampoline(built: dict[str, BuiltSample], probe: Path) -> None:
    result = run([str(probe), str(built["basic"].prepared), "basic_add", "basic_sum"])
    first, second = (line.split()[1] for line in result.stdout.splitlines())
    assert first == second


def test_symbol_versions_get_distinct_trampolines(
    built: dict[str, BuiltSample], probe: Path
) -> None:
    b = built["versioned"]
    query = ["versioned_get@VERS_1", "versioned_get@VERS_2", "versioned_get"]
    prepared = dict(
        line.split() for line in run([str(probe), str(b.prepared), *query]).stdout.splitlines()
    )
    raw = dict(line.split() for line in run([str(probe), str(b.raw), *query]).stdout.splitlines())
    assert prepared["versioned_get@VERS_1"] != prepared["versioned_get@VERS_2"]
    assert prepared["versioned_get"] == prepared["versioned_get@VERS_2"]
    targets = _trampoline_targets(ElfFile.load(b.prepared))
    for q in query:
        assert targets[int(prepared[q], 16)] == int(raw[q], 16)


def test_ifunc_goes_through_wrapper_and_still_dispatches(
    built: dict[str, BuiltSample], probe: Path
) -> None:
    b = built["ifunc"]
    prepared = ElfFile.load(b.prepared)
    (sym,) = [s for s in prepared.dynamic_symbols if s.name == "ifunc_triple"]
    assert sym.type == STT_GNU_IFUNC
    assert prepared.section(SECTION_TRACK).contains(sym.value)
    wrapper = codegen.decode_ifunc_wrapper(prepared.read(sym.value, sym.size), sym.value)
    assert wrapper is not None
    resolver, tramp = wrapper.resolver, wrapper.trampoline
    (raw_sym,) = [s for s in ElfFile.load(b.raw).dynamic_symbols if s.name == "ifunc_triple"]
    assert resolver == raw_sym.value
    # dlsym runs the wrapper, which returns the IFUNC trampoline.
    (line,) = run([str(probe), str(b.prepared), "ifunc_triple"]).stdout.splitlines()
    assert int(line.split()[1], 16) == tramp
    assert "resolver chose sse2" in b.run_dlopen(b.prepared).stdout


def test_cet_library_gets_endbr64_everywhere(built: dict[str, BuiltSample]) -> None:
    elf = ElfFile.load(built["cet"].prepared)
    assert elf.uses_ibt
    for target in _trampoline_targets(elf):
        assert elf.read(target, 4) == codegen.ENDBR64
    plain = ElfFile.load(built["basic"].prepared)
    assert not plain.uses_ibt
    assert all(plain.read(t, 4) != codegen.ENDBR64 for t in _trampoline_targets(plain))


@pytest.mark.parametrize("name", SAMPLES)
def test_every_padded_entry_is_one_two_byte_nop(built: dict[str, BuiltSample], name: str) -> None:
    raw, prepared = ElfFile.load(built[name].raw), ElfFile.load(built[name].prepared)
    records = patchable.records(raw)
    assert records, "the sample was built without padding"
    for pad in records:
        nop_at, normalized = patchable.entry_nop(prepared, pad + patchable.PAD_BEFORE)
        assert normalized
        assert prepared.read(nop_at, 2) == b"\x66\x90"
        assert prepared.read(pad, patchable.PAD_BEFORE) == b"\x90" * patchable.PAD_BEFORE
        assert raw.read(nop_at, 2) == b"\x90\x90"


@pytest.mark.parametrize("name", SAMPLES)
def test_no_address_moves_and_only_entry_nops_change(
    built: dict[str, BuiltSample], name: str
) -> None:
    raw, prepared = ElfFile.load(built[name].raw), ElfFile.load(built[name].prepared)
    assert raw.symtab_symbols == prepared.symtab_symbols
    nops = {f.nop_at for f in patchable.find(raw).functions.values()}
    moved = {".dynsym", ".dynstr", ".gnu.version", ".gnu.hash", ".hash", ".rela.dyn"}
    after = {s.name: s for s in prepared.sections}
    for sec in raw.sections:
        if not sec.addr or sec.name in moved:
            continue
        new = after[sec.name]
        assert (new.addr, new.size) == (sec.addr, sec.size), sec.name
        if sec.type == 8:  # NOBITS
            continue
        old_bytes, new_bytes = raw.section_data(sec), prepared.section_data(new)
        changed = [
            sec.addr + i
            for i, (a, b) in enumerate(zip(old_bytes, new_bytes, strict=True))
            if a != b
        ]
        allowed = set()
        if sec.name == ".dynamic":
            continue  # tag values of the moved tables; checked by the loader in every run
        if sec.name == ".rela.plt":
            continue  # symbol indices renumbered; checked by the loader in every run
        for at in nops:
            allowed |= {at, at + 1}
        assert set(changed) <= allowed, f"{sec.name}: unexpected changes at {changed[:5]}"


def _readelf_warnings(path: Path) -> set[str]:
    result = run(["readelf", "-a", "-W", str(path)])
    assert result.returncode == 0
    return {line.replace(str(path), "FILE") for line in result.stderr.splitlines()}


def _elflint(path: Path) -> set[str]:
    result = run(["eu-elflint", "--gnu-ld", str(path)])
    return {line for line in result.stdout.splitlines() if "No errors" not in line}


@pytest.mark.parametrize("name", SAMPLES)
def test_readelf_and_elflint_report_nothing_new(built: dict[str, BuiltSample], name: str) -> None:
    b = built[name]
    assert _readelf_warnings(b.prepared) <= _readelf_warnings(b.raw)
    assert _elflint(b.prepared) <= _elflint(b.raw)


@pytest.mark.parametrize("name", SAMPLES)
def test_prepared_library_links(built: dict[str, BuiltSample], name: str, tmp_path: Path) -> None:
    b = built[name]
    shutil.copy(b.prepared, tmp_path / b.sample.library_name)
    from sample_libs import samples

    exe = samples.build_test(b.sample, tmp_path / "bin", tmp_path, dlopen=False)
    assert (
        b.run_linked(b.raw).stdout == run([str(exe)], env={"LD_LIBRARY_PATH": str(tmp_path)}).stdout
    )


def test_second_rewrite_changes_nothing(built: dict[str, BuiltSample], tmp_path: Path) -> None:
    copy = tmp_path / "libbasic.so"
    shutil.copy(built["basic"].prepared, copy)
    before = copy.read_bytes()
    mtime = copy.stat().st_mtime_ns
    result = ulp("rewrite", str(copy))
    assert result.returncode == 0
    assert "already prepared" in result.stdout
    assert copy.read_bytes() == before
    assert copy.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("name", SAMPLES)
def test_rewrite_is_deterministic(built: dict[str, BuiltSample], name: str, tmp_path: Path) -> None:
    first, second = tmp_path / "a.so", tmp_path / "b.so"
    rewrite(built[name].raw, first, track_leaves=True)
    rewrite(built[name].raw, second, track_leaves=True)
    assert first.read_bytes() == second.read_bytes() == built[name].prepared.read_bytes()


def test_in_place_keeps_mode_and_follows_symlinks(
    built: dict[str, BuiltSample], tmp_path: Path
) -> None:
    real = tmp_path / "libbasic.so.1.0"
    shutil.copy(built["basic"].raw, real)
    real.chmod(0o751)
    link = tmp_path / "libbasic.so"
    link.symlink_to(real.name)
    result = ulp("rewrite", str(link), "--track-leaves")  # as `built` was
    assert result.returncode == 0, result.stderr
    assert link.is_symlink()
    assert stat.S_IMODE(real.stat().st_mode) == 0o751
    assert real.read_bytes() == built["basic"].prepared.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if "ulp-tmp" in p.name] == []


def test_untracked_names_keep_plain_entries(built: dict[str, BuiltSample], tmp_path: Path) -> None:
    out = tmp_path / "libbasic.so"
    result = ulp(
        "rewrite",
        str(built["basic"].raw),
        "-o",
        str(out),
        "--json",
        "--track-leaves",  # basic_add is a leaf
        "--untracked",
        "basic_name",
        "basic_square",
    )
    assert result.returncode == 0, result.stderr
    assert '"basic_name"' in result.stdout and '"basic_square"' in result.stdout
    raw, prepared = ElfFile.load(built["basic"].raw), ElfFile.load(out)
    before = {s.name: s.value for s in raw.dynamic_symbols}
    after = {s.name: s.value for s in prepared.dynamic_symbols}
    assert after["basic_name"] == before["basic_name"]
    assert after["basic_square"] == before["basic_square"]
    assert after["basic_add"] != before["basic_add"]


def test_data_and_tls_symbols_untouched(built: dict[str, BuiltSample]) -> None:
    raw, prepared = ElfFile.load(built["basic"].raw), ElfFile.load(built["basic"].prepared)
    before = {s.name: s for s in raw.dynamic_symbols if s.type in (1, 6)}
    after = {s.name: s for s in prepared.dynamic_symbols if s.type in (1, 6)}
    assert {"basic_counter", "basic_calls"} <= set(before)
    for name, sym in before.items():
        assert after[name]._replace(index=0) == sym._replace(index=0)


def test_lief_reads_the_prepared_library(built: dict[str, BuiltSample]) -> None:
    """An independent parser sees the new sections, the runtime symbol and its relocation."""
    import lief

    binary = lief.ELF.parse(str(built["basic"].prepared))
    names = [s.name for s in binary.sections]
    assert {".ulp", ".ulp.track", ".ulp.data"} <= set(names)
    symbol = binary.get_dynamic_symbol("ulp_track")
    assert symbol is not None and symbol.binding == lief.ELF.Symbol.BINDING.WEAK
    assert any(r.has_symbol and r.symbol.name == "ulp_track" for r in binary.dynamic_relocations)
    assert re.fullmatch(r"[0-9a-f]+", ElfFile.load(built["basic"].prepared).build_id or "")


def test_a_large_bss_does_not_grow_the_file(tmp_path: Path) -> None:
    """The program headers go at e_phoff's address (musl's loader reads its own there) when the
    file needs only a few zeros for it; a library with a 64 MiB .bss keeps its table at the end
    of its file, mapped where PT_PHDR says, and works."""
    source = tmp_path / "big.c"
    source.write_text(
        "static char buffer[64 << 20];\n"
        "int big_touch(int i) { buffer[i] = (char)i; return buffer[i] + 1; }\n"
    )
    lib = tmp_path / "libbig.so"
    built = run(["gcc", *CFLAGS, "-O2", "-fPIC", "-shared", "-o", str(lib), str(source)])
    assert built.returncode == 0, built.stderr
    before = lib.stat().st_size
    assert ulp("rewrite", str(lib)).returncode == 0
    assert lib.stat().st_size - before < 1 << 20
    assert ulp("check", str(lib)).returncode == 0
    program = tmp_path / "big"
    main = tmp_path / "main.c"
    main.write_text(
        "int big_touch(int);\nint main(void) { return big_touch(1 << 25) == 1 ? 0 : 1; }\n"
    )
    linked = run(["gcc", "-o", str(program), str(main), str(lib), f"-Wl,-rpath,{tmp_path}"])
    assert linked.returncode == 0, linked.stderr
    assert run([str(program)]).returncode == 0
