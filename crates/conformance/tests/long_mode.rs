//! A 64-bit guest entered directly through SpecialRegs (paging, EFER.LMA, CS.L): 64-bit
//! arithmetic in a loop, memory and stack accesses, SSE, port output of the result.

use std::time::Duration;

use vmr_conformance::guests::{LONG_MODE_SUM, LONG_MODE_SUM_RESULT};
use vmr_conformance::{
    for_each_backend_needing, machine, Access, Needs, Outcome, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME,
    PML4_ADDR, STACK_TOP,
};
use vmr_hypervisor::vm_memory::{Bytes, GuestAddress};

const CODE: u64 = 0x4000;

#[test]
fn long_mode_loop_sum() {
    for_each_backend_needing("long_mode_loop_sum", &[Needs::Sse], |hv| {
        let mut m = machine(hv);
        m.load(CODE, LONG_MODE_SUM).unwrap();
        m.long_mode(CODE).unwrap();
        // State set from outside must be what the guest sees: xmm3 is stored to 0x7100.
        let mut fpu = m.vcpu.fpu().unwrap();
        fpu.xmm[3] = *b"xmm3 from host!!";
        m.vcpu.set_fpu(&fpu).unwrap();

        let sregs = m.vcpu.sregs().unwrap();
        assert!(sregs.cs.l);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_ne!(sregs.cr0 & CR0_PG, 0);
        assert_ne!(sregs.cr4 & CR4_PAE, 0);
        assert_eq!(sregs.cr3, PML4_ADDR);

        let expected = LONG_MODE_SUM_RESULT;
        assert_eq!(expected, 0x3e8_0007_a314);
        assert_eq!(m.run(Duration::from_secs(20)), Outcome::Done(0x14));

        let regs = m.vcpu.regs().unwrap();
        assert_eq!(regs.rax, expected);
        assert_eq!(regs.r9, expected);
        assert_eq!(regs.r8, expected >> 32);
        assert_eq!(regs.rcx, 0);
        assert_eq!(regs.rbx, 1 << 32);
        assert_eq!(regs.rdx, 0xf0);
        assert_eq!(regs.r10, STACK_TOP, "push/pop balanced");
        assert_eq!(regs.rsp, STACK_TOP);
        assert_eq!(regs.rip, CODE + 0x54);
        assert_eq!(m.read_u64(0x7000).unwrap(), expected);
        // The stack slot push used.
        assert_eq!(m.read_u64(STACK_TOP - 8).unwrap(), expected);
        let fpu = m.vcpu.fpu().unwrap();
        assert_eq!(fpu.xmm[2][..8], expected.to_le_bytes());
        assert_eq!(fpu.xmm[2][8..], [0; 8]);
        assert_eq!(fpu.xmm[3], *b"xmm3 from host!!");
        let mut stored = [0u8; 16];
        m.memory.read_slice(&mut stored, GuestAddress(0x7100)).unwrap();
        assert_eq!(&stored, b"xmm3 from host!!");

        assert_eq!(
            m.ops.accesses(),
            vec![
                Access::PioWrite { port: 0xf0, data: (expected as u32).to_le_bytes().to_vec() },
                Access::PioWrite { port: 0xf0, data: ((expected >> 32) as u32).to_le_bytes().to_vec() },
            ]
        );
    });
}
