//! The API's request counters in the process metrics (Firecracker's `get_api_requests`,
//! `put_api_requests`, `patch_api_requests` and `api_server.bad_requests`): the server counts
//! each request by route when it parses, and counts it again as failed when the VMM refuses it.

use vmr_devices::metrics::Counter;

use super::{ApiResult, VmmRequest};
use crate::metrics::metrics;

/// The (received, failed) counters of a request's route; GETs have no failure counter.
fn counters(request: &VmmRequest) -> (&'static Counter, Option<&'static Counter>) {
    let (get, put, patch) =
        (&metrics().get_api_requests, &metrics().put_api_requests, &metrics().patch_api_requests);
    use VmmRequest as R;
    match request {
        R::GetInstanceInfo => (&get.instance_info_count, None),
        R::GetVersion => (&get.vmm_version_count, None),
        R::GetVmConfig => (&get.vm_config_count, None),
        R::GetMachineConfig => (&get.machine_cfg_count, None),
        R::GetDeviceCounters => (&get.device_counters_count, None),
        R::PutMachineConfig(_) => (&put.machine_cfg_count, Some(&put.machine_cfg_fails)),
        R::PatchMachineConfig(_) => (&patch.machine_cfg_count, Some(&patch.machine_cfg_fails)),
        R::PutBootSource(_) => (&put.boot_source_count, Some(&put.boot_source_fails)),
        R::PutDrive(_) => (&put.drive_count, Some(&put.drive_fails)),
        R::PatchDrive(_) => (&patch.drive_count, Some(&patch.drive_fails)),
        R::PutNetworkInterface(_) => (&put.network_count, Some(&put.network_fails)),
        R::PatchNetworkInterface(_) => (&patch.network_count, Some(&patch.network_fails)),
        R::PutVsock(_) => (&put.vsock_count, Some(&put.vsock_fails)),
        R::PutEntropy(_) => (&put.entropy_count, Some(&put.entropy_fails)),
        R::PutLogger(_) => (&put.logger_count, Some(&put.logger_fails)),
        R::PutMetrics(_) => (&put.metrics_count, Some(&put.metrics_fails)),
        R::Action(_) => (&put.actions_count, Some(&put.actions_fails)),
        R::Pause | R::Resume => (&patch.vm_count, Some(&patch.vm_fails)),
        R::CreateSnapshot(_) => (&put.snapshot_create_count, Some(&put.snapshot_create_fails)),
        R::LoadSnapshot(_) => (&put.snapshot_load_count, Some(&put.snapshot_load_fails)),
    }
}

/// Counts a parsed request as received (before the VMM handles it, so a `FlushMetrics`
/// includes itself, as in Firecracker).
pub(crate) fn received(request: &VmmRequest) {
    counters(request).0.inc();
}

/// Counts the VMM's answer: a refusal adds to the route's failures.
pub(crate) fn answered(request: &VmmRequest, result: &ApiResult) {
    if let (Err(_), (_, Some(fails))) = (result, counters(request)) {
        fails.inc();
    }
}

/// A request that did not parse (unknown path or method, bad body, body too large): its route
/// is unknown, so it counts in `api_server.bad_requests`.
pub(crate) fn bad_request() {
    metrics().api_server.bad_requests.inc();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::router::parse;

    #[test]
    fn requests_count_by_route_and_refusals_as_failures() {
        let patch = &metrics().patch_api_requests;
        let (count, fails) = (patch.drive_count.get(), patch.drive_fails.get());
        let request = parse("PATCH", "/drives/d", br#"{"drive_id":"d"}"#).unwrap();
        received(&request);
        answered(&request, &Ok(crate::api::VmmResponse::Empty));
        received(&request);
        answered(&request, &Err(crate::api::ApiError::Gone));
        assert_eq!((patch.drive_count.get() - count, patch.drive_fails.get() - fails), (2, 1));
        let get = &metrics().get_api_requests;
        let before = get.device_counters_count.get();
        let request = parse("GET", "/vmr/counters", b"").unwrap();
        received(&request);
        answered(&request, &Err(crate::api::ApiError::Gone));
        assert_eq!(get.device_counters_count.get() - before, 1);
        let bad = metrics().api_server.bad_requests.get();
        bad_request();
        assert_eq!(metrics().api_server.bad_requests.get() - bad, 1);
    }
}
