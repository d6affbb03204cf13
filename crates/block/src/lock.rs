//! Opening image files under an advisory `flock`.
//!
//! `flock` locks belong to the open file description, so the lock lives as long as the `File`
//! (or any `try_clone` of it) is open, and is dropped by the kernel if the process dies.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::BlockError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockMode {
    /// The image this VM uses as its disk: nobody else may use it.
    Exclusive,
    /// A backing file: shared by every overlay, but nobody may open it as a disk.
    Shared,
}

/// Opens `path` (read-write if `writable`) and takes the lock without blocking.
pub(crate) fn open_locked(path: &Path, writable: bool, mode: LockMode) -> Result<File, BlockError> {
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .map_err(|source| BlockError::Open { path: path.to_owned(), source })?;
    let op = match mode {
        LockMode::Exclusive => libc::LOCK_EX,
        LockMode::Shared => libc::LOCK_SH,
    };
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return Err(if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            BlockError::InUse { path: path.to_owned() }
        } else {
            BlockError::Lock { path: path.to_owned(), source: err }
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_lock_excludes_everyone_shared_locks_share() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let a = open_locked(f.path(), true, LockMode::Exclusive).unwrap();
        let err = open_locked(f.path(), false, LockMode::Shared).unwrap_err();
        assert_eq!(err.to_string(), format!("image {} is in use by another process", f.path().display()));
        drop(a);
        let s1 = open_locked(f.path(), false, LockMode::Shared).unwrap();
        let _s2 = open_locked(f.path(), false, LockMode::Shared).unwrap();
        assert!(matches!(open_locked(f.path(), true, LockMode::Exclusive), Err(BlockError::InUse { .. })));
        drop(s1);
    }

    #[test]
    fn missing_file_names_path() {
        let err = open_locked(Path::new("/nonexistent/disk.img"), false, LockMode::Exclusive).unwrap_err();
        assert!(err.to_string().starts_with("cannot open image /nonexistent/disk.img: "), "{err}");
    }
}
