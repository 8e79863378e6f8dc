/* Writes the boot-timer port (123 to 0x440) in a tight loop, forever. A VMM
 * started with --boot-timer prints a line at the first write, so a restore
 * benchmark sees the first guest instruction after a restore. Without the
 * device the writes go to an empty port. */
#include "lib64.inc"
    .globl _start
_start:
    mov $PORT_BOOT_TIMER, %dx
    mov $123, %al
1:  out %al, %dx
    jmp 1b
