"""What DWARF tells of two builds that their code cannot: a changed function's signature (its
return and parameter types, as written in the source: typedefs, qualifiers and struct names),
whose callers in the running library would pass what the new code does not expect; and a struct
or union whose layout changed, whose objects the old and the new code would share, each reading
its own layout. Builds without `-g` are not checked. (docs/diff.md.)"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from ulp_build.elf import ElfFile
from ulp_build.errors import UlpError
from ulp_build.patch.library_build import Item

if TYPE_CHECKING:
    from elftools.dwarf.die import DIE

_WRAPPERS = {
    "DW_TAG_pointer_type": "*",
    "DW_TAG_const_type": "const ",
    "DW_TAG_volatile_type": "volatile ",
    "DW_TAG_restrict_type": "restrict ",
    "DW_TAG_reference_type": "&",
    "DW_TAG_array_type": "[]",
}


def _type(die: DIE | None, depth: int = 0) -> str:
    if die is None:
        return "void"
    if depth > 16:
        return "..."
    name = die.attributes.get("DW_AT_name")
    tag = die.tag
    if name is not None and tag != "DW_TAG_subroutine_type":
        kind = {"DW_TAG_structure_type": "struct ", "DW_TAG_union_type": "union ",
                "DW_TAG_enumeration_type": "enum "}.get(tag, "")  # fmt: skip
        return kind + name.value.decode(errors="replace")
    if tag in _WRAPPERS:
        return _WRAPPERS[tag] + _type(_of(die), depth + 1)
    if tag == "DW_TAG_subroutine_type":
        return _signature(die, depth + 1)
    return tag


def _signature(die: DIE, depth: int = 0) -> str:
    """A function's or function type's return type and parameter types: `int(char *, long)`."""
    params = [_type(_of(c), depth) for c in die.iter_children()
              if c.tag == "DW_TAG_formal_parameter"]  # fmt: skip
    return f"{_type(_of(die), depth)}({', '.join(params)})"


def _of(die: DIE) -> DIE | None:
    return die.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in die.attributes else None


def _layout(die: DIE) -> tuple[object, ...]:
    """A struct's or union's size and members: name, offset and type of each."""
    members = []
    for child in die.iter_children():
        if child.tag != "DW_TAG_member":
            continue
        name = child.attributes.get("DW_AT_name")
        where = child.attributes.get("DW_AT_data_member_location")
        bits = child.attributes.get("DW_AT_data_bit_offset")
        members.append(
            (
                name.value.decode(errors="replace") if name else "",
                where.value if where is not None and isinstance(where.value, int) else None,
                bits.value if bits is not None else None,
                _type(_of(child)),
            )
        )
    size = die.attributes.get("DW_AT_byte_size")
    return (size.value if size else None, tuple(members))


_DW_OP_ADDR = 0x03


def _owner(die: DIE) -> str:
    """The function a static variable is declared in, or "" for one of file scope."""
    parent = die.get_parent()
    while parent is not None and parent.tag != "DW_TAG_subprogram":
        parent = parent.get_parent()
    while parent is not None and "DW_AT_name" not in parent.attributes:
        origin = next((a for a in ("DW_AT_abstract_origin", "DW_AT_specification")
                       if a in parent.attributes), None)  # fmt: skip
        parent = parent.get_DIE_from_attribute(origin) if origin else None
    return "" if parent is None else parent.attributes["DW_AT_name"].value.decode(errors="replace")


_Read = tuple[dict[str, str], dict[str, set[tuple[object, ...]]], dict[int, str]]


def _read(elf: ElfFile) -> _Read | None:
    """Each defined function's signature by name, each named struct's and union's layouts
    (one per definition seen), and the function each static variable at a fixed address is
    declared in, by address; or None without DWARF."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        reader = ELFFile(io.BytesIO(elf.data))
        if not reader.has_dwarf_info():
            return None
        dwarf = reader.get_dwarf_info(relocate_dwarf_sections=False)
        out: dict[str, str] = {}
        layouts: dict[str, set[tuple[object, ...]]] = {}
        owners: dict[int, str] = {}
        for unit in dwarf.iter_CUs():
            for die in unit.iter_DIEs():
                where = die.attributes.get("DW_AT_location")
                if die.tag == "DW_TAG_variable" and where is not None:
                    expr = where.value
                    if isinstance(expr, list) and len(expr) == 9 and expr[0] == _DW_OP_ADDR:
                        owners[int.from_bytes(bytes(expr[1:]), "little")] = _owner(die)
                    continue
                if die.tag in ("DW_TAG_structure_type", "DW_TAG_union_type"):
                    if "DW_AT_name" in die.attributes and "DW_AT_declaration" not in die.attributes:
                        layouts.setdefault(_type(die), set()).add(_layout(die))
                    continue
                if die.tag != "DW_TAG_subprogram" or "DW_AT_name" not in die.attributes:
                    continue
                if "DW_AT_low_pc" not in die.attributes:
                    continue  # a declaration, or only inlined
                name = die.attributes["DW_AT_name"].value.decode(errors="replace")
                out.setdefault(name, _signature(die))
        return out, layouts, owners
    except (ELFError, AttributeError, KeyError, ValueError) as exc:
        raise UlpError(f"{elf.name}: unreadable DWARF ({exc})") from None


def changed(
    old: ElfFile, new: ElfFile, functions: list[Item], statics: list[tuple[Item, Item]]
) -> list[str]:
    """One line per function of `functions` whose signature differs between the builds, per
    struct or union whose layout does (code of both builds would share such objects, allocated
    by the old code, read by the new, each reading its own layout), and per static variable
    of `statics` (its item in each build) declared in another function in each build: gcc's
    number in its name (`count.1`) counts in the file, and moved to another variable."""
    was_read, now_read = _read(old), _read(new)
    if was_read is None or now_read is None:
        return []
    (before, was_layouts, was_owners), (after, now_layouts, now_owners) = was_read, now_read
    out = []
    for was_item, now_item in statics:
        was, now = was_owners.get(was_item.start), now_owners.get(now_item.start)
        if was != now:
            out.append(
                f"{now_item.key}: the static of {was or '?'} in {old.name}, but of {now or '?'}"
                " in the new build: gcc renumbered it, and the patch would use another variable"
            )
    out += [
        f"{name}: layout changed (size or members); code of both builds would share its objects"
        for name in sorted(was_layouts.keys() & now_layouts.keys())
        if was_layouts[name] != now_layouts[name]
    ]
    for item in functions:
        name = item.name.split(".")[0]
        was, now = before.get(name), after.get(name)
        if was is not None and now is not None and was != now:
            out.append(
                f"{item.key}: signature changed ({name}: {was} -> {now}); callers in the"
                " running library still pass what the old one takes"
            )
    return out
