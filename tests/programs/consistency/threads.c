/* The 8-thread driver of tests/test_consistency.py: `threads MODE` makes library calls of
 * one kind until stdin closes, then prints how many results mixed the two formats and which
 * format ran. MODE names a way into library L; its "-split" variant (the control) makes the
 * same roundtrip in two separate library calls, which a patch may land between. */
#define _GNU_SOURCE
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "consistency.h"

enum { CALLS, MIXED, V1, V2, ERRORS, COUNTS };
static long counts[COUNTS];
static int stop;
static const char *mode;

static void nap(void)
{
    struct timespec pause = {0, 100000};
    nanosleep(&pause, NULL);
}

static void delay(void)
{
    for (volatile int i = 0; i < L_DELAY; i++)
        ;
}

static int is(const char *name)
{
    return strcmp(mode, name) == 0;
}

/* The other half of a split roundtrip, after `y = l_encode(x)`. */
static int version_of(int x, int y)
{
    return y == 2 * x ? 1 : 2;
}

/* Row 6: a call of L left by longjmp (or, in the control, by __builtin_longjmp, which no
 * runtime can see) under a 16 KiB frame, then a roundtrip from deeper in the stack. */
static __thread jmp_buf env;
static __thread void *benv[5];

static void leave(void)
{
    if (is("abandon-builtin"))
        __builtin_longjmp(benv, 1);
    longjmp(env, 1);
}

__attribute__((noinline)) static void abandon(void)
{
    volatile char frame[16384];
    frame[0] = 0;
    if (is("abandon-builtin")) {
        if (__builtin_setjmp(benv) == 0)
            l_call_back(leave);
    } else if (setjmp(env) == 0) {
        l_call_back(leave);
    }
    frame[1] = 0;
}

__attribute__((noinline)) static int deeper(int x, int *version)
{
    volatile char frame[32768];
    frame[0] = 0;
    int r = l_roundtrip(x, version);
    frame[1] = 0;
    return r;
}

/* A child that checks one roundtrip: exit 10 + version, or 1 when mixed. */
static int forked(int x, int *version)
{
    int y = 0;
    if (is("fork-split")) {
        y = l_encode(x);
        delay();
    }
    pid_t pid = fork();
    if (pid == 0) {
        int v = version_of(x, y), r = is("fork-split") ? l_decode(y) : l_roundtrip(x, &v);
        _exit(r == x ? 10 + v : 1);
    }
    int status;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
        return -1;
    *version = WEXITSTATUS(status) - 10;
    return WEXITSTATUS(status) == 1 ? -1 - x : x;
}

/* The controls of rows 2 and 3 run outside L (a start routine, a handler of this program):
 * made inside L, its two calls would be one call of L, tracked since L's own start routine
 * and handler are. */
static int split(int x, int *version)
{
    int y = l_encode(x);
    l_between_calls();
    *version = version_of(x, y);
    return l_decode(y);
}

static void *split_job(void *arg)
{
    struct l_job *job = arg;
    job->result = split(job->x, &job->version);
    return job;
}

static long split_signals[4]; /* calls, mixed, v1, v2 */
static int split_x = 1;

static void split_handler(int sig)
{
    (void)sig;
    int x = __atomic_add_fetch(&split_x, 1, __ATOMIC_RELAXED) % 100000 + 1, version;
    int r = split(x, &version);
    __atomic_add_fetch(&split_signals[0], 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&split_signals[1], r != x, __ATOMIC_RELAXED);
    __atomic_add_fetch(&split_signals[1 + version], 1, __ATOMIC_RELAXED);
}

/* One roundtrip of x the way MODE says; -1 for a failure that is not a mixed result. */
static int one(int x, int *version)
{
    if (is("ops"))
        return l_ops()->roundtrip(x, version);
    if (is("thread") || is("thread-split")) {
        struct l_job job = {.x = x};
        pthread_t t;
        int made = is("thread") ? l_spawn(&t, &job) : pthread_create(&t, NULL, split_job, &job);
        if (made != 0 || pthread_join(t, NULL) != 0)
            return -1;
        *version = job.version;
        return job.result;
    }
    if (is("produce")) {
        int r = produce(x);
        *version = l_version();
        return r;
    }
    if (is("vfork-exit"))
        return l_child_roundtrip(x, version, L_VFORK_EXIT);
    if (is("vfork-exec"))
        return l_child_roundtrip(x, version, L_VFORK_EXEC);
    if (is("spawn"))
        return l_child_roundtrip(x, version, L_POSIX_SPAWN);
    if (is("fork") || is("fork-split"))
        return forked(x, version);
    if (is("abandon") || is("abandon-builtin")) {
        /* Once: a frame left behind stays behind for good unless the jump is seen, since
         * every later call comes from deeper in the stack (and sees nothing of it). */
        static __thread int left;
        if (!left++)
            abandon();
        return deeper(x, version);
    }
    /* The controls: the two halves in two library calls. */
    int y = is("ops-split") ? l_ops()->enc(x) : l_encode(x);
    l_between_calls();
    *version = version_of(x, y);
    if (is("ops-split"))
        return l_ops()->dec(y);
    if (is("produce-split"))
        return m_apply(y, l_decode);
    return l_decode(y);
}

static void *run(void *arg)
{
    long mine[COUNTS] = {0};
    int x = (int)(long)arg * 1000 + 1;
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        int version = 0, r = one(x, &version);
        mine[CALLS]++;
        if (r == -1)
            mine[ERRORS]++;
        else if (r != x)
            mine[MIXED]++;
        if (version == 1 || version == 2)
            mine[V1 + version - 1]++;
        x = x % 100000 + 7;
        /* A thread that sleeps now and then is stopped at once by the trigger: on 2 cores, 8
         * threads that never block make every stop wait for the scheduler. */
        if (mine[CALLS] % 4 == 0)
            nap();
    }
    for (int i = 0; i < COUNTS; i++)
        __atomic_add_fetch(&counts[i], mine[i], __ATOMIC_RELAXED);
    return NULL;
}

/* Row 3: the threads loop outside L (sleeping, so that each signal is taken at once rather
 * than when the scheduler gets to the thread); the handler L installed runs on them. */
static void *spin(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED))
        nap();
    return NULL;
}

static pthread_t threads[8];

static void *send(void *arg)
{
    (void)arg;
    struct timespec pause = {0, 250000}; /* some 20000 signals a second */
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        for (int i = 0; i < 8; i++)
            pthread_kill(threads[i], SIGUSR1);
        nanosleep(&pause, NULL);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    mode = argv[1];
    int signals = is("signal") || is("signal-split");
    if (signals) {
        /* Only the spinning threads take the signal. */
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGUSR1);
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        struct sigaction sa = {.sa_handler = split_handler, .sa_flags = SA_RESTART};
        sigemptyset(&sa.sa_mask);
        if (is("signal") ? l_install_handler(SIGUSR1) != 0 : sigaction(SIGUSR1, &sa, NULL) != 0)
            return 3;
    }
    for (long i = 0; i < 8; i++) {
        if (signals) {
            sigset_t none;
            sigemptyset(&none);
            pthread_sigmask(SIG_SETMASK, &none, NULL);
        }
        pthread_create(&threads[i], NULL, signals ? spin : run, (void *)i);
        if (signals) {
            sigset_t set;
            sigemptyset(&set);
            sigaddset(&set, SIGUSR1);
            pthread_sigmask(SIG_BLOCK, &set, NULL);
        }
    }
    pthread_t sender;
    if (signals)
        pthread_create(&sender, NULL, send, NULL);
    printf("ready\n");
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0)
        ;
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    if (signals)
        pthread_join(sender, NULL);
    for (int i = 0; i < 8; i++)
        pthread_join(threads[i], NULL);
    if (signals) {
        long sig[4];
        if (is("signal"))
            l_signal_counts(sig);
        else
            memcpy(sig, split_signals, sizeof sig);
        counts[CALLS] = sig[0];
        counts[MIXED] = sig[1];
        counts[V1] = sig[2];
        counts[V2] = sig[3];
    }
    printf("calls %ld mixed %ld v1 %ld v2 %ld errors %ld\n", counts[CALLS], counts[MIXED],
           counts[V1], counts[V2], counts[ERRORS]);
    return 0;
}
