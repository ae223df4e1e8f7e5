/*
 * Keeping the shadow stack true when frames are left without returning.
 *
 * longjmp, a C++ exception, thread cancellation, setcontext or a vfork child can leave a
 * tracked call that never returns into ulp_return: its shadow frame stays. A stale frame keeps
 * the thread's depth for that library above zero, so the thread would go on running the
 * library's old versions and hold its transitions open. The ways out are seen where they
 * happen: the runtime's own longjmp, siglongjmp, _longjmp, __longjmp_chk and setcontext
 * (jumps.c) and vfork (vfork.S) drop what the jump leaves behind (ulp_leave_to,
 * ulp_vfork_returned), and an unwind that passes a tracked call reaches ulp_track's
 * personality (unwind.c, ulp_unwound). Whatever else leaves frames behind is caught by two
 * checks: a new tracked entry whose return slot is not below the top frame's, or whose top
 * frame lies above the thread's own stack (ulp_prune), and a return whose frame is not the top
 * one (ulp_discard_above). A live frame is never dropped, wherever a signal lands: a handler's
 * entry may run at any instruction of another entry or return.
 */
#define _GNU_SOURCE
#include <stdbool.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <unistd.h>

#include "ulp.h"

/* The library of frames an unwind passed (ulp_unwound): a record nobody reads, so that such a
 * frame holds no library and its pop stores into nothing that matters. */
static struct ulp_thread_lib unwound;

/* Called with signals blocked. The depth is stored back, not decremented (ulp.h). */
static void pop(struct ulp_thread *t)
{
    struct ulp_frame *f = t->top - 1;
    if (f->lib)
        f->lib->depth = (uint32_t)f->depth;
    t->top = f;
}

static void pop_above(struct ulp_thread *t, const struct ulp_frame *keep)
{
    while (t->top > keep)
        pop(t);
}

/* A frame with a library has ulp_return in its return slot (16 bytes above its sp) until it is
 * returned from: ulp_track writes it there before giving the frame its library, and ulp_return
 * takes the library away before anything overwrites it. So a slot that holds something else
 * proves the frame dead. Read through the kernel: an abandoned frame may lie on an alternate
 * signal stack that has since been unmapped. */
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
 * Which stack a frame lies on. Stack addresses order frames only within one stack: a signal
 * handler on an alternate stack placed above the thread's own runs above the frames it
 * interrupted, which are live. So frames are compared by address only with an entry on the
 * same stack, and the stacks are told apart by what the runtime knows: the thread's own stack
 * lies below its stack_top (thread.c), the alternate stack armed now is what sigaltstack(2)
 * reports. Signal handlers nest, so whichever stack an entry runs on, the code running on any
 * other stack is either interrupted by it (on the thread's own stack, below it in time: live)
 * or gone (a handler on another stack, left by siglongjmp while we run on the thread's own).
 */
enum stack { OWN, ALTERNATE, ABOVE };

struct stacks {
    uintptr_t own_top;
    uintptr_t alternate;       /* the armed alternate stack, */
    uintptr_t alternate_size;  /* ...0 if none (or disarmed by SS_AUTODISARM in its handler) */
};

static struct stacks stacks_of(const struct ulp_thread *t)
{
    struct stacks stacks = {t->stack_top, 0, 0};
    stack_t armed;
    if (sigaltstack(NULL, &armed) == 0 && !(armed.ss_flags & SS_DISABLE)) {
        stacks.alternate = (uintptr_t)armed.ss_sp;
        stacks.alternate_size = armed.ss_size;
    }
    return stacks;
}

static enum stack stack_of(const struct stacks *s, uintptr_t sp)
{
    if (sp - s->alternate < s->alternate_size)
        return ALTERNATE;
    return sp < s->own_top ? OWN : ABOVE;
}

/*
 * Called when the top frame's return slot is not above the new entry's, or is above the thread's
 * own stack. Frames are judged from the top down, and the walk stops at the first one that may
 * be live: a stack of frames can only lose its top. A frame is dead
 *   - when it lies on another stack than the entry, and the entry runs on the thread's own stack
 *     (a handler's frame, the handler left);
 *   - when it lies on the entry's stack at or below the entry (at the same slot, a tail call
 *     from a frame keeps it: the caller's %rbx, saved at sp by ulp_track, still points at that
 *     frame). With no alternate stack armed, the entry may yet run in an SS_AUTODISARM handler
 *     whose stack lies inside the thread's own, above the frames it interrupted: there such a
 *     frame is dead only once its return slot no longer returns into the runtime, or once an
 *     older frame below the entry is dead in that way (every younger one went with it).
 * Frames on another stack, for an entry on an alternate stack, belong to code the handler
 * interrupted: nothing at or below them is touched. Neither at or below a frame still being
 * built or returned from (no library) when only its slot could tell: it has none yet. Where
 * addresses decide, such a frame goes too (a handler that interrupted it left by siglongjmp).
 */
__attribute__((visibility("hidden"))) void ulp_prune(struct ulp_thread *t, uintptr_t unused,
                                                     uintptr_t sp)
{
    (void)unused;
    sigset_t saved;
    ulp_signals_block(&saved);
    struct stacks stacks = stacks_of(t);
    enum stack ours = stack_of(&stacks, sp);
    bool addresses_decide = ours == ALTERNATE || (ours == OWN && stacks.alternate_size);
    uintptr_t caller_rbx = *(const uintptr_t *)sp;
    struct ulp_frame *oldest_dead = NULL;
    for (struct ulp_frame *f = t->top - 1; f >= t->base; f--) {
        if (f->lib == &unwound) {
            oldest_dead = f;
            continue;
        }
        if (stack_of(&stacks, f->sp) != ours) {
            if (ours != OWN)
                break;
            oldest_dead = f;
            continue;
        }
        bool below = f->sp < sp || (f->sp == sp && caller_rbx != (uintptr_t)f);
        if (!below)
            break;
        if (addresses_decide)
            oldest_dead = f;
        else if (!f->lib)
            break;
        else if (!returns_into_runtime(f))
            oldest_dead = f;
    }
    if (oldest_dead)
        pop_above(t, oldest_dead);
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
    pop_above(t, frame + 1);
    ulp_signals_restore(&saved);
}

/*
 * The thread is about to jump (longjmp, setcontext) to code whose stack pointer will be
 * `target`: every frame of a call that the jump leaves goes now. On the target's stack those
 * are the frames whose return slot lies below the target (the function that called setjmp
 * was called through a slot above it; the calls it made since, through slots below). Frames on
 * another stack are a signal handler's, left by the jump, when the target is on the thread's
 * own stack; for a target elsewhere (a handler jumping within its alternate stack) they are the
 * code the handler interrupted, and they and everything older stay.
 */
__attribute__((visibility("hidden"))) void ulp_leave_to(uintptr_t target)
{
    struct ulp_thread *t = ulp_self;
    if (!t || t->top == t->base)
        return;
    sigset_t saved;
    ulp_signals_block(&saved);
    struct stacks stacks = stacks_of(t);
    enum stack theirs = stack_of(&stacks, target);
    struct ulp_frame *oldest_dead = NULL;
    for (struct ulp_frame *f = t->top - 1; f >= t->base; f--) {
        if (f->lib != &unwound) {
            if (stack_of(&stacks, f->sp) != theirs) {
                if (theirs != OWN)
                    break;
            } else if (f->sp + 16 >= target) {
                break;
            }
        }
        oldest_dead = f;
    }
    if (oldest_dead)
        pop_above(t, oldest_dead);
    ulp_signals_restore(&saved);
}

/*
 * An unwind (an exception, pthread_cancel, pthread_exit) passes the tracked call whose frame is
 * `frame`: it will never return. Frames above it were calls made inside it, which the unwind
 * passed before. The frame itself stays until a later prune or return drops it, because the
 * unwinder reads the caller's return address and %rbx out of it after we return; it holds no
 * library from now on (nor do the tail calls' frames under it, which return with it).
 */
__attribute__((visibility("hidden"))) void ulp_unwound(struct ulp_frame *frame)
{
    struct ulp_thread *t = ulp_self;
    if (!t || frame < t->base || frame >= t->top)
        return;
    sigset_t saved;
    ulp_signals_block(&saved);
    pop_above(t, frame + 1);
    for (struct ulp_frame *f = frame;; f--) {
        if (f->lib)
            f->lib->depth = (uint32_t)f->depth;
        f->lib = &unwound;
        if (f == t->base || f[-1].sp != frame->sp || f[-1].ret != 0)
            break;
    }
    ulp_signals_restore(&saved);
}

/*
 * A vfork child shares the parent's memory, thread state included, until it calls execve or
 * _exit: tracked calls it made and did not return from (it called _exit inside one) left frames
 * above the parent's. Back in the parent, drop them; if the child made the thread's first
 * tracked call, the state it created is the parent's from now on.
 */
__attribute__((visibility("hidden"))) void ulp_vfork_returned(struct ulp_thread *before,
                                                              struct ulp_frame *top)
{
    struct ulp_thread *t = ulp_self;
    if (!t)
        return;
    sigset_t saved;
    ulp_signals_block(&saved);
    if (t != before) {
        atomic_store(&t->tid, gettid());
        top = t->base;
    }
    pop_above(t, top);
    ulp_signals_restore(&saved);
}
