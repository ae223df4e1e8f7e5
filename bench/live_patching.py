"""Live patching costs (issue: transitions and benchmarks), each a ratio measured side by side in
one run, written to RESULTS.md:

- how long a process is stopped to apply a 1-function patch (the commit stop: attach every
  thread, write the checker, commit, detach), against a bare attach and detach of all its
  threads, with 1 and 100 threads: target at most 2x;
- the same for a 1000-function patch: target at most 5x;
- recursive fib(30) with fib patched, during a transition (every level through the universe
  checker and the dispatcher) and after it finished (a direct jump), against unpatched fib in
  the same process: targets at most 2x and at most 1.05x;
- `trigger --all` over 50 processes, against triggering them one after the other.

Run from the repository root after `pip install '.[test]'`: the runtime is built from this tree
(ULP_RUNTIME picks another).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.results import record  # noqa: E402
from sample_libs import samples  # noqa: E402
from ulp_build.live import fleet, preflight, protocol, transition  # noqa: E402
from ulp_build.live.operation import operation  # noqa: E402
from ulp_build.live.ptrace import Tracee  # noqa: E402
from ulp_build.live.runtime import runtime_path  # noqa: E402
from ulp_build.patch.packer import pack  # noqa: E402
from ulp_build.prepare.layout import CFLAGS  # noqa: E402
from ulp_build.prepare.rewrite import rewrite  # noqa: E402

HERE = REPO / "bench" / "live"
ROUNDS = 40


def gcc(*args: str, cwd: Path) -> None:
    subprocess.run(["gcc", "-O2", *args], check=True, cwd=cwd)


def build_fib(root: Path) -> tuple[Path, Path]:
    for name in ("fib.c", "fib_fixed.c", "fib_fixed.toml", "driver.c"):
        (root / name).write_text((HERE / name).read_text())
    # Without semantic interposition fib calls itself directly, not through its (tracked)
    # exported symbol: every level crosses the patched entry and nothing else.
    gcc("-fPIC", "-fno-semantic-interposition", *CFLAGS, "-shared", "-o", "libfib.so", "fib.c",
        cwd=root)  # fmt: skip
    rewrite(root / "libfib.so")
    gcc("-fPIC", "-shared", "-o", "fib_fixed.so", "fib_fixed.c", cwd=root)
    gcc("-o", "driver", "driver.c", "-ldl", cwd=root)
    return root / "libfib.so", pack(root / "fib_fixed.toml").metadata


def build_wide(root: Path, count: int) -> tuple[Path, Path]:
    """A library of `count` functions and a patch replacing all of them."""
    (root / "wide.c").write_text(
        "".join(f"int wide{i}(int x) {{ return x + {i}; }}\n" for i in range(count))
    )
    (root / "wide_fix.c").write_text(
        "".join(f"int wide{i}_fixed(int x) {{ return x - {i}; }}\n" for i in range(count))
    )
    (root / "wide_fix.toml").write_text(
        'target = "libwide.so"\nobject = "wide_fix.so"\nid = "wide-fix"\n[replace]\n'
        + "".join(f'wide{i} = "wide{i}_fixed"\n' for i in range(count))
    )
    gcc("-fPIC", *CFLAGS, "-shared", "-o", "libwide.so", "wide.c", cwd=root)
    rewrite(root / "libwide.so")
    gcc("-fPIC", "-shared", "-o", "wide_fix.so", "wide_fix.c", cwd=root)
    return root / "libwide.so", pack(root / "wide_fix.toml").metadata


class Driver:
    def __init__(self, root: Path, library: Path) -> None:
        env = dict(os.environ, LD_PRELOAD=str(runtime_path()))
        self.proc = subprocess.Popen(
            [str(root / "driver"), str(library)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.pid = self.proc.pid
        assert self.ask("") == "" and self.proc.stdout is not None

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if line:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        return self.proc.stdout.readline().strip().removeprefix("ready")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def stop_ratio(pid: int, patch: Path, label: str, target: str) -> None:
    """Median commit stop against median bare attach/detach, interleaved."""
    apply = operation(str(patch))
    revert = operation(str(patch), revert=True)
    bare, stops = [], []
    for _ in range(ROUNDS):
        with Tracee(pid) as tracee:
            pass
        bare.append(tracee.stopped_for)
        checked = preflight.check(pid, apply)
        ticket, tid = protocol.prepare(checked, 5.0)
        _universe, stopped_for = protocol.commit(checked, ticket, tid, 5.0)
        stops.append(stopped_for)
        result = protocol.run(pid, revert, wait=0)
        assert not result.failed, result.message
    b, s = statistics.median(bare) * 1e6, statistics.median(stops) * 1e6
    print(f"{label}: stopped {s:.0f} us, bare attach/detach {b:.0f} us, ratio {s / b:.2f}x")
    record(label, f"{s:.0f} us stopped", f"bare attach+detach {b:.0f} us", s / b, target)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        samples.use_tree_runtime(root / "runtime-build")
        lib, patch = build_fib(root)

        one = Driver(root, lib)
        stop_ratio(one.pid, patch, "stop to apply a 1-function patch, 1 thread", "<= 2x")

        # fib(30): unpatched, in transition (checker kept: no finish), finished (direct
        # jump), in rounds, each state measured once per round; the fastest of each counts
        # (this machine is shared: single runs move by tens of percent).
        times: dict[str, list[int]] = {"unpatched": [], "transition": [], "finished": []}
        for _ in range(8):
            times["unpatched"].append(int(one.ask("time 30 5")))
            checked = preflight.check(one.pid, operation(str(patch)))
            protocol.commit(checked, *protocol.prepare(checked, 5.0), 5.0)
            times["transition"].append(int(one.ask("time 30 5")))
            assert all(t.done for t in transition.finish(one.pid))
            times["finished"].append(int(one.ask("time 30 5")))
            assert protocol.run(one.pid, operation(str(patch), revert=True)).pending == []
        unpatched, during, after = (min(times[k]) for k in ("unpatched", "transition", "finished"))
        print(f"fib(30): unpatched {unpatched / 1e6:.2f} ms, in transition {during / 1e6:.2f} ms,"
              f" finished {after / 1e6:.2f} ms")  # fmt: skip
        record("fib(30), fib patched, in transition", f"{during / 1e6:.2f} ms",
               f"unpatched {unpatched / 1e6:.2f} ms", during / unpatched, "<= 2x")  # fmt: skip
        record("fib(30), fib patched, transition finished", f"{after / 1e6:.2f} ms",
               f"unpatched {unpatched / 1e6:.2f} ms", after / unpatched, "<= 1.05x")  # fmt: skip
        one.close()

        wide_lib, wide_patch = build_wide(root, 1000)
        wide = Driver(root, wide_lib)
        stop_ratio(wide.pid, wide_patch, "stop to apply a 1000-function patch, 1 thread", "<= 5x")
        wide.close()

        # 100 threads: the driver plus 99 threads blocked in the library's process.
        crowd = subprocess.Popen(
            [sys.executable, "-c", CROWD, str(root / "driver"), str(lib)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert crowd.stdout is not None and crowd.stdout.readline().strip() == "ready"
        pid = int(crowd.stdout.readline())
        stop_ratio(pid, patch, "stop to apply a 1-function patch, 100 threads", "<= 2x")
        assert crowd.stdin is not None
        crowd.stdin.close()
        crowd.wait(timeout=30)

        drivers = [Driver(root, lib) for _ in range(50)]
        apply = operation(str(patch))
        revert = operation(str(patch), revert=True)
        started = time.perf_counter()
        results = fleet.run_all(apply, wait=0)
        parallel = time.perf_counter() - started
        assert sum(r.status == "applied" for r in results) == 50, results
        assert all(not r.failed for r in fleet.run_all(revert, wait=0))
        started = time.perf_counter()
        for d in drivers:
            assert not protocol.run(d.pid, apply, wait=0).failed
        sequential = time.perf_counter() - started
        print(f"--all over 50 processes: {parallel:.2f} s; one after the other {sequential:.2f} s")
        record(f"trigger --all over 50 processes ({os.cpu_count()} jobs)", f"{parallel:.2f} s",
               f"one after the other {sequential:.2f} s", parallel / sequential,
               "report")  # fmt: skip
        for d in drivers:
            d.close()


# A process with 100 threads: 99 wait in a condition variable, the main thread reads stdin.
CROWD = r"""
import ctypes, os, subprocess, sys
src = r'''
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t c = PTHREAD_COND_INITIALIZER;
static void *wait_forever(void *a) { pthread_mutex_lock(&m); for (;;) pthread_cond_wait(&c, &m); }
int main(int argc, char **argv) {
    if (!dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL)) return 2;
    for (int i = 0; i < 99; i++) { pthread_t t; pthread_create(&t, 0, wait_forever, 0); }
    printf("ready\n"); fflush(stdout);
    char b[64]; while (fgets(b, sizeof b, stdin)) {}
    return 0;
}
'''
driver, lib = sys.argv[1], sys.argv[2]
exe = driver + "-crowd"
subprocess.run(["gcc", "-O2", "-pthread", "-x", "c", "-", "-o", exe, "-ldl"], input=src,
               text=True, check=True)
from ulp_build.live.runtime import runtime_path
p = subprocess.Popen([exe, lib], stdin=sys.stdin, stdout=subprocess.PIPE, text=True,
                     env=dict(os.environ, LD_PRELOAD=str(runtime_path())))
print(p.stdout.readline().strip(), flush=True)
print(p.pid, flush=True)
p.wait()
"""


if __name__ == "__main__":
    main()
