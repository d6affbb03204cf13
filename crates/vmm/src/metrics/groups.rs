//! The VMM's own metric groups (the devices' are in `vmr_virtio::metrics`).

use vmr_devices::metric_group;

metric_group!(
    /// The API server (incremented by the HTTP adapter).
    ApiServerMetrics,
    ApiServerSnapshot {
        /// Time from process start to the API socket listening, in microseconds (set once).
        process_startup_time_us,
        /// Requests whose response could not be written back.
        sync_response_fails,
        /// Requests that were not valid HTTP or JSON.
        bad_requests,
    }
);

metric_group!(
    /// `GET` requests served, by route.
    GetRequestsMetrics,
    GetRequestsSnapshot { instance_info_count, machine_cfg_count, vm_config_count, vmm_version_count, device_counters_count }
);

metric_group!(
    /// `PUT` requests, by route: `_count` received, `_fails` answered with an error.
    PutRequestsMetrics,
    PutRequestsSnapshot {
        actions_count,
        actions_fails,
        boot_source_count,
        boot_source_fails,
        drive_count,
        drive_fails,
        entropy_count,
        entropy_fails,
        logger_count,
        logger_fails,
        machine_cfg_count,
        machine_cfg_fails,
        metrics_count,
        metrics_fails,
        network_count,
        network_fails,
        snapshot_create_count,
        snapshot_create_fails,
        snapshot_load_count,
        snapshot_load_fails,
        vsock_count,
        vsock_fails,
    }
);

metric_group!(
    /// `PATCH` requests, by route.
    PatchRequestsMetrics,
    PatchRequestsSnapshot {
        drive_count,
        drive_fails,
        machine_cfg_count,
        machine_cfg_fails,
        network_count,
        network_fails,
        vm_count,
        vm_fails,
    }
);

metric_group!(
    /// vCPU exits by kind, all vCPUs together. Port I/O and MMIO are counted where the backend
    /// hands them to the VMM (a KVM exit, or the software CPU executing the access).
    VcpuMetrics,
    VcpuSnapshot {
        exit_io_in,
        exit_io_out,
        exit_mmio_read,
        exit_mmio_write,
        /// `run()` returned to be stopped or paused (a kick).
        exit_interrupted,
        exit_hlt,
        exit_shutdown,
        exit_system_event,
        /// Internal errors and failed `run()` calls.
        failures,
    }
);
