/* Prints "tick <n>" after every busy-wait of ~400k instructions, forever,
 * so a test can watch the guest run, stop while paused, and run again. */
#include "lib64.inc"
    .globl _start
_start:
    xor %r12, %r12
1:  mov $200000, %ecx
2:  dec %ecx
    jnz 2b
    inc %r12
    lea s_tick(%rip), %rsi
    call puts
    mov %r12, %rax
    call puthex
    call newline
    jmp 1b
    .section .rodata
s_tick: .asciz "tick "
