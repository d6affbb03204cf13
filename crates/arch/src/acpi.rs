//! ACPI tables: RSDP, XSDT, FADT (hardware-reduced), MADT, DSDT.
//!
//! Power management is hardware-reduced ACPI as in Cloud Hypervisor: the FADT points the sleep
//! control/status registers and the reset register at the I/O block [`ACPI_PM_PORT`]
//! (+0 control, +1 status, +2 reset). Linux powers off by writing SLP_TYP=5|SLP_EN to the
//! control register (`_S5_` in the DSDT gives 5) and resets by writing [`ACPI_RESET_VALUE`] to
//! the reset register; the `acpi_pm` device of vmr-devices serves both.
//!
//! No interrupt source override is emitted: the backends route GSI n to IOAPIC pin n (KVM's
//! default routing, the software IrqChip), so ISA IRQs map one to one. Hardware-reduced mode
//! makes Linux skip the PIT and legacy PIC; it needs the TSC-deadline timer (or a known LAPIC
//! timer frequency) from CPUID.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress};
use vmr_hypervisor::GuestMemory;

use crate::error::{write_err, ArchError, Result};
use crate::layout::{
    ACPI_END, ACPI_PM_PORT, ACPI_RESET_VALUE, ACPI_S5_SLEEP_TYPE, CMOS_PORT, COM1_IRQ, COM1_PORT,
    I8042_CMD_PORT, I8042_DATA_PORT, I8042_IRQ, IOAPIC_START, LAPIC_START, POWER_BUTTON_IRQ, RSDP_START,
};
use crate::mptable::ioapic_id;

const OEM_ID: [u8; 6] = *b"VMR   ";
const OEM_REVISION: u32 = 1;
/// FADT IA-PC boot architecture flags: 8042 present, no VGA, no ASPM control.
const IAPC_BOOT_ARCH: u16 = (1 << 1) | (1 << 2) | (1 << 4);
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_CPU_ENABLED: u32 = 1;

/// An MMIO device described in the DSDT (a virtio-mmio transport, `_HID` "LNRO0005").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    /// Base of its register window.
    pub addr: GuestAddress,
    /// Length of the window.
    pub len: u64,
    /// Its IOAPIC input (edge triggered).
    pub irq: u32,
}

fn table_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// Emits `Device(name) { _HID, extra..., _CRS(resources) }`.
fn emit_device(sink: &mut Vec<u8>, name: &str, hid: &dyn Aml, extra: &[&dyn Aml], resources: Vec<&dyn Aml>) {
    let crs = aml::ResourceTemplate::new(resources);
    let hid = aml::Name::new("_HID".into(), hid);
    let crs = aml::Name::new("_CRS".into(), &crs);
    let mut children: Vec<&dyn Aml> = vec![&hid];
    children.extend_from_slice(extra);
    children.push(&crs);
    aml::Device::new(name.into(), children).to_aml_bytes(sink);
}

fn legacy_devices_aml(sink: &mut Vec<u8>) {
    emit_device(
        sink,
        "COM1",
        &aml::EISAName::new("PNP0501"),
        &[&aml::Name::new("_UID".into(), &aml::ZERO)],
        vec![
            &aml::IO::new(COM1_PORT, COM1_PORT, 1, 8),
            &aml::Interrupt::new(true, true, false, false, COM1_IRQ),
        ],
    );
    emit_device(
        sink,
        "PS2_",
        &aml::EISAName::new("PNP0303"),
        &[],
        vec![
            &aml::IO::new(I8042_DATA_PORT, I8042_DATA_PORT, 1, 1),
            &aml::IO::new(I8042_CMD_PORT, I8042_CMD_PORT, 1, 1),
            &aml::Interrupt::new(true, true, false, false, I8042_IRQ),
        ],
    );
    // No IRQ: the RTC raises no alarm/update interrupts, so Linux must not wait for them.
    emit_device(
        sink,
        "RTC_",
        &aml::EISAName::new("PNP0B00"),
        &[],
        vec![&aml::IO::new(CMOS_PORT, CMOS_PORT, 1, 2)],
    );
}

fn virtio_device_aml(index: usize, dev: &MmioDeviceInfo, sink: &mut Vec<u8>) {
    let uid = index as u32;
    emit_device(
        sink,
        &format!("V{index:03}"),
        &"LNRO0005",
        &[&aml::Name::new("_UID".into(), &uid), &aml::Name::new("_CCA".into(), &aml::ONE)],
        vec![
            &aml::Memory32Fixed::new(true, dev.addr.0 as u32, dev.len as u32),
            &aml::Interrupt::new(true, true, false, false, dev.irq),
        ],
    );
}

/// The power button of a hardware-reduced platform (the FADT's PWR_BUTTON flag says it is a
/// control-method device): `PWRB` (PNP0C0C), and a Generic Event Device (ACPI0013) whose
/// interrupt [`POWER_BUTTON_IRQ`] runs `_EVT`, which notifies `PWRB` with 0x80 ("pressed").
/// Linux's button driver turns that into KEY_POWER on the "Power Button" input device.
fn power_button_aml(sink: &mut Vec<u8>) {
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C"));
    aml::Device::new("PWRB".into(), vec![&hid, &uid]).to_aml_bytes(sink);
    let pwrb = aml::Path::new("\\_SB_.PWRB");
    let pressed: u8 = 0x80;
    let notify = aml::Notify::new(&pwrb, &pressed);
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&notify]);
    emit_device(
        sink,
        "GED_",
        &"ACPI0013",
        &[&uid, &evt],
        vec![&aml::Interrupt::new(true, true, false, false, POWER_BUTTON_IRQ)],
    );
}

/// The DSDT: `_S5_` and, under `\_SB_`, COM1, the PS/2 controller, the RTC, the power button
/// and the virtio-mmio devices.
pub fn build_dsdt(virtio: &[MmioDeviceInfo]) -> Vec<u8> {
    let mut devices = Vec::new();
    legacy_devices_aml(&mut devices);
    power_button_aml(&mut devices);
    for (i, dev) in virtio.iter().enumerate() {
        virtio_device_aml(i, dev, &mut devices);
    }
    let mut body = Vec::new();
    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&ACPI_S5_SLEEP_TYPE])).to_aml_bytes(&mut body);
    body.extend_from_slice(&aml::Scope::raw("\\_SB_".into(), devices));
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"VMRDSDT ", OEM_REVISION);
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}

fn io_reg(port: u16) -> GAS {
    GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, u64::from(port))
}

/// The FADT: hardware-reduced, reset register supported, DSDT at `dsdt_addr`.
pub fn build_fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, *b"VMRFACP ", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.reset_reg = io_reg(ACPI_PM_PORT + 2);
    fadt.reset_value = ACPI_RESET_VALUE;
    fadt.sleep_control_reg = io_reg(ACPI_PM_PORT);
    fadt.sleep_status_reg = io_reg(ACPI_PM_PORT + 1);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"VMRVMRVM").into();
    table_bytes(&fadt.finalize())
}

/// The MADT: one local APIC per vCPU (APIC id = index), the IOAPIC at GSI base 0, LINT1 = NMI.
pub fn build_madt(vcpus: u32) -> Vec<u8> {
    let mut madt = Sdt::new(*b"APIC", 44, 5, OEM_ID, *b"VMRMADT ", OEM_REVISION);
    madt.write_u32(36, LAPIC_START as u32);
    madt.write_u32(40, MADT_PCAT_COMPAT);
    for id in 0..vcpus.min(255) {
        let mut lapic = vec![0u8, 8, id as u8, id as u8];
        lapic.extend_from_slice(&MADT_CPU_ENABLED.to_le_bytes());
        madt.append_slice(&lapic);
    }
    let mut ioapic = vec![1u8, 12, ioapic_id(vcpus), 0];
    ioapic.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    ioapic.extend_from_slice(&0u32.to_le_bytes());
    madt.append_slice(&ioapic);
    // Local APIC NMI: all processors (0xff), flags conforming, LINT1.
    madt.append_slice(&[4, 6, 0xff, 0, 0, 1]);
    madt.as_slice().to_vec()
}

fn align8(v: u64) -> u64 {
    (v + 7) & !7
}

/// Writes RSDP, XSDT, FADT, MADT and DSDT from [`RSDP_START`]; returns the RSDP address.
pub fn create_acpi_tables(mem: &GuestMemory, vcpus: u32, virtio: &[MmioDeviceInfo]) -> Result<GuestAddress> {
    let dsdt_addr = align8(RSDP_START + Rsdp::len() as u64);
    let dsdt = build_dsdt(virtio);
    let fadt_addr = align8(dsdt_addr + dsdt.len() as u64);
    let fadt = build_fadt(dsdt_addr);
    let madt_addr = align8(fadt_addr + fadt.len() as u64);
    let madt = build_madt(vcpus);
    let xsdt_addr = align8(madt_addr + madt.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, *b"VMRXSDT ", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = table_bytes(&xsdt);
    if xsdt_addr + xsdt.len() as u64 > ACPI_END {
        return Err(ArchError::TooManyVirtioDevices { count: virtio.len(), max: 0 });
    }
    let rsdp = table_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    for (what, addr, bytes) in [
        ("ACPI RSDP", RSDP_START, &rsdp),
        ("ACPI DSDT", dsdt_addr, &dsdt),
        ("ACPI FADT", fadt_addr, &fadt),
        ("ACPI MADT", madt_addr, &madt),
        ("ACPI XSDT", xsdt_addr, &xsdt),
    ] {
        mem.write_slice(bytes, GuestAddress(addr)).map_err(write_err(what))?;
    }
    Ok(GuestAddress(RSDP_START))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Reads a table at `addr`, checks its checksum and returns it.
    fn table(mem: &GuestMemory, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
        let hdr = read(mem, addr, 36);
        assert_eq!(&hdr[..4], sig);
        let len = u32::from_le_bytes(hdr[4..8].try_into().unwrap()) as usize;
        let t = read(mem, addr, len);
        assert_eq!(sum(&t), 0, "{} checksum", String::from_utf8_lossy(sig));
        t
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn tables_parse_back() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let virtio = [MmioDeviceInfo { addr: GuestAddress(0xd000_0000), len: 0x1000, irq: 5 }];
        for vcpus in [1u32, 4, 254] {
            let rsdp_addr = create_acpi_tables(&mem, vcpus, &virtio).unwrap();
            let rsdp = read(&mem, rsdp_addr.0, 36);
            assert_eq!(&rsdp[..8], b"RSD PTR ");
            assert_eq!(sum(&rsdp[..20]), 0);
            assert_eq!(sum(&rsdp), 0);
            let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
            assert_eq!(xsdt.len(), 36 + 16);
            let fadt = table(&mem, u64_at(&xsdt, 36), b"FACP");
            let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
            assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
            assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
            assert_eq!(u64_at(&fadt, 116 + 4), u64::from(ACPI_PM_PORT + 2), "reset register address");
            assert_eq!(fadt[128], ACPI_RESET_VALUE);
            assert_eq!(u64_at(&fadt, 244 + 4), u64::from(ACPI_PM_PORT), "sleep control address");
            let dsdt = table(&mem, u64_at(&fadt, 140), b"DSDT");
            assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
            for name in [&b"ACPI0013"[..], b"PWRB", b"GED_", b"_EVT"] {
                assert!(dsdt.windows(name.len()).any(|w| w == name), "power button AML");
            }
            assert!(dsdt.windows(4).any(|w| w == b"COM1"));
            assert!(dsdt.windows(8).any(|w| w == b"LNRO0005"));
            let madt = table(&mem, u64_at(&xsdt, 44), b"APIC");
            let (mut off, mut cpus, mut ioapics) = (44, 0u32, 0);
            while off < madt.len() {
                match madt[off] {
                    0 => {
                        assert_eq!(madt[off + 3] as u32, cpus);
                        cpus += 1;
                    }
                    1 => ioapics += 1,
                    _ => {}
                }
                off += madt[off + 1] as usize;
            }
            assert_eq!(off, madt.len());
            assert_eq!((cpus, ioapics), (vcpus, 1));
        }
    }
}
