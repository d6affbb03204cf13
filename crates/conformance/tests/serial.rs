//! Serial-style output: a string written byte by byte to port 0x3f8, then with `rep outsb`,
//! then string input with `rep insb` (which KVM batches into one exit). Every access must reach
//! the VmOps as its own 1-byte access, in order.

use std::time::Duration;

use vmr_conformance::guests::{CODE_ADDR, MESSAGE, MESSAGE_ADDR, SERIAL_HELLO, STRING_IN_ADDR};
use vmr_conformance::{for_each_backend, machine, Access, Outcome};
use vmr_hypervisor::vm_memory::{Bytes, GuestAddress};

#[test]
fn string_output_to_port_0x3f8() {
    for_each_backend("string_output_to_port_0x3f8", |hv| {
        let mut m = machine(hv);
        m.load(CODE_ADDR, SERIAL_HELLO).unwrap();
        m.load(MESSAGE_ADDR, MESSAGE).unwrap();
        m.real_mode(CODE_ADDR as u16).unwrap();
        m.ops.answer_pio(0x2f8, u64::from(b'A'));

        assert_eq!(m.run(Duration::from_secs(10)), Outcome::Done(0));

        let text = m.ops.pio_bytes_written(0x3f8);
        assert_eq!(String::from_utf8_lossy(&text), "Hello from vmrHello from vmr");
        let accesses = m.ops.accesses();
        assert_eq!(accesses.len(), 2 * MESSAGE.len() + 8);
        let (writes, reads) = accesses.split_at(2 * MESSAGE.len());
        for access in writes {
            match access {
                Access::PioWrite { port: 0x3f8, data } => assert_eq!(data.len(), 1, "{access:?}"),
                other => panic!("unexpected access {other:?}"),
            }
        }
        for access in reads {
            assert_eq!(access, &Access::PioRead { port: 0x2f8, data: vec![b'A'] });
        }
        let mut read_in = [0u8; 9];
        m.memory.read_slice(&mut read_in, GuestAddress(STRING_IN_ADDR)).unwrap();
        assert_eq!(&read_in, b"AAAAAAAA\0");
        let regs = m.vcpu.regs().unwrap();
        assert_eq!(regs.rcx & 0xffff, 0, "both loops ran to the end");
        assert_eq!(regs.rsi & 0xffff, MESSAGE_ADDR + MESSAGE.len() as u64);
        assert_eq!(regs.rdi & 0xffff, STRING_IN_ADDR + 8);
    });
}
