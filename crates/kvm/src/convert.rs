//! Conversions between KVM's `kvm_*` structs and the backend-neutral state of `vmr-hypervisor`.
//!
//! Every conversion is lossless for the fields the neutral structs carry, so state read from
//! KVM, stored in a snapshot and written back is unchanged. Fields only KVM has (padding,
//! `interrupt_bitmap`) are taken from a base value the caller read from KVM. The x87/SSE state
//! goes through the XSAVE area instead of `kvm_fpu` (see `xsave.rs`).

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_dtable, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs,
};
use vmr_hypervisor::{CpuidEntry, DescriptorTable, LapicState, MsrEntry, Regs, Segment, SpecialRegs};

pub fn regs_from_kvm(r: &kvm_regs) -> Regs {
    Regs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    }
}

pub fn regs_to_kvm(r: &Regs) -> kvm_regs {
    kvm_regs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    }
}

pub fn segment_from_kvm(s: &kvm_segment) -> Segment {
    Segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present != 0,
        dpl: s.dpl,
        db: s.db != 0,
        s: s.s != 0,
        l: s.l != 0,
        g: s.g != 0,
        avl: s.avl != 0,
        unusable: s.unusable != 0,
    }
}

pub fn segment_to_kvm(s: &Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: u8::from(s.present),
        dpl: s.dpl,
        db: u8::from(s.db),
        s: u8::from(s.s),
        l: u8::from(s.l),
        g: u8::from(s.g),
        avl: u8::from(s.avl),
        unusable: u8::from(s.unusable),
        padding: 0,
    }
}

fn dtable_from_kvm(d: &kvm_dtable) -> DescriptorTable {
    DescriptorTable { base: d.base, limit: d.limit }
}

fn dtable_to_kvm(d: &DescriptorTable) -> kvm_dtable {
    kvm_dtable { base: d.base, limit: d.limit, padding: [0; 3] }
}

pub fn sregs_from_kvm(s: &kvm_sregs) -> SpecialRegs {
    SpecialRegs {
        cs: segment_from_kvm(&s.cs),
        ds: segment_from_kvm(&s.ds),
        es: segment_from_kvm(&s.es),
        fs: segment_from_kvm(&s.fs),
        gs: segment_from_kvm(&s.gs),
        ss: segment_from_kvm(&s.ss),
        tr: segment_from_kvm(&s.tr),
        ldt: segment_from_kvm(&s.ldt),
        gdt: dtable_from_kvm(&s.gdt),
        idt: dtable_from_kvm(&s.idt),
        cr0: s.cr0,
        cr2: s.cr2,
        cr3: s.cr3,
        cr4: s.cr4,
        cr8: s.cr8,
        efer: s.efer,
        apic_base: s.apic_base,
    }
}

/// Builds `kvm_sregs` from `s`, keeping the pending-interrupt bitmap of `base` (read from KVM).
pub fn sregs_to_kvm(s: &SpecialRegs, base: &kvm_sregs) -> kvm_sregs {
    kvm_sregs {
        cs: segment_to_kvm(&s.cs),
        ds: segment_to_kvm(&s.ds),
        es: segment_to_kvm(&s.es),
        fs: segment_to_kvm(&s.fs),
        gs: segment_to_kvm(&s.gs),
        ss: segment_to_kvm(&s.ss),
        tr: segment_to_kvm(&s.tr),
        ldt: segment_to_kvm(&s.ldt),
        gdt: dtable_to_kvm(&s.gdt),
        idt: dtable_to_kvm(&s.idt),
        cr0: s.cr0,
        cr2: s.cr2,
        cr3: s.cr3,
        cr4: s.cr4,
        cr8: s.cr8,
        efer: s.efer,
        apic_base: s.apic_base,
        interrupt_bitmap: base.interrupt_bitmap,
    }
}

pub fn cpuid_from_kvm(e: &kvm_cpuid_entry2) -> CpuidEntry {
    CpuidEntry {
        function: e.function,
        index: e.index,
        flags: e.flags,
        eax: e.eax,
        ebx: e.ebx,
        ecx: e.ecx,
        edx: e.edx,
    }
}

pub fn cpuid_to_kvm(e: &CpuidEntry) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function: e.function,
        index: e.index,
        flags: e.flags,
        eax: e.eax,
        ebx: e.ebx,
        ecx: e.ecx,
        edx: e.edx,
        padding: [0; 3],
    }
}

pub fn msr_from_kvm(e: &kvm_msr_entry) -> MsrEntry {
    MsrEntry { index: e.index, data: e.data }
}

pub fn msr_to_kvm(e: &MsrEntry) -> kvm_msr_entry {
    kvm_msr_entry { index: e.index, reserved: 0, data: e.data }
}

pub fn lapic_from_kvm(l: &kvm_lapic_state) -> LapicState {
    // `c_char` is i8 on x86-64: reinterpret each byte.
    LapicState { regs: l.regs.iter().map(|&b| b as u8).collect() }
}

/// Fails (returns `None`) if `l` is not exactly [`LapicState::SIZE`] bytes long.
pub fn lapic_to_kvm(l: &LapicState) -> Option<kvm_lapic_state> {
    if l.regs.len() != LapicState::SIZE {
        return None;
    }
    let mut out = kvm_lapic_state::default();
    for (dst, &src) in out.regs.iter_mut().zip(l.regs.iter()) {
        *dst = src as std::os::raw::c_char;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_segment(seed: u8) -> Segment {
        Segment {
            base: 0x1234_5678_0000 + u64::from(seed),
            limit: 0xfffff,
            selector: 0x8 * u16::from(seed),
            type_: seed & 0xf,
            present: true,
            dpl: seed & 3,
            db: seed & 1 == 0,
            s: true,
            l: seed & 1 == 1,
            g: true,
            avl: seed & 2 == 2,
            unusable: false,
        }
    }

    #[test]
    fn regs_round_trip() {
        let regs = Regs {
            rax: 1,
            rbx: 2,
            rcx: 3,
            rdx: 4,
            rsi: 5,
            rdi: 6,
            rsp: 7,
            rbp: 8,
            r8: 9,
            r9: 10,
            r10: 11,
            r11: 12,
            r12: 13,
            r13: 14,
            r14: 15,
            r15: u64::MAX,
            rip: 0xffff_ffff_8100_0000,
            rflags: 0x246,
        };
        let k = regs_to_kvm(&regs);
        assert_eq!(k.r15, u64::MAX);
        assert_eq!(k.rflags, 0x246);
        assert_eq!(regs_from_kvm(&k), regs);
    }

    #[test]
    fn sregs_round_trip_keeps_interrupt_bitmap() {
        let sregs = SpecialRegs {
            cs: sample_segment(1),
            ds: sample_segment(2),
            es: sample_segment(3),
            fs: sample_segment(4),
            gs: sample_segment(5),
            ss: sample_segment(6),
            tr: Segment { unusable: true, ..sample_segment(7) },
            ldt: sample_segment(8),
            gdt: DescriptorTable { base: 0x500, limit: 0x1f },
            idt: DescriptorTable { base: 0x520, limit: 0xfff },
            cr0: 0x8000_0011,
            cr2: 0xdead_beef,
            cr3: 0x9000,
            cr4: 0x20,
            cr8: 0xf,
            efer: 0x500,
            apic_base: 0xfee0_0900,
        };
        let base = kvm_sregs { interrupt_bitmap: [1, 2, 3, 4], ..Default::default() };
        let k = sregs_to_kvm(&sregs, &base);
        assert_eq!(k.interrupt_bitmap, [1, 2, 3, 4]);
        assert_eq!(k.cs.l, 1);
        assert_eq!(k.tr.unusable, 1);
        assert_eq!(k.gdt.limit, 0x1f);
        assert_eq!(sregs_from_kvm(&k), sregs);
    }

    #[test]
    fn segment_flags_map_to_bytes() {
        let seg = Segment { present: true, g: true, ..Default::default() };
        let k = segment_to_kvm(&seg);
        assert_eq!((k.present, k.g, k.l, k.db), (1, 1, 0, 0));
        // KVM may report any non-zero byte as true.
        let k2 = kvm_segment { s: 0xff, ..k };
        assert!(segment_from_kvm(&k2).s);
    }

    #[test]
    fn cpuid_and_msr_round_trip() {
        let e = CpuidEntry {
            function: 7,
            index: 1,
            flags: CpuidEntry::FLAG_INDEXED,
            eax: 1,
            ebx: 2,
            ecx: 3,
            edx: 4,
        };
        assert_eq!(cpuid_from_kvm(&cpuid_to_kvm(&e)), e);
        let m = MsrEntry { index: 0xc000_0080, data: 0xd01 };
        assert_eq!(msr_from_kvm(&msr_to_kvm(&m)), m);
    }

    #[test]
    fn lapic_round_trip_and_size_check() {
        let mut lapic = LapicState::default();
        lapic.set_reg(0x20, 0x0100_0000);
        lapic.set_reg(0x350, 0x700);
        lapic.regs[0x3ff] = 0xff;
        let k = lapic_to_kvm(&lapic).expect("right size");
        assert_eq!(k.regs[0x3ff] as u8, 0xff);
        assert_eq!(lapic_from_kvm(&k), lapic);
        assert!(lapic_to_kvm(&LapicState { regs: vec![0; 10] }).is_none());
    }
}
