//! The storage-pool half of vmrd's API.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::api::blocking;
use crate::def::parse_disk_size;
use crate::{pool, Daemon, DaemonError};

type Shared = State<Arc<Daemon>>;

pub fn routes() -> Router<Arc<Daemon>> {
    Router::new()
        .route("/pools", get(list_pools).post(define_pool))
        .route("/pools/{pool}", get(pool_info).delete(delete_pool))
        .route("/pools/{pool}/build", post(build_pool))
        .route("/pools/{pool}/start", post(start_pool))
        .route("/pools/{pool}/import", post(import_volume))
        .route("/pools/{pool}/volumes", get(list_volumes).post(create_volume))
        .route("/pools/{pool}/volumes/{volume}", get(volume_info).delete(delete_volume))
        .route("/pools/{pool}/volumes/{volume}/resize", post(resize_volume))
        .route("/pools/{pool}/volumes/{volume}/clone", post(clone_volume))
}

async fn list_pools(State(d): Shared) -> Response {
    blocking(move || {
        pool::names(&d.state)?.iter().map(|n| pool::info(&d.state, n)).collect::<Result<Vec<_>, _>>()
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolBody {
    name: String,
    #[serde(rename = "type", default = "dir")]
    kind: String,
    path: PathBuf,
}

fn dir() -> String {
    "dir".into()
}

async fn define_pool(State(d): Shared, Json(b): Json<PoolBody>) -> Response {
    blocking(move || {
        let _guard = d.locked();
        pool::define(&d.state, &b.name, &b.kind, &b.path)
    })
    .await
}

async fn pool_info(State(d): Shared, UrlPath(name): UrlPath<String>) -> Response {
    blocking(move || pool::info(&d.state, &name)).await
}

async fn delete_pool(State(d): Shared, UrlPath(name): UrlPath<String>) -> Response {
    blocking(move || {
        let _guard = d.locked();
        pool::delete(&d.state, &name).map(|()| json!({}))
    })
    .await
}

async fn build_pool(State(d): Shared, UrlPath(name): UrlPath<String>) -> Response {
    blocking(move || pool::build(&d.state, &name).and_then(|()| pool::info(&d.state, &name))).await
}

async fn start_pool(State(d): Shared, UrlPath(name): UrlPath<String>) -> Response {
    blocking(move || {
        let _guard = d.locked();
        pool::start(&d.state, &name).and_then(|()| pool::info(&d.state, &name))
    })
    .await
}

async fn list_volumes(State(d): Shared, UrlPath(name): UrlPath<String>) -> Response {
    blocking(move || {
        let def = pool::active(&d.state, &name)?;
        pool::volume_names(&def)?.iter().map(|v| pool::volume_info(&def, v)).collect::<Result<Vec<_>, _>>()
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeBody {
    name: String,
    size: String,
    #[serde(default)]
    format: Option<String>,
}

async fn create_volume(
    State(d): Shared,
    UrlPath(name): UrlPath<String>,
    Json(b): Json<VolumeBody>,
) -> Response {
    blocking(move || {
        let _guard = d.locked();
        let def = pool::active(&d.state, &name)?;
        let size = parse_disk_size(&b.size)?;
        pool::create_volume(&d.state, &def, &b.name, size, b.format.as_deref())?;
        pool::volume_info(&def, &b.name)
    })
    .await
}

async fn volume_info(State(d): Shared, UrlPath((name, vol)): UrlPath<(String, String)>) -> Response {
    blocking(move || pool::volume_info(&pool::active(&d.state, &name)?, &vol)).await
}

/// The VM that uses a volume, as an error for operations that must not touch it.
fn refuse_if_used(d: &Daemon, def: &pool::PoolDef, vol: &str, running_only: bool) -> Result<(), DaemonError> {
    let path = pool::existing_volume(def, vol)?;
    if let Some(vm) = d.volume_user(&path)? {
        let running = d.runtime(&vm).running_pid().is_some();
        if running || !running_only {
            let what = if running { "running VM" } else { "VM" };
            return Err(DaemonError::Conflict(format!("volume {}/{vol} is used by {what} {vm}", def.name)));
        }
    }
    Ok(())
}

async fn delete_volume(State(d): Shared, UrlPath((name, vol)): UrlPath<(String, String)>) -> Response {
    blocking(move || {
        let _guard = d.locked();
        let def = pool::active(&d.state, &name)?;
        refuse_if_used(&d, &def, &vol, false)?;
        pool::delete_volume(&d.state, &def, &vol).map(|()| json!({}))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeBody {
    size: String,
}

async fn resize_volume(
    State(d): Shared,
    UrlPath((name, vol)): UrlPath<(String, String)>,
    Json(b): Json<ResizeBody>,
) -> Response {
    blocking(move || {
        let _guard = d.locked();
        let def = pool::active(&d.state, &name)?;
        refuse_if_used(&d, &def, &vol, true)?;
        pool::resize_volume(&def, &vol, parse_disk_size(&b.size)?)?;
        pool::volume_info(&def, &vol)
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloneBody {
    name: String,
    #[serde(default)]
    overlay: bool,
}

async fn clone_volume(
    State(d): Shared,
    UrlPath((name, vol)): UrlPath<(String, String)>,
    Json(b): Json<CloneBody>,
) -> Response {
    blocking(move || {
        let _guard = d.locked();
        let def = pool::active(&d.state, &name)?;
        if !b.overlay {
            // A full copy of a disk a guest is writing would be torn.
            refuse_if_used(&d, &def, &vol, true)?;
        }
        pool::clone_volume(&d.state, &def, &vol, &b.name, b.overlay)?;
        pool::volume_info(&def, &b.name)
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportBody {
    file: PathBuf,
    #[serde(default)]
    name: Option<String>,
}

async fn import_volume(
    State(d): Shared,
    UrlPath(name): UrlPath<String>,
    Json(b): Json<ImportBody>,
) -> Response {
    blocking(move || {
        let _guard = d.locked();
        let def = pool::active(&d.state, &name)?;
        let vol = match b.name {
            Some(n) => n,
            None => b.file.file_name().and_then(|n| n.to_str()).map(String::from).unwrap_or_default(),
        };
        pool::import_volume(&d.state, &def, &b.file, &vol)?;
        pool::volume_info(&def, &vol)
    })
    .await
}
