//! `vmr daemon` (vmrd) and the virsh-like verbs that are its clients: `define`, `list`,
//! `start`, `pool-*`, `vol-*`, `console`, ...

use std::error::Error;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use serde_json::{json, Value};
use vmr_vmm::api::client::{request_within, Reply};
use vmr_vmm::config::parse_size;

type Res = Result<i32, Box<dyn Error>>;

#[derive(clap::Args)]
pub struct DaemonArgs {
    /// State directory (default: /var/lib/vmr as root, $XDG_STATE_HOME/vmr or ~/.local/state/vmr otherwise).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// API socket (default: vmrd.sock in the state directory).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Backend for VMs whose definition does not name one: auto, kvm or emu.
    #[arg(long, default_value = "auto", value_parser = ["auto", "kvm", "emu"])]
    accel: String,
    /// Rotate a VM's console log past this size (K/M/G suffixes).
    #[arg(long, default_value = "1M", value_name = "SIZE")]
    console_log_max: String,
}

/// The client verbs (vmrd must run).
#[derive(Subcommand)]
pub enum Verb {
    /// Define a VM from a TOML file.
    Define { file: PathBuf },
    /// List running VMs (--all: every defined VM).
    List {
        #[arg(long)]
        all: bool,
    },
    /// State, resources, disks and console of a VM.
    Info { name: String },
    /// Print a VM's definition.
    Dumpconfig { name: String },
    /// Edit a VM's definition in $EDITOR; it is checked before it is saved.
    Edit { name: String },
    /// Start a VM.
    Start { name: String },
    /// Press the VM's ACPI power button and wait for it to power off.
    Shutdown {
        name: String,
        /// Seconds to wait for the guest.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Destroy the VM if it is still running after the timeout.
        #[arg(long)]
        force: bool,
    },
    /// Stop a VM now.
    Destroy { name: String },
    /// Restart the guest (Ctrl-Alt-Del).
    Reboot { name: String },
    /// Pause a VM's vCPUs.
    Suspend { name: String },
    /// Resume a suspended VM.
    Resume { name: String },
    /// Start the VM when vmrd starts: on or off.
    Autostart {
        name: String,
        #[arg(value_parser = ["on", "off"])]
        setting: String,
    },
    /// Remove a stopped VM's definition and the volumes it created.
    Undefine {
        name: String,
        /// Keep the volumes the definition created.
        #[arg(long)]
        keep_volumes: bool,
    },
    /// Attach to a VM's serial console (Ctrl-] detaches).
    Console { name: String },
    /// Define a storage pool: a directory of volumes.
    PoolDefine {
        name: String,
        path: PathBuf,
        #[arg(long = "type", default_value = "dir")]
        kind: String,
    },
    /// Create a pool's directory.
    PoolBuild { name: String },
    /// Start a pool (its volumes become usable).
    PoolStart { name: String },
    /// List pools.
    PoolList,
    /// A pool's path, state, volumes and space.
    PoolInfo { name: String },
    /// Remove an empty pool (its definition and directory).
    PoolDelete { name: String },
    /// Create a volume: NAME SIZE (K/M/G/T).
    VolCreate {
        name: String,
        size: String,
        #[arg(long, default_value = "default")]
        pool: String,
        #[arg(long, default_value = "raw", value_parser = ["raw", "qcow2"])]
        format: String,
    },
    /// List a pool's volumes.
    VolList {
        #[arg(long, default_value = "default")]
        pool: String,
    },
    /// A volume's format, capacity and allocation.
    VolInfo {
        name: String,
        #[arg(long, default_value = "default")]
        pool: String,
    },
    /// Grow a volume (raw or qcow2) to SIZE.
    VolResize {
        name: String,
        size: String,
        #[arg(long, default_value = "default")]
        pool: String,
    },
    /// Copy a volume (--overlay: a qcow2 overlay based on it instead).
    VolClone {
        name: String,
        new_name: String,
        #[arg(long, default_value = "default")]
        pool: String,
        #[arg(long)]
        overlay: bool,
    },
    /// Delete a volume (refused while a VM definition uses it).
    VolDelete {
        name: String,
        #[arg(long, default_value = "default")]
        pool: String,
    },
    /// Define a network: --type nat|isolated --address 10.77.0.1/24, or --type bridge --bridge BR.
    NetDefine {
        name: String,
        #[arg(long = "type", value_parser = ["nat", "isolated", "bridge"])]
        kind: String,
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        bridge: Option<String>,
    },
    /// Start a network (bridge, dnsmasq, firewall rules).
    NetStart { name: String },
    /// Stop a network.
    NetStop { name: String },
    /// List networks.
    NetList,
    /// A network's definition and state.
    NetInfo { name: String },
    /// DHCP leases on a network.
    NetLeases { name: String },
    /// Remove a stopped network's definition.
    NetDelete { name: String },
    /// Copy a host file into a pool as a volume.
    VolImport {
        file: PathBuf,
        #[arg(long, default_value = "default")]
        pool: String,
        /// Volume name (default: the file's name).
        #[arg(long)]
        name: Option<String>,
    },
}

pub fn daemon(args: DaemonArgs) -> Res {
    let console_log_max = parse_size(&args.console_log_max, 0)
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("--console-log-max '{}': a size like 1M", args.console_log_max))?;
    let opts = vmr_vmrd::Options {
        state_dir: args.state_dir.unwrap_or_else(vmr_vmrd::default_state_dir),
        socket: args.socket,
        vmr: std::env::current_exe()?,
        accel: args.accel,
        console_log_max,
    };
    vmr_vmrd::run(opts)?;
    Ok(0)
}

/// vmrd's socket and the calls to it.
struct Client {
    socket: PathBuf,
}

impl Client {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Box<dyn Error>> {
        let body = body.map(|b| b.to_string());
        let reply = request_within(&self.socket, method, path, body.as_deref(), None).map_err(|e| match e
            .kind()
        {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
                "vmrd is not running (no answer on {}; start it with `vmr daemon` or `systemctl start vmrd`)",
                self.socket.display()
            ),
            _ => format!("cannot reach vmrd on {}: {e}", self.socket.display()),
        })?;
        answer(reply)
    }
}

fn answer(reply: Reply) -> Result<Value, Box<dyn Error>> {
    let value: Value = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
    if !reply.is_success() {
        let msg = value["error"].as_str().map(String::from).unwrap_or_else(|| reply.body.trim().to_string());
        return Err(msg.into());
    }
    Ok(value)
}

pub fn run(verb: Verb, socket: Option<PathBuf>) -> Res {
    let c = Client { socket: socket.unwrap_or_else(vmr_vmrd::api::default_socket) };
    match verb {
        Verb::Define { file } => {
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let info = c
                .call("POST", "/vms", Some(json!({ "definition": text })))
                .map_err(|e| format!("{}: {e}", file.display()))?;
            println!("VM {} defined", info["name"].as_str().unwrap_or("?"));
        }
        Verb::List { all } => print_list(&c.call("GET", &format!("/vms?all={all}"), None)?),
        Verb::Info { name } => print_info(&c.call("GET", &format!("/vms/{name}"), None)?),
        Verb::Dumpconfig { name } => {
            print!(
                "{}",
                c.call("GET", &format!("/vms/{name}/definition"), None)?["definition"].as_str().unwrap_or("")
            )
        }
        Verb::Edit { name } => return edit(&c, &name),
        Verb::Start { name } => {
            let v = c.call("POST", &format!("/vms/{name}/start"), None)?;
            println!("VM {name} started (pid {})", v["pid"]);
        }
        Verb::Shutdown { name, timeout, force } => {
            let v = c.call(
                "POST",
                &format!("/vms/{name}/shutdown"),
                Some(json!({ "timeout_s": timeout, "force": force })),
            )?;
            println!("VM {name}: {}", v["result"].as_str().unwrap_or("shut down"));
        }
        Verb::Destroy { name } => simple(&c, &name, "destroy", "destroyed")?,
        Verb::Reboot { name } => simple(&c, &name, "reboot", "rebooting")?,
        Verb::Suspend { name } => simple(&c, &name, "suspend", "suspended")?,
        Verb::Resume { name } => simple(&c, &name, "resume", "resumed")?,
        Verb::Autostart { name, setting } => {
            c.call("PUT", &format!("/vms/{name}/autostart"), Some(json!({ "autostart": setting == "on" })))?;
            println!("VM {name}: autostart {setting}");
        }
        Verb::Undefine { name, keep_volumes } => {
            let v = c.call("DELETE", &format!("/vms/{name}?keep_volumes={keep_volumes}"), None)?;
            println!("VM {name} undefined");
            for vol in v["removed_volumes"].as_array().into_iter().flatten() {
                println!("removed volume {}", vol.as_str().unwrap_or("?"));
            }
        }
        Verb::Console { name } => return console(&c, &name),
        other => return crate::manage_pools::run(&c_socket(&c), other),
    }
    Ok(0)
}

fn c_socket(c: &Client) -> PathBuf {
    c.socket.clone()
}

/// For the pool verbs (in `manage_pools`).
pub fn call(socket: &Path, method: &str, path: &str, body: Option<Value>) -> Result<Value, Box<dyn Error>> {
    Client { socket: socket.to_path_buf() }.call(method, path, body)
}

fn simple(c: &Client, name: &str, action: &str, done: &str) -> Result<(), Box<dyn Error>> {
    c.call("POST", &format!("/vms/{name}/{action}"), None)?;
    println!("VM {name} {done}");
    Ok(())
}

fn print_list(list: &Value) {
    println!("{:<24} {:<8} AUTOSTART", "NAME", "STATE");
    for vm in list.as_array().into_iter().flatten() {
        let autostart = if vm["autostart"].as_bool() == Some(true) { "on" } else { "off" };
        println!(
            "{:<24} {:<8} {autostart}",
            vm["name"].as_str().unwrap_or("?"),
            vm["state"].as_str().unwrap_or("?")
        );
    }
}

/// Bytes as the largest whole binary unit, e.g. `512 MiB`, `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn print_info(v: &Value) {
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
    println!("name       {}", s("name"));
    println!("state      {}", s("state"));
    if let Some(pid) = v["pid"].as_i64() {
        println!("pid        {pid}");
    }
    println!("vcpus      {}", v["vcpus"]);
    println!("memory     {}", human(v["memory"].as_u64().unwrap_or(0)));
    println!("autostart  {}", if v["autostart"].as_bool() == Some(true) { "on" } else { "off" });
    println!("kernel     {}", s("kernel"));
    for d in v["disks"].as_array().into_iter().flatten() {
        let ro = if d["readonly"].as_bool() == Some(true) { " (read-only)" } else { "" };
        let owned = if d["owned"].as_bool() == Some(true) { " [created by this VM]" } else { "" };
        println!(
            "disk       {} -> {}{ro}{owned}",
            d["source"].as_str().unwrap_or("?"),
            d["path"].as_str().unwrap_or("?")
        );
    }
    println!("console    {}", s("console_log"));
    if let Some(code) = v["last_exit"].as_str() {
        println!("last exit  {code}");
    }
}

/// `$EDITOR` on a copy of the definition; saved only if vmrd accepts it. A refused edit is
/// kept in its file (named in the error) so nothing typed is lost.
fn edit(c: &Client, name: &str) -> Res {
    let text = c.call("GET", &format!("/vms/{name}/definition"), None)?["definition"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let file = std::env::temp_dir().join(format!("vmr-edit-{name}-{}.toml", std::process::id()));
    std::fs::write(&file, &text)?;
    let editor = std::env::var("VISUAL").or_else(|_| std::env::var("EDITOR")).unwrap_or_else(|_| "vi".into());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&file)
        .status()?;
    if !status.success() {
        return Err(format!(
            "the editor ({editor}) failed; the definition is unchanged; your copy is {}",
            file.display()
        )
        .into());
    }
    let edited = std::fs::read_to_string(&file)?;
    if edited == text {
        let _ = std::fs::remove_file(&file);
        println!("VM {name}: no changes");
        return Ok(0);
    }
    c.call("PUT", &format!("/vms/{name}"), Some(json!({ "definition": edited })))
        .map_err(|e| format!("{e} (nothing saved; your edit is in {})", file.display()))?;
    let _ = std::fs::remove_file(&file);
    println!("VM {name}: definition saved (takes effect at the next start)");
    Ok(0)
}

/// Ctrl-]: detaches from the console, as in virsh.
const DETACH: u8 = 0x1d;

/// Follows the VM's console log and sends input to its console FIFO, until Ctrl-] or the VM
/// stops.
fn console(c: &Client, name: &str) -> Res {
    let info = c.call("GET", &format!("/vms/{name}"), None)?;
    let pid = info["pid"].as_i64().ok_or_else(|| format!("VM {name} is not running"))? as i32;
    let log = PathBuf::from(info["console_log"].as_str().unwrap_or_default());
    let input = PathBuf::from(info["console_input"].as_str().unwrap_or_default());
    let mut fifo =
        open_fifo_writer(&input).map_err(|e| format!("VM {name}: cannot open its console: {e}"))?;
    eprintln!("Connected to {name} (Ctrl-] detaches)\r");
    let start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    std::thread::spawn(move || follow(&log, start, pid));
    let _raw = vmr_vmm::console::RawModeGuard::new();
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 256];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => loop {
                // Piped input ended: keep showing output until Ctrl-] cannot come; the VM's end stops us.
                std::thread::sleep(Duration::from_secs(3600));
            },
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let data = &buf[..n];
        let (send, detach) = match data.iter().position(|b| *b == DETACH) {
            Some(at) => (&data[..at], true),
            None => (data, false),
        };
        if !send.is_empty() {
            fifo.write_all(send).map_err(|e| format!("VM {name}: console input: {e}"))?;
        }
        if detach {
            drop(_raw);
            eprintln!("\r\nDetached from {name}");
            return Ok(0);
        }
    }
}

fn open_fifo_writer(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking open: fails (ENXIO) instead of hanging when no VM reads the FIFO.
    let file = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we own; clears O_NONBLOCK so writes wait for room.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, 0) };
    Ok(file)
}

fn follow(log: &Path, mut offset: u64, pid: i32) {
    let mut stdout = std::io::stdout();
    loop {
        match vmr_vmrd::vm::read_new(log, offset) {
            Ok((bytes, next)) if !bytes.is_empty() => {
                let _ = stdout.write_all(&bytes);
                let _ = stdout.flush();
                offset = next;
                continue;
            }
            Ok((_, next)) => offset = next,
            Err(_) => {}
        }
        // SAFETY: kill with signal 0 only checks that the process exists.
        if unsafe { libc::kill(pid, 0) } != 0 {
            vmr_vmm::console::restore_terminal();
            eprintln!("\r\nVM stopped");
            std::process::exit(0);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_print_in_binary_units() {
        assert_eq!(super::human(512 << 20), "512 MiB");
        assert_eq!(super::human(3 << 29), "1.5 GiB");
        assert_eq!(super::human(100), "100 B");
    }
}
