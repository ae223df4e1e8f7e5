"""Rewriting a libc-sized library against a plain LIEF parse-and-write round trip of the same
file, in one run, interleaved so both see the same machine (docs/design.md, "Cost targets": the
whole command under 1 s).

Two views, both reported:
- in process: `ulp_build.rewrite.rewrite()` against `lief.ELF.parse(); write()`, both with
  their modules already imported;
- whole command: `python -m ulp_build rewrite` against a `python -c` that imports LIEF and
  does the round trip, as a build system would run either.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lief

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.results import record
from ulp_build.prepare.rewrite import rewrite


def system_libc() -> Path:
    out = subprocess.run(["gcc", "-print-file-name=libc.so.6"], capture_output=True, text=True)
    return Path(out.stdout.strip()).resolve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--command-rounds", type=int, default=5)
    args = parser.parse_args()
    lief.logging.disable()

    with tempfile.TemporaryDirectory() as tmp:
        libc = Path(tmp) / "libc.so.6"
        shutil.copy(system_libc(), libc)
        ours_out, lief_out = Path(tmp) / "ours.so", Path(tmp) / "lief.so"

        ours, theirs = [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            rewrite(libc, ours_out)
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            lief.ELF.parse(str(libc)).write(str(lief_out))
            theirs.append(time.perf_counter() - t)

        script = (
            f"import lief; lief.logging.disable();"
            f" lief.ELF.parse({str(libc)!r}).write({str(lief_out)!r})"
        )
        cmd_ours, cmd_theirs = [], []
        for _ in range(args.command_rounds):
            t = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "ulp_build", "rewrite", str(libc), "-o", str(ours_out)],
                check=True,
                capture_output=True,
            )
            cmd_ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
            cmd_theirs.append(time.perf_counter() - t)

    # The bound is absolute since the rewrite searches the code for the addresses a library
    # takes of its functions (docs/design.md, "Cost targets"); the ratios are reported.
    for label, a, b, target in (
        ("rewrite libc.so.6, in process", ours, theirs, "report"),
        ("rewrite libc.so.6, whole command", cmd_ours, cmd_theirs, "< 1 s"),
    ):
        ma, mb = statistics.median(a), statistics.median(b)
        print(
            f"{label}: ulp {ma * 1000:.1f} ms, LIEF round trip {mb * 1000:.1f} ms,"
            f" ratio {ma / mb:.2f}x (median of {len(a)})"
        )
        record(
            label, f"{ma * 1000:.1f} ms", f"LIEF parse+write {mb * 1000:.1f} ms", ma / mb, target
        )


if __name__ == "__main__":
    main()
