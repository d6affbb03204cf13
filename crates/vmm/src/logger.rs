//! The log: tracing events to stderr (level from `VMR_LOG`, default `warn`) until
//! [`init_logger`] (what the API's `PUT /logger` calls) sends them to a file at a given level.
//!
//! The subscriber is installed once ([`install`]) with two reloadable parts, the level filter
//! and the formatting layer with its writer, so the destination and level can change while
//! the VM runs.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use thiserror::Error;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Registry;

type Filtered = tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type FmtLayer = Box<dyn Layer<Filtered> + Send + Sync>;

struct Handles {
    filter: reload::Handle<EnvFilter, Registry>,
    fmt: reload::Handle<FmtLayer, Filtered>,
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

#[derive(Debug, Error)]
pub enum LoggerError {
    #[error("invalid log level '{0}': expected Error, Warning, Info, Debug, Trace or Off")]
    Level(String),
    #[error("cannot open the log file {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the logger is not installed")]
    NotInstalled,
    #[error("cannot change the logger: {0}")]
    Reload(String),
}

/// Firecracker's level names (any case; `Warn` too).
pub fn parse_level(text: &str) -> Result<LevelFilter, LoggerError> {
    match text.to_ascii_lowercase().as_str() {
        "error" => Ok(LevelFilter::ERROR),
        "warning" | "warn" => Ok(LevelFilter::WARN),
        "info" => Ok(LevelFilter::INFO),
        "debug" => Ok(LevelFilter::DEBUG),
        "trace" => Ok(LevelFilter::TRACE),
        "off" => Ok(LevelFilter::OFF),
        _ => Err(LoggerError::Level(text.to_owned())),
    }
}

fn stderr_layer() -> FmtLayer {
    Box::new(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
}

/// Installs the process's subscriber: stderr, level from `VMR_LOG` (default `warn`). Call once,
/// first thing in `main`; later calls do nothing.
pub fn install() {
    let filter = EnvFilter::try_from_env("VMR_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let (filter, filter_handle) = reload::Layer::new(filter);
    let (fmt, fmt_handle) = reload::Layer::new(stderr_layer());
    if tracing_subscriber::registry().with(filter).with(fmt).try_init().is_ok() {
        let _ = HANDLES.set(Handles { filter: filter_handle, fmt: fmt_handle });
    }
}

/// Sends the log to `path` (appended to, created if missing; `None`: stderr) at `level`
/// (Firecracker's names), each line with its level if `show_level` and the source file and
/// line if `show_origin`.
pub fn init_logger(
    path: Option<&Path>,
    level: &str,
    show_level: bool,
    show_origin: bool,
) -> Result<(), LoggerError> {
    let level = parse_level(level)?;
    let handles = HANDLES.get().ok_or(LoggerError::NotInstalled)?;
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_level(show_level)
        .with_file(show_origin)
        .with_line_number(show_origin)
        .with_target(false);
    let layer: FmtLayer = match path {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .map_err(|source| LoggerError::Open { path: path.to_owned(), source })?;
            Box::new(layer.with_writer(Mutex::new(file)))
        }
        None => Box::new(layer.with_writer(std::io::stderr)),
    };
    let filter = EnvFilter::from_str(&level.to_string()).map_err(|e| LoggerError::Reload(e.to_string()))?;
    handles.fmt.reload(layer).map_err(|e| LoggerError::Reload(e.to_string()))?;
    handles.filter.reload(filter).map_err(|e| LoggerError::Reload(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(parse_level("Warning").unwrap(), LevelFilter::WARN);
        assert_eq!(parse_level("DEBUG").unwrap(), LevelFilter::DEBUG);
        assert_eq!(parse_level("off").unwrap(), LevelFilter::OFF);
        assert_eq!(
            parse_level("loud").unwrap_err().to_string(),
            "invalid log level 'loud': expected Error, Warning, Info, Debug, Trace or Off"
        );
    }

    /// The only test that installs the process's subscriber.
    #[test]
    fn logger_goes_to_the_file_at_the_level_with_the_options() {
        install();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmr.log");
        init_logger(Some(&path), "Info", true, true).unwrap();
        tracing::info!("first message");
        tracing::debug!("hidden at info");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("first message") && !text.contains("hidden at info"), "{text}");
        assert!(text.contains("INFO") && text.contains("logger.rs:"), "level and origin: {text}");
        init_logger(Some(&path), "Debug", false, false).unwrap();
        tracing::debug!("now shown");
        let text = std::fs::read_to_string(&path).unwrap();
        let last = text.lines().last().unwrap();
        assert!(
            last.contains("now shown") && !last.contains("DEBUG") && !last.contains("logger.rs"),
            "{last}"
        );
        let e = init_logger(Some(Path::new("/nonexistent-dir/l.log")), "Info", true, true).unwrap_err();
        assert!(e.to_string().starts_with("cannot open the log file /nonexistent-dir/l.log: "), "{e}");
    }
}
