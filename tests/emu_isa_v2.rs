//! The x86-64-v2 ISA level end to end (issue 13): a static program built on the host with
//! `-march=x86-64-v2` (`tests/guest-programs/isa_v2.c`: glibc's string functions, whose
//! IFUNCs pick SSE4.2/SSSE3 variants by CPUID, and SSE3/SSSE3/SSE4.1/SSE4.2/CRC32/POPCNT/
//! CMPXCHG16B/LAHF code) runs in the default guest under `--accel emu` and prints exactly what
//! it prints on the host. The program reaches the guest as a read-only virtio-blk disk. The
//! guest runs with two vCPUs in x2APIC mode (Linux switches to it when CPUID offers x2APIC
//! under a KVM-signature hypervisor), which the same boot checks.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Console;

const MARKER: &str = "vmr-guest: init reached";
const DEADLINE: Duration = Duration::from_secs(900);
const PREFIX: &str = "isa-v2 ";

/// Builds the program (static, x86-64-v2, marked as needing v2) into the test's temp dir.
fn build() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest-programs/isa_v2.c");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("isa_v2");
    let st = Command::new("gcc")
        .args(["-O2", "-static", "-march=x86-64-v2", "-mcx16", "-Wl,-z,x86-64-v2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("gcc (with a static glibc, Debian's libc6-dev) is needed to build the guest program");
    assert!(st.success(), "gcc failed to build {}", src.display());
    out
}

fn program_lines(output: &str) -> Vec<String> {
    output
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.starts_with(PREFIX))
        .map(String::from)
        .collect()
}

#[test]
fn x86_64_v2_program_gives_the_hosts_results_on_the_software_cpu() {
    let prog = build();
    let host = Command::new(&prog).output().expect("run the program on the host");
    assert!(host.status.success(), "the program failed on the host");
    let want = program_lines(&String::from_utf8_lossy(&host.stdout));
    assert_eq!(want.last().map(String::as_str), Some("isa-v2 done"), "host output: {want:?}");
    assert!(want[0].contains("sse4_2=1 popcnt=1 cx16=1 lahf64=1"), "this host lacks x86-64-v2: {want:?}");

    // The disk: the binary padded to whole sectors (trailing zeros do not disturb an ELF).
    let mut image = std::fs::read(&prog).unwrap();
    image.resize(image.len().div_ceil(512) * 512, 0);
    let disk = prog.with_extension("img");
    std::fs::write(&disk, &image).unwrap();

    let vmr = env!("CARGO_BIN_EXE_vmr");
    let pull = Command::new(vmr).args(["image", "pull"]).status().expect("vmr image pull");
    assert!(pull.success(), "vmr image pull failed");
    let start = Instant::now();
    let mut cmd = Command::new(vmr);
    cmd.args(["run", "--accel", "emu", "--cpus", "2", "--memory", "256M", "--disk"])
        .arg(format!("path={},readonly=on", disk.display()));
    let mut con = Console::spawn(&mut cmd);
    let mut seen = Vec::new();
    let (mut marker_at, mut ran_at, mut apic) = (None, None, None);
    while start.elapsed() < DEADLINE {
        let Some(line) = con.line() else {
            if con.exited() {
                break;
            }
            continue;
        };
        if line.contains(MARKER) && marker_at.is_none() {
            marker_at = Some(start.elapsed());
            con.stdin
                .write_all(
                    b"echo VMR-APIC=$(dmesg | grep -c -e 'Switched APIC routing to physical x2apic' \
                      -e 'unchecked MSR') $(grep -c ^processor /proc/cpuinfo); \
                      cat /dev/vda > /tmp/v2 && chmod +x /tmp/v2 && /tmp/v2; poweroff -f\n",
                )
                .unwrap();
        }
        if let Some(v) = line.strip_prefix("VMR-APIC=") {
            apic = Some(v.trim().to_string());
        }
        if line == "isa-v2 done" {
            ran_at = Some(start.elapsed());
        }
        seen.push(line);
    }
    let (code, stderr) = con.finish();
    let tail = seen.iter().rev().take(40).rev().cloned().collect::<Vec<_>>().join("\n");
    let marker_at =
        marker_at.unwrap_or_else(|| panic!("no init marker; stderr:\n{stderr}\nconsole:\n{tail}"));
    if let Some(ran) = ran_at {
        eprintln!("init after {marker_at:?}, the program done after {:?} more", ran - marker_at);
    }
    // One line: x2APIC routing, and no MSR access the guest expected to work faulted.
    assert_eq!(apic.as_deref(), Some("1 2"), "x2APIC lines in dmesg and CPUs; console:\n{tail}");
    let got = program_lines(&seen.join("\n"));
    assert_eq!(got, want, "guest output differs from the host's; console:\n{tail}\nstderr:\n{stderr}");
    assert_eq!(code, Some(0), "exit after poweroff; stderr:\n{stderr}\nconsole:\n{tail}");
}
