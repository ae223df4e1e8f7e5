"""What a prepared library looks like: the names and formats the rewriter writes and the
runtime, `check` and the packer read. Changing anything here is an ABI change for libulp.so.

Layout of `.ulp.data` (writable, one per library):

    +0   runtime slot: GOT entry of the weak undefined RUNTIME_SYMBOL (0 without the runtime)
    +8   descriptor (DESCRIPTOR, below): the pointer ulp_entry hands the runtime in %r11
    +80  one 8-byte slot per IFUNC: the implementation its original resolver chose
"""

from __future__ import annotations

from ulp_build.cstruct import CStruct
from ulp_build.elf import ElfFile, ElfIdentity

SECTION_TRAMPOLINES = ".ulp"
SECTION_TRACK = ".ulp.track"
SECTION_DATA = ".ulp.data"

# The runtime's tracking routine. A weak undefined dynamic symbol: the dynamic loader fills the
# GOT slot with its address when libulp.so is in the global scope and with 0 otherwise, for
# libraries loaded at start-up and dlopen'ed later alike, with no dlopen interposition.
RUNTIME_SYMBOL = "ulp_track"

RUNTIME_SLOT_OFFSET = 0
DESCRIPTOR_OFFSET = 8
DESCRIPTOR_MAGIC = b"ULPLIB\0\0"
DESCRIPTOR_VERSION = 2
DESCRIPTOR_FLAG_IBT = 1
# struct ulp_descriptor. The link-time address of the descriptor itself gives the runtime the
# load base by one subtraction; the link-time address and size of the build-id bytes let it
# report the build-id without parsing headers. The runtime-private word and the dispatch slot
# are 0 in the file: the runtime stores its dispatcher in the slot before the first universe
# checker is written, and every checker in this library jumps through it, so the checker reaches
# the runtime wherever it was loaded, with a 32-bit displacement and no executable memory made.
DESCRIPTOR = CStruct(
    "ulp_descriptor",
    [
        ("magic", "8s"),
        ("version", "I"),
        ("flags", "I"),
        ("link_address", "Q"),
        ("runtime_private", "Q"),
        ("trampolines", "Q"),
        ("trampoline_count", "I"),
        ("trampoline_size", "I"),
        ("build_id", "Q"),
        ("build_id_size", "I"),
        ("reserved", "I"),
        ("dispatch", "Q"),
    ],
)
DISPATCH_SLOT_OFFSET = DESCRIPTOR_OFFSET + DESCRIPTOR.offset("dispatch")
IFUNC_SLOTS_OFFSET = DESCRIPTOR_OFFSET + DESCRIPTOR.size

# The compiler flags a library needs: 14 bytes of padding before each entry for the universe
# checker, 2 at the entry for the jump into it. IPA-RA is off because a caller must not rely on
# which registers a patchable callee happens to leave alone: its replacement may use others.
CFLAGS = ("-fpatchable-function-entry=16,14", "-fno-ipa-ra")
PAD_BEFORE = 14

# Functions kept with a plain entry (and their address, wherever the library takes it, stays
# theirs); `rewrite --untracked` adds to this list:
# - those that never return to their caller, or return more than once (setjmp, vfork): a
#   tracked entry would steal a return address that is never (or twice) used;
# - the signal return trampoline a sigaction hands the kernel as sa_restorer, which the kernel
#   enters by returning into it, with the signal frame at %rsp;
# - the functions a C library hands to clone as a new thread's or child's whole life, which end
#   in the exit system call: tracked (a padded glibc has them in .symtab, address-taken), every
#   thread would stay inside libc in the universe it started in and never see a patch, and
#   posix_spawn's child, which shares its parent's memory and thread pointer, would push its
#   frame on the parent's shadow stack;
# - those that read their own return address to learn who called them: tracked, they would see
#   the runtime's ulp_return. dlopen, dlmopen, dlsym and dlvsym (in libc since glibc 2.34) pick
#   the caller's namespace and, for RTLD_NEXT, the object after the caller's: an LD_PRELOAD
#   interposer's dlsym(RTLD_NEXT, "malloc") would find the object after the runtime.
#   dl_iterate_phdr picks the caller's namespace; the profiling hooks record the call site.
DEFAULT_UNTRACKED = (
    "__libc_start_main",
    "__libc_start_call_main",
    "exit",
    "_exit",
    "_Exit",
    "quick_exit",
    "abort",
    "__assert",
    "__assert_fail",
    "__assert_perror_fail",
    "__stack_chk_fail",
    "__fortify_fail",
    "__chk_fail",
    "__libc_fatal",
    "err",
    "errx",
    "verr",
    "verrx",
    "pthread_exit",
    "thrd_exit",
    "__pthread_unwind_next",
    "_dl_signal_error",
    "_dl_signal_exception",
    "longjmp",
    "_longjmp",
    "siglongjmp",
    "__longjmp_chk",
    "setjmp",
    "_setjmp",
    "sigsetjmp",
    "__sigsetjmp",
    "vfork",
    "__vfork",
    "clone",
    "__clone",
    "clone3",
    "getcontext",
    "setcontext",
    "swapcontext",
    "__cxa_throw",
    "__cxa_rethrow",
    "_Unwind_Resume",
    "_Unwind_RaiseException",
    "__restore_rt",
    "start_thread",
    "__spawni_child",
    "dlopen",
    "dlmopen",
    "dlsym",
    "dlvsym",
    "dl_iterate_phdr",
    "mcount",
    "_mcount",
    "__fentry__",
)


def is_prepared(elf: ElfFile) -> bool:
    """Whether `elf` was prepared: it has the trampoline section the rewriter adds."""
    return elf.section(SECTION_TRAMPOLINES) is not None


def prepared_by_headers(identity: ElfIdentity) -> bool:
    """Whether a file is a prepared library, from its headers alone (the inventory of a process
    looks at every file it maps): its last writable segment starts with the runtime slot and
    this version's descriptor, which names its own address. As runtime/installed.c finds it."""
    if identity.writable_head is None:
        return False
    vaddr, head = identity.writable_head
    if len(head) < DESCRIPTOR_OFFSET + DESCRIPTOR.size:
        return False
    d = DESCRIPTOR.unpack(head, DESCRIPTOR_OFFSET)
    return (
        d["magic"] == DESCRIPTOR_MAGIC
        and d["version"] == DESCRIPTOR_VERSION
        and d["link_address"] == vaddr + DESCRIPTOR_OFFSET
    )
