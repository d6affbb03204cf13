//! vmr as a service, through its API socket, on the software CPU (`--accel emu`) with tiny
//! hand-made guests: the request sequences of Firecracker's clients (firecracker-go-sdk, Kata's
//! Go runtime `fc.go`, Kata's runtime-rs `fc_api.rs`), pause/resume seen in the guest's output,
//! and bad input (malformed bodies, wrong state, oversized and stalled requests, many clients).
//! The guest-visible parts with Linux are in tests/emu_api_linux.rs.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmr_vmm::api::client::{request, Reply};

/// Prints '.' on COM1 about every few million instructions, for ever: a counter the host can
/// watch.
fn ticking_kernel(dir: &Path) -> PathBuf {
    let path = dir.join("ticking");
    common::ticking_kernel(&path, 200_000);
    path
}

struct Vmr {
    child: Child,
    sock: PathBuf,
    out: PathBuf,
    dir: PathBuf,
}

fn test_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("api").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts vmr with `args` (after `--accel emu` where it applies), console output to a file.
fn spawn(name: &str, args: &[&str]) -> Vmr {
    let dir = test_dir(name);
    let sock = dir.join("api.sock");
    let out = dir.join("console.txt");
    let child = Command::new(env!("CARGO_BIN_EXE_vmr"))
        .args(args.iter().map(|a| {
            a.replace("{sock}", &sock.display().to_string()).replace("{dir}", &dir.display().to_string())
        }))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr.txt")).unwrap())
        .spawn()
        .unwrap();
    Vmr { child, sock, out, dir }
}

impl Vmr {
    /// firecracker-go-sdk's waitForSocket: the socket exists and GET /machine-config answers.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.sock.exists() {
                if let Ok(r) = request(&self.sock, "GET", "/machine-config", None) {
                    assert_eq!(r.status, 200, "{r:?}");
                    return;
                }
            }
            assert!(self.child.try_wait().unwrap().is_none(), "vmr ended: {}", self.stderr());
            assert!(Instant::now() < deadline, "the API socket did not come up");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        request(&self.sock, method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}; {}", self.stderr()))
    }

    /// Asserts a 204 (Firecracker's answer to an accepted PUT/PATCH).
    fn ok(&self, method: &str, path: &str, body: &str) {
        let r = self.call(method, path, Some(body));
        assert_eq!(r.status, 204, "{method} {path} {body}: {r:?}");
    }

    /// Asserts `status` and a one-line fault_message containing `needle`.
    fn refused(&self, method: &str, path: &str, body: Option<&str>, status: u16, needle: &str) {
        let r = self.call(method, path, body);
        assert_eq!(r.status, status, "{method} {path}: {r:?}");
        let msg = r.fault_message();
        assert!(msg.contains(needle) && !msg.contains('\n'), "{method} {path}: {msg}");
    }

    fn state(&self) -> String {
        let r = self.call("GET", "/", None);
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        v["state"].as_str().unwrap().to_string()
    }

    /// Kata's waitVMMRunning: poll GET / until "Running".
    fn wait_running(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.state() != "Running" {
            assert!(Instant::now() < deadline, "never Running");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn ticks(&self) -> usize {
        std::fs::read(&self.out).map(|b| b.iter().filter(|&&c| c == b'.').count()).unwrap_or(0)
    }

    /// Waits until the guest printed more than `than` ticks.
    fn wait_ticks(&self, than: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let n = self.ticks();
            if n > than {
                return n;
            }
            assert!(Instant::now() < deadline, "the guest made no progress ({n} ticks)");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.txt")).unwrap_or_default()
    }

    fn sigterm_and_wait(mut self) -> i32 {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(!self.sock.exists(), "the socket is removed when vmr ends");
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "vmr did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Vmr {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Seccomp state of the thread of `pid` named `comm`: (mode, number of filters) from
/// /proc/PID/task/TID/status (mode 2 = filtered). Panics if there is no such thread.
fn thread_seccomp(pid: u32, comm: &str) -> (u32, u32) {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        if std::fs::read_to_string(dir.join("comm")).unwrap_or_default().trim() != comm {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap();
        let field = |name: &str| -> u32 {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        return (field("Seccomp:"), field("Seccomp_filters:"));
    }
    panic!("vmr has no thread {comm}");
}

/// `vmr run --accel emu` of the ticking guest with `--api-sock`, ready for requests.
fn run_with_api(name: &str) -> Vmr {
    let dir = test_dir(&format!("{name}-files"));
    let kernel = ticking_kernel(&dir).display().to_string();
    let mut vm = spawn(
        name,
        &["run", "--accel", "emu", "--memory", "64M", "--kernel", &kernel, "--api-sock", "{sock}"],
    );
    vm.wait_ready();
    vm
}

/// Pause stops the guest (no new output, no host CPU), resume restarts it.
fn check_pause_and_resume(vm: &Vmr) {
    let before = vm.wait_ticks(3);
    vm.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
    assert_eq!(vm.state(), "Paused");
    let paused_at = vm.ticks();
    let cpu = cpu_ticks(vm.child.id());
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(vm.ticks(), paused_at, "a paused guest made progress");
    let used = cpu_ticks(vm.child.id()) - cpu;
    assert!(used <= 5, "a paused VM used {used} CPU ticks (1/100 s) in 0.7 s");
    assert!(paused_at >= before);
    vm.ok("PATCH", "/vm", r#"{"state":"Resumed"}"#);
    assert_eq!(vm.state(), "Running");
    vm.wait_ticks(paused_at);
}

#[test]
fn firecracker_go_sdk_sequence() {
    let mut vm = spawn("go-sdk", &["--api-sock", "{sock}", "--id", "sdk-vm", "--accel", "emu"]);
    vm.wait_ready();
    // `vmr --api-sock`: the API thread runs under its own filter stacked on main's.
    assert_eq!(thread_seccomp(vm.child.id(), "vmr-api"), (2, 2));
    let kernel = ticking_kernel(&vm.dir);
    let root = vm.dir.join("root.img");
    std::fs::write(&root, vec![0u8; 1 << 20]).unwrap();
    let info: serde_json::Value = serde_json::from_str(&vm.call("GET", "/", None).body).unwrap();
    assert_eq!((info["id"].as_str(), info["state"].as_str()), (Some("sdk-vm"), Some("Not started")));
    let version: serde_json::Value = serde_json::from_str(&vm.call("GET", "/version", None).body).unwrap();
    assert_eq!(version["firecracker_version"], vmr_vmm::FIRECRACKER_COMPAT_VERSION);
    assert_eq!(version["vmr_version"], vmr_vmm::VERSION);
    // Machine.Start: logger, machine config, boot source, drives, then InstanceStart.
    let log = vm.dir.join("vmr.log");
    vm.ok(
        "PUT",
        "/logger",
        &format!(
            r#"{{"log_path":"{}","level":"Debug","show_level":true,"show_log_origin":false}}"#,
            log.display()
        ),
    );
    vm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":64,"smt":false,"track_dirty_pages":false}"#,
    );
    let metrics = vm.dir.join("metrics.json");
    vm.ok("PUT", "/metrics", &format!(r#"{{"metrics_path":"{}"}}"#, metrics.display()));
    vm.ok(
        "PUT",
        "/boot-source",
        &format!(r#"{{"kernel_image_path":"{}","boot_args":"console=ttyS0"}}"#, kernel.display()),
    );
    vm.ok(
        "PUT",
        "/drives/1",
        &format!(
            r#"{{"drive_id":"1","path_on_host":"{}","is_root_device":true,"is_read_only":false}}"#,
            root.display()
        ),
    );
    vm.ok("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    assert_eq!(vm.state(), "Running");
    // The vmr extension: per-device counters, by the drive's API id.
    let counters: serde_json::Value =
        serde_json::from_str(&vm.call("GET", "/vmr/counters", None).body).unwrap();
    assert_eq!(counters["1"]["kind"], "block", "{counters}");
    assert_eq!(counters["1"]["write_bytes"], 0, "{counters}");
    vm.refused(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
        400,
        "after the VM has started",
    );
    vm.refused("PUT", "/boot-source", Some(r#"{"kernel_image_path":"/x"}"#), 400, "after the VM has started");
    check_pause_and_resume(&vm);
    // UpdateGuestDrive.
    let swapped = vm.dir.join("swapped.img");
    std::fs::write(&swapped, vec![0u8; 2 << 20]).unwrap();
    vm.ok("PATCH", "/drives/1", &format!(r#"{{"drive_id":"1","path_on_host":"{}"}}"#, swapped.display()));
    let config: serde_json::Value = serde_json::from_str(&vm.call("GET", "/vm/config", None).body).unwrap();
    assert_eq!(config["drives"][0]["path_on_host"], swapped.display().to_string());
    vm.refused(
        "PATCH",
        "/drives/1",
        Some(r#"{"drive_id":"1","path_on_host":"/no/such.img"}"#),
        400,
        "/no/such.img",
    );
    // UpdateGuestDrive with a rate limiter: the device's limiter changes live and
    // GET /vm/config reads it back from the device.
    vm.ok(
        "PATCH",
        "/drives/1",
        r#"{"drive_id":"1","rate_limiter":{"bandwidth":{"size":1048576,"refill_time":100}}}"#,
    );
    vm.ok("PATCH", "/drives/1", r#"{"drive_id":"1","rate_limiter":{"ops":{"size":50,"refill_time":1000}}}"#);
    let config: serde_json::Value = serde_json::from_str(&vm.call("GET", "/vm/config", None).body).unwrap();
    let limiter = &config["drives"][0]["rate_limiter"];
    assert_eq!(
        (limiter["bandwidth"]["size"].as_u64(), limiter["ops"]["size"].as_u64()),
        (Some(1048576), Some(50))
    );
    vm.refused(
        "PATCH",
        "/drives/1",
        Some(r#"{"drive_id":"1","rate_limiter":{"ops":{"size":5,"refill_time":0}}}"#),
        400,
        "refill_time",
    );
    vm.refused(
        "PATCH",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id":"eth0","tx_rate_limiter":{"ops":{"size":5,"refill_time":10}}}"#),
        400,
        "no network interface",
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("virtio-mmio"), "debug log lines reach the logger file: {logged}");
    vm.ok("PUT", "/actions", r#"{"action_type":"FlushMetrics"}"#);
    let lines = std::fs::read_to_string(vm.dir.join("metrics.json")).unwrap();
    let last: serde_json::Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
    assert!(last.as_object().is_some_and(|o| !o.is_empty()), "{lines}");
    // The API's own request counters, summed over the lines (each holds changes): every
    // request of this sequence counted by route, refusals as failures.
    let total = |group: &str, counter: &str| -> u64 {
        lines
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()[group][counter].as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        (total("patch_api_requests", "drive_count"), total("patch_api_requests", "drive_fails")),
        (5, 2)
    );
    assert_eq!(
        (total("patch_api_requests", "network_count"), total("patch_api_requests", "network_fails")),
        (1, 1)
    );
    assert_eq!((total("patch_api_requests", "vm_count"), total("patch_api_requests", "vm_fails")), (2, 0));
    // InstanceStart twice (the second refused) and this FlushMetrics.
    assert_eq!(
        (total("put_api_requests", "actions_count"), total("put_api_requests", "actions_fails")),
        (3, 1)
    );
    assert_eq!(
        (total("put_api_requests", "drive_count"), total("put_api_requests", "metrics_count")),
        (1, 1)
    );
    assert_eq!(total("get_api_requests", "device_counters_count"), 1);
    assert!(
        total("get_api_requests", "machine_cfg_count") >= 1
            && total("get_api_requests", "instance_info_count") >= 3
    );
    assert!(total("api_server", "process_startup_time_us") > 0);
    // StopVMM: SIGTERM.
    assert_eq!(vm.sigterm_and_wait(), 128 + libc::SIGTERM);
}

/// Kata's Go runtime (virtcontainers/fc.go) on `firecracker --version` output: line 1, split on
/// spaces, field 2 trimmed and without its "v", parsed as a semantic version (blang/semver's
/// `Make`: MAJOR.MINOR.PATCH without leading zeros, optional `-pre` and `+build` of
/// `[0-9A-Za-z-]` identifiers) and refused below `fcMinSupportedVersion` 0.21.1.
fn kata_check_version(output: &str) -> Result<(), String> {
    let line = output.split('\n').next().unwrap_or_default();
    let fields: Vec<&str> = line.split(' ').collect();
    let Some(field) = fields.get(1) else { return Err("getting FC version failed".into()) };
    let version = field.trim().strip_prefix('v').unwrap_or(field.trim());
    let (rest, build) = version.split_once('+').map_or((version, None), |(r, b)| (r, Some(b)));
    let (core, pre) = rest.split_once('-').map_or((rest, None), |(c, p)| (c, Some(p)));
    let ident = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    for ids in [pre, build].into_iter().flatten() {
        if !ids.split('.').all(ident) {
            return Err(format!("Malformed firecracker version: {version}"));
        }
    }
    let parts: Vec<&str> = core.split('.').collect();
    let number = |s: &&str| (s == &"0" || !s.starts_with('0')).then(|| s.parse::<u64>().ok()).flatten();
    let numbers: Vec<u64> = parts.iter().filter_map(number).collect();
    if parts.len() != 3 || numbers.len() != 3 {
        return Err(format!("Malformed firecracker version: {version}"));
    }
    // A pre-release sorts before its release; 0.21.1 has none.
    let v = (numbers[0], numbers[1], numbers[2]);
    if v < (0, 21, 1) || (v == (0, 21, 1) && pre.is_some()) {
        return Err(format!("version {version} is not supported"));
    }
    Ok(())
}

#[test]
fn kata_version_check_is_mimicked() {
    assert_eq!(
        kata_check_version("Firecracker v1.7.0\n\nSupported snapshot data format versions: 1.0.0\n"),
        Ok(())
    );
    assert_eq!(kata_check_version("Firecracker v0.21.1\n"), Ok(()));
    // vmr's own version alone would be refused: why vmr --version leads with the API level.
    assert!(kata_check_version("vmr v0.1.0\n").unwrap_err().contains("not supported"));
    assert!(kata_check_version("Firecracker v0.21.1-rc1\n").is_err());
    for bad in ["vmr", "vmr v1.7", "vmr v01.7.0", "vmr v1.7.0+", "vmr v1.7.0+a_b"] {
        assert!(
            kata_check_version(bad).unwrap_err().contains("FC version")
                || kata_check_version(bad).unwrap_err().contains("Malformed"),
            "{bad}"
        );
    }
}

#[test]
fn kata_go_runtime_sequence() {
    // `firecracker --version`, as fc.go's getVersionNumber/parseVersion/checkVersion read it.
    let out = Command::new(env!("CARGO_BIN_EXE_vmr")).arg("--version").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, format!("vmr v{}+vmr.{}\n", vmr_vmm::FIRECRACKER_COMPAT_VERSION, vmr_vmm::VERSION));
    assert_eq!(kata_check_version(&text), Ok(()));
    let dir = test_dir("kata-files");
    let kernel = ticking_kernel(&dir);
    let root = dir.join("root.img");
    std::fs::write(&root, vec![0u8; 1 << 20]).unwrap();
    // Kata pre-creates empty placeholder drives and later PATCHes them with real images.
    let mut drives = vec![
        serde_json::json!({"drive_id":"rootfs","path_on_host":root,"is_root_device":true,"is_read_only":true}),
    ];
    for i in 0..2 {
        let p = dir.join(format!("drive_{i}"));
        std::fs::write(&p, b"").unwrap();
        drives.push(serde_json::json!({"drive_id":format!("drive_{i}"),"path_on_host":p,"is_root_device":false,"is_read_only":false}));
    }
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": kernel, "boot_args": "console=ttyS0 reboot=k panic=1"},
        "drives": drives,
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "smt": false},
        "logger": {"log_path": dir.join("kata.log"), "level": "Debug", "show_level": true, "show_log_origin": true},
        "vsock": {"guest_cid": 3, "uds_path": dir.join("kata.hvsock"), "vsock_id": "root"},
    });
    let file = dir.join("fcConfig.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let file = file.display().to_string();
    let mut vm = spawn("kata", &["--api-sock", "{sock}", "--config-file", &file, "--accel", "emu"]);
    vm.wait_ready();
    vm.wait_running();
    vm.wait_ticks(2);
    let data = vm.dir.join("data.img");
    std::fs::write(&data, vec![0u8; 4 << 20]).unwrap();
    vm.ok(
        "PATCH",
        "/drives/drive_0",
        &format!(r#"{{"drive_id":"drive_0","path_on_host":"{}"}}"#, data.display()),
    );
    vm.refused(
        "PATCH",
        "/drives/drive_9",
        Some(r#"{"drive_id":"drive_9","path_on_host":"/x"}"#),
        400,
        "no drive",
    );
    assert_eq!(vm.sigterm_and_wait(), 128 + libc::SIGTERM);
}

#[test]
fn kata_runtime_rs_sequence() {
    let mut vm = spawn("runtime-rs", &["--api-sock", "{sock}", "--accel", "emu"]);
    vm.wait_ready();
    // `vmr --api-sock`: the API thread runs under its own filter stacked on main's.
    assert_eq!(thread_seccomp(vm.child.id(), "vmr-api"), (2, 2));
    let kernel = ticking_kernel(&vm.dir);
    let root = vm.dir.join("root.img");
    std::fs::write(&root, vec![0u8; 1 << 20]).unwrap();
    vm.ok(
        "PUT",
        "/boot-source",
        &format!(r#"{{"kernel_image_path":"{}","boot_args":"console=ttyS0"}}"#, kernel.display()),
    );
    vm.ok(
        "PUT",
        "/drives/rootfs",
        &format!(
            r#"{{"drive_id":"rootfs","path_on_host":"{}","is_root_device":false,"is_read_only":true}}"#,
            root.display()
        ),
    );
    vm.ok("PUT", "/machine-config", r#"{"vcpu_count":1,"mem_size_mib":64}"#);
    vm.ok(
        "PUT",
        "/vsock",
        &format!(r#"{{"guest_cid":3,"uds_path":"{}"}}"#, vm.dir.join("kata.hvsock").display()),
    );
    vm.ok("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    vm.wait_running();
    vm.wait_ticks(2);
    check_pause_and_resume(&vm);
    assert_eq!(vm.sigterm_and_wait(), 128 + libc::SIGTERM);
}

#[test]
fn run_with_an_api_socket_and_vmr_ctl() {
    let vm = run_with_api("run-ctl");
    vm.wait_ticks(2);
    // `vmr run --api-sock`: every thread is filtered, the API thread on top of main's filter.
    assert_eq!(thread_seccomp(vm.child.id(), "vmr-api"), (2, 2));
    assert_eq!(thread_seccomp(vm.child.id(), "vmr-vcpu0").0, 2);
    let sock = vm.sock.clone();
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_vmr"))
            .args(["ctl", "--api-sock"])
            .arg(&sock)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, _) = ctl(&["info"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("state    Running") && out.contains("64 MiB") && out.contains("run-ctl-files/ticking"),
        "{out}"
    );
    assert_eq!(ctl(&["pause"]).0, Some(0));
    let (_, json, _) = ctl(&["--json", "info"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["instance"]["state"], "Paused");
    assert_eq!(ctl(&["resume"]).1.trim(), "resumed");
    let (code, _, err) = ctl(&["set-drive", "disk0", "/nonexistent"]);
    assert_eq!(code, Some(1));
    assert!(err.starts_with("vmr: error: the VM refused: no drive with drive_id disk0"), "{err}");
    assert_eq!(err.lines().count(), 1);
    assert_eq!(vm.sigterm_and_wait(), 128 + libc::SIGTERM);
    let (code, _, err) = ctl(&["info"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot reach the API"), "{err}");
}

/// Shell clients (socat, `nc -N`) close their sending side as soon as the request is out; the
/// request must still be answered, with every header a client may send.
#[test]
fn a_client_that_half_closes_after_its_request_is_answered() {
    let mut vm = spawn("half-close", &["--api-sock", "{sock}", "--id", "half"]);
    vm.wait_ready();
    for headers in ["", "Accept: application/json\r\n", "Connection: close\r\n"] {
        for _ in 0..20 {
            let mut s = UnixStream::connect(&vm.sock).unwrap();
            write!(s, "GET / HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n").unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut reply = String::new();
            let _ = s.read_to_string(&mut reply);
            assert!(reply.starts_with("HTTP/1.1 200 "), "headers {headers:?}: reply {reply:?}");
            assert!(reply.contains(r#""state":"Not started""#), "{reply}");
        }
    }
}

#[test]
fn an_existing_socket_path_is_a_one_line_error() {
    let dir = test_dir("exists");
    let sock = dir.join("api.sock");
    std::fs::write(&sock, b"").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vmr")).arg("--api-sock").arg(&sock).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("already exists"), "{err}");
    assert!(sock.exists(), "vmr does not remove a path it did not create");
    let out = Command::new(env!("CARGO_BIN_EXE_vmr"))
        .arg("--api-sock")
        .arg("/nonexistent-dir/api.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot create the API socket"));
}

#[test]
fn bad_input_gets_the_right_status_and_the_vm_keeps_running() {
    let vm = run_with_api("bad");
    vm.wait_ticks(1);
    // A client that sends half a request and stalls holds only its own connection.
    let mut stalled = UnixStream::connect(&vm.sock).unwrap();
    stalled.write_all(b"PUT /vm HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"sta").unwrap();
    let mut half_head = UnixStream::connect(&vm.sock).unwrap();
    half_head.write_all(b"GET / HTTP/1.1\r\nHost: x").unwrap();
    vm.refused("PUT", "/machine-config", Some("{"), 400, "invalid JSON body");
    vm.refused("PUT", "/logger", Some(r#"{"level":"Info","colour":"red"}"#), 400, "unknown field `colour`");
    vm.refused(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":"1","mem_size_mib":64}"#),
        400,
        "invalid type",
    );
    vm.refused(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":1,"mem_size_mib":64}"#),
        400,
        "after the VM has started",
    );
    vm.refused("PATCH", "/vm", Some(r#"{"state":"Stopped"}"#), 400, "unknown variant");
    vm.refused("GET", "/nothing/here", None, 400, "Invalid request method and/or path");
    vm.refused("DELETE", "/", None, 400, "Invalid request method and/or path");
    for path in ["/mmds", "/balloon", "/hotplug/memory", "/pmem/p0"] {
        vm.refused("PUT", path, Some("{}"), 400, "not served by vmr");
    }
    // Snapshots: only of a paused VM, loaded only into a VMM that has not started one.
    let snap = r#"{"snapshot_path":"/nonexistent/s","mem_file_path":"/nonexistent/m"}"#;
    vm.refused("PUT", "/snapshot/create", Some(snap), 400, "pause it first");
    vm.refused("PUT", "/snapshot/create", Some("{}"), 400, "snapshot_path");
    vm.refused("PUT", "/snapshot/load", Some(snap), 400, "after the VM has started");
    vm.refused(
        "PUT",
        "/snapshot/create",
        Some(r#"{"snapshot_path":"s","mem_file_path":"m","snapshot_type":"Diff"}"#),
        400,
        "not supported yet",
    );
    vm.refused("PUT", "/metrics", Some(r#"{"metrics_path":"/tmp/m"}"#), 400, "after the VM has started");
    vm.refused("PUT", "/actions", Some(r#"{"action_type":"FlushMetrics"}"#), 400, "metrics");
    let big = format!(r#"{{"kernel_image_path":"{}"}}"#, "k".repeat(60_000));
    vm.refused("PUT", "/boot-source", Some(&big), 413, "larger than the limit");
    // Many clients at once.
    let sock = vm.sock.clone();
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || request(&sock, "GET", "/", None).map(|r| r.status).unwrap_or(0))
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), 200);
    }
    // The stalled client is answered (or dropped) after the timeout, never hangs the server.
    stalled.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut answer = String::new();
    let _ = stalled.read_to_string(&mut answer);
    assert!(answer.is_empty() || answer.contains("400"), "{answer}");
    assert_eq!(vm.state(), "Running");
    let n = vm.ticks();
    vm.wait_ticks(n);
    drop(half_head);
    assert_eq!(vm.sigterm_and_wait(), 128 + libc::SIGTERM);
}

#[test]
fn config_file_with_no_api_boots_and_bad_files_are_one_line_errors() {
    let dir = test_dir("no-api-files");
    let kernel = ticking_kernel(&dir);
    let file = dir.join("vm.json");
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": kernel, "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
    });
    std::fs::write(&file, config.to_string()).unwrap();
    let f = file.display().to_string();
    let vm = spawn("no-api", &["--config-file", &f, "--no-api", "--accel", "emu"]);
    vm.wait_ticks(2);
    assert!(!vm.sock.exists());
    assert_eq!(thread_seccomp(vm.child.id(), "vmr-vcpu0").0, 2, "--config-file runs filtered");
    assert_eq!(vm.sigterm_and_wait(), 128 + libc::SIGTERM);
    for (name, text, needle) in [
        (
            "typo.json",
            r#"{"boot-source":{"kernel_image_path":"/k"},"machine_config":{}}"#,
            "unknown field `machine_config`",
        ),
        (
            "mmds.json",
            r#"{"boot-source":{"kernel_image_path":"/k"},"mmds-config":{"network_interfaces":[]}}"#,
            "MMDS",
        ),
        ("broken.json", "{", "EOF"),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_vmr"))
            .arg("--config-file")
            .arg(&path)
            .arg("--no-api")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(err.contains(needle) && err.contains(name), "{name}: {err}");
    }
}

#[test]
fn seccomp_can_be_turned_off_in_every_mode() {
    let dir = test_dir("seccomp-off-files");
    let kernel = ticking_kernel(&dir).display().to_string();
    let file = dir.join("vm.json");
    let config = serde_json::json!({"boot-source": {"kernel_image_path": kernel}});
    std::fs::write(&file, config.to_string()).unwrap();
    let f = file.display().to_string();
    let modes: [(&str, &[&str]); 4] = [
        ("off-service", &["--api-sock", "{sock}", "--accel", "emu", "--seccomp=off"]),
        ("off-fc", &["--api-sock", "{sock}", "--accel", "emu", "--no-seccomp"]),
        ("off-file", &["--config-file", &f, "--api-sock", "{sock}", "--accel", "emu", "--seccomp=off"]),
        ("off-run", &["run", "--accel", "emu", "--kernel", &kernel, "--api-sock", "{sock}", "--seccomp=off"]),
    ];
    for (name, args) in modes {
        let mut vm = spawn(name, args);
        vm.wait_ready();
        assert_eq!(thread_seccomp(vm.child.id(), "vmr-api"), (0, 0), "{name}");
        assert_eq!(vm.sigterm_and_wait(), 128 + libc::SIGTERM, "{name}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vmr"))
        .args(["--api-sock", "/x", "--seccomp=off", "--no-seccomp"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}
