#!/usr/bin/env python3
"""ulp-prepare IN -o OUT: `ulp rewrite` for build systems (Meson runs it with its own Python)."""

import sys

from ulp_build.cli import console

sys.exit(console(["rewrite", *sys.argv[1:]]))
