//! `vmr`: the command-line front end. A thin adapter over `vmr-vmm` and `vmr-image`.

mod cli;
mod ctl;

use std::process::ExitCode;

fn main() -> ExitCode {
    init_logging();
    let code = cli::main();
    vmr_vmm::console::restore_terminal();
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// `VMR_LOG` (a tracing filter) when set; otherwise the level and file that `PUT /logger` may
/// change at run time (warn on stderr until then).
fn init_logging() {
    use tracing_subscriber::prelude::*;
    let fmt = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(vmr_vmm::logger::writer);
    match tracing_subscriber::EnvFilter::try_from_env("VMR_LOG") {
        Ok(filter) => tracing_subscriber::registry().with(fmt.with_filter(filter)).init(),
        Err(_) => {
            let dynamic = tracing_subscriber::filter::filter_fn(|meta| {
                let level = match *meta.level() {
                    tracing::Level::ERROR => 1,
                    tracing::Level::WARN => 2,
                    tracing::Level::INFO => 3,
                    tracing::Level::DEBUG => 4,
                    tracing::Level::TRACE => 5,
                };
                vmr_vmm::logger::enabled(level)
            });
            tracing_subscriber::registry().with(fmt.with_filter(dynamic)).init()
        }
    }
}
