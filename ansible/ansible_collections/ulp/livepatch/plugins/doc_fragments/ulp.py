"""The options every module of the collection shares, documented once."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  executable:
    description:
      - The C(ulp) command on the managed host - a path or a name looked up on E(PATH), or a
        list of a program and its first arguments (such as C([python3, -m, ulp_build])).
    type: list
    elements: str
    default: [ulp]
requirements:
  - ulp (ulp_build) on the managed host
"""

    # The modules that read or change installed patches.
    PATCH_DIR = r"""
options:
  patch_dir:
    description:
      - The directory of installed patches (C(ulp install --dir)). Without it, C(ulp)'s
        default - E(ULP_PATCH_DIR) in the environment of the task, else C(/var/lib/ulp/patches),
        the directory the runtime reads unless a process is given another.
    type: path
"""
