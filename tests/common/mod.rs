//! Helpers shared by the integration tests: tiny hand-made kernels, a guest console.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A running `vmr` whose console is read line by line (stdout) while its stderr is collected.
pub struct Console {
    pub child: Child,
    pub stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    errs: Option<JoinHandle<Vec<String>>>,
}

impl Console {
    /// Starts `cmd` with piped stdin/stdout/stderr.
    pub fn spawn(cmd: &mut Command) -> Console {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("vmr did not start");
        let (tx, lines) = mpsc::channel::<String>();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            BufReader::new(out).lines().map_while(Result::ok).for_each(|l| drop(tx.send(l)))
        });
        let err = child.stderr.take().unwrap();
        let errs = std::thread::spawn(move || BufReader::new(err).lines().map_while(Result::ok).collect());
        let stdin = child.stdin.take().unwrap();
        Console { child, stdin, lines, errs: Some(errs) }
    }

    /// The next console line (without a trailing CR) within a second; `None` on a quiet second
    /// or when the output is closed.
    pub fn line(&mut self) -> Option<String> {
        let l = self.lines.recv_timeout(Duration::from_secs(1)).ok()?;
        Some(l.trim_end_matches('\r').to_string())
    }

    /// True once the process has exited.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Kills the process if it still runs, waits for it and returns its exit code and stderr.
    pub fn finish(&mut self) -> (Option<i32>, String) {
        if !self.exited() {
            let _ = self.child.kill();
        }
        let status = self.child.wait().unwrap();
        let errs = self.errs.take().map(|h| h.join().unwrap()).unwrap_or_default();
        (status.code(), errs.join("\n"))
    }
}

/// Where the tiny kernels load and start.
pub const LOAD: u64 = 0x100_0000;

/// A minimal ELF64 x86-64 kernel: one 4 KiB PT_LOAD at 16 MiB and a PVH entry note.
pub fn tiny_pvh_kernel(path: &Path) {
    tiny_pvh_kernel_with(path, &[0xf4], &[]);
}

/// Like [`tiny_pvh_kernel`] with `code` at the entry (16 MiB, 32-bit protected mode, flat
/// segments) and `data` at 16 MiB + 0x100.
pub fn tiny_pvh_kernel_with(path: &Path, code: &[u8], data: &[u8]) {
    let mut f = vec![0u8; 0x2000];
    let put = |f: &mut Vec<u8>, off: usize, bytes: &[u8]| f[off..off + bytes.len()].copy_from_slice(bytes);
    put(&mut f, 0, &[0x7f, b'E', b'L', b'F', 2, 1, 1]);
    put(&mut f, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut f, 18, &0x3eu16.to_le_bytes()); // x86-64
    put(&mut f, 20, &1u32.to_le_bytes());
    put(&mut f, 24, &LOAD.to_le_bytes()); // e_entry
    put(&mut f, 32, &64u64.to_le_bytes()); // e_phoff
    put(&mut f, 52, &64u16.to_le_bytes()); // e_ehsize
    put(&mut f, 54, &56u16.to_le_bytes()); // e_phentsize
    put(&mut f, 56, &2u16.to_le_bytes()); // e_phnum
    let note = [
        &4u32.to_le_bytes()[..],
        &4u32.to_le_bytes(),
        &18u32.to_le_bytes(),
        b"Xen\0",
        &(LOAD as u32).to_le_bytes(),
    ]
    .concat();
    // PT_LOAD: file 0x1000..0x2000 at LOAD.
    let load = [1u32.to_le_bytes(), 5u32.to_le_bytes()].concat();
    let load_rest = [0x1000u64, LOAD, LOAD, 0x1000, 0x1000, 0x1000].map(u64::to_le_bytes).concat();
    put(&mut f, 64, &[load, load_rest].concat());
    // PT_NOTE at 0x200.
    let pnote = [4u32.to_le_bytes(), 4u32.to_le_bytes()].concat();
    let len = note.len() as u64;
    let pnote_rest = [0x200u64, 0, 0, len, len, 4].map(u64::to_le_bytes).concat();
    put(&mut f, 120, &[pnote, pnote_rest].concat());
    put(&mut f, 0x200, &note);
    put(&mut f, 0x1000, code);
    put(&mut f, 0x1100, data);
    std::fs::write(path, f).unwrap();
}

/// A kernel that prints '.' on COM1, spins `spin` iterations, and again, for ever: output the
/// host can watch (a counter that stops while the VM is paused).
pub fn ticking_kernel(path: &Path, spin: u32) {
    let mut code = vec![0x66, 0xba, 0xf8, 0x03, 0xb0, b'.', 0xee, 0xb9]; // mov dx,0x3f8; mov al,'.'; out; mov ecx,
    code.extend_from_slice(&spin.to_le_bytes());
    code.extend_from_slice(&[0x49, 0x75, 0xfd, 0xeb, 0xef]); // dec ecx; jnz; jmp back to out
    tiny_pvh_kernel_with(path, &code, &[]);
}

/// The default guest (`vmr image pull`, built or found in the cache): kernel, initrd and its
/// command line.
pub fn default_image() -> (String, String, String) {
    let pull =
        Command::new(env!("CARGO_BIN_EXE_vmr")).args(["image", "pull"]).output().expect("vmr image pull");
    assert!(pull.status.success(), "vmr image pull failed");
    let text = String::from_utf8(pull.stdout).unwrap();
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).expect(name)
    };
    (field("kernel"), field("initrd"), field("cmdline"))
}
