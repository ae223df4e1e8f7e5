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
#include <stdbool.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <unistd.h>

#include "ulp.h"

static void pop(struct ulp_thread *t)
{
    t->top--;
    if (t->top->lib)
        t->top->lib->depth--;
}

/* A frame is live while its return slot (16 bytes above its sp) still holds ulp_return, where
 * the call in ulp_track put it. Read through the kernel: an abandoned frame may lie on an
 * alternate signal stack that has since been unmapped. */
static bool returns_into_runtime(const struct ulp_frame *f)
{
    uintptr_t slot = 0;
    struct iovec local = {&slot, sizeof slot};
    struct iovec remote = {(void *)(f->sp + 16), sizeof slot};
    if (process_vm_readv(getpid(), &local, 1, &remote, 1, 0) != sizeof slot)
        return false;
    return slot == (uintptr_t)ulp_return;
}

/*
 * Called when the top frame's return slot is not above the new entry's. Stack addresses alone
 * cannot decide: a signal handler may run on an alternate stack above the frames it
 * interrupted, and an abandoned frame's slot may still hold ulp_return. So a frame is known
 * dead when it lies at or below the new entry and its return slot no longer returns into the
 * runtime; then every younger frame went with it. (At the same slot, a tail call from a frame
 * keeps it: the caller's %rbx, saved at sp by ulp_track, still points at that frame.) Frames
 * still being built or returned from (no library) belong to code this handler interrupted:
 * nothing at or below them is touched.
 */
__attribute__((visibility("hidden"))) void ulp_prune(struct ulp_thread *t, uintptr_t unused,
                                                     uintptr_t sp)
{
    (void)unused;
    sigset_t saved;
    ulp_signals_block(&saved);
    uintptr_t caller_rbx = *(const uintptr_t *)sp;
    struct ulp_frame *oldest_dead = NULL;
    for (struct ulp_frame *f = t->top - 1; f >= t->base && f->lib; f--) {
        bool below = f->sp < sp || (f->sp == sp && caller_rbx != (uintptr_t)f);
        if (below && !returns_into_runtime(f))
            oldest_dead = f;
    }
    while (oldest_dead && t->top > oldest_dead)
        pop(t);
    ulp_signals_restore(&saved);
}

__attribute__((visibility("hidden"))) void ulp_discard_above(struct ulp_thread *t,
                                                             struct ulp_frame *frame)
{
    sigset_t saved;
    ulp_signals_block(&saved);
    if (t->top <= frame) {
        /* A live frame was dropped: its contents may be reused, so returning through it
         * could jump anywhere. Stop here, loudly, rather than that. */
        static const char message[] = "libulp: shadow stack lost a live frame; aborting\n";
        write(2, message, sizeof message - 1);
        abort();
    }
    while (t->top > frame + 1)
        pop(t);
    ulp_signals_restore(&saved);
}
