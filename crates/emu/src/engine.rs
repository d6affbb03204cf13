//! The run loop: look up (or decode) the block at RIP, execute it, handle exceptions,
//! interrupts, kicks and code invalidation.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use crate::cpu::{Cpu, CS};
use crate::decode::{decode_block, Block, BlockCache, Key};
use crate::jit::Jit;
use crate::mem::Access;

/// Why [`Engine::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// HLT with no interrupt pending.
    Halt,
    /// Triple fault.
    Shutdown,
    /// The kick flag was set.
    Kicked,
    /// The instruction budget ran out.
    Budget,
}

/// The NMI vector (delivered without NMI blocking: Linux uses NMIs only for diagnostics).
const NMI_VECTOR: u8 = 2;

/// What an [`InterruptSource`] hands the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqEvent {
    /// A maskable interrupt (already acknowledged).
    Vector(u8),
    /// NMI.
    Nmi,
    /// INIT: the vCPU resets (the backend does it: [`Engine::init_pending`]).
    Init,
}

/// Source of external interrupts for one vCPU (the interrupt controller model).
pub trait InterruptSource: Send {
    /// A pending maskable interrupt vector, if any, without acknowledging it.
    fn pending(&self) -> bool;
    /// Acknowledges and returns the highest-priority pending vector.
    fn acknowledge(&mut self) -> Option<u8>;
    /// The next event the CPU takes now; `if_set` is RFLAGS.IF (maskable interrupts need it).
    fn take_event(&mut self, if_set: bool) -> Option<IrqEvent> {
        if if_set && self.pending() {
            self.acknowledge().map(IrqEvent::Vector)
        } else {
            None
        }
    }
}

/// A CPU with its decoded-block cache.
pub struct Engine {
    pub cpu: Cpu,
    pub cache: BlockCache,
    pub kick: Arc<AtomicBool>,
    pub irq: Option<Box<dyn InterruptSource>>,
    /// When set, the source is asked only while this is non-zero: bit 0 a maskable interrupt
    /// is deliverable (taken with IF set), bit 1 NMI/INIT (taken regardless). One relaxed load
    /// per block instead of a call.
    pub irq_flag: Option<Arc<AtomicU8>>,
    /// An INIT arrived: [`Engine::run`] returned `Kicked` without consuming a kick; the
    /// backend resets the CPU and clears this.
    pub init_pending: bool,
    /// Slab index of the block executed last (u32::MAX if none): its successor hints are
    /// tried before the jump cache.
    last: u32,
    /// The translator tier (`VMR_EMU_JIT=1`, or [`Engine::set_jit`]); None: interpret only.
    pub jit: Option<Box<Jit>>,
    /// `VMR_EMU_PROFILE=FILE`: guest RIP samples (one per 256 blocks), written at drop to FILE
    /// (BSP) or FILE.N (APIC id N).
    profile: Option<Box<Profile>>,
}

/// Guest-side sampling profile (a debugging aid: where does the guest spend its blocks?).
struct Profile {
    path: std::path::PathBuf,
    samples: std::collections::HashMap<u64, u64>,
    tick: u32,
}

impl Drop for Engine {
    fn drop(&mut self) {
        let Some(p) = self.profile.take() else { return };
        let mut v: Vec<_> = p.samples.into_iter().collect();
        v.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
        let mut out = format!(
            "# icount {} code_epoch {} blocks_built {}\n",
            self.cpu.icount, self.cpu.code_epoch, self.cache.built
        );
        if let Some(j) = &self.jit {
            out.push_str(&format!("# jit {}\n", j.stats()));
        }
        for (rip, n) in v {
            out.push_str(&format!("{rip:#x} {n}\n"));
        }
        // One file per vCPU: FILE for the BSP, FILE.N for APIC id N.
        let path = match self.cpu.apic_id {
            0 => p.path,
            id => format!("{}.{id}", p.path.display()).into(),
        };
        let _ = std::fs::write(path, out);
    }
}

impl Engine {
    pub fn new(cpu: Cpu) -> Self {
        Engine {
            cpu,
            cache: BlockCache::new(),
            kick: Arc::new(AtomicBool::new(false)),
            irq: None,
            irq_flag: None,
            init_pending: false,
            last: u32::MAX,
            jit: Jit::from_env(),
            profile: std::env::var_os("VMR_EMU_PROFILE")
                .map(|p| Box::new(Profile { path: p.into(), samples: Default::default(), tick: 0 })),
        }
    }

    /// Turns the translator tier on (hot blocks translated after `hot` executions) or off.
    pub fn set_jit(&mut self, hot: Option<u32>) -> Result<(), crate::jit::JitError> {
        self.jit = match hot {
            Some(hot) => Some(Box::new(Jit::new(hot, 16 << 20)?)),
            None => None,
        };
        Ok(())
    }

    /// Runs until HLT, shutdown, a kick, or about `budget` more instructions.
    pub fn run(&mut self, budget: u64) -> StopReason {
        let limit = self.cpu.icount.saturating_add(budget);
        // A new code epoch per call: whatever devices or other vCPUs wrote meanwhile is seen,
        // at the latest, one slice of instructions after it was written.
        self.cpu.code_epoch = self.cpu.code_epoch.wrapping_add(1);
        // Blocks that fault before retiring anything (an exception handler that faults again
        // is an endless loop on real hardware too) still use up the budget.
        let mut steps = 0u64;
        if let Some(j) = self.jit.as_deref_mut() {
            j.set_limits(limit, &self.kick, self.irq_flag.as_deref(), self.irq.is_some());
        }
        loop {
            // A plain load first: the locked swap only when a kick is pending.
            if self.kick.load(Ordering::Relaxed) && self.kick.swap(false, Ordering::AcqRel) {
                return StopReason::Kicked;
            }
            if self.cpu.shutdown {
                return StopReason::Shutdown;
            }
            self.poll_interrupts();
            if self.init_pending {
                return StopReason::Kicked;
            }
            if self.cpu.halted {
                return StopReason::Halt;
            }
            if self.cpu.icount >= limit || steps >= budget {
                return StopReason::Budget;
            }
            steps += 1;
            if let Some(p) = self.profile.as_deref_mut() {
                p.tick = p.tick.wrapping_add(1);
                if p.tick % 256 == 0 {
                    *p.samples.entry(self.cpu.rip).or_default() += 1;
                }
            }
            self.step_block();
        }
    }

    #[inline]
    fn poll_interrupts(&mut self) {
        if self.cpu.int_shadow {
            self.cpu.int_shadow = false;
            return;
        }
        match &self.irq_flag {
            Some(flag) => {
                let f = flag.load(Ordering::Relaxed);
                if f == 0 || (f == 1 && !self.cpu.flags.if_()) {
                    return;
                }
            }
            None if self.irq.is_none() => return,
            None => {}
        }
        self.take_interrupt();
    }

    #[cold]
    fn take_interrupt(&mut self) {
        let Some(src) = self.irq.as_mut() else { return };
        match src.take_event(self.cpu.flags.if_()) {
            Some(IrqEvent::Vector(v)) => self.cpu.interrupt(v),
            Some(IrqEvent::Nmi) => self.cpu.interrupt(NMI_VECTOR),
            Some(IrqEvent::Init) => self.init_pending = true,
            None => {}
        }
    }

    /// Executes one block (or one uncached instruction).
    #[inline(always)]
    pub fn step_block(&mut self) {
        let cpu = &mut self.cpu;
        cpu.block_break = false;
        let lin = cpu.wrap_lin(cpu.lin(CS, cpu.rip));
        let (gpa, host) = match cpu.translate_page(lin, Access::EXEC) {
            Ok(e) => e,
            Err(x) => {
                cpu.raise(x);
                return;
            }
        };
        let key = Key { rip: cpu.rip, phys: gpa | (lin & 0xfff), bits: cpu.bitness };
        let idx = match self.cache.lookup_after(self.last, &key) {
            Some(idx) => idx,
            None => match build(host, &key) {
                Some(block) => {
                    cpu.mem.mark_code_page(key.phys);
                    self.cache.insert(key, block)
                }
                None => {
                    // Crossing a page or running from MMIO: decode every time.
                    match cpu.decode_single(lin, cpu.rip) {
                        Ok(b) => run_block(cpu, &b),
                        Err(x) => cpu.raise(x),
                    }
                    self.flush_dirty();
                    return;
                }
            },
        };
        let code = host + (lin & 0xfff) as usize;
        self.last = idx;
        match self.cache.block(idx) {
            // Its code was compared with guest memory in this epoch (the CPU's own writes to
            // code pages invalidate blocks at once; see `Cpu::serialize` for the rest).
            Some(block) if block.checked.get() == self.cpu.code_epoch => {
                exec_block(&mut self.cpu, self.jit.as_deref_mut(), block)
            }
            Some(block) if host == 0 || block.matches(code) => {
                block.checked.set(self.cpu.code_epoch);
                exec_block(&mut self.cpu, self.jit.as_deref_mut(), block)
            }
            Some(_) => {
                // Written behind the CPU's back (DMA, another vCPU): decode afresh.
                self.cache.invalidate_page(key.phys & !0xfff);
                return;
            }
            None => {}
        }
        self.flush_dirty();
    }

    /// Tells the CPU that something other than itself (a device doing DMA, the VMM loading an
    /// image) wrote guest physical memory `[gpa, gpa + len)`: cached code there is dropped.
    pub fn notify_write(&mut self, gpa: u64, len: usize) {
        if self.cpu.mem.note_write(gpa, len) {
            self.flush_dirty();
        }
    }

    #[inline(always)]
    fn flush_dirty(&mut self) {
        if !self.cpu.mem.dirty_code.is_empty() {
            for page in std::mem::take(&mut self.cpu.mem.dirty_code) {
                self.cache.invalidate_page(page);
            }
        }
    }
}

/// Decodes the block at `key` from its RAM page; None if it must take the uncached path.
/// Out of line: its page buffer would otherwise enlarge (and probe) the stack frame of every
/// block step.
#[inline(never)]
#[cold]
fn build(host: usize, key: &Key) -> Option<Block> {
    if host == 0 {
        return None;
    }
    let off = (key.phys & 0xfff) as usize;
    let mut buf = [0u8; 4096];
    let n = 4096 - off;
    // SAFETY: `host` is the start of a mapped 4 KiB RAM page (from the TLB) and
    // `off + n == 4096`; the copy reads only that page.
    unsafe { std::ptr::copy_nonoverlapping((host + off) as *const u8, buf.as_mut_ptr(), n) };
    decode_block(&buf[..n], key)
}

/// Runs `block` on the translator tier if there is one and the block is hot, else interprets it.
#[inline(always)]
fn exec_block(cpu: &mut Cpu, jit: Option<&mut Jit>, block: &Block) {
    if let Some(j) = jit {
        if j.run(cpu, block) {
            return;
        }
    }
    run_block(cpu, block)
}

/// Runs the ops of `block` until the end, a taken branch, an exception or a block break.
#[inline(always)]
fn run_block(cpu: &mut Cpu, block: &Block) {
    if block.locked {
        run_ops::<true>(cpu, block)
    } else {
        run_ops::<false>(cpu, block)
    }
}

/// The op loop; `LOCKED` blocks also set up `Cpu::locked` around their locked ops (most
/// blocks have none and skip the two tests per op).
///
/// `Cpu::rip` is brought up to date when the block is left, not after every op: handlers see
/// their own address as `op.ins.ip()` and the next one as `Cpu::next_rip`, and an exception
/// sets RIP to the faulting op before it is raised.
#[inline(always)]
fn run_ops<const LOCKED: bool>(cpu: &mut Cpu, block: &Block) {
    let mut n = 0u64;
    for op in &block.ops {
        cpu.next_rip = op.ins.next_ip();
        if LOCKED && op.locked {
            cpu.locked = true;
        }
        let r = (op.exec)(cpu, op);
        if LOCKED && op.locked {
            cpu.locked = false;
            cpu.rmw = None;
        }
        if let Err(x) = r {
            cpu.rip = op.ins.ip();
            cpu.icount += n;
            // A locked RMW that lost a race to another vCPU runs again (nothing was written).
            if !x.is_retry() {
                cpu.raise(x);
            }
            return;
        }
        n += 1;
        if cpu.block_break {
            break;
        }
    }
    cpu.rip = cpu.next_rip;
    cpu.icount += n;
}
