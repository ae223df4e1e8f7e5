/*
 * The prepared libraries this process has called into, in the order of their first tracked
 * call. A library's index is its place in every thread's libs[] array; the descriptor's
 * runtime-private word caches the byte offset of that place, so the tracking routine needs one
 * load to find it.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <link.h>
#include <stdbool.h>
#include <string.h>

#include "ulp.h"

struct ulp_library ulp_libraries[ULP_MAX_LIBRARIES];
_Atomic uint32_t ulp_library_count;

static atomic_flag lock = ATOMIC_FLAG_INIT;


/* The loader's list of objects: no lock to take (the first call may be in a signal handler),
 * and entries are complete before they are linked in. */
static void find_name(struct ulp_library *lib)
{
    for (struct link_map *map = _r_debug.r_map; map; map = map->l_next) {
        if (map->l_addr == lib->base && map->l_name) {
            size_t i = 0;
            for (; i + 1 < sizeof lib->name && map->l_name[i]; i++)
                lib->name[i] = map->l_name[i];
            lib->name[i] = '\0';
            return;
        }
    }
}

static void copy_build_id(struct ulp_library *lib, const struct ulp_descriptor *d)
{
    if (!d->build_id || d->build_id_size > sizeof lib->build_id)
        return;
    memcpy(lib->build_id, (const void *)(lib->base + d->build_id), d->build_id_size);
    lib->build_id_size = d->build_id_size;
}

/* Whether `d` is a descriptor of a library prepared for this runtime (its magic and version). */
int ulp_is_descriptor(const struct ulp_descriptor *d)
{
    static const char magic[8] = {'U', 'L', 'P', 'L', 'I', 'B', 0, 0};
    return memcmp(d->magic, magic, sizeof magic) == 0 && d->version == ULP_DESC_VERSION;
}

/* Called by track.S (through ulp_preserving_call) on a library's first tracked call. Returns
 * the libs[] offset, or ULP_DESC_UNTRACKED / 0 to run this call untracked. */
__attribute__((visibility("hidden"))) uint64_t ulp_library_register(struct ulp_descriptor *d)
{
    if (!ulp_is_descriptor(d))
        return 0;
    /* Signals blocked: a handler's first call into another new library would otherwise spin
     * on the lock this thread holds. */
    sigset_t saved;
    ulp_signals_block(&saved);
    while (atomic_flag_test_and_set_explicit(&lock, memory_order_acquire))
        ;
    uint64_t offset = atomic_load(&d->runtime_private);
    uint32_t n = atomic_load(&ulp_library_count);
    int registered = offset == 0 && n < ULP_MAX_LIBRARIES;
    if (registered) {
        struct ulp_library *lib = &ulp_libraries[n];
        lib->descriptor = d;
        lib->base = (uintptr_t)d - d->link_address;
        copy_build_id(lib, d);
        find_name(lib);
        atomic_store(&ulp_library_count, n + 1);
        offset = ULP_THREAD_LIBS + (uint64_t)n * ULP_THREAD_LIB_SIZE;
        atomic_store(&d->runtime_private, offset);
    } else if (offset == 0) {
        /* No room: remember it, so that every later call skips this slow path. */
        atomic_store(&d->runtime_private, ULP_DESC_UNTRACKED);
    }
    atomic_flag_clear_explicit(&lock, memory_order_release);
    ulp_signals_restore(&saved);
    /* Before this first call runs: its installed patches (installed.c). */
    if (registered)
        ulp_installed_registered(d);
    return offset;
}
