# basic_square and basic_scaled, new versions using the target's static `factor` and static
# `scale()` by near references (docs/writing-patches.md, "Near references"), as `ulp diff`
# generates them: each symbol named in braces becomes its offset in the built target, in hex.
# The placeholders are .globl and .hidden: the assembler names a local one by its section.

        .section .ulp.near,"a"
        .globl __ulp_near_{factor}, __ulp_near_{scale}
        .hidden __ulp_near_{factor}, __ulp_near_{scale}
__ulp_near_{factor}:
        .long 4242                      # what a patch left unfilled reads instead of factor
__ulp_near_{scale}:
        .byte 0

        .text
# int basic_square_by_factor(int x): x * factor
        .globl basic_square_by_factor
        .type basic_square_by_factor, @function
basic_square_by_factor:
        .cfi_startproc
        movl %edi, %eax
        imull __ulp_near_{factor}(%rip), %eax
        ret
        .cfi_endproc
        .size basic_square_by_factor, .-basic_square_by_factor

# int basic_scaled_near(int x): ++factor, then scale(x) + 1000
        .globl basic_scaled_near
        .type basic_scaled_near, @function
basic_scaled_near:
        .cfi_startproc
        addl $1, __ulp_near_{factor}(%rip)
        subq $8, %rsp
        .cfi_adjust_cfa_offset 8
        call __ulp_near_{scale}
        addq $8, %rsp
        .cfi_adjust_cfa_offset -8
        addl $1000, %eax
        ret
        .cfi_endproc
        .size basic_scaled_near, .-basic_scaled_near

        .section .note.GNU-stack, "", @progbits
