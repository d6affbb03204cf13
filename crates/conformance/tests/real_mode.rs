//! Real mode arithmetic and port I/O of every width, answered by the VmOps.

use std::time::Duration;

use vmr_conformance::guests::{CODE_ADDR, REAL_MODE_ARITH_IO};
use vmr_conformance::{for_each_backend, machine, Access, Outcome};

const FLAGS_RESERVED: u64 = 1 << 1;
const FLAGS_PF: u64 = 1 << 2;
const FLAGS_ZF: u64 = 1 << 6;

#[test]
fn real_mode_arithmetic_and_port_io() {
    for_each_backend("real_mode_arithmetic_and_port_io", |hv| {
        let mut m = machine(hv);
        m.load(CODE_ADDR, REAL_MODE_ARITH_IO).unwrap();
        m.real_mode(CODE_ADDR as u16).unwrap();
        m.ops.answer_pio(0x81, 0x5a);
        m.ops.answer_pio(0x510, 0xbeef);
        m.ops.answer_pio(0x514, 0xdead_beef);

        assert_eq!(m.run(Duration::from_secs(10)), Outcome::Done(0xef));

        let regs = m.vcpu.regs().unwrap();
        assert_eq!(regs.rax, 0xdead_beef);
        assert_eq!(regs.rbx, 0x0101);
        assert_eq!(regs.rcx, 0x5a);
        assert_eq!(regs.rdx, 0x514);
        assert_eq!(regs.rsi, 0xbeef);
        assert_eq!(regs.rdi, 0xdead_beef);
        assert_eq!(regs.rflags, FLAGS_RESERVED | FLAGS_PF | FLAGS_ZF);
        // Stopped right after the done OUT, on the HLT.
        assert_eq!(regs.rip, CODE_ADDR + 0x2d);

        assert_eq!(
            m.ops.accesses(),
            vec![
                Access::PioWrite { port: 0x80, data: vec![0x6a] },
                Access::PioWrite { port: 0x510, data: vec![0x6a, 0x26] },
                Access::PioRead { port: 0x81, data: vec![0x5a] },
                Access::PioRead { port: 0x510, data: vec![0xef, 0xbe] },
                Access::PioWrite { port: 0x514, data: vec![0x44, 0x33, 0x22, 0x11] },
                Access::PioRead { port: 0x514, data: vec![0xef, 0xbe, 0xad, 0xde] },
            ]
        );
    });
}
