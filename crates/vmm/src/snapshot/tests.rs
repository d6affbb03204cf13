//! The state file against truncation, corruption and hostile contents; the memory file's
//! holes and private mapping.

use std::sync::Arc;

use vmr_devices::{cmos::Cmos, i8042::I8042, IrqLine};
use vmr_hypervisor::vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmr_hypervisor::{IrqChip, VcpuState};

use super::format::{self, FormatError, Section};
use super::*;

struct NullChip;
impl IrqChip for NullChip {
    fn set_irq_line(&self, _gsi: u32, _level: bool) -> vmr_hypervisor::Result<()> {
        Ok(())
    }
}

pub(super) fn sample() -> MachineState {
    let config = VmConfig {
        kernel: "k".into(),
        initrd: None,
        cmdline: String::new(),
        vcpus: 1,
        memory: 32 << 20,
        accel: crate::Accel::Emu,
        reboot: crate::RebootPolicy::Exit,
        virtio: Default::default(),
        cmdline_hints: true,
    };
    let irq = IrqLine::new(Arc::new(NullChip), 1);
    MachineState {
        memory: expected_layout(config.memory),
        config,
        drive_ids: vec![],
        net_ids: vec![],
        vcpus: vec![VcpuState::default()],
        irqchip: IrqChipState {
            ioapic: vmr_hypervisor::IoapicState { redirection: vec![1 << 16; 24], ..Default::default() },
            ..Default::default()
        },
        legacy: LegacyState {
            serial: SerialState::default(),
            i8042: I8042::new(Arc::new(|_| {}), irq).state(),
            cmos: Cmos::new(32 << 20, 0).state(),
            acpi: AcpiPmState::default(),
        },
        virtio: vec![],
    }
}

/// Re-seals a tampered body with a valid checksum, so the decoder's later checks are reached.
fn reseal(mut data: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&data[40..]);
    data[20..24].copy_from_slice(&crc.to_le_bytes());
    data
}

fn err(data: &[u8]) -> String {
    let e = decode(data).expect_err("accepted").to_string();
    assert!(!e.contains('\n'), "not one line: {e}");
    e
}

#[test]
fn a_state_round_trips() {
    let s = sample();
    let data = encode(&s).unwrap();
    assert_eq!(&data[..8], format::MAGIC);
    assert_eq!(decode(&data).unwrap(), s);
}

#[test]
fn every_truncation_and_every_flipped_byte_is_refused_without_a_panic() {
    let data = encode(&sample()).unwrap();
    for len in 0..data.len() {
        let e = err(&data[..len]);
        assert!(e.contains("truncated") || e.contains("magic") || e.contains("bytes follow"), "{len}: {e}");
    }
    for at in (0..data.len()).step_by(7) {
        let mut bad = data.clone();
        bad[at] ^= 0x40;
        err(&bad);
    }
    let mut bad = data.clone();
    bad[100] ^= 1;
    assert!(err(&bad).contains("checksum mismatch"));
}

#[test]
fn header_errors_name_what_is_wrong() {
    let data = encode(&sample()).unwrap();
    let mut bad = data.clone();
    bad[0] = b'X';
    assert_eq!(err(&bad), "not a vmr snapshot (bad magic)");
    let mut bad = data.clone();
    bad[8] = 9;
    assert!(err(&bad).contains("format version 9"));
    let mut bad = data.clone();
    bad[12] = 2;
    assert!(err(&bad).contains("architecture 2"));
    let mut bad = data.clone();
    bad[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(err(&bad).contains("larger than"));
    let mut long = data.clone();
    long.push(0);
    assert!(err(&long).contains("bytes follow"));
}

#[test]
fn unknown_and_newer_sections_are_named() {
    let s = sample();
    let mut sections = format::decode(&encode(&s).unwrap()).unwrap();
    sections.push(Section { tag: "balloon".into(), version: 3, flags: 0, payload: b"{}".to_vec() });
    assert_eq!(err(&format::encode(&sections)), "section 'balloon' version 3 is not known to this vmr");
    // An optional unknown section is skipped.
    sections.last_mut().unwrap().flags = format::FLAG_OPTIONAL;
    assert_eq!(decode(&format::encode(&sections)).unwrap(), s);
    sections.pop();
    sections[2].version = 7;
    assert_eq!(err(&format::encode(&sections)), "section 'vcpus' version 7; this vmr reads up to version 1");
    sections[2].version = 1;
    let vcpus = sections.remove(2);
    assert_eq!(err(&format::encode(&sections)), "section 'vcpus' is missing");
    sections.push(vcpus.clone());
    sections.push(vcpus);
    assert_eq!(err(&format::encode(&sections)), "section 'vcpus' appears twice");
}

#[test]
fn hostile_section_lengths_and_payloads_are_refused() {
    let data = encode(&sample()).unwrap();
    // The first section's length field claims more than the file has.
    let mut bad = data.clone();
    bad[40 + 24..40 + 32].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(err(&reseal(bad)).contains("truncated"));
    // A section count far beyond what a snapshot has.
    let mut bad = data.clone();
    bad[16..20].copy_from_slice(&100_000u32.to_le_bytes());
    assert!(err(&reseal(bad)).contains("sections"));
    // A tag that is not printable.
    let mut bad = data.clone();
    bad[40] = 0x07;
    assert!(err(&reseal(bad)).contains("not printable"));

    let with = |edit: &dyn Fn(&mut MachineState)| {
        let mut s = sample();
        edit(&mut s);
        err(&encode(&s).unwrap())
    };
    assert!(with(&|s| s.vcpus.clear()).contains("0 vCPU states for a VM of 1"));
    assert!(with(&|s| s.config.vcpus = 10_000).contains("vCPU states"));
    assert!(with(&|s| s.memory.regions[0].size += 4096).contains("memory regions"));
    assert!(with(&|s| s.memory.regions[0].guest_addr = u64::MAX).contains("memory regions"));
    assert!(with(&|s| s.config.memory = 1).contains("guest memory of 1 bytes"));
    assert!(with(&|s| s.virtio.push(rng_transport_state())).contains("virtio device states"));
    // A payload that is not the section's type.
    let mut sections = format::decode(&encode(&sample()).unwrap()).unwrap();
    sections[2].payload = br#"{"regs": 5}"#.to_vec();
    assert!(err(&format::encode(&sections)).starts_with("section 'vcpus': invalid type"));
}

fn rng_transport_state() -> vmr_virtio::MmioState {
    serde_json::from_value(serde_json::json!({
        "device_type": 4, "status": 0, "driver_features": 0, "device_features_select": 0,
        "driver_features_select": 0, "queue_select": 0, "interrupt_status": 0, "config_generation": 0,
        "activated": false, "queues": [], "device": {"kind": "virtio-rng", "state": {"acked_features": 0}}
    }))
    .unwrap()
}

#[test]
fn the_memory_file_is_sparse_and_mapped_privately() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mem");
    let mem = vmr_arch::create_guest_memory(64 << 20).unwrap();
    mem.write_slice(&[0xa5; 8192], GuestAddress(0x10_0000)).unwrap();
    mem.write_obj(0x1234_5678u32, GuestAddress(0x3ff_fffc)).unwrap();
    let written = memory::save(&mem, &path).unwrap();
    assert_eq!(written, 3 * 4096, "only the pages holding data are written");
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), 64 << 20);
    use std::os::unix::fs::MetadataExt;
    assert!(meta.blocks() * 512 <= 64 * 1024, "{} blocks: the file is not sparse", meta.blocks());

    let restored = memory::map(&path, &memory::layout(&mem)).unwrap();
    assert_eq!(restored.read_obj::<u32>(GuestAddress(0x3ff_fffc)).unwrap(), 0x1234_5678);
    let mut page = [0u8; 8192];
    restored.read_slice(&mut page, GuestAddress(0x10_0000)).unwrap();
    assert!(page.iter().all(|&b| b == 0xa5));
    // Writes stay in the process: the file keeps the snapshot.
    restored.write_obj(0u32, GuestAddress(0x3ff_fffc)).unwrap();
    let again = memory::map(&path, &memory::layout(&mem)).unwrap();
    assert_eq!(again.read_obj::<u32>(GuestAddress(0x3ff_fffc)).unwrap(), 0x1234_5678);
    assert_eq!(restored.num_regions(), mem.num_regions());

    // A memory file of another size is refused.
    std::fs::File::options().write(true).open(&path).unwrap().set_len(4096).unwrap();
    let e = memory::map(&path, &memory::layout(&mem)).err().unwrap().to_string();
    assert!(e.contains("has 4096 bytes"), "{e}");
    let e = memory::map(&dir.path().join("none"), &memory::layout(&mem)).err().unwrap().to_string();
    assert!(e.contains("cannot open the memory file"), "{e}");
}

#[test]
fn format_errors_compare() {
    assert_eq!(
        format::decode(b"VMRSNAP"),
        Err(FormatError::Truncated { what: "the magic".into(), need: 8, have: 7 })
    );
}
