//! qcow2 images through imago, with backing files opened by us (read-only, shared lock).

use std::io;
use std::path::{Path, PathBuf};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, StorageOpenOptions};

use crate::lock::{open_locked, LockMode};
use crate::{check_range, probe_format, BlockError, DiskImage, ImageFormat};

/// First four bytes of every qcow2 image.
pub(crate) const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Longest backing chain we follow (also stops loops).
const MAX_BACKING_DEPTH: usize = 16;

/// A qcow2 image, possibly an overlay over a chain of backing images.
pub struct Qcow2Image {
    access: FormatAccess<ImagoFile>,
    path: PathBuf,
    read_only: bool,
    size: u64,
}

fn storage(file: std::fs::File, path: &Path, writable: bool) -> Result<ImagoFile, BlockError> {
    let opts = StorageOpenOptions::new().filename(path).write(writable);
    ImagoFile::from_open_file(file, opts).map_err(|source| BlockError::Open { path: path.to_owned(), source })
}

/// Resolves a backing file name as qemu does: relative names are relative to the overlay's folder.
fn resolve_backing(overlay: &Path, name: &str) -> PathBuf {
    let name = Path::new(name);
    if name.is_absolute() {
        return name.to_owned();
    }
    overlay.parent().map(|dir| dir.join(name)).unwrap_or_else(|| name.to_owned())
}

fn corrupt(path: &Path, source: io::Error) -> BlockError {
    BlockError::Corrupt { path: path.to_owned(), format: ImageFormat::Qcow2, source }
}

/// Opens one qcow2 layer and, recursively, its backing chain.
/// `allow_backing` is false for probed images (see the crate docs).
fn open_layer(
    file: std::fs::File,
    path: &Path,
    writable: bool,
    allow_backing: bool,
    depth: usize,
) -> Result<Qcow2<ImagoFile>, BlockError> {
    let storage = storage(file, path, writable)?;
    let mut image = Qcow2::<ImagoFile>::builder(storage)
        .backing(None)
        .data_file(None)
        .write(writable)
        .open(DenyImplicitOpenGate::default())
        .map_err(|e| corrupt(path, e))?;
    if image.requires_external_data_file() {
        return Err(BlockError::Unsupported {
            path: path.to_owned(),
            reason: "external data files are not supported".into(),
        });
    }
    let Some(name) = image.implicit_backing_file().cloned() else {
        return Ok(image);
    };
    if !allow_backing {
        return Err(BlockError::Unsupported {
            path: path.to_owned(),
            reason: format!("has backing file {name}; pass format=qcow2 explicitly to use it"),
        });
    }
    if depth >= MAX_BACKING_DEPTH {
        return Err(BlockError::Unsupported {
            path: path.to_owned(),
            reason: format!("backing chain longer than {MAX_BACKING_DEPTH} images (or a loop)"),
        });
    }
    let backing_path = resolve_backing(path, &name);
    let declared = image.implicit_backing_format().map(|f| f.parse::<ImageFormat>());
    let backing = open_backing(&backing_path, declared, depth + 1)?;
    image.set_backing(Some(backing));
    Ok(image)
}

/// Opens a backing image read-only under a shared lock.
fn open_backing(
    path: &Path,
    declared: Option<Result<ImageFormat, String>>,
    depth: usize,
) -> Result<FormatAccess<ImagoFile>, BlockError> {
    let file = open_locked(path, false, LockMode::Shared)?;
    let (format, explicit) = match declared {
        Some(Ok(f)) => (f, true),
        Some(Err(reason)) => return Err(BlockError::Unsupported { path: path.to_owned(), reason }),
        None => {
            (probe_format(&file).map_err(|source| BlockError::Open { path: path.to_owned(), source })?, false)
        }
    };
    match format {
        ImageFormat::Qcow2 => Ok(FormatAccess::new(open_layer(file, path, false, explicit, depth)?)),
        ImageFormat::Raw => {
            let raw = Raw::builder(storage(file, path, false)?)
                .write(false)
                .open(DenyImplicitOpenGate::default())
                .map_err(|source| BlockError::Open { path: path.to_owned(), source })?;
            Ok(FormatAccess::new(raw))
        }
    }
}

impl Qcow2Image {
    /// Opens a qcow2 image from an already opened and locked file. `allow_backing` is false when
    /// the format was probed rather than given.
    pub fn from_file(
        file: std::fs::File,
        path: &Path,
        read_only: bool,
        allow_backing: bool,
    ) -> Result<Self, BlockError> {
        let layer = open_layer(file, path, !read_only, allow_backing, 0)?;
        let access = FormatAccess::new(layer);
        let size = access.size();
        Ok(Qcow2Image { access, path: path.to_owned(), read_only, size })
    }

    /// The path the image was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn writable(&self) -> Result<(), BlockError> {
        if self.read_only {
            Err(BlockError::ReadOnly)
        } else {
            Ok(())
        }
    }
}

impl DiskImage for Qcow2Image {
    fn len(&self) -> u64 {
        self.size
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn format(&self) -> ImageFormat {
        ImageFormat::Qcow2
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.access.read(buf, offset).map_err(|source| BlockError::Io { op: "read", offset, source })
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.writable()?;
        check_range(offset, buf.len() as u64, self.size)?;
        self.access.write(buf, offset).map_err(|source| BlockError::Io { op: "write", offset, source })
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        if self.read_only {
            return Ok(());
        }
        // flush writes imago's metadata caches (L2 tables, refcounts) to the file; sync makes
        // the file durable.
        self.access.flush().map_err(|source| BlockError::Io { op: "flush", offset: 0, source })?;
        self.access.sync().map_err(|source| BlockError::Io { op: "sync", offset: 0, source })
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.writable()?;
        check_range(offset, len, self.size)?;
        match self.access.discard_to_any(offset, len) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(()),
            Err(source) => Err(BlockError::Io { op: "discard", offset, source }),
        }
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, may_unmap: bool) -> Result<(), BlockError> {
        self.writable()?;
        check_range(offset, len, self.size)?;
        let result = if may_unmap {
            self.access.discard_to_zero(offset, len)
        } else {
            self.access.write_zeroes(offset, len)
        };
        result.map_err(|source| BlockError::Io { op: "write zeroes", offset, source })
    }
}

#[cfg(test)]
mod tests;
