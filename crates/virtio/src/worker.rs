//! The per-device worker thread: epoll on the queue EventFds and a stop EventFd.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use virtio_queue::QueueState;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::pause::WorkerGate;

const STOP_TOKEN: u64 = u64::MAX;

/// What the worker thread runs when a queue is notified.
pub(crate) trait QueueHandler: Send + 'static {
    /// Processes what is available on queue `index`, up to a budget. Returns true if work may
    /// be left: the worker then calls again after checking for a stop request.
    fn process_queue(&mut self, index: usize) -> bool;
    /// Handles readiness of extra file descriptor `index` (see [`Worker::spawn_with_fds`]);
    /// returns true if work may be left on it.
    fn process_fd(&mut self, _index: usize) -> bool {
        false
    }
    /// Positions of the handler's queues (ring addresses, next available and used index),
    /// written over `out`: called after every batch, so it reuses the published vector rather
    /// than allocating on each queue notification.
    fn queue_states(&self, out: &mut Vec<QueueState>);
}

/// The queue positions a worker published after its last batch. The worker holds the lock for
/// the whole batch, so a reader (a snapshot) waits for a batch in progress and then sees the
/// positions every completion so far left, which is what the guest's rings hold.
pub(crate) type Published = Arc<Mutex<Vec<QueueState>>>;

fn lock(p: &Published) -> std::sync::MutexGuard<'_, Vec<QueueState>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running worker thread. Dropping it stops and joins the thread.
pub(crate) struct Worker<H: QueueHandler> {
    stop: EventFd,
    handle: Option<JoinHandle<H>>,
    published: Published,
}

impl<H: QueueHandler> Worker<H> {
    /// Starts thread `name`, which calls `handler` for each notified queue.
    #[cfg(test)]
    pub(crate) fn spawn(name: String, queue_evts: Vec<EventFd>, handler: H) -> io::Result<Self> {
        Self::spawn_with_fds(name, queue_evts, &[], handler)
    }

    /// Like [`Worker::spawn`], also waiting on `fds` (e.g. a tap) with the given event sets;
    /// readiness of `fds[j]` calls `handler.process_fd(j)`. The fds must outlive the worker
    /// (the handler usually owns them).
    #[cfg(test)]
    pub(crate) fn spawn_with_fds(
        name: String,
        queue_evts: Vec<EventFd>,
        fds: &[(RawFd, EventSet)],
        handler: H,
    ) -> io::Result<Self> {
        Self::spawn_gated(name, queue_evts, fds, handler, Default::default())
    }

    /// Like [`Worker::spawn_with_fds`], parking at `gate` while the VM is paused.
    pub(crate) fn spawn_gated(
        name: String,
        queue_evts: Vec<EventFd>,
        fds: &[(RawFd, EventSet)],
        handler: H,
        gate: std::sync::Arc<WorkerGate>,
    ) -> io::Result<Self> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        for (i, evt) in queue_evts.iter().enumerate() {
            epoll.ctl(ControlOperation::Add, evt.as_raw_fd(), EpollEvent::new(EventSet::IN, i as u64))?;
        }
        for (j, &(fd, set)) in fds.iter().enumerate() {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(set, (queue_evts.len() + j) as u64))?;
        }
        epoll.ctl(ControlOperation::Add, stop.as_raw_fd(), EpollEvent::new(EventSet::IN, STOP_TOKEN))?;
        let thread_stop = stop.try_clone()?;
        let mut initial = Vec::new();
        handler.queue_states(&mut initial);
        let published: Published = Arc::new(Mutex::new(initial));
        let thread_published = published.clone();
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            vmr_hypervisor::thread_hooks::thread_started();
            let ctx = RunContext { epoll, queue_evts, stop: thread_stop, published: thread_published };
            run(ctx, handler, &gate)
        })?;
        Ok(Worker { stop, handle: Some(handle), published })
    }

    /// The queue positions between batches (waits for a batch in progress to end). Called
    /// while the VM is paused, so no notification starts another batch meanwhile.
    pub(crate) fn queue_states(&self) -> Vec<QueueState> {
        lock(&self.published).clone()
    }

    /// Stops the thread and returns its handler (None if the thread panicked).
    pub(crate) fn stop(mut self) -> Option<H> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Option<H> {
        let handle = self.handle.take()?;
        let _ = self.stop.write(1);
        handle.join().ok()
    }
}

impl<H: QueueHandler> Drop for Worker<H> {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

struct RunContext {
    epoll: vmm_sys_util::epoll::Epoll,
    queue_evts: Vec<EventFd>,
    stop: EventFd,
    published: Published,
}

/// Runs one batch of token `t` (a queue, then the extra fds) with the published positions
/// locked, and publishes the positions it leaves. None starts once the VM is paused (the work
/// is left for after the resume): a snapshot that waited for the batch in progress then reads
/// guest memory no device writes.
fn batch<H: QueueHandler>(
    handler: &mut H,
    nq: usize,
    t: usize,
    published: &Published,
    gate: &WorkerGate,
) -> bool {
    let mut positions = lock(published);
    if gate.is_paused() {
        return true;
    }
    let again = if t < nq { handler.process_queue(t) } else { handler.process_fd(t - nq) };
    handler.queue_states(&mut positions);
    again
}

fn run<H: QueueHandler>(ctx: RunContext, mut handler: H, gate: &WorkerGate) -> H {
    let RunContext { epoll, queue_evts, stop, published } = ctx;
    let nq = queue_evts.len();
    if gate.park(&stop) {
        return handler;
    }
    // Buffers the driver made available before activation are served without a notification.
    // `again[t]`: token t (queue, then extra fd) had work left after its budget.
    let mut again: Vec<bool> = (0..nq).map(|i| batch(&mut handler, nq, i, &published, gate)).collect();
    let mut events = vec![EpollEvent::default(); 16];
    loop {
        // Poll without sleeping while work is left, so a stop request is still seen.
        let timeout = if again.iter().any(|&a| a) { 0 } else { -1 };
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("virtio worker epoll failed: {e}");
                return handler;
            }
        };
        if gate.park(&stop) {
            return handler;
        }
        let mut handled = vec![false; again.len()];
        for event in &events[..n] {
            let token = event.data();
            if token == STOP_TOKEN {
                let _ = stop.read();
                return handler;
            }
            let t = token as usize;
            if t >= again.len() {
                again.resize(t + 1, false);
                handled.resize(t + 1, false);
            }
            if let Some(evt) = queue_evts.get(t) {
                let _ = evt.read();
            }
            again[t] = batch(&mut handler, nq, t, &published, gate);
            handled[t] = true;
        }
        for t in 0..again.len() {
            if again[t] && !handled[t] {
                again[t] = batch(&mut handler, nq, t, &published, gate);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{mpsc, Arc};

    struct Recorder(mpsc::Sender<usize>, usize);
    impl QueueHandler for Recorder {
        fn process_queue(&mut self, index: usize) -> bool {
            self.1 += 1;
            let _ = self.0.send(index);
            false
        }
        fn queue_states(&self, out: &mut Vec<QueueState>) {
            out.clear();
            out.push(QueueState { next_avail: self.1 as u16, ..Default::default() });
        }
    }

    #[test]
    fn notifications_reach_the_handler_and_stop_joins() {
        let (tx, rx) = mpsc::channel();
        let evts = vec![EventFd::new(libc::EFD_NONBLOCK).unwrap(), EventFd::new(libc::EFD_NONBLOCK).unwrap()];
        let kick = evts[1].try_clone().unwrap();
        let worker = Worker::spawn("test-worker".into(), evts, Recorder(tx, 0)).unwrap();
        // The initial pass over both queues.
        assert_eq!(rx.recv().unwrap(), 0);
        assert_eq!(rx.recv().unwrap(), 1);
        kick.write(1).unwrap();
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap(), 1);
        // The positions after the third batch are published (a snapshot reads them).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while worker.queue_states()[0].next_avail != 3 {
            assert!(std::time::Instant::now() < deadline, "positions not published");
            std::thread::yield_now();
        }
        let handler = worker.stop().unwrap();
        assert_eq!(handler.1, 3);
    }

    struct Busy(Arc<std::sync::atomic::AtomicU64>);
    impl QueueHandler for Busy {
        fn process_queue(&mut self, _index: usize) -> bool {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            true // always more work, like a guest that never stops feeding the queue
        }
        fn queue_states(&self, out: &mut Vec<QueueState>) {
            out.clear();
        }
    }

    #[test]
    fn stop_is_seen_while_a_queue_always_has_work() {
        let evts = vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()];
        let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let worker = Worker::spawn("busy-worker".into(), evts, Busy(calls.clone())).unwrap();
        // Wait (on a loaded machine the worker may start late) until it went round more than once.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while calls.load(std::sync::atomic::Ordering::Relaxed) < 2 {
            assert!(std::time::Instant::now() < deadline, "handler was not called again");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let start = std::time::Instant::now();
        worker.stop().unwrap();
        assert!(start.elapsed() < std::time::Duration::from_secs(5), "stop took {:?}", start.elapsed());
    }
}
