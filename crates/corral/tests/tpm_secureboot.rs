//! End-to-end vTPM and Secure Boot, with real guests under TCG: a Linux guest finds the TPM
//! corral gives it (and does not without one), the TPM's swtpm survives an agent restart like
//! QEMU does and is gone with QEMU, its state travels with exports, imports and copies; and a
//! VM with `--firmware uefi-secure` boots Debian's signed shim, GRUB and kernel with Secure
//! Boot reported enabled by the guest's kernel (and disabled under plain UEFI), and refuses a
//! kernel whose signature no longer matches.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code may panic

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The test guest's kernel logs every TPM it finds and, without one, IMA says so.
const TPM_FOUND: &str = "tpm_crb MSFT0101:00";
const NO_TPM: &str = "ima: No TPM chip found";

fn id_of(a: &TestAgent, name: &str) -> String {
    a.vm(name)["id"].as_str().unwrap().to_string()
}

fn tpm_state(a: &TestAgent, id: &str) -> PathBuf {
    a.state_dir().join("tpm").join(id).join("tpm2-00.permall")
}

fn swtpm_pid(a: &TestAgent, id: &str) -> Option<u32> {
    std::fs::read_to_string(a.state_dir().join("run").join(id).join("swtpm.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn boot_with_debug(a: &TestAgent, name: &str) -> String {
    a.ok(&["vm", "start", name]);
    a.wait_console(name, MARKER, 1, BOOT);
    a.console_log(name)
}

#[test]
fn linux_guest_finds_its_tpm_and_the_tpm_lives_with_the_vm() {
    let mut a = TestAgent::start();
    let cmdline = "console=ttyS0 no_timer_check corral.debug";
    a.create_kernel_vm_cmdline("t1", cmdline, &["--tpm"]);
    assert_eq!(a.vm("t1")["tpm"], true);
    let id = id_of(&a, "t1");
    let log = boot_with_debug(&a, "t1");
    assert!(
        log.contains(TPM_FOUND) && !log.contains(NO_TPM),
        "{}",
        tail(&log, 60)
    );
    assert!(
        tpm_state(&a, &id).is_file(),
        "swtpm keeps the TPM's state with the VM"
    );

    // Like QEMU, swtpm outlives an agent crash, and the restarted agent keeps using it.
    let pid = swtpm_pid(&a, &id).expect("swtpm pid file");
    assert!(pid_alive(pid));
    a.kill9();
    a.spawn();
    a.wait_state("t1", "running", Duration::from_secs(30));
    assert_eq!(swtpm_pid(&a, &id), Some(pid));
    assert!(pid_alive(pid));
    // ... and goes with QEMU.
    a.ok(&["vm", "poweroff", "t1"]);
    wait_until(Duration::from_secs(10), "swtpm to exit with QEMU", || {
        !pid_alive(pid)
    });
    assert_eq!(swtpm_pid(&a, &id), None, "the pid file is removed");
    let state = std::fs::read(tpm_state(&a, &id)).unwrap();

    // Exports carry the TPM state; the import and a copy get their own identical copies.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t1.corral");
    a.ok(&["vm", "export", "t1", "-o", out.to_str().unwrap()]);
    let (m, _, _) = corral_archive::read_manifest(
        std::fs::File::open(&out).unwrap(),
        &corral_archive::Limits::default(),
    )
    .unwrap();
    let roles: Vec<String> = m.files.iter().map(|f| f.role.to_string()).collect();
    assert_eq!(roles, ["kernel", "initrd", "tpm_state"]);
    a.ok(&["vm", "import", out.to_str().unwrap(), "--name", "t2"]);
    a.ok(&["vm", "copy", "t1", "t3"]);
    let (id2, id3) = (id_of(&a, "t2"), id_of(&a, "t3"));
    assert_eq!(std::fs::read(tpm_state(&a, &id2)).unwrap(), state);
    assert_eq!(std::fs::read(tpm_state(&a, &id3)).unwrap(), state);

    // Deleting a VM removes its TPM state and nobody else's.
    a.ok(&["vm", "delete", "t1"]);
    assert!(!a.state_dir().join("tpm").join(&id).exists());
    assert!(tpm_state(&a, &id2).is_file());

    // The imported VM's TPM answers its guest.
    let log = boot_with_debug(&a, "t2");
    assert!(log.contains(TPM_FOUND), "{}", tail(&log, 60));
    a.ok(&["vm", "poweroff", "t2"]);

    // Removing the TPM deletes its state, and the guest then finds none.
    a.ok(&["vm", "set", "t3", "--tpm=false"]);
    assert_eq!(a.vm("t3")["tpm"], false);
    assert!(!a.state_dir().join("tpm").join(&id3).exists());
    let log = boot_with_debug(&a, "t3");
    assert!(
        log.contains(NO_TPM) && !log.contains(TPM_FOUND),
        "{}",
        tail(&log, 60)
    );
    let err = a.fails(&["vm", "set", "t3", "--tpm"]);
    assert!(
        err.contains("running"),
        "attaching a TPM needs a halted VM: {err}"
    );
    a.ok(&["vm", "poweroff", "t3"]);
}

/// The Secure Boot disk built by scripts/build-secureboot-esp.sh.
fn secureboot_disk() -> PathBuf {
    let dir = std::env::var_os("CORRAL_SECUREBOOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/corral/secureboot")
        });
    let img = dir.join("esp.img");
    assert!(
        img.is_file(),
        "{} is missing: run scripts/build-secureboot-esp.sh (scripts/test.sh does)",
        img.display()
    );
    img
}

fn create_esp_vm(a: &TestAgent, name: &str, firmware: &str, esp: &Path) {
    let from = format!(",from={}", esp.display());
    a.ok(&[
        "vm",
        "create",
        "--name",
        name,
        "--memory",
        "512M",
        "--firmware",
        firmware,
        "--tpm",
        "--disk",
        &from,
        "--no-nics",
    ]);
}

#[test]
fn secure_boot_firmware_boots_the_signed_chain_with_secure_boot_enabled() {
    let esp = secureboot_disk();
    let a = TestAgent::start();
    create_esp_vm(&a, "sb", "uefi-secure", &esp);
    let vm = a.vm("sb");
    assert_eq!(vm["firmware"], "uefi_secure");
    a.ok(&["vm", "start", "sb"]);
    // OVMF -> shim (Microsoft-signed) -> GRUB (Debian-signed) -> kernel (Debian-signed).
    a.wait_console(
        "sb",
        "CORRAL-BOOT-SOURCE=secureboot",
        1,
        Duration::from_secs(180),
    );
    a.wait_console("sb", MARKER, 1, BOOT);
    let log = a.console_log("sb");
    assert!(
        log.contains("secureboot: Secure boot enabled"),
        "{}",
        tail(&log, 80)
    );
    assert!(
        log.contains(TPM_FOUND),
        "Windows 11's pair: Secure Boot and a TPM"
    );
    a.ok(&["vm", "poweroff", "sb"]);

    // Enforced, not only reported: the same chain with one byte of the kernel changed stops
    // at GRUB, which asks shim to verify the kernel.
    let dir = tempfile::tempdir().unwrap();
    let tampered = dir.path().join("tampered.img");
    std::fs::copy(&esp, &tampered).unwrap();
    let mut kernel = std::fs::read(guest().kernel).unwrap();
    kernel[20000] ^= 1;
    let bad_kernel = dir.path().join("vmlinuz");
    std::fs::write(&bad_kernel, &kernel).unwrap();
    let st = std::process::Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-o")
        .arg("-i")
        .arg(format!("{}@@1048576", tampered.display()))
        .arg(&bad_kernel)
        .arg("::/vmlinuz")
        .status()
        .expect("mcopy (mtools)");
    assert!(st.success());
    create_esp_vm(&a, "tampered", "uefi-secure", &tampered);
    a.ok(&["vm", "start", "tampered"]);
    a.wait_console(
        "tampered",
        "bad shim signature",
        1,
        Duration::from_secs(180),
    );
    assert!(!a.console_log("tampered").contains(MARKER));
    a.ok(&["vm", "poweroff", "tampered"]);

    // The same disk under plain UEFI boots too, with Secure Boot off.
    create_esp_vm(&a, "nosb", "uefi", &esp);
    a.ok(&["vm", "start", "nosb"]);
    a.wait_console("nosb", MARKER, 1, Duration::from_secs(180));
    let log = a.console_log("nosb");
    assert!(
        log.contains("secureboot: Secure boot disabled"),
        "{}",
        tail(&log, 80)
    );
    a.ok(&["vm", "poweroff", "nosb"]);

    // Windows 11's template asks for both.
    a.ok(&[
        "vm",
        "create",
        "--name",
        "w11",
        "--template",
        "windows-11",
        "--no-disks",
    ]);
    let w = a.vm("w11");
    assert_eq!(w["firmware"], "uefi_secure", "{w}");
    assert_eq!(w["tpm"], true, "{w}");
}
