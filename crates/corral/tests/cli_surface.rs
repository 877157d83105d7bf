//! End-to-end: the CLI surface a user types, beyond the lifecycle: NICs, disks, CD media,
//! repositories, the ISO library, `vm set` reaching QEMU at the next start, `serve --socket`,
//! `CORRAL_CONNECT`, `host info --json`, and `--json` output that parses for every read-only
//! or simple command. One guest boot.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A real ISO 9660 image made by xorriso (a test-suite dependency, see
/// scripts/build-test-guest.sh) holding one file.
fn make_iso(path: &Path, label: &str) {
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("README.TXT"), label).expect("write");
    let out = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-V", label, "-o"])
        .arg(path)
        .arg(src.path())
        .output()
        .expect("run xorriso");
    assert!(
        out.status.success(),
        "xorriso: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run `corral vm console NAME` on a pseudo-terminal, type `input`, wait for `expect` in what
/// the terminal shows, press Ctrl-] and return the screen text and the exit status.
fn console_in_a_pty(
    a: &TestAgent,
    name: &str,
    input: &[u8],
    expect: &str,
) -> (String, std::process::ExitStatus) {
    use std::io::{Read, Write};
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::sync::{Arc, Mutex};
    let (mut master, slave) = unsafe {
        let (mut m, mut s) = (-1, -1);
        let rc = libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        );
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        (std::fs::File::from_raw_fd(m), OwnedFd::from_raw_fd(s))
    };
    let mut child = Command::new(corral_bin())
        .arg("--connect")
        .arg(&a.socket)
        .args(["vm", "console", name])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("corral vm console");
    let screen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let reader = {
        let screen = screen.clone();
        let mut master = master.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once the console (the last holder of the slave) exits.
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                screen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let text = |screen: &Arc<Mutex<Vec<u8>>>| {
        String::from_utf8_lossy(&screen.lock().unwrap()).into_owned()
    };
    wait_until(Duration::from_secs(10), "console banner", || {
        text(&screen).contains("Ctrl-]")
    });
    master.write_all(input).unwrap();
    wait_until(Duration::from_secs(60), expect, || {
        text(&screen).contains(expect)
    });
    master.write_all(&[0x1d]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("Ctrl-] did not detach: {}", text(&screen));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(master);
    let _ = reader.join();
    (text(&screen), status)
}

fn arr(v: &serde_json::Value) -> &Vec<serde_json::Value> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}"))
}

#[test]
fn nics_disks_cdroms_repositories_isos_and_vm_set() {
    let a = TestAgent::start();
    a.create_kernel_vm("surf", &["--disk", "16M"]);

    // NICs: up to 8; the 9th is refused and changes nothing; remove by device name.
    assert_eq!(arr(&a.vm("surf")["nics"]).len(), 1);
    for _ in 1..8 {
        a.ok(&["vm", "nic", "add", "surf", "default,model=e1000"]);
    }
    let nics = a.vm("surf")["nics"].clone();
    assert_eq!(arr(&nics).len(), 8);
    assert_eq!(nics[7]["device"], "nic7");
    assert_eq!(nics[7]["model"], "e1000");
    let err = a.fails(&["vm", "nic", "add", "surf", "default"]);
    assert!(err.contains('8'), "{err}");
    assert_eq!(arr(&a.vm("surf")["nics"]).len(), 8);
    a.ok(&["vm", "nic", "remove", "surf", "nic7"]);
    a.ok(&["vm", "nic", "remove", "surf", "nic6"]);
    let nics = a.vm("surf")["nics"].clone();
    assert_eq!(arr(&nics).len(), 6);
    assert!(arr(&nics).iter().all(|n| n["device"] != "nic7"));

    // Disks: the volume file appears with the disk and disappears with it.
    let vm = a.json(&["vm", "disk", "add", "surf", "8M,format=raw"]);
    let added = arr(&vm["disks"])
        .iter()
        .find(|d| d["device"] == "disk1")
        .unwrap_or_else(|| panic!("disk1 missing: {vm}"))
        .clone();
    assert_eq!(added["size_bytes"], 8u64 << 20);
    assert_eq!(added["format"], "raw");
    let path = added["path"].as_str().unwrap().to_string();
    assert!(Path::new(&path).is_file(), "{path}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 8 << 20);
    a.ok(&["vm", "disk", "remove", "surf", "disk1"]);
    assert!(!Path::new(&path).exists(), "{path} still there");
    assert_eq!(arr(&a.vm("surf")["disks"]).len(), 1);

    // ISO library: real ISO images in the library directory; other files are not listed.
    let isos = a.state_dir().join("isos");
    std::fs::create_dir_all(&isos).unwrap();
    make_iso(&isos.join("alpha.iso"), "ALPHA");
    make_iso(&isos.join("beta.iso"), "BETA");
    std::fs::write(isos.join("notes.txt"), "not an ISO").unwrap();
    let list = a.json(&["iso", "list"]);
    let names: Vec<&str> = arr(&list)
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha.iso", "beta.iso"], "{list}");
    assert!(arr(&list)
        .iter()
        .all(|i| i["size_bytes"].as_u64() > Some(0)));
    let text = a.ok(&["iso", "list"]);
    assert!(
        text.contains("alpha.iso") && text.contains("beta.iso"),
        "{text}"
    );

    // CD media: insert by library name, eject; the drive stays.
    a.ok(&["vm", "cdrom", "insert", "surf", "alpha.iso"]);
    let cd = a.vm("surf")["cdroms"].clone();
    assert_eq!(arr(&cd).len(), 1, "{cd}");
    assert!(
        cd[0]["media"]
            .as_str()
            .is_some_and(|p| p.ends_with("/isos/alpha.iso")),
        "{cd}"
    );
    a.ok(&["vm", "cdrom", "eject", "surf"]);
    let cd = a.vm("surf")["cdroms"].clone();
    assert_eq!(arr(&cd).len(), 1, "{cd}");
    assert!(cd[0]["media"].is_null(), "{cd}");

    // Repositories: a shared one, listed with its free space; its create is a task.
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_string_lossy().into_owned();
    a.ok(&["sr", "create", "nfs1", "--path", &dir_s, "--shared"]);
    let srs = a.json(&["sr", "list"]);
    let nfs1 = arr(&srs)
        .iter()
        .find(|s| s["name"] == "nfs1")
        .unwrap_or_else(|| panic!("nfs1 missing: {srs}"));
    assert_eq!(nfs1["shared"], true);
    assert_eq!(nfs1["path"], dir_s.as_str());
    assert!(nfs1["free_bytes"].as_u64().is_some(), "{nfs1}");
    let text = a.ok(&["sr", "list"]);
    assert!(text.contains("nfs1"), "{text}");
    let tasks = a.json(&["task", "list"]);
    assert!(
        arr(&tasks)
            .iter()
            .any(|t| t["operation"] == "sr.create" && t["state"] == "succeeded"),
        "{tasks}"
    );
    // The list is bounded (running tasks always, then the newest finished ones).
    let all = arr(&tasks).len();
    assert!(all >= 2, "{tasks}");
    let newest = a.json(&["task", "list", "--limit", "1"]);
    assert_eq!(arr(&newest).len(), 1, "{newest}");
    assert_eq!(
        arr(&newest)[0]["id"],
        arr(&tasks)[all - 1]["id"],
        "{newest}"
    );
    let e = a.fails(&["task", "list", "--limit", "0"]);
    assert!(e.contains("--limit"), "{e}");

    // host info --json: accelerator and why, QEMU version, free space per repository.
    let host = a.json(&["host", "info"]);
    assert_eq!(host["accelerator"]["name"], "tcg", "{host}");
    assert!(
        !host["accelerator"]["reason"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "{host}"
    );
    assert!(
        host["qemu_version"]
            .as_str()
            .is_some_and(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit())),
        "{host}"
    );
    let repos = arr(&host["storage_repositories"]);
    assert!(repos.len() >= 2, "{host}");
    for r in repos {
        assert!(r["free_bytes"].as_u64().is_some(), "no free space: {r}");
    }

    // vm set: what `show` says and what the next start gives QEMU.
    a.ok(&[
        "vm",
        "set",
        "surf",
        "--memory",
        "224M",
        "--vcpus",
        "3",
        "--description",
        "set, by \"the\" test",
    ]);
    let vm = a.vm("surf");
    assert_eq!(vm["memory_bytes"], 224u64 << 20);
    assert_eq!(vm["vcpus"], 3);
    assert_eq!(vm["description"], "set, by \"the\" test");
    a.ok(&["vm", "start", "surf"]);
    a.wait_console("surf", MARKER, 1, BOOT);
    let id = vm["id"].as_str().unwrap();
    let qlog = std::fs::read_to_string(a.state_dir().join("run").join(id).join("qemu.log"))
        .expect("qemu.log");
    let last = qlog
        .lines()
        .rev()
        .find(|l| l.starts_with("--- corral: starting QEMU"))
        .expect("a start line");
    assert!(last.contains(" -m 224 "), "{last}");
    assert!(last.contains(" -smp 3,"), "{last}");
    // The guest itself sees three CPUs: ask its shell through `vm console` in a terminal (a
    // pty, as a person has), then detach with Ctrl-]: exit 0, and the VM keeps running.
    let (output, status) = console_in_a_pty(
        &a,
        "surf",
        b"\recho cpus=$(grep -c ^processor /proc/cpuinfo)=\r",
        "cpus=3=",
    );
    assert!(status.success(), "console exit {status}: {output}");
    assert!(output.contains("Press Ctrl-] to detach"), "{output}");
    assert!(output.contains("Detached from surf"), "{output}");
    assert_eq!(a.power_state("surf"), "running");

    // --json on the simple and read-only commands: every output parses.
    let log = a.json(&["vm", "console", "surf", "--log"]);
    assert_eq!(log["vm"], "surf");
    assert!(log["log"].as_str().unwrap().contains(MARKER), "{log}");
    assert!(log["bytes"].as_u64() > Some(0));
    for args in [
        vec!["vm", "list"],
        vec!["vm", "show", "surf"],
        vec!["vm", "history", "surf"],
        vec!["vm", "vnc", "surf"],
        vec!["sr", "list"],
        vec!["iso", "list"],
        vec!["network", "list"],
        vec!["task", "list"],
        vec!["template", "list"],
        vec!["host", "info"],
    ] {
        let _ = a.json(&args);
    }
    let task = arr(&tasks)[0]["id"].as_str().unwrap().to_string();
    let shown = a.json(&["task", "show", &task]);
    assert_eq!(shown["id"], task.as_str());
    a.ok(&["vm", "poweroff", "surf"]);
}

/// `serve --socket PATH` listens there (not in the state directory) and `CORRAL_CONNECT`
/// finds it; `template create/delete --json` print JSON.
#[test]
fn serve_socket_and_corral_connect() {
    let state = tempfile::tempdir().unwrap();
    let sockdir = tempfile::tempdir().unwrap();
    let socket = sockdir.path().join("elsewhere.sock");
    let mut agent = Command::new(corral_bin())
        .arg("serve")
        .arg("--state-dir")
        .arg(state.path())
        .arg("--socket")
        .arg(&socket)
        .args(["--accel", "tcg"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("corral serve");
    wait_until(Duration::from_secs(20), "agent on --socket", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    assert!(!state.path().join("corral.sock").exists());
    let run = |args: &[&str]| {
        Command::new(corral_bin())
            .env("CORRAL_CONNECT", &socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("corral")
    };
    let out = run(&["--json", "host", "info"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        host["state_dir"],
        state.path().to_string_lossy().as_ref(),
        "{host}"
    );

    // A template round trip with --json.
    let file = state.path().join("tiny.toml");
    std::fs::write(
        &file,
        "name = \"tiny\"\nderived_from = \"corral-test-guest\"\ndescription = \"tiny test template\"\n",
    )
    .unwrap();
    let out = run(&[
        "--json",
        "template",
        "create",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(t["name"], "tiny");
    let out = run(&["--json", "template", "delete", "tiny"]);
    assert!(out.status.success());
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(d["deleted"], "tiny");

    // A wrong CORRAL_CONNECT fails clearly.
    let out = Command::new(corral_bin())
        .env("CORRAL_CONNECT", sockdir.path().join("nothing.sock"))
        .args(["vm", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing.sock"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    unsafe {
        libc::kill(agent.id() as i32, libc::SIGTERM);
    }
    let _ = agent.wait();
}

/// `--help` teaches: the long help of the commands users start with has its examples (a
/// doc comment on a subcommand once hid `vm install`'s).
#[test]
fn long_help_shows_examples() {
    for cmd in [
        &["vm", "create"][..],
        &["vm", "install"],
        &["vm", "import"],
        &["vm", "migrate"],
        &["p2v"],
        &["p2v", "media"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_corral"))
            .args(cmd)
            .arg("--help")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{cmd:?} --help: {text}");
        assert!(
            text.contains("Examples:"),
            "corral {} --help has no examples:\n{text}",
            cmd.join(" ")
        );
    }
}
