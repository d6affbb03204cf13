//! Snapshots of the default Debian guest (2 vCPUs) on the software CPU (issue 11), end to end: booted
//! through the API, the guest starts a counter on its console and writes a file of random
//! data to its RAM-backed root (with its checksum); the VM is paused, snapshotted and the VMM
//! killed. A corrupted copy of the snapshot is refused with one line. The snapshot restored in a
//! new process, paused, then resumed: the counter goes on from where it stopped, the guest
//! finds its data intact, and its disk still reads and writes (checked on the host).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use vmr_vmm::api::client::request;

const MARKER: &str = "vmr-guest: init reached";

fn put(sock: &Path, method: &str, path: &str, body: String) {
    let r = request(sock, method, path, Some(&body)).unwrap();
    assert_eq!(r.status, 204, "{method} {path} {body}: {r:?}");
}

/// Kills the VMM when a failed assertion unwinds.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A VMM with its console lines on a channel.
struct Vmr {
    child: KillOnDrop,
    stdin: ChildStdin,
    rx: Receiver<String>,
    seen: Vec<String>,
}

impl Vmr {
    fn spawn(args: &[&str]) -> Vmr {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vmr"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            BufReader::new(out).lines().map_while(Result::ok).for_each(|l| drop(tx.send(l)))
        });
        let stdin = child.stdin.take().unwrap();
        Vmr { child: KillOnDrop(child), stdin, rx, seen: Vec::new() }
    }

    fn type_line(&mut self, line: &str) {
        self.stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    /// Waits for a console line for which `pick` returns Some.
    fn wait<T>(&mut self, within: Duration, pick: impl Fn(&str) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(line) = self.rx.recv_timeout(Duration::from_millis(100)) {
                let line = line.trim_end_matches('\r').to_string();
                let found = pick(&line);
                self.seen.push(line);
                if found.is_some() {
                    return found;
                }
            }
        }
        None
    }

    fn tail(&self) -> String {
        self.seen.iter().rev().take(30).rev().cloned().collect::<Vec<_>>().join("\n")
    }
}

fn count(line: &str) -> Option<u64> {
    line.split("VMR-COUNT=").nth(1).and_then(|v| v.trim().parse().ok())
}

/// A line that is exactly `tag=VALUE` (not the shell's echo of the command).
fn tagged(tag: &'static str) -> impl Fn(&str) -> Option<String> {
    move |l: &str| l.strip_prefix(tag).and_then(|v| v.strip_prefix('=')).map(|v| v.trim().to_string())
}

fn wait_socket(sock: &Path) {
    let start = Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "no API socket {}", sock.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn default_guest_snapshot_restores_in_a_new_process_and_goes_on() {
    let vmr = env!("CARGO_BIN_EXE_vmr");
    let (kernel, initrd, cmdline) = common::default_image();

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("emu-snapshot-linux");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (sock, disk) = (dir.join("api.sock"), dir.join("disk.img"));
    let (snap, mem) = (dir.join("vm.snap"), dir.join("vm.mem"));
    std::fs::File::create(&disk).unwrap().set_len(1 << 20).unwrap();

    let mut a = Vmr::spawn(&["--accel", "emu", "--api-sock", sock.to_str().unwrap()]);
    wait_socket(&sock);
    put(&sock, "PUT", "/machine-config", r#"{"vcpu_count":2,"mem_size_mib":256}"#.into());
    let boot = serde_json::json!({"kernel_image_path": kernel, "initrd_path": initrd, "boot_args": cmdline});
    put(&sock, "PUT", "/boot-source", boot.to_string());
    let drive = serde_json::json!({"drive_id":"data","path_on_host":disk,"is_root_device":false});
    put(&sock, "PUT", "/drives/data", drive.to_string());
    put(&sock, "PUT", "/actions", r#"{"action_type":"InstanceStart"}"#.into());
    let booted = a.wait(Duration::from_secs(900), |l| l.contains(MARKER).then_some(()));
    assert!(booted.is_some(), "no init marker; console:\n{}", a.tail());

    // 8 MiB of random data in the guest's RAM (its root is a RAM file system), and its sum.
    a.type_line("dd if=/dev/urandom of=/pattern bs=1M count=8 2>/dev/null; md5sum /pattern > /pattern.md5; echo VMR-PATTERN=$(wc -c < /pattern)");
    let written = a.wait(Duration::from_secs(120), tagged("VMR-PATTERN"));
    assert_eq!(written.as_deref(), Some("8388608"), "console:\n{}", a.tail());
    a.type_line("(i=0; while true; do echo VMR-COUNT=$i; i=$((i+1)); sleep 0.2; done) &");
    assert!(a.wait(Duration::from_secs(60), |l| count(l).filter(|&n| n >= 3)).is_some(), "{}", a.tail());

    // A snapshot of a running VM is refused: it must be paused first.
    let body = serde_json::json!({"snapshot_path": snap, "mem_file_path": mem}).to_string();
    let r = request(&sock, "PUT", "/snapshot/create", Some(&body)).unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.fault_message().contains("pause it first"), "{r:?}");

    put(&sock, "PATCH", "/vm", r#"{"state":"Paused"}"#.into());
    std::thread::sleep(Duration::from_millis(300));
    while let Ok(line) = a.rx.try_recv() {
        a.seen.push(line);
    }
    let last = a.seen.iter().rev().find_map(|l| count(l)).unwrap();
    let ctl = Command::new(vmr)
        .args(["ctl", "--api-sock", sock.to_str().unwrap(), "snapshot", "create", "--snapshot"])
        .args([&snap, Path::new("--mem"), &mem])
        .output()
        .unwrap();
    assert!(ctl.status.success(), "vmr ctl snapshot create: {}", String::from_utf8_lossy(&ctl.stderr));
    drop(a); // SIGKILL: nothing of the first process survives but the two files.

    // The memory file is sparse: a guest that touched a fraction of its 256 MiB.
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&mem).unwrap();
    assert_eq!(m.len(), 256 << 20);
    assert!(m.blocks() * 512 < m.len() / 2, "memory file uses {} bytes on disk", m.blocks() * 512);

    // A corrupted state file: one line on stderr, exit code 1, no guest.
    let mut bytes = std::fs::read(&snap).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    let bad = dir.join("bad.snap");
    std::fs::write(&bad, &bytes).unwrap();
    let out = Command::new(vmr)
        .args(["restore", "--accel", "emu", "--resume", "--snapshot"])
        .args([&bad, Path::new("--mem"), &mem])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("checksum mismatch") && errors[0].contains("corrupted"), "{stderr}");

    // Restore in a new process, paused; then resume through the API.
    let sock2 = dir.join("api2.sock");
    let mut b = Vmr::spawn(&[
        "restore",
        "--accel",
        "emu",
        "--snapshot",
        snap.to_str().unwrap(),
        "--mem",
        mem.to_str().unwrap(),
        "--api-sock",
        sock2.to_str().unwrap(),
    ]);
    wait_socket(&sock2);
    let info = request(&sock2, "GET", "/", None).unwrap();
    assert!(info.body.contains(r#""state":"Paused""#), "{info:?}");
    let cfg = request(&sock2, "GET", "/vm/config", None).unwrap();
    assert!(cfg.body.contains(r#""drive_id":"data""#), "the drive keeps its id: {cfg:?}");
    assert_eq!(b.wait(Duration::from_secs(1), count), None, "the guest ran before it was resumed");
    put(&sock2, "PATCH", "/vm", r#"{"state":"Resumed"}"#.into());
    let next = b.wait(Duration::from_secs(30), count);
    assert_eq!(next, Some(last + 1), "the counter goes on where it stopped; console:\n{}", b.tail());

    b.type_line("md5sum -c /pattern.md5 >/dev/null && echo VMR-CHECK=intact || echo VMR-CHECK=damaged");
    let check = b.wait(Duration::from_secs(60), tagged("VMR-CHECK"));
    assert_eq!(check.as_deref(), Some("intact"), "console:\n{}", b.tail());

    b.type_line("echo restored-disk-ok | dd of=/dev/vda bs=512 conv=sync,fsync 2>/dev/null; echo 3 > /proc/sys/vm/drop_caches; echo VMR-READ=$(head -c 17 /dev/vda)");
    let read = b.wait(Duration::from_secs(60), tagged("VMR-READ"));
    assert_eq!(read.as_deref(), Some("restored-disk-ok"), "console:\n{}", b.tail());
    let on_host = std::fs::read(&disk).unwrap();
    assert!(on_host.starts_with(b"restored-disk-ok\n"), "the write did not reach the image");
    assert!(b.child.0.try_wait().unwrap().is_none(), "the restored VMM ended");
}
