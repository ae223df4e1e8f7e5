"""Start-up of whole `ulp` commands (issue #14, "Fast commands"): `ulp --version`, `ulp --help`,
`ulp rewrite` of a small library, and `ulp trigger -p PID` applying and reverting a 1-function
patch in an idle process under the runtime; the median of 20 rounds each, the commands
interleaved within each round, against `python -c pass` in the same rounds (the floor every
Python command pays). Run as users run `ulp` (ulp_command.py).

Targets: 40 ms, 40 ms, 80 ms, and for the trigger at most 2x libpulp's 7.6 ms (its
`ulp trigger` of a 1-function patch to an idle process, measured on this machine for issue #14).
Each round's trigger goes to a process of its own, started before the round.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench import fleet, ulp_command  # noqa: E402
from bench.results import record  # noqa: E402
from sample_libs import samples  # noqa: E402
from ulp_build.prepare.layout import CFLAGS  # noqa: E402

ROUNDS = 20


def timed(env: dict[str, str], argv: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-2000:]
    return elapsed * 1e3


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        samples.use_tree_runtime(root / "runtime-build")
        library, patch = fleet.build(root)
        reverse = patch.with_name(patch.name.replace(".ulp", ".rev.ulp"))
        # The same small library, unprepared: what `ulp rewrite` is given in a build.
        subprocess.run(["gcc", "-O2", "-fPIC", *CFLAGS, "-shared", "-o", "raw.so", "fleet.c"],
                       cwd=root, check=True)  # fmt: skip
        env = ulp_command.environment(root / "pycache")
        assert ulp_command.run(env, "--version").returncode == 0  # bytecode cached from here on
        procs = fleet.start(root, library, ROUNDS)
        commands = {
            "python -c pass (the floor)": lambda i: [sys.executable, "-c", "pass"],
            "ulp --version": lambda i: ulp_command.argv("--version"),
            "ulp --help": lambda i: ulp_command.argv("--help"),
            "ulp rewrite of a small library": lambda i: ulp_command.argv(
                "rewrite", str(root / "raw.so"), "-o", str(root / f"out{i}.so")
            ),
            "ulp trigger -p PID, apply a 1-function patch": lambda i: ulp_command.argv(
                "trigger", "-p", str(procs[i].pid), str(patch)
            ),
            "ulp trigger -p PID, revert it": lambda i: ulp_command.argv(
                "trigger", "-p", str(procs[i].pid), str(reverse)
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        try:
            for i in range(ROUNDS):
                for name, argv in commands.items():
                    times[name].append(timed(env, argv(i)))
        finally:
            for p in procs:
                p.kill()
                p.wait()
        floor = statistics.median(times["python -c pass (the floor)"])
        targets = {
            "ulp --version": "<= 40 ms",
            "ulp --help": "<= 40 ms",
            "ulp rewrite of a small library": "<= 80 ms",
            "ulp trigger -p PID, apply a 1-function patch": "<= 15.2 ms (2x libpulp's 7.6 ms)",
            "ulp trigger -p PID, revert it": "<= 15.2 ms (2x libpulp's 7.6 ms)",
        }
        for name, values in times.items():
            m = statistics.median(values)
            q1, _, q3 = statistics.quantiles(values, n=4)
            print(f"{name}: median {m:.1f} ms (quartiles {q1:.1f}-{q3:.1f})")
            if name in targets:
                record(f"{name}, whole command, median of {ROUNDS}", f"{m:.1f} ms",
                       f"python -c pass {floor:.1f} ms", m / floor, targets[name])  # fmt: skip


if __name__ == "__main__":
    main()
