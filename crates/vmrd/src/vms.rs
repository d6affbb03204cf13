//! VM operations of the daemon: define, edit, undefine, start, stop, and what list/info show.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::def::{check_name, parse_disk_size, split_volume, VmDef};
use crate::state::{atomic_write, Intent};
use crate::vm::{self, Runtime, VmState};
use crate::{net, pool, Daemon, DaemonError};

/// A volume a definition creates: path, size, format.
type NewVolume = (PathBuf, u64, Option<String>);

/// A line of `vmr list`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmSummary {
    pub name: String,
    pub state: VmState,
    pub autostart: bool,
}

/// `vmr info`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    pub state: VmState,
    pub pid: Option<i32>,
    pub vcpus: u32,
    pub memory: u64,
    pub autostart: bool,
    pub kernel: String,
    pub disks: Vec<VmDisk>,
    pub api_sock: PathBuf,
    pub console_log: PathBuf,
    pub console_input: PathBuf,
    /// Exit code of the last run vmrd saw end ("signal" if killed).
    pub last_exit: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmDisk {
    pub source: String,
    pub path: PathBuf,
    pub readonly: bool,
    /// Created by this VM's definition (removed with it unless kept).
    pub owned: bool,
}

impl Daemon {
    fn def_path(&self, name: &str) -> PathBuf {
        self.state.vms().join(format!("{name}.toml"))
    }
    fn owned_path(&self, name: &str) -> PathBuf {
        self.state.vms().join(format!("{name}.owned.json"))
    }
    pub fn runtime(&self, name: &str) -> Runtime {
        Runtime { dir: self.state.run_dir(name) }
    }

    pub fn vm_names(&self) -> Result<Vec<String>, DaemonError> {
        let mut names: Vec<String> = fs::read_dir(self.state.vms())?
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".toml").map(String::from))
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The stored definition text (what the user wrote, comments included) and its parse.
    pub fn load(&self, name: &str) -> Result<(String, VmDef), DaemonError> {
        check_name("VM", name)?;
        let text = fs::read_to_string(self.def_path(name))
            .map_err(|_| DaemonError::NotFound(format!("no VM named '{name}'")))?;
        let def = VmDef::parse(&text)
            .map_err(|e| DaemonError::Internal(format!("VM {name}: stored definition: {e}")))?;
        Ok((text, def))
    }

    fn owned(&self, name: &str) -> Vec<PathBuf> {
        fs::read_to_string(self.owned_path(name))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// The host path of each disk; volumes to create (those with a size that do not exist).
    fn resolve_disks(&self, def: &VmDef) -> Result<(Vec<PathBuf>, Vec<NewVolume>), DaemonError> {
        let mut paths = Vec::new();
        let mut create = Vec::new();
        for disk in &def.disks {
            let Some(spec) = &disk.volume else {
                paths.push(PathBuf::from(disk.path.clone().unwrap_or_default()));
                continue;
            };
            let (pool_name, vol) = split_volume(spec)?;
            let pool = pool::active(&self.state, pool_name)?;
            let path = pool::volume_path(&pool, vol)?;
            if !path.exists() {
                let Some(size) = &disk.size else {
                    return Err(DaemonError::NotFound(format!(
                        "VM {}: no volume '{vol}' in pool {pool_name} (give a size to create it)",
                        def.name
                    )));
                };
                create.push((path.clone(), parse_disk_size(size)?, disk.format.clone()));
            }
            paths.push(path);
        }
        Ok((paths, create))
    }

    /// `define` (new name) and `edit` (replace=true, same name): validated fully, volumes
    /// with a size created, journaled so that a crash leaves all or nothing.
    pub fn define(&self, text: &str, replace: Option<&str>) -> Result<VmDef, DaemonError> {
        let def = VmDef::parse(text)?;
        let _guard = self.locked();
        let def_path = self.def_path(&def.name);
        match replace {
            None if def_path.exists() => {
                return Err(DaemonError::Conflict(format!("a VM named '{}' is already defined", def.name)))
            }
            Some(old) if old != def.name => {
                return Err(DaemonError::Invalid(format!(
                    "the name cannot change in an edit ('{old}' to '{}')",
                    def.name
                )))
            }
            Some(old) if !def_path.exists() => {
                return Err(DaemonError::NotFound(format!("no VM named '{old}'")))
            }
            _ => {}
        }
        let (_, create) = self.resolve_disks(&def)?;
        let files: Vec<PathBuf> = create.iter().map(|(p, _, _)| p.clone()).collect();
        let done = if replace.is_some() { None } else { Some(def_path.clone()) };
        let entry = self.state.begin(&vm_intent(done, &files))?;
        for (path, size, format) in &create {
            let format = format.as_deref().unwrap_or("raw").parse().map_err(DaemonError::Invalid)?;
            vmr_vmm::devices::vmr_block::create(path, format, Some(*size), None)
                .map_err(|e| DaemonError::Invalid(e.to_string()))?;
        }
        let mut owned = self.owned(&def.name);
        owned.extend(files);
        atomic_write(
            &self.owned_path(&def.name),
            serde_json::to_string(&owned).unwrap_or_default().as_bytes(),
        )?;
        atomic_write(&def_path, text.as_bytes())?;
        entry.finish()?;
        Ok(def)
    }

    /// Removes a stopped VM's definition, run folder and (unless kept) the volumes it created.
    pub fn undefine(&self, name: &str, keep_volumes: bool) -> Result<Vec<PathBuf>, DaemonError> {
        let _guard = self.locked();
        self.load(name)?;
        if self.runtime(name).running_pid().is_some() {
            return Err(DaemonError::Conflict(format!(
                "VM {name} is running: shut it down or destroy it first"
            )));
        }
        let mut volumes = if keep_volumes { vec![] } else { self.owned(name) };
        // A volume another definition uses stays.
        let used = self.volumes_in_use(Some(name))?;
        volumes.retain(|v| !used.contains(v));
        let mut files = vec![self.def_path(name), self.owned_path(name)];
        files.extend(volumes.iter().cloned());
        let entry = self.state.begin(&Intent::Remove { files: files.clone() })?;
        for file in &files {
            crate::state::remove_durably(file)?;
        }
        let _ = fs::remove_dir_all(self.state.run_dir(name));
        entry.finish()?;
        Ok(volumes)
    }

    /// Host paths of the pool volumes a definition uses.
    fn volume_paths(&self, def: &VmDef) -> Vec<PathBuf> {
        def.disks
            .iter()
            .filter_map(|d| split_volume(d.volume.as_deref()?).ok())
            .filter_map(|(p, v)| Some(pool::load(&self.state, p).ok()?.path.join(v)))
            .collect()
    }

    /// Host paths of the volumes the definitions use (all but `except`).
    pub fn volumes_in_use(&self, except: Option<&str>) -> Result<BTreeSet<PathBuf>, DaemonError> {
        let mut used = BTreeSet::new();
        for name in self.vm_names()?.iter().filter(|n| Some(n.as_str()) != except) {
            if let Ok((_, def)) = self.load(name) {
                used.extend(self.volume_paths(&def));
            }
        }
        Ok(used)
    }

    /// The VM definition that uses the volume at `path`, if any.
    pub fn volume_user(&self, path: &std::path::Path) -> Result<Option<String>, DaemonError> {
        for name in self.vm_names()? {
            if let Ok((_, def)) = self.load(&name) {
                if self.volume_paths(&def).iter().any(|p| p == path) {
                    return Ok(Some(name));
                }
            }
        }
        Ok(None)
    }

    pub fn list(&self, all: bool) -> Result<Vec<VmSummary>, DaemonError> {
        let mut out = Vec::new();
        for name in self.vm_names()? {
            let Ok((_, def)) = self.load(&name) else { continue };
            let state = self.runtime(&name).state();
            if all || state != VmState::Stopped {
                out.push(VmSummary { name, state, autostart: def.autostart });
            }
        }
        Ok(out)
    }

    pub fn info(&self, name: &str) -> Result<VmInfo, DaemonError> {
        let (_, def) = self.load(name)?;
        let rt = self.runtime(name);
        let owned = self.owned(name);
        let disks = def
            .disks
            .iter()
            .map(|d| {
                let path = match &d.volume {
                    Some(spec) => split_volume(spec)
                        .ok()
                        .and_then(|(p, v)| Some(pool::load(&self.state, p).ok()?.path.join(v)))
                        .unwrap_or_default(),
                    None => PathBuf::from(d.path.clone().unwrap_or_default()),
                };
                let source = d.volume.clone().or(d.path.clone()).unwrap_or_default();
                VmDisk { owned: owned.contains(&path), source, path, readonly: d.readonly }
            })
            .collect();
        Ok(VmInfo {
            name: name.into(),
            state: rt.state(),
            pid: rt.running_pid(),
            vcpus: def.vcpus,
            memory: def.memory_bytes(),
            autostart: def.autostart,
            kernel: def.kernel.clone().unwrap_or_else(|| "default guest".into()),
            disks,
            api_sock: rt.api_sock(),
            console_log: rt.console_log(),
            console_input: rt.console_in(),
            last_exit: fs::read_to_string(rt.exit_file()).ok(),
        })
    }

    pub fn set_autostart(&self, name: &str, on: bool) -> Result<(), DaemonError> {
        let (text, _) = self.load(name)?;
        let mut doc: toml::Table = toml::from_str(&text).map_err(|e| DaemonError::Internal(e.to_string()))?;
        doc.insert("autostart".into(), toml::Value::Boolean(on));
        let text = toml::to_string(&doc).map_err(|e| DaemonError::Internal(e.to_string()))?;
        self.define(&text, Some(name)).map(drop)
    }

    /// Starts a defined VM; its pid. The state lock is held until the process exists (a second
    /// start then sees it running), not while it comes up.
    pub fn start(&self, name: &str) -> Result<i32, DaemonError> {
        let pid = self.spawn_vm(name)?;
        vm::wait_for_api(name, &self.runtime(name), pid)?;
        Ok(pid)
    }

    fn spawn_vm(&self, name: &str) -> Result<i32, DaemonError> {
        let _guard = self.locked();
        let (_, def) = self.load(name)?;
        let rt = self.runtime(name);
        if rt.running_pid().is_some() {
            return Err(DaemonError::Conflict(format!("VM {name} is already running")));
        }
        let (paths, create) = self.resolve_disks(&def)?;
        if let Some((path, _, _)) = create.first() {
            return Err(DaemonError::NotFound(format!(
                "VM {name}: volume {} does not exist",
                path.display()
            )));
        }
        let mut args = self.run_args(&def, &paths, &rt)?;
        args.extend(self.plug_nics(&def)?);
        vm::spawn(&vm::Launch { name, vmr: &self.opts.vmr, args, runtime: &rt, taps: self.taps(&def) })
    }

    fn run_args(&self, def: &VmDef, disks: &[PathBuf], rt: &Runtime) -> Result<Vec<String>, DaemonError> {
        let mut args = vec![
            "--cpus".into(),
            def.vcpus.to_string(),
            "--memory".into(),
            format!("{}M", def.memory_bytes() >> 20),
            "--accel".into(),
            def.accel.clone().unwrap_or_else(|| self.opts.accel.clone()),
            "--reboot".into(),
            "restart".into(),
            "--api-sock".into(),
            rt.api_sock().display().to_string(),
        ];
        for (flag, value) in
            [("--kernel", &def.kernel), ("--initrd", &def.initrd), ("--cmdline", &def.cmdline)]
        {
            if let Some(v) = value {
                args.extend([flag.to_string(), v.clone()]);
            }
        }
        for (disk, path) in def.disks.iter().zip(disks) {
            let text = path.display().to_string();
            if text.contains(',') || !path.exists() {
                return Err(DaemonError::Invalid(format!(
                    "VM {}: disk {text} does not exist or has a ',' in its path",
                    def.name
                )));
            }
            let mut opt = format!("path={text}");
            if let Some(format) = &disk.format {
                opt.push_str(&format!(",format={format}"));
            }
            if disk.readonly {
                opt.push_str(",readonly=on");
            }
            args.extend(["--disk".into(), opt]);
        }
        if let Some(cid) = def.vsock_cid {
            args.extend(["--vsock".into(), format!("cid={cid},socket={}", rt.vsock_sock().display())]);
        }
        Ok(args)
    }

    /// The taps of a VM's network cards.
    fn taps(&self, def: &VmDef) -> Vec<String> {
        (0..def.nics.len()).map(|i| net::tap_and_mac(&def.name, i).0).collect()
    }

    /// Makes each card's tap on its network's bridge; the `--net` arguments.
    fn plug_nics(&self, def: &VmDef) -> Result<Vec<String>, DaemonError> {
        let mut args = Vec::new();
        for (i, nic) in def.nics.iter().enumerate() {
            let network = net::load(&self.state, &nic.network)?;
            let (tap, mac) = net::tap_and_mac(&def.name, i);
            net::plug(&network, &tap)
                .map_err(|e| DaemonError::Invalid(format!("VM {}: nic {}: {e}", def.name, i + 1)))?;
            args.extend(["--net".to_string(), format!("tap={tap},mac={}", nic.mac.clone().unwrap_or(mac))]);
        }
        Ok(args)
    }

    /// Removes the taps of VMs that are not running (VMs that ended while another vmrd, or
    /// none, watched them).
    pub fn unplug_stopped(&self) {
        for name in self.vm_names().unwrap_or_default() {
            let Ok((_, def)) = self.load(&name) else { continue };
            if !def.nics.is_empty() && self.runtime(&name).running_pid().is_none() {
                self.taps(&def).iter().for_each(|t| net::unplug(t));
            }
        }
    }

    /// Names of running VMs with a card on `network`.
    pub fn network_users(&self, network: &str) -> Vec<String> {
        self.vm_names()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| {
                self.load(n).is_ok_and(|(_, d)| d.nics.iter().any(|c| c.network == network))
                    && self.runtime(n).running_pid().is_some()
            })
            .collect()
    }

    fn running(&self, name: &str) -> Result<Runtime, DaemonError> {
        self.load(name)?;
        let rt = self.runtime(name);
        if rt.running_pid().is_none() {
            return Err(DaemonError::Conflict(format!("VM {name} is not running")));
        }
        Ok(rt)
    }

    /// The ACPI power button, then up to `timeout` for the guest to power off; with `force`,
    /// a VM still running then is destroyed.
    pub fn shutdown(&self, name: &str, timeout: Duration, force: bool) -> Result<&'static str, DaemonError> {
        let rt = self.running(name)?;
        rt.api(name, "PUT", "/actions", r#"{"action_type":"vmr:PowerButton"}"#)?;
        if rt.wait_gone(timeout) {
            return Ok("shut down");
        }
        if force {
            self.destroy(name)?;
            return Ok("did not shut down in time: destroyed");
        }
        Err(DaemonError::Conflict(format!(
            "VM {name} did not shut down within {} s of the power button (its guest may not handle it); \
             use shutdown --force or destroy",
            timeout.as_secs()
        )))
    }

    /// Stops the VM now: SIGTERM (vmr stops its vCPUs and exits), SIGKILL after 5 s.
    pub fn destroy(&self, name: &str) -> Result<(), DaemonError> {
        let rt = self.running(name)?;
        rt.signal(libc::SIGTERM);
        if !rt.wait_gone(Duration::from_secs(5)) {
            rt.signal(libc::SIGKILL);
            if !rt.wait_gone(Duration::from_secs(5)) {
                return Err(DaemonError::Internal(format!("VM {name} survived SIGKILL")));
            }
        }
        if let Ok((_, def)) = self.load(name) {
            self.taps(&def).iter().for_each(|t| net::unplug(t));
        }
        Ok(())
    }

    /// reboot (Ctrl-Alt-Del: the guest restarts; vmr boots it again), suspend, resume.
    pub fn vm_action(&self, name: &str, action: &str) -> Result<(), DaemonError> {
        let rt = self.running(name)?;
        match action {
            "reboot" => rt.api(name, "PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#),
            "suspend" => rt.api(name, "PATCH", "/vm", r#"{"state":"Paused"}"#),
            "resume" => rt.api(name, "PATCH", "/vm", r#"{"state":"Resumed"}"#),
            other => Err(DaemonError::Invalid(format!("unknown action '{other}'"))),
        }
    }

    /// Starts every autostart VM that is not running (at vmrd start).
    pub fn autostart_all(&self) {
        for name in self.vm_names().unwrap_or_default() {
            let Ok((_, def)) = self.load(&name) else { continue };
            if def.autostart && self.runtime(&name).running_pid().is_none() {
                match self.start(&name) {
                    Ok(pid) => tracing::info!("vmrd: autostarted {name} (pid {pid})"),
                    Err(e) => tracing::error!("vmrd: autostart of {name} failed: {e}"),
                }
            }
        }
    }

    pub fn rotate_console_logs(&self) {
        for name in self.vm_names().unwrap_or_default() {
            if let Err(e) = vm::rotate_log(&self.runtime(&name).console_log(), self.opts.console_log_max) {
                tracing::warn!("vmrd: cannot rotate the console log of {name}: {e}");
            }
        }
    }
}

fn vm_intent(done: Option<PathBuf>, files: &[PathBuf]) -> Intent {
    Intent::Create { done, files: files.to_vec() }
}
