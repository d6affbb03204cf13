//! Serving one virtqueue: pop chains, complete them, notify, and turn ring errors into
//! `DEVICE_NEEDS_RESET`.

use std::num::Wrapping;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

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
    /// The rate limiter held back the next chain, which stays available in the ring: call
    /// again when the limiter's timer fires.
    Throttled,
}

/// Serves available chains of `queue` with `serve`, which returns the number of bytes it wrote
/// into the chain. Stops after [`BUDGET`] steps (chains served plus re-checks of the ring: a
/// guest whose rings alias the used ring's flags can make every re-check see "more").
pub(crate) fn drain<F>(queue: &mut Queue, mem: &GuestMemory, interrupt: &Interrupt, serve: F) -> Drained
where
    F: FnMut(DescriptorChain<&GuestMemory>) -> u32,
{
    let mut serve = serve;
    drain_lingering(queue, mem, interrupt, Duration::ZERO, |chain| Some(serve(chain)))
}

/// True if the driver made chains available that the device has not popped yet.
fn has_avail(queue: &Queue, mem: &GuestMemory) -> bool {
    queue.avail_idx(mem, Ordering::Acquire).is_ok_and(|idx| idx != Wrapping(queue.next_avail()))
}

/// Polls the available ring until a chain shows up (true) or `linger` has passed (false).
fn wait_for_avail(queue: &Queue, mem: &GuestMemory, linger: Duration) -> bool {
    let until = Instant::now() + linger;
    loop {
        if has_avail(queue, mem) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::hint::spin_loop();
    }
}

/// [`drain`], but when the ring runs dry after serving chains, first polls it for up to
/// `linger` for more, with notifications still off. A driver that keeps submitting (a queue
/// depth above one) then neither kicks nor gets an interrupt per request: its requests are
/// picked up and completed in batches. An idle device never polls.
///
/// `serve` returns `None` to leave a chain in the ring (the rate limiter said "not yet"): the
/// chain is put back and the call returns [`Drained::Throttled`].
pub(crate) fn drain_lingering<F>(
    queue: &mut Queue,
    mem: &GuestMemory,
    interrupt: &Interrupt,
    linger: Duration,
    mut serve: F,
) -> Drained
where
    F: FnMut(DescriptorChain<&GuestMemory>) -> Option<u32>,
{
    let (mut served, mut steps, mut fresh) = (0usize, 0usize, 0usize);
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
            let Some(chain) = chain else {
                // Linger only after serving something since the last wait.
                if fresh > 0 && !linger.is_zero() && wait_for_avail(queue, mem, linger) {
                    fresh = 0;
                    continue;
                }
                break;
            };
            let head = chain.head_index();
            let Some(len) = serve(chain) else {
                queue.go_to_previous_position();
                break 'outer Drained::Throttled;
            };
            if queue.add_used(mem, head, len).is_err() {
                break 'outer Drained::Broken;
            }
            served += 1;
            fresh += 1;
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
    use std::time::Instant;
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

    /// A queue of 16 one-descriptor chains (none available yet), its used ring moved off the
    /// mock's avail ring, and an interrupt.
    fn sixteen_chains(mem: &GuestMemory) -> (MockSplitQueue<'_, GuestMemory>, Queue, Interrupt) {
        let mock = MockSplitQueue::new(mem, 16);
        for i in 0..16 {
            mock.desc_table().store(i, RawDescriptor::from(Descriptor::new(0x10_0000, 16, 2, 0))).unwrap();
        }
        let mut q: Queue = mock.create_queue().unwrap();
        q.set_used_ring_address(Some(0x8000), Some(0));
        let irq = Interrupt::new(IrqTrigger::EventFd(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        (mock, q, irq)
    }

    /// Lingering: chains the driver adds while the device polls are served in the same call
    /// (one interrupt); an idle queue does not poll at all.
    #[test]
    fn lingering_drain_picks_up_late_chains_and_idle_queues_do_not_wait() {
        let mem = memory();
        let (mock, mut q, irq) = sixteen_chains(mem);
        let start = Instant::now();
        assert_eq!(drain_lingering(&mut q, mem, &irq, Duration::from_secs(5), |_| Some(0)), Drained::Idle);
        assert!(start.elapsed() < Duration::from_secs(1), "an idle queue lingered");
        // The first chain is there at once; serving it makes a second one available (as a
        // driver submitting meanwhile would): both are served before the call returns.
        mock.avail().idx().store(1);
        let mut calls = 0u16;
        let result = drain_lingering(&mut q, mem, &irq, Duration::from_millis(200), |_| {
            calls += 1;
            if calls == 1 {
                mock.avail().idx().store(2);
            }
            Some(0)
        });
        assert_eq!((result, calls), (Drained::Idle, 2));
        assert_eq!(irq.status(), crate::interrupt::INT_VRING);
    }

    /// A chain the limiter holds back stays in the ring and is served by the next call.
    #[test]
    fn throttled_chain_stays_available() {
        let mem = memory();
        let (mock, mut q, irq) = sixteen_chains(mem);
        mock.avail().idx().store(3);
        let mut allow = 1;
        let mut serve = |_: DescriptorChain<&GuestMemory>| {
            if allow == 0 {
                return None;
            }
            allow -= 1;
            Some(0)
        };
        assert_eq!(drain_lingering(&mut q, mem, &irq, Duration::ZERO, &mut serve), Drained::Throttled);
        assert_eq!(q.next_used(), 1);
        assert_eq!(q.next_avail(), 1, "the held-back chain was put back");
        let mut serve = |_: DescriptorChain<&GuestMemory>| Some(0);
        assert_eq!(drain_lingering(&mut q, mem, &irq, Duration::ZERO, &mut serve), Drained::Idle);
        assert_eq!(q.next_used(), 3);
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
