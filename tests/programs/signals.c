/*
 * A thread calling into libtracking.so in a loop while timers deliver signals to it at 20 kHz,
 * its handlers calling into the library too, on an alternate signal stack:
 *     signals PLACEMENT VARIANT SECONDS
 * PLACEMENT  above: the alternate stack is mapped before pthread_create, above the thread's
 *                   stack (a handler's frames lie above the frames it interrupts);
 *            below: it is malloc'ed (from the heap), below the thread's stack.
 * VARIANT    plain: one signal;
 *            nested: handlers that stay a while, for two signals that interrupt each other,
 *                    one of them (less often) also itself (SA_NODEFER);
 *            jump: every third handler leaves by siglongjmp back into the thread's loop,
 *                  half of them from inside a tracked call (its callback jumps), abandoning
 *                  whatever the thread was doing, tracked entries and returns included;
 *            step: no timers: the thread runs its tracked calls with the trap flag set, so a
 *                  SIGTRAP lands after every single instruction of them, and the handler makes
 *                  a tracked call after about half of them (pseudo-random, so that two
 *                  handlers in a row at any two instructions are tried, and a retry is not
 *                  met by the same pattern again). The thread's calls never take the
 *                  runtime's slow paths (which block signals: tracing stops there).
 * Prints "tid TID: PLACEMENT VARIANT: N calls, M handler calls, D deep (handlers nested at
 * most), J jumps, W wrong", then "ready", and waits on
 * stdin with the thread alive (for reading the runtime's state), then exits 0.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "tracking.h"

/* Under malloc's mmap threshold: a malloc'ed one comes from the heap, below every stack. */
#define ALT_SIZE (64 * 1024)

static stack_t alt;
static int nested_variant, jump_variant, step_variant;
static volatile sig_atomic_t stop, jump_armed;
static volatile long handler_calls, wrong, nesting, deepest, jumps;
static volatile pid_t worker_tid;
static sigjmp_buf back_to_loop;

static long twice(long x)
{
    return 2 * x;
}

/* A reference copy of tracking_spin, to check its results. */
static long spin_expected(long n)
{
    long acc = 0;
    for (long i = 0; i < n; i++)
        acc += i ^ (acc >> 3);
    return acc;
}

static long inner(long x)
{
    return tracking_call(twice, x) + tracking_tail(x);
}

static long jump_out(long x)
{
    (void)x;
    siglongjmp(back_to_loop, 1);
}

static void on_signal(int sig)
{
    long x = sig + handler_calls % 8;
    handler_calls++;
    if (++nesting > deepest)
        deepest = nesting;
    if (tracking_call(twice, x) != 2 * x + 1)
        wrong++;
    if (nested_variant && tracking_spin(2000) != spin_expected(2000))
        wrong++;
    if (jump_armed && handler_calls % 3 == 0) {
        nesting = 0;
        if (handler_calls % 2)
            tracking_call(jump_out, x);
        siglongjmp(back_to_loop, 1);
    }
    nesting--;
}

static void on_trap(int sig, siginfo_t *info, void *context)
{
    static unsigned long state = 88172645463325252UL;
    ucontext_t *interrupted = context;
    Dl_info where;
    (void)sig, (void)info;
    handler_calls++;
    /* Into the C library (a slow path of the runtime, which blocks signals): stop tracing, so
     * that the runtime can report what it found rather than die of a blocked trap. */
    if (dladdr((void *)interrupted->uc_mcontext.gregs[REG_RIP], &where) &&
        strstr(where.dli_fname, "libc.so"))
        interrupted->uc_mcontext.gregs[REG_EFL] &= ~0x100L;
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    if (state & 1 && tracking_call(twice, 3) != 7)
        wrong++;
}

/* The trap flag: set, a SIGTRAP follows every instruction (the kernel clears it in handlers). */
static inline void trace(int on)
{
    if (on)
        __asm__ volatile("pushfq; orq $0x100, (%%rsp); popfq" ::: "memory", "cc");
    else
        __asm__ volatile("pushfq; andq $~0x100, (%%rsp); popfq" ::: "memory", "cc");
}

static void *worker(void *arg)
{
    int above = *(int *)arg;
    char here;
    uintptr_t lo = (uintptr_t)alt.ss_sp, hi = lo + alt.ss_size, sp = (uintptr_t)&here;
    if (above ? lo < sp : sp < hi) {
        printf("the alternate stack is not %s the thread's\n", above ? "above" : "below");
        exit(2);
    }
    if (sigaltstack(&alt, NULL) != 0)
        exit(2);
    worker_tid = gettid();
    static volatile long calls;
    if (sigsetjmp(back_to_loop, 1))
        jumps++;
    jump_armed = jump_variant;
    while (!stop) {
        long x = calls % 50;
        trace(step_variant);
        long first = tracking_call(twice, x), second = tracking_call(inner, x);
        trace(0);
        if (first != 2 * x + 1)
            wrong++;
        if (second != 2 * x + 1 + spin_expected(x + 1) + 1)
            wrong++;
        calls++;
    }
    jump_armed = 0;
    /* One tracked call after the last signal: the thread's next entry. */
    if (tracking_call(twice, 1) != 3)
        wrong++;
    printf("tid %d: %s %s: %ld calls, %ld handler calls, %ld deep, %ld jumps, %ld wrong\n",
           (int)worker_tid, above ? "above" : "below",
           nested_variant ? "nested" : jump_variant ? "jump" : step_variant ? "step" : "plain",
           (long)calls,
           (long)handler_calls, (long)deepest, (long)jumps, (long)wrong);
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin))
        return NULL;
    return NULL;
}

static timer_t start_timer(int sig, long interval_ns)
{
    struct sigevent ev = {.sigev_notify = SIGEV_THREAD_ID, .sigev_signo = sig};
    ev._sigev_un._tid = worker_tid;
    timer_t timer;
    if (timer_create(CLOCK_MONOTONIC, &ev, &timer) != 0) {
        perror("timer_create");
        exit(2);
    }
    struct itimerspec every = {{0, interval_ns}, {0, interval_ns}};
    timer_settime(timer, 0, &every, NULL);
    return timer;
}

int main(int argc, char **argv)
{
    if (argc != 4)
        return 2;
    int above = !strcmp(argv[1], "above");
    nested_variant = !strcmp(argv[2], "nested");
    jump_variant = !strcmp(argv[2], "jump");
    step_variant = !strcmp(argv[2], "step");
    setvbuf(stdout, NULL, _IOLBF, 0);

    /* Mapped before the thread's stack is: mmap hands out addresses downwards. */
    alt.ss_sp = above ? mmap(NULL, ALT_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                             -1, 0)
                      : malloc(ALT_SIZE);
    alt.ss_size = ALT_SIZE;
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_ONSTACK | SA_RESTART};
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_flags |= SA_NODEFER;
    sigaction(SIGUSR2, &sa, NULL);
    sa.sa_sigaction = on_trap;
    sa.sa_flags = SA_ONSTACK | SA_SIGINFO;
    sigaction(SIGTRAP, &sa, NULL);

    pthread_t t;
    pthread_create(&t, NULL, worker, &above);
    while (!worker_tid)
        sched_yield();
    if (step_variant) {
        sleep((unsigned)atoi(argv[3]));
    } else {
        timer_t first = start_timer(SIGUSR1, 50 * 1000);
        /* Rarer: a handler nests in itself only when another one of its signals comes first. */
        timer_t second = nested_variant ? start_timer(SIGUSR2, 170 * 1000) : first;
        sleep((unsigned)atoi(argv[3]));
        timer_delete(first);
        if (nested_variant)
            timer_delete(second);
    }
    stop = 1;
    pthread_join(t, NULL);
    return 0;
}
