"""Security: what a privileged tool must never do for, or be made to do by, another user. Real
unprivileged users (tests/users.py) act through the kernel's own permission checks."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import BuiltSample, run, ulp
from live import OVERFLOWED, PROGRAMS, SATURATED, Process, trigger_cli, triggered
from users import NAMES, User, as_user, ensure, shared_directory

from ulp_build.elf import ElfFile
from ulp_build.errors import UlpError
from ulp_build.live import preflight, protocol
from ulp_build.live.operation import operation
from ulp_build.live.ptrace import Tracee
from ulp_build.patch.packer import pack
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


# ---- the trigger's trust in a patch's files ----------------------------------------------


@dataclass(frozen=True)
class Site:
    """A prepared library, a program using it, the runtime and a packed patch, all in a
    directory every user can reach, as an administrator would lay them out (owned by root)."""

    root: Path
    library: Path
    patchee: Path
    runtime: Path
    patch_dir: Path  # square_fix: patch.toml, patch.so, patch.ulp, patch.rev.ulp
    hostile: Path  # a patch object with the same symbols whose constructor leaves MARKER
    marker: Path

    @property
    def ulp(self) -> Path:
        return self.patch_dir / "patch.ulp"

    def start(self, user: User | None = None) -> Process:
        return Process(self.patchee, self.runtime, str(self.library), user=user)

    def unpatched(self, p: Process) -> bool:
        return p.ask("square 100000") == str(OVERFLOWED)


@pytest.fixture
def site(tree: Path, patchee: Path, runtime: Path, shared: Path) -> Site:
    for sub in ("lib", "bin", "patches/square_fix"):
        (shared / sub).mkdir(parents=True)
        for parent in (shared / sub).parents:
            if parent.is_relative_to(shared):
                parent.chmod(0o755)
    library = shared / "lib" / "libbasic.so"
    shutil.copy(tree / "basic" / "libbasic.so", library)
    shutil.copy(patchee, shared / "bin" / "patchee")
    shutil.copy(runtime, shared / "bin" / "libulp.so")
    patch_dir = shared / "patches" / "square_fix"
    shutil.copy(tree / "patches" / "square_fix" / "patch.so", patch_dir / "patch.so")
    (patch_dir / "patch.toml").write_text(
        (tree / "patches" / "square_fix" / "patch.toml")
        .read_text()
        .replace("../../basic/libbasic.so", str(library))
    )
    pack(patch_dir / "patch.toml")
    marker = shared / "MARKER"
    hostile = shared / "hostile.so"
    built = run(
        ["gcc", "-shared", "-fPIC", "-O2", f'-DMARKER="{marker}"', "-o", str(hostile),
         str(PROGRAMS / "hostile_patch.c")]
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    for path in shared.rglob("*"):
        path.chmod(0o755 if path.is_dir() or path.suffix in ("", ".so") else 0o644)
    return Site(
        shared, library, shared / "bin" / "patchee", shared / "bin" / "libulp.so", patch_dir,
        hostile, marker,
    )  # fmt: skip


def _refused(site: Site, p: Process, reason: str, *extra: str) -> None:
    result = trigger_cli("-p", str(p.pid), *extra, str(site.ulp))
    assert result.returncode == 1, result.stdout + result.stderr
    assert reason in result.stdout + result.stderr, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert site.unpatched(p)
    assert not site.marker.exists()


def test_the_site_patches_when_nothing_is_wrong(site: Site) -> None:
    """The control for the refusals below: the same site, untouched, is patched."""
    with closing(site.start()) as p:
        triggered(p.pid, site.ulp)
        assert p.ask("square 100000") == str(SATURATED)


def test_world_writable_object_is_refused(site: Site) -> None:
    (site.patch_dir / "patch.so").chmod(0o777)
    with closing(site.start()) as p:
        _refused(site, p, "patch.so: file writable by every user (mode 777)")


def test_object_owned_by_another_user_is_refused(site: Site, users: tuple[User, User]) -> None:
    _, mallory = users
    os.chown(site.patch_dir / "patch.so", mallory.uid, mallory.gid)
    with closing(site.start()) as p:
        _refused(site, p, f"patch.so: file owned by uid {mallory.uid}, neither root nor")


def test_metadata_in_a_directory_another_user_owns_is_refused(
    site: Site, users: tuple[User, User]
) -> None:
    _, mallory = users
    os.chown(site.root / "patches", mallory.uid, mallory.gid)
    with closing(site.start()) as p:
        _refused(site, p, f"{site.root / 'patches'}: directory owned by uid {mallory.uid}")


def test_group_writable_directory_is_refused(site: Site, users: tuple[User, User]) -> None:
    _, mallory = users
    os.chown(site.patch_dir, 0, mallory.gid)
    site.patch_dir.chmod(0o775)
    with closing(site.start()) as p:
        _refused(site, p, f"{site.patch_dir}: directory writable by group {mallory.gid}")


def test_changed_object_is_refused(site: Site) -> None:
    with (site.patch_dir / "patch.so").open("ab") as f:
        f.write(b"\0")  # still the same build-id, no longer the same bytes
    with closing(site.start()) as p:
        _refused(site, p, "patch.so: SHA-256")


def test_object_outside_the_metadata_directory_needs_the_option(site: Site) -> None:
    outside = site.root / "elsewhere"
    outside.mkdir(mode=0o755)
    (site.patch_dir / "patch.so").rename(outside / "patch.so")
    toml = site.patch_dir / "patch.toml"
    toml.write_text(toml.read_text().replace('"patch.so"', f'"{outside / "patch.so"}"'))
    pack(toml)
    with closing(site.start()) as p:
        _refused(site, p, "outside", "--revert-all", "libbasic.so")
        result = trigger_cli("-p", str(p.pid), "--object-outside", str(site.ulp))
        assert result.returncode == 0, result.stdout + result.stderr
        assert p.ask("square 100000") == str(SATURATED)


def test_a_users_own_patch_for_the_users_own_process(site: Site, users: tuple[User, User]) -> None:
    """A process trusts its owner's files; another user's process (root's) does not."""
    alice, _ = users
    for path in (site.patch_dir, *site.patch_dir.iterdir()):
        os.chown(path, alice.uid, alice.gid)
    with closing(site.start(alice)) as p:
        triggered(p.pid, site.ulp)
        assert p.ask("square 100000") == str(SATURATED)
    with closing(site.start()) as p:
        _refused(site, p, f"file owned by uid {alice.uid}, neither root nor the owner")


def test_a_process_that_becomes_another_users_after_the_check(
    site: Site, users: tuple[User, User]
) -> None:
    """The trigger judges the files by the process's owner when it checks, before it stops the
    process. Alice's process that executes a setuid-root program in between is root's by the
    stop, and another program, whose layout the check's addresses know nothing of: alice's
    patch must reach it neither by a call nor by a write. The control: the same check, with no
    exec, applies."""
    alice, _ = users
    for path in (site.patch_dir, *site.patch_dir.iterdir()):
        os.chown(path, alice.uid, alice.gid)
    setuid = site.root / "bin" / "patchee-setuid"
    shutil.copy(site.patchee, setuid)
    setuid.chmod(0o4755)
    with closing(site.start(alice)) as p:
        checked = preflight.check(p.pid, operation(str(site.ulp)))
        assert p.ask(f"exec {setuid} {site.library}") == "ready"
        assert Path(f"/proc/{p.pid}/status").read_text().count("\t0\t") == 1  # euid root
        with pytest.raises(UlpError) as refused:
            protocol.execute(checked, 5.0)
        assert str(refused.value) == (
            f"process {p.pid}: its user or group ids or capabilities changed since it was"
            " checked (it executed a setuid program?): not patched"
        )
        assert site.unpatched(p)
    with closing(site.start(alice)) as p:
        protocol.execute(preflight.check(p.pid, operation(str(site.ulp))), 5.0)
        assert p.ask("square 100000") == str(SATURATED)


@pytest.mark.parametrize("how", ["setuid", "setgid", "capability", "undumpable"])
def test_a_users_patch_for_the_users_privileged_process_is_refused(
    site: Site, users: tuple[User, User], how: str
) -> None:
    """Alice's setuid or setgid program, or one with file capabilities, has privileges alice
    has not, and a process that is not dumpable may hold some (a daemon that started as root
    and kept what it opened): the kernel would not let her trace either, and only root's patch
    may reach them. The
    control (alice's own plain process taking her patch) is
    test_a_users_own_patch_for_the_users_own_process."""
    alice, _ = users
    for path in (site.patch_dir, *site.patch_dir.iterdir()):
        os.chown(path, alice.uid, alice.gid)
    privileged = site.root / "bin" / "patchee-privileged"
    shutil.copy(site.patchee, privileged)
    if how == "capability":
        result = run(["setcap", "cap_net_raw+p", str(privileged)])
        assert result.returncode == 0, result.stderr
    elif how != "undumpable":
        privileged.chmod(0o4755 if how == "setuid" else 0o2755)
    with closing(Process(privileged, site.runtime, str(site.library), user=alice)) as p:
        if how == "undumpable":
            assert p.ask("undumpable") == "0"
        _refused(
            site,
            p,
            f"{site.ulp}: file owned by uid {alice.uid}, not root, and process {p.pid} (uid"
            f" {alice.uid}) may not be traced by its owner (setuid, setgid, capabilities, or not"
            " dumpable)",
        )


# ---- what the trigger says about processes it cannot patch -------------------------------


def test_a_process_that_does_not_exist_fails(site: Site) -> None:
    pid = 4194304 + 17  # above the kernel's pid_max ceiling: never a process
    result = trigger_cli("-p", str(pid), "--json", str(site.ulp))
    assert result.returncode == 1
    (entry,) = json.loads(result.stdout)
    assert entry["status"] == "failed" and "no such process" in entry["message"]
    assert entry["universe"] is None


def test_a_second_trigger_says_the_process_is_busy(site: Site) -> None:
    with closing(site.start()) as p:
        holder = os.fork()
        if holder == 0:  # another tracer, holding the process for a while
            try:
                with Tracee(p.pid, 5.0):
                    time.sleep(4)
            finally:
                os._exit(0)
        try:
            time.sleep(0.5)
            busy = trigger_cli("-p", str(p.pid), "--retries", "2", str(site.ulp))
            assert busy.returncode == 1
            assert f"busy, traced by process {holder} (" in busy.stdout, busy.stdout
        finally:
            os.waitpid(holder, 0)
        assert site.unpatched(p)
        done = trigger_cli("-p", str(p.pid), "--json", str(site.ulp))
        assert done.returncode == 0, done.stdout + done.stderr
        (entry,) = json.loads(done.stdout)
        again = trigger_cli("-p", str(p.pid), "--json", str(site.ulp))
        (repeat,) = json.loads(again.stdout)
        assert repeat["status"] == "already applied"
        assert repeat["universe"] == entry["universe"] > 1


def test_text_output_escapes_what_does_not_print(site: Site) -> None:
    """Printable text from others (an accented patch id) is kept; a terminal escape (in a
    path, here) is shown escaped, not obeyed."""
    toml = site.patch_dir / "patch.toml"
    toml.write_text(toml.read_text().replace('id = "', 'id = "\\u00e9', 1))
    pack(toml)
    with closing(site.start()) as p:
        result = trigger_cli("-p", str(p.pid), str(site.ulp))
        assert result.returncode == 0
        assert "é" in result.stdout  # printable, kept
    with closing(site.start()) as p:
        result = trigger_cli("-p", "0", "-p", str(p.pid), str(site.ulp) + "\x1b[2J")
        assert result.returncode == 1
        assert "\x1b" not in result.stderr and "\\x1b[2J" in result.stderr, result.stderr


def test_all_for_one_user_and_whose_processes_all_touched(
    site: Site, users: tuple[User, User]
) -> None:
    alice, _ = users
    with closing(site.start(alice)) as hers, closing(site.start()) as roots:
        result = trigger_cli("--all", "--user", alice.name, str(site.ulp))
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.splitlines()[-1] == (
            f"1 process: 1 applied (of users: {alice.name} 1)"
        )
        assert hers.ask("square 100000") == str(SATURATED)
        assert site.unpatched(roots)
        result = trigger_cli("--all", str(site.patch_dir / "patch.rev.ulp"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.splitlines()[-1] == (
            f"2 processes: 1 not applied, 1 reverted (of users: {alice.name} 1)"
        ), result.stdout
        result = trigger_cli("--all", str(site.ulp))
        assert result.stdout.splitlines()[-1] == (
            f"2 processes: 2 applied (of users: root 1, {alice.name} 1)"
        ), result.stdout


# ---- the object loaded is the object checked ---------------------------------------------


def _pack_hostile(site: Site) -> Path:
    """The hostile object packed as a patch of its own: it does run when applied."""
    other = site.root / "patches" / "hostile"
    other.mkdir(mode=0o755)
    shutil.copy(site.hostile, other / "patch.so")
    toml = other / "patch.toml"
    toml.write_text((site.patch_dir / "patch.toml").read_text().replace('id = "', 'id = "h-', 1))
    return pack(toml).metadata


def test_the_hostile_object_leaves_its_mark_when_loaded(site: Site) -> None:
    """The control for the tests below: loading the hostile object is seen."""
    hostile = _pack_hostile(site)
    with closing(site.start()) as p:
        triggered(p.pid, hostile)
        assert site.marker.exists() and p.ask("square 7") == "-7"


def test_an_object_swapped_during_the_trigger_never_runs(site: Site) -> None:
    """Another file is renamed over the object again and again while the trigger reads,
    checks and loads it, 100 times: the process runs the checked bytes or nothing."""
    good = site.patch_dir / "patch.so"
    spare = site.patch_dir / ".good.so"
    evil = site.patch_dir / ".evil.so"
    shutil.copy(good, spare)
    stop = threading.Event()
    flips = 0

    def swap() -> None:
        nonlocal flips
        while not stop.is_set():
            shutil.copy(site.hostile, evil)
            os.replace(evil, good)
            shutil.copy(spare, evil)
            os.replace(evil, good)
            flips += 2

    outcomes: Counter[str] = Counter()
    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        with closing(site.start()) as p:
            for _ in range(100):
                before = flips
                try:
                    op = operation(str(site.ulp))
                except UlpError as error:
                    assert "SHA-256" in str(error) or "build-id" in str(error), error
                    outcomes["refused"] += 1
                    continue
                result = protocol.run(p.pid, op, wait=0)
                assert result.status == "applied", result
                assert p.ask("square 100000") == str(SATURATED)
                assert protocol.run(p.pid, operation(str(site.ulp), revert=True)).status == (
                    "reverted"
                )
                outcomes["applied"] += 1
                outcomes["swapped during"] += flips > before
    finally:
        stop.set()
        swapper.join()
    assert not site.marker.exists()
    # The race was real: both files were seen, and the swaps went on throughout (counted per
    # operation, not in all: how many swaps fit in one depends on the machine's load).
    assert outcomes["refused"] >= 5 and outcomes["applied"] >= 5, outcomes
    assert outcomes["swapped during"] >= outcomes["applied"] // 2, outcomes


def test_an_object_bind_mounted_over_in_the_targets_namespace_never_runs(site: Site) -> None:
    """The target sees the hostile object at the patch's path (its own mount namespace): the
    trigger's checked bytes are what it loads."""
    good = site.patch_dir / "patch.so"
    script = 'mount --bind "$1" "$2" && exec "$3" "$4"'
    with closing(
        Process(
            Path("/usr/bin/unshare"), site.runtime, "-m", "--propagation", "private",
            "sh", "-c", script, "sh", str(site.hostile), str(good), str(site.patchee),
            str(site.library),
        )
    ) as p:  # fmt: skip
        seen = Path(f"/proc/{p.pid}/root{good}").read_bytes()
        assert seen == site.hostile.read_bytes() != good.read_bytes()  # namespaces differ
        triggered(p.pid, site.ulp)
        assert p.ask("square 100000") == str(SATURATED)
    assert not site.marker.exists()


@pytest.mark.parametrize(
    ("table", "field", "value", "reason"),
    [
        ("functions", "offset", 2**64 - 1, "offset 0xffffffffffffffff (entry nop"),
        ("functions", "nop_offset", 0, "is not code of"),
        ("references", "offset", 2**40, "offset 0x10000000000 is not in"),
    ],
)
def test_forged_offsets_in_the_metadata(
    site: Site, tree: Path, table: str, field: str, value: int, reason: str
) -> None:
    """Metadata that passes every file rule (root wrote it) but whose offsets point nowhere:
    refused before any address is computed from them."""
    if table == "references":  # square_fix has none: take a patch that has
        shutil.copy(tree / "patches" / "scaled_factor" / "patch.so", site.patch_dir / "patch.so")
        toml = (tree / "patches" / "scaled_factor" / "patch.toml").read_text()
        (site.patch_dir / "patch.toml").write_text(
            toml.replace("../../basic/libbasic.so", str(site.library))
        )
        pack(site.patch_dir / "patch.toml")
    head, body = site.ulp.read_text().split("\n", 1)
    data = json.loads(body)
    data[table][0][field] = value
    site.ulp.write_text(head + "\n" + json.dumps(data))
    with closing(site.start()) as p:
        _refused(site, p, reason)


def test_revert_all_of_nothing_is_not_applied(site: Site) -> None:
    """Named with -p, a process with nothing to revert fails; met by --all, it is passed over."""
    with closing(site.start()) as p:
        named = trigger_cli("-p", str(p.pid), "--revert-all", "libbasic.so")
        assert named.returncode == 1
        assert f"{p.pid}: not applied: process {p.pid}: no patch is applied to" in named.stdout
        every = trigger_cli("--all", "--revert-all", "libbasic.so")
        assert every.returncode == 0, every.stdout + every.stderr
        assert every.stdout.splitlines()[-1] == "1 process: 1 not applied"


def test_metadata_that_is_not_a_file(site: Site, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.ulp"
    os.mkfifo(fifo)
    for bad in (site.patch_dir, fifo, Path("/dev/zero")):
        result = ulp("trigger", "-p", "1", str(bad), timeout=20)
        assert result.returncode == 1
        assert result.stderr == f"ulp: {bad}: not a regular file\n", result.stderr
