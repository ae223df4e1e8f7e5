/*
 * Per-thread state: the shadow stack of tracked entries and, per prepared library, a depth and
 * a universe. Created on a thread's first tracked call (which may happen inside a signal
 * handler, so only mmap, no malloc), listed in a registry the trigger reads from outside, and
 * recycled when the thread exits.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ulp.h"

_Atomic(struct ulp_thread *) ulp_threads;
__thread struct ulp_thread *ulp_self __attribute__((tls_model("initial-exec")));

static pthread_key_t exit_key;

/* The state of every thread whose key destructor ran (thread_exit). The C library still calls
 * in after it (free, through its own PLT, when it releases the thread's buffers; other keys'
 * destructors), and those calls must neither touch the state released nor start a new one,
 * which nothing would free. This one has no room on its shadow stack, so ulp_track runs every
 * call made through it untracked; its guard frame keeps them on the fast path up to that
 * check, so it is only ever read, by any number of exiting threads. Set up by the constructor,
 * before the key exists. */
static struct ulp_frame exited_guard;
static struct ulp_thread exited;

/* The initial %rsp of the process (ld.so's, exported at GLIBC_2.2.5): above every frame of the
 * main thread's stack. */
extern void *__libc_stack_end;

/* An address above every frame of the calling thread's own stack, for telling its frames from a
 * signal handler's on an alternate stack placed above it (shadow.c). Async-signal-safe, unlike
 * pthread_getattr_np, because a thread's first tracked call may be in a handler: glibc (and
 * musl) place a thread's descriptor, pthread_self(), at the top of the stack they give it;
 * the main thread's descriptor lies elsewhere. (A process forked by another thread takes that
 * thread's state along; only a first call after such a fork gets the main thread's top, too
 * high.) UINTPTR_MAX: unknown, every address counts as the thread's own stack. */
static uintptr_t own_stack_top(void)
{
    if (gettid() != getpid())
        return (uintptr_t)pthread_self();
    uintptr_t sp = (uintptr_t)__builtin_frame_address(0);
    return sp < (uintptr_t)__libc_stack_end ? (uintptr_t)__libc_stack_end : UINTPTR_MAX;
}

static struct ulp_thread *claim_free(pid_t tid)
{
    for (struct ulp_thread *t = atomic_load(&ulp_threads); t; t = t->next) {
        int32_t free_tid = 0;
        if (atomic_compare_exchange_strong(&t->tid, &free_tid, tid))
            return t;
    }
    return NULL;
}

static struct ulp_thread *create(pid_t tid)
{
    struct ulp_thread *t = mmap(NULL, sizeof *t, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (t == MAP_FAILED)
        return NULL;
    /* Reserved, not committed: pages appear as the shadow stack deepens. */
    struct ulp_frame *shadow = mmap(NULL, (ULP_SHADOW_FRAMES + 1) * sizeof *shadow,
                                    PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (shadow == MAP_FAILED) {
        munmap(t, sizeof *t);
        return NULL;
    }
    t->base = shadow + 1;
    t->end = t->base + ulp_shadow_frames;
    atomic_store(&t->tid, tid);
    struct ulp_thread *head = atomic_load(&ulp_threads);
    do
        t->next = head;
    while (!atomic_compare_exchange_weak(&ulp_threads, &head, t));
    return t;
}

/* Called by track.S (through ulp_preserving_call) on a thread's first tracked call. */
__attribute__((visibility("hidden"))) int ulp_thread_start(void)
{
    sigset_t saved;
    ulp_signals_block(&saved);
    /* A signal handler may have run the first tracked call before signals were blocked. */
    struct ulp_thread *t = ulp_self;
    if (!t) {
        pid_t tid = gettid();
        t = claim_free(tid);
        if (!t)
            t = create(tid);
        if (t) {
            for (unsigned i = 0; i < ULP_MAX_LIBRARIES; i++) {
                t->libs[i].depth = 0;
                t->libs[i].universe = 0;
            }
            t->stack_top = own_stack_top();
            /* A guard frame below the first one, for the entry check on top[-1]: above every
             * frame of the thread's own stack and below its top, so that an entry there never
             * leaves the fast path for it (ulp_track). It has no library: never pruned. */
            t->base[-1].sp = t->stack_top - 1;
            t->top = t->base;
            ulp_self = t;
            pthread_setspecific(exit_key, t);
        }
    }
    ulp_signals_restore(&saved);
    return t != NULL;
}

/* Key destructors run after the thread's last call returned or was unwound (pthread_exit,
 * cancellation): whatever its shadow stack still holds is dead. Free the entry for the next
 * thread; calls made after this one run untracked (`exited`). */
static void thread_exit(void *arg)
{
    struct ulp_thread *t = arg;
    sigset_t saved;
    ulp_signals_block(&saved);
    ulp_self = &exited;
    t->top = t->base;
    for (unsigned i = 0; i < ULP_MAX_LIBRARIES; i++)
        t->libs[i].depth = 0;
    atomic_store(&t->tid, 0);
    ulp_signals_restore(&saved);
}

/* In a fork child only the forking thread exists: free everybody else's state. */
static void after_fork_in_child(void)
{
    for (struct ulp_thread *t = atomic_load(&ulp_threads); t; t = t->next) {
        if (t == ulp_self)
            atomic_store(&t->tid, gettid());
        else
            atomic_store(&t->tid, 0);
    }
}

void ulp_threads_init(void)
{
    exited_guard.sp = UINTPTR_MAX - 1;
    exited.stack_top = UINTPTR_MAX;
    exited.base = exited.top = exited.end = &exited_guard + 1;
    pthread_key_create(&exit_key, thread_exit);
    pthread_atfork(NULL, NULL, after_fork_in_child);
}
