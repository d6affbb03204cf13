//! Fetching packages with the host's apt (`apt-cache depends`, `apt-get download`).

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors talking to apt.
#[derive(Debug, thiserror::Error)]
pub enum AptError {
    /// apt-get / apt-cache is not installed.
    #[error("vmr image pull needs apt-get (Debian/Ubuntu host) or --from-debs DIR")]
    NotInstalled,
    /// The tool ran and failed.
    #[error("`{command}` failed: {detail}")]
    Failed {
        /// The command line.
        command: String,
        /// Its last stderr line (or exit status).
        detail: String,
    },
    /// Output had no usable answer.
    #[error("`apt-cache depends {0}` names no linux-image-* package (run apt-get update?)")]
    NoKernel(String),
    /// Running the tool failed for another reason.
    #[error("running {0}: {1}")]
    Spawn(&'static str, #[source] io::Error),
    /// The download did not produce the expected file.
    #[error("apt-get download {0} left no .deb in {1}")]
    NoDeb(String, PathBuf),
}

fn run(tool: &'static str, args: &[&str], cwd: Option<&Path>) -> Result<String, AptError> {
    let mut cmd = Command::new(tool);
    cmd.args(args).env("LC_ALL", "C");
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.output().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => AptError::NotInstalled,
        _ => AptError::Spawn(tool, e),
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let detail = stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("E:"))
            .or_else(|| stderr.lines().last())
            .map(str::to_string)
            .unwrap_or_else(|| out.status.to_string());
        return Err(AptError::Failed { command: format!("{tool} {}", args.join(" ")), detail });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Resolves a meta package (e.g. `linux-image-amd64`) to the versioned kernel package it
/// depends on (e.g. `linux-image-6.1.0-56-amd64`).
pub fn resolve_kernel(meta: &str) -> Result<String, AptError> {
    let out = run("apt-cache", &["depends", meta], None)?;
    parse_depends(&out).ok_or_else(|| AptError::NoKernel(meta.to_string()))
}

/// First `Depends: linux-image-*` line of `apt-cache depends` output.
fn parse_depends(out: &str) -> Option<String> {
    out.lines()
        .filter_map(|l| l.trim().trim_start_matches('|').strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && !p.starts_with('<'))
        .map(str::to_string)
}

/// Downloads `package` into `dir` unless a `.deb` of it is already there; returns its path.
pub fn download(package: &str, dir: &Path) -> Result<PathBuf, AptError> {
    if let Some(found) = find_deb(dir, package) {
        return Ok(found);
    }
    run("apt-get", &["download", "-q", package], Some(dir))?;
    find_deb(dir, package).ok_or_else(|| AptError::NoDeb(package.to_string(), dir.into()))
}

/// A `.deb` of exactly `package` (file name `package_version_arch.deb`) in `dir`.
pub fn find_deb(dir: &Path, package: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    let mut hits: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(&prefix) && name.ends_with(".deb")
        })
        .collect();
    hits.sort();
    hits.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apt_cache_depends() {
        let out = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(parse_depends(out).unwrap(), "linux-image-6.1.0-56-amd64");
        let alt = "linux-image-amd64\n |Depends: <linux-image-x>\n  Depends: linux-image-6.1.0-9-amd64\n";
        assert_eq!(parse_depends(alt).unwrap(), "linux-image-6.1.0-9-amd64");
        assert_eq!(parse_depends("linux-image-amd64\n"), None);
    }

    #[test]
    fn finds_exact_package_debs() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb",
            "linux-image-6.1.0-56-amd64-dbg_6.1.192-2_amd64.deb",
            "busybox-static_1%3a1.35.0-4_amd64.deb",
        ] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let k = find_deb(dir.path(), "linux-image-6.1.0-56-amd64").unwrap();
        assert!(k.ends_with("linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb"));
        assert!(find_deb(dir.path(), "busybox-static").is_some());
        assert!(find_deb(dir.path(), "busybox").is_none());
    }
}
