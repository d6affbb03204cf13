//! Firecracker's HTTP API as a pure function: (method, path, body) -> [`VmmRequest`], and
//! [`VmmResponse`] / [`ApiError`] -> (status, JSON body). No I/O here, so the fuzz target and
//! the OpenAPI test drive exactly what the server serves.

use serde::de::DeserializeOwned;

use super::schema::*;
use super::{ApiError, ApiResult, VmmRequest, VmmResponse};

/// Largest request body accepted (Firecracker's default `--http-api-max-payload-size`).
pub const MAX_BODY: usize = 51_200;

/// Every (method, path) the router serves; `{id}` stands for any id. The OpenAPI document is
/// checked against this list.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/version"),
    ("GET", "/vm/config"),
    ("GET", "/machine-config"),
    ("PUT", "/machine-config"),
    ("PATCH", "/machine-config"),
    ("PUT", "/boot-source"),
    ("PUT", "/drives/{id}"),
    ("PATCH", "/drives/{id}"),
    ("PUT", "/network-interfaces/{id}"),
    ("PATCH", "/network-interfaces/{id}"),
    ("PUT", "/vsock"),
    ("PUT", "/entropy"),
    ("PUT", "/logger"),
    ("PUT", "/metrics"),
    ("PUT", "/actions"),
    ("PATCH", "/vm"),
    ("PUT", "/snapshot/create"),
    ("PUT", "/snapshot/load"),
    // vmr extensions (`x-vmr-extension` in the OpenAPI document).
    ("GET", "/vmr/counters"),
];

/// Firecracker endpoints vmr answers with 400 "not served", by path prefix.
pub const NOT_SERVED: &[(&str, &str)] = &[
    ("/mmds", "MMDS (/mmds)"),
    ("/balloon", "the balloon device (/balloon)"),
    ("/pmem", "virtio-pmem (/pmem)"),
    ("/hotplug", "memory hotplug (/hotplug)"),
    ("/cpu-config", "custom CPU templates (/cpu-config)"),
    ("/serial", "the serial output file (/serial)"),
];

/// Turns one HTTP request into a typed request.
pub fn parse(method: &str, path: &str, body: &[u8]) -> Result<VmmRequest, ApiError> {
    let path = path.split('?').next().unwrap_or_default();
    let invalid = || ApiError::InvalidPath { method: method.chars().take(16).collect(), path: clip(path) };
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    for (prefix, what) in NOT_SERVED {
        if path == *prefix || path.starts_with(&format!("{prefix}/")) {
            return Err(ApiError::NotServed(what));
        }
    }
    use VmmRequest as R;
    let request = match (method, parts.as_slice()) {
        ("GET", []) => R::GetInstanceInfo,
        ("GET", ["version"]) => R::GetVersion,
        ("GET", ["vm", "config"]) => R::GetVmConfig,
        ("GET", ["machine-config"]) => R::GetMachineConfig,
        ("GET", ["vmr", "counters"]) => R::GetDeviceCounters,
        ("PUT", ["machine-config"]) => R::PutMachineConfig(json(body)?),
        ("PATCH", ["machine-config"]) => R::PatchMachineConfig(json(body)?),
        ("PUT", ["boot-source"]) => R::PutBootSource(json(body)?),
        ("PUT", ["drives", id]) => {
            let d: Drive = json(body)?;
            same_id(id, &d.drive_id, "drive_id")?;
            R::PutDrive(d)
        }
        ("PATCH", ["drives", id]) => {
            let d: DriveUpdate = json(body)?;
            same_id(id, &d.drive_id, "drive_id")?;
            R::PatchDrive(d)
        }
        ("PUT", ["network-interfaces", id]) => {
            let n: NetworkInterface = json(body)?;
            same_id(id, &n.iface_id, "iface_id")?;
            R::PutNetworkInterface(n)
        }
        ("PATCH", ["network-interfaces", id]) => {
            let n: NetworkInterfaceUpdate = json(body)?;
            same_id(id, &n.iface_id, "iface_id")?;
            R::PatchNetworkInterface(n)
        }
        ("PUT", ["vsock"]) => R::PutVsock(json(body)?),
        ("PUT", ["entropy"]) => R::PutEntropy(json(body)?),
        ("PUT", ["logger"]) => R::PutLogger(json(body)?),
        ("PUT", ["metrics"]) => R::PutMetrics(json(body)?),
        ("PUT", ["actions"]) => R::Action(json::<InstanceActionInfo>(body)?.action_type),
        ("PUT", ["snapshot", "create"]) => R::CreateSnapshot(json(body)?),
        ("PUT", ["snapshot", "load"]) => R::LoadSnapshot(json(body)?),
        ("PATCH", ["vm"]) => match json::<VmStateUpdate>(body)?.state {
            VmStateRequest::Paused => R::Pause,
            VmStateRequest::Resumed => R::Resume,
        },
        _ => return Err(invalid()),
    };
    Ok(request)
}

/// Parses a JSON body; serde's message (with line and column) becomes the fault message.
fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::BadBody("the request needs a JSON body".into()));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadBody(format!("invalid JSON body: {}", one_line(&e.to_string()))))
}

fn same_id(in_path: &str, in_body: &str, field: &str) -> Result<(), ApiError> {
    if in_path == in_body {
        Ok(())
    } else {
        Err(ApiError::BadBody(format!(
            "the {field} in the path ({}) and in the body ({}) differ",
            clip(in_path),
            clip(in_body)
        )))
    }
}

fn clip(text: &str) -> String {
    let mut t: String = text.chars().take(100).collect();
    if t.len() < text.len() {
        t.push_str("...");
    }
    one_line(&t)
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// The HTTP status and JSON body of an answer (`None`: 204 No Content).
pub fn render(result: &ApiResult) -> (u16, Option<String>) {
    let json = |v: Result<String, serde_json::Error>| v.unwrap_or_else(|_| "{}".into());
    match result {
        Ok(VmmResponse::Empty) => (204, None),
        Ok(VmmResponse::InstanceInfo(i)) => (200, Some(json(serde_json::to_string(i)))),
        Ok(VmmResponse::Version(v)) => (200, Some(json(serde_json::to_string(v)))),
        Ok(VmmResponse::MachineConfig(m)) => (200, Some(json(serde_json::to_string(m)))),
        Ok(VmmResponse::VmConfig(c)) => (200, Some(json(serde_json::to_string(c)))),
        Ok(VmmResponse::DeviceCounters(c)) => (200, Some(json(serde_json::to_string(c)))),
        Err(e) => (e.status(), Some(fault(e))),
    }
}

/// `{"fault_message": "..."}` for `e`, on one line.
pub fn fault(e: &ApiError) -> String {
    let body = ApiErrorBody { fault_message: one_line(&e.to_string()) };
    serde_json::to_string(&body).unwrap_or_else(|_| r#"{"fault_message":"internal error"}"#.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(method: &str, path: &str, body: &str) -> String {
        parse(method, path, body.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn firecracker_requests_parse() {
        let r = parse(
            "PUT",
            "/drives/rootfs",
            br#"{"drive_id":"rootfs","path_on_host":"/r.ext4","is_root_device":true,"is_read_only":false}"#,
        );
        assert!(
            matches!(r, Ok(VmmRequest::PutDrive(d)) if d.is_root_device && d.path_on_host.as_deref() == Some("/r.ext4"))
        );
        assert_eq!(
            parse("PUT", "/actions", br#"{"action_type":"InstanceStart"}"#).unwrap(),
            VmmRequest::Action(ActionType::InstanceStart)
        );
        assert_eq!(parse("PATCH", "/vm", br#"{"state":"Paused"}"#).unwrap(), VmmRequest::Pause);
        assert_eq!(parse("GET", "/", b"").unwrap(), VmmRequest::GetInstanceInfo);
        assert_eq!(parse("GET", "/machine-config/", b"").unwrap(), VmmRequest::GetMachineConfig);
        assert_eq!(
            parse("PUT", "/actions", br#"{"action_type":"vmr:PowerButton"}"#).unwrap(),
            VmmRequest::Action(ActionType::PowerButton)
        );
    }

    #[test]
    fn bad_requests_say_why_in_one_line() {
        assert!(err("PUT", "/boot-source", "{").contains("invalid JSON body"));
        assert!(err("PUT", "/boot-source", r#"{"kernel_image_path":"k","colour":1}"#)
            .contains("unknown field `colour`"));
        assert!(err("PUT", "/machine-config", r#"{"vcpu_count":"two","mem_size_mib":128}"#)
            .contains("invalid type"));
        assert!(err("PUT", "/boot-source", "").contains("needs a JSON body"));
        assert!(err("PUT", "/drives/a", r#"{"drive_id":"b","is_root_device":false}"#).contains("differ"));
        assert_eq!(err("DELETE", "/", ""), "Invalid request method and/or path: DELETE /");
        assert!(err("GET", "/nope", "").contains("GET /nope"));
        assert!(err("PUT", "/mmds", "{}").contains("not served by vmr"));
        assert!(err("PUT", "/snapshot/create", "{}").contains("snapshot_path"));
        assert!(err("PUT", "/snapshot/load", r#"{"snapshot_path":"s","x":1}"#).contains("unknown field"));
        assert!(err("PUT", "/actions", r#"{"action_type":"Explode"}"#).contains("unknown variant"));
        for (_, body) in [render(&Err(ApiError::BadBody("a\nb".into())))] {
            assert_eq!(body.unwrap(), r#"{"fault_message":"a b"}"#);
        }
    }

    fn documented_routes() -> Vec<(String, String)> {
        crate::api::openapi_routes(include_str!("../../../../docs/api/vmr.yaml"))
    }

    #[test]
    fn openapi_document_matches_the_router() {
        let placeholder = |p: &str| {
            p.split('/')
                .map(|seg| if seg.starts_with('{') { "{id}" } else { seg })
                .collect::<Vec<_>>()
                .join("/")
        };
        let mut documented: Vec<(String, String)> =
            documented_routes().into_iter().map(|(m, p)| (m, placeholder(&p))).collect();
        let mut served: Vec<(String, String)> =
            ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        documented.sort();
        served.sort();
        assert!(documented.len() >= 17, "{documented:?}");
        assert_eq!(documented, served, "docs/api/vmr.yaml and router::ROUTES differ");
        // Every route is really served: it parses to a request or fails on the body, never on
        // the path.
        for (method, path) in &served {
            let concrete = path.replace("{id}", "x1");
            match parse(method, &concrete, b"{}") {
                Err(ApiError::InvalidPath { .. }) | Err(ApiError::NotServed(_)) => {
                    panic!("{method} {path} is documented but not served")
                }
                _ => {}
            }
        }
        // And no method is served on a known path without being listed.
        for (_, path) in &served {
            for method in ["GET", "PUT", "PATCH", "POST", "DELETE", "HEAD"] {
                let concrete = path.replace("{id}", "x1");
                let listed = served.iter().any(|(m, p)| m == method && p == path);
                let answered = !matches!(parse(method, &concrete, b"{}"), Err(ApiError::InvalidPath { .. }));
                assert_eq!(answered, listed, "{method} {path}: served {answered}, listed {listed}");
            }
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(render(&Ok(VmmResponse::Empty)), (204, None));
        assert_eq!(render(&Err(ApiError::PayloadTooLarge(MAX_BODY))).0, 413);
        assert_eq!(render(&Err(ApiError::NotServed("x"))).0, 400);
    }
}
