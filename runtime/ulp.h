/*
 * libulp.so: the run-time half of ulp_build. Shared by the C files and track.S.
 *
 * Layouts here are read by assembly (the offsets below, checked by _Static_assert in info.c),
 * by the trigger from outside the process (the request, the introspection header and the
 * records it leads to) and by prepared libraries (the descriptor). The Python side declares
 * each of those once, with the same field names (ulp_build/cstruct.py and its users);
 * tests/test_layouts.py compiles this header and compares every size and offset. Change both
 * sides together, and bump ULP_LAYOUT_VERSION when the trigger's view changes.
 */
#ifndef ULP_H
#define ULP_H

/* ---- offsets used by track.S ---------------------------------------------------------- */

#define ULP_FRAME_SP 0       /* %rsp inside ulp_track after `push %rbx`: return slot - 16 */
#define ULP_FRAME_RET 8      /* the caller's return address, taken off the stack */
#define ULP_FRAME_RBX 16     /* the caller's %rbx; %rbx points at the frame meanwhile */
#define ULP_FRAME_LIB 24     /* this thread's record of the library entered */
#define ULP_FRAME_DEPTH 32   /* that library's depth before this entry: what a pop restores */
#define ULP_FRAME_SIZE 40

#define ULP_THREAD_TOP 0     /* next free shadow frame */
#define ULP_THREAD_END 8     /* first frame past the shadow stack */
#define ULP_THREAD_STACK_TOP 48 /* above every frame of the thread's own stack */
#define ULP_THREAD_LIBS 64   /* struct ulp_thread_lib libs[] */
#define ULP_THREAD_LIB_SIZE 16

#define ULP_LIB_DEPTH 0
#define ULP_LIB_UNIVERSE 8

#define ULP_DESC_PRIVATE 24  /* descriptor word the runtime owns: this library's libs[] offset */
#define ULP_DESC_UNTRACKED 1 /* ... or this: no room for the library, its calls run untracked */
#define ULP_DESC_VERSION 2

/* The dispatcher's view of patched functions (patch.c builds them, dispatch.S reads them). */
#define ULP_FUNCTION_LIB 16    /* struct ulp_function: its library's offset in a thread */
#define ULP_FUNCTION_LATEST 24 /* ... and its newest struct ulp_version {universe, code} */
#define ULP_THREAD_ZERO 40     /* a thread's `zero`: "depth 0" for untracked ones */

#ifndef __ASSEMBLER__

#include <link.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#define ULP_EXPORT __attribute__((visibility("default")))
/* The layouts the trigger reads or writes in a running process (the request, the introspection
 * header and every record it leads to), as one number: published in ulp_runtime, a trigger
 * with another refuses the process (ulp_build/live/runtime_state.py, LAYOUT_VERSION). */
#define ULP_LAYOUT_VERSION 6
#define ULP_MAX_LIBRARIES 1024
/* Shadow frames reserved (not committed) per thread: deeper than any real stack can recurse
 * through tracked entries; past it, entries run untracked rather than fail. The environment
 * variable ULP_SHADOW_FRAMES lowers it (for testing that fail-safe). */
#define ULP_SHADOW_FRAMES (1u << 20)
extern uint32_t ulp_shadow_frames;

/* The descriptor a prepared library keeps in .ulp.data (ulp_build/prepare/layout.py). */
struct ulp_descriptor {
    char magic[8];                  /* "ULPLIB\0\0" */
    uint32_t version;               /* 1 */
    uint32_t flags;                 /* bit 0: IBT */
    uint64_t link_address;          /* load base = &descriptor - link_address */
    _Atomic uint64_t runtime_private;
    uint64_t trampolines;
    uint32_t trampoline_count;
    uint32_t trampoline_size;
    uint64_t build_id;              /* link-time address of the build-id bytes, or 0 */
    uint32_t build_id_size;
    uint32_t reserved;
    _Atomic uint64_t dispatch;      /* the universe checkers jump through it: ulp_dispatch */
};

/* One tracked entry that has not returned yet. Popping a frame, however it happens (a return, a
 * prune, a jump out of it), *stores* `depth` back into its library's record rather than
 * decrementing it: a store can be repeated, so a frame dropped between the two writes that
 * give it its library and change the depth leaves the depth right either way (shadow.c). */
struct ulp_frame {
    uintptr_t sp;
    uintptr_t ret;                  /* 0: a tail call's frame, which returns with the one above */
    uintptr_t rbx;
    struct ulp_thread_lib *lib;     /* NULL while being built or returned from */
    uint64_t depth;
};

/* A thread's state for one prepared library. */
struct ulp_thread_lib {
    uint32_t depth;                 /* tracked entries of this library not yet returned */
    uint32_t reserved;
    uint64_t universe;              /* synced to the global universe on entry at depth 0 */
};

struct ulp_thread {
    struct ulp_frame *top;
    struct ulp_frame *end;
    struct ulp_frame *base;
    struct ulp_thread *next;        /* registry, newest first; entries are reused, never freed */
    _Atomic int32_t tid;            /* 0: free for the next new thread */
    uint32_t reserved;
    uint64_t zero;                  /* always 0: "depth 0" for untracked libraries (dispatch.S) */
    uintptr_t stack_top;            /* above every frame of its own stack: see shadow.c */
    uint64_t padding;
    struct ulp_thread_lib libs[ULP_MAX_LIBRARIES];
};

/* Transition states (target_state below), as Linux livepatch's KLP_UNPATCHED/KLP_PATCHED. */
#define ULP_UNPATCHED 0
#define ULP_PATCHED 1

/* A prepared library, from its first tracked call on (its index is its place in every thread's
 * libs[]), with its transition state, kept explicitly as Linux livepatch keeps
 * klp_target_state: the commit of a change sets the target universe and state and clears
 * `finished`; the trigger that finishes the transition (its checkers rewritten to direct
 * jumps, or to the prepared padding, under one stop of the process) sets `finished` through
 * /proc/PID/mem under that same stop (ulp_build/live/transition.py). Nothing in the process
 * reads them: they say what the code bytes should be, so that the trigger and `ulp patches`
 * need not guess it from the bytes. */
struct ulp_library {
    const struct ulp_descriptor *descriptor;
    uintptr_t base;
    uint32_t build_id_size;
    uint8_t build_id[32];
    char name[256];
    uint32_t target_state;          /* after its last change: ULP_PATCHED if a patch is active */
    uint64_t target_universe;       /* the universe of its last change; 0: never changed */
    uint32_t finished;              /* 1 once no checker of that change is left */
    uint32_t reserved;
};

/* A patched function: every version it has had, by the universe in which each took effect. The
 * universe checker in its pad sends every call to ulp_dispatch, which runs the newest version
 * not newer than the calling thread's universe for the library. */
struct ulp_version {
    uint64_t universe;
    uintptr_t code;
};

/* Append-only and never freed: a thread stopped in the middle of ulp_dispatch may still read a
 * superseded array after it resumes. Oldest first; entry 0 is the original, universe 0. */
struct ulp_versions {
    uint32_t count;
    uint32_t capacity;
    uint64_t reserved;
    struct ulp_version entries[];
};

/* Records are never freed either. The universe checker names its record by index, in the
 * pad's code bytes (`mov $index, %r11d`): the dispatcher's lookup is one load. */
struct ulp_function {
    uintptr_t pad;                  /* where its universe checker starts */
    uintptr_t original;             /* the original code, past the entry nop */
    uint64_t lib_offset;            /* its library's record in a thread, or ULP_THREAD_ZERO */
    /* The newest entry of `versions`: written after the entry, so the dispatcher, walking
     * down from it, only ever sees complete entries, down to the original's. */
    const struct ulp_version *_Atomic latest;
    struct ulp_versions *versions;
    uint32_t index;
    uint32_t reserved;
};

/* The trigger's requests (ulp_build/live/request.py writes them). */
#define ULP_PAD_BEFORE 14
#define ULP_ID_SIZE 128
#define ULP_DESCRIPTION_SIZE 256
#define ULP_OBJECT_SIZE 1024
#define ULP_REQ_REVERT_ALL 1u       /* revert every patch of the target, then... */
#define ULP_REQ_APPLY 2u            /* ...apply this one */
#define ULP_REQ_REVERT 4u           /* revert the patch with this id */
#define ULP_REF_DATA 0
#define ULP_REF_TLS 1
#define ULP_REF_FUNCTION 2
#define ULP_REF_IMPORT 3            /* a GOT slot of the object's PLT: the object loads lazily */
#define ULP_REF_NEAR 4              /* a 32-bit RIP-relative field of the object's code */
enum { ULP_EINVALID = 1, ULP_EALREADY = 2, ULP_ENOTAPPLIED = 3, ULP_EBUSY = 4 };

struct ulp_request_function {
    uint64_t entry;
    uint64_t nop;
    uint64_t replacement;           /* offset in the patch object */
    uint32_t index;                 /* out: the function's record, for its universe checker */
    uint32_t reserved;
};

struct ulp_request_reference {
    uint32_t kind;
    uint32_t reserved;
    uint64_t pointer;               /* offset in the patch object of the variable (GOT slot, */
                                    /* ULP_REF_NEAR: the field) */
    uint64_t value;                 /* address (ULP_REF_NEAR: plus the relocation's addend); */
                                    /* for ULP_REF_TLS the offset in the TLS block */
};

struct ulp_request {
    char magic[8];                  /* "ULPREQ\0\0" */
    uint32_t version;               /* 1 */
    uint32_t size;                  /* of the whole request */
    uint32_t flags;
    uint32_t function_count;
    uint32_t reference_count;
    uint32_t build_id_size;
    uint64_t descriptor;            /* the target's descriptor, at its run-time address */
    uint8_t build_id[32];           /* the target's, as the patch was made for */
    char id[ULP_ID_SIZE];
    char description[ULP_DESCRIPTION_SIZE];
    char object[ULP_OBJECT_SIZE];   /* where the trigger read the patch object (shown only) */
    uint8_t object_build_id[32];    /* the object's, as the trigger read it */
    uint32_t object_build_id_size;
    uint32_t reserved;
    uint64_t object_offset;         /* the object's bytes, in this request, as the trigger */
    uint64_t object_size;           /* checked them: the runtime loads these, not a path */
    char message[512];              /* out: why it failed */
    /* then function_count ulp_request_function, then reference_count ulp_request_reference */
};

/* A patch: the functions it replaces, and by what. */
struct ulp_patch_function {
    struct ulp_function *function;
    uintptr_t replacement;
};

/* Every patch ever committed, newest first (reverted ones stay, with their revert universe),
 * read from outside by `ulp patches` through the introspection structure. */
struct ulp_patch {
    struct ulp_patch *next;
    char id[ULP_ID_SIZE];
    char description[ULP_DESCRIPTION_SIZE];
    char object[ULP_OBJECT_SIZE];
    const struct ulp_descriptor *target;
    void *handle;
    uint64_t applied;               /* the universe in which it took effect */
    uint64_t reverted;              /* the universe in which it was reverted; 0 while active */
    uint64_t time;                  /* CLOCK_REALTIME of the commit, in nanoseconds */
    uint32_t function_count;
    uint32_t lib_offset;            /* which load of the target: a reloaded one gets another */
    struct ulp_patch_function functions[];
};

/* The runtime's one exported data symbol, `ulp_runtime` (info.c): what the trigger reads from
 * outside to find the global universe, the libraries, the threads and the patches, with the
 * geometry it needs to walk them. */
struct ulp_runtime_info {
    char magic[8];                      /* "ULPRUN\0\0" */
    uint32_t layout_version;            /* ULP_LAYOUT_VERSION */
    uint32_t size;                      /* of this header */
    _Atomic uint64_t *universe;
    struct ulp_library *libraries;      /* [max_libraries], the first *library_count valid */
    _Atomic uint32_t *library_count;
    uint32_t max_libraries;
    uint32_t library_size;              /* sizeof(struct ulp_library) */
    _Atomic(struct ulp_thread *) *threads; /* list head; entries with tid 0 are free */
    uint32_t thread_libs_offset;        /* offsetof(struct ulp_thread, libs) */
    uint32_t thread_lib_size;           /* sizeof(struct ulp_thread_lib) */
    uint32_t thread_next_offset;
    uint32_t thread_tid_offset;
    uint32_t thread_top_offset;
    uint32_t thread_base_offset;
    uint32_t frame_size;
    uint32_t patch_size;                /* sizeof(struct ulp_patch), its functions follow */
    struct ulp_patch *_Atomic *patches; /* every patch committed, newest first */
};

extern struct ulp_patch *_Atomic ulp_patches;

/* function.c */
extern struct ulp_function **_Atomic ulp_functions;
struct ulp_function *ulp_function_for(uintptr_t entry, uintptr_t nop, uint64_t lib_offset);

/* load.c */
int ulp_in_segment(const ElfW(Phdr) *phdr, ElfW(Half) phnum, uint64_t offset, uint64_t size,
                   uint32_t flag);
int64_t ulp_load(struct ulp_request *r, const struct ulp_descriptor *d, uint64_t lib_offset,
                 struct ulp_patch **loaded);

/* patch.c */
__attribute__((format(printf, 2, 3))) int64_t ulp_fail(struct ulp_request *r,
                                                       const char *format, ...);
void ulp_patches_init(void);

/* dispatch.S */
void ulp_dispatch(void);

/* track.S */
void ulp_track(void);
void ulp_return(void);

/* The slow paths run inside somebody else's call, possibly in a signal handler, possibly
 * interrupted by one: they run with every signal blocked, so that a handler's tracked call
 * never finds their work half done. */
static inline void ulp_signals_block(sigset_t *saved)
{
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, saved);
}

static inline void ulp_signals_restore(const sigset_t *saved)
{
    pthread_sigmask(SIG_SETMASK, saved, NULL);
}

/* thread.c */
extern _Atomic(struct ulp_thread *) ulp_threads;
extern __thread struct ulp_thread *ulp_self;
int ulp_thread_start(void);
void ulp_threads_init(void);

/* shadow.c */
void ulp_prune(struct ulp_thread *thread, uintptr_t unused, uintptr_t sp);
void ulp_discard_above(struct ulp_thread *thread, struct ulp_frame *frame);
void ulp_leave_to(uintptr_t target);
void ulp_unwound(struct ulp_frame *frame);
void ulp_vfork_returned(struct ulp_thread *thread, struct ulp_frame *top);

/* library.c */
extern struct ulp_library ulp_libraries[ULP_MAX_LIBRARIES];
extern _Atomic uint32_t ulp_library_count;
uint64_t ulp_library_register(struct ulp_descriptor *descriptor);
int ulp_is_descriptor(const struct ulp_descriptor *descriptor);
uint64_t ulp_request_entries_size(const struct ulp_request *request);
int64_t ulp_prepare(struct ulp_request *request);
int64_t ulp_commit(uint64_t ticket);
void ulp_installed_start(void);
void ulp_installed_registered(const struct ulp_descriptor *descriptor);

/* info.c */
extern _Atomic uint64_t ulp_universe;
extern _Atomic int ulp_ready;

#endif /* __ASSEMBLER__ */
#endif /* ULP_H */
