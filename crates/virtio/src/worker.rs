//! The per-device worker thread: epoll on the queue EventFds and a stop EventFd.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

const STOP_TOKEN: u64 = u64::MAX;

/// What the worker thread runs when a queue is notified.
pub(crate) trait QueueHandler: Send + 'static {
    /// Processes everything available on queue `index`.
    fn process_queue(&mut self, index: usize);
    /// Handles readiness of extra file descriptor `index` (see [`Worker::spawn_with_fds`]).
    fn process_fd(&mut self, _index: usize) {}
}

/// A running worker thread. Dropping it stops and joins the thread.
pub(crate) struct Worker<H: QueueHandler> {
    stop: EventFd,
    handle: Option<JoinHandle<H>>,
}

impl<H: QueueHandler> Worker<H> {
    /// Starts thread `name`, which calls `handler` for each notified queue.
    pub(crate) fn spawn(name: String, queue_evts: Vec<EventFd>, handler: H) -> io::Result<Self> {
        Self::spawn_with_fds(name, queue_evts, &[], handler)
    }

    /// Like [`Worker::spawn`], also waiting on `fds` (e.g. a tap) with the given event sets;
    /// readiness of `fds[j]` calls `handler.process_fd(j)`. The fds must outlive the worker
    /// (the handler usually owns them).
    pub(crate) fn spawn_with_fds(
        name: String,
        queue_evts: Vec<EventFd>,
        fds: &[(RawFd, EventSet)],
        handler: H,
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
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(epoll, queue_evts, thread_stop, handler))?;
        Ok(Worker { stop, handle: Some(handle) })
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

fn run<H: QueueHandler>(epoll: Epoll, queue_evts: Vec<EventFd>, stop: EventFd, mut handler: H) -> H {
    // Buffers the driver made available before activation are served without a notification.
    for i in 0..queue_evts.len() {
        handler.process_queue(i);
    }
    let mut events = vec![EpollEvent::default(); 16];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("virtio worker epoll failed: {e}");
                return handler;
            }
        };
        for event in &events[..n] {
            let token = event.data();
            if token == STOP_TOKEN {
                let _ = stop.read();
                return handler;
            }
            match queue_evts.get(token as usize) {
                Some(evt) => {
                    let _ = evt.read();
                    handler.process_queue(token as usize);
                }
                None => handler.process_fd(token as usize - queue_evts.len()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    struct Recorder(mpsc::Sender<usize>, usize);
    impl QueueHandler for Recorder {
        fn process_queue(&mut self, index: usize) {
            self.1 += 1;
            let _ = self.0.send(index);
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
        let handler = worker.stop().unwrap();
        assert_eq!(handler.1, 3);
    }
}
