"""The two builds `ulp diff` compares, made as docs/diff.md says: the library from one source
file, compiled with `ulp cflags` and the sections and debug information diff needs, linked with
--emit-relocs; the running one prepared, with a program linked to it; and `ulp diff` run on
them."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import run, ulp

from ulp_build.prepare.layout import CFLAGS

FLAGS = [*CFLAGS, "-O2", "-g", "-fPIC", "-ffunction-sections", "-fdata-sections", "-Wall"]


def build(compiler: str, source: Path, text: str, out: Path) -> Path:
    """lib<source's stem>.so from `text`, in `out` under the source's own file name (a
    static's key names its file)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / source.name).write_text(text)
    lib = out / f"lib{source.stem}.so"
    built = run([compiler, *FLAGS, "-shared", "-Wl,--emit-relocs", "-o", str(lib),
                 str(out / source.name)], cwd=out)  # fmt: skip
    assert built.returncode == 0, built.stderr
    return lib


def running_build(compiler: str, source: Path, driver: Path, where: Path) -> tuple[Path, Path]:
    """The library as it runs (built from `source` as it is, prepared) and `driver`, the
    program using it."""
    lib = build(compiler, source, source.read_text(), where)
    assert ulp("rewrite", str(lib)).returncode == 0
    program = where / driver.stem
    linked = run([compiler, "-O2", "-o", str(program), str(driver), str(lib),
                  f"-Wl,-rpath,{where}"])  # fmt: skip
    assert linked.returncode == 0, linked.stderr
    return lib, program


def diffed(old: Path, new: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`ulp diff OLD NEW -o OUT ARGS`, which must succeed."""
    made = ulp("diff", str(old), str(new), "-o", str(out), *args)
    assert made.returncode == 0, made.stderr
    return made


def changed(made: subprocess.CompletedProcess[str]) -> list[str]:
    """The functions `ulp diff` reported changed, as it reports them."""
    return [x for x in made.stdout.splitlines() if x.startswith("changed:")]
