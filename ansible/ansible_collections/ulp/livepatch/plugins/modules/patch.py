#!/usr/bin/python
"""ulp.livepatch.patch: apply or revert a live patch in the running processes of a host, with
`ulp trigger --json`, and install or uninstall it for the processes started later (`ulp
install`, `ulp uninstall`), as an Ansible task that changes something only when there is
something to change.

`ulp trigger` is idempotent by itself for one patch: a patch already applied is reported
`already applied`, one to revert that is not `not applied`, and neither touches the process.
`--revert-all LIB` is not (reverting all of nothing is a failure, and reverting all then
applying a patch always makes a new universe), so for it, and for check mode, what each
process would undergo is worked out first from `ulp patches --json` (the active patches of
each library) and `ulp dump --json` (the patch's id and target build-id), and only the
processes that need it are triggered.

Installing is idempotent in `ulp install` too (`already installed`), but uninstalling a patch
that is not installed fails; and neither has `--json`. So what is installed is read first with
`ulp patches --installed --json`, a patch being there when one with its id and target build-id
is, and the commands run only to change something (except `ulp install`, run even then: it
refuses the same id with other contents, and patch files root should not trust).
"""

from __future__ import annotations

import pwd
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ulp.livepatch.plugins.module_utils import ulp

DOCUMENTATION = r"""
---
module: patch
short_description: Apply, revert, install or uninstall a ulp live patch
version_added: "0.1.0"
description:
  - Applies a patch (a C(.ulp) metadata file made by C(ulp pack), next to its patch object) to
    running processes of the managed host that have the ulp runtime and the patch's target
    library loaded, or reverts it, by running C(ulp trigger --json) there.
  - Idempotent. A process where the patch is applied already (or, to revert, is not applied)
    is left alone, and the task reports C(changed=false) when every process was.
  - With O(revert_all), every patch of a library is reverted first, and O(patch), if given,
    applied in the same step. A process where exactly that patch is the only active one of the
    library (or, without O(patch), where no patch of it is active) is left alone; but with
    O(all) and O(patch), every process with the target is triggered, and changed.
  - Fails when the trigger failed in any process, naming each such process and its reason.
    The processes where it succeeded are changed all the same and listed in RV(processes).
  - With O(installed), the patch is also installed into the patch directory (C(ulp install)),
    before it is applied to the running processes, so that every process started later with
    the runtime applies it itself; to revert (O(state=reverted) or a reverse patch), it is
    uninstalled (C(ulp uninstall)) before the running processes are reverted. Without O(pids)
    and O(all), the task only installs or uninstalls. C(ulp install) refuses patch files
    that root should not trust, and the task then fails before any process is touched.
  - The patch files themselves are not copied by this module; copy the C(.ulp) file and its
    patch object with M(ansible.builtin.copy), owned by root, in a directory only root may
    write.
options:
  patch:
    description:
      - The patch metadata file (C(fix.ulp)) on the managed host. A reverse patch
        (C(fix.rev.ulp)) reverts, whatever O(state) says.
      - Required unless O(revert_all) is given.
    type: path
  state:
    description:
      - V(applied) applies O(patch); V(reverted) reverts it (C(--revert)).
    type: str
    choices: [applied, reverted]
    default: applied
  revert_all:
    description:
      - Revert every patch of this library (C(--revert-all)), then apply O(patch) if one is
        given. The library is named by its path, file name or SONAME (in check mode, and to
        tell whether anything is left to revert, by its path or file name only).
    type: str
  pids:
    description:
      - The processes to patch. Exactly one of O(pids) and O(all) is required, unless
        O(installed) is given.
    type: list
    elements: int
  all:
    description:
      - Every process that has the runtime and the target loaded (C(--all)).
    type: bool
    default: false
  user:
    description:
      - With O(all), only the processes of this user (a name or a uid).
    type: str
  installed:
    description:
      - Also install O(patch) into the patch directory (or, to revert, uninstall it), for the
        processes started later. Installing needs root, and O(patch) and its object root's
        files in directories only root may write. With O(revert_all), only O(patch) is
        installed; other installed patches of the library stay installed.
      - A patch is installed when one with its id and target build-id is in the directory.
        Uninstalling removes the installed patches with its id (C(ulp uninstall ID)).
    type: bool
    default: false
  timeout:
    description: Seconds each stop and each call into a process may take (C(--timeout)).
    type: float
  wait:
    description: Seconds to wait for a transition to finish (C(--wait)).
    type: float
  jobs:
    description: With O(all), processes patched at once (C(--jobs)).
    type: int
  object_outside:
    description:
      - Load a patch object that lies outside the directory of O(patch) (C(--object-outside)).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    details:
      - Reads C(ulp dump --json), C(ulp patches --json) and C(ulp patches --installed --json)
        and changes nothing. The trigger's rules on who owns the patch files are not checked
        then, nor, for O(installed), whether an installed patch of the same id and build has
        the same contents.
notes:
  - C(ulp trigger) attaches to the processes with ptrace; run the task as root (C(become))
    unless every process belongs to the connecting user.
extends_documentation_fragment:
  - ulp.livepatch.ulp
  - ulp.livepatch.ulp.patch_dir
author:
  - ulp_build developers
"""

EXAMPLES = r"""
- name: Apply the fix to the server's processes
  ulp.livepatch.patch:
    patch: /srv/patches/libfoo-fix-1/fix.ulp
    all: true
    user: www-data
  become: true

- name: Install the fix for the processes started later, and apply it to those running
  ulp.livepatch.patch:
    patch: /srv/patches/libfoo-fix-1/fix.ulp
    installed: true
    all: true
  become: true

- name: Uninstall it, and revert it where it runs
  ulp.livepatch.patch:
    patch: /srv/patches/libfoo-fix-1/fix.ulp
    state: reverted
    installed: true
    all: true
  become: true

- name: Revert it in one process
  ulp.livepatch.patch:
    patch: /srv/patches/libfoo-fix-1/fix.ulp
    state: reverted
    pids: [4242]

- name: Replace every patch of libfoo.so by fix2, in one step
  ulp.livepatch.patch:
    revert_all: libfoo.so
    patch: /srv/patches/libfoo-fix-2/fix2.ulp
    all: true
"""

RETURN = r"""
processes:
  description:
    - One entry per process, as C(ulp trigger --json) gives it. Its status is C(applied),
      C(reverted), C(already applied), C(not applied), C(exited) or C(failed); in check mode
      C(would apply) or C(would revert) stands for what would change.
  returned: always
  type: list
  elements: dict
  sample:
    - pid: 4242
      status: applied
      message: apply libfoo-fix-1
      universe: 2
      pending: []
      uid: 0
installed:
  description:
    - With O(installed), what was done in the patch directory - its status, C(installed),
      C(already installed), C(uninstalled) or C(not installed) (in check mode C(would install)
      or C(would uninstall) for what would change), and the path of the installed file
      (null when there is none).
  returned: when O(installed) is true
  type: dict
  sample:
    status: installed
    path: /var/lib/ulp/patches/3f2a9c0d51e7.000001.libfoo-fix-1.ulpreq
"""

CHANGES = (
    *("applied", "reverted", "would apply", "would revert"),
    *("installed", "uninstalled", "would install", "would uninstall"),
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "patch": {"type": "path"},
            "state": {"type": "str", "choices": ["applied", "reverted"], "default": "applied"},
            "revert_all": {"type": "str"},
            "pids": {"type": "list", "elements": "int"},
            "all": {"type": "bool", "default": False},
            "user": {"type": "str"},
            "installed": {"type": "bool", "default": False},
            "patch_dir": ulp.PATCH_DIR_OPTION,
            "executable": ulp.EXECUTABLE_OPTION,
            "timeout": {"type": "float"},
            "wait": {"type": "float"},
            "jobs": {"type": "int"},
            "object_outside": {"type": "bool", "default": False},
        },
        required_one_of=[("patch", "revert_all")],
        supports_check_mode=True,
    )
    p = module.params
    if (p["pids"] and p["all"]) or not (p["pids"] or p["all"] or p["installed"]):
        module.fail_json(msg="give the processes: either pids or all=true")
    if p["user"] is not None and not p["all"]:
        module.fail_json(msg="user goes with all=true")
    if p["revert_all"] and p["patch"] and p["state"] == "reverted":
        module.fail_json(msg="revert_all with a patch applies that patch; it cannot revert it")
    if p["installed"] and not p["patch"]:
        module.fail_json(msg="installed=true needs the patch to install or uninstall")
    if p["patch_dir"] is not None and not p["installed"]:
        module.fail_json(msg="patch_dir goes with installed=true")
    # Installed first: a process that starts while the running ones are being patched then
    # applies the patch itself (or, to revert, no longer does).
    installed = None
    try:
        installed = _installation(module) if p["installed"] else None
        results = _processes(module) if p["pids"] or p["all"] else []
    except ulp.UlpFailed as exc:
        changed = installed is not None and installed["status"] in CHANGES
        module.fail_json(msg=str(exc), changed=changed, **_installed_result(installed))
    results.sort(key=lambda r: r["pid"])
    changed = any(r["status"] in CHANGES for r in results) or (
        installed is not None and installed["status"] in CHANGES
    )
    for r in results:
        if r.get("pending"):
            held = ", ".join(f"{h['tid']} ({h['name']}, {h['reason']})" for h in r["pending"])
            module.warn(f"process {r['pid']}: transition pending, held by thread {held}")
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        why = "; ".join(_named(r) for r in failed)
        would = "would fail" if module.check_mode else "failed"
        module.fail_json(
            msg=f"ulp trigger {would} in {len(failed)} of {len(results)} process(es): {why}",
            changed=changed,
            processes=results,
            **_installed_result(installed),
        )
    module.exit_json(changed=changed, processes=results, **_installed_result(installed))


def _processes(module: AnsibleModule) -> list[dict[str, Any]]:
    """Apply or revert the patch in the processes: what each underwent (or, in check mode,
    would)."""
    p = module.params
    # With `all`, a process whose target the runtime has not seen called yet is not
    # listed by `ulp patches`: only the trigger's own scan finds it, for an apply.
    if module.check_mode or (p["revert_all"] and (p["pids"] or not p["patch"])):
        results = _planned(module)
        if not module.check_mode:
            todo = [r["pid"] for r in results if r["status"] in CHANGES]
            results = [r for r in results if r["status"] not in CHANGES]
            results += _trigger(module, todo) if todo else []
        return results
    return _trigger(module, p["pids"])


def _installation(module: AnsibleModule) -> dict[str, Any]:
    """Install the patch into the patch directory (or, to revert, uninstall it) unless it
    already is (is not): what was done, or in check mode what would be. An installed patch
    is the one with the same id and target build-id."""
    p = module.params
    where = ulp.dir_args(p["patch_dir"])
    patch = ulp.run_json(module, "dump", p["patch"])[1]
    key = (patch["id"], patch["target_build_id"])
    present = _installed_as(module, key)
    if p["state"] == "reverted" or patch["kind"] == "revert":
        if not present:
            return {"status": "not installed", "path": None}
        if not module.check_mode:
            # By id, as `ulp uninstall` takes it: the patch of this id for every build goes.
            ulp.run(module, "uninstall", patch["id"], *where)
        status = "would uninstall" if module.check_mode else "uninstalled"
        return {"status": status, "path": present[0]["path"]}
    if module.check_mode:
        status, entry = ("already installed", present[0]) if present else ("would install", None)
    else:
        # Even when it is there: `ulp install` refuses the same id with other contents, and
        # patch files root should not trust.
        ulp.run(module, "install", p["patch"], *where)
        status = "already installed" if present else "installed"
        entry = (present or _installed_as(module, key))[0]
    if entry is not None and entry["refusal"]:
        module.warn(f"installed patch {entry['path']}: processes refuse it: {entry['refusal']}")
    return {"status": status, "path": None if entry is None else entry["path"]}


def _installed_as(module: AnsibleModule, key: tuple[str, str]) -> list[dict[str, Any]]:
    """The installed patches with this (id, target build-id)."""
    found = ulp.installed(module, module.params["patch_dir"])
    return [i for i in found if (i["id"], i["target_build_id"]) == key]


def _installed_result(installed: dict[str, Any] | None) -> dict[str, Any]:
    """The `installed` return value, when the task installs or uninstalls."""
    return {} if installed is None else {"installed": installed}


def _trigger(module: AnsibleModule, pids: list[int] | None) -> list[dict[str, Any]]:
    """`ulp trigger --json` in `pids`, or in every candidate process (`all`)."""
    p = module.params
    args = ["trigger"]
    if p["patch"]:
        args.append(p["patch"])
    if pids:
        for pid in pids:
            args += ["-p", str(pid)]
    else:
        args.append("--all")
        if p["user"] is not None:
            args += ["--user", p["user"]]
    if p["state"] == "reverted":
        args.append("--revert")
    if p["revert_all"]:
        args += ["--revert-all", p["revert_all"]]
    if p["object_outside"]:
        args.append("--object-outside")
    for option in ("timeout", "wait", "jobs"):
        if p[option] is not None:
            args += [f"--{option}", str(p[option])]
    return ulp.run_json(module, *args)[1]


def _planned(module: AnsibleModule) -> list[dict[str, Any]]:
    """What the trigger would do in each process, from what `ulp patches` shows of it."""
    p = module.params
    patch = ulp.run_json(module, "dump", p["patch"])[1] if p["patch"] else None
    reverting = p["state"] == "reverted" or (patch is not None and patch["kind"] == "revert")
    found: list[tuple[int, dict[str, Any] | None, str]] = []
    if p["pids"]:
        for pid in p["pids"]:
            try:
                found.append((pid, ulp.patches(module, [pid])[0][0], ""))
            except ulp.UlpFailed as exc:  # `ulp patches -p` refuses a process without runtime
                found.append((pid, None, str(exc)))
    else:
        uid = _uid(p["user"])
        found = [
            (proc["pid"], proc, "")
            for proc in ulp.patches(module)[0]
            if uid is None or _owner(proc["pid"]) == uid
        ]
    out = []
    for pid, proc, error in found:
        if proc is None:
            out.append(_result(pid, "failed", error))
            continue
        library = _target(proc, patch, p["revert_all"])
        if library is not None:
            out.append(_plan(pid, library, patch, reverting, p["revert_all"]))
        elif p["pids"]:
            # `ulp patches` lists a library once the runtime has seen a call into it: one
            # not listed has no patch active, and may or may not be loaded (the trigger
            # finds out). With `all`, such a process is left out: likely not a candidate.
            plan = _plan(pid, {"patches": []}, patch, reverting, p["revert_all"])
            name = patch["target_name"] if patch is not None else p["revert_all"]
            plan["message"] += f" ({name} not seen by the runtime yet: loaded or not)"
            out.append(plan)
    return out


def _target(
    process: dict[str, Any], patch: dict[str, Any] | None, revert_all: str | None
) -> dict[str, Any] | None:
    """The library of `process` the operation is about: the patch's target (by build-id, as
    the trigger finds it), or the library `revert_all` names (by path or file name; `ulp
    patches` does not show SONAMEs)."""
    for library in process["libraries"]:
        if patch is not None:
            if library["build_id"] == patch["target_build_id"]:
                return library
        elif revert_all in (library["path"], Path(library["path"]).name):
            return library
    return None


def _plan(
    pid: int,
    library: dict[str, Any],
    patch: dict[str, Any] | None,
    reverting: bool,
    revert_all: str | None,
) -> dict[str, Any]:
    """What the trigger would do in one process, given its target library's active patches."""
    active = [applied["id"] for applied in library["patches"]]
    if patch is None:
        if active:
            return _result(pid, "would revert", f"revert all patches of {revert_all}")
        return _result(pid, "not applied", f"process {pid}: no patch is applied to {revert_all}")
    pid_id = f"process {pid}: patch {patch['id']}"
    if revert_all:
        if active == [patch["id"]]:
            return _result(pid, "already applied", f"{pid_id} is the only one applied")
        then = f"revert all patches of {revert_all}, then apply {patch['id']}"
        return _result(pid, "would apply", then)
    if reverting:
        if patch["id"] in active:
            return _result(pid, "would revert", f"revert {patch['id']}")
        return _result(pid, "not applied", f"{pid_id} is not applied")
    if patch["id"] in active:
        return _result(pid, "already applied", f"{pid_id} is already applied")
    return _result(pid, "would apply", f"apply {patch['id']}")


def _named(result: dict[str, Any]) -> str:
    """A failure's reason, naming its process (most of ulp's reasons start with it)."""
    pid, message = result["pid"], result["message"]
    return message if message.startswith(f"process {pid}:") else f"process {pid}: {message}"


def _result(pid: int, status: str, message: str) -> dict[str, Any]:
    return {"pid": pid, "status": status, "message": message}


def _uid(user: str | None) -> int | None:
    if user is None or user.isdigit():
        return None if user is None else int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise ulp.UlpFailed(f"user {user}: no such user") from None


def _owner(pid: int) -> int | None:
    """The real user id of `pid` (what `ulp trigger --user` compares), None once it exited."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


if __name__ == "__main__":
    main()
