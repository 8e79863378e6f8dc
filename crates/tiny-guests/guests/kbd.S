/* Polls the i8042 for keyboard bytes and prints the first eight in hex,
 * then reboots: Ctrl+Alt+Del injected by the VMM shows up here. */
#include "lib64.inc"
    .globl _start
_start:
    lea s_wait(%rip), %rsi
    call puts
    mov $8, %r12
1:  in $0x64, %al
    test $1, %al
    jz 1b
    in $0x60, %al
    movzbl %al, %eax
    shl $56, %rax               /* puthex prints 16 digits: keep 2 */
    mov $2, %ecx
2:  rol $4, %rax
    mov %eax, %edi
    and $0xf, %edi
    cmp $10, %edi
    jb 3f
    add $('a' - '0' - 10), %edi
3:  add $'0', %edi
    call putc
    dec %ecx
    jnz 2b
    mov $' ', %edi
    call putc
    dec %r12
    jnz 1b
    call newline
    jmp reboot
    .section .rodata
s_wait: .asciz "kbd: waiting\n"
