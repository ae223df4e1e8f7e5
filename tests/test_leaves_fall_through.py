"""Review of c8330b8: a function whose code runs off the end of its symbol's extent falls
through into the next function, whose entry (and universe checker, once patched) it reaches as
surely as by a jump. leaves.py decides a leaf from its extent alone (every branch inside it,
`decoded_to == end`) and never asks whether the last instruction can fall through, so such a
function is called a leaf, left untracked, and handed out plain by an IFUNC wrapper, while it
runs the next function's code, which here calls the C library.

glibc has the pattern: `__strcasecmp_avx2` (16 bytes, no ret) falls through into
`__strcasecmp_l_avx2`, which jumps to the padded C function `__strcasecmp_l_nonascii`; the
rewriter calls `__strcasecmp_avx2` a leaf, so `strcasecmp` is entered untracked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run, ulp

from ulp_build.elf import ElfFile
from ulp_build.prepare import codegen
from ulp_build.prepare.layout import CFLAGS

SOURCE = r"""
#include <unistd.h>

/* falls_through has no ret: after its one instruction comes calls_out's entry, which calls
 * the C library. */
__asm__(".text\n"
        ".globl falls_through\n.type falls_through, @function\n"
        "falls_through:\n mov %edi, %eax\n"
        ".size falls_through, .-falls_through\n"
        ".globl calls_out\n.type calls_out, @function\n"
        "calls_out:\n jmp getpid@PLT\n"
        ".size calls_out, .-calls_out\n");

/* The same as an IFUNC variant, beside a leaf variant and one that calls the C library. */
__asm__(".text\n"
        ".type falls_through_variant, @function\n"
        "falls_through_variant:\n mov %edi, %eax\n"
        ".size falls_through_variant, .-falls_through_variant\n"
        ".type calls_out_variant, @function\n"
        "calls_out_variant:\n jmp getpid@PLT\n"
        ".size calls_out_variant, .-calls_out_variant\n");

int falls_through_variant(int);
static __attribute__((noinline)) int leaf_variant(int x) { return x + 1; }
static __attribute__((noinline)) int calls_variant(int x) { return x + getpid(); }

volatile int choose;
static void *resolve_falls_pick(void)
{
    return choose == 0 ? (void *)leaf_variant
         : choose == 1 ? (void *)falls_through_variant
                       : (void *)calls_variant;
}
int falls_pick(int) __attribute__((ifunc("resolve_falls_pick")));
"""


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fall-through")
    source = out / "ft.c"
    source.write_text(SOURCE)
    lib = out / "libft.so"
    result = run(["gcc", *CFLAGS, "-O2", "-fPIC", "-shared", "-o", str(lib), str(source)])
    assert result.returncode == 0, result.stderr
    return lib


def test_a_function_falling_through_into_another_is_no_leaf(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "libft.so"
    result = json.loads(ulp("rewrite", str(raw), "-o", str(out), "--json").stdout)
    assert "falls_through" not in result["leaves"]


def test_an_ifunc_wrapper_does_not_hand_out_a_variant_falling_through(
    raw: Path, tmp_path: Path
) -> None:
    out = tmp_path / "libft.so"
    result = json.loads(ulp("rewrite", str(raw), "-o", str(out), "--json").stdout)
    assert result["choosing_leaves"] == ["falls_pick"]
    elf = ElfFile.load(out)
    (sym,) = [s for s in elf.dynamic_symbols if s.name == "falls_pick"]
    wrapper = codegen.decode_ifunc_wrapper(elf.read(sym.value, sym.size), sym.value)
    assert wrapper is not None
    assert [elf.name_at(a) for a in wrapper.leaves] == ["leaf_variant"]
