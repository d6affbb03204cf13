//! The state directory: where definitions live, how they are written (atomically), and the
//! journal that lets a half-done operation be finished or undone when vmrd starts again.
//!
//! Layout under the state directory:
//! `vms/NAME.toml` (definitions), `vms/NAME.owned.json` (volumes a definition created),
//! `pools/NAME.json` (pool definitions and whether started), `nets/` (network definitions,
//! dnsmasq pid and leases, vmr.nft), `run/NAME/` (a VM's pid, API
//! socket, console FIFO and logs), `journal/*.json` (operations in flight), `vmrd.sock`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The daemon's default state directory: `/var/lib/vmr` for root, `$XDG_STATE_HOME/vmr` (or
/// `~/.local/state/vmr`) for anyone else.
pub fn default_state_dir() -> PathBuf {
    // SAFETY: geteuid has no failure mode and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/vmr");
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("vmr");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    PathBuf::from(home).join(".local/state/vmr")
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new content: a
/// temporary file in the same folder, fsync, rename over `path`, fsync of the folder.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Replaces `path` atomically (readers see the old or the new content) without making it
/// durable: for run-time files (a VM's pid, its exit code) that mean nothing after a host
/// crash, where two fsyncs (about 12 ms on our build machines) would slow every VM start.
pub fn atomic_replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path).inspect_err(|_| drop(fs::remove_file(&tmp)))
}

/// Removes a file (absent is fine) and makes the removal durable.
pub fn remove_durably(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An operation in flight, written before it starts and removed when it is done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    /// Creating `files`. If `done` exists at recovery the operation had finished; otherwise
    /// the files are removed (undone).
    Create { done: Option<PathBuf>, files: Vec<PathBuf> },
    /// Removing `files`: finished at recovery.
    Remove { files: Vec<PathBuf> },
}

/// The state directory with its subfolders.
#[derive(Clone, Debug)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    /// Opens (creating if needed) the state directory and finishes or undoes what the journal
    /// holds. Returns how many journal entries were recovered.
    pub fn open(root: &Path) -> io::Result<(StateDir, usize)> {
        let state = StateDir { root: root.to_path_buf() };
        for sub in ["vms", "pools", "nets", "run", "journal"] {
            fs::create_dir_all(root.join(sub))?;
        }
        let recovered = state.recover()?;
        Ok((state, recovered))
    }

    pub fn vms(&self) -> PathBuf {
        self.root.join("vms")
    }
    pub fn pools(&self) -> PathBuf {
        self.root.join("pools")
    }
    pub fn nets(&self) -> PathBuf {
        self.root.join("nets")
    }
    pub fn run_dir(&self, vm: &str) -> PathBuf {
        self.root.join("run").join(vm)
    }
    pub fn socket(&self) -> PathBuf {
        self.root.join("vmrd.sock")
    }

    /// Records `intent` and returns the handle that removes it once the operation is done.
    pub fn begin(&self, intent: &Intent) -> io::Result<JournalEntry> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.root.join("journal").join(format!("{}-{n}.json", std::process::id()));
        atomic_write(&path, serde_json::to_string(intent).unwrap_or_default().as_bytes())?;
        Ok(JournalEntry { path })
    }

    fn recover(&self) -> io::Result<usize> {
        let mut count = 0;
        for entry in fs::read_dir(self.root.join("journal"))? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                let _ = fs::remove_file(&path); // a temporary file of an interrupted write
                continue;
            }
            match fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str::<Intent>(&t).ok()) {
                Some(intent) => apply_recovery(&intent),
                None => tracing::warn!("vmrd: unreadable journal entry {} dropped", path.display()),
            }
            remove_durably(&path)?;
            count += 1;
        }
        Ok(count)
    }
}

fn apply_recovery(intent: &Intent) {
    match intent {
        Intent::Create { done: Some(done), .. } if done.exists() => {}
        Intent::Create { files, .. } | Intent::Remove { files } => {
            for file in files {
                if let Err(e) = remove_durably(file) {
                    tracing::warn!("vmrd: recovery cannot remove {}: {e}", file.display());
                }
            }
        }
    }
}

/// A journal entry of an operation in progress; `finish` removes it.
pub struct JournalEntry {
    path: PathBuf,
}

impl JournalEntry {
    pub fn finish(self) -> io::Result<()> {
        remove_durably(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        atomic_write(&path, b"one").unwrap();
        atomic_write(&path, b"two").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_interrupted_create_is_undone_and_a_finished_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = StateDir::open(dir.path()).unwrap();
        let vol = dir.path().join("vol.raw");
        let def = state.vms().join("vm1.toml");
        fs::write(&vol, b"x").unwrap();
        // A define that created its volume but crashed before writing the definition.
        let _entry =
            state.begin(&Intent::Create { done: Some(def.clone()), files: vec![vol.clone()] }).unwrap();
        let (_, recovered) = StateDir::open(dir.path()).unwrap();
        assert_eq!(recovered, 1);
        assert!(!vol.exists(), "the half-made volume is removed");
        // One that wrote its definition: kept.
        fs::write(&vol, b"x").unwrap();
        fs::write(&def, b"name = 'vm1'").unwrap();
        let _entry =
            state.begin(&Intent::Create { done: Some(def.clone()), files: vec![vol.clone()] }).unwrap();
        StateDir::open(dir.path()).unwrap();
        assert!(vol.exists() && def.exists());
    }

    #[test]
    fn an_interrupted_remove_is_finished() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = StateDir::open(dir.path()).unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&b, b"x").unwrap();
        let _entry = state.begin(&Intent::Remove { files: vec![a, b.clone()] }).unwrap();
        let (_, recovered) = StateDir::open(dir.path()).unwrap();
        assert_eq!(recovered, 1);
        assert!(!b.exists());
        let (_, recovered) = StateDir::open(dir.path()).unwrap();
        assert_eq!(recovered, 0, "the journal is empty after recovery");
    }
}
