//! The network half of vmrd's API.

use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::api::blocking;
use crate::{net, Daemon, DaemonError};

type Shared = State<Arc<Daemon>>;

pub fn routes() -> Router<Arc<Daemon>> {
    Router::new()
        .route("/networks", get(list).post(define))
        .route("/networks/{network}", get(info).delete(delete))
        .route("/networks/{network}/start", post(start))
        .route("/networks/{network}/stop", post(stop))
        .route("/networks/{network}/leases", get(leases))
}

async fn list(State(d): Shared) -> Response {
    blocking(move || {
        net::names(&d.state)?.iter().map(|n| net::load(&d.state, n)).collect::<Result<Vec<_>, _>>()
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetBody {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    bridge: Option<String>,
}

async fn define(State(d): Shared, Json(b): Json<NetBody>) -> Response {
    blocking(move || {
        let _guard = d.locked();
        net::define(&d.state, &b.name, &b.kind, b.address.as_deref(), b.bridge.as_deref())
    })
    .await
}

async fn info(State(d): Shared, UrlPath(name): UrlPath<String>) -> Response {
    blocking(move || net::load(&d.state, &name)).await
}

async fn delete(State(d): Shared, UrlPath(name): UrlPath<String>) -> Response {
    blocking(move || {
        let _guard = d.locked();
        net::delete(&d.state, &name).map(|()| json!({}))
    })
    .await
}

async fn start(State(d): Shared, UrlPath(name): UrlPath<String>) -> Response {
    blocking(move || {
        let _guard = d.locked();
        net::start(&d.state, &name)
    })
    .await
}

async fn stop(State(d): Shared, UrlPath(name): UrlPath<String>) -> Response {
    blocking(move || {
        let _guard = d.locked();
        let users = d.network_users(&name);
        if !users.is_empty() {
            return Err(DaemonError::Conflict(format!(
                "network {name} is used by running VM(s) {}",
                users.join(", ")
            )));
        }
        net::stop(&d.state, &name).map(|()| json!({}))
    })
    .await
}

async fn leases(State(d): Shared, UrlPath(name): UrlPath<String>) -> Response {
    blocking(move || net::leases(&d.state, &name)).await
}
