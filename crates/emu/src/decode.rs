//! Decoding: iced-x86 instructions turned into [`Op`]s (handler + pre-resolved operands),
//! grouped into blocks cached by (physical address, RIP, code size).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use iced_x86::{Code, Decoder, DecoderError, DecoderOptions, FlowControl, Instruction, OpKind, Register};

use crate::cpu::{reg_slot, Cpu, Ex, RegSlot};
use crate::exec;
use crate::mem::Access;

/// An instruction handler.
pub type Handler = fn(&mut Cpu, &Op) -> Ex;

/// A pre-resolved operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opnd {
    None,
    Gpr {
        idx: u8,
        size: u8,
    },
    High(u8),
    Seg(u8),
    Imm(u64),
    /// The instruction's memory operand ([`Op::m`]).
    Mem,
    /// Anything else (control/debug registers, branch targets, string operands): the handler
    /// reads the instruction itself.
    Other,
}

/// A pre-resolved memory operand: `seg:(disp + base + index << scale) & amask`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemRef {
    pub disp: u64,
    pub amask: u64,
    /// GPR number, or 16 for none.
    pub base: u8,
    pub index: u8,
    pub scale: u8,
    pub seg: u8,
}

/// A decoded instruction ready to execute.
#[derive(Clone, Debug)]
pub struct Op {
    pub exec: Handler,
    pub o: [Opnd; 3],
    pub m: MemRef,
    /// Operand size in bytes (of operand 0, or the instruction's natural size).
    pub size: u8,
    /// Size of the memory operand in bytes (0 if none); for LOOP/JrCXZ the counter size.
    pub msize: u8,
    /// Condition code nibble for Jcc/SETcc/CMOVcc (0xff if none).
    pub cc: u8,
    /// Locked read-modify-write of memory (LOCK prefix, or XCHG with a memory operand).
    pub locked: bool,
    pub len: u8,
    /// GPR number of each operand that is a GPR (0 otherwise): what the specialised handlers
    /// read instead of matching on `o` (fits in the 128 bytes of an `Op`).
    pub g: [u8; 3],
    pub ins: Instruction,
}

// Two cache lines per decoded op; keep it from growing past them.
const _: () = assert!(std::mem::size_of::<Op>() <= 128);

const NO_REG: u8 = 16;

fn gpr_number(r: Register) -> u8 {
    match reg_slot(r) {
        RegSlot::Gpr { idx, .. } => idx,
        _ => NO_REG,
    }
}

fn operand(ins: &Instruction, i: u32) -> Opnd {
    match ins.op_kind(i) {
        OpKind::Register => match reg_slot(ins.op_register(i)) {
            RegSlot::Gpr { idx, size } => Opnd::Gpr { idx, size },
            RegSlot::High(idx) => Opnd::High(idx),
            RegSlot::Seg(s) => Opnd::Seg(s),
            RegSlot::Other => Opnd::Other,
        },
        OpKind::Memory => Opnd::Mem,
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
            Opnd::Imm(ins.near_branch_target())
        }
        OpKind::Immediate8
        | OpKind::Immediate8_2nd
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate64
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32to64 => Opnd::Imm(ins.immediate(i)),
        _ => Opnd::Other,
    }
}

fn is_memory_kind(k: OpKind) -> bool {
    !matches!(
        k,
        OpKind::Register
            | OpKind::NearBranch16
            | OpKind::NearBranch32
            | OpKind::NearBranch64
            | OpKind::FarBranch16
            | OpKind::FarBranch32
            | OpKind::Immediate8
            | OpKind::Immediate8_2nd
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
    )
}

fn mem_ref(ins: &Instruction, bitness: u32) -> MemRef {
    let (base, index) = (ins.memory_base(), ins.memory_index());
    let addr_size = match (base, index) {
        (Register::RIP, _) => 8,
        (Register::EIP, _) => 4,
        (Register::None, Register::None) => match ins.memory_displ_size() {
            2 | 4 | 8 => ins.memory_displ_size(),
            _ => bitness / 8,
        },
        (Register::None, i) => i.size() as u32,
        (b, _) => b.size() as u32,
    };
    let amask = match addr_size {
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    };
    let rip_rel = matches!(base, Register::RIP | Register::EIP);
    MemRef {
        disp: ins.memory_displacement64(),
        amask,
        base: if rip_rel { NO_REG } else { gpr_number(base) },
        index: gpr_number(index),
        scale: ins.memory_index_scale().trailing_zeros() as u8,
        seg: (ins.memory_segment() as u32).wrapping_sub(Register::ES as u32).min(5) as u8,
    }
}

/// Natural operand size of `ins` in bytes.
fn op_size(ins: &Instruction, bitness: u32) -> u8 {
    use iced_x86::Mnemonic as M;
    match ins.mnemonic() {
        M::Cbw | M::Cwd => return 2,
        M::Cwde | M::Cdq => return 4,
        M::Cdqe | M::Cqo => return 8,
        _ => {}
    }
    // Implicit stack operand sizes iced does not express as an operand or a fixed RSP change.
    match ins.code() {
        Code::Leavew | Code::Enterw_imm16_imm8 | Code::Pushaw | Code::Popaw => return 2,
        Code::Leaved | Code::Enterd_imm16_imm8 | Code::Pushad | Code::Popad => return 4,
        Code::Leaveq | Code::Enterq_imm16_imm8 => return 8,
        _ => {}
    }
    let k = ins.op0_kind();
    let s = if ins.op_count() > 0 && k == OpKind::Register {
        ins.op0_register().size()
    } else if ins.op_count() > 0 && is_memory_kind(k) {
        ins.memory_size().size()
    } else {
        let spi = ins.stack_pointer_increment().unsigned_abs() as usize;
        if matches!(spi, 2 | 4 | 8) {
            spi
        } else if bitness == 16 {
            2
        } else {
            4
        }
    };
    s.clamp(1, 8) as u8
}

/// Builds the executable form of `ins`.
pub fn make_op(ins: &Instruction, bitness: u32) -> Op {
    let exec = exec::handler_for(ins);
    let mut m = mem_ref(ins, bitness);
    if let Some(a) = string_addr_size(ins) {
        m.amask = crate::flags::mask(a);
    }
    let o = [operand(ins, 0), operand(ins, 1), operand(ins, 2)];
    let g = o.map(|x| match x {
        Opnd::Gpr { idx, .. } => idx & 15,
        _ => 0,
    });
    let mut op = Op {
        exec,
        o,
        g,
        m,
        size: op_size(ins, bitness),
        msize: msize(ins),
        cc: (ins.condition_code() as u8).wrapping_sub(1),
        locked: ins.has_lock_prefix()
            || (ins.mnemonic() == iced_x86::Mnemonic::Xchg
                && (0..ins.op_count()).any(|i| ins.op_kind(i) == OpKind::Memory)),
        len: ins.len() as u8,
        ins: *ins,
    };
    if let Some(h) = exec::fast::specialise(ins, &op) {
        op.exec = h;
    }
    op
}

/// Address size of a string instruction's implicit operands.
fn string_addr_size(ins: &Instruction) -> Option<u8> {
    (0..ins.op_count()).find_map(|i| match ins.op_kind(i) {
        OpKind::MemorySegSI | OpKind::MemorySegDI | OpKind::MemoryESDI => Some(2),
        OpKind::MemorySegESI | OpKind::MemorySegEDI | OpKind::MemoryESEDI => Some(4),
        OpKind::MemorySegRSI | OpKind::MemorySegRDI | OpKind::MemoryESRDI => Some(8),
        _ => None,
    })
}

fn msize(ins: &Instruction) -> u8 {
    use iced_x86::Mnemonic as M;
    match ins.mnemonic() {
        M::Jcxz => 2,
        M::Jecxz => 4,
        M::Jrcxz => 8,
        M::Loop | M::Loope | M::Loopne => {
            let name = format!("{:?}", ins.code());
            if name.ends_with("_RCX") {
                8
            } else if name.ends_with("_ECX") {
                4
            } else {
                2
            }
        }
        _ => {
            let has_mem = (0..ins.op_count()).any(|i| is_memory_kind(ins.op_kind(i)));
            if has_mem {
                ins.memory_size().size().min(255) as u8
            } else {
                0
            }
        }
    }
}

/// A run of instructions from one page, ending at a control transfer or the page end.
pub struct Block {
    pub ops: Vec<Op>,
    /// The code bytes the ops were decoded from (empty for uncached blocks): compared with
    /// guest memory before the block's first execution in each code epoch
    /// ([`crate::cpu::Cpu::code_epoch`]), so writes the CPU did not see (DMA, other vCPUs)
    /// cannot run stale code past the next serializing event.
    pub bytes: Box<[u8]>,
    /// The code epoch in which `bytes` last matched guest memory.
    pub checked: std::cell::Cell<u64>,
    /// The last two successors seen, as (RIP, block index): a hint that spares the jump-cache
    /// probe. Always confirmed against the full key of the slab entry it names, so a stale or
    /// reused index only costs a miss.
    next: [(u64, u32); 2],
    /// Some op is a locked read-modify-write: the run loop sets up `Cpu::locked` around it.
    pub locked: bool,
    /// Hotness and translation (`crate::jit`); the translation dies with the block.
    pub jit: crate::jit::Slot,
}

impl Block {
    fn new(ops: Vec<Op>, bytes: Box<[u8]>) -> Block {
        let locked = ops.iter().any(|o| o.locked);
        Block {
            ops,
            bytes,
            next: [(0, u32::MAX); 2],
            locked,
            checked: std::cell::Cell::new(u64::MAX),
            jit: Default::default(),
        }
    }

    /// True if guest memory at `host` (host address of the block's first byte, whose page
    /// holds all of the block) still holds the bytes the block was decoded from.
    #[inline(always)]
    pub fn matches(&self, host: usize) -> bool {
        // Blocks never cross a page and `host` points into a mapped RAM page at the block's
        // offset, so `bytes.len()` bytes are readable there. The guest may change them
        // concurrently; a racy read only causes a spurious mismatch or a miss that the
        // architecture allows (cross-modifying code needs serialisation in the guest).
        // Compared inline, 16 bytes at a time with the differences OR-ed together (a mismatch
        // is rare, so there is one branch at the end): a call to memcmp per block execution
        // cost more than the comparison itself.
        let want = &*self.bytes;
        let n = want.len();
        let load8 = |p: *const u8| {
            // SAFETY: callers pass `host + i` or `want + i` with `i + 8 <= n`: inside a range
            // of `n` readable bytes (see above).
            unsafe { std::ptr::read_unaligned(p as *const u64) }
        };
        #[cfg(not(target_arch = "x86_64"))]
        let load16 = |p: *const u8| {
            // SAFETY: as above, with `i + 16 <= n`.
            unsafe { std::ptr::read_unaligned(p as *const u128) }
        };
        if n < 8 {
            return (0..n).all(|i| {
                // SAFETY: `i < n`, inside the `n` readable bytes at `host`.
                unsafe { *((host + i) as *const u8) == want[i] }
            });
        }
        if n < 16 {
            // Two 8-byte loads, the second ending at the block's end.
            let j = n - 8;
            return load8(host as *const u8) == load8(want.as_ptr())
                && load8((host + j) as *const u8) == load8(want[j..].as_ptr());
        }
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::*;
            let load = |p: *const u8| {
                // SAFETY: SSE2 is part of x86-64; callers pass `host + i` or `want + i` with
                // `i + 16 <= n`, inside the `n` readable bytes.
                unsafe { _mm_loadu_si128(p as *const __m128i) }
            };
            // SAFETY (all intrinsics below): SSE2 register operations, always available on x86-64.
            let mut diff = unsafe { _mm_setzero_si128() };
            let mut i = 0;
            while i + 16 <= n {
                let d = unsafe { _mm_xor_si128(load((host + i) as *const u8), load(want[i..].as_ptr())) };
                diff = unsafe { _mm_or_si128(diff, d) };
                i += 16;
            }
            // The last 1..15 bytes: one 16-byte load ending at the block's end.
            let j = n - 16;
            let d = unsafe { _mm_xor_si128(load((host + j) as *const u8), load(want[j..].as_ptr())) };
            diff = unsafe { _mm_or_si128(diff, d) };
            unsafe { _mm_movemask_epi8(_mm_cmpeq_epi8(diff, _mm_setzero_si128())) == 0xffff }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let mut diff = 0u128;
            let mut i = 0;
            while i + 16 <= n {
                diff |= load16((host + i) as *const u8) ^ load16(want[i..].as_ptr());
                i += 16;
            }
            let j = n - 16;
            diff |= load16((host + j) as *const u8) ^ load16(want[j..].as_ptr());
            diff == 0
        }
    }
}

/// Cache key: a block is valid for one RIP, one physical address and one code size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Key {
    pub rip: u64,
    pub phys: u64,
    pub bits: u32,
}

/// Multiplicative hasher for keys (no DoS concern: the guest cannot collide us into more than
/// slow lookups).
#[derive(Default)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

const JUMP_SLOTS: usize = 4096;
const MAX_BLOCK_OPS: usize = 64;

/// Decoded blocks of one vCPU.
pub struct BlockCache {
    map: FxMap<Key, u32>,
    slab: Vec<Option<(Key, Block)>>,
    free: Vec<u32>,
    by_page: FxMap<u64, Vec<u32>>,
    jump: Vec<(Key, u32)>,
    /// Blocks built (for statistics and tests).
    pub built: u64,
}

impl Default for BlockCache {
    fn default() -> Self {
        Self::new()
    }
}

impl BlockCache {
    pub fn new() -> Self {
        BlockCache {
            map: FxMap::default(),
            slab: Vec::new(),
            free: Vec::new(),
            by_page: FxMap::default(),
            jump: vec![(Key::default(), u32::MAX); JUMP_SLOTS],
            built: 0,
        }
    }

    #[inline(always)]
    fn slot(key: &Key) -> usize {
        ((key.rip ^ key.phys.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52) as usize
            & (JUMP_SLOTS - 1)
    }

    /// The index of the block for `key`, if cached.
    #[inline(always)]
    pub fn lookup(&mut self, key: &Key) -> Option<u32> {
        let s = Self::slot(key);
        let (k, idx) = self.jump[s];
        if k == *key && idx != u32::MAX {
            return Some(idx);
        }
        let idx = *self.map.get(key)?;
        self.jump[s] = (*key, idx);
        Some(idx)
    }

    /// Like [`BlockCache::lookup`] for the block executed after block `prev`: first tries the
    /// successors `prev` remembers (each confirmed by the full key of the entry it names),
    /// then the jump cache and the map, and remembers the answer in `prev`.
    #[inline(always)]
    pub fn lookup_after(&mut self, prev: u32, key: &Key) -> Option<u32> {
        let Some(Some((_, p))) = self.slab.get(prev as usize) else { return self.lookup(key) };
        let next = p.next;
        for (rip, idx) in next {
            if rip == key.rip {
                if let Some(Some((k, _))) = self.slab.get(idx as usize) {
                    if k == key {
                        return Some(idx);
                    }
                }
            }
        }
        let idx = self.lookup(key)?;
        if let Some(Some((_, p))) = self.slab.get_mut(prev as usize) {
            p.next = [(key.rip, idx), p.next[0]];
        }
        Some(idx)
    }

    /// The block at `idx` (from [`BlockCache::lookup`] or [`BlockCache::insert`]).
    #[inline(always)]
    pub fn block(&self, idx: u32) -> Option<&Block> {
        self.slab.get(idx as usize).and_then(|b| b.as_ref()).map(|(_, b)| b)
    }

    /// The block for `key`, if cached.
    pub fn get(&mut self, key: &Key) -> Option<&Block> {
        let idx = self.lookup(key)?;
        self.block(idx)
    }

    /// Caches `block` under `key`; returns its index.
    pub fn insert(&mut self, key: Key, block: Block) -> u32 {
        let entry = Some((key, block));
        let idx = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = entry;
                i
            }
            None => {
                self.slab.push(entry);
                (self.slab.len() - 1) as u32
            }
        };
        self.map.insert(key, idx);
        self.by_page.entry(key.phys & !0xfff).or_default().push(idx);
        self.built += 1;
        idx
    }

    /// Drops every block decoded from physical page `page`.
    pub fn invalidate_page(&mut self, page: u64) {
        let Some(list) = self.by_page.remove(&page) else { return };
        for idx in list {
            if let Some(Some((key, _))) = self.slab.get(idx as usize) {
                let key = *key;
                self.map.remove(&key);
                let s = Self::slot(&key);
                if self.jump[s].0 == key {
                    self.jump[s] = (Key::default(), u32::MAX);
                }
                self.slab[idx as usize] = None;
                self.free.push(idx);
            }
        }
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        *self = BlockCache { built: self.built, ..BlockCache::new() };
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Decodes the block at `key` from `bytes` (the rest of its page). Returns None when the first
/// instruction does not fit in `bytes` (it crosses the page end).
pub fn decode_block(bytes: &[u8], key: &Key) -> Option<Block> {
    let mut dec = Decoder::with_ip(key.bits, bytes, key.rip, DecoderOptions::NONE);
    let mut ops = Vec::with_capacity(16);
    let mut ins = Instruction::default();
    // Bytes the block depends on: from its start to the end of the furthest op.
    let mut end = 0;
    while dec.can_decode() && ops.len() < MAX_BLOCK_OPS {
        dec.decode_out(&mut ins);
        if ins.is_invalid() && dec.last_error() == DecoderError::NoMoreBytes {
            break;
        }
        end = end.max(dec.position());
        let op = make_op(&ins, key.bits);
        // A block runs on past a forward conditional branch (its handler leaves the block when
        // the branch is taken) and through a direct JMP/CALL to a later address in its page
        // (decoding goes on at the target); it ends at any other control transfer.
        let fc = ins.flow_control();
        if matches!(fc, FlowControl::UnconditionalBranch | FlowControl::Call)
            && matches!(op.o[0], Opnd::Imm(_))
            && !ins.is_invalid()
        {
            let target = ins.near_branch_target();
            let at = target.wrapping_sub(key.rip) as usize;
            if target >= ins.next_ip() && at < bytes.len() && dec.set_position(at).is_ok() {
                dec.set_ip(target);
                ops.push(op);
                continue;
            }
        }
        // Past a backward conditional branch (a loop's back edge, usually taken) the block
        // ends too: running on would only make each iteration check more code bytes.
        let stop = ins.is_invalid()
            || match fc {
                FlowControl::Next => false,
                FlowControl::ConditionalBranch => ins.near_branch_target() <= ins.ip(),
                _ => true,
            };
        ops.push(op);
        if stop {
            break;
        }
    }
    fuse(&mut ops);
    (!ops.is_empty()).then(|| Block::new(ops, bytes[..end.min(bytes.len())].into()))
}

/// Replaces each CMP/TEST/ADD/SUB/AND/OR/XOR/INC/DEC directly followed by a Jcc with one fused
/// op ([`exec::fast::fuse_jcc`]); then gives rotates whose flags the next op overwrites a
/// handler that does not compute them ([`exec::fast::rotate_without_flags`]).
fn fuse(ops: &mut Vec<Op>) {
    let mut i = 0;
    while i + 1 < ops.len() {
        if let Some(f) = exec::fast::fuse_jcc(&ops[i], &ops[i + 1]) {
            ops[i] = f;
            ops.remove(i + 1);
        }
        i += 1;
    }
    for i in 1..ops.len() {
        if let Some(h) = exec::fast::rotate_without_flags(&ops[i - 1], &ops[i]) {
            ops[i - 1].exec = h;
        }
    }
}

impl Cpu {
    /// Decodes one instruction at `lin`/`rip` that may cross a page boundary (uncached path).
    pub fn decode_single(&mut self, lin: u64, rip: u64) -> Ex<Block> {
        let mut buf = [0u8; 15];
        let first = (0x1000 - (lin & 0xfff)) as usize;
        if first >= 15 {
            self.read_bytes(lin, &mut buf, Access::EXEC)?;
        } else {
            self.read_bytes(lin, &mut buf[..first], Access::EXEC)?;
            // Fetch the rest only if the decoder needs it: fault on the second page otherwise
            // would be wrong.
            let mut probe = Instruction::default();
            let mut d = Decoder::with_ip(self.bitness, &buf[..first], rip, DecoderOptions::NONE);
            d.decode_out(&mut probe);
            if probe.is_invalid() && d.last_error() == DecoderError::NoMoreBytes {
                let next = self.wrap_lin(lin.wrapping_add(first as u64));
                self.read_bytes(next, &mut buf[first..], Access::EXEC)?;
            }
        }
        let mut ins = Instruction::default();
        let mut d = Decoder::with_ip(self.bitness, &buf, rip, DecoderOptions::NONE);
        d.decode_out(&mut ins);
        Ok(Block::new(vec![make_op(&ins, self.bitness)], Box::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(code: &[u8], key: &Key) -> Block {
        decode_block(code, key).unwrap()
    }

    #[test]
    fn successor_hints_never_name_a_dropped_or_reused_block() {
        let mut c = BlockCache::new();
        let (a, b) =
            (Key { rip: 0x1000, phys: 0x1000, bits: 64 }, Key { rip: 0x2000, phys: 0x2000, bits: 64 });
        let ia = c.insert(a, block(&[0xeb, 0xfe], &a));
        let ib = c.insert(b, block(&[0x90, 0xc3], &b));
        assert_eq!(c.lookup_after(ia, &b), Some(ib));
        // The hint is used now; same answer.
        assert_eq!(c.lookup_after(ia, &b), Some(ib));
        // Drop b's page and put another block (same RIP, other physical page) in its slot.
        c.invalidate_page(0x2000);
        assert_eq!(c.lookup_after(ia, &b), None);
        let b2 = Key { rip: 0x2000, phys: 0x5000, bits: 64 };
        let ib2 = c.insert(b2, block(&[0xc3], &b2));
        assert_eq!(ib2, ib, "the slot is reused");
        assert_eq!(c.lookup_after(ia, &b), None, "the hint must not hand out the new block");
        assert_eq!(c.lookup_after(ia, &b2), Some(ib2));
        // A dropped predecessor falls back to the plain lookup.
        c.invalidate_page(0x1000);
        assert_eq!(c.lookup_after(ia, &b2), Some(ib2));
        // The matching check sees changed code.
        let code = [0x90u8, 0xc3];
        let blk = block(&code, &b);
        assert!(blk.matches(code.as_ptr() as usize));
        let other = [0x90u8, 0xc2];
        assert!(!blk.matches(other.as_ptr() as usize));
        // Every block length through the 1-, 8- and 16-byte paths: each byte is compared.
        for len in 1..=50 {
            let long: Vec<u8> = (0..len).map(|i| if i == len - 1 { 0xc3 } else { 0x90 }).collect();
            let lb = block(&long, &b);
            assert_eq!(lb.bytes.len(), len);
            assert!(lb.matches(long.as_ptr() as usize));
            for i in 0..long.len() {
                let mut m = long.clone();
                m[i] ^= 1;
                assert!(!lb.matches(m.as_ptr() as usize), "length {len}: byte {i} changed");
            }
        }
    }

    #[test]
    fn blocks_extend_past_untaken_branches_and_forward_jumps() {
        use iced_x86::Mnemonic as Mn;
        let key = Key { rip: 0x1000, phys: 0x1000, bits: 64 };
        let mut a = iced_x86::code_asm::CodeAssembler::new(64).unwrap();
        let (mut l1, mut l2, mut back) = (a.create_label(), a.create_label(), a.create_label());
        a.set_label(&mut back).unwrap();
        a.jne(l2).unwrap(); // forward conditional: the block goes on
        a.jmp(l1).unwrap(); // forward: decoding goes on at l1
        a.int3().unwrap(); // skipped
        a.set_label(&mut l1).unwrap();
        a.call(l2).unwrap(); // forward call: on at l2
        a.int3().unwrap();
        a.set_label(&mut l2).unwrap();
        a.jb(back).unwrap(); // backward conditional (a loop's back edge): ends the block
        a.nop().unwrap();
        let code = a.assemble(0x1000).unwrap();
        let b = block(&code, &key);
        let m: Vec<Mn> = b.ops.iter().map(|o| o.ins.mnemonic()).collect();
        assert_eq!(m, [Mn::Jne, Mn::Jmp, Mn::Call, Mn::Jb]);
        // The bytes checked run to the end of the last op, skipped bytes included.
        assert_eq!(b.bytes.len(), code.len() - 1);
    }
}
