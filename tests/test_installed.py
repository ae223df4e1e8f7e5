"""Installed patches (ulp_build/live/installed.py, runtime/installed.c): a process that starts
after `ulp install`, or loads the target after it, runs the new code from the target's first
call, with no trigger; a pre-fork server's later workers follow `install` + `trigger --all`
and `uninstall` + revert; a patch file anyone could have written is refused, with the reason
on the process's stderr and in `ulp patches --installed`. Each test has its control: the same
program without the installed patch answers the old version."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run, ulp
from live import PROGRAMS, Process, patch_file, running
from users import NAMES, as_user, ensure, shared_directory

from ulp_build.live import request as rq
from ulp_build.patch.packer import pack
from ulp_build.prepare.layout import CFLAGS

SOURCES = PROGRAMS / "installed"
OLD, NEW = "1 12", "2 24"


@dataclass(frozen=True)
class Built:
    directory: Path
    library: Path
    patch: Path  # the .ulp
    reverse: Path
    on_top: Path  # installed_v3's .ulp: report() again
    first_call: Path
    late: Path
    server: Path


def _build(*cmd: str | Path) -> None:
    result = run([str(c) for c in cmd])
    assert result.returncode == 0, f"{cmd}: {result.stderr}"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, runtime: Path) -> Built:
    d = tmp_path_factory.mktemp("installed")
    lib = d / "libinstalled.so"
    _build("gcc", *CFLAGS, "-O2", "-fPIC", "-shared", "-o", lib, SOURCES / "installed.c")
    assert ulp("rewrite", str(lib)).returncode == 0
    for name in ("installed_v2", "installed_v3"):
        _build("gcc", "-O2", "-fPIC", "-shared", "-o", d / f"{name}.so", SOURCES / f"{name}.c")
        (d / f"{name}.toml").write_text((SOURCES / f"{name}.toml").read_text())
    packed, on_top = pack(d / "installed_v2.toml"), pack(d / "installed_v3.toml")
    link = ("-L", d, f"-Wl,-rpath,{d}", "-linstalled")
    for name in ("first_call", "server"):
        _build("gcc", "-O2", "-o", d / name, SOURCES / f"{name}.c", *link)
    _build("gcc", "-O2", "-o", d / "late", SOURCES / "late.c", "-ldl")
    _build("gcc", "-O2", "-pthread", "-o", d / "dlopen_meanwhile", SOURCES / "dlopen_meanwhile.c")
    return Built(d, lib, packed.metadata, packed.reverse, on_top.metadata, d / "first_call",
                 d / "late", d / "server")  # fmt: skip


@pytest.fixture
def patch_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty patch directory, named in ULP_PATCH_DIR for the runtime and the commands."""
    where = tmp_path / "patches"
    monkeypatch.setenv("ULP_PATCH_DIR", str(where))
    return where


def _first_call(built: Built, runtime: Path) -> tuple[str, str]:
    result = run([str(built.first_call)], env=os.environ | {"LD_PRELOAD": str(runtime)})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip(), result.stderr


def _install(built: Built) -> Path:
    result = ulp("install", str(built.patch))
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(": installed: patch installed-v2 for build-id "
                                  f"{_build_id(built)[:12]}\n")  # fmt: skip
    return Path(result.stdout.split(":")[0])


def _build_id(built: Built) -> str:
    return json.loads(ulp("check", str(built.library), "--json").stdout)["build_id"]


def test_a_program_started_after_install_runs_the_new_code_from_its_first_call(
    built: Built, runtime: Path, patch_dir: Path
) -> None:
    """main's first statement calls version(), a leaf (untracked): only an application before
    main can reach it; report() is tracked."""
    assert _first_call(built, runtime) == (OLD, "")  # the control: nothing installed
    installed = _install(built)
    assert installed.parent == patch_dir and installed.name.endswith(".installed-v2.ulpreq")
    assert _first_call(built, runtime) == (NEW, "")
    again = ulp("install", str(built.patch))
    assert again.returncode == 0 and ": already installed: " in again.stdout
    assert sorted(patch_dir.iterdir()) == [installed]
    # Without the runtime, nothing applies it.
    result = run([str(built.first_call)])
    assert result.stdout.strip() == OLD
    uninstalled = ulp("uninstall", "installed-v2")
    assert uninstalled.returncode == 0 and uninstalled.stdout == f"{installed}: uninstalled\n"
    assert _first_call(built, runtime) == (OLD, "")


def test_patches_of_one_build_apply_in_the_order_installed(
    built: Built, runtime: Path, patch_dir: Path
) -> None:
    """installed-v3 replaces report() again, over installed-v2: both apply, v3 last, and both
    transitions finish (report's pad jumps to v3 directly)."""
    _install(built)
    result = ulp("install", str(built.on_top))
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in patch_dir.iterdir())
    assert [n.split(".")[1:3] for n in names] == [["000001", "installed-v2"],
                                                  ["000002", "installed-v3"]]  # fmt: skip
    assert _first_call(built, runtime) == ("2 36", "")
    with running(built.server, runtime) as p:
        status = json.loads(ulp("patches", "-p", str(p.pid), "--json").stdout)[0]
        (lib,) = [x for x in status["libraries"] if x["path"] == str(built.library)]
        assert sorted(q["id"] for q in lib["patches"]) == ["installed-v2", "installed-v3"]
        assert lib["transition"] == "done", lib
        assert p.ask("work") == "2 36"


def test_the_process_shows_it_applied_and_finished(
    built: Built, runtime: Path, patch_dir: Path
) -> None:
    """A one-thread process finishes the transition at once: `ulp patches` shows the patch,
    and no transition left; the trigger can revert it like any other."""
    _install(built)
    with running(built.server, runtime) as p:
        assert p.ask("stats") == "started with 24"
        status = json.loads(ulp("patches", "-p", str(p.pid), "--json").stdout)[0]
        (lib,) = [x for x in status["libraries"] if x["path"] == str(built.library)]
        assert [(q["id"], q["functions"]) for q in lib["patches"]] == [("installed-v2", 2)]
        assert lib["transition"] == "done", lib
        reverted = ulp("trigger", "-p", str(p.pid), str(built.reverse))
        assert reverted.returncode == 0, reverted.stderr
        assert p.ask("work") == OLD


def test_a_library_loaded_later_applies_it_before_its_first_call(
    built: Built, runtime: Path, patch_dir: Path
) -> None:
    with running(built.late, runtime, str(built.library)) as p:
        _install(built)  # after the process started, before it loads the library
        assert p.ask("load") == NEW
    with running(built.late, runtime, str(built.library)) as p:  # the control
        ulp("uninstall", "installed-v2")
        assert p.ask("load") == OLD


def test_a_first_call_while_another_thread_loads_a_library(
    built: Built, runtime: Path, patch_dir: Path
) -> None:
    """The patch object is loaded (dlopen) at the target's first call while another thread
    loads and unloads a library: applying from within dl_iterate_phdr's callback deadlocked
    (its list lock against the other dlopen's main lock), about one run in eight."""
    _install(built)
    program = [str(built.directory / "dlopen_meanwhile"), str(built.library),
               str(built.directory / "installed_v2.so")]  # fmt: skip
    for _ in range(40):
        result = run(program, env=os.environ | {"LD_PRELOAD": str(runtime)}, timeout=20)
        assert (result.returncode, result.stdout, result.stderr) == (0, "24\n", "")


def test_pre_fork_server(built: Built, runtime: Path, patch_dir: Path) -> None:
    """Workers forked after `install` + `trigger --all` answer the new version, in a server
    started before and in one started after; after `uninstall` + revert, both answer the old
    one again."""
    with running(built.server, runtime) as before:
        assert before.ask("work") == OLD
        _install(built)
        assert before.ask("work") == OLD  # installing changes no running process
        applied = ulp("trigger", "--all", str(built.patch))
        assert applied.returncode == 0, applied.stderr
        with running(built.server, runtime) as after:
            for _ in range(3):
                assert before.ask("work") == NEW
                assert after.ask("work") == NEW
            assert ulp("uninstall", str(built.patch)).returncode == 0
            reverted = ulp("trigger", "--all", str(built.reverse))
            assert reverted.returncode == 0, reverted.stderr
            for _ in range(3):
                assert before.ask("work") == OLD
                assert after.ask("work") == OLD
        with running(built.server, runtime) as later:
            assert later.ask("work") == OLD


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("file", "file writable by every user (mode 666)"),
        ("owner", "file owned by uid 65534, not root: it could have written the patch"),
        ("directory", "directory writable by every user (mode 777)"),
        ("link", "a symbolic link: processes do not follow it"),
    ],
)
def test_a_patch_anyone_could_have_written_is_refused(
    built: Built, runtime: Path, patch_dir: Path, how: str, reason: str
) -> None:
    installed = _install(built)
    if how == "file":
        installed.chmod(0o666)
    elif how == "owner":
        os.chown(installed, 65534, 65534)
    elif how == "link":
        kept = installed.rename(patch_dir.parent / "kept")
        installed.symlink_to(kept)
    else:
        patch_dir.chmod(0o777)
    where = patch_dir if how == "directory" else installed
    answer, stderr = _first_call(built, runtime)
    assert answer == OLD
    assert stderr == f"ulp: installed patch {installed} not applied: {where}: {reason}\n"
    shown = json.loads(ulp("patches", "--installed", "--json").stdout)
    assert [(i["path"], i["refusal"]) for i in shown] == [(str(installed), f"{where}: {reason}")]
    text = ulp("patches", "--installed").stdout
    build_id = _build_id(built)[:12]
    shown_id = "-" if how == "link" else "installed-v2"  # a link is not read
    assert text == f"{installed}  {shown_id}  build-id {build_id}  refused: {where}: {reason}\n"


@pytest.fixture
def shared_patch_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A patch directory other users can reach (not yet created), in ULP_PATCH_DIR."""
    top = shared_directory()
    monkeypatch.setenv("ULP_PATCH_DIR", str(top / "patches"))
    yield top / "patches"
    shutil.rmtree(top)


def test_a_directory_anyone_may_add_a_patch_to_is_refused(
    built: Built, runtime: Path, shared_patch_dir: Path
) -> None:
    """A patch directory with the sticky bit, like /tmp: nobody can replace root's patch in it,
    but anyone can add one, such as a hard link to a root-owned patch (uninstalled since) or a
    name made to drive the terminal of every process that reports it. Every patch in it is
    refused, and the names are printed escaped."""
    installed = _install(built)
    assert _first_call(built, runtime) == (NEW, "")  # the control: root's own directory
    shared_patch_dir.chmod(0o1777)
    added = shared_patch_dir / f"{_build_id(built)}.000002.\x1b]2;owned\x07\rx.ulpreq"
    mallory = ensure(NAMES[1])
    assert as_user(mallory, lambda: added.write_bytes(installed.read_bytes())) is None
    reason = f"{shared_patch_dir}: directory writable by every user (mode 1777)"
    answer, stderr = _first_call(built, runtime)
    assert answer == OLD
    shown = str(added).replace("\x1b", "\\x1b").replace("\x07", "\\x07").replace("\r", "\\x0d")
    assert stderr == (
        f"ulp: installed patch {installed} not applied: {reason}\n"
        f"ulp: installed patch {shown} not applied: {reason}\n"
    )
    refused = (1, f"ulp: {reason}: every process would refuse a patch installed there\n")
    result = ulp("install", str(built.on_top))
    assert (result.returncode, result.stderr) == refused
    link = shared_patch_dir.parent / "link"  # judged where it leads, as the runtime judges it
    link.symlink_to(shared_patch_dir)
    result = ulp("install", str(built.on_top), env={**os.environ, "ULP_PATCH_DIR": str(link)})
    assert (result.returncode, result.stderr) == refused
    shown_json = json.loads(ulp("patches", "--installed", "--json").stdout)
    assert [(i["path"], i["refusal"]) for i in shown_json] == [
        (str(installed), reason),
        (str(added), reason),
    ]


def test_bad_input(built: Built, patch_dir: Path, tmp_path: Path) -> None:
    result = ulp("uninstall", "nothing-such")
    assert (result.returncode, result.stderr) == (
        1,
        f"ulp: {patch_dir}: no installed patch nothing-such\n",
    )
    result = ulp("install", str(built.reverse))
    assert result.returncode == 1
    assert (
        result.stderr
        == f"ulp: {built.reverse}: a reverse patch cannot be installed (`ulp uninstall`)\n"
    )
    assert not patch_dir.exists()


def _forged(data: bytes, how: str) -> bytes:
    """The installed request `data` made malformed in one way (review: the runtime reads a
    root-owned file it must still not trust to be well-formed)."""
    h = rq.HEADER.unpack(data)
    first = rq.HEADER.size  # the first function entry
    out = bytearray(data)
    if how == "short":
        return data[: rq.HEADER.size // 2]
    if how == "header only":
        return rq.HEADER.pack(**(h | {"size": rq.HEADER.size}))
    if how in ("functions", "references"):
        h[f"{how[:-1]}_count"] = 0xFFFFFFFF
    elif how == "object offset":
        h["object_offset"] = 2**64 - 1
    elif how == "object size":
        h["object_size"] = 2**64 - 16
    elif how == "build-id size":
        h["build_id_size"] = 0xFFFFFFFF
    elif how == "entry":
        rq.FUNCTION.pack_into(out, first, **(rq.FUNCTION.unpack(data, first) | {"entry": 2**63}))
    elif how == "nop":
        f = rq.FUNCTION.unpack(data, first)
        rq.FUNCTION.pack_into(out, first, **(f | {"nop": f["entry"] + 4096}))
    elif how == "replacement":
        f = rq.FUNCTION.unpack(data, first)
        rq.FUNCTION.pack_into(out, first, **(f | {"replacement": 2**64 - 8}))
    rq.HEADER.pack_into(out, 0, **h)
    return bytes(out)


@pytest.mark.parametrize(
    "how",
    [
        *("short", "header only", "functions", "references", "object offset", "object size"),
        *("build-id size", "entry", "nop", "replacement"),
    ],
)
def test_a_malformed_root_owned_file_is_refused_without_harm(
    built: Built, runtime: Path, patch_dir: Path, how: str
) -> None:
    """Trusted is not well-formed: each forgery leaves the process running the old code, with
    one line saying why, in a process that applies at start and in one that loads it later."""
    installed = _install(built)
    installed.write_bytes(_forged(installed.read_bytes(), how))
    answer, stderr = _first_call(built, runtime)
    assert answer == OLD
    assert stderr.startswith(f"ulp: installed patch {installed} not applied: ")
    assert stderr.count("\n") == 1, stderr
    with running(built.late, runtime, str(built.library)) as p:
        assert p.ask("load") == OLD


def test_near_references_of_an_installed_patch(
    tree: Path, patchee: Path, runtime: Path, patch_dir: Path
) -> None:
    """near_static installed: the process fills its near references itself, from offsets
    relative to the target's load base, and the patch shares the running library's static
    `factor`; a forged field outside the object's code is refused, the old code kept."""
    lib = str(tree / "basic" / "libbasic.so")
    with running(patchee, runtime, lib) as p:  # the control: nothing installed
        assert p.ask("scaled 1") == "8" and p.ask("square 3") == "9"
    result = ulp("install", patch_file(tree, "near_static"))
    assert result.returncode == 0, result.stderr
    installed = Path(result.stdout.split(":")[0])
    # The patchee loads the library after start: the patch applies at its first tracked call
    # (basic_square is a leaf, entered untracked; basic_scaled is not).
    with running(patchee, runtime, lib) as p:
        assert p.ask("scaled 1") == "1008"  # factor bumped to 8, then scale(1) + 1000
        assert p.ask("square 3") == "24"  # 3 * factor
    data = bytearray(installed.read_bytes())
    h = rq.HEADER.unpack(data)
    at = rq.HEADER.size + rq.FUNCTION.size * h["function_count"]  # the first reference
    entry = rq.REFERENCE.unpack(data, at)
    assert entry["kind"] == rq.REF_KINDS["near"]
    rq.REFERENCE.pack_into(data, at, **(entry | {"pointer": 0}))  # the ELF header: not code
    installed.write_bytes(bytes(data))
    p = Process(patchee, runtime, lib)
    assert p.ask("scaled 1") == "8" and p.ask("square 3") == "9"
    p.close()
    assert p.proc.stderr is not None
    assert p.proc.stderr.read() == (
        f"ulp: installed patch {installed} not applied: a near reference is not in the code of"
        " the patch object\n"
    )
