/* Brings up every application processor with INIT/SIPI through the local
 * APIC. Each AP starts in real mode at a trampoline copied to 0x10000,
 * sets its APIC id's bit in a bitmap and counts itself in. The BSP waits,
 * then prints "cpus=<expected> up=<count> apic_bitmap=<bits>" and reboots. */
#include "lib64.inc"
#define LAPIC 0xfee00000
#define TRAMPOLINE 0x10000
#define COUNTER 0x11000
#define BITMAP 0x11008
    .globl _start
_start:
    mov $1, %eax
    cpuid
    mov %ebx, %r13d
    shr $24, %r13d              /* own APIC id */
    shr $16, %ebx
    and $0xff, %ebx
    mov %rbx, %r12              /* logical CPUs in the package */
    lea tramp_start(%rip), %rsi
    mov $TRAMPOLINE, %rdi
    mov $(tramp_end - tramp_start), %rcx
    rep movsb
    movl $1, COUNTER            /* the BSP counts itself */
    movq $0, BITMAP
    lock btsq %r13, BITMAP
    mov $LAPIC, %ebx
    movl $0, 0x310(%rbx)
    movl $0x000c4500, 0x300(%rbx)   /* INIT, all but self */
    movl $0x000c4610, 0x300(%rbx)   /* SIPI, vector 0x10 */
    movl $0x000c4610, 0x300(%rbx)   /* SIPI again, as the spec asks */
    mov $2000000, %rcx
1:  mov COUNTER, %eax
    cmp %r12d, %eax
    je 2f
    dec %rcx
    jnz 1b
2:  lea s_cpus(%rip), %rsi
    call puts
    mov %r12, %rax
    call puthex
    lea s_up(%rip), %rsi
    call puts
    mov COUNTER, %eax
    call puthex
    lea s_bitmap(%rip), %rsi
    call puts
    mov BITMAP, %rax
    call puthex
    call newline
    jmp reboot

    .code16
tramp_start:
    cli
    mov $0x1000, %ax
    mov %ax, %ds
    mov $1, %eax
    cpuid
    shr $24, %ebx
    lock btsl %ebx, (0x1008)
    lock incl (0x1000)
3:  hlt
    jmp 3b
tramp_end:
    .code64

    .section .rodata
s_cpus: .asciz "cpus="
s_up: .asciz " up="
s_bitmap: .asciz " apic_bitmap="
