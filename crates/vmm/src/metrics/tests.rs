use super::*;

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The process-wide registry is shared by every test here, so one test drives it end to end.
#[test]
fn flushes_write_deltas_per_group_and_device() {
    let m = metrics();
    assert!(matches!(m.flush(), Err(MetricsError::NotInitialized)));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.json");
    m.init(&path).unwrap();
    assert!(matches!(m.init(&path), Err(MetricsError::AlreadyInitialized(_))));

    let disk = Arc::new(BlockMetrics::default());
    let disk1 = Arc::new(BlockMetrics::default());
    let net = Arc::new(NetMetrics::default());
    m.register_device("mt-disk0", DeviceMetrics::Block(disk.clone()));
    m.register_device("mt-disk1", DeviceMetrics::Block(disk1.clone()));
    m.register_device("mt-net0", DeviceMetrics::Net(net.clone()));
    disk.counters.read_bytes.add(4096);
    disk.counters.read_count.inc();
    disk1.counters.read_bytes.add(512);
    disk.request_latency.record(Duration::from_micros(250));
    net.tx_packets_count.add(3);
    m.put_api_requests.actions_count.inc();
    m.vcpu.exit_io_out.add(7);
    m.flush().unwrap();

    disk.counters.read_bytes.add(100);
    m.flush().unwrap();

    let l = lines(&path);
    assert_eq!(l.len(), 2);
    assert_eq!(l[0]["block_mt-disk0"]["read_bytes"], 4096);
    // Other tests in this process may register devices too: the sum is at least ours.
    let sum = l[0]["block"]["read_bytes"].as_u64().unwrap();
    assert!(sum >= 4096 + 512, "the kind's sum over its devices: {sum}");
    assert_eq!(l[0]["block_mt-disk0"]["request_latency_us"]["max_us"], 250);
    assert!(l[0]["latencies_us"]["block_request"]["count"].as_u64().unwrap() >= 1);
    assert_eq!(l[0]["net_mt-net0"]["tx_packets_count"], 3);
    assert_eq!(l[0]["put_api_requests"]["actions_count"], 1);
    assert!(l[0]["vcpu"]["exit_io_out"].as_u64().unwrap() >= 7);
    assert!(l[0]["utc_timestamp_ms"].as_u64().unwrap() > 1_600_000_000_000);
    // The second line holds only what changed since the first.
    assert_eq!(l[1]["block_mt-disk0"]["read_bytes"], 100);
    assert_eq!(l[1]["block_mt-disk0"]["read_count"], 0);
    assert_eq!(l[1]["block_mt-disk0"]["request_latency_us"]["count"], 0);

    // Totals stay readable per device, as plain structs.
    let totals = m.device_counters();
    match &totals["mt-disk0"] {
        DeviceCounters::Block(b) => assert_eq!((b.read_bytes, b.read_count), (4196, 1)),
        other => panic!("{other:?}"),
    }
    let json = serde_json::to_value(&totals["mt-net0"]).unwrap();
    assert_eq!((json["kind"].as_str(), json["tx_packets_count"].as_u64()), (Some("net"), Some(3)));

    // The periodic thread writes without being asked.
    start_flush_thread(Duration::from_millis(50)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lines(&path).len() < 3 {
        assert!(std::time::Instant::now() < deadline, "no periodic flush");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn unwritable_path_is_one_line() {
    let e = Metrics::default().init(Path::new("/nonexistent-dir/m.json")).unwrap_err().to_string();
    assert!(e.starts_with("cannot open the metrics file /nonexistent-dir/m.json: "), "{e}");
}
