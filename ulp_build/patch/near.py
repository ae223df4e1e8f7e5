"""Near references: fields of the patch object's code that address the running target's own
code and data directly, RIP-relative, as the target's code does (a static variable, a static
function: neither is in its .dynsym, so neither the loader nor a [references] entry by name
can reach it, and a copy of it in the object would be a second copy of its state).

The object says which by a placeholder symbol per address, `__ulp_near_HEX` (HEX: the offset
from the target's load base, lowercase hex), defined in its section `.ulp.near`; it is linked
with `--emit-relocs`, so the link-time relocations of its code stay in the file. Each
R_X86_64_PC32 or R_X86_64_PLT32 relocation of an executable section against a placeholder is a
near reference: once the object is loaded, the runtime writes the displacement from the field to
the target's address into it (runtime/load.c), before any code of the object can run but its
constructors.

The placeholders must be global and hidden (`.globl` and `.hidden`): the assembler turns a
relocation against a local symbol into one against its section, which no longer says which
placeholder it meant; the link turns them local, so the object exports none.
"""

from __future__ import annotations

import re

from ulp_build.elf import (
    R_X86_64_PC32,
    R_X86_64_PLT32,
    SHF_EXECINSTR,
    STT_FUNC,
    STT_OBJECT,
    ElfFile,
)
from ulp_build.patch.metadata import Near

SECTION = ".ulp.near"
PREFIX = "__ulp_near_"
_HEX = re.compile(r"[0-9a-f]{1,16}")
TYPES = (R_X86_64_PC32, R_X86_64_PLT32)


def find(target: ElfFile, obj: ElfFile) -> tuple[list[Near], list[str]]:
    """The near references of `obj`'s code into `target`, and a line per problem, naming the
    symbol (without the description's location)."""
    placeholders = obj.section(SECTION)
    tables = obj.link_relocations
    problems: dict[str, None] = {}  # in order, each once (a symbol may be used many times)
    if placeholders is not None and not any(t.applies_to.flags & SHF_EXECINSTR for t in tables):
        problems[
            f"{SECTION}: the object has placeholders but not the relocations of its code"
            " (link it with -Wl,--emit-relocs)"
        ] = None
    out = []
    for table in tables:
        applies_to = table.applies_to
        symbols = table.symbols
        for r in table.every:
            if r.symbol >= len(symbols):
                problems[f"{table.section.name}: corrupt (symbol index {r.symbol})"] = None
                continue
            sym = symbols[r.symbol]
            named = sym.name.startswith(PREFIX)
            if not named and (placeholders is None or sym.shndx != placeholders.index):
                continue
            if not named:
                problems[
                    f"{applies_to.name}+{r.offset - applies_to.addr:#x}: refers into {SECTION}"
                    f" by {sym.name or 'its section'}, not by a {PREFIX} symbol (make the"
                    " placeholders .globl and .hidden: the assembler refers to a local one by"
                    " its section)"
                ] = None
                continue
            digits = sym.name[len(PREFIX) :]
            offset = int(digits, 16) if _HEX.fullmatch(digits) else None
            if offset is None:
                problem = (
                    f"malformed placeholder name: {PREFIX} then the target's offset in"
                    " lowercase hex (no 0x)"
                )
            elif placeholders is None or sym.shndx != placeholders.index:
                problem = f"a placeholder must be defined in {SECTION}"
            elif not applies_to.flags & SHF_EXECINSTR:
                problem = (
                    f"referenced from {applies_to.name}, which is not code: only instructions"
                    " can address the target near"
                )
            elif r.type not in TYPES:
                problem = (
                    f"referenced by relocation type {r.type} at {r.offset:#x}: a near reference"
                    " is R_X86_64_PC32 or R_X86_64_PLT32 (a RIP-relative operand or a call)"
                )
            elif not target.is_loaded(offset):
                problem = f"offset {offset:#x} is not in the target's loaded segments"
            elif not obj.is_code(r.offset, 4):
                problem = f"its field at {r.offset:#x} is not in the object's executable segment"
            else:
                out.append(Near(_name(target, offset), offset, r.addend, r.offset))
                continue
            problems[f"{sym.name}: {problem}"] = None
    return sorted(out, key=lambda n: n.field), list(problems)


def _name(target: ElfFile, offset: int) -> str:
    """The target's function or variable at `offset` (`name+0x4` inside it), else the offset:
    what `ulp dump` shows."""
    for sym in target.symtab_symbols:
        if sym.defined and sym.name and sym.type in (STT_FUNC, STT_OBJECT):
            if sym.value == offset:
                return sym.name
            if sym.value < offset < sym.value + sym.size:
                return f"{sym.name}+{offset - sym.value:#x}"
    return f"{offset:#x}"
