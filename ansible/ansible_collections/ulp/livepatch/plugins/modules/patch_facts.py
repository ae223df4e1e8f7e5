#!/usr/bin/python
"""ulp.livepatch.patch_facts: what `ulp patches --json` shows of a host, as the fact
`ulp_processes`: the processes with the runtime, their prepared libraries, the patches active
in each, and the transitions not finished yet; and what `ulp patches --installed --json` shows,
as `ulp_installed_patches`. It only reads (no `--finish`), so it runs in check mode as it does
otherwise.
"""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ulp.livepatch.plugins.module_utils import ulp

DOCUMENTATION = r"""
---
module: patch_facts
short_description: Gather the processes with the ulp runtime and their live patches
version_added: "0.1.0"
description:
  - Runs C(ulp patches --json) on the managed host and sets the fact C(ulp_processes), and
    C(ulp patches --installed --json) for the fact C(ulp_installed_patches).
  - Without O(pids), every process with the runtime that the connecting user may read; a
    process that cannot be read is skipped with a warning naming it.
  - With O(pids), those processes; the task fails if one of them has no runtime.
options:
  pids:
    description: Only these processes.
    type: list
    elements: int
attributes:
  check_mode:
    support: full
  facts:
    support: full
notes:
  - Run it as root (C(become)) to see every user's processes.
extends_documentation_fragment:
  - ulp.livepatch.ulp
  - ulp.livepatch.ulp.patch_dir
author:
  - ulp_build developers
"""

EXAMPLES = r"""
- name: Gather the live patches
  ulp.livepatch.patch_facts:
  become: true

- name: Show each process and the patches active in it
  ansible.builtin.debug:
    msg: >-
      {{ item.pid }} {{ item.command }}:
      {{ item.libraries | map(attribute='patches') | flatten | map(attribute='id') | list }}
  loop: "{{ ulp_processes }}"

- name: No installed patch is refused
  ansible.builtin.assert:
    that: ulp_installed_patches | selectattr('refusal') | list == []
"""

RETURN = r"""
ansible_facts:
  description: The facts set.
  returned: always
  type: dict
  contains:
    ulp_processes:
      description:
        - One entry per process with the runtime, as C(ulp patches --json) gives it - pid,
          command and universe, and its libraries, each with path, build_id,
          patchable_functions, the active patches (id, description, object, applied,
          universe, functions), and its transition (none, done or pending, with the
          universe of its last change and the threads that hold it).
      returned: always
      type: list
      elements: dict
      sample:
        - pid: 4242
          command: ./server
          universe: 2
          libraries:
            - path: /srv/lib/libfoo.so
              build_id: 3f2a9c0d51e7
              patchable_functions: 14
              patches:
                - id: libfoo-fix-1
                  description: Fix off-by-one in foo_parse
                  object: /srv/patches/libfoo-fix-1/fix.so
                  applied: "2026-11-26T11:20:03"
                  universe: 2
                  functions: 1
              transition: done
              universe: 2
              holders: []
    ulp_installed_patches:
      description:
        - One entry per patch installed in the patch directory, in the order processes
          apply them, as C(ulp patches --installed --json) gives it - path, id,
          description, target_build_id, and refusal (null, or why processes refuse the file).
      returned: always
      type: list
      elements: dict
      sample:
        - path: /var/lib/ulp/patches/3f2a9c0d51e7.000001.libfoo-fix-1.ulpreq
          id: libfoo-fix-1
          description: Fix off-by-one in foo_parse
          target_build_id: 3f2a9c0d51e7
          refusal: null
"""


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "pids": {"type": "list", "elements": "int"},
            "patch_dir": ulp.PATCH_DIR_OPTION,
            "executable": ulp.EXECUTABLE_OPTION,
        },
        supports_check_mode=True,
    )
    try:
        processes, said = ulp.patches(module, module.params["pids"])
        installed = ulp.installed(module, module.params["patch_dir"])
    except ulp.UlpFailed as exc:
        module.fail_json(msg=str(exc))
    for line in said.splitlines():
        if line.strip():
            module.warn(line.strip())
    facts = {"ulp_processes": processes, "ulp_installed_patches": installed}
    module.exit_json(changed=False, ansible_facts=facts)


if __name__ == "__main__":
    main()
