/* Enters through the PVH note in 32-bit protected mode with %ebx pointing
 * at hvm_start_info. Prints the magic, the paging state and the command
 * line, then reboots. */
#define COM1 0x3f8
    .code32
    .globl _start
_start:
    mov $0x8ff0, %esp           /* PVH gives no stack */
    mov %ebx, %ebp
    mov $s_magic, %esi
    call puts32
    mov (%ebp), %eax
    call puthex32
    mov $s_cr0, %esi
    call puts32
    mov %cr0, %eax
    call puthex32
    mov $s_cmdline, %esi
    call puts32
    mov 24(%ebp), %esi          /* cmdline_paddr (low half) */
    call puts32
    mov $'\n', %al
    call putc32
    mov $0xfe, %al
    out %al, $0x64
1:  hlt
    jmp 1b

putc32:
    mov $COM1, %dx
    out %al, %dx
    ret
puts32:
1:  lodsb
    test %al, %al
    jz 2f
    call putc32
    jmp 1b
2:  ret
puthex32:
    mov %eax, %edi
    mov $8, %ecx
1:  rol $4, %edi
    mov %edi, %eax
    and $0xf, %eax
    cmp $10, %eax
    jb 2f
    add $('a' - '0' - 10), %eax
2:  add $'0', %eax
    call putc32
    dec %ecx
    jnz 1b
    ret

    .section .rodata
s_magic: .asciz "pvh magic="
s_cr0: .asciz " cr0="
s_cmdline: .asciz " cmdline="

    .section .note.Xen, "a"
    .balign 4
    .long 4                 /* name size */
    .long 4                 /* descriptor size */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long _start
