/*
 * Entry tracking: the routine every tracked call of a prepared library goes through.
 *
 * A prepared library's ulp_entry jumps here with
 *     (%rsp)   the function's real entry       (pushed by its trampoline)
 *     8(%rsp)  the caller's return address R   (at address A)
 *     %r11     the library's descriptor
 * and every argument register, %rax (%al counts vector registers of variadic calls), the stack
 * arguments above A and the caller's red zone still untouched. %r10 and %r11 are the only
 * registers the ABI lets us clobber here.
 *
 * The routine pushes a shadow frame (R, the caller's %rbx, the library), points %rbx at it and
 * calls the real entry, so the function returns into ulp_return right after that call, which
 * pops the frame and returns to R. While the function runs, %rbx (callee-saved, so every frame
 * below restores it for the unwinder) is how the CFI below describes the caller's frame: the
 * return address and the caller's %rbx are read from the shadow frame through DW_OP_breg3.
 * That is what keeps C++ exceptions, pthread_cancel, backtrace() and gdb working through a
 * tracked call: the unwinder walks from the function to ulp_return's row and on to the caller.
 * The routine's personality (unwind.c) is how the runtime learns that an exception or a
 * cancellation unwound through a tracked call that will never return.
 *
 * A frame's library depth is restored by a store of the depth its entry found (ULP_FRAME_DEPTH),
 * never by a decrement: however a frame goes (a return, a prune, a jump or an unwind out of it)
 * and wherever a signal lands, the store can be repeated and the depth comes out right.
 */
#include "ulp.h"

#define DW_CFA_expression 0x10
#define DW_CFA_val_expression 0x16
#define DW_OP_breg3 0x73   /* %rbx */
#define DW_OP_breg7 0x77   /* %rsp */
#define DW_OP_breg11 0x7b  /* %r11 */
#define REG_RBX 3
#define REG_RSP 7
#define REG_RA 16

        .hidden ulp_universe
        .hidden ulp_ready
        .hidden ulp_xsave_size
        .hidden ulp_xsave_mask
        .hidden ulp_thread_start
        .hidden ulp_library_register
        .hidden ulp_prune
        .hidden ulp_discard_above
        .hidden ulp_personality
        .hidden __ehdr_start
        .hidden etext

/* %rbx = &thread->libs[library], from the descriptor %r11 and the thread %r10. */
.macro library_record
        movq    ULP_DESC_PRIVATE(%r11), %rbx    /* offset of this library in thread->libs */
        /* Real offsets are at least ULP_THREAD_LIBS; below are 0 (not registered yet) and
         * ULP_DESC_UNTRACKED (no room): both handled out of line. */
        cmpq    $ULP_THREAD_LIBS, %rbx
        jb      .Lnew_library
        addq    %r10, %rbx
.endm

/* \reg = this thread's state (NULL before its first tracked call): initial-exec TLS. */
.macro load_thread reg
        movq    ulp_self@gottpoff(%rip), \reg
        movq    %fs:(\reg), \reg
.endm

        .text
        .globl  ulp_track
        .type   ulp_track, @function
        .p2align 4
ulp_track:
        .cfi_startproc
        .cfi_personality 0x1b, ulp_personality  /* DW_EH_PE_pcrel | DW_EH_PE_sdata4 */
        /* The caller's frame: its CFA is 16 above us, past the real entry and R. */
        .cfi_def_cfa_offset 16
        endbr64
        pushq   %rbx
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %rbx, 0
        /* A call made by the runtime's own code (into a prepared C library) is never tracked:
         * its slow paths call the C library, and tracked, those calls would enter them again.
         * Checking the caller's address holds before the constructor, in every thread and in
         * signal handlers, with no state. The runtime's code lies between its ELF header and
         * etext (both placed by the linker, hidden). But for ulp_return: a tail call from a
         * tracked function reuses its return slot, which returns there, and is tracked. */
        movq    16(%rsp), %rbx
        leaq    etext(%rip), %r10
        cmpq    %r10, %rbx
        jae     .Lretry
        leaq    __ehdr_start(%rip), %r10
        cmpq    %r10, %rbx
        jb      .Lretry
        leaq    ulp_return(%rip), %r10
        cmpq    %r10, %rbx
        jne     .Luntracked
.Lretry:
        load_thread %r10
        testq   %r10, %r10
        jz      .Lnew_thread
        /* The top frame (or the guard below the first, thread.c) is normally above ours and on
         * the thread's own stack. If its return slot is not above ours, it was left by longjmp,
         * an exception or cancellation without returning through ulp_return, or we run in a
         * signal handler on an alternate stack above it; if it lies above the thread's own
         * stack, it is a handler's, and that handler may have been left by siglongjmp. Either
         * way ulp_prune decides, in C (rarely: in handlers on such stacks, every time). */
        movq    ULP_THREAD_TOP(%r10), %rbx
        movq    ULP_FRAME_SP - ULP_FRAME_SIZE(%rbx), %rbx
        cmpq    %rsp, %rbx
        jbe     .Lcheck
        cmpq    ULP_THREAD_STACK_TOP(%r10), %rbx
        jae     .Lcheck
        library_record
        movq    ULP_THREAD_TOP(%r10), %r11
.Lreserve:
        cmpq    ULP_THREAD_END(%r10), %r11
        jae     .Luntracked
        /* Fill, reserve, fill again: a signal handler entering a tracked call between any two
         * of these sees a free slot, or a reserved one with no library yet (so that if the
         * handler leaves by longjmp, pruning this frame changes no depth). Its sp is correct
         * but right after the reservation: a handler that came before it took the free slot
         * for its own call and left its own sp there, and a second handler, at the same
         * place on its stack, takes the slot just reserved for one it may prune (addresses
         * decide). So the reservation is checked once the sp is right again, and made again
         * if it was lost: from then on every handler sees this frame as it is. */
        movq    %rsp, ULP_FRAME_SP(%r11)
        movq    $0, ULP_FRAME_LIB(%r11)
        addq    $ULP_FRAME_SIZE, ULP_THREAD_TOP(%r10)
        movq    %rsp, ULP_FRAME_SP(%r11)
        movq    $0, ULP_FRAME_LIB(%r11)
        leaq    ULP_FRAME_SIZE(%r11), %r11      /* leaq keeps the flags of the compare */
        cmpq    %r11, ULP_THREAD_TOP(%r10)
        leaq    -ULP_FRAME_SIZE(%r11), %r11
        jne     .Lreserve_lost
        /* The depth this entry finds is what popping its frame will store back. */
        movl    ULP_LIB_DEPTH(%rbx), %r10d
        movq    %r10, ULP_FRAME_DEPTH(%r11)
        testl   %r10d, %r10d
        jnz     1f
        /* First entry into this library: from now until the thread leaves it, it sees the
         * function versions of the universe current at this moment. (A signal handler's
         * entry before the depth is stored below may sync it again: the function has not
         * started, so it runs in that universe throughout.) */
        movq    ulp_universe(%rip), %r10
        movq    %r10, ULP_LIB_UNIVERSE(%rbx)
1:
        .cfi_remember_state
        /* R moves into the frame and the return slot A gets ulp_return now, before the frame
         * gets its library: a frame with a library always has ulp_return in its slot, which
         * is what ulp_prune trusts (returns_into_runtime) when a handler's entry interrupts
         * this one. The two stores are ordered for this thread's own signal handlers, the
         * only other readers, by program order: no fence. The call below writes the same
         * value again, and nothing overwrites A in between (a signal on this stack skips the
         * red zone below %rsp). */
        movq    16(%rsp), %r10
        movq    %r10, ULP_FRAME_RET(%r11)
        .cfi_escape DW_CFA_expression, REG_RA, 2, DW_OP_breg11, ULP_FRAME_RET
        leaq    ulp_return(%rip), %r10
        movq    %r10, 16(%rsp)
        movq    %rbx, ULP_FRAME_LIB(%r11)       /* pairs with returns_into_runtime, as above */
        /* Only now the depth: dropping the frame from here on stores back what it found. */
        movl    ULP_FRAME_DEPTH(%r11), %r10d
        incl    %r10d
        movl    %r10d, ULP_LIB_DEPTH(%rbx)
        popq    ULP_FRAME_RBX(%r11)
        .cfi_adjust_cfa_offset -8
        .cfi_escape DW_CFA_expression, REG_RBX, 2, DW_OP_breg11, ULP_FRAME_RBX
        popq    %r10                            /* the real entry */
        .cfi_adjust_cfa_offset -8
        leaq    8(%rsp), %rsp                   /* past A: %rsp is now A + 8, as after a return */
        /* From here to the return our frame has no size: %rsp is the caller's. Unwinders tell
         * frames apart by CFA, and ours would equal the function's, so it is declared 4
         * bytes up (between the function's A + 8 and any caller's, at least A + 24), and the
         * caller's %rsp is given as a value rule instead of being taken from the CFA. */
        .cfi_def_cfa_offset 4
        .cfi_escape DW_CFA_val_expression, REG_RSP, 2, DW_OP_breg7, 0
        movq    %r11, %rbx
        .cfi_escape DW_CFA_expression, REG_RBX, 2, DW_OP_breg3, ULP_FRAME_RBX
        .cfi_escape DW_CFA_expression, REG_RA, 2, DW_OP_breg3, ULP_FRAME_RET
        /* The call pushes ulp_return at A (again): the function sees its arguments exactly where the
         * caller put them, and the stack alignment of a direct call. */
        call    *%r10

        /* The function returned: %rbx is the frame again; %rax, %rdx, %xmm0, %xmm1, %st0 and
         * %st1 hold its result; the other caller-saved registers are free. */
        .globl  ulp_return
        .hidden ulp_return
ulp_return:
        load_thread %rcx
        leaq    ULP_FRAME_SIZE(%rbx), %rsi
        cmpq    %rsi, ULP_THREAD_TOP(%rcx)
        jne     .Ldiscard
.Lreturn:
        .cfi_remember_state
        /* Everything is read out of the frame before it is released: once released, a
         * signal handler's tracked call may reuse it. */
        movq    ULP_FRAME_RET(%rbx), %rsi
        .cfi_register REG_RA, %rsi
        movq    ULP_FRAME_LIB(%rbx), %rdi
        movq    ULP_FRAME_RBX(%rbx), %r8
        .cfi_register %rbx, %r8
        movq    ULP_FRAME_SP(%rbx), %r10
        /* The depth first, then the library: a prune in between stores the same depth. */
        movl    ULP_FRAME_DEPTH(%rbx), %r9d
        movl    %r9d, ULP_LIB_DEPTH(%rdi)
        movq    $0, ULP_FRAME_LIB(%rbx)         /* a prune from here on changes no depth */
        movq    %rbx, ULP_THREAD_TOP(%rcx)      /* release */
        /* Frames of tail calls into other libraries share this return slot (same sp), under
         * this one: they return now too (below). */
        cmpq    %r10, ULP_FRAME_SP - ULP_FRAME_SIZE(%rbx)
        je      .Ltail_frames
.Lreturn_to_caller:
        .cfi_remember_state
        movq    %r8, %rbx
        .cfi_restore %rbx
        /* push + ret, not jmp: the caller's call left R on the CPU's return stack buffer, and
         * this ret consumes it, so returns in the caller stay predicted. */
        pushq   %rsi
        .cfi_def_cfa_offset 8
        .cfi_restore REG_RSP
        .cfi_offset REG_RA, -8
        ret

        .cfi_restore_state
.Ltail_frames:
        /* Each frame at the same slot whose return address was handed to the frame above it
         * (0, see the tail call below) is popped like ours; the first other one ends it. */
        leaq    -ULP_FRAME_SIZE(%rbx), %r11
2:      cmpq    $0, ULP_FRAME_RET(%r11)
        jne     .Lreturn_to_caller
        movq    ULP_FRAME_LIB(%r11), %rdi
        movl    ULP_FRAME_DEPTH(%r11), %r9d
        movl    %r9d, ULP_LIB_DEPTH(%rdi)
        movq    $0, ULP_FRAME_LIB(%r11)
        movq    %r11, ULP_THREAD_TOP(%rcx)      /* release */
        subq    $ULP_FRAME_SIZE, %r11
        cmpq    %r10, ULP_FRAME_SP(%r11)
        je      2b
        jmp     .Lreturn_to_caller

        .cfi_restore_state
.Ldiscard:
        /* Frames above ours were abandoned by a longjmp or exception that stopped inside
         * the function: drop them before returning. The call goes below the return slot A,
         * which keeps ulp_return while the frame has its library (see the entry). */
        leaq    -8(%rsp), %rsp
        .cfi_adjust_cfa_offset 8
        .cfi_escape DW_CFA_val_expression, REG_RSP, 2, DW_OP_breg7, 8
        movq    %rcx, %r11
        leaq    ulp_discard_above(%rip), %r10
        call    ulp_preserving_call
        leaq    8(%rsp), %rsp
        .cfi_adjust_cfa_offset -8
        .cfi_escape DW_CFA_val_expression, REG_RSP, 2, DW_OP_breg7, 0
        load_thread %rcx
        jmp     .Lreturn

        .cfi_restore_state
.Lcheck:
        library_record
        movq    ULP_THREAD_TOP(%r10), %r11
        cmpq    %rsp, ULP_FRAME_SP - ULP_FRAME_SIZE(%r11)
        jne     .Lprune
        /* The same return slot: a tail call (through the PLT) from the tracked function on
         * top, which is still live if its %rbx, still pointing at its frame, is the caller's.
         * The callee takes the frame over (one frame per return slot keeps backtraces
         * walkable): the return already goes to ulp_return with %rbx = that frame. */
        subq    $ULP_FRAME_SIZE, %r11
        cmpq    %r11, (%rsp)
        jne     .Lprune_reload
        /* Into the same library: that frame already stands for this entry. */
        cmpq    %rbx, ULP_FRAME_LIB(%r11)
        je      .Lenter_plain
        /* Into another library M. The caller's library L must stay held until this call
         * returns, since M may call back into L (a callback) and L's call is not over: the
         * frame stays, and M gets a frame of its own at the same return slot, which takes the
         * caller's return address and %rbx over (so unwinders see one frame per slot, as
         * before). The frame below gets return address 0: ulp_return pops it with ours. */
        .cfi_remember_state
        addq    $ULP_FRAME_SIZE, %r11
.Ltail_reserve:
        cmpq    ULP_THREAD_END(%r10), %r11
        jae     .Lenter_plain                   /* no room: M untracked, L still held */
        movq    %rsp, ULP_FRAME_SP(%r11)        /* fill, reserve, fill, check: as at .Lreserve */
        movq    $0, ULP_FRAME_LIB(%r11)
        addq    $ULP_FRAME_SIZE, ULP_THREAD_TOP(%r10)
        movq    %rsp, ULP_FRAME_SP(%r11)
        movq    $0, ULP_FRAME_LIB(%r11)
        leaq    ULP_FRAME_SIZE(%r11), %r11
        cmpq    %r11, ULP_THREAD_TOP(%r10)
        leaq    -ULP_FRAME_SIZE(%r11), %r11
        jne     .Ltail_reserve_lost
        movq    ULP_FRAME_RET - ULP_FRAME_SIZE(%r11), %r10
        movq    %r10, ULP_FRAME_RET(%r11)
        movq    ULP_FRAME_RBX - ULP_FRAME_SIZE(%r11), %r10
        movq    %r10, ULP_FRAME_RBX(%r11)
        movl    ULP_LIB_DEPTH(%rbx), %r10d
        movq    %r10, ULP_FRAME_DEPTH(%r11)
        testl   %r10d, %r10d
        jnz     3f
        movq    ulp_universe(%rip), %r10
        movq    %r10, ULP_LIB_UNIVERSE(%rbx)
3:      movq    %rbx, ULP_FRAME_LIB(%r11)
        movl    ULP_FRAME_DEPTH(%r11), %r10d
        incl    %r10d
        movl    %r10d, ULP_LIB_DEPTH(%rbx)
        /* Last: a handler's return before this finds the frame below still a plain one. */
        movq    $0, ULP_FRAME_RET - ULP_FRAME_SIZE(%r11)
        movq    %r11, %rbx
        /* The function returns into ulp_return (still in the slot) with %rbx = the new frame,
         * whose rows describe the caller: so is the caller's %rbx described from here on. */
        leaq    8(%rsp), %rsp
        .cfi_adjust_cfa_offset -8
        .cfi_restore %rbx
        popq    %r11                            /* the real entry */
        .cfi_adjust_cfa_offset -8
        jmp     *%r11
        .cfi_restore_state
.Ltail_reserve_lost:
        /* The frame just reserved was pruned (see .Lreserve): only it, so the caller's frame
         * is on top again. */
        movq    ULP_THREAD_TOP(%r10), %r11
        jmp     .Ltail_reserve
.Lreserve_lost:
        movq    ULP_THREAD_TOP(%r10), %r11
        jmp     .Lreserve
.Lprune_reload:
        addq    $ULP_FRAME_SIZE, %r11
.Lprune:
        movq    %r10, %r11
        leaq    ulp_prune(%rip), %r10
        call    ulp_preserving_call
        load_thread %r10
        movq    ULP_THREAD_TOP(%r10), %r11
        jmp     .Lreserve

.Lnew_thread:
        /* Calls made before the runtime's constructor finished run untracked. */
        cmpl    $0, ulp_ready(%rip)
        je      .Luntracked
        leaq    ulp_thread_start(%rip), %r10
        call    ulp_preserving_call
        testl   %r10d, %r10d
        jz      .Luntracked
        jmp     .Lretry

.Lnew_library:
        cmpq    $ULP_DESC_UNTRACKED, %rbx
        je      .Luntracked
        leaq    ulp_library_register(%rip), %r10
        call    ulp_preserving_call
        testq   %r10, %r10
        jz      .Luntracked
        jmp     .Lretry

.Luntracked:
        /* No thread state, no room, or an unknown library: behave as if no runtime were
         * loaded. The function returns straight to the caller. */
.Lenter_plain:
        /* Also the end of a tail call within one library: the frame on top stands for it. */
        popq    %rbx
        .cfi_adjust_cfa_offset -8
        .cfi_restore %rbx
        popq    %r11
        .cfi_adjust_cfa_offset -8
        jmp     *%r11
        .cfi_endproc
        .size   ulp_track, .-ulp_track


/*
 * ulp_preserving_call: call the C function in %r10 as f(%r11, %rbx, sp), where sp is %rsp at
 * the call to this routine, keeping every register (but %r10, which gets the result) and the
 * whole vector and x87 state (XSAVE), because the slow paths run in the middle of somebody
 * else's call.
 */
        .type   ulp_preserving_call, @function
        .p2align 4
ulp_preserving_call:
        .cfi_startproc
        pushq   %rbp
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %rbp, 0
        movq    %rsp, %rbp
        .cfi_def_cfa_register %rbp
        pushq   %rax
        pushq   %rcx
        pushq   %rdx
        pushq   %rsi
        pushq   %rdi
        pushq   %r8
        pushq   %r9
        pushq   %r11
        andq    $-64, %rsp
        subq    ulp_xsave_size(%rip), %rsp
        /* XRSTOR faults unless the XSAVE header's reserved bytes are zero; XSAVE leaves them. */
        xorl    %eax, %eax
        movq    %rax, 512(%rsp)
        movq    %rax, 520(%rsp)
        movq    %rax, 528(%rsp)
        movq    %rax, 536(%rsp)
        movq    %rax, 544(%rsp)
        movq    %rax, 552(%rsp)
        movq    %rax, 560(%rsp)
        movq    %rax, 568(%rsp)
        movl    ulp_xsave_mask(%rip), %eax
        xorl    %edx, %edx
        xsave   (%rsp)
        movq    %r11, %rdi
        movq    %rbx, %rsi
        leaq    16(%rbp), %rdx
        call    *%r10
        movq    %rax, %r10
        movl    ulp_xsave_mask(%rip), %eax
        xorl    %edx, %edx
        xrstor  (%rsp)
        leaq    -64(%rbp), %rsp
        popq    %r11
        popq    %r9
        popq    %r8
        popq    %rdi
        popq    %rsi
        popq    %rdx
        popq    %rcx
        popq    %rax
        popq    %rbp
        .cfi_def_cfa %rsp, 8
        .cfi_restore %rbp
        ret
        .cfi_endproc
        .size   ulp_preserving_call, .-ulp_preserving_call

        .section .note.GNU-stack, "", @progbits
