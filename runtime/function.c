/*
 * Function records: one per patched function of a library's load, with every version it has
 * had (docs/design.md, "The universe checker and the dispatcher"). The universe checker in a
 * function's pad names its record by index (`mov $index, %r11d`), and dispatch.S reads the
 * record, lock-free, to pick the version the calling thread must run; so records and their
 * version arrays are never freed, and a record is complete before it is published (see ulp.h).
 *
 * Made by ulp_prepare (patch.c), in the thread the trigger chose, while the others run: it may
 * allocate. Records are never changed here once published; the commit appends versions.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "ulp.h"

/* Every function record by index; grown by copying, the old arrays kept (see ulp.h). */
struct ulp_function **_Atomic ulp_functions;
static uint32_t function_count, function_capacity;

/* The newest record for a pad: a record of a library closed since and loaded again at the
 * same address is stale (another library offset, or another original). */
static struct ulp_function *lookup(uintptr_t pad, uintptr_t original, uint64_t lib_offset)
{
    struct ulp_function **all = atomic_load(&ulp_functions);
    for (uint32_t i = function_count; i-- > 0;)
        if (all[i]->pad == pad)
            return all[i]->original == original && all[i]->lib_offset == lib_offset ? all[i]
                                                                                     : NULL;
    return NULL;
}

static int reserve(void)
{
    if (function_count < function_capacity)
        return 0;
    uint32_t capacity = function_capacity ? 2 * function_capacity : 64;
    struct ulp_function **all = malloc(capacity * sizeof *all);
    if (!all)
        return -1;
    if (function_count)
        memcpy(all, atomic_load(&ulp_functions), function_count * sizeof *all);
    atomic_store(&ulp_functions, all);
    function_capacity = capacity;
    return 0;
}

/* The record of the function entered at `entry` (its entry nop at `nop`) in the library load
 * registered at `lib_offset`: the existing one, or a new one with only the original version.
 * NULL when out of memory. */
struct ulp_function *ulp_function_for(uintptr_t entry, uintptr_t nop, uint64_t lib_offset)
{
    uintptr_t pad = entry - ULP_PAD_BEFORE;
    /* Untracked library: the dispatcher reads a depth of 0 from the thread's `zero`. */
    if (lib_offset < ULP_THREAD_LIBS)
        lib_offset = ULP_THREAD_ZERO;
    struct ulp_function *f = lookup(pad, nop + 2, lib_offset);
    if (f)
        return f;
    f = calloc(1, sizeof *f);
    struct ulp_versions *v = calloc(1, sizeof *v + 4 * sizeof v->entries[0]);
    if (!f || !v || reserve() != 0) {
        free(f);
        free(v);
        return NULL;
    }
    f->pad = pad;
    f->original = nop + 2;
    f->lib_offset = lib_offset;
    v->capacity = 4;
    v->count = 1;
    v->entries[0] = (struct ulp_version){0, f->original};
    f->versions = v;
    atomic_store(&f->latest, &v->entries[0]);
    /* Visible at once, and harmless: with only the original version it changes nothing. */
    f->index = function_count;
    atomic_store(&atomic_load(&ulp_functions)[function_count], f);
    function_count++;
    return f;
}
