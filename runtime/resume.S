/*
 * Where the trigger's calls into the process return (ulp_build/live/ptrace.py, Tracee.call).
 *
 * The trigger stops a thread wherever it is, makes it call one of our entry points and, when
 * the call is over, puts every register back. If the trigger dies meanwhile (SIGKILL, a crash)
 * the kernel lets the thread go with nobody to put anything back: a plain return to address 0
 * would then kill the process. So calls return here instead, and the trigger leaves, below the
 * thread's red zone and before the call starts, the thread's whole interrupted state as a
 * signal frame (struct rt_sigframe: its registers, an interrupted system call already made to
 * restart, and its FP/SSE/AVX state), with %r12, which the call preserves, pointing at it.
 *
 * - With the trigger alive, the getpid below is where it takes over: it watches the thread's
 *   system calls, reads the result from %rdi at getpid's exit (ulp_resume_return, exported so
 *   that it finds that address by name), and restores the thread itself.
 * - Or, through ulp_resume_signal, the thread sends itself a signal the trigger chose (in %r13)
 *   among those the process neither catches nor this thread blocks, and whose default is to
 *   ignore it. A traced thread stops at the delivery of any signal, ignored or not: that stop,
 *   at ulp_resume_signal_return with the result in %rbx, is where the trigger takes over; it
 *   discards the signal. The trigger then lets the call run without stopping at each of its
 *   system calls (a dlopen makes some twenty). Untraced, the kernel drops an ignored signal
 *   as it is sent, and the thread carries on.
 * - Alone, the thread carries on: it completes the frame with what only it knows now (its
 *   alternate signal stack and signal mask) and returns into the interrupted code through
 *   rt_sigreturn, which restores every register, the stack pointer and the extended state at
 *   once, as after a signal handler.
 */
#define SYS_rt_sigprocmask 14
#define SYS_rt_sigreturn 15
#define SYS_getpid 39
#define SYS_gettid 186
#define SYS_tgkill 234
#define SYS_sigaltstack 131
#define FRAME_UC 8          /* struct rt_sigframe: pretcode, then struct ucontext */
#define FRAME_UC_STACK 24   /* uc_stack */
#define FRAME_UC_SIGMASK 304

        .text
        .globl  ulp_resume
        .type   ulp_resume, @function
        .globl  ulp_resume_return
        .p2align 4
ulp_resume:
        .cfi_startproc
        /* Nothing to unwind to: the frame below is not a caller's. */
        .cfi_undefined rip
        movq    %rax, %rdi
        movl    $SYS_getpid, %eax
        syscall
ulp_resume_return:
.Lrestore:
        leaq    FRAME_UC_STACK(%r12), %rsi
        xorl    %edi, %edi
        movl    $SYS_sigaltstack, %eax
        syscall
        xorl    %edi, %edi                      /* SIG_BLOCK nothing: read the mask */
        xorl    %esi, %esi
        leaq    FRAME_UC_SIGMASK(%r12), %rdx
        movl    $8, %r10d
        movl    $SYS_rt_sigprocmask, %eax
        syscall
        leaq    FRAME_UC(%r12), %rsp
        movl    $SYS_rt_sigreturn, %eax
        syscall
        ud2
        .cfi_endproc
        .size   ulp_resume, .-ulp_resume

        .globl  ulp_resume_signal
        .type   ulp_resume_signal, @function
        .globl  ulp_resume_signal_return
        .p2align 4
ulp_resume_signal:
        .cfi_startproc
        .cfi_undefined rip
        movq    %rax, %rbx                      /* the result, for the trigger */
        /* tgkill, as raise() does, with both ids in this process's own namespace. */
        movl    $SYS_getpid, %eax
        syscall
        movl    %eax, %ebp
        movl    $SYS_gettid, %eax
        syscall
        movl    %ebp, %edi
        movl    %eax, %esi
        movl    %r13d, %edx
        movl    $SYS_tgkill, %eax
        syscall
ulp_resume_signal_return:
        jmp     .Lrestore
        .cfi_endproc
        .size   ulp_resume_signal, .-ulp_resume_signal

        .section .note.GNU-stack, "", @progbits
