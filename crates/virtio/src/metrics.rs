//! Per-device counters (Firecracker's metric names where it has them). Each device owns an
//! `Arc` of its group; the VMM's metrics registry reads them (see `vmr_devices::metrics`).

use vmr_devices::metric_group;
use vmr_devices::metrics::LatencyAggregate;

metric_group!(
    /// One virtio-blk device.
    BlockCounters,
    BlockCountersSnapshot {
        read_count,
        read_bytes,
        write_count,
        write_bytes,
        flush_count,
        /// Discard and write-zeroes requests.
        discard_count,
        get_id_count,
        /// Requests of a type the device does not serve (status UNSUPP).
        invalid_reqs_count,
        /// Requests that failed (status IOERR): host I/O errors, out-of-range sectors, broken chains.
        execute_fails,
        /// Times the rate limiter held a request back.
        rate_limiter_throttled_events,
    }
);

/// A block device's counters and its request latency (from the worker picking a request up to
/// its completion being written).
#[derive(Debug, Default)]
pub struct BlockMetrics {
    pub counters: BlockCounters,
    pub request_latency: LatencyAggregate,
}

metric_group!(
    /// One virtio-net device.
    NetMetrics,
    NetCountersSnapshot {
        rx_bytes_count,
        rx_packets_count,
        /// Frames from the tap dropped because the guest's buffer was too small.
        rx_dropped,
        /// Tap read errors (other than "nothing to read").
        rx_fails,
        rx_rate_limiter_throttled,
        tx_bytes_count,
        tx_packets_count,
        /// Frames the tap refused (full queue, rejected by the host kernel).
        tx_dropped,
        /// Transmit chains too short or too long to be a frame.
        tx_malformed_frames,
        tx_rate_limiter_throttled,
    }
);

metric_group!(
    /// One virtio-vsock device.
    VsockMetrics,
    VsockCountersSnapshot { rx_packets_count, rx_bytes_count, tx_packets_count }
);
