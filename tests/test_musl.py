"""musl's libc.so, which is also musl's dynamic loader, prepared and running musl programs as
their loader: Debian's binary build (no padding: trampolines only), and musl 1.2.3 built from
Debian's source with the flags `ulp cflags` prints (padded: patchable functions, except those
written in assembly). musl finds its own program headers at base + e_phoff, so the rewriter must
load the moved table at the address equal to its file offset; the control copy with the table
elsewhere dies before main, and `check` says why.

The workloads are a small program, zlib's `make test` and jansson's 213 tests, built with
musl-gcc (against Debian's musl headers and libc.so: the same 1.2.3) and started through the
libc.so under test; a probe linked the same way reads /proc/self/maps to show which libc.so the
kernel mapped. The runtime needs glibc: under musl's loader it is refused before main.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import run, ulp

from ulp_build.elf import EHDR, PHDR, ElfFile, align

MUSL_LIBC = Path("/lib/x86_64-linux-musl/libc.so")

# What a program needs of libc before and after main: stdio, malloc, threads (TLS), qsort
# calling back into the program, formatted floats, and exit handlers.
_PROGRAM = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }
static void *worker(void *arg) { return (void *)(strlen(arg) * 2); }
static void bye(void) { puts("atexit ran"); }

int main(void) {
    int v[] = {5, 3, 9, 1};
    qsort(v, 4, sizeof *v, cmp);
    pthread_t t;
    void *len;
    pthread_create(&t, NULL, worker, "musl");
    pthread_join(t, &len);
    char *s = malloc(64);
    snprintf(s, 64, "%d%d%d%d %.2f %ld", v[0], v[1], v[2], v[3], 2.5, (long)len);
    puts(s);
    free(s);
    atexit(bye);
    return 0;
}
"""
_EXPECTED = "1359 2.50 8\natexit ran\n"


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("musl")
    (tmp / "prog.c").write_text(_PROGRAM)
    out = tmp / "prog"
    built = run(["musl-gcc", "-O2", "-pthread", "-o", str(out), str(tmp / "prog.c")])
    assert built.returncode == 0, built.stderr
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("musl-libc") / "libc.so"
    result = ulp("rewrite", str(MUSL_LIBC), "-o", str(out))
    assert result.returncode == 0, result.stderr
    return out


def _run_with(libc: Path, program: Path) -> tuple[int, str]:
    """Run `program` with `libc` as its loader (musl's libc.so runs the program named after it,
    and serves the program's own libc.so needs itself)."""
    result = run([str(libc), str(program)])
    return result.returncode, result.stdout


def test_original_runs_the_program(program: Path) -> None:
    assert _run_with(MUSL_LIBC, program) == (0, _EXPECTED)


def test_prepared_libc_runs_the_program(prepared: Path, program: Path) -> None:
    elf = ElfFile.load(prepared)
    assert elf.section(".ulp") is not None
    phoff = elf.header.phoff
    assert phoff >= MUSL_LIBC.stat().st_size  # the appended table
    (load,) = [s for s in elf.loads if s.offset <= phoff < s.offset + s.filesz]
    assert load.vaddr == load.offset  # loaded at the address equal to its file offset
    assert _run_with(prepared, program) == (0, _EXPECTED)
    result = ulp("check", str(prepared), "--json")
    assert result.returncode == 0 and '"errors": []' in result.stdout


def test_table_elsewhere_dies_before_main(prepared: Path, program: Path, tmp_path: Path) -> None:
    """The control: the same prepared file with its program header table copied to the end of
    the file, where no segment loads it at its offset's address (as the rewriter used to)."""
    data = bytearray(prepared.read_bytes())
    fields = list(EHDR.unpack_from(data))
    phoff, phnum = fields[5], fields[10]
    table = bytes(data[phoff : phoff + phnum * PHDR.size])
    data += bytes(align(len(data), 8) - len(data))
    fields[5] = len(data)
    data += table
    EHDR.pack_into(data, 0, *fields)
    moved = tmp_path / "libc.so"
    moved.write_bytes(bytes(data))
    moved.chmod(0o755)

    code, stdout = _run_with(moved, program)
    assert code != 0 and stdout == ""
    result = ulp("check", str(moved))
    assert result.returncode == 1
    assert "program headers not at e_phoff's address; musl's loader would not find them" in (
        result.stdout
    )


# Started through the loader link (the interpreter path of the programs built for it), the probe
# says at once that main ran and which files the kernel and the loader mapped.
_PROBE = r"""
#include <stdio.h>
#include <unistd.h>

int main(void) {
    write(1, "main ran\n", 9);
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[4096];
    while (fgets(line, sizeof line, maps))
        fputs(line, stdout);
    return 0;
}
"""


@pytest.fixture(scope="module")
def padded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """musl's libc.so built from Debian's source with the padding (sample_libs/musl.py)."""
    from sample_libs import musl

    root = tmp_path_factory.mktemp("musl-source")
    return musl.build(musl.source(root), root / "build")


@pytest.fixture(scope="module")
def padded_prepared(padded: Path) -> Path:
    out = padded.with_name("libc.prepared.so")
    result = ulp("rewrite", str(padded), "-o", str(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def loader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter path of the programs below: a symlink that `_use` points at the libc.so
    under test, so that one build of each workload runs on every libc."""
    return tmp_path_factory.mktemp("loader") / "libc.so"


@pytest.fixture(scope="module")
def probe(loader: Path) -> Path:
    source = loader.parent / "probe.c"
    source.write_text(_PROBE)
    out = loader.parent / "probe"
    built = run(["musl-gcc", "-O2", f"-Wl,--dynamic-linker={loader}", "-o", str(out), str(source)])
    assert built.returncode == 0, built.stderr
    return out


def _use(loader: Path, libc: Path, probe: Path) -> None:
    """Point `loader` at `libc` and check with the probe that it is the one C library mapped:
    the musl that musl-gcc linked against (Debian's, /usr/lib/x86_64-linux-musl) is not."""
    fresh = loader.with_name("libc.so.new")
    fresh.symlink_to(libc)
    fresh.replace(loader)
    result = run([str(probe)])
    assert result.returncode == 0 and result.stdout.startswith("main ran\n"), result.stderr
    mapped = {line.split()[5] for line in result.stdout.splitlines()[1:] if " /" in line}
    assert mapped == {str(probe.resolve()), str(libc.resolve())}


def _assembly_functions(musl_tree: Path) -> set[str]:
    """The global names musl's x86-64 assembly sources define (no padding: gcc never sees them)."""
    names = set()
    for source in musl_tree.glob("src/**/x86_64/*.s"):
        for line in source.read_text().splitlines():
            words = line.split()
            if len(words) == 2 and words[0] in (".global", ".globl"):
                names.add(words[1])
    return names


def _check(lib: Path) -> dict[str, Any]:
    result = ulp("check", str(lib), "--json")
    return json.loads(result.stdout)


def test_padded_musl_keeps_its_padding_through_the_rewrite(
    padded: Path, padded_prepared: Path
) -> None:
    """Linked without --gc-sections, every padded function keeps its record (with musl's own
    --gc-sections, 36 lose theirs and `check` warns); prepared, all stay patchable, and the
    tracked functions without padding are exactly musl's assembly ones (memcpy, fenv, the x87
    long double maths)."""
    built = _check(padded)
    assert built["warnings"] == [] and built["patchable_functions"] > 1800
    report = _check(padded_prepared)
    assert report["usable"] and report["errors"] == [] and report["warnings"] == []
    assert report["patchable_functions"] == built["patchable_functions"]
    # Tracked, or left plain as a leaf (strlen and its kind): 1189 + 350 here.
    assert report["trampolines"] + len(report["leaves"]) > 1500 and len(report["leaves"]) > 300
    not_patchable = set(report["tracked_not_patchable"])
    assert {"memcpy", "memset", "feclearexcept", "expl"} <= not_patchable
    assert not_patchable <= _assembly_functions(padded.parent.parent)


@pytest.fixture(scope="module")
def jansson_tree(tmp_path_factory: pytest.TempPathFactory, loader: Path) -> Path:
    from sample_libs import jansson

    root = tmp_path_factory.mktemp("jansson")
    tree = root / "build"
    jansson.build(jansson.source(root / "source"), tree, loader)
    return tree


@pytest.mark.parametrize("libc", ["padded", "padded_prepared"])
def test_jansson_suite_on_padded_musl(
    libc: str, request: pytest.FixtureRequest, loader: Path, probe: Path, jansson_tree: Path
) -> None:
    """jansson's own test suite (ctest: its API tests and the valid, invalid and encoding
    suites through json_process), every program started by the libc.so under test: all 213
    pass on the built musl and on the same prepared."""
    from sample_libs import jansson

    _use(loader, request.getfixturevalue(libc), probe)
    passed, total, output = jansson.run_tests(jansson_tree)
    assert (passed, total) == (213, 213), output


@pytest.fixture(scope="module")
def zlib_tree(tmp_path_factory: pytest.TempPathFactory, loader: Path, zlib_source: Path) -> Path:
    from sample_libs import zlib

    tree = tmp_path_factory.mktemp("zlib") / "src"
    zlib.build(zlib_source, tree, {"CC": "musl-gcc", "LDFLAGS": f"-Wl,--dynamic-linker={loader}"})
    interp = run(["readelf", "-lW", str(tree / "examplesh")])
    assert f"[Requesting program interpreter: {loader}]" in interp.stdout
    return tree


@pytest.mark.parametrize("libc", ["prepared", "padded", "padded_prepared"])
def test_zlib_make_test_on_musl(
    libc: str, request: pytest.FixtureRequest, loader: Path, probe: Path, zlib_tree: Path
) -> None:
    """zlib's own `make test` (static, shared and 64-bit) built with musl-gcc, every program
    started by the libc.so under test: Debian's prepared, the padded one built and prepared."""
    _use(loader, request.getfixturevalue(libc), probe)
    result = run(["make", "test"], cwd=zlib_tree, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    for banner in ("zlib test OK", "zlib shared test OK", "zlib 64-bit test OK"):
        assert banner in result.stdout


def test_runtime_is_refused_under_musl(
    runtime: Path, padded_prepared: Path, loader: Path, probe: Path
) -> None:
    """libulp.so needs glibc (docs/runtime.md): musl's loader, Debian's or the prepared padded
    one, fails to load it and exits 127 before the program's main, with `ulp run` as with
    LD_PRELOAD; the same program without the runtime runs."""
    _use(loader, padded_prepared, probe)
    with_preload = dict(os.environ, LD_PRELOAD=str(runtime))
    for result in (
        ulp("run", str(probe)),
        run([str(MUSL_LIBC), str(probe)], env=with_preload),
    ):
        assert (result.returncode, result.stdout) == (127, "")
        for message in (
            "Error loading shared library libgcc_s.so.1: No such file or directory",
            "Error loading shared library ld-linux-x86-64.so.2: No such file or directory",
            f"Error relocating {runtime}: _r_debug: symbol not found",
            f"Error relocating {runtime}: __libc_stack_end: symbol not found",
        ):
            assert message in result.stderr
    assert run([str(MUSL_LIBC), str(probe)]).stdout.startswith("main ran\n")
