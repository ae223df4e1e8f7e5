"""String tables (`.shstrtab`, `.strtab`, `.dynstr`): NUL-terminated names found by offset.

The one place names are decoded from an ELF file. A name that is not UTF-8 is decoded with
replacement characters rather than refused: names are only ever shown or compared.
"""

from __future__ import annotations

from collections.abc import Iterable

from ulp_build.elf.errors import ElfError


class StringTable:
    """The bytes of one string table, and the name of the file they come from (for errors)."""

    def __init__(self, data: bytes, file_name: str) -> None:
        self.data = data
        self.file_name = file_name

    def get(self, index: int) -> str:
        """The string at byte offset `index` (offset 0 of a missing table is the empty name)."""
        table = self.data
        if index == 0 and not table:
            return ""
        if index >= len(table):
            raise ElfError(f"{self.file_name}: corrupt string table (index {index} beyond its end)")
        end = table.find(b"\0", index)
        if end < 0:
            raise ElfError(f"{self.file_name}: corrupt string table (unterminated string)")
        return table[index:end].decode("utf-8", "replace")

    def names(self, offsets: Iterable[int], symbol_table: str) -> list[str]:
        """The strings at many offsets: the names of a symbol table's symbols, in order.

        libc has 3000 dynamic symbols: decoding the table once and slicing str is cheaper than
        one `get` per name; the rare non-ASCII table falls back to one decode per name.
        """
        data = self.data
        text = data.decode("ascii") if data.isascii() else None
        find = data.find
        out = []
        for offset in offsets:
            end = find(b"\0", offset)
            if end < 0:
                raise ElfError(f"{self.file_name}: corrupt string table of {symbol_table}")
            out.append(
                text[offset:end]
                if text is not None
                else data[offset:end].decode("utf-8", "replace")
            )
        return out
