/* Reports what the guest sees at entry: registers, control registers,
 * the command line and the e820 map from the zero page (%rsi). Then
 * powers off through ACPI. Output lines are "key=value" for the tests. */
#include "lib64.inc"
    .globl _start
_start:
    mov %rsi, %r15              /* zero page */
    mov %rsp, %r14
    lea s_rsi(%rip), %rsi
    mov %r15, %rax
    call kv
    lea s_rsp(%rip), %rsi
    mov %r14, %rax
    call kv
    lea s_cr0(%rip), %rsi
    mov %cr0, %rax
    call kv
    lea s_cr3(%rip), %rsi
    mov %cr3, %rax
    call kv
    lea s_cr4(%rip), %rsi
    mov %cr4, %rax
    call kv
    lea s_efer(%rip), %rsi
    mov $0xc0000080, %ecx
    rdmsr
    shl $32, %rdx
    or %rdx, %rax
    call kv
    lea s_cs(%rip), %rsi
    xor %eax, %eax
    mov %cs, %ax
    call kv
    lea s_ds(%rip), %rsi
    xor %eax, %eax
    mov %ds, %ax
    call kv
    lea s_rflags(%rip), %rsi
    pushfq
    pop %rax
    call kv
    /* CPUID: leaf 1 ECX (hypervisor bit 31) and the hypervisor leaf. */
    lea s_l1ecx(%rip), %rsi
    mov $1, %eax
    cpuid
    mov %rcx, %rax
    call kv
    mov $0x40000000, %eax
    cpuid
    mov %ebx, sig(%rip)
    mov %ecx, sig+4(%rip)
    mov %edx, sig+8(%rip)
    lea s_hv(%rip), %rsi
    call puts
    lea sig(%rip), %rsi
    call puts
    call newline
    /* The command line. */
    lea s_cmdline(%rip), %rsi
    call puts
    mov 0x228(%r15), %esi
    call puts
    call newline
    /* The e820 map: count at 0x1e8, 20-byte entries at 0x2d0. */
    lea s_e820n(%rip), %rsi
    movzbl 0x1e8(%r15), %eax
    mov %rax, %r13
    call kv
    lea 0x2d0(%r15), %rbx
1:  test %r13, %r13
    jz 2f
    lea s_e820(%rip), %rsi
    call puts
    mov (%rbx), %rax
    call puthex
    mov $' ', %edi
    call putc
    mov 8(%rbx), %rax
    call puthex
    mov $' ', %edi
    call putc
    mov 16(%rbx), %eax
    call puthex
    call newline
    add $20, %rbx
    dec %r13
    jmp 1b
2:  jmp poweroff

/* Prints "<%rsi>=<%rax>\n". */
kv:
    call puts
    mov $'=', %edi
    call putc
    call puthex
    jmp newline

    .section .rodata
s_rsi: .asciz "rsi"
s_rsp: .asciz "rsp"
s_cr0: .asciz "cr0"
s_cr3: .asciz "cr3"
s_cr4: .asciz "cr4"
s_efer: .asciz "efer"
s_cs: .asciz "cs"
s_ds: .asciz "ds"
s_rflags: .asciz "rflags"
s_cmdline: .asciz "cmdline="
s_e820n: .asciz "e820_entries"
s_e820: .asciz "e820="
s_l1ecx: .asciz "cpuid1_ecx"
s_hv: .asciz "hypervisor="
    .data
sig: .fill 16, 1, 0
