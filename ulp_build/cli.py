"""The `ulp` command line: argument parsing and output only; the work is in the library API.

Exit codes: 0 success, 1 a clear error (one line on stderr naming the file and the reason),
2 bad usage (argparse's own convention).
"""

from __future__ import annotations

import argparse
import gc
import os
import pwd
import signal
import sys
from collections import Counter

from ulp_build import __version__
from ulp_build.errors import UlpError

# Each command imports what it uses when it runs: `ulp --version`, `--help` and a build's
# `ulp rewrite` then load neither ptrace nor the trigger (docs/design.md, "The code and its
# layers"), `ulp trigger -p` not the machinery of `--all`, and none of them `typing`,
# `dataclasses`, `json` or `pathlib` before it needs them (start-up is mostly imports).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ulp_build.live import installed, inventory, protocol
    from ulp_build.prepare.check import CheckReport
    from ulp_build.prepare.rewrite import RewriteResult


_DIR_HELP = "the patch directory (default: $ULP_PATCH_DIR, else /var/lib/ulp/patches)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ulp", description="User-space live patching for shared libraries (x86-64 Linux)."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "rewrite",
        help="prepare a shared library for live patching",
        description="Prepare LIB: add trampolines and entry tracking, normalize"
        " the patchable padding. In place (atomically) unless -o is given;"
        " a library that is already prepared is left unchanged.",
    )
    p.add_argument("library", metavar="LIB")
    p.add_argument("-o", "--output", metavar="OUT", help="write the prepared library here")
    p.add_argument(
        "--untracked",
        metavar="NAME",
        action="extend",
        nargs="+",
        default=[],
        help="keep a plain entry for these exported functions; added to"
        " the default list of functions that never return or return twice",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail, writing nothing, when the library takes a function's address in a way"
        " that cannot be redirected to its trampoline",
    )
    p.add_argument(
        "--track-leaves",
        action="store_true",
        help="track the leaves too (exported functions that call no other function of the"
        " library, which by default keep a plain entry: they cannot mix versions)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "check",
        help="is a library prepared, and is it consistent",
        description="Report whether LIB is prepared, counts of exported, tracked,"
        " patchable and untracked functions, the leaves (found again from the code),"
        " and every problem found."
        " Exit 1 when LIB is not usable as a prepared library.",
    )
    p.add_argument("library", metavar="LIB")
    p.add_argument(
        "--strict",
        action="store_true",
        help="also exit 1 when a tracked exported function is not patchable"
        " (a CI gate: every entry point can be fixed live)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("cflags", help="print the compiler flags a patchable library needs")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "pack",
        help="write patch metadata (and its reverse) from a description",
        description="Check the patch description DESC.toml against its target"
        " and object and write OUT.ulp and the reverse patch OUT.rev.ulp"
        " (default: DESC.ulp next to the description). Every problem is"
        " reported, with its line; nothing is written unless all is well."
        " Warnings (a replaced function with inlined copies or clones the patch leaves"
        " old, a leaf replaced by a non-leaf) go to stderr and the files are written.",
    )
    p.add_argument("description", metavar="DESC.toml")
    p.add_argument("-o", "--output", metavar="OUT.ulp")
    p.add_argument(
        "--strict",
        action="store_true",
        help="treat every warning as a problem: exit 1 and write nothing",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "diff",
        help="make a live patch from two builds of a library",
        description="Compare OLD (the library as it runs, prepared) with NEW (the fixed"
        " source built the same way), both linked with -Wl,--emit-relocs, function by"
        " function, and write into DIR a patch object carrying the changed and new"
        " functions, its description and the packed patch and reverse. One line per"
        " change; every refusal names its symbol, and nothing is written unless all is well.",
    )
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW")
    p.add_argument("-o", "--output", metavar="DIR", required=True)
    p.add_argument("--id", help="the patch's id (default: NEW's name, no .so or version, -diff)")
    p.add_argument("--description", help="the patch's description")
    p.add_argument(
        "--accept",
        action="append",
        default=[],
        metavar="SYMBOL",
        help="a changed object you reviewed: the patch keeps the running one (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("dump", help="show a patch metadata file")
    p.add_argument("patch", metavar="PATCH.ulp")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("runtime-path", help="print the path of the installed runtime libulp.so")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "trigger",
        help="apply or revert a patch in running processes",
        description="Apply PATCH.ulp in each process given with -p (the target"
        " library must be loaded there, with the runtime). A reverse patch"
        " (.rev.ulp) or --revert reverts it; --revert-all LIB reverts every patch"
        " of LIB first, in the same step as applying PATCH.ulp if one is given."
        " Then it waits for the transition to finish (--wait). One result line per"
        " process; exit 1 if any failed.",
    )
    p.add_argument("patch", metavar="PATCH.ulp", nargs="?")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("-p", "--pid", type=int, action="append", help="a process (repeatable)")
    who.add_argument(
        "--all",
        action="store_true",
        help="every process with the runtime and the target loaded (matching build-id)",
    )
    p.add_argument(
        "--user",
        metavar="USER",
        help="with --all: only the processes of USER (a name or a uid)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="processes patched at once with --all (default: CPUs, at most 8)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=3.0,
        metavar="S",
        help="how long to wait for threads to leave the old universe before finishing the"
        " transition with direct jumps (default 3); an unfinished one stays correct",
    )
    p.add_argument("--revert", action="store_true", help="revert PATCH.ulp")
    p.add_argument("--revert-all", metavar="LIB", help="revert every patch of LIB first")
    p.add_argument(
        "--object-outside",
        action="store_true",
        help="load a patch object that lies outside the directory of PATCH.ulp",
    )
    p.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="per stop and call (default 5)"
    )
    p.add_argument(
        "--retries",
        type=int,
        default=20,
        metavar="N",
        help="attempts after the first while the process is busy (default 20)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "patches",
        help="processes with the runtime, their prepared libraries and patches",
        description="For each process with the runtime (or those given with -p):"
        " its prepared libraries (path, build-id, patchable functions), the patches"
        " applied to them, and for a transition not finished yet the threads that"
        " still hold the old universe. --finish finishes what can be finished.",
    )
    p.add_argument("-p", "--pid", type=int, action="append", help="a process (repeatable)")
    p.add_argument("--finish", action="store_true", help="finish pending transitions")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="per stop (default 5)")
    p.add_argument(
        "--installed",
        action="store_true",
        help="the installed patches instead, each with why processes refuse it, if they do",
    )
    p.add_argument("--dir", metavar="DIR", help=_DIR_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "install",
        help="install a patch: processes started later apply it themselves",
        description="Put PATCH (a .ulp and its object, root's files) into the patch"
        " directory. Every process that starts later with the runtime, or loads the target"
        " later, applies it before the target's first call, with no trigger. Processes"
        " running now need `ulp trigger --all PATCH`.",
    )
    p.add_argument("patch", metavar="PATCH")
    p.add_argument("--dir", metavar="DIR", help=_DIR_HELP)

    p = sub.add_parser(
        "uninstall",
        help="remove an installed patch",
        description="Remove the installed patch PATCH (its id, or its .ulp) from the patch"
        " directory: processes started later no longer apply it. Processes that applied it"
        " keep it until `ulp trigger --all --revert PATCH.ulp`.",
    )
    p.add_argument("patch", metavar="PATCH")
    p.add_argument("--dir", metavar="DIR", help=_DIR_HELP)

    p = sub.add_parser(
        "demo",
        help="build, run and live-patch a sample program, then revert",
        description="Build a small library with a bug and its fix, prepare the"
        " library, run a program that uses it under the runtime, patch it live,"
        " show the output change without a restart, revert, and clean up."
        " Needs gcc.",
    )
    p.add_argument("--keep", action="store_true", help="keep the build directory")

    p = sub.add_parser(
        "run",
        help="run a program with the runtime preloaded",
        description="Execute PROG with libulp.so added in front of LD_PRELOAD"
        " (anything already preloaded stays).",
    )
    p.add_argument(
        "--libc",
        metavar="DIR",
        type=str,
        help="run on the prepared C library DIR/libc.so.6 (`ulp rewrite` of this system's own"
        " libc.so.6): DIR goes first in LD_LIBRARY_PATH",
    )
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- PROG ARGS")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except UlpError as exc:
        for line in str(exc).splitlines():
            print(_printable(f"ulp: {line}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`ulp check LIB | head -1`): not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def console(argv: list[str] | None = None) -> int:
    """The `ulp` command: `main`, in a process that ends with it."""
    try:
        return main(argv)
    finally:
        # What the command loaded stays until the process exits: the collector's passes at exit
        # need not walk it all again (6 of a trigger's 80 ms). Not in `main`: a program that
        # calls it and goes on would have its own heap frozen too, its cycles never collected.
        gc.freeze()


def _printable(text: str) -> str:
    """`text` with every character that does not print escaped, newlines kept: names, command
    lines and messages come from files and processes that other users control, and must not
    drive the terminal (escape sequences) or disguise a line (carriage returns, bidi marks)."""
    if text.isprintable():
        return text
    return "\n".join(
        "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in line)
        for line in text.split("\n")
    )


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        import json

        print(json.dumps(data, indent=2))
    else:
        print(_printable(text))


def _cmd_rewrite(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ulp_build.prepare.rewrite import rewrite

    result = rewrite(args.library, args.output, args.untracked, args.strict, args.track_leaves)
    _emit(args, asdict(result), _rewrite_text(result))
    return 0


def _rewrite_text(r: RewriteResult) -> str:
    if r.already_prepared:
        return f"{r.input}: already prepared; nothing changed"
    lines = [
        f"{r.output}: prepared: {r.trampolines} trampolines ({r.ifuncs} IFUNC),"
        f" {r.patchable} patchable functions ({r.normalized} entry nops normalized),"
        f" {len(r.untracked)} untracked, {len(r.leaves)} leaves untracked,"
        f" {len(r.choosing_leaves)} IFUNCs untracked when the CPU gets a leaf,"
        f" {r.redirected_sites} address-taking sites redirected"
    ]
    if r.not_redirectable:
        lines.append(
            f"  warning: address taken, not redirectable (untracked entry):"
            f" {_names(r.not_redirectable)}"
        )
    if r.not_patchable:
        lines.append(f"  tracked but not patchable (no padding): {_names(r.not_patchable)}")
    if r.padding_without_record:
        lines.append(f"  warning: padding without a record: {_names(r.padding_without_record)}")
    if r.records_without_padding:
        lines.append(f"  warning: record without padding: {_names(r.records_without_padding)}")
    return "\n".join(lines)


def _names(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _cmd_check(args: argparse.Namespace) -> int:
    from ulp_build.elf import ElfFile
    from ulp_build.prepare.check import check, summary

    report = check(ElfFile.load(args.library))
    _emit(args, summary(report), _check_text(report))
    if args.strict and report.tracked_not_patchable:
        return 1
    return 0 if report.usable else 1


def _check_text(r: CheckReport) -> str:
    state = "prepared" if r.prepared else "not prepared"
    lines = [f"{r.library}: {state}" + (f" (build-id {r.build_id})" if r.build_id else "")]
    rows = [
        ("exported functions", r.exported_functions, []),
        ("trampolines", r.trampolines, []),
        ("patchable functions", r.patchable, []),
        ("tracked, not patchable", len(r.tracked_not_patchable), r.tracked_not_patchable),
        ("untracked", len(r.untracked), r.untracked),
        ("leaves (untracked)", len(r.leaves), r.leaves),
        ("IFUNCs choosing leaves", len(r.choosing_leaves), r.choosing_leaves),
        ("IFUNCs", r.ifuncs, []),
        ("redirected sites", r.redirected_sites, []),
    ]
    for label, count, names in rows:
        lines.append(f"  {label:<24}{count}" + (f"  ({_names(names)})" if names else ""))
    lines += [f"  error: {e}" for e in r.errors]
    lines += [f"  warning: {w}" for w in r.warnings]
    return "\n".join(lines)


def _cmd_cflags(args: argparse.Namespace) -> int:
    import shlex

    from ulp_build.prepare.layout import CFLAGS

    _emit(args, list(CFLAGS), shlex.join(CFLAGS))
    return 0


def _cmd_pack(args: argparse.Namespace) -> int:
    from ulp_build.patch import metadata
    from ulp_build.patch.packer import pack

    packed = pack(args.description, args.output, strict=args.strict)
    for warning in packed.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    p = packed.patch
    text = (
        f"{packed.metadata}: patch {p.id!r} for {p.target_name} (build-id"
        f" {p.target_build_id}): {len(p.functions)} function(s),"
        f" {len(p.references)} reference(s), {len(p.imports)} import(s),"
        f" {len(p.near)} near reference(s)\n"
        f"{packed.reverse}: its reverse"
    )
    _emit(
        args,
        {
            "metadata": str(packed.metadata),
            "reverse": str(packed.reverse),
            "patch": metadata.to_json(p),
        },
        text,
    )
    return 0


def _cmd_diff(args: argparse.Namespace) -> int:
    from ulp_build.patch.diff import diff

    found = diff(
        args.old,
        args.new,
        args.output,
        patch_id=args.id,
        description=args.description,
        accept=tuple(args.accept),
    )
    assert found.packed is not None
    for warning in found.packed.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    made = [f"{found.packed.metadata}: the patch", f"{found.packed.reverse}: its reverse"]
    text = "\n".join([*found.lines, *made])
    _emit(
        args,
        {
            "changes": found.lines,
            "directory": str(found.directory),
            "metadata": str(found.packed.metadata),
            "reverse": str(found.packed.reverse),
        },
        text,
    )
    return 0


def _cmd_dump(args: argparse.Namespace) -> int:
    from ulp_build.patch import metadata

    p = metadata.read(args.patch)
    lines = [
        f"{args.patch}: {'reverse patch (reverts)' if p.kind == 'revert' else 'patch'} {p.id!r}",
        f"  description  {p.description}",
        f"  target       {p.target_name}, build-id {p.target_build_id}",
        f"  object       {p.object} ({p.object_path(args.patch)})",
        "  functions",
        *(
            f"    {f.name} at {f.offset:#x} (entry nop {f.nop_offset:#x}) -> {f.replacement}"
            for f in p.functions
        ),
    ]
    if p.references:
        lines.append("  references")
        lines += [f"    {r.name} ({r.kind}) at {r.offset:#x} -> {r.pointer}" for r in p.references]
    if p.imports:
        lines.append("  imports (called by name)")
        lines += [f"    {i.name} at {i.offset:#x}" for i in p.imports]
    if p.near:
        lines.append("  near references (RIP-relative fields of the object's code)")
        lines += [
            f"    {n.name} at {n.offset:#x} (addend {n.addend}) <- field {n.field:#x}"
            for n in p.near
        ]
    _emit(args, metadata.to_json(p), "\n".join(lines))
    return 0


def _cmd_runtime_path(args: argparse.Namespace) -> int:
    from ulp_build.live.runtime import runtime_path

    path = str(runtime_path())
    _emit(args, path, path)
    return 0


def _cmd_trigger(args: argparse.Namespace) -> int:
    from ulp_build.live import protocol
    from ulp_build.live.operation import operation

    op = operation(
        args.patch,
        revert=args.revert,
        revert_all=args.revert_all,
        object_outside=args.object_outside,
    )

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM unwinds like Ctrl-C: every stopped thread is restored and let go.
    signal.signal(signal.SIGTERM, stop)
    options = {"timeout": args.timeout, "retries": args.retries, "wait": args.wait}
    show = None if args.json else _result_line
    if args.all:
        from ulp_build.live import fleet

        terminal = sys.stderr.isatty() and not args.json

        def progress(chunk: list[protocol.Result], looked: int, total: int) -> None:
            if terminal:
                print("\r\033[K", end="", file=sys.stderr)
            if show:
                for result in chunk:
                    show(result)
            if terminal:
                line = _printable(f"[{looked}/{total} with the runtime] {op.describe()}")
                print(line, end="", file=sys.stderr, flush=True)

        results = fleet.run_all(
            op,
            jobs=fleet.JOBS if args.jobs is None else args.jobs,
            uid=_uid(args.user),
            progress=progress,
            **options,
        )
        if terminal:
            print("\r\033[K", end="", file=sys.stderr)
    else:
        if args.user is not None:
            raise UlpError("--user goes with --all")
        results = []
        for pid in args.pid:
            results.append(protocol.run(pid, op, **options))
            if show:
                show(results[-1])
    if args.json:
        import json
        from dataclasses import asdict

        print(json.dumps([asdict(r) for r in results], indent=2))
    elif args.all:
        print(_printable(_summary(results)))
    if args.all:
        return 1 if any(r.status == "failed" for r in results) else 0
    return 1 if any(r.failed for r in results) else 0


def _result_line(result: protocol.Result) -> None:
    text = result.message
    if result.universe is not None:
        applied = "applied in " if result.status == "already applied" else ""
        text += f" ({applied}universe {result.universe})"
    if result.pending:
        held = ", ".join(f"{h.tid} ({h.name}, {h.reason})" for h in result.pending)
        text += f"; transition pending: held by thread {held}"
    print(_printable(f"{result.pid}: {result.status}: {text}"), flush=True)


def _uid(user: str | None) -> int | None:
    if user is None:
        return None
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise UlpError(f"--user {user}: no such user") from None


def _user_name(uid: int | None) -> str:
    if uid is None:
        return "?"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _summary(results: list[protocol.Result]) -> str:
    from ulp_build.live import inventory

    if not results:
        note = inventory.scan().unreadable_note()
        where = f" among those you may read; {note}" if note else ""
        return f"no process has the target loaded{where}"
    counts = Counter(r.status for r in results)
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    # Root's --all reaches every user's processes: say whose were touched.
    users = Counter(_user_name(r.uid) for r in results if r.status in ("applied", "reverted"))
    whose = ", ".join(f"{name} {n}" for name, n in sorted(users.items()))
    processes = "process" if len(results) == 1 else "processes"
    return f"{len(results)} {processes}: {parts}" + (f" (of users: {whose})" if whose else "")


def _cmd_patches(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ulp_build.live import installed, inventory, transition

    if args.installed:
        where = installed.directory(args.dir)
        found = installed.listing(where)
        text = "\n".join(_installed_text(i) for i in found) or f"{where}: no installed patch"
        _emit(args, [asdict(i) | {"path": str(i.path)} for i in found], text)
        return 0

    found = None if args.pid else inventory.scan()
    pids = args.pid if found is None else found.pids
    out = []
    for pid in pids:
        try:
            moving = transition.finish(pid, args.timeout) if args.finish else None
            out.append(inventory.of(pid, moving))
        except Exception as exc:  # one process's problem, whatever it is, is reported alone
            if args.pid and isinstance(exc, UlpError):
                raise
            text = " ".join(str(exc).split())
            if not isinstance(exc, UlpError):
                text = f"process {pid}: {type(exc).__name__}: {text}"
            print(_printable(f"ulp: {text}"), file=sys.stderr)
    note = found.unreadable_note() if found else ""
    nothing = f"no process with the runtime among those you may read; {note}" if note else ""
    text = "\n".join(map(_process_text, out)) or nothing or "no process"
    _emit(args, [asdict(p) for p in out], text)
    return 0


def _installed_text(i: installed.Installed) -> str:
    state = f"refused: {i.refusal}" if i.refusal else "trusted"
    return f"{i.path}  {i.id or '-'}  build-id {i.target_build_id[:12]}  {state}"


def _cmd_install(args: argparse.Namespace) -> int:
    from ulp_build.live import installed

    entry, new = installed.install(args.patch, installed.directory(args.dir))
    verb = "installed" if new else "already installed"
    print(f"{entry.path}: {verb}: patch {entry.id} for build-id {entry.target_build_id[:12]}")
    return 0


def _cmd_uninstall(args: argparse.Namespace) -> int:
    from ulp_build.live import installed

    for path in installed.uninstall(args.patch, installed.directory(args.dir)):
        print(f"{path}: uninstalled")
    return 0


def _process_text(p: inventory.ProcessStatus) -> str:
    lines = [f"{p.pid}  {p.command}  (universe {p.universe})"]
    for lib in p.libraries:
        lines.append(
            f"  {lib.path}  build-id {lib.build_id[:12] or '-'}"
            f"  {lib.patchable_functions} patchable functions"
        )
        for patch in lib.patches:
            what = f"  {patch.description}" if patch.description else ""
            lines.append(
                f"    {patch.id}  applied {patch.applied} (universe {patch.universe}),"
                f" {patch.functions} function(s){what}"
            )
        if lib.transition == "pending":
            held = ", ".join(
                f"{h.tid} ({h.name}, universe {h.universe}) {h.reason}" for h in lib.holders
            )
            lines.append(f"    transition pending: {held or 'nothing holds it now (--finish)'}")
    return "\n".join(lines)


def _cmd_demo(args: argparse.Namespace) -> int:
    from ulp_build import demo

    demo.run(lambda line: print(line, flush=True), keep=args.keep)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ulp_build.live.runtime import exec_with_runtime, prepared_libc_dir

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        print("ulp run: no program given (ulp run -- PROG ARGS)", file=sys.stderr)
        return 2
    libc = None if args.libc is None else prepared_libc_dir(Path(args.libc))
    exec_with_runtime(argv, libc)


_COMMANDS = {
    "rewrite": _cmd_rewrite,
    "check": _cmd_check,
    "cflags": _cmd_cflags,
    "pack": _cmd_pack,
    "diff": _cmd_diff,
    "dump": _cmd_dump,
    "runtime-path": _cmd_runtime_path,
    "trigger": _cmd_trigger,
    "patches": _cmd_patches,
    "install": _cmd_install,
    "uninstall": _cmd_uninstall,
    "demo": _cmd_demo,
    "run": _cmd_run,
}
