"""The numbers and record formats of x86-64 ELF64 little-endian files that the package reads or
writes, named as in <elf.h> so each can be looked up there.

`align` is here too: ELF rounds offsets and sizes up to a power of two in many places (notes,
segments, the tables the rewriter appends), and one helper serves them all.
"""

import struct

# e_ident and the ELF header
ELFCLASS64 = 2
ELFDATA2LSB = 1
EM_X86_64 = 62
ET_EXEC = 2
ET_DYN = 3

# Program headers
PT_LOAD = 1
PT_DYNAMIC = 2
PT_NOTE = 4
PT_PHDR = 6
PT_TLS = 7
PT_GNU_STACK = 0x6474E551
PF_X = 1
PF_W = 2
PF_R = 4

# Section headers
SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_RELA = 4
SHT_HASH = 5
SHT_DYNAMIC = 6
SHT_NOBITS = 8
SHT_REL = 9
SHT_DYNSYM = 11
SHT_RELR = 19
SHT_GNU_HASH = 0x6FFFFFF6
SHT_GNU_VERDEF = 0x6FFFFFFD
SHT_GNU_VERNEED = 0x6FFFFFFE
SHT_GNU_VERSYM = 0x6FFFFFFF
SHF_WRITE = 1
SHF_ALLOC = 2
SHF_EXECINSTR = 4

SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2

# Symbols: st_info holds the type in its low 4 bits and the binding in its high 4 bits
STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3
STT_FILE = 4
STT_TLS = 6
STT_GNU_IFUNC = 10
STB_GLOBAL = 1
STB_WEAK = 2

# Dynamic section tags
DT_NULL = 0
DT_NEEDED = 1
DT_PLTRELSZ = 2
DT_PLTGOT = 3
DT_HASH = 4
DT_STRTAB = 5
DT_SYMTAB = 6
DT_RELA = 7
DT_RELASZ = 8
DT_RELAENT = 9
DT_STRSZ = 10
DT_SYMENT = 11
DT_INIT = 12
DT_FINI = 13
DT_SONAME = 14
DT_RPATH = 15
DT_SYMBOLIC = 16
DT_REL = 17
DT_RELSZ = 18
DT_RELENT = 19
DT_PLTREL = 20
DT_DEBUG = 21
DT_TEXTREL = 22
DT_JMPREL = 23
DT_BIND_NOW = 24
DT_INIT_ARRAY = 25
DT_FINI_ARRAY = 26
DT_INIT_ARRAYSZ = 27
DT_FINI_ARRAYSZ = 28
DT_RUNPATH = 29
DT_FLAGS = 30
DT_PREINIT_ARRAY = 32
DT_PREINIT_ARRAYSZ = 33
DT_SYMTAB_SHNDX = 34
DT_RELRSZ = 35
DT_RELR = 36
DT_RELRENT = 37
DT_VALRNGLO = 0x6FFFFD00  # tags up to DT_VALRNGHI hold values
DT_VALRNGHI = 0x6FFFFDFF
DT_ADDRRNGLO = 0x6FFFFE00  # tags up to DT_ADDRRNGHI hold addresses
DT_ADDRRNGHI = 0x6FFFFEFF
DT_GNU_HASH = 0x6FFFFEF5
DT_VERSYM = 0x6FFFFFF0
DT_RELACOUNT = 0x6FFFFFF9
DT_RELCOUNT = 0x6FFFFFFA
DT_FLAGS_1 = 0x6FFFFFFB
DT_VERDEF = 0x6FFFFFFC
DT_VERDEFNUM = 0x6FFFFFFD
DT_VERNEED = 0x6FFFFFFE
DT_VERNEEDNUM = 0x6FFFFFFF
DT_X86_64_PLT = 0x70000000
DT_X86_64_PLTSZ = 0x70000001
DT_X86_64_PLTENT = 0x70000003
DT_AUXILIARY = 0x7FFFFFFD
DT_FILTER = 0x7FFFFFFF
DF_1_NOW = 0x00000001
DF_1_PIE = 0x08000000
DF_BIND_NOW = 0x00000008  # in DT_FLAGS

# GNU symbol versions: a .gnu.version entry is a version index, its top bit set for a hidden
# (non-default) version; a version definition flagged VER_FLG_BASE names the file itself.
VER_NDX_GLOBAL = 1
VERSYM_HIDDEN = 0x8000
VERSYM_INDEX = 0x7FFF
VER_FLG_BASE = 1

# Relocation types
R_X86_64_NONE = 0
R_X86_64_64 = 1
R_X86_64_PC32 = 2
R_X86_64_PLT32 = 4
R_X86_64_GLOB_DAT = 6
R_X86_64_JUMP_SLOT = 7
R_X86_64_RELATIVE = 8
R_X86_64_GOTPCREL = 9
R_X86_64_32 = 10
R_X86_64_32S = 11
R_X86_64_DTPMOD64 = 16
R_X86_64_DTPOFF64 = 17
R_X86_64_TPOFF64 = 18
R_X86_64_PC64 = 24
R_X86_64_TLSDESC = 36
R_X86_64_IRELATIVE = 37
R_X86_64_GOTPCRELX = 41
R_X86_64_REX_GOTPCRELX = 42

# Notes and GNU properties
NT_GNU_BUILD_ID = 3
NT_GNU_PROPERTY_TYPE_0 = 5
GNU_PROPERTY_X86_FEATURE_1_AND = 0xC0000002
GNU_PROPERTY_X86_FEATURE_1_IBT = 1

# Record formats
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
SHDR = struct.Struct("<IIQQQQIIQQ")
SYM = struct.Struct("<IBBHQQ")
DYN = struct.Struct("<qQ")
RELA = struct.Struct("<QQq")
VERSYM = struct.Struct("<H")
VERDEF = struct.Struct("<HHHHIII")  # vd_version, vd_flags, vd_ndx, vd_cnt, vd_hash, vd_aux, vd_next
VERDAUX = struct.Struct("<II")  # vda_name, vda_next
NHDR = struct.Struct("<III")  # n_namesz, n_descsz, n_type
GNU_PROPERTY = struct.Struct("<II")  # pr_type, pr_datasz
GNU_HASH_HEADER = struct.Struct("<IIII")  # nbuckets, symoffset, bloom_size, bloom_shift
SYSV_HASH_HEADER = struct.Struct("<II")  # nbucket, nchain


def align(value: int, alignment: int) -> int:
    """`value` rounded up to a multiple of `alignment`, a power of two."""
    return (value + alignment - 1) & -alignment
