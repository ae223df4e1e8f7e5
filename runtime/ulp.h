/*
 * libulp.so: the run-time half of ulp_build. Shared by the C files and track.S.
 *
 * Layouts here are read by assembly (the offsets below), by the trigger from outside the
 * process (through the introspection structure, see info.c), and by prepared libraries (the
 * descriptor, written by ulp_build/prepare/layout.py). Change them together.
 */
#ifndef ULP_H
#define ULP_H

/* ---- offsets used by track.S ---------------------------------------------------------- */

#define ULP_FRAME_SP 0       /* %rsp inside ulp_track after `push %rbx`: return slot - 16 */
#define ULP_FRAME_RET 8      /* the caller's return address, taken off the stack */
#define ULP_FRAME_RBX 16     /* the caller's %rbx; %rbx points at the frame meanwhile */
#define ULP_FRAME_LIB 24     /* this thread's record of the library entered */
#define ULP_FRAME_SIZE 32

#define ULP_THREAD_TOP 0     /* next free shadow frame */
#define ULP_THREAD_END 8     /* first frame past the shadow stack */
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
#define ULP_THREAD_ZERO 40     /* a thread's padding, always 0: "depth 0" for untracked ones */

#ifndef __ASSEMBLER__

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#define ULP_EXPORT __attribute__((visibility("default")))
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

/* One tracked entry that has not returned yet. */
struct ulp_frame {
    uintptr_t sp;
    uintptr_t ret;
    uintptr_t rbx;
    struct ulp_thread_lib *lib;
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
    uint64_t padding[3];
    struct ulp_thread_lib libs[ULP_MAX_LIBRARIES];
};

struct ulp_library {
    const struct ulp_descriptor *descriptor;
    uintptr_t base;
    uint32_t build_id_size;
    uint8_t build_id[32];
    char name[256];
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
    uint64_t pointer;               /* offset in the patch object of the variable to fill */
    uint64_t value;                 /* address; for ULP_REF_TLS the offset in the TLS block */
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
    char object[ULP_OBJECT_SIZE];   /* absolute path of the patch object */
    uint8_t object_build_id[32];    /* the object's, as the trigger read it (size 0: none) */
    uint32_t object_build_id_size;
    uint32_t reserved;
    char message[512];              /* out: why it failed */
    /* then function_count ulp_request_function, then reference_count ulp_request_reference */
};

/* patch.c */
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
    uint32_t lib_offset;            /* the target's registration: a reloaded target gets another */
    struct ulp_patch_function functions[];
};

extern struct ulp_function **_Atomic ulp_functions;
extern struct ulp_patch *_Atomic ulp_patches;

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

/* library.c */
extern struct ulp_library ulp_libraries[ULP_MAX_LIBRARIES];
extern _Atomic uint32_t ulp_library_count;
uint64_t ulp_library_register(struct ulp_descriptor *descriptor);

/* info.c */
extern _Atomic uint64_t ulp_universe;
extern _Atomic int ulp_ready;

#endif /* __ASSEMBLER__ */
#endif /* ULP_H */
