"""The benchmark results table (bench/RESULTS.md): one row per measurement, replaced when the
same benchmark runs again, with the machine it ran on."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

TABLE = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = """# Benchmark results

Written by the scripts in this directory (see README.md); every ratio is measured side by side
in one run. Targets come from docs/design.md, "Cost targets".

| benchmark | measured | baseline | ratio | target | machine | date |
|---|---|---|---|---|---|---|
"""


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cpus, Python {platform.python_version()}"


def record(benchmark: str, measured: str, baseline: str, ratio: float, target: str) -> None:
    rows = []
    if TABLE.exists():
        rows = [
            line
            for line in TABLE.read_text().splitlines()
            if line.startswith("| ") and not line.startswith(("| benchmark", "|---"))
        ]
    rows = [r for r in rows if r.split(" | ")[0] != f"| {benchmark}"]
    today = datetime.date.today().isoformat()
    rows.append(
        f"| {benchmark} | {measured} | {baseline} | {ratio:.3f}x | {target} |"
        f" {machine()} | {today} |"
    )
    TABLE.write_text(HEADER + "\n".join(sorted(rows)) + "\n")
