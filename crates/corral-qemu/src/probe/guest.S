/*
 * corral's built-in KVM probe guest: a 512-byte boot sector.
 *
 * SeaBIOS loads it at 0x7c00 in real mode. It prints a marker on COM1 at each step, the way
 * a bootloader and Linux's decompressor go: real mode, then 32-bit protected mode, where it
 * builds identity-mapped page tables (one 2 MiB page) and enables PAE, EFER.LME and paging,
 * then a far jump into 64-bit long mode, where it prints the final marker and halts. Reaching the final marker proves the accelerator runs real-mode firmware, MSR writes,
 * paging and 64-bit code; it does not exercise everything a Linux kernel does (APIC timers,
 * SMP bring-up, XSAVE, PV clocks), which is why the kernel probe is preferred when available.
 *
 * Rebuild (binutils):
 *   as --64 -o guest.o guest.S && ld -m elf_x86_64 -Ttext=0x7c00 --oformat=binary -o guest.bin guest.o
 */
        .code16
        .text
        .globl _start
_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $0x7c00, %sp
        ljmp    $0, $real
real:
        mov     $msg_real, %si
        mov     $0x3f8, %dx
1:      lodsb
        test    %al, %al
        jz      2f
        out     %al, %dx
        jmp     1b
2:
        /* Real mode -> 32-bit protected mode, as a bootloader hands over to Linux. */
        lgdtl   gdtr
        mov     %cr0, %eax
        or      $0x1, %eax              /* PE */
        mov     %eax, %cr0
        ljmpl   $0x18, $prot

        .code32
prot:
        mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $0x7c00, %esp
        mov     $msg_prot, %esi
        mov     $0x3f8, %dx
1:      lodsb
        test    %al, %al
        jz      2f
        out     %al, %dx
        jmp     1b
2:
        /* Zero 3 pages at 0x1000 (PML4, PDPT, PD), identity-map the first 2 MiB. */
        mov     $0x1000, %edi
        mov     $0xc00, %ecx
        xor     %eax, %eax
        rep stosl
        movl    $0x2003, 0x1000         /* PML4[0] -> PDPT, present|rw */
        movl    $0x3003, 0x2000         /* PDPT[0] -> PD, present|rw */
        movl    $0x0083, 0x3000         /* PD[0]: 2 MiB page at 0, present|rw|PS */
        mov     %cr4, %eax
        or      $0x20, %eax             /* PAE */
        mov     %eax, %cr4
        mov     $0x1000, %eax
        mov     %eax, %cr3
        mov     $0xc0000080, %ecx       /* EFER */
        rdmsr
        or      $0x100, %eax            /* LME */
        wrmsr
        mov     %cr0, %eax
        or      $0x80000000, %eax       /* PG: enters compatibility mode */
        mov     %eax, %cr0
        ljmp    $0x08, $long

        .code64
long:
        mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $0x3f8, %dx
        lea     msg_long(%rip), %rsi
1:      lodsb
        test    %al, %al
        jz      2f
        out     %al, %dx
        jmp     1b
2:      hlt
        jmp     2b

        .p2align 3
gdt:
        .quad   0
        .quad   0x00209a0000000000      /* 0x08: 64-bit code */
        .quad   0x00cf92000000ffff      /* 0x10: flat data */
        .quad   0x00cf9a000000ffff      /* 0x18: flat 32-bit code */
gdtr:
        .word   gdtr - gdt - 1
        .long   gdt

msg_real:
        .asciz  "corral-probe: real mode\r\n"
msg_prot:
        .asciz  "corral-probe: protected mode\r\n"
msg_long:
        .asciz  "corral-probe: long mode\r\nCORRAL-PROBE-READY\r\n"

        .org    510
        .word   0xaa55
