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
