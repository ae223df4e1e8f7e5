/*
 * Exercises entry tracking. Without arguments it prints deterministic results (compared with
 * and without the runtime); with a mode it runs one scenario:
 *   threads           8 threads call into the library in parallel
 *   longjmp N         leave a tracked call N times with longjmp, then wait on stdin
 *   cancel            cancel threads blocked in read(), nanosleep() and pause() in the library
 *   backtrace         backtrace() from inside a tracked call
 *   altstack N        a signal handler on an alternate stack calls into the library while the
 *                     interrupted thread is inside it, N times
 *   autodisarm        like altstack, once, with SS_AUTODISARM and the alternate stack in
 *                     main's frame (above the frames it interrupts), then wait
 *   deepjump N        recurse N tracked calls deep, longjmp out from the bottom, then wait
 *   fork              a child process calls into the library
 *   wait              call in, then wait on stdin (for reading the runtime's state)
 *   inside            wait on stdin inside a tracked call (from its callback)
 *   tail N            N calls that tail-call another tracked function, then wait
 *   deep N            recursion N tracked calls deep (callbacks calling back in); waits on
 *                     stdin at the bottom, exits 1 unless the result comes back right
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sample_api.h"
#include "tracking.h"

#ifndef SS_AUTODISARM
#define SS_AUTODISARM (1U << 31) /* linux/signal.h; glibc 2.36 does not export it */
#endif

static void (*empty)(void);
static long (*call)(tracking_callback, long);
static long (*spin)(long);
static long (*tail)(long);
static long (*block_read)(int);
static long (*block_sleep)(long);
static long (*block_pause)(void);
static int (*do_backtrace)(void);

static long twice(long x)
{
    return 2 * x;
}

static void wait_for_stdin(void);

static long descend(long depth)
{
    if (depth == 0) {
        wait_for_stdin();
        return 0;
    }
    return call(descend, depth - 1);
}

static long nested(long x)
{
    return call(twice, x) + spin(100);
}

static void *spinner(void *arg)
{
    long total = 0;
    for (int i = 0; i < 20000; i++)
        total += call(nested, i % 7) + spin(10);
    *(long *)arg = total;
    return NULL;
}

static int threads(void)
{
    pthread_t t[8];
    long results[8];
    for (int i = 0; i < 8; i++)
        pthread_create(&t[i], NULL, spinner, &results[i]);
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    for (int i = 1; i < 8; i++)
        if (results[i] != results[0])
            return printf("threads disagree: %ld != %ld\n", results[i], results[0]), 1;
    printf("8 threads agree: %ld\n", results[0]);
    return 0;
}

static jmp_buf escape;

static long jump_out(long x)
{
    longjmp(escape, (int)x);
}

static void wait_for_stdin(void)
{
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin))
        exit(0);
}

static long wait_inside(long x)
{
    wait_for_stdin();
    return x;
}

static int jumps(long n)
{
    long landed = 0;
    for (long i = 0; i < n; i++) {
        if (setjmp(escape) == 0)
            call(jump_out, 1);
        else
            landed++;
    }
    printf("landed %ld of %ld\n", landed, n);
    call(twice, 1); /* one normal call after all that */
    wait_for_stdin();
    return 0;
}

static void *blocked(void *arg)
{
    int mode = *(int *)arg;
    int fds[2];
    if (pipe(fds) != 0)
        return NULL;
    if (mode == 0)
        block_read(fds[0]);
    else if (mode == 1)
        block_sleep(60);
    else
        block_pause();
    return NULL;
}

static int cancel(long n)
{
    static const char *names[] = {"read", "nanosleep", "pause"};
    for (int mode = 0; mode < 3; mode++) {
        pthread_t t;
        pthread_create(&t, NULL, blocked, &mode);
        struct timespec pause_a_bit = {0, 100 * 1000 * 1000};
        nanosleep(&pause_a_bit, NULL);
        pthread_cancel(t);
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += 1;
        void *result;
        int rc = pthread_timedjoin_np(t, &result, &deadline);
        printf("cancel in %s: %s\n", names[mode],
               rc == 0 && result == PTHREAD_CANCELED ? "joined" : strerror(rc));
    }
    if (n) {
        call(twice, 1);
        wait_for_stdin();
    }
    return 0;
}

static volatile sig_atomic_t handled;

static void on_signal(int sig)
{
    (void)sig;
    handled += call(twice, 1) == 3;
}

static long signal_self(long x)
{
    raise(SIGUSR1);
    return x;
}

static int altstack(long n)
{
    stack_t ss = {.ss_sp = malloc(1 << 16), .ss_size = 1 << 16};
    sigaltstack(&ss, NULL);
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_ONSTACK};
    sigaction(SIGUSR1, &sa, NULL);
    long ok = 0;
    for (long i = 0; i < n; i++)
        ok += call(signal_self, 1) == 2;
    printf("altstack: %ld returns, %d handler calls\n", ok, (int)handled);
    wait_for_stdin();
    return 0;
}

static int autodisarm(void)
{
    char stack[1 << 16]; /* in main's frame: above the frames the handler interrupts */
    stack_t ss = {.ss_sp = stack, .ss_size = sizeof stack, .ss_flags = SS_AUTODISARM};
    sigaltstack(&ss, NULL);
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_ONSTACK};
    sigaction(SIGUSR1, &sa, NULL);
    long got = call(signal_self, 1);
    printf("autodisarm: returned %ld, %d handler calls\n", got, (int)handled);
    call(twice, 1);
    wait_for_stdin();
    return 0;
}

static long descend_and_jump(long depth)
{
    if (depth == 0)
        longjmp(escape, 1);
    return call(descend_and_jump, depth - 1);
}

static int deepjump(long n)
{
    if (setjmp(escape) == 0)
        call(descend_and_jump, n);
    printf("jumped out of %ld\n", n);
    call(twice, 1);
    wait_for_stdin();
    return 0;
}

static int forked(void)
{
    pid_t child = fork();
    if (child == 0) {
        printf("child: %ld\n", call(nested, 5));
        fflush(stdout);
        _exit(0);
    }
    int status;
    waitpid(child, &status, 0);
    printf("parent: %ld, child exited %d\n", call(nested, 5), WEXITSTATUS(status));
    return 0;
}

int main(int argc, char **argv)
{
    SAMPLE_OPEN(argc, argv);
    empty = SAMPLE_GET(tracking_empty);
    call = SAMPLE_GET(tracking_call);
    spin = SAMPLE_GET(tracking_spin);
    tail = SAMPLE_GET(tracking_tail);
    block_read = SAMPLE_GET(tracking_block_read);
    block_sleep = SAMPLE_GET(tracking_block_sleep);
    block_pause = SAMPLE_GET(tracking_block_pause);
    do_backtrace = SAMPLE_GET(tracking_backtrace);
    setvbuf(stdout, NULL, _IOLBF, 0);

    const char *mode = argc > SAMPLE_FIRST_ARG ? argv[SAMPLE_FIRST_ARG] : "";
    long n = argc > SAMPLE_FIRST_ARG + 1 ? atol(argv[SAMPLE_FIRST_ARG + 1]) : 0;
    if (!strcmp(mode, "threads"))
        return threads();
    if (!strcmp(mode, "longjmp"))
        return jumps(n);
    if (!strcmp(mode, "cancel"))
        return cancel(n);
    if (!strcmp(mode, "backtrace"))
        return do_backtrace() > 0 ? 0 : 1;
    if (!strcmp(mode, "altstack"))
        return altstack(n);
    if (!strcmp(mode, "fork"))
        return forked();
    if (!strcmp(mode, "autodisarm"))
        return autodisarm();
    if (!strcmp(mode, "deepjump"))
        return deepjump(n);
    if (!strcmp(mode, "deep"))
        return call(descend, n) == n + 1 ? 0 : 1;
    if (!strcmp(mode, "tail")) {
        long mismatches = 0;
        for (long i = 0; i < n; i++)
            mismatches += tail(i % 50) != spin(i % 50 + 1);
        printf("tail calls: %ld mismatches\n", mismatches);
        wait_for_stdin();
        return 0;
    }
    if (!strcmp(mode, "inside"))
        return call(wait_inside, 0) == 1 ? 0 : 1;
    if (!strcmp(mode, "wait")) {
        threads();
        printf("nested(3) = %ld\n", call(nested, 3));
        wait_for_stdin();
        return 0;
    }
    empty();
    printf("call(twice, 21) = %ld\n", call(twice, 21));
    printf("call(nested, 4) = %ld\n", call(nested, 4));
    printf("spin(1000) = %ld\n", spin(1000));
    printf("tail(999) = %ld\n", tail(999));
    return threads();
}
