//! Firecracker-style metrics: one JSON line per flush to the metrics path, with each counter's
//! change since the previous flush, every 60 s and on demand ([`Metrics::flush`], what the API's
//! `FlushMetrics` action calls).
//!
//! A line holds `utc_timestamp_ms`, the VMM's groups (`api_server`, `get_api_requests`,
//! `put_api_requests`, `patch_api_requests`, `vcpu`), for each device kind the sum over its
//! devices (`block`, `net`, `vsock`) and each device on its own (`block_disk0`, `net_net0`,
//! `vsock_vsock0`), and `latencies_us` (block request latency: min, max, sum, count over the
//! period). Totals per device are readable at any time with [`Metrics::device_counters`].

mod groups;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};
use thiserror::Error;
use vmr_devices::metrics::{Counter, LatencySummary};
use vmr_virtio::metrics::{
    BlockCountersSnapshot, BlockMetrics, NetCountersSnapshot, NetMetrics, VsockCountersSnapshot, VsockMetrics,
};

pub use groups::*;

/// How often the metrics are written without being asked.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("metrics are already written to {0}")]
    AlreadyInitialized(PathBuf),
    #[error("cannot open the metrics file {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics have no destination: set a metrics path first")]
    NotInitialized,
    #[error("cannot write the metrics: {0}")]
    Write(#[source] std::io::Error),
    #[error("cannot start the metrics thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// One device's counters, as registered by the VMM when it opens the device.
#[derive(Clone, Debug)]
pub enum DeviceMetrics {
    Block(Arc<BlockMetrics>),
    Net(Arc<NetMetrics>),
    Vsock(Arc<VsockMetrics>),
}

impl DeviceMetrics {
    fn kind(&self) -> &'static str {
        match self {
            DeviceMetrics::Block(_) => "block",
            DeviceMetrics::Net(_) => "net",
            DeviceMetrics::Vsock(_) => "vsock",
        }
    }

    fn counters(&self) -> Vec<(&'static str, &Counter)> {
        match self {
            DeviceMetrics::Block(m) => m.counters.fields(),
            DeviceMetrics::Net(m) => m.fields(),
            DeviceMetrics::Vsock(m) => m.fields(),
        }
    }
}

/// Totals of one device's counters (the API's per-device counters extension).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DeviceCounters {
    Block(BlockCountersSnapshot),
    Net(NetCountersSnapshot),
    Vsock(VsockCountersSnapshot),
}

/// The process's metrics: counters, registered devices, and where flushes go.
#[derive(Default)]
pub struct Metrics {
    pub api_server: ApiServerMetrics,
    pub get_api_requests: GetRequestsMetrics,
    pub put_api_requests: PutRequestsMetrics,
    pub patch_api_requests: PatchRequestsMetrics,
    pub vcpu: VcpuMetrics,
    devices: Mutex<BTreeMap<String, DeviceMetrics>>,
    state: Mutex<FlushState>,
}

#[derive(Default)]
struct FlushState {
    sink: Option<(PathBuf, File)>,
    /// Totals at the previous flush, by "group.counter".
    previous: BTreeMap<String, u64>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// Adds (or, after a rebuild of the machine, replaces) device `id` (`disk0`, `net0`, ...).
    pub fn register_device(&self, id: &str, device: DeviceMetrics) {
        self.devices.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_owned(), device);
    }

    /// Totals of every registered device, by id.
    pub fn device_counters(&self) -> BTreeMap<String, DeviceCounters> {
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices
            .iter()
            .map(|(id, d)| {
                let c = match d {
                    DeviceMetrics::Block(m) => DeviceCounters::Block(m.counters.snapshot()),
                    DeviceMetrics::Net(m) => DeviceCounters::Net(m.snapshot()),
                    DeviceMetrics::Vsock(m) => DeviceCounters::Vsock(m.snapshot()),
                };
                (id.clone(), c)
            })
            .collect()
    }

    /// Sends flushes to `path` (created if missing, appended to; a named pipe works too).
    /// Once per process, as in Firecracker.
    pub fn init(&self, path: &Path) -> Result<(), MetricsError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((current, _)) = &state.sink {
            return Err(MetricsError::AlreadyInitialized(current.clone()));
        }
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|source| MetricsError::Open { path: path.to_owned(), source })?;
        state.sink = Some((path.to_owned(), file));
        Ok(())
    }

    /// Writes one line of the changes since the last flush.
    pub fn flush(&self) -> Result<(), MetricsError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.sink.is_none() {
            return Err(MetricsError::NotInitialized);
        }
        let line = self.deltas(&mut state.previous);
        let mut text = serde_json::to_string(&line).unwrap_or_default();
        text.push('\n');
        let Some((_, file)) = &mut state.sink else { return Err(MetricsError::NotInitialized) };
        file.write_all(text.as_bytes()).map_err(MetricsError::Write)
    }

    /// The JSON object of one flush; updates `previous` to the current totals.
    fn deltas(&self, previous: &mut BTreeMap<String, u64>) -> Value {
        let mut line = Map::new();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        line.insert("utc_timestamp_ms".into(), Value::from(now.as_millis() as u64));
        let groups = [
            ("api_server", self.api_server.fields()),
            ("get_api_requests", self.get_api_requests.fields()),
            ("put_api_requests", self.put_api_requests.fields()),
            ("patch_api_requests", self.patch_api_requests.fields()),
            ("vcpu", self.vcpu.fields()),
        ];
        for (group, fields) in groups {
            line.insert(group.into(), Value::Object(group_deltas(group, &fields, previous)));
        }
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let mut sums: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
        let mut block_latency = LatencySummary::default();
        for (id, device) in devices.iter() {
            let group = format!("{}_{id}", device.kind());
            let mut own = group_deltas(&group, &device.counters(), previous);
            if let DeviceMetrics::Block(m) = device {
                let latency = m.request_latency.take();
                block_latency = block_latency.merge(latency);
                own.insert("request_latency_us".into(), serde_json::to_value(latency).unwrap_or_default());
            }
            add_into(sums.entry(device.kind()).or_default(), &own);
            line.insert(group, Value::Object(own));
        }
        for kind in ["block", "net", "vsock"] {
            line.insert(kind.into(), Value::Object(sums.remove(kind).unwrap_or_default()));
        }
        let mut latencies = Map::new();
        latencies.insert("block_request".into(), serde_json::to_value(block_latency).unwrap_or_default());
        line.insert("latencies_us".into(), Value::Object(latencies));
        Value::Object(line)
    }
}

/// `{counter: total - previous total}` for one group, remembering the totals.
fn group_deltas(
    group: &str,
    fields: &[(&'static str, &Counter)],
    previous: &mut BTreeMap<String, u64>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, counter) in fields {
        let total = counter.get();
        let last = previous.insert(format!("{group}.{name}"), total).unwrap_or(0);
        out.insert((*name).to_owned(), Value::from(total.saturating_sub(last)));
    }
    out
}

/// Adds the numeric counters of `from` into `into` (the per-kind sums; latency objects skipped).
fn add_into(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (k, v) in from {
        if let Some(n) = v.as_u64() {
            let sum = into.get(k).and_then(Value::as_u64).unwrap_or(0) + n;
            into.insert(k.clone(), Value::from(sum));
        }
    }
}

/// Starts the thread (`vmr-metrics`) that flushes every [`FLUSH_INTERVAL`] while a metrics path
/// is set. Call once.
pub fn start_periodic_flush() -> Result<(), MetricsError> {
    start_flush_thread(FLUSH_INTERVAL)
}

fn start_flush_thread(interval: Duration) -> Result<(), MetricsError> {
    std::thread::Builder::new()
        .name("vmr-metrics".into())
        .spawn(move || {
            crate::seccomp::apply_for_thread(crate::seccomp::Role::Metrics);
            loop {
                std::thread::sleep(interval);
                match metrics().flush() {
                    Ok(()) | Err(MetricsError::NotInitialized) => {}
                    Err(e) => tracing::warn!("{e}"),
                }
            }
        })
        .map(|_| ())
        .map_err(MetricsError::Thread)
}

#[cfg(test)]
mod tests;
