"""A meson-python package whose extension module is prepared for live patching."""

from shouter._shout import shout

__all__ = ["shout"]
