//! End-to-end installs (issue 3) with real servers and real QEMU guests under TCG: the project's
//! test installer from an install tree over HTTP, FTP and NFS, from its ISO and over PXE, each
//! writing a bootable system that corral then boots from disk; the real Debian installer over
//! HTTP and FTP up to its first dialog; emulated devices switched to virtio; image installs with
//! a cloud-init seed; guest tools; and the bad inputs, each leaving nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

mod common;
#[path = "../../corral-install/tests/common/mod.rs"]
mod servers;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn installer() -> PathBuf {
    guest().dir.join("installer")
}

/// The test installer's tree, as a fresh copy (servers may not share the cache directory).
fn tree_copy() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    servers::copy_dir(&installer().join("tree"), d.path());
    d
}

/// The test installer's tree served over HTTP; keep the first two alive while it is used.
fn tree_over_http() -> (tempfile::TempDir, servers::Server, String) {
    let tree = tree_copy();
    let http = servers::http_server(tree.path());
    let url = format!("http://127.0.0.1:{}/", http.port);
    (tree, http, url)
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `vm install` of the corral test guest, waiting for it; the installed system's id is `id`.
fn install(a: &TestAgent, name: &str, source: &[&str], id: &str) -> String {
    let extra = format!("no_timer_check corral.install.id={id}");
    let mut args = vec![
        "vm",
        "install",
        "--template",
        "corral-test-guest",
        "--name",
        name,
        "--timeout",
        "200",
    ];
    args.extend_from_slice(source);
    if source.contains(&"--location") && !source.contains(&"--pxe") {
        args.extend_from_slice(&["--extra-args", &extra]);
    }
    a.ok(&args)
}

/// After an install: the VM runs from its disk, the installer's files are gone, and the boot
/// settings are back to normal.
fn assert_installed(a: &TestAgent, name: &str, id: Option<&str>) {
    a.wait_console(name, MARKER, 1, BOOT);
    let log = a.console_log(name);
    assert!(
        log.contains("CORRAL-BOOT-SOURCE=disk"),
        "{name} did not boot from its disk:\n{}",
        tail(&log, 20)
    );
    if let Some(id) = id {
        assert!(
            log.contains(&format!("CORRAL-INSTALL-ID={id}")),
            "{name}: the installed system is not the one the installer wrote:\n{}",
            tail(&log, 20)
        );
    }
    let vm = a.vm(name);
    assert_eq!(vm["power_state"], "running");
    assert!(
        vm["kernel_boot"].is_null(),
        "installer kernel still set: {vm}"
    );
    assert!(vm["install"].is_null(), "install settings still set: {vm}");
    assert_eq!(vm["boot_device"], "disk");
    let scratch = a
        .state_dir()
        .join("install")
        .join(vm["id"].as_str().unwrap());
    assert!(
        !scratch.exists(),
        "scratch files left in {}",
        scratch.display()
    );
    let history = a.json(&["vm", "history", name]);
    let installs: Vec<&serde_json::Value> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["operation"] == "vm.install")
        .collect();
    assert!(
        installs.iter().any(|t| t["state"] == "succeeded"),
        "no successful vm.install in {installs:?}"
    );
}

/// The `vm.install` tasks in a VM's history, oldest first as the history lists them.
fn install_tasks(a: &TestAgent, name: &str) -> Vec<serde_json::Value> {
    a.json(&["vm", "history", name])
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["operation"] == "vm.install")
        .cloned()
        .collect()
}

/// The test installer really reads its payload from the served tree: while it installs, its
/// console says `CORRAL-INSTALL-SOURCE=<tree>/images/disk.img.gz` (a file the agent never
/// fetches; the servers' logs show the guest's download too). It gets 256 MiB: in 128 MiB the
/// download does not fit beside the initrd and the installer falls back to its built-in
/// payload. The CLI reports the install's phases, one line each, when stderr is no terminal.
#[test]
fn test_installer_from_http_and_ftp_trees() {
    let a = TestAgent::start();
    let tree = tree_copy();
    let logs = tempfile::tempdir().unwrap();
    let (http_log, ftp_log) = (logs.path().join("http.log"), logs.path().join("ftp.log"));
    let http = servers::http_server_logged(tree.path(), &http_log);
    let ftp = servers::ftp_server_logged(tree.path(), &ftp_log);
    let http_url = format!("http://127.0.0.1:{}/", http.port);
    let ftp_url = format!("ftp://127.0.0.1:{}/", ftp.port);

    // Install in one thread, watch the installer's console in this one.
    let run = |name: &str, url: &str, id: &str| -> (std::process::Output, String) {
        let extra = format!("no_timer_check corral.install.id={id}");
        std::thread::scope(|sc| {
            let cli = sc.spawn(|| {
                a.cli(&[
                    "vm",
                    "install",
                    "--template",
                    "corral-test-guest",
                    "--name",
                    name,
                    "--memory",
                    "256M",
                    "--timeout",
                    "200",
                    "--location",
                    url,
                    "--extra-args",
                    &extra,
                ])
            });
            let mut source = String::new();
            wait_until(
                Duration::from_secs(200),
                "the installer's source line",
                || {
                    let log = a.console_log(name);
                    if let Some(l) = log
                        .lines()
                        .find(|l| l.starts_with("CORRAL-INSTALL-SOURCE="))
                    {
                        source = l.trim().to_string();
                        return true;
                    }
                    cli.is_finished()
                },
            );
            (cli.join().expect("install thread"), source)
        })
    };

    let (out, source) = run("inst-http", &http_url, "http1");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        source,
        format!(
            "CORRAL-INSTALL-SOURCE=http://10.0.2.2:{}/images/disk.img.gz",
            http.port
        )
    );
    assert!(stdout.contains("installed VM inst-http"), "{stdout}");
    assert!(
        stdout.contains("corral-test-installer"),
        "detection not reported: {stdout}"
    );
    // Phases arrive in order, each once (short ones may pass between two polls).
    let phases: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("vm.install: "))
        .collect();
    let installing = phases
        .iter()
        .position(|p| p.starts_with("installing (watch it: corral vm console inst-http)"))
        .unwrap_or_else(|| panic!("no installing phase in:\n{stderr}"));
    if let Some(fetch) = phases.iter().position(|p| p.starts_with("fetching")) {
        assert!(fetch < installing, "{stderr}");
    }
    assert_eq!(
        phases
            .iter()
            .filter(|p| p.starts_with("installing"))
            .count(),
        1,
        "{stderr}"
    );
    assert_installed(&a, "inst-http", Some("http1"));
    let log = std::fs::read_to_string(&http_log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("GET /images/disk.img.gz") && l.contains("\" 200 ")),
        "the installer did not fetch its payload from the HTTP tree:\n{log}"
    );

    let (out, source) = run("inst-ftp", &ftp_url, "ftp1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        source,
        format!(
            "CORRAL-INSTALL-SOURCE=ftp://10.0.2.2:{}/images/disk.img.gz",
            ftp.port
        )
    );
    assert_installed(&a, "inst-ftp", Some("ftp1"));
    let log = std::fs::read_to_string(&ftp_log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("RETR ") && l.contains("/images/disk.img.gz completed=1")),
        "the installer did not fetch its payload from the FTP tree:\n{log}"
    );
}

#[test]
fn test_installer_from_nfs_tree_and_local_directory() {
    let a = TestAgent::start();
    let tree = tree_copy();
    let work = tempfile::tempdir().unwrap();
    let nfs = servers::nfs_server(tree.path(), work.path());
    let url = format!("nfs://127.0.0.1{}/", tree.path().display());
    install(&a, "inst-nfs", &["--location", &url], "nfs1");
    assert_installed(&a, "inst-nfs", Some("nfs1"));
    drop(nfs);

    let dir = tree.path().to_string_lossy().into_owned();
    install(&a, "inst-dir", &["--location", &dir], "dir1");
    assert_installed(&a, "inst-dir", Some("dir1"));
}

#[test]
fn test_installer_from_iso_ejects_and_keeps_the_drive() {
    let a = TestAgent::start();
    let iso = installer().join("installer.iso");
    install(&a, "inst-iso", &["--cdrom", iso.to_str().unwrap()], "");
    assert_installed(&a, "inst-iso", None);
    let vm = a.vm("inst-iso");
    let cdroms = vm["cdroms"].as_array().unwrap();
    assert_eq!(cdroms.len(), 1, "the CD drive must stay: {vm}");
    assert!(cdroms[0]["media"].is_null(), "media not ejected: {vm}");
    // The drive still takes media while running.
    a.ok(&["vm", "cdrom", "insert", "inst-iso", iso.to_str().unwrap()]);
    assert_eq!(
        a.vm("inst-iso")["cdroms"][0]["media"],
        iso.to_str().unwrap()
    );
}

#[test]
fn test_installer_over_pxe_from_a_boot_server_and_from_a_tree() {
    let a = TestAgent::start();
    let pxe = installer().join("pxe");
    install(
        &a,
        "inst-pxe",
        &["--pxe", "--boot-server", pxe.to_str().unwrap()],
        "",
    );
    assert_installed(&a, "inst-pxe", None);

    // No boot server of one's own: the agent builds one from the tree's kernel and initrd.
    let (_tree, _http, url) = tree_over_http();
    a.ok(&[
        "vm",
        "install",
        "--template",
        "corral-test-guest",
        "--name",
        "inst-pxe2",
        "--pxe",
        "--location",
        &url,
        "--extra-args",
        "no_timer_check corral.install.id=pxe2",
        "--timeout",
        "200",
    ]);
    assert_installed(&a, "inst-pxe2", Some("pxe2"));
}

/// Debian's dnsmasq (package `dnsmasq-base`) as a LAN's DHCP + TFTP boot server on one
/// bridge, in the foreground, logging every lease and transfer; stopped on drop.
struct Dnsmasq {
    child: std::process::Child,
    log: PathBuf,
}

impl Dnsmasq {
    fn start(bridge: &str, range: &str, tftp_root: &Path, work: &Path) -> Dnsmasq {
        let bin = ["/usr/sbin/dnsmasq", "/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect(
                "dnsmasq is missing: install Debian's dnsmasq-base (scripts/install-deps.sh --test \
                 does); the bridged PXE test needs a real external DHCP + TFTP server",
            );
        let log = work.join("dnsmasq.log");
        let child = std::process::Command::new(bin)
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                // No DNS; DHCP and TFTP on this bridge only.
                "--port=0",
                &format!("--interface={bridge}"),
                "--bind-interfaces",
                "--except-interface=lo",
                &format!("--dhcp-range={range}"),
                "--dhcp-authoritative",
                "--enable-tftp",
                "--dhcp-boot=boot.ipxe",
                "--log-dhcp",
                // Keep root: the boot files sit in a private temporary directory.
                "--user=root",
                "--group=root",
            ])
            .arg(format!("--tftp-root={}", tftp_root.display()))
            .arg(format!(
                "--dhcp-leasefile={}",
                work.join("dnsmasq.leases").display()
            ))
            .arg(format!("--pid-file={}", work.join("dnsmasq.pid").display()))
            .arg(format!("--log-facility={}", log.display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(
                std::fs::File::create(work.join("dnsmasq.stderr")).unwrap(),
            ))
            .spawn()
            .expect("start dnsmasq");
        let mut d = Dnsmasq { child, log };
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if d.log_text().contains("TFTP root is") {
                return d;
            }
            let exited = d.child.try_wait().unwrap();
            if exited.is_some() || std::time::Instant::now() > deadline {
                panic!(
                    "dnsmasq did not start ({exited:?}):\n{}\n{}",
                    std::fs::read_to_string(work.join("dnsmasq.stderr")).unwrap_or_default(),
                    d.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--pxe` on a bridged first NIC: the agent sets up no boot server of its own (no QEMU TFTP,
/// which cannot serve a bridge) and boots the NIC first; the LAN's boot server answers. Here
/// that is a real dnsmasq on a test bridge serving the test installer's PXE directory (its
/// kernel and initrd, and its `boot.ipxe` with two arguments added: the install id, and the
/// tree's URL on the bridge's own address, so the installer fetches its payload over the
/// bridge as well). The NIC's iPXE ROM gets its lease and `boot.ipxe` from dnsmasq, the
/// installer its second lease and the payload from the host's bridge address; dnsmasq's and
/// the HTTP server's logs show the guest's MAC and address. `--boot-server` and `--location`
/// are refused on a bridge. Needs root (bridge, tap, DHCP); skipped otherwise, except in CI.
#[test]
fn test_installer_over_pxe_from_an_external_boot_server_on_a_bridge() {
    if !is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "bridged PXE needs root, and CI runs the suite as root"
        );
        eprintln!(
            "skipped: bridged PXE needs root (a bridge, a tap and a DHCP server); run as root"
        );
        return;
    }
    let net = 20 + std::process::id() % 200;
    let host_ip = format!("10.79.{net}.1");
    let bridge = Bridge::create(
        &format!("crpxe{}", std::process::id() % 100000),
        Some(&format!("{host_ip}/24")),
    );
    let work = tempfile::tempdir().unwrap();

    // The payload tree, served on the bridge's address only.
    let tree = tree_copy();
    let http_log = work.path().join("http.log");
    let http = servers::http_server_on(tree.path(), &host_ip, &http_log);
    let tree_url = format!("http://{host_ip}:{}/", http.port);

    // The boot server's directory: the PXE tree's kernel and initrd, its boot.ipxe extended.
    let pxe_src = installer().join("pxe");
    let tftp = work.path().join("tftp");
    std::fs::create_dir(&tftp).unwrap();
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::copy(pxe_src.join(f), tftp.join(f)).unwrap();
    }
    let script = std::fs::read_to_string(pxe_src.join("boot.ipxe")).unwrap();
    assert!(script.lines().any(|l| l.starts_with("kernel ")), "{script}");
    let script: String = script
        .lines()
        .map(|l| {
            if l.starts_with("kernel ") {
                format!("{l} corral.install={tree_url} corral.install.id=bridged\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(tftp.join("boot.ipxe"), script).unwrap();
    let dnsmasq = Dnsmasq::start(
        &bridge.name,
        &format!("10.79.{net}.50,10.79.{net}.99,255.255.255.0,10m"),
        &tftp,
        work.path(),
    );

    let a = TestAgent::start();
    a.ok(&["network", "create", "lan", "--bridge", &bridge.name]);
    let base = [
        "vm",
        "install",
        "--template",
        "corral-test-guest",
        "--name",
        "brpxe",
        "--nic",
        "lan",
        "--timeout",
        "200",
        "--pxe",
    ];
    // The agent's own boot server is QEMU's user-mode TFTP, which a bridge never sees.
    for extra in [
        ["--boot-server", pxe_src.to_str().unwrap()],
        ["--location", tree_url.as_str()],
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(&extra);
        let err = a.fails(&args);
        assert!(
            err.contains("bridge") && err.contains("LAN's boot server"),
            "corral {}: {err}",
            args.join(" ")
        );
        assert!(a.json(&["vm", "list"]).as_array().unwrap().is_empty());
    }

    // Install in one thread; watch QEMU's command line and the installer's console here.
    let mut args = base.to_vec();
    args.extend_from_slice(&["--memory", "256M"]);
    let (out, argv, installing, source) = std::thread::scope(|sc| {
        let cli = sc.spawn(|| a.cli(&args));
        let (mut argv, mut installing, mut source) =
            (Vec::<String>::new(), serde_json::Value::Null, String::new());
        wait_until(
            Duration::from_secs(240),
            "the installer's source line",
            || {
                if argv.is_empty() {
                    if let Some(pid) = a.qemu_pids().first() {
                        argv = std::fs::read(format!("/proc/{pid}/cmdline"))
                            .unwrap_or_default()
                            .split(|b| *b == 0)
                            .filter(|a| !a.is_empty())
                            .map(|a| String::from_utf8_lossy(a).into_owned())
                            .collect();
                        installing = a.vm("brpxe");
                    }
                }
                let log = a.console_log("brpxe");
                if let Some(l) = log
                    .lines()
                    .find(|l| l.starts_with("CORRAL-INSTALL-SOURCE="))
                {
                    source = l.trim().to_string();
                    return true;
                }
                cli.is_finished()
            },
        );
        (
            cli.join().expect("install thread"),
            argv,
            installing,
            source,
        )
    });
    assert!(
        out.status.success(),
        "{}\n{}\ndnsmasq log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        tail(&dnsmasq.log_text(), 30)
    );
    // The installer's QEMU: a tap on the bridge, booting from the NIC, no TFTP of its own.
    assert_eq!(installing["boot_device"], "network", "{installing}");
    assert!(
        installing["install"].is_object() && installing["install"]["pxe"].is_null(),
        "the agent set up a boot server of its own: {installing}"
    );
    let joined = argv.join(" ");
    assert!(!joined.is_empty(), "the installer's QEMU was not seen");
    assert!(!joined.contains("tftp="), "the agent served TFTP: {joined}");
    assert!(
        argv.iter()
            // The agent opens the tap `cr...` and passes it: `fd=N` (by name when not root).
            .any(|a| a.starts_with("tap,") && (a.contains("ifname=cr") || a.contains(",fd="))),
        "no tap NIC: {joined}"
    );
    assert!(
        argv.iter()
            .any(|a| a.starts_with("virtio-net-pci") && a.contains("bootindex=1")),
        "the NIC does not boot first: {joined}"
    );
    assert_eq!(
        source,
        format!("CORRAL-INSTALL-SOURCE={tree_url}images/disk.img.gz")
    );
    assert_installed(&a, "brpxe", Some("bridged"));

    // dnsmasq leased the guest's MAC an address and sent it the boot files; the installer
    // fetched its payload from that address.
    let mac = a.vm("brpxe")["nics"][0]["mac"]
        .as_str()
        .unwrap()
        .to_string();
    let log = dnsmasq.log_text();
    let ack = format!("DHCPACK({}) ", bridge.name);
    let guest_ip = log
        .lines()
        .filter_map(|l| l.split_once(&ack).map(|(_, rest)| rest))
        .find_map(|rest| {
            let mut w = rest.split_whitespace();
            let (ip, m) = (w.next()?, w.next()?);
            (m == mac).then(|| ip.to_string())
        })
        .unwrap_or_else(|| panic!("no DHCPACK for {mac} in dnsmasq's log:\n{log}"));
    for file in ["boot.ipxe", "vmlinuz", "initrd.img"] {
        let sent = format!("sent {} to {guest_ip}", tftp.join(file).display());
        assert!(log.contains(&sent), "dnsmasq's log lacks {sent:?}:\n{log}");
    }
    eprintln!(
        "dnsmasq, for {mac} ({guest_ip}):\n{}",
        log.lines()
            .filter(|l| l.contains(&mac) || l.contains(&format!("to {guest_ip}")))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let http_text = std::fs::read_to_string(&http_log).unwrap();
    assert!(
        http_text
            .lines()
            .any(|l| l.starts_with(&format!("{guest_ip} "))
                && l.contains("GET /images/disk.img.gz")
                && l.contains("\" 200 ")),
        "the installer ({guest_ip}) did not fetch its payload over the bridge:\n{http_text}"
    );

    // Its tap leaves the bridge with the VM.
    a.ok(&["vm", "delete", "brpxe", "--force"]);
    assert_eq!(
        bridge.ports(),
        Vec::<String>::new(),
        "tap left on the bridge"
    );
}

#[test]
fn emulated_install_switches_to_virtio_with_same_disk_and_mac() {
    let a = TestAgent::start();
    let (_tree, _http, url) = tree_over_http();
    install(
        &a,
        "legacy",
        &[
            "--location",
            &url,
            "--disk",
            "64M,bus=ide",
            "--nic",
            "default,model=e1000",
        ],
        "emu1",
    );
    assert_installed(&a, "legacy", Some("emu1"));
    let before = a.vm("legacy");
    assert_eq!(before["disks"][0]["bus"], "ide");
    assert_eq!(before["nics"][0]["model"], "e1000");

    // Switching needs a halted VM.
    let err = a.fails(&["vm", "set", "legacy", "--device-model", "pv"]);
    assert!(err.contains("running"), "{err}");
    a.ok(&["vm", "shutdown", "legacy"]);
    a.ok(&["vm", "set", "legacy", "--device-model", "pv"]);
    let after = a.vm("legacy");
    assert_eq!(after["disks"][0]["bus"], "virtio");
    assert_eq!(after["nics"][0]["model"], "virtio");
    assert_eq!(after["disks"][0]["path"], before["disks"][0]["path"]);
    let mac = before["nics"][0]["mac"].as_str().unwrap().to_string();
    assert_eq!(after["nics"][0]["mac"], mac.as_str());

    a.ok(&["vm", "start", "legacy"]);
    a.wait_console("legacy", MARKER, 1, BOOT);
    let log = a.console_log("legacy");
    assert!(
        log.contains("CORRAL-BOOT-SOURCE=disk"),
        "{}",
        tail(&log, 20)
    );
    assert!(log.contains("CORRAL-INSTALL-ID=emu1"), "{}", tail(&log, 20));
    // The cloud kernel has virtio-net (not e1000): the NIC appears now, with the same MAC.
    assert!(
        log.contains(&format!("CORRAL-NIC eth0 {mac}")),
        "virtio NIC with MAC {mac} not seen:\n{}",
        tail(&log, 20)
    );
}

#[test]
fn image_install_with_cloud_init_seed() {
    let a = TestAgent::start();
    let g = guest();
    let dir = tempfile::tempdir().unwrap();
    let user_data = dir.path().join("user-data.yaml");
    std::fs::write(&user_data, "#cloud-config\nhostname: c1\n").unwrap();
    let ci = format!("user-data={}", user_data.display());
    a.ok(&[
        "vm",
        "install",
        "--template",
        "corral-test-guest",
        "--name",
        "c1",
        "--disk-import",
        g.disk_qcow2.to_str().unwrap(),
        "--cloud-init",
        &ci,
    ]);
    a.wait_console("c1", MARKER, 1, BOOT);
    assert!(a.console_log("c1").contains("CORRAL-BOOT-SOURCE=disk"));
    let vm = a.vm("c1");
    // The template's 64 MiB disk size is the floor; the image is copied, not referenced.
    assert!(
        vm["disks"][0]["size_bytes"].as_u64().unwrap() >= 64 << 20,
        "{vm}"
    );
    let seed = PathBuf::from(
        vm["cdroms"][0]["media"]
            .as_str()
            .expect("seed in the CD drive"),
    );
    let bytes = std::fs::read(&seed).unwrap();
    // ISO 9660 primary volume descriptor: the volume id NoCloud looks for.
    assert_eq!(&bytes[0x8001..0x8006], b"CD001");
    assert_eq!(&bytes[0x8028..0x802e], b"cidata");
    a.ok(&["vm", "delete", "c1", "--force"]);
    assert!(!seed.exists(), "the seed must go with the VM");
}

/// The real Debian installer (debian-installer-12-netboot-amd64 laid out as a mirror) over HTTP
/// and FTP: detected as Debian, booted with its own kernel and initrd, and its first dialog on
/// the serial console. A third install carries a preseed file in its initrd: the installer
/// reads it (no language dialog) and goes on to fetch from the mirror over the NAT network.
/// The FTP install is stopped once it runs, its kernel and initrd compared byte for byte with
/// the tree's: the dialog it would show is the HTTP install's (the protocol only changes how
/// those two files arrive), and a third d-i boot under TCG costs a minute of both cores.
#[test]
fn debian_installer_first_dialog_over_http_and_ftp() {
    let mirror = std::process::Command::new("sh")
        .arg(servers::crate_dir().join("tests/servers/debian_mirror.sh"))
        .output()
        .expect("debian_mirror.sh");
    assert!(
        mirror.status.success(),
        "cannot lay out the Debian installer: {}",
        String::from_utf8_lossy(&mirror.stderr)
    );
    let root = PathBuf::from(String::from_utf8_lossy(&mirror.stdout).trim());
    let a = TestAgent::start();
    let http = servers::http_server(&root);
    let ftp = servers::ftp_server(&root);
    let preseed_dir = tempfile::tempdir().unwrap();
    let preseed = preseed_dir.path().join("preseed.cfg");
    std::fs::write(
        &preseed,
        "d-i debian-installer/locale string en_US.UTF-8\n\
         d-i keyboard-configuration/xkb-keymap select us\n\
         d-i netcfg/choose_interface select auto\n",
    )
    .unwrap();
    let http_url = format!("http://127.0.0.1:{}/", http.port);
    let ftp_url = format!("ftp://127.0.0.1:{}/", ftp.port);
    let preseed_arg = preseed.to_string_lossy().into_owned();
    let installs: [(&str, &str, &[&str]); 3] = [
        ("deb-http", &http_url, &[]),
        ("deb-ftp", &ftp_url, &[]),
        ("deb-preseed", &http_url, &["--unattended", &preseed_arg]),
    ];
    // All three at once: each waits minutes for a TCG boot.
    let mut tasks = Vec::new();
    for (name, url, extra) in installs {
        let mut args = vec![
            "vm",
            "install",
            "--template",
            "debian-12",
            "--name",
            name,
            "--memory",
            "1G",
            "--disk",
            "1G",
            "--location",
            url,
            "--extra-args",
            "no_timer_check",
            "--no-wait",
        ];
        args.extend_from_slice(extra);
        tasks.push((name, a.ok(&args).trim().to_string()));
    }
    for (name, _) in &tasks {
        // The VM appears once the installer's kernel and initrd are downloaded.
        wait_until(Duration::from_secs(120), "the installer to boot", || {
            let out = a.cli(&["--json", "vm", "show", name]);
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"running\"")
        });
        let vm = a.vm(name);
        let cmdline = vm["kernel_boot"]["cmdline"].as_str().unwrap_or_default();
        assert!(
            cmdline.contains("mirror/suite=bookworm") && cmdline.contains("10.0.2.2"),
            "the installer is not pointed at the tree: {cmdline}"
        );
    }
    // Over FTP: what booted is exactly the tree's kernel and initrd.
    let ftp_task = &tasks.iter().find(|(n, _)| *n == "deb-ftp").unwrap().1;
    let scratch = a
        .state_dir()
        .join("install")
        .join(a.vm("deb-ftp")["id"].as_str().unwrap());
    let netboot = root.join("dists/bookworm/main/installer-amd64/current/images/netboot");
    for (fetched, original) in [
        ("kernel", "debian-installer/amd64/linux"),
        ("initrd", "debian-installer/amd64/initrd.gz"),
    ] {
        assert!(
            std::fs::read(scratch.join(fetched)).unwrap()
                == std::fs::read(netboot.join(original)).unwrap(),
            "the {fetched} fetched over FTP differs from the tree's {original}"
        );
    }
    a.ok(&["task", "cancel", ftp_task]);
    a.wait_console("deb-http", "Select a language", 1, Duration::from_secs(400));
    a.wait_console(
        "deb-preseed",
        "Checking the Debian archive mirror",
        1,
        Duration::from_secs(400),
    );
    assert!(
        !a.console_log("deb-preseed").contains("Select a language"),
        "the preseeded installer still asked for the language"
    );
    for (name, task) in &tasks {
        if task != ftp_task {
            a.ok(&["task", "cancel", task]);
        }
        wait_until(Duration::from_secs(30), "the install to stop", || {
            a.json(&["task", "show", task])["state"] == "cancelled"
        });
        assert_eq!(a.power_state(name), "halted");
    }
}

/// An installer that never finishes: the install times out, the VM is powered off and left
/// halted with the installer's files in place. Then the three ways on: `vm start` retries
/// (a new `vm.install` task watches it and switches to disk boot), `vm set --abandon-install`
/// gives up (disk boot, files gone), `vm delete` removes the files with the VM.
#[test]
fn installer_that_never_finishes_times_out_then_retries_or_is_abandoned() {
    let a = TestAgent::start();
    let (_tree, _http, url) = tree_over_http();
    let hang = |name: &str, id: &str, timeout: &str, wait: bool| {
        let extra = format!("no_timer_check corral.install.hang corral.install.id={id}");
        let mut args = vec![
            "vm",
            "install",
            "--template",
            "corral-test-guest",
            "--name",
            name,
            "--location",
            &url,
            "--extra-args",
            &extra,
            "--timeout",
            timeout,
        ];
        if !wait {
            args.push("--no-wait");
        }
        let out = a.cli(&args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Two in the background, one in the foreground: each waits out its timeout.
    // The timeout also bounds the retry, which writes the disk: long enough for that under TCG.
    assert!(hang("gives-up", "abandon1", "100", false).0);
    assert!(hang("deleted", "delete1", "100", false).0);
    let (ok, err) = hang("hangs", "retry1", "100s", true);
    assert!(!ok);
    assert!(err.contains("did not finish within 100 s"), "{err}");
    for name in ["hangs", "gives-up", "deleted"] {
        wait_until(Duration::from_secs(120), "the install to time out", || {
            install_tasks(&a, name)
                .first()
                .is_some_and(|t| t["state"] == "failed")
        });
        let t = &install_tasks(&a, name)[0];
        assert_eq!(t["error"]["kind"], "timeout", "{t}");
        wait_until(Duration::from_secs(30), "the VM to be powered off", || {
            a.power_state(name) == "halted"
        });
        let vm = a.vm(name);
        assert_eq!(vm["install"]["timeout_secs"], 100, "{vm}");
        let scratch = a
            .state_dir()
            .join("install")
            .join(vm["id"].as_str().unwrap());
        assert!(
            files_in(&scratch).contains(&"kernel".to_string()),
            "installer files must stay for a retry: {:?}",
            files_in(&scratch)
        );
    }

    // Retry: the user drops the hang from the installer's arguments and starts the VM.
    let cmdline = a.vm("hangs")["kernel_boot"]["cmdline"]
        .as_str()
        .unwrap()
        .replace("corral.install.hang", "");
    a.ok(&["vm", "set", "hangs", "--cmdline", &cmdline]);
    a.ok(&["vm", "start", "hangs"]);
    wait_until(BOOT * 2, "the retried install to finish", || {
        install_tasks(&a, "hangs")
            .iter()
            .any(|t| t["state"] == "succeeded")
    });
    assert_installed(&a, "hangs", Some("retry1"));
    assert_eq!(install_tasks(&a, "hangs").len(), 2);

    // Abandon: nothing of the installer is left; the VM boots from its (empty) disk.
    let id = a.vm("gives-up")["id"].as_str().unwrap().to_string();
    a.ok(&["vm", "set", "gives-up", "--abandon-install"]);
    let vm = a.vm("gives-up");
    assert!(vm["install"].is_null(), "{vm}");
    assert!(vm["kernel_boot"].is_null(), "{vm}");
    assert_eq!(vm["boot_device"], "disk");
    assert!(!a.state_dir().join("install").join(&id).exists());
    let err = a.fails(&["vm", "set", "gives-up", "--abandon-install"]);
    assert!(err.contains("has no unfinished install"), "{err}");
    let err = a.fails(&["vm", "set", "hangs", "--abandon-install"]);
    assert!(err.contains("running"), "{err}");

    // Delete: the installer files go with the VM.
    let id = a.vm("deleted")["id"].as_str().unwrap().to_string();
    a.ok(&["vm", "delete", "deleted"]);
    assert!(!a.state_dir().join("install").join(&id).exists());
}

#[test]
fn guest_tools_insert() {
    let a = TestAgent::start();
    a.create_kernel_vm("win", &[]);
    let err = a.fails(&["vm", "tools", "insert", "win"]);
    assert!(err.contains("virtio-win.iso"), "{err}");
    // Any ISO named like the virtio drivers will do; the test installer's ISO is one.
    let isos = a.state_dir().join("isos");
    std::fs::create_dir_all(&isos).unwrap();
    std::fs::copy(
        installer().join("installer.iso"),
        isos.join("virtio-win-0.1.240.iso"),
    )
    .unwrap();
    a.ok(&["vm", "tools", "insert", "win"]);
    let media = isos.join("virtio-win-0.1.240.iso");
    assert_eq!(a.vm("win")["cdroms"][0]["media"], media.to_str().unwrap());
    // While the guest runs: QEMU changes the medium, and the guest sees an ISO in its drive.
    a.ok(&["vm", "cdrom", "eject", "win"]);
    a.ok(&["vm", "start", "win"]);
    a.wait_console("win", MARKER, 1, BOOT);
    a.ok(&["vm", "tools", "insert", "win"]);
    assert_eq!(a.vm("win")["cdroms"][0]["media"], media.to_str().unwrap());
    assert_eq!(a.power_state("win"), "running");
}

/// `--location URL,kernel=PATH,initrd=PATH`: the given paths are booted even where the tree's
/// own `.treeinfo` points elsewhere (here, at files that are gone).
#[test]
fn manual_kernel_and_initrd_override() {
    let a = TestAgent::start();
    let (tree, _http, url) = tree_over_http();
    std::fs::create_dir_all(tree.path().join("alt")).unwrap();
    std::fs::rename(
        tree.path().join("images/pxeboot"),
        tree.path().join("alt/boot"),
    )
    .unwrap();
    let err = a.fails(&[
        "vm",
        "install",
        "--template",
        "corral-test-guest",
        "--name",
        "no-kernel",
        "--location",
        &url,
    ]);
    assert!(err.contains("images/pxeboot/vmlinuz"), "{err}");
    let location = format!("{url},kernel=alt/boot/vmlinuz,initrd=alt/boot/initrd.img");
    let out = install(&a, "manual", &["--location", &location], "manual1");
    assert!(out.contains("installed VM manual"), "{out}");
    assert_installed(&a, "manual", Some("manual1"));
}

/// Templates through the CLI: a user template derived from a built-in, a VM created from it
/// whose restrictions hold for devices added later, built-ins that cannot be deleted, the
/// short Windows names, and user templates surviving an agent restart.
#[test]
fn user_templates_and_their_restrictions() {
    let mut a = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("small.toml");
    std::fs::write(
        &file,
        "name = \"small\"\nderived_from = \"corral-test-guest\"\n\
         description = \"one disk, one NIC\"\n\n[restrictions]\nmax_nics = 1\nmax_disks = 1\n",
    )
    .unwrap();
    a.ok(&["template", "create", "--file", file.to_str().unwrap()]);
    let t = a.json(&["template", "show", "small"]);
    assert_eq!(t["derived_from"], "corral-test-guest", "{t}");
    assert_eq!(t["restrictions"]["max_nics"], 1, "{t}");
    let list = a.ok(&["template", "list"]);
    assert!(
        list.contains("small") && !list.contains("osinfo:"),
        "{list}"
    );
    // osinfo-db (a test dependency) gives templates for OSes without a built-in one.
    let osinfo = a.json(&["template", "list", "--osinfo"]);
    let names: Vec<&str> = osinfo
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"osinfo:debian11"), "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("osinfo:")), "{names:?}");

    a.ok(&["vm", "create", "--template", "small", "--name", "s1"]);
    let vm = a.vm("s1");
    assert_eq!(vm["memory_bytes"], 128 << 20, "inherited memory: {vm}");
    let err = a.fails(&["vm", "nic", "add", "s1", "default"]);
    assert!(
        err.contains("small allows at most 1 NICs; asked for 2"),
        "{err}"
    );
    let err = a.fails(&["vm", "disk", "add", "s1", "16M"]);
    assert!(
        err.contains("small allows at most 1 disks; asked for 2"),
        "{err}"
    );
    let vm = a.vm("s1");
    assert_eq!(vm["nics"].as_array().unwrap().len(), 1);
    assert_eq!(vm["disks"].as_array().unwrap().len(), 1);

    let err = a.fails(&[
        "vm",
        "create",
        "--template",
        "debian-12",
        "--name",
        "big",
        "--vcpus",
        "9",
    ]);
    assert!(
        err.contains("debian-12 allows at most 8 vCPUs; asked for 9"),
        "{err}"
    );
    assert!(a.cli(&["vm", "show", "big"]).status.code() != Some(0));

    let err = a.fails(&["template", "delete", "debian-12"]);
    assert!(err.contains("is built in and cannot be deleted"), "{err}");
    let w = a.json(&["template", "show", "windows-2022"]);
    assert_eq!(w["derived_from"], "windows-server-2022", "{w}");
    assert_eq!(w["firmware"], "uefi", "{w}");
    assert!(a
        .ok(&["template", "show", "windows-2019"])
        .contains("windows-server-2019"));

    a.stop();
    a.spawn();
    assert_eq!(
        a.json(&["template", "show", "small"])["restrictions"]["max_disks"],
        1
    );
    a.ok(&["template", "delete", "small"]);
    let err = a.fails(&["template", "show", "small"]);
    assert!(err.contains("no template named \"small\""), "{err}");
}

/// Bad input: each is a clear error, a non-zero exit, and no VM, volume or scratch file left.
#[test]
fn bad_install_input_leaves_nothing_behind() {
    let a = TestAgent::start();
    let empty = tempfile::tempdir().unwrap();
    let odd = tempfile::tempdir().unwrap();
    std::fs::write(odd.path().join("README"), "not an install tree").unwrap();
    let http = servers::http_server(odd.path());
    let not_iso = odd.path().join("README");
    let closed = servers::closed_port();
    let unreachable = format!("http://127.0.0.1:{closed}/debian/");
    let missing = format!("http://127.0.0.1:{}/no/such/tree/", http.port);
    let unknown = format!("http://127.0.0.1:{}/", http.port);
    let ftp = servers::ftp_server(odd.path());
    let ftp_unreachable = format!("ftp://127.0.0.1:{closed}/debian/");
    let ftp_missing = format!("ftp://127.0.0.1:{}/no/such/tree/", ftp.port);
    let not_iso_msg = format!(
        "{} is not an ISO 9660 image (no CD001 volume descriptor at 32 KiB)",
        not_iso.display()
    );
    let preseed_missing = empty.path().join("preseed.cfg");
    let base = ["vm", "install", "--name", "bad"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--template", "debian-12", "--location", &unreachable],
            "refused",
        ),
        (
            vec!["--template", "debian-12", "--location", &ftp_unreachable],
            "refused",
        ),
        (
            vec![
                "--template",
                "corral-test-guest",
                "--location",
                &ftp_missing,
            ],
            "no installable tree found",
        ),
        (
            vec!["--template", "debian-12", "--location", &missing],
            "404",
        ),
        (
            vec!["--template", "corral-test-guest", "--location", &unknown],
            ".treeinfo",
        ),
        (
            vec![
                "--template",
                "corral-test-guest",
                "--cdrom",
                not_iso.to_str().unwrap(),
            ],
            &not_iso_msg,
        ),
        (
            vec![
                "--template",
                "debian-12",
                "--vcpus",
                "9",
                "--location",
                &unknown,
            ],
            "at most 8 vCPUs",
        ),
        (
            vec![
                "--template",
                "debian-12",
                "--location",
                &unknown,
                "--unattended",
                preseed_missing.to_str().unwrap(),
            ],
            "preseed.cfg",
        ),
        (
            vec!["--template", "no-such-os", "--location", &unknown],
            "no template",
        ),
        (vec!["--template", "debian-12"], "install source"),
        (
            vec!["--template", "debian-12", "--location", "gopher://x/"],
            "gopher",
        ),
        (vec!["--template", "debian-12", "--pxe"], "--boot-server"),
        (
            vec![
                "--template",
                "corral-test-guest",
                "--pxe",
                "--boot-server",
                empty.path().to_str().unwrap(),
            ],
            "no boot file",
        ),
        (
            vec!["--template", "windows-server-2022", "--location", &unknown],
            "does not install from http",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = base.to_vec();
        args.extend_from_slice(&extra);
        let err = a.fails(&args);
        assert!(
            err.contains(needle),
            "corral {}: error should mention {needle:?}, got:\n{err}",
            args.join(" ")
        );
        assert!(
            a.json(&["vm", "list"]).as_array().unwrap().is_empty(),
            "corral {} left a VM behind",
            args.join(" ")
        );
        let sr = a.state_dir().join("srs/default");
        assert!(
            files_in(&sr).iter().all(|f| f.starts_with('.')),
            "volumes left: {:?}",
            files_in(&sr)
        );
        assert!(files_in(&a.state_dir().join("install")).is_empty());
    }
    // The error for an unknown layout lists what was tried.
    let err = a.fails(&[
        "vm",
        "install",
        "--name",
        "bad",
        "--template",
        "corral-test-guest",
        "--location",
        &unknown,
    ]);
    for probe in ["treeinfo", "MANIFEST", "content"] {
        assert!(err.contains(probe), "probe {probe} not listed:\n{err}");
    }
}

/// The agent dies while an installer runs (the guest does not): the restarted agent picks the
/// install up and still switches the VM to disk boot.
#[test]
fn install_survives_an_agent_restart() {
    let mut a = TestAgent::start();
    let (_tree, _http, url) = tree_over_http();
    a.ok(&[
        "vm",
        "install",
        "--template",
        "corral-test-guest",
        "--name",
        "resumed",
        "--location",
        &url,
        "--extra-args",
        "no_timer_check corral.install.id=resumed1",
        "--no-wait",
    ]);
    wait_until(Duration::from_secs(120), "the installer to boot", || {
        let out = a.cli(&["--json", "vm", "show", "resumed"]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"running\"")
    });
    a.kill9();
    a.spawn();
    wait_until(BOOT * 2, "the resumed install to finish", || {
        let h = a.json(&["vm", "history", "resumed"]);
        h.as_array()
            .unwrap()
            .iter()
            .any(|t| t["operation"] == "vm.install" && t["state"] == "succeeded")
    });
    a.wait_console("resumed", MARKER, 1, BOOT);
    let log = a.console_log("resumed");
    assert!(
        log.contains("CORRAL-BOOT-SOURCE=disk"),
        "{}",
        tail(&log, 20)
    );
    assert!(
        log.contains("CORRAL-INSTALL-ID=resumed1"),
        "{}",
        tail(&log, 20)
    );
    assert!(a.vm("resumed")["install"].is_null());
}

/// `vm install --template T` where T is a template VM: a linked clone of its installed system,
/// started; install sources make no sense there and are refused.
#[test]
fn install_from_a_template_vm() {
    let a = TestAgent::start();
    let g = guest();
    let from = format!(",from={}", g.disk_qcow2.display());
    a.ok(&[
        "vm", "create", "--name", "golden", "--memory", "192M", "--disk", &from,
    ]);
    a.ok(&["vm", "convert-to-template", "golden"]);
    let err = a.fails(&[
        "vm",
        "install",
        "--template",
        "golden",
        "--name",
        "x",
        "--location",
        "http://h/",
    ]);
    assert!(err.contains("template VM"), "{err}");
    a.ok(&[
        "vm",
        "install",
        "--template",
        "golden",
        "--name",
        "from-golden",
    ]);
    a.wait_console("from-golden", MARKER, 1, BOOT);
    assert!(a
        .console_log("from-golden")
        .contains("CORRAL-BOOT-SOURCE=disk"));
    let vm = a.vm("from-golden");
    assert_ne!(vm["disks"][0]["path"], a.vm("golden")["disks"][0]["path"]);
}

/// An answer file the agent serves over HTTP: a template whose installer arguments use
/// `{unattended_url}` gets a URL (the host's loopback as the NAT guest sees it) that serves the
/// `--unattended` file while the install runs, and nothing after it.
#[test]
fn answer_file_served_to_the_installer_over_http() {
    use std::io::{Read, Write};
    let a = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let tpl = dir.path().join("answered.toml");
    std::fs::write(
        &tpl,
        "name = \"answered\"\nderived_from = \"corral-test-guest\"\nunattended = \"kickstart\"\n\
         installer_args = \"console=ttyS0 corral.answer={unattended_url}\"\n",
    )
    .unwrap();
    a.ok(&["template", "create", "--file", tpl.to_str().unwrap()]);
    let ks = dir.path().join("ks.cfg");
    let answer = "# corral kickstart\nrootpw --plaintext s3cret\n";
    std::fs::write(&ks, answer).unwrap();
    let (_tree, _http, url) = tree_over_http();
    a.ok(&[
        "vm",
        "install",
        "--template",
        "answered",
        "--name",
        "ans",
        "--location",
        &url,
        "--unattended",
        ks.to_str().unwrap(),
        "--extra-args",
        "no_timer_check corral.install.id=ans1",
        "--timeout",
        "200",
        "--no-wait",
    ]);
    wait_until(Duration::from_secs(120), "the installer to boot", || {
        let out = a.cli(&["--json", "vm", "show", "ans"]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"running\"")
    });
    let cmdline = a.vm("ans")["kernel_boot"]["cmdline"]
        .as_str()
        .unwrap()
        .to_string();
    let served = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("corral.answer="))
        .unwrap_or_else(|| panic!("no answer URL in {cmdline}"))
        .to_string();
    let rest = served
        .strip_prefix("http://10.0.2.2:")
        .unwrap_or_else(|| panic!("not a URL the NAT guest reaches: {served}"));
    let (port, path) = rest.split_once('/').unwrap();
    assert!(path.ends_with("/ks.cfg"), "{served}");
    let get = |path: &str| -> std::io::Result<String> {
        let mut c = std::net::TcpStream::connect(format!("127.0.0.1:{port}"))?;
        write!(c, "GET /{path} HTTP/1.1\r\nHost: 10.0.2.2\r\n\r\n")?;
        let mut out = String::new();
        c.read_to_string(&mut out)?;
        Ok(out)
    };
    let reply = get(path).expect("the answer file is served");
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
    assert!(reply.ends_with(answer), "{reply}");
    let other = get("ks.cfg").expect("the listener answers");
    assert!(other.starts_with("HTTP/1.0 404"), "{other}");

    wait_until(BOOT * 2, "the install to finish", || {
        install_tasks(&a, "ans")
            .iter()
            .any(|t| t["state"] == "succeeded")
    });
    assert_installed(&a, "ans", Some("ans1"));
    assert!(
        get(path).is_err(),
        "the answer file is still served after the install"
    );
}

/// The test installer laid out as the installer directory of a Debian mirror, the form
/// virt-install's documentation gives: `<root>/debian/dists/bookworm/main/installer-amd64/`
/// with `current/images/MANIFEST` and the netboot kernel and initrd under
/// `current/images/netboot/debian-installer/amd64/`. Returns the root to serve.
fn debian_installer_dir() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    let images = root
        .path()
        .join("debian/dists/bookworm/main/installer-amd64/current/images");
    let netboot = images.join("netboot/debian-installer/amd64");
    std::fs::create_dir_all(&netboot).unwrap();
    std::fs::write(
        images.join("MANIFEST"),
        "netboot/debian-installer/amd64/linux -- kernel for netboot\n\
         netboot/netboot.tar.gz -- tarball of PXE boot directory (debian-installer)\n",
    )
    .unwrap();
    std::fs::write(
        images.join("netboot/version.info"),
        "Debian version:  12 (bookworm)\nInstaller build: corral test installer\n",
    )
    .unwrap();
    let tree = installer().join("tree/images/pxeboot");
    std::fs::copy(tree.join("vmlinuz"), netboot.join("linux")).unwrap();
    std::fs::copy(tree.join("initrd.img"), netboot.join("initrd.gz")).unwrap();
    root
}

/// No VM, no volume, no installer file, no task: what a dry run must leave.
fn assert_nothing_created(a: &TestAgent, what: &str) {
    assert!(
        a.json(&["vm", "list"]).as_array().unwrap().is_empty(),
        "{what} left a VM behind"
    );
    let sr = a.state_dir().join("srs/default");
    assert!(
        files_in(&sr).iter().all(|f| f.starts_with('.')),
        "{what} left volumes: {:?}",
        files_in(&sr)
    );
    assert!(
        files_in(&a.state_dir().join("install")).is_empty(),
        "{what} left installer files"
    );
    assert!(
        files_in(&a.state_dir().join("seeds")).is_empty(),
        "{what} left a seed"
    );
}

/// `vm install --dry-run` against a Debian installer directory over HTTP: the plan names the
/// release with its osinfo id, the template it takes from it (none given), the URLs of kernel
/// and initrd, the kernel arguments pointing debian-installer at the mirror, the disks and
/// NICs; the server's log shows the kernel and initrd were never downloaded, and nothing
/// exists afterwards. Then the real install from the same URL, without --template, takes the
/// same template, boots the installer found there and boots the installed disk.
#[test]
fn dry_run_then_install_from_a_debian_installer_directory() {
    let a = TestAgent::start();
    let root = debian_installer_dir();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("http.log");
    let http = servers::http_server_logged(root.path(), &log);
    let url = format!(
        "http://127.0.0.1:{}/debian/dists/bookworm/main/installer-amd64/",
        http.port
    );
    let netboot = format!("{url}current/images/netboot/debian-installer/amd64/");

    let plan = a.json(&[
        "vm",
        "install",
        "--name",
        "d1",
        "--location",
        &url,
        "--dry-run",
    ]);
    assert_eq!(plan["detected"]["os"], "debian12", "{plan:#}");
    assert_eq!(plan["detected"]["kernel"], format!("{netboot}linux"));
    assert_eq!(plan["detected"]["initrd"], format!("{netboot}initrd.gz"));
    assert_eq!(plan["detected"]["layout"], "debian-installer-dir");
    assert_eq!(plan["template"]["name"], "debian-12");
    assert_eq!(plan["template"]["reason"], "detected_os");
    let args = plan["kernel_args"].as_str().unwrap();
    let host = format!("mirror/http/hostname=10.0.2.2:{}", http.port);
    for want in [
        host.as_str(),
        "mirror/http/directory=/debian ",
        "mirror/suite=bookworm",
        "console=ttyS0,115200n8",
    ] {
        assert!(args.contains(want), "{want} missing from {args}");
    }
    // debian-12's disk and NIC, nothing made yet.
    assert_eq!(plan["disks"][0]["size_bytes"], 20u64 << 30);
    assert_eq!(plan["disks"][0]["bus"], "virtio");
    assert_eq!(plan["disks"][0]["sr"], "default");
    assert_eq!(plan["nics"][0]["network"], "default");
    assert_eq!(plan["nics"][0]["model"], "virtio");
    assert_nothing_created(&a, "vm install --dry-run");
    assert!(
        a.json(&["task", "list"])
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["operation"] != "vm.install"),
        "a dry run left a task"
    );
    let served = std::fs::read_to_string(&log).unwrap();
    // Detection only asks whether they exist (HEAD); nothing GETs them.
    let kernel_get = "\"GET /debian/dists/bookworm/main/installer-amd64/current/images/netboot/debian-installer/amd64/linux";
    let initrd_get = "\"GET /debian/dists/bookworm/main/installer-amd64/current/images/netboot/debian-installer/amd64/initrd.gz";
    assert!(
        !served.contains(kernel_get) && !served.contains(initrd_get),
        "the dry run downloaded the installer:\n{served}"
    );

    // The same as a block people read.
    let text = a.ok(&[
        "vm",
        "install",
        "--name",
        "d1",
        "--location",
        &url,
        "--dry-run",
    ]);
    for want in [
        "dry run: nothing was created",
        "detected OS:   debian12 (Debian 12 bookworm, debian-installer-dir layout)",
        "template:      template debian-12 (matched from the detected OS debian12)",
        &format!("kernel:        {netboot}linux"),
        "  disk0  20 GiB qcow2 on default, bus virtio",
        "  nic0  network default, model virtio",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    assert_nothing_created(&a, "vm install --dry-run (table)");

    // The real install from the installer directory, template from the detected OS. The
    // test installer ignores debian-installer's mirror arguments and writes its built-in
    // payload (`corral.install` without a URL).
    let out = a.ok(&[
        "vm",
        "install",
        "--name",
        "d1",
        "--location",
        &url,
        "--timeout",
        "200",
        "--extra-args",
        "no_timer_check corral.install corral.install.id=debdir1",
    ]);
    assert!(
        out.contains("template debian-12 (matched from the detected OS debian12)"),
        "{out}"
    );
    assert_installed(&a, "d1", Some("debdir1"));
    let vm = a.vm("d1");
    assert_eq!(vm["template"], "debian-12");
    let served = std::fs::read_to_string(&log).unwrap();
    assert!(
        served.contains("GET /debian/dists/bookworm/main/installer-amd64/current/images/netboot/debian-installer/amd64/linux"),
        "the install did not fetch the kernel from the installer directory:\n{served}"
    );
}

/// A dry run checks what a real install checks and fails with the same message: unknown
/// template, a URL that is not one, an unreachable tree, a name in use. Nothing is left.
#[test]
fn dry_run_refuses_bad_input_like_the_install() {
    let a = TestAgent::start();
    a.ok(&["vm", "create", "--name", "taken"]);
    let closed = servers::closed_port();
    let unreachable = format!("http://127.0.0.1:{closed}/debian/");
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "--name",
            "x1",
            "--template",
            "no-such-os",
            "--location",
            "http://h/",
        ],
        vec![
            "--name",
            "x1",
            "--template",
            "debian-12",
            "--location",
            "gopher://x/",
        ],
        vec![
            "--name",
            "x1",
            "--template",
            "debian-12",
            "--location",
            &unreachable,
        ],
        vec!["--name", "bad name!", "--location", "http://h/"],
        vec![
            "--name",
            "taken",
            "--template",
            "debian-12",
            "--location",
            &unreachable,
        ],
    ];
    for case in cases {
        let mut real = vec!["vm", "install"];
        real.extend_from_slice(&case);
        let mut dry = real.clone();
        dry.push("--dry-run");
        let dry_err = a.fails(&dry);
        let real_err = a.fails(&real);
        // The real install may fail in its task, after its phase lines; the error line is
        // the same.
        let error_line = |e: &str| {
            e.lines()
                .rfind(|l| l.starts_with("corral: error: "))
                .map(str::to_string)
        };
        assert!(error_line(&dry_err).is_some(), "no error line: {dry_err}");
        assert_eq!(
            error_line(&dry_err),
            error_line(&real_err),
            "corral {}",
            case.join(" ")
        );
        let vms = a.json(&["vm", "list"]);
        assert_eq!(
            vms.as_array().unwrap().len(),
            1,
            "corral {} left a VM: {vms}",
            case.join(" ")
        );
    }
}
