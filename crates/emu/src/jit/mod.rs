//! The translator tier: hot decoded blocks become host x86-64 code.
//!
//! A block ([`crate::decode::Block`]) that ran [`Jit::hot`] times is translated by
//! [`emit::translate`]: the simplest hot forms (MOV/LEA/ADD/SUB/AND/OR/XOR/CMP/TEST at 32/64
//! bits on registers, immediates and memory, those ALU ops fused with a Jcc) become host
//! instructions that work on the guest registers in `Cpu::gpr`, record the lazy flags exactly as
//! the interpreter does, and reach memory through an inline software-TLB probe with a call to
//! `Cpu::read_lin`/`write_lin` when it misses; every other op becomes a direct call of its
//! interpreter handler ([`jit_op`]). So every block can be translated, and an op behaves the
//! same on both tiers by construction or by being the same code.
//!
//! Precise state: guest registers live in `Cpu` (nothing is cached in host registers across
//! ops), and each op that can fault has an exit that sets RIP to that op and retires only the
//! ops before it, like the interpreter's op loop. Interrupts, kicks and code invalidation are
//! the engine's, between blocks, unchanged: a translation hangs off its decoded block and dies
//! with it, so everything that drops a block (writes to its page, the code-byte check once per
//! code epoch, DMA notifications) drops its translation too. A translation depends on nothing
//! but the block's ops: CPL, CR0.WP (the TLB permission bits needed) and segment bases are read
//! when it runs, so mode and page-table changes need no flush of their own.
//!
//! Off by default; `VMR_EMU_JIT=1` turns it on (`VMR_EMU_JIT_HOT=N` executions before a block is
//! translated, default 64; `VMR_EMU_JIT_CACHE=MiB` the code cache, default 16).

mod code;
mod emit;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU8};

use thiserror::Error;

use crate::cpu::{Cpu, Exc};
use crate::decode::{Block, Op};
use crate::mem::tlb::{TlbEntry, P_WFAST};
use crate::mem::Access;

pub use code::CodeCache;

/// Errors of the translator (the engine falls back to the interpreter on any of them).
#[derive(Debug, Error)]
pub enum JitError {
    #[error("cannot map the code cache: {0}")]
    Map(std::io::Error),
    #[error("cannot assemble a translation: {0}")]
    Asm(String),
    #[error("a translation of {0} bytes does not fit in the code cache")]
    TooBig(usize),
}

/// Per-block translator state, kept in the decoded block.
#[derive(Debug, Default)]
pub struct Slot {
    hits: Cell<u32>,
    entry: Cell<u64>,
    generation: Cell<u32>,
}

/// What translated code reads besides `Cpu`; its address is passed in on every entry.
#[repr(C)]
pub struct Ctx {
    /// The software TLB's entries.
    tlb: *const TlbEntry,
    /// TLB permission bits a data read needs (CPL and CR0.WP dependent), refreshed on entry
    /// and after every interpreted op.
    need_r: u8,
    /// The same for a write, plus `P_WFAST` (RAM without cached code).
    need_w: u8,
    /// A value read by the slow path.
    val: u64,
    /// The exception of an exit with status [`FAULT`].
    exc: Option<Exc>,
    /// A block that ends by branching to its own start runs again without returning to the
    /// engine while `chain` is set, the kick flag and the interrupt flag (`irq`) read zero, and
    /// fewer than `limit` instructions retired: the engine's own checks between blocks.
    chain: u8,
    kick: *const u8,
    irq: *const u8,
    limit: u64,
}

/// What `Ctx::irq` points at when the engine has no interrupt flag.
static NO_IRQ: u8 = 0;

// SAFETY: `tlb` points into the TLB of the CPU this context serves, refreshed from that CPU on
// every entry; `kick` and `irq` point at the engine's flags (or a static), set at the start of
// every `Engine::run`; all are only dereferenced by translated code running for that engine.
unsafe impl Send for Ctx {}

impl Ctx {
    #[inline(always)]
    fn refresh(&mut self, cpu: &Cpu) {
        self.tlb = cpu.mem.tlb.entries_ptr();
        self.need_r = cpu.need(Access::READ);
        self.need_w = cpu.need(Access::WRITE) | P_WFAST;
    }
}

/// Status of a translated block, an interpreted op or a slow memory access.
const OK: u64 = 0;
const FAULT: u64 = 1;
/// The op completed and asked to leave the block (`Cpu::block_break`).
const BREAK: u64 = 2;

/// The translator of one vCPU.
pub struct Jit {
    code: CodeCache,
    ctx: Ctx,
    /// Executions of a block before it is translated.
    pub hot: u32,
    /// Blocks translated (statistics, tests).
    pub translated: u64,
    /// Guest ops translated to host code, and ops run as calls to their handler.
    pub native_ops: u64,
    pub called_ops: u64,
}

impl Jit {
    /// A translator with a code cache of `cache` bytes.
    pub fn new(hot: u32, cache: usize) -> Result<Jit, JitError> {
        let ctx = Ctx {
            tlb: std::ptr::null(),
            need_r: 0,
            need_w: 0,
            val: 0,
            exc: None,
            chain: 0,
            kick: &NO_IRQ,
            irq: &NO_IRQ,
            limit: 0,
        };
        Ok(Jit { code: CodeCache::new(cache)?, ctx, hot, translated: 0, native_ops: 0, called_ops: 0 })
    }

    /// The translator `VMR_EMU_JIT` asks for, if any (a code cache that cannot be mapped
    /// leaves the interpreter alone, with a warning).
    pub fn from_env() -> Option<Box<Jit>> {
        let on = std::env::var("VMR_EMU_JIT").ok()?;
        if !matches!(on.as_str(), "1" | "on" | "yes" | "true") {
            return None;
        }
        let num = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(d);
        let hot = num("VMR_EMU_JIT_HOT", 64).min(u32::MAX as u64) as u32;
        let mib = num("VMR_EMU_JIT_CACHE", 16).clamp(1, 1024) as usize;
        match Jit::new(hot, mib << 20) {
            Ok(j) => Some(Box::new(j)),
            Err(e) => {
                tracing::warn!("VMR_EMU_JIT: {e}; interpreting");
                None
            }
        }
    }

    /// The engine's stop conditions for one `Engine::run` call, checked by translated loops
    /// before they go round again: the kick flag, the interrupt flag (with an interrupt source
    /// but no flag, every block returns to the engine so that it polls), the instruction limit.
    /// The flags are owned by the engine, which outlives every translated run.
    pub fn set_limits(&mut self, limit: u64, kick: &AtomicBool, irq: Option<&AtomicU8>, has_source: bool) {
        self.ctx.limit = limit;
        self.ctx.kick = kick.as_ptr() as *const u8;
        self.ctx.irq = irq.map_or(&NO_IRQ as *const u8, |f| f.as_ptr() as *const u8);
        self.ctx.chain = (irq.is_some() || !has_source) as u8;
    }

    /// One line of statistics (for `VMR_EMU_PROFILE`).
    pub fn stats(&self) -> String {
        format!(
            "translated {} native_ops {} called_ops {} cache_used {} cache_size {} flushes {}",
            self.translated,
            self.native_ops,
            self.called_ops,
            self.code.used(),
            self.code.capacity(),
            self.code.flushes
        )
    }

    /// The code cache (size and use are the VMM's memory overhead).
    pub fn cache(&self) -> &CodeCache {
        &self.code
    }

    /// Runs `block` as translated code if it is hot (translating it first if needed); false
    /// if the interpreter must run it.
    #[inline(always)]
    pub fn run(&mut self, cpu: &mut Cpu, block: &Block) -> bool {
        let s = &block.jit;
        let entry = if s.entry.get() != 0 && s.generation.get() == self.code.generation {
            s.entry.get()
        } else {
            let h = s.hits.get().saturating_add(1);
            s.hits.set(h);
            if h < self.hot {
                return false;
            }
            match self.translate(block) {
                Some(e) => e,
                None => return false,
            }
        };
        self.enter(cpu, entry);
        true
    }

    #[cold]
    #[inline(never)]
    fn translate(&mut self, block: &Block) -> Option<u64> {
        let s = &block.jit;
        s.hits.set(0);
        let t = match emit::translate(&block.ops, &mut self.code) {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!("jit: block at {:#x} left to the interpreter: {e}", block.ops[0].ins.ip());
                return None;
            }
        };
        self.translated += 1;
        self.native_ops += t.native as u64;
        self.called_ops += t.called as u64;
        s.entry.set(t.entry);
        s.generation.set(self.code.generation);
        Some(t.entry)
    }

    fn enter(&mut self, cpu: &mut Cpu, entry: u64) {
        self.ctx.refresh(cpu);
        // SAFETY: `entry` is the start of a translation in the executable mapping of the current
        // generation (checked by the caller), emitted by `emit::translate` with this signature;
        // it touches only `cpu`, `ctx`, the TLB entries and guest RAM through TLB host pointers,
        // and the `Op`s of the block, which outlives this call.
        let status = unsafe {
            let f: extern "C" fn(*mut Cpu, *mut Ctx) -> u64 = std::mem::transmute(entry as usize);
            f(cpu, &mut self.ctx)
        };
        if status == FAULT {
            if let Some(x) = self.ctx.exc.take() {
                // A locked RMW that lost a race runs again (nothing was written).
                if !x.is_retry() {
                    cpu.raise(x);
                }
            }
        }
    }
}

/// Runs one op through its interpreter handler, as the interpreter's op loop does.
///
/// `Ctx::need_*` is not refreshed here: what it depends on (CPL, CR0.WP) changes only in ops
/// that end the block (control transfers) or ask to leave it (MOV to CR0 serializes), and the
/// next entry refreshes it.
extern "C" fn jit_op(cpu: &mut Cpu, ctx: &mut Ctx, op: &Op) -> u64 {
    cpu.next_rip = op.ins.next_ip();
    let r = (op.exec)(cpu, op);
    status(cpu, ctx, r)
}

/// [`jit_op`] for a locked read-modify-write (LOCK prefix, XCHG with memory).
extern "C" fn jit_op_locked(cpu: &mut Cpu, ctx: &mut Ctx, op: &Op) -> u64 {
    cpu.next_rip = op.ins.next_ip();
    cpu.locked = true;
    let r = (op.exec)(cpu, op);
    cpu.locked = false;
    cpu.rmw = None;
    status(cpu, ctx, r)
}

#[inline(always)]
fn status(cpu: &Cpu, ctx: &mut Ctx, r: crate::cpu::Ex) -> u64 {
    match r {
        Ok(()) if cpu.block_break => BREAK,
        Ok(()) => OK,
        Err(x) => {
            ctx.exc = Some(x);
            FAULT
        }
    }
}

/// Condition `cc` (0..=15) of the current flags, as 0 or 1.
extern "C" fn jit_cond(cpu: &Cpu, cc: u64) -> u64 {
    cpu.flags.cond(cc as u8) as u64
}

/// CF of the current lazy flags (for INC/DEC, which keep it).
extern "C" fn jit_cf(cpu: &Cpu) -> u64 {
    cpu.flags.cf() as u64
}

/// The slow path of a translated read: `Cpu::read_lin` (walk, MMIO, page crossing).
extern "C" fn jit_read(cpu: &mut Cpu, ctx: &mut Ctx, lin: u64, size: u64) -> u64 {
    match cpu.read_lin(lin, size as u8, Access::READ) {
        Ok(v) => {
            ctx.val = v;
            OK
        }
        Err(x) => {
            ctx.exc = Some(x);
            FAULT
        }
    }
}

/// The slow path of a translated write: `Cpu::write_lin` (walk, MMIO, code pages).
extern "C" fn jit_write(cpu: &mut Cpu, ctx: &mut Ctx, lin: u64, size: u64, val: u64) -> u64 {
    match cpu.write_lin(lin, size as u8, val, Access::WRITE) {
        Ok(()) => OK,
        Err(x) => {
            ctx.exc = Some(x);
            FAULT
        }
    }
}
