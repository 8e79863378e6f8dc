/* Says it is up (console and boot timer), then halts with interrupts off
 * forever: an idle guest for memory measurements. */
#include "lib64.inc"
    .globl _start
_start:
    lea msg(%rip), %rsi
    call puts
    mov $PORT_BOOT_TIMER, %dx
    mov $123, %al
    out %al, %dx
    cli
1:  hlt
    jmp 1b
    .section .rodata
msg: .asciz "idle guest up\n"
