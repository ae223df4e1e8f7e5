"""Live patching of real processes: `ulp trigger` and the runtime's prepare/commit, with real
ptrace on programs that load the sample libraries (tests/programs/patchee.c)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BuiltSample, run, ulp
from live import (
    OVERFLOWED,
    PROGRAMS,
    SATURATED,
    Process,
    base_of,
    code_bytes,
    entry_of,
    patch_file,
    patch_object_bases,
    running,
    trigger_cli,
    triggered,
)

from sample_libs import samples
from ulp_build.elf import ElfFile
from ulp_build.live import fleet, protocol, runtime_state
from ulp_build.live.operation import operation
from ulp_build.live.process import maps, read_memory
from ulp_build.patch import imports, metadata
from ulp_build.patch.packer import pack
from ulp_build.prepare.layout import CFLAGS

# -- applying and reverting --------------------------------------------------------------------


def test_apply_then_revert(tree: Path, patchee: Path, runtime: Path) -> None:
    lib = tree / "basic" / "libbasic.so"
    with running(patchee, runtime, str(lib)) as p:
        assert p.ask("square 100000") == str(OVERFLOWED)
        result = trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith(f"{p.pid}: applied:"), result.stdout
        assert p.ask("square 100000") == str(SATURATED)
        assert p.ask("square 12") == "144"
        # The checker is in place: the entry nop became a short jump back into the pad.
        base = base_of(p.pid, lib)
        entry = entry_of(lib, "basic_square")
        assert read_memory(p.pid, base + entry, 2) == bytes([0xEB, 0xF0])

        again = trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix"))
        assert again.returncode == 0 and "already applied" in again.stdout

        reverted = trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix", reverse=True))
        assert reverted.returncode == 0 and f"{p.pid}: reverted:" in reverted.stdout
        assert p.ask("square 100000") == str(OVERFLOWED)

        not_applied = trigger_cli("-p", str(p.pid), "--revert", patch_file(tree, "square_fix"))
        assert not_applied.returncode == 1
        assert "not applied" in not_applied.stdout
        state = runtime_state.read(p.pid)
        assert [(x.id, x.active) for x in state.patches] == [("basic-square-saturate", False)]


def test_json_output_and_several_processes(tree: Path, patchee: Path, runtime: Path) -> None:
    lib = str(tree / "basic" / "libbasic.so")
    with running(patchee, runtime, lib) as a, running(patchee, runtime, lib) as b:
        result = trigger_cli(
            "-p", str(a.pid), "-p", str(b.pid), "--json", patch_file(tree, "square_stack_a")
        )
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)
        assert [(r["pid"], r["status"]) for r in rows] == [(a.pid, "applied"), (b.pid, "applied")]
        assert all(r["universe"] == 2 for r in rows)
        assert a.ask("square 3") == b.ask("square 3") == "1009"


def test_static_function_static_data_tls_and_calling_the_original(
    tree: Path, patchee: Path, runtime: Path
) -> None:
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        assert p.ask("scaled 5") == "36"  # 5 * 7 + 1
        assert trigger_cli("-p", str(p.pid), patch_file(tree, "scale_static")).returncode == 0
        assert p.ask("scaled 5") == "41"  # the static scale() now multiplies by 8
        assert trigger_cli("-p", str(p.pid), patch_file(tree, "scaled_factor")).returncode == 0
        # The replacement bumps the target's static `factor` (7) through its reference.
        assert [p.ask("scaled 1") for _ in range(3)] == ["9", "10", "11"]

        assert p.ask("add 2 3") == "5"
        calls = int(p.ask("calls"))
        assert trigger_cli("-p", str(p.pid), patch_file(tree, "calls_tls")).returncode == 0
        assert p.ask("add 2 3") == "5"
        assert int(p.ask("calls")) == calls + 10  # this thread's instance, through tls_index
        assert trigger_cli("-p", str(p.pid), "--revert-all", "libbasic.so").returncode == 0
        assert trigger_cli("-p", str(p.pid), patch_file(tree, "add_logged")).returncode == 0
        assert p.ask("add 2 3") == "500"  # the original, called past the checker, times 100


def test_stacked_patches_revert_middle_top_bottom(tree: Path, patchee: Path, runtime: Path) -> None:
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        pid = str(p.pid)
        for name in ("square_fix", "square_stack_a", "square_stack_b"):
            assert trigger_cli("-p", pid, patch_file(tree, name)).returncode == 0
        assert p.ask("square 100000") == str(OVERFLOWED + 2000)
        steps = [
            ("square_stack_a", OVERFLOWED + 2000),  # middle: the top one still rules
            ("square_stack_b", SATURATED),  # top: back to the bottom one
            ("square_fix", OVERFLOWED),  # bottom: the original
        ]
        for name, expected in steps:
            result = trigger_cli("-p", pid, patch_file(tree, name, reverse=True))
            assert result.returncode == 0, result.stdout
            assert p.ask("square 100000") == str(expected), name
        assert not [x for x in runtime_state.read(p.pid).patches if x.active]


def test_revert_all_and_apply_in_one_step(tree: Path, patchee: Path, runtime: Path) -> None:
    """A thread calling basic_square without pause never sees the unpatched result."""
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        pid = str(p.pid)
        for name in ("square_stack_a", "square_stack_b"):
            assert trigger_cli("-p", pid, patch_file(tree, name)).returncode == 0
        assert p.ask(f"watch 100000 {OVERFLOWED}") == "watching"
        time.sleep(0.2)
        result = trigger_cli(
            "-p", pid, "--revert-all", "libbasic.so", patch_file(tree, "square_fix")
        )
        assert result.returncode == 0, result.stdout + result.stderr
        time.sleep(0.2)
        seen, total = p.ask("unwatch").split()[1::2]
        assert int(total) > 1000 and int(seen) == 0
        assert p.ask("square 100000") == str(SATURATED)
        active = [x.id for x in runtime_state.read(p.pid).patches if x.active]
        assert active == ["basic-square-saturate"]


def test_target_dlopened_after_start(tree: Path, patchee: Path, runtime: Path) -> None:
    lib = tree / "basic" / "libbasic.so"
    with running(patchee, runtime) as p:
        result = trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix"))
        assert result.returncode == 1 and "libbasic.so is not loaded" in result.stdout
        assert p.ask(f"load {lib}") == "loaded"
        assert trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix")).returncode == 0
        assert p.ask("square 100000") == str(SATURATED)


def test_patched_library_closed_and_loaded_again(tree: Path, patchee: Path, runtime: Path) -> None:
    """The new load of the library is unpatched, and the patch applies to it again."""
    lib = tree / "basic" / "libbasic.so"
    with running(patchee, runtime, str(lib)) as p:
        assert trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix")).returncode == 0
        assert p.ask("square 100000") == str(SATURATED)
        assert p.ask("close") == "0"
        assert not [m for m in maps(p.pid) if m.path == str(lib)]
        assert p.ask(f"load {lib}") == "loaded"
        assert p.ask("square 100000") == str(OVERFLOWED)
        result = trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix"))
        assert result.returncode == 0 and "applied" in result.stdout, result.stdout
        assert p.ask("square 100000") == str(SATURATED)
        assert p.ask("hold") == "holding"
        assert trigger_cli("-p", str(p.pid), patch_file(tree, "square_stack_a")).returncode == 0
        assert p.ask("release") == "held 9"  # universes still tracked on the new load


def test_patch_object_rebuilt_at_the_same_path(
    tree: Path, patchee: Path, runtime: Path, tmp_path: Path
) -> None:
    """A reverted patch's object stays loaded; a rebuilt file at its path, packed again, is
    loaded as what it is (from the bytes the trigger read), not confused with the old one."""
    out = Path(_retarget(tree, tmp_path, tree / "basic" / "libbasic.so", "square_stack_a")).parent
    source = samples.PATCHES / "square_stack_a" / "patch.c"

    def build(*flags: str) -> str:
        cmd = ["gcc", *flags, "-fPIC", "-shared", "-o", str(out / "patch.so"), str(source)]
        assert run(cmd).returncode == 0
        return str(pack(out / "patch.toml").metadata)

    patch = build("-O2")
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        assert trigger_cli("-p", str(p.pid), patch).returncode == 0
        assert trigger_cli("-p", str(p.pid), "--revert", patch).returncode == 0
        (out / "patch.so").unlink()
        (first,) = patch_object_bases(p.pid, "basic-square-stack-a")
        patch = build("-O0", "-g")
        result = trigger_cli("-p", str(p.pid), patch)
        assert result.returncode == 0, result.stdout
        assert p.ask("square 3") == "1009"
        bases = patch_object_bases(p.pid, "basic-square-stack-a")
        assert len(bases) == 2 and first in bases


# -- universes -----------------------------------------------------------------------------------


def test_a_thread_inside_keeps_the_old_code(tree: Path, patchee: Path, runtime: Path) -> None:
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        assert p.ask("hold") == "holding"  # a thread waits inside basic_apply
        assert trigger_cli("-p", str(p.pid), patch_file(tree, "square_stack_a")).returncode == 0
        assert p.ask("square 3") == "1009"  # a new call: the new code
        assert p.ask("release") == "held 9"  # the held thread: the old code, to the end
        assert p.ask("hold") == "holding"
        assert p.ask("release") == "held 1009"  # its next call: the new code


def _contract(tmp: Path) -> tuple[Path, Path, Path]:
    src = PROGRAMS / "contract"
    cflags = ["-O2", "-fPIC", "-fpatchable-function-entry=16,14", "-fno-ipa-ra"]
    lib = tmp / "libcontract.so"
    for cmd in (
        ["gcc", *cflags, "-shared", "-o", str(lib), str(src / "contract.c")],
        ["gcc", "-O2", "-fPIC", "-shared", "-o", str(tmp / "contract_v2.so"),
         str(src / "contract_v2.c")],
        ["gcc", "-O2", "-pthread", "-o", str(tmp / "contract_threads"),
         str(src / "contract_threads.c"), "-ldl"],
    ):  # fmt: skip
        result = run(cmd)
        assert result.returncode == 0, result.stderr
    assert ulp("rewrite", str(lib)).returncode == 0
    (tmp / "contract_v2.toml").write_text((src / "contract_v2.toml").read_text())
    packed = pack(tmp / "contract_v2.toml")
    return lib, packed.metadata, tmp / "contract_threads"


def test_contract_change_is_never_observed_mixed(tmp_path: Path, runtime: Path) -> None:
    """8 threads run a library call that encodes and then decodes, for at least 10 seconds,
    while the patch changing both sides is applied and reverted 50 times."""
    lib, patch, program = _contract(tmp_path)
    env = dict(os.environ, LD_PRELOAD=str(runtime))
    proc = subprocess.Popen(
        [str(program), str(lib)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    apply = operation(str(patch))
    revert = operation(str(patch), revert=True)
    end = time.monotonic() + 10
    for cycle in range(50):
        for op in (apply, revert):
            result = protocol.run(proc.pid, op)
            assert not result.failed, result.message
        time.sleep(max(0.0, (end - time.monotonic()) / (50 - cycle)))
    out, _ = proc.communicate(timeout=60)
    fields = dict(zip(out.split()[::2], map(int, out.split()[1::2]), strict=True))
    assert proc.returncode == 0
    assert fields["mixed"] == 0, out
    assert fields["v1"] > 0 and fields["v2"] > 0, out  # both formats really ran


# -- refusals leave the process untouched ---------------------------------------------------------


def _untouched(p: Process, lib: Path, args: list[str], message: str) -> None:
    before = code_bytes(p.pid, lib)
    universe = runtime_state.read(p.pid).universe
    result = trigger_cli("-p", str(p.pid), *args)
    assert result.returncode == 1, result.stdout
    assert message in result.stdout, result.stdout
    assert len(result.stdout.splitlines()) == 1
    assert code_bytes(p.pid, lib) == before
    assert runtime_state.read(p.pid).universe == universe
    assert p.ask("square 100000") == str(OVERFLOWED)


def test_refusals(tree: Path, patchee: Path, runtime: Path, tmp_path: Path) -> None:
    lib = tree / "basic" / "libbasic.so"
    fix = patch_file(tree, "square_fix")
    with running(patchee, None, str(lib)) as p:
        result = trigger_cli("-p", str(p.pid), fix)
        assert result.returncode == 1 and "runtime not loaded" in result.stdout

    # The same library built differently: another build-id.
    other = samples.build_library(samples.load()["basic"], tmp_path / "o1", ["-O1"])
    rebuilt = tmp_path / "rebuilt" / "libbasic.so"
    rebuilt.parent.mkdir()
    assert ulp("rewrite", str(other), "-o", str(rebuilt)).returncode == 0
    with running(patchee, runtime, str(rebuilt)) as p:
        _untouched(p, rebuilt, [fix], "build-id mismatch")

    with running(patchee, runtime, str(lib)) as p:
        # A replacement the object lacks.
        meta = Path(fix).read_text().replace('"basic_square_fixed"', '"basic_square_gone"')
        broken = Path(fix).with_name("broken.ulp")
        broken.write_text(meta)
        _untouched(p, lib, [str(broken)], "lacks function basic_square_gone")
        _untouched(p, lib, ["--revert", fix], "not applied")

        # Bytes that are not the prepared padding (somebody else patched the function).
        pad = base_of(p.pid, lib) + entry_of(lib, "basic_square") - 14
        with open(f"/proc/{p.pid}/mem", "r+b", buffering=0) as mem:
            mem.seek(pad)
            mem.write(b"\xcc")
        _untouched(p, lib, [fix], "not as recorded")


# -- kinds of libraries ----------------------------------------------------------------------------


def _retarget(tree: Path, tmp: Path, library: Path, name: str) -> str:
    """The sample patch `name`, described for another build of the basic library."""
    out = tmp / name
    out.mkdir()
    src = tree / "patches" / name
    (out / "patch.so").write_bytes((src / "patch.so").read_bytes())
    text = (src / "patch.toml").read_text()
    text = text.replace('"../../basic/libbasic.so"', json.dumps(str(library)))
    (out / "patch.toml").write_text(text)
    return str(pack(out / "patch.toml").metadata)


@pytest.mark.parametrize("variant", ["symbolic", "cet"])
def test_symbolic_and_endbr64_libraries(
    variant: str,
    tree: Path,
    patchee: Path,
    runtime: Path,
    built: dict[str, BuiltSample],
    tmp_path: Path,
) -> None:
    sample = built[variant]
    fix = _retarget(tree, tmp_path, sample.prepared, "square_fix")
    scale = _retarget(tree, tmp_path, sample.prepared, "scale_static")
    with running(patchee, runtime, str(sample.prepared)) as p:
        for patch in (fix, scale):
            result = trigger_cli("-p", str(p.pid), patch)
            assert result.returncode == 0, result.stdout
        assert p.ask("square 100000") == str(SATURATED)
        assert p.ask("scaled 5") == "41"
        entry = base_of(p.pid, sample.prepared) + entry_of(sample.prepared, "basic_square")
        if variant == "cet":  # endbr64 stays first; the jump replaces the nop after it
            assert read_memory(p.pid, entry, 6) == bytes.fromhex("f30f1efa") + b"\xeb\xec"


def test_pad_crossing_a_page(tree: Path, patchee: Path, runtime: Path, tmp_path: Path) -> None:
    """The static scale() placed so that its 14-byte pad straddles a page boundary."""
    header = tmp_path / "cross.h"
    header.write_text('__asm__(".text\\n.balign 4096\\n.skip 4088\\n");\n')
    flags = ["-fno-toplevel-reorder", "-falign-functions=1", "-include", str(header)]
    raw = samples.build_library(samples.load()["basic"], tmp_path / "raw", flags)
    lib = tmp_path / "libbasic.so"
    assert ulp("rewrite", str(raw), "-o", str(lib)).returncode == 0
    entry = entry_of(lib, "scale")
    assert (entry - 14) // 4096 != (entry - 1) // 4096
    patch = _retarget(tree, tmp_path, lib, "scale_static")
    with running(patchee, runtime, str(lib)) as p:
        assert p.ask("scaled 5") == "36"
        assert trigger_cli("-p", str(p.pid), patch).returncode == 0
        assert p.ask("scaled 5") == "41"


def _small_project(
    tmp: Path, src: Path, lib: str, patch: str, driver: str
) -> tuple[Path, str, Path]:
    """Build lib<name>.so (prepared), its patch object and description, and a driver program,
    from tests/programs/<dir>: (library, patch metadata, driver)."""
    cflags = ["-O2", "-fPIC", "-fpatchable-function-entry=16,14", "-fno-ipa-ra", f"-I{src}"]
    library = tmp / f"lib{lib}.so"
    for cmd in (
        ["gcc", *cflags, "-shared", "-o", str(library), str(src / f"{lib}.c")],
        ["gcc", "-O2", "-fPIC", f"-I{src}", "-shared", "-o", str(tmp / f"{patch}.so"),
         str(src / f"{patch}.c")],
        ["gcc", "-O2", f"-I{src}", "-o", str(tmp / driver), str(src / f"{driver}.c"), "-ldl"],
    ):  # fmt: skip
        result = run(cmd)
        assert result.returncode == 0, result.stderr
    assert ulp("rewrite", str(library)).returncode == 0
    (tmp / f"{patch}.toml").write_text((src / f"{patch}.toml").read_text())
    return library, str(pack(tmp / f"{patch}.toml").metadata), tmp / driver


def test_calling_conventions_through_the_dispatcher(
    tmp_path: Path, runtime: Path, built: dict[str, BuiltSample]
) -> None:
    """10+10 arguments (stack-passed too), variadics with %al, struct returns in memory and in
    registers, and an x87 long double, through replacements that call the originals."""
    abi = built["abi"].sample.sources[0].parent
    src = PROGRAMS / "abi"
    for name in ("abi_driver.c", "abi_plus.c", "abi_plus.toml"):
        (tmp_path / name).write_text((src / name).read_text())
    (tmp_path / "abi.c").write_text((abi / "abi.c").read_text())
    (tmp_path / "abi.h").write_text((abi / "abi.h").read_text())
    lib, patch, driver = _small_project(tmp_path, tmp_path, "abi", "abi_plus", "abi_driver")
    with running(driver, runtime, str(lib)) as p:
        before = p.ask("go")
        assert before == "742.5 15 2.62 8,16,24,2.00 5,6.00 2.500000"
        assert trigger_cli("-p", str(p.pid), patch).returncode == 0
        after = p.ask("go")
        assert after == "1742.5 1015 1002.62 1008,1016,1024,1002.00 1005,1006.00 1002.500000"
        assert trigger_cli("-p", str(p.pid), "--revert", patch).returncode == 0
        assert p.ask("go") == before


def test_recursive_function_whose_replacement_calls_the_original(
    tmp_path: Path, runtime: Path
) -> None:
    lib, patch, driver = _small_project(tmp_path, PROGRAMS / "fib", "fib", "fib_plus", "fib_driver")
    with running(driver, runtime, str(lib)) as p:
        assert p.ask("20") == "6765"
        assert trigger_cli("-p", str(p.pid), patch).returncode == 0
        # Every level of the recursion went through the replacement: R(n) = R(n-1) + R(n-2) + 1.
        r = [1, 2]
        for _ in range(19):
            r.append(r[-1] + r[-2] + 1)
        assert p.ask("20") == str(r[20])


def test_patched_function_called_from_a_signal_handler(
    tree: Path, patchee: Path, runtime: Path
) -> None:
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        assert p.ask("raise 1000") == "sat 0 other 1000"
        assert trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix")).returncode == 0
        assert p.ask("raise 1000") == "sat 1000 other 0"


def test_cxx_method_and_two_libraries(
    tmp_path: Path, tree: Path, patchee: Path, runtime: Path, built: dict[str, BuiltSample]
) -> None:
    lib = built["cxx"].prepared
    src = tmp_path / "bump.c"
    src.write_text(
        "struct counter { int value; };\n"
        "int bump_twice(struct counter *self, int by) { return self->value += 2 * by; }\n"
    )
    assert run(["gcc", "-O2", "-fPIC", "-shared", "-o", str(tmp_path / "bump.so"),
                str(src)]).returncode == 0  # fmt: skip
    (tmp_path / "bump.toml").write_text(
        f"target = {json.dumps(str(lib))}\nobject = 'bump.so'\nid = 'bump-twice'\n"
        "[replace]\n_ZN14ThrowerCounter4bumpEi = 'bump_twice'\n"
    )
    patch = str(pack(tmp_path / "bump.toml").metadata)
    # Two prepared libraries in one process, a patch for each.
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        assert p.ask(f"open {lib}") == "opened"
        assert p.ask("bump 1") == "1"
        assert trigger_cli("-p", str(p.pid), patch).returncode == 0
        assert trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix")).returncode == 0
        assert p.ask("bump 1") == "3"
        assert p.ask("square 100000") == str(SATURATED)


# -- process hygiene -----------------------------------------------------------------------------


def test_no_eintr_and_no_lost_signals(tree: Path, patchee: Path, runtime: Path) -> None:
    """Real-time signals queue, so each one sent must be handled exactly once; threads blocked
    in nanosleep() and read() during 20 patch operations never see EINTR."""
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        ops = [
            operation(patch_file(tree, "square_fix")),
            operation(patch_file(tree, "square_fix"), revert=True),
        ]
        sent = 0
        for i in range(20):
            os.kill(p.pid, signal.SIGRTMIN)
            sent += 1
            result = protocol.run(p.pid, ops[i % 2])
            assert not result.failed, result.message
            os.kill(p.pid, signal.SIGRTMIN)
            sent += 1
        time.sleep(0.2)
        assert p.ask("stats") == f"eintr 0 usr1 0 rt {sent}"


def test_rwx_page_keeps_its_protection(tree: Path, patchee: Path, runtime: Path) -> None:
    lib = tree / "basic" / "libbasic.so"
    with running(patchee, runtime, str(lib)) as p:
        entry = base_of(p.pid, lib) + entry_of(lib, "basic_square")
        assert p.ask(f"rwx {entry:x}") == "0"

        def perms() -> str:
            return next(m.perms for m in maps(p.pid) if m.start <= entry < m.end)

        assert perms() == "rwxp"
        assert trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix")).returncode == 0
        assert perms() == "rwxp"
        assert p.ask("square 100000") == str(SATURATED)


def test_seccomp_forbidding_exec_mprotect(tree: Path, patchee: Path, runtime: Path) -> None:
    lib = tree / "basic" / "libbasic.so"
    with running(patchee, runtime, str(lib)) as p:
        assert p.ask("seccomp") == "0"
        entry = base_of(p.pid, lib) + entry_of(lib, "basic_square")
        assert p.ask(f"rwx {entry:x}") == "-1"  # the filter is in force
        result = trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix"))
        assert result.returncode == 0, result.stdout
        assert p.ask("square 100000") == str(SATURATED)


def test_allocator_and_loader_hammered_during_200_operations(
    tree: Path, patchee: Path, runtime: Path
) -> None:
    """15 threads malloc/free and dlopen/dlclose without pause: every operation succeeds (after
    retries if it must), none deadlocks."""
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        assert p.ask(f"hammer {tree / 'patches' / 'square_stack_a' / 'patch.so'}") == "hammering"
        ops = [
            operation(patch_file(tree, "square_fix")),
            operation(patch_file(tree, "square_fix"), revert=True),
        ]
        for i in range(200):
            result = protocol.run(p.pid, ops[i % 2], timeout=10, retries=100)
            assert not result.failed, f"operation {i}: {result.message}"
        assert p.ask("square 100000") == str(OVERFLOWED)


# -- the demo ------------------------------------------------------------------------------------


def test_demo(runtime: Path) -> None:
    result = ulp("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Done: 540 -> 480 -> 540 in one process" in result.stdout
    work = Path(result.stdout.split(" its fix in ", 1)[1].split()[0])
    assert not work.exists()  # it cleaned up after itself: files...
    pid = int(result.stdout.split("till[", 1)[1].split("]")[0])
    assert not Path(f"/proc/{pid}").exists()  # ...and the program


# -- transitions, status, many processes ----------------------------------------------------------


def _replacement_address(pid: int, obj: Path, patch_id: str, name: str) -> int:
    (base,) = patch_object_bases(pid, patch_id)
    return base + next(s.value for s in ElfFile.load(obj).dynamic_symbols if s.name == name)


def test_finished_transition_is_a_direct_jump(tree: Path, patchee: Path, runtime: Path) -> None:
    lib = tree / "basic" / "libbasic.so"
    with running(patchee, runtime, str(lib)) as p:
        assert trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix")).returncode == 0
        entry = base_of(p.pid, lib) + entry_of(lib, "basic_square")
        new = _replacement_address(
            p.pid,
            tree / "patches" / "square_fix" / "patch.so",
            "basic-square-saturate",
            "basic_square_fixed",
        )
        # The entry jumps back 16 bytes into the pad, which jumps straight to the new code.
        assert read_memory(p.pid, entry, 2) == b"\xeb\xf0"
        pad = read_memory(p.pid, entry - 14, 14)
        assert (
            pad[:1] == b"\xe9"
            and entry - 14 + 5 + int.from_bytes(pad[1:5], "little", signed=True) == new
        )
        assert p.ask("square 100000") == str(SATURATED)
        status = json.loads(ulp("patches", "-p", str(p.pid), "--json").stdout)
        assert status[0]["libraries"][0]["transition"] == "done"
        # The runtime's own record of the library's last change.
        (state,) = runtime_state.read(p.pid).libraries
        assert state.finished and state.patched and state.target_universe == 2

        assert (
            trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix", reverse=True)).returncode
            == 0
        )
        # Fully reverted: the prepared padding again.
        assert read_memory(p.pid, entry - 14, 16) == b"\x90" * 14 + b"\x66\x90"
        (state,) = runtime_state.read(p.pid).libraries
        assert state.finished and not state.patched and state.target_universe == 3
        assert p.ask("square 100000") == str(OVERFLOWED)
        # And patchable again from there.
        assert trigger_cli("-p", str(p.pid), patch_file(tree, "square_stack_a")).returncode == 0
        assert p.ask("square 3") == "1009"


def test_a_thread_inside_holds_the_transition_open(
    tree: Path, patchee: Path, runtime: Path
) -> None:
    lib = tree / "basic" / "libbasic.so"
    with running(patchee, runtime, str(lib)) as p:
        assert p.ask("hold") == "holding"
        state = runtime_state.read(p.pid)
        (held,) = [t.tid for t in state.threads if any(s.depth for s in t.libraries.values())]
        result = trigger_cli("-p", str(p.pid), "--wait", "0.3", patch_file(tree, "square_stack_a"))
        assert result.returncode == 0
        assert (
            f"transition pending: held by thread {held} (patchee, inside the library)"
            in result.stdout
        )
        entry = base_of(p.pid, lib) + entry_of(lib, "basic_square")
        assert read_memory(p.pid, entry - 14, 2) == bytes.fromhex("41bb")  # still the checker
        text = ulp("patches", "-p", str(p.pid)).stdout
        assert f"transition pending: {held} (patchee, universe 1) inside the library" in text
        assert "basic-square-stack-a" in text and "8 patchable functions" in text
        status = json.loads(ulp("patches", "-p", str(p.pid), "--json").stdout)
        library = status[0]["libraries"][0]
        assert library["transition"] == "pending"
        assert [h["tid"] for h in library["holders"]] == [held]
        assert [h["reason"] for h in library["holders"]] == ["inside the library"]
        (state,) = runtime_state.read(p.pid).libraries
        assert not state.finished and state.patched

        assert p.ask("release") == "held 9"
        finished = json.loads(ulp("patches", "-p", str(p.pid), "--finish", "--json").stdout)
        assert finished[0]["libraries"][0]["transition"] == "done"
        assert runtime_state.read(p.pid).libraries[0].finished
        assert read_memory(p.pid, entry - 14, 1) == b"\xe9"
        assert p.ask("square 3") == "1009"


def test_all_processes(tree: Path, patchee: Path, runtime: Path) -> None:
    lib = str(tree / "basic" / "libbasic.so")
    procs = [Process(patchee, runtime, lib) for _ in range(50)]
    without = Process(patchee, runtime)  # the runtime, but not the target
    try:
        result = trigger_cli("--all", patch_file(tree, "square_fix"))
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        assert lines[-1] == "50 processes: 50 applied (of users: root 50)"
        assert sorted(int(line.split(":")[0]) for line in lines[:-1]) == sorted(
            p.pid for p in procs
        )
        assert all(p.ask("square 100000") == str(SATURATED) for p in procs)
        again = trigger_cli("--all", patch_file(tree, "square_fix"))
        assert again.stdout.splitlines()[-1] == "50 processes: 50 already applied"
    finally:
        for p in [*procs, without]:
            p.close()


def test_all_shows_progress_on_a_terminal(tree: Path, patchee: Path, runtime: Path) -> None:
    """On a terminal, --all keeps one progress line on stderr, rewritten as it goes and erased
    at the end: how many of the processes with the runtime it has looked at (the candidates
    and the others); then the summary on stdout."""
    lib = str(tree / "basic" / "libbasic.so")
    procs = [Process(patchee, runtime, lib) for _ in range(3)]
    without = Process(patchee, runtime)  # looked at, not a candidate
    leader, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ulp_build", "trigger", "--all", patch_file(tree, "square_fix")],
            stdout=subprocess.PIPE, stderr=terminal, text=True, timeout=120, check=False,
        )  # fmt: skip
        os.close(terminal)
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the terminal has no writer left
            while chunk := os.read(leader, 4096):
                shown += chunk
    finally:
        os.close(leader)
        for p in [*procs, without]:
            p.close()
    assert done.returncode == 0, done.stdout
    assert done.stdout.splitlines()[-1] == "3 processes: 3 applied (of users: root 3)"
    text = shown.decode()
    counts = re.findall(r"\[(\d+)/(\d+) with the runtime\] apply basic-square-saturate", text)
    assert counts, repr(text)
    looked, total = map(int, counts[-1])
    assert looked == total >= 4, counts
    assert text.endswith("\r\x1b[K"), repr(text)


def test_a_worker_that_dies_fails_no_process_it_did_not_kill(
    tree: Path, patchee: Path, runtime: Path
) -> None:
    """A worker of --all killed at its work loses its chunk and the chunks still queued: their
    processes are tried again, and each ends applied (or already applied, if the killed worker
    had got that far): none is reported as failed for a death it did not cause."""
    lib = str(tree / "basic" / "libbasic.so")
    procs = [Process(patchee, runtime, lib) for _ in range(12)]
    ours = {p.pid for p in procs}
    killed: list[int] = []

    def kill_a_worker(chunk: list[protocol.Result], looked: int, total: int) -> None:
        if killed:
            return
        children = {
            int(pid)
            for task in Path("/proc/self/task").iterdir()
            for pid in (task / "children").read_text().split()
        }
        killed.append(min(children - ours))
        os.kill(killed[0], signal.SIGKILL)

    try:
        op = operation(patch_file(tree, "square_fix"))
        results = {r.pid: r for r in fleet.run_all(op, jobs=2, progress=kill_a_worker)}
        assert killed
        assert set(results) == ours
        statuses = {r.status for r in results.values()}
        assert statuses <= {"applied", "already applied"}, results
        assert all(p.ask("square 100000") == str(SATURATED) for p in procs)
    finally:
        for p in procs:
            p.close()


def test_every_pending_transition_is_reported(tree: Path, patchee: Path, runtime: Path) -> None:
    """A thread calling in without pause is often inside the library or the runtime when the
    trigger tries to finish: whenever the runtime's state says the transition is left
    unfinished, the result line says so, with who holds it and why."""
    lib = tree / "basic" / "libbasic.so"
    pending = 0
    reasons: set[str] = set()
    with running(patchee, runtime, str(lib)) as p:
        assert p.ask("watch 3 -1") == "watching"
        for cycle in range(30):
            name = patch_file(tree, "square_fix", reverse=bool(cycle % 2))
            result = trigger_cli("-p", str(p.pid), "--wait", "0", "--json", name)
            assert result.returncode == 0, result.stdout + result.stderr
            (entry,) = json.loads(result.stdout)
            (library,) = runtime_state.read(p.pid).libraries
            reported = bool(entry["pending"]) or "transition pending" in entry["message"]
            assert reported == (not library.finished), (entry, library)
            pending += reported
            reasons.update(h["reason"] for h in entry["pending"])
        p.ask("unwatch")
    assert pending >= 3, pending  # the case the test is about did occur
    assert reasons <= {"inside the library", "inside the runtime", "at a checker's jump"}


def test_a_reference_to_a_zero_initialized_variable(tmp_path: Path, runtime: Path) -> None:
    """A static variable in .bss (loaded, not in the file) is a valid reference: the patched
    function counts on with the running library's counter, not a copy of its own."""
    (tmp_path / "counter.c").write_text(
        "static int calls;\nint counter_next(void) { return ++calls; }\n"
    )
    (tmp_path / "fix.c").write_text(
        "int *calls_ref;\nint counter_next_by_ten(void) { return *calls_ref += 10; }\n"
    )
    (tmp_path / "fix.toml").write_text(
        'target = "libcounter.so"\nobject = "fix.so"\nid = "counter-by-ten"\n'
        'description = "count by ten"\n\n[replace]\ncounter_next = "counter_next_by_ten"\n\n'
        '[references]\ncalls = "calls_ref"\n'
    )
    (tmp_path / "main.c").write_text(
        "#include <stdio.h>\nint counter_next(void);\n"
        'int main(void) { char l[8]; puts("ready"); fflush(stdout);\n'
        "  while (fgets(l, sizeof l, stdin))\n"
        '    { printf("%d\\n", counter_next()); fflush(stdout); } }\n'
    )
    lib = tmp_path / "libcounter.so"
    for cmd in (
        ["gcc", *CFLAGS, "-O2", "-fPIC", "-shared", "-o", str(lib), str(tmp_path / "counter.c")],
        ["gcc", "-O2", "-fPIC", "-shared", "-o", str(tmp_path / "fix.so"),
         str(tmp_path / "fix.c")],
        ["gcc", "-O2", "-o", str(tmp_path / "main"), str(tmp_path / "main.c"), str(lib),
         f"-Wl,-rpath,{tmp_path}"],
    ):  # fmt: skip
        result = run(cmd)
        assert result.returncode == 0, result.stderr
    assert ulp("rewrite", str(lib)).returncode == 0
    patch = pack(tmp_path / "fix.toml").metadata
    with running(tmp_path / "main", runtime) as p:
        assert [p.ask("next") for _ in range(2)] == ["1", "2"]
        triggered(p.pid, patch)
        assert p.ask("next") == "12"


# -- a replacement calling the target's exported functions by name -----------------------------


def _import_slot(pid: int, tree: Path, patch_id: str) -> tuple[int, int]:
    """The GOT slot of the object's call of basic_add, as it is in the process, and the
    address the target's loader binds that name to (its trampoline)."""
    obj = tree / "patches" / "square_calls_add" / "patch.so"
    (base,) = patch_object_bases(pid, patch_id)
    slot = imports.plt_slots(ElfFile.load(obj))["basic_add"]
    lib = tree / "basic" / "libbasic.so"
    (add,) = [s for s in ElfFile.load(lib).dynamic_symbols if s.name == "basic_add"]
    filled = int.from_bytes(read_memory(pid, base + slot, 8), "little")
    return filled, base_of(pid, lib) + add.value


def test_replacement_calling_the_target_of_a_local_dlopen(
    tree: Path, patchee: Path, runtime: Path, tmp_path: Path
) -> None:
    """The patchee dlopens libbasic.so RTLD_LOCAL, as Python loads an extension's libraries: the
    loader cannot bind the patch object's call of basic_add, the runtime fills it."""
    patch = metadata.read(patch_file(tree, "square_calls_add"))
    assert [i.name for i in patch.imports] == ["basic_add"]
    # The control: the same patch without its import, as `pack` made it before.
    blind = tree / "patches" / "square_calls_add" / "blind.ulp"
    blind.write_text(metadata.dumps(dataclasses.replace(patch, imports=[])))
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        refused = trigger_cli("-p", str(p.pid), str(blind))
        assert refused.returncode == 1
        assert "undefined symbol: basic_add" in refused.stdout, refused.stdout
        assert p.ask("square 4") == "16"

        applied = trigger_cli("-p", str(p.pid), patch_file(tree, "square_calls_add"))
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert p.ask("square 4") == "17"
        filled, trampoline = _import_slot(p.pid, tree, patch.id)
        assert filled == trampoline  # the call enters the target tracked, by its trampoline
        reverted = trigger_cli("-p", str(p.pid), patch_file(tree, "square_calls_add", True))
        assert reverted.returncode == 0, reverted.stdout
        assert p.ask("square 4") == "16"


def test_replacement_calling_the_target_of_a_program_linked_with_it(
    tree: Path, runtime: Path, tmp_path: Path
) -> None:
    """The target loaded as a DT_NEEDED of the program, in the global scope: the loader could
    bind the call itself, and the runtime's filling gives the same address."""
    (tmp_path / "main.c").write_text(
        "#include <stdio.h>\n#include <stdlib.h>\nint basic_square(int);\n"
        'int main(void) { char l[16]; puts("ready"); fflush(stdout);\n'
        "  while (fgets(l, sizeof l, stdin) && l[0] != 'q')\n"
        '    { printf("%d\\n", basic_square(atoi(l))); fflush(stdout); } }\n'
    )
    lib = tree / "basic" / "libbasic.so"
    built = run(["gcc", "-O2", "-o", str(tmp_path / "main"), str(tmp_path / "main.c"), str(lib),
                 f"-Wl,-rpath,{lib.parent}"])  # fmt: skip
    assert built.returncode == 0, built.stderr
    with running(tmp_path / "main", runtime) as p:
        assert p.ask("4") == "16"
        applied = trigger_cli("-p", str(p.pid), patch_file(tree, "square_calls_add"))
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert p.ask("4") == "17"
        filled, trampoline = _import_slot(p.pid, tree, "basic-square-calls-add")
        assert filled == trampoline
        reverted = trigger_cli("-p", str(p.pid), patch_file(tree, "square_calls_add", True))
        assert reverted.returncode == 0, reverted.stdout
        assert p.ask("4") == "16"


def test_replacement_linked_against_the_target_is_bound_by_the_loader(
    patchee: Path, runtime: Path, tmp_path: Path
) -> None:
    """An object that needs the target's soname has the loader bind every use of the target,
    even of a target dlopened RTLD_LOCAL: its variable, a -fno-plt call, an address, all bound
    as it loads (-z now), with nothing for the runtime to fill. The same object not linked
    against the target is refused by `pack`, the control."""
    lib = tmp_path / "libbasic.so"
    built = run(["gcc", *CFLAGS, "-O2", "-fPIC", "-shared", "-Wl,-soname,libbasic.so", "-o",
                 str(lib), str(samples.ROOT / "basic" / "basic.c")])  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert ulp("rewrite", str(lib)).returncode == 0
    (tmp_path / "fix.c").write_text(
        "extern int basic_counter;\nint basic_add(int, int);\n"
        "int (*volatile adder)(int, int) = basic_add;\n"
        "int fixed(int x) { return adder(x * x, 0) + 1000 * basic_counter; }\n"
    )
    (tmp_path / "fix.toml").write_text(
        'target = "libbasic.so"\nobject = "fix.so"\nid = "linked"\ndescription = "linked"\n'
        '\n[replace]\nbasic_square = "fixed"\n'
    )
    compile_fix = ["gcc", "-O2", "-fPIC", "-fno-plt", "-shared", "-Wl,-z,now", "-o",
                   str(tmp_path / "fix.so"), str(tmp_path / "fix.c")]  # fmt: skip
    assert run(compile_fix).returncode == 0
    refused = ulp("pack", str(tmp_path / "fix.toml"))
    assert refused.returncode == 1
    assert "basic_counter: the target's variable is used directly" in refused.stderr
    built = run([*compile_fix, f"-L{tmp_path}", "-lbasic"])
    assert built.returncode == 0, built.stderr
    packed = pack(tmp_path / "fix.toml")
    assert packed.patch.imports == []
    with running(patchee, runtime, str(lib)) as p:
        assert p.ask("square 4") == "16"
        triggered(p.pid, packed.metadata)
        # basic_add ran in the target (its counter is 1, the one the object reads), then 2.
        assert [p.ask("square 4") for _ in range(2)] == ["1016", "2016"]


def test_replacement_calling_the_target_under_ld_bind_now(
    tree: Path, patchee: Path, runtime: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LD_BIND_NOW makes the loader bind every call as it loads the object, lazily or not: the
    trigger refuses the patch with the reason and its fixes, and the process runs on."""
    monkeypatch.setenv("LD_BIND_NOW", "1")
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        result = trigger_cli("-p", str(p.pid), patch_file(tree, "square_calls_add"))
        assert result.returncode == 1
        assert "undefined symbol: basic_add" in result.stdout, result.stdout
        assert "LD_BIND_NOW is set in the process" in result.stdout
        assert p.ask("square 4") == "16"


# -- near references: the object's code addressing the target's own statics --------------------


def test_near_references_reach_the_running_librarys_statics(
    tree: Path, patchee: Path, runtime: Path
) -> None:
    """near_static reads and bumps the target's static `factor` and calls its static `scale()`
    RIP-relative (patch/near.py): the runtime points those fields at the running library, so the
    patch and the library's unchanged code share one `factor`, at its current value. The
    control, the same object with its near references dropped from the metadata, reads the
    placeholder instead."""
    patch = metadata.read(patch_file(tree, "near_static"))
    assert sorted(n.name for n in patch.near) == ["factor", "factor", "scale"]
    blind = tree / "patches" / "near_static" / "blind.ulp"
    blind.write_text(metadata.dumps(dataclasses.replace(patch, near=[])))
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        pid = str(p.pid)
        # `factor` moved from the 7 the file has: scaled_factor bumps it on every call.
        assert trigger_cli("-p", pid, patch_file(tree, "scaled_factor")).returncode == 0
        assert [p.ask("scaled 1") for _ in range(3)] == ["9", "10", "11"]
        assert trigger_cli("-p", pid, patch_file(tree, "scaled_factor", True)).returncode == 0
        assert p.ask("scaled 1") == "11"  # the library's own code: factor is 10

        control = trigger_cli("-p", pid, str(blind))
        assert control.returncode == 0, control.stdout + control.stderr
        assert p.ask("square 3") == str(3 * 4242)  # the placeholder, not the library's factor
        assert trigger_cli("-p", pid, "--revert", str(blind)).returncode == 0

        applied = trigger_cli("-p", pid, patch_file(tree, "near_static"))
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert p.ask("square 3") == "30"  # 3 * the library's factor
        assert p.ask("scaled 1") == "1011"  # factor bumped to 11, then scale(1) + 1000
        assert p.ask("square 3") == "33"
        # The fields were written without making the object's code writable (W^X).
        name = f"/memfd:ulp-patch:{patch.id} (deleted)"
        perms = [m.perms for m in maps(p.pid) if m.path == name]
        assert any("x" in m for m in perms) and not any("w" in m and "x" in m for m in perms)

        reverted = trigger_cli("-p", pid, patch_file(tree, "near_static", True))
        assert reverted.returncode == 0, reverted.stdout
        assert p.ask("scaled 1") == "12"  # the library's own code sees the patch's write: 11
        assert p.ask("square 3") == "9"


def test_near_references_out_of_reach_are_refused(tree: Path, patchee: Path, runtime: Path) -> None:
    """The object loaded more than 2 GiB from the target (every address nearer is taken): no
    32-bit field can reach it, so the load fails, the object is unloaded, nothing applied."""
    patch = metadata.read(patch_file(tree, "near_static"))
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        assert int(p.ask("crowd")) > 0
        refused = trigger_cli("-p", str(p.pid), patch_file(tree, "near_static"))
        assert refused.returncode == 1
        assert re.search(
            r"the patch object was loaded \d+ MiB from the target, out of reach of its near"
            r" references",
            refused.stdout,
        ), refused.stdout
        assert patch_object_bases(p.pid, patch.id) == []
        assert not runtime_state.read(p.pid).patches
        assert p.ask("square 3") == "9" and p.ask("scaled 1") == "8"


def test_near_references_with_the_main_thread_exited(
    tree: Path, patchee: Path, runtime: Path
) -> None:
    """The fields are written through /proc/thread-self/mem: /proc/self/mem is gone with the
    main thread."""
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        assert p.ask("exitmain") == "main exits"
        applied = trigger_cli("-p", str(p.pid), patch_file(tree, "near_static"))
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert p.ask("square 3") == "21"
