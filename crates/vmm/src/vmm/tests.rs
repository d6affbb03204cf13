//! The request handler without a running guest: lifecycle rules and how Firecracker's requests
//! become vmr's configuration. Booting guests is tested through the binary (tests/api.rs).

use super::*;

fn vmm() -> Vmm {
    Vmm::new(crate::Accel::Emu, Some("test-vm".into())).unwrap()
}

fn req(vmm: &mut Vmm, method: &str, path: &str, body: &str) -> ApiResult {
    let request = crate::api::router::parse(method, path, body.as_bytes())?;
    vmm.handle_request(request)
}

#[test]
fn not_started_instance_reports_its_state_and_defaults() {
    let mut v = vmm();
    match req(&mut v, "GET", "/", "").unwrap() {
        VmmResponse::InstanceInfo(i) => {
            assert_eq!(i.state, InstanceState::NotStarted);
            assert_eq!(i.id, "test-vm");
            assert_eq!(serde_json::to_value(i.state).unwrap(), "Not started");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        req(&mut v, "GET", "/machine-config", "").unwrap(),
        VmmResponse::MachineConfig(MachineConfig::default())
    );
}

#[test]
fn wrong_state_requests_are_refused() {
    let mut v = vmm();
    for (method, path, body) in [
        ("PATCH", "/vm", r#"{"state":"Paused"}"#),
        ("PATCH", "/vm", r#"{"state":"Resumed"}"#),
        ("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#),
        ("PUT", "/actions", r#"{"action_type":"vmr:PowerButton"}"#),
        ("PATCH", "/drives/x", r#"{"drive_id":"x","path_on_host":"/a"}"#),
    ] {
        let e = req(&mut v, method, path, body).unwrap_err().to_string();
        assert!(e.contains("before the VM has started"), "{method} {path}: {e}");
    }
    let e = req(&mut v, "PUT", "/actions", r#"{"action_type":"InstanceStart"}"#).unwrap_err();
    assert!(e.to_string().contains("no boot source"), "{e}");
}

#[test]
fn machine_config_is_checked_and_patched() {
    let mut v = vmm();
    req(&mut v, "PUT", "/machine-config", r#"{"vcpu_count":2,"mem_size_mib":256}"#).unwrap();
    req(&mut v, "PATCH", "/machine-config", r#"{"mem_size_mib":512}"#).unwrap();
    assert_eq!((v.config.vcpus, v.config.memory), (2, 512 << 20));
    for bad in [
        r#"{"vcpu_count":0,"mem_size_mib":256}"#,
        r#"{"vcpu_count":33,"mem_size_mib":256}"#,
        r#"{"vcpu_count":1,"mem_size_mib":1}"#,
        r#"{"vcpu_count":1,"mem_size_mib":18446744073709551615}"#,
        r#"{"vcpu_count":1,"mem_size_mib":128,"smt":true}"#,
        r#"{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"T2"}"#,
    ] {
        assert!(req(&mut v, "PUT", "/machine-config", bad).is_err(), "{bad}");
    }
    assert_eq!((v.config.vcpus, v.config.memory), (2, 512 << 20), "a refused request changes nothing");
}

#[test]
fn drives_become_disks_with_the_root_first_and_root_on_the_command_line() {
    let mut v = vmm();
    req(&mut v, "PUT", "/boot-source", r#"{"kernel_image_path":"/k","boot_args":"console=ttyS0"}"#).unwrap();
    req(
        &mut v,
        "PUT",
        "/drives/data",
        r#"{"drive_id":"data","path_on_host":"/d.img","is_root_device":false}"#,
    )
    .unwrap();
    req(
        &mut v,
        "PUT",
        "/drives/rootfs",
        r#"{"drive_id":"rootfs","path_on_host":"/r.img","is_root_device":true,"is_read_only":true}"#,
    )
    .unwrap();
    let c = v.effective_config().unwrap();
    assert_eq!(c.virtio.disks[0].path, PathBuf::from("/r.img"));
    assert!(c.virtio.disks[0].read_only);
    assert_eq!(c.virtio.disks[1].path, PathBuf::from("/d.img"));
    assert_eq!(c.cmdline, "console=ttyS0 root=/dev/vda ro");
    let e = req(
        &mut v,
        "PUT",
        "/drives/other",
        r#"{"drive_id":"other","path_on_host":"/o","is_root_device":true}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("root device is already configured"));
    // PUT again with the same id replaces the drive.
    req(
        &mut v,
        "PUT",
        "/drives/data",
        r#"{"drive_id":"data","path_on_host":"/e.img","is_root_device":false}"#,
    )
    .unwrap();
    assert_eq!(v.effective_config().unwrap().virtio.disks.len(), 2);
    let limited = r#"{"drive_id":"x","path_on_host":"/x","is_root_device":false,
        "rate_limiter":{"bandwidth":{"size":1000,"refill_time":100}}}"#;
    req(&mut v, "PUT", "/drives/x", limited).unwrap();
    let disks = v.effective_config().unwrap().virtio.disks;
    assert_eq!(disks.last().unwrap().rate_limiter.bandwidth.unwrap().size, 1000);
    let zero = r#"{"drive_id":"y","path_on_host":"/y","is_root_device":false,
        "rate_limiter":{"ops":{"size":10,"refill_time":0}}}"#;
    assert!(req(&mut v, "PUT", "/drives/y", zero).unwrap_err().to_string().contains("refill_time"));
}

#[test]
fn network_vsock_entropy_and_the_full_config() {
    let mut v = vmm();
    req(&mut v, "PUT", "/boot-source", r#"{"kernel_image_path":"/k"}"#).unwrap();
    req(
        &mut v,
        "PUT",
        "/network-interfaces/eth0",
        r#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:ac:10:00:02"}"#,
    )
    .unwrap();
    assert!(req(
        &mut v,
        "PUT",
        "/network-interfaces/eth1",
        r#"{"iface_id":"eth1","host_dev_name":"tap1","guest_mac":"zz"}"#
    )
    .is_err());
    req(&mut v, "PUT", "/vsock", r#"{"guest_cid":3,"uds_path":"/tmp/v.sock"}"#).unwrap();
    req(&mut v, "PUT", "/entropy", "{}").unwrap();
    let VmmResponse::VmConfig(full) = req(&mut v, "GET", "/vm/config", "").unwrap() else { panic!() };
    assert_eq!(full.network_interfaces[0].guest_mac.as_deref(), Some("06:00:ac:10:00:02"));
    assert_eq!(full.vsock.as_ref().unwrap().guest_cid, 3);
    assert!(full.entropy.is_some());
    assert_eq!(full.boot_source.as_ref().unwrap().boot_args.as_deref(), Some(crate::DEFAULT_CMDLINE));
    // The full config is a valid config file for another VMM.
    let text = serde_json::to_string(&full).unwrap();
    let mut other = vmm();
    other.apply_config_file(serde_json::from_str(&text).unwrap()).unwrap();
    assert_eq!(other.full_config(), *full);
}

#[test]
fn config_file_sections_vmr_does_not_serve_are_refused() {
    let mut v = vmm();
    let file: FullVmConfig =
        serde_json::from_str(r#"{"boot-source":{"kernel_image_path":"/k"},"balloon":{"amount_mib":1}}"#)
            .unwrap();
    assert!(v.apply_config_file(file).unwrap_err().to_string().contains("balloon"));
    assert!(serde_json::from_str::<FullVmConfig>(r#"{"boot-source":{"kernel_image_path":"/k"},"bogus":1}"#)
        .is_err());
    let no_boot: FullVmConfig = serde_json::from_str("{}").unwrap();
    assert!(v.apply_config_file(no_boot).unwrap_err().to_string().contains("boot-source"));
}

#[test]
fn the_command_line_config_round_trips_with_drive_ids() {
    let config = VmConfig {
        kernel: "/k".into(),
        initrd: None,
        cmdline: "console=ttyS0".into(),
        vcpus: 2,
        memory: 256 << 20,
        accel: crate::Accel::Emu,
        reboot: RebootPolicy::Exit,
        cmdline_hints: true,
        virtio: crate::devices::VirtioConfig {
            disks: vec![crate::devices::options::parse_disk("path=/a.img,readonly=on").unwrap()],
            nets: vec![],
            vsock: None,
            rng: true,
        },
    };
    let v = Vmm::from_config(&config).unwrap();
    assert_eq!(v.effective_config().unwrap(), config);
    let full = v.full_config();
    assert_eq!(full.drives[0].drive_id, "disk0");
    assert_eq!(full.drives[0].is_read_only, Some(true));
}

#[test]
fn requests_arrive_through_the_handle_from_other_threads() {
    let v = vmm();
    let handle = v.handle();
    let thread = std::thread::spawn(move || handle.call(VmmRequest::GetVersion));
    // Serve exactly one event on this (the VMM's) thread.
    let mut v = v;
    let event = v.events.recv().unwrap();
    assert!(v.dispatch(event).unwrap().is_none());
    match thread.join().unwrap().unwrap() {
        VmmResponse::Version(ver) => {
            assert_eq!(
                (ver.firecracker_version.as_str(), ver.vmr_version.as_str()),
                (FIRECRACKER_COMPAT_VERSION, VERSION)
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_limiter_patch_replaces_named_buckets_keeps_the_others_and_reaches_the_device() {
    use vmr_virtio::rate_limiter::{RateLimiter, RateLimiterConfig, RateLimiterHandle, TokenBucketConfig};
    let bucket = |size, refill_time| Some(TokenBucketConfig { size, one_time_burst: None, refill_time });
    let current = RateLimiterConfig { bandwidth: bucket(1 << 20, 1000), ops: bucket(100, 1000) };
    let handle = RateLimiterHandle::new(std::sync::Arc::new(RateLimiter::new(&current).unwrap()));
    assert_eq!(patched_limiter(&current, None).unwrap(), None, "no rate_limiter: nothing changes");
    let update: RateLimiterConfig =
        serde_json::from_str(r#"{"bandwidth":{"size":4096,"refill_time":100}}"#).unwrap();
    let patched = patched_limiter(&current, Some(update)).unwrap().unwrap();
    assert_eq!(patched, RateLimiterConfig { bandwidth: bucket(4096, 100), ops: bucket(100, 1000) });
    handle.update(&patched).unwrap();
    assert_eq!(handle.config(), patched);
    // Size 0 lifts a limit; the limiter then shows only what is left.
    let update: RateLimiterConfig = serde_json::from_str(r#"{"ops":{"size":0,"refill_time":0}}"#).unwrap();
    let patched = patched_limiter(&handle.config(), Some(update)).unwrap().unwrap();
    assert_eq!(patched, RateLimiterConfig { bandwidth: bucket(4096, 100), ops: None });
    assert_eq!(shown_limiter(&RateLimiterConfig::default()), None);
    let bad: RateLimiterConfig = serde_json::from_str(r#"{"ops":{"size":10,"refill_time":0}}"#).unwrap();
    let e = patched_limiter(&current, Some(bad)).unwrap_err().to_string();
    assert!(e.contains("refill_time"), "{e}");
}

#[test]
fn limiter_patches_before_boot_and_for_unknown_devices_are_refused() {
    let mut v = vmm();
    let body = r#"{"iface_id":"eth0","rx_rate_limiter":{"bandwidth":{"size":1000,"refill_time":100}}}"#;
    let e = req(&mut v, "PATCH", "/network-interfaces/eth0", body).unwrap_err().to_string();
    assert!(e.contains("before the VM has started"), "{e}");
    let body = r#"{"drive_id":"x","rate_limiter":{"ops":{"size":10,"refill_time":100}}}"#;
    let e = req(&mut v, "PATCH", "/drives/x", body).unwrap_err().to_string();
    assert!(e.contains("before the VM has started"), "{e}");
}

#[test]
fn bad_network_and_vsock_values_are_refused_naming_the_field() {
    let mut v = vmm();
    let err = |v: &mut Vmm, path: &str, body: &str| req(v, "PUT", path, body).unwrap_err().to_string();
    let e = err(
        &mut v,
        "/network-interfaces/eth0",
        r#"{"iface_id":"eth0","host_dev_name":"a-name-far-too-long"}"#,
    );
    assert!(e.contains("host_dev_name: tap name must be 1 to 15 bytes"), "{e}");
    let e = err(
        &mut v,
        "/network-interfaces/eth0",
        r#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"01:00:00:00:00:01"}"#,
    );
    assert!(e.contains("guest_mac: '01:00:00:00:00:01' is not a unicast MAC"), "{e}");
    let e = err(&mut v, "/vsock", r#"{"guest_cid":2,"uds_path":"/tmp/v.sock"}"#);
    assert!(e.contains("guest_cid: cid '2' is not a number from 3 to 4294967294"), "{e}");
    let e = err(&mut v, "/vsock", r#"{"guest_cid":3,"uds_path":""}"#);
    assert!(e.contains("uds_path must not be empty"), "{e}");
    let VmmResponse::VmConfig(full) = req(&mut v, "GET", "/vm/config", "").unwrap() else { panic!() };
    assert!(full.network_interfaces.is_empty() && full.vsock.is_none(), "nothing refused was kept");
}
