import sys

from ulp_build.cli import console

sys.exit(console())
