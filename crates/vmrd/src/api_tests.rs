//! docs/api/vmrd.yaml against the router: the same routes, each really served.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use super::*;

fn documented_routes() -> Vec<(String, String)> {
    vmr_vmm::api::openapi_routes(include_str!("../../../docs/api/vmrd.yaml"))
}

async fn status_and_body(router: &Router, method: &str, path: &str) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[test]
fn openapi_document_matches_the_router() {
    let mut documented = documented_routes();
    let mut served: Vec<(String, String)> =
        ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    documented.sort();
    served.sort();
    assert!(documented.len() >= 27, "{documented:?}");
    assert_eq!(documented, served, "docs/api/vmrd.yaml and api::ROUTES differ");

    let dir = tempfile::tempdir().unwrap();
    let opts = crate::Options {
        state_dir: dir.path().to_path_buf(),
        socket: None,
        vmr: "/bin/false".into(),
        accel: "emu".into(),
        console_log_max: 1 << 20,
    };
    let router = router(Daemon::open(opts).unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        for (method, path) in &served {
            let concrete = path
                .replace("{name}", "vm1")
                .replace("{pool}", "p1")
                .replace("{volume}", "v1")
                .replace("{network}", "n1");
            let (status, body) = status_and_body(&router, method, &concrete).await;
            // Served: the handler answered (an unknown VM or a bad body), not the fallback.
            assert!(!body.contains("no such route"), "{method} {path}: {status} {body}");
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            for other in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
                if !served.iter().any(|(m, p)| m == other && p == path) {
                    let (status, _) = status_and_body(&router, other, &concrete).await;
                    assert_eq!(
                        status,
                        StatusCode::METHOD_NOT_ALLOWED,
                        "{other} {path} is answered but not listed"
                    );
                }
            }
        }
        let (status, body) = status_and_body(&router, "GET", "/nope").await;
        assert_eq!((status, body.contains("no such route")), (StatusCode::NOT_FOUND, true));
        let (status, body) = status_and_body(&router, "GET", "/vms/ghost").await;
        assert_eq!((status, body.as_str()), (StatusCode::NOT_FOUND, r#"{"error":"no VM named 'ghost'"}"#));
    });
}
