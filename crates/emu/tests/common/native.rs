//! The native side of the differential tests: an RWX code page holding
//! `prologue; instruction (padded with NOPs); epilogue`, called as `extern "C" fn(*mut S)`, and
//! a 4 KiB data page that the instruction's memory operands point into.

/// Bytes reserved for the instruction under test (the longest x86 instruction is 15).
const INSN_SLOT: usize = 16;

pub struct Native {
    code: *mut u8,
    /// The data page: tests point registers into it before [`Native::run`].
    pub buf: *mut u8,
    prologue: Vec<u8>,
    epilogue: Vec<u8>,
}

impl Native {
    /// `prologue` loads the state from the `*mut S` in RDI, `epilogue` stores it back and
    /// returns; both are the caller's to make C-ABI correct.
    pub fn new(prologue: Vec<u8>, epilogue: Vec<u8>) -> Native {
        // SAFETY: anonymous private mappings, checked for failure; never unmapped (test process).
        let (code, buf) = unsafe {
            let c = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            let b = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert!(c != libc::MAP_FAILED && b != libc::MAP_FAILED, "mmap failed");
            (c as *mut u8, b as *mut u8)
        };
        assert!(prologue.len() + INSN_SLOT + epilogue.len() <= 4096, "code page overflow");
        Native { code, buf, prologue, epilogue }
    }

    /// Runs `insn` on the host with `state` loaded and stored by the prologue and epilogue,
    /// and `buf` (at most 4096 bytes) copied into the data page before and out after.
    ///
    /// # Safety
    /// `prologue; insn; epilogue` must be a C-ABI function of `*mut S` (callee-saved registers
    /// restored, DF clear on return) that touches memory only through `state` and the data
    /// page, and raises no exception on the host.
    pub unsafe fn run<S>(&self, insn: &[u8], state: &mut S, buf: &mut [u8]) {
        assert!(insn.len() <= INSN_SLOT && buf.len() <= 4096);
        let mut code = self.prologue.clone();
        code.extend_from_slice(insn);
        code.resize(self.prologue.len() + INSN_SLOT, 0x90);
        code.extend_from_slice(&self.epilogue);
        // SAFETY: the code fits the 4096-byte code page (checked in `new`) and `buf` the data
        // page (asserted above); what the code does is the caller's contract.
        unsafe {
            std::ptr::copy_nonoverlapping(code.as_ptr(), self.code, code.len());
            std::ptr::copy_nonoverlapping(buf.as_ptr(), self.buf, buf.len());
            let f: extern "C" fn(*mut S) = std::mem::transmute(self.code);
            f(state);
            std::ptr::copy_nonoverlapping(self.buf, buf.as_mut_ptr(), buf.len());
        }
    }
}
