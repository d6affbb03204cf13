//! A flushed write survives SIGKILL of the process that made it.
//!
//! The test binary re-runs itself as the child (`durability_child`, ignored unless asked for):
//! the child writes, calls [`DiskImage::flush`], reports "FLUSHED" and sleeps; the parent then
//! SIGKILLs it and reads the data back. For qcow2 this proves that flush writes imago's cached
//! metadata (new L2 entries, refcounts): without it the data clusters would be unreachable.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::{create, open, ImageFormat, OpenOptions};

const ENV_PATH: &str = "VMR_DURABILITY_IMAGE";
const ENV_FORMAT: &str = "VMR_DURABILITY_FORMAT";

fn payload(i: u64) -> Vec<u8> {
    (0..65536u64).map(|b| (b ^ i.wrapping_mul(0x9e37)) as u8).collect()
}

/// Offsets spread so that qcow2 allocates new L2 tables as well as data clusters.
const OFFSETS: [u64; 4] = [0, 3 << 20, 600 << 20, (1 << 30) - 65536];

#[test]
#[ignore = "child half of flushed_writes_survive_sigkill"]
fn durability_child() {
    let path = std::env::var(ENV_PATH).expect("run by flushed_writes_survive_sigkill");
    let format: ImageFormat = std::env::var(ENV_FORMAT).unwrap().parse().unwrap();
    let mut disk =
        open(path.as_ref(), &OpenOptions { read_only: false, format: Some(format), direct: false }).unwrap();
    for (i, off) in OFFSETS.iter().enumerate() {
        disk.write_at(&payload(i as u64), *off).unwrap();
    }
    disk.flush().unwrap();
    println!("FLUSHED");
    // Wait to be killed; never exit cleanly (a clean exit would flush on drop).
    std::thread::sleep(std::time::Duration::from_secs(120));
    std::process::abort();
}

fn kill_after_flush(format: ImageFormat) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("durable.img");
    create(&img, format, Some(1 << 30), None).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "durability::durability_child", "--nocapture", "--test-threads=1"])
        .env(ENV_PATH, &img)
        .env(ENV_FORMAT, format.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let flushed =
        BufReader::new(stdout).lines().map_while(Result::ok).any(|l| l.trim_end().ends_with("FLUSHED"));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(flushed, "child did not reach FLUSHED");
    let mut disk = open(&img, &OpenOptions { read_only: true, format: Some(format), direct: false }).unwrap();
    for (i, off) in OFFSETS.iter().enumerate() {
        let mut buf = vec![0u8; 65536];
        disk.read_at(&mut buf, *off).unwrap();
        assert!(buf == payload(i as u64), "{format}: data at {off:#x} lost");
    }
}

#[test]
fn flushed_writes_survive_sigkill_raw() {
    kill_after_flush(ImageFormat::Raw);
}

#[test]
fn flushed_writes_survive_sigkill_qcow2() {
    kill_after_flush(ImageFormat::Qcow2);
    // (qemu-img check is not run here: a killed writer may leak clusters, which is allowed.)
}
