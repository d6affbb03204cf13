//! `vmr`: the command-line front end. A thin adapter over `vmr-vmm` and `vmr-image`.

mod cli;
mod ctl;

use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VMR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let code = cli::main();
    vmr_vmm::console::restore_terminal();
    ExitCode::from(code.clamp(0, 255) as u8)
}
