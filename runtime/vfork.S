/*
 * vfork, seen by the runtime first (preloaded, it comes before the C library's for callers
 * outside it).
 *
 * The child of vfork runs on the parent's stack, in the parent's memory, with the parent's
 * thread pointer, so with the parent's shadow stack, until it calls execve or _exit. A child
 * that calls _exit inside a tracked call leaves that frame on the parent's shadow stack, where
 * it would hold the library until the parent returned from its own call. Back in the parent,
 * ulp_vfork_returned (shadow.c) drops what the child left above the parent's top.
 *
 * Like any vfork, it cannot keep its return address on the stack across the system call (the
 * child may overwrite it there): it keeps it in %rdi, as it keeps the thread state and the
 * shadow stack's top in %rsi and %rdx, which the system call preserves. The child pushes the
 * same return address back into the same slot before returning, so the parent's is intact.
 */
#include "ulp.h"

#define SYS_vfork 58

        .hidden ulp_self
        .hidden ulp_vfork_returned

        .text
        .globl  vfork
        .type   vfork, @function
        .p2align 4
vfork:
        .cfi_startproc
        endbr64
        popq    %rdi
        .cfi_adjust_cfa_offset -8
        .cfi_register %rip, %rdi
        movq    ulp_self@gottpoff(%rip), %rsi
        movq    %fs:(%rsi), %rsi
        xorl    %edx, %edx
        testq   %rsi, %rsi
        jz      1f
        movq    ULP_THREAD_TOP(%rsi), %rdx
1:      movl    $SYS_vfork, %eax
        syscall
        pushq   %rdi
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %rip, 0
        cmpq    $-4095, %rax
        jae     .Lerror
        testl   %eax, %eax
        jz      .Lchild
        /* The parent, once the child has called execve or _exit. */
        pushq   %rax                            /* the child's pid; aligns the call */
        .cfi_adjust_cfa_offset 8
        movq    %rsi, %rdi
        movq    %rdx, %rsi
        call    ulp_vfork_returned
        popq    %rax
        .cfi_adjust_cfa_offset -8
.Lchild:
        ret
.Lerror:
        negl    %eax
        pushq   %rax
        .cfi_adjust_cfa_offset 8
        call    __errno_location@PLT
        popq    %rcx
        .cfi_adjust_cfa_offset -8
        movl    %ecx, (%rax)
        movq    $-1, %rax
        ret
        .cfi_endproc
        .size   vfork, .-vfork

        .section .note.GNU-stack, "", @progbits
