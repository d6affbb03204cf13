//! `vmr image create`: new raw or qcow2 images, qcow2 overlays over a backing image.

use std::fs::OpenOptions as FsOpenOptions;
use std::io;
use std::path::Path;

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::{FormatCreateBuilder, StorageOpenOptions};

use crate::lock::{open_locked, LockMode};
use crate::{open, probe_format, BlockError, ImageFormat, OpenOptions, SECTOR_SIZE};

fn create_err(path: &Path, msg: String) -> BlockError {
    BlockError::Create { path: path.to_owned(), source: io::Error::new(io::ErrorKind::InvalidInput, msg) }
}

/// Creates a new image at `path` (which must not exist).
///
/// `size` is the virtual size in bytes, a multiple of 512; it may be `None` only with a
/// `backing` image, whose size it then takes. `backing` is stored in the header as given and,
/// like qemu-img, a relative name is relative to the new image's folder. Only qcow2 images can
/// have a backing image; its format is probed.
pub fn create(
    path: &Path,
    format: ImageFormat,
    size: Option<u64>,
    backing: Option<&Path>,
) -> Result<(), BlockError> {
    if backing.is_some() && format != ImageFormat::Qcow2 {
        return Err(create_err(path, "only qcow2 images can have a backing file".into()));
    }
    let backing_info = backing.map(|b| backing_format_and_size(path, b)).transpose()?;
    let size = match (size, &backing_info) {
        (Some(s), _) => s,
        (None, Some((_, s))) => *s,
        (None, None) => return Err(create_err(path, "a size is needed without a backing file".into())),
    };
    if size % SECTOR_SIZE != 0 {
        return Err(create_err(path, format!("size {size} is not a multiple of {SECTOR_SIZE}")));
    }
    let file = FsOpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| BlockError::Create { path: path.to_owned(), source })?;
    let result = match format {
        ImageFormat::Raw => file.set_len(size),
        ImageFormat::Qcow2 => format_qcow2(file, path, size, backing.zip(backing_info.map(|(f, _)| f))),
    };
    result.map_err(|source| {
        // Leave nothing half-made behind.
        let _ = std::fs::remove_file(path);
        BlockError::Create { path: path.to_owned(), source }
    })
}

fn format_qcow2(
    file: std::fs::File,
    path: &Path,
    size: u64,
    backing: Option<(&Path, ImageFormat)>,
) -> io::Result<()> {
    let storage = ImagoFile::from_open_file(file, StorageOpenOptions::new().filename(path).write(true))?;
    let mut builder = Qcow2::<ImagoFile>::create_builder(storage).size(size);
    if let Some((name, fmt)) = backing {
        builder = builder.backing(name.to_string_lossy().into_owned(), fmt.to_string());
    }
    builder.create()
}

/// Probes the backing image (resolved relative to the new image) for its format and size.
fn backing_format_and_size(path: &Path, backing: &Path) -> Result<(ImageFormat, u64), BlockError> {
    let resolved = if backing.is_absolute() {
        backing.to_owned()
    } else {
        path.parent().map(|d| d.join(backing)).unwrap_or_else(|| backing.to_owned())
    };
    let format = {
        let file = open_locked(&resolved, false, LockMode::Shared)?;
        probe_format(&file).map_err(|source| BlockError::Open { path: resolved.clone(), source })?
    };
    let image = open(&resolved, &OpenOptions { read_only: true, format: Some(format), direct: false })?;
    Ok((format, image.len()))
}
