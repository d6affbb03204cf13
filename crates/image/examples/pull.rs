//! `cargo run -p vmr-image --example pull -- [--dir DIR] [--from-debs DIR] [--force]`:
//! builds the default guest image like `vmr image pull` and prints its paths.

use std::path::PathBuf;
use std::process::ExitCode;

use vmr_image::{pull, PullOptions, StderrProgress};

fn main() -> ExitCode {
    let mut opts = PullOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => opts.dir = args.next().map(PathBuf::from),
            "--from-debs" => opts.from_debs = args.next().map(PathBuf::from),
            "--force" => opts.force = true,
            other => {
                eprintln!("unknown argument {other}");
                return ExitCode::from(2);
            }
        }
    }
    match pull(&opts, &StderrProgress::new()) {
        Ok(img) => {
            println!("kernel={}", img.kernel.display());
            println!("bzimage={}", img.bzimage.display());
            println!("initrd={}", img.initrd.display());
            println!("cmdline={}", img.cmdline);
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
