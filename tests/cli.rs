//! The `vmr` command line on bad input: one clear line on stderr, exit code 1, never a panic or
//! a hang. These run on any host: input is checked before a backend is opened.

mod common;

use std::path::{Path, PathBuf};

use common::tiny_pvh_kernel;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn vmr(args: &[&str]) -> Output {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_vmr")).args(args).output().expect("vmr did not start");
    assert!(start.elapsed() < Duration::from_secs(30), "vmr took {:?} for {args:?}", start.elapsed());
    out
}

/// Asserts exit code 1 and a single `vmr: error:` line containing `needle`.
fn expect_error(args: &[&str], needle: &str) {
    let out = vmr(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.iter().any(|l| l.contains(needle)), "{args:?}: want {needle:?} in: {stderr}");
    if lines[0].starts_with("vmr: error:") {
        assert_eq!(lines.len(), 1, "{args:?}: more than one line: {stderr}");
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn missing_kernel_file() {
    expect_error(&["run", "--kernel", "/nonexistent/vmlinux"], "cannot read kernel /nonexistent/vmlinux");
}

#[test]
fn directory_as_kernel() {
    expect_error(&["run", "--kernel", "/"], "cannot read kernel /");
}

#[test]
fn garbage_kernel_file() {
    let path = scratch("garbage");
    std::fs::write(&path, vec![0x5au8; 200_000]).unwrap();
    expect_error(&["run", "--kernel", path.to_str().unwrap()], "is neither an ELF vmlinux nor a bzImage");
}

#[test]
fn empty_kernel_file() {
    let path = scratch("empty");
    std::fs::write(&path, b"").unwrap();
    expect_error(&["run", "--kernel", path.to_str().unwrap()], "neither an ELF vmlinux nor a bzImage");
}

#[test]
fn truncated_elf_kernel() {
    let full = scratch("tiny-for-truncation");
    tiny_pvh_kernel(&full);
    let bytes = std::fs::read(&full).unwrap();
    let path = scratch("truncated");
    std::fs::write(&path, &bytes[..0x1800]).unwrap();
    expect_error(&["run", "--kernel", path.to_str().unwrap()], "truncated");
}

#[test]
fn initrd_that_does_not_fit() {
    let kernel = scratch("tiny-kernel");
    tiny_pvh_kernel(&kernel);
    let initrd = scratch("big-initrd");
    std::fs::write(&initrd, vec![0u8; 40 << 20]).unwrap();
    let args = [
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--memory",
        "32M",
    ];
    expect_error(&args, "does not fit");
}

#[test]
fn missing_initrd() {
    let kernel = scratch("tiny-kernel-2");
    tiny_pvh_kernel(&kernel);
    expect_error(
        &["run", "--kernel", kernel.to_str().unwrap(), "--initrd", "/nonexistent/initrd"],
        "cannot read initrd",
    );
}

#[test]
fn cpu_counts_out_of_range() {
    let kernel = scratch("tiny-kernel-3");
    tiny_pvh_kernel(&kernel);
    let k = kernel.to_str().unwrap();
    expect_error(&["run", "--kernel", k, "--cpus", "0"], "at least one vCPU");
    expect_error(&["run", "--kernel", k, "--cpus", "1000"], "1000 vCPUs requested");
    expect_error(&["run", "--kernel", k, "--cpus=-3"], "invalid value");
}

#[test]
fn memory_sizes_out_of_range() {
    let kernel = scratch("tiny-kernel-4");
    tiny_pvh_kernel(&kernel);
    let k = kernel.to_str().unwrap();
    expect_error(&["run", "--kernel", k, "--memory", "1M"], "too small");
    expect_error(&["run", "--kernel", k, "--memory", "64T"], "this host has only");
    expect_error(&["run", "--kernel", k, "--memory", "12Q"], "invalid memory size '12Q'");
}

#[test]
fn bad_accel_and_reboot_policy() {
    expect_error(&["run", "--kernel", "k", "--accel", "xen"], "expected auto, kvm or emu");
    expect_error(&["run", "--kernel", "k", "--reboot", "sometimes"], "expected exit or restart");
}

#[test]
fn overlong_command_line() {
    let kernel = scratch("tiny-kernel-5");
    tiny_pvh_kernel(&kernel);
    let long = "a".repeat(5000);
    expect_error(
        &["run", "--kernel", kernel.to_str().unwrap(), "--cmdline", &long],
        "kernel command line is 5000 bytes",
    );
}

/// On a host whose /dev/kvm is the kvm_pvm emulator, `--accel kvm` is refused with the reason.
#[test]
fn unsuitable_kvm_is_named() {
    if !Path::new("/sys/module/kvm_pvm").exists() {
        eprintln!("skipped: this host's KVM is not kvm_pvm");
        return;
    }
    let kernel = scratch("tiny-kernel-6");
    tiny_pvh_kernel(&kernel);
    expect_error(&["run", "--kernel", kernel.to_str().unwrap(), "--accel", "kvm"], "kvm_pvm");
}

/// A tap that cannot be opened (an existing interface that is not a tap, a name too long for
/// Linux) is one line and exit 1 before the guest starts, as root or not.
#[test]
fn unopenable_tap_is_named() {
    let kernel = scratch("tiny-kernel-tap");
    tiny_pvh_kernel(&kernel);
    let k = kernel.to_str().unwrap();
    expect_error(&["run", "--kernel", k, "--accel", "emu", "--net", "tap=lo"], "cannot open tap lo");
    expect_error(
        &["run", "--kernel", k, "--accel", "emu", "--net", "tap=a-name-far-too-long"],
        "tap name must be 1 to 15 bytes",
    );
}

#[test]
fn help_and_version_exit_zero() {
    let out = vmr(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("run"));
    let out = vmr(&["run", "--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("--kernel"));
    assert_eq!(vmr(&["--version"]).status.code(), Some(0));
}
