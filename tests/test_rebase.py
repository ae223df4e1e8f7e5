"""Patch objects moved to another link-time address (ulp_build/patch/rebase.py) and placed next
to their target in a live process (ulp_build/live/placement.py): the rebased file is the one ld
writes when told to link at that address, it runs where it was moved to, and the trigger puts a
patch object within 2 GiB of its target where a plain dlopen would put it GiBs away."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import run
from live import OVERFLOWED, PROGRAMS, SATURATED, patch_file, running, trigger_cli

from ulp_build.elf import ElfFile
from ulp_build.elf.constants import DYN, EHDR, PHDR, PT_LOAD
from ulp_build.errors import UlpError
from ulp_build.live.placement import GUARD, REACH, STACK_GAP, near_address
from ulp_build.live.process import Mapping, maps, read_memory
from ulp_build.patch import metadata
from ulp_build.patch.rebase import PAGE, Footprint, footprint, rebase

# Everything whose addresses a rebase shifts: pointers in data (RELATIVE), a table of function
# pointers, calls through the PLT into libc, thread-local variables (offsets, not shifted), a
# constructor (.init_array) and an IFUNC (IRELATIVE).
OBJECT = r"""
#include <stdio.h>
#include <string.h>
static int table_a(int x) { return x + 1; }
static int table_b(int x) { return x * 2; }
int (*table[])(int) = { table_a, table_b };
static const char *names[] = { "alpha", "beta", "gamma" };
const char **name_ptr = &names[1];
__thread int tls_counter = 7;
static __thread int tls_static = 3;
int constructed;
__attribute__((constructor)) static void init(void) { constructed = 42; }
static int impl(void) { return 11; }
static void *resolve(void) { return (void *)impl; }
int ifunc_fn(void) __attribute__((ifunc("resolve")));
int run(char *buf, size_t n) {
    tls_counter++;
    tls_static++;
    return snprintf(buf, n, "%d %d %s %s %d %d %d %zu", table[0](1), table[1](5), *name_ptr,
                    names[2], tls_counter, tls_static, constructed + ifunc_fn(), strlen(buf));
}
"""

# dlopens the object, runs it twice, and says where the loader put it: its load bias (0 when
# loaded at its link-time address) and the address of `run`.
LOADER = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
int main(int argc, char **argv) {
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) { printf("%s\n", dlerror()); return 1; }
    struct link_map *map;
    dlinfo(h, RTLD_DI_LINKMAP, &map);
    int (*run)(char *, size_t) = (int (*)(char *, size_t))dlsym(h, "run");
    char buf[128] = "";
    run(buf, sizeof buf);
    run(buf, sizeof buf);
    printf("%s\nbias %#lx run %p\n", buf, (unsigned long)map->l_addr, (void *)run);
    return 0;
}
"""

BUILD_ID = "0x0123456789abcdef0123456789abcdef01234567"
# Ways to link: lazy binding, immediate binding, DT_RELR, TLS descriptors.
VARIANTS = {
    "lazy": [],
    "now": ["-Wl,-z,now"],
    "relr": ["-Wl,-z,pack-relative-relocs"],
    "tlsdesc": ["-mtls-dialect=gnu2"],
}
ADDRESSES = [0x7F0012340000, 0x10000000000, 0x555500000000]


def _link(tmp: Path, name: str, flags: list[str], at: int | None = None) -> Path:
    source = tmp / "object.c"
    source.write_text(OBJECT)
    out = tmp / name
    where = [] if at is None else [f"-Wl,-Ttext-segment={at:#x}"]
    cmd = ["gcc", "-shared", "-fPIC", "-O1", *flags, f"-Wl,--build-id={BUILD_ID}", *where]
    result = run([*cmd, "-o", str(out), str(source)])
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def loader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("loader")
    (tmp / "loader.c").write_text(LOADER)
    result = run(["gcc", "-o", str(tmp / "loader"), str(tmp / "loader.c")])
    assert result.returncode == 0, result.stderr
    return tmp / "loader"


@pytest.mark.parametrize("variant", VARIANTS)
def test_rebased_object_runs_where_it_was_moved(variant: str, loader: Path, tmp_path: Path) -> None:
    original = _link(tmp_path, "object.so", VARIANTS[variant])
    plain = run([str(loader), str(original)])
    assert plain.returncode == 0, plain.stdout
    expected = plain.stdout.splitlines()[0]
    assert expected.startswith("2 10 beta gamma 9 5 53 ")
    elf = ElfFile.load(original)
    run_offset = next(s.value for s in elf.dynamic_symbols if s.name == "run")
    for address in ADDRESSES:
        moved = tmp_path / f"moved-{address:x}.so"
        moved.write_bytes(rebase(original.read_bytes(), address))
        result = run([str(loader), str(moved)])
        assert result.returncode == 0, result.stdout
        output, where = result.stdout.splitlines()
        assert output == expected
        # Loaded at the address it was moved to: no load bias, `run` where its symbol says.
        assert where == f"bias 0 run {address + run_offset:#x}"
        assert ElfFile.load(moved).build_id == elf.build_id


@pytest.mark.parametrize("variant", VARIANTS)
def test_rebased_object_is_what_ld_writes_at_that_address(variant: str, tmp_path: Path) -> None:
    address = ADDRESSES[0]
    at_zero = _link(tmp_path, "zero.so", VARIANTS[variant])
    by_ld = _link(tmp_path, "ld.so", VARIANTS[variant], address)
    moved = rebase(at_zero.read_bytes(), address)
    assert moved == by_ld.read_bytes()
    assert moved != at_zero.read_bytes()


def _readelf(path: Path) -> str:
    result = run(["readelf", "-hlSdrsW", "--dyn-syms", str(path)])
    assert result.returncode == 0, result.stderr
    return result.stdout.replace(str(path), "FILE")


def test_readelf_and_the_reader_agree_with_ld_on_a_debug_object(tmp_path: Path) -> None:
    """With debugging information and --emit-relocs: every header, table and relocation as ld
    writes them at the address; only the debugging sections keep their link-time addresses."""
    flags = ["-g", "-Wl,--emit-relocs"]
    address = ADDRESSES[1]
    at_zero = _link(tmp_path, "zero.so", flags)
    by_ld = _link(tmp_path, "ld.so", flags, address)
    moved = tmp_path / "moved.so"
    moved.write_bytes(rebase(at_zero.read_bytes(), address))
    assert _readelf(moved) == _readelf(by_ld)
    assert _readelf(moved) != _readelf(at_zero)
    mine, ld = ElfFile.load(moved), ElfFile.load(by_ld)
    assert mine.segments == ld.segments and mine.sections == ld.sections
    assert mine.symtab_symbols == ld.symtab_symbols
    assert mine.dynamic_symbols == ld.dynamic_symbols
    assert mine.dynamic.entries == ld.dynamic.entries
    assert mine.relocations.every() == ld.relocations.every()
    assert mine.relocations.plt() == ld.relocations.plt()
    assert any(s.name == ".rela.text" for s in mine.sections)  # kept by --emit-relocs
    differing = {
        next(s.name for s in ld.sections if s.offset <= i < s.offset + s.size and s.size)
        for i, (a, b) in enumerate(zip(mine.data, ld.data, strict=True))
        if a != b
    }
    assert differing and all(name.startswith(".debug_") for name in differing), differing


def test_refusals(tmp_path: Path) -> None:
    shared = _link(tmp_path, "object.so", [])
    data = shared.read_bytes()
    with pytest.raises(UlpError, match=r"^obj: cannot rebase: 0x1800 is not a multiple of"):
        rebase(data, 0x1800, "obj")
    with pytest.raises(UlpError, match="outside user memory"):
        rebase(data, 1 << 47, "obj")
    # The last dynamic entry made one of a tag it does not know.
    elf = ElfFile(data)
    segment = elf.dynamic.segment
    assert segment is not None
    index = len(elf.dynamic.entries) - 1
    unknown = bytearray(data)
    DYN.pack_into(unknown, segment.offset + index * DYN.size, 0x60000123, 0)
    with pytest.raises(UlpError, match=r"^obj: cannot rebase: dynamic tag 0x60000123 is unknown"):
        rebase(bytes(unknown), PAGE, "obj")
    (tmp_path / "main.c").write_text("int main(void) { return 0; }\n")
    result = run(["gcc", "-no-pie", "-o", str(tmp_path / "exe"), str(tmp_path / "main.c")])
    assert result.returncode == 0, result.stderr
    exe = (tmp_path / "exe").read_bytes()
    with pytest.raises(UlpError, match=r"^exe: cannot rebase: not a shared object \(ET_DYN\)$"):
        rebase(exe, PAGE, "exe")


# -- placement -----------------------------------------------------------------------------

GIB = 1 << 30


def _mapping(start: int, end: int, path: str = "") -> Mapping:
    return Mapping(start, end, "r--p", 0, path)


def test_placement_prefers_below_then_above_within_reach() -> None:
    fp = Footprint(0, 0x5000, PAGE)
    lib = (0x7F0000000000, 0x7F0000100000)
    below_free = [_mapping(0x7E0000000000, 0x7E0000001000), _mapping(*lib, "/lib.so")]
    # Free below: just below the target, a guard page away.
    assert near_address(below_free, lib, fp) == lib[0] - GUARD - fp.size
    # Room left above it, for what the kernel maps at the top of the range.
    assert near_address(below_free, lib, fp, 0x100000) == lib[0] - GUARD - 0x100000 - fp.size
    # A heap of 8 GiB right below the target, another mapping right above it: the first free
    # range above it is used.
    heap = _mapping(lib[0] - 8 * GIB, lib[0])
    above = _mapping(lib[1], lib[1] + 0x3000)
    far = _mapping(lib[1] + GIB, lib[1] + GIB + PAGE)
    crowded = [_mapping(0x10000, lib[0] - 8 * GIB), heap, _mapping(*lib), above, far]
    assert near_address(crowded, lib, fp) == above.end + GUARD
    # Nothing free within 2 GiB: no address.
    walled = [*crowded[:-1], _mapping(above.end, lib[0] + REACH), far]
    assert near_address(walled, lib, fp) is None
    # Not right below the stack, which grows down into the gap the kernel keeps there.
    stack = [_mapping(0x10000, lib[0] - 8 * GIB), heap, _mapping(*lib),
             _mapping(lib[1] + 0x10000, lib[1] + 0x100000, "[stack]")]  # fmt: skip
    assert near_address(stack, lib, fp) is None
    roomy = [*stack[:-1], _mapping(lib[1] + STACK_GAP + GIB, lib[1] + STACK_GAP + 2 * GIB,
                                   "[stack]")]  # fmt: skip
    assert near_address(roomy, lib, fp) == lib[1] + GUARD
    # An object aligned above a page gets an aligned address, with room for the alignment.
    aligned = Footprint(0, 0x5000, 0x200000)
    address = near_address(below_free, lib, aligned)
    assert address is not None and address % 0x200000 == 0
    assert address + 0x5000 + 0x200000 + GUARD <= lib[0]


def _object_of(tree: Path, name: str) -> tuple[Path, str]:
    ulp = patch_file(tree, name)
    patch = metadata.read(ulp)
    return patch.object_path(ulp), patch.id


def _extent(pid: int, path: str) -> tuple[int, int]:
    ranges = [(m.start, m.end) for m in maps(pid) if m.path == path]
    assert ranges, f"{path} is not mapped"
    return min(a for a, _ in ranges), max(b for _, b in ranges)


def test_patch_object_is_loaded_near_a_target_far_below_everything(
    tree: Path, patchee: Path, runtime: Path
) -> None:
    lib = tree / "basic" / "libbasic.so"
    obj, patch_id = _object_of(tree, "square_fix")
    with running(patchee, runtime, str(lib)) as p:
        target = _extent(p.pid, str(lib))
        reserved = int(re.fullmatch(r"at (0x[0-9a-f]+)", p.ask("reserve 8"))[1], 16)
        # The 8 GiB went where the next object would: below the lowest mapping, the target.
        assert reserved + 8 * GIB <= target[0]
        # The control: loaded as it is, the object lands below the 8 GiB, out of reach.
        probed = int(re.fullmatch(r"at (0x[0-9a-f]+)", p.ask(f"probe {obj}"))[1], 16)
        assert target[1] - probed > 8 * GIB
        size = footprint(ElfFile.load(obj)).size

        result = trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert p.ask("square 100000") == str(SATURATED)
        lo, hi = _extent(p.pid, f"/memfd:ulp-patch:{patch_id} (deleted)")
        assert hi - lo <= size
        assert max(hi, target[1]) - min(lo, target[0]) <= REACH
        # Next to it, not inside it.
        assert hi <= target[0] or lo >= target[1]

        reverted = trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix", reverse=True))
        assert reverted.returncode == 0, reverted.stdout + reverted.stderr
        assert p.ask("square 100000") == str(OVERFLOWED)


def test_rebased_object_in_a_program_that_is_not_position_independent(
    tree: Path, runtime: Path, tmp_path: Path
) -> None:
    """Loaded where it was moved, the object's load bias is 0, as is a non-PIE main program's:
    the runtime tells them apart (runtime/load.c) and finds the object's own build-id."""
    binary = tmp_path / "patchee"
    source = PROGRAMS / "patchee.c"
    result = run(["gcc", "-O2", "-no-pie", "-pthread", "-o", str(binary), str(source)])
    assert result.returncode == 0, result.stderr
    assert ElfFile.load(binary).header.type == 2  # ET_EXEC
    lib = tree / "basic" / "libbasic.so"
    _, patch_id = _object_of(tree, "square_fix")
    with running(binary, runtime, str(lib)) as p:
        result = trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert p.ask("square 100000") == str(SATURATED)
        # Loaded where it was rebased to: its first segment's link-time address, in the
        # program headers as loaded, is where it is mapped.
        start = min(m.start for m in maps(p.pid) if patch_id in m.path)
        head = read_memory(p.pid, start, PAGE)
        header = EHDR.unpack_from(head)
        loads = [PHDR.unpack_from(head, header[5] + i * PHDR.size) for i in range(header[9])]
        assert min(ph[3] for ph in loads if ph[0] == PT_LOAD) == start
        reverted = trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix", reverse=True))
        assert reverted.returncode == 0, reverted.stdout + reverted.stderr
        assert p.ask("square 100000") == str(OVERFLOWED)
