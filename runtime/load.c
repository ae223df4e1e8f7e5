/*
 * Loading a patch object for ulp_prepare (patch.c): from the bytes the trigger put in the
 * request, never from a path (docs/security.md). The trigger read the file once and checked
 * its owner, its SHA-256 and its build-id; a path opened here could name another file by now,
 * or another file altogether in this process's mount namespace or root. So the bytes go into a
 * sealed memfd, their build-id is checked before the loader maps them (and so before any
 * constructor of the object runs), and the loader opens them as /proc/self/fd/N.
 *
 * Then: point the near references of its code at the target (ulp_build/patch/near.py), fill
 * its reference variables with the target's addresses, and make the record of every function it
 * replaces.
 *
 * An object that calls functions of the target by name (its imports) is loaded lazily: a
 * target loaded RTLD_LOCAL is not where the loader looks for them, and RTLD_NOW would refuse the
 * object. Lazily, the loader leaves those calls' GOT slots to their first call, and they are
 * filled here first (ulp_build/patch/imports.py). Any other object loads RTLD_NOW, so that a
 * symbol missing from the process refuses it now rather than ending the process at a call.
 *
 * Runs in the thread the trigger chose while the others run, so it may take the loader's and
 * the allocator's locks; it changes nothing any thread runs.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ulp.h"

struct object_search {
    uintptr_t base;
    const char *name;               /* its link map's l_name, if known */
    size_t module;                  /* its TLS module id */
    const ElfW(Phdr) *phdr;         /* its program headers */
    ElfW(Half) phnum;
    const uint8_t *build_id;        /* its NT_GNU_BUILD_ID descriptor */
    uint32_t build_id_size;
};

/* The NT_GNU_BUILD_ID descriptor among the notes in [notes, notes + size), or NULL. Every
 * length is checked against `size`: one walk serves the loaded object and the bytes the trigger
 * sent, which came from a file whatever the trigger said. */
static const uint8_t *notes_build_id(const uint8_t *notes, uint64_t size, uint32_t *id_size)
{
    uint64_t at = 0;
    while (size - at >= sizeof(ElfW(Nhdr))) {
        const ElfW(Nhdr) *note = (const void *)(notes + at);
        uint64_t name = at + sizeof *note;
        uint64_t desc = name + (((uint64_t)note->n_namesz + 3) & ~3ull);
        if (desc > size || note->n_descsz > size - desc)
            return NULL;
        if (note->n_type == NT_GNU_BUILD_ID && note->n_namesz == 4 &&
            !memcmp(notes + name, "GNU", 4)) {
            *id_size = note->n_descsz;
            return notes + desc;
        }
        at = desc + (((uint64_t)note->n_descsz + 3) & ~3ull);
        if (at > size)
            return NULL;
    }
    return NULL;
}

static int find_object(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct object_search *search = data;
    /* The name too when known: a patch object the trigger rebased to where it is loaded has a
     * load bias of 0, as has a main program that is not position-independent (listed first). */
    if (info->dlpi_addr != search->base || (search->name && info->dlpi_name != search->name))
        return 0;
    search->module = info->dlpi_tls_modid;
    search->phdr = info->dlpi_phdr;
    search->phnum = info->dlpi_phnum;
    for (int i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_NOTE && !search->build_id)
            search->build_id = notes_build_id(
                (const uint8_t *)(search->base + info->dlpi_phdr[i].p_vaddr),
                info->dlpi_phdr[i].p_memsz, &search->build_id_size);
    return 1;
}

/* [offset, offset + size) lies in one loaded segment with `flag` (PF_X, PF_W, ...) of the object
 * whose program headers are `phdr`: the addresses a request gives, checked before any is used. */
int ulp_in_segment(const ElfW(Phdr) *phdr, ElfW(Half) phnum, uint64_t offset, uint64_t size,
                   uint32_t flag)
{
    for (ElfW(Half) i = 0; i < phnum; i++) {
        const ElfW(Phdr) *p = &phdr[i];
        if (p->p_type == PT_LOAD && (p->p_flags & flag) && offset >= p->p_vaddr &&
            size <= p->p_memsz && offset - p->p_vaddr <= p->p_memsz - size)
            return 1;
    }
    return 0;
}

/* Every replacement and every near reference's field is code of the object, and every reference
 * variable is writable data of it: the runtime jumps to the first and writes the others. The
 * trigger checked them from the files; an installed patch's request comes from a file nobody
 * checked since `ulp install`. */
static int64_t check_object_offsets(struct ulp_request *r, const struct object_search *o)
{
    const struct ulp_request_function *funcs = (const void *)(r + 1);
    const struct ulp_request_reference *refs = (const void *)(funcs + r->function_count);
    for (uint32_t i = 0; i < r->function_count; i++)
        if (!ulp_in_segment(o->phdr, o->phnum, funcs[i].replacement, 1, PF_X))
            return ulp_fail(r, "a replacement is not code of the patch object");
    for (uint32_t i = 0; i < r->reference_count; i++) {
        if (refs[i].kind > ULP_REF_NEAR)
            return ulp_fail(r, "a reference of unknown kind %u", refs[i].kind);
        if (refs[i].kind == ULP_REF_NEAR) {
            if (!ulp_in_segment(o->phdr, o->phnum, refs[i].pointer, 4, PF_X))
                return ulp_fail(r, "a near reference is not in the code of the patch object");
            continue;
        }
        uint64_t size = refs[i].kind == ULP_REF_TLS ? 16 : 8;
        if (!ulp_in_segment(o->phdr, o->phnum, refs[i].pointer, size, PF_W))
            return ulp_fail(r, "a reference variable is not writable data of the patch object");
    }
    return 0;
}

static const struct ulp_request_reference *references(const struct ulp_request *r)
{
    const char *after_functions =
        (const char *)(r + 1) + r->function_count * sizeof(struct ulp_request_function);
    return (const void *)after_functions;
}

/* Whether the object calls functions of the target by name: then it loads lazily. */
static int imports(const struct ulp_request *r)
{
    for (uint32_t i = 0; i < r->reference_count; i++)
        if (references(r)[i].kind == ULP_REF_IMPORT)
            return 1;
    return 0;
}

/* The displacement a near reference's field needs from the object loaded at `object`: its
 * target (the address plus the addend) from the field, which must fit in the field's 32 bits. */
static int fits(const struct ulp_request_reference *ref, uintptr_t object, int32_t *field)
{
    int64_t displacement = (int64_t)(ref->value - (object + ref->pointer));
    *field = (int32_t)displacement;
    return displacement >= INT32_MIN && displacement <= INT32_MAX;
}

/* The near references: each field gets its displacement, before any code of the object runs but
 * its constructors. All are computed first: an object the loader placed out of their reach is
 * refused whole, with nothing written. The code stays read-only (W^X): written through
 * /proc/thread-self/mem (not self: gone once the main thread has exited), which copies the page
 * for this process as a debugger's breakpoint does. */
static int64_t fill_near(struct ulp_request *r, uintptr_t object, uintptr_t target)
{
    const struct ulp_request_reference *refs = references(r);
    uint32_t count = 0;
    int32_t field;
    for (uint32_t i = 0; i < r->reference_count; i++) {
        if (refs[i].kind != ULP_REF_NEAR)
            continue;
        if (!fits(&refs[i], object, &field)) {
            uint64_t apart = object > target ? object - target : target - object;
            return ulp_fail(r, "the patch object was loaded %llu MiB from the target, out of reach"
                               " of its near references (2 GiB)",
                            (unsigned long long)(apart >> 20));
        }
        count++;
    }
    if (count == 0)
        return 0;
    int mem = open("/proc/thread-self/mem", O_RDWR | O_CLOEXEC);
    if (mem < 0)
        return ulp_fail(r, "cannot write the near references: /proc/thread-self/mem: %s",
                        strerror(errno));
    for (uint32_t i = 0; i < r->reference_count; i++) {
        if (refs[i].kind != ULP_REF_NEAR)
            continue;
        fits(&refs[i], object, &field); /* it does: checked above */
        if (pwrite(mem, &field, sizeof field, (off_t)(object + refs[i].pointer)) != sizeof field) {
            int64_t status = ulp_fail(r, "cannot write a near reference: %s", strerror(errno));
            close(mem);
            return status;
        }
    }
    close(mem);
    return 0;
}

static int64_t fill_references(struct ulp_request *r, uintptr_t object, uintptr_t target)
{
    const struct ulp_request_reference *refs = references(r);
    for (uint32_t i = 0; i < r->reference_count; i++) {
        uint64_t *slot = (uint64_t *)(object + refs[i].pointer);
        if (refs[i].kind == ULP_REF_NEAR)
            continue;
        if (refs[i].kind == ULP_REF_TLS) {
            struct object_search search = {target, NULL, 0, NULL, 0, NULL, 0};
            dl_iterate_phdr(find_object, &search);
            if (search.module == 0)
                return ulp_fail(r, "the target has no thread-local storage module");
            slot[0] = search.module;
            slot[1] = refs[i].value;
        } else {
            slot[0] = refs[i].value;
        }
    }
    return 0;
}

/* The NT_GNU_BUILD_ID of an ELF image in memory (the file's bytes, not loaded), or NULL. Every
 * offset is checked against `size`. */
static const uint8_t *image_build_id(const uint8_t *image, uint64_t size, uint32_t *id_size)
{
    const ElfW(Ehdr) *eh = (const void *)image;
    if (size < sizeof *eh || memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 ||
        eh->e_phentsize != sizeof(ElfW(Phdr)) || eh->e_phoff > size ||
        (uint64_t)eh->e_phnum * sizeof(ElfW(Phdr)) > size - eh->e_phoff)
        return NULL;
    const ElfW(Phdr) *ph = (const void *)(image + eh->e_phoff);
    for (unsigned i = 0; i < eh->e_phnum; i++) {
        if (ph[i].p_type != PT_NOTE || ph[i].p_offset > size ||
            ph[i].p_filesz > size - ph[i].p_offset)
            continue;
        const uint8_t *id = notes_build_id(image + ph[i].p_offset, ph[i].p_filesz, id_size);
        if (id)
            return id;
    }
    return NULL;
}

/* The request's object in a sealed memfd, checked: the descriptor, or -1 with r's message. */
static int object_fd(struct ulp_request *r)
{
    const uint8_t *image = (const uint8_t *)r + r->object_offset;
    uint32_t id_size = 0;
    const uint8_t *id = image_build_id(image, r->object_size, &id_size);
    if (!id || id_size != r->object_build_id_size || memcmp(id, r->object_build_id, id_size)) {
        ulp_fail(r, "the patch object's bytes do not carry the build-id the trigger checked");
        return -1;
    }
    /* Named after the patch: /proc/PID/maps then says which patch a mapping belongs to. */
    char name[sizeof "ulp-patch:" + ULP_ID_SIZE];
    snprintf(name, sizeof name, "ulp-patch:%s", r->id);
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) {
        ulp_fail(r, "cannot hold the patch object in memory: memfd_create: %s", strerror(errno));
        return -1;
    }
    for (uint64_t done = 0; done < r->object_size;) {
        ssize_t n = write(fd, image + done, r->object_size - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            ulp_fail(r, "cannot hold the patch object in memory: write: %s", strerror(errno));
            close(fd);
            return -1;
        }
        done += (uint64_t)n;
    }
    /* Sealed, so that nothing (this process included) changes the bytes the loader maps. */
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) != 0) {
        ulp_fail(r, "cannot seal the patch object: %s", strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* The patch of request `r` for the target `d`, registered at `lib_offset`: stored in *loaded
 * as soon as its object is open, so that the caller closes it whatever fails after. */
int64_t ulp_load(struct ulp_request *r, const struct ulp_descriptor *d, uint64_t lib_offset,
                 struct ulp_patch **loaded)
{
    struct ulp_request_function *funcs = (void *)(r + 1);
    struct ulp_patch *p = calloc(1, sizeof *p + r->function_count * sizeof p->functions[0]);
    if (!p)
        return ulp_fail(r, "out of memory");
    memcpy(p->id, r->id, sizeof p->id);
    memcpy(p->description, r->description, sizeof p->description);
    memcpy(p->object, r->object, sizeof p->object);
    p->target = d;
    p->lib_offset = (uint32_t)lib_offset;
    p->function_count = r->function_count;
    int fd = object_fd(r);
    if (fd < 0) {
        free(p);
        return -ULP_EINVALID;
    }
    /* The loader knows objects by name: /proc/thread-self/fd/N stays unique because the
     * descriptor of a loaded object is never closed (its object is never unloaded either).
     * thread-self, not self: /proc/self/fd is gone once the main thread has exited. */
    char path[64];
    snprintf(path, sizeof path, "/proc/thread-self/fd/%d", fd);
    p->handle = dlopen(path, (imports(r) ? RTLD_LAZY : RTLD_NOW) | RTLD_LOCAL);
    if (!p->handle) {
        const char *why = dlerror();
        int no_proc = access(path, F_OK) != 0;
        close(fd);
        free(p);
        if (no_proc)
            return ulp_fail(r, "cannot load the patch object from memory: no /proc in this"
                               " process's root directory");
        /* The loader read LD_BIND_NOW at the process's start: it binds every call at load,
         * and one of the target's, out of its reach, fails. */
        const char *bind_now = getenv("LD_BIND_NOW");
        if (imports(r) && bind_now && *bind_now)
            return ulp_fail(r, "cannot load the patch object: %s (LD_BIND_NOW is set in the"
                               " process, so its calls of the target cannot wait to be filled:"
                               " link the object against the target by its SONAME, or restart"
                               " the process without LD_BIND_NOW)", why ? why : "unknown error");
        return ulp_fail(r, "cannot load the patch object: %s", why ? why : "unknown error");
    }
    *loaded = p;
    struct link_map *map = NULL;
    if (dlinfo(p->handle, RTLD_DI_LINKMAP, &map) != 0 || !map)
        return ulp_fail(r, "cannot find where the patch object was loaded");
    /* dlopen hands back an object already loaded from the same path (a reverted patch stays
     * loaded), even if the file was rebuilt since: the offsets would then be wrong. */
    struct object_search object = {map->l_addr, map->l_name, 0, NULL, 0, NULL, 0};
    dl_iterate_phdr(find_object, &object);
    if (r->object_build_id_size &&
        (object.build_id_size != r->object_build_id_size ||
         memcmp(object.build_id, r->object_build_id, r->object_build_id_size) != 0))
        return ulp_fail(r, "%s is loaded already, from another build (rename the new one)",
                        r->object);
    uintptr_t target = (uintptr_t)d - d->link_address;
    int64_t status = check_object_offsets(r, &object);
    if (!status)
        status = fill_near(r, map->l_addr, target);
    if (!status)
        status = fill_references(r, map->l_addr, target);
    if (status)
        return status;
    for (uint32_t i = 0; i < r->function_count; i++) {
        struct ulp_function *f = ulp_function_for(funcs[i].entry, funcs[i].nop, lib_offset);
        if (!f)
            return ulp_fail(r, "out of memory");
        p->functions[i] = (struct ulp_patch_function){f, map->l_addr + funcs[i].replacement};
        funcs[i].index = f->index;
    }
    return 0;
}
