"""No call mixes old and new code, whichever way it enters or leaves a library (issue #13):
every row of the issue's table is a real 8-thread program under the runtime, patched and
unpatched in process at least 30 times by a patch that changes both halves of an agreement
(tests/programs/consistency/: enc and dec, static in the library). Each row has a control,
the same roundtrip made in two separate library calls, which must see mixed results: proof
that the test can see what it asserts never happens."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run, ulp
from live import PROGRAMS, Process, running

from ulp_build.live import protocol, runtime_state, transition
from ulp_build.live.operation import Operation, operation
from ulp_build.patch.packer import pack
from ulp_build.prepare.layout import CFLAGS

SOURCES = PROGRAMS / "consistency"
CYCLES = 30  # apply/revert cycles of the threaded tests
LIBRARY = "libconsistency.so"


def _build(*cmd: str | Path) -> None:
    result = run([str(c) for c in cmd])
    assert result.returncode == 0, f"{cmd}: {result.stderr}"


@dataclass(frozen=True)
class Patch:
    apply: Operation
    revert: Operation


def _prepared(compiler: str, out: Path, sources: list[str], *flags: str | Path) -> Path:
    _build(compiler, *CFLAGS, "-O2", "-fPIC", "-shared", "-pthread", "-I", SOURCES, "-o", out,
           *(SOURCES / s for s in sources), *flags)  # fmt: skip
    assert ulp("rewrite", str(out)).returncode == 0
    return out


def _patch(directory: Path, compiler: str, source: str, description: str) -> Patch:
    _build(compiler, "-O2", "-fPIC", "-shared", "-o", directory / (Path(source).stem + ".so"),
           SOURCES / source)  # fmt: skip
    (directory / description).write_text((SOURCES / description).read_text())
    metadata = str(pack(directory / description).metadata)
    return Patch(operation(metadata), operation(metadata, revert=True))


@dataclass(frozen=True)
class Built:
    directory: Path
    patch: Patch
    threads: Path  # threads.c
    commands: Path  # commands.cc
    commands_fortified: Path  # the same, -D_FORTIFY_SOURCE=2
    codec: dict[str, tuple[Path, Patch]]  # per build of codec.cc: its driver and patch


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, runtime: Path) -> Built:
    d = tmp_path_factory.mktemp("consistency")
    link = ("-L", d, f"-Wl,-rpath,{d}")
    _prepared("gcc", d / "libmiddle.so", ["middle.c"])
    _prepared("gcc", d / LIBRARY, ["consistency.c"], *link, "-lmiddle")
    patch = _patch(d, "gcc", "consistency_v2.c", "consistency_v2.toml")
    _build("gcc", "-O2", "-pthread", "-I", SOURCES, "-o", d / "threads", SOURCES / "threads.c",
           *link, "-lconsistency", "-lmiddle")  # fmt: skip
    fortified = {"commands": "-U_FORTIFY_SOURCE", "commands_chk": "-D_FORTIFY_SOURCE=2"}
    for name, fortify in fortified.items():
        _build("g++", "-O2", fortify, "-pthread", "-I", SOURCES, "-o", d / name,
               SOURCES / "commands.cc", *link, "-lconsistency", "-lmiddle")  # fmt: skip
    codec = {}
    for kind, flag in (("hidden", "-fvisibility=hidden"), ("bsymbolic", "-Wl,-Bsymbolic")):
        c = d / kind
        c.mkdir()
        _prepared("g++", c / "libcodec.so", ["codec.cc"], "-fno-devirtualize-speculatively", flag)
        driver = c / "codec_threads"
        _build("g++", "-O2", "-pthread", "-I", SOURCES, "-o", driver,
               SOURCES / "codec_threads.cc", "-L", c, f"-Wl,-rpath,{c}", "-lcodec")  # fmt: skip
        codec[kind] = (driver, _patch(c, "g++", "codec_v2.cc", "codec_v2.toml"))
    return Built(d, patch, d / "threads", d / "commands", d / "commands_chk", codec)


# -- the 8-thread form ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    counts: dict[str, int]  # calls, mixed, v1, v2, errors
    pending: int  # operations after which a transition was left unfinished
    failed: list[str]  # messages of the operations that failed
    finished: bool  # no transition pending at the end
    seconds: float


def _cycles(pid: int, patch: Patch, wait: float = 0.1) -> tuple[int, list[str]]:
    """CYCLES applies and reverts, with the threads running between them: how many left a
    transition pending, and the messages of those that failed (counted, not stopping the
    cycles, so that the outcome says everything)."""
    pending, failed = 0, []
    for _ in range(CYCLES):
        for op in (patch.apply, patch.revert):
            result = protocol.run(pid, op, wait=wait)
            if result.failed:
                failed.append(result.message)
            pending += bool(result.pending) or "not finished" in result.message
            time.sleep(0.02)
    return pending, failed


def _threaded(program: Path, runtime: Path, mode: str, patch: Patch) -> Outcome:
    start = time.monotonic()
    env = dict(os.environ, LD_PRELOAD=str(runtime))
    proc = subprocess.Popen(
        [str(program), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        pending, failed = _cycles(proc.pid, patch)
        # Pending after an operation is a matter of timing on a loaded machine; pending for
        # good is what a stale frame does.
        transition.wait_and_finish(proc.pid, 5.0)
        # Of the libraries changed (the runtime registers every prepared library loaded at start,
        # libmiddle.so too, which no patch changes: nothing to finish there).
        libraries = runtime_state.read(proc.pid).libraries
        finished = all(lib.finished for lib in libraries if lib.target_universe)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, f"{mode}: exit {proc.returncode}, {out}"  # no abort, no crash
    words = out.split()
    counts = dict(zip(words[::2], map(int, words[1::2]), strict=True))
    outcome = Outcome(counts, pending, failed, finished, time.monotonic() - start)
    print(f"{program.name} {mode}: {outcome}")
    return outcome


def _never_mixed(outcome: Outcome) -> None:
    c = outcome.counts
    assert not outcome.failed, outcome
    assert c["errors"] == 0, outcome
    assert c["v1"] > 0 and c["v2"] > 0, outcome  # both versions really ran
    assert c["mixed"] == 0, outcome


def _control(outcome: Outcome) -> None:
    """Two separate library calls: a patch lands between them, and the test sees it."""
    assert outcome.counts["errors"] == 0, outcome
    assert outcome.counts["mixed"] > 0, outcome


def _row(built: Built, runtime: Path, mode: str) -> None:
    """Main variant and control of one row, both run before either is judged."""
    main = _threaded(built.threads, runtime, mode, built.patch)
    control = _threaded(built.threads, runtime, f"{mode}-split", built.patch)
    _control(control)
    _never_mixed(main)


def test_ops_table_of_static_functions(built: Built, runtime: Path) -> None:
    """Row 1: `ops->roundtrip(x)` through a static const table of static functions."""
    _row(built, runtime, "ops")


def test_thread_start_routine(built: Built, runtime: Path) -> None:
    """Row 2: a thread created by the library runs a static start routine doing a roundtrip."""
    _row(built, runtime, "thread")


def test_signal_handler_on_threads_outside(built: Built, runtime: Path) -> None:
    """Row 3: the library's static SIGUSR1 handler, fired thousands of times a second on 8
    threads that spin outside the library. The control's handler, the program's own, calls the
    exported enc and dec: two tracked entries."""
    _row(built, runtime, "signal")


@pytest.mark.parametrize("kind", ["hidden", "bsymbolic"])
def test_virtual_methods(built: Built, runtime: Path, kind: str) -> None:
    """Row 4: `obj->roundtrip(x)`, a virtual method of a library built with
    -fvisibility=hidden (only the factory exported), or with -Wl,-Bsymbolic."""
    driver, patch = built.codec[kind]
    main = _threaded(driver, runtime, "virtual", patch)
    control = _threaded(driver, runtime, "virtual-split", patch)
    _control(control)
    _never_mixed(main)


def _tail_call_target(library: Path, function: str) -> str:
    """What `function` ends with a jump to, if it does: objdump's name of the target."""
    result = run(["objdump", "-d", "--no-show-raw-insn", f"--disassemble={function}", str(library)])
    assert result.returncode == 0, result.stderr
    jumps = re.findall(r"\bjmp\s+[0-9a-f]+ <([^>]+)>", result.stdout)
    return jumps[-1] if jumps else ""


def test_tail_call_into_another_prepared_library(built: Built, runtime: Path) -> None:
    """Row 5: L's produce(x) is `return m_apply(enc(x), dec)`, a tail call into prepared M,
    which calls the static dec back into L."""
    assert _tail_call_target(built.directory / LIBRARY, "produce") == "m_apply@plt"
    _row(built, runtime, "produce")


def _held_cycles(p: Process, patch: Patch, hold: str, cycles: int) -> dict[str, int]:
    """`cycles` apply+revert operations, each made while a thread's call (`hold`) waits in M
    between L's two halves; the count of each answer."""
    results: dict[str, int] = {}
    for _ in range(cycles):
        for op in (patch.apply, patch.revert):
            assert p.ask(hold) == "held"
            result = protocol.run(p.pid, op, wait=0)
            assert not result.failed, result.message
            answer = p.ask("release")
            results[answer] = results.get(answer, 0) + 1
    return results


def test_tail_call_patched_while_the_callee_waits(built: Built, runtime: Path) -> None:
    """Row 5, deterministic: M's m_apply waits after L's enc ran; the patch is applied or
    reverted right then; produce(5) must still be 5 (all old or all new), 1000 cycles."""
    start = time.monotonic()
    with running(built.commands, runtime) as p:
        # While M waits, the thread is inside both: L by its call, M by the tail call's own
        # frame at the same return slot.
        assert p.ask("hold") == "held"
        state = runtime_state.read(p.pid)
        depths = {
            name: max(
                getattr(t.libraries.get(state.library(name).index), "depth", 0)
                for t in state.threads
            )
            for name in (LIBRARY, "libmiddle.so")
        }
        assert depths == {LIBRARY: 1, "libmiddle.so": 1}, depths
        assert p.ask("release") == "5"
        results = _held_cycles(p, built.patch, "hold", 1000)
    print(f"tail call, 1000 cycles: {results} in {time.monotonic() - start:.1f} s")
    assert results == {"5": 2000}


def test_a_function_calling_another_library_is_no_leaf(
    built: Built, runtime: Path, tmp_path: Path
) -> None:
    """The leaf rule (ulp_build/prepare/leaves.py) against its hole: produce_inlined does its
    half of the agreement in its own code and tail-calls M, which calls dec back by a pointer L
    handed out before. It must stay tracked, so that the call, held in M while the patch is
    applied or reverted, still gets 5. The control prepares the same library with
    `--untracked produce_inlined`, as a rule letting a leaf call other libraries would: every
    operation then mixes."""
    lib = built.directory / LIBRARY
    assert _tail_call_target(lib, "produce_inlined") == "m_apply@plt"
    report = json.loads(ulp("check", str(lib), "--json").stdout)
    assert "produce_inlined" not in report["leaves"] + report["untracked"]
    with running(built.commands, runtime) as p:
        assert _held_cycles(p, built.patch, "hold inlined", 20) == {"5": 40}

    d = tmp_path
    link = ("-L", d, f"-Wl,-rpath,{d}")
    shutil.copy(built.directory / "libmiddle.so", d)
    _build("gcc", *CFLAGS, "-O2", "-fPIC", "-shared", "-pthread", "-I", SOURCES,
           "-o", d / LIBRARY, SOURCES / "consistency.c", *link, "-lmiddle")  # fmt: skip
    assert ulp("rewrite", str(d / LIBRARY), "--untracked", "produce_inlined").returncode == 0
    _build("g++", "-O2", "-pthread", "-I", SOURCES, "-o", d / "commands",
           SOURCES / "commands.cc", *link, "-lconsistency", "-lmiddle")  # fmt: skip
    control = _patch(d, "gcc", "consistency_v2.c", "consistency_v2.toml")
    with running(d / "commands", runtime) as p:
        # Applied: the old half, then the new dec: (2*5 - 1) // 3 = 3; reverted: 16 // 2 = 8.
        assert _held_cycles(p, control, "hold inlined", 20) == {"3": 20, "8": 20}


# -- frames that never return -------------------------------------------------------------------


def _library(pid: int) -> runtime_state.LibraryInfo:
    return runtime_state.read(pid).library(LIBRARY)


@dataclass
class Seen:
    answers: list[tuple[str, ...]]  # per operation: what each probe answered
    pending: list[bool]  # per operation: its transition was left unfinished
    expected: list[tuple[str, ...]]


def _frames(p: Process, patch: Patch, setup: list[str], probes: list[str]) -> Seen:
    """Apply, revert, apply: before each, the `setup` commands (a frame left behind); after
    it, the `probes` (each answers the version its roundtrip ran)."""
    seen = Seen([], [], [])
    for op, version in ((patch.apply, "2"), (patch.revert, "1"), (patch.apply, "2")):
        for command in setup:
            assert p.ask(command) not in ("error", "unknown", "not cancelled"), command
        result = protocol.run(p.pid, op, wait=1.0)
        assert not result.failed, result.message
        seen.pending.append(bool(result.pending) or not _library(p.pid).finished)
        seen.answers.append(tuple(p.ask(probe) for probe in probes))
        seen.expected.append((version,) * len(probes))
    print(f"{setup} then {probes}: {seen}")
    return seen


@pytest.mark.parametrize("how", ["longjmp", "siglongjmp", "_longjmp", "__longjmp_chk", "throw"])
def test_frames_left_by_a_jump(built: Built, runtime: Path, how: str) -> None:
    """Row 6a: a tracked call under a 16 KiB frame is left by `how`; the next roundtrips, from
    deeper in the stack (under 32 KiB) and at its depth, run the new universe, and the
    transition finishes. The control leaves it by __builtin_longjmp, which no runtime can see:
    the deeper call still runs the old code, so the test can tell a stale frame."""
    program, jump = built.commands, how
    if how == "__longjmp_chk":
        program, jump = built.commands_fortified, "longjmp"
        symbols = run(["nm", "-D", "--undefined-only", str(program)]).stdout
        assert "__longjmp_chk" in symbols and " longjmp" not in symbols, symbols
    else:
        symbols = run(["nm", "-D", "--undefined-only", str(program)]).stdout
        assert re.search(rf"\s{how}(@|$)", symbols, re.M) or how == "throw", symbols
    with running(built.commands, runtime) as p:
        control = _frames(p, built.patch, ["jump builtin"], ["deep"])
    with running(program, runtime) as p:
        main = _frames(p, built.patch, [f"jump {jump}"], ["deep", "same"])
    assert control.answers[0] == ("1",), control  # a stale frame is seen
    assert control.pending[0], control
    assert main.answers == main.expected, main
    assert main.pending == [False] * 3, main


def test_thread_exit_inside_a_tracked_call(built: Built, runtime: Path) -> None:
    """Row 6a: a thread calls pthread_exit inside a tracked call; the next threads and the
    main thread run the new universe and the transition finishes."""
    with running(built.commands, runtime) as p:
        seen = _frames(p, built.patch, ["exit"], ["thread", "deep"])
    assert seen.answers == seen.expected, seen
    assert seen.pending == [False] * 3, seen


def test_thread_cancelled_inside_a_tracked_call(built: Built, runtime: Path) -> None:
    """Row 6a: a thread blocked inside a tracked call is cancelled there. The control leaves
    it blocked (alive, inside): the transition cannot finish, which the test sees."""
    with running(built.commands, runtime) as p:
        control = _frames(p, built.patch, ["block"], ["thread"])
        for _ in range(3):
            assert p.ask("unblock") == "unblocked"
    with running(built.commands, runtime) as p:
        seen = _frames(p, built.patch, ["block", "cancel"], ["thread", "deep"])
    assert control.pending == [True] * 3, control
    assert seen.answers == seen.expected, seen
    assert seen.pending == [False] * 3, seen


def test_frames_left_by_longjmp_under_threads(built: Built, runtime: Path) -> None:
    """Row 6b: 8 threads each leave a tracked call by longjmp under a 16 KiB frame, then make
    roundtrips from deeper in the stack: never mixed, both versions run, and no transition is
    left pending. The control leaves by __builtin_longjmp, unseen: its stale frames hold the
    universe they were left in (consistently: never mixed), so the transitions stay pending."""
    main = _threaded(built.threads, runtime, "abandon", built.patch)
    control = _threaded(built.threads, runtime, "abandon-builtin", built.patch)
    assert control.pending >= CYCLES and not control.finished, control
    assert control.counts["mixed"] == 0, control
    _never_mixed(main)
    assert main.finished, main


# -- children made inside a call -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["vfork-exit", "vfork-exec", "spawn"])
def test_child_made_inside_a_tracked_call(built: Built, runtime: Path, mode: str) -> None:
    """Row 7: L's roundtrip makes a child between enc and dec (vfork then _exit or execve, or
    posix_spawn), on 8 threads under patch cycles: no crash, never mixed, transitions finish."""
    main = _threaded(built.threads, runtime, mode, built.patch)
    control = _threaded(built.threads, runtime, "split", built.patch)
    _control(control)
    _never_mixed(main)
    assert main.finished, main


def test_fork_at_any_moment(built: Built, runtime: Path) -> None:
    """Row 7: 8 threads fork continually, each child makes one roundtrip and reports it, under
    patch cycles: no child sees a mix. The control encodes in the parent and decodes in the
    child, two calls with the fork between."""
    main = _threaded(built.threads, runtime, "fork", built.patch)
    control = _threaded(built.threads, runtime, "fork-split", built.patch)
    _control(control)
    _never_mixed(main)


def test_child_forked_during_a_pending_transition(built: Built, runtime: Path) -> None:
    """Row 7: a child forked while a thread of its parent holds a transition pending is a
    process of its own, without that thread: a later trigger patches it and finishes there."""
    with running(built.commands, runtime) as p:
        assert p.ask("block") == "blocked"
        applied = protocol.run(p.pid, built.patch.apply, wait=0.5)
        assert applied.status == "applied" and applied.pending  # the blocked thread holds it
        child = int(p.ask("fork"))
        assert p.ask("child") == "2"
        outcomes = []
        for op, version in ((built.patch.revert, "1"), (built.patch.apply, "2")):
            result = protocol.run(child, op, wait=1.0)
            assert not result.failed, result.message
            outcomes.append((result.status, result.pending, _library(child).finished))
            assert p.ask("child") == version
        assert p.ask("reap") == "reaped"
        assert p.ask("unblock") == "unblocked"
        assert not protocol.run(p.pid, built.patch.revert, wait=1.0).pending
    assert outcomes == [("reverted", [], True), ("applied", [], True)], outcomes
