/* Reports a kernel panic through the pvpanic MMIO register. */
#include "lib64.inc"
    .globl _start
_start:
    lea msg(%rip), %rsi
    call puts
    mov $0xd0000000, %eax
    movb $1, (%rax)
1:  hlt
    jmp 1b
    .section .rodata
msg: .asciz "guest: panicking\n"
