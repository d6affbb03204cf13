//! End-to-end tests with real Linux guests under real KVM: `tests/lab/run.sh` boots an L1 Linux
//! under QEMU TCG with nested SVM and runs every scenario of `tests/lab/scenarios` with this
//! build's `vmr` inside it (see docs/LAB.md). One lab boot serves all tests below.
//!
//! Skipped (with a message) when QEMU is not installed and we are not in CI, or when
//! `VMR_LAB=0`; in CI (`CI=true`) a missing QEMU is a failure.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

struct Lab {
    /// scenario -> (verdict, detail)
    results: HashMap<String, (String, String)>,
    output: String,
}

fn lab() -> Option<&'static Lab> {
    static LAB: OnceLock<Option<Lab>> = OnceLock::new();
    LAB.get_or_init(run_lab).as_ref()
}

fn run_lab() -> Option<Lab> {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if std::env::var("VMR_LAB").is_ok_and(|v| v == "0") && !in_ci {
        eprintln!("lab skipped: VMR_LAB=0");
        return None;
    }
    let has_qemu = Command::new("sh").args(["-c", "command -v qemu-system-x86_64"]).output();
    if !has_qemu.is_ok_and(|o| o.status.success()) {
        assert!(!in_ci, "the lab needs qemu-system-x86_64 (tests/setup.sh installs it)");
        eprintln!("lab skipped: qemu-system-x86_64 is not installed (tests/setup.sh installs it)");
        return None;
    }
    // The default guest, as `vmr run` without --kernel would assemble it; the lab boots it too.
    let pull = Command::new(env!("CARGO_BIN_EXE_vmr")).args(["image", "pull"]).status();
    assert!(pull.is_ok_and(|s| s.success()), "vmr image pull failed");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out_dir = root.join("target").join("lab");
    let output = Command::new(root.join("tests/lab/run.sh"))
        .arg("--vmr")
        .arg(env!("CARGO_BIN_EXE_vmr"))
        .arg("--out")
        .arg(&out_dir)
        .output()
        .expect("tests/lab/run.sh could not be started");
    let text =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    eprintln!("{text}");
    let results = text
        .lines()
        .filter_map(|line| {
            let mut words = line.splitn(4, ' ');
            (words.next()? == "LAB").then_some(())?;
            let name = words.next()?.to_string();
            let verdict = words.next()?.to_string();
            matches!(verdict.as_str(), "PASS" | "FAIL" | "SKIP")
                .then(|| (name, (verdict, words.next().unwrap_or("").to_string())))
        })
        .collect();
    Some(Lab { results, output: text })
}

fn expect_pass(scenario: &str) {
    let Some(lab) = lab() else { return };
    match lab.results.get(scenario) {
        // vmr runs every scenario: SKIP (meant for the QEMU mode of the harness) is a failure.
        Some((verdict, detail)) if verdict == "PASS" => eprintln!("{scenario}: {detail}"),
        Some((verdict, detail)) => panic!("lab scenario {scenario}: {verdict} {detail}"),
        None => panic!("lab scenario {scenario} reported nothing; lab output:\n{}", lab.output),
    }
}

#[test]
fn generic_kernel_as_pvh_vmlinux_boots_and_powers_off() {
    expect_pass("boot-vmlinux");
}

#[test]
fn generic_kernel_as_bzimage_boots_and_powers_off() {
    expect_pass("boot-bzimage");
}

#[test]
fn cloud_kernel_lz4_bzimage_boots() {
    expect_pass("boot-cloud-lz4");
}

#[test]
fn two_vcpus_are_seen_and_used() {
    expect_pass("cpus-2");
}

#[test]
fn four_vcpus_are_seen_and_used() {
    expect_pass("cpus-4");
}

#[test]
fn four_gib_of_memory_is_seen() {
    expect_pass("memory-4g");
}

#[test]
fn guest_reboot_gives_the_documented_exit_code() {
    expect_pass("reboot");
}

#[test]
fn garbage_kernel_gives_a_clear_error() {
    expect_pass("bad-kernel");
}

#[test]
fn default_image_boots() {
    expect_pass("default-image");
}

#[test]
fn sigterm_and_sigint_stop_the_vm_cleanly() {
    expect_pass("signals");
}

#[test]
fn console_input_reaches_the_guest_shell() {
    expect_pass("console-input");
}

#[test]
fn guest_makes_a_filesystem_on_a_blank_raw_disk() {
    expect_pass("disk-raw");
}

#[test]
fn qcow2_overlay_keeps_its_base_unchanged_and_passes_qemu_img_check() {
    expect_pass("disk-qcow2-overlay");
}

#[test]
fn root_filesystem_on_virtio_blk_boots() {
    expect_pass("root-on-disk");
}

#[test]
fn fsynced_guest_writes_survive_sigkill_of_vmr() {
    expect_pass("disk-sigkill");
}

#[test]
fn virtio_rng_feeds_the_guest_hwrng() {
    expect_pass("rng");
}

#[test]
fn missing_corrupt_and_locked_images_fail_before_the_guest_starts() {
    expect_pass("disk-errors");
}

#[test]
fn reboot_restart_reopens_the_disk() {
    expect_pass("disk-reboot-restart");
}

#[test]
fn virtio_net_on_a_tap_pings_and_carries_tcp_both_ways() {
    expect_pass("net-tap");
}

#[test]
fn vsock_carries_data_host_to_guest_and_guest_to_host() {
    expect_pass("vsock");
}

#[test]
fn cache_none_disks_work_or_are_refused_in_one_line() {
    expect_pass("disk-cache-none");
}

#[test]
fn the_api_drives_a_kvm_guest_as_firecracker_clients_do() {
    expect_pass("api");
}

/// Every scenario in tests/lab/scenarios reports PASS, those without a test of their own above
/// included: a new scenario cannot fail unnoticed.
#[test]
fn every_lab_scenario_passes() {
    let Some(lab) = lab() else { return };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/lab/scenarios");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            Some(name.strip_suffix(".sh")?.get(3..)?.to_string())
        })
        .collect();
    names.sort();
    for name in names {
        match lab.results.get(&name) {
            Some((verdict, _)) if verdict == "PASS" => {}
            Some((verdict, detail)) => panic!("lab scenario {name}: {verdict} {detail}"),
            None => panic!("lab scenario {name} reported nothing; lab output:\n{}", lab.output),
        }
    }
}
