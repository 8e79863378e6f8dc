/* The protected-mode part of a tiny bzImage: the 64-bit entry point sits
 * at offset 0x200, as the boot protocol says. build.rs adds the setup
 * header in front. */
#include "lib64.inc"
    .globl _start
_start:
    hlt                     /* the 32-bit entry, unused */
    .org 0x200
entry64:
    mov %rsi, %r14
    lea msg(%rip), %rsi
    call puts
    lea msg2(%rip), %rsi
    call puts
    movzwl 0x206(%r14), %eax    /* the setup header's version, copied */
    call puthex
    call newline
    jmp reboot
    .section .rodata
msg: .asciz "Hello from a tiny bzImage\n"
msg2: .asciz "hdr_version="
