//! The P2V fixture — a Debian 12 "physical server" disk (`scripts/build-p2v-source.sh`) —
//! and what the V2V and P2V tests do with it: build it, checksum it, read its ready line.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code may panic

use super::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The conversion under TCG (an appliance, update-initramfs, GRUB) on a loaded CI machine.
pub const CONVERT: Duration = Duration::from_secs(15 * 60);
/// The converted server's boot to its ready line (systemd, DHCP) under TCG.
pub const SERVER_BOOT: Duration = Duration::from_secs(6 * 60);

/// The fixture's disk, built (or found up to date) by its script.
pub fn fixture() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(root.join("scripts/build-p2v-source.sh"))
        .arg("--quiet")
        .output()
        .expect("run scripts/build-p2v-source.sh");
    assert!(
        out.status.success(),
        "scripts/build-p2v-source.sh failed (it needs root and a Debian mirror the first time):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let disk = Path::new(&dir).join("disk.img");
    assert!(disk.is_file(), "no {}", disk.display());
    disk
}

/// `corral --json ARGS` against `a`, killed if it has not finished within `limit`.
pub fn json_within(a: &TestAgent, args: &[&str], limit: Duration) -> Value {
    let mut child = Command::new(corral_bin())
        .arg("--connect")
        .arg(&a.socket)
        .arg("--json")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run corral");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "corral {} did not finish within {limit:?}; agent log tail:\n{}",
                args.join(" "),
                tail(&a.log(), 30)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "corral {} failed: {}\nagent log tail:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        tail(&a.log(), 30)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The `CORRAL-SOURCE-READY host= nic= ip= root=` fields.
pub fn ready_fields(console: &str) -> std::collections::HashMap<String, String> {
    let line = console
        .lines()
        .rev()
        .find_map(|l| l.split("CORRAL-SOURCE-READY").nth(1))
        .expect("a ready line");
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The fixture booted as a running "physical server" under QEMU/TCG, as
/// `scripts/build-p2v-source.sh --check` boots it (SATA disk, e1000 in slot 5, user-mode
/// networking: the host is 10.0.2.2 from inside), writing to a copy-on-write overlay so the
/// fixture itself is never written. `tools` is a file system image holding what the test
/// hands the server (the corral binary, a token), on the machine's IDE controller: the
/// initramfs has only the SATA driver, so it becomes `sdb` once the system loads
/// `ata_piix`. As a second SATA disk it was probed beside the fixture's and took `sda` when
/// it answered first (seen on a loaded machine: the boot then waited for `/dev/sda1` and
/// dropped to the initramfs shell). The fixture's disk carries `bootindex=0`: the BIOS
/// would otherwise try the IDE disk first. What the server writes there goes to a
/// throw-away overlay.
/// Its serial console is driven through a socket.
pub struct SourceServer {
    qemu: std::process::Child,
    console: std::os::unix::net::UnixStream,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    commands: usize,
    _dir: tempfile::TempDir,
}

impl SourceServer {
    pub fn boot(fixture: &Path, tools: &Path) -> SourceServer {
        let dir = tempfile::tempdir().unwrap();
        let overlay = dir.path().join("overlay.qcow2");
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(fixture)
            .arg(&overlay)
            .status()
            .unwrap();
        assert!(st.success(), "qemu-img create overlay");
        let sock = dir.path().join("serial.sock");
        let log = dir.path().join("serial.log");
        let qemu = Command::new("qemu-system-x86_64")
            // `max`: the CPU features a real server has. With TCG's default `qemu64` (no
            // AES-NI) the TLS stream's software AES ran at about 1 MB/s.
            .args([
                "-machine", "pc", "-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2",
            ])
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=d0,format=qcow2",
                overlay.display()
            ))
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=d1,format=raw,snapshot=on",
                tools.display()
            ))
            .args(["-device", "ahci,id=sata"])
            .args(["-device", "ide-hd,drive=d0,bus=sata.0,bootindex=0"])
            .args(["-device", "ide-hd,drive=d1,bus=ide.0"])
            .args([
                "-netdev",
                "user,id=n0",
                "-device",
                "e1000,netdev=n0,addr=05",
            ])
            .arg("-chardev")
            .arg(format!(
                "socket,id=s0,path={},server=on,wait=off,logfile={}",
                sock.display(),
                log.display()
            ))
            .args(["-serial", "chardev:s0"])
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("start qemu-system-x86_64");
        let mut qemu = qemu;
        let mut console = None;
        wait_until(
            Duration::from_secs(30),
            "the source's serial socket",
            || {
                if let Ok(Some(st)) = qemu.try_wait() {
                    panic!("the source's QEMU exited at start ({st}); see its stderr above");
                }
                console = std::os::unix::net::UnixStream::connect(&sock).ok();
                console.is_some()
            },
        );
        let console = console.unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        {
            let mut r = console.try_clone().unwrap();
            let seen = seen.clone();
            std::thread::spawn(move || {
                use std::io::Read;
                let mut buf = [0u8; 4096];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    seen.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        SourceServer {
            qemu,
            console,
            seen,
            commands: 0,
            _dir: dir,
        }
    }

    /// Everything the console printed so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Wait until the console prints `needle` after byte `from`; the bytes from `from`.
    fn expect_after(&self, from: usize, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let text = {
                let s = self.seen.lock().unwrap();
                String::from_utf8_lossy(&s[from.min(s.len())..]).into_owned()
            };
            if text.contains(needle) {
                return text;
            }
            // A boot that ended in the initramfs's rescue shell will not go on: say so now,
            // not when the whole boot allowance has run out.
            assert!(
                !text.contains("Dropping to a shell"),
                "the source's boot stopped in the initramfs before {needle:?}; it shows:\n{}",
                tail(&self.console(), 40)
            );
            assert!(
                Instant::now() < deadline,
                "the source's console did not print {needle:?} within {limit:?}; it shows:\n{}",
                tail(&self.console(), 40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn send(&mut self, text: &str) {
        use std::io::Write;
        self.console.write_all(text.as_bytes()).unwrap();
    }

    /// Wait for the ready line (multi-user.target and DHCP), then log in as root.
    pub fn wait_ready_and_log_in(&mut self, limit: Duration) {
        self.expect_after(0, "CORRAL-SOURCE-READY", limit);
        // The getty may have printed its prompt before the ready line; ask again.
        let from = self.len();
        self.send("\n");
        self.expect_after(from, "login:", Duration::from_secs(60));
        let from = self.len();
        self.send("root\n");
        self.expect_after(from, "Password:", Duration::from_secs(60));
        let from = self.len();
        self.send("corral\n");
        self.expect_after(from, "#", Duration::from_secs(60));
        // No echo of long lines mangled by the terminal width, no pager.
        self.run(
            "stty cols 1000 -echo; export PAGER=cat",
            Duration::from_secs(30),
        );
    }

    /// Run `command` in the root shell; its output and exit status.
    pub fn run(&mut self, command: &str, limit: Duration) -> (String, i32) {
        self.commands += 1;
        let marker = format!("__DONE{}_", self.commands);
        let from = self.len();
        // On its own line, so a command may end with `&`.
        self.send(&format!("{command}\necho \"{marker}$?__\"\n"));
        let deadline = Instant::now() + limit;
        loop {
            let text = {
                let s = self.seen.lock().unwrap();
                String::from_utf8_lossy(&s[from.min(s.len())..]).into_owned()
            };
            // The marker followed by the status (the echoed command has `$?` there instead).
            for (i, _) in text.match_indices(&marker) {
                let rest = &text[i + marker.len()..];
                let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                if !digits.is_empty() && rest[digits.len()..].starts_with("__") {
                    let out = text[..i].to_string();
                    return (out, digits.parse().unwrap());
                }
            }
            assert!(
                Instant::now() < deadline,
                "`{command}` did not finish within {limit:?} on the source; its console:\n{}",
                tail(&self.console(), 40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Run `command`, which must succeed; its output.
    pub fn ok(&mut self, command: &str, limit: Duration) -> String {
        let (out, rc) = self.run(command, limit);
        assert_eq!(rc, 0, "`{command}` failed on the source:\n{out}");
        out
    }
}

impl Drop for SourceServer {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

/// A file system image holding `files` (name, bytes, mode), for [`SourceServer::boot`].
pub fn tools_image(dir: &Path, files: &[(&str, &[u8], u32)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let tree = dir.join("tools");
    std::fs::create_dir_all(&tree).unwrap();
    let mut bytes = 0u64;
    for (name, data, mode) in files {
        let p = tree.join(name);
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
        bytes += data.len() as u64;
    }
    let img = dir.join("tools.img");
    let size_mib = bytes / (1 << 20) + 64;
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "corraltools", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg(format!("{size_mib}M"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mke2fs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

/// What guestfish's `commands` (separated by ":") print about a VM's volume, read by
/// libguestfs without booting it (its appliance under TCG, the file systems mounted
/// read-only as the guest's fstab says).
pub fn guestfish(volume: &Path, commands: &[&str]) -> String {
    let out = Command::new("guestfish")
        .env("LIBGUESTFS_BACKEND", "direct")
        .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
        .args(["--ro", "-i", "-a"])
        .arg(volume)
        .args(commands)
        .output()
        .expect("run guestfish");
    assert!(
        out.status.success(),
        "guestfish {}: {}",
        commands.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
