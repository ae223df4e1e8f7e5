"""The reader's one exception: a file it cannot read, named with the reason in one line."""

from ulp_build.errors import UlpError


class ElfError(UlpError):
    """The file is not an ELF file this project can read, with the reason."""
