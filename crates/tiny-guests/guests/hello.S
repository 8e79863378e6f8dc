/* Prints a greeting on COM1, then reboots through the i8042. */
#include "lib64.inc"
    .globl _start
_start:
    lea msg(%rip), %rsi
    call puts
    jmp reboot
    .section .rodata
msg: .asciz "Hello from a tiny guest\n"
