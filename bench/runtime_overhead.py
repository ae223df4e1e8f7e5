"""Cost of entry tracking (docs/design.md, "Cost targets"), each ratio measured in one process
that loads an unprepared and a prepared build of the same library side by side, under the runtime:
- an empty exported function called in a tight loop: tracked / unprepared, target at most 2.5x;
- a library function sorting 10^6 ints with qsort and its own static comparator, which qsort
  calls back through the comparator's trampoline (a tracked entry per comparison): reported;
- zlib deflating and inflating 4 MiB in 4 KiB chunks: tracked / unprepared, target at most 1.01x,
  with its leaves untracked (the default) and with `--track-leaves`, to show what leaves save.
The empty function is a leaf: its library is prepared with `--track-leaves`, so that the call
measured stays a tracked one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.results import record  # noqa: E402
from sample_libs import samples, zlib  # noqa: E402
from ulp_build.prepare.rewrite import rewrite  # noqa: E402


def ratio(
    bench: Path, mode: str, raw: Path, prepared: Path, rounds: int = 21
) -> tuple[float, float]:
    cmd = [str(bench), mode, str(raw), str(prepared), str(rounds)]
    out = subprocess.run(
        [sys.executable, "-m", "ulp_build", "run", "--", *cmd],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    a, b = (float(x) for x in out.stdout.split())
    return a, b


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        samples.use_tree_runtime(root / "runtime-build")
        bench = root / "ratio"
        subprocess.run(
            ["gcc", "-O2", "-o", str(bench), str(REPO / "bench" / "ratio.c"), "-ldl"], check=True
        )
        tracking = samples.load()["tracking"]
        raw = samples.build_library(tracking, root / "raw")
        prepared = root / "prepared" / raw.name
        prepared.parent.mkdir()
        rewrite(raw, prepared, track_leaves=True)
        a, b = ratio(bench, "empty", raw, prepared)
        print(
            f"empty call: unprepared {a / 1e6:.2f} ns, tracked {b / 1e6:.2f} ns, ratio {b / a:.2f}x"
        )
        record(
            "empty exported call, tracked vs unprepared",
            f"{b / 1e6:.2f} ns/call",
            f"unprepared {a / 1e6:.2f} ns/call",
            b / a,
            "<= 2.5x",
        )
        a, b = ratio(bench, "sort", raw, prepared, rounds=5)
        print(f"qsort of 10^6 ints: unprepared {a / 1e6:.1f} ms, tracked {b / 1e6:.1f} ms")
        record(
            "qsort of 10^6 ints, static comparator called back tracked, vs unprepared",
            f"{b / 1e6:.1f} ms",
            f"unprepared {a / 1e6:.1f} ms",
            b / a,
            "report",
        )

        zraw = zlib.build(zlib.source(root / "zlib-source"), root / "zlib")
        for track_leaves, how in ((False, "leaves untracked"), (True, "--track-leaves")):
            zprep = root / f"zlib-prepared-{track_leaves}" / zraw.name
            zprep.parent.mkdir()
            shutil.copy(zraw, zprep)
            leaves = len(rewrite(zprep, track_leaves=track_leaves).leaves)
            a, b = ratio(bench, "zlib", zraw, zprep)
            print(
                f"zlib 4 MiB in 4 KiB chunks, {how} ({leaves}): unprepared {a / 1e6:.1f} ms,"
                f" tracked {b / 1e6:.1f} ms, ratio {b / a:.3f}x"
            )
            record(
                f"zlib deflate+inflate 4 MiB in 4 KiB chunks, tracked ({how}) vs unprepared",
                f"{b / 1e6:.1f} ms",
                f"unprepared {a / 1e6:.1f} ms",
                b / a,
                "<= 1.01x" if not track_leaves else "report",
            )
    print(f"(runtime: {os.environ['ULP_RUNTIME']})")


if __name__ == "__main__":
    main()
