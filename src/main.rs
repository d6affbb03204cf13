//! `vmr`: the command-line front end. A thin adapter over `vmr-vmm` and `vmr-image`.

mod cli;
mod ctl;
mod manage;
mod manage_pools;

use std::process::ExitCode;

fn main() -> ExitCode {
    vmr_vmm::stats::mark_process_start();
    // stderr at VMR_LOG's level; the API's PUT /logger can redirect it later.
    vmr_vmm::logger::install();
    let code = cli::main();
    vmr_vmm::console::restore_terminal();
    ExitCode::from(code.clamp(0, 255) as u8)
}
