//! virtio-vsock with Firecracker's host-side convention: `--vsock cid=3,socket=/run/vm1.vsock`.
//!
//! - Host-initiated: vmr listens on `socket`. A host client connects and writes
//!   `CONNECT <port>\n`; vmr sends the guest a REQUEST for `<port>`; on the guest's RESPONSE it
//!   writes `OK <host_port>\n` to the client, then bytes flow both ways. A refusal (RST) closes
//!   the client's connection.
//! - Guest-initiated: the guest connects to CID 2 port P; vmr connects to the Unix socket
//!   `<socket>_P` and relays, or answers RST if nothing listens there.
//!
//! Queues: 0 = receive, 1 = transmit, 2 = event. Flow control is virtio-vsock's credit scheme in
//! both directions: vmr never sends a stream more than the guest's `buf_alloc` minus what is in
//! flight, advertises [`BUF_ALLOC`] per stream itself (a guest that overruns it is reset), and
//! reads ahead at most [`TO_GUEST_CAP`] bytes per stream from host sockets. Together with
//! [`MAX_CONNECTIONS`] and [`MAX_PENDING_CONTROL`] this bounds vmr's memory whatever the guest or
//! a host client does.
//!
//! One worker thread (`vmr-virtio-vsock<index>`) waits on the queue EventFds, the stop EventFd
//! and the muxer's own epoll fd, which holds the listening socket and every connection socket
//! (all non-blocking); interest in a socket follows what can be done (read only with credit and
//! buffer room, write only with bytes pending).

mod config;
mod conn;
pub(crate) mod handler;
pub(crate) mod muxer;
pub mod packet;
mod persist;
#[cfg(test)]
mod tests;

use std::io;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use vmm_sys_util::epoll::EventSet;

pub use config::VsockConfig;
pub use conn::{BUF_ALLOC, TO_GUEST_CAP};
pub use muxer::{CONNECT_TIMEOUT, MAX_CONNECTIONS, MAX_PAYLOAD, MAX_PENDING_CONTROL};
pub use persist::VsockHost;

use crate::device::{ActivateContext, ActivateError, SavedDevice, VirtioDevice};
use crate::worker::Worker;
use crate::{device_type, features};
use handler::VsockHandler;
use muxer::Muxer;

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;

#[derive(Debug, Error)]
pub enum VsockError {
    #[error("vsock socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Serializable state of a vsock device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    pub cid: u64,
    pub socket: PathBuf,
    pub acked_features: u64,
}

/// A muxer with cid `cid` listening on a fresh path in the temp dir (fuzzing: no worker).
pub(crate) fn fuzz_muxer(cid: u64) -> Option<Muxer> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let name = format!("vmr-vsock-fuzz-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let host = HostSocket::bind(&std::env::temp_dir().join(name)).ok()?;
    Muxer::new(cid, host).ok()
}

/// The listening host socket; the path is removed when it is dropped.
pub(crate) struct HostSocket {
    pub(crate) listener: UnixListener,
    pub(crate) path: PathBuf,
}

/// A virtio-vsock device.
pub struct Vsock {
    cid: u64,
    /// The listening socket while the device is not active (the worker owns it meanwhile).
    host: Option<HostSocket>,
    socket_path: PathBuf,
    worker: Option<Worker<VsockHandler>>,
    acked_features: u64,
    index: usize,
    queue_sizes: [u16; 3],
    metrics: std::sync::Arc<crate::metrics::VsockMetrics>,
    /// Restored from a snapshot: the next activation tells the guest its connections are gone
    /// (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET), as Firecracker does.
    reset_pending: bool,
}

impl Vsock {
    /// Binds and listens on `config.socket` (which must not exist yet; it is removed when the
    /// device is dropped). `index` only names the worker (`vmr-virtio-vsock<index>`).
    pub fn new(config: &VsockConfig, index: usize) -> Result<Self, VsockError> {
        let host = HostSocket::bind(&config.socket)
            .map_err(|source| VsockError::Bind { path: config.socket.clone(), source })?;
        Ok(Vsock {
            cid: config.cid,
            host: Some(host),
            socket_path: config.socket.clone(),
            worker: None,
            acked_features: 0,
            index,
            queue_sizes: [QUEUE_SIZE; 3],
            metrics: Default::default(),
            reset_pending: false,
        })
    }

    /// This device's counters.
    pub fn metrics(&self) -> std::sync::Arc<crate::metrics::VsockMetrics> {
        self.metrics.clone()
    }

    pub fn cid(&self) -> u64 {
        self.cid
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX | features::RING_INDIRECT_DESC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != 3 || ctx.queue_evts.len() != 3 {
            return Err(ActivateError::QueueCount { expected: 3, got: ctx.queues.len() });
        }
        let host = self.host.take().ok_or(ActivateError::AlreadyActive)?;
        let muxer = match Muxer::new(self.cid, host) {
            Ok(m) => m,
            Err(e) => return Err(ActivateError::Worker(e)),
        };
        let epoll_fd = muxer.epoll_fd();
        let mut queues = ctx.queues.drain(..);
        let (Some(rx), Some(tx), Some(event)) = (queues.next(), queues.next(), queues.next()) else {
            return Err(ActivateError::QueueCount { expected: 3, got: 0 });
        };
        drop(queues);
        let mut event = event;
        if std::mem::take(&mut self.reset_pending) {
            persist::send_transport_reset(&mut event, &ctx.mem, &ctx.interrupt);
        }
        let handler = VsockHandler {
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            rx,
            tx,
            _event: event,
            muxer,
            buf: Vec::with_capacity(MAX_PAYLOAD),
            broken: false,
            metrics: self.metrics.clone(),
        };
        self.acked_features = ctx.acked_features;
        let fds = [(epoll_fd, EventSet::IN)];
        let worker = Worker::spawn_gated(
            format!("vmr-virtio-vsock{}", self.index),
            ctx.queue_evts,
            &fds,
            handler,
            ctx.gate,
        )
        .map_err(ActivateError::Worker)?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            match worker.stop() {
                // Every connection closes; the listening socket stays.
                Some(handler) => self.host = Some(handler.muxer.into_host()),
                None => {
                    tracing::error!("virtio-vsock worker panicked; the host socket is gone until restart")
                }
            }
        }
        self.acked_features = 0;
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.worker.as_ref().map(|w| w.queue_states())
    }

    fn save_device(&self) -> SavedDevice {
        use vmr_hypervisor::Persist;
        SavedDevice::new(persist::KIND, &self.save())
    }
}
