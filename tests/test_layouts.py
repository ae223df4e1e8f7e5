"""Every binary layout shared by the runtime's C and the Python side is declared once in each
(runtime/ulp.h; ulp_build.cstruct declarations): a C probe compiled against ulp.h prints each
struct's size and every field's offset, and they must be the Python declaration's, by name."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from conftest import REPO, run, ulp
from live import OVERFLOWED, base_of, patch_file, running, trigger_cli

from ulp_build.cstruct import CStruct
from ulp_build.elf import ElfFile
from ulp_build.live import request, runtime_state
from ulp_build.prepare import layout

STRUCTS = [
    layout.DESCRIPTOR,
    request.HEADER,
    request.FUNCTION,
    request.REFERENCE,
    runtime_state.RUNTIME_INFO,
    runtime_state.LIBRARY,
    runtime_state.THREAD,
    runtime_state.THREAD_LIB,
    runtime_state.PATCH,
    runtime_state.PATCH_FUNCTION,
    runtime_state.FUNCTION,
    runtime_state.VERSION,
]


def _probe_source() -> str:
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "ulp.h"', "int main(void) {"]
    lines.append('    printf("ULP_LAYOUT_VERSION %d\\n", ULP_LAYOUT_VERSION);')
    lines.append('    printf("ulp_frame %zu\\n", sizeof(struct ulp_frame));')
    for kind in request.REF_KINDS:
        name = f"ULP_REF_{kind.upper()}"
        lines.append(f'    printf("{name} %d\\n", {name});')
    for s in STRUCTS:
        # A struct with a tail is read by its fixed part: its size is where the tail starts.
        size = f"offsetof(struct {s.name}, {s.tail})" if s.tail else f"sizeof(struct {s.name})"
        lines.append(f'    printf("{s.name} %zu\\n", {size});')
        for field in s.offsets:
            lines.append(
                f'    printf("{s.name}.{field} %zu\\n", offsetof(struct {s.name}, {field}));'
            )
    lines.append("    return 0;\n}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    work: Path = tmp_path_factory.mktemp("layouts")
    (work / "probe.c").write_text(_probe_source())
    built = run(
        ["gcc", "-std=gnu11", "-I", str(REPO / "runtime"), "-o", str(work / "probe"),
         str(work / "probe.c")]
    )  # fmt: skip
    assert built.returncode == 0, f"the Python declarations name what ulp.h lacks:\n{built.stderr}"
    out = run([str(work / "probe")])
    assert out.returncode == 0, out.stderr
    return {name: int(value) for name, value in (line.split() for line in out.stdout.splitlines())}


@pytest.mark.parametrize("declared", STRUCTS, ids=lambda s: s.name)
def test_layout_matches_ulp_h(declared: CStruct, layouts: dict[str, int]) -> None:
    in_c = {field: layouts[f"{declared.name}.{field}"] for field in declared.offsets}
    assert declared.offsets == in_c, f"struct {declared.name}: Python and ulp.h disagree"
    assert declared.size == layouts[declared.name], (
        f"struct {declared.name}: {declared.size} bytes in Python, {layouts[declared.name]} in"
        " ulp.h (a field on one side only?)"
    )


def test_layout_version_matches_ulp_h(layouts: dict[str, int]) -> None:
    assert layouts["ULP_LAYOUT_VERSION"] == runtime_state.LAYOUT_VERSION


def test_reference_kinds_match_ulp_h(layouts: dict[str, int]) -> None:
    # The request's reference kinds: a kind named on one side only does not compile.
    assert {k: layouts[f"ULP_REF_{k.upper()}"] for k in request.REF_KINDS} == request.REF_KINDS


def test_shadow_frame_size_matches_ulp_h(layouts: dict[str, int]) -> None:
    # The trigger counts a thread's tracked entries by it (the header publishes it too, and
    # a runtime publishing another size is refused).
    assert layouts["ulp_frame"] == runtime_state.FRAME_SIZE


def test_another_layout_version_is_refused(
    tree: Path, patchee: Path, runtime: Path, tmp_path: Path
) -> None:
    """A runtime that publishes another layout version: the trigger and `ulp patches` refuse
    the process, with one line saying why, and read nothing else."""
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        header = base_of(p.pid, runtime) + next(
            s.value for s in ElfFile.load(runtime).dynamic_symbols if s.name == "ulp_runtime"
        )
        version = header + runtime_state.RUNTIME_INFO.offset("layout_version")
        with open(f"/proc/{p.pid}/mem", "r+b", buffering=0) as mem:
            mem.seek(version)
            mem.write(struct.pack("<I", runtime_state.LAYOUT_VERSION + 1))
        listed = ulp("patches", "-p", str(p.pid))
        assert listed.returncode != 0
        (line,) = listed.stderr.strip().splitlines()
        assert f"layout version {runtime_state.LAYOUT_VERSION + 1}" in line
        triggered = trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix"))
        assert "failed" in triggered.stdout and "layout version" in triggered.stdout
        assert p.ask("square 100000") == str(OVERFLOWED)
