//! A streaming writer (and a small reader, for tests and checks) for the `newc` cpio format
//! that the Linux kernel unpacks as an initramfs.
//!
//! Entries are written in the order they are added; parent directories are created on the fly,
//! so `add_file("lib/modules/x.ko", ..)` alone yields a valid archive. Files can come from bytes
//! or be streamed from a host path, so multi-hundred-megabyte payloads never sit in memory.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;

/// Mode bits of a directory entry.
pub const S_IFDIR: u32 = 0o040000;
/// Mode bits of a regular file entry.
pub const S_IFREG: u32 = 0o100000;
/// Mode bits of a symlink entry.
pub const S_IFLNK: u32 = 0o120000;
/// Mode bits of a character device entry.
pub const S_IFCHR: u32 = 0o020000;
const S_IFMT: u32 = 0o170000;

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";
/// newc stores sizes in 8 hex digits.
const MAX_FILE_SIZE: u64 = u32::MAX as u64;

/// Errors of the cpio writer and reader.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// Writing the archive failed.
    #[error("writing cpio archive: {0}")]
    Write(#[source] io::Error),
    /// A host file to include could not be read.
    #[error("reading {path} for the cpio archive: {source}")]
    ReadSource {
        /// The host file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The path inside the archive is empty, absolute after cleaning, or has `..`.
    #[error("invalid path in cpio archive: {0:?}")]
    BadPath(String),
    /// newc cannot hold a file of 4 GiB or more.
    #[error("{path}: {size} bytes is too large for a newc cpio archive")]
    TooLarge {
        /// The path inside the archive.
        path: String,
        /// Its size.
        size: u64,
    },
    /// A host file changed size while it was being copied.
    #[error("{0}: file changed size while being archived")]
    SizeChanged(PathBuf),
    /// The archive being parsed is malformed.
    #[error("malformed cpio archive at offset {offset}: {what}")]
    Malformed {
        /// Byte offset of the problem.
        offset: usize,
        /// What was wrong.
        what: &'static str,
    },
}

/// Where the bytes of a regular file come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Bytes held in memory.
    Bytes(Vec<u8>),
    /// A file on the host, streamed when the entry is written.
    HostFile(PathBuf),
}

/// One entry of an initramfs description: `(path-in-archive, contents, mode)`.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A directory with permission bits.
    Dir { path: String, mode: u32 },
    /// A regular file with permission bits.
    File { path: String, source: Source, mode: u32 },
    /// A symlink `path -> target`.
    Symlink { path: String, target: String },
    /// A character device node (e.g. `dev/console` 5:1).
    CharDev { path: String, mode: u32, major: u32, minor: u32 },
}

/// Streaming newc writer. Call [`CpioWriter::finish`] to write the trailer.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive on `out`.
    pub fn new(out: W) -> Self {
        CpioWriter { out, written: 0, next_ino: 1, dirs: BTreeSet::new() }
    }

    /// Adds one [`Entry`].
    pub fn add(&mut self, entry: &Entry) -> Result<(), CpioError> {
        match entry {
            Entry::Dir { path, mode } => self.add_dir(path, *mode),
            Entry::File { path, source, mode } => match source {
                Source::Bytes(b) => self.add_file(path, b, *mode),
                Source::HostFile(p) => self.add_host_file(path, p, *mode),
            },
            Entry::Symlink { path, target } => self.add_symlink(path, target),
            Entry::CharDev { path, mode, major, minor } => self.add_char_dev(path, *mode, *major, *minor),
        }
    }

    /// Adds a directory (and its missing parents). Adding it twice is a no-op.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<(), CpioError> {
        let path = clean_path(path)?;
        self.ensure_parents(&path)?;
        if self.dirs.insert(path.clone()) {
            self.header(&path, S_IFDIR | (mode & 0o7777), 0, 0)?;
        }
        Ok(())
    }

    /// Adds a regular file from bytes.
    pub fn add_file(&mut self, path: &str, data: &[u8], mode: u32) -> Result<(), CpioError> {
        let path = clean_path(path)?;
        self.ensure_parents(&path)?;
        self.header(&path, S_IFREG | (mode & 0o7777), data.len() as u64, 0)?;
        self.raw(data)?;
        self.pad()
    }

    /// Adds a regular file streamed from `host`.
    pub fn add_host_file(&mut self, path: &str, host: &Path, mode: u32) -> Result<(), CpioError> {
        let read_err = |source| CpioError::ReadSource { path: host.to_path_buf(), source };
        let mut f = File::open(host).map_err(read_err)?;
        let size = f.metadata().map_err(read_err)?.len();
        let path = clean_path(path)?;
        self.ensure_parents(&path)?;
        self.header(&path, S_IFREG | (mode & 0o7777), size, 0)?;
        let mut copied = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        while copied < size {
            let want = buf.len().min((size - copied) as usize);
            let n = f.read(&mut buf[..want]).map_err(read_err)?;
            if n == 0 {
                break;
            }
            self.raw(&buf[..n])?;
            copied += n as u64;
        }
        if copied != size {
            return Err(CpioError::SizeChanged(host.to_path_buf()));
        }
        self.pad()
    }

    /// Adds a symlink `path -> target`.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        let path = clean_path(path)?;
        self.ensure_parents(&path)?;
        self.header(&path, S_IFLNK | 0o777, target.len() as u64, 0)?;
        self.raw(target.as_bytes())?;
        self.pad()
    }

    /// Adds a character device node.
    pub fn add_char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> Result<(), CpioError> {
        let path = clean_path(path)?;
        self.ensure_parents(&path)?;
        let rdev = (major << 16) | (minor & 0xffff);
        self.header(&path, S_IFCHR | (mode & 0o7777), 0, rdev)
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.header(TRAILER, 0, 0, 0)?;
        // Pad the archive to a 512-byte boundary like GNU cpio does.
        let rem = (self.written % 512) as usize;
        if rem != 0 {
            self.raw(&vec![0u8; 512 - rem])?;
        }
        self.out.flush().map_err(CpioError::Write)?;
        Ok(self.out)
    }

    fn ensure_parents(&mut self, path: &str) -> Result<(), CpioError> {
        let mut idx = 0;
        while let Some(pos) = path[idx..].find('/') {
            let parent = &path[..idx + pos];
            if !self.dirs.contains(parent) {
                let parent = parent.to_string();
                self.header(&parent, S_IFDIR | 0o755, 0, 0)?;
                self.dirs.insert(parent);
            }
            idx += pos + 1;
        }
        Ok(())
    }

    fn header(&mut self, name: &str, mode: u32, size: u64, rdev: u32) -> Result<(), CpioError> {
        if size > MAX_FILE_SIZE {
            return Err(CpioError::TooLarge { path: name.to_string(), size });
        }
        let ino = self.next_ino;
        self.next_ino = self.next_ino.wrapping_add(1);
        let nlink = if mode & S_IFMT == S_IFDIR { 2 } else { 1 };
        let (rmaj, rmin) = (rdev >> 16, rdev & 0xffff);
        let namesize = name.len() + 1;
        let fields = [ino, mode, 0, 0, nlink, 0, size as u32, 0, 0, rmaj, rmin, namesize as u32, 0];
        let mut hdr = Vec::with_capacity(110 + namesize + 3);
        hdr.extend_from_slice(MAGIC);
        for f in fields {
            hdr.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        hdr.extend_from_slice(name.as_bytes());
        hdr.push(0);
        self.raw(&hdr)?;
        self.pad()
    }

    fn raw(&mut self, data: &[u8]) -> Result<(), CpioError> {
        self.out.write_all(data).map_err(CpioError::Write)?;
        self.written += data.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<(), CpioError> {
        let rem = (self.written % 4) as usize;
        if rem != 0 {
            self.raw(&[0u8; 3][..4 - rem])?;
        }
        Ok(())
    }
}

/// Strips leading `/` and `./`; rejects empty paths and `..` components.
fn clean_path(path: &str) -> Result<String, CpioError> {
    let trimmed = path.trim_start_matches("./").trim_start_matches('/');
    let trimmed = trimmed.trim_end_matches('/');
    if trimmed.is_empty() || trimmed.split('/').any(|c| c == ".." || c.is_empty()) {
        return Err(CpioError::BadPath(path.to_string()));
    }
    Ok(trimmed.to_string())
}

/// Writes `entries` as a gzip-compressed newc archive to `dest`.
pub fn write_initramfs_gz(dest: &Path, entries: &[Entry]) -> Result<(), CpioError> {
    let file = File::create(dest).map_err(CpioError::Write)?;
    let gz = GzEncoder::new(io::BufWriter::new(file), Compression::default());
    let mut w = CpioWriter::new(gz);
    for e in entries {
        w.add(e)?;
    }
    let gz = w.finish()?;
    let mut buf = gz.finish().map_err(CpioError::Write)?;
    buf.flush().map_err(CpioError::Write)
}

/// One entry read back from an archive by [`parse_newc`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEntry {
    /// Path inside the archive.
    pub name: String,
    /// Full mode (type and permission bits).
    pub mode: u32,
    /// File contents or symlink target.
    pub data: Vec<u8>,
    /// Device major/minor for device nodes.
    pub rdev: (u32, u32),
}

/// Parses an uncompressed newc archive (up to the trailer).
pub fn parse_newc(buf: &[u8]) -> Result<Vec<ParsedEntry>, CpioError> {
    let mut out = Vec::new();
    let mut off = 0usize;
    loop {
        let bad = |what| CpioError::Malformed { offset: off, what };
        let hdr = buf.get(off..off + 110).ok_or(bad("truncated header"))?;
        if &hdr[..6] != MAGIC {
            return Err(bad("bad magic"));
        }
        let field = |i: usize| -> Result<u32, CpioError> {
            let s = std::str::from_utf8(&hdr[6 + i * 8..14 + i * 8]).map_err(|_| bad("bad hex"))?;
            u32::from_str_radix(s, 16).map_err(|_| bad("bad hex"))
        };
        let (mode, size, namesize) = (field(1)?, field(6)? as usize, field(11)? as usize);
        let rdev = (field(9)?, field(10)?);
        let name_end = (off + 110).checked_add(namesize).ok_or(bad("name size"))?;
        let name = buf.get(off + 110..name_end.saturating_sub(1)).ok_or(bad("truncated name"))?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| bad("name not UTF-8"))?;
        let data_start = align4(name_end);
        let data_end = data_start.checked_add(size).ok_or(bad("file size"))?;
        if name == TRAILER {
            return Ok(out);
        }
        let data = buf.get(data_start..data_end).ok_or(bad("truncated data"))?.to_vec();
        out.push(ParsedEntry { name, mode, data, rdev });
        off = align4(data_end);
    }
}

fn align4(x: usize) -> usize {
    (x + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.add_file("/bin/busybox", b"\x7fELF-fake", 0o755).unwrap();
        w.add_symlink("bin/sh", "busybox").unwrap();
        w.add_dir("proc", 0o555).unwrap();
        w.add_char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.add_file("init", b"#!/bin/sh\necho hi\n", 0o755).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn parses_back_with_parents_first() {
        let entries = parse_newc(&sample()).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["bin", "bin/busybox", "bin/sh", "proc", "dev", "dev/console", "init"]);
        assert_eq!(entries[1].data, b"\x7fELF-fake");
        assert_eq!(entries[1].mode, S_IFREG | 0o755);
        assert_eq!(entries[2].mode & S_IFMT, S_IFLNK);
        assert_eq!(entries[2].data, b"busybox");
        assert_eq!(entries[3].mode, S_IFDIR | 0o555);
        assert_eq!(entries[5].rdev, (5, 1));
        assert_eq!(entries[6].data, b"#!/bin/sh\necho hi\n");
    }

    #[test]
    fn gnu_cpio_lists_the_archive() {
        if Command::new("cpio").arg("--version").output().is_err() {
            eprintln!("cpio not installed; skipping the cross-check");
            return;
        }
        let mut child = Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&sample()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8(out.stdout).unwrap();
        let names: Vec<_> = listing.lines().collect();
        assert_eq!(names, ["bin", "bin/busybox", "bin/sh", "proc", "dev", "dev/console", "init"]);
    }

    #[test]
    fn host_file_is_streamed_and_gzip_roundtrips() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("payload");
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&host, &payload).unwrap();
        let dest = dir.path().join("initrd.cpio.gz");
        let entries = [
            Entry::File { path: "a/b/payload".into(), source: Source::HostFile(host), mode: 0o644 },
            Entry::Symlink { path: "a/link".into(), target: "b/payload".into() },
        ];
        write_initramfs_gz(&dest, &entries).unwrap();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(File::open(&dest).unwrap()).read_to_end(&mut raw).unwrap();
        assert_eq!(raw.len() % 512, 0);
        let parsed = parse_newc(&raw).unwrap();
        let file = parsed.iter().find(|e| e.name == "a/b/payload").unwrap();
        assert_eq!(file.data, payload);
        assert!(parsed.iter().any(|e| e.name == "a/b" && e.mode & S_IFMT == S_IFDIR));
    }

    #[test]
    fn rejects_bad_paths_and_bad_archives() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(matches!(w.add_file("../etc/passwd", b"", 0o644), Err(CpioError::BadPath(_))));
        assert!(matches!(w.add_file("/", b"", 0o644), Err(CpioError::BadPath(_))));
        assert!(matches!(w.add_file("a//b", b"", 0o644), Err(CpioError::BadPath(_))));
        let good = sample();
        assert!(parse_newc(&good[..50]).is_err());
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(parse_newc(&bad).is_err());
        // A huge name size must not panic.
        let mut huge = good;
        huge[6 + 11 * 8..14 + 11 * 8].copy_from_slice(b"ffffffff");
        assert!(parse_newc(&huge).is_err());
    }
}
