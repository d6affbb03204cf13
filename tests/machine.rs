//! The whole VMM on this host, whatever its KVM: tiny hand-made kernels run on the software CPU
//! (`--accel emu`) through the real machine (PVH boot, 16550 serial, ACPI power management,
//! i8042), checking what a user sees: console output, exit codes, crash reports, signals.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{tiny_pvh_kernel_with, LOAD};

const MSG: &[u8] = b"hello from a tiny guest\n\0";
const MSG_ADDR: u32 = LOAD as u32 + 0x100;
const IDT0_ADDR: u32 = LOAD as u32 + 0x200;

/// Prints MSG on COM1, then runs `action`.
fn print_then(action: &[u8]) -> Vec<u8> {
    let mut code = vec![0xbe]; // mov esi, MSG_ADDR
    code.extend_from_slice(&MSG_ADDR.to_le_bytes());
    code.extend_from_slice(&[
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xac, // loop: lodsb
        0x84, 0xc0, // test al, al
        0x74, 0x03, // jz done
        0xee, // out dx, al
        0xeb, 0xf8, // jmp loop
    ]);
    code.extend_from_slice(action);
    code
}

/// ACPI sleep control (port 0x600): SLP_TYP=5 | SLP_EN, as Linux's poweroff writes it.
const POWEROFF: &[u8] = &[0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee, 0xf4, 0xeb, 0xfd];
/// i8042 command 0xfe (pulse reset), as Linux's reboot=k writes it.
const RESET: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd];
/// Spin for ever.
const SPIN: &[u8] = &[0xeb, 0xfe];

fn triple_fault() -> Vec<u8> {
    let mut code = vec![0x0f, 0x01, 0x1d]; // lidt [IDT0_ADDR] (limit 0)
    code.extend_from_slice(&IDT0_ADDR.to_le_bytes());
    code.extend_from_slice(&[0x0f, 0x0b]); // ud2: #UD -> #GP -> #DF -> shutdown
    code
}

fn kernel(name: &str, code: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("machine");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let mut data = MSG.to_vec();
    data.resize(0x100, 0);
    data.extend_from_slice(&[0; 6]); // IDT0 at +0x200: limit 0, base 0
    tiny_pvh_kernel_with(&path, code, &data);
    path
}

fn run_emu(kernel: &PathBuf) -> Output {
    let start = Instant::now();
    let out = spawn_emu(kernel, &[]).wait_with_output().expect("vmr output");
    assert!(start.elapsed() < Duration::from_secs(30), "took {:?}", start.elapsed());
    out
}

/// Starts `vmr run --accel emu` on `kernel` with `extra` options, output piped.
fn spawn_emu(kernel: &PathBuf, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vmr"))
        .args(["run", "--accel", "emu", "--memory", "64M"])
        .args(extra)
        .arg("--kernel")
        .arg(kernel)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vmr did not start")
}

#[test]
fn guest_poweroff_ends_vmr_with_0_and_console_output_arrives() {
    let out = run_emu(&kernel("poweroff", &print_then(POWEROFF)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from a tiny guest\n");
    assert!(stderr.contains("vmr: accelerator: emu"), "stderr: {stderr}");
}

#[test]
fn guest_reset_ends_vmr_with_2() {
    let out = run_emu(&kernel("reset", &print_then(RESET)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("guest rebooted"), "stderr: {stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from a tiny guest"));
}

#[test]
fn triple_fault_ends_vmr_with_3_and_names_vcpu_and_registers() {
    let out = run_emu(&kernel("triple", &triple_fault()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    assert!(stderr.contains("vCPU 0: triple fault"), "stderr: {stderr}");
    assert!(stderr.contains("rip=0x"), "stderr: {stderr}");
    assert!(stderr.contains("cr0="), "stderr: {stderr}");
}

#[test]
fn sigterm_stops_a_spinning_guest_with_143() {
    let path = kernel("spin", &print_then(SPIN));
    let mut child = spawn_emu(&path, &["--cpus", "2"]);
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "vmr did not stop within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(143), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from a tiny guest"));
}

#[test]
fn reboot_restart_boots_the_guest_again() {
    let path = kernel("reset-restart", &print_then(RESET));
    let mut child = spawn_emu(&path, &["--reboot", "restart"]);
    // Read the console until the guest has booted three times.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).matches("hello from a tiny guest").count() >= 3 {
                break;
            }
        }
        String::from_utf8_lossy(&seen).matches("hello from a tiny guest").count()
    });
    let start = Instant::now();
    while !reader.is_finished() {
        assert!(start.elapsed() < Duration::from_secs(20), "the guest did not boot three times");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(reader.join().unwrap() >= 3);
    assert!(child.try_wait().unwrap().is_none(), "vmr exited instead of restarting the VM");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "stderr: {stderr}");
    assert!(stderr.contains("restarting the VM"), "stderr: {stderr}");
}

/// On an interactive terminal (a tmux pane): the guest's output shows, the terminal is raw while
/// the VM runs, `Ctrl-A x` ends vmr with 0, and the terminal settings are restored afterwards.
#[test]
fn ctrl_a_x_quits_and_the_terminal_is_restored() {
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(std::env::var("CI").is_err(), "tmux is missing (tests/setup.sh installs it)");
        eprintln!("skipped: tmux is not installed");
        return;
    }
    let path = kernel("spin-tty", &print_then(SPIN));
    let dir = path.parent().unwrap();
    let report = dir.join("tty-report");
    let _ = std::fs::remove_file(&report);
    let session = format!("vmr-test-{}", std::process::id());
    let script = format!(
        "stty -g > {r}.before; {vmr} run --accel emu --memory 64M --kernel {k}; echo \"exit=$?\" >> {r}; \
         stty -g > {r}.after; sleep 30",
        r = report.display(),
        vmr = env!("CARGO_BIN_EXE_vmr"),
        k = path.display()
    );
    let tmux = |args: &[&str]| Command::new("tmux").args(args).output().expect("tmux");
    assert!(tmux(&["new-session", "-d", "-s", &session, "-x", "120", "-y", "30", &script]).status.success());
    let pane = || String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout).into_owned();
    let start = Instant::now();
    while !pane().contains("hello from a tiny guest") {
        if start.elapsed() > Duration::from_secs(20) {
            tmux(&["kill-session", "-t", &session]);
            panic!("no guest output in the pane: {}", pane());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // While the VM runs, the pane's terminal is in raw mode (no canonical input, no echo).
    let tty = String::from_utf8_lossy(&tmux(&["display", "-p", "-t", &session, "#{pane_tty}"]).stdout)
        .trim()
        .to_string();
    let settings = Command::new("stty").arg("-a").stdin(std::fs::File::open(&tty).unwrap()).output().unwrap();
    let settings = String::from_utf8_lossy(&settings.stdout).into_owned();
    assert!(settings.contains("-icanon") && settings.contains("-echo "), "not raw while running: {settings}");
    tmux(&["send-keys", "-t", &session, "C-a", "x"]);
    let start = Instant::now();
    while !std::fs::read_to_string(&report).is_ok_and(|r| r.contains("exit="))
        || !report.with_extension("after").exists()
    {
        if start.elapsed() > Duration::from_secs(20) {
            tmux(&["kill-session", "-t", &session]);
            panic!("Ctrl-A x did not end vmr: {}", pane());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    tmux(&["kill-session", "-t", &session]);
    assert_eq!(std::fs::read_to_string(&report).unwrap().trim(), "exit=0");
    let before = std::fs::read_to_string(report.with_extension("before")).unwrap();
    let after = std::fs::read_to_string(report.with_extension("after")).unwrap();
    assert!(!before.is_empty());
    assert_eq!(before, after, "terminal settings were not restored");
}

/// `--accel auto` on a host whose KVM cannot run unmodified guests (kvm_pvm, or no /dev/kvm):
/// the software CPU runs the guest, and the one-line reason says why.
#[test]
fn auto_falls_back_to_the_software_cpu_and_says_why() {
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    if !pvm && std::path::Path::new("/dev/kvm").exists() {
        eprintln!("skipped: this host's KVM may run unmodified guests");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vmr"))
        .args(["run", "--memory", "64M", "--kernel"])
        .arg(kernel("auto-poweroff", &print_then(POWEROFF)))
        .stdin(Stdio::null())
        .output()
        .expect("vmr output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from a tiny guest\n");
    let line = stderr.lines().find(|l| l.starts_with("vmr: accelerator: emu (")).unwrap_or_else(|| {
        panic!("no accelerator line naming emu; stderr: {stderr}");
    });
    if pvm {
        assert!(line.contains("kvm_pvm") && line.contains("software x86-64 CPU"), "{line}");
    }
}

/// `--metrics-path`: when the VM ends, one JSON line of counters: the guest's 24 console
/// writes and its power-off write are port-I/O exits; the disk (given a rate limit) is listed.
#[test]
fn metrics_path_gets_the_guests_exits_and_devices() {
    let k = kernel("metrics", &print_then(POWEROFF));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("machine-metrics");
    std::fs::create_dir_all(&dir).unwrap();
    let (metrics, disk) = (dir.join("metrics.json"), dir.join("disk.raw"));
    let _ = std::fs::remove_file(&metrics);
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let disk_opt = format!("path={},bw=1M,iops=100", disk.display());
    let out = spawn_emu(&k, &["--metrics-path", metrics.to_str().unwrap(), "--disk", &disk_opt])
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&metrics).unwrap();
    let line = text.lines().last().expect("no metrics line");
    for needle in
        ["\"utc_timestamp_ms\":", "\"block_disk0\":{", "\"rate_limiter_throttled_events\":0", "\"vcpu\":{"]
    {
        assert!(line.contains(needle), "{needle} missing in {line}");
    }
    let io_out: u64 = line
        .split("\"exit_io_out\":")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(io_out >= 24, "{io_out} port writes in {line}");
}
