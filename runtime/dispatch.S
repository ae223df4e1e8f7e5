/*
 * The dispatcher behind every universe checker (DESIGN section 4).
 *
 * A patched function's entry nop is a short jump into its pad, which does
 *     lea  pad(%rip), %r11
 *     jmp  *dispatch_slot(%rip)      (the library's descriptor slot, holding ulp_dispatch)
 * so we arrive exactly as the function would have: the caller's return address on top of the
 * stack, every argument register, %rax (the vector count of a variadic call) and the stack
 * arguments untouched; %r11 (the pad) and %r10 are ours to clobber, as at any function entry.
 *
 * We pick the version of this function the calling thread must run, and jump to it:
 *   - a thread inside the library (depth > 0) runs the newest version whose universe is not
 *     above the one it entered with, so one library call never mixes old and new code;
 *   - anything else (no thread state yet, an untracked library, an untracked entry such as an
 *     internal function pointer) runs the newest version.
 * Lock-free and allocation-free: it may run in a signal handler, or in a thread that the
 * trigger stopped halfway through it while the runtime changed the tables (see patch.c for why
 * what it reads is never freed and is always complete before it is published).
 */
#include "ulp.h"

        .hidden ulp_self
        .hidden ulp_function_table

        .text
        .globl  ulp_dispatch
        .hidden ulp_dispatch
        .type   ulp_dispatch, @function
        .p2align 4
ulp_dispatch:
        .cfi_startproc
        endbr64
        pushq   %rax
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %rax, 0
        /* The function record: slot (pad >> 4) & mask, then linear probing. %rax is the
         * byte offset of the slot being probed. */
        movq    ulp_function_table(%rip), %r10
        movq    %r11, %rax
        shrq    $4, %rax
.Lprobe:
        andq    ULP_TABLE_MASK(%r10), %rax
        shlq    $4, %rax
        cmpq    %r11, ULP_TABLE_SLOTS(%r10,%rax)
        je      .Lfound
        cmpq    $0, ULP_TABLE_SLOTS(%r10,%rax)
        je      .Lunknown
        shrq    $4, %rax
        incq    %rax
        jmp     .Lprobe

.Lfound:
        movq    ULP_TABLE_SLOTS + 8(%r10,%rax), %r11
        movq    ulp_self@gottpoff(%rip), %r10
        movq    %fs:(%r10), %r10
        testq   %r10, %r10
        jz      .Lnewest
        movq    ULP_FUNCTION_LIB(%r11), %rax
        cmpq    $ULP_THREAD_LIBS, %rax
        jb      .Lnewest
        addq    %rax, %r10                      /* this thread's record of the library */
        cmpl    $0, ULP_LIB_DEPTH(%r10)
        je      .Lnewest
        movq    ULP_LIB_UNIVERSE(%r10), %r10
        movq    ULP_FUNCTION_VERSIONS(%r11), %r11
        movl    ULP_VERSIONS_COUNT(%r11), %eax
        shlq    $4, %rax
        /* From the newest down; entry 0 (the original, universe 0) ends the walk. */
.Lolder:
        subq    $16, %rax
        cmpq    %r10, ULP_VERSIONS_ENTRIES(%r11,%rax)
        ja      .Lolder
        movq    ULP_VERSIONS_ENTRIES + 8(%r11,%rax), %r11
        jmp     .Lgo

.Lnewest:
        movq    ULP_FUNCTION_VERSIONS(%r11), %r11
        movl    ULP_VERSIONS_COUNT(%r11), %eax
        shlq    $4, %rax
        movq    ULP_VERSIONS_ENTRIES - 8(%r11,%rax), %r11
.Lgo:
        popq    %rax
        .cfi_adjust_cfa_offset -8
        .cfi_restore %rax
        jmp     *%r11

.Lunknown:
        /* A checker the runtime has no record of (it cannot happen unless the tables were
         * lost): run the original code, right after the entry nop, past an endbr64 if any. */
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %rax, 0
        popq    %rax
        .cfi_adjust_cfa_offset -8
        .cfi_restore %rax
        addq    $16, %r11
        cmpl    $0xfa1e0ff3, -2(%r11)
        jne     1f
        addq    $4, %r11
1:      jmp     *%r11
        .cfi_endproc
        .size   ulp_dispatch, .-ulp_dispatch

        .section .note.GNU-stack, "", @progbits
