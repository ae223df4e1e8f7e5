/*
 * The runtime's one exported data symbol, `ulp_runtime`: a versioned header from which the
 * trigger (reading /proc/PID/mem from outside) finds the global universe, the prepared
 * libraries and the live threads with their per-library depth and universe. And the
 * constructor that makes the runtime ready. The header's layout is in ulp.h; the asserts
 * below tie ulp.h to the offsets the assembly uses (tests/test_layouts.py ties it to Python).
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include "ulp.h"

/* Universes start at 1, so 0 in a thread's record means "never entered". */
__attribute__((visibility("hidden"))) _Atomic uint64_t ulp_universe = 1;
__attribute__((visibility("hidden"))) _Atomic int ulp_ready;
__attribute__((visibility("hidden"))) uint64_t ulp_xsave_size;
__attribute__((visibility("hidden"))) uint32_t ulp_xsave_mask;
__attribute__((visibility("hidden"))) uint32_t ulp_shadow_frames = ULP_SHADOW_FRAMES;

ULP_EXPORT const struct ulp_runtime_info ulp_runtime = {
    .magic = {'U', 'L', 'P', 'R', 'U', 'N', 0, 0},
    .layout_version = ULP_LAYOUT_VERSION,
    .size = sizeof(struct ulp_runtime_info),
    .universe = &ulp_universe,
    .libraries = ulp_libraries,
    .library_count = &ulp_library_count,
    .max_libraries = ULP_MAX_LIBRARIES,
    .library_size = sizeof(struct ulp_library),
    .threads = &ulp_threads,
    .thread_libs_offset = offsetof(struct ulp_thread, libs),
    .thread_lib_size = sizeof(struct ulp_thread_lib),
    .thread_next_offset = offsetof(struct ulp_thread, next),
    .thread_tid_offset = offsetof(struct ulp_thread, tid),
    .thread_top_offset = offsetof(struct ulp_thread, top),
    .thread_base_offset = offsetof(struct ulp_thread, base),
    .frame_size = sizeof(struct ulp_frame),
    .patch_size = sizeof(struct ulp_patch),
    .patches = &ulp_patches,
};

_Static_assert(offsetof(struct ulp_frame, sp) == ULP_FRAME_SP, "track.S");
_Static_assert(offsetof(struct ulp_frame, ret) == ULP_FRAME_RET, "track.S");
_Static_assert(offsetof(struct ulp_frame, rbx) == ULP_FRAME_RBX, "track.S");
_Static_assert(offsetof(struct ulp_frame, lib) == ULP_FRAME_LIB, "track.S");
_Static_assert(offsetof(struct ulp_frame, depth) == ULP_FRAME_DEPTH, "track.S");
_Static_assert(sizeof(struct ulp_frame) == ULP_FRAME_SIZE, "track.S");
_Static_assert(offsetof(struct ulp_thread, top) == ULP_THREAD_TOP, "track.S");
_Static_assert(offsetof(struct ulp_thread, end) == ULP_THREAD_END, "track.S");
_Static_assert(offsetof(struct ulp_thread, libs) == ULP_THREAD_LIBS, "track.S");
_Static_assert(sizeof(struct ulp_thread_lib) == ULP_THREAD_LIB_SIZE, "track.S");
_Static_assert(offsetof(struct ulp_thread_lib, depth) == ULP_LIB_DEPTH, "track.S");
_Static_assert(offsetof(struct ulp_thread_lib, universe) == ULP_LIB_UNIVERSE, "track.S");
_Static_assert(offsetof(struct ulp_descriptor, runtime_private) == ULP_DESC_PRIVATE, "track.S");
_Static_assert(offsetof(struct ulp_function, lib_offset) == ULP_FUNCTION_LIB, "dispatch.S");
_Static_assert(offsetof(struct ulp_function, latest) == ULP_FUNCTION_LATEST, "dispatch.S");
_Static_assert(offsetof(struct ulp_thread, zero) == ULP_THREAD_ZERO, "dispatch.S");
_Static_assert(offsetof(struct ulp_thread, stack_top) == ULP_THREAD_STACK_TOP, "track.S");
_Static_assert(sizeof(struct ulp_version) == 16, "dispatch.S");

__attribute__((constructor)) static void ulp_start(void)
{
    unsigned eax, ebx, ecx, edx;
    /* The slow paths save the whole extended state with XSAVE: its size for the features
     * the kernel enabled is CPUID leaf 0xD, sub-leaf 0, EBX. Without XSAVE, stay untracked. */
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & bit_OSXSAVE)) {
        fputs("libulp: no XSAVE support; entry tracking disabled\n", stderr);
        return;
    }
    /* Only what the ABI lets a caller keep live across our slow paths: x87, SSE, AVX and
     * AVX-512 (not, say, 8 KiB of AMX tiles, which would not fit a small signal stack). */
    uint32_t xcr0_lo, xcr0_hi;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    ulp_xsave_mask = xcr0_lo & 0xE7;
    uint64_t size = 576; /* legacy area and XSAVE header */
    for (unsigned component = 2; component < 8; component++) {
        if (!(ulp_xsave_mask & (1u << component)))
            continue;
        __cpuid_count(0xD, component, eax, ebx, ecx, edx);
        if ((uint64_t)ebx + eax > size)
            size = (uint64_t)ebx + eax;
    }
    ulp_xsave_size = (size + 63) & ~(uint64_t)63;
    const char *frames = getenv("ULP_SHADOW_FRAMES");
    if (frames) {
        unsigned long n = strtoul(frames, NULL, 10);
        if (n > 0 && n < ULP_SHADOW_FRAMES)
            ulp_shadow_frames = (uint32_t)n;
    }
    ulp_threads_init();
    ulp_patches_init();
    atomic_store(&ulp_ready, 1);
    /* Last: applying a patch takes the whole runtime. */
    ulp_installed_start();
}
