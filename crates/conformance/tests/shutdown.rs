//! A triple fault (an exception with no usable IDT) ends `run()` with `Shutdown`.

use std::time::Duration;

use vmr_conformance::guests::{CODE_ADDR, TRIPLE_FAULT};
use vmr_conformance::{for_each_backend, machine, Outcome};
use vmr_hypervisor::{DescriptorTable, VcpuExit};

#[test]
fn triple_fault_is_shutdown() {
    for_each_backend("triple_fault_is_shutdown", |hv| {
        let mut m = machine(hv);
        m.load(CODE_ADDR, TRIPLE_FAULT).unwrap();
        m.protected_mode(CODE_ADDR as u32).unwrap();
        let mut sregs = m.vcpu.sregs().unwrap();
        sregs.idt = DescriptorTable { base: 0, limit: 0 };
        m.vcpu.set_sregs(&sregs).unwrap();

        assert_eq!(m.run(Duration::from_secs(10)), Outcome::Exit(VcpuExit::Shutdown));
        // The guest got as far as the faulting instruction.
        assert_eq!(m.ops.pio_bytes_written(0x80), vec![0x55]);
    });
}
