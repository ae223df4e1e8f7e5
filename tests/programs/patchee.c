/*
 * A long-running process for the live patching tests: it loads a basic-like library with
 * dlopen (argv[1], or later with `load PATH`) and answers one line per command on stdin, so a
 * test can patch it between two questions. Besides, a thread sleeps in nanosleep() and another
 * blocks in read() for the whole run, counting EINTRs, and SIGUSR1 is counted.
 *
 *   load PATH      dlopen the library           square N / add A B / scaled X / calls
 *   close          dlclose it
 *   hold           a thread enters basic_apply, whose callback waits inside the library
 *   release        the callback calls basic_square(3) from inside, the thread prints it
 *   watch N F      a thread calls basic_square(N) in a loop, counting results equal to F
 *   unwatch        stop it: "seen C of T"
 *   hammer PATH    15 threads malloc/free and dlopen/dlclose PATH until quit
 *   rwx ADDR       make the page at ADDR readable, writable and executable
 *   seccomp        forbid mprotect with PROT_EXEC from now on (EPERM)
 *   sandbox        a thread under a filter of its own (the main thread has none) that kills
 *                  the process at any tgkill it makes, sleeping in a loop: "sandboxed TID"
 *   open PATH      dlopen the C++ sample; bump N calls ThrowerCounter::bump(N) on one object
 *   raise N        raise SIGUSR2 N times; its handler calls basic_square(100000): "sat S other O"
 *   threads N      N more threads, each calling basic_square in a sleep loop
 *   churn          a thread that keeps creating short-lived threads that call basic_square
 *   chroot DIR     chroot(DIR) and chdir("/")
 *   exec PATH LIB  execute PATH (this very pid goes on as that program), with LIB its argument
 *   undumpable     prctl(PR_SET_DUMPABLE, 0), as a daemon that changed its ids is: its owner
 *                  may no longer trace it
 *   exitmain       serve commands from a new thread and end the main thread (pthread_exit)
 *   forker FIFO PATH  a thread that, once a byte arrives on FIFO, forks a child writing
 *                  basic_square(100000) to PATH every 20 ms, and the child's pid to PATH.pid
 *   reserve G      map G GiB (and a page) PROT_NONE where the kernel puts the next mapping, as
 *                  a big heap would: "at ADDR" (not a multiple of 2 MiB, which the kernel
 *                  would align, leaving a hole above it)
 *   probe PATH     dlopen PATH as it is, then dlclose it: "at ADDR", where the loader put it
 *   crowd          reserve every free address within 3 GiB of the library, on both sides: what
 *                  is mapped next lands out of reach of a 32-bit displacement from it; prints
 *                  how many ranges it took
 *   catch SIG      count signal SIG from now on (a handler): "catching"; caught: "caught N"
 *   stats          EINTRs seen, SIGUSR1 and SIGRTMIN handled        quit
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int (*square)(int), (*add)(int, int), (*scaled)(int);
static int (*apply)(int (*)(int), int);
static int *calls;
static void *library;
static sem_t entered, released;
static pthread_t holder;
static int stop;
static int eintr, pipefd[2];
static volatile sig_atomic_t usr1, rt;
static int watch_n, watch_forbidden;
static long watch_seen, watch_total;
static pthread_t watcher;
static const char *hammer_path;
static int (*bump)(void *, int);
static struct {
    int value;
} counter;

static volatile int saturated, other;

static void on_usr2(int sig)
{
    (void)sig;
    if (square(100000) == 2147483647)
        saturated++;
    else
        other++;
}

static volatile sig_atomic_t caught;

static void on_caught(int sig)
{
    (void)sig;
    caught++;
}

static void on_signal(int sig)
{
    if (sig == SIGUSR1)
        usr1++;
    else
        rt++;
}

static void *watch(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED) && __atomic_load_n(&watch_n, __ATOMIC_RELAXED)) {
        if (square(watch_n) == watch_forbidden)
            watch_seen++;
        watch_total++;
    }
    return NULL;
}

static void *hammer(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        void *blocks[16];
        for (int i = 0; i < 16; i++)
            blocks[i] = malloc(16 + 997 * i);
        for (int i = 0; i < 16; i++)
            free(blocks[i]);
        void *lib = dlopen(hammer_path, RTLD_NOW | RTLD_LOCAL);
        if (lib)
            dlclose(lib);
    }
    return NULL;
}

static int forbid_exec_mprotect(void)
{
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_mprotect, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[2])),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, PROT_EXEC, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof filter / sizeof filter[0], filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
}

static sem_t sandboxed;
static pid_t sandboxed_tid;

static void *sandbox(void *arg)
{
    (void)arg;
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_tgkill, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof filter / sizeof filter[0], filter};
    sandboxed_tid = (pid_t)syscall(SYS_gettid);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
        || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
        sandboxed_tid = -1;
    sem_post(&sandboxed);
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        struct timespec t = {0, 20 * 1000 * 1000};
        nanosleep(&t, NULL);
    }
    return NULL;
}

static void *need(void *lib, const char *name)
{
    void *p = dlsym(lib, name);
    if (!p) {
        fprintf(stderr, "patchee: %s\n", dlerror());
        exit(2);
    }
    return p;
}

static void load(const char *path)
{
    library = dlopen(path, RTLD_NOW);
    if (!library) {
        fprintf(stderr, "patchee: %s\n", dlerror());
        exit(2);
    }
    square = need(library, "basic_square");
    add = need(library, "basic_add");
    scaled = need(library, "basic_scaled");
    apply = need(library, "basic_apply");
    calls = need(library, "basic_calls");
}

/* Every free range within 3 GiB of `near`, below it and above it, reserved (PROT_NONE, nothing
 * committed), but for the 16 MiB below the main stack, which it grows into: the gaps listed in
 * /proc/self/maps, each taken whole at its place (MAP_FIXED_NOREPLACE). */
static int crowd(uintptr_t near)
{
    const uintptr_t reach = 3ul << 30, below_stack = 16ul << 20;
    uintptr_t lo = near > reach ? (near - reach + 4095) & -4096ul : 4096;
    uintptr_t hi = (near + reach) & -4096ul;
    int reserved = 0;
    for (int pass = 0; pass < 4; pass++) { /* new reservations may split what the maps showed */
        FILE *maps = fopen("/proc/self/maps", "r");
        if (!maps)
            return -1;
        char line[4096];
        uintptr_t previous_end = 0, starts[4096], ends[4096];
        int gaps = 0;
        while (fgets(line, sizeof line, maps) && gaps < 4096) {
            uintptr_t from, to;
            if (sscanf(line, "%lx-%lx", &from, &to) != 2)
                continue;
            uintptr_t limit = strstr(line, "[stack]") ? from - below_stack : from;
            if (previous_end && limit > previous_end) {
                starts[gaps] = previous_end > lo ? previous_end : lo;
                ends[gaps] = limit < hi ? limit : hi;
                if (starts[gaps] < ends[gaps])
                    gaps++;
            }
            previous_end = to;
        }
        fclose(maps);
        for (int i = 0; i < gaps; i++) {
            void *p = mmap((void *)starts[i], ends[i] - starts[i], PROT_NONE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1,
                           0);
            if (p != MAP_FAILED)
                reserved++;
        }
    }
    return reserved;
}

static int waiting(int x)
{
    sem_post(&entered);
    while (sem_wait(&released) != 0)
        ;
    return square(x);
}

static void *hold(void *arg)
{
    (void)arg;
    int r = apply(waiting, 3);
    printf("held %d\n", r - 1);
    fflush(stdout);
    return NULL;
}

/* The blocked threads keep signals masked: an EINTR they see comes from the patching. */
static void mask_signals(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGRTMIN);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
}

static void *sleeper(void *arg)
{
    (void)arg;
    mask_signals();
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        struct timespec t = {0, 50 * 1000 * 1000};
        if (nanosleep(&t, NULL) != 0 && errno == EINTR)
            __atomic_add_fetch(&eintr, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

static void *reader(void *arg)
{
    (void)arg;
    mask_signals();
    char c;
    while (read(pipefd[0], &c, 1) != 1)
        if (errno == EINTR)
            __atomic_add_fetch(&eintr, 1, __ATOMIC_RELAXED);
    return NULL;
}

static void *napper(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        square(3);
        struct timespec t = {0, 10 * 1000 * 1000};
        nanosleep(&t, NULL);
    }
    return NULL;
}

static void *brief(void *arg)
{
    (void)arg;
    square(3);
    return NULL;
}

static void *churner(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        pthread_t t;
        if (pthread_create(&t, NULL, brief, NULL) == 0)
            pthread_join(t, NULL);
    }
    return NULL;
}

static void *serve(void *arg);

static void finish(void)
{
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    if (write(pipefd[1], "x", 1) != 1)
        exit(2);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction action = {.sa_handler = on_signal, .sa_flags = SA_RESTART};
    sigaction(SIGUSR1, &action, NULL);
    sigaction(SIGRTMIN, &action, NULL);
    sem_init(&entered, 0, 0);
    sem_init(&released, 0, 0);
    if (pipe(pipefd) != 0)
        return 2;
    pthread_t s, r;
    pthread_create(&s, NULL, sleeper, NULL);
    pthread_create(&r, NULL, reader, NULL);
    if (argc > 1)
        load(argv[1]);
    printf("ready\n");
    serve(NULL);
    finish();
    pthread_join(s, NULL);
    pthread_join(r, NULL);
    return 0;
}

/* Waits in its own system call, so that the trigger's prepare runs in another thread (the
 * main one, tried first), and forks when told to: in the middle of that prepare. */
static void *forker(void *arg)
{
    char(*paths)[4096] = arg;
    char byte;
    int fd = open(paths[0], O_RDONLY);
    if (fd < 0 || read(fd, &byte, 1) != 1)
        return NULL;
    pid_t child = fork();
    if (child == 0) {
        for (;;) {
            FILE *out = fopen(paths[1], "w");
            if (out) {
                fprintf(out, "%d\n", square(100000));
                fclose(out);
            }
            usleep(20000);
        }
    }
    char pid_path[4200];
    snprintf(pid_path, sizeof pid_path, "%s.pid", paths[1]);
    FILE *out = fopen(pid_path, "w");
    if (out) {
        fprintf(out, "%d\n", (int)child);
        fclose(out);
    }
    return NULL;
}

static void *serve(void *arg)
{
    (void)arg;
    char line[8300], word[32], path[4096], fifo[4096];
    int a, b;
    unsigned long address;
    while (fgets(line, sizeof line, stdin)) {
        if (sscanf(line, "load %4095s", path) == 1) {
            load(path);
            printf("loaded\n");
        } else if (sscanf(line, "reserve %d", &a) == 1) {
            void *at = mmap(NULL, ((size_t)a << 30) + 4096, PROT_NONE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            printf("at %p\n", at);
        } else if (sscanf(line, "probe %4095s", path) == 1) {
            void *probed = dlopen(path, RTLD_NOW | RTLD_LOCAL);
            struct link_map *map = NULL;
            if (!probed || dlinfo(probed, RTLD_DI_LINKMAP, &map) != 0) {
                printf("probe failed: %s\n", dlerror());
                continue;
            }
            printf("at %#lx\n", (unsigned long)map->l_addr);
            dlclose(probed);
        } else if (sscanf(line, "square %d", &a) == 1) {
            printf("%d\n", square(a));
        } else if (sscanf(line, "add %d %d", &a, &b) == 2) {
            printf("%d\n", add(a, b));
        } else if (sscanf(line, "scaled %d", &a) == 1) {
            printf("%d\n", scaled(a));
        } else if (sscanf(line, "%31s", word) == 1 && !strcmp(word, "calls")) {
            printf("%d\n", *calls);
        } else if (sscanf(line, "raise %d", &a) == 1) {
            saturated = other = 0;
            signal(SIGUSR2, on_usr2);
            for (int i = 0; i < a; i++)
                raise(SIGUSR2);
            printf("sat %d other %d\n", (int)saturated, (int)other);
        } else if (!strcmp(word, "close")) {
            printf("%d\n", dlclose(library));
        } else if (!strcmp(word, "hold")) {
            pthread_create(&holder, NULL, hold, NULL);
            while (sem_wait(&entered) != 0)
                ;
            printf("holding\n");
        } else if (!strcmp(word, "release")) {
            sem_post(&released);
            pthread_join(holder, NULL);
        } else if (sscanf(line, "watch %d %d", &a, &b) == 2) {
            watch_n = a;
            watch_forbidden = b;
            watch_seen = watch_total = 0;
            pthread_create(&watcher, NULL, watch, NULL);
            printf("watching\n");
        } else if (!strcmp(word, "unwatch")) {
            __atomic_store_n(&watch_n, 0, __ATOMIC_RELAXED);
            pthread_join(watcher, NULL);
            printf("seen %ld of %ld\n", watch_seen, watch_total);
        } else if (sscanf(line, "hammer %4095s", path) == 1) {
            hammer_path = strdup(path);
            for (int i = 0; i < 15; i++) {
                pthread_t t;
                pthread_create(&t, NULL, hammer, NULL);
                pthread_detach(t);
            }
            printf("hammering\n");
        } else if (sscanf(line, "rwx %lx", &address) == 1) {
            void *page = (void *)(address & ~4095ul);
            printf("%d\n", mprotect(page, 4096, PROT_READ | PROT_WRITE | PROT_EXEC));
        } else if (!strcmp(word, "seccomp")) {
            printf("%d\n", forbid_exec_mprotect());
        } else if (!strcmp(word, "sandbox")) {
            pthread_t t;
            sem_init(&sandboxed, 0, 0);
            pthread_create(&t, NULL, sandbox, NULL);
            pthread_detach(t);
            sem_wait(&sandboxed);
            printf("sandboxed %d\n", (int)sandboxed_tid);
        } else if (sscanf(line, "open %4095s", path) == 1) {
            void *lib = dlopen(path, RTLD_NOW);
            bump = lib ? dlsym(lib, "_ZN14ThrowerCounter4bumpEi") : NULL;
            printf("%s\n", bump ? "opened" : dlerror());
        } else if (sscanf(line, "bump %d", &a) == 1) {
            printf("%d\n", bump(&counter, a));
        } else if (sscanf(line, "threads %d", &a) == 1) {
            int made = 0;
            for (int i = 0; i < a; i++) {
                pthread_t t;
                pthread_attr_t attr;
                pthread_attr_init(&attr);
                pthread_attr_setstacksize(&attr, 64 * 1024);
                if (pthread_create(&t, &attr, napper, NULL) == 0 && pthread_detach(t) == 0)
                    made++;
                pthread_attr_destroy(&attr);
            }
            printf("%d\n", made);
        } else if (!strcmp(word, "churn")) {
            pthread_t t;
            pthread_create(&t, NULL, churner, NULL);
            pthread_detach(t);
            printf("churning\n");
        } else if (sscanf(line, "exec %4095s %4095s", path, fifo) == 2) {
            fflush(stdout);
            execl(path, path, fifo, (char *)NULL);
            printf("exec failed: %s\n", strerror(errno));
        } else if (!strcmp(word, "undumpable")) {
            printf("%d\n", prctl(PR_SET_DUMPABLE, 0, 0, 0, 0));
        } else if (sscanf(line, "chroot %4095s", path) == 1) {
            printf("%d\n", chroot(path) == 0 && chdir("/") == 0 ? 0 : -1);
        } else if (!strcmp(word, "exitmain")) {
            pthread_t t;
            pthread_create(&t, NULL, serve, (void *)1);
            printf("main exits\n");
            pthread_exit(NULL);
        } else if (sscanf(line, "forker %4095s %4095s", fifo, path) == 2) {
            static char paths[2][4096];
            strcpy(paths[0], fifo);
            strcpy(paths[1], path);
            pthread_t t;
            pthread_create(&t, NULL, forker, paths);
            pthread_detach(t);
            printf("forker\n");
        } else if (!strcmp(word, "crowd")) {
            printf("%d\n", crowd((uintptr_t)square));
        } else if (sscanf(line, "catch %d", &a) == 1) {
            struct sigaction action = {.sa_handler = on_caught, .sa_flags = SA_RESTART};
            printf(sigaction(a, &action, NULL) == 0 ? "catching\n" : "failed\n");
        } else if (!strcmp(word, "caught")) {
            printf("caught %d\n", (int)caught);
        } else if (!strcmp(word, "stats")) {
            printf("eintr %d usr1 %d rt %d\n", eintr, (int)usr1, (int)rt);
        } else if (!strcmp(word, "quit")) {
            break;
        } else {
            printf("? %s", line);
        }
    }
    /* Serving from a thread, the main thread gone: nobody else will end the process. */
    if (arg) {
        finish();
        exit(0);
    }
    return NULL;
}
