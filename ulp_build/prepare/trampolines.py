"""The code and data the rewrite adds: the RX segment (a trampoline per tracked function and
IFUNC, then ulp_entry and the IFUNC wrappers) and the RW segment (the runtime slot, the
descriptor and the IFUNC slots), at the addresses `segments.Layout` gave them.

The instructions themselves are codegen's; this module places them and says where each
function's trampoline and each resolver's wrapper landed, which is what the grown `.dynsym`
points the tracked symbols at.
"""

from __future__ import annotations

from dataclasses import dataclass

from ulp_build.elf import ElfFile
from ulp_build.prepare import codegen
from ulp_build.prepare.layout import (
    DESCRIPTOR,
    DESCRIPTOR_FLAG_IBT,
    DESCRIPTOR_MAGIC,
    DESCRIPTOR_OFFSET,
    DESCRIPTOR_VERSION,
    RUNTIME_SLOT_OFFSET,
)
from ulp_build.prepare.segments import Layout, wrapper_stride
from ulp_build.prepare.tracked import Tracked


@dataclass(frozen=True)
class CodeSegment:
    """The RX segment's bytes, and where each trampoline and IFUNC wrapper landed."""

    code: bytes
    trampoline_at: dict[int, int]  # function entry -> its trampoline
    wrapper_at: dict[int, int]  # IFUNC resolver -> its wrapper
    wrapper_size: dict[int, int]  # IFUNC resolver -> its wrapper's size


def code_segment(lay: Layout, tracked: Tracked, ibt: bool) -> CodeSegment:
    """The RX segment: trampolines, ulp_entry, IFUNC wrappers; and where each landed."""
    functions, ifuncs = tracked.functions, tracked.ifuncs
    tsize = codegen.trampoline_size(ibt)
    trampoline_at = {func: lay.x_va + i * tsize for i, func in enumerate(functions)}
    ifunc_tramps = [lay.x_va + (len(functions) + j) * tsize for j in range(len(ifuncs))]
    targets = [(False, f) for f in functions]
    targets += [(True, lay.ifunc_slot(j)) for j in range(len(ifuncs))]
    code = bytearray(codegen.trampoline_table(lay.x_va, targets, lay.track, ibt))
    code = code.ljust(lay.track - lay.x_va, codegen.INT3)
    entry = codegen.ulp_entry(
        lay.track, lay.w_va + RUNTIME_SLOT_OFFSET, lay.w_va + DESCRIPTOR_OFFSET
    )
    code += entry.ljust(lay.wrappers - lay.track, codegen.INT3)
    wrapper_at: dict[int, int] = {}
    wrapper_size: dict[int, int] = {}
    for j, resolver in enumerate(ifuncs):
        wrapper_at[resolver] = at = lay.x_va + len(code)
        leaves = tracked.leaf_choices.get(resolver, ())
        wrapper = codegen.ifunc_wrapper(
            at, resolver, lay.ifunc_slot(j), ifunc_tramps[j], ibt, leaves
        )
        wrapper_size[resolver] = len(wrapper)
        code += wrapper.ljust(wrapper_stride(ibt, len(leaves)), codegen.INT3)
    return CodeSegment(bytes(code), trampoline_at, wrapper_at, wrapper_size)


def data_segment(elf: ElfFile, lay: Layout, ntrampolines: int, ibt: bool) -> bytes:
    """The RW segment: runtime slot (0 until relocated), descriptor, IFUNC slots."""
    data = bytearray(lay.w_size)
    flags = DESCRIPTOR_FLAG_IBT if ibt else 0
    note = elf.build_id_note
    build_id, build_id_addr = note if note is not None else (b"", 0)
    DESCRIPTOR.pack_into(
        data,
        DESCRIPTOR_OFFSET,
        magic=DESCRIPTOR_MAGIC,
        version=DESCRIPTOR_VERSION,
        flags=flags,
        link_address=lay.w_va + DESCRIPTOR_OFFSET,
        trampolines=lay.x_va,
        trampoline_count=ntrampolines,
        trampoline_size=codegen.trampoline_size(ibt),
        build_id=build_id_addr,
        build_id_size=len(build_id),
    )
    return bytes(data)
