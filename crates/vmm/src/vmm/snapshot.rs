//! `PUT /snapshot/create` and `PUT /snapshot/load` (Firecracker's bodies; see
//! `crate::snapshot` for the files).

use std::path::Path;
use std::time::Instant;

use super::{DriveEntry, NetEntry, Vmm};
use crate::api::schema::{MemBackendType, SnapshotCreateParams, SnapshotLoadParams, SnapshotType};
use crate::api::{ApiError, ApiResult, VmmResponse};
use crate::machine::Machine;
use crate::{console, select_backend, snapshot, VmmError};

impl Vmm {
    /// Writes the memory file, then the state file (last, so that a state file on disk always
    /// has its memory file complete beside it). The VM must be paused; it stays paused.
    pub(super) fn create_snapshot(&mut self, p: SnapshotCreateParams) -> ApiResult {
        if p.snapshot_type == SnapshotType::Diff {
            return Err(ApiError::NotSupportedYet("snapshot_type Diff (only Full snapshots are written)"));
        }
        let m = self.running_machine("PUT /snapshot/create")?;
        if !m.is_paused() {
            return Err(ApiError::WrongState {
                what: "PUT /snapshot/create",
                when: "while the VM runs (pause it first: PATCH /vm Paused)",
            });
        }
        let config = self.effective_config()?;
        let fail = |e: &dyn std::fmt::Display| ApiError::Vmm(format!("cannot create the snapshot: {e}"));
        let mut state = m.save_state(&config).map_err(|e| fail(&crate::error_chain(&e)))?;
        state.drive_ids = self.drives.iter().map(|e| e.id.clone()).collect();
        state.net_ids = self.nets.iter().map(|e| e.id.clone()).collect();
        snapshot::memory::save(m.memory(), Path::new(&p.mem_file_path)).map_err(|e| fail(&e))?;
        snapshot::write(Path::new(&p.snapshot_path), &state).map_err(|e| fail(&e))?;
        Ok(VmmResponse::Empty)
    }

    /// Rebuilds the VM from a snapshot in this (not yet started) VMM; it runs if `resume_vm`,
    /// else it waits paused for `PATCH /vm Resumed`.
    pub(super) fn load_snapshot(&mut self, p: SnapshotLoadParams) -> ApiResult {
        self.before_boot("PUT /snapshot/load")?;
        if p.track_dirty_pages || p.enable_diff_snapshots {
            return Err(ApiError::NotSupportedYet("track_dirty_pages (diff snapshots)"));
        }
        let mem_path = match (&p.mem_backend, &p.mem_file_path) {
            (Some(_), Some(_)) => {
                return Err(ApiError::InvalidValue(
                    "give either mem_backend or mem_file_path, not both".into(),
                ))
            }
            (Some(b), None) if b.backend_type == MemBackendType::Uffd => {
                return Err(ApiError::NotSupportedYet("mem_backend Uffd"))
            }
            (Some(b), None) => b.backend_path.clone(),
            (None, Some(path)) => path.clone(),
            (None, None) => {
                return Err(ApiError::InvalidValue("mem_backend (or mem_file_path) is required".into()))
            }
        };
        let started = Instant::now();
        let bad = |e: &dyn std::fmt::Display| {
            ApiError::InvalidValue(format!("cannot load {}: {e}", p.snapshot_path))
        };
        let mut state = snapshot::read(Path::new(&p.snapshot_path)).map_err(|e| bad(&e))?;
        apply_overrides(&mut state, &p)?;
        let memory = snapshot::memory::map(Path::new(&mem_path), &state.memory).map_err(|e| bad(&e))?;
        self.restore_machine(&state, memory, p.resume_vm).map_err(|e| bad(&crate::error_chain(&e)))?;
        if crate::stats::enabled() {
            eprintln!("vmr: snapshot loaded in {:.2} ms", started.elapsed().as_secs_f64() * 1e3);
        }
        Ok(VmmResponse::Empty)
    }

    fn restore_machine(
        &mut self,
        state: &snapshot::MachineState,
        memory: vmr_hypervisor::GuestMemory,
        resume: bool,
    ) -> Result<(), VmmError> {
        // The backend this process was asked for (the snapshot's is only where it was taken).
        let mut config = state.config.clone();
        config.accel = self.config.accel;
        if self.backend.is_none() {
            let b = select_backend(config.accel)?;
            eprintln!("vmr: accelerator: {} ({})", b.hypervisor.name(), b.reason);
            self.backend = Some(b);
        }
        let hv = self.backend.as_ref().map(|b| b.hypervisor.clone()).ok_or(VmmError::NoBackend)?;
        let machine = Machine::restore(&config, state, memory, hv.as_ref(), &self.events)?;
        let quit = self.events.quit_notifier();
        let console = self.console.get_or_insert_with(|| console::ConsoleInput::start(quit));
        self.raw_mode.get_or_insert_with(console::RawModeGuard::new);
        console.set_sink(Some(machine.console_sink()));
        self.running = Some(machine.start_with(&self.events, !resume)?);
        self.adopt_config(config, state);
        Ok(())
    }

    /// The restored VM's configuration becomes this VMM's (`GET /vm/config`, drive patches).
    fn adopt_config(&mut self, config: crate::VmConfig, state: &snapshot::MachineState) {
        self.drives = config
            .virtio
            .disks
            .iter()
            .zip(&state.drive_ids)
            .enumerate()
            .map(|(i, (disk, id))| DriveEntry { id: id.clone(), ..super::drive_entry(i, disk) })
            .collect();
        self.nets = config
            .virtio
            .nets
            .iter()
            .zip(&state.net_ids)
            .map(|(net, id)| NetEntry { id: id.clone(), net: net.clone() })
            .collect();
        self.config = crate::VmConfig { virtio: Default::default(), ..config.clone() };
        self.config.virtio.vsock = config.virtio.vsock;
        self.config.virtio.rng = config.virtio.rng;
        self.boot_source = true;
    }
}

/// `network_overrides` and `vsock_override`: the guest side stays, the host side moves.
fn apply_overrides(state: &mut snapshot::MachineState, p: &SnapshotLoadParams) -> Result<(), ApiError> {
    for o in &p.network_overrides {
        let Some(i) = state.net_ids.iter().position(|id| *id == o.iface_id) else {
            return Err(ApiError::InvalidValue(format!(
                "network_overrides: the snapshot has no network interface {}",
                o.iface_id
            )));
        };
        if let Some(net) = state.config.virtio.nets.get_mut(i) {
            net.tap = o.host_dev_name.clone();
        }
    }
    if let Some(o) = &p.vsock_override {
        match state.config.virtio.vsock.as_mut() {
            Some(v) => v.socket = o.uds_path.clone().into(),
            None => {
                return Err(ApiError::InvalidValue("vsock_override: the snapshot has no vsock device".into()))
            }
        }
    }
    Ok(())
}
