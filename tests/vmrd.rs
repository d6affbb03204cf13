//! vmrd on the host: the daemon in a temporary state directory, driven by the `vmr` CLI as a
//! user would. Pools and volumes and every refusal; VMs as their own processes that outlive a
//! SIGKILLed vmrd and are found again; autostart; console viewers; the default Debian guest on
//! the software CPU for the guest-visible parts (console input, reboot, poweroff).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::tiny_pvh_kernel_with;

const VMR: &str = env!("CARGO_BIN_EXE_vmr");

fn test_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A vmrd on `dir/state`; killed on drop, and every VM it started with it (so a failed
/// assertion leaves nothing running).
struct Vmrd {
    child: Option<Child>,
    dir: PathBuf,
    extra: Vec<String>,
    /// Run in a network namespace of its own (`unshare -n`): networks never touch the host's.
    netns: bool,
}

impl Vmrd {
    fn start(dir: &Path, extra: &[&str]) -> Vmrd {
        let mut d = Vmrd {
            child: None,
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            netns: false,
        };
        d.respawn();
        d
    }

    fn start_in_netns(dir: &Path) -> Vmrd {
        let mut d = Vmrd { child: None, dir: dir.to_path_buf(), extra: vec![], netns: true };
        d.respawn();
        d
    }

    /// Runs a command in vmrd's network namespace.
    fn in_netns(&self, cmd: &str) -> String {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let out = Command::new("nsenter").args(["-t", &pid, "-n", "sh", "-c", cmd]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("state/vmrd.sock")
    }

    fn respawn(&mut self) {
        let mut cmd = if self.netns {
            let mut c = Command::new("unshare");
            c.args(["-n", VMR]);
            c
        } else {
            Command::new(VMR)
        };
        let child = cmd
            .args(["daemon", "--accel", "emu", "--state-dir"])
            .arg(self.dir.join("state"))
            .args(&self.extra)
            .stderr(std::fs::File::create(self.dir.join("vmrd.log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while !self.vmr(&["list"]).status.success() {
            assert!(start.elapsed() < Duration::from_secs(10), "vmrd did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&mut self, sig: i32) {
        let mut child = self.child.take().expect("vmrd runs");
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(child.id() as i32, sig) };
        child.wait().unwrap();
    }

    fn vmr(&self, args: &[&str]) -> Output {
        Command::new(VMR).args(args).env("VMRD_SOCKET", self.socket()).output().unwrap()
    }

    /// Runs a verb that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.vmr(args);
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "vmr {args:?} failed: {stderr}{stdout}");
        stdout.into_owned()
    }

    /// Runs a verb that must fail with one line on stderr; that line.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.vmr(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "vmr {args:?} should fail: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    }

    fn info_field(&self, vm: &str, field: &str) -> Option<String> {
        let info = self.ok(&["info", vm]);
        info.lines().find_map(|l| l.strip_prefix(field)).map(|v| v.trim().to_string())
    }
}

impl Drop for Vmrd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for entry in std::fs::read_dir(self.dir.join("state/run")).into_iter().flatten().flatten() {
            if let Some(pid) =
                std::fs::read_to_string(entry.path().join("pid")).ok().and_then(|p| p.trim().parse().ok())
            {
                // SAFETY: a VM this test started (its pid file in the test's own state dir).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"))
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    path.display().to_string()
}

#[test]
fn pools_volumes_and_bad_input() {
    let dir = test_dir("vmrd-pools");
    let pool = dir.join("pool");
    // Before vmrd runs: one line saying so.
    let absent = Vmrd { child: None, dir: dir.clone(), extra: vec![], netns: false };
    assert!(absent.fails(&["list"]).contains("vmrd is not running"));
    drop(absent);
    let d = Vmrd::start(&dir, &[]);

    d.ok(&["pool-define", "default", pool.to_str().unwrap()]);
    assert!(d.fails(&["pool-define", "default", "/tmp/elsewhere"]).contains("already exists"));
    assert!(d.fails(&["vol-list"]).contains("pool default is not started"));
    assert!(d.fails(&["pool-start", "default"]).contains("pool-build"));
    d.ok(&["pool-build", "default"]);
    d.ok(&["pool-start", "default"]);
    assert!(d.ok(&["pool-list"]).contains("default          active   0"));
    assert!(d.ok(&["pool-info", "default"]).contains("built      yes"));
    assert!(d.fails(&["pool-info", "nope"]).contains("no pool named 'nope'"));

    d.ok(&["vol-create", "a.raw", "64M"]);
    d.ok(&["vol-create", "b.qcow2", "1G", "--format", "qcow2"]);
    assert!(d.fails(&["vol-create", "a.raw", "1M"]).contains("already exists"));
    assert!(d.fails(&["vol-create", "c", "12Q"]).contains("size '12Q'"));
    d.ok(&["vol-clone", "b.qcow2", "c.qcow2", "--overlay"]);
    d.ok(&["vol-clone", "a.raw", "d.raw"]);
    d.ok(&["vol-resize", "d.raw", "128M"]);
    assert!(d.fails(&["vol-resize", "d.raw", "1M"]).contains("shrinking"));
    d.ok(&["vol-resize", "c.qcow2", "2G"]);
    assert!(d.ok(&["vol-info", "c.qcow2"]).contains("capacity    2 GiB"));
    let info = d.ok(&["vol-info", "c.qcow2"]);
    assert!(
        info.contains("format      qcow2")
            && info.contains("capacity    2 GiB")
            && info.contains("backing     b.qcow2"),
        "{info}"
    );
    assert!(d.ok(&["vol-info", "d.raw"]).contains("capacity    128 MiB (134217728 bytes)"));
    let import = write(&dir.join("seed.img"), "seed data");
    d.ok(&["vol-import", &import, "--name", "seed"]);
    assert_eq!(std::fs::read(pool.join("seed")).unwrap(), b"seed data");
    assert!(d.fails(&["vol-info", "nope"]).contains("no volume 'nope' in pool default"));
    assert!(d.fails(&["vol-delete", "b.qcow2"]).contains("is the base of c.qcow2"));
    let list = d.ok(&["vol-list"]);
    assert_eq!(list.lines().count(), 6, "{list}");
    if Command::new("qemu-img").arg("--version").output().is_ok() {
        for vol in ["b.qcow2", "c.qcow2"] {
            let check = Command::new("qemu-img").args(["check", "-U"]).arg(pool.join(vol)).output().unwrap();
            assert!(
                check.status.success(),
                "qemu-img check {vol}: {}",
                String::from_utf8_lossy(&check.stdout)
            );
        }
    }

    // VM definitions: errors name the line and field; a VM using a volume protects it.
    let bad = write(&dir.join("bad.toml"), "name = \"v\"\nvcpus = 2\nmemroy = \"1G\"\n");
    let err = d.fails(&["define", &bad]);
    assert!(err.contains("bad.toml: line 3, column 1: unknown field `memroy`"), "{err}");
    let bad = write(&dir.join("bad2.toml"), "name = \"v\"\n[[disk]]\nvolume = \"default/none\"\n");
    assert!(d
        .fails(&["define", &bad])
        .contains("no volume 'none' in pool default (give a size to create it)"));
    let kernel =
        write(&dir.join("missing-kernel.toml"), "name = \"broken\"\nkernel = \"/nonexistent/vmlinux\"\n");
    let def = write(
        &dir.join("v.toml"),
        "name = \"v\"\nmemory = \"64M\"\nkernel = \"/nonexistent/vmlinux\"\n[[disk]]\nvolume = \"default/a.raw\"\n[[disk]]\nvolume = \"default/v-data\"\nsize = \"8M\"\nformat = \"qcow2\"\n",
    );
    d.ok(&["define", &def]);
    assert!(d.fails(&["define", &def]).contains("a VM named 'v' is already defined"));
    assert!(pool.join("v-data").exists(), "the definition created its volume");
    assert!(d.fails(&["vol-delete", "a.raw"]).contains("volume default/a.raw is used by VM v"));
    assert!(d.fails(&["pool-delete", "default"]).contains("still holds"));
    // A VM that cannot start: vmr's own error line comes back.
    d.ok(&["define", &kernel]);
    let err = d.fails(&["start", "broken"]);
    assert!(err.contains("VM broken failed to start:") && err.contains("/nonexistent/vmlinux"), "{err}");
    assert!(d.fails(&["start", "ghost"]).contains("no VM named 'ghost'"));
    assert!(d.fails(&["suspend", "v"]).contains("VM v is not running"));
    assert!(d.fails(&["autostart", "ghost", "on"]).contains("no VM named 'ghost'"));
    // undefine removes the volume the definition created, never one it only used.
    let out = d.ok(&["undefine", "v"]);
    assert!(out.contains("removed volume") && out.contains("v-data"), "{out}");
    assert!(!pool.join("v-data").exists() && pool.join("a.raw").exists());
    d.ok(&["vol-delete", "a.raw"]);
    d.ok(&["undefine", "broken"]);
    assert_eq!(d.ok(&["list", "--all"]).lines().count(), 1, "only the header is left");
    for vol in ["c.qcow2", "b.qcow2", "d.raw", "seed"] {
        d.ok(&["vol-delete", vol]);
    }
    d.ok(&["pool-delete", "default"]);
    assert!(!pool.exists(), "pool-delete removes the empty folder");
}

fn ticking_kernel(dir: &Path) -> PathBuf {
    let path = dir.join("ticking");
    common::ticking_kernel(&path, 200_000);
    path
}

fn log_len(d: &Vmrd, vm: &str) -> u64 {
    std::fs::metadata(d.dir.join(format!("state/run/{vm}/console.log"))).map(|m| m.len()).unwrap_or(0)
}

/// A console viewer: reads `vmr console` output on a thread.
struct Viewer {
    child: Child,
    out: std::sync::mpsc::Receiver<u8>,
}

impl Viewer {
    fn attach(d: &Vmrd, vm: &str) -> Viewer {
        let mut child = Command::new(VMR)
            .args(["console", vm])
            .env("VMRD_SOCKET", d.socket())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, out) = std::sync::mpsc::channel();
        let mut stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut b = [0u8; 1];
            while stdout.read(&mut b).is_ok_and(|n| n == 1) && tx.send(b[0]).is_ok() {}
        });
        Viewer { child, out }
    }

    /// Output until `needle` shows up (panics after `within`).
    fn wait_for(&self, needle: &str, within: Duration) -> String {
        let end = Instant::now() + within;
        let mut seen = Vec::new();
        while Instant::now() < end {
            if let Ok(b) = self.out.recv_timeout(Duration::from_millis(100)) {
                seen.push(b);
                if String::from_utf8_lossy(&seen).contains(needle) {
                    return String::from_utf8_lossy(&seen).into_owned();
                }
            }
        }
        panic!("no '{needle}' on the console; saw: {}", String::from_utf8_lossy(&seen));
    }

    fn send(&mut self, bytes: &[u8]) {
        self.child.stdin.as_mut().unwrap().write_all(bytes).unwrap();
    }

    /// Ctrl-]: the viewer ends with 0 and says so.
    fn detach(mut self) {
        self.send(&[0x1d]);
        let out = self.child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("Detached"));
    }
}

#[test]
fn vms_outlive_a_killed_vmrd_autostart_and_share_their_console() {
    let dir = test_dir("vmrd-vms");
    let kernel = ticking_kernel(&dir);
    let mut d = Vmrd::start(&dir, &["--console-log-max", "4K"]);
    d.ok(&["pool-define", "default", dir.join("pool").to_str().unwrap()]);
    d.ok(&["pool-build", "default"]);
    d.ok(&["pool-start", "default"]);
    let def = write(
        &dir.join("t.toml"),
        &format!(
            "# a ticking test VM\nname = \"t\"\nmemory = \"64M\"\nkernel = \"{}\"\n[[disk]]\nvolume = \"default/t-root\"\nsize = \"16M\"\n",
            kernel.display()
        ),
    );
    d.ok(&["define", &def]);
    assert_eq!(d.ok(&["dumpconfig", "t"]), std::fs::read_to_string(&def).unwrap(), "comments kept");
    assert!(d.ok(&["list"]).lines().count() == 1, "list without --all shows running VMs only");
    d.ok(&["start", "t"]);
    assert!(d.fails(&["start", "t"]).contains("already running"));
    let pid: i32 = d.info_field("t", "pid").unwrap().parse().unwrap();
    assert!(d.ok(&["list"]).contains("t                        running  off"));

    // Two viewers at once see the same output; Ctrl-] detaches one, the VM runs on.
    let v1 = Viewer::attach(&d, "t");
    let v2 = Viewer::attach(&d, "t");
    v1.wait_for("...", Duration::from_secs(30));
    v2.wait_for("...", Duration::from_secs(30));
    v1.detach();
    v2.detach();

    d.ok(&["suspend", "t"]);
    assert_eq!(d.info_field("t", "state").as_deref(), Some("paused"));
    let paused_at = log_len(&d, "t");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(log_len(&d, "t"), paused_at, "no console output while suspended");
    d.ok(&["resume", "t"]);
    assert_eq!(d.info_field("t", "state").as_deref(), Some("running"));

    // SIGKILL of vmrd: the VM runs on, and the next vmrd finds it.
    d.signal(libc::SIGKILL);
    assert!(alive(pid), "the VM survives vmrd");
    d.respawn();
    assert_eq!(d.info_field("t", "pid"), Some(pid.to_string()));
    assert!(d.ok(&["list"]).contains("t                        running"));
    assert!(d.fails(&["vol-delete", "t-root"]).contains("used by running VM t"));
    assert!(d.fails(&["vol-resize", "t-root", "32M"]).contains("used by running VM t"));
    assert!(d.fails(&["undefine", "t"]).contains("VM t is running"));
    // The console log is rotated past --console-log-max.
    let start = Instant::now();
    while !dir.join("state/run/t/console.log.1").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "console log not rotated ({} bytes)",
            log_len(&d, "t")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(log_len(&d, "t") < 64 << 10);

    // The ticking guest has no ACPI: shutdown says so after its timeout; --force stops it.
    let err = d.fails(&["shutdown", "t", "--timeout", "1"]);
    assert!(err.contains("did not shut down within 1 s") && err.contains("--force"), "{err}");
    assert!(d.ok(&["shutdown", "t", "--timeout", "1", "--force"]).contains("destroyed"));
    assert!(!alive(pid));
    assert_eq!(d.info_field("t", "state").as_deref(), Some("stopped"));

    // edit: validated before saving; a good edit is saved.
    let edit = |d: &Vmrd, script: &str| {
        Command::new(VMR)
            .args(["edit", "t"])
            .env("VMRD_SOCKET", d.socket())
            .env("EDITOR", script)
            .output()
            .unwrap()
    };
    let out = edit(&d, "sed -i s/memory/memroy/");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unknown field `memroy`"));
    assert!(d.ok(&["dumpconfig", "t"]).contains("memory = \"64M\""), "a refused edit changes nothing");
    assert!(edit(&d, "sed -i s/64M/96M/").status.success());
    assert!(d.ok(&["info", "t"]).contains("memory     96 MiB"));

    // Autostart: the next vmrd starts it.
    d.ok(&["autostart", "t", "on"]);
    d.signal(libc::SIGTERM);
    assert!(!dir.join("state/vmrd.sock").exists(), "a stopped vmrd removes its socket");
    d.respawn();
    let start = Instant::now();
    while d.info_field("t", "state").as_deref() != Some("running") {
        assert!(start.elapsed() < Duration::from_secs(20), "autostart did not start t");
        std::thread::sleep(Duration::from_millis(100));
    }
    d.ok(&["destroy", "t"]);
    assert_eq!(d.info_field("t", "last exit").as_deref(), Some("143"));
    d.ok(&["undefine", "t"]);
    assert!(!dir.join("pool/t-root").exists());
}

/// The default Debian guest (software CPU): console input reaches its shell, reboot boots it
/// again in the same process, `poweroff` in the guest stops the VM with exit 0.
#[test]
fn default_guest_console_reboot_and_poweroff() {
    let pull = Command::new(VMR).args(["image", "pull"]).output().unwrap();
    assert!(pull.status.success(), "vmr image pull failed");
    let dir = test_dir("vmrd-guest");
    let d = Vmrd::start(&dir, &[]);
    let def = write(&dir.join("g.toml"), "name = \"g\"\nmemory = \"256M\"\n");
    d.ok(&["define", &def]);
    let mut viewer = {
        d.ok(&["start", "g"]);
        Viewer::attach(&d, "g")
    };
    let marker = "vmr-guest: init reached";
    viewer.wait_for(marker, Duration::from_secs(600));
    viewer.send(b"echo VMR-CONSOLE-$((6*7))\n");
    viewer.wait_for("VMR-CONSOLE-42", Duration::from_secs(60));
    let pid = d.info_field("g", "pid").unwrap();
    d.ok(&["reboot", "g"]);
    viewer.wait_for(marker, Duration::from_secs(600));
    assert_eq!(d.info_field("g", "pid"), Some(pid), "vmr boots the guest again in the same process");
    viewer.send(b"poweroff -f\n");
    let out = viewer.child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("VM stopped"), "the viewer ends with the VM");
    assert_eq!(d.info_field("g", "state").as_deref(), Some("stopped"));
    assert_eq!(d.info_field("g", "last exit").as_deref(), Some("0"));
    let log = std::fs::read_to_string(dir.join("state/run/g/console.log")).unwrap();
    assert_eq!(log.matches(marker).count(), 2, "two boots in the console log");
}

/// Many clients at once: each name is defined exactly once, duplicates are refused, and the
/// state is whole afterwards (no journal entries, no temporary files).
#[test]
fn concurrent_clients_do_not_corrupt_state() {
    let dir = test_dir("vmrd-concurrent");
    let d = Vmrd::start(&dir, &[]);
    let defs: Vec<String> =
        (0..6).map(|i| write(&dir.join(format!("c{i}.toml")), &format!("name = \"c{i}\"\n"))).collect();
    let socket = d.socket();
    let outcomes: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..18)
            .map(|n| {
                let (def, socket) = (defs[n % 6].clone(), socket.clone());
                s.spawn(move || {
                    Command::new(VMR)
                        .args(["define", &def])
                        .env("VMRD_SOCKET", socket)
                        .output()
                        .unwrap()
                        .status
                        .success()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 6, "each of 6 names defined once: {outcomes:?}");
    assert_eq!(d.ok(&["list", "--all"]).lines().count(), 7);
    std::thread::scope(|s| {
        for i in 0..6 {
            let socket = socket.clone();
            s.spawn(move || {
                let out = Command::new(VMR)
                    .args(["undefine", &format!("c{i}")])
                    .env("VMRD_SOCKET", socket)
                    .output()
                    .unwrap();
                assert!(out.status.success());
            });
        }
    });
    assert_eq!(std::fs::read_dir(dir.join("state/journal")).unwrap().count(), 0);
    let leftovers: Vec<_> =
        std::fs::read_dir(dir.join("state/vms")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Figures for docs/BENCHMARKS.md:
/// `cargo test --release --test vmrd bench_vmrd -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_vmrd() {
    let dir = test_dir("vmrd-bench");
    // Prints '.' once, then halts for ever (no host CPU).
    let kernel = dir.join("dot-halt");
    tiny_pvh_kernel_with(&kernel, &[0x66, 0xba, 0xf8, 0x03, 0xb0, b'.', 0xee, 0xf4, 0xeb, 0xfd], &[]);
    let d = Vmrd::start(&dir, &[]);
    for i in 0..100 {
        let def = write(
            &dir.join("v.toml"),
            &format!("name = \"v{i}\"\nmemory = \"64M\"\nkernel = \"{}\"\n", kernel.display()),
        );
        d.ok(&["define", &def]);
    }
    let mut list = Vec::new();
    let mut api = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        d.ok(&["list", "--all"]);
        list.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let r = vmr_vmm::api::client::request(&d.socket(), "GET", "/vms?all=true", None).unwrap();
        assert!(r.body.matches("\"name\"").count() == 100);
        api.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "vmr list --all, 100 defined VMs: median {:.1} ms (GET /vms alone {:.1} ms)",
        median(list),
        median(api)
    );

    // Start until the VM's API answers (what `vmr start` waits for): through vmrd (the CLI
    // process included) against `vmr run --api-sock` polled directly.
    let (mut via_vmrd, mut direct) = (Vec::new(), Vec::new());
    for run in 0..7 {
        let t = Instant::now();
        d.ok(&["start", "v0"]);
        via_vmrd.push(t.elapsed().as_secs_f64() * 1e3);
        d.ok(&["destroy", "v0"]);
        let sock = dir.join(format!("direct{run}.sock"));
        let t = Instant::now();
        let mut child = Command::new(VMR)
            .args(["run", "--accel", "emu", "--memory", "64M", "--reboot", "restart", "--kernel"])
            .arg(&kernel)
            .arg("--api-sock")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        while !(sock.exists() && vmr_vmm::api::client::request(&sock, "GET", "/", None).is_ok()) {
            std::thread::sleep(Duration::from_millis(1));
        }
        direct.push(t.elapsed().as_secs_f64() * 1e3);
        child.kill().unwrap();
        child.wait().unwrap();
    }
    println!(
        "start until the VM's API answers: vmr start (via vmrd) median {:.1} ms, vmr run --api-sock median {:.1} ms",
        median(via_vmrd),
        median(direct)
    );

    for i in 0..20 {
        d.ok(&["start", &format!("v{i}")]);
    }
    let pid = d.child.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status.lines().find(|l| l.starts_with("VmRSS")).unwrap().to_string();
    println!("vmrd with 100 defined and 20 running VMs: {rss}");
    let t = Instant::now();
    d.ok(&["list"]);
    println!("vmr list with 20 running: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    for i in 0..20 {
        d.ok(&["destroy", &format!("v{i}")]);
    }
}

/// Every vmr process whose command line mentions `dir` (the VMs of one test's state dir).
fn vm_processes(dir: &Path) -> Vec<i32> {
    let needle = dir.join("state/run").display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            alive(*pid) && String::from_utf8_lossy(&cmdline).contains(&needle)
        })
        .collect()
}

/// A start/stop storm from concurrent clients on 10 VMs: every answer is a success or a
/// one-line refusal of the state ("already running", "not running"); afterwards a start of
/// all makes exactly one process each, a destroy of all leaves none.
#[test]
fn start_stop_storm_ends_in_the_state_asked_for() {
    let dir = test_dir("vmrd-storm");
    let kernel = dir.join("dot-halt");
    tiny_pvh_kernel_with(&kernel, &[0x66, 0xba, 0xf8, 0x03, 0xb0, b'.', 0xee, 0xf4, 0xeb, 0xfd], &[]);
    let d = Vmrd::start(&dir, &[]);
    const VMS: usize = 10;
    for i in 0..VMS {
        let def = write(
            &dir.join("s.toml"),
            &format!("name = \"s{i}\"\nmemory = \"32M\"\nkernel = \"{}\"\n", kernel.display()),
        );
        d.ok(&["define", &def]);
    }
    let run = |verb: &str, vm: usize| {
        let out = Command::new(VMR)
            .args([verb, &format!("s{vm}")])
            .env("VMRD_SOCKET", d.socket())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            // A start racing a destroy of the same VM reports the VM's end.
            out.status.success()
                || err.contains("already running")
                || err.contains("is not running")
                || err.contains("stopped by signal"),
            "{verb} s{vm}: {err}"
        );
    };
    std::thread::scope(|s| {
        for t in 0..4usize {
            s.spawn(move || {
                for n in 0..12usize {
                    let vm = (t * 7 + n * 3) % VMS;
                    run(if (t + n) % 2 == 0 { "start" } else { "destroy" }, vm);
                }
            });
        }
    });
    std::thread::scope(|s| {
        for t in 0..3 {
            s.spawn(move || (0..VMS).for_each(|vm| run("start", (vm + t) % VMS)));
        }
    });
    let list = d.ok(&["list"]);
    assert_eq!(list.matches(" running ").count(), VMS, "{list}");
    assert_eq!(vm_processes(&dir).len(), VMS, "one process per VM");
    std::thread::scope(|s| {
        for t in 0..3 {
            s.spawn(move || (0..VMS).for_each(|vm| run("destroy", (vm + t) % VMS)));
        }
    });
    assert_eq!(d.ok(&["list"]).lines().count(), 1, "none running");
    assert!(vm_processes(&dir).is_empty(), "no VM process left");
    for i in 0..VMS {
        assert!(!dir.join(format!("state/run/s{i}/api.sock")).exists(), "vmr removes its API socket");
    }
}

/// A NAT network in a network namespace of the test's own: two default guests get DHCP leases
/// from vmrd's dnsmasq, reach the gateway and each other; `net-leases` lists them; an isolated
/// network's forwarding is dropped in vmr's table; stopping everything leaves no tap, bridge or
/// dnsmasq behind.
#[test]
fn nat_network_gives_guests_leases_and_they_reach_each_other() {
    for tool in ["dnsmasq", "nft", "unshare", "nsenter"] {
        let found =
            Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap().status.success();
        assert!(found, "{tool} is missing: tests/setup.sh installs dnsmasq-base and nftables");
    }
    let pull = Command::new(VMR).args(["image", "pull"]).output().unwrap();
    assert!(pull.status.success(), "vmr image pull failed");
    let dir = test_dir("vmrd-net");
    let d = Vmrd::start_in_netns(&dir);
    assert!(d.fails(&["net-define", "n1", "--type", "nat"]).contains("needs --address"));
    d.ok(&["net-define", "n1", "--type", "nat", "--address", "10.77.0.1/24"]);
    assert!(d
        .fails(&["net-define", "n2", "--type", "isolated", "--address", "10.77.0.129/25"])
        .contains("overlaps network n1"));
    d.ok(&["net-define", "iso", "--type", "isolated", "--address", "10.78.0.1/24"]);
    d.ok(&["net-start", "n1"]);
    d.ok(&["net-start", "iso"]);
    // A bridge network attaches to an existing bridge, and only to one.
    d.ok(&["net-define", "nosuch", "--type", "bridge", "--bridge", "nosuch0"]);
    assert!(d.fails(&["net-start", "nosuch"]).contains("nosuch0 is not a bridge"));
    d.ok(&["net-define", "shared", "--type", "bridge", "--bridge", "vmr-iso"]);
    d.ok(&["net-start", "shared"]);
    let table = d.in_netns("nft list table ip vmr");
    assert!(table.contains("ip saddr 10.77.0.0/24 ip daddr != 10.77.0.0/24 masquerade"), "{table}");
    assert!(
        table.contains("iifname \"vmr-iso\" drop") && table.contains("oifname \"vmr-iso\" drop"),
        "{table}"
    );
    for vm in ["g1", "g2"] {
        let def = write(
            &dir.join(format!("{vm}.toml")),
            &format!("name = \"{vm}\"\nmemory = \"256M\"\n[[nic]]\nnetwork = \"n1\"\n"),
        );
        d.ok(&["define", &def]);
        d.ok(&["start", vm]);
    }
    assert!(d.fails(&["net-stop", "n1"]).contains("used by running VM(s) g1, g2"));
    let marker = "vmr-guest: init reached";
    let mut viewers: Vec<Viewer> = ["g1", "g2"].iter().map(|vm| Viewer::attach(&d, vm)).collect();
    let mut ips = Vec::new();
    for v in viewers.iter_mut() {
        v.wait_for(marker, Duration::from_secs(600));
        // busybox udhcpc configures nothing itself: a two-line script does.
        v.send(b"printf '#!/bin/sh\\n[ \"$1\" = bound ] && ip addr add $ip/$mask dev $interface && echo VMR-IP=$ip.\\n' > /tmp/dhcp; chmod +x /tmp/dhcp; ip link set eth0 up; udhcpc -i eth0 -n -q -s /tmp/dhcp\n");
        let out = v.wait_for("VMR-IP=10.77.0.", Duration::from_secs(120));
        let out = out + &v.wait_for(".\r", Duration::from_secs(10));
        let ip = out.split("VMR-IP=").last().unwrap().split(".\r").next().unwrap().to_string();
        ips.push(ip);
    }
    assert_ne!(ips[0], ips[1]);
    for (v, other) in viewers.iter_mut().zip([ips[1].clone(), ips[0].clone()]) {
        v.send(
            format!("ping -c 1 -W 5 10.77.0.1 && ping -c 1 -W 5 {other} && echo VMR-PING-$((40+2))\n")
                .as_bytes(),
        );
        v.wait_for("VMR-PING-42", Duration::from_secs(60));
    }
    let leases = d.ok(&["net-leases", "n1"]);
    for ip in &ips {
        assert!(leases.contains(ip.as_str()), "{ip} not in {leases}");
    }
    for v in viewers {
        v.detach();
    }
    d.ok(&["destroy", "g1"]);
    d.ok(&["destroy", "g2"]);
    d.ok(&["net-stop", "n1"]);
    d.ok(&["net-stop", "shared"]);
    assert!(d.in_netns("ip -o link show").contains("vmr-iso"), "stopping a bridge network keeps the bridge");
    d.ok(&["net-stop", "iso"]);
    let links = d.in_netns("ip -o link show");
    assert!(!links.contains("vmr"), "taps and bridges are gone: {links}");
    assert!(!d.in_netns("nft list table ip vmr").contains("vmr-n1"));
    let dnsmasq =
        Command::new("pgrep").args(["-f", dir.join("state/nets").to_str().unwrap()]).output().unwrap();
    assert!(dnsmasq.stdout.is_empty(), "dnsmasq stopped");
    d.ok(&["net-delete", "n1"]);
}
