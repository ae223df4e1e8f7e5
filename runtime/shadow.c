/*
 * Keeping the shadow stack true when frames are left without returning.
 *
 * longjmp, a C++ exception or thread cancellation can unwind through a tracked call: the
 * function never returns into ulp_return and its shadow frame stays. A stale frame would keep
 * the thread's depth for that library above zero forever, so the thread would never pick up a
 * new universe. Two places notice: a new tracked entry whose return slot is not below the top
 * frame's (ulp_prune), and a return whose frame is not the top one (ulp_discard_above).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdbool.h>

#include "ulp.h"

static void pop(struct ulp_thread *t)
{
    t->top--;
    t->top->lib->depth--;
}

/*
 * Frames are compared by stack address, which is only meaningful on one stack: a signal
 * handler running on an alternate stack above the thread's stack must not prune the frames
 * of the code it interrupted. So: on the alternate stack, only frames on it are candidates;
 * off it, every frame still on it is gone (the handler was left by longjmp or returned).
 */
__attribute__((visibility("hidden"))) void ulp_prune(struct ulp_thread *t, uintptr_t unused,
                                                     uintptr_t sp)
{
    (void)unused;
    stack_t alt;
    bool have_alt = sigaltstack(NULL, &alt) == 0 && !(alt.ss_flags & SS_DISABLE);
    bool on_alt = have_alt && (alt.ss_flags & SS_ONSTACK);
    uintptr_t lo = have_alt ? (uintptr_t)alt.ss_sp : 0;
    uintptr_t hi = have_alt ? lo + alt.ss_size : 0;

    /* At the same return slot a frame is live only if this is a tail call from it: then the
     * caller's %rbx (saved at sp by ulp_track) still points at that frame. */
    uintptr_t caller_rbx = *(const uintptr_t *)sp;
    while (t->top > t->base) {
        struct ulp_frame *f = t->top - 1;
        bool f_on_alt = have_alt && f->sp >= lo && f->sp < hi;
        bool below = f->sp < sp || (f->sp == sp && caller_rbx != (uintptr_t)f);
        bool gone;
        if (on_alt)
            gone = f_on_alt && below;
        else
            gone = f_on_alt || below;
        if (!gone)
            break;
        pop(t);
    }
}

__attribute__((visibility("hidden"))) void ulp_discard_above(struct ulp_thread *t,
                                                             struct ulp_frame *frame)
{
    while (t->top > frame + 1)
        pop(t);
    if (t->top <= frame) {
        /* Our own frame was pruned although it was live: take it back (its contents are still
         * there, nothing reuses a slot between the prune and this return). */
        t->top = frame + 1;
        frame->lib->depth++;
    }
}
