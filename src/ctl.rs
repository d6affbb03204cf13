//! `vmr ctl`: a client of a running vmr's API socket, for people (readable output) and
//! scripts (`--json`).

use std::error::Error;
use std::path::PathBuf;

use clap::Subcommand;
use vmr_vmm::api::client::{request, Reply};
use vmr_vmm::api::schema::{FullVmConfig, InstanceInfo};

#[derive(clap::Args)]
pub struct CtlArgs {
    /// The API socket of the vmr to control.
    #[arg(long, value_name = "PATH")]
    api_sock: PathBuf,
    /// Print the API's JSON answers instead of text.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    action: CtlAction,
}

#[derive(Subcommand)]
enum CtlAction {
    /// State, version and configuration of the VM.
    Info,
    /// Pause the VM (its vCPUs stop; no host CPU is used).
    Pause,
    /// Resume a paused VM.
    Resume,
    /// Ask the guest to shut down cleanly (the ACPI power button).
    Shutdown,
    /// Press the ACPI power button (same as shutdown).
    PowerButton,
    /// Type Ctrl-Alt-Del on the guest's keyboard.
    CtrlAltDel,
    /// Write the metrics now (Firecracker's FlushMetrics).
    Metrics,
    /// Per-device counters (bytes, requests, drops, throttling) since each device was opened.
    Counters,
    /// Give drive ID a new backing file; the guest sees the new size.
    SetDrive { id: String, file: PathBuf },
    /// Snapshots: create one of a paused VM, or load one into a vmr not started yet.
    #[command(subcommand)]
    Snapshot(SnapshotAction),
}

#[derive(Subcommand)]
enum SnapshotAction {
    /// Write the state and memory files of the paused VM (`PUT /snapshot/create`).
    Create {
        /// The state file to write.
        #[arg(long, value_name = "FILE")]
        snapshot: PathBuf,
        /// The memory file to write (sparse: pages never written take no disk space).
        #[arg(long, value_name = "FILE")]
        mem: PathBuf,
        /// Full (default) or Diff.
        #[arg(long = "type", default_value = "Full", value_name = "Full|Diff", value_parser = ["Full", "Diff"])]
        snapshot_type: String,
    },
    /// Restore a snapshot into a vmr started with --api-sock and not configured yet
    /// (`PUT /snapshot/load`).
    Load {
        /// The state file.
        #[arg(long, value_name = "FILE")]
        snapshot: PathBuf,
        /// The memory file (mapped privately: the file is never written).
        #[arg(long, value_name = "FILE")]
        mem: PathBuf,
        /// Run the guest at once (otherwise it waits paused for `vmr ctl resume`).
        #[arg(long)]
        resume: bool,
    },
}

/// Runs one `vmr ctl` command; exit code 0 when the API accepted it.
pub fn run(args: CtlArgs) -> Result<i32, Box<dyn Error>> {
    let sock = &args.api_sock;
    let send = |method: &str, path: &str, body: Option<String>| -> Result<Reply, Box<dyn Error>> {
        request(sock, method, path, body.as_deref())
            .map_err(|e| format!("cannot reach the API at {}: {e}", sock.display()).into())
    };
    let action = |kind: &str| Some(serde_json::json!({ "action_type": kind }).to_string());
    let (reply, done) = match &args.action {
        CtlAction::Info => return info(&args, &send),
        CtlAction::Counters => return counters(&args, &send),
        CtlAction::Pause => (send("PATCH", "/vm", Some(r#"{"state":"Paused"}"#.into()))?, "paused"),
        CtlAction::Resume => (send("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#.into()))?, "resumed"),
        CtlAction::Shutdown | CtlAction::PowerButton => {
            (send("PUT", "/actions", action("vmr:PowerButton"))?, "power button pressed")
        }
        CtlAction::CtrlAltDel => (send("PUT", "/actions", action("SendCtrlAltDel"))?, "Ctrl-Alt-Del sent"),
        CtlAction::Metrics => (send("PUT", "/actions", action("FlushMetrics"))?, "metrics flushed"),
        CtlAction::SetDrive { id, file } => {
            let body = serde_json::json!({ "drive_id": id, "path_on_host": file.display().to_string() });
            (send("PATCH", &format!("/drives/{id}"), Some(body.to_string()))?, "drive updated")
        }
        CtlAction::Snapshot(SnapshotAction::Create { snapshot, mem, snapshot_type }) => {
            let body = serde_json::json!({
                "snapshot_path": snapshot.display().to_string(),
                "mem_file_path": mem.display().to_string(),
                "snapshot_type": snapshot_type,
            });
            (send("PUT", "/snapshot/create", Some(body.to_string()))?, "snapshot created")
        }
        CtlAction::Snapshot(SnapshotAction::Load { snapshot, mem, resume }) => {
            let body = serde_json::json!({
                "snapshot_path": snapshot.display().to_string(),
                "mem_backend": { "backend_type": "File", "backend_path": mem.display().to_string() },
                "resume_vm": resume,
            });
            let done = if *resume { "snapshot loaded, VM running" } else { "snapshot loaded, VM paused" };
            (send("PUT", "/snapshot/load", Some(body.to_string()))?, done)
        }
    };
    finish(&args, &reply, done)
}

fn finish(args: &CtlArgs, reply: &Reply, done: &str) -> Result<i32, Box<dyn Error>> {
    if !reply.is_success() {
        if args.json {
            println!("{}", reply.body.trim());
        }
        return Err(format!("the VM refused: {} (HTTP {})", reply.fault_message(), reply.status).into());
    }
    if args.json {
        println!("{}", if reply.body.trim().is_empty() { "{}" } else { reply.body.trim() });
    } else {
        println!("{done}");
    }
    Ok(0)
}

type Send<'a> = dyn Fn(&str, &str, Option<String>) -> Result<Reply, Box<dyn Error>> + 'a;

fn info(args: &CtlArgs, send: &Send) -> Result<i32, Box<dyn Error>> {
    let instance = send("GET", "/", None)?;
    let config = send("GET", "/vm/config", None)?;
    for reply in [&instance, &config] {
        if !reply.is_success() {
            return finish(args, reply, "");
        }
    }
    if args.json {
        println!("{{\"instance\":{},\"config\":{}}}", instance.body.trim(), config.body.trim());
        return Ok(0);
    }
    let i: InstanceInfo = serde_json::from_str(&instance.body)?;
    let c: FullVmConfig = serde_json::from_str(&config.body)?;
    let state = serde_json::to_value(i.state)?;
    println!("id       {}", i.id);
    println!("state    {}", state.as_str().unwrap_or("?"));
    println!("version  {} v{}", i.app_name, i.vmm_version);
    if let Some(m) = &c.machine_config {
        println!("machine  {} vCPU, {} MiB", m.vcpu_count, m.mem_size_mib);
    }
    if let Some(b) = &c.boot_source {
        println!("kernel   {}", b.kernel_image_path);
        if let Some(initrd) = &b.initrd_path {
            println!("initrd   {initrd}");
        }
        println!("cmdline  {}", b.boot_args.as_deref().unwrap_or(""));
    }
    for d in &c.drives {
        let ro = if d.is_read_only == Some(true) { " (read-only)" } else { "" };
        let root = if d.is_root_device { " root" } else { "" };
        println!("drive    {}{root}: {}{ro}", d.drive_id, d.path_on_host.as_deref().unwrap_or("-"));
    }
    for n in &c.network_interfaces {
        println!(
            "net      {}: tap {} mac {}",
            n.iface_id,
            n.host_dev_name,
            n.guest_mac.as_deref().unwrap_or("auto")
        );
    }
    if let Some(v) = &c.vsock {
        println!("vsock    cid {} on {}", v.guest_cid, v.uds_path);
    }
    if c.entropy.is_some() {
        println!("entropy  virtio-rng");
    }
    Ok(0)
}

/// `vmr ctl counters`: one block per device, one counter a line, names aligned.
fn counters(args: &CtlArgs, send: &Send) -> Result<i32, Box<dyn Error>> {
    let reply = send("GET", "/vmr/counters", None)?;
    if !reply.is_success() || args.json {
        return finish(args, &reply, "");
    }
    let devices: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&reply.body)?;
    print!("{}", format_counters(&devices));
    Ok(0)
}

fn format_counters(devices: &serde_json::Map<String, serde_json::Value>) -> String {
    if devices.is_empty() {
        return "no devices\n".into();
    }
    let mut out = String::new();
    for (id, counters) in devices {
        let Some(counters) = counters.as_object() else { continue };
        let kind = counters.get("kind").and_then(|k| k.as_str()).unwrap_or("?");
        out.push_str(&format!("{id} ({kind})\n"));
        let width = counters.keys().map(String::len).max().unwrap_or(0);
        for (name, value) in counters.iter().filter(|(name, _)| *name != "kind") {
            out.push_str(&format!("  {name:<width$}  {value}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_print_one_device_a_block_with_aligned_names() {
        let devices = serde_json::from_str(
            r#"{"disk0":{"kind":"block","read_count":3,"read_bytes":1536},"net0":{"kind":"net","rx_dropped":0}}"#,
        )
        .unwrap();
        assert_eq!(
            format_counters(&devices),
            "disk0 (block)\n  read_bytes  1536\n  read_count  3\nnet0 (net)\n  rx_dropped  0\n"
        );
        assert_eq!(format_counters(&Default::default()), "no devices\n");
    }
}
