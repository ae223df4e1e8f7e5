"""What differs between two builds of a library, function by function and object by object,
and what of it a live patch cannot carry.

A function is changed when its shape (library_build.py) differs: its code, or what any of its
fields refers to. Callers holding an inlined copy of a changed function differ too, so they are
found the same way, without DWARF. Data is never patched: an existing object whose size or
initial value differs is refused unless the author accepts it by name (then the running one is
kept, with its current value); read-only data that changed is carried by the patch, with the
functions that read it. (docs/diff.md.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ulp_build.elf.constants import SHF_WRITE
from ulp_build.patch.library_build import Item, LibraryBuild


@dataclass
class Changes:
    """Keys of the changed, new and removed functions and objects, in address order of the
    build they are in."""

    changed: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed_data: list[str] = field(default_factory=list)
    new_data: list[str] = field(default_factory=list)
    removed_data: list[str] = field(default_factory=list)
    # (object, function): an unchanged object holding addresses inside a changed function.
    stale: list[tuple[str, str]] = field(default_factory=list)
    # (object, constant): an unchanged object holding the address of a read-only object that
    # changed, which the patch carries anew: the running one still points at the old one.
    pointing_at_old: list[tuple[str, str]] = field(default_factory=list)
    # Keys several functions or objects share (library_build.shared_keys) whose copies differ
    # between the builds: which of them changed cannot be told by name.
    ambiguous: list[str] = field(default_factory=list)


def _ordered(items: list[Item]) -> list[str]:
    return [i.key for i in sorted(items, key=lambda i: i.start)]


def compare(old: LibraryBuild, new: LibraryBuild) -> Changes:
    out = Changes()
    changed, added, changed_data, added_data = [], [], [], []
    for key, item in new.items.items():
        before = old.items.get(key)
        if item.is_function:
            if before is None or not before.is_function:
                added.append(item)
            elif old.function_shape(before) != new.function_shape(item):
                changed.append(item)
        elif before is None or before.is_function:
            added_data.append(item)
        elif old.object_shape(before) != new.object_shape(item):
            changed_data.append(item)
    # Code reading read-only data that changed (a constant table, a switch's values) changes
    # with it: the patch carries it, reading the new copy. Writable data stays the running
    # process's (refused, or accepted as it is), so its readers are not changed by it.
    constants = {i.key for i in changed_data if not i.section.flags & SHF_WRITE}
    if constants:
        known = {i.key for i in changed + added}
        changed += [
            i
            for i in new.items.values()
            if i.is_function and i.key not in known and new.referred(i) & constants
        ]
    # What points inside a changed function past its entry would enter its old code: a
    # function doing so (`foo.cold` returning into foo) is carried with it; an object doing so
    # (a table of label addresses) cannot be, as the running library's copy holds them. And a
    # carried function carries its cold part, which only it enters (by its jumps, and by the
    # switch tables the patch copies with it, which cannot refer to the running library): the
    # new foo runs the new foo.cold. The part has no entry of its own to replace, so the
    # running foo keeps entering its old one.
    carried = {i.key for i in changed + added}
    while True:
        more = [i for i in new.items.values()
                if i.is_function and i.key not in carried
                and (new.inside(i) & carried or new.split_from(i.key) in carried)]  # fmt: skip
        if not more:
            break
        changed += more
        carried.update(i.key for i in more)
    stale = {i.key for i in changed_data}
    out.stale = [
        (i.key, key)
        for i in sorted(new.items.values(), key=lambda i: i.start)
        if not i.is_function and i.key in old.items and i.key not in stale
        for key in sorted(new.inside(i) & carried)
    ]
    out.pointing_at_old = [
        (i.key, key)
        for i in sorted(new.items.values(), key=lambda i: i.start)
        if not i.is_function and i.key in old.items and i.key not in stale
        for key in sorted(new.referred(i) & constants)
    ]
    for key in sorted(old.shared_keys.keys() | new.shared_keys.keys()):
        before, after = old.all_items(key), new.all_items(key)
        shapes = [
            [b.function_shape(i) if i.is_function else b.object_shape(i) for i in found]
            for b, found in ((old, before), (new, after))
        ]
        if shapes[0] != shapes[1]:
            out.ambiguous.append(key)
    gone = [i for k, i in old.items.items() if k not in new.items]
    out.changed, out.new = _ordered(changed), _ordered(added)
    out.changed_data, out.new_data = _ordered(changed_data), _ordered(added_data)
    out.removed = _ordered([i for i in gone if i.is_function])
    out.removed_data = _ordered([i for i in gone if not i.is_function])
    return out
