/*
 * Applying and reverting patches, in two steps the trigger drives (docs/design.md, "The
 * two-stop protocol").
 *
 * ulp_prepare does everything that takes locks or can fail: it validates the request, loads
 * the patch object (dlopen takes the loader's and the allocator's locks), fills its
 * references, creates the function records and allocates every array the commit will need.
 * The trigger runs it in one thread while the others keep running, so a lock another thread
 * holds is released in due course. Nothing it does changes which code any thread runs.
 *
 * ulp_commit makes the prepared change visible: one new universe in which every affected
 * function has its new version. The trigger runs it with every thread stopped, so it takes no
 * lock that a stopped thread could hold (no malloc, no loader): only our own mutex, tried and
 * never waited for. If anything happened in between (another trigger prepared or committed),
 * it refuses and the trigger starts over.
 *
 * The trigger writes the universe checkers' code bytes itself (docs/design.md, "The two-stop
 * protocol") after a successful prepare and before the commit: until the commit they lead
 * every call to the version it ran before.
 *
 * Here: the two entry points, the staging between them (what a request changes, every array
 * the commit needs), and the request buffers. The function records live in function.c, the
 * loading of the patch object in load.c.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "ulp.h"

struct ulp_patch *_Atomic ulp_patches;

/* One function's next version, worked out by ulp_prepare. */
struct change {
    struct ulp_function *function;
    uintptr_t code;
    struct ulp_versions *grown;     /* a larger copy to publish, or NULL if there is room */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t generation;         /* bumped by every prepare and commit */
static struct {
    uint64_t ticket;                /* 0: nothing prepared */
    struct ulp_patch *patch;        /* to apply, or NULL */
    struct ulp_patch **reverts;
    uint32_t revert_count;
    struct change *changes;
    uint32_t change_count;
    struct ulp_library *library;    /* the target's record (NULL: untracked, no room) */
    uint32_t target_state;          /* ULP_PATCHED or ULP_UNPATCHED once committed */
} staged;

/* A child forked while another thread prepared holds `lock` for a thread it does not have, and
 * a half-staged request: the child starts with neither. The staged memory is the parent's
 * copy, possibly mid-update, so it is forgotten rather than freed (the child leaks it, once).
 * Records already published (function.c) are complete at any instant, so the child keeps
 * them; a commit cannot be under way (it runs with every thread stopped). */
static void forget_in_child(void)
{
    pthread_mutex_init(&lock, NULL);
    memset(&staged, 0, sizeof staged);
    generation++;
}

void ulp_patches_init(void)
{
    pthread_atfork(NULL, NULL, forget_in_child);
}

static const char request_magic[8] = {'U', 'L', 'P', 'R', 'E', 'Q', 0, 0};

/* -ULP_EINVALID, with the request's message saying why. */
int64_t ulp_fail(struct ulp_request *r, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(r->message, sizeof r->message, format, args);
    va_end(args);
    return -ULP_EINVALID;
}

/* ---- what a request changes --------------------------------------------------------------- */

static int active(const struct ulp_patch *p)
{
    return p->reverted == 0;
}

/* Active on this load of the target (a patch of an earlier load of a library dlclose'd and
 * loaded again at the same address is not). */
static int active_on(const struct ulp_patch *p, const struct ulp_descriptor *d, uint64_t lib)
{
    return active(p) && p->target == d && p->lib_offset == lib;
}

static int reverted_now(const struct ulp_patch *p)
{
    for (uint32_t i = 0; i < staged.revert_count; i++)
        if (staged.reverts[i] == p)
            return 1;
    return 0;
}

/* The code `f` runs once the staged request is committed: the newest patch still active that
 * replaces it, or its original. */
static uintptr_t next_code(const struct ulp_function *f)
{
    if (staged.patch)
        for (uint32_t i = 0; i < staged.patch->function_count; i++)
            if (staged.patch->functions[i].function == f)
                return staged.patch->functions[i].replacement;
    for (struct ulp_patch *p = atomic_load(&ulp_patches); p; p = p->next) {
        if (!active(p) || reverted_now(p))
            continue;
        for (uint32_t i = 0; i < p->function_count; i++)
            if (p->functions[i].function == f)
                return p->functions[i].replacement;
    }
    return f->original;
}

static int stage_change(struct ulp_function *f)
{
    for (uint32_t i = 0; i < staged.change_count; i++)
        if (staged.changes[i].function == f)
            return 0;
    struct change *c = &staged.changes[staged.change_count++];
    c->function = f;
    c->code = next_code(f);
    c->grown = NULL;
    struct ulp_versions *v = f->versions;
    if (v->count < v->capacity)
        return 0;
    c->grown = malloc(sizeof *v + 2 * (size_t)v->capacity * sizeof v->entries[0]);
    if (!c->grown)
        return -1;
    c->grown->capacity = 2 * v->capacity;
    c->grown->count = v->count;
    memcpy(c->grown->entries, v->entries, v->count * sizeof v->entries[0]);
    return 0;
}

static void unstage(void)
{
    for (uint32_t i = 0; i < staged.change_count; i++)
        free(staged.changes[i].grown);
    free(staged.changes);
    free(staged.reverts);
    if (staged.patch) {
        dlclose(staged.patch->handle);
        free(staged.patch);
    }
    memset(&staged, 0, sizeof staged);
}

/* ---- the entry points --------------------------------------------------------------------- */

/* The header and the entries the counts announce: what must fit in r->size. */
uint64_t ulp_request_entries_size(const struct ulp_request *r)
{
    return sizeof *r + (uint64_t)r->function_count * sizeof(struct ulp_request_function) +
           (uint64_t)r->reference_count * sizeof(struct ulp_request_reference);
}

static int64_t check_request(struct ulp_request *r, const struct ulp_descriptor **target)
{
    if (memcmp(r->magic, request_magic, sizeof request_magic) != 0 || r->version != 2)
        return -ULP_EINVALID;
    r->message[sizeof r->message - 1] = '\0';
    r->id[sizeof r->id - 1] = r->description[sizeof r->description - 1] = '\0';
    r->object[sizeof r->object - 1] = '\0';
    uint64_t need = ulp_request_entries_size(r);
    if (r->size < need || r->build_id_size > 32 || r->object_build_id_size > 32)
        return ulp_fail(r, "malformed request");
    if ((r->flags & ULP_REQ_APPLY) &&
        (r->object_offset < need || r->object_offset > r->size ||
         r->object_size > r->size - r->object_offset || r->object_build_id_size == 0))
        return ulp_fail(r, "malformed request: no patch object in it");
    const struct ulp_descriptor *d = (const void *)r->descriptor;
    if (!ulp_is_descriptor(d))
        return ulp_fail(r, "the target is not a library prepared by this version of ulp");
    const uint8_t *id = (const uint8_t *)((uintptr_t)d - d->link_address + d->build_id);
    if (d->build_id_size != r->build_id_size || !d->build_id ||
        memcmp(id, r->build_id, r->build_id_size) != 0)
        return ulp_fail(r, "build-id mismatch");
    *target = d;
    return 0;
}

static struct ulp_patch *find_active(const char *id, const struct ulp_descriptor *d,
                                     uint64_t lib)
{
    for (struct ulp_patch *p = atomic_load(&ulp_patches); p; p = p->next)
        if (active_on(p, d, lib) && strcmp(p->id, id) == 0)
            return p;
    return NULL;
}

static int64_t stage(struct ulp_request *r, const struct ulp_descriptor *d)
{
    /* Below ULP_THREAD_LIBS (no room in the runtime's table): the library's calls are not
     * tracked, and its patched functions always run their newest version. */
    uint64_t lib_offset = ulp_library_register((struct ulp_descriptor *)d);
    if (lib_offset == 0)
        lib_offset = atomic_load(&d->runtime_private);
    if (lib_offset == 0)
        return ulp_fail(r, "the runtime cannot track the target");
    if ((r->flags & ULP_REQ_APPLY) && !(r->flags & ULP_REQ_REVERT_ALL) &&
        find_active(r->id, d, lib_offset)) {
        snprintf(r->message, sizeof r->message, "patch %s is already applied", r->id);
        return -ULP_EALREADY;
    }
    uint32_t patches = 0, functions = r->function_count;
    for (struct ulp_patch *p = atomic_load(&ulp_patches); p; p = p->next) {
        patches++;
        functions += p->function_count;
    }
    staged.reverts = calloc(patches + 1, sizeof *staged.reverts);
    staged.changes = calloc(functions + 1, sizeof *staged.changes);
    if (!staged.reverts || !staged.changes)
        return ulp_fail(r, "out of memory");
    for (struct ulp_patch *p = atomic_load(&ulp_patches); p; p = p->next) {
        int all = r->flags & ULP_REQ_REVERT_ALL;
        int named = (r->flags & ULP_REQ_REVERT) && !strcmp(p->id, r->id);
        if (active_on(p, d, lib_offset) && (all || named))
            staged.reverts[staged.revert_count++] = p;
    }
    if (staged.revert_count == 0 && !(r->flags & ULP_REQ_APPLY)) {
        if (r->flags & ULP_REQ_REVERT)
            snprintf(r->message, sizeof r->message, "patch %s is not applied", r->id);
        else
            snprintf(r->message, sizeof r->message, "no patch is applied to the target");
        return -ULP_ENOTAPPLIED;
    }
    if (r->flags & ULP_REQ_APPLY) {
        int64_t status = ulp_load(r, d, lib_offset, &staged.patch);
        if (status)
            return status;
    }
    staged.library = lib_offset >= ULP_THREAD_LIBS
                         ? &ulp_libraries[(lib_offset - ULP_THREAD_LIBS) / ULP_THREAD_LIB_SIZE]
                         : NULL;
    staged.target_state = staged.patch ? ULP_PATCHED : ULP_UNPATCHED;
    for (struct ulp_patch *p = atomic_load(&ulp_patches); p; p = p->next)
        if (active_on(p, d, lib_offset) && !reverted_now(p))
            staged.target_state = ULP_PATCHED;
    for (uint32_t i = 0; i < staged.revert_count; i++)
        for (uint32_t j = 0; j < staged.reverts[i]->function_count; j++)
            if (stage_change(staged.reverts[i]->functions[j].function) != 0)
                return ulp_fail(r, "out of memory");
    if (staged.patch)
        for (uint32_t j = 0; j < staged.patch->function_count; j++)
            if (stage_change(staged.patch->functions[j].function) != 0)
                return ulp_fail(r, "out of memory");
    /* Before the trigger writes the first checker into this library. */
    atomic_store((_Atomic uint64_t *)&d->dispatch, (uint64_t)(uintptr_t)ulp_dispatch);
    return 0;
}

/* Returns a ticket for ulp_commit (> 0), or -ULP_E... with r->message saying why. */
ULP_EXPORT int64_t ulp_prepare(struct ulp_request *r)
{
    const struct ulp_descriptor *d = NULL;
    int64_t status = check_request(r, &d);
    if (status)
        return status;
    if (pthread_mutex_trylock(&lock) != 0) {
        snprintf(r->message, sizeof r->message, "another trigger is patching the process");
        return -ULP_EBUSY;
    }
    /* Whatever an earlier trigger prepared and never committed (it died, or it gave up). */
    unstage();
    status = stage(r, d);
    if (status) {
        unstage();
        generation++;
    } else {
        status = (int64_t)(staged.ticket = ++generation);
    }
    pthread_mutex_unlock(&lock);
    return status;
}

/* Runs with every thread stopped: no waiting, no allocation. Returns the new universe. */
ULP_EXPORT int64_t ulp_commit(uint64_t ticket)
{
    if (pthread_mutex_trylock(&lock) != 0)
        return -ULP_EBUSY;
    if (staged.ticket == 0 || staged.ticket != ticket || ticket != generation) {
        pthread_mutex_unlock(&lock);
        return -ULP_EBUSY;
    }
    uint64_t universe = atomic_load(&ulp_universe) + 1;
    for (uint32_t i = 0; i < staged.change_count; i++) {
        struct change *c = &staged.changes[i];
        struct ulp_versions *v = c->grown ? c->grown : c->function->versions;
        v->entries[v->count] = (struct ulp_version){universe, c->code};
        c->function->versions = v;
        atomic_store(&c->function->latest, &v->entries[v->count++]);
    }
    for (uint32_t i = 0; i < staged.revert_count; i++)
        staged.reverts[i]->reverted = universe;
    if (staged.patch) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        staged.patch->applied = universe;
        staged.patch->time = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
        staged.patch->next = atomic_load(&ulp_patches);
        atomic_store(&ulp_patches, staged.patch);
    }
    /* The target's transition state (ulp.h), before the universe that starts the transition:
     * the trigger reads it only once this call has returned. */
    if (staged.library) {
        staged.library->finished = 0;
        staged.library->target_universe = universe;
        staged.library->target_state = staged.target_state;
    }
    /* Last: a thread entering the library from now on gets the new universe, and with it the
     * versions just written; threads already inside keep theirs. */
    atomic_store(&ulp_universe, universe);
    /* The arrays are published or superseded now; only the bookkeeping is freed (later, by
     * the next prepare, which may allocate). */
    staged.patch = NULL;
    for (uint32_t i = 0; i < staged.change_count; i++)
        staged.changes[i].grown = NULL;
    staged.ticket = 0;
    generation++;
    pthread_mutex_unlock(&lock);
    return (int64_t)universe;
}

/* Request buffers for the trigger, which writes into them through /proc/PID/mem. */
ULP_EXPORT void *ulp_buffer(uint64_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

ULP_EXPORT int ulp_buffer_free(void *buffer, uint64_t size)
{
    return munmap(buffer, size);
}
