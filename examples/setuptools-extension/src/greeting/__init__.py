"""A tiny package with a C extension, built with ulp_build's setuptools hook."""

from greeting._greet import greet, shout

__all__ = ["greet", "shout"]
