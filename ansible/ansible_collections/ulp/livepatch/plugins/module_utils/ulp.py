"""Running `ulp` on the managed host, for the modules of this collection: the command comes
from the `executable` option, and every answer is read from `--json` output, never from the
lines meant for people.

`ulp` prints its JSON on stdout and its errors, one line each, on stderr: a failure without
JSON (a patch file it refuses, a process without the runtime given to `ulp patches -p`) is
reported with those lines, which already name the file or the process.
"""

from __future__ import annotations

import json
from typing import Any

# The `executable` option, shared by every module of the collection.
EXECUTABLE_OPTION: dict[str, Any] = {"type": "list", "elements": "str", "default": ["ulp"]}
# The `patch_dir` option, of the modules that read or change installed patches.
PATCH_DIR_OPTION: dict[str, Any] = {"type": "path"}


class UlpFailed(Exception):
    """`ulp` ended without the JSON it was asked for (the message is what it said), or an
    option names something that does not exist."""


def run_json(module: Any, *args: str) -> tuple[int, Any, str]:
    """Run `ulp ARGS --json`: its exit status, its JSON and its stderr. Raises UlpFailed when
    there is no JSON to read."""
    rc, out, err = module.run_command([*_argv(module), *args, "--json"])
    try:
        return rc, json.loads(out), err
    except ValueError:
        raise UlpFailed(_said(module, args, rc, err)) from None


def run(module: Any, *args: str) -> str:
    """Run `ulp ARGS`, a command that has no `--json` (`install`, `uninstall`): what it printed.
    Raises UlpFailed when it failed."""
    rc, out, err = module.run_command([*_argv(module), *args])
    if rc != 0:
        raise UlpFailed(_said(module, args, rc, err))
    return out


def _argv(module: Any) -> list[str]:
    argv = list(module.params["executable"])
    if "/" not in argv[0]:
        # A bare name is looked up on PATH, with Ansible's own message when it is missing.
        argv[0] = module.get_bin_path(argv[0], required=True)
    return argv


def _said(module: Any, args: tuple[str, ...], rc: int, err: str) -> str:
    """Why `ulp ARGS` failed: its reasons (each line of stderr is "ulp: REASON"), or else its
    exit status."""
    said = "; ".join(
        line.strip().removeprefix("ulp: ") for line in err.splitlines() if line.strip()
    )
    return said or f"{' '.join(_argv(module))} {' '.join(args)}: exit status {rc}"


def patches(module: Any, pids: list[int] | None = None) -> tuple[list[dict[str, Any]], str]:
    """What `ulp patches --json` shows: every process with the runtime, or those of `pids`;
    and what it said on stderr (the processes it skipped, one line each)."""
    args = ["patches"]
    for pid in pids or []:
        args += ["-p", str(pid)]
    rc, data, err = run_json(module, *args)
    if rc != 0:
        raise UlpFailed(f"ulp patches: exit status {rc}")
    return data, err


def installed(module: Any, patch_dir: str | None) -> list[dict[str, Any]]:
    """What `ulp patches --installed --json` shows: the patches installed in `patch_dir` (or
    ulp's default directory), each with why processes refuse it, if they do."""
    rc, data, _ = run_json(module, "patches", "--installed", *dir_args(patch_dir))
    if rc != 0:
        raise UlpFailed(f"ulp patches --installed: exit status {rc}")
    return data


def dir_args(patch_dir: str | None) -> list[str]:
    """The `--dir` of `ulp install`, `uninstall` and `patches --installed`, if one is given."""
    return [] if patch_dir is None else ["--dir", patch_dir]
