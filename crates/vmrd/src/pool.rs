//! Storage pools of type `dir`: a folder whose files are volumes (raw or qcow2 images).

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vmr_vmm::devices::vmr_block::{self, ImageFormat};

use crate::def::check_name;
use crate::state::{atomic_write, remove_durably, Intent, StateDir};
use crate::DaemonError;

/// A pool definition, stored as `pools/NAME.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolDef {
    pub name: String,
    /// Only `dir` so far.
    #[serde(rename = "type")]
    pub kind: String,
    pub path: PathBuf,
    #[serde(default)]
    pub active: bool,
}

/// What `pool-info` and `pool-list` show.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PoolInfo {
    #[serde(flatten)]
    pub def: PoolDef,
    pub built: bool,
    pub volumes: usize,
    /// Of the filesystem holding the pool (0 when not built).
    pub capacity: u64,
    pub available: u64,
}

/// What `vol-info` and `vol-list` show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    pub pool: String,
    pub path: PathBuf,
    pub format: String,
    /// Virtual size the guest sees.
    pub capacity: u64,
    /// Bytes the file occupies on the host.
    pub allocation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing: Option<String>,
}

fn def_path(state: &StateDir, name: &str) -> PathBuf {
    state.pools().join(format!("{name}.json"))
}

pub fn load(state: &StateDir, name: &str) -> Result<PoolDef, DaemonError> {
    check_name("pool", name)?;
    let text = fs::read_to_string(def_path(state, name))
        .map_err(|_| DaemonError::NotFound(format!("no pool named '{name}'")))?;
    serde_json::from_str(&text)
        .map_err(|e| DaemonError::Internal(format!("pool {name}: stored definition: {e}")))
}

fn save(state: &StateDir, def: &PoolDef) -> Result<(), DaemonError> {
    let text = serde_json::to_string_pretty(def).unwrap_or_default();
    Ok(atomic_write(&def_path(state, &def.name), text.as_bytes())?)
}

pub fn names(state: &StateDir) -> Result<Vec<String>, DaemonError> {
    let mut names: Vec<String> = fs::read_dir(state.pools())?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".json").map(String::from))
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    Ok(names)
}

pub fn define(state: &StateDir, name: &str, kind: &str, path: &Path) -> Result<PoolDef, DaemonError> {
    check_name("pool", name)?;
    if kind != "dir" {
        return Err(DaemonError::Invalid(format!("pool type '{kind}': only dir is supported")));
    }
    if !path.is_absolute() {
        return Err(DaemonError::Invalid(format!("pool path '{}' must be absolute", path.display())));
    }
    if def_path(state, name).exists() {
        return Err(DaemonError::Conflict(format!("a pool named '{name}' already exists")));
    }
    for other in names(state)? {
        if load(state, &other)?.path == path {
            return Err(DaemonError::Conflict(format!("pool '{other}' already uses {}", path.display())));
        }
    }
    let def = PoolDef { name: name.into(), kind: kind.into(), path: path.into(), active: false };
    save(state, &def)?;
    Ok(def)
}

pub fn build(state: &StateDir, name: &str) -> Result<(), DaemonError> {
    let def = load(state, name)?;
    fs::create_dir_all(&def.path)
        .map_err(|e| DaemonError::Invalid(format!("pool {name}: cannot create {}: {e}", def.path.display())))
}

pub fn start(state: &StateDir, name: &str) -> Result<(), DaemonError> {
    let mut def = load(state, name)?;
    if !def.path.is_dir() {
        return Err(DaemonError::Invalid(format!(
            "pool {name}: {} is not a directory (vmr pool-build {name} creates it)",
            def.path.display()
        )));
    }
    def.active = true;
    save(state, &def)
}

/// Removes the pool's definition and its (empty) folder; refused while it holds volumes.
pub fn delete(state: &StateDir, name: &str) -> Result<(), DaemonError> {
    let def = load(state, name)?;
    let held = volume_names(&def).unwrap_or_default();
    if !held.is_empty() {
        return Err(DaemonError::Conflict(format!(
            "pool {name} still holds {} volume(s) ({}); delete them first",
            held.len(),
            held.join(", ")
        )));
    }
    if def.path.is_dir() {
        fs::remove_dir(&def.path).map_err(|e| {
            DaemonError::Invalid(format!("pool {name}: cannot remove {}: {e}", def.path.display()))
        })?;
    }
    Ok(remove_durably(&def_path(state, name))?)
}

pub fn info(state: &StateDir, name: &str) -> Result<PoolInfo, DaemonError> {
    let def = load(state, name)?;
    let built = def.path.is_dir();
    let volumes = if built { volume_names(&def)?.len() } else { 0 };
    let (capacity, available) = if built { fs_space(&def.path).unwrap_or((0, 0)) } else { (0, 0) };
    Ok(PoolInfo { def, built, volumes, capacity, available })
}

fn fs_space(path: &Path) -> Option<(u64, u64)> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs is plain data; the call fills it for a valid NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and st a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
}

/// An active pool, for volume operations.
pub fn active(state: &StateDir, name: &str) -> Result<PoolDef, DaemonError> {
    let def = load(state, name)?;
    if !def.active {
        return Err(DaemonError::Invalid(format!("pool {name} is not started (vmr pool-start {name})")));
    }
    Ok(def)
}

pub fn volume_names(def: &PoolDef) -> Result<Vec<String>, DaemonError> {
    let mut names: Vec<String> = fs::read_dir(&def.path)?
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_type().ok()?.is_file().then(|| e.file_name().to_str().map(String::from))?
        })
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    Ok(names)
}

pub fn volume_path(def: &PoolDef, vol: &str) -> Result<PathBuf, DaemonError> {
    check_name("volume", vol)?;
    Ok(def.path.join(vol))
}

/// The path of an existing volume.
pub fn existing_volume(def: &PoolDef, vol: &str) -> Result<PathBuf, DaemonError> {
    let path = volume_path(def, vol)?;
    if !path.is_file() {
        return Err(DaemonError::NotFound(format!("no volume '{vol}' in pool {}", def.name)));
    }
    Ok(path)
}

pub fn volume_info(def: &PoolDef, vol: &str) -> Result<VolumeInfo, DaemonError> {
    let path = existing_volume(def, vol)?;
    let meta = fs::metadata(&path)?;
    let header = read_header(&path)?;
    let (format, capacity, backing) = match qcow2_header(&header) {
        Some((size, backing_at)) => ("qcow2", size, backing_at.and_then(|r| backing_name(&path, r))),
        None => ("raw", meta.len(), None),
    };
    Ok(VolumeInfo {
        name: vol.into(),
        pool: def.name.clone(),
        path,
        format: format.into(),
        capacity,
        allocation: meta.blocks() * 512,
        backing,
    })
}

fn read_header(path: &Path) -> Result<Vec<u8>, DaemonError> {
    let mut header = Vec::with_capacity(512);
    fs::File::open(path)?.take(512).read_to_end(&mut header)?;
    Ok(header)
}

/// The virtual size and the (offset, length) of the backing file name, from a qcow2 header
/// (big-endian: magic, version, backing_file_offset u64 at 8, its size u32 at 16, size u64 at 24).
fn qcow2_header(h: &[u8]) -> Option<(u64, Option<(u64, u32)>)> {
    if h.len() < 32 || h[..4] != *b"QFI\xfb" {
        return None;
    }
    let be64 = |at: usize| u64::from_be_bytes(h[at..at + 8].try_into().unwrap_or([0; 8]));
    let backing_len = u32::from_be_bytes(h[16..20].try_into().unwrap_or([0; 4]));
    let backing = (be64(8) != 0 && backing_len > 0).then(|| (be64(8), backing_len));
    Some((be64(24), backing))
}

fn backing_name(path: &Path, (offset, len): (u64, u32)) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len.min(4096) as usize];
    fs::File::open(path).ok()?.read_exact_at(&mut buf, offset).ok()?;
    String::from_utf8(buf).ok()
}

fn format_of(text: Option<&str>) -> Result<ImageFormat, DaemonError> {
    text.unwrap_or("raw").parse().map_err(DaemonError::Invalid)
}

/// Creates a volume (journaled: a crash halfway leaves no half-made file).
pub fn create_volume(
    state: &StateDir,
    def: &PoolDef,
    vol: &str,
    size: u64,
    format: Option<&str>,
) -> Result<PathBuf, DaemonError> {
    let path = volume_path(def, vol)?;
    let format = format_of(format)?;
    if path.exists() {
        return Err(DaemonError::Conflict(format!("volume '{vol}' already exists in pool {}", def.name)));
    }
    let entry = state.begin(&Intent::Create { done: None, files: vec![path.clone()] })?;
    vmr_block::create(&path, format, Some(size), None).map_err(|e| DaemonError::Invalid(e.to_string()))?;
    entry.finish()?;
    Ok(path)
}

/// Grows a volume, raw or qcow2 (shrinking is refused in one line: it would lose data).
pub fn resize_volume(def: &PoolDef, vol: &str, size: u64) -> Result<(), DaemonError> {
    let path = existing_volume(def, vol)?;
    vmr_block::grow(&path, size).map_err(|e| match e {
        vmr_block::BlockError::InUse { .. } => {
            DaemonError::Conflict(format!("volume {}/{vol} is in use", def.name))
        }
        other => DaemonError::Invalid(format!("volume {vol}: {}", vmr_vmm::error_chain(&other))),
    })
}

/// A full copy of `src` as `new`, or with `overlay` a qcow2 overlay whose backing file is `src`.
pub fn clone_volume(
    state: &StateDir,
    def: &PoolDef,
    src: &str,
    new: &str,
    overlay: bool,
) -> Result<(), DaemonError> {
    let from = existing_volume(def, src)?;
    let to = volume_path(def, new)?;
    if to.exists() {
        return Err(DaemonError::Conflict(format!("volume '{new}' already exists in pool {}", def.name)));
    }
    let entry = state.begin(&Intent::Create { done: None, files: vec![to.clone()] })?;
    if overlay {
        // Relative to the overlay's folder: the pool can move as a whole.
        vmr_block::create(&to, ImageFormat::Qcow2, None, Some(Path::new(src)))
            .map_err(|e| DaemonError::Invalid(e.to_string()))?;
    } else {
        copy_file(&from, &to)?;
    }
    Ok(entry.finish()?)
}

/// Copies `file` into the pool as volume `name`.
pub fn import_volume(state: &StateDir, def: &PoolDef, file: &Path, name: &str) -> Result<(), DaemonError> {
    if !file.is_file() {
        return Err(DaemonError::NotFound(format!("no file {}", file.display())));
    }
    let to = volume_path(def, name)?;
    if to.exists() {
        return Err(DaemonError::Conflict(format!("volume '{name}' already exists in pool {}", def.name)));
    }
    let entry = state.begin(&Intent::Create { done: None, files: vec![to.clone()] })?;
    copy_file(file, &to)?;
    Ok(entry.finish()?)
}

fn copy_file(from: &Path, to: &Path) -> Result<(), DaemonError> {
    fs::copy(from, to).map_err(|e| {
        DaemonError::Invalid(format!("cannot copy {} to {}: {e}", from.display(), to.display()))
    })?;
    Ok(fs::File::open(to)?.sync_all()?)
}

/// Volumes of the pool whose qcow2 backing file is `vol`.
pub fn overlays_of(def: &PoolDef, vol: &str) -> Vec<String> {
    volume_names(def)
        .unwrap_or_default()
        .into_iter()
        .filter(|other| volume_info(def, other).ok().and_then(|i| i.backing).as_deref() == Some(vol))
        .collect()
}

pub fn delete_volume(state: &StateDir, def: &PoolDef, vol: &str) -> Result<(), DaemonError> {
    let path = existing_volume(def, vol)?;
    let overlays = overlays_of(def, vol);
    if !overlays.is_empty() {
        return Err(DaemonError::Conflict(format!(
            "volume {}/{vol} is the base of {}",
            def.name,
            overlays.join(", ")
        )));
    }
    let entry = state.begin(&Intent::Remove { files: vec![path.clone()] })?;
    remove_durably(&path)?;
    Ok(entry.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> (tempfile::TempDir, StateDir, PoolDef) {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = StateDir::open(&dir.path().join("state")).unwrap();
        define(&state, "p", "dir", &dir.path().join("p")).unwrap();
        build(&state, "p").unwrap();
        start(&state, "p").unwrap();
        let def = active(&state, "p").unwrap();
        (dir, state, def)
    }

    #[test]
    fn volumes_of_both_formats_report_capacity_and_allocation() {
        let (_dir, state, def) = pool();
        create_volume(&state, &def, "a.raw", 64 << 20, None).unwrap();
        create_volume(&state, &def, "b.qcow2", 1 << 30, Some("qcow2")).unwrap();
        let a = volume_info(&def, "a.raw").unwrap();
        assert_eq!((a.format.as_str(), a.capacity), ("raw", 64 << 20));
        assert!(a.allocation < 1 << 20, "a new raw volume is sparse");
        let b = volume_info(&def, "b.qcow2").unwrap();
        assert_eq!((b.format.as_str(), b.capacity, b.backing), ("qcow2", 1 << 30, None));
        clone_volume(&state, &def, "b.qcow2", "c.qcow2", true).unwrap();
        let c = volume_info(&def, "c.qcow2").unwrap();
        assert_eq!((c.capacity, c.backing.as_deref()), (1 << 30, Some("b.qcow2")));
        let err = delete_volume(&state, &def, "b.qcow2").unwrap_err().to_string();
        assert!(err.contains("is the base of c.qcow2"), "{err}");
        clone_volume(&state, &def, "a.raw", "d.raw", false).unwrap();
        resize_volume(&def, "d.raw", 128 << 20).unwrap();
        assert_eq!(volume_info(&def, "d.raw").unwrap().capacity, 128 << 20);
        assert!(resize_volume(&def, "d.raw", 1 << 20).unwrap_err().to_string().contains("shrinking"));
        resize_volume(&def, "c.qcow2", 2 << 30).unwrap();
        assert_eq!(volume_info(&def, "c.qcow2").unwrap().capacity, 2 << 30);
        assert_eq!(volume_names(&def).unwrap(), ["a.raw", "b.qcow2", "c.qcow2", "d.raw"]);
        let err = delete(&state, "p").unwrap_err().to_string();
        assert!(err.contains("still holds 4 volume(s)"), "{err}");
    }

    #[test]
    fn bad_names_and_duplicates_are_one_line_errors() {
        let (dir, state, def) = pool();
        assert!(matches!(define(&state, "p", "dir", &dir.path().join("q")), Err(DaemonError::Conflict(_))));
        assert!(define(&state, "q", "lvm", &dir.path().join("q"))
            .unwrap_err()
            .to_string()
            .contains("only dir"));
        assert!(matches!(load(&state, "nope"), Err(DaemonError::NotFound(_))));
        create_volume(&state, &def, "a", 1 << 20, None).unwrap();
        assert!(matches!(create_volume(&state, &def, "a", 1 << 20, None), Err(DaemonError::Conflict(_))));
        assert!(create_volume(&state, &def, "../x", 1 << 20, None).is_err());
        assert!(matches!(volume_info(&def, "b"), Err(DaemonError::NotFound(_))));
        assert!(create_volume(&state, &def, "c", 1 << 20, Some("vmdk"))
            .unwrap_err()
            .to_string()
            .contains("vmdk"));
    }
}
