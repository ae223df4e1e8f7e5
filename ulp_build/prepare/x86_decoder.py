"""x86-64 instructions decoded by capstone's C library, bound here with ctypes.

The capstone package's own binding imports every architecture it knows, `inspect`,
`importlib.resources`, `sysconfig` and `ctypes.util` (which imports `subprocess`) just to find
and wrap `libcapstone.so`: some 20 ms of every `ulp rewrite` of a small library (issue #14).
The package uses one thing of it, `Cs(CS_ARCH_X86, CS_MODE_64).disasm_lite`, so that is what
this module offers: the same (address, size, mnemonic, operands) tuples, from the library file
the capstone wheel ships, found without importing the package. Where that file is not there (a
distribution's build of capstone) or is of another major version, the package's own binding
serves instead.

In `prepare/`: decoding is a build-time need (`rewrite` and `check` decode where a library
takes its functions' addresses and which functions are leaves; `ulp diff`, in `patch/`, which
builds on `prepare/`, decodes a build's functions), and capstone's operand text, which
`taken_addresses.rip_target` reads, is already this phase's; `elf/` reads the file format only.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
from collections.abc import Iterator

from ulp_build.errors import UlpError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class Decoder(Protocol):
        """What the package uses of capstone's `Cs`."""

        def disasm_lite(self, code: bytes, address: int, /) -> Iterator[Instruction]: ...


# What a decoder yields, as capstone's `Cs.disasm_lite` does: (address, size, mnemonic, operands).
Instruction = tuple[int, int, str, str]

_ARCH_X86 = 3  # CS_ARCH_X86 and CS_MODE_64 of capstone 5's capstone.h
_MODE_64 = 1 << 3
# The layout of `CsInsn` below is capstone 5's; capstone 6 changes cs_insn (and pyproject.toml
# pins capstone below 6). Another major version is not refused: its library is left alone and
# the package's own binding, which matches its library, decodes instead; slower to start, the
# same instructions.
_MAJOR = 5
# Instructions decoded per cs_disasm call: a caller that stops early (a function found to call
# out at its first instructions) leaves the rest undecoded.
_BATCH = 256


class CsInsn(ctypes.Structure):
    """capstone 5's `cs_insn` (capstone.h), as cs_disasm fills it with detail off: `detail` is
    then NULL. tests/test_x86_decoder.py compares its size with the capstone package's own."""

    _fields_ = (
        ("id", ctypes.c_uint),
        ("address", ctypes.c_uint64),
        ("size", ctypes.c_uint16),
        ("bytes", ctypes.c_ubyte * 24),
        ("mnemonic", ctypes.c_char * 32),
        ("op_str", ctypes.c_char * 160),
        ("detail", ctypes.c_void_p),
    )


def decoder() -> Decoder:
    """A decoder of x86-64 code: a handle of its own on `libcapstone.so` where the capstone
    wheel ships it, else capstone's own `Cs`."""
    lib = _wheel_library()
    if lib is None:
        import capstone

        return capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    return _Handle(lib)


@functools.cache
def _wheel_library() -> ctypes.CDLL | None:
    """The capstone 5 library in the capstone package's directory, bound; None when there is
    none there (a distribution's build) or it is of another major version."""
    spec = importlib.util.find_spec("capstone")
    for directory in (spec and spec.submodule_search_locations) or []:
        path = os.path.join(directory, "lib", "libcapstone.so")
        if os.path.isfile(path):
            return _bound(path)
    return None


def _bound(path: str) -> ctypes.CDLL | None:
    """The library at `path` with the functions used here declared; None unless it is of
    capstone 5 (see _MAJOR)."""
    lib = ctypes.CDLL(path)
    lib.cs_version.argtypes = (ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.cs_version(ctypes.byref(major), ctypes.byref(minor))
    if major.value != _MAJOR:
        return None
    lib.cs_open.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_size_t))
    lib.cs_disasm.argtypes = (
        ctypes.c_size_t,  # the handle
        ctypes.c_void_p,  # the code
        ctypes.c_size_t,  # its size
        ctypes.c_uint64,  # its address
        ctypes.c_size_t,  # how many instructions at most
        ctypes.POINTER(ctypes.POINTER(CsInsn)),  # out: the instructions, for cs_free
    )
    lib.cs_disasm.restype = ctypes.c_size_t
    lib.cs_free.argtypes = (ctypes.POINTER(CsInsn), ctypes.c_size_t)
    lib.cs_free.restype = None
    lib.cs_errno.argtypes = (ctypes.c_size_t,)
    lib.cs_close.argtypes = (ctypes.POINTER(ctypes.c_size_t),)
    return lib


class _Handle:
    """A capstone handle for x86-64 with detail off, closed with its owner: one per user, as
    a `Cs` is (a handle is not to be shared between threads)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.handle = ctypes.c_size_t()
        err = lib.cs_open(_ARCH_X86, _MODE_64, ctypes.byref(self.handle))
        if err:
            raise UlpError(f"libcapstone: cs_open of x86-64 failed (error {err})")

    def __del__(self) -> None:
        self.lib.cs_close(ctypes.byref(self.handle))

    def disasm_lite(self, code: bytes, address: int) -> Iterator[Instruction]:
        """What `Cs.disasm_lite` yields, decoded _BATCH instructions at a time, freed when the
        batch is done or the caller stops."""
        code = bytes(code)  # decoded in place: it must be immutable and stay alive meanwhile
        handle = self.handle.value
        insns = ctypes.POINTER(CsInsn)()
        at, start = 0, code  # the first batch from the bytes themselves (a pointer to them)
        while at < len(code):
            count = self.lib.cs_disasm(
                handle, start, len(code) - at, address + at, _BATCH, ctypes.byref(insns)
            )
            if count == 0:
                err = self.lib.cs_errno(handle)
                if err:  # not merely bytes that are no instruction
                    raise UlpError(f"libcapstone: cs_disasm failed (error {err})")
                return
            try:
                # Converted as the caller asks: most stop early (a leaf's decision often falls at
                # its first branch), and converting costs more than decoding.
                for k in range(count):
                    insn = insns[k]
                    last, size = insn.address, insn.size
                    yield last, size, insn.mnemonic.decode("ascii"), insn.op_str.decode("ascii")
            finally:
                self.lib.cs_free(insns, count)
            if count < _BATCH:  # the code ended, or its next bytes are no instruction
                return
            at = last + size - address
            start = (ctypes.cast(code, ctypes.c_void_p).value or 0) + at
