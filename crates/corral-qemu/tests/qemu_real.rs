//! The argv builder, the QMP client and the process helpers against a real
//! `qemu-system-x86_64`: hostile paths and names are built into an argv, QEMU is started
//! daemonized (mostly with `-S`, so no guest code runs), and QMP shows that QEMU understood
//! every escaped value exactly.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

mod common;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use corral_model::*;
use corral_qemu::argv::{ids, NicBackend, OvmfPaths};
use corral_qemu::process::{self, ProcessError, ProcessMatch};
use corral_qemu::qmp::{BlockInfo, Qmp, QmpError, RunState};
use serde_json::json;

fn is_socket(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

fn block<'a>(blocks: &'a [BlockInfo], qdev_id: &str) -> &'a BlockInfo {
    blocks
        .iter()
        .find(|b| {
            b.qdev.as_deref().is_some_and(|q| {
                q == qdev_id || q.starts_with(&format!("/machine/peripheral/{qdev_id}/"))
            })
        })
        .unwrap_or_else(|| panic!("no block backend for {qdev_id} in {blocks:#?}"))
}

fn inserted_file(blocks: &[BlockInfo], qdev_id: &str) -> Option<String> {
    block(blocks, qdev_id)
        .inserted
        .as_ref()
        .map(|i| i.file.clone())
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn hostile_dir(tmp: &Path) -> PathBuf {
    let dir = tmp.join("vm ,d \"q\" ü");
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

#[tokio::test]
async fn hostile_strings_reach_qemu_exactly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = hostile_dir(tmp.path());
    let disk0 = dir.join("dïsk,0 \"x\".raw");
    raw_disk(&disk0, 16 << 20);
    let disk1 = dir.join("a,,b.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk1)
        .arg("16M")
        .output()
        .expect("run qemu-img");
    assert!(
        out.status.success(),
        "qemu-img: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let iso = dir.join("my, iso ü.iso");
    raw_disk(&iso, 1 << 20);
    let iso2 = dir.join("second,, \"disc\".iso");
    raw_disk(&iso2, 1 << 20);
    let tftp = dir.join("tftp, root");
    std::fs::create_dir_all(&tftp).expect("tftp dir");
    let port = free_port();

    let mut spec = base_spec("we,b \"01\" ü");
    spec.description = "ünïcödé, \"quoted\"".into();
    spec.disks = vec![
        Disk {
            device: "disk0".into(),
            size_bytes: 16 << 20,
            format: DiskFormat::Raw,
            bus: DiskBus::Virtio,
            sr: "default".into(),
            path: disk0.clone(),
        },
        Disk {
            device: "disk1".into(),
            size_bytes: 16 << 20,
            format: DiskFormat::Qcow2,
            bus: DiskBus::Sata,
            sr: "default".into(),
            path: disk1.clone(),
        },
    ];
    spec.cdroms = vec![
        Cdrom {
            device: "cdrom0".into(),
            bus: DiskBus::Ide,
            media: Some(iso.clone()),
        },
        Cdrom {
            device: "cdrom1".into(),
            bus: DiskBus::Sata,
            media: None,
        },
    ];
    spec.nics = vec![Nic {
        device: "nic0".into(),
        network: "default".into(),
        model: NicModel::Virtio,
        mac: "52:54:00:12:34:56".into(),
    }];
    let nics = vec![NicBackend::User {
        hostfwd: vec![format!("tcp:127.0.0.1:{port}-:22")],
        tftp_root: Some(tftp),
        boot_file: Some("pxe,linux.0".into()),
    }];
    let run_dir = dir.join("run,x");
    let vm = start(&spec, &run_dir, nics, None, &["-S"]).await;
    let qmp = vm.qmp();

    assert_eq!(
        qmp.query_name().await.expect("query-name").as_deref(),
        Some(spec.name.as_str())
    );
    let uuid = qmp
        .execute("query-uuid", serde_json::Value::Null)
        .await
        .expect("query-uuid");
    assert_eq!(uuid["UUID"], VM_ID);

    // Runtime files are exactly where the paths say.
    assert!(is_socket(&vm.paths.qmp_socket));
    assert!(
        is_socket(&vm.paths.serial_socket),
        "serial socket {:?}",
        vm.paths.serial_socket
    );
    // The graphical console is on loopback TCP, where QEMU found a free display.
    let (vnc_host, vnc_port) = qmp
        .query_vnc()
        .await
        .expect("query-vnc")
        .expect("VNC enabled");
    assert_eq!(vnc_host, "127.0.0.1");
    assert!((5900..=5999).contains(&vnc_port), "VNC port {vnc_port}");
    assert!(
        vm.paths.serial_log.is_file(),
        "serial log {:?}",
        vm.paths.serial_log
    );
    assert_eq!(
        process::read_pidfile(&vm.paths.pidfile).expect("pid file"),
        vm.pid
    );

    // Disks and media: QEMU opened exactly these files.
    let blocks = qmp.query_block().await.expect("query-block");
    assert_eq!(inserted_file(&blocks, "disk0").as_deref(), disk0.to_str());
    assert_eq!(inserted_file(&blocks, "disk1").as_deref(), disk1.to_str());
    assert_eq!(inserted_file(&blocks, "cdrom0").as_deref(), iso.to_str());
    assert_eq!(block(&blocks, "cdrom0").device, ids::cdrom_drive("cdrom0"));
    assert_eq!(inserted_file(&blocks, "cdrom1"), None);
    assert!(block(&blocks, "cdrom1").removable);

    // User networking took the forward rule.
    let usernet = qmp
        .human_monitor_command("info usernet")
        .await
        .expect("info usernet");
    assert!(
        usernet.contains(&port.to_string()),
        "hostfwd {port} missing: {usernet}"
    );

    // Media change on the empty drive by its qdev id, then eject.
    qmp.blockdev_change_medium("cdrom1", &iso2, None)
        .await
        .expect("change medium");
    let blocks = qmp.query_block().await.expect("query-block");
    assert_eq!(inserted_file(&blocks, "cdrom1").as_deref(), iso2.to_str());
    qmp.eject_medium("cdrom1").await.expect("eject");
    let blocks = qmp.query_block().await.expect("query-block");
    assert_eq!(inserted_file(&blocks, "cdrom1"), None);
    qmp.eject_medium("cdrom0").await.expect("eject cdrom0");

    // Hot-plug a disk into its reserved root port, the way the agent will.
    let hot = dir.join("hot, plug.raw");
    raw_disk(&hot, 8 << 20);
    qmp.execute(
        "blockdev-add",
        json!({"driver": "file", "node-name": ids::disk_file_node("disk5"), "filename": hot}),
    )
    .await
    .expect("blockdev-add file");
    qmp.execute(
        "blockdev-add",
        json!({"driver": "raw", "node-name": ids::disk_format_node("disk5"), "file": ids::disk_file_node("disk5")}),
    )
    .await
    .expect("blockdev-add raw");
    qmp.device_add(json!({
        "driver": "virtio-blk-pci",
        "id": "disk5",
        "drive": ids::disk_format_node("disk5"),
        "bus": ids::root_port("disk5"),
    }))
    .await
    .expect("device_add");
    let blocks = qmp.query_block().await.expect("query-block");
    assert_eq!(inserted_file(&blocks, "disk5").as_deref(), hot.to_str());

    // PCI layout: each device alone behind its own root port, at fixed addresses. Bridges get
    // bus numbers only when the firmware enumerates them, so let SeaBIOS run.
    qmp.cont().await.expect("cont");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let all = loop {
        let pci = qmp.query_pci().await.expect("query-pci");
        let all: Vec<corral_qemu::qmp::PciDevice> =
            pci.iter().flat_map(|b| b.all_devices()).cloned().collect();
        if all.iter().any(|d| d.qdev_id == "disk5") {
            break all;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "firmware never enumerated the root ports"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let find = |id: &str| {
        all.iter()
            .find(|d| d.qdev_id == id)
            .unwrap_or_else(|| panic!("{id} not on the PCI bus"))
    };
    let behind = |port: &str| {
        find(port)
            .pci_bridge
            .as_ref()
            .map(|b| {
                b.devices
                    .iter()
                    .map(|d| d.qdev_id.clone())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let port_disk0 = find(&ids::root_port("disk0"));
    assert_eq!(
        (port_disk0.bus, port_disk0.slot, port_disk0.function),
        (0, 2, 0)
    );
    let port_nic0 = find(&ids::root_port("nic0"));
    assert_eq!(
        (port_nic0.bus, port_nic0.slot, port_nic0.function),
        (0, 4, 0)
    );
    assert_eq!(behind(&ids::root_port("disk0")), vec!["disk0".to_string()]);
    assert_eq!(behind(&ids::root_port("nic0")), vec!["nic0".to_string()]);
    assert_eq!(behind(&ids::root_port("disk5")), vec!["disk5".to_string()]);
    assert!(
        behind(&ids::root_port("disk1")).is_empty(),
        "disk1 is on AHCI, its port stays free"
    );
    assert_eq!(find(ids::VIDEO).slot, 1);

    // Unknown devices give a typed error.
    match qmp.device_del("nope").await {
        Err(e @ QmpError::CommandFailed { .. }) => assert_eq!(e.kind(), ErrorKind::NotFound),
        other => panic!("expected DeviceNotFound, got {other:?}"),
    }

    qmp.quit().await.expect("quit");
    assert!(process::wait_for_exit(vm.pid, Duration::from_secs(20)).await);
}

#[tokio::test]
async fn kernel_paths_and_cmdline_are_passed_verbatim() {
    let guest = test_guest();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = hostile_dir(tmp.path());
    let kernel = dir.join("vmlinuz, x ü");
    let initrd = dir.join("initrd \"y\",,img");
    std::fs::copy(&guest.kernel, &kernel).expect("copy kernel");
    std::fs::copy(&guest.initrd, &initrd).expect("copy initrd");
    let cmdline = "console=ttyS0 opt=\"a,b c\" ü=1 quiet,,splash 'single'";
    let mut spec = base_spec("kernel-boot");
    spec.kernel_boot = Some(KernelBoot {
        kernel: kernel.clone(),
        initrd: Some(initrd.clone()),
        cmdline: cmdline.into(),
    });
    let vm = start(&spec, &dir.join("run"), Vec::new(), None, &["-S"]).await;
    let get = |prop: &'static str| {
        let qmp = vm.qmp().clone();
        async move {
            qmp.execute("qom-get", json!({"path": "/machine", "property": prop}))
                .await
                .unwrap_or_else(|e| panic!("qom-get {prop}: {e}"))
        }
    };
    assert_eq!(get("kernel").await, json!(kernel.to_str()));
    assert_eq!(get("initrd").await, json!(initrd.to_str()));
    assert_eq!(get("append").await, json!(cmdline));
    vm.qmp().quit().await.expect("quit");
}

#[tokio::test]
async fn uefi_firmware_is_attached_as_pflash() {
    let firmware =
        corral_qemu::firmware::find_ovmf().expect("OVMF is not installed (Debian package `ovmf`)");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = hostile_dir(tmp.path());
    let vars = dir.join("vars, ü.fd");
    std::fs::copy(&firmware.vars_template, &vars).expect("copy vars");
    let mut spec = base_spec("uefi");
    spec.firmware = Firmware::Uefi;
    let ovmf = OvmfPaths {
        code: firmware.code.clone(),
        vars: vars.clone(),
    };
    let vm = start(&spec, &dir.join("run"), Vec::new(), Some(ovmf), &["-S"]).await;
    let nodes = vm
        .qmp()
        .execute("query-named-block-nodes", serde_json::Value::Null)
        .await
        .expect("query-named-block-nodes");
    let file_of = |node: &str| {
        nodes
            .as_array()
            .and_then(|a| a.iter().find(|n| n["node-name"] == node))
            .map(|n| n["file"].clone())
            .unwrap_or_else(|| panic!("no node {node} in {nodes}"))
    };
    assert_eq!(file_of(ids::PFLASH_CODE), json!(firmware.code.to_str()));
    assert_eq!(file_of(ids::PFLASH_VARS), json!(vars.to_str()));
    vm.qmp().quit().await.expect("quit");
}

#[tokio::test]
async fn startup_errors_carry_qemu_stderr() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("no such, disk.qcow2");
    let mut spec = base_spec("broken");
    spec.disks = vec![Disk {
        device: "disk0".into(),
        size_bytes: 1 << 30,
        format: DiskFormat::Qcow2,
        bus: DiskBus::Virtio,
        sr: "default".into(),
        path: missing.clone(),
    }];
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).expect("mkdir");
    let paths = corral_qemu::RuntimePaths::in_dir(&run);
    let argv = corral_qemu::build_argv(&corral_qemu::Launch {
        spec: &spec,
        vm_id: VM_ID,
        accel: corral_model::host::Accelerator::Tcg,
        paths: paths.clone(),
        nics: Vec::new(),
        ovmf: None,
        tpm_socket: None,
        daemonize: true,
        incoming: false,
        sandbox: false,
        identity: None,
        listen_fds: None,
    })
    .expect("argv");
    let err = process::spawn_daemonized(
        &qemu(),
        &argv,
        &run.join("qemu.log"),
        &paths.pidfile,
        Duration::from_secs(60),
    )
    .await
    .expect_err("QEMU must fail to open a missing disk");
    match &err {
        ProcessError::StartFailed { stderr, .. } => {
            assert!(stderr.contains("Could not open"), "{stderr}");
            assert!(stderr.contains(missing.to_str().unwrap_or("?")), "{stderr}");
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    assert!(err.to_string().starts_with("QEMU failed to start"), "{err}");
    let without = process::spawn_daemonized(
        &qemu(),
        &["-S".to_string()],
        &run.join("qemu.log"),
        &paths.pidfile,
        Duration::from_secs(5),
    )
    .await;
    assert!(
        matches!(without, Err(ProcessError::NotDaemonized)),
        "{without:?}"
    );
}

#[tokio::test]
async fn lifecycle_events_concurrency_and_reattach() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let spec = base_spec("life");
    let vm = start(&spec, &tmp.path().join("run"), Vec::new(), None, &["-S"]).await;

    // Re-attach as an agent restart would: pid file -> verified QEMU -> new QMP connection.
    assert_eq!(
        process::check_vm_process(vm.pid, VM_ID),
        ProcessMatch::Running
    );
    assert_eq!(
        process::check_vm_process(vm.pid, "00000000-0000-0000-0000-000000000000"),
        ProcessMatch::Other
    );
    assert_eq!(
        process::find_vm_process(&vm.paths.pidfile, VM_ID),
        Some(vm.pid)
    );
    let first = vm.qmp().clone();
    let status = first.query_status().await.expect("status");
    assert_eq!(status.status, RunState::Prelaunch);
    assert!(!status.running);

    let mut events = first.subscribe();
    first.cont().await.expect("cont");
    let ev = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("RESUME in time")
        .expect("event");
    assert_eq!(ev.event, "RESUME");
    assert!(ev.timestamp.seconds > 0);

    // Many callers on one connection, each gets its own reply.
    let calls = (0..16).map(|i| {
        let q = first.clone();
        async move {
            if i % 2 == 0 {
                q.query_status().await.map(|s| s.running.to_string())
            } else {
                q.query_name().await.map(|n| n.unwrap_or_default())
            }
        }
    });
    let results = futures_join_all(calls).await;
    for (i, r) in results.into_iter().enumerate() {
        let r = r.expect("concurrent command");
        assert_eq!(r, if i % 2 == 0 { "true" } else { "life" });
    }

    first.stop().await.expect("stop");
    let ev = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("STOP in time")
        .expect("event");
    assert_eq!(ev.event, "STOP");
    assert_eq!(
        first.query_status().await.expect("status").status,
        RunState::Paused
    );

    // A second client gets no greeting while the first is connected (one client at a time).
    let busy = Qmp::connect(&vm.paths.qmp_socket, Duration::from_millis(500)).await;
    assert!(matches!(busy, Err(QmpError::Timeout { .. })), "{busy:?}");

    first.quit().await.expect("quit");
    tokio::time::timeout(Duration::from_secs(10), first.wait_closed())
        .await
        .expect("connection closes after quit");
    assert!(matches!(first.query_status().await, Err(QmpError::Closed)));
    assert!(process::wait_for_exit(vm.pid, Duration::from_secs(20)).await);
    assert_eq!(process::check_vm_process(vm.pid, VM_ID), ProcessMatch::Gone);
    assert_eq!(process::find_vm_process(&vm.paths.pidfile, VM_ID), None);
}

#[tokio::test]
async fn runtime_messages_reach_the_runtime_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let spec = base_spec("logs");
    let vm = start(
        &spec,
        &tmp.path().join("run, \"x\""),
        Vec::new(),
        None,
        &["-S"],
    )
    .await;
    process::send_signal(vm.pid, process::Signal::Term).expect("SIGTERM");
    assert!(process::wait_for_exit(vm.pid, Duration::from_secs(20)).await);
    let log =
        std::fs::read_to_string(&vm.paths.runtime_log).expect("runtime log at its exact path");
    assert!(log.contains("terminating on signal 15"), "{log:?}");
}

#[tokio::test]
async fn qmp_reconnects_after_the_client_goes_away() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let spec = base_spec("again");
    let mut vm = start(&spec, &tmp.path().join("run"), Vec::new(), None, &["-S"]).await;
    assert_eq!(
        vm.qmp().query_name().await.expect("name").as_deref(),
        Some("again")
    );
    // The agent dies: its connection goes away, QEMU keeps running, a new agent re-attaches.
    drop(vm.qmp.take());
    assert_eq!(
        process::find_vm_process(&vm.paths.pidfile, VM_ID),
        Some(vm.pid)
    );
    let again = Qmp::connect(&vm.paths.qmp_socket, Duration::from_secs(10))
        .await
        .expect("reconnect");
    assert_eq!(
        again.query_status().await.expect("status").status,
        RunState::Prelaunch
    );
    again.quit().await.expect("quit");
    assert!(process::wait_for_exit(vm.pid, Duration::from_secs(20)).await);
}

/// Join futures without pulling in the `futures` crate.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

/// `spawn_confined` as the agent uses it: sandboxed, inherited listening sockets, no
/// `-daemonize`; as root also as an unprivileged uid with no capabilities. A QEMU that fails
/// to initialise is reported with its own words; one the filter kills, with SIGSYS.
#[tokio::test]
async fn confined_spawn_drops_everything_and_reports_failures() {
    use std::os::fd::AsRawFd;
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).expect("mkdir");
    let root = unsafe { libc::geteuid() } == 0;
    let identity = root.then_some(corral_qemu::confine::Identity {
        uid: 0x7C00_FFF0,
        gid: 0x7C00_FFF0,
    });
    if root {
        // The unprivileged QEMU writes its pid file and logs: made for it, as the agent does.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    let paths = corral_qemu::RuntimePaths::in_dir(&run);
    let qmp_sock = std::os::unix::net::UnixListener::bind(&paths.qmp_socket).expect("bind");
    let serial_sock = std::os::unix::net::UnixListener::bind(&paths.serial_socket).expect("bind");
    let spec = base_spec("confined");
    let launch = |daemonize: bool| corral_qemu::Launch {
        spec: &spec,
        vm_id: VM_ID,
        accel: corral_model::host::Accelerator::Tcg,
        paths: paths.clone(),
        nics: Vec::new(),
        ovmf: None,
        tpm_socket: None,
        daemonize,
        incoming: false,
        sandbox: true,
        identity,
        listen_fds: Some(corral_qemu::argv::ListenFds {
            qmp: qmp_sock.as_raw_fd(),
            serial: serial_sock.as_raw_fd(),
        }),
    };
    assert!(matches!(
        corral_qemu::build_argv(&launch(true)),
        Err(corral_qemu::ArgvError::SandboxDaemonize)
    ));
    let mut argv = corral_qemu::build_argv(&launch(false)).expect("argv");
    argv.push("-S".into());
    let keep = [qmp_sock.as_raw_fd(), serial_sock.as_raw_fd()];
    let log = run.join("qemu.log");
    let (pid, qmp) = process::spawn_confined(
        &qemu(),
        &argv,
        &log,
        identity,
        &keep,
        &paths.qmp_socket,
        Duration::from_secs(60),
    )
    .await
    .expect("confined QEMU starts");
    let creds = corral_qemu::confine::process_credentials(pid).expect("status");
    assert_eq!(creds.seccomp, 2);
    assert!(creds.no_new_privs);
    if let Some(id) = identity {
        assert_eq!(creds.uids, vec![id.uid; 4]);
        assert_eq!(creds.gids, vec![id.gid; 4]);
        assert!(creds.groups.is_empty());
        assert_eq!((creds.cap_eff, creds.cap_bnd), (0, 0));
    }
    assert_eq!(
        qmp.query_status().await.expect("status").status,
        RunState::Prelaunch
    );
    qmp.quit().await.expect("quit");
    assert!(process::wait_for_exit(pid, Duration::from_secs(10)).await);

    // A bad option: QEMU exits while initialising; the error quotes it.
    let mut bad = argv.clone();
    bad.extend(["-device".into(), "no-such-device".into()]);
    let err = process::spawn_confined(
        &qemu(),
        &bad,
        &log,
        identity,
        &keep,
        &paths.qmp_socket,
        Duration::from_secs(60),
    )
    .await
    .expect_err("unknown device");
    assert!(
        matches!(&err, ProcessError::StartFailed { stderr, .. } if stderr.contains("no-such-device")),
        "{err:?}"
    );
    // A fork (a bridge helper) at launch: killed by the filter.
    let mut spawn = argv.clone();
    spawn.extend([
        "-netdev".into(),
        "bridge,id=b0,br=corralnone0,helper=/bin/true".into(),
    ]);
    let err = process::spawn_confined(
        &qemu(),
        &spawn,
        &log,
        identity,
        &keep,
        &paths.qmp_socket,
        Duration::from_secs(60),
    )
    .await
    .expect_err("the filter kills a fork");
    assert!(
        matches!(&err, ProcessError::StartFailed { status, .. } if status.contains("SIGSYS")),
        "{err:?}"
    );
}
