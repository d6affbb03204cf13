//! Serving one virtqueue: pop chains, complete them, notify, and turn ring errors into
//! `DEVICE_NEEDS_RESET`.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use crate::{GuestMemory, Interrupt};

/// Most chains served in one [`drain`] call. A guest can keep a queue busy for ever (or make
/// the device's own writes look like new buffers, by overlapping its rings with buffers); the
/// budget makes the worker come back to its event loop, where it sees a stop request.
pub(crate) const BUDGET: usize = 256;

/// What a [`drain`] call left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Drained {
    /// Nothing available; notifications are enabled.
    Idle,
    /// The budget ran out with chains possibly still available: call again.
    More,
    /// The ring is broken; the device is marked `DEVICE_NEEDS_RESET` and must stop touching it.
    Broken,
}

/// Serves available chains of `queue` with `serve`, which returns the number of bytes it wrote
/// into the chain. Stops after [`BUDGET`] steps (chains served plus re-checks of the ring: a
/// guest whose rings alias the used ring's flags can make every re-check see "more").
pub(crate) fn drain<F>(queue: &mut Queue, mem: &GuestMemory, interrupt: &Interrupt, mut serve: F) -> Drained
where
    F: FnMut(DescriptorChain<&GuestMemory>) -> u32,
{
    let (mut served, mut steps) = (0usize, 0usize);
    let result = 'outer: loop {
        if queue.disable_notification(mem).is_err() {
            break Drained::Broken;
        }
        loop {
            steps += 1;
            if steps > BUDGET {
                break 'outer Drained::More;
            }
            // `iter` rejects an available index more than a queue size ahead.
            let chain = match queue.iter(mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    tracing::warn!("virtqueue error: {e}");
                    break 'outer Drained::Broken;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let len = serve(chain);
            if queue.add_used(mem, head, len).is_err() {
                break 'outer Drained::Broken;
            }
            served += 1;
        }
        match queue.enable_notification(mem) {
            Ok(true) => continue,
            Ok(false) => break Drained::Idle,
            Err(_) => break Drained::Broken,
        }
    };
    if served > 0 && queue.needs_notification(mem).unwrap_or(true) {
        interrupt.signal_used_queue();
    }
    if result == Drained::Broken {
        interrupt.set_needs_reset();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::memory;
    use crate::IrqTrigger;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vmm_sys_util::eventfd::EventFd;

    /// A guest whose rings overlap the device's output: each completed chain makes a new one
    /// available. `drain` must return after its budget instead of looping for ever.
    #[test]
    fn self_refilling_queue_stops_at_the_budget() {
        let mem = memory();
        let mock = MockSplitQueue::new(mem, 16);
        for i in 0..16 {
            mock.desc_table().store(i, RawDescriptor::from(Descriptor::new(0x10_0000, 16, 2, 0))).unwrap();
        }
        mock.avail().idx().store(1);
        let mut q: Queue = mock.create_queue().unwrap();
        // The mock's used ring overlaps its avail ring; move it away.
        q.set_used_ring_address(Some(0x8000), Some(0));
        let irq = Interrupt::new(IrqTrigger::EventFd(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let mut calls = 0u16;
        let result = drain(&mut q, mem, &irq, |_| {
            calls += 1;
            mock.avail().idx().store(calls + 1);
            0
        });
        assert_eq!(result, Drained::More);
        assert!(calls as usize >= BUDGET / 2 && calls as usize <= BUDGET, "{calls}");
        assert_eq!(calls as usize, BUDGET);
        assert!(!irq.needs_reset());
        assert_eq!(irq.status(), crate::interrupt::INT_VRING);
    }

    /// Found by the mmio fuzzer: the used ring's flags word aliases the avail index, so every
    /// enable/disable of notifications changes the avail index and "more" never ends.
    #[test]
    fn used_flags_aliasing_avail_index_cannot_spin_for_ever() {
        let mem = memory();
        let state = virtio_queue::QueueState {
            max_size: 16,
            size: 16,
            ready: true,
            desc_table: 0,
            avail_ring: 0x1002,
            used_ring: 0x1004,
            ..Default::default()
        };
        let mut q = Queue::try_from(state).unwrap();
        let irq = Interrupt::new(IrqTrigger::EventFd(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        assert_eq!(drain(&mut q, mem, &irq, |_| 0), Drained::More);
    }

    #[test]
    fn far_ahead_avail_index_is_broken() {
        let mem = memory();
        let mock = MockSplitQueue::new(mem, 16);
        mock.avail().idx().store(17);
        let mut q: Queue = mock.create_queue().unwrap();
        let irq = Interrupt::new(IrqTrigger::EventFd(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        assert_eq!(drain(&mut q, mem, &irq, |_| 0), Drained::Broken);
        assert!(irq.needs_reset());
    }
}
