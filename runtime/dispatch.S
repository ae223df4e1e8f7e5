/*
 * The dispatcher behind every universe checker (docs/design.md, "The universe checker and
 * the dispatcher").
 *
 * A patched function's entry nop is a short jump into its pad, which does
 *     mov  $index, %r11d             (its record in ulp_functions)
 *     jmp  *dispatch_slot(%rip)      (the library's descriptor slot, holding ulp_dispatch)
 * so we arrive exactly as the function would have: the caller's return address on top of the
 * stack, every argument register, %rax (the vector count of a variadic call) and the stack
 * arguments untouched; %r11 and %r10 are ours to clobber, as at any function entry. We touch
 * nothing else, not even the stack, so there is no frame to describe to an unwinder.
 *
 * We pick the version of this function the calling thread must run, and jump to it:
 *   - a thread inside the library (depth > 0) runs the newest version whose universe is not
 *     above the one it entered with, so one library call never mixes old and new code;
 *   - anything else (no thread state yet, an untracked library, an untracked entry such as an
 *     internal function pointer) runs the newest version.
 * Lock-free and allocation-free: it may run in a signal handler, or in a thread that the
 * trigger stopped halfway through it while the runtime changed the records (see patch.c for
 * why what it reads is never freed and is always complete before it is published).
 */
#include "ulp.h"

        .hidden ulp_self
        .hidden ulp_functions

        .text
        .globl  ulp_dispatch
        .hidden ulp_dispatch
        .type   ulp_dispatch, @function
        .p2align 4
ulp_dispatch:
        .cfi_startproc
        endbr64
        movq    ulp_functions(%rip), %r10
        movq    (%r10,%r11,8), %r11             /* the function's record */
        movq    ulp_self@gottpoff(%rip), %r10
        movq    %fs:(%r10), %r10
        testq   %r10, %r10
        jz      .Lnewest
        addq    ULP_FUNCTION_LIB(%r11), %r10    /* this thread's record of the library */
        cmpl    $0, ULP_LIB_DEPTH(%r10)
        je      .Lnewest
        movq    ULP_LIB_UNIVERSE(%r10), %r10
        movq    ULP_FUNCTION_LATEST(%r11), %r11
        /* From the newest version down; the original's (universe 0) ends the walk. */
.Lolder:
        cmpq    %r10, (%r11)
        jbe     .Lgo
        subq    $16, %r11
        jmp     .Lolder
.Lnewest:
        movq    ULP_FUNCTION_LATEST(%r11), %r11
.Lgo:
        jmp     *8(%r11)
        .cfi_endproc
        .size   ulp_dispatch, .-ulp_dispatch

        .section .note.GNU-stack, "", @progbits
