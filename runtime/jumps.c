/*
 * The non-local jumps of the C library, seen by the runtime first: longjmp, _longjmp,
 * siglongjmp, __longjmp_chk (what longjmp becomes under _FORTIFY_SOURCE) and setcontext.
 * Preloaded, these definitions come before the C library's for every caller outside it. Each
 * drops the shadow frames of the tracked calls the jump leaves (shadow.c, ulp_leave_to), then
 * jumps with the C library's own, so that a thread that jumped out of a library call, at any
 * depth, is outside that library at once: its next call runs the newest versions, and it
 * holds no transition open.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <setjmp.h>
#include <stdint.h>
#include <ucontext.h>

#include "ulp.h"

/* glibc keeps the stack pointer of a jmp_buf mangled (PTR_MANGLE): xored with the thread's
 * pointer guard, in its thread control block at %fs:0x30, then rotated left by 17 bits. */
#define JB_RSP 6
#define POINTER_GUARD "%%fs:0x30"

static uintptr_t jump_target(const struct __jmp_buf_tag *env)
{
    uintptr_t guard, sp = (uintptr_t)env->__jmpbuf[JB_RSP];
    __asm__("movq " POINTER_GUARD ", %0" : "=r"(guard));
    sp = (sp >> 17) | (sp << 47);
    return sp ^ guard;
}

typedef void (*jump_fn)(struct __jmp_buf_tag *, int);
typedef int (*setcontext_fn)(const ucontext_t *);

static jump_fn next_longjmp, next__longjmp, next_siglongjmp, next_longjmp_chk;
static setcontext_fn next_setcontext;

/* Resolved by the constructor; a jump made before it ran (another library's constructor)
 * looks its own up. */
static void *next(void *_Atomic *cache, const char *name)
{
    void *f = atomic_load(cache);
    if (!f) {
        f = dlsym(RTLD_NEXT, name);
        atomic_store(cache, f);
    }
    return f;
}

#define NEXT(cache, name) next((void *_Atomic *)&(cache), name)

__attribute__((constructor)) static void resolve(void)
{
    NEXT(next_longjmp, "longjmp");
    NEXT(next__longjmp, "_longjmp");
    NEXT(next_siglongjmp, "siglongjmp");
    NEXT(next_longjmp_chk, "__longjmp_chk");
    NEXT(next_setcontext, "setcontext");
}

ULP_EXPORT void longjmp(struct __jmp_buf_tag env[1], int value)
{
    ulp_leave_to(jump_target(env));
    ((jump_fn)NEXT(next_longjmp, "longjmp"))(env, value);
    __builtin_unreachable();
}

ULP_EXPORT void _longjmp(struct __jmp_buf_tag env[1], int value)
{
    ulp_leave_to(jump_target(env));
    ((jump_fn)NEXT(next__longjmp, "_longjmp"))(env, value);
    __builtin_unreachable();
}

ULP_EXPORT void siglongjmp(struct __jmp_buf_tag env[1], int value)
{
    ulp_leave_to(jump_target(env));
    ((jump_fn)NEXT(next_siglongjmp, "siglongjmp"))(env, value);
    __builtin_unreachable();
}

void __longjmp_chk(struct __jmp_buf_tag env[1], int value);
ULP_EXPORT void __longjmp_chk(struct __jmp_buf_tag env[1], int value)
{
    ulp_leave_to(jump_target(env));
    ((jump_fn)NEXT(next_longjmp_chk, "__longjmp_chk"))(env, value);
    __builtin_unreachable();
}

/* A context saved by getcontext (or a signal handler's) on this thread's stack is left like a
 * longjmp target. Switching to another stack (coroutines) inside tracked calls is not
 * supported (docs/runtime.md): their frames would be taken for left ones. */
ULP_EXPORT int setcontext(const ucontext_t *context)
{
    ulp_leave_to((uintptr_t)context->uc_mcontext.gregs[REG_RSP]);
    return ((setcontext_fn)NEXT(next_setcontext, "setcontext"))(context);
}
