/* Enables XSAVE and saves the x87/SSE state with it, as every Linux kernel
 * does while setting up its FPU. With hardware virtualization this works
 * and the guest reboots; on a PVM host KVM's emulator cannot run XSAVE
 * (measured: FXSAVE, FXRSTOR and FNINIT emulate; XSAVE, XRSTOR, PXOR and
 * FNSTSW do not) and the vCPU stops with an internal error. */
#include "lib64.inc"
    .globl _start
_start:
    lea msg(%rip), %rsi
    call puts
    mov %cr4, %rax
    or $((1 << 18) | (1 << 10) | (1 << 9)), %rax    /* OSXSAVE, OSXMMEXCPT, OSFXSR */
    mov %rax, %cr4
    xor %ecx, %ecx
    mov $3, %eax                                    /* XCR0: x87 | SSE */
    xor %edx, %edx
    xsetbv
    mov $3, %eax
    xor %edx, %edx
    xsave 0x14000
    lea ok(%rip), %rsi
    call puts
    jmp reboot
    .section .rodata
msg: .asciz "xsave: trying\n"
ok: .asciz "xsave: done\n"
