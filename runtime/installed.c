/*
 * Installed patches (docs/design.md, "Installed patches"): `ulp install` writes a patch into
 * the patch directory as the very request the trigger would hand ulp_prepare, with the
 * target's addresses relative to its load base and the patch object's bytes inside. A process
 * applies every installed patch of a prepared library itself, with no trigger and no ptrace:
 * at start-up (this runtime's constructor) for the libraries loaded with the program, and at
 * the first tracked call for a library loaded later, before that call runs.
 *
 * Trust: the same rule as for a patch the trigger is given as root (docs/security.md): the
 * file and every directory above it belong to root and are writable by nobody else (a
 * directory above the patch directory may be writable by all with the sticky bit; the patch
 * directory may not, since anyone could add a patch there). A refused file is reported on
 * stderr, its name escaped, once per load of its library, and `ulp patches` shows the same
 * reason.
 *
 * The change is the trigger's two steps in this thread: ulp_prepare, the universe checkers
 * (write_checkers says how, with other threads running), ulp_commit.
 * It is the trigger's change, made in the process, so no call mixes versions: a thread that
 * enters the library meanwhile (another thread's first calls, once the library is registered
 * and before the commit) is tracked in the universe before it, and runs the old code
 * throughout that call. Holding those threads back until the commit would mean waiting, with
 * the loader's lock possibly held, for this thread's dlopen of the patch object. When the
 * process has one thread, nobody can be inside or on the way in, and the checkers become direct
 * jumps at once (the transition finished); otherwise they stay, and the next trigger (or
 * `ulp patches --finish`) finishes the transition.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ulp.h"

#define DEFAULT_DIRECTORY "/var/lib/ulp/patches"
#define SUFFIX ".ulpreq"
#define MAX_REQUEST (256u << 20) /* as the trigger's bound on a patch file (live/trust.py) */
#define PAD_BEFORE ULP_PAD_BEFORE
#define BUSY_ATTEMPTS 5000 /* 1 ms apart */

/* A thread applying installed patches registers their target itself (ulp_prepare): that
 * registration must not start another application. */
static __thread int applying;
static _Atomic int started; /* the constructor's scan has run: later registrations apply */
/* One application at a time: two threads making the first calls of two new libraries would
 * otherwise find each other's ulp_prepare busy. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static const char *directory(void)
{
    /* Not from the environment of a setuid program. */
    const char *dir = secure_getenv("ULP_PATCH_DIR");
    return dir && *dir ? dir : DEFAULT_DIRECTORY;
}

/* `text` with every byte that is not printable ASCII written \xNN: a name in a directory
 * another user may write (one refused for that) must not drive the terminal the process
 * reports on, nor start a line of its own (the trigger escapes its output alike). */
static void put_escaped(const char *text)
{
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        if (*c >= 0x20 && *c < 0x7f)
            fputc(*c, stderr);
        else
            fprintf(stderr, "\\x%02x", *c);
    }
}

static void report(const char *path, const char *why)
{
    flockfile(stderr);
    fputs("ulp: installed patch ", stderr);
    put_escaped(path);
    fputs(" not applied: ", stderr);
    put_escaped(why);
    fputc('\n', stderr);
    funlockfile(stderr);
}

/* Why a file or directory on the way to an installed patch could have been written by
 * someone other than root (false: it could not): live/trust.py's rule, with root alone
 * trusted, in its words. `sticky_ok`: a directory writable by all is accepted with the sticky
 * bit, where nobody can replace root's entries; not the patch directory itself, whose entries
 * are the patches, and where anyone could add one. */
static int refused(const char *path, const struct stat *st, int sticky_ok, char *why,
                   size_t size)
{
    const char *what = S_ISDIR(st->st_mode) ? "directory" : "file";
    unsigned mode = st->st_mode & 07777;
    int sticky_dir = sticky_ok && S_ISDIR(st->st_mode) && (st->st_mode & S_ISVTX);
    if (st->st_uid != 0)
        snprintf(why, size, "%s: %s owned by uid %u, not root: it could have written the patch",
                 path, what, (unsigned)st->st_uid);
    else if ((st->st_mode & S_IWOTH) && !sticky_dir)
        snprintf(why, size, "%s: %s writable by every user (mode %o)", path, what, mode);
    else if ((st->st_mode & S_IWGRP) && st->st_gid != 0 && !sticky_dir)
        snprintf(why, size, "%s: %s writable by group %u (mode %o)", path, what,
                 (unsigned)st->st_gid, mode);
    else
        return 0;
    return 1;
}

/* The patch directory, resolved, and every one above it (the files are judged by their own
 * fstat). */
static int refused_directory(const char *dir, char *why, size_t size)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", dir);
    for (int sticky_ok = 0;; sticky_ok = 1) {
        struct stat st;
        if (lstat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
            snprintf(why, size, "%s: changed while it was read", path);
            return 1;
        }
        if (refused(path, &st, sticky_ok, why, size))
            return 1;
        char *slash = strrchr(path, '/');
        if (slash == path) {
            if (path[1] == '\0')
                return 0;
            path[1] = '\0';
        } else {
            *slash = '\0';
        }
    }
}

/* ---- the library ------------------------------------------------------------------------ */

struct target {
    struct ulp_descriptor *descriptor;
    uintptr_t base;
    const ElfW(Phdr) *phdr;
    ElfW(Half) phnum;
};

/* A prepared library's descriptor is in its last writable PT_LOAD, `.ulp.data`, right after
 * the runtime slot (docs/prepared-library-format.md). */
static struct ulp_descriptor *descriptor_of(const struct dl_phdr_info *info)
{
    const ElfW(Phdr) *data = NULL;
    for (ElfW(Half) i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_LOAD && (info->dlpi_phdr[i].p_flags & PF_W))
            data = &info->dlpi_phdr[i];
    if (!data || data->p_memsz < 8 + sizeof(struct ulp_descriptor))
        return NULL;
    struct ulp_descriptor *d = (void *)(info->dlpi_addr + data->p_vaddr + 8);
    if (!ulp_is_descriptor(d) || d->link_address != data->p_vaddr + 8)
        return NULL;
    return d;
}

static int in_segment(const struct target *t, uint64_t offset, uint64_t size, uint32_t flag)
{
    return ulp_in_segment(t->phdr, t->phnum, offset, size, flag);
}

/* The request's addresses are offsets in the target: make them its run-time addresses, after
 * checking that each lies where the metadata says (code for a function, a loaded segment for
 * a variable): a forged file must not make the runtime write elsewhere. */
static const char *locate(struct ulp_request *r, const struct target *t)
{
    struct ulp_request_function *f = (void *)(r + 1);
    struct ulp_request_reference *ref = (void *)(f + r->function_count);
    for (uint32_t i = 0; i < r->function_count; i++) {
        if (f[i].entry < PAD_BEFORE || !in_segment(t, f[i].entry - PAD_BEFORE, PAD_BEFORE, PF_X) ||
            !in_segment(t, f[i].nop, 2, PF_X))
            return "a function offset is not code of the library";
        f[i].entry += t->base;
        f[i].nop += t->base;
    }
    for (uint32_t i = 0; i < r->reference_count; i++) {
        if (ref[i].kind == ULP_REF_TLS)
            continue;
        /* A near reference's value is the target's offset plus its addend, which may point a
         * little before the target's first byte; the runtime writes nothing there (only into
         * the field, in the object's code, which load.c checks): the packer and `ulp install`
         * checked the offset itself. */
        int code = ref[i].kind == ULP_REF_FUNCTION || ref[i].kind == ULP_REF_IMPORT;
        if (ref[i].kind != ULP_REF_NEAR && !in_segment(t, ref[i].value, 1, code ? PF_X : PF_R))
            return "a reference offset is not in the library";
        ref[i].value += t->base;
    }
    r->descriptor = (uint64_t)(uintptr_t)t->descriptor;
    return NULL;
}

/* ---- the code ---------------------------------------------------------------------------- */

static void put32(uint8_t *at, uint32_t v)
{
    memcpy(at, &v, 4);
}

/* The universe checker and the finished forms, as ulp_build/prepare/codegen.py writes them. */
static void checker_pad(uint8_t pad[PAD_BEFORE], uintptr_t at, uintptr_t slot, uint32_t index)
{
    pad[0] = 0x41, pad[1] = 0xbb; /* mov $index, %r11d */
    put32(pad + 2, index);
    pad[6] = 0xff, pad[7] = 0x25; /* jmp *slot(%rip) */
    put32(pad + 8, (uint32_t)(slot - (at + 12)));
    pad[12] = pad[13] = 0x90;
}

static void direct_pad(uint8_t pad[PAD_BEFORE], uintptr_t at, uintptr_t target)
{
    int64_t disp = (int64_t)target - (int64_t)(at + 5);
    if (disp >= INT32_MIN && disp <= INT32_MAX) {
        pad[0] = 0xe9;
        put32(pad + 1, (uint32_t)disp);
        memset(pad + 5, 0x90, 9);
    } else {
        pad[0] = 0xff, pad[1] = 0x25;
        put32(pad + 2, 0);
        memcpy(pad + 6, &target, 8);
    }
}

static int is_checker(const uint8_t *pad, uintptr_t at, uintptr_t slot)
{
    uint8_t expect[PAD_BEFORE];
    uint32_t index;
    memcpy(&index, pad + 2, 4);
    checker_pad(expect, at, slot, index);
    return memcmp(pad, expect, PAD_BEFORE) == 0;
}

static int poke(int mem, uintptr_t at, const void *bytes, size_t size)
{
    return pwrite(mem, bytes, size, (off_t)at) == (ssize_t)size ? 0 : -1;
}

/* Other threads may be running the library while its checkers are written (one loaded later,
 * at its first call). A pad is unreachable until its entry jump exists, so the pads go first;
 * then every core of the process is serialized (membarrier's SYNC_CORE, the kernel's way to
 * publish code modified in user space), and each entry nop becomes its jump by one aligned
 * 2-byte store, through the mapping made writable for that moment: a CPU fetching the entry
 * sees the nop or the jump, never half of each (a write through /proc/thread-self/mem may copy
 * byte by byte). A process with one thread has nobody to race: that file does it all. */
static void serialize_cores(void)
{
    static int registered;
    if (!registered)
        registered = syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE,
                             0, 0) == 0 ? 1 : -1;
    if (registered > 0)
        syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE, 0, 0);
}

/* The 2-byte jump from a function's entry nop back to its pad; 0 when out of reach. */
static int entry_jump(const struct ulp_request_function *f, uint8_t jump[2])
{
    int64_t back = (int64_t)(f->entry - PAD_BEFORE) - (int64_t)(f->nop + 2);
    jump[0] = 0xeb;
    jump[1] = (uint8_t)back;
    return back >= -128 && back < 0;
}

static int store_jump(int mem, uintptr_t nop, const uint8_t jump[2], int alone)
{
    if (alone)
        return poke(mem, nop, jump, 2);
    uintptr_t page = nop & ~(uintptr_t)(getpagesize() - 1);
    if (mprotect((void *)page, (size_t)getpagesize(), PROT_READ | PROT_WRITE | PROT_EXEC) != 0)
        return -1;
    uint16_t value;
    memcpy(&value, jump, 2);
    __atomic_store_n((uint16_t *)nop, value, __ATOMIC_RELEASE);
    return mprotect((void *)page, (size_t)getpagesize(), PROT_READ | PROT_EXEC);
}

/* The checkers of every function of the prepared request, over the prepared padding or a
 * checker only. */
static const char *write_checkers(int mem, const struct ulp_request *r, uintptr_t slot, int alone)
{
    static const uint8_t nops[PAD_BEFORE] = {0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90,
                                             0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90};
    const struct ulp_request_function *f = (const void *)(r + 1);
    for (uint32_t i = 0; i < r->function_count; i++) {
        uintptr_t pad_at = f[i].entry - PAD_BEFORE;
        const uint8_t *now = (const uint8_t *)pad_at, *nop = (const uint8_t *)f[i].nop;
        uint8_t jump[2];
        if (!entry_jump(&f[i], jump))
            return "an entry nop cannot reach its pad";
        int pristine = memcmp(now, nops, PAD_BEFORE) == 0 && nop[0] == 0x66 && nop[1] == 0x90;
        if (!pristine && !(is_checker(now, pad_at, slot) && memcmp(nop, jump, 2) == 0))
            return "a function's entry is neither as prepared nor a universe checker";
    }
    for (uint32_t i = 0; i < r->function_count; i++) {
        uint8_t pad[PAD_BEFORE];
        checker_pad(pad, f[i].entry - PAD_BEFORE, slot, f[i].index);
        if (poke(mem, f[i].entry - PAD_BEFORE, pad, PAD_BEFORE))
            return "cannot write the code through /proc/thread-self/mem";
    }
    if (!alone)
        serialize_cores();
    for (uint32_t i = 0; i < r->function_count; i++) {
        uint8_t jump[2];
        entry_jump(&f[i], jump);
        if (memcmp((const void *)f[i].nop, jump, 2) != 0 && store_jump(mem, f[i].nop, jump, alone))
            return "cannot write an entry jump (the code could not be made writable)";
    }
    return NULL;
}

static int alone(void)
{
    FILE *status = fopen("/proc/self/status", "re");
    if (!status)
        return 0;
    char line[128];
    int threads = 0;
    while (fgets(line, sizeof line, status))
        if (sscanf(line, "Threads: %d", &threads) == 1)
            break;
    fclose(status);
    return threads == 1;
}

/* With no other thread, nobody holds an older universe of the library or can be on its way
 * in: each checker of the request becomes its function's finished form, and the library's
 * transition is finished (ulp_build/live/transition.py, which does the same under a stop). */
static void finish(int mem, const struct ulp_request *r, const struct ulp_descriptor *d)
{
    static const uint8_t nop2[2] = {0x66, 0x90};
    const struct ulp_request_function *f = (const void *)(r + 1);
    struct ulp_function **all = atomic_load(&ulp_functions);
    for (uint32_t i = 0; i < r->function_count; i++) {
        const struct ulp_function *fn = all[f[i].index];
        uintptr_t code = atomic_load(&fn->latest)->code;
        uint8_t pad[PAD_BEFORE];
        if (code == fn->original) {
            memset(pad, 0x90, PAD_BEFORE);
            if (poke(mem, f[i].nop, nop2, 2) || poke(mem, fn->pad, pad, PAD_BEFORE))
                return;
        } else {
            direct_pad(pad, fn->pad, code);
            if (poke(mem, fn->pad, pad, PAD_BEFORE))
                return;
        }
    }
    uint64_t offset = atomic_load(&d->runtime_private);
    if (offset >= ULP_THREAD_LIBS)
        ulp_libraries[(offset - ULP_THREAD_LIBS) / ULP_THREAD_LIB_SIZE].finished = 1;
}

/* ---- one file ---------------------------------------------------------------------------- */

static struct ulp_request *read_request(int dirfd, const char *path, const char *name,
                                        char *why, size_t size)
{
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        if (errno == ELOOP) /* O_NOFOLLOW: as `ulp patches --installed` words it */
            snprintf(why, size, "%s: a symbolic link: processes do not follow it", path);
        else
            snprintf(why, size, "%s", strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    const char *bad = NULL;
    if (!S_ISREG(st.st_mode))
        bad = "not a regular file";
    else if ((uint64_t)st.st_size < sizeof(struct ulp_request) ||
             (uint64_t)st.st_size > MAX_REQUEST)
        bad = "not an installed patch (its size)";
    struct ulp_request *r = NULL;
    if (!bad && refused(path, &st, 0, why, size)) {
        close(fd);
        return NULL;
    }
    if (!bad && !(r = malloc((size_t)st.st_size)))
        bad = "out of memory";
    size_t got = 0;
    while (!bad && got < (size_t)st.st_size) {
        ssize_t n = read(fd, (char *)r + got, (size_t)st.st_size - got);
        if (n <= 0)
            bad = "cannot read it";
        got += n > 0 ? (size_t)n : 0;
    }
    close(fd);
    /* locate() reads the entries before ulp_prepare checks the rest: their count first. */
    if (!bad && (r->size != (uint64_t)st.st_size || r->flags != ULP_REQ_APPLY ||
                 ulp_request_entries_size(r) > r->size))
        bad = "not an installed patch";
    if (bad) {
        snprintf(why, size, "%s", bad);
        free(r);
        return NULL;
    }
    return r;
}

/* The request applied (the caller frees it), or NULL: already applied, or refused (said). */
static struct ulp_request *apply_file(const char *path, int dirfd, const char *name,
                                      const struct target *t, int mem)
{
    char why[PATH_MAX + 128] = "";
    struct ulp_request *r = read_request(dirfd, path, name, why, sizeof why);
    const char *bad = NULL;
    /* A trigger patching the process meanwhile makes either step busy: wait for it, as a
     * trigger would retry (a checker written by a failed attempt is harmless). */
    for (int attempt = 0; r && !bad && attempt < BUSY_ATTEMPTS; attempt++) {
        if (attempt == 0 && (bad = locate(r, t)))
            break;
        if (attempt > 0)
            nanosleep(&(struct timespec){0, 1000000}, NULL);
        int64_t ticket = ulp_prepare(r);
        if (ticket == -ULP_EALREADY) {
            free(r);
            return NULL;
        }
        if (ticket == -ULP_EBUSY)
            continue;
        if (ticket <= 0) {
            bad = r->message[0] ? r->message : "the runtime refused it";
        } else if (!(bad = write_checkers(mem, r, (uintptr_t)&t->descriptor->dispatch,
                                          alone()))) {
            if (ulp_commit(ticket) == -ULP_EBUSY)
                continue;
            return r;
        }
    }
    if (r && !bad)
        bad = "another trigger kept the runtime busy";
    if (bad)
        snprintf(why, sizeof why, "%s", bad);
    if (why[0])
        report(path, why);
    free(r);
    return NULL;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every installed patch of `t`'s build, in the order of their names (`ulp install` numbers
 * them). */
static void apply_installed(const struct target *t)
{
    const struct ulp_descriptor *d = t->descriptor;
    if (!d->build_id || d->build_id_size == 0 || d->build_id_size > 32)
        return;
    char prefix[2 * 32 + 2];
    const uint8_t *id = (const uint8_t *)(t->base + d->build_id);
    for (uint32_t i = 0; i < d->build_id_size; i++)
        snprintf(prefix + 2 * i, 3, "%02x", id[i]);
    strcat(prefix, ".");
    /* Resolved once, then checked and read by that path: a symbolic link on the way cannot
     * be switched between the check and the reading. */
    char dir[PATH_MAX];
    if (!realpath(directory(), dir))
        return; /* no directory: nothing installed */
    DIR *listing = opendir(dir);
    if (!listing)
        return;
    char **names = NULL;
    size_t count = 0, room = 0;
    for (struct dirent *e; (e = readdir(listing));) {
        size_t n = strlen(e->d_name);
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0 || n < sizeof SUFFIX ||
            strcmp(e->d_name + n - (sizeof SUFFIX - 1), SUFFIX) != 0)
            continue;
        if (count == room) {
            room = room ? 2 * room : 8;
            char **more = realloc(names, room * sizeof *names);
            if (!more)
                break;
            names = more;
        }
        if ((names[count] = strdup(e->d_name)))
            count++;
    }
    if (count) {
        char why[PATH_MAX + 128];
        int refused = refused_directory(dir, why, sizeof why);
        /* thread-self, not self: the first call of a library loaded later may come after the
         * main thread exited, and /proc/self/mem is gone with it (load.c writes the same way). */
        int mem = open("/proc/thread-self/mem", O_RDWR | O_CLOEXEC);
        if (!refused && mem < 0) {
            snprintf(why, sizeof why, "/proc/thread-self/mem: %s", strerror(errno));
            refused = 1;
        }
        qsort(names, count, sizeof *names, by_name);
        /* Applied in order (a later patch may replace a function an earlier one did); the
         * checkers of all become direct jumps at the end, when nobody else can be inside. */
        struct ulp_request **applied = calloc(count, sizeof *applied);
        for (size_t i = 0; i < count; i++) {
            char path[PATH_MAX];
            snprintf(path, sizeof path, "%s/%s", dir, names[i]);
            if (refused || !applied)
                report(path, refused ? why : "out of memory");
            else
                applied[i] = apply_file(path, dirfd(listing), names[i], t, mem);
        }
        int finishing = applied && alone();
        for (size_t i = 0; applied && i < count; i++) {
            if (applied[i] && finishing)
                finish(mem, applied[i], t->descriptor);
            free(applied[i]);
        }
        free(applied);
        if (mem >= 0)
            close(mem);
    }
    for (size_t i = 0; i < count; i++)
        free(names[i]);
    free(names);
    closedir(listing);
}

/* ---- when ------------------------------------------------------------------------------- */

/* The prepared libraries to apply to, found by dl_iterate_phdr and applied once it has
 * returned: its callback runs under the loader's list lock, and ulp_prepare's dlopen of a patch
 * object waits for the loader's main lock, which another thread's dlopen holds while it waits
 * for the list lock. Under `lock`. */
static struct target targets[ULP_MAX_LIBRARIES];

struct search {
    const struct ulp_descriptor *wanted; /* NULL: every prepared library */
    uint32_t count;
};

static int visit(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct search *s = data;
    struct ulp_descriptor *d = descriptor_of(info);
    if (!d || (s->wanted && d != s->wanted) || s->count == ULP_MAX_LIBRARIES)
        return 0;
    targets[s->count++] = (struct target){d, info->dlpi_addr, info->dlpi_phdr, info->dlpi_phnum};
    return s->wanted != NULL;
}

static void apply_to(const struct ulp_descriptor *wanted)
{
    struct search s = {wanted, 0};
    dl_iterate_phdr(visit, &s);
    for (uint32_t i = 0; i < s.count; i++) {
        /* Registered now rather than at its first tracked call: `ulp patches` lists it even if
         * the program only ever calls its leaves, and that call has no application left to
         * do. */
        ulp_library_register(targets[i].descriptor);
        apply_installed(&targets[i]);
    }
}

/* The constructor: the libraries loaded with the program, before main. Still one thread, as
 * a rule (another library's constructor may have started one). */
static void forget_in_child(void)
{
    pthread_mutex_init(&lock, NULL);
}

void ulp_installed_start(void)
{
    pthread_atfork(NULL, NULL, forget_in_child);
    pthread_mutex_lock(&lock);
    applying = 1;
    apply_to(NULL);
    applying = 0;
    atomic_store(&started, 1);
    pthread_mutex_unlock(&lock);
}

/* A library's first tracked call (library.c, once per load): for one loaded after the
 * constructor ran. */
void ulp_installed_registered(const struct ulp_descriptor *d)
{
    if (applying || !atomic_load(&started))
        return;
    pthread_mutex_lock(&lock);
    applying = 1;
    apply_to(d);
    applying = 0;
    pthread_mutex_unlock(&lock);
}
