//! Raw images: regular files and block devices, byte for byte.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::direct::{DirectFile, DIRECT_ALIGN};
use crate::{check_range, BlockError, DiskImage, ImageFormat};

/// Largest zero buffer written when the filesystem cannot zero a range itself.
const ZERO_CHUNK: usize = 1 << 20;

/// A raw file or block device.
pub struct RawImage {
    file: File,
    path: PathBuf,
    len: u64,
    read_only: bool,
    /// `Some` when the file was opened with O_DIRECT (`cache=none`).
    direct: Option<DirectFile>,
}

impl RawImage {
    /// Wraps an already opened (and locked) file. The size is fixed at open time. `direct`
    /// says the file was opened with O_DIRECT: its size must then be a multiple of 4 KiB.
    pub fn from_file(mut file: File, path: &Path, read_only: bool, direct: bool) -> Result<Self, BlockError> {
        // SEEK_END gives the size of regular files and block devices alike.
        let len = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Open { path: path.to_owned(), source })?;
        if direct && !len.is_multiple_of(DIRECT_ALIGN as u64) {
            return Err(BlockError::Unsupported {
                path: path.to_owned(),
                reason: format!(
                    "cache=none needs a size that is a multiple of {DIRECT_ALIGN} bytes, not {len}"
                ),
            });
        }
        let direct = direct.then(DirectFile::new);
        Ok(RawImage { file, path: path.to_owned(), len, read_only, direct })
    }

    fn pread(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match &mut self.direct {
            Some(d) => d.read_at(&self.file, buf, offset),
            None => self.file.read_exact_at(buf, offset),
        }
    }

    fn pwrite(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        match &mut self.direct {
            Some(d) => d.write_at(&self.file, buf, offset),
            None => self.file.write_all_at(buf, offset),
        }
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

    fn write_zero_buffer(&mut self, mut offset: u64, len: u64) -> Result<(), BlockError> {
        let end = offset + len;
        let zeroes = vec![0u8; ZERO_CHUNK.min(len as usize)];
        while offset < end {
            let n = (end - offset).min(zeroes.len() as u64) as usize;
            self.pwrite(&zeroes[..n], offset).map_err(|source| BlockError::Io {
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
        self.pread(buf, offset).map_err(|source| BlockError::Io { op: "read", offset, source })
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        check_range(offset, buf.len() as u64, self.len)?;
        self.pwrite(buf, offset).map_err(|source| BlockError::Io { op: "write", offset, source })
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
        let mut disk = open(f.path(), &OpenOptions { read_only: true, ..Default::default() }).unwrap();
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

#[cfg(test)]
mod direct_tests {
    use super::*;
    use crate::{open, OpenOptions};

    /// A 256 KiB image opened with cache=none, or None where the filesystem of the temp dir
    /// has no O_DIRECT (then the error must say so).
    fn direct_image(len: u64) -> Option<(tempfile::NamedTempFile, Box<dyn DiskImage>)> {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len).unwrap();
        let options = OpenOptions { format: Some(ImageFormat::Raw), direct: true, ..Default::default() };
        match open(f.path(), &options) {
            Ok(disk) => Some((f, disk)),
            Err(e @ BlockError::OpenDirect { .. }) => {
                assert!(e.to_string().contains("cache=none (O_DIRECT)"), "{e}");
                eprintln!("skipped: no O_DIRECT in the temp dir: {e}");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn unaligned_reads_and_writes_match_a_buffered_model() {
        let len = 256 << 10;
        let Some((f, mut disk)) = direct_image(len) else { return };
        let mut model = vec![0u8; len as usize];
        // (offset, length): aligned, sub-block, straddling blocks, >1 MiB bounce, file edges.
        let cases = [
            (0u64, 4096usize),
            (512, 512),
            (4000, 200),
            (4096 * 3 + 17, 9000),
            (4096 * 7, 4096 * 2 + 1),
            (100, (200 << 10) + 5),
            (len - 4096, 4096),
            (len - 10, 10),
        ];
        for (i, &(off, n)) in cases.iter().enumerate() {
            let data: Vec<u8> =
                (0..n).map(|j| (j as u8).wrapping_mul(31).wrapping_add(i as u8 + 1)).collect();
            // Write from a deliberately misaligned slice of a larger buffer.
            let mut holder = vec![0u8; n + 1];
            holder[1..].copy_from_slice(&data);
            disk.write_at(&holder[1..], off).unwrap();
            model[off as usize..off as usize + n].copy_from_slice(&data);
        }
        for &(off, n) in &cases {
            let mut holder = vec![0u8; n + 3];
            disk.read_at(&mut holder[3..], off).unwrap();
            assert_eq!(&holder[3..], &model[off as usize..off as usize + n], "read at {off} len {n}");
        }
        disk.write_zeroes(4096 + 512, 1024, false).unwrap();
        model[4096 + 512..4096 + 1536].fill(0);
        disk.flush().unwrap();
        drop(disk);
        assert!(std::fs::read(f.path()).unwrap() == model, "file differs from the model");
    }

    #[test]
    fn direct_needs_a_size_in_whole_blocks() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(4096 + 512).unwrap();
        let options = OpenOptions { direct: true, ..Default::default() };
        match open(f.path(), &options) {
            Err(BlockError::OpenDirect { .. }) => eprintln!("skipped: no O_DIRECT in the temp dir"),
            Err(e) => {
                assert!(e.to_string().contains("cache=none needs a size that is a multiple of 4096"), "{e}")
            }
            Ok(_) => panic!("opened an image of 4608 bytes with cache=none"),
        }
    }
}
