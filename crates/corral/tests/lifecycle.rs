//! End-to-end: the VM lifecycle on real QEMU guests (TCG), through the real CLI and agent.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

mod common;
use common::*;
use std::time::Duration;

/// `--accel auto` with no probe flags boots a real Linux kernel (here the cached test guest)
/// under KVM; on these machines Linux hangs under KVM, so the agent must settle on TCG and say
/// why, and guests still boot.
#[test]
fn auto_accelerator_probes_a_real_kernel_and_falls_back_to_tcg() {
    let started = std::time::Instant::now();
    let a = TestAgent::start_with(&["--accel", "auto"]);
    // The probe is bounded (8 s) before the agent listens.
    assert!(started.elapsed() < Duration::from_secs(20));
    let host = a.json(&["host", "info"]);
    let acc = &host["accelerator"];
    assert_eq!(acc["name"], "tcg", "{host}");
    let reason = acc["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("probe: "), "{reason}");
    if std::path::Path::new("/dev/kvm").exists() {
        assert!(
            reason.contains("cached test guest") && !reason.contains("boot sector only"),
            "the probe must boot a real kernel: {reason}"
        );
        let cache = std::fs::read_to_string(a.state_dir().join("accel-probe.json"))
            .expect("verdict cached");
        assert!(cache.contains("probe test-guest "), "{cache}");
    }
    assert!(a.log().contains("accelerator chosen"), "{}", a.log());
    a.create_kernel_vm("probed", &[]);
    a.ok(&["vm", "start", "probed"]);
    a.wait_console("probed", MARKER, 1, BOOT);
    a.ok(&["vm", "poweroff", "probed"]);
}

#[test]
fn create_start_shutdown_poweroff_reboot_pause_delete() {
    let a = TestAgent::start();
    a.create_kernel_vm(
        "web01",
        &[
            "--description",
            "intranet web, \"quoted\" ünïcode",
            "--vcpus",
            "2",
            "--disk",
            "64M",
            "--disk",
            "32M,format=raw",
        ],
    );
    let vm = a.vm("web01");
    assert_eq!(vm["power_state"], "halted");
    assert_eq!(vm["description"], "intranet web, \"quoted\" ünïcode");
    assert_eq!(vm["vcpus"], 2);
    assert_eq!(vm["memory_bytes"], 192u64 << 20);
    assert_eq!(vm["autostart"], false);
    assert_eq!(vm["cpu_weight"], 256);
    let disks = vm["disks"].as_array().unwrap().clone();
    assert_eq!(disks.len(), 2);
    assert_eq!(disks[0]["device"], "disk0");
    assert_eq!(disks[0]["size_bytes"], 64u64 << 20);
    assert_eq!(disks[0]["format"], "qcow2");
    assert_eq!(disks[1]["format"], "raw");
    let paths: Vec<String> = disks
        .iter()
        .map(|d| d["path"].as_str().unwrap().to_string())
        .collect();
    assert!(paths.iter().all(|p| std::path::Path::new(p).exists()));
    assert_eq!(vm["nics"].as_array().unwrap().len(), 1);

    // start -> marker -> ACPI shutdown -> halted
    a.ok(&["vm", "start", "web01"]);
    assert_eq!(a.power_state("web01"), "running");
    a.wait_console("web01", MARKER, 1, BOOT);
    let err = a.fails(&["vm", "start", "web01"]);
    assert!(err.contains("it is running"), "{err}");
    a.ok(&["vm", "shutdown", "web01", "--timeout", "60"]);
    assert_eq!(a.power_state("web01"), "halted");
    assert!(
        a.console_log("web01").contains("CORRAL-POWERDOWN"),
        "the guest saw the ACPI button"
    );

    // poweroff
    a.ok(&["vm", "start", "web01"]);
    a.ok(&["vm", "poweroff", "web01"]);
    assert_eq!(a.power_state("web01"), "halted");
    assert!(
        a.qemu_pids().iter().all(|p| !pid_alive(*p)),
        "QEMU is gone after poweroff"
    );

    // reboot shows the marker twice
    a.ok(&["vm", "start", "web01"]);
    a.wait_console("web01", MARKER, 1, BOOT);
    a.ok(&["vm", "reboot", "web01"]);
    a.wait_console("web01", MARKER, 2, BOOT);
    assert_eq!(a.power_state("web01"), "running");

    // pause / resume
    a.ok(&["vm", "pause", "web01"]);
    assert_eq!(a.power_state("web01"), "paused");
    let err = a.fails(&["vm", "pause", "web01"]);
    assert!(err.contains("paused"), "{err}");
    a.ok(&["vm", "resume", "web01"]);
    assert_eq!(a.power_state("web01"), "running");

    // delete: refused while running, then forced; disks go with it
    let err = a.fails(&["vm", "delete", "web01"]);
    assert!(err.contains("running") && err.contains("--force"), "{err}");
    assert_eq!(a.power_state("web01"), "running");
    a.ok(&["vm", "delete", "web01", "--force"]);
    assert!(a.json(&["vm", "list"]).as_array().unwrap().is_empty());
    assert!(
        paths.iter().all(|p| !std::path::Path::new(p).exists()),
        "disks removed"
    );

    // history survives in the task list
    let tasks = a.json(&["task", "list"]);
    let ops: Vec<&str> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["operation"].as_str().unwrap())
        .collect();
    for op in [
        "vm.create",
        "vm.start",
        "vm.shutdown",
        "vm.poweroff",
        "vm.reboot",
        "vm.pause",
        "vm.resume",
        "vm.delete",
    ] {
        assert!(ops.contains(&op), "{op} in {ops:?}");
    }
}

#[test]
fn delete_keep_disks_and_disk_boot() {
    let a = TestAgent::start();
    let g = guest();
    let from = format!(",from={}", g.disk_qcow2.display());
    // No --kernel: the VM boots from its own virtual disk (MBR + syslinux).
    a.ok(&[
        "vm", "create", "--name", "diskboot", "--memory", "192M", "--disk", &from,
    ]);
    let vm = a.vm("diskboot");
    assert!(vm["kernel_boot"].is_null());
    a.ok(&["vm", "start", "diskboot"]);
    a.wait_console("diskboot", "CORRAL-BOOT-SOURCE=disk", 1, BOOT);
    a.wait_console("diskboot", MARKER, 1, BOOT);
    a.ok(&["vm", "poweroff", "diskboot"]);
    let path = vm["disks"][0]["path"].as_str().unwrap().to_string();
    a.ok(&["vm", "delete", "diskboot", "--keep-disks"]);
    assert!(
        std::path::Path::new(&path).exists(),
        "--keep-disks keeps the volume"
    );
}

#[test]
fn guests_survive_agent_kill_and_reattach() {
    let mut a = TestAgent::start();
    a.create_kernel_vm("g1", &[]);
    a.create_kernel_vm("g2", &[]);
    a.create_kernel_vm("g3", &[]);
    a.ok(&["vm", "start", "g1"]);
    a.ok(&["vm", "start", "g2"]);
    a.ok(&["vm", "start", "g3"]);
    a.wait_console("g1", MARKER, 1, BOOT);
    a.wait_console("g2", MARKER, 1, BOOT);
    let pids_before = a.qemu_pids();
    let g3_run = a.state_dir().join("run").join(a_id(&a, "g3"));
    assert_eq!(pids_before.len(), 3);

    a.kill9();
    assert!(
        pids_before.iter().all(|p| pid_alive(*p)),
        "QEMU outlives a SIGKILLed agent"
    );
    // g3 dies while the agent is down.
    let g3_pid = std::fs::read_to_string(g3_run.join("qemu.pid")).unwrap();
    unsafe {
        libc::kill(g3_pid.trim().parse::<i32>().unwrap(), libc::SIGKILL);
    }
    std::thread::sleep(Duration::from_millis(300));
    a.spawn();

    assert_eq!(a.power_state("g1"), "running");
    assert_eq!(a.power_state("g2"), "running");
    assert_eq!(a.power_state("g3"), "halted");
    let hist = a.json(&["vm", "history", "g1"]);
    assert!(
        hist.as_array()
            .unwrap()
            .iter()
            .any(|t| t["operation"] == "vm.reattach"),
        "{hist}"
    );
    let hist3 = a.json(&["vm", "history", "g3"]);
    let recover = hist3
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["operation"] == "vm.recover")
        .expect("recover task");
    assert!(recover["result"]
        .as_str()
        .unwrap()
        .contains("while the agent was down"));

    // Console and shutdown work on a re-attached guest.
    let mut child = std::process::Command::new(corral_bin())
        .args(["--connect"])
        .arg(&a.socket)
        .args(["vm", "console", "g1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let stdin = child.stdin.as_mut().unwrap();
        stdin.write_all(b"\necho console-$((6*7))-ok\n").unwrap();
    }
    a.wait_console("g1", "console-42-ok", 1, Duration::from_secs(30));
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
    a.ok(&["vm", "shutdown", "g1", "--timeout", "60"]);
    assert_eq!(a.power_state("g1"), "halted");
}

fn a_id(a: &TestAgent, name: &str) -> String {
    a.vm(name)["id"].as_str().unwrap().to_string()
}

#[test]
fn autostart_vms_start_with_the_agent() {
    let mut a = TestAgent::start();
    a.create_kernel_vm("auto", &["--autostart"]);
    a.create_kernel_vm("manual", &[]);
    assert_eq!(a.vm("auto")["autostart"], true);
    a.stop();
    a.spawn();
    a.wait_state("auto", "running", Duration::from_secs(30));
    assert_eq!(a.power_state("manual"), "halted");
    a.wait_console("auto", MARKER, 1, BOOT);
    let hist = a.json(&["vm", "history", "auto"]);
    assert!(hist
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["operation"] == "vm.autostart"));
    a.ok(&["vm", "set", "auto", "--autostart=false"]);
    assert_eq!(a.vm("auto")["autostart"], false);
}

#[test]
fn cpu_weight_lands_in_the_cgroup() {
    let a = TestAgent::start();
    let support = a.json(&["host", "info"])["cpu_weight_support"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !support.starts_with("unavailable"),
        "this host cannot apply CPU weights: {support}"
    );
    let v2 = support.contains("v2");
    for (name, weight, v1_value, v2_value) in [
        ("hi", "high", 512, 200),
        ("no", "normal", 256, 100),
        ("lo", "low", 128, 50),
    ] {
        a.create_kernel_vm(name, &["--cpu-weight", weight]);
        a.ok(&["vm", "start", name]);
        let vm = a.vm(name);
        let applied = vm["cpu_weight_status"]["applied"]
            .as_str()
            .unwrap_or_else(|| panic!("{vm}"))
            .to_string();
        let (file, value) = applied.split_once('=').unwrap();
        let on_disk: u64 = std::fs::read_to_string(file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let want = if v2 { v2_value } else { v1_value };
        assert_eq!(on_disk, want, "{name}: {file}");
        assert_eq!(value.parse::<u64>().unwrap(), want);
        // The QEMU process really is in that cgroup.
        let procs =
            std::fs::read_to_string(std::path::Path::new(file).with_file_name("cgroup.procs"))
                .unwrap();
        assert!(
            procs
                .lines()
                .any(|p| p.trim().parse::<u64>().ok() == vm["pid"].as_u64()),
            "{procs}"
        );
    }
    // A live change lands at once.
    a.ok(&["vm", "set", "lo", "--cpu-weight", "1000"]);
    let applied = a.vm("lo")["cpu_weight_status"]["applied"]
        .as_str()
        .unwrap()
        .to_string();
    let (file, _) = applied.split_once('=').unwrap();
    let want = if v2 { 391 } else { 1000 };
    assert_eq!(
        std::fs::read_to_string(file).unwrap().trim(),
        want.to_string()
    );
}

/// Connect to a `vm vnc` address and read the RFB greeting a VNC client would see.
fn rfb_greeting(addr: &str) -> String {
    use std::io::Read;
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).expect("RFB greeting");
    String::from_utf8_lossy(&buf).into_owned()
}

/// The graphical console is on loopback TCP and found again after an agent restart; a pending
/// ACPI shutdown can be cancelled (the VM keeps running); tasks that cannot be cancelled say so.
#[test]
fn vnc_on_loopback_and_shutdown_cancel() {
    let mut a = TestAgent::start();
    // acpi=off: the guest ignores the power button, so the shutdown stays pending.
    a.create_kernel_vm_cmdline("ignorer", "console=ttyS0 no_timer_check acpi=off", &[]);
    a.ok(&["vm", "start", "ignorer"]);
    a.wait_console("ignorer", MARKER, 1, BOOT);

    let vnc = a.json(&["vm", "vnc", "ignorer"]);
    let addr = vnc["vnc"].as_str().expect("vnc address").to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{vnc}");
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(vnc["display"], u64::from(port - 5900), "{vnc}");
    assert_eq!(rfb_greeting(&addr), "RFB 003.008\n");
    let text = a.ok(&["vm", "vnc", "ignorer"]);
    assert_eq!(text.trim(), format!("{addr} (display :{})", port - 5900));

    // A shutdown the guest ignores, cancelled: the task ends cancelled, the VM runs on.
    let t = a.json(&["vm", "shutdown", "ignorer", "--no-wait", "--timeout", "300"]);
    let task = t["task"].as_str().expect("task id").to_string();
    std::thread::sleep(Duration::from_millis(500));
    let c = a.json(&["task", "cancel", &task]);
    assert_eq!(c["task"], task.as_str());
    wait_until(Duration::from_secs(10), "shutdown task cancelled", || {
        a.json(&["task", "show", &task])["state"] == "cancelled"
    });
    let shown = a.json(&["task", "show", &task]);
    assert!(
        shown["result"]
            .as_str()
            .unwrap_or_default()
            .contains("still running"),
        "{shown}"
    );
    assert_eq!(a.power_state("ignorer"), "running");
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        a.power_state("ignorer"),
        "running",
        "no press after cancel powered it off"
    );

    // Finished or non-cancellable tasks: 409 invalid_state naming the task and operation.
    let err = a.fails(&["task", "cancel", &task]);
    assert!(
        err.contains(&format!("task {task} (vm.shutdown) cannot be cancelled")),
        "{err}"
    );
    let tasks = a.json(&["task", "list"]);
    let start = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["operation"] == "vm.start")
        .expect("vm.start task");
    let start_id = start["id"].as_str().unwrap();
    let err = a.fails(&["task", "cancel", start_id]);
    assert!(
        err.contains(&format!("task {start_id} (vm.start) cannot be cancelled")),
        "{err}"
    );
    let err = a.fails(&["task", "cancel", "no-such-task"]);
    assert!(err.contains("no task"), "{err}");

    // The VNC address is read back from QEMU after an agent restart.
    a.kill9();
    a.spawn();
    assert_eq!(a.power_state("ignorer"), "running");
    let again = a.json(&["vm", "vnc", "ignorer"]);
    assert_eq!(again["vnc"], addr.as_str(), "{again}");
    assert_eq!(rfb_greeting(&addr), "RFB 003.008\n");
    a.ok(&["vm", "poweroff", "ignorer"]);
    let err = a.fails(&["vm", "vnc", "ignorer"]);
    assert!(err.contains("halted"), "{err}");
}

/// An agent that dies between spawning QEMU and `cont` leaves a QEMU in `prelaunch` for a VM
/// recorded halted. The next agent must not show it as paused: it stops that QEMU, keeps the
/// VM halted and says so in the history; the VM then starts normally.
#[test]
fn a_start_cut_short_by_an_agent_crash_is_undone() {
    let mut a = TestAgent::start();
    a.create_kernel_vm("half", &[]);
    a.ok(&["vm", "start", "half"]);
    a.ok(&["vm", "poweroff", "half"]);
    let run = a.state_dir().join("run").join(a_id(&a, "half"));
    let qlog = std::fs::read_to_string(run.join("qemu.log")).expect("qemu.log");
    let line = qlog
        .lines()
        .rev()
        .find(|l| l.starts_with("--- corral: starting QEMU at unix time "))
        .expect("a start line");
    // "--- corral: starting QEMU at unix time N: <shell-quoted command line>"
    let after_time = &line["--- corral: starting QEMU at unix time ".len()..];
    let command = after_time.split_once(": ").expect("command").1;
    assert!(command.contains(" -S"), "{command}");
    a.kill9();

    // QEMU as the agent starts it (vCPUs held by -S), and no `cont`; daemonized here instead
    // of confined, and on socket paths instead of the listening sockets the agent passed.
    let mut command = command.replace(
        &format!(" -sandbox {}", corral_qemu::confine::SANDBOX),
        " -daemonize",
    );
    for (id, file) in [("qmp", "qmp.sock"), ("serial0", "serial.sock")] {
        let key = format!("socket,id={id},fd=");
        let at = command.find(&key).expect("chardev with fd") + key.len();
        let digits = command[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .count();
        command.replace_range(
            at - 3..at + digits,
            &format!("path={}", run.join(file).display()),
        );
    }
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .status()
        .expect("sh");
    assert!(st.success(), "QEMU did not start: {st}");
    let pid: u32 = std::fs::read_to_string(run.join("qemu.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert!(pid_alive(pid));

    a.spawn();
    assert_eq!(a.power_state("half"), "halted");
    wait_until(
        Duration::from_secs(10),
        "the half-started QEMU is gone",
        || !pid_alive(pid),
    );
    let hist = a.json(&["vm", "history", "half"]);
    let recover = hist
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["operation"] == "vm.recover")
        .unwrap_or_else(|| panic!("no vm.recover in {hist}"));
    assert!(
        recover["result"]
            .as_str()
            .unwrap_or_default()
            .contains("half-started"),
        "{recover}"
    );
    a.ok(&["vm", "start", "half"]);
    a.wait_console("half", MARKER, 1, BOOT);
    a.ok(&["vm", "poweroff", "half"]);
}
