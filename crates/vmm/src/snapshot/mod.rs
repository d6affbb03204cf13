//! Snapshots of a paused VM: a state file (format in [`format`], docs/SNAPSHOT.md) and a
//! memory file ([`memory`]). The state file holds one section per part of the machine, each a
//! plain serde struct as JSON:
//!
//! | tag | version | what |
//! |---|---|---|
//! | `vm` | 1 | the VM configuration ([`VmConfig`]: vCPUs, memory size, disks, taps, vsock) |
//! | `memory` | 1 | guest RAM regions and their offsets in the memory file |
//! | `vcpus` | 1 | one [`VcpuState`] per vCPU (registers, MSRs, LAPIC, TSC, run state, CPUID) |
//! | `irqchip` | 1 | IOAPIC, PIC pair, PIT ([`IrqChipState`], timers relative) |
//! | `legacy` | 1 | serial port, i8042, CMOS, ACPI power management |
//! | `virtio` | 1 | each virtio-mmio transport with its queues and its device's state |
//!
//! Everything a snapshot file says is checked before it is used: against the format (sizes,
//! checksum, known sections), against itself (one vCPU state per vCPU, memory regions as the
//! machine lays them out) and, while the machine is rebuilt, against the devices and guest
//! memory (queue rings inside RAM, positions within the ring).

pub mod format;
pub mod fuzzing;
pub mod memory;
#[cfg(test)]
mod tests;

use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use vmr_devices::acpi::AcpiPmState;
use vmr_devices::cmos::CmosState;
use vmr_devices::i8042::I8042State;
use vmr_devices::serial::SerialState;
use vmr_hypervisor::{IrqChipState, VcpuState};
use vmr_virtio::MmioState;

use crate::VmConfig;
use format::{FormatError, Section};
pub use memory::{MemoryLayout, MemoryRegion};

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Io(String),
}

/// The legacy devices' states.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyState {
    pub serial: SerialState,
    pub i8042: I8042State,
    pub cmos: CmosState,
    pub acpi: AcpiPmState,
}

/// Everything in a state file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MachineState {
    pub config: VmConfig,
    /// The API's ids of the disks and network cards, in configuration order (a restore names
    /// them the same, and `network_overrides` refer to them).
    pub drive_ids: Vec<String>,
    pub net_ids: Vec<String>,
    pub memory: MemoryLayout,
    pub vcpus: Vec<VcpuState>,
    pub irqchip: IrqChipState,
    pub legacy: LegacyState,
    pub virtio: Vec<MmioState>,
}

/// The sections this vmr writes and reads, with their versions.
const SECTIONS: [(&str, u32); 6] =
    [("vm", 1), ("memory", 1), ("vcpus", 1), ("irqchip", 1), ("legacy", 1), ("virtio", 1)];

/// The `vm` section.
#[derive(Serialize, Deserialize)]
struct VmSection {
    config: VmConfig,
    #[serde(default)]
    drive_ids: Vec<String>,
    #[serde(default)]
    net_ids: Vec<String>,
}

fn section(tag: &str, version: u32, value: &impl Serialize) -> Result<Section, SnapshotError> {
    let payload =
        serde_json::to_vec(value).map_err(|e| SnapshotError::Invalid(format!("section '{tag}': {e}")))?;
    Ok(Section { tag: tag.into(), version, flags: 0, payload })
}

/// The state file's bytes.
pub fn encode(state: &MachineState) -> Result<Vec<u8>, SnapshotError> {
    let sections = [
        section(
            "vm",
            1,
            &VmSection {
                config: state.config.clone(),
                drive_ids: state.drive_ids.clone(),
                net_ids: state.net_ids.clone(),
            },
        )?,
        section("memory", 1, &state.memory)?,
        section("vcpus", 1, &state.vcpus)?,
        section("irqchip", 1, &state.irqchip)?,
        section("legacy", 1, &state.legacy)?,
        section("virtio", 1, &state.virtio)?,
    ];
    Ok(format::encode(&sections))
}

/// Decodes and checks a state file (hostile input: one-line errors, no panics).
pub fn decode(data: &[u8]) -> Result<MachineState, SnapshotError> {
    let sections = format::decode(data)?;
    for s in &sections {
        match SECTIONS.iter().find(|(tag, _)| *tag == s.tag) {
            None if s.flags & format::FLAG_OPTIONAL != 0 => {}
            None => return Err(FormatError::UnknownSection { tag: s.tag.clone(), version: s.version }.into()),
            Some(&(_, max)) if s.version > max || s.version == 0 => {
                return Err(FormatError::SectionVersion { tag: s.tag.clone(), version: s.version, max }.into())
            }
            Some(_) => {}
        }
    }
    fn get<T: serde::de::DeserializeOwned>(
        sections: &[Section],
        tag: &'static str,
    ) -> Result<T, SnapshotError> {
        let s = sections.iter().find(|s| s.tag == tag).ok_or(FormatError::Missing(tag))?;
        serde_json::from_slice(&s.payload)
            .map_err(|e| FormatError::Payload { tag: tag.into(), error: e.to_string() }.into())
    }
    let vm: VmSection = get(&sections, "vm")?;
    let state = MachineState {
        config: vm.config,
        drive_ids: vm.drive_ids,
        net_ids: vm.net_ids,
        memory: get(&sections, "memory")?,
        vcpus: get(&sections, "vcpus")?,
        irqchip: get(&sections, "irqchip")?,
        legacy: get(&sections, "legacy")?,
        virtio: get(&sections, "virtio")?,
    };
    check(&state)?;
    Ok(state)
}

/// What a state must agree with itself on.
fn check(state: &MachineState) -> Result<(), SnapshotError> {
    let c = &state.config;
    if c.vcpus == 0 || c.vcpus > crate::MAX_API_VCPUS || state.vcpus.len() != c.vcpus as usize {
        return Err(SnapshotError::Invalid(format!(
            "{} vCPU states for a VM of {} vCPUs (1 to {})",
            state.vcpus.len(),
            c.vcpus,
            crate::MAX_API_VCPUS
        )));
    }
    if c.memory < VmConfig::MIN_MEMORY || c.memory > 1 << 50 {
        return Err(SnapshotError::Invalid(format!("guest memory of {} bytes", c.memory)));
    }
    let expected = expected_layout(c.memory);
    if state.memory != expected {
        return Err(SnapshotError::Invalid(format!(
            "memory regions {:?} are not those of a {} MiB guest",
            state.memory.regions.iter().map(|r| (r.guest_addr, r.size, r.file_offset)).collect::<Vec<_>>(),
            c.memory >> 20
        )));
    }
    let ids_ok = state.drive_ids.len() == c.virtio.disks.len() && state.net_ids.len() == c.virtio.nets.len();
    if !ids_ok {
        return Err(SnapshotError::Invalid("the device ids do not match the configured devices".into()));
    }
    if state.virtio.len() != c.virtio.count() {
        return Err(SnapshotError::Invalid(format!(
            "{} virtio device states for {} configured devices",
            state.virtio.len(),
            c.virtio.count()
        )));
    }
    Ok(())
}

/// Regions as the machine lays out `size` bytes of RAM, packed in the memory file.
fn expected_layout(size: u64) -> MemoryLayout {
    let mut offset = 0;
    let regions = vmr_arch::layout::guest_memory_regions(size)
        .into_iter()
        .map(|(addr, len)| {
            let r = MemoryRegion { guest_addr: addr.0, size: len as u64, file_offset: offset };
            offset += len as u64;
            r
        })
        .collect();
    MemoryLayout { regions }
}

/// Reads and decodes a state file (size-checked before it is read).
pub fn read(path: &Path) -> Result<MachineState, SnapshotError> {
    let file = std::fs::File::open(path)
        .map_err(|e| SnapshotError::Io(format!("cannot open the snapshot {}: {e}", path.display())))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > format::MAX_BODY + 64 {
        return Err(FormatError::TooLarge(len).into());
    }
    let mut data = Vec::with_capacity(len as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(file, format::MAX_BODY + 64), &mut data)
        .map_err(|e| SnapshotError::Io(format!("cannot read {}: {e}", path.display())))?;
    decode(&data)
}

/// Writes a state file (through a temporary name, so a reader never sees half of one).
pub fn write(path: &Path, state: &MachineState) -> Result<(), SnapshotError> {
    let data = encode(state)?;
    let tmp = path.with_extension("vmr-tmp");
    let io = |e: std::io::Error| SnapshotError::Io(format!("cannot write {}: {e}", path.display()));
    std::fs::write(&tmp, &data).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
