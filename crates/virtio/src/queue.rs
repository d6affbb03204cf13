//! Serving one virtqueue: pop chains, complete them, notify, and turn ring errors into
//! `DEVICE_NEEDS_RESET`.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use crate::{GuestMemory, Interrupt};

/// Serves every available chain of `queue` with `serve`, which returns the number of bytes it
/// wrote into the chain. Returns false if the ring is broken (the device is then marked
/// `DEVICE_NEEDS_RESET` and must stop touching the queue).
pub(crate) fn drain<F>(queue: &mut Queue, mem: &GuestMemory, interrupt: &Interrupt, mut serve: F) -> bool
where
    F: FnMut(DescriptorChain<&GuestMemory>) -> u32,
{
    let mut used_any = false;
    let ok = loop {
        if queue.disable_notification(mem).is_err() {
            break false;
        }
        let mut broken = false;
        loop {
            // `iter` rejects an available index more than a queue size ahead.
            let chain = match queue.iter(mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    tracing::warn!("virtqueue error: {e}");
                    broken = true;
                    break;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let len = serve(chain);
            if queue.add_used(mem, head, len).is_err() {
                broken = true;
                break;
            }
            used_any = true;
        }
        if broken {
            break false;
        }
        match queue.enable_notification(mem) {
            Ok(true) => continue,
            Ok(false) => break true,
            Err(_) => break false,
        }
    };
    if used_any && queue.needs_notification(mem).unwrap_or(true) {
        interrupt.signal_used_queue();
    }
    if !ok {
        interrupt.set_needs_reset();
    }
    ok
}
