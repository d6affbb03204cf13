//! Linux on the software CPU, on this host (issue 3): the README's main command with the
//! default guest (`vmr image pull`) and `--accel emu`, two vCPUs, an interactive console.
//! The guest's init marker arrives, a command typed before the guest booted runs, the shell sees
//! both CPUs and a timer that advances, and `poweroff -f` ends vmr with 0.
//!
//! Slow by nature (an interpreter booting a distribution kernel): one boot serves every check.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MARKER: &str = "vmr-guest: init reached";
const DEADLINE: Duration = Duration::from_secs(900);

#[test]
fn default_guest_boots_on_the_software_cpu_with_two_vcpus_and_powers_off() {
    let vmr = env!("CARGO_BIN_EXE_vmr");
    let pull = Command::new(vmr).args(["image", "pull"]).status().expect("vmr image pull");
    assert!(pull.success(), "vmr image pull failed");

    let start = Instant::now();
    let mut child = Command::new(vmr)
        .args(["run", "--accel", "emu", "--cpus", "2", "--memory", "512M"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vmr did not start");
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        BufReader::new(out).lines().map_while(Result::ok).for_each(|l| drop(tx.send(l)))
    });
    let errs = std::thread::spawn(move || {
        let lines: Vec<String> = BufReader::new(err).lines().map_while(Result::ok).collect();
        drop(tx2);
        lines
    });
    let mut stdin = child.stdin.take().unwrap();
    // Typed ahead, before the guest has even booted: it must wait for the shell, not be lost.
    stdin.write_all(b"echo VMR-EARLY=$((6*7))\n").unwrap();
    let mut early = None;
    let mut seen = Vec::new();
    let mut marker_at = None;
    let mut cpus = None;
    let mut ticks = None;
    let mut bugs = None;
    while start.elapsed() < DEADLINE {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) else {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            continue;
        };
        let line = line.trim_end_matches('\r').to_string();
        if line.contains(MARKER) && marker_at.is_none() {
            marker_at = Some(start.elapsed());
            // Typed at the console: CPUs online, jiffies moving (a timer interrupt works), and
            // the guest's view of the CPU's speculation bugs (none but Spectre v1/v2: no
            // page-table isolation, retpolines or return thunks on an interpreter).
            stdin
                .write_all(
                    b"echo VMR-CPUS=$(grep -c ^processor /proc/cpuinfo); \
                      echo VMR-BUGS=$(grep -m1 ^bugs /proc/cpuinfo | cut -d: -f2); \
                      a=$(cut -d' ' -f1 /proc/uptime); sleep 1; b=$(cut -d' ' -f1 /proc/uptime); \
                      echo VMR-UPTIME=$a,$b; poweroff -f\n",
                )
                .unwrap();
        }
        if let Some(v) = line.strip_prefix("VMR-EARLY=") {
            early = Some(v.trim().to_string());
        }
        if let Some(v) = line.strip_prefix("VMR-CPUS=") {
            cpus = Some(v.trim().to_string());
        }
        if let Some(v) = line.strip_prefix("VMR-BUGS=") {
            bugs = Some(v.trim().to_string());
        }
        if let Some(v) = line.strip_prefix("VMR-UPTIME=") {
            ticks = Some(v.trim().to_string());
        }
        seen.push(line);
    }
    let status = match child.try_wait().unwrap() {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "vmr still running after {:?}; last console lines:\n{}",
                DEADLINE,
                seen.iter().rev().take(30).rev().cloned().collect::<Vec<_>>().join("\n")
            );
        }
    };
    let stderr = errs.join().unwrap().join("\n");
    let tail = seen.iter().rev().take(30).rev().cloned().collect::<Vec<_>>().join("\n");
    let marker_at =
        marker_at.unwrap_or_else(|| panic!("no init marker; stderr:\n{stderr}\nconsole:\n{tail}"));
    eprintln!("init marker after {marker_at:?} on the software CPU");
    assert!(stderr.contains("vmr: accelerator: emu"), "stderr: {stderr}");
    // Machine-check architecture present: no "mce: Unable to init MCE device" at boot.
    assert!(!seen.iter().any(|l| l.contains("mce:")), "machine-check errors at boot; console:\n{tail}");
    assert_eq!(early.as_deref(), Some("42"), "the command typed before boot; console:\n{tail}");
    assert_eq!(cpus.as_deref(), Some("2"), "CPUs seen by the guest; console:\n{tail}");
    let bugs = bugs.unwrap_or_else(|| panic!("no bugs line; console:\n{tail}"));
    for b in bugs.split_whitespace() {
        assert!(
            matches!(b, "spectre_v1" | "spectre_v2" | "swapgs" | "retbleed" | "bhi"),
            "the guest thinks the software CPU has {b} ({bugs}); console:\n{tail}"
        );
    }
    let ticks = ticks.unwrap_or_else(|| panic!("no uptime line; console:\n{tail}"));
    let (a, b) = ticks.split_once(',').expect("two uptimes");
    let (a, b): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
    assert!(b - a >= 0.9, "sleep 1 took {:.2}s of guest uptime (timer not ticking?)", b - a);
    assert_eq!(status.code(), Some(0), "exit after poweroff; stderr:\n{stderr}\nconsole:\n{tail}");
}
