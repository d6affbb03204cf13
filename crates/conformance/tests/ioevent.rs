//! ioeventfd: guest writes to a registered address signal the eventfd instead of reaching the
//! VmOps; with a datamatch, only the matching value does.

use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;
use vmr_conformance::guests::{CODE_ADDR, IOEVENT_WRITES};
use vmr_conformance::{for_each_backend, machine, Access, Outcome};
use vmr_hypervisor::IoEventAddress;

const EFD_NONBLOCK: i32 = 0o4000;

#[test]
fn ioevents_take_matching_writes() {
    for_each_backend("ioevents_take_matching_writes", |hv| {
        let mut m = machine(hv);
        m.load(CODE_ADDR, IOEVENT_WRITES).unwrap();
        m.protected_mode(CODE_ADDR as u32).unwrap();
        let pio = EventFd::new(EFD_NONBLOCK).unwrap();
        let mmio = EventFd::new(EFD_NONBLOCK).unwrap();
        m.vm.register_ioevent(&pio, IoEventAddress::Pio(0x600), None).unwrap();
        m.vm.register_ioevent(&mmio, IoEventAddress::Mmio(0xd000_1000), Some(4)).unwrap();

        assert_eq!(m.run(Duration::from_secs(10)), Outcome::Done(0));

        assert_eq!(pio.read().unwrap(), 1);
        assert_eq!(mmio.read().unwrap(), 1, "only the write of 4 matches");
        // The value 5 did not match: it reached the VmOps like any MMIO write.
        assert_eq!(m.ops.accesses(), vec![Access::MmioWrite { addr: 0xd000_1000, data: vec![5, 0, 0, 0] }]);
    });
}
