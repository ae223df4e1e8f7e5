"""ulp_build: user-space live patching for shared libraries on Linux x86-64."""

__version__ = "0.1.0"
