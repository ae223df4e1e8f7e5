"""`ulp` as users run it, for the benchmarks that time whole commands: the code of the console
script pip installs (`from ulp_build.cli import console`), on this tree, with its bytecode cached as
an installed package has it (PYTHONDONTWRITEBYTECODE, if set, would have every run compile the
sources again: tens of milliseconds that no installed `ulp` pays)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = "import sys; from ulp_build.cli import console; sys.exit(console())"


def environment(pycache: Path) -> dict[str, str]:
    """The environment to run `ulp` in: this tree first, bytecode cached under `pycache`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def argv(*args: str) -> list[str]:
    return [sys.executable, "-c", SCRIPT, *args]


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv(*args), env=env, capture_output=True, text=True, check=False)
