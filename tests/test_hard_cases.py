"""Processes that make patching hard: many threads, threads born and dying meanwhile, a main
thread that has exited, a chroot."""

from __future__ import annotations

import shutil
from pathlib import Path

from live import OVERFLOWED, SATURATED, patch_file, running, trigger_cli

from ulp_build import runtime_info, trigger
from ulp_build.process import thread_ids


def test_a_thousand_threads(tree: Path, patchee: Path, runtime: Path) -> None:
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        assert p.ask("threads 1000") == "1000"
        assert len(thread_ids(p.pid)) >= 1003
        result = trigger_cli("-p", str(p.pid), "--timeout", "30", patch_file(tree, "square_fix"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert p.ask("square 100000") == str(SATURATED)
        # Every thread that called in since runs in the new universe; the transition finished.
        assert "transition pending" not in result.stdout


def test_threads_created_and_exiting_meanwhile(tree: Path, patchee: Path, runtime: Path) -> None:
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        assert p.ask("churn") == "churning"
        ops = [
            trigger.operation(patch_file(tree, "square_fix")),
            trigger.operation(patch_file(tree, "square_fix"), revert=True),
        ]
        for i in range(40):
            result = trigger.run(p.pid, ops[i % 2], wait=0.2)
            assert not result.failed, f"operation {i}: {result.message}"
        assert p.ask("square 100000") == str(OVERFLOWED)


def test_main_thread_exited(tree: Path, patchee: Path, runtime: Path) -> None:
    with running(patchee, runtime, str(tree / "basic" / "libbasic.so")) as p:
        assert p.ask("exitmain") == "main exits"
        for _ in range(10):
            result = trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix"))
            assert result.returncode == 0, result.stdout + result.stderr
            assert p.ask("square 100000") == str(SATURATED)
            result = trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix", reverse=True))
            assert result.returncode == 0, result.stdout + result.stderr
            assert p.ask("square 100000") == str(OVERFLOWED)


def test_chrooted_process(tree: Path, patchee: Path, runtime: Path, tmp_path: Path) -> None:
    """The patch object is opened by the process, inside its root: the trigger passes the path
    it has there, and refuses one outside."""
    root = tmp_path / "root"
    shutil.copytree(tree, root / "tree")
    lib = root / "tree" / "basic" / "libbasic.so"
    with running(patchee, runtime, str(lib)) as p:
        assert p.ask(f"chroot {root}") == "0"
        outside = trigger_cli("-p", str(p.pid), patch_file(tree, "square_fix"))
        assert outside.returncode == 1
        assert "must be inside it" in outside.stdout, outside.stdout
        inside = trigger_cli("-p", str(p.pid), patch_file(root / "tree", "square_fix"))
        assert inside.returncode == 0, inside.stdout + inside.stderr
        assert p.ask("square 100000") == str(SATURATED)
        (patch,) = [x for x in runtime_info.read(p.pid).patches if x.active]
        assert patch.object == "/tree/patches/square_fix/patch.so"
