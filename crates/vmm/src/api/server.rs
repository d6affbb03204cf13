//! The API server: HTTP/1.1 on a Unix socket, on one thread (`vmr-api`) running a
//! current-thread tokio runtime with hyper. Each connection is a task, so a client that sends
//! half a request and stalls holds only its own connection (and loses it after
//! [`HEADER_TIMEOUT`] / [`BODY_TIMEOUT`]). Requests go to the VMM thread through a
//! [`VmmHandle`]; the server never touches the machine itself.

use std::convert::Infallible;
use std::io;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use thiserror::Error;

use super::counting;
use super::router::{self, MAX_BODY};
use super::{ApiError, ApiResult, VmmHandle};

/// A client must send its request head within this time.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// ... and its body within this time after the head.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("API socket {0}: the path already exists (remove it, or choose another path)")]
    Exists(PathBuf),
    #[error("cannot create the API socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the API server: {0}")]
    Start(#[source] io::Error),
}

/// A running server; dropping it removes the socket file (the thread ends with the process).
pub struct ApiServer {
    path: PathBuf,
    _thread: JoinHandle<()>,
}

impl ApiServer {
    /// Creates the socket at `path` (which must not exist, as with Firecracker) and serves
    /// requests to `vmm` on a new thread.
    pub fn start(path: &Path, vmm: VmmHandle) -> Result<Self, ServerError> {
        if path.symlink_metadata().is_ok() {
            return Err(ServerError::Exists(path.to_path_buf()));
        }
        let listener = StdUnixListener::bind(path)
            .map_err(|source| ServerError::Bind { path: path.to_path_buf(), source })?;
        let remove = |e| {
            let _ = std::fs::remove_file(path);
            ServerError::Start(e)
        };
        listener.set_nonblocking(true).map_err(remove)?;
        let startup = crate::stats::since_process_start().as_micros();
        crate::metrics::metrics().api_server.process_startup_time_us.add(startup as u64);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(remove)?;
        let thread = std::thread::Builder::new()
            .name("vmr-api".into())
            .spawn(move || {
                // The server thread parses what clients send: it runs under the API's list
                // (stacked on its spawner's), like every other vmr thread.
                crate::seccomp::apply_for_thread(crate::seccomp::Role::Api);
                runtime.block_on(serve(listener, vmm))
            })
            .map_err(remove)?;
        Ok(ApiServer { path: path.to_path_buf(), _thread: thread })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve(listener: StdUnixListener, vmm: VmmHandle) {
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("API server: {e}");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like: keep serving the connections we have.
                tracing::warn!("API server: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let vmm = vmm.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, vmm.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(64 * 1024)
                // A client may close its sending side once the request is out (socat, nc -N,
                // shell scripts): the request is still answered.
                .half_close(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("API connection ended: {e}");
            }
        });
    }
}

async fn answer(req: Request<Incoming>, vmm: VmmHandle) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let parsed = match read_body(req).await {
        Ok(body) => router::parse(&method, &path, &body),
        Err(e) => Err(e),
    };
    let result = match parsed {
        Ok(request) => {
            counting::received(&request);
            let result = call(&vmm, request.clone()).await;
            counting::answered(&request, &result);
            result
        }
        Err(e) => {
            counting::bad_request();
            Err(e)
        }
    };
    if let Err(e) = &result {
        tracing::info!("API {method} {path}: {e}");
    }
    let (status, body) = router::render(&result);
    let mut response = Response::new(Full::new(body.map(Bytes::from).unwrap_or_default()));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_REQUEST);
    if status != 204 {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    }
    Ok(response)
}

/// Bytes of an oversized body read and thrown away before answering 413, so that a client
/// still sending it gets the answer instead of a connection reset.
const DRAIN_LIMIT: usize = 1 << 20;

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let declared = req.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
    let too_large = declared.and_then(|v| v.parse::<usize>().ok()).is_some_and(|n| n > MAX_BODY);
    let mut body = req.into_body();
    if too_large {
        drain(&mut body).await;
        return Err(ApiError::PayloadTooLarge(MAX_BODY));
    }
    let mut collected = Vec::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ApiError::BadBody(format!("cannot read the request body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if collected.len() + data.len() > MAX_BODY {
                    drain(&mut body).await;
                    return Err(ApiError::PayloadTooLarge(MAX_BODY));
                }
                collected.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(())) => Ok(Bytes::from(collected)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::BadBody(format!(
            "the request body did not arrive within {} s",
            BODY_TIMEOUT.as_secs()
        ))),
    }
}

/// Reads and discards up to [`DRAIN_LIMIT`] more bytes of `body` (for at most a second).
async fn drain(body: &mut Incoming) {
    let mut seen = 0;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > DRAIN_LIMIT {
                return;
            }
        }
    })
    .await;
}

/// Hands the request to the VMM thread and waits (asynchronously) for its answer.
async fn call(vmm: &VmmHandle, request: super::VmmRequest) -> ApiResult {
    let (tx, rx) = tokio::sync::oneshot::channel();
    vmm.send(request, Box::new(move |r| drop(tx.send(r))));
    rx.await.unwrap_or(Err(ApiError::Gone))
}
