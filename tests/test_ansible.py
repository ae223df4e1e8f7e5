"""The Ansible collection (ansible/ansible_collections/ulp/livepatch): `ansible-playbook` run
against an inventory of several local hosts, each given its own real patchee process, with the
collection's modules running this checkout's `ulp`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from live import OVERFLOWED, SATURATED, Process, patch_file, running

HOSTS = ("alpha", "beta", "gamma")
PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")


def ansible_env(tmp: Path) -> dict[str, str]:
    """Ansible with this collection, and nothing of it left outside `tmp`."""
    return dict(
        os.environ,
        ANSIBLE_CONFIG=str(tmp / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(REPO / "ansible"),
        ANSIBLE_LOCAL_TEMP=str(tmp / "local-temp"),
        ANSIBLE_REMOTE_TEMP=str(tmp / "remote-temp"),
        ANSIBLE_NOCOLOR="1",
        HOME=str(tmp / "home"),
        LC_ALL="C.UTF-8",
        PYTHONPATH=str(REPO),  # `python -m ulp_build`: this checkout's
    )


def prepare(tmp: Path) -> None:
    (tmp / "home").mkdir()
    (tmp / "ansible.cfg").write_text("")  # no configuration but this one (empty)


class Fleet:
    """Local hosts, one patchee each, and a way to run a play against them."""

    def __init__(self, tmp: Path, tree: Path, processes: dict[str, Process]) -> None:
        self.tmp, self.tree, self.processes = tmp, tree, processes
        self.out = tmp / "out"
        self.out.mkdir()
        prepare(tmp)
        inventory = {
            "all": {
                "hosts": {name: {"target_pid": p.pid} for name, p in processes.items()},
                "vars": {
                    "ansible_connection": "local",
                    "ansible_python_interpreter": sys.executable,
                    "ulp_command": [sys.executable, "-m", "ulp_build"],
                    "out": str(self.out),
                },
            }
        }
        (tmp / "inventory.yml").write_text(json.dumps(inventory))

    def play(self, *tasks: dict[str, Any], check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run `tasks` on every host; each task's registered result is saved per host."""
        steps: list[dict[str, Any]] = []
        for i, task in enumerate(tasks):
            steps.append({**task, "register": f"result{i}"})
            steps.append(
                {
                    "ansible.builtin.copy": {
                        "content": f"{{{{ result{i} | to_json }}}}",
                        "dest": f"{{{{ out }}}}/{{{{ inventory_hostname }}}}.{i}.json",
                    },
                    "check_mode": False,
                    "changed_when": False,
                }
            )
        playbook = self.tmp / "play.yml"
        playbook.write_text(json.dumps([{"hosts": "all", "gather_facts": False, "tasks": steps}]))
        cmd = [str(PLAYBOOK), "-i", str(self.tmp / "inventory.yml"), str(playbook)]
        return subprocess.run(
            [*cmd, *(["--check"] if check else [])],
            cwd=self.tmp,
            env=ansible_env(self.tmp),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def saved(self, host: str, task: int = 0) -> dict[str, Any]:
        return json.loads((self.out / f"{host}.{task}.json").read_text())

    def answers(self) -> dict[str, str]:
        return {name: p.ask("square 100000") for name, p in self.processes.items()}


def patch_task(tree: Path, state: str = "applied") -> dict[str, Any]:
    return {
        "ulp.livepatch.patch": {
            "patch": patch_file(tree, "square_fix"),
            "state": state,
            "pids": ["{{ target_pid }}"],
            "executable": "{{ ulp_command }}",
        }
    }


def recap(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, int]]:
    """The PLAY RECAP: per host, its counts (ok, changed, failed, ...)."""
    out = {}
    for host, counts in re.findall(r"^(\w+)\s+:\s+(ok=.*)$", result.stdout, re.M):
        out[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    assert out, result.stdout + result.stderr
    return out


@pytest.fixture
def fleet(tmp_path: Path, tree: Path, patchee: Path, runtime: Path) -> Iterator[Fleet]:
    lib = str(tree / "basic" / "libbasic.so")
    with ExitStack() as stack:
        processes = {name: stack.enter_context(running(patchee, runtime, lib)) for name in HOSTS}
        fleet = Fleet(tmp_path, tree, processes)
        # The old behaviour; and a call, after which `ulp patches` lists the library.
        assert fleet.answers() == dict.fromkeys(HOSTS, str(OVERFLOWED))
        yield fleet


def test_apply_and_revert_are_idempotent(fleet: Fleet) -> None:
    applied = fleet.play(patch_task(fleet.tree))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert all(counts["changed"] == 1 for counts in recap(applied).values()), applied.stdout
    assert fleet.answers() == dict.fromkeys(HOSTS, str(SATURATED))
    for name, p in fleet.processes.items():
        assert [(r["pid"], r["status"]) for r in fleet.saved(name)["processes"]] == [
            (p.pid, "applied")
        ]

    again = fleet.play(patch_task(fleet.tree))
    assert again.returncode == 0, again.stdout + again.stderr
    assert all(counts["changed"] == 0 for counts in recap(again).values()), again.stdout
    assert fleet.saved("alpha")["processes"][0]["status"] == "already applied"

    reverted = fleet.play(patch_task(fleet.tree, "reverted"))
    assert reverted.returncode == 0, reverted.stdout + reverted.stderr
    assert all(counts["changed"] == 1 for counts in recap(reverted).values()), reverted.stdout
    assert fleet.answers() == dict.fromkeys(HOSTS, str(OVERFLOWED))

    # `ulp trigger -p` fails a revert of what is not applied; the module calls it done.
    still = fleet.play(patch_task(fleet.tree, "reverted"))
    assert still.returncode == 0, still.stdout + still.stderr
    assert all(counts["changed"] == 0 for counts in recap(still).values()), still.stdout
    assert fleet.saved("beta")["processes"][0]["status"] == "not applied"
    assert fleet.answers() == dict.fromkeys(HOSTS, str(OVERFLOWED))


def test_check_mode_reports_without_changing(fleet: Fleet) -> None:
    # One host patched for real first: check mode must tell it apart from the others.
    alpha = fleet.processes["alpha"]
    first = fleet.play({**patch_task(fleet.tree), "when": "inventory_hostname == 'alpha'"})
    assert first.returncode == 0, first.stdout + first.stderr

    checked = fleet.play(patch_task(fleet.tree), check=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    counts = recap(checked)
    assert (counts["alpha"]["changed"], counts["beta"]["changed"]) == (0, 1), checked.stdout
    assert fleet.saved("alpha")["processes"][0]["status"] == "already applied"
    (beta,) = fleet.saved("beta")["processes"]
    assert (beta["pid"], beta["status"]) == (fleet.processes["beta"].pid, "would apply")
    assert beta["message"].startswith("apply basic-square-saturate"), beta
    assert fleet.answers() == {
        "alpha": str(SATURATED),
        "beta": str(OVERFLOWED),
        "gamma": str(OVERFLOWED),
    }

    # And for a revert: only the patched host would change.
    back = fleet.play(patch_task(fleet.tree, "reverted"), check=True)
    assert back.returncode == 0, back.stdout + back.stderr
    counts = recap(back)
    assert (counts["alpha"]["changed"], counts["gamma"]["changed"]) == (1, 0), back.stdout
    assert alpha.ask("square 100000") == str(SATURATED)


def test_a_host_without_the_runtime_fails_alone(
    tmp_path: Path, tree: Path, patchee: Path, runtime: Path
) -> None:
    lib = str(tree / "basic" / "libbasic.so")
    with (
        running(patchee, runtime, lib) as a,
        running(patchee, runtime, lib) as b,
        running(patchee, None, lib) as bare,
    ):
        fleet = Fleet(tmp_path, tree, {"alpha": a, "beta": b, "gamma": bare})
        for check in (True, False):
            result = fleet.play(patch_task(tree), check=check)
            assert result.returncode != 0, result.stdout + result.stderr
            counts = recap(result)
            assert counts["gamma"]["failed"] == 1, result.stdout
            assert counts["alpha"]["failed"] == counts["beta"]["failed"] == 0, result.stdout
            fatal = [line for line in result.stdout.splitlines() if "fatal: [gamma]" in line]
            assert len(fatal) == 1, result.stdout
            assert f"process {bare.pid}: runtime not loaded" in fatal[0], fatal[0]
        assert a.ask("square 100000") == b.ask("square 100000") == str(SATURATED)
        assert bare.ask("square 100000") == str(OVERFLOWED)


def test_facts_give_the_processes_and_their_patches(fleet: Fleet) -> None:
    result = fleet.play(
        {**patch_task(fleet.tree), "when": "inventory_hostname == 'beta'"},
        {
            "ulp.livepatch.patch_facts": {
                "pids": ["{{ target_pid }}"],
                "executable": "{{ ulp_command }}",
            }
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name, p in fleet.processes.items():
        facts = fleet.saved(name, 1)["ansible_facts"]["ulp_processes"]
        assert [process["pid"] for process in facts] == [p.pid]
        (library,) = [lib for lib in facts[0]["libraries"] if lib["path"].endswith("/libbasic.so")]
        active = [patch["id"] for patch in library["patches"]]
        assert active == (["basic-square-saturate"] if name == "beta" else [])


def install_task(tree: Path, patch_dir: Path, state: str = "applied") -> dict[str, Any]:
    """The patch task with `installed`, into a patch directory of each host's own (the hosts
    are local: one shared directory would be changed by whichever host came first)."""
    task = patch_task(tree, state)
    task["ulp.livepatch.patch"] |= {
        "installed": True,
        "patch_dir": f"{patch_dir}/{{{{ inventory_hostname }}}}",
    }
    return task


def installed_files(patch_dir: Path) -> dict[str, list[str]]:
    return {
        name: sorted(f.name for f in (patch_dir / name).iterdir())
        for name in HOSTS
        if (patch_dir / name).exists()
    }


def test_install_and_uninstall_are_idempotent(fleet: Fleet) -> None:
    where = fleet.tmp / "installed"

    checked = fleet.play(install_task(fleet.tree, where), check=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert all(counts["changed"] == 1 for counts in recap(checked).values()), checked.stdout
    assert fleet.saved("alpha")["installed"] == {"status": "would install", "path": None}
    assert not where.exists()
    assert fleet.answers() == dict.fromkeys(HOSTS, str(OVERFLOWED))

    done = fleet.play(install_task(fleet.tree, where))
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(counts["changed"] == 1 for counts in recap(done).values()), done.stdout
    files = installed_files(where)
    assert list(files) == list(HOSTS), files
    for name, p in fleet.processes.items():
        (file,) = files[name]
        assert re.fullmatch(r"[0-9a-f]+\.000001\.basic-square-saturate\.ulpreq", file), file
        result = fleet.saved(name)
        assert result["installed"] == {"status": "installed", "path": str(where / name / file)}
        assert [(r["pid"], r["status"]) for r in result["processes"]] == [(p.pid, "applied")]
    assert fleet.answers() == dict.fromkeys(HOSTS, str(SATURATED))

    again = fleet.play(
        install_task(fleet.tree, where),
        {
            "ulp.livepatch.patch_facts": {
                "pids": ["{{ target_pid }}"],
                "patch_dir": f"{where}/{{{{ inventory_hostname }}}}",
                "executable": "{{ ulp_command }}",
            }
        },
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert all(counts["changed"] == 0 for counts in recap(again).values()), again.stdout
    assert fleet.saved("beta")["installed"]["status"] == "already installed"
    assert fleet.saved("beta")["processes"][0]["status"] == "already applied"
    assert installed_files(where) == files
    (fact,) = fleet.saved("gamma", 1)["ansible_facts"]["ulp_installed_patches"]
    assert (fact["path"], fact["id"], fact["refusal"]) == (
        str(where / "gamma" / files["gamma"][0]),
        "basic-square-saturate",
        None,
    )

    back = fleet.play(install_task(fleet.tree, where, "reverted"), check=True)
    assert back.returncode == 0, back.stdout + back.stderr
    assert all(counts["changed"] == 1 for counts in recap(back).values()), back.stdout
    assert fleet.saved("alpha")["installed"]["status"] == "would uninstall"
    assert installed_files(where) == files
    assert fleet.answers() == dict.fromkeys(HOSTS, str(SATURATED))

    for status, changed in (("uninstalled", 1), ("not installed", 0)):
        gone = fleet.play(install_task(fleet.tree, where, "reverted"))
        assert gone.returncode == 0, gone.stdout + gone.stderr
        counts = recap(gone)
        assert all(c["changed"] == changed for c in counts.values()), gone.stdout
        assert fleet.saved("gamma")["installed"]["status"] == status
        assert installed_files(where) == {name: [] for name in HOSTS}
        assert fleet.answers() == dict.fromkeys(HOSTS, str(OVERFLOWED))


def test_a_patch_root_should_not_trust_is_not_installed(fleet: Fleet) -> None:
    untrusted = fleet.tmp / "untrusted"
    shutil.copytree(Path(patch_file(fleet.tree, "square_fix")).parent, untrusted)
    (untrusted / "patch.ulp").chmod(0o666)
    where = fleet.tmp / "installed"
    task = install_task(fleet.tree, where)
    task["ulp.livepatch.patch"]["patch"] = str(untrusted / "patch.ulp")
    result = fleet.play(task)
    assert result.returncode != 0, result.stdout + result.stderr
    assert all(counts["failed"] == 1 for counts in recap(result).values()), result.stdout
    fatal = [line for line in result.stdout.splitlines() if line.startswith("fatal: [alpha]")]
    assert len(fatal) == 1, result.stdout
    reason = f"{untrusted / 'patch.ulp'}: file writable by every user (mode 666)"
    assert f"{reason}: every process would refuse it once installed" in fatal[0], fatal[0]
    assert not where.exists()
    assert fleet.answers() == dict.fromkeys(HOSTS, str(OVERFLOWED))


def test_the_modules_document_themselves(tmp_path: Path) -> None:
    """`ansible-doc` parses each module's DOCUMENTATION, EXAMPLES and RETURN."""
    prepare(tmp_path)
    for module in ("ulp.livepatch.patch", "ulp.livepatch.patch_facts"):
        result = subprocess.run(
            [str(PLAYBOOK.with_name("ansible-doc")), module],
            cwd=tmp_path,
            env=ansible_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0 and "ERROR" not in result.stderr, result.stderr
        assert f"MODULE {module}" in result.stdout.replace("\x1b[1m", "").replace("\x1b[0m", "")
