//! The default Debian guest on the software CPU, driven only through the API (issue 8): the
//! guest-visible parts of the contract. Configured over the socket and started with
//! `InstanceStart`, it reaches its init marker; a counter it prints stops while the VM is paused
//! and goes on after resume; a swapped drive's new size reaches the guest (config-change
//! interrupt); the power button (`vmr:PowerButton`) powers the guest off, which ends vmr with
//! 0. A second guest, booted by `vmr run --api-sock`, restarts on `vmr ctl ctrl-alt-del`, which
//! ends vmr cleanly (exit code 2, as Firecracker ends on a guest reboot).
//!
//! Slow by nature (an interpreter booting a distribution kernel): one boot serves every check
//! of the first test.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use vmr_vmm::api::client::request;

const MARKER: &str = vmr_image::guest::BOOT_MARKER;
const POWER_BUTTON_MARKER: &str = vmr_image::guest::POWER_BUTTON_MARKER;
const DEADLINE: Duration = Duration::from_secs(900);

fn put(sock: &Path, method: &str, path: &str, body: String) {
    let r = request(sock, method, path, Some(&body)).unwrap();
    assert_eq!(r.status, 204, "{method} {path} {body}: {r:?}");
}

/// Waits for a console line for which `pick` returns Some; collects every line into `seen`.
fn wait_line<T>(
    rx: &Receiver<String>,
    seen: &mut Vec<String>,
    within: Duration,
    pick: impl Fn(&str) -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let line = line.trim_end_matches('\r').to_string();
            let found = pick(&line);
            seen.push(line);
            if found.is_some() {
                return found;
            }
        }
    }
    None
}

/// A failed assertion must not leave a guest running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

type Lines = Receiver<String>;
type Stderr = std::thread::JoinHandle<Vec<String>>;

/// Starts vmr with `args` then `sock`; its console lines arrive on the receiver, its stderr
/// lines are collected by the thread.
fn spawn(args: &[&str], sock: &Path, stdin: Stdio) -> (KillOnDrop, Lines, Stderr) {
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_vmr"))
            .args(args)
            .arg(sock)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        BufReader::new(out).lines().map_while(Result::ok).for_each(|l| drop(tx.send(l)))
    });
    let err = child.0.stderr.take().unwrap();
    let errs =
        std::thread::spawn(move || BufReader::new(err).lines().map_while(Result::ok).collect::<Vec<_>>());
    (child, rx, errs)
}

fn count(line: &str) -> Option<u64> {
    line.split("VMR-COUNT=").nth(1).and_then(|v| v.trim().parse().ok())
}

#[test]
fn default_guest_through_the_api_pauses_resumes_sees_a_drive_swap_and_powers_off_on_the_button() {
    let vmr = env!("CARGO_BIN_EXE_vmr");
    let (kernel, initrd, cmdline) = common::default_image();

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("emu-api-linux");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("api.sock");
    let (small, large) = (dir.join("small.img"), dir.join("large.img"));
    std::fs::File::create(&small).unwrap().set_len(1 << 20).unwrap();
    std::fs::File::create(&large).unwrap().set_len(4 << 20).unwrap();

    let (mut child, rx, errs) = spawn(&["--accel", "emu", "--api-sock"], &sock, Stdio::piped());
    let child = &mut child.0;
    let mut stdin = child.stdin.take().unwrap();
    let start = Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "no API socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    put(&sock, "PUT", "/machine-config", r#"{"vcpu_count":1,"mem_size_mib":256}"#.into());
    put(
        &sock,
        "PUT",
        "/boot-source",
        serde_json::json!({"kernel_image_path": kernel, "initrd_path": initrd, "boot_args": cmdline})
            .to_string(),
    );
    put(
        &sock,
        "PUT",
        "/drives/data",
        serde_json::json!({"drive_id":"data","path_on_host":small,"is_root_device":false}).to_string(),
    );
    put(&sock, "PUT", "/actions", r#"{"action_type":"InstanceStart"}"#.into());

    let mut seen = Vec::new();
    let tail = |seen: &Vec<String>| seen.iter().rev().take(30).rev().cloned().collect::<Vec<_>>().join("\n");
    let booted = wait_line(&rx, &mut seen, DEADLINE, |l| l.contains(MARKER).then_some(()));
    assert!(booted.is_some(), "no init marker; console:\n{}", tail(&seen));
    eprintln!("init marker after {:?} on the software CPU, started through the API", start.elapsed());

    stdin.write_all(b"echo VMR-SIZE=$(cat /sys/block/vda/size)\n").unwrap();
    let size = wait_line(&rx, &mut seen, Duration::from_secs(60), |l| {
        l.strip_prefix("VMR-SIZE=").map(|v| v.trim().to_string())
    });
    assert_eq!(size.as_deref(), Some("2048"), "console:\n{}", tail(&seen));

    // `vmr ctl counters`: the kernel read the drive's partition table at boot.
    let ctl = |json: bool| {
        let mut cmd = Command::new(vmr);
        cmd.args(["ctl", "--api-sock"]).arg(&sock);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.arg("counters").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let counters: serde_json::Value = serde_json::from_str(&ctl(true)).unwrap();
    assert_eq!(counters["data"]["kind"], "block", "{counters}");
    assert!(counters["data"]["read_bytes"].as_u64().is_some_and(|n| n >= 512), "{counters}");
    let text = ctl(false);
    assert!(text.starts_with("data (block)\n") && text.contains("\n  read_count "), "{text}");

    stdin.write_all(b"(i=0; while true; do echo VMR-COUNT=$i; i=$((i+1)); sleep 0.2; done) &\n").unwrap();
    assert!(wait_line(&rx, &mut seen, Duration::from_secs(60), |l| count(l).filter(|&n| n >= 3)).is_some());
    put(&sock, "PATCH", "/vm", r#"{"state":"Paused"}"#.into());
    // Lines already in flight drain first; then nothing for 2 s.
    std::thread::sleep(Duration::from_millis(300));
    while let Ok(line) = rx.try_recv() {
        seen.push(line);
    }
    let last = seen.iter().rev().find_map(|l| count(l)).unwrap();
    let during = wait_line(&rx, &mut seen, Duration::from_secs(2), count);
    assert_eq!(during, None, "the guest counted while paused (last {last})");
    put(&sock, "PATCH", "/vm", r#"{"state":"Resumed"}"#.into());
    let after = wait_line(&rx, &mut seen, Duration::from_secs(30), count);
    assert_eq!(after, Some(last + 1), "the counter resumes where it stopped");

    put(
        &sock,
        "PATCH",
        "/drives/data",
        serde_json::json!({"drive_id":"data","path_on_host":large}).to_string(),
    );
    // The guest's console is `quiet`: ask the shell for the size (polling a few seconds).
    stdin
        .write_all(b"for t in 1 2 3 4 5 6 7 8 9 10; do s=$(cat /sys/block/vda/size); [ $s = 8192 ] && break; sleep 1; done; echo VMR-NEWSIZE=$s\n")
        .unwrap();
    let resized = wait_line(&rx, &mut seen, Duration::from_secs(60), |l| {
        // Not the shell's echo of the command line itself: a number.
        l.split("VMR-NEWSIZE=").nth(1).map(str::trim).filter(|v| v.parse::<u64>().is_ok()).map(String::from)
    });
    assert_eq!(
        resized.as_deref(),
        Some("8192"),
        "the guest did not see the new size; console:\n{}",
        tail(&seen)
    );

    // vmr:PowerButton: the guest's ACPI button driver reports the press and its acpid powers
    // the guest off, which ends vmr with 0.
    put(&sock, "PUT", "/actions", r#"{"action_type":"vmr:PowerButton"}"#.into());
    let status = wait_exit(child, &rx, &mut seen, Duration::from_secs(120));
    let stderr = errs.join().unwrap().join("\n");
    assert!(
        seen.iter().any(|l| l.contains(POWER_BUTTON_MARKER)),
        "the guest did not act on the power button; console:\n{}",
        tail(&seen)
    );
    assert_eq!(status.code(), Some(0), "a guest power-off ends vmr with 0; stderr:\n{stderr}");
    assert!(!sock.exists(), "the socket is removed");
}

/// Waits for vmr to exit (killing it after `within`), collecting console lines meanwhile.
fn wait_exit(
    child: &mut std::process::Child,
    rx: &Receiver<String>,
    seen: &mut Vec<String>,
    within: Duration,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                seen.push(line.trim_end_matches('\r').to_string());
            }
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let last = seen.iter().rev().take(30).rev().cloned().collect::<Vec<_>>().join("\n");
            panic!("vmr still running {within:?} later; console:\n{last}");
        }
        while let Ok(line) = rx.try_recv() {
            seen.push(line.trim_end_matches('\r').to_string());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `vmr run ... --api-sock` boots from the command line; `vmr ctl ctrl-alt-del` then makes
/// Linux restart, which ends vmr cleanly (exit code 2, as Firecracker ends on a guest reboot).
#[test]
fn ctrl_alt_del_through_vmr_ctl_ends_a_cli_booted_guest() {
    let vmr = env!("CARGO_BIN_EXE_vmr");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("emu-api-linux-cad");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("api.sock");
    let (mut child, rx, errs) =
        spawn(&["run", "--accel", "emu", "--memory", "256M", "--api-sock"], &sock, Stdio::null());
    let child = &mut child.0;
    let mut seen = Vec::new();
    let booted = wait_line(&rx, &mut seen, DEADLINE, |l| l.contains(MARKER).then_some(()));
    assert!(booted.is_some(), "no init marker; console:\n{}", seen.join("\n"));
    let ctl = Command::new(vmr).args(["ctl", "--api-sock"]).arg(&sock).arg("ctrl-alt-del").output().unwrap();
    assert!(ctl.status.success(), "{}", String::from_utf8_lossy(&ctl.stderr));
    let status = wait_exit(child, &rx, &mut seen, Duration::from_secs(120));
    let stderr = errs.join().unwrap().join("\n");
    assert_eq!(status.code(), Some(2), "a guest restart ends vmr with 2; stderr:\n{stderr}");
    assert!(stderr.contains("guest rebooted"), "{stderr}");
    assert!(!sock.exists(), "the socket is removed");
}
