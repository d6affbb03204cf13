//! qcow2 tests against the real qemu-img (qemu-utils).

use std::path::Path;
use std::process::Command;

use crate::{create, open, BlockError, ImageFormat, OpenOptions};

fn qemu_img(args: &[&str]) -> (bool, String) {
    let out = Command::new("qemu-img").args(args).output().expect("qemu-img (qemu-utils) must be installed");
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

fn check_clean(path: &Path) {
    let (ok, out) = qemu_img(&["check", path.to_str().unwrap()]);
    assert!(ok, "qemu-img check failed: {out}");
    assert!(out.contains("No errors were found"), "{out}");
}

fn qcow2() -> OpenOptions {
    OpenOptions { read_only: false, format: Some(ImageFormat::Qcow2), direct: false }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// Converts an image to raw with qemu-img and returns its bytes: qemu's view of our writes.
fn qemu_view(dir: &Path, image: &Path) -> Vec<u8> {
    let out = dir.join("view.raw");
    let _ = std::fs::remove_file(&out);
    let (ok, msg) = qemu_img(&["convert", "-O", "raw", image.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(ok, "{msg}");
    std::fs::read(out).unwrap()
}

#[test]
fn qemu_img_created_image_is_writable_and_check_clean() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.qcow2");
    let (ok, msg) = qemu_img(&["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "64M"]);
    assert!(ok, "{msg}");
    let writes: [(u64, u8, usize); 4] =
        [(0, 1, 4096), (65536 - 512, 2, 1024), (10 << 20, 3, 300 << 10), ((64 << 20) - 512, 4, 512)];
    {
        let mut disk = open(&img, &qcow2()).unwrap();
        assert_eq!(disk.len(), 64 << 20);
        for (off, seed, len) in writes {
            disk.write_at(&pattern(seed, len), off).unwrap();
        }
        disk.flush().unwrap();
        let mut buf = vec![0u8; 300 << 10];
        disk.read_at(&mut buf, 10 << 20).unwrap();
        assert_eq!(buf, pattern(3, 300 << 10));
        assert!(matches!(disk.write_at(&[0; 1024], (64 << 20) - 512), Err(BlockError::OutOfRange { .. })));
    }
    check_clean(&img);
    let view = qemu_view(dir.path(), &img);
    for (off, seed, len) in writes {
        assert_eq!(&view[off as usize..off as usize + len], &pattern(seed, len)[..], "at {off:#x}");
    }
    assert!(view[4096..65536 - 512].iter().all(|&b| b == 0));
}

#[test]
fn created_image_grows_on_write_and_supports_zeroing() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("new.qcow2");
    create(&img, ImageFormat::Qcow2, Some(1 << 30), None).unwrap();
    let small = std::fs::metadata(&img).unwrap().len();
    assert!(small < 1 << 20, "fresh image is {small} bytes");
    {
        let mut disk = open(&img, &qcow2()).unwrap();
        disk.write_at(&pattern(9, 4 << 20), 512 << 20).unwrap();
        disk.write_zeroes(512 << 20, 65536, true).unwrap();
        disk.write_zeroes((512 << 20) + 65536, 4096, false).unwrap();
        disk.discard((512 << 20) + (1 << 20), 1 << 20).unwrap();
        disk.flush().unwrap();
        let mut buf = vec![1u8; 65536 + 4096];
        disk.read_at(&mut buf, 512 << 20).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }
    assert!(std::fs::metadata(&img).unwrap().len() > small + (2 << 20), "image did not grow");
    check_clean(&img);
    let (ok, info) = qemu_img(&["info", img.to_str().unwrap()]);
    assert!(ok && info.contains("1 GiB"), "{info}");
    // Existing files are never overwritten.
    assert!(matches!(create(&img, ImageFormat::Qcow2, Some(1 << 20), None), Err(BlockError::Create { .. })));
    assert!(create(&dir.path().join("odd.qcow2"), ImageFormat::Qcow2, Some(1000), None).is_err());
    assert!(!dir.path().join("odd.qcow2").exists());
}

#[test]
fn overlay_on_raw_base_leaves_base_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let base_bytes = pattern(7, 8 << 20);
    std::fs::write(&base, &base_bytes).unwrap();
    let top = dir.path().join("top.qcow2");
    // Relative backing name, resolved next to the overlay, size taken from the base.
    create(&top, ImageFormat::Qcow2, None, Some(Path::new("base.raw"))).unwrap();
    {
        let mut disk = open(&top, &qcow2()).unwrap();
        assert_eq!(disk.len(), 8 << 20);
        let mut buf = vec![0u8; 8192];
        disk.read_at(&mut buf, 1 << 20).unwrap();
        assert_eq!(buf, base_bytes[1 << 20..(1 << 20) + 8192]);
        // A partial-cluster write copies the rest of the cluster from the base.
        disk.write_at(&[0xee; 512], (1 << 20) + 512).unwrap();
        disk.write_zeroes(2 << 20, 65536, true).unwrap();
        disk.flush().unwrap();
        disk.read_at(&mut buf, 1 << 20).unwrap();
        assert_eq!(buf[..512], base_bytes[1 << 20..(1 << 20) + 512]);
        assert!(buf[512..1024].iter().all(|&b| b == 0xee));
        assert_eq!(buf[1024..], base_bytes[(1 << 20) + 1024..(1 << 20) + 8192]);
        // The base is locked shared: nobody may open it for writing meanwhile.
        assert!(matches!(open(&base, &OpenOptions::default()), Err(BlockError::InUse { .. })));
    }
    assert_eq!(std::fs::read(&base).unwrap(), base_bytes, "base image changed");
    check_clean(&top);
    let view = qemu_view(dir.path(), &top);
    assert!(view[(1 << 20) + 512..(1 << 20) + 1024].iter().all(|&b| b == 0xee));
    assert!(view[2 << 20..(2 << 20) + 65536].iter().all(|&b| b == 0));
    assert_eq!(view[3 << 20..], base_bytes[3 << 20..]);
}

#[test]
fn qemu_img_overlay_over_qcow2_base_reads_through() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    create(&base, ImageFormat::Qcow2, Some(4 << 20), None).unwrap();
    {
        let mut disk = open(&base, &qcow2()).unwrap();
        disk.write_at(&pattern(5, 65536), 0).unwrap();
        disk.flush().unwrap();
    }
    let (ok, msg) = qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        base.to_str().unwrap(),
        top.to_str().unwrap(),
    ]);
    assert!(ok, "{msg}");
    let mut disk = open(&top, &qcow2()).unwrap();
    let mut buf = vec![0u8; 65536];
    disk.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, pattern(5, 65536));
}

#[test]
fn probed_overlay_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
    let top = dir.path().join("top.qcow2");
    create(&top, ImageFormat::Qcow2, None, Some(&base)).unwrap();
    let err = open(&top, &OpenOptions::default()).err().unwrap().to_string();
    assert!(err.contains("has backing file") && err.contains("format=qcow2"), "{err}");
    // Without backing file, a probed qcow2 opens as qcow2.
    let plain = dir.path().join("plain.qcow2");
    create(&plain, ImageFormat::Qcow2, Some(1 << 20), None).unwrap();
    assert_eq!(open(&plain, &OpenOptions::default()).unwrap().format(), ImageFormat::Qcow2);
}

#[test]
fn missing_backing_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
    let top = dir.path().join("top.qcow2");
    create(&top, ImageFormat::Qcow2, None, Some(&base)).unwrap();
    std::fs::remove_file(&base).unwrap();
    let err = open(&top, &qcow2()).err().unwrap().to_string();
    assert!(err.starts_with(&format!("cannot open image {}", base.display())), "{err}");
}

/// Corrupts `len` bytes at `offset` of a fresh qcow2 image and checks that opening it fails with
/// a one-line error and leaves every byte of the file as it was.
fn corrupt_and_open(offset: u64, bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("bad.qcow2");
    create(&img, ImageFormat::Qcow2, Some(16 << 20), None).unwrap();
    let mut data = std::fs::read(&img).unwrap();
    data[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
    std::fs::write(&img, &data).unwrap();
    let err = open(&img, &qcow2()).err().expect("corrupt image opened").to_string();
    assert!(!err.contains('\n'), "{err}");
    assert_eq!(std::fs::read(&img).unwrap(), data, "open modified a corrupt image");
    err
}

#[test]
fn corrupt_headers_are_refused_and_left_untouched() {
    // version 99
    let e = corrupt_and_open(4, &99u32.to_be_bytes());
    eprintln!("{e}");
    assert!(e.contains("is not a valid qcow2 image"), "{e}");
    // cluster_bits 40
    corrupt_and_open(20, &40u32.to_be_bytes());
    // L1 table offset far beyond the file and unaligned
    corrupt_and_open(40, &0x7fff_ffff_ffff_fe01u64.to_be_bytes());
    // L1 size huge
    corrupt_and_open(36, &u32::MAX.to_be_bytes());
    // refcount table offset unaligned
    corrupt_and_open(48, &0x1234u64.to_be_bytes());
    // header truncated: bad magic reads as qcow2 only when asked for it
    let e = corrupt_and_open(0, b"XXXX");
    assert!(e.contains("qcow2"), "{e}");
}

/// cache=none on qcow2 is refused with one line (imago's qcow2 over an O_DIRECT descriptor
/// fails to open), and the image stays usable.
#[test]
fn qcow2_with_cache_none_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("direct.qcow2");
    create(&img, ImageFormat::Qcow2, Some(1 << 20), None).unwrap();
    for format in [Some(ImageFormat::Qcow2), None] {
        let err = open(&img, &OpenOptions { direct: true, format, ..qcow2() }).err().unwrap();
        assert_eq!(
            err.to_string(),
            format!("image {}: cache=none is supported for raw images only, not qcow2", img.display())
        );
    }
    open(&img, &qcow2()).unwrap();
    check_clean(&img);
}
