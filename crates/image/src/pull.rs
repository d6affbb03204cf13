//! `vmr image pull`: fetch the packages, cut the kernel, build the initramfs, write the cache.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::deb::{self, DebInfo};
use crate::guest::{self, GuestContents, WANTED_MODULES};
use crate::modules::{self, ModuleError};
use crate::{apt, vmlinux, FileRecord, GuestImage, ImageError, Manifest, Progress, PullOptions};
use crate::{BUSYBOX_PACKAGE, BZIMAGE_FILE, DEFAULT_CMDLINE, INITRD_FILE, MANIFEST_FILE};
use crate::{MANIFEST_FORMAT, VMLINUX_FILE};

/// What the kernel package yields.
struct KernelParts {
    info: DebInfo,
    release: String,
    vmlinuz: Vec<u8>,
    /// `(name, bytes)` in load order.
    modules: Vec<(String, Vec<u8>)>,
}

/// Builds (or finds cached) the default guest image. A complete cached image is returned at
/// once unless `opts.force`.
pub fn pull(opts: &PullOptions, progress: &dyn Progress) -> Result<GuestImage, ImageError> {
    let dir = opts.dir.clone().unwrap_or_else(crate::default_image_dir);
    if !opts.force {
        if let Some(img) = crate::cached_in(&dir) {
            progress.step(&format!("guest image in {}", dir.display()));
            progress.finish("cached");
            return Ok(img);
        }
    }
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Write { path, source }
    };
    fs::create_dir_all(&dir).map_err(write_err(&dir))?;
    let download_dir = dir.join("debs");
    let (kernel_deb, busybox_deb) = match &opts.from_debs {
        Some(d) => {
            (find_local(d, is_kernel_deb, "linux-image")?, find_local(d, is_busybox_deb, "busybox-static")?)
        }
        None => download(opts, &download_dir, progress)?,
    };

    let kernel = kernel_parts(&kernel_deb, progress)?;
    progress.step("extracting vmlinux from the bzImage");
    let vmlinux = vmlinux::extract_vmlinux(&kernel.vmlinuz).map_err(|source| ImageError::Vmlinux {
        path: format!("{}: boot/vmlinuz", kernel_deb.display()),
        source,
    })?;
    let pvh = vmlinux::has_pvh_note(&vmlinux);
    progress.finish(&format!("{} MiB, PVH note: {}", vmlinux.len() >> 20, if pvh { "yes" } else { "no" }));

    let (bb_info, busybox) = busybox_binary(&busybox_deb, progress)?;
    progress.step("building the initramfs");
    // busybox picks the applet from argv[0], so the probe copy must be named "busybox".
    let probe_dir = dir.join(".busybox-probe");
    fs::create_dir_all(&probe_dir).map_err(write_err(&probe_dir))?;
    write_file(&probe_dir.join("busybox"), &busybox, 0o755)?;
    let applets = guest::busybox_applets(&probe_dir.join("busybox"));
    let _ = fs::remove_dir_all(&probe_dir);
    let contents = GuestContents { busybox: &busybox, applets: &applets, modules: &kernel.modules };
    let initrd = gzip_initramfs(&contents)?;
    progress.finish(&format!(
        "{} KiB, {} applets, {} modules",
        initrd.len() >> 10,
        applets.len(),
        kernel.modules.len()
    ));

    progress.step(&format!("writing {}", dir.display()));
    let mut files = Vec::new();
    for (name, data) in [(VMLINUX_FILE, &vmlinux), (BZIMAGE_FILE, &kernel.vmlinuz), (INITRD_FILE, &initrd)] {
        write_file(&dir.join(name), data, 0o644)?;
        let sha256 = hex(&Sha256::digest(data));
        files.push(FileRecord { name: name.to_string(), size: data.len() as u64, sha256 });
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        kernel_package: kernel.info.package,
        kernel_version: kernel.info.version,
        kernel_release: kernel.release,
        busybox_version: bb_info.version,
        modules: kernel.modules.iter().map(|(n, _)| n.clone()).collect(),
        pvh,
        cmdline: DEFAULT_CMDLINE.to_string(),
        files,
        recipe: guest::recipe(),
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| ImageError::Write { path: dir.join(MANIFEST_FILE), source: e.into() })?;
    write_file(&dir.join(MANIFEST_FILE), &json, 0o644)?;
    if opts.from_debs.is_none() {
        let _ = fs::remove_dir_all(&download_dir);
    }
    progress.finish("done");
    crate::cached_in(&dir).ok_or(ImageError::Write {
        path: dir.join(MANIFEST_FILE),
        source: std::io::Error::other("image incomplete right after writing it"),
    })
}

fn download(
    opts: &PullOptions,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<(PathBuf, PathBuf), ImageError> {
    fs::create_dir_all(dir).map_err(|source| ImageError::Write { path: dir.into(), source })?;
    progress.step(&format!("resolving {}", opts.kernel_meta));
    let kernel_pkg = apt::resolve_kernel(&opts.kernel_meta)?;
    progress.finish(&kernel_pkg);
    let mut debs = Vec::new();
    for pkg in [kernel_pkg.as_str(), BUSYBOX_PACKAGE] {
        progress.step(&format!("downloading {pkg} (apt-get download)"));
        debs.push(apt::download(pkg, dir)?);
        progress.finish("done");
    }
    let busybox = debs.pop().expect("two packages were pushed");
    let kernel = debs.pop().expect("two packages were pushed");
    Ok((kernel, busybox))
}

fn file_name(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// A generic kernel image package: `linux-image-<release>_<version>_amd64.deb`, not the
/// `-dbg`, `-unsigned` or meta packages.
fn is_kernel_deb(p: &Path) -> bool {
    let name = file_name(p);
    let pkg = name.split('_').next().unwrap_or("");
    name.ends_with(".deb")
        && pkg.starts_with("linux-image-")
        && pkg.chars().nth(12).is_some_and(|c| c.is_ascii_digit())
        && !pkg.ends_with("-dbg")
        && !pkg.ends_with("-unsigned")
}

fn is_busybox_deb(p: &Path) -> bool {
    let name = file_name(p);
    name.starts_with("busybox-static_") && name.ends_with(".deb")
}

fn find_local(dir: &Path, pred: fn(&Path) -> bool, what: &'static str) -> Result<PathBuf, ImageError> {
    let mut hits: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|source| ImageError::Write { path: dir.into(), source })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| pred(p))
        .collect();
    // Prefer the generic flavour over e.g. -cloud-amd64 / -rt-amd64.
    hits.sort_by_key(|p| (file_name(p).split('_').next().unwrap_or("").matches('-').count(), p.clone()));
    hits.into_iter().next().ok_or_else(|| ImageError::NoDebInDir(what, dir.into()))
}

/// Pass 1 reads the bzImage, `modules.builtin` and every module's `.modinfo`; pass 2 keeps the
/// bytes of the modules the guest needs (the package has no `modules.dep`).
fn kernel_parts(deb_path: &Path, progress: &dyn Progress) -> Result<KernelParts, ImageError> {
    let info = deb::read_control(deb_path)?;
    progress.step(&format!("reading {} {}", info.package, info.version));
    let mut vmlinuz = None;
    let mut release = None;
    let mut builtin = BTreeSet::new();
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut paths: BTreeMap<String, String> = BTreeMap::new();
    deb::visit_data(deb_path, &mut |d, t| progress.bytes(d, t), &mut |path, r| {
        if path.starts_with("boot/vmlinuz-") {
            let mut buf = Vec::new();
            r.read_to_end(&mut buf)?;
            vmlinuz = Some(buf);
        } else if let Some(rest) = path.strip_prefix("lib/modules/") {
            if rest.ends_with("/modules.builtin") {
                let mut s = String::new();
                r.read_to_string(&mut s)?;
                builtin = modules::parse_builtin(&s);
                release = rest.split('/').next().map(str::to_string);
            } else if path.ends_with(".ko") {
                let mut buf = Vec::new();
                r.read_to_end(&mut buf)?;
                if let Some(mi) = modules::parse_modinfo(&buf) {
                    paths.insert(mi.name.clone(), path.to_string());
                    deps.insert(mi.name, mi.depends);
                }
            }
        }
        Ok(true)
    })?;
    progress.finish(&format!("{} modules", deps.len()));
    let vmlinuz =
        vmlinuz.ok_or(ImageError::MissingFile { package: deb_path.into(), what: "boot/vmlinuz-*" })?;
    let release = release.unwrap_or_else(|| info.package.trim_start_matches("linux-image-").to_string());

    let present: Vec<&str> =
        WANTED_MODULES.iter().copied().filter(|m| deps.contains_key(*m) || builtin.contains(*m)).collect();
    let order = modules::load_order(&present, &deps, &builtin)?;
    progress.step(&format!("extracting {} modules", order.len()));
    let wanted: BTreeMap<&str, &str> =
        order.iter().filter_map(|n| paths.get(n).map(|p| (p.as_str(), n.as_str()))).collect();
    let mut found: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (path, bytes) in
        deb::read_data_files(deb_path, &mut |d, t| progress.bytes(d, t), &mut |p| wanted.contains_key(p))?
    {
        if let Some(name) = wanted.get(path.as_str()) {
            found.insert(name.to_string(), bytes);
        }
    }
    let mut modules = Vec::new();
    for name in order {
        let bytes = found.remove(&name).ok_or_else(|| ModuleError::NotFound(name.clone()))?;
        modules.push((name, bytes));
    }
    progress.finish("done");
    Ok(KernelParts { info, release, vmlinuz, modules })
}

fn busybox_binary(deb_path: &Path, progress: &dyn Progress) -> Result<(DebInfo, Vec<u8>), ImageError> {
    let info = deb::read_control(deb_path)?;
    progress.step(&format!("reading {} {}", info.package, info.version));
    let files =
        deb::read_data_files(deb_path, &mut |d, t| progress.bytes(d, t), &mut |p| p == "bin/busybox")?;
    let (_, bytes) = files
        .into_iter()
        .next()
        .ok_or(ImageError::MissingFile { package: deb_path.into(), what: "bin/busybox" })?;
    progress.finish("done");
    Ok((info, bytes))
}

fn gzip_initramfs(contents: &GuestContents<'_>) -> Result<Vec<u8>, ImageError> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let gz = guest::write_initramfs(gz, contents)?;
    Ok(gz.finish().map_err(crate::cpio::CpioError::Write)?)
}

/// Writes `data` to `path` atomically (temporary file + rename).
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| ImageError::Write { path: path.into(), source };
    let tmp = path.with_extension("partial");
    let mut f = fs::File::create(&tmp).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.set_permissions(fs::Permissions::from_mode(mode)).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_generic_kernel_and_busybox_debs() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb",
            "linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb",
            "linux-image-6.1.0-56-amd64-dbg_6.1.192-2_amd64.deb",
            "linux-image-amd64_6.1.192-2_amd64.deb",
            "busybox-static_1%3a1.35.0-4_amd64.deb",
            "busybox_1%3a1.35.0-4_amd64.deb",
        ] {
            fs::write(dir.path().join(n), b"").unwrap();
        }
        let k = find_local(dir.path(), is_kernel_deb, "linux-image").unwrap();
        assert_eq!(file_name(&k), "linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb");
        let b = find_local(dir.path(), is_busybox_deb, "busybox-static").unwrap();
        assert_eq!(file_name(&b), "busybox-static_1%3a1.35.0-4_amd64.deb");
        let empty = tempfile::tempdir().unwrap();
        let err = find_local(empty.path(), is_kernel_deb, "linux-image").unwrap_err();
        assert!(err.to_string().starts_with("no linux-image .deb in"), "{err}");
    }

    #[test]
    fn write_file_is_atomic_and_sets_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vmlinux");
        write_file(&p, b"data", 0o755).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"data");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o755);
        assert!(!p.with_extension("partial").exists());
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }

    #[test]
    fn pulls_from_local_debs_then_serves_the_cache() {
        use crate::cpio::parse_newc;
        use crate::testutil::{build_deb, fake_bzimage, fake_ko, tiny_elf, xz};
        use std::io::Read;
        let debs = tempfile::tempdir().unwrap();
        let elf = tiny_elf(object::elf::EM_X86_64);
        let m = |p: &str| format!("lib/modules/6.1.0-99-amd64/kernel/{p}");
        let kernel_files = vec![
            ("boot/vmlinuz-6.1.0-99-amd64".to_string(), fake_bzimage(&xz(&elf), true), 0o644),
            (
                "lib/modules/6.1.0-99-amd64/modules.builtin".to_string(),
                b"kernel/drivers/block/virtio_blk.ko\n".to_vec(),
                0o644,
            ),
            (m("drivers/virtio/virtio.ko"), fake_ko("virtio", ""), 0o644),
            (m("drivers/virtio/virtio_ring.ko"), fake_ko("virtio_ring", ""), 0o644),
            (m("drivers/virtio/virtio_mmio.ko"), fake_ko("virtio_mmio", "virtio,virtio_ring"), 0o644),
            (m("drivers/char/hw_random/virtio-rng.ko"), fake_ko("virtio_rng", "virtio_ring,virtio"), 0o644),
            (m("net/vmw_vsock/vsock.ko"), fake_ko("vsock", ""), 0o644),
            (
                m("net/vmw_vsock/vmw_vsock_virtio_transport_common.ko"),
                fake_ko("vmw_vsock_virtio_transport_common", "vsock"),
                0o644,
            ),
            (
                m("net/vmw_vsock/vmw_vsock_virtio_transport.ko"),
                fake_ko(
                    "vmw_vsock_virtio_transport",
                    "vmw_vsock_virtio_transport_common,vsock,virtio,virtio_ring",
                ),
                0o644,
            ),
            (m("fs/unrelated.ko"), fake_ko("unrelated", ""), 0o644),
        ];
        let Some(_) = build_deb(debs.path(), "linux-image-6.1.0-99-amd64", "6.1.999-1", &kernel_files) else {
            eprintln!("dpkg-deb not installed; skipping");
            return;
        };
        let fake_busybox = b"#!/bin/sh\necho /bin/sh; echo /sbin/poweroff; echo /usr/bin/taskset\n".to_vec();
        build_deb(
            debs.path(),
            "busybox-static",
            "1:1.35.0-4",
            &[("bin/busybox".to_string(), fake_busybox.clone(), 0o755)],
        )
        .unwrap();

        let out = tempfile::tempdir().unwrap();
        let opts = PullOptions {
            dir: Some(out.path().join("img")),
            from_debs: Some(debs.path().to_path_buf()),
            ..PullOptions::default()
        };
        let img = pull(&opts, &crate::Silent).unwrap();
        assert_eq!(fs::read(&img.kernel).unwrap(), elf);
        assert_eq!(img.cmdline, DEFAULT_CMDLINE);
        let manifest = crate::read_manifest(&out.path().join("img")).unwrap();
        assert_eq!(manifest.kernel_package, "linux-image-6.1.0-99-amd64");
        assert_eq!(manifest.kernel_version, "6.1.999-1");
        assert_eq!(manifest.kernel_release, "6.1.0-99-amd64");
        assert_eq!(manifest.busybox_version, "1:1.35.0-4");
        assert!(!manifest.pvh, "the tiny ELF has no PVH note");
        // virtio_blk is built in, virtio_net is absent: both skipped; deps come first.
        assert_eq!(
            manifest.modules,
            [
                "virtio",
                "virtio_ring",
                "virtio_mmio",
                "virtio_rng",
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport"
            ]
        );
        let rec = manifest.files.iter().find(|f| f.name == VMLINUX_FILE).unwrap();
        assert_eq!(rec.sha256, hex(&Sha256::digest(&elf)));

        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(fs::File::open(&img.initrd).unwrap()).read_to_end(&mut raw).unwrap();
        let entries = parse_newc(&raw).unwrap();
        let get = |n: &str| entries.iter().find(|e| e.name == n).unwrap_or_else(|| panic!("{n}"));
        assert_eq!(get("bin/busybox").data, fake_busybox);
        assert_eq!(get("usr/bin/taskset").data, b"/bin/busybox");
        assert_eq!(get("lib/modules/virtio_rng.ko").data, fake_ko("virtio_rng", "virtio_ring,virtio"));
        assert!(entries.iter().all(|e| e.name != "lib/modules/unrelated.ko"));
        assert!(String::from_utf8_lossy(&get("init").data).contains(crate::BOOT_MARKER));

        // Cached: a second pull works without the packages and returns the same image.
        let moved = debs.path().with_extension("gone");
        fs::rename(debs.path(), &moved).unwrap();
        assert_eq!(pull(&opts, &crate::Silent).unwrap(), img);
        fs::rename(&moved, debs.path()).unwrap();
        // A damaged cache is rebuilt.
        fs::write(&img.initrd, b"truncated").unwrap();
        assert_eq!(crate::cached_in(&out.path().join("img")), None);
        assert_eq!(pull(&opts, &crate::Silent).unwrap(), img);
        assert!(crate::cached_in(&out.path().join("img")).is_some());
    }
}
