/* The smallest useful guest for timing: its first instructions tell the
 * boot timer it runs, then it reboots at once. */
    .code64
    .globl _start
_start:
    mov $0x440, %dx
    mov $123, %al
    out %al, %dx
    mov $0xfe, %al
    out %al, $0x64
1:  hlt
    jmp 1b
