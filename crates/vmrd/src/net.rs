//! Virtual networks: `nat` (a bridge with an address, DHCP and DNS from dnsmasq, masquerade and
//! forwarding in vmr's own nftables table), `isolated` (a bridge with DHCP, forwarding dropped)
//! and `bridge` (an existing host bridge). vmrd creates each VM's tap on the bridge, so VM
//! processes need no network privileges of their own.

use std::fs;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::def::check_name;
use crate::state::{atomic_write, remove_durably, StateDir};
use crate::DaemonError;

/// A network definition, stored as `nets/NAME.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetDef {
    pub name: String,
    /// nat, isolated or bridge.
    #[serde(rename = "type")]
    pub kind: String,
    /// The bridge device (made by vmrd for nat and isolated; existing for bridge).
    pub bridge: String,
    /// The bridge's address and prefix, e.g. `10.77.0.1/24` (nat and isolated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default)]
    pub active: bool,
}

/// One DHCP lease, from dnsmasq's lease file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub mac: String,
    pub ip: String,
    pub hostname: String,
    pub expiry: u64,
}

/// An IPv4 subnet: the gateway address and the prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub gateway: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(text: &str) -> Result<Subnet, DaemonError> {
        let bad =
            || DaemonError::Invalid(format!("address '{text}': write it as 10.77.0.1/24 (prefix 8 to 30)"));
        let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
        let gateway: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let s = Subnet { gateway, prefix };
        if gateway == s.network() || gateway == s.broadcast() {
            return Err(bad());
        }
        Ok(s)
    }
    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.gateway) & self.mask())
    }
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.gateway) | !self.mask())
    }
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let mask = self.mask() & other.mask();
        u32::from(self.gateway) & mask == u32::from(other.gateway) & mask
    }
    /// The DHCP range: every host address above the gateway's.
    pub fn dhcp_range(&self) -> (Ipv4Addr, Ipv4Addr) {
        let first = u32::from(self.network()) + 2;
        let start = if u32::from(self.gateway) < first { first } else { u32::from(self.gateway) + 1 };
        (Ipv4Addr::from(start), Ipv4Addr::from(u32::from(self.broadcast()) - 1))
    }
}

fn def_path(state: &StateDir, name: &str) -> PathBuf {
    state.nets().join(format!("{name}.json"))
}

pub fn load(state: &StateDir, name: &str) -> Result<NetDef, DaemonError> {
    check_name("network", name)?;
    let text = fs::read_to_string(def_path(state, name))
        .map_err(|_| DaemonError::NotFound(format!("no network named '{name}'")))?;
    serde_json::from_str(&text).map_err(|e| DaemonError::Internal(format!("network {name}: {e}")))
}

fn save(state: &StateDir, def: &NetDef) -> Result<(), DaemonError> {
    Ok(atomic_write(
        &def_path(state, &def.name),
        serde_json::to_string_pretty(def).unwrap_or_default().as_bytes(),
    )?)
}

pub fn names(state: &StateDir) -> Result<Vec<String>, DaemonError> {
    let mut names: Vec<String> = fs::read_dir(state.nets())?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".json").map(String::from))
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    Ok(names)
}

/// Runs a host tool; its stderr in the error.
pub fn run(program: &str, args: &[&str]) -> Result<String, DaemonError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| DaemonError::Internal(format!("cannot run {program}: {e} (is it installed?)")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(DaemonError::Internal(format!(
            "{program} {}: {}",
            args.join(" "),
            err.trim().replace('\n', " ")
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The host's own IPv4 subnets (to refuse a network that overlaps one).
fn host_subnets() -> Vec<(String, Subnet)> {
    let text = run("ip", &["-o", "-4", "addr", "show"]).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let dev = words.nth(1)?.to_string();
            let cidr = words.skip_while(|w| *w != "inet").nth(1)?;
            let (ip, prefix) = cidr.split_once('/')?;
            let prefix: u8 = prefix.parse().ok()?;
            (1..32).contains(&prefix).then(|| Some((dev, Subnet { gateway: ip.parse().ok()?, prefix })))?
        })
        .filter(|(dev, _)| dev != "lo")
        .collect()
}

pub fn define(
    state: &StateDir,
    name: &str,
    kind: &str,
    address: Option<&str>,
    bridge: Option<&str>,
) -> Result<NetDef, DaemonError> {
    check_name("network", name)?;
    if def_path(state, name).exists() {
        return Err(DaemonError::Conflict(format!("a network named '{name}' already exists")));
    }
    let bridge = match (kind, bridge) {
        ("bridge", Some(b)) => b.to_string(),
        ("bridge", None) => {
            return Err(DaemonError::Invalid(
                "a bridge network needs --bridge NAME (an existing bridge)".into(),
            ))
        }
        ("nat" | "isolated", b) => b.map(String::from).unwrap_or_else(|| format!("vmr-{name}")),
        (other, _) => {
            return Err(DaemonError::Invalid(format!("network type '{other}': nat, isolated or bridge")))
        }
    };
    if bridge.is_empty()
        || bridge.len() > 15
        || !bridge.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(DaemonError::Invalid(format!(
            "bridge name '{bridge}': at most 15 letters, digits, '-', '_' or '.'"
        )));
    }
    let address = match (kind, address) {
        ("bridge", None) => None,
        ("bridge", Some(_)) => return Err(DaemonError::Invalid("a bridge network takes no address".into())),
        (_, None) => {
            return Err(DaemonError::Invalid(format!("a {kind} network needs --address like 10.77.0.1/24")))
        }
        (_, Some(a)) => {
            let subnet = Subnet::parse(a)?;
            for other in names(state)? {
                let o = load(state, &other)?;
                if o.bridge == bridge {
                    return Err(DaemonError::Conflict(format!(
                        "network {other} already uses bridge {bridge}"
                    )));
                }
                if let Some(oa) = o.address.as_deref().and_then(|a| Subnet::parse(a).ok()) {
                    if oa.overlaps(&subnet) {
                        return Err(DaemonError::Conflict(format!(
                            "{a} overlaps network {other} ({})",
                            o.address.unwrap_or_default()
                        )));
                    }
                }
            }
            if let Some((dev, host)) = host_subnets().into_iter().find(|(_, h)| h.overlaps(&subnet)) {
                return Err(DaemonError::Conflict(format!(
                    "{a} overlaps the host's {}/{} on {dev}",
                    host.gateway, host.prefix
                )));
            }
            Some(a.to_string())
        }
    };
    let def = NetDef { name: name.into(), kind: kind.into(), bridge, address, active: false };
    save(state, &def)?;
    Ok(def)
}

fn dnsmasq_pid(state: &StateDir, name: &str) -> Option<i32> {
    let pid: i32 =
        fs::read_to_string(state.nets().join(format!("{name}.dnsmasq.pid"))).ok()?.trim().parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline).contains("dnsmasq").then_some(pid)
}

/// Asks `ip`, not `/sys/class/net`: sysfs shows the network namespace it was mounted in, which
/// is not vmrd's when vmrd runs in a namespace of its own.
fn link_exists(dev: &str) -> bool {
    run("ip", &["-o", "link", "show", "dev", dev]).is_ok()
}

fn is_bridge(dev: &str) -> bool {
    run("ip", &["-d", "-o", "link", "show", "dev", dev]).is_ok_and(|out| out.contains(" bridge "))
}

/// Base chains of other tables that drop forwarded packets by default: a NAT network's guests
/// would silently get nothing through them.
fn forward_droppers() -> Vec<String> {
    let ruleset = run("nft", &["list", "ruleset"]).unwrap_or_default();
    let mut table = String::new();
    let mut found = Vec::new();
    for line in ruleset.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix("table ") {
            table = t.trim_end_matches(" {").to_string();
        } else if line.contains("hook forward") && line.contains("policy drop") && table != "ip vmr" {
            found.push(table.clone());
        }
    }
    found
}

pub fn start(state: &StateDir, name: &str) -> Result<NetDef, DaemonError> {
    let mut def = load(state, name)?;
    if def.kind == "bridge" {
        if !is_bridge(&def.bridge) {
            return Err(DaemonError::Invalid(format!(
                "network {name}: {} is not a bridge on this host",
                def.bridge
            )));
        }
    } else {
        if def.kind == "nat" {
            if let Some(t) = forward_droppers().first() {
                return Err(DaemonError::Conflict(format!(
                    "network {name}: nftables table {t} drops forwarded packets by default; guests would have no \
                     connectivity: accept traffic of {} there first",
                    def.bridge
                )));
            }
        }
        let subnet = Subnet::parse(def.address.as_deref().unwrap_or_default())?;
        if !link_exists(&def.bridge) {
            run("ip", &["link", "add", &def.bridge, "type", "bridge"])?;
        }
        let cidr = format!("{}/{}", subnet.gateway, subnet.prefix);
        run("ip", &["addr", "replace", &cidr, "dev", &def.bridge])?;
        run("ip", &["link", "set", &def.bridge, "up"])?;
        if dnsmasq_pid(state, name).is_none() {
            start_dnsmasq(state, &def, &subnet)?;
        }
        def.active = true;
        save(state, &def)?;
        apply_firewall(state)?;
    }
    def.active = true;
    save(state, &def)?;
    Ok(def)
}

fn start_dnsmasq(state: &StateDir, def: &NetDef, subnet: &Subnet) -> Result<(), DaemonError> {
    let (first, last) = subnet.dhcp_range();
    let nets = state.nets();
    let arg = |k: &str, v: String| format!("--{k}={v}");
    let leases = nets.join(format!("{}.leases", def.name));
    let args = [
        "--conf-file=/dev/null".to_string(),
        "--bind-interfaces".into(),
        "--except-interface=lo".into(),
        arg("interface", def.bridge.clone()),
        arg("listen-address", subnet.gateway.to_string()),
        arg("dhcp-range", format!("{first},{last},1h")),
        "--dhcp-authoritative".into(),
        arg("dhcp-leasefile", leases.display().to_string()),
        arg("pid-file", nets.join(format!("{}.dnsmasq.pid", def.name)).display().to_string()),
        "--user=root".into(),
        "--group=root".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // dnsmasq daemonizes itself (its own session): it outlives vmrd, as the VMs do.
    run("dnsmasq", &args)?;
    Ok(())
}

/// Rebuilds vmr's own nftables table from the active networks, in one transaction.
pub fn apply_firewall(state: &StateDir) -> Result<(), DaemonError> {
    let mut nat_rules = String::new();
    let mut fwd_rules = String::new();
    let mut any_nat = false;
    for name in names(state)? {
        let def = load(state, &name)?;
        let Some(subnet) = def.address.as_deref().and_then(|a| Subnet::parse(a).ok()) else { continue };
        if !def.active {
            continue;
        }
        let (br, net) = (&def.bridge, format!("{}/{}", subnet.network(), subnet.prefix));
        if def.kind == "nat" {
            any_nat = true;
            nat_rules.push_str(&format!("    ip saddr {net} ip daddr != {net} masquerade\n"));
            fwd_rules.push_str(&format!("    iifname \"{br}\" ip saddr {net} accept\n"));
            fwd_rules.push_str(&format!("    oifname \"{br}\" ct state established,related accept\n"));
        } else {
            fwd_rules.push_str(&format!("    iifname \"{br}\" drop\n    oifname \"{br}\" drop\n"));
        }
    }
    let script = format!(
        "table ip vmr\ndelete table ip vmr\ntable ip vmr {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{nat_rules}  }}\n  chain forward {{\n    type filter hook forward priority filter; policy accept;\n{fwd_rules}  }}\n}}\n"
    );
    let path = state.nets().join("vmr.nft");
    atomic_write(&path, script.as_bytes())?;
    run("nft", &["-f", &path.display().to_string()])?;
    if any_nat {
        fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| DaemonError::Internal(format!("cannot enable IPv4 forwarding: {e}")))?;
    }
    Ok(())
}

pub fn stop(state: &StateDir, name: &str) -> Result<(), DaemonError> {
    let mut def = load(state, name)?;
    if let Some(pid) = dnsmasq_pid(state, name) {
        // SAFETY: kill on the pid of the dnsmasq this network started (checked by its cmdline).
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    if def.kind != "bridge" && link_exists(&def.bridge) {
        run("ip", &["link", "del", &def.bridge])?;
    }
    def.active = false;
    save(state, &def)?;
    if def.kind != "bridge" {
        apply_firewall(state)?;
    }
    Ok(())
}

pub fn delete(state: &StateDir, name: &str) -> Result<(), DaemonError> {
    let def = load(state, name)?;
    if def.active {
        return Err(DaemonError::Conflict(format!("network {name} is started: net-stop it first")));
    }
    for f in ["leases", "dnsmasq.pid"] {
        let _ = fs::remove_file(state.nets().join(format!("{name}.{f}")));
    }
    Ok(remove_durably(&def_path(state, name))?)
}

pub fn leases(state: &StateDir, name: &str) -> Result<Vec<Lease>, DaemonError> {
    load(state, name)?;
    let text = fs::read_to_string(state.nets().join(format!("{name}.leases"))).unwrap_or_default();
    Ok(text
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            Some(Lease {
                expiry: w.first()?.parse().ok()?,
                mac: w.get(1)?.to_string(),
                ip: w.get(2)?.to_string(),
                hostname: w.get(3)?.to_string(),
            })
        })
        .collect())
}

/// The tap of a VM's `index`th card and its MAC, both derived from the VM's name.
pub fn tap_and_mac(vm: &str, index: usize) -> (String, String) {
    // FNV-1a: stable across runs and versions (std's hasher is not).
    let mut h: u32 = 0x811c9dc5;
    for b in vm.bytes().chain([b'#', index as u8]) {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let b = h.to_be_bytes();
    (format!("vmr{h:08x}"), format!("52:54:00:{:02x}:{:02x}:{:02x}", b[1], b[2], b[3]))
}

/// Creates (or reuses) the tap on the network's bridge.
pub fn plug(def: &NetDef, tap: &str) -> Result<(), DaemonError> {
    if !def.active {
        return Err(DaemonError::Invalid(format!(
            "network {} is not started (vmr net-start {})",
            def.name, def.name
        )));
    }
    if !link_exists(tap) {
        run("ip", &["tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"])?;
    }
    run("ip", &["link", "set", tap, "master", &def.bridge])?;
    run("ip", &["link", "set", tap, "up"])?;
    Ok(())
}

/// Removes a tap (absent is fine).
pub fn unplug(tap: &str) {
    if link_exists(tap) {
        let _ = run("ip", &["link", "del", tap]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let s = Subnet::parse("10.77.0.1/24").unwrap();
        assert_eq!(
            (s.network(), s.broadcast()),
            ("10.77.0.0".parse().unwrap(), "10.77.0.255".parse().unwrap())
        );
        assert_eq!(s.dhcp_range(), ("10.77.0.2".parse().unwrap(), "10.77.0.254".parse().unwrap()));
        assert!(s.overlaps(&Subnet::parse("10.77.0.129/25").unwrap()));
        assert!(s.overlaps(&Subnet::parse("10.0.0.1/8").unwrap()));
        assert!(!s.overlaps(&Subnet::parse("10.78.0.1/24").unwrap()));
        for bad in ["10.77.0.0/24", "10.77.0.255/24", "10.77.0.1", "10.77.0.1/31", "x/24"] {
            assert!(Subnet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn taps_and_macs_are_stable_short_and_distinct() {
        let (tap, mac) = tap_and_mac("web1", 0);
        assert_eq!((tap.len(), mac.len()), (11, 17));
        assert_eq!(tap_and_mac("web1", 0), (tap.clone(), mac));
        assert_ne!(tap_and_mac("web1", 1).0, tap);
        assert_ne!(tap_and_mac("web2", 0).0, tap);
    }
}
