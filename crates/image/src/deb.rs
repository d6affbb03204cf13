//! Reading Debian packages without dpkg: a `.deb` is an `ar` archive holding `debian-binary`,
//! `control.tar.*` and `data.tar.*` (xz, gzip or uncompressed here).

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

/// Errors reading a `.deb`.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    /// The file could not be opened or read.
    #[error("reading {path}: {source}")]
    Io {
        /// The package file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The ar container lacks a member.
    #[error("{path}: not a Debian package (no {member} member)")]
    Missing {
        /// The package file.
        path: PathBuf,
        /// Which member is missing.
        member: &'static str,
    },
    /// A member uses a compression this reader does not handle.
    #[error("{path}: unsupported compression of {member} (only .xz, .gz or none)")]
    Compression {
        /// The package file.
        path: PathBuf,
        /// The member name.
        member: String,
    },
    /// The control file lacks a field.
    #[error("{path}: control file has no {field} field")]
    Control {
        /// The package file.
        path: PathBuf,
        /// The missing field.
        field: &'static str,
    },
}

/// Name and version from a package's control file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebInfo {
    /// `Package:` field.
    pub package: String,
    /// `Version:` field.
    pub version: String,
}

/// Counts bytes read from the package file and reports them.
struct Counting<'a, R> {
    inner: R,
    read: u64,
    total: u64,
    report: &'a mut dyn FnMut(u64, u64),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        (self.report)(self.read, self.total);
        Ok(n)
    }
}

/// Reads the control file of `deb`.
pub fn read_control(deb: &Path) -> Result<DebInfo, DebError> {
    let mut control = None;
    visit_member(deb, "control.tar", &mut |_, _| {}, &mut |path, r| {
        if path == "control" {
            let mut s = String::new();
            r.read_to_string(&mut s)?;
            control = Some(s);
            return Ok(false);
        }
        Ok(true)
    })?;
    let control = control.ok_or(DebError::Missing { path: deb.into(), member: "control" })?;
    let field = |name: &'static str| {
        control
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
            .map(|v| v.trim().to_string())
            .ok_or(DebError::Control { path: deb.into(), field: name })
    };
    Ok(DebInfo { package: field("Package")?, version: field("Version")? })
}

/// Streams every regular file of the package's `data.tar` to `visit(path, reader)`, where
/// `path` has no leading `./`. `visit` returns `Ok(false)` to stop early. `progress` gets
/// (bytes of the package read, package size).
pub fn visit_data(
    deb: &Path,
    progress: &mut dyn FnMut(u64, u64),
    visit: &mut dyn FnMut(&str, &mut dyn Read) -> io::Result<bool>,
) -> Result<(), DebError> {
    visit_member(deb, "data.tar", progress, visit)
}

/// Reads the files of `data.tar` whose path satisfies `want` into memory.
pub fn read_data_files(
    deb: &Path,
    progress: &mut dyn FnMut(u64, u64),
    want: &mut dyn FnMut(&str) -> bool,
) -> Result<Vec<(String, Vec<u8>)>, DebError> {
    let mut out = Vec::new();
    visit_data(deb, progress, &mut |path, r| {
        if want(path) {
            let mut buf = Vec::new();
            r.read_to_end(&mut buf)?;
            out.push((path.to_string(), buf));
        }
        Ok(true)
    })?;
    Ok(out)
}

fn visit_member(
    deb: &Path,
    prefix: &'static str,
    progress: &mut dyn FnMut(u64, u64),
    visit: &mut dyn FnMut(&str, &mut dyn Read) -> io::Result<bool>,
) -> Result<(), DebError> {
    let io_err = |source| DebError::Io { path: deb.into(), source };
    let file = File::open(deb).map_err(io_err)?;
    let total = file.metadata().map_err(io_err)?.len();
    let counting = Counting { inner: BufReader::new(file), read: 0, total, report: progress };
    let mut archive = ar::Archive::new(counting);
    while let Some(member) = archive.next_entry() {
        let member = member.map_err(io_err)?;
        let name = String::from_utf8_lossy(member.header().identifier()).into_owned();
        let Some(suffix) = name.strip_prefix(prefix) else { continue };
        let reader: Box<dyn Read + '_> = match suffix {
            ".xz" => Box::new(xz2::read::XzDecoder::new(member)),
            ".gz" => Box::new(flate2::read::GzDecoder::new(member)),
            "" => Box::new(member),
            _ => return Err(DebError::Compression { path: deb.into(), member: name }),
        };
        return walk_tar(reader, visit).map_err(io_err);
    }
    Err(DebError::Missing { path: deb.into(), member: prefix })
}

fn walk_tar(
    reader: impl Read,
    visit: &mut dyn FnMut(&str, &mut dyn Read) -> io::Result<bool>,
) -> io::Result<()> {
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path()?.to_string_lossy().into_owned();
        let path = path.trim_start_matches("./").to_string();
        if !visit(&path, &mut entry)? {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Builds a tiny package with `dpkg-deb --build`; None when dpkg-deb is missing.
    fn build_deb(dir: &Path, compression: &str) -> Option<PathBuf> {
        let root = dir.join(format!("pkg-{compression}"));
        std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
        std::fs::create_dir_all(root.join("usr/lib/demo")).unwrap();
        std::fs::write(
            root.join("DEBIAN/control"),
            "Package: vmr-demo\nVersion: 1.2-3\nArchitecture: all\n\
             Maintainer: t <t@example.org>\nDescription: demo\n",
        )
        .unwrap();
        std::fs::write(root.join("usr/lib/demo/hello.txt"), "hello deb\n").unwrap();
        std::fs::write(root.join("usr/lib/demo/big.bin"), vec![7u8; 300_000]).unwrap();
        std::os::unix::fs::symlink("hello.txt", root.join("usr/lib/demo/link")).unwrap();
        let deb = dir.join(format!("demo-{compression}.deb"));
        let status = Command::new("dpkg-deb")
            .args(["--root-owner-group", &format!("-Z{compression}"), "--build"])
            .arg(&root)
            .arg(&deb)
            .output();
        match status {
            Ok(o) if o.status.success() => Some(deb),
            Ok(o) => panic!("dpkg-deb failed: {}", String::from_utf8_lossy(&o.stderr)),
            Err(_) => None,
        }
    }

    #[test]
    fn extracts_files_and_control_for_each_compression() {
        let dir = tempfile::tempdir().unwrap();
        for comp in ["xz", "gzip", "none"] {
            let Some(deb) = build_deb(dir.path(), comp) else {
                eprintln!("dpkg-deb not installed; skipping");
                return;
            };
            let info = read_control(&deb).unwrap();
            assert_eq!(info, DebInfo { package: "vmr-demo".into(), version: "1.2-3".into() });
            let mut last = (0, 0);
            let files =
                read_data_files(&deb, &mut |r, t| last = (r, t), &mut |p| p.starts_with("usr/lib/demo/"))
                    .unwrap();
            let names: Vec<_> = files.iter().map(|(n, _)| n.as_str()).collect();
            assert!(names.contains(&"usr/lib/demo/hello.txt"), "{comp}: {names:?}");
            assert!(!names.contains(&"usr/lib/demo/link"), "symlinks are skipped");
            let hello = files.iter().find(|(n, _)| n.ends_with("hello.txt")).unwrap();
            assert_eq!(hello.1, b"hello deb\n");
            let big = files.iter().find(|(n, _)| n.ends_with("big.bin")).unwrap();
            assert_eq!(big.1.len(), 300_000);
            assert!(last.0 > 0 && last.0 <= last.1, "progress {last:?}");
        }
    }

    #[test]
    fn rejects_non_packages() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.deb");
        std::fs::write(&junk, b"!<arch>\n").unwrap();
        assert!(matches!(read_control(&junk), Err(DebError::Missing { .. })));
        std::fs::write(&junk, b"definitely not an ar archive").unwrap();
        assert!(read_control(&junk).is_err());
        let missing = dir.path().join("missing.deb");
        assert!(matches!(read_control(&missing), Err(DebError::Io { .. })));
    }
}
