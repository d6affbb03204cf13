//! Raw images: regular files and block devices, byte for byte.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::{check_range, BlockError, DiskImage, ImageFormat};

/// Largest zero buffer written when the filesystem cannot zero a range itself.
const ZERO_CHUNK: usize = 1 << 20;

/// A raw file or block device.
pub struct RawImage {
    file: File,
    path: PathBuf,
    len: u64,
    read_only: bool,
}

impl RawImage {
    /// Wraps an already opened (and locked) file. The size is fixed at open time.
    pub fn from_file(mut file: File, path: &Path, read_only: bool) -> Result<Self, BlockError> {
        // SEEK_END gives the size of regular files and block devices alike.
        let len = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Open { path: path.to_owned(), source })?;
        Ok(RawImage { file, path: path.to_owned(), len, read_only })
    }

    /// The path the image was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: fallocate on a descriptor we own, with plain integer arguments.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, l) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn write_zero_buffer(&self, mut offset: u64, len: u64) -> Result<(), BlockError> {
        let end = offset + len;
        let zeroes = vec![0u8; ZERO_CHUNK.min(len as usize)];
        while offset < end {
            let n = (end - offset).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..n], offset).map_err(|source| BlockError::Io {
                op: "write zeroes",
                offset,
                source,
            })?;
            offset += n as u64;
        }
        Ok(())
    }
}

fn unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::ENODEV)
    )
}

impl DiskImage for RawImage {
    fn len(&self) -> u64 {
        self.len
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn format(&self) -> ImageFormat {
        ImageFormat::Raw
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        check_range(offset, buf.len() as u64, self.len)?;
        self.file.read_exact_at(buf, offset).map_err(|source| BlockError::Io { op: "read", offset, source })
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        check_range(offset, buf.len() as u64, self.len)?;
        self.file.write_all_at(buf, offset).map_err(|source| BlockError::Io { op: "write", offset, source })
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(|source| BlockError::Io { op: "flush", offset: 0, source })
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        check_range(offset, len, self.len)?;
        match self.fallocate(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len) {
            Ok(()) => Ok(()),
            Err(e) if unsupported(&e) => Ok(()),
            Err(source) => Err(BlockError::Io { op: "discard", offset, source }),
        }
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, may_unmap: bool) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        check_range(offset, len, self.len)?;
        if len == 0 {
            return Ok(());
        }
        // Both modes guarantee zeroes on read-back for files and block devices.
        let mode = if may_unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        match self.fallocate(mode, offset, len) {
            Ok(()) => Ok(()),
            Err(e) if unsupported(&e) => self.write_zero_buffer(offset, len),
            Err(source) => Err(BlockError::Io { op: "write zeroes", offset, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{open, OpenOptions};

    fn image(len: u64) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len).unwrap();
        f
    }

    #[test]
    fn read_write_roundtrip_and_bounds() {
        let f = image(1 << 20);
        let mut disk =
            open(f.path(), &OpenOptions { format: Some(ImageFormat::Raw), ..Default::default() }).unwrap();
        assert_eq!(disk.len(), 1 << 20);
        disk.write_at(&[0xab; 4096], 8192).unwrap();
        disk.flush().unwrap();
        let mut buf = [0u8; 4096];
        disk.read_at(&mut buf, 8192).unwrap();
        assert!(buf.iter().all(|&b| b == 0xab));
        assert!(matches!(disk.read_at(&mut buf, (1 << 20) - 100), Err(BlockError::OutOfRange { .. })));
        assert!(matches!(disk.write_at(&buf, u64::MAX - 10), Err(BlockError::OutOfRange { .. })));
    }

    #[test]
    fn discard_and_write_zeroes_read_back_zero() {
        let f = image(1 << 20);
        let mut disk = open(f.path(), &OpenOptions::default()).unwrap();
        for (may_unmap, off) in [(true, 0u64), (false, 65536)] {
            disk.write_at(&[0x5a; 65536], off).unwrap();
            disk.write_zeroes(off, 65536, may_unmap).unwrap();
            let mut buf = vec![1u8; 65536];
            disk.read_at(&mut buf, off).unwrap();
            assert!(buf.iter().all(|&b| b == 0), "may_unmap={may_unmap}");
        }
        disk.discard(0, 4096).unwrap();
        assert!(disk.discard(0, 2 << 20).is_err());
    }

    #[test]
    fn read_only_refuses_writes_and_leaves_file_alone() {
        let f = image(65536);
        let mut disk = open(f.path(), &OpenOptions { read_only: true, format: None }).unwrap();
        assert!(disk.is_read_only());
        assert!(matches!(disk.write_at(&[1; 512], 0), Err(BlockError::ReadOnly)));
        assert!(matches!(disk.write_zeroes(0, 512, true), Err(BlockError::ReadOnly)));
        assert!(matches!(disk.discard(0, 512), Err(BlockError::ReadOnly)));
        disk.flush().unwrap();
        assert_eq!(std::fs::read(f.path()).unwrap(), vec![0u8; 65536]);
    }

    #[test]
    fn second_open_is_refused_while_first_is_open() {
        let f = image(4096);
        let first = open(f.path(), &OpenOptions::default()).unwrap();
        let err = open(f.path(), &OpenOptions::default()).err().unwrap();
        assert_eq!(err.to_string(), format!("image {} is in use by another process", f.path().display()));
        drop(first);
        open(f.path(), &OpenOptions::default()).unwrap();
    }
}
