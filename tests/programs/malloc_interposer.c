/* An LD_PRELOAD malloc interposer of the usual kind: it finds the malloc it wraps with
 * dlsym(RTLD_NEXT, "malloc"), which must be the C library's, whoever is preloaded before it
 * (tests/test_prepared_libc.py). Allocations made while dlsym runs come from a static area. Its
 * first malloc may come before the runtime is ready (untracked calls), so interposer_next looks
 * a name up again when the program asks, from a tracked call. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

static void *(*next)(size_t);
static void (*next_free)(void *);
static _Alignas(16) char early[1 << 16];
static size_t early_used;
static int resolving;

static void *early_alloc(size_t size)
{
    size = (size + 15) & ~(size_t)15;
    if (size > sizeof early - early_used)
        return NULL;
    early_used += size;
    return early + early_used - size;
}

void *malloc(size_t size)
{
    if (!next) {
        if (resolving)
            return early_alloc(size);
        resolving = 1;
        next_free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
        next = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
        resolving = 0;
    }
    return next(size);
}

void free(void *p)
{
    if ((char *)p >= early && (char *)p < early + sizeof early)
        return;
    if (!next_free)
        next_free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
    next_free(p);
}

void *interposer_next(const char *name)
{
    void *found = dlsym(RTLD_NEXT, name);
    __asm__ volatile("");  /* no tail call: dlsym must see this library as its caller */
    return found;
}
