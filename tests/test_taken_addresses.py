"""Every way a library takes the address of one of its own functions (a pointer to a static
function, an ops table, a qsort comparator, `&exported` bound inside by -Bsymbolic) is pointed
at a trampoline: a call through the pointer enters the library tracked, with the runtime
preloaded, and the pointer equals `dlsym`'s. Assembly neither exported nor padded keeps its
plain address (it need not be a C function pointer). A tracked call returns into the runtime, so the
called function sees its return address in libulp.so: that is what it reports."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import BuiltSample, run, ulp

from ulp_build.prepare.layout import CFLAGS

LIBRARY = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#define API __attribute__((visibility("default")))
#define HOW(out) (out = how(__builtin_return_address(0)))

typedef const char *(*fn)(void);
struct ops { fn first, second; };

static const char *how(void *ret)
{
    Dl_info info;
    int runtime = dladdr(ret, &info) && info.dli_fname && strstr(info.dli_fname, "libulp");
    return runtime ? "tracked" : "plain";
}

static const char *seen;

static const char *hidden_fn(void) { return HOW(seen); }
API fn taken_static(void) { return hidden_fn; }

static const char *op_first(void) { return HOW(seen); }
static const char *op_second(void) { return HOW(seen); }
static const struct ops table = { op_first, op_second };
API const struct ops *taken_ops(void) { return &table; }

static int compare(const void *a, const void *b)
{
    HOW(seen);
    return *(const int *)a - *(const int *)b;
}
API const char *taken_qsort(void)
{
    int v[] = { 3, 1, 2 };
    seen = "not called";
    qsort(v, 3, sizeof v[0], compare);
    return v[0] == 1 && v[2] == 3 ? seen : "not sorted";
}

API const char *exported_fn(void) { return HOW(seen); }
API fn taken_exported(void) { return exported_fn; }
API fn exported_pointer = exported_fn;

#ifdef READ_CODE
__attribute__((visibility("hidden"), noinline)) int victim(void) { return 7; }
API long read_code(void)
{
    long v;
    __asm__("movq victim(%%rip), %0" : "=r"(v));
    return v + victim();
}
#endif
"""

PROGRAM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>

typedef const char *(*fn)(void);
struct ops { fn first, second; };
fn taken_static(void);
const struct ops *taken_ops(void);
const char *taken_qsort(void);
fn taken_exported(void);
const char *exported_fn(void);
extern fn exported_pointer;

int main(void)
{
    const struct ops *ops = taken_ops();
    fn exported = taken_exported();
    printf("static %s\n", taken_static()());
    printf("ops %s %s\n", ops->first(), ops->second());
    printf("qsort %s\n", taken_qsort());
    printf("exported %s\n", exported());
    printf("equal %d %d %d\n", exported == (fn)dlsym(RTLD_DEFAULT, "exported_fn"),
           exported == exported_pointer, exported == &exported_fn);
    return 0;
}
"""

EXPECTED_SITES = 6  # hidden_fn, op_first, op_second, compare, exported_fn (lea), exported_pointer


def _build(tmp: Path, name: str, *defines: str) -> Path:
    src = tmp / f"{name}.c"
    src.write_text(LIBRARY)
    lib = tmp / f"lib{name}.so"
    cmd = ["gcc", "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-Wl,-Bsymbolic", *CFLAGS]
    result = run([*cmd, *defines, "-o", str(lib), str(src)])
    assert result.returncode == 0, result.stderr
    return lib


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("taken"), "taken")


@pytest.fixture(scope="module")
def program(raw: Path) -> Path:
    src = raw.parent / "main.c"
    src.write_text(PROGRAM)
    out = raw.parent / "main"
    result = run(["gcc", "-O2", "-o", str(out), str(src), f"-L{raw.parent}", "-ltaken", "-ldl"])
    assert result.returncode == 0, result.stderr
    return out


def _prepare(lib: Path, out_dir: Path, name: str = "libtaken.so") -> dict[str, object]:
    out_dir.mkdir(exist_ok=True)
    # Leaves tracked too: the program counts a tracked entry for every function it calls.
    out = str(out_dir / name)
    result = ulp("rewrite", str(lib), "-o", out, "--track-leaves", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _check(lib: Path) -> dict[str, object]:
    result = ulp("check", str(lib), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def _run(program: Path, libdir: Path, runtime: Path) -> list[str]:
    env = dict(os.environ, LD_LIBRARY_PATH=str(libdir), LD_PRELOAD=str(runtime))
    result = run([str(program)], env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


TRACKED = [
    "static tracked",
    "ops tracked tracked",
    "qsort tracked",
    "exported tracked",
    "equal 1 1 1",
]


def test_unprepared_calls_through_pointers_are_plain(
    raw: Path, program: Path, runtime: Path
) -> None:
    assert _run(program, raw.parent, runtime)[:4] == [
        "static plain",
        "ops plain plain",
        "qsort plain",
        "exported plain",
    ]


def test_every_taken_address_enters_tracked(
    raw: Path, program: Path, runtime: Path, tmp_path: Path
) -> None:
    result = _prepare(raw, tmp_path)
    assert result["redirected_sites"] == EXPECTED_SITES
    assert result["not_redirectable"] == []
    # One trampoline for each of the 5 exported functions, and the 4 static ones taken.
    assert result["trampolines"] == 9
    report = _check(tmp_path / "libtaken.so")
    assert report["redirected_sites"] == EXPECTED_SITES
    assert report["errors"] == []
    assert _run(program, tmp_path, runtime) == TRACKED


def test_stripped_library_gets_the_same_redirections(
    raw: Path, program: Path, runtime: Path, tmp_path: Path
) -> None:
    stripped = tmp_path / "stripped" / "libtaken.so"
    stripped.parent.mkdir()
    assert run(["strip", "--strip-all", "-o", str(stripped), str(raw)]).returncode == 0
    result = _prepare(stripped, tmp_path / "out")
    assert result["redirected_sites"] == EXPECTED_SITES
    assert result["trampolines"] == 9
    assert _check(tmp_path / "out" / "libtaken.so")["redirected_sites"] == EXPECTED_SITES
    assert _run(program, tmp_path / "out", runtime) == TRACKED


def test_deterministic_and_elflint_clean(raw: Path, tmp_path: Path) -> None:
    _prepare(raw, tmp_path / "a")
    _prepare(raw, tmp_path / "b")
    first = (tmp_path / "a" / "libtaken.so").read_bytes()
    assert first == (tmp_path / "b" / "libtaken.so").read_bytes()
    assert first != raw.read_bytes()
    lint = run(["eu-elflint", "--gnu-ld", str(tmp_path / "a" / "libtaken.so")])
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_untracked_name_keeps_every_pointer_plain(
    raw: Path, program: Path, runtime: Path, tmp_path: Path
) -> None:
    out = tmp_path / "libtaken.so"
    result = ulp("rewrite", str(raw), "-o", str(out), "--untracked", "exported_fn", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["redirected_sites"] == EXPECTED_SITES - 2
    lines = _run(program, tmp_path, runtime)
    assert lines[3] == "exported plain"
    assert lines[4] == "equal 1 1 1"


def test_an_address_taking_that_cannot_be_redirected_is_named(tmp_path: Path) -> None:
    lib = _build(tmp_path, "reader", "-DREAD_CODE")
    result = ulp("rewrite", str(lib), "-o", str(tmp_path / "out.so"), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["not_redirectable"] == ["victim"]
    text = ulp("rewrite", str(lib), "-o", str(tmp_path / "out2.so"))
    assert "not redirectable" in text.stdout and "victim" in text.stdout

    before = lib.read_bytes()
    strict = ulp("rewrite", str(lib), "--strict")
    assert strict.returncode != 0
    assert len(strict.stderr.strip().splitlines()) == 1
    assert str(lib) in strict.stderr and "victim" in strict.stderr
    assert lib.read_bytes() == before


def test_ifunc_implementations_are_not_redirected(built: dict[str, BuiltSample]) -> None:
    sample = built["ifunc"]
    report = _check(sample.prepared)
    assert report["redirected_sites"] == 0
    result = run(
        [str(sample.linked)], env=dict(os.environ, LD_LIBRARY_PATH=str(sample.prepared.parent))
    )
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout
        == run(
            [str(sample.linked)], env=dict(os.environ, LD_LIBRARY_PATH=str(sample.raw.parent))
        ).stdout
    )


# Assembly the library reads as data, as libffi reads its trampoline table to map it from the
# file, and assembly entered by a jump with two words pushed above the return address, as
# libffi's closures enter ffi_closure_unix64_alt: neither address is a C function pointer.
ASSEMBLY = r"""
#include <string.h>
#define API __attribute__((visibility("default")))

__asm__(".text\n"
        ".type code_table, @function\n"
        "code_table:\n"
        "  .byte 0x0f, 0x0b, 0x55, 0xaa, 0x11, 0x22, 0x33, 0x44\n"
        ".size code_table, 8\n"
        ".type popped_entry, @function\n"
        "popped_entry:\n"
        "  pop %rax\n"
        "  pop %rdx\n"
        "  add %rdx, %rax\n"
        "  ret\n"
        ".size popped_entry, .-popped_entry\n");

API int table_intact(void)
{
    static const unsigned char expected[] = { 0x0f, 0x0b, 0x55, 0xaa, 0x11, 0x22, 0x33, 0x44 };
    const unsigned char *table;
    __asm__("lea code_table(%%rip), %0" : "=r"(table));
    return memcmp(table, expected, sizeof expected) == 0;
}

API long jump_entered(void)
{
    long r;
    /* Below the red zone; popped_entry returns to 1 with 2 + 40. */
    __asm__ volatile("sub $128, %%rsp\n\t"
                     "lea popped_entry(%%rip), %%rcx\n\t"
                     "lea 1f(%%rip), %%rax\n\t"
                     "push %%rax\n\t"
                     "push $40\n\t"
                     "push $2\n\t"
                     "jmp *%%rcx\n"
                     "1:\n\t"
                     "add $128, %%rsp"
                     : "=a"(r) : : "rcx", "rdx", "memory");
    return r;
}
"""

ASSEMBLY_PROGRAM = r"""
#include <stdio.h>
int table_intact(void);
long jump_entered(void);
int main(void) { printf("table %d jump %ld\n", table_intact(), jump_entered()); return 0; }
"""


def test_assembly_addresses_stay_plain(tmp_path: Path, runtime: Path) -> None:
    (tmp_path / "asm.c").write_text(ASSEMBLY)
    (tmp_path / "main.c").write_text(ASSEMBLY_PROGRAM)
    raw = tmp_path / "raw" / "libasm.so"
    raw.parent.mkdir()
    cmd = ["gcc", "-O2", "-shared", "-fPIC", "-fvisibility=hidden", *CFLAGS]
    built = run([*cmd, "-o", str(raw), str(tmp_path / "asm.c")])
    assert built.returncode == 0, built.stderr
    program = tmp_path / "main"
    linked = run(["gcc", "-o", str(program), str(tmp_path / "main.c"), f"-L{raw.parent}", "-lasm"])
    assert linked.returncode == 0, linked.stderr
    # Both assembly functions are in .symtab, unpadded and not exported.
    symbols = run(["readelf", "-sW", str(raw)]).stdout
    assert " code_table" in symbols and " popped_entry" in symbols

    out = tmp_path / "prepared" / "libasm.so"
    result = _prepare(raw, out.parent, out.name)
    # Redirected, the table read the trampoline's bytes, and the runtime took the pushed 2 for
    # popped_entry's return address (a crash).
    for libdir in (raw.parent, out.parent):
        for env in ({}, {"LD_PRELOAD": str(runtime)}):
            done = run([str(program)], env=dict(os.environ, LD_LIBRARY_PATH=str(libdir), **env))
            assert (done.returncode, done.stdout) == (0, "table 1 jump 42\n"), done.stderr
    assert result["redirected_sites"] == 0 and result["not_redirectable"] == []
    assert result["trampolines"] == 2  # the two exported functions only
    assert _check(out)["errors"] == []
