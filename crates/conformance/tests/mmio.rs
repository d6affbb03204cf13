//! MMIO dispatch: accesses to guest-physical addresses without RAM reach the VmOps with the
//! right address, width and data, and read answers land in guest registers and memory.

use std::time::Duration;

use vmr_conformance::guests::{CODE_ADDR, PROTECTED_MMIO};
use vmr_conformance::{for_each_backend, machine, Access, Outcome};

#[test]
fn mmio_reads_and_writes_reach_vmops() {
    for_each_backend("mmio_reads_and_writes_reach_vmops", |hv| {
        let mut m = machine(hv);
        m.load(CODE_ADDR, PROTECTED_MMIO).unwrap();
        m.protected_mode(CODE_ADDR as u32).unwrap();
        m.ops.answer_mmio(0xd000_0100, 0xcafe_f00d);
        m.ops.answer_mmio(0xd000_0200, 0x1234);
        m.ops.answer_mmio(0xd000_0300, 0x77);

        assert_eq!(m.run(Duration::from_secs(10)), Outcome::Done(0x0d));

        assert_eq!(
            m.ops.accesses(),
            vec![
                Access::MmioWrite { addr: 0xd000_0000, data: vec![0x78, 0x56, 0x34, 0x12] },
                Access::MmioWrite { addr: 0xd000_0010, data: vec![0xab] },
                Access::MmioWrite { addr: 0xd000_0020, data: vec![0xef, 0xbe] },
                Access::MmioRead { addr: 0xd000_0100, data: vec![0x0d, 0xf0, 0xfe, 0xca] },
                Access::MmioRead { addr: 0xd000_0200, data: vec![0x34, 0x12] },
                Access::MmioRead { addr: 0xd000_0300, data: vec![0x77] },
                // Nothing answers here: an open bus reads all ones.
                Access::MmioRead { addr: 0xd000_0400, data: vec![0xff; 4] },
            ]
        );
        let regs = m.vcpu.regs().unwrap();
        assert_eq!(regs.rax, 0xcafe_f00d);
        assert_eq!(regs.rbx, 0xcafe_f00d);
        assert_eq!(regs.rcx, 0x1234);
        assert_eq!(regs.rdx & 0xff, 0x77);
        assert_eq!(regs.rsi, 0xffff_ffff);
        assert_eq!(regs.rip, CODE_ADDR + 0x3b);
        assert_eq!(m.read_u64(0x3000).unwrap() & 0xffff_ffff, 0xcafe_f00d);
    });
}
