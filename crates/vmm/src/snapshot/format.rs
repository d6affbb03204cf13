//! The snapshot file: a fixed header and tagged, versioned sections (docs/SNAPSHOT.md).
//!
//! ```text
//! header (40 bytes, little-endian)
//!   0  magic        "VMRSNAP\0"
//!   8  format       u32   (FORMAT_VERSION)
//!  12  arch         u32   (1 = x86-64)
//!  16  sections     u32
//!  20  crc32        u32   CRC-32 (IEEE) of everything after the header
//!  24  body length  u64   bytes after the header
//!  32  reserved     u64   0
//! section (32-byte head, then the payload)
//!   0  tag          16 bytes ASCII, NUL-padded
//!  16  version      u32
//!  20  flags        u32   bit 0: optional (a reader that does not know the tag may skip it)
//!  24  length       u64
//!  32  payload      JSON
//! ```
//!
//! Decoding treats the file as hostile: every length is checked against what is left, the
//! total against a limit, and every error is one line naming what is wrong.

use thiserror::Error;

pub const MAGIC: &[u8; 8] = b"VMRSNAP\0";
/// Version of the container layout above (sections version themselves).
pub const FORMAT_VERSION: u32 = 1;
/// Architecture ids.
pub const ARCH_X86_64: u32 = 1;
const HEADER_LEN: usize = 40;
const TAG_LEN: usize = 16;
/// Largest body a snapshot may have: device and vCPU state is small (memory is a separate file);
/// the serial port's pending input (up to 1 MiB) is the largest part.
pub const MAX_BODY: u64 = 64 << 20;
const MAX_SECTIONS: u32 = 256;
/// Section flag: a reader that does not know the tag may skip the section.
pub const FLAG_OPTIONAL: u32 = 1;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not a vmr snapshot (bad magic)")]
    Magic,
    #[error("the file is truncated: {what} needs {need} bytes, {have} are left")]
    Truncated { what: String, need: u64, have: u64 },
    #[error("snapshot format version {0}; this vmr reads version {FORMAT_VERSION}")]
    Version(u32),
    #[error("snapshot of architecture {0}; this vmr restores x86-64 (1)")]
    Arch(u32),
    #[error("snapshot body of {0} bytes is larger than the {MAX_BODY}-byte limit")]
    TooLarge(u64),
    #[error("the header says {said} bytes follow it, the file has {have}")]
    Length { said: u64, have: u64 },
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the file is corrupted")]
    Checksum { stored: u32, computed: u32 },
    #[error("{0} sections: more than a snapshot has")]
    SectionCount(u32),
    #[error("section tag {0:?} is not printable ASCII")]
    Tag(Vec<u8>),
    #[error("section '{tag}' version {version} is not known to this vmr")]
    UnknownSection { tag: String, version: u32 },
    #[error("section '{tag}' version {version}; this vmr reads up to version {max}")]
    SectionVersion { tag: String, version: u32, max: u32 },
    #[error("section '{0}' appears twice")]
    Duplicate(String),
    #[error("section '{0}' is missing")]
    Missing(&'static str),
    #[error("section '{tag}': {error}")]
    Payload { tag: String, error: String },
    #[error("reserved header field is {0:#x}, not 0 (a newer format?)")]
    Reserved(u64),
    #[error("{0} bytes after the last section")]
    Trailing(u64),
}

/// One section as read or to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub tag: String,
    pub version: u32,
    pub flags: u32,
    pub payload: Vec<u8>,
}

/// Writes the header and `sections` into one buffer.
pub fn encode(sections: &[Section]) -> Vec<u8> {
    let mut body = Vec::new();
    for s in sections {
        let mut tag = [0u8; TAG_LEN];
        let n = s.tag.len().min(TAG_LEN);
        tag[..n].copy_from_slice(&s.tag.as_bytes()[..n]);
        body.extend_from_slice(&tag);
        body.extend_from_slice(&s.version.to_le_bytes());
        body.extend_from_slice(&s.flags.to_le_bytes());
        body.extend_from_slice(&(s.payload.len() as u64).to_le_bytes());
        body.extend_from_slice(&s.payload);
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&ARCH_X86_64.to_le_bytes());
    out.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// A bounds-checked reader over the file.
struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], FormatError> {
        let have = (self.data.len() - self.at) as u64;
        if n > have {
            return Err(FormatError::Truncated { what: what.into(), need: n, have });
        }
        let s = &self.data[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

/// Checks the header and checksum and splits the body into sections (in file order).
pub fn decode(data: &[u8]) -> Result<Vec<Section>, FormatError> {
    let mut c = Cursor { data, at: 0 };
    if c.take(8, "the magic")? != MAGIC {
        return Err(FormatError::Magic);
    }
    let version = c.u32("the header")?;
    if version != FORMAT_VERSION {
        return Err(FormatError::Version(version));
    }
    let arch = c.u32("the header")?;
    if arch != ARCH_X86_64 {
        return Err(FormatError::Arch(arch));
    }
    let count = c.u32("the header")?;
    let stored = c.u32("the header")?;
    let len = c.u64("the header")?;
    let reserved = c.u64("the header")?;
    if reserved != 0 {
        return Err(FormatError::Reserved(reserved));
    }
    if len > MAX_BODY {
        return Err(FormatError::TooLarge(len));
    }
    let have = (data.len() - HEADER_LEN) as u64;
    if len != have {
        return Err(FormatError::Length { said: len, have });
    }
    let computed = crc32fast::hash(&data[HEADER_LEN..]);
    if computed != stored {
        return Err(FormatError::Checksum { stored, computed });
    }
    if count > MAX_SECTIONS {
        return Err(FormatError::SectionCount(count));
    }
    let mut sections = Vec::with_capacity(count as usize);
    for i in 0..count {
        let what = format!("section {i}");
        let raw_tag = c.take(TAG_LEN as u64, &what)?;
        let tag_bytes: Vec<u8> = raw_tag.iter().copied().take_while(|&b| b != 0).collect();
        if tag_bytes.is_empty() || !tag_bytes.iter().all(|b| b.is_ascii_graphic()) {
            return Err(FormatError::Tag(raw_tag.to_vec()));
        }
        let tag = String::from_utf8_lossy(&tag_bytes).into_owned();
        let version = c.u32(&what)?;
        let flags = c.u32(&what)?;
        let len = c.u64(&what)?;
        let payload = c.take(len, &format!("section '{tag}'"))?.to_vec();
        if sections.iter().any(|s: &Section| s.tag == tag) {
            return Err(FormatError::Duplicate(tag));
        }
        sections.push(Section { tag, version, flags, payload });
    }
    let left = (data.len() - c.at) as u64;
    if left != 0 {
        return Err(FormatError::Trailing(left));
    }
    Ok(sections)
}
