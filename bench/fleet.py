"""`ulp trigger --all` at scale (issue #14): 1000 idle processes under the runtime, each with a
small prepared library loaded; `--all` applies a 1-function patch and then reverts it, as whole
commands (`ulp_command.py`), and every process must report applied, then reverted (`--json`).
The time per process is set against a bare attach and detach of the same processes: a whole
command too, the same number of worker processes as `--all` uses, each process given by pid
(no /proc scan) and stopped (every thread seized and interrupted) then let go with
ptrace.Tracee, nothing read or written.

The library carries a nonce, so its build-id is this run's alone: `--all` must not touch the
processes of anyone else on a shared machine. Run from the repository root; N=... overrides
the number of processes (the pid limit and open files are not touched: 1000 needs neither).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench import ulp_command  # noqa: E402
from bench.results import record  # noqa: E402
from sample_libs import samples  # noqa: E402
from ulp_build.live import fleet  # noqa: E402
from ulp_build.live.runtime import runtime_path  # noqa: E402
from ulp_build.patch.packer import pack  # noqa: E402
from ulp_build.prepare.layout import CFLAGS  # noqa: E402
from ulp_build.prepare.rewrite import rewrite  # noqa: E402

COUNT = int(os.environ.get("N", "1000"))
ROUNDS = 3

BARE = """
import sys
from concurrent.futures import ProcessPoolExecutor
from ulp_build.live.ptrace import Tracee

def bare(pids):
    for pid in pids:
        with Tracee(pid):
            pass
    return len(pids)

if __name__ == "__main__":
    jobs, pids = int(sys.argv[1]), [int(p) for p in sys.argv[2:]]
    with ProcessPoolExecutor(jobs) as pool:
        assert sum(pool.map(bare, [pids[i::jobs] for i in range(jobs)])) == len(pids)
"""


def build(root: Path) -> tuple[Path, Path]:
    """A prepared library with one function and this run's nonce, its patch, and idle.c."""
    nonce = uuid.uuid4().hex
    (root / "fleet.c").write_text(
        f'const char fleet_nonce[] = "{nonce}";\nint fleet_value(int x) {{ return x + 1; }}\n'
    )
    (root / "fleet_fix.c").write_text("int fleet_value_fixed(int x) { return x + 2; }\n")
    (root / "fleet_fix.toml").write_text(
        'target = "libfleet.so"\nobject = "fleet_fix.so"\nid = "fleet-fix"\n'
        '[replace]\nfleet_value = "fleet_value_fixed"\n'
    )
    gcc = ["gcc", "-O2"]
    subprocess.run([*gcc, "-fPIC", *CFLAGS, "-shared", "-o", "libfleet.so", "fleet.c"],
                   cwd=root, check=True)  # fmt: skip
    rewrite(root / "libfleet.so")
    subprocess.run([*gcc, "-fPIC", "-shared", "-o", "fleet_fix.so", "fleet_fix.c"],
                   cwd=root, check=True)  # fmt: skip
    subprocess.run([*gcc, "-o", "idle", str(REPO / "bench" / "live" / "idle.c"), "-ldl"],
                   cwd=root, check=True)  # fmt: skip
    return root / "libfleet.so", pack(root / "fleet_fix.toml").metadata


def start(root: Path, library: Path, count: int) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ, LD_PRELOAD=str(runtime_path()))
    read, write = os.pipe()
    procs = [
        subprocess.Popen([str(root / "idle"), str(library)], stdout=write, env=env)
        for _ in range(count)
    ]
    os.close(write)
    ready = b""
    while len(ready) < count:  # each says "r" once its library is loaded
        chunk = os.read(read, count)
        assert chunk, "an idle process died before it was ready"
        ready += chunk
    os.close(read)
    return procs


def timed(env: dict[str, str], argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-2000:]
    return elapsed, done.stdout


def trigger_all(env: dict[str, str], patch: Path, pids: set[int], status: str) -> float:
    elapsed, out = timed(env, ulp_command.argv("trigger", "--all", "--json",
                                               str(patch)))  # fmt: skip
    results = json.loads(out)
    mine = {r["pid"]: r["status"] for r in results if r["pid"] in pids}
    assert len(mine) == len(pids), f"{len(pids) - len(mine)} processes not reported"
    wrong = {p: s for p, s in mine.items() if s != status}
    assert not wrong, f"{len(wrong)} not {status}: {list(wrong.items())[:5]}"
    return elapsed


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        samples.use_tree_runtime(root / "runtime-build")
        library, patch = build(root)
        reverse = patch.with_name(patch.name.replace(".ulp", ".rev.ulp"))
        env = ulp_command.environment(root / "pycache")
        assert ulp_command.run(env, "--version").returncode == 0  # bytecode cached from here on
        procs = start(root, library, COUNT)
        pids = {p.pid for p in procs}
        try:
            bare, apply, revert = [], [], []
            for _ in range(ROUNDS):  # interleaved: the machine is shared
                bare.append(timed(env, [sys.executable, "-c", BARE, str(fleet.JOBS),
                                        *map(str, sorted(pids))])[0])  # fmt: skip
                apply.append(trigger_all(env, patch, pids, "applied"))
                revert.append(trigger_all(env, reverse, pids, "reverted"))
        finally:
            for p in procs:
                p.kill()
            for p in procs:
                p.wait()
        b = min(bare) / COUNT * 1e3
        for name, times in (("apply", apply), ("revert", revert)):
            t = min(times) / COUNT * 1e3
            spread = ", ".join(f"{x / COUNT * 1e3:.2f}" for x in times)
            print(f"--all {name} over {COUNT} processes: {t:.2f} ms/process (rounds: {spread});"
                  f" bare attach+detach {b:.2f} ms/process"
                  f" (rounds: {', '.join(f'{x / COUNT * 1e3:.2f}' for x in bare)})")  # fmt: skip
            record(f"trigger --all {name} over {COUNT} processes ({fleet.JOBS} jobs), whole"
                   " command", f"{t:.2f} ms/process", f"bare attach+detach {b:.2f} ms/process",
                   t / b, "<= 2 ms/process")  # fmt: skip


if __name__ == "__main__":
    main()
