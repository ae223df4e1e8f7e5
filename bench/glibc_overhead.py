"""The padded glibc that tools/build-glibc builds (docs/glibc.md), prepared by this tree's rewriter
and run under the runtime, against the same glibc unprepared without the runtime, on whole
programs (issue #15; target at most 1.02x on the real workloads):
- /usr/bin/python3 running a CPU-heavy mix of json, re, pickle and sqlite3;
- `gzip -9` and `xz -T1` (its default level, one thread) of a 50 MiB text-like file;
- a 16-byte `strlen` in a loop, timed inside the program (ns per call, reported).

Both variants run through the padded glibc's own loader, each with a library directory of its
own: the unprepared `libc.so.6` and `libm.so.6` as built (the cache's `*.unprepared`), or both
prepared afresh from those files, so the rewriter measured is this tree's, not the one that filled
the cache. Times are CPU times (user and system of the whole command; the loop's thread CPU
clock), which a wait for a core on a shared machine does not lengthen. Rounds alternate the
variants (unprepared first, then prepared first, and so on); the ratio recorded is the median
over rounds of the prepared time divided by the unprepared time of the same round, so what the
machine does meanwhile weighs on both sides of one ratio and one disturbed round does not move
the result (the ratio of the minima is printed too).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.results import record  # noqa: E402
from sample_libs import padded_glibc, samples  # noqa: E402
from ulp_build.elf import ElfFile  # noqa: E402
from ulp_build.elf.constants import STT_GNU_IFUNC  # noqa: E402
from ulp_build.prepare.rewrite import rewrite  # noqa: E402

SYSTEM_DIRS = "/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu"
PYTHON = "/usr/bin/python3"
DATA_SIZE = 50 * 2**20
MIX_ROUNDS = 25  # about 3 s of CPython on this machine
STRLEN_CALLS = 200_000_000

# Every part of the mix feeds one digest, printed at the end: both variants must print the same.
MIX = """
import hashlib, json, pickle, random, re, sqlite3, sys
rng = random.Random(15)
digest = hashlib.sha256()
letters = "abcdefghijklmnopqrstuvwxyz"
words = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(400)]
WORD = re.compile(r"\\b([a-z]+)(\\d*)\\b")
EMAIL = re.compile(r"[a-z]+@[a-z]+\\.(?:com|org|net)")
for _ in range(int(sys.argv[1])):
    records = [
        {"id": i, "name": rng.choice(words), "tags": rng.sample(words, 4),
         "score": rng.random() * 100,
         "nested": {"a": [rng.randint(0, 999) for _ in range(8)], "b": None}}
        for i in range(2000)
    ]
    text = json.dumps(records, sort_keys=True)
    back = json.loads(text)
    digest.update(text.encode())
    prose = " ".join(
        rng.choice(words) + (str(rng.randint(0, 99)) if rng.random() < 0.2 else "")
        + (f" {rng.choice(words)}@{rng.choice(words)}.org" if rng.random() < 0.05 else "")
        for _ in range(20000)
    )
    found, mails = WORD.findall(prose), EMAIL.findall(prose)
    swapped = WORD.sub(lambda m: m.group(1).upper() + m.group(2), prose)
    digest.update(f"{len(found)} {len(mails)} {swapped[:1000]}".encode())
    for _ in range(3):
        blob = pickle.dumps(back, protocol=pickle.HIGHEST_PROTOCOL)
        back = pickle.loads(blob)
    digest.update(blob)
    db = sqlite3.connect(":memory:")
    db.execute("create table t (id integer primary key, name text, score real, tag text)")
    db.executemany("insert into t values (?, ?, ?, ?)",
                   ((d["id"], d["name"], d["score"], d["tags"][0]) for d in back))
    db.executemany("insert into t (name, score, tag) values (?, ?, ?)",
                   ((rng.choice(words), rng.random(), rng.choice(words)) for _ in range(20000)))
    db.execute("create index t_name on t (name)")
    rows = db.execute("select name, count(*), avg(score), max(tag) from t"
                      " group by name order by 3 desc, 1").fetchall()
    rows += db.execute("select id, name from t where name like 'a%'"
                       " order by score limit 500").fetchall()
    digest.update(repr(rows).encode())
    db.close()
print(digest.hexdigest())
"""

# The pointer is volatile and the builtin is off, so every iteration really calls strlen
# through the PLT, as a program does. The thread's CPU time, not the clock: on a shared machine
# the loop may wait for a core.
STRLEN_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static char text[] = "0123456789abcdef";

int main(int argc, char **argv) {
    long calls = atol(argv[1]);
    char *volatile p = text;
    size_t total = 0;
    struct timespec start, end;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &start);
    for (long i = 0; i < calls; i++)
        total += strlen(p);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &end);
    double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
    printf("%.4f %zu\n", ns / calls, total);
    return total != (size_t)calls * 16;
}
"""


@dataclass(frozen=True)
class Variant:
    name: str
    loader: Path
    libdir: Path
    env: dict[str, str]

    def command(self, *argv: str) -> list[str]:
        return [str(self.loader), "--library-path", f"{self.libdir}:{SYSTEM_DIRS}", *argv]

    def run(self, argv: list[str], stdout: Path | None = None) -> tuple[float, str]:
        """The CPU seconds (user and system) the whole command took, and its output (or the
        digest of the file it wrote). CPU time rather than wall time: on a shared machine a
        program waiting for a core is not a program running slower."""
        with open(stdout or os.devnull, "wb") as sink:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            done = subprocess.run(
                self.command(*argv),
                env=self.env,
                stdout=sink if stdout else subprocess.PIPE,
                stderr=subprocess.PIPE,
                check=False,
            )
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        if done.returncode != 0:
            sys.exit(f"{self.name}: {' '.join(argv)} exited {done.returncode}: {done.stderr!r}")
        if stdout is None:
            return seconds, done.stdout.decode().strip()
        return seconds, hashlib.sha256(stdout.read_bytes()).hexdigest()


def tool(name: str) -> str:
    """The program's path: the loader, run as a command, does not search PATH."""
    path = shutil.which(name)
    if path is None:
        sys.exit(f"glibc_overhead: {name} not found")
    return path


def glibc_entry() -> Path:
    entry = padded_glibc.any_complete()
    libdir = padded_glibc.library_dir(entry / "prefix") if entry else None
    if libdir is None:
        sys.exit("glibc_overhead: no padded glibc built: run tools/build-glibc first")
    return libdir


def library_dirs(built: Path, root: Path) -> tuple[Path, Path]:
    """Two directories with every library of `built`: libc and libm as built, or prepared now."""
    unprepared, prepared = root / "unprepared", root / "prepared"
    for directory in (unprepared, prepared):
        directory.mkdir()
        for lib in built.iterdir():
            if lib.suffix != ".unprepared" and lib.name not in padded_glibc.PREPARED:
                (directory / lib.name).symlink_to(lib)
    for name in padded_glibc.PREPARED:
        original = built / f"{name}.unprepared"
        (unprepared / name).symlink_to(original)
        rewrite(original, prepared / name)
    return unprepared, prepared


def check_loaded(unprepared: Variant, prepared: Variant, runtime: Path, built: Path) -> None:
    """Each variant maps its own libc and libm (a symlink shows as its target) and the padded
    loader, and only the prepared one the runtime; anything else stops the bench."""
    script = "import sys; sys.stdout.write(open('/proc/self/maps').read())"
    for variant, want, refuse in (
        (unprepared, [built / "libc.so.6.unprepared", built / "libm.so.6.unprepared"], runtime),
        (prepared, [prepared.libdir / "libc.so.6", prepared.libdir / "libm.so.6", runtime], None),
    ):
        _, maps = variant.run([PYTHON, "-I", "-c", script])
        fields = [line.split(maxsplit=5) for line in maps.splitlines()]
        mapped = {f[5] for f in fields if len(f) == 6}
        libcs = sorted(p for p in mapped if Path(p).name.startswith(("libc.so", "libm.so")))
        missing = [str(p) for p in [*want, variant.loader] if str(p) not in mapped]
        if missing or len(libcs) != 2 or (refuse is not None and str(refuse) in mapped):
            sys.exit(
                f"{variant.name}: maps {libcs}, missing {missing}, runtime mapped:"
                f" {str(runtime) in mapped}"
            )
        print(f"{variant.name}: {', '.join(libcs)}; runtime mapped: {str(runtime) in mapped}")


def strlen_tracking(built: Path, prepared: Path) -> str:
    """Whether the prepared libc sends `strlen` (an IFUNC) through a trampoline: a tracked
    IFUNC's dynamic symbol points at the rewriter's wrapper instead of the original resolver."""
    before = {s.name: s for s in ElfFile.load(built / "libc.so.6.unprepared").dynamic_symbols}
    after = {s.name: s for s in ElfFile.load(prepared / "libc.so.6").dynamic_symbols}
    kind = "an IFUNC" if before["strlen"].type == STT_GNU_IFUNC else "not an IFUNC"
    tracked = before["strlen"].value != after["strlen"].value
    return f"strlen is {kind}, {'tracked' if tracked else 'not tracked'} in the prepared libc"


def text_like(path: Path) -> None:
    """DATA_SIZE bytes of lines of words drawn with a Zipf-like law from a made-up vocabulary,
    one line in ten ending in random hex, the same every run: it compresses about as text does
    (gzip -9 to 36%)."""
    rng = random.Random(15)
    letters = "etaoinshrdlucmfwypvbgkjqxz"  # the most frequent in English first
    weights = range(len(letters), 0, -1)
    vocab = ["".join(rng.choices(letters, weights, k=rng.randint(2, 10))) for _ in range(5000)]
    cumulative, total = [], 0.0
    for rank in range(len(vocab)):
        total += 1 / (rank + 1)
        cumulative.append(total)
    lines, size = [], 0
    while size < DATA_SIZE:
        line = " ".join(rng.choices(vocab, cum_weights=cumulative, k=rng.randint(4, 16)))
        if rng.random() < 0.1:
            line += " " + rng.randbytes(12).hex()
        lines.append(line)
        size += len(line) + 1
    path.write_bytes(("\n".join(lines) + "\n").encode()[:DATA_SIZE])


@dataclass
class Result:
    unprepared: list[float]
    prepared: list[float]

    def ratios(self) -> list[float]:
        return [p / u for u, p in zip(self.unprepared, self.prepared, strict=True)]

    def ratio(self) -> float:
        return statistics.median(self.ratios())

    def spread(self, values: list[float]) -> str:
        low, high = min(values), max(values)
        return f"{low:.3f}-{high:.3f} ({(high - low) / statistics.median(values) * 100:.1f}%)"


def compare(
    label: str,
    rounds: int,
    measure: Callable[[Variant], tuple[float, str]],
    variants: list[Variant],
) -> Result:
    """`rounds` rounds, alternating which variant goes first; every output must agree."""
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    outputs = set()
    for i in range(rounds):
        for variant in variants if i % 2 == 0 else variants[::-1]:
            seconds, output = measure(variant)
            times[variant.name].append(seconds)
            outputs.add(output)
    if len(outputs) != 1:
        sys.exit(f"{label}: the variants' outputs differ: {sorted(outputs)}")
    result = Result(times[variants[0].name], times[variants[1].name])
    print(
        f"{label}: unprepared median {statistics.median(result.unprepared):.4f},"
        f" spread {result.spread(result.unprepared)}; prepared median"
        f" {statistics.median(result.prepared):.4f}, spread {result.spread(result.prepared)};"
        f" ratio median {result.ratio():.3f}x, per round {result.spread(result.ratios())},"
        f" of minima {min(result.prepared) / min(result.unprepared):.3f}x ({rounds} rounds)",
        flush=True,
    )
    return result


def record_seconds(label: str, result: Result) -> None:
    prepared, unprepared = statistics.median(result.prepared), statistics.median(result.unprepared)
    record(
        f"{label}, padded glibc prepared+runtime vs unprepared",
        f"{prepared:.2f} s CPU",
        f"unprepared {unprepared:.2f} s CPU",
        result.ratio(),
        "<= 1.02x",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=8, help="rounds of python3 and gzip")
    parser.add_argument("--xz-rounds", type=int, default=4, help="rounds of xz, ~40 s each")
    parser.add_argument("--strlen-rounds", type=int, default=12)
    args = parser.parse_args()
    built = glibc_entry()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        samples.use_tree_runtime(root / "runtime-build")
        runtime = Path(os.environ["ULP_RUNTIME"]).resolve()
        unprepared_dir, prepared_dir = library_dirs(built, root)
        plain = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        loader = built / "ld-linux-x86-64.so.2"
        unprepared = Variant("unprepared", loader, unprepared_dir, plain)
        prepared = Variant("prepared", loader, prepared_dir, dict(plain, LD_PRELOAD=str(runtime)))
        variants = [unprepared, prepared]
        check_loaded(unprepared, prepared, runtime, built)
        print(strlen_tracking(built, prepared_dir))

        mix = root / "mix.py"
        mix.write_text(MIX)
        python = compare(
            "python3 mix (s)",
            args.rounds,
            lambda v: v.run([PYTHON, "-I", str(mix), str(MIX_ROUNDS)]),
            variants,
        )
        data = root / "data"
        text_like(data)
        out = root / "out"
        gzip = compare(
            "gzip -9 50 MiB (s)",
            args.rounds,
            lambda v: v.run([tool("gzip"), "-9", "-c", str(data)], stdout=out),
            variants,
        )
        xz = compare(
            "xz -T1 50 MiB (s)",
            args.xz_rounds,
            lambda v: v.run([tool("xz"), "-T1", "-c", str(data)], stdout=out),
            variants,
        )
        program = root / "strlen_loop"
        source = root / "strlen_loop.c"
        source.write_text(STRLEN_C)
        cc = ["gcc", "-O2", "-fno-builtin-strlen", "-o", str(program), str(source)]
        subprocess.run(cc, check=True)

        def strlen_ns(variant: Variant) -> tuple[float, str]:
            _, printed = variant.run([str(program), str(STRLEN_CALLS)])
            ns, total = printed.split()
            return float(ns), total

        strlen = compare("strlen 16 bytes (ns/call)", args.strlen_rounds, strlen_ns, variants)

    record_seconds("python3 json/re/pickle/sqlite3 mix", python)
    record_seconds("gzip -9 of 50 MiB", gzip)
    record_seconds("xz -T1 of 50 MiB", xz)
    record(
        "strlen of 16 bytes in a loop, padded glibc prepared+runtime vs unprepared",
        f"{statistics.median(strlen.prepared):.2f} ns/call",
        f"unprepared {statistics.median(strlen.unprepared):.2f} ns/call",
        strlen.ratio(),
        "report",
    )
    print(f"(runtime: {runtime})")


if __name__ == "__main__":
    main()
