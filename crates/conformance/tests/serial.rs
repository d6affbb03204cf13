//! Serial-style output: a string written byte by byte to port 0x3f8, then with `rep outsb`.
//! Every access must reach the VmOps as its own 1-byte write, in order.

use std::time::Duration;

use vmr_conformance::guests::{CODE_ADDR, MESSAGE, MESSAGE_ADDR, SERIAL_HELLO};
use vmr_conformance::{for_each_backend, machine, Access, Outcome};

#[test]
fn string_output_to_port_0x3f8() {
    for_each_backend("string_output_to_port_0x3f8", |hv| {
        let mut m = machine(hv);
        m.load(CODE_ADDR, SERIAL_HELLO).unwrap();
        m.load(MESSAGE_ADDR, MESSAGE).unwrap();
        m.real_mode(CODE_ADDR as u16).unwrap();

        assert_eq!(m.run(Duration::from_secs(10)), Outcome::Done(0));

        let text = m.ops.pio_bytes_written(0x3f8);
        assert_eq!(String::from_utf8_lossy(&text), "Hello from vmrHello from vmr");
        let accesses = m.ops.accesses();
        assert_eq!(accesses.len(), 2 * MESSAGE.len());
        for access in &accesses {
            match access {
                Access::PioWrite { port: 0x3f8, data } => assert_eq!(data.len(), 1, "{access:?}"),
                other => panic!("unexpected access {other:?}"),
            }
        }
        let regs = m.vcpu.regs().unwrap();
        assert_eq!(regs.rcx & 0xffff, 0, "both loops ran to the end");
        assert_eq!(regs.rsi & 0xffff, MESSAGE_ADDR + MESSAGE.len() as u64);
    });
}
