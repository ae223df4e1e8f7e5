"""Real unprivileged users for the security tests: created once (system accounts without a home
or a login shell), and a way to run a piece of the test as one of them.

Code runs as a user in a forked child that drops root with setgroups/setgid/setuid, so the
kernel's own permission checks apply to what it does. The child does not exec: the test's
Python may live where the user cannot read it (pyenv under /root)."""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


NAMES = ("ulp-test-alice", "ulp-test-mallory")


def ensure(name: str) -> User:
    """The system user `name`, created if it does not exist yet."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(name)
    return User(name, entry.pw_uid, entry.pw_gid)


def as_user(user: User, work: Callable[[], object]) -> str | None:
    """Run `work` as `user` in a forked child; None if it returned, else the one-line text of
    the exception it raised."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read_end)
        status = 0
        try:
            os.setgroups([])
            os.setgid(user.gid)
            os.setuid(user.uid)
            work()
        except BaseException as exc:  # reported to the parent, whatever it is
            message = str(exc).splitlines()[0] if str(exc) else traceback.format_exc(limit=1)
            os.write(write_end, message.encode(errors="replace"))
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    return message if os.waitstatus_to_exitcode(status) else None


def shared_directory() -> Path:
    """A new directory every user can reach (pytest's own are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="ulp-users-", dir="/tmp"))
    path.chmod(0o755)
    return path
