//! VM processes: each VM is its own `vmr run --api-sock` process in its own session, found
//! again by any later vmrd through its pid file and API socket in the VM's run folder.
//!
//! The serial console needs nothing from vmrd while it runs: the VM's stdin is a FIFO
//! (`console.in`, opened read-write by the VM so it never sees end-of-file) and its stdout is
//! appended to `console.log`. Viewers (`vmr console`) follow the log and write into the FIFO,
//! so several can watch at once and a vmrd restart does not cut them off.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vmr_vmm::api::client::{request, request_within};

use crate::state::{atomic_replace, atomic_write};
use crate::DaemonError;

/// A VM's run folder and the files in it.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub dir: PathBuf,
}

/// What a VM is doing, as `list` and `info` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    Running,
    Paused,
    Stopped,
}

impl Runtime {
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }
    pub fn api_sock(&self) -> PathBuf {
        self.dir.join("api.sock")
    }
    pub fn console_in(&self) -> PathBuf {
        self.dir.join("console.in")
    }
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn vmr_log(&self) -> PathBuf {
        self.dir.join("vmr.log")
    }
    pub fn vsock_sock(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }
    pub fn exit_file(&self) -> PathBuf {
        self.dir.join("exit")
    }

    /// The pid of this VM's vmr if it runs: the pid file names a live process (not a zombie)
    /// whose command line holds this VM's API socket (so a reused pid is not taken for it).
    pub fn running_pid(&self) -> Option<i32> {
        let pid: i32 = fs::read_to_string(self.pid_file()).ok()?.trim().parse().ok()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next())?;
        if matches!(state, Some('Z') | Some('X')) {
            return None;
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let sock = self.api_sock();
        let sock = sock.as_os_str().as_encoded_bytes();
        cmdline.split(|b| *b == 0).any(|arg| arg == sock).then_some(pid)
    }

    pub fn state(&self) -> VmState {
        if self.running_pid().is_none() {
            return VmState::Stopped;
        }
        // A VM whose API hangs must not hang `list`: a short timeout, then "running".
        match request_within(&self.api_sock(), "GET", "/", None, Some(Duration::from_secs(2))) {
            Ok(r) if r.body.contains("\"Paused\"") => VmState::Paused,
            _ => VmState::Running,
        }
    }

    /// The last lines vmr wrote to stderr, joined on one line.
    pub fn stderr_tail(&self) -> String {
        let text = fs::read_to_string(self.vmr_log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
        if tail.is_empty() {
            "no output on stderr".into()
        } else {
            tail
        }
    }

    /// Sends one request to the VM's API; a refusal becomes an error naming the VM.
    pub fn api(&self, name: &str, method: &str, path: &str, body: &str) -> Result<(), DaemonError> {
        let reply = request(&self.api_sock(), method, path, Some(body))
            .map_err(|e| DaemonError::Internal(format!("VM {name}: its API does not answer: {e}")))?;
        if !reply.is_success() {
            return Err(DaemonError::Conflict(format!("VM {name}: {}", reply.fault_message())));
        }
        Ok(())
    }

    /// Waits until the process is gone; false after `timeout`.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while self.running_pid().is_some() {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Sends `signal` to the VM's process, if it runs.
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.running_pid() {
            // SAFETY: kill has no memory effects; pid was checked to be this VM's vmr.
            unsafe { libc::kill(pid, signal) };
        }
    }
}

/// How to start one VM: the `vmr run` arguments (after `run`) and its run folder.
pub struct Launch<'a> {
    pub name: &'a str,
    pub vmr: &'a Path,
    pub args: Vec<String>,
    pub runtime: &'a Runtime,
    /// Taps made for the VM, removed when vmrd sees it end.
    pub taps: Vec<String>,
}

/// How long a starting VM has to serve its API (the default guest is assembled on first use).
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// Spawns the VM in its own session and records its pid; [`wait_for_api`] then waits until it
/// serves its API.
pub fn spawn(launch: &Launch) -> Result<i32, DaemonError> {
    let rt = launch.runtime;
    fs::create_dir_all(&rt.dir)?;
    for stale in [rt.api_sock(), rt.exit_file(), rt.vsock_sock()] {
        let _ = fs::remove_file(stale);
    }
    let console_in = open_console_fifo(&rt.console_in())?;
    let console_log = OpenOptions::new().create(true).append(true).open(rt.console_log())?;
    let vmr_log = File::create(rt.vmr_log())?;
    let mut cmd = Command::new(launch.vmr);
    cmd.arg("run").args(&launch.args).stdin(console_in).stdout(console_log).stderr(vmr_log);
    // SAFETY: setsid is async-signal-safe; between fork and exec the child calls nothing else.
    // Its own session and process group: signals to vmrd's group (Ctrl-C, systemd stopping
    // vmrd) do not reach the VM, and the VM outlives vmrd.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| DaemonError::Internal(format!("cannot run {}: {e}", launch.vmr.display())))?;
    let pid = child.id() as i32;
    atomic_replace(&rt.pid_file(), pid.to_string().as_bytes())?;
    let exit_file = rt.exit_file();
    let taps = launch.taps.clone();
    // vmrd reaps its own children (a later vmrd's init does it for VMs it inherited, and its
    // tap sweep removes their taps).
    std::thread::spawn(move || {
        if let Ok(status) = child.wait() {
            let code = status.code().map_or_else(|| "signal".to_string(), |c| c.to_string());
            let _ = atomic_replace(&exit_file, code.as_bytes());
        }
        taps.iter().for_each(|t| crate::net::unplug(t));
    });
    Ok(pid)
}

/// Waits until the VM's API answers; a VM that ends first is an error carrying its stderr tail.
pub fn wait_for_api(name: &str, rt: &Runtime, pid: i32) -> Result<(), DaemonError> {
    let end = Instant::now() + START_TIMEOUT;
    loop {
        if rt.api_sock().exists() && request(&rt.api_sock(), "GET", "/", None).is_ok() {
            return Ok(());
        }
        let ended = rt.exit_file().exists() || rt.running_pid() != Some(pid);
        if ended {
            // Let the reaper record the code and stderr be complete.
            std::thread::sleep(Duration::from_millis(50));
            return Err(DaemonError::Invalid(format!("VM {name} failed to start: {}", rt.stderr_tail())));
        }
        if Instant::now() >= end {
            rt.signal(libc::SIGKILL);
            return Err(DaemonError::Internal(format!(
                "VM {name} did not serve its API within {} s: {}",
                START_TIMEOUT.as_secs(),
                rt.stderr_tail()
            )));
        }
        // vmr serves its API within milliseconds: poll finely, so vmrd adds little to a start.
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn open_console_fifo(path: &Path) -> Result<File, DaemonError> {
    let is_fifo = fs::metadata(path).map(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_fifo()
    });
    if !matches!(is_fifo, Ok(true)) {
        let _ = fs::remove_file(path);
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| DaemonError::Invalid(format!("bad path {}", path.display())))?;
        // SAFETY: c is a valid NUL-terminated path.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            return Err(io::Error::last_os_error().into());
        }
    }
    // Read-write: the VM holds a writer itself, so it never reads end-of-file between viewers.
    Ok(OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(path)?)
}

/// Moves `log` to `log.1` once it is over `max` bytes (copy, then truncate: the VM keeps its
/// append-mode descriptor, so its next write starts the new file). Returns true if rotated.
pub fn rotate_log(log: &Path, max: u64) -> io::Result<bool> {
    let len = match fs::metadata(log) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max {
        return Ok(false);
    }
    let mut content = Vec::with_capacity(len as usize);
    File::open(log)?.read_to_end(&mut content)?;
    let rotated = log.with_extension("log.1");
    atomic_write(&rotated, &content)?;
    let file = OpenOptions::new().write(true).open(log)?;
    file.set_len(0)?;
    Ok(true)
}

/// Follows a log from `offset`: new bytes and the next offset (back to 0 after a rotation).
pub fn read_new(log: &Path, offset: u64) -> io::Result<(Vec<u8>, u64)> {
    let mut file = File::open(log)?;
    let len = file.metadata()?.len();
    let from = if len < offset { 0 } else { offset };
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    file.take(1 << 20).read_to_end(&mut buf)?;
    let next = from + buf.len() as u64;
    Ok((buf, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_rotated_log_keeps_its_content_and_followers_start_over() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut writer = OpenOptions::new().create(true).append(true).open(&log).unwrap();
        writer.write_all(b"0123456789").unwrap();
        assert!(!rotate_log(&log, 10).unwrap());
        let (bytes, offset) = read_new(&log, 0).unwrap();
        assert_eq!((bytes.as_slice(), offset), (&b"0123456789"[..], 10));
        writer.write_all(b"ab").unwrap();
        assert!(rotate_log(&log, 10).unwrap());
        assert_eq!(fs::read(dir.path().join("console.log.1")).unwrap(), b"0123456789ab");
        // The writer's append descriptor goes on at the start of the emptied file.
        writer.write_all(b"new").unwrap();
        assert_eq!(read_new(&log, 12).unwrap(), (b"new".to_vec(), 3));
    }

    #[test]
    fn a_pid_file_of_another_process_is_not_a_running_vm() {
        let dir = tempfile::tempdir().unwrap();
        let rt = Runtime { dir: dir.path().to_path_buf() };
        assert_eq!(rt.running_pid(), None);
        // Our own pid is alive but its command line does not hold this VM's socket.
        fs::write(rt.pid_file(), std::process::id().to_string()).unwrap();
        assert_eq!(rt.running_pid(), None);
        assert_eq!(rt.state(), VmState::Stopped);
    }
}
