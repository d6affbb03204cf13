//! Register state: what is set reads back equal, and a guest sees and changes it.

use std::time::Duration;

use vmr_conformance::guests::{CODE_ADDR, REAL_MODE_REGS};
use vmr_conformance::{flat_segment, for_each_backend, machine, Outcome, CODE32_SELECTOR, DATA_SELECTOR};
use vmr_hypervisor::{DescriptorTable, FpuState, MsrEntry, Regs};

fn sample_regs() -> Regs {
    Regs {
        rax: 0x1000_0001,
        rbx: 0x2000_0002,
        rcx: 0x0123_4567_89ab_cdef,
        rdx: 0x2222_2222,
        rsi: 0x1111_1111,
        rdi: 0x0f0f_0f0f,
        rsp: 0x7ff0,
        rbp: 0x7fff,
        r8: 0x8888_8888_8888_8888,
        r9: 9,
        r10: 10,
        r11: 11,
        r12: 12,
        r13: 13,
        r14: 14,
        r15: 0xffff_ffff_ffff_fff5,
        rip: CODE_ADDR,
        rflags: 0x2,
    }
}

#[test]
fn regs_read_back_equal() {
    for_each_backend("regs_read_back_equal", |hv| {
        let mut m = machine(hv);
        // OF SF ZF AF PF CF and the reserved bit: all settable, none changes execution.
        let regs = Regs { rflags: 0x8d7, ..sample_regs() };
        m.vcpu.set_regs(&regs).unwrap();
        assert_eq!(m.vcpu.regs().unwrap(), regs);
    });
}

#[test]
fn sregs_read_back_equal() {
    for_each_backend("sregs_read_back_equal", |hv| {
        let mut m = machine(hv);
        let mut sregs = m.vcpu.sregs().unwrap();
        sregs.cs = flat_segment(CODE32_SELECTOR, 0xb, false);
        let data = flat_segment(DATA_SELECTOR, 0x3, false);
        (sregs.ds, sregs.es, sregs.ss) = (data, data, data);
        sregs.fs = vmr_hypervisor::Segment { base: 0x1234_5000, ..data };
        sregs.gs = vmr_hypervisor::Segment { base: 0x5678_9000, ..data };
        sregs.gdt = DescriptorTable { base: 0x500, limit: 0x1f };
        sregs.idt = DescriptorTable { base: 0x600, limit: 0x7ff };
        sregs.cr0 = 0x11; // PE | ET
        sregs.cr2 = 0xdead_b000;
        sregs.cr3 = 0x9000;
        m.vcpu.set_sregs(&sregs).unwrap();
        assert_eq!(m.vcpu.sregs().unwrap(), sregs);
    });
}

#[test]
fn fpu_read_back_equal() {
    for_each_backend("fpu_read_back_equal", |hv| {
        let mut m = machine(hv);
        let mut fpu = FpuState { fcw: 0x27f, mxcsr: 0x9fa0, ..Default::default() };
        for (i, xmm) in fpu.xmm.iter_mut().enumerate() {
            *xmm = [0x11u8.wrapping_mul(i as u8 + 1); 16];
            xmm[0] = i as u8;
        }
        // 1.0 as an 80-bit extended value in ST0.
        fpu.fpr[0][..10].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x3f]);
        fpu.fsw = 0x3800; // TOP = 7
        fpu.ftwx = 0x80; // ST0 (physical register 7) valid
        fpu.last_opcode = 0x1d9;
        fpu.last_ip = 0x1234;
        fpu.last_dp = 0x5678;
        assert_ne!(m.vcpu.fpu().unwrap(), fpu, "the test must change the state");
        m.vcpu.set_fpu(&fpu).unwrap();
        let back = m.vcpu.fpu().unwrap();
        assert_eq!(back, fpu);
    });
}

#[test]
fn msrs_read_back_equal() {
    for_each_backend("msrs_read_back_equal", |hv| {
        let mut m = machine(hv);
        let msrs = [
            MsrEntry { index: 0x174, data: 0x10 }, // IA32_SYSENTER_CS
            // 32-bit values: AMD CPUs (and KVM for an AMD guest) keep only the low half.
            MsrEntry { index: 0x175, data: 0x8000_1000 }, // IA32_SYSENTER_ESP
            MsrEntry { index: 0x176, data: 0x8100_2000 }, // IA32_SYSENTER_EIP
            MsrEntry { index: 0x277, data: 0x0007_0106_0007_0106 }, // IA32_PAT
            MsrEntry { index: 0xc000_0081, data: 0x0023_0010_0000_0000 }, // STAR
            MsrEntry { index: 0xc000_0082, data: 0xffff_ffff_8100_0000 }, // LSTAR
            MsrEntry { index: 0xc000_0084, data: 0x4_7700 }, // SFMASK
            MsrEntry { index: 0xc000_0102, data: 0xffff_8880_1234_0000 }, // KERNEL_GS_BASE
        ];
        m.vcpu.set_msrs(&msrs).unwrap();
        let indices: Vec<u32> = msrs.iter().map(|e| e.index).collect();
        assert_eq!(m.vcpu.msrs(&indices).unwrap(), msrs);
        // An MSR no x86 CPU has is an error, not a zero.
        assert!(m.vcpu.msrs(&[0x1234_5678]).is_err());
    });
}

#[test]
fn guest_sees_and_changes_registers() {
    for_each_backend("guest_sees_and_changes_registers", |hv| {
        let mut m = machine(hv);
        m.load(CODE_ADDR, REAL_MODE_REGS).unwrap();
        m.real_mode(CODE_ADDR as u16).unwrap();
        let before = sample_regs();
        m.vcpu.set_regs(&before).unwrap();
        let fpu = FpuState { xmm: [[0x5a; 16]; 16], mxcsr: 0x1f80, ..Default::default() };
        m.vcpu.set_fpu(&fpu).unwrap();

        assert_eq!(m.run(Duration::from_secs(10)), Outcome::Done(0x03));

        let after = m.vcpu.regs().unwrap();
        let expected = Regs {
            rax: 0x3000_0003, // add eax, ebx
            rdi: 0xf0f0_f0f0, // not edi
            rbp: 0x8000,      // inc bp
            rsi: 0x2222_2222, // xchg esi, edx
            rdx: 0x1111_1111,
            rip: CODE_ADDR + 0xd,
            // inc 0x7fff: OF SF AF PF; then stc: CF; plus the reserved bit.
            rflags: 0x800 | 0x80 | 0x10 | 0x4 | 0x1 | 0x2,
            ..before
        };
        assert_eq!(after, expected);
        assert_eq!(m.vcpu.fpu().unwrap().xmm, fpu.xmm, "the guest did not touch SSE state");
    });
}
