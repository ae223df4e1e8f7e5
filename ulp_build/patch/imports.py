"""The target's exported functions a patch object calls by name.

The loader resolves the object's undefined symbols in the process's global scope and the
object's own dependencies. A target loaded with RTLD_LOCAL (as Python loads extension modules
and what they link) is in neither, so such a call would fail to bind. But a call by name goes
through the object's PLT, that is through a GOT slot (an R_X86_64_JUMP_SLOT relocation) that
the loader binds lazily, on the first call: the runtime loads the object lazily and fills each
slot itself with the target's symbol, before any code of the object runs but its constructors.
Every other use of such a symbol is bound as the object loads and cannot be served that way;
`problems` names each, with its fix.

An object that names the target's soname among its DT_NEEDED needs none of this: the loader
matches that name with the target already loaded, in whatever scope, and the target is then in
the object's own scope, so the loader binds every use of it, variables, addresses and IFUNCs
included, as for any other user of the library. (The C library is the usual case: every object
gcc links needs libc.so.6.)
"""

from __future__ import annotations

from ulp_build.elf import (
    R_X86_64_64,
    R_X86_64_GLOB_DAT,
    R_X86_64_JUMP_SLOT,
    STT_FUNC,
    STT_GNU_IFUNC,
    ElfFile,
    Symbol,
)
from ulp_build.patch.metadata import Import

_RELOCATION_NAMES = {R_X86_64_64: "R_X86_64_64", R_X86_64_GLOB_DAT: "R_X86_64_GLOB_DAT"}


def plt_slots(obj: ElfFile) -> dict[str, int]:
    """The GOT slot of each undefined function `obj` calls through its PLT, by name."""
    undefined = {s.index: s.name for s in obj.dynamic_symbols if not s.defined and s.name}
    return {
        undefined[r.symbol]: r.offset
        for r in obj.relocations.plt()
        if r.type == R_X86_64_JUMP_SLOT and r.symbol in undefined
    }


def find(target: ElfFile, obj: ElfFile) -> tuple[list[Import], list[str]]:
    """What `obj` calls by name among `target`'s exports, and a line per use that cannot
    work whatever the target's scope (without the description's location)."""
    exported: dict[str, list[Symbol]] = {}
    for s in target.dynamic_symbols:
        if s.defined and s.name:
            exported.setdefault(s.name, []).append(s)
    used = {s.index: s for s in obj.dynamic_symbols if not s.defined and s.name in exported}
    if not used or (target.soname is not None and target.soname in obj.needed):
        return [], []
    problems = []
    for r in obj.relocations.every():
        sym = used.get(r.symbol)
        if sym is None:
            continue
        how = _RELOCATION_NAMES.get(r.type, f"relocation type {r.type}")
        if exported[sym.name][0].type in (STT_FUNC, STT_GNU_IFUNC):
            problems.append(
                f"{sym.name}: the target's function is used through its address ({how}: built"
                " with -fno-plt, or its address taken), which the loader binds as it loads the"
                " object; call it by name (without -fno-plt), or take its address from a"
                " [references] function reference"
            )
        else:
            problems.append(
                f"{sym.name}: the target's variable is used directly ({how}), which the loader"
                " binds as it loads the object; reach it through a [references] entry"
            )
    out = []
    slots = plt_slots(obj)
    for name in sorted(n for n in slots if n in exported):
        definitions = {s.value: s for s in exported[name]}
        if len(definitions) > 1:
            problems.append(
                f"{name}: the target defines several versions of it; call the one meant through"
                " a [references] function reference"
            )
            continue
        (sym,) = definitions.values()
        if sym.type == STT_GNU_IFUNC:
            problems.append(
                f"{name}: is an IFUNC of the target; call the implementation its resolver"
                " returns through a [references] function reference"
            )
            continue
        if sym.type == STT_FUNC:
            out.append(Import(name, sym.value))
    if out and obj.binds_now:
        names = ", ".join(i.name for i in out)
        problems.append(
            f"linked with -z now, the object has the loader bind its calls of the target"
            f" ({names}) as it loads; link it with -z lazy"
        )
    return out, problems
