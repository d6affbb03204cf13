//! Test fixtures shared by the unit tests.

use std::io::Write;

/// A minimal valid ELF64 x86-64 header (no sections, no program headers).
pub fn tiny_elf(machine: u16) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2; // ELFCLASS64
    h[5] = 1; // little endian
    h[6] = 1; // EV_CURRENT
    h[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    h[18..20].copy_from_slice(&machine.to_le_bytes());
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    h[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    h[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
    h.extend_from_slice(&[0xab; 4000]);
    h
}

pub fn xz(data: &[u8]) -> Vec<u8> {
    let mut enc = xz2::write::XzEncoder::new(Vec::new(), 6);
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// A fake bzImage: setup sectors with a boot header pointing at `payload`, then junk.
pub fn fake_bzimage(payload: &[u8], with_header: bool) -> Vec<u8> {
    let setup_sects = 3u8;
    let mut img = vec![0x90u8; (setup_sects as usize + 1) * 512];
    if with_header {
        img[0x1f1] = setup_sects;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x248..0x24c].copy_from_slice(&100u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    }
    img.extend_from_slice(&[0xcc; 100]); // decompressor code before the payload
    img.extend_from_slice(payload);
    img.extend_from_slice(&[0x11, 0x22, 0x33, 0x44, 0x55]); // trailing size word + junk
    img
}

/// A relocatable ELF with a `.modinfo` section, like a kernel module.
pub fn fake_ko(name: &str, depends: &str) -> Vec<u8> {
    use object::write::Object;
    use object::{Architecture, BinaryFormat, Endianness, SectionKind};
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let sec = obj.add_section(Vec::new(), b".modinfo".to_vec(), SectionKind::ReadOnlyData);
    let info = format!("license=GPL\0depends={depends}\0retpoline=Y\0name={name}\0");
    obj.append_section_data(sec, info.as_bytes(), 1);
    obj.write().unwrap()
}

/// Builds `dir/<package>_<version>_amd64.deb` from `(path, bytes, mode)` with dpkg-deb.
/// None if dpkg-deb is not installed.
pub fn build_deb(
    dir: &std::path::Path,
    package: &str,
    version: &str,
    files: &[(String, Vec<u8>, u32)],
) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let root = dir.join(format!("root-{package}"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {package}\nVersion: {version}\nArchitecture: amd64\n\
             Maintainer: t <t@example.org>\nDescription: test\n"
        ),
    )
    .unwrap();
    for (path, data, mode) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    let deb = dir.join(format!("{package}_{}_amd64.deb", version.replace(':', "%3a")));
    let out = std::process::Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&root)
        .arg(&deb)
        .output()
        .ok()?;
    assert!(out.status.success(), "dpkg-deb: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_dir_all(&root).unwrap();
    Some(deb)
}
