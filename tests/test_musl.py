"""musl's libc.so, which is also musl's dynamic loader, prepared (Debian's build has no padding:
trampolines only) and running a musl program as its loader. musl finds its own program headers
at base + e_phoff, so the rewriter must load the moved table at the address equal to its file
offset; the control copy with the table elsewhere dies before main, and `check` says why."""

from __future__ import annotations

from pathlib import Path

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


def test_zlib_make_test_on_the_prepared_loader(
    prepared: Path, zlib_source: Path, tmp_path: Path
) -> None:
    """zlib's own `make test` (static, shared and 64-bit) built with musl-gcc, its programs'
    interpreter the prepared libc.so: every program starts through the prepared loader."""
    from sample_libs import zlib

    tree = tmp_path / "zlib"
    linker = f"-Wl,--dynamic-linker={prepared}"
    zlib.build(zlib_source, tree, {"CC": "musl-gcc", "LDFLAGS": linker})
    interp = run(["readelf", "-lW", str(tree / "examplesh")])
    assert f"[Requesting program interpreter: {prepared}]" in interp.stdout
    result = run(["make", "test"], cwd=tree, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    for banner in ("zlib test OK", "zlib shared test OK", "zlib 64-bit test OK"):
        assert banner in result.stdout
