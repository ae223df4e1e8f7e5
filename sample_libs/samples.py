"""Building the sample libraries and their test programs with the system's gcc/g++.

Used by the tests and the benchmarks; the libraries are described in samples.toml.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ulp_build.live.runtime import RUNTIME_ENV
from ulp_build.prepare.layout import CFLAGS

ROOT = Path(__file__).resolve().parent
COMMON_CFLAGS = ["-O2", "-g", "-fPIC", "-Wall", "-Werror", f"-I{ROOT / 'include'}"]


@dataclass(frozen=True)
class Sample:
    name: str
    about: str
    sources: list[Path]
    test: Path
    cflags: list[str] = field(default_factory=list)
    ldflags: list[str] = field(default_factory=list)
    test_ldflags: list[str] = field(default_factory=list)

    @property
    def cxx(self) -> bool:
        return any(p.suffix in (".cc", ".cpp") for p in [*self.sources, self.test])

    @property
    def compiler(self) -> str:
        return "g++" if self.cxx else "gcc"

    @property
    def library_name(self) -> str:
        return f"lib{self.name}.so"


def load() -> dict[str, Sample]:
    table = tomllib.loads((ROOT / "samples.toml").read_text())
    return {
        name: Sample(
            name=name,
            about=spec["about"],
            sources=[ROOT / s for s in spec["sources"]],
            test=ROOT / spec["test"],
            cflags=spec.get("cflags", []),
            ldflags=[_rooted(f) for f in spec.get("ldflags", [])],
            test_ldflags=spec.get("test_ldflags", []),
        )
        for name, spec in table.items()
    }


def _rooted(flag: str) -> str:
    # --version-script=relative/path is relative to samples.toml.
    key, sep, value = flag.partition("=")
    return f"{key}={ROOT / value}" if sep and key.endswith("version-script") else flag


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, cwd=ROOT)


def build_library(sample: Sample, outdir: Path, extra_cflags: list[str] | None = None) -> Path:
    """Compile the library with the flags `ulp cflags` prints (unprepared)."""
    outdir.mkdir(parents=True, exist_ok=True)
    out = outdir / sample.library_name
    includes = sorted({f"-I{s.parent}" for s in sample.sources})
    _run(
        [
            sample.compiler,
            *COMMON_CFLAGS,
            *CFLAGS,
            *includes,
            *sample.cflags,
            *(extra_cflags or []),
            "-shared",
            "-o",
            str(out),
            *map(str, sample.sources),
            *sample.ldflags,
        ]
    )
    return out


def build_test(sample: Sample, outdir: Path, libdir: Path, dlopen: bool) -> Path:
    """The test program: linked against libdir's library, or with -DSAMPLE_DLOPEN."""
    outdir.mkdir(parents=True, exist_ok=True)
    out = outdir / f"{sample.name}_test{'_dlopen' if dlopen else ''}"
    includes = sorted({f"-I{s.parent}" for s in sample.sources})
    if dlopen:
        link = ["-DSAMPLE_DLOPEN", "-D_GNU_SOURCE", "-ldl"]
    else:
        link = [f"-L{libdir}", f"-l{sample.name}"]
    _run(
        [
            sample.compiler,
            *COMMON_CFLAGS,
            *includes,
            *sample.cflags,
            "-o",
            str(out),
            str(sample.test),
            *link,
            *sample.test_ldflags,
        ]
    )
    return out


def build_probe(outdir: Path) -> Path:
    outdir.mkdir(parents=True, exist_ok=True)
    out = outdir / "dlsym_probe"
    _run(["gcc", *COMMON_CFLAGS, "-o", str(out), str(ROOT / "probe" / "dlsym_probe.c"), "-ldl"])
    return out


PATCHES = ROOT / "patches"


def build_runtime(build: Path) -> Path:
    """libulp.so built from this source tree with the project's own Meson build into `build`:
    what the tests and the benchmarks run, rather than whatever runtime is installed."""
    setup = ["meson", "setup", str(build), str(ROOT.parent)]
    for cmd in (setup, ["meson", "compile", "-C", str(build)]):
        result = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout}{result.stderr}")
    return build / "runtime" / "libulp.so"


def use_tree_runtime(build: Path) -> None:
    """Point ULP_RUNTIME at the runtime built from this tree, unless it names one already: run
    from a checkout, `ulp_build` is the source tree, which has no runtime of its own."""
    if RUNTIME_ENV not in os.environ:
        os.environ[RUNTIME_ENV] = str(build_runtime(build))


def patch_names() -> list[str]:
    return sorted(p.name for p in PATCHES.iterdir() if (p / "patch.toml").is_file())


def build_patch_tree(build: Path) -> Path:
    """BUILD/basic/libbasic.so (prepared) and every sample patch under BUILD/patches/NAME/,
    as the descriptions expect; returns BUILD."""
    from ulp_build.elf import ElfFile
    from ulp_build.prepare.rewrite import rewrite

    basic = load()["basic"]
    raw = build_library(basic, build / "raw")
    (build / "basic").mkdir(parents=True, exist_ok=True)
    rewrite(raw, build / "basic" / basic.library_name)
    target = ElfFile.load(build / "basic" / basic.library_name)
    offsets = {s.name: f"{s.value:x}" for s in target.symtab_symbols if s.name}
    for name in patch_names():
        out = build / "patches" / name
        out.mkdir(parents=True, exist_ok=True)
        (out / "patch.toml").write_text((PATCHES / name / "patch.toml").read_text())
        source = PATCHES / name / "patch.c"
        if source.is_file():
            _run(["gcc", *COMMON_CFLAGS, "-shared", "-o", str(out / "patch.so"), str(source)])
            continue
        # Assembly with near references: the target's offsets filled in, as `ulp diff` would,
        # and linked keeping the relocations that say where they are.
        assembly = out / "patch.s"
        assembly.write_text((PATCHES / name / "patch.s").read_text().format_map(offsets))
        _run(["gcc", "-shared", "-Wl,--emit-relocs", "-Wl,--build-id", "-o", str(out / "patch.so"),
              str(assembly)])  # fmt: skip
    return build
