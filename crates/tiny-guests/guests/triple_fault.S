/* Loads an empty IDT and raises an exception: a triple fault. */
#include "lib64.inc"
    .globl _start
_start:
    lea msg(%rip), %rsi
    call puts
    lidt empty_idt(%rip)
    ud2
    .section .rodata
msg: .asciz "about to triple fault\n"
    .balign 8
empty_idt: .word 0
    .quad 0
