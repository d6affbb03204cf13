//! Kernel module dependency resolution from the modules' own `.modinfo` sections (a kernel
//! package has no `modules.dep`: depmod writes it at install time).

use std::collections::{BTreeMap, BTreeSet};

use object::{Object, ObjectSection};

/// What a `.ko` says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModInfo {
    /// Module name (`name=`; `-` normalized to `_`).
    pub name: String,
    /// Modules it needs loaded first (`depends=`).
    pub depends: Vec<String>,
}

/// Normalizes a module name the way the kernel does (`virtio-rng` == `virtio_rng`).
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name for a path like `kernel/drivers/char/hw_random/virtio-rng.ko`.
pub fn name_from_path(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    file.strip_suffix(".ko").map(normalize)
}

/// Reads `name=` and `depends=` from a module's `.modinfo` section. None if `ko` is not an ELF
/// object with such a section.
pub fn parse_modinfo(ko: &[u8]) -> Option<ModInfo> {
    let file = object::File::parse(ko).ok()?;
    let data = file.section_by_name(".modinfo")?.data().ok()?;
    let mut name = None;
    let mut depends = Vec::new();
    for field in data.split(|&b| b == 0) {
        let Ok(field) = std::str::from_utf8(field) else { continue };
        if let Some(v) = field.strip_prefix("name=") {
            name = Some(normalize(v));
        } else if let Some(v) = field.strip_prefix("depends=") {
            depends.extend(v.split(',').filter(|d| !d.is_empty()).map(normalize));
        }
    }
    Some(ModInfo { name: name?, depends })
}

/// Errors resolving module load order.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModuleError {
    /// A wanted module or a dependency is not in the package.
    #[error("kernel module {0} is not in the kernel package")]
    NotFound(String),
    /// The dependency graph has a cycle.
    #[error("kernel module dependency cycle through {0}")]
    Cycle(String),
}

/// Returns `wanted` plus all their dependencies, each after everything it depends on (the
/// order `insmod` must load them). `deps` maps a module name to its `depends=` list;
/// `builtin` names modules compiled into the kernel (skipped silently).
pub fn load_order(
    wanted: &[&str],
    deps: &BTreeMap<String, Vec<String>>,
    builtin: &BTreeSet<String>,
) -> Result<Vec<String>, ModuleError> {
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    let mut visiting = BTreeSet::new();
    for w in wanted {
        visit(&normalize(w), deps, builtin, &mut done, &mut visiting, &mut order)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    deps: &BTreeMap<String, Vec<String>>,
    builtin: &BTreeSet<String>,
    done: &mut BTreeSet<String>,
    visiting: &mut BTreeSet<String>,
    order: &mut Vec<String>,
) -> Result<(), ModuleError> {
    if done.contains(name) || builtin.contains(name) {
        return Ok(());
    }
    let Some(its_deps) = deps.get(name) else {
        return Err(ModuleError::NotFound(name.to_string()));
    };
    if !visiting.insert(name.to_string()) {
        return Err(ModuleError::Cycle(name.to_string()));
    }
    for d in its_deps {
        visit(d, deps, builtin, done, visiting, order)?;
    }
    visiting.remove(name);
    done.insert(name.to_string());
    order.push(name.to_string());
    Ok(())
}

/// Parses `modules.builtin` (one `kernel/.../x.ko` path per line) into module names.
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines().filter_map(name_from_path).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges.iter().map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect())).collect()
    }

    #[test]
    fn orders_dependencies_first_without_duplicates() {
        let deps = graph(&[
            ("vmw_vsock_virtio_transport", &["vmw_vsock_virtio_transport_common", "vsock"]),
            ("vmw_vsock_virtio_transport_common", &["vsock"]),
            ("vsock", &[]),
            ("virtio_net", &["net_failover"]),
            ("net_failover", &["failover"]),
            ("failover", &[]),
        ]);
        let order =
            load_order(&["virtio_net", "vmw_vsock_virtio_transport"], &deps, &BTreeSet::new()).unwrap();
        assert_eq!(
            order,
            [
                "failover",
                "net_failover",
                "virtio_net",
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport"
            ]
        );
    }

    #[test]
    fn builtin_skipped_missing_and_cycles_reported() {
        let deps = graph(&[("a", &["virtio", "b"]), ("b", &["a"]), ("c", &["zz"])]);
        let builtin: BTreeSet<String> = ["virtio".to_string()].into();
        assert_eq!(load_order(&["a"], &deps, &builtin), Err(ModuleError::Cycle("a".into())));
        assert_eq!(load_order(&["c"], &deps, &builtin), Err(ModuleError::NotFound("zz".into())));
        assert_eq!(
            load_order(&["virtio-rng"], &deps, &builtin).unwrap_err().to_string(),
            "kernel module virtio_rng is not in the kernel package"
        );
    }

    #[test]
    fn names_from_paths_and_builtin_list() {
        assert_eq!(name_from_path("kernel/drivers/char/hw_random/virtio-rng.ko").unwrap(), "virtio_rng");
        assert_eq!(name_from_path("kernel/x/README"), None);
        let b = parse_builtin("kernel/drivers/virtio/virtio.ko\nkernel/fs/ext4/ext4.ko\n");
        assert!(b.contains("virtio") && b.contains("ext4") && b.len() == 2);
    }

    #[test]
    fn modinfo_of_non_elf_is_none() {
        assert_eq!(parse_modinfo(b"not an elf"), None);
    }
}
