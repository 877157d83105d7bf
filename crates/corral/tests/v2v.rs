//! V2V end to end (issue 12): the P2V fixture — a Debian 12 "physical server" disk whose
//! fstab and GRUB name `/dev/sda1`, whose e1000 NIC is configured as `ens5` and whose
//! initramfs has no virtio driver (`scripts/build-p2v-source.sh`) — imported with
//! `vm import IMAGE --convert`: the task lists every change, the record has virtio-blk and
//! virtio-net, the source image is unchanged (checksummed before and after). The converted
//! fixture booting on virtio (root by UUID, a new NIC name, DHCP) is shown by tests/p2v.rs,
//! which converts the same disk through the same `Ops::spawn_conversion` and boots it twice;
//! a third boot here would cost a minute of TCG and prove nothing more. Refusals (a disk without Linux, a repository too small)
//! leave no VM, no volume and no staging behind. Every wait has a timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

mod common;

use common::server::*;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn files_under(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Nothing of a refused import: no VM, no volume, no staging, no task still running.
fn assert_nothing_left(a: &TestAgent, repo: &Path, what: &str) {
    assert_eq!(
        a.json(&["vm", "list"]).as_array().unwrap().len(),
        0,
        "{what} left a VM"
    );
    assert!(
        files_under(repo).is_empty(),
        "{what} left {:?} in {}",
        files_under(repo),
        repo.display()
    );
    let staging = a.state_dir().join("staging");
    assert!(
        files_under(&staging).is_empty(),
        "{what} left {:?} in staging",
        files_under(&staging)
    );
    let running: Vec<Value> = a
        .json(&["task", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "running")
        .cloned()
        .collect();
    assert!(running.is_empty(), "{what}: tasks still run: {running:?}");
}

#[test]
fn a_physical_server_disk_converts_to_virtio() {
    let src = fixture();
    // Checksummed while the import reads it too (the page cache serves both).
    let before = {
        let src = src.clone();
        std::thread::spawn(move || sha256(&src))
    };
    let a = TestAgent::start();
    let t = Instant::now();
    let out = json_within(
        &a,
        &[
            "vm",
            "import",
            src.to_str().unwrap(),
            "--convert",
            "--name",
            "oldweb",
        ],
        CONVERT,
    );
    let converted = t.elapsed();
    println!("import --convert: {:.0} s", converted.as_secs_f64());
    let task = &out["task"];
    assert_eq!(task["operation"], "vm.import");
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["phase"], "done");
    let changes: Vec<&str> = task["changes"]
        .as_array()
        .expect("the task lists its changes")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    println!("changes:\n  {}", changes.join("\n  "));
    for want in [
        "/etc/fstab: / by UUID=",
        "/etc/default/grub: GRUB_DISABLE_LINUX_UUID=false",
        "/etc/initramfs-tools/modules: added virtio_pci, virtio_blk, virtio_net",
        "/etc/network/interfaces: commented out the configuration of ens5",
        "rebuilt the initramfs",
        "reinstalled GRUB (i386-pc)",
        "regenerated /boot/grub/grub.cfg",
    ] {
        assert!(
            changes.iter().any(|c| c.starts_with(want)),
            "no change {want:?} in {changes:#?}"
        );
    }
    // The record: BIOS as the source, virtio disk and NIC, the origin in its description;
    // the task, as the history keeps it, still lists the changes.
    let vm = a.vm("oldweb");
    assert_eq!(vm["firmware"], "bios");
    assert_eq!(vm["disks"][0]["bus"], "virtio");
    assert_eq!(vm["nics"][0]["model"], "virtio");
    assert!(
        vm["description"]
            .as_str()
            .unwrap()
            .contains("Debian GNU/Linux 12"),
        "{}",
        vm["description"]
    );
    let id = task["id"].as_str().unwrap();
    let shown = a.json(&["task", "show", id]);
    assert_eq!(shown["changes"].as_array().unwrap().len(), changes.len());

    // No boot here: tests/p2v.rs boots this fixture converted by the same code (module doc).
    let before = before.join().unwrap();
    assert_eq!(sha256(&src), before, "the source image changed");
}

/// A tmpfs mounted for the test (a repository with little room), unmounted on drop.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn new(mib: u64) -> SmallFs {
        let dir = tempfile::Builder::new()
            .prefix("corral-v2v-small-")
            .tempdir()
            .unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        SmallFs(dir)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.0.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
        }
    }
}

#[test]
fn disks_without_linux_and_small_repositories_are_refused_leaving_nothing() {
    let a = TestAgent::start();
    let repo = a.state_dir().join("srs/default");
    let work = tempfile::tempdir().unwrap();

    // A FAT file system on the whole disk, and a blank disk: refused as they arrive.
    let fat = work.path().join("usb-stick.img");
    std::fs::File::create(&fat)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let st = Command::new("mkfs.vfat").arg(&fat).output().unwrap();
    assert!(st.status.success(), "mkfs.vfat");
    let err = a.fails(&["vm", "import", fat.to_str().unwrap(), "--convert"]);
    println!("a FAT disk: {}", err.trim());
    assert!(err.contains("no Linux system found"), "{err}");
    assert!(err.contains("vfat"), "{err}");
    assert_nothing_left(&a, &repo, "the FAT disk");

    let blank = work.path().join("blank.img");
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let err = a.fails(&[
        "vm",
        "import",
        blank.to_str().unwrap(),
        "--convert",
        "--name",
        "blank",
    ]);
    assert!(
        err.contains("no Linux system found") && err.contains("blank"),
        "{err}"
    );
    let failed = a
        .json(&["task", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["operation"] == "vm.import")
        .map(|t| (t["state"].clone(), t["error"]["details"]["refusal"].clone()))
        .collect::<Vec<_>>();
    assert_eq!(
        failed,
        vec![
            (Value::from("failed"), Value::from("no_linux")),
            (Value::from("failed"), Value::from("no_linux"))
        ]
    );
    assert_nothing_left(&a, &repo, "the blank disk");

    // Not an image at all, and names the image cannot take.
    let err = a.fails(&[
        "vm",
        "import",
        fat.to_str().unwrap(),
        "--convert",
        "--as-template",
    ]);
    assert!(err.contains("--as-template"), "{err}");

    // The server into a repository with 48 MiB: refused before the upload.
    if !is_root() {
        eprintln!("skipped the small repository: mounting a tmpfs needs root");
        return;
    }
    let src = fixture();
    let small = SmallFs::new(48);
    let sr = small.0.path().join("sr");
    std::fs::create_dir_all(&sr).unwrap();
    a.ok(&["sr", "create", "small", "--path", sr.to_str().unwrap()]);
    let t = Instant::now();
    let err = a.fails(&[
        "vm",
        "import",
        src.to_str().unwrap(),
        "--convert",
        "--name",
        "big",
        "--sr",
        "small",
    ]);
    println!(
        "a small repository ({:.1} s): {}",
        t.elapsed().as_secs_f64(),
        err.trim()
    );
    assert!(
        err.contains("not enough space in repository \"small\""),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "refused only after the upload"
    );
    assert_nothing_left(&a, &sr, "the small repository");
    assert_nothing_left(&a, &repo, "the small repository");
}
