//! Growing an image that no VM has open (vmrd's `vol-resize`).

use std::io;
use std::path::Path;

use imago::file::File as ImagoFile;
use imago::format::PreallocateMode;
use imago::qcow2::Qcow2;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, StorageOpenOptions};

use crate::lock::{open_locked, LockMode};
use crate::{probe_format, BlockError, ImageFormat, SECTOR_SIZE};

fn resize_err(path: &Path, msg: String) -> BlockError {
    BlockError::Resize { path: path.to_owned(), source: io::Error::new(io::ErrorKind::InvalidInput, msg) }
}

/// Grows the image at `path` to `size` bytes (a multiple of 512): a raw file is extended, a
/// qcow2 image (an overlay too: its backing file is not opened) gets a larger virtual size whose
/// new range reads as zeroes. Taken under an exclusive lock, so an image a VM uses is refused;
/// shrinking is refused (it would lose data).
pub fn grow(path: &Path, size: u64) -> Result<(), BlockError> {
    if size % SECTOR_SIZE != 0 {
        return Err(resize_err(path, format!("size {size} is not a multiple of {SECTOR_SIZE}")));
    }
    let file = open_locked(path, true, LockMode::Exclusive)?;
    let format = probe_format(&file).map_err(|source| BlockError::Open { path: path.to_owned(), source })?;
    let io_err = |source| BlockError::Resize { path: path.to_owned(), source };
    match format {
        ImageFormat::Raw => {
            let current = file.metadata().map_err(io_err)?.len();
            if size < current {
                return Err(resize_err(
                    path,
                    format!("{size} bytes is smaller than its {current}: shrinking loses data"),
                ));
            }
            file.set_len(size).map_err(io_err)?;
            file.sync_all().map_err(io_err)
        }
        ImageFormat::Qcow2 => {
            let storage =
                ImagoFile::from_open_file(file, StorageOpenOptions::new().filename(path).write(true))
                    .map_err(io_err)?;
            let image = Qcow2::<ImagoFile>::builder(storage)
                .backing(None)
                .data_file(None)
                .write(true)
                .open(DenyImplicitOpenGate::default())
                .map_err(io_err)?;
            let access = FormatAccess::new(image);
            let current = access.size();
            if size < current {
                return Err(resize_err(
                    path,
                    format!("{size} bytes is smaller than its {current}: shrinking loses data"),
                ));
            }
            access.resize_grow(size, PreallocateMode::Zero).map_err(io_err)?;
            access.flush().map_err(io_err)?;
            access.sync().map_err(io_err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{create, open, OpenOptions};

    fn len(path: &Path, format: ImageFormat) -> u64 {
        open(path, &OpenOptions { read_only: true, format: Some(format), direct: false }).unwrap().len()
    }

    #[test]
    fn raw_qcow2_and_overlays_grow_and_never_shrink() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, qcow, overlay) =
            (dir.path().join("a.raw"), dir.path().join("b.qcow2"), dir.path().join("c.qcow2"));
        create(&raw, ImageFormat::Raw, Some(1 << 20), None).unwrap();
        create(&qcow, ImageFormat::Qcow2, Some(1 << 20), None).unwrap();
        {
            let mut img =
                open(&qcow, &OpenOptions { format: Some(ImageFormat::Qcow2), ..Default::default() }).unwrap();
            img.write_at(&[0xab; 512], 0).unwrap();
            img.flush().unwrap();
        }
        create(&overlay, ImageFormat::Qcow2, None, Some(Path::new("b.qcow2"))).unwrap();
        grow(&raw, 4 << 20).unwrap();
        grow(&qcow, 4 << 20).unwrap();
        grow(&overlay, 8 << 20).unwrap();
        assert_eq!(len(&raw, ImageFormat::Raw), 4 << 20);
        assert_eq!(len(&qcow, ImageFormat::Qcow2), 4 << 20);
        let mut img =
            open(&overlay, &OpenOptions { read_only: true, format: Some(ImageFormat::Qcow2), direct: false })
                .unwrap();
        assert_eq!(img.len(), 8 << 20);
        let mut buf = [0u8; 512];
        img.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [0xab; 512], "data of the base shows through");
        img.read_at(&mut buf, 6 << 20).unwrap();
        assert_eq!(buf, [0; 512], "the new range reads as zeroes");
        drop(img);
        for (path, size) in [(&raw, 1 << 20), (&qcow, 1 << 20)] {
            let err = grow(path, size).unwrap_err().to_string();
            assert!(err.contains("shrinking"), "{err}");
        }
        assert!(grow(&raw, (8 << 20) + 1).unwrap_err().to_string().contains("multiple of 512"));
        // In use (locked by an open writer): refused.
        let _writer = open(&raw, &OpenOptions::default()).unwrap();
        assert!(matches!(grow(&raw, 16 << 20), Err(BlockError::InUse { .. })));
    }
}
