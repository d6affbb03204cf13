//! Tiny guest programs, hand-assembled (Intel syntax in the comments; encodings checked with
//! GNU as/objdump). Each ends by writing to [`crate::DONE_PORT`] (0xf4) and halting.

/// Where the real-mode and protected-mode guests are loaded.
pub const CODE_ADDR: u64 = 0x1000;
/// Where [`SERIAL_HELLO`] expects its message.
pub const MESSAGE_ADDR: u64 = 0x1100;
/// Where [`SERIAL_HELLO`] stores what it reads with `rep insb`.
pub const STRING_IN_ADDR: u64 = 0x1200;
/// The message [`SERIAL_HELLO`] prints.
pub const MESSAGE: &[u8; 14] = b"Hello from vmr";

/// 16-bit real mode: arithmetic, then port I/O of every width, then a compare.
/// Expects reads of 0x81 -> 0x5a, 0x510 -> 0xbeef, 0x514 -> 0xdeadbeef.
pub const REAL_MODE_ARITH_IO: &[u8] = &[
    0xb8, 0x34, 0x12, //             00 mov ax, 0x1234
    0xbb, 0x01, 0x01, //             03 mov bx, 0x0101
    0x01, 0xd8, //                   06 add ax, bx          ; 0x1335
    0xd1, 0xe0, //                   08 shl ax, 1           ; 0x266a
    0xe6, 0x80, //                   0a out 0x80, al        ; 6a
    0xba, 0x10, 0x05, //             0c mov dx, 0x510
    0xef, //                         0f out dx, ax          ; 6a 26
    0xe4, 0x81, //                   10 in al, 0x81
    0x88, 0xc1, //                   12 mov cl, al
    0xed, //                         14 in ax, dx
    0x89, 0xc6, //                   15 mov si, ax
    0x66, 0xb8, 0x44, 0x33, 0x22, 0x11, // 17 mov eax, 0x11223344
    0xba, 0x14, 0x05, //             1d mov dx, 0x514
    0x66, 0xef, //                   20 out dx, eax         ; 44 33 22 11
    0x66, 0xed, //                   22 in eax, dx
    0x66, 0x89, 0xc7, //             24 mov edi, eax
    0x81, 0xfe, 0xef, 0xbe, //       27 cmp si, 0xbeef      ; ZF=1 PF=1
    0xe6, 0xf4, //                   2b out 0xf4, al        ; done
    0xf4, //                         2d hlt
];

/// 32-bit protected mode (flat, no paging): MMIO writes and reads of several widths around
/// 0xd000_0000, where no RAM is. Stores the 32-bit value read at 0xd000_0100 at 0x3000.
pub const PROTECTED_MMIO: &[u8] = &[
    0xc7, 0x05, 0x00, 0x00, 0x00, 0xd0, 0x78, 0x56, 0x34, 0x12, // 00 mov dword [0xd0000000], 0x12345678
    0xc6, 0x05, 0x10, 0x00, 0x00, 0xd0, 0xab, //                   0a mov byte [0xd0000010], 0xab
    0x66, 0xc7, 0x05, 0x20, 0x00, 0x00, 0xd0, 0xef, 0xbe, //       11 mov word [0xd0000020], 0xbeef
    0xa1, 0x00, 0x01, 0x00, 0xd0, //                               1a mov eax, [0xd0000100]
    0x89, 0xc3, //                                                 1f mov ebx, eax
    0x0f, 0xb7, 0x0d, 0x00, 0x02, 0x00, 0xd0, //                   21 movzx ecx, word [0xd0000200]
    0x8a, 0x15, 0x00, 0x03, 0x00, 0xd0, //                         28 mov dl, [0xd0000300]
    0x8b, 0x35, 0x00, 0x04, 0x00, 0xd0, //                         2e mov esi, [0xd0000400] ; unanswered
    0xa3, 0x00, 0x30, 0x00, 0x00, //                               34 mov [0x3000], eax
    0xe6, 0xf4, //                                                 39 out 0xf4, al
    0xf4, //                                                       3b hlt
];

/// 16-bit real mode: changes registers the test set beforehand.
pub const REAL_MODE_REGS: &[u8] = &[
    0x66, 0x01, 0xd8, // 00 add eax, ebx
    0x66, 0xf7, 0xd7, // 03 not edi
    0x45, //             06 inc bp
    0x66, 0x87, 0xd6, // 07 xchg esi, edx
    0xf9, //             0a stc
    0xe6, 0xf4, //       0b out 0xf4, al
    0xf4, //             0d hlt
];

/// 64-bit long mode: rax = sum over rcx = 1000..1 of (2^32 + rcx), stored at 0x7000, copied
/// through the stack to r9 and loaded from memory into xmm2 (`movdqu`: the instruction
/// emulator of a software KVM handles it, unlike `movq xmm, r64`); low then high half written
/// to port 0xf0. Stores xmm3 (as the test set it) at 0x7100. Expects 0x7008..0x7010 zero.
pub const LONG_MODE_SUM: &[u8] = &[
    0x48, 0xc7, 0xc1, 0xe8, 0x03, 0x00, 0x00, // 00 mov rcx, 1000
    0x31, 0xc0, //                               07 xor eax, eax
    0x48, 0xbb, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, // 09 mov rbx, 0x100000000
    0x48, 0x01, 0xd8, //                         13 add rax, rbx        ; loop:
    0x48, 0x01, 0xc8, //                         16 add rax, rcx
    0x48, 0xff, 0xc9, //                         19 dec rcx
    0x75, 0xf5, //                               1c jnz loop
    0x48, 0x89, 0x04, 0x25, 0x00, 0x70, 0x00, 0x00, // 1e mov [0x7000], rax
    0x50, //                                     26 push rax
    0x41, 0x59, //                               27 pop r9
    0xf3, 0x0f, 0x6f, 0x14, 0x25, 0x00, 0x70, 0x00, 0x00, // 29 movdqu xmm2, [0x7000]
    0xf3, 0x0f, 0x7f, 0x1c, 0x25, 0x00, 0x71, 0x00, 0x00, // 32 movdqu [0x7100], xmm3
    0x49, 0x89, 0xe2, //                         3b mov r10, rsp
    0xba, 0xf0, 0x00, 0x00, 0x00, //             3e mov edx, 0xf0
    0xef, //                                     43 out dx, eax
    0x49, 0x89, 0xc0, //                         44 mov r8, rax
    0x49, 0xc1, 0xe8, 0x20, //                   47 shr r8, 32
    0x44, 0x89, 0xc0, //                         4b mov eax, r8d
    0xef, //                                     4e out dx, eax
    0x4c, 0x89, 0xc8, //                         4f mov rax, r9
    0xe6, 0xf4, //                               52 out 0xf4, al
    0xf4, //                                     54 hlt
];

/// The value [`LONG_MODE_SUM`] computes.
pub const LONG_MODE_SUM_RESULT: u64 = 1000 * (1 << 32) + 1000 * 1001 / 2;

/// 16-bit real mode: prints [`MESSAGE`] (at [`MESSAGE_ADDR`]) to port 0x3f8 twice, first one
/// `out` per byte, then with `rep outsb`; then reads 8 bytes from port 0x2f8 to
/// [`STRING_IN_ADDR`] with `rep insb`.
pub const SERIAL_HELLO: &[u8] = &[
    0xfc, //             00 cld
    0xba, 0xf8, 0x03, // 01 mov dx, 0x3f8
    0xbe, 0x00, 0x11, // 04 mov si, 0x1100
    0xb9, 0x0e, 0x00, // 07 mov cx, 14
    0xac, //             0a lodsb                ; loop:
    0xee, //             0b out dx, al
    0xe2, 0xfc, //       0c loop loop
    0xbe, 0x00, 0x11, // 0e mov si, 0x1100
    0xb9, 0x0e, 0x00, // 11 mov cx, 14
    0xf3, 0x6e, //       14 rep outsb
    0xbf, 0x00, 0x12, // 16 mov di, 0x1200
    0xb9, 0x08, 0x00, // 19 mov cx, 8
    0xba, 0xf8, 0x02, // 1c mov dx, 0x2f8
    0xf3, 0x6c, //       1f rep insb             ; KVM batches these into one exit
    0xb0, 0x00, //       21 mov al, 0
    0xe6, 0xf4, //       23 out 0xf4, al
    0xf4, //             25 hlt
];

/// 16-bit real mode: counts in eax forever. Offset [`SPIN_THEN_HALT_HLT`] is `cli; hlt`
/// forever instead (with an in-kernel irqchip that HLT never leaves the kernel).
pub const SPIN_THEN_HALT: &[u8] = &[
    0x66, 0x40, // 00 inc eax          ; spin:
    0xeb, 0xfc, // 02 jmp spin
    0xfa, //       04 cli              ; halt:
    0xf4, //       05 hlt
    0xeb, 0xfc, // 06 jmp halt
];

/// Entry offset of the `cli; hlt` loop in [`SPIN_THEN_HALT`].
pub const SPIN_THEN_HALT_HLT: u64 = 4;

/// 16-bit real mode: installs [`IRQ1_HANDLER`] as vector 0x21, initialises the 8259 PIC
/// (vector base 0x20, only IRQ1 unmasked), writes port 0x700 to say it is ready, then waits
/// with `sti; hlt`.
pub const IRQ1_WAIT: &[u8] = &[
    0xfa, //                               00 cli
    0xc7, 0x06, 0x84, 0x00, 0x40, 0x10, // 01 mov word [0x84], 0x1040 ; IVT[0x21].offset
    0xc7, 0x06, 0x86, 0x00, 0x00, 0x00, // 07 mov word [0x86], 0      ; IVT[0x21].segment
    0xb0, 0x11, //                         0d mov al, 0x11            ; ICW1: edge, ICW4
    0xe6, 0x20, //                         0f out 0x20, al
    0xb0, 0x20, //                         11 mov al, 0x20            ; ICW2: vectors 0x20..
    0xe6, 0x21, //                         13 out 0x21, al
    0xb0, 0x04, //                         15 mov al, 0x04            ; ICW3: slave on IRQ2
    0xe6, 0x21, //                         17 out 0x21, al
    0xb0, 0x01, //                         19 mov al, 0x01            ; ICW4: 8086 mode
    0xe6, 0x21, //                         1b out 0x21, al
    0xb0, 0xfd, //                         1d mov al, 0xfd            ; OCW1: only IRQ1
    0xe6, 0x21, //                         1f out 0x21, al
    0xbc, 0x00, 0x80, //                   21 mov sp, 0x8000
    0xba, 0x00, 0x07, //                   24 mov dx, 0x700
    0xee, //                               27 out dx, al              ; ready
    0xfb, //                               28 sti
    0xf4, //                               29 hlt                     ; wait:
    0xeb, 0xfd, //                         2a jmp wait
];

/// Where [`IRQ1_HANDLER`] is loaded (the vector [`IRQ1_WAIT`] installs).
pub const IRQ1_HANDLER_ADDR: u64 = 0x1040;
/// Port [`IRQ1_WAIT`] writes when it is ready for the interrupt.
pub const IRQ1_READY_PORT: u16 = 0x700;

/// The IRQ1 handler: reports 0x42 on the done port.
pub const IRQ1_HANDLER: &[u8] = &[
    0xb0, 0x42, // 40 mov al, 0x42
    0xe6, 0xf4, // 42 out 0xf4, al
    0xf4, //       44 hlt
    0xeb, 0xfd, // 45 jmp 44
];

/// 32-bit protected mode: a write to port 0x600, two 32-bit writes (values 4 then 5) to
/// 0xd000_1000; the test routes some of them to eventfds.
pub const IOEVENT_WRITES: &[u8] = &[
    0x66, 0xba, 0x00, 0x06, //                               00 mov dx, 0x600
    0xee, //                                                 04 out dx, al
    0xc7, 0x05, 0x00, 0x10, 0x00, 0xd0, 0x04, 0x00, 0x00, 0x00, // 05 mov dword [0xd0001000], 4
    0xc7, 0x05, 0x00, 0x10, 0x00, 0xd0, 0x05, 0x00, 0x00, 0x00, // 0f mov dword [0xd0001000], 5
    0xb0, 0x00, //                                           19 mov al, 0
    0xe6, 0xf4, //                                           1b out 0xf4, al
    0xf4, //                                                 1d hlt
];

/// 32-bit protected mode: reports 0x55 on port 0x80, then executes `ud2`; run with an empty
/// IDT, the #UD cannot be delivered and the CPU shuts down (triple fault).
pub const TRIPLE_FAULT: &[u8] = &[
    0xb0, 0x55, // 00 mov al, 0x55
    0xe6, 0x80, // 02 out 0x80, al
    0x0f, 0x0b, // 04 ud2
    0xf4, //       06 hlt
];
