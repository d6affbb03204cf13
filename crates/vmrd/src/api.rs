//! vmrd's REST/JSON API on a Unix socket (axum on a current-thread tokio runtime). Every
//! handler runs the daemon's blocking operation on tokio's blocking pool, so a slow shutdown
//! of one VM does not hold up requests about others. Documented in `docs/api/vmrd.yaml`;
//! `ROUTES` is what the OpenAPI test compares that document with.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{Daemon, DaemonError};

/// Every (method, path) served.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/version"),
    ("GET", "/vms"),
    ("POST", "/vms"),
    ("GET", "/vms/{name}"),
    ("PUT", "/vms/{name}"),
    ("DELETE", "/vms/{name}"),
    ("GET", "/vms/{name}/definition"),
    ("PUT", "/vms/{name}/autostart"),
    ("POST", "/vms/{name}/start"),
    ("POST", "/vms/{name}/shutdown"),
    ("POST", "/vms/{name}/destroy"),
    ("POST", "/vms/{name}/reboot"),
    ("POST", "/vms/{name}/suspend"),
    ("POST", "/vms/{name}/resume"),
    ("GET", "/pools"),
    ("POST", "/pools"),
    ("GET", "/pools/{pool}"),
    ("DELETE", "/pools/{pool}"),
    ("POST", "/pools/{pool}/build"),
    ("POST", "/pools/{pool}/start"),
    ("POST", "/pools/{pool}/import"),
    ("GET", "/pools/{pool}/volumes"),
    ("POST", "/pools/{pool}/volumes"),
    ("GET", "/pools/{pool}/volumes/{volume}"),
    ("DELETE", "/pools/{pool}/volumes/{volume}"),
    ("POST", "/pools/{pool}/volumes/{volume}/resize"),
    ("POST", "/pools/{pool}/volumes/{volume}/clone"),
    ("GET", "/networks"),
    ("POST", "/networks"),
    ("GET", "/networks/{network}"),
    ("DELETE", "/networks/{network}"),
    ("POST", "/networks/{network}/start"),
    ("POST", "/networks/{network}/stop"),
    ("GET", "/networks/{network}/leases"),
];

type Shared = State<Arc<Daemon>>;

impl IntoResponse for DaemonError {
    fn into_response(self) -> Response {
        let status = match &self {
            DaemonError::Invalid(_) => StatusCode::BAD_REQUEST,
            DaemonError::NotFound(_) => StatusCode::NOT_FOUND,
            DaemonError::Conflict(_) => StatusCode::CONFLICT,
            DaemonError::Internal(_) | DaemonError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// Runs a blocking daemon operation off the runtime's thread.
pub(crate) async fn blocking<T: Serialize + Send + 'static>(
    f: impl FnOnce() -> Result<T, DaemonError> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Json(value).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => DaemonError::Internal(format!("operation failed: {e}")).into_response(),
    }
}

pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/version", get(|| async { Json(json!({ "vmrd_version": vmr_vmm::VERSION })) }))
        .route("/vms", get(list_vms).post(define_vm))
        .route("/vms/{name}", get(vm_info).put(edit_vm).delete(undefine_vm))
        .route("/vms/{name}/definition", get(vm_definition))
        .route("/vms/{name}/autostart", put(set_autostart))
        .route("/vms/{name}/start", post(start_vm))
        .route("/vms/{name}/shutdown", post(shutdown_vm))
        .route("/vms/{name}/destroy", post(destroy_vm))
        .route("/vms/{name}/reboot", post(|s, n| vm_action(s, n, "reboot")))
        .route("/vms/{name}/suspend", post(|s, n| vm_action(s, n, "suspend")))
        .route("/vms/{name}/resume", post(|s, n| vm_action(s, n, "resume")))
        .merge(crate::api_pools::routes())
        .merge(crate::api_nets::routes())
        .fallback(|| async { DaemonError::NotFound("no such route (see docs/api/vmrd.yaml)".into()) })
        .with_state(daemon)
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

async fn list_vms(State(d): Shared, Query(q): Query<ListQuery>) -> Response {
    blocking(move || d.list(q.all)).await
}

/// A definition in TOML, as the user wrote it.
#[derive(Serialize, Deserialize)]
pub struct DefinitionBody {
    pub definition: String,
}

async fn define_vm(State(d): Shared, Json(body): Json<DefinitionBody>) -> Response {
    blocking(move || d.define(&body.definition, None).and_then(|def| d.info(&def.name))).await
}

async fn edit_vm(
    State(d): Shared,
    UrlPath(name): UrlPath<String>,
    Json(body): Json<DefinitionBody>,
) -> Response {
    blocking(move || d.define(&body.definition, Some(&name)).and_then(|def| d.info(&def.name))).await
}

async fn vm_info(State(d): Shared, UrlPath(name): UrlPath<String>) -> Response {
    blocking(move || d.info(&name)).await
}

async fn vm_definition(State(d): Shared, UrlPath(name): UrlPath<String>) -> Response {
    blocking(move || d.load(&name).map(|(definition, _)| DefinitionBody { definition })).await
}

#[derive(Deserialize)]
struct UndefineQuery {
    #[serde(default)]
    keep_volumes: bool,
}

async fn undefine_vm(
    State(d): Shared,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<UndefineQuery>,
) -> Response {
    blocking(move || d.undefine(&name, q.keep_volumes).map(|removed| json!({ "removed_volumes": removed })))
        .await
}

#[derive(Deserialize)]
struct AutostartBody {
    autostart: bool,
}

async fn set_autostart(
    State(d): Shared,
    UrlPath(name): UrlPath<String>,
    Json(b): Json<AutostartBody>,
) -> Response {
    blocking(move || d.set_autostart(&name, b.autostart).map(|()| json!({ "autostart": b.autostart }))).await
}

async fn start_vm(State(d): Shared, UrlPath(name): UrlPath<String>) -> Response {
    blocking(move || d.start(&name).map(|pid| json!({ "pid": pid }))).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShutdownBody {
    #[serde(default = "default_timeout")]
    timeout_s: u64,
    #[serde(default)]
    force: bool,
}

fn default_timeout() -> u64 {
    60
}

async fn shutdown_vm(
    State(d): Shared,
    UrlPath(name): UrlPath<String>,
    Json(b): Json<ShutdownBody>,
) -> Response {
    let timeout = Duration::from_secs(b.timeout_s);
    blocking(move || d.shutdown(&name, timeout, b.force).map(|result| json!({ "result": result }))).await
}

async fn destroy_vm(State(d): Shared, UrlPath(name): UrlPath<String>) -> Response {
    blocking(move || d.destroy(&name).map(|()| json!({}))).await
}

async fn vm_action(State(d): Shared, UrlPath(name): UrlPath<String>, action: &'static str) -> Response {
    blocking(move || d.vm_action(&name, action).map(|()| json!({}))).await
}

/// Holds `vmrd.lock` in the state directory for the life of the daemon: one vmrd per state.
pub fn take_instance_lock(daemon: &Daemon) -> Result<File, DaemonError> {
    let path = daemon.state.root.join("vmrd.lock");
    let file = File::create(&path)?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(DaemonError::Conflict(format!(
            "another vmrd already serves {}",
            daemon.state.root.display()
        )));
    }
    Ok(file)
}

/// Binds the API socket (owner-only), replacing a stale one (the instance lock proves no
/// other vmrd serves it).
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, DaemonError> {
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| DaemonError::Internal(format!("cannot bind {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves until SIGTERM or SIGINT.
pub async fn serve(
    daemon: Arc<Daemon>,
    listener: std::os::unix::net::UnixListener,
) -> Result<(), DaemonError> {
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let stop = async {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            }
            _ => std::future::pending::<()>().await,
        }
    };
    axum::serve(listener, router(daemon)).with_graceful_shutdown(stop).await?;
    Ok(())
}

/// Where the CLI finds vmrd: `$VMRD_SOCKET`, else `vmrd.sock` in the default state directory.
pub fn default_socket() -> PathBuf {
    std::env::var_os("VMRD_SOCKET")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::default_state_dir().join("vmrd.sock"))
}

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;
