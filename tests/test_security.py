"""Security: what a privileged tool must never do for, or be made to do by, another user. Real
unprivileged users (tests/users.py) act through the kernel's own permission checks."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BuiltSample, ulp
from users import NAMES, User, as_user, ensure, shared_directory

from ulp_build.elf import ElfFile
from ulp_build.prepare.rewrite import rewrite


@pytest.fixture(scope="session")
def users() -> tuple[User, User]:
    alice, mallory = (ensure(name) for name in NAMES)
    return alice, mallory


@pytest.fixture
def shared() -> Iterator[Path]:
    path = shared_directory()
    yield path
    shutil.rmtree(path)


def test_root_rewrite_in_place_keeps_the_owner_and_drops_setuid(
    built: dict[str, BuiltSample], users: tuple[User, User], shared: Path
) -> None:
    alice, _ = users
    lib = shared / "libbasic.so"
    shutil.copy(built["basic"].raw, lib)
    os.chown(lib, alice.uid, alice.gid)
    lib.chmod(0o6755)
    result = ulp("rewrite", str(lib))
    assert result.returncode == 0, result.stderr
    after = lib.stat()
    assert (after.st_uid, after.st_gid) == (alice.uid, alice.gid)
    assert stat.S_IMODE(after.st_mode) == 0o755
    assert ElfFile.load(lib).section(".ulp") is not None


def test_user_cannot_take_over_another_users_library(
    built: dict[str, BuiltSample], users: tuple[User, User], shared: Path
) -> None:
    alice, mallory = users
    os.chown(shared, mallory.uid, mallory.gid)  # mallory may rename files in it...
    lib = shared / "libbasic.so"
    shutil.copy(built["basic"].raw, lib)
    os.chown(lib, alice.uid, alice.gid)  # ...but the library is alice's
    before = lib.read_bytes()
    error = as_user(mallory, lambda: rewrite(lib))
    assert error is not None and f"{lib}: owned by uid {alice.uid}" in error
    assert lib.read_bytes() == before and lib.stat().st_uid == alice.uid
    assert sorted(p.name for p in shared.iterdir()) == ["libbasic.so"]


def test_user_rewrites_own_library_in_place(
    built: dict[str, BuiltSample], users: tuple[User, User], shared: Path
) -> None:
    """The control: the same rewrite by the library's owner succeeds."""
    alice, _ = users
    os.chown(shared, alice.uid, alice.gid)
    lib = shared / "libbasic.so"
    shutil.copy(built["basic"].raw, lib)
    os.chown(lib, alice.uid, alice.gid)
    assert as_user(alice, lambda: rewrite(lib)) is None
    assert lib.stat().st_uid == alice.uid
    assert ElfFile.load(lib).section(".ulp") is not None
