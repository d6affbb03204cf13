//! Cutting the uncompressed ELF `vmlinux` out of a bzImage, so the default guest can boot by
//! PVH (the ELF's Xen `PHYS32_ENTRY` note) without running the kernel's decompressor.

use std::io::Read;

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{Endianness, FileKind};

/// The xz stream magic.
pub const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];
const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];
const LZ4_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// A decompressed kernel larger than this is treated as garbage.
const MAX_VMLINUX: u64 = 1 << 30;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH entry point note.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Errors extracting a vmlinux.
#[derive(Debug, thiserror::Error)]
pub enum VmlinuxError {
    /// No boot-protocol header and no xz stream.
    #[error("not a bzImage: no \"HdrS\" header and no xz stream found")]
    NotBzImage,
    /// The payload uses a compression this crate does not decompress.
    #[error("bzImage payload is {0}-compressed; only xz and gzip payloads can be extracted")]
    Unsupported(&'static str),
    /// Decompression failed or the result is not an x86-64 ELF.
    #[error("no x86-64 ELF found in the bzImage payload ({0})")]
    NoElf(String),
}

/// Returns the uncompressed x86-64 ELF kernel inside `bzimage`.
///
/// Uses the boot-protocol header (`payload_offset`/`payload_length`) when present and falls
/// back to scanning for the xz magic.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, VmlinuxError> {
    let mut last_err = None;
    if let Some(payload) = header_payload(bzimage) {
        match decompress(payload) {
            Ok(v) => return Ok(v),
            Err(e @ VmlinuxError::Unsupported(_)) => return Err(e),
            Err(e) => last_err = Some(e),
        }
    }
    let mut start = 0;
    while let Some(pos) = find(&bzimage[start..], &XZ_MAGIC) {
        match decompress(&bzimage[start + pos..]) {
            Ok(v) => return Ok(v),
            Err(e) => last_err = Some(e),
        }
        start += pos + 1;
    }
    Err(last_err.unwrap_or(VmlinuxError::NotBzImage))
}

/// The compressed payload per the Linux/x86 boot protocol (>= 2.08), if the header is sane.
fn header_payload(img: &[u8]) -> Option<&[u8]> {
    if img.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let setup_sects = match *img.get(0x1f1)? {
        0 => 4,
        n => n as usize,
    };
    let u32_at = |o: usize| img.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let offset = u32_at(0x248)? as usize;
    let length = u32_at(0x24c)? as usize;
    let start = (setup_sects + 1).checked_mul(512)?.checked_add(offset)?;
    img.get(start..start.checked_add(length)?)
}

fn decompress(payload: &[u8]) -> Result<Vec<u8>, VmlinuxError> {
    let mut out = Vec::new();
    let res = if payload.starts_with(&XZ_MAGIC) {
        return xz_single_stream(payload);
    } else if payload.starts_with(&GZIP_MAGIC) {
        flate2::bufread::GzDecoder::new(payload).take(MAX_VMLINUX).read_to_end(&mut out)
    } else if payload.starts_with(&LZ4_MAGIC) {
        return Err(VmlinuxError::Unsupported("LZ4"));
    } else if payload.starts_with(&ZSTD_MAGIC) {
        return Err(VmlinuxError::Unsupported("zstd"));
    } else {
        return Err(VmlinuxError::NoElf("unknown payload compression".into()));
    };
    res.map_err(|e| VmlinuxError::NoElf(format!("decompression failed: {e}")))?;
    check_elf(&out)?;
    Ok(out)
}

/// Decompresses the xz stream at the start of `payload`, ignoring what follows it (a bzImage
/// appends the decompressed size after the stream).
fn xz_single_stream(payload: &[u8]) -> Result<Vec<u8>, VmlinuxError> {
    let fail = |e: &dyn std::fmt::Display| VmlinuxError::NoElf(format!("decompression failed: {e}"));
    let mut stream = xz2::stream::Stream::new_stream_decoder(u64::MAX, 0).map_err(|e| fail(&e))?;
    let mut out: Vec<u8> = Vec::with_capacity(payload.len().saturating_mul(4));
    loop {
        if out.len() as u64 >= MAX_VMLINUX {
            return Err(fail(&"larger than 1 GiB"));
        }
        if out.capacity() - out.len() < 1 << 20 {
            out.reserve(1 << 22);
        }
        let consumed = stream.total_in() as usize;
        let input = payload.get(consumed..).unwrap_or(&[]);
        let produced = out.len();
        let status = stream.process_vec(input, &mut out, xz2::stream::Action::Run).map_err(|e| fail(&e))?;
        if status == xz2::stream::Status::StreamEnd {
            break;
        }
        if stream.total_in() as usize == consumed && out.len() == produced {
            return Err(fail(&"truncated xz stream"));
        }
    }
    check_elf(&out)?;
    Ok(out)
}

fn check_elf(data: &[u8]) -> Result<(), VmlinuxError> {
    match FileKind::parse(data) {
        Ok(FileKind::Elf64) => {}
        _ => return Err(VmlinuxError::NoElf("payload is not a 64-bit ELF".into())),
    }
    let file =
        ElfFile64::<Endianness>::parse(data).map_err(|e| VmlinuxError::NoElf(format!("bad ELF: {e}")))?;
    let machine = file.elf_header().e_machine(file.endian());
    if machine != elf::EM_X86_64 {
        return Err(VmlinuxError::NoElf(format!("ELF machine {machine} is not x86-64")));
    }
    Ok(())
}

/// True if the ELF `vmlinux` carries a Xen PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`).
pub fn has_pvh_note(vmlinux: &[u8]) -> bool {
    let Ok(file) = ElfFile64::<Endianness>::parse(vmlinux) else { return false };
    let endian = file.endian();
    let Ok(phdrs) = file.elf_header().program_headers(endian, vmlinux) else { return false };
    for ph in phdrs {
        let Ok(Some(mut notes)) = ph.notes(endian, vmlinux) else { continue };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == b"Xen" && note.n_type(endian) == XEN_ELFNOTE_PHYS32_ENTRY {
                return true;
            }
        }
    }
    false
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    use crate::testutil::{fake_bzimage, tiny_elf, xz};

    #[test]
    fn extracts_xz_payload_via_header_and_by_scanning() {
        let elf = tiny_elf(elf::EM_X86_64);
        for with_header in [true, false] {
            let img = fake_bzimage(&xz(&elf), with_header);
            assert_eq!(extract_vmlinux(&img).unwrap(), elf, "header={with_header}");
        }
    }

    #[test]
    fn extracts_gzip_payload() {
        let elf = tiny_elf(elf::EM_X86_64);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&elf).unwrap();
        let img = fake_bzimage(&enc.finish().unwrap(), true);
        assert_eq!(extract_vmlinux(&img).unwrap(), elf);
    }

    #[test]
    fn skips_false_xz_magic_and_rejects_non_elf() {
        let elf = tiny_elf(elf::EM_X86_64);
        let mut payload = XZ_MAGIC.to_vec(); // a stray magic that is not a stream
        payload.extend_from_slice(&[0u8; 64]);
        payload.extend_from_slice(&xz(&elf));
        assert_eq!(extract_vmlinux(&fake_bzimage(&payload, false)).unwrap(), elf);

        let not_elf = fake_bzimage(&xz(&[0x42u8; 5000]), true);
        assert!(matches!(extract_vmlinux(&not_elf), Err(VmlinuxError::NoElf(_))));
        let arm = fake_bzimage(&xz(&tiny_elf(elf::EM_AARCH64)), true);
        let err = extract_vmlinux(&arm).unwrap_err().to_string();
        assert!(err.contains("not x86-64"), "{err}");
    }

    #[test]
    fn reports_lz4_and_garbage() {
        let mut lz4 = LZ4_MAGIC.to_vec();
        lz4.extend_from_slice(&[0u8; 100]);
        let err = extract_vmlinux(&fake_bzimage(&lz4, true)).unwrap_err();
        assert!(matches!(err, VmlinuxError::Unsupported("LZ4")), "{err}");
        assert!(matches!(extract_vmlinux(&[0u8; 10_000]), Err(VmlinuxError::NotBzImage)));
        assert!(matches!(extract_vmlinux(&[]), Err(VmlinuxError::NotBzImage)));
        // A header whose payload points past the end must not panic.
        let mut img = fake_bzimage(&[], true);
        img[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(extract_vmlinux(&img).is_err());
    }

    #[test]
    fn pvh_note_detection() {
        assert!(!has_pvh_note(&tiny_elf(elf::EM_X86_64)));
        assert!(!has_pvh_note(b"garbage"));
    }
}
