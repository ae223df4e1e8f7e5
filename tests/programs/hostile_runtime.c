/*
 * A fake runtime for tests/test_hostile.py: a library named libulp-hostile.so (so the tools take
 * it for a runtime) that exports `ulp_runtime` with a header crafted to hurt whoever reads it
 * from outside. Built with one of the variants below defined; everything else is what a real,
 * empty runtime would publish.
 *
 *   FIFO_NAME="path"   a library whose name is that path (a FIFO, /dev/zero), at no mapping
 *   THREAD_LOOP        a thread list whose one record points to itself
 *   HUGE_COUNTS        4 billion libraries, a patch of 4 billion functions
 *   HUGE_STRIDE        1 GiB strides between records
 *   ESCAPES            names and ids full of terminal escape sequences
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ulp.h"

#define ESC "\033]0;owned\007\033[2J\033[31m\r"

static _Atomic uint64_t universe = 1;
static _Atomic uint32_t library_count;
static struct ulp_library libraries[4];
static _Atomic(struct ulp_thread *) threads;
static struct ulp_thread thread;
static struct ulp_patch *_Atomic patches;
static struct {
    struct ulp_patch patch;
    struct ulp_patch_function functions[4];
} patch;

__attribute__((visibility("default"))) struct ulp_runtime_info ulp_runtime = {
    .magic = {'U', 'L', 'P', 'R', 'U', 'N', 0, 0},
    .layout_version = ULP_LAYOUT_VERSION,
    .size = sizeof(struct ulp_runtime_info),
    .universe = &universe,
    .libraries = libraries,
    .library_count = &library_count,
    .max_libraries = 4,
    .library_size = sizeof(struct ulp_library),
    .threads = &threads,
    .thread_libs_offset = offsetof(struct ulp_thread, libs),
    .thread_lib_size = sizeof(struct ulp_thread_lib),
    .thread_next_offset = offsetof(struct ulp_thread, next),
    .thread_tid_offset = offsetof(struct ulp_thread, tid),
    .thread_top_offset = offsetof(struct ulp_thread, top),
    .thread_base_offset = offsetof(struct ulp_thread, base),
    .frame_size = sizeof(struct ulp_frame),
    .patch_size = sizeof(struct ulp_patch),
    .patches = &patches,
};

__attribute__((constructor)) static void craft(void)
{
    library_count = 1;
    libraries[0].base = 0x1000; /* no mapping starts there: the name is all there is */
    strcpy(libraries[0].name, "/nonexistent/libhostile.so");
#ifdef FIFO_NAME
    strcpy(libraries[0].name, FIFO_NAME);
#endif
#ifdef THREAD_LOOP
    thread.tid = 1;
    thread.next = &thread;
    threads = &thread;
#endif
#ifdef HUGE_COUNTS
    library_count = 4000000000u;
    ulp_runtime.max_libraries = 4000000000u;
    patch.patch.function_count = 4000000000u;
    patches = &patch.patch;
#endif
#ifdef HUGE_STRIDE
    ulp_runtime.library_size = 1u << 30;
    ulp_runtime.thread_lib_size = 1u << 30;
    ulp_runtime.patch_size = 1u << 30;
    ulp_runtime.thread_libs_offset = 1u << 30;
    thread.tid = 1;
    threads = &thread;
#endif
#ifdef ESCAPES
    strcpy(libraries[0].name, "/tmp/" ESC "libbasic.so");
    strcpy(patch.patch.id, "id" ESC);
    strcpy(patch.patch.description, "description" ESC);
    patch.patch.applied = 1;
    patch.patch.time = 1;
    patch.patch.lib_offset = offsetof(struct ulp_thread, libs);
    patches = &patch.patch;
#endif
}
