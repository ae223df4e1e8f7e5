"""The assembly source of a patch object made from two builds: the new build's code of every
function the patch carries, byte for byte, with each field the linker filled pointed again at
what it referred to.

Code the patch carries is reached at its new place (a label here). What stays in the running
library (unchanged functions, existing data, the library's GOT slots) is reached there, by a
near reference (`__ulp_near_<offset>`: the runtime fills the field once the object is loaded,
docs/writing-patches.md), so the patch and the library share one copy of every variable.
Another library's symbols keep their relocation, for the loader. Data no symbol covers (string
literals, switch tables) that carried code refers to is copied with it. (docs/diff.md.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from ulp_build.elf import lsda
from ulp_build.elf.constants import (
    R_X86_64_GLOB_DAT,
    R_X86_64_PC32,
    SHF_WRITE,
    SHT_NOBITS,
)
from ulp_build.elf.eh_frame import Cie, EhFrame, Fde
from ulp_build.elf.relocations import Relocation
from ulp_build.patch import near
from ulp_build.patch.library_build import (
    GOT_LOADS,
    RELOCATION_NAMES,
    Item,
    LibraryBuild,
    Region,
    Target,
    width,
)
from ulp_build.prepare import patchable

# The initial instructions of the CIE gcc and the assembler write on x86-64: the CFA is %rsp + 8
# and the return address is at CFA - 8.
_GAS_CIE = bytes.fromhex("0c07089001")
_BRANCHES = (0xE8, 0xE9)  # call, jmp rel32 (a jcc rel32 is 0f 8x, checked apart)


@dataclass
class PatchSource:
    """The assembly, the replacement of each patched function (the running library's name ->
    the label here), and one line per reference that cannot be carried."""

    text: str = ""
    replace: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def label_for(key: str, taken: set[str]) -> str:
    base = "ulp_diff_" + re.sub(r"[^A-Za-z0-9_.]", "_", key.split(":")[-1])
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def _local(label: str) -> str:
    """The name the patch's own code and data use for a function it carries: assembler-local,
    so the link resolves it here. The exported label of a function that replaces one may be
    preempted as far as the linker knows, and it refuses a PC32 (a switch table's entry, a
    `lea`) against such a symbol in a shared object."""
    return f".L{label}"


class _Writer:
    def __init__(
        self, old: LibraryBuild, new: LibraryBuild, carried: list[Item], kept_data: set[str]
    ) -> None:
        self.old, self.new = old, new
        self.kept_data = kept_data
        taken: set[str] = set()
        self.labels = {i.key: label_for(i.key, taken) for i in carried}
        self.carried = carried
        self.copies: dict[tuple[int, int], tuple[str, Region | Item]] = {}
        self.near: set[int] = set()
        self.problems: list[str] = []
        self._taken = taken
        self.eh_frame = EhFrame(new.elf)
        self._tables: list[tuple[str, bytes]] = []  # (label, the exception-handling table)
        self._personality_slots: dict[str, str] = {}  # routine -> the slot's label

    # -- the expression a moved field gets ------------------------------------------------------

    def _near(self, offset: int, addend: int) -> str:
        self.near.add(offset)
        return f"{near.PREFIX}{offset:x} + {addend}"

    def _copy(self, what: Region | Item) -> str:
        start, end = (what.start, what.end)
        key = (start, end)
        if key not in self.copies:
            # Named apart from every label: a carried function may be called `data_0`.
            name = label_for(f"data_{len(self.copies)}", self._taken)
            self.copies[key] = (name, what)
        return self.copies[key][0]

    @cached_property
    def _trampolines(self) -> dict[int, int]:
        """The running library's trampolines by the function each enters: the address it
        hands out for the function (docs/preparing-libraries.md)."""
        out: dict[int, int] = {}
        for tramp, entered in sorted(self.old.trampolines.items()):
            out.setdefault(entered, tramp)
        return out

    @cached_property
    def _dynsym_values(self) -> set[int]:
        """The running library's .dynsym values: an exported function's trampoline, or, for
        one it left untracked (a leaf, a name given to `rewrite --untracked`), its entry."""
        return {s.value for s in self.old.elf.dynamic_symbols if s.defined}

    def _handed_out_plain(self, entry: int) -> bool:
        """Whether the running library hands out the function at `entry` by its own address,
        having no trampoline for it: an exported function it left untracked, or one neither
        exported nor padded (assembly, mostly), whose address takings the rewriter leaves
        alone (prepare/tracked.py). A padded function it never took the address of has no
        trampoline either, and its plain address would be entered untracked."""
        return entry in self._dynsym_values or patchable.entry_nop(self.old.elf, entry) is None

    def _got_slot(self, name: str) -> int | None:
        """The running library's GOT slot of its exported symbol `name`."""
        elf = self.old.elf
        symbols = elf.dynamic_symbols
        for r in elf.relocations.every():
            if r.type != R_X86_64_GLOB_DAT or r.symbol >= len(symbols):
                continue
            if symbols[r.symbol].name == name:
                return r.offset
        return None

    def expression(
        self, where: str, rel: Relocation, target: Target, code: bytes, at: int
    ) -> tuple[int, str] | None:
        """The relocation type and expression of the field of `rel`, at `at` in `code`, or
        None (a problem). A GOT load the linker relaxed into a direct reference (`lea`, a
        direct call) is one: it moves as a PC32."""
        item, kind = target.item, rel.type
        if kind in GOT_LOADS and at >= 2 and (code[at - 1] in _BRANCHES or code[at - 2] == 0x8D):
            kind = R_X86_64_PC32
            if item is not None:
                target = Target("item", target.value, item=item, offset=target.value - item.start)
        if target.kind == "tls":
            self.problems.append(
                f"{where}: uses thread-local data ({target.name}), which `ulp diff` does not"
                " carry: write this patch by hand with a [references] tls entry"
            )
            return None
        if target.kind == "ifunc":
            self.problems.append(
                f"{where}: calls {target.name}, an IFUNC (the loader picks its code), which"
                " `ulp diff` cannot reach in the running library"
            )
            return None
        if target.kind == "external" or (target.kind == "got" and item is None):
            # Another library's, for the loader. `.symtab` names it with the version the
            # build bound (snprintf@GLIBC_2.2.5); the patch object links against the same.
            return kind, f"{target.name.split('@')[0]} + {rel.addend}"
        if target.kind == "got":
            # The running library's own GOT slot of the symbol, filled by its loader.
            slot = self._got_slot(target.name)
            if slot is None:
                self.problems.append(
                    f"{where}: loads the address of {target.name} from a GOT slot the"
                    " running library does not have"
                )
                return None
            return R_X86_64_PC32, self._near(slot, rel.addend)
        if target.kind == "region":
            region = target.region
            assert region is not None
            if region.section.flags & SHF_WRITE or region.section.type == SHT_NOBITS:
                # Writable data no symbol covers: its extent is a guess, and a copy would be
                # a second copy of running state.
                self.problems.append(
                    f"{where}: refers to writable data no symbol covers ({region.section.name}"
                    f" at {region.start:#x}), which a patch cannot share"
                )
                return None
            return kind, f"{self._copy(region)} + {target.offset}"
        if item is None:
            self.problems.append(f"{where}: refers to {target.name}, which it cannot place")
            return None
        if item.key in self.labels:
            return kind, f"{_local(self.labels[item.key])} + {target.value - item.start}"
        if kind not in near.TYPES:
            self.problems.append(
                f"{where}: refers to {item.key} with a {RELOCATION_NAMES.get(kind, kind)}"
                " field, which cannot reach the running library"
            )
            return None
        before = self.new.counterpart(item, self.old)
        if before is None and item.is_function:
            self.problems.append(f"{where}: refers to {item.key}, which it cannot place")
            return None
        if before is None:
            # New data the carried code uses: a fresh copy in the patch, its only user.
            return kind, f"{self._copy(item)} + {target.value - item.start}"
        offset = target.value - item.start
        if item.is_function:
            branch = code[at - 1] in _BRANCHES or (at >= 2 and code[at - 2] == 0x0F)
            if branch:
                return kind, self._near(before.start, offset)
            tramp = self._trampolines.get(before.start)
            if tramp is None and self._handed_out_plain(before.start):
                tramp = before.start
            if tramp is None:
                self.problems.append(
                    f"{where}: takes the address of {item.key}, which the running library"
                    " never hands out (it has no trampoline for it)"
                )
                return None
            return kind, self._near(tramp, offset)
        if item.key in self.kept_data or self.old.object_shape(before) == self.new.object_shape(
            item
        ):
            return kind, self._near(before.start, offset)
        return kind, f"{self._copy(item)} + {offset}"

    # -- the source ------------------------------------------------------------------------------

    def _bytes(self, raw: bytes) -> list[str]:
        return [
            "        .byte " + ", ".join(f"0x{b:02x}" for b in raw[i : i + 16])
            for i in range(0, len(raw), 16)
        ]

    def _code(self, item: Item, exported: bool) -> list[str]:
        new = self.new
        label = self.labels[item.key]
        code = new.code(item)
        lines = ["", "        .p2align 4"]
        if exported:
            lines.append(f"        .globl {label}")
        lines += [f"        .type {label}, @function", f"{label}:", f"{_local(label)}:"]
        lines += self._unwind(item)
        done = 0
        for _start, end in new.instruction_ends(item):
            for rel in new.relocations_in(_start, end):
                at = rel.offset - item.start
                lines += self._bytes(code[done:at])
                moved = self.expression(item.key, rel, new.target(rel, end), code, at)
                n = width(rel.type)
                if moved is not None:
                    lines.append(f"        .reloc ., {RELOCATION_NAMES[moved[0]]}, {moved[1]}")
                lines += self._bytes(bytes(n))
                done = at + n
        lines += self._bytes(code[done:])
        lines += ["        .cfi_endproc", f"        .size {label}, . - {label}"]
        return lines

    def _unwind(self, item: Item) -> list[str]:
        """The function's FDE instructions, as they are: they describe offsets from its start,
        and the bytes are the same. The assembler's CIE must be the compiler's, which holds
        for gcc's code. Its exception-handling table moves with it (_exception_table)."""
        fde = self.eh_frame.at(item.start)
        if fde is None:
            self.problems.append(f"{item.key}: has no unwind information (.eh_frame) to carry")
            return ["        .cfi_startproc"]
        cie = fde.cie
        usual = (cie.code_align, cie.data_align, cie.return_column) == (1, -8, 16)
        if not usual or cie.initial.rstrip(b"\0") != _GAS_CIE:
            self.problems.append(
                f"{item.key}: its unwind information cannot be carried (a CIE the assembler"
                " does not write)"
            )
            return ["        .cfi_startproc"]
        program = fde.instructions.rstrip(b"\0")
        lines = ["        .cfi_startproc"]
        if fde.lsda:
            lines += self._exception_table(item, fde)
        return lines + [
            "        .cfi_escape " + ", ".join(f"0x{b:02x}" for b in program[i : i + 16])
            for i in range(0, len(program), 16)
        ]

    def _exception_table(self, item: Item, fde: Fde) -> list[str]:
        """The directives pointing the function's FDE at a copy of its exception-handling
        table (destructors run as an exception passes, `noexcept`), and the copy, for `write`
        to emit. The table moves as bytes when all its places are offsets from the function's
        start; a type table (`catch`, exception specifications) would point at typeinfo
        objects, and is refused."""
        new, cie = self.new, fde.cie
        sec = new.section_at(fde.lsda)
        end = 0 if sec is None else sec.addr + sec.size
        table = None if sec is None else lsda.read(new.elf.read(fde.lsda, end - fde.lsda))
        routine = self._personality(cie)
        if table is None or table.has_types or not table.within(item.symbol.size):
            why = "catches exceptions or has exception specifications" if table else "unread"
            self.problems.append(
                f"{item.key}: its exception-handling table cannot be carried ({why})"
            )
            return []
        if routine is None:
            self.problems.append(f"{item.key}: its personality routine is not another library's")
            return []
        slot = self._personality_slots.get(routine)
        if slot is None:
            slot = label_for(f"personality_{len(self._personality_slots)}", self._taken)
            self._personality_slots[routine] = slot
        label = f".L{label_for(f'lsda_{len(self._tables)}', self._taken)}"
        self._tables.append((label, table.data))
        # The encodings gcc uses: the slot and the table, each by a signed 32-bit distance.
        return [f"        .cfi_personality 0x9b, {slot}", f"        .cfi_lsda 0x1b, {label}"]

    def _personality(self, cie: Cie) -> str | None:
        """The name of the routine the CIE's FDEs unwind with, read through the slot gcc points
        at (`DW.ref.__gxx_personality_v0`): another library's symbol, bound by the loader."""
        if cie.personality_encoding != 0x9B:
            return None
        for rel in self.new.relocations_in(cie.personality, cie.personality + 8):
            target = self.new.target(rel, None)
            if rel.offset == cie.personality and target.kind == "external":
                return target.name.split("@")[0]
        return None

    def _handling(self) -> list[str]:
        """The copied exception-handling tables, and a slot per personality routine that their
        FDEs point at, in the patch's own data."""
        lines: list[str] = []
        if self._tables:
            lines += ["", '        .section .gcc_except_table, "a", @progbits']
        for label, data in self._tables:
            lines += ["        .balign 4", f"{label}:", *self._bytes(data)]
        for routine, slot in self._personality_slots.items():
            lines += ["", f'        .section .data.rel.ro.{slot}, "aw"', "        .balign 8",
                      f"{slot}:", f"        .quad {routine}"]  # fmt: skip
        return lines

    def _data(self, name: str, what: Region | Item) -> list[str]:
        new = self.new
        sec = what.section
        align = (what.start & -what.start) if what.start else 64
        if sec.type == SHT_NOBITS:
            kind = ".bss"
        elif sec.flags & SHF_WRITE:
            kind = ".data"
        else:
            kind = ".rodata"
        lines = ["", f"        .section {kind}.ulp_diff, \"a{'w' if kind != '.rodata' else ''}\"",
                 f"        .balign {min(align, 64)}", f"{name}:"]  # fmt: skip
        if kind == ".bss":
            return [*lines, f"        .zero {what.end - what.start}"]
        raw = new.elf.read(what.start, what.end - what.start)
        done = 0
        for rel in new.relocations_in(what.start, what.end):
            at = rel.offset - what.start
            lines += self._bytes(raw[done:at])
            target = new.target(rel, None, region_start=what.start)
            if target.item is not None and target.item.key in self.labels:
                label = _local(self.labels[target.item.key])
                expr = f"{label} + {target.value - target.item.start}"
                lines.append(f"        .reloc ., {RELOCATION_NAMES[rel.type]}, {expr}")
            elif target.kind == "external":
                expr = f"{target.name.split('@')[0]} + {rel.addend}"
                lines.append(f"        .reloc ., {RELOCATION_NAMES[rel.type]}, {expr}")
            else:
                copied = what.key if isinstance(what, Item) else f"{sec.name} at {what.start:#x}"
                self.problems.append(
                    f"{new.elf.name}: data the patch copies ({copied}) refers to"
                    f" {target.item.key if target.item else target.name} of the running library"
                )
            lines += self._bytes(bytes(width(rel.type)))
            done = at + width(rel.type)
        lines += self._bytes(raw[done:])
        return lines

    def write(self, entries: dict[str, Item]) -> str:
        body: list[str] = ["        .text"]
        exported = {i.key for i in entries.values()}
        for item in self.carried:
            body += self._code(item, item.key in exported)
        # Every copy is made by the code above: copied data refers only to carried code and
        # other libraries (_data), never to more data to copy.
        for name, what in self.copies.values():
            body += self._data(name, what)
        body += self._handling()
        head = [f'        .section {near.SECTION}, "a"']
        for offset in sorted(self.near):
            name = f"{near.PREFIX}{offset:x}"
            # Global and hidden: the assembler keeps a relocation against a local symbol as
            # one against its section, which would lose the offset the name carries.
            head += [f"        .globl {name}", f"        .hidden {name}", f"{name}:"]
            head.append("        .byte 0")
        tail = ["", '        .section .note.GNU-stack, "", @progbits']
        # A file symbol of our own: else the linker names the local symbols' file after the
        # object gcc assembles this into, whose name is random, and no two patches are alike.
        top = ["# Written by `ulp diff`.", '        .file "patch.s"']
        return "\n".join([*top, *head, *body, *tail]) + "\n"


def write(
    old: LibraryBuild,
    new: LibraryBuild,
    carried: list[Item],
    entries: dict[str, Item],
    kept_data: set[str],
) -> PatchSource:
    """The patch object's source: `carried` (the new build's functions, in order), of which
    `entries` replace the running library's functions of the same names (name -> item)."""
    writer = _Writer(old, new, carried, kept_data)
    text = writer.write(entries)
    replace = {name: writer.labels[item.key] for name, item in entries.items()}
    return PatchSource(text, replace, writer.problems)
