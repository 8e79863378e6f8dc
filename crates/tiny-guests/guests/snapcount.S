/* Prints a banner once, then counts forever at guest physical 0x12000 and
 * prints the count every 16384 increments ("count <hex>"), so a snapshot
 * test can see a restored guest go on from where it was, not from zero,
 * without a second banner. */
#include "lib64.inc"
    .globl _start
_start:
    lea s_boot(%rip), %rsi
    call puts
    movq $0, 0x12000
1:  incq 0x12000
    mov 0x12000, %rax
    test $0x3fff, %rax
    jnz 1b
    lea s_count(%rip), %rsi
    call puts
    call puthex
    call newline
    jmp 1b
    .section .rodata
s_boot: .asciz "snapcount: boot\n"
s_count: .asciz "count "
