use super::*;

/// A spawner's filter is stacked on its children's: each child's syscalls must be in its
/// spawner's list too (main spawns everything; vCPUs spawn the device workers).
#[test]
fn spawners_allow_what_their_children_need() {
    let set = |role| -> std::collections::BTreeSet<i64> {
        lists::lists(role).into_iter().flat_map(|l| l.iter().map(|&(_, nr)| nr)).collect()
    };
    let main = set(Role::Main);
    let vcpu = set(Role::Vcpu);
    for role in [
        Role::Api,
        Role::Vcpu,
        Role::BlockWorker,
        Role::NetWorker,
        Role::VsockWorker,
        Role::RngWorker,
        Role::Console,
        Role::Signals,
        Role::EmuIrq,
        Role::Metrics,
    ] {
        let missing: Vec<_> = set(role).difference(&main).map(|&nr| names::name(nr)).collect();
        assert!(missing.is_empty(), "main lacks {missing:?} of {role:?}");
        assert!(filter(role).is_ok(), "{role:?}");
    }
    for role in [Role::BlockWorker, Role::NetWorker, Role::VsockWorker, Role::RngWorker] {
        let missing: Vec<_> = set(role).difference(&vcpu).map(|&nr| names::name(nr)).collect();
        assert!(missing.is_empty(), "vCPU lacks {missing:?} of {role:?}");
    }
    // Threads that install their own filter need seccomp and prctl under their spawner's.
    for nr in [libc::SYS_seccomp, libc::SYS_prctl, libc::SYS_write, libc::SYS_exit_group] {
        assert!(main.contains(&nr) && vcpu.contains(&nr), "{}", names::name(nr));
    }
}

/// Found in the lab: the vsock worker makes its sockets non-blocking with ioctl(FIONBIO); it
/// must pass both its own filter and its vCPU's (the filters stack). Checked in a child
/// process, which may then die on a mistake without taking the test runner along.
#[test]
fn vsock_worker_may_set_sockets_non_blocking_under_the_vcpu_filter() {
    const CHILD: &str = "VMR_SECCOMP_FIONBIO_CHILD";
    if std::env::var_os(CHILD).is_some() {
        // Made before any filter, as the host sockets are made by other syscalls.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let t = std::thread::Builder::new()
            .name("vmr-vcpu0".into())
            .spawn(move || {
                apply_for_thread(Role::Vcpu);
                let w = std::thread::Builder::new().name("vmr-virtio-vsock0".into()).spawn(move || {
                    apply_for_thread(Role::VsockWorker);
                    a.set_nonblocking(true).unwrap();
                    eprintln!("non-blocking set");
                });
                w.unwrap().join().unwrap();
            })
            .unwrap();
        let _ = t.join();
        std::process::exit(0);
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["--exact", "seccomp::tests::vsock_worker_may_set_sockets_non_blocking_under_the_vcpu_filter"])
        .args(["--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("non-blocking set"), "{stderr}");
}

#[test]
fn thread_names_map_to_roles() {
    assert_eq!(Role::from_thread_name("vmr-vcpu12"), Some(Role::Vcpu));
    assert_eq!(Role::from_thread_name("vmr-virtio-blk3"), Some(Role::BlockWorker));
    // Linux cuts thread names to 15 bytes: "vmr-virtio-vsoc".
    assert_eq!(Role::from_thread_name("vmr-virtio-vsoc"), None);
    assert_eq!(Role::from_thread_name("vmr-virtio-vsock0"), Some(Role::VsockWorker));
    assert_eq!(Role::from_thread_name("vmr-emu-irq"), Some(Role::EmuIrq));
    assert_eq!(Role::from_thread_name("tokio-runtime-worker"), None);
}

#[test]
fn message_names_thread_and_syscall() {
    let line = trap_message("vmr-vcpu0", libc::SYS_socket);
    let text = std::str::from_utf8(line.as_bytes()).unwrap();
    assert!(text.contains("thread vmr-vcpu0 made syscall socket (41)"), "{text}");
    assert!(text.ends_with('\n'));
    assert!(std::str::from_utf8(trap_message("t", 9999).as_bytes()).unwrap().contains("syscall ? (9999)"));
}

/// The denied path, end to end: a child process (this test binary again) puts a thread under
/// the vCPU filter and makes a syscall outside it; the child must die with exit code 159 and
/// the one-line message naming the thread and the syscall.
#[test]
fn forbidden_syscall_stops_the_process_with_a_message() {
    const CHILD: &str = "VMR_SECCOMP_TEST_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let t = std::thread::Builder::new()
            .name("vmr-vcpu7".into())
            .spawn(|| {
                apply_for_thread(Role::Vcpu);
                // Allowed: a write, and reading a file; forbidden: opening one for writing.
                eprintln!("filter applied");
                assert!(std::fs::read("/proc/self/stat").is_ok());
                let _ = std::fs::OpenOptions::new().write(true).open("/dev/null");
                eprintln!("open() for writing returned: the filter did not stop it");
            })
            .unwrap();
        let _ = t.join();
        std::process::exit(0);
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "seccomp::tests::forbidden_syscall_stops_the_process_with_a_message",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_SECCOMP), "{stderr}");
    assert!(stderr.contains("filter applied"), "{stderr}");
    assert!(
        stderr.contains(
            "vmr: seccomp: thread vmr-vcpu7 made syscall openat (257), which its filter does not allow"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("returned"), "{stderr}");
}

/// Every role's filter, end to end: a thread with the role's name and filter makes `ptrace`,
/// which no vmr thread needs; the process must end with 159 and the message naming that thread.
/// (The API thread is the one a remote client talks to: its filter matters most.)
#[test]
fn every_role_traps_a_syscall_outside_its_list() {
    const CHILD: &str = "VMR_SECCOMP_ROLE_CHILD";
    let roles = [
        (Role::Api, "vmr-api"),
        (Role::Main, "vmr-main-test"),
        (Role::Vcpu, "vmr-vcpu0"),
        (Role::BlockWorker, "vmr-virtio-blk0"),
        (Role::NetWorker, "vmr-virtio-net0"),
        (Role::VsockWorker, "vmr-virtio-vsock0"),
        (Role::RngWorker, "vmr-virtio-rng0"),
        (Role::Console, "vmr-console"),
        (Role::Signals, "vmr-signals"),
        (Role::EmuIrq, "vmr-emu-irq"),
        (Role::Metrics, "vmr-metrics"),
    ];
    if let Ok(name) = std::env::var(CHILD) {
        let (role, _) = *roles.iter().find(|(_, n)| *n == name).unwrap();
        let t = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                apply_for_thread(role);
                eprintln!("filter applied");
                // SAFETY: PTRACE_PEEKUSER on pid 0 with a null address has no effect whatever
                // the answer; the filter must stop the call before the kernel sees it.
                unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_PEEKUSER, 0, 0, 0) };
                eprintln!("ptrace returned: the filter did not stop it");
            })
            .unwrap();
        let _ = t.join();
        std::process::exit(0);
    }
    let exe = std::env::current_exe().unwrap();
    for (_, name) in roles {
        let out = std::process::Command::new(&exe)
            .args(["--exact", "seccomp::tests::every_role_traps_a_syscall_outside_its_list", "--nocapture"])
            .env(CHILD, name)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_SECCOMP), "{name}: {stderr}");
        assert!(stderr.contains("filter applied"), "{name}: {stderr}");
        // The kernel keeps 15 bytes of a thread's name.
        let shown = &name[..name.len().min(15)];
        let want = format!("vmr: seccomp: thread {shown} made syscall ptrace (101)");
        assert!(stderr.contains(&want), "{name}: {stderr}");
        assert!(!stderr.contains("returned"), "{name}: {stderr}");
    }
}
