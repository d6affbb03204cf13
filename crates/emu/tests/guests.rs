//! Tiny guests, run end to end through the block cache: code bytes in memory, run until a
//! write to the done port, then check registers and port output.

mod common;

use common::*;
use iced_x86::code_asm::*;
use vmr_emu::StopReason;

/// `out port, eax` (clobbers edx).
fn out(a: &mut CodeAssembler, port: u16) {
    a.mov(edx, port as u32).unwrap();
    a.out(dx, eax).unwrap();
}

/// A #PF handler at `handler` that writes the faulting RIP minus R12 to port 0xf3 and ends.
fn fault_rip_relative_to_r12(g: &Guest, handler: u64) {
    g.asm(64, handler, |a| {
        a.pop(rax).unwrap(); // error code
        a.mov(rax, qword_ptr(rsp)).unwrap(); // faulting RIP
        a.sub(rax, r12).unwrap();
        out(a, 0xf3);
        done(a);
    });
}

fn done(a: &mut CodeAssembler) {
    a.mov(edx, DONE_PORT as u32).unwrap();
    a.out(dx, al).unwrap();
}

#[test]
fn long_mode_loop_sums() {
    let mut g = Guest::new();
    g.long_mode();
    g.asm(64, CODE, |a| {
        let mut top = a.create_label();
        a.xor(eax, eax).unwrap();
        a.mov(ecx, 100u32).unwrap();
        a.set_label(&mut top).unwrap();
        a.add(rax, rcx).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        out(a, 0xf0);
        done(a);
    });
    assert_eq!(g.run(), StopReason::Kicked);
    assert_eq!(g.port_writes(0xf0), vec![5050]);
    assert!(g.engine.cpu.icount > 300);
}

#[test]
fn page_fault_reports_cr2_and_error_code() {
    let mut g = Guest::new();
    g.long_mode();
    let handler = CODE + 0x1000;
    g.set_gate64(14, handler, 0, 0);
    g.asm(64, CODE, |a| {
        a.mov(rbx, 0x8000_0000u64).unwrap();
        a.mov(qword_ptr(rbx), rax).unwrap();
        a.hlt().unwrap();
    });
    g.asm(64, handler, |a| {
        a.pop(rax).unwrap(); // error code
        out(a, 0xf1);
        a.mov(rax, cr2).unwrap();
        out(a, 0xf2);
        a.mov(rax, qword_ptr(rsp)).unwrap(); // faulting RIP
        out(a, 0xf3);
        done(a);
    });
    assert_eq!(g.run(), StopReason::Kicked);
    assert_eq!(g.port_writes(0xf1), vec![0x2]);
    assert_eq!(g.port_writes(0xf2), vec![0x8000_0000]);
    assert_eq!(g.port_writes(0xf3), vec![CODE + 10]);
}

/// A block runs on past conditional branches that are not taken and leaves at a taken one:
/// Jcc, LOOP and JRCXZ both ways inside one block, then a fault after an untaken branch, which
/// must report the faulting instruction's RIP.
#[test]
fn blocks_run_past_untaken_branches_and_leave_at_taken_ones() {
    let mut g = Guest::new();
    g.long_mode();
    let handler = CODE + 0x1000;
    g.set_gate64(14, handler, 0, 0);
    g.asm(64, CODE, |a| {
        let (mut top, mut skip, mut odd, mut never, mut fault) =
            (a.create_label(), a.create_label(), a.create_label(), a.create_label(), a.create_label());
        a.xor(eax, eax).unwrap();
        a.xor(ebx, ebx).unwrap();
        a.mov(ecx, 10u32).unwrap();
        a.set_label(&mut top).unwrap();
        a.add(eax, 1).unwrap();
        a.cmp(ecx, 5).unwrap();
        a.jb(skip).unwrap(); // taken for rcx 4..1
        a.add(ebx, 100).unwrap(); // rcx 10..5: 6 times
        a.set_label(&mut skip).unwrap();
        a.test(ecx, 1).unwrap();
        a.jnz(odd).unwrap();
        a.add(ebx, 1).unwrap(); // rcx 10, 8, 6, 4, 2
        a.set_label(&mut odd).unwrap();
        a.jrcxz(never).unwrap(); // rcx is never 0 here
        a.loop_(top).unwrap();
        out(a, 0xf0);
        a.mov(eax, ebx).unwrap();
        out(a, 0xf1);
        // A fault after an untaken branch in the same block.
        a.lea(r12, ptr(fault)).unwrap();
        a.mov(rbx, 0x8000_0000u64).unwrap();
        a.cmp(eax, eax).unwrap();
        a.jne(never).unwrap();
        a.set_label(&mut fault).unwrap();
        a.mov(qword_ptr(rbx), rax).unwrap();
        a.set_label(&mut never).unwrap();
        a.mov(eax, 0xdeadu32).unwrap();
        out(a, 0xf2);
        done(a);
    });
    fault_rip_relative_to_r12(&g, handler);
    assert_eq!(g.run(), StopReason::Kicked);
    assert_eq!(g.port_writes(0xf0), vec![10]);
    assert_eq!(g.port_writes(0xf1), vec![605]);
    assert_eq!(g.port_writes(0xf2), Vec::<u64>::new(), "a branch fell through when taken, or the reverse");
    assert_eq!(g.port_writes(0xf3), vec![0], "the fault's RIP is the faulting instruction");
}

/// CMP/TEST with a memory operand, fused with the Jcc after it into one op: every operand form
/// branches the right way, and a page fault in the compare reports the compare's RIP.
#[test]
fn fused_memory_compare_and_branch() {
    let mut g = Guest::new();
    g.long_mode();
    let handler = CODE + 0x1000;
    let data = 0x30000u64;
    g.write_u64(data, 7);
    g.set_gate64(14, handler, 0, 0);
    g.asm(64, CODE, |a| {
        let mut l: Vec<CodeLabel> = (0..6).map(|_| a.create_label()).collect();
        a.mov(rbx, data).unwrap();
        a.xor(esi, esi).unwrap();
        a.cmp(qword_ptr(rbx), 7).unwrap();
        a.jne(l[0]).unwrap(); // not taken
        a.add(esi, 1).unwrap();
        a.set_label(&mut l[0]).unwrap();
        a.cmp(qword_ptr(rbx), 8).unwrap();
        a.je(l[1]).unwrap(); // not taken
        a.add(esi, 10).unwrap();
        a.set_label(&mut l[1]).unwrap();
        a.test(dword_ptr(rbx), 4).unwrap();
        a.jz(l[2]).unwrap(); // not taken: 7 & 4
        a.add(esi, 100).unwrap();
        a.set_label(&mut l[2]).unwrap();
        a.cmp(qword_ptr(rbx), rbx).unwrap();
        a.jb(l[3]).unwrap(); // taken: 7 < 0x30000
        a.add(esi, 1000).unwrap();
        a.set_label(&mut l[3]).unwrap();
        a.cmp(rbx, qword_ptr(rbx)).unwrap();
        a.ja(l[4]).unwrap(); // taken
        a.add(esi, 10000).unwrap();
        a.set_label(&mut l[4]).unwrap();
        let mut zero = a.create_label();
        a.add(esi, dword_ptr(rbx)).unwrap(); // ADD from memory fused with its Jcc
        a.jz(zero).unwrap(); // not taken
        a.set_label(&mut zero).unwrap();
        a.mov(eax, esi).unwrap();
        out(a, 0xf1);
        let mut fault = a.create_label();
        a.lea(r12, ptr(fault)).unwrap();
        a.mov(rbx, 0x8000_0000u64).unwrap();
        a.set_label(&mut fault).unwrap();
        a.cmp(qword_ptr(rbx), 0).unwrap();
        a.je(l[5]).unwrap();
        a.set_label(&mut l[5]).unwrap();
        a.mov(eax, 0xdeadu32).unwrap();
        out(a, 0xf2);
        done(a);
    });
    fault_rip_relative_to_r12(&g, handler);
    assert_eq!(g.run(), StopReason::Kicked);
    assert_eq!(g.port_writes(0xf1), vec![118]);
    assert_eq!(g.port_writes(0xf2), Vec::<u64>::new(), "the faulting compare went on");
    assert_eq!(g.port_writes(0xf3), vec![0], "the fault's RIP is the compare's");
}

/// A block follows a direct JMP or CALL to a later address in its page; the code it jumped
/// over and the code at the target are still checked for writes.
#[test]
fn blocks_follow_forward_jumps_and_calls_in_their_page() {
    let mut g = Guest::new();
    g.long_mode();
    g.asm(64, CODE, |a| {
        let (mut top, mut over, mut func, mut after) =
            (a.create_label(), a.create_label(), a.create_label(), a.create_label());
        a.xor(esi, esi).unwrap();
        a.mov(ecx, 3u32).unwrap();
        a.set_label(&mut top).unwrap();
        a.jmp(over).unwrap();
        a.add(esi, 1000).unwrap(); // jumped over
        a.set_label(&mut over).unwrap();
        a.call(func).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.mov(eax, esi).unwrap();
        out(a, 0xf0);
        // Patch the immediate of `add esi, 1` in `func` (jumped to, same page), then run it.
        a.lea(rbx, ptr(func)).unwrap();
        a.mov(byte_ptr(rbx + 2), 7).unwrap();
        a.call(func).unwrap();
        a.mov(eax, esi).unwrap();
        out(a, 0xf0);
        a.jmp(after).unwrap();
        a.set_label(&mut func).unwrap();
        a.add(esi, 1).unwrap(); // 83 c6 01
        a.ret().unwrap();
        a.set_label(&mut after).unwrap();
        done(a);
    });
    assert_eq!(g.run(), StopReason::Kicked);
    assert_eq!(g.port_writes(0xf0), vec![3, 10]);
}

#[test]
fn nx_page_fault_sets_instruction_fetch_bit() {
    let mut g = Guest::new();
    g.long_mode();
    // Map 0x4000_0000 (second PDPT entry) with a 4 KiB page table, NX on the page.
    g.write_u64(0x2000 + 8, 0x0020_0000 | 3);
    g.write_u64(0x0020_0000, 0x0020_1000 | 3);
    g.write_u64(0x0020_1000, 0x0030_0000 | 3 | (1 << 63));
    let handler = CODE + 0x1000;
    g.set_gate64(14, handler, 0, 0);
    g.asm(64, CODE, |a| {
        a.mov(rax, 0x4000_0000u64).unwrap();
        a.mov(dword_ptr(rax), 0xc3u32).unwrap(); // writable: fine
        a.call(rax).unwrap(); // not executable: #PF
        a.hlt().unwrap();
    });
    g.asm(64, handler, |a| {
        a.pop(rax).unwrap();
        out(a, 0xf1);
        done(a);
    });
    assert_eq!(g.run(), StopReason::Kicked);
    assert_eq!(g.port_writes(0xf1), vec![0x11]);
    // The write set accessed and dirty bits in the leaf.
    assert_eq!(g.read_u64(0x0020_1000) & 0x60, 0x60);
    assert_eq!(g.mem.read_obj::<u32>(vmr_hypervisor::vm_memory::GuestAddress(0x30_0000)).ok(), Some(0xc3));
}

#[test]
fn divide_error_and_breakpoint_handlers() {
    let mut g = Guest::new();
    g.long_mode();
    g.set_gate64(0, CODE + 0x1000, 0, 0);
    g.set_gate64(3, CODE + 0x1100, 0, 0);
    g.asm(64, CODE, |a| {
        a.int3().unwrap();
        a.mov(eax, 7u32).unwrap();
        a.xor(ecx, ecx).unwrap();
        a.div(ecx).unwrap();
        a.hlt().unwrap();
    });
    g.asm(64, CODE + 0x1000, |a| {
        a.mov(rax, qword_ptr(rsp)).unwrap(); // RIP of the DIV
        out(a, 0xf1);
        done(a);
    });
    g.asm(64, CODE + 0x1100, |a| {
        a.mov(rax, qword_ptr(rsp)).unwrap(); // RIP after INT3
        out(a, 0xf2);
        a.iretq().unwrap();
    });
    assert_eq!(g.run(), StopReason::Kicked);
    assert_eq!(g.port_writes(0xf2), vec![CODE + 1]);
    assert_eq!(g.port_writes(0xf1), vec![CODE + 1 + 5 + 2]);
}

#[test]
fn missing_idt_triple_faults() {
    let mut g = Guest::new();
    g.long_mode();
    g.cpu().idtr.limit = 0;
    g.asm(64, CODE, |a| {
        a.ud2().unwrap();
    });
    assert_eq!(g.run(), StopReason::Shutdown);
}

#[test]
fn syscall_sysret_and_user_mode() {
    let mut g = Guest::new();
    g.long_mode();
    let user = CODE + 0x2000;
    let entry = CODE + 0x3000;
    {
        let c = g.cpu();
        c.msr.set(vmr_emu::msr::IA32_STAR, ((0x18u64 | 3) << 48) | ((KERNEL_CS as u64) << 32));
        c.msr.set(vmr_emu::msr::IA32_LSTAR, entry);
        c.msr.set(vmr_emu::msr::IA32_FMASK, 0x200);
    }
    // User pages: the first 2 MiB page becomes user-accessible.
    g.write_u64(PML4, 0x2000 | 7);
    g.write_u64(0x2000, 0x3000 | 7);
    g.write_u64(0x3000, 0x87);
    // #GP handler for the privileged instruction in user mode.
    g.set_gate64(13, CODE + 0x1000, 0, 0);
    g.asm(64, CODE, |a| {
        a.mov(rcx, user).unwrap();
        a.mov(r11, 0x202u64).unwrap();
        a.sysretq().unwrap();
    });
    g.asm(64, user, |a| {
        a.mov(eax, 42u32).unwrap();
        a.syscall().unwrap();
        a.cli().unwrap(); // CPL 3 > IOPL 0: #GP
    });
    g.asm(64, entry, |a| {
        // CPL 0 again: report CS, the saved RIP and RFLAGS, then return to user.
        a.mov(eax, cs).unwrap();
        out(a, 0xf1);
        a.mov(rax, rcx).unwrap();
        out(a, 0xf2);
        a.mov(rax, r11).unwrap();
        out(a, 0xf3);
        a.sysretq().unwrap();
    });
    g.asm(64, CODE + 0x1000, |a| {
        a.pop(rax).unwrap();
        out(a, 0xf7);
        a.mov(rax, qword_ptr(rsp + 8)).unwrap(); // CS of the faulting code
        out(a, 0xf5);
        a.mov(rax, rsp).unwrap();
        out(a, 0xf6);
        done(a);
    });
    assert_eq!(g.run(), StopReason::Kicked);
    assert_eq!(g.port_writes(0xf1), vec![KERNEL_CS as u64]);
    assert_eq!(g.port_writes(0xf2), vec![user + 7]);
    assert_eq!(g.port_writes(0xf3), vec![0x202]);
    assert_eq!(g.port_writes(0xf7), vec![0]);
    assert_eq!(g.port_writes(0xf5), vec![0x2b]);
    // Privilege change: the handler ran on RSP0 from the TSS (0x7000), 16-byte aligned,
    // after popping the error code: 0x7000 - 6*8 + 8.
    assert_eq!(g.port_writes(0xf6), vec![0x7000 - 48 + 8]);
}

#[test]
fn ist_stack_is_used() {
    let mut g = Guest::new();
    g.long_mode();
    g.set_gate64(6, CODE + 0x1000, 1, 0);
    g.asm(64, CODE, |a| {
        a.ud2().unwrap();
    });
    g.asm(64, CODE + 0x1000, |a| {
        a.mov(rax, rsp).unwrap();
        out(a, 0xf1);
        done(a);
    });
    assert_eq!(g.run(), StopReason::Kicked);
    assert_eq!(g.port_writes(0xf1), vec![0x6000 - 40]);
}

#[test]
fn self_modifying_code_is_seen() {
    let mut g = Guest::new();
    g.long_mode();
    let target = CODE + 0x100;
    g.asm(64, target, |a| {
        a.mov(eax, 1u32).unwrap();
        a.ret().unwrap();
    });
    g.asm(64, CODE, |a| {
        a.mov(rbx, target).unwrap();
        a.call(rbx).unwrap();
        out(a, 0xf1);
        // Patch the immediate of `mov eax, 1` to 2 and call again.
        a.mov(byte_ptr(rbx + 1), 2u32).unwrap();
        a.call(rbx).unwrap();
        out(a, 0xf1);
        done(a);
    });
    assert_eq!(g.run(), StopReason::Kicked);
    assert_eq!(g.port_writes(0xf1), vec![1, 2]);
}

#[test]
fn rep_string_ops() {
    let mut g = Guest::new();
    g.long_mode();
    let src = 0x20_0000u64;
    let dst = 0x30_0000u64;
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    g.write(src, &bytes);
    g.asm(64, CODE, |a| {
        a.mov(rsi, src).unwrap();
        a.mov(rdi, dst).unwrap();
        a.mov(ecx, 100_000u32).unwrap();
        a.rep().movsb().unwrap();
        // Compare: repe cmpsb over the copies must run to the end.
        a.mov(rsi, src).unwrap();
        a.mov(rdi, dst).unwrap();
        a.mov(ecx, 100_000u32).unwrap();
        a.repe().cmpsb().unwrap();
        a.mov(eax, ecx).unwrap();
        out(a, 0xf1);
        // Scan for the byte value 250 from the start.
        a.mov(rdi, dst).unwrap();
        a.mov(ecx, 1000u32).unwrap();
        a.mov(al, 250u32).unwrap();
        a.repne().scasb().unwrap();
        a.mov(rax, rdi).unwrap();
        out(a, 0xf2);
        done(a);
    });
    assert_eq!(g.run(), StopReason::Kicked);
    let mut copy = vec![0u8; 100_000];
    g.mem.read_slice(&mut copy, vmr_hypervisor::vm_memory::GuestAddress(dst)).unwrap();
    let bad = copy.iter().zip(&bytes).position(|(a, b)| a != b);
    let nbad = copy.iter().zip(&bytes).filter(|(a, b)| a != b).count();
    assert_eq!(bad, None, "first mismatch ({nbad} in all) {:?} vs {:?}", &copy[210..230], &bytes[210..230]);
    assert_eq!(g.port_writes(0xf1), vec![0]);
    let first = bytes.iter().position(|&b| b == 250).unwrap() as u64;
    assert_eq!(g.port_writes(0xf2), vec![dst + first + 1]);
}

use vmr_hypervisor::vm_memory::Bytes;

/// REP MOVS/STOS in 64-bit mode go a page at a time; each case here needs the element-by-
/// element semantics somewhere: elements straddling pages, a forward copy onto an overlapping
/// destination (which replicates the pattern, unlike memmove), a copy over cached code (which
/// must run as copied), and a fault in the middle (RCX/RDI count what was done, CR2 is the
/// first byte not written).
#[test]
fn rep_movs_stos_page_at_a_time_keep_element_semantics() {
    let mut g = Guest::new();
    g.long_mode();
    // 0x4000_0000 -> 0x39_0000 (4 KiB page, writable); 0x4000_1000 not present.
    g.write_u64(0x2000 + 8, 0x38_0000 | 3);
    g.write_u64(0x38_0000, 0x38_1000 | 3);
    g.write_u64(0x38_1000, 0x39_0000 | 3);
    let handler = CODE + 0x2000;
    g.set_gate64(14, handler, 0, 0);
    let func = CODE + 0x1000;
    let new_func = 0x22_0000u64;
    g.asm(64, func, |a| {
        a.mov(eax, 1u32).unwrap();
        a.ret().unwrap();
    });
    let len = g.asm(64, new_func, |a| {
        a.mov(eax, 2u32).unwrap();
        a.ret().unwrap();
    });
    let src = 0x20_0000u64;
    let bytes: Vec<u8> = (0..40_000u32).map(|i| (i * 13 % 251) as u8).collect();
    g.write(src, &bytes);
    g.asm(64, CODE, |a| {
        // 1000 qwords from an address 4 bytes short of a page end.
        a.mov(rdi, 0x30_0ffcu64).unwrap();
        a.mov(rax, 0x1122_3344_5566_7788u64).unwrap();
        a.mov(ecx, 1000u32).unwrap();
        a.rep().stosq().unwrap();
        // 40000 bytes onto a destination 3 bytes ahead of the source.
        a.mov(rsi, src).unwrap();
        a.lea(rdi, qword_ptr(rsi + 3)).unwrap();
        a.mov(ecx, 40_000u32).unwrap();
        a.rep().movsb().unwrap();
        // Run `func`, copy new code over it, run it again.
        a.mov(rbx, func).unwrap();
        a.call(rbx).unwrap();
        out(a, 0xf0);
        a.mov(rsi, new_func).unwrap();
        a.mov(rdi, func).unwrap();
        a.mov(ecx, len as u32).unwrap();
        a.rep().movsb().unwrap();
        a.call(rbx).unwrap();
        out(a, 0xf0);
        // 20 bytes from 10 bytes short of the unmapped page.
        a.mov(rdi, 0x4000_0ff6u64).unwrap();
        a.mov(eax, 0x5au32).unwrap();
        a.mov(ecx, 20u32).unwrap();
        a.rep().stosb().unwrap();
        a.hlt().unwrap();
    });
    g.asm(64, handler, |a| {
        a.mov(rax, rcx).unwrap();
        out(a, 0xf1);
        a.mov(rax, rdi).unwrap();
        out(a, 0xf2);
        a.mov(rax, cr2).unwrap();
        out(a, 0xf3);
        done(a);
    });
    assert_eq!(g.run(), StopReason::Kicked);
    let mut got = vec![0u8; 8000];
    g.mem.read_slice(&mut got, vmr_hypervisor::vm_memory::GuestAddress(0x30_0ffc)).unwrap();
    let want: Vec<u8> = (0..1000).flat_map(|_| 0x1122_3344_5566_7788u64.to_le_bytes()).collect();
    assert!(got == want, "rep stosq across pages");
    let mut model = bytes.clone();
    model.resize(40_003, 0);
    for i in 0..40_000 {
        model[i + 3] = model[i];
    }
    let mut got = vec![0u8; 40_003];
    g.mem.read_slice(&mut got, vmr_hypervisor::vm_memory::GuestAddress(src)).unwrap();
    assert!(got == model, "overlapping forward rep movsb replicates element by element");
    assert_eq!(g.port_writes(0xf0), vec![1, 2], "code copied by rep movsb runs");
    assert_eq!(g.port_writes(0xf1), vec![10], "RCX after the fault");
    assert_eq!(g.port_writes(0xf2), vec![0x4000_1000], "RDI after the fault");
    assert_eq!(g.port_writes(0xf3), vec![0x4000_1000], "CR2");
    let mut tail = [0u8; 10];
    g.mem.read_slice(&mut tail, vmr_hypervisor::vm_memory::GuestAddress(0x39_0ff6)).unwrap();
    assert_eq!(tail, [0x5a; 10]);
}

#[test]
fn real_mode_ivt_and_segments() {
    let mut g = Guest::new();
    // IVT entry 0x10 -> 0x2000:0x0000.
    g.write(0x40, &[0x00, 0x00, 0x00, 0x20]);
    g.asm(16, 0x20000, |a| {
        a.mov(ax, 0xbeefu32).unwrap();
        a.iret().unwrap();
    });
    g.asm(16, 0x10000, |a| {
        a.mov(ax, 0x3000u32).unwrap();
        a.mov(ds, ax).unwrap();
        a.mov(word_ptr(0x10), 0x1234u32).unwrap(); // linear 0x30010
        a.int(0x10).unwrap();
        a.mov(dx, 0xf1u32).unwrap();
        a.out(dx, ax).unwrap();
        a.mov(ax, word_ptr(0x10)).unwrap();
        a.out(dx, ax).unwrap();
        a.mov(dx, DONE_PORT as u32).unwrap();
        a.out(dx, al).unwrap();
    });
    g.real_mode(0x1000, 0);
    assert_eq!(g.run(), StopReason::Kicked);
    assert_eq!(g.port_writes(0xf1), vec![0xbeef, 0x1234]);
    assert_eq!(g.read_u64(0x30010) & 0xffff, 0x1234);
}

#[test]
fn real_to_protected_to_long_mode() {
    let mut g = Guest::new();
    g.long_mode(); // builds GDT and page tables; the CPU is reset below
    g.engine.cpu = vmr_emu::cpu::Cpu::new(vmr_emu::mem::Memory::new(&g.mem, Some(g.ops.clone())).unwrap(), 0);
    // GDTR image at 0x600: limit, base.
    g.write(0x600, &[0x3f, 0x00]);
    g.write(0x602, &(GDT as u32).to_le_bytes());
    let pm32 = 0x11000u64;
    let lm64 = 0x12000u64;
    g.asm(16, 0x10000, |a| {
        a.cli().unwrap();
        a.lgdt(dword_ptr(0x600)).unwrap();
        a.mov(eax, cr0).unwrap();
        a.or(eax, 1u32).unwrap();
        a.mov(cr0, eax).unwrap();
        a.db(&[0x66, 0xea]).unwrap(); // jmp far dword 0x18:pm32
        a.dd(&[pm32 as u32]).unwrap();
        a.dw(&[CODE32]).unwrap();
    });
    g.asm(32, pm32, |a| {
        a.mov(eax, KERNEL_DS as u32).unwrap();
        a.mov(ds, ax).unwrap();
        a.mov(ss, ax).unwrap();
        a.mov(esp, 0x9000u32).unwrap();
        a.mov(eax, cr4).unwrap();
        a.or(eax, 0x20u32).unwrap(); // PAE
        a.mov(cr4, eax).unwrap();
        a.mov(eax, PML4 as u32).unwrap();
        a.mov(cr3, eax).unwrap();
        a.mov(ecx, 0xc000_0080u32).unwrap();
        a.rdmsr().unwrap();
        a.or(eax, 0x100u32).unwrap(); // LME
        a.wrmsr().unwrap();
        a.mov(eax, cr0).unwrap();
        a.or(eax, 0x8000_0000u32).unwrap();
        a.mov(cr0, eax).unwrap();
        a.db(&[0xea]).unwrap(); // jmp far 0x08:lm64
        a.dd(&[lm64 as u32]).unwrap();
        a.dw(&[KERNEL_CS]).unwrap();
    });
    g.asm(64, lm64, |a| {
        a.mov(rax, 0x1234_5678_9abc_def0u64).unwrap();
        a.mov(ecx, 0xc000_0080u32).unwrap();
        a.rdmsr().unwrap();
        out(a, 0xf1);
        a.mov(rax, 0x1234_5678_9abc_def0u64).unwrap();
        a.mov(edx, 0xf2u32).unwrap();
        a.shr(rax, 32).unwrap();
        a.out(dx, eax).unwrap();
        done(a);
    });
    g.real_mode(0x1000, 0);
    assert_eq!(g.run(), StopReason::Kicked);
    assert_eq!(g.port_writes(0xf1), vec![0x500]); // LME | LMA
    assert_eq!(g.port_writes(0xf2), vec![0x1234_5678]);
    assert_eq!(g.engine.cpu.bitness, 64);
}

/// An interrupt controller stand-in: a queue of vectors.
struct Queue(std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<u8>>>);

impl vmr_emu::engine::InterruptSource for Queue {
    fn pending(&self) -> bool {
        !self.0.lock().unwrap().is_empty()
    }
    fn acknowledge(&mut self) -> Option<u8> {
        self.0.lock().unwrap().pop_front()
    }
}

#[test]
fn external_interrupt_wakes_hlt_and_respects_if() {
    let mut g = Guest::new();
    g.long_mode();
    let q = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    g.engine.irq = Some(Box::new(Queue(q.clone())));
    g.set_gate64(0x30, CODE + 0x1000, 0, 0);
    g.asm(64, CODE, |a| {
        a.sti().unwrap();
        a.hlt().unwrap();
        a.mov(eax, 2u32).unwrap();
        out(a, 0xf2);
        a.cli().unwrap();
        a.hlt().unwrap();
        a.mov(eax, 3u32).unwrap();
        out(a, 0xf2);
        done(a);
    });
    g.asm(64, CODE + 0x1000, |a| {
        a.mov(rax, qword_ptr(rsp)).unwrap(); // return RIP: after the HLT
        out(a, 0xf1);
        a.iretq().unwrap();
    });
    assert_eq!(g.run(), StopReason::Halt);
    assert_eq!(g.engine.cpu.rip, CODE + 2);
    q.lock().unwrap().push_back(0x30);
    assert_eq!(g.run(), StopReason::Halt, "second HLT with IF=0");
    assert_eq!(g.port_writes(0xf1), vec![CODE + 2]);
    assert_eq!(g.port_writes(0xf2), vec![2]);
    // With IF clear a pending interrupt does not wake the CPU; the VMM resumes it.
    q.lock().unwrap().push_back(0x30);
    assert_eq!(g.run(), StopReason::Halt);
    assert_eq!(g.port_writes(0xf1).len(), 1);
    g.engine.cpu.halted = false;
    assert_eq!(g.run(), StopReason::Kicked);
    assert_eq!(g.port_writes(0xf2), vec![2, 3]);
}

#[test]
fn lar_lsl_verr_verw() {
    let mut g = Guest::new();
    g.long_mode();
    g.asm(64, CODE, |a| {
        a.mov(ecx, KERNEL_DS as u32).unwrap();
        a.verw(cx).unwrap(); // writable data: ZF=1
        a.setz(al).unwrap();
        a.movzx(eax, al).unwrap();
        out(a, 0xf1);
        a.mov(ecx, KERNEL_CS as u32).unwrap();
        a.verw(cx).unwrap(); // code: not writable
        a.setz(al).unwrap();
        a.movzx(eax, al).unwrap();
        out(a, 0xf1);
        a.verr(cx).unwrap(); // readable code
        a.setz(al).unwrap();
        a.movzx(eax, al).unwrap();
        out(a, 0xf1);
        a.lsl(eax, ecx).unwrap();
        out(a, 0xf2);
        a.mov(ecx, TSS_SEL as u32).unwrap();
        a.lar(eax, ecx).unwrap();
        out(a, 0xf3);
        a.mov(ecx, 0x1000u32).unwrap(); // beyond the GDT limit: ZF=0, no fault
        a.mov(eax, 0x55u32).unwrap();
        a.lsl(eax, ecx).unwrap();
        out(a, 0xf4 + 0x10);
        done(a);
    });
    assert_eq!(g.run(), StopReason::Kicked);
    assert_eq!(g.port_writes(0xf1), vec![1, 0, 1]);
    assert_eq!(g.port_writes(0xf2), vec![0xffff_ffff]);
    assert_eq!(g.port_writes(0xf3), vec![0x8900]); // available 64-bit TSS, present
    assert_eq!(g.port_writes(0x104), vec![0x55]);
}

#[test]
fn code_written_behind_the_cpu_is_redecoded() {
    let mut g = Guest::new();
    g.long_mode();
    g.asm(64, CODE, |a| {
        a.mov(eax, 1u32).unwrap();
        out(a, 0xf1);
        a.hlt().unwrap();
    });
    assert_eq!(g.run(), StopReason::Halt);
    // Rewrite the code through guest memory directly (as DMA would), without notify_write.
    g.asm(64, CODE, |a| {
        a.mov(eax, 2u32).unwrap();
        out(a, 0xf1);
        a.hlt().unwrap();
    });
    g.engine.cpu.rip = CODE;
    g.engine.cpu.halted = false;
    assert_eq!(g.run(), StopReason::Halt);
    assert_eq!(g.port_writes(0xf1), vec![1, 2]);
}

/// A device rewrites code the CPU is running (as DMA would, without telling the CPU); after a
/// serializing instruction the new code runs, within the same run of the engine.
#[test]
fn code_a_device_rewrites_runs_after_a_serializing_instruction() {
    let mut g = Guest::new();
    g.long_mode();
    let f = CODE + 0x800;
    let f_new = {
        let mut a = CodeAssembler::new(64).unwrap();
        a.mov(eax, 2u32).unwrap();
        a.ret().unwrap();
        a.assemble(f).unwrap()
    };
    g.asm(64, f, |a| {
        a.mov(eax, 1u32).unwrap();
        a.ret().unwrap();
    });
    g.asm(64, CODE, |a| {
        a.mov(rsi, f).unwrap();
        // Run F often enough that its block is cached and hot.
        a.mov(ecx, 100u32).unwrap();
        let mut top = a.create_label();
        a.set_label(&mut top).unwrap();
        a.call(rsi).unwrap();
        a.dec(ecx).unwrap();
        a.jne(top).unwrap();
        out(a, 0xf1);
        // The "device" rewrites F now.
        out(a, 0xf5);
        a.xor(eax, eax).unwrap();
        a.cpuid().unwrap();
        a.call(rsi).unwrap();
        out(a, 0xf1);
        a.hlt().unwrap();
    });
    *g.ops.dma.lock().unwrap() = Some((0xf5, f, f_new));
    assert_eq!(g.run(), StopReason::Halt);
    assert_eq!(g.port_writes(0xf1), vec![1, 2]);
}

#[test]
fn fpu_control_state_and_fxsave_round_trip() {
    let mut g = Guest::new();
    g.long_mode();
    g.cpu().cr4 |= vmr_emu::cpu::CR4_OSFXSR;
    let area = 0x40000u64;
    g.asm(64, CODE, |a| {
        a.mov(rbx, area).unwrap();
        a.fninit().unwrap();
        a.fnstcw(word_ptr(rbx + 0x400)).unwrap();
        a.mov(word_ptr(rbx + 0x402), 0x27fu32).unwrap();
        a.fldcw(word_ptr(rbx + 0x402)).unwrap();
        a.mov(dword_ptr(rbx + 0x404), 0x1fa0u32).unwrap();
        a.ldmxcsr(dword_ptr(rbx + 0x404)).unwrap();
        a.fxsave64(ptr(rbx)).unwrap();
        // Restore from a copy with a different MXCSR.
        a.mov(dword_ptr(rbx + 24), 0x1f80u32).unwrap();
        a.fxrstor64(ptr(rbx)).unwrap();
        a.stmxcsr(dword_ptr(rbx + 0x408)).unwrap();
        a.fnstsw(ax).unwrap();
        // A reserved MXCSR bit faults (#GP, vector 13).
        a.mov(dword_ptr(rbx + 0x40c), 0x10000u32).unwrap();
        a.ldmxcsr(dword_ptr(rbx + 0x40c)).unwrap();
        a.hlt().unwrap();
    });
    g.set_gate64(13, CODE + 0x1000, 0, 0);
    g.asm(64, CODE + 0x1000, |a| {
        done(a);
    });
    assert_eq!(g.run(), StopReason::Kicked);
    assert_eq!(g.read_u64(area + 0x400) & 0xffff, 0x37f);
    assert_eq!(g.read_u64(area) & 0xffff, 0x27f, "FCW in the FXSAVE image");
    assert_eq!(g.read_u64(area + 24) & 0xffff_ffff, 0x1f80);
    assert_eq!(g.read_u64(area + 28) & 0xffff_ffff, 0xffbf, "MXCSR_MASK");
    assert_eq!(g.read_u64(area + 0x408) & 0xffff_ffff, 0x1f80);
    assert_eq!(g.engine.cpu.fpu.fcw, 0x27f);
    // With CR0.TS set, FXSAVE raises #NM.
    let mut g = Guest::new();
    g.long_mode();
    g.cpu().cr0 |= vmr_emu::cpu::CR0_TS;
    g.set_gate64(7, CODE + 0x1000, 0, 0);
    g.asm(64, CODE, |a| {
        a.mov(rbx, area).unwrap();
        a.fxsave64(ptr(rbx)).unwrap();
        a.hlt().unwrap();
    });
    g.asm(64, CODE + 0x1000, done);
    assert_eq!(g.run(), StopReason::Kicked);
}

#[test]
fn descriptor_table_loads_at_the_top_of_the_address_space_fault_cleanly() {
    let mut g = Guest::new();
    g.long_mode();
    g.set_gate64(14, CODE + 0x1000, 0, 0);
    g.asm(64, CODE, |a| {
        a.mov(rax, -2i64).unwrap();
        a.lgdt(ptr(rax)).unwrap();
        a.hlt().unwrap();
    });
    g.asm(64, CODE + 0x1000, |a| {
        a.mov(rax, cr2).unwrap();
        out(a, 0xf1);
        done(a);
    });
    assert_eq!(g.run(), StopReason::Kicked);
    assert_eq!(g.port_writes(0xf1), vec![0xffff_fffe]); // low half of CR2 (OUT writes EAX)
}

#[test]
fn rep_outsb_and_insb_move_bytes() {
    let mut g = Guest::new();
    // Real mode: print with lodsb/out, then rep outsb, then rep insb 8 bytes from port 0x80.
    let code: &[u8] = &[
        0xfc, 0xba, 0xf8, 0x03, 0xbe, 0x00, 0x11, 0xb9, 0x0e, 0x00, 0xac, 0xee, 0xe2, 0xfc, 0xbe, 0x00, 0x11,
        0xb9, 0x0e, 0x00, 0xf3, 0x6e, 0xbf, 0x00, 0x12, 0xb9, 0x08, 0x00, 0xba, 0x80, 0x00, 0xf3, 0x6c, 0xb0,
        0x00, 0xe6, 0xf4, 0xf4,
    ];
    g.write(0x1000, code);
    g.write(0x1100, b"Hello from vmr");
    g.real_mode(0, 0x1000);
    assert_eq!(g.run(), StopReason::Kicked);
    let text: Vec<u8> = g.port_writes(0x3f8).iter().map(|v| *v as u8).collect();
    assert_eq!(&text, b"Hello from vmrHello from vmr");
    assert_eq!(g.read_u64(0x1200), 0x5a5a_5a5a_5a5a_5a5a);
    assert_eq!(g.engine.cpu.gpr[7] & 0xffff, 0x1208);
}

#[test]
fn enter_and_leave_use_the_64_bit_stack_size() {
    let mut g = Guest::new();
    g.long_mode();
    g.asm(64, CODE, |a| {
        a.mov(rbp, 0x1111_2222_3333_4444u64).unwrap();
        a.mov(rbx, rsp).unwrap();
        a.push(rbp).unwrap();
        a.mov(rbp, rsp).unwrap();
        a.sub(rsp, 0x20).unwrap();
        a.leave().unwrap();
        // RSP is back where it was and RBP holds all 64 bits again.
        a.mov(rax, rsp).unwrap();
        a.sub(rax, rbx).unwrap();
        out(a, 0xf0);
        a.mov(rax, rbp).unwrap();
        out(a, 0xf1);
        a.shr(rax, 32).unwrap();
        out(a, 0xf2);
        a.enter(0x10, 0).unwrap();
        a.mov(rax, rbx).unwrap();
        a.sub(rax, rsp).unwrap(); // 8 (saved RBP) + 0x10
        out(a, 0xf3);
        a.leave().unwrap();
        a.mov(rax, rsp).unwrap();
        a.sub(rax, rbx).unwrap();
        out(a, 0xf4);
        done(a);
    });
    assert_eq!(g.run(), StopReason::Kicked);
    assert_eq!(g.port_writes(0xf0), vec![0]);
    assert_eq!(g.port_writes(0xf1), vec![0x3333_4444]);
    assert_eq!(g.port_writes(0xf2), vec![0x1111_2222]);
    assert_eq!(g.port_writes(0xf3), vec![0x18]);
    assert_eq!(g.port_writes(0xf4), vec![0]);
}
