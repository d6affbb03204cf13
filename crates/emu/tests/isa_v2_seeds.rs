//! Seeds of the `cpu` fuzz target (`fuzz/seeds/cpu/v2-*`) that use the x86-64-v2 instructions
//! (SSE4.2 string compares and CRC32, SSSE3/SSE4.1 shuffles and tests, POPCNT, CMPXCHG16B,
//! LAHF/SAHF), so that the fuzzer mutates from inputs that reach them. Run through the fuzz
//! harness here, each must report (port 0x3f8) what the host CPU computes for the same data.

mod common;

use common::fuzz_cpu::{long_mode_seed, run, world};
use common::DONE_PORT;
use iced_x86::code_asm::*;
use std::arch::x86_64::*;

const OUT: u16 = 0x3f8;
const HAY: &[u8; 16] = b"find the needle!";
const NEEDLE: &[u8; 16] = b"needle\0\0\0\0\0\0\0\0\0\0";
const SHUF: [u8; 16] = [15, 14, 13, 12, 11, 10, 9, 8, 0x80, 6, 5, 4, 3, 2, 1, 0];

/// Enables SSE (CR4.OSFXSR; the harness starts with CR4.PAE only); R8 holds the port.
fn prologue(a: &mut CodeAssembler) {
    a.mov(rax, cr4).unwrap();
    a.or(eax, 0x600).unwrap();
    a.mov(cr4, rax).unwrap();
    a.mov(r8d, OUT as u32).unwrap();
}

/// `out 0x3f8, eax`.
fn report(a: &mut CodeAssembler) {
    a.mov(edx, r8d).unwrap();
    a.out(dx, eax).unwrap();
}

fn assemble(f: impl FnOnce(&mut CodeAssembler)) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    prologue(&mut a);
    f(&mut a);
    a.hlt().unwrap();
    a.assemble(common::CODE).unwrap()
}

/// SSE4.2: PCMPISTRI (substring), PCMPISTRM (set membership as a byte mask), PCMPESTRI
/// (explicit lengths), CRC32 over the haystack's two quadwords.
fn strings() -> Vec<u8> {
    assemble(|a| {
        let (mut hay, mut hay8, mut needle) = (a.create_label(), a.create_label(), a.create_label());
        a.movdqu(xmm1, xmmword_ptr(needle)).unwrap();
        a.movdqu(xmm2, xmmword_ptr(hay)).unwrap();
        a.pcmpistri(xmm1, xmm2, 0x0c).unwrap();
        a.mov(eax, ecx).unwrap();
        report(a);
        a.pcmpistrm(xmm1, xmm2, 0x40).unwrap();
        a.pmovmskb(eax, xmm0).unwrap();
        report(a);
        a.mov(eax, 3).unwrap();
        a.mov(edx, 16).unwrap();
        a.pcmpestri(xmm1, xmm2, 0x0c).unwrap();
        a.mov(eax, ecx).unwrap();
        report(a);
        a.mov(eax, u32::MAX).unwrap();
        a.crc32(rax, qword_ptr(hay)).unwrap();
        a.crc32(rax, qword_ptr(hay8)).unwrap();
        report(a);
        a.hlt().unwrap();
        a.set_label(&mut hay).unwrap();
        a.db(&HAY[..8]).unwrap();
        a.set_label(&mut hay8).unwrap();
        a.db(&HAY[8..]).unwrap();
        a.set_label(&mut needle).unwrap();
        a.db(NEEDLE).unwrap();
    })
}

/// SSSE3/SSE4.1: PSHUFB (reverse with one zeroed byte), PALIGNR, PTEST, PMULLD, PHADDW.
fn shuffles() -> Vec<u8> {
    assemble(|a| {
        let (mut hay, mut shuf) = (a.create_label(), a.create_label());
        a.movdqu(xmm1, xmmword_ptr(hay)).unwrap();
        a.movdqu(xmm2, xmmword_ptr(shuf)).unwrap();
        a.movdqa(xmm3, xmm1).unwrap();
        a.pshufb(xmm3, xmm2).unwrap();
        a.pextrd(eax, xmm3, 1).unwrap();
        report(a);
        a.movdqa(xmm4, xmm1).unwrap();
        a.palignr(xmm4, xmm2, 5).unwrap();
        a.movd(eax, xmm4).unwrap();
        report(a);
        a.ptest(xmm3, xmm2).unwrap();
        a.lahf().unwrap();
        a.movzx(eax, ah).unwrap();
        report(a);
        a.pmulld(xmm1, xmm2).unwrap();
        a.phaddw(xmm1, xmm1).unwrap();
        a.pextrd(eax, xmm1, 3).unwrap();
        report(a);
        a.hlt().unwrap();
        a.set_label(&mut hay).unwrap();
        a.db(HAY).unwrap();
        a.set_label(&mut shuf).unwrap();
        a.db(&SHUF).unwrap();
    })
}

/// POPCNT, CMPXCHG16B on the stack (one success, one failure), SAHF/LAHF.
fn scalar() -> Vec<u8> {
    assemble(|a| {
        a.mov(rax, 0x0123_4567_89ab_cdefu64).unwrap();
        a.popcnt(rax, rax).unwrap();
        report(a);
        a.and(rsp, -16).unwrap();
        a.sub(rsp, 16).unwrap();
        a.xor(eax, eax).unwrap();
        a.xor(edx, edx).unwrap();
        a.mov(qword_ptr(rsp), rax).unwrap();
        a.mov(qword_ptr(rsp + 8), rax).unwrap();
        a.mov(ebx, 0x1111).unwrap();
        a.mov(ecx, 0x2222).unwrap();
        a.cmpxchg16b(xmmword_ptr(rsp)).unwrap(); // equal: stores rcx:rbx
        a.cmpxchg16b(xmmword_ptr(rsp)).unwrap(); // not equal: loads rdx:rax
        a.setz(bl).unwrap();
        a.movzx(ebx, bl).unwrap();
        a.add(eax, edx).unwrap();
        a.add(eax, ebx).unwrap();
        report(a);
        a.mov(ah, 0xd5).unwrap();
        a.sahf().unwrap();
        a.mov(ah, 0).unwrap();
        a.lahf().unwrap();
        a.movzx(eax, ah).unwrap();
        report(a);
    })
}

/// What the host CPU computes for the same data, in report order.
#[target_feature(enable = "sse4.2,ssse3,sse4.1,popcnt")]
fn host_values() -> [Vec<u64>; 3] {
    // SAFETY: the test runs on x86-64 hosts with these features (checked by the caller); the
    // loads read 16-byte arrays.
    unsafe {
        let hay = _mm_loadu_si128(HAY.as_ptr() as *const __m128i);
        let needle = _mm_loadu_si128(NEEDLE.as_ptr() as *const __m128i);
        let shuf = _mm_loadu_si128(SHUF.as_ptr() as *const __m128i);
        let w = |i: usize| u64::from_le_bytes(HAY[i..i + 8].try_into().unwrap());
        let crc = _mm_crc32_u64(_mm_crc32_u64(u32::MAX as u64, w(0)), w(8));
        let strings = vec![
            _mm_cmpistri::<0x0c>(needle, hay) as u64,
            _mm_movemask_epi8(_mm_cmpistrm::<0x40>(needle, hay)) as u64,
            _mm_cmpestri::<0x0c>(needle, 3, hay, 16) as u64,
            crc & 0xffff_ffff,
        ];
        let rev = _mm_shuffle_epi8(hay, shuf);
        let aligned = _mm_alignr_epi8::<5>(hay, shuf);
        let zf = _mm_testz_si128(rev, shuf) as u64;
        let cf = _mm_testc_si128(rev, shuf) as u64;
        let mul = _mm_mullo_epi32(hay, shuf);
        let hadd = _mm_hadd_epi16(mul, mul);
        let shuffles = vec![
            _mm_extract_epi32::<1>(rev) as u32 as u64,
            _mm_cvtsi128_si32(aligned) as u32 as u64,
            2 | zf << 6 | cf,
            _mm_extract_epi32::<3>(hadd) as u32 as u64,
        ];
        let scalar = vec![0x0123_4567_89ab_cdefu64.count_ones() as u64, 0x1111 + 0x2222, 0xd5 & 0xd7 | 2];
        [strings, shuffles, scalar]
    }
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![("v2-strings", strings()), ("v2-shuffles", shuffles()), ("v2-scalar", scalar())]
        .into_iter()
        .map(|(n, code)| (n, long_mode_seed(&code)))
        .collect()
}

#[test]
fn v2_seeds_report_what_the_host_computes() {
    let features = ["sse4.2", "ssse3", "sse4.1", "popcnt"];
    if !(is_x86_feature_detected!("sse4.2") && is_x86_feature_detected!("popcnt")) {
        panic!("this host lacks one of {features:?}: the seeds' expected values come from it");
    }
    // SAFETY: the features are present (checked above).
    let want = unsafe { host_values() };
    let mut w = world();
    for ((name, data), want) in seeds().into_iter().zip(want) {
        run(&mut w, &data);
        let pio = w.g.ops.pio.lock().unwrap().clone();
        let got: Vec<u64> = pio.iter().filter(|(p, _)| *p == OUT).map(|(_, v)| *v).collect();
        assert_eq!(got, want, "{name}: {pio:x?}");
        assert!(w.g.cpu().halted, "{name} ran to its HLT");
        assert!(!pio.iter().any(|(p, _)| *p == DONE_PORT), "{name}: no exception");
    }
}

/// `fuzz/seeds/cpu/v2-*` hold exactly what `seeds` generates. Regenerate with
/// `VMR_WRITE_FUZZ_SEEDS=1 cargo test -p vmr-emu --test isa_v2_seeds seed_files`.
#[test]
fn seed_files_match_the_generator() {
    common::check_seed_files(seeds());
}
