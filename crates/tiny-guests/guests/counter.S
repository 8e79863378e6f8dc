/* Counts forever at guest physical 0x12000 (one increment per loop), so a
 * test can watch the guest run, stop while paused, and run again. */
    .code64
    .globl _start
_start:
    movq $0, 0x12000
1:  incq 0x12000
    jmp 1b
