//! End-to-end export, import, clone, copy and templates: a real agent, the real CLI, real
//! `qemu-img`, and the test guest's disk image booting under TCG from its own (imported,
//! cloned or copied) disk to its marker.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().expect("run");
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn disk_path(vm: &Value, i: usize) -> PathBuf {
    PathBuf::from(vm["disks"][i]["path"].as_str().expect("disk path"))
}

fn images_identical(a: &Path, b: &Path) {
    let out = run(Command::new("qemu-img").arg("compare").arg(a).arg(b));
    assert!(out.contains("identical"), "{out}");
}

/// The disk-boot source VM with non-default settings.
fn create_source(a: &TestAgent, name: &str) {
    let from = format!(",from={}", guest().disk_qcow2.display());
    a.ok(&[
        "vm",
        "create",
        "--name",
        name,
        "--memory",
        "192M",
        "--vcpus",
        "2",
        "--description",
        "web server, exported",
        "--cpu-weight",
        "high",
        "--autostart",
        "--disk",
        &from,
        "--nic",
        "default,model=e1000",
    ]);
}

fn boots_from_disk(a: &TestAgent, name: &str) {
    a.ok(&["vm", "start", name]);
    a.wait_console(name, "CORRAL-BOOT-SOURCE=disk", 1, BOOT);
    a.wait_console(name, MARKER, 1, BOOT);
    a.ok(&["vm", "poweroff", name]);
}

fn assert_spec_preserved(src: &Value, dst: &Value, same_macs: bool) {
    for k in [
        "vcpus",
        "memory_bytes",
        "description",
        "cpu_weight",
        "autostart",
        "firmware",
    ] {
        assert_eq!(src[k], dst[k], "{k}");
    }
    let (sd, dd) = (
        src["disks"].as_array().unwrap(),
        dst["disks"].as_array().unwrap(),
    );
    assert_eq!(sd.len(), dd.len());
    for (s, d) in sd.iter().zip(dd) {
        for k in ["device", "size_bytes", "bus"] {
            assert_eq!(s[k], d[k], "disk {k}");
        }
    }
    let (sn, dn) = (
        src["nics"].as_array().unwrap(),
        dst["nics"].as_array().unwrap(),
    );
    assert_eq!(sn.len(), dn.len());
    for (s, d) in sn.iter().zip(dn) {
        assert_eq!(s["network"], d["network"]);
        assert_eq!(s["model"], d["model"]);
        if same_macs {
            assert_eq!(s["mac"], d["mac"]);
        } else {
            assert_ne!(s["mac"], d["mac"], "a new MAC unless --preserve-macs");
        }
    }
}

/// Files in the state directory's staging area and the default repository.
fn files(a: &TestAgent) -> (Vec<String>, Vec<String>) {
    let list = |p: PathBuf| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    (
        list(a.state_dir().join("staging")),
        list(a.state_dir().join("srs/default")),
    )
}

#[test]
fn native_export_import_round_trip_preserves_the_vm_and_boots() {
    let a = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    create_source(&a, "web01");
    let out = dir.path().join("web01.corral");
    let out_s = out.to_str().unwrap();

    a.ok(&["vm", "start", "web01"]);
    let err = a.fails(&["vm", "export", "web01", "-o", out_s]);
    assert!(err.contains("it is running"), "{err}");
    assert!(!out.exists() && !dir.path().join("web01.corral.partial").exists());
    a.ok(&["vm", "poweroff", "web01"]);

    a.ok(&["vm", "export", "web01", "-o", out_s]);
    assert!(out.exists());
    assert!(!dir.path().join("web01.corral.partial").exists());
    let hist = a.json(&["vm", "history", "web01"]);
    let export = hist
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|t| t["operation"] == "vm.export")
        .expect("export task");
    assert_eq!(export["state"], "succeeded");
    assert_eq!(export["bytes_done"], export["bytes_total"]);

    // The dry run says what would be created and writes nothing.
    let before = files(&a);
    let plan = a.json(&["vm", "import", out_s, "--name", "web02", "--dry-run"]);
    assert_eq!(plan["format"], "corral");
    assert_eq!(plan["spec"]["name"], "web02");
    assert_eq!(plan["disks"][0]["virtual_size_bytes"], 64u64 << 20);
    assert_eq!(files(&a), before);
    assert!(a.cli(&["vm", "show", "web02"]).status.code() != Some(0));

    // Name collision: a clear conflict before any data is written.
    let err = a.fails(&["vm", "import", out_s]);
    assert!(
        err.contains("already exists") && err.contains("--name"),
        "{err}"
    );
    assert_eq!(files(&a), before);

    a.ok(&["vm", "import", out_s, "--name", "web02"]);
    a.ok(&["vm", "import", out_s, "--name", "web03", "--preserve-macs"]);
    let (src, dst, kept) = (a.vm("web01"), a.vm("web02"), a.vm("web03"));
    assert_spec_preserved(&src, &dst, false);
    assert_spec_preserved(&src, &kept, true);
    images_identical(&disk_path(&src, 0), &disk_path(&dst, 0));
    assert!(files(&a).0.is_empty(), "staging is empty after an import");
    boots_from_disk(&a, "web02");
}

#[test]
fn ova_export_import_round_trip_preserves_the_vm_and_boots() {
    let a = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    create_source(&a, "app");
    let out = dir.path().join("app.ova");
    a.ok(&[
        "vm",
        "export",
        "app",
        "-o",
        out.to_str().unwrap(),
        "--format",
        "ova",
    ]);
    // An OVA: descriptor first, then the manifest, then a streamOptimized VMDK.
    let listing = run(Command::new("tar").arg("tf").arg(&out));
    let names: Vec<&str> = listing.lines().collect();
    assert!(
        names[0].ends_with(".ovf") && names[1].ends_with(".mf"),
        "{names:?}"
    );
    let plan = a.json(&[
        "vm",
        "import",
        out.to_str().unwrap(),
        "--name",
        "app2",
        "--dry-run",
    ]);
    assert_eq!(plan["format"], "ova");
    a.ok(&["vm", "import", out.to_str().unwrap(), "--name", "app2"]);
    let (src, dst) = (a.vm("app"), a.vm("app2"));
    assert_spec_preserved(&src, &dst, false);
    images_identical(&disk_path(&src, 0), &disk_path(&dst, 0));

    // The directory form: the CLI sends the package as an OVA stream.
    let pkg = dir.path().join("pkg");
    std::fs::create_dir(&pkg).unwrap();
    run(Command::new("tar").arg("xf").arg(&out).arg("-C").arg(&pkg));
    a.ok(&["vm", "import", pkg.to_str().unwrap(), "--name", "app3"]);
    images_identical(&disk_path(&src, 0), &disk_path(&a.vm("app3"), 0));
    boots_from_disk(&a, "app2");
}

/// Where `scripts/install-deps.sh --test` installs the independent XVA writer
/// (`@xen-orchestra/xva` from npm); installed here the same way when missing.
fn xva_writer() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corral-archive/tests/xva-writer");
    let dir = std::env::var_os("CORRAL_XVA_WRITER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/corral/xva-writer")
        });
    if !dir.join("node_modules/@xen-orchestra/xva").exists() {
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["package.json", "package-lock.json", "write-xva.mjs"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir));
    }
    std::fs::copy(src.join("write-xva.mjs"), dir.join("write-xva.mjs")).unwrap();
    dir
}

#[test]
fn xva_from_an_independent_writer_imports_and_boots() {
    let writer = xva_writer();
    let a = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&guest().disk_qcow2)
        .arg(&raw));
    let xva = dir.path().join("xo.xva");
    let opts = serde_json::json!({"name": "xo-vm", "nCpus": 2, "memory": 201326592u64,
        "firmware": "bios", "disks": [raw], "macs": ["aa:bb:cc:dd:ee:01"], "network": "lan"});
    run(Command::new("node")
        .arg(writer.join("write-xva.mjs"))
        .arg(&xva)
        .arg(opts.to_string()));
    let zst = dir.path().join("xo.xva.zst");
    run(Command::new("zstd")
        .args(["-q", "-f", "-o"])
        .arg(&zst)
        .arg(&xva));
    let plan = a.json(&["vm", "import", zst.to_str().unwrap(), "--dry-run"]);
    assert_eq!(plan["format"], "xva");
    assert!(
        plan["warnings"].to_string().contains("lan"),
        "the unknown network is reported: {plan}"
    );
    a.ok(&["vm", "import", zst.to_str().unwrap(), "--preserve-macs"]);
    let vm = a.vm("xo-vm");
    assert_eq!(vm["vcpus"], 2);
    assert_eq!(vm["memory_bytes"], 201326592u64);
    assert_eq!(vm["nics"][0]["mac"], "aa:bb:cc:dd:ee:01");
    assert_eq!(vm["nics"][0]["network"], "default");
    images_identical(&raw, &disk_path(&vm, 0));
    boots_from_disk(&a, "xo-vm");
}

#[test]
fn broken_and_malicious_uploads_leave_no_vm_and_no_files() {
    let a = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    create_source(&a, "src");
    let good = dir.path().join("good.corral");
    a.ok(&["vm", "export", "src", "-o", good.to_str().unwrap()]);
    let bytes = std::fs::read(&good).unwrap();

    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    cases.push(("truncated", bytes[..bytes.len() / 2].to_vec(), "truncated"));
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x55;
    cases.push(("bit flip", flipped, ""));
    cases.push(("garbage", vec![0x42; 100_000], "not a corral archive"));
    // A valid manifest (so format detection and the plan pass), then a member that climbs out
    // of the staging directory: the traversal check itself must refuse it.
    let manifest = {
        let mut ar = tar::Archive::new(&bytes[..]);
        let mut first = ar.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(first.path().unwrap().to_str(), Some("corral-archive.json"));
        let mut m = Vec::new();
        std::io::Read::read_to_end(&mut first, &mut m).unwrap();
        m
    };
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(manifest.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "corral-archive.json", &manifest[..])
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    {
        let name = b"../x";
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
    }
    h.set_cksum();
    b.append(&h, &b"evil"[..]).unwrap();
    cases.push((
        "path traversal",
        b.into_inner().unwrap(),
        "'..' is not allowed in member names",
    ));
    // An XVA whose ova.xml is an entity-expansion bomb.
    let bomb = "<?xml version=\"1.0\"?><!DOCTYPE v [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\">]><value>&b;</value>";
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(bomb.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "ova.xml", bomb.as_bytes()).unwrap();
    cases.push(("xml bomb", b.into_inner().unwrap(), "DTD"));

    let vms_before = a.json(&["vm", "list"]).as_array().unwrap().len();
    let files_before = files(&a);
    for (what, data, expect) in cases {
        let p = dir.path().join("bad.bin");
        std::fs::write(&p, &data).unwrap();
        let err = a.fails(&["vm", "import", p.to_str().unwrap(), "--name", "evil"]);
        assert!(err.contains(expect), "{what}: {err}");
        assert_eq!(
            a.json(&["vm", "list"]).as_array().unwrap().len(),
            vms_before,
            "{what}"
        );
        assert_eq!(files(&a), files_before, "{what}: nothing left behind");
    }
    // The agent still imports a good archive afterwards.
    a.ok(&["vm", "import", good.to_str().unwrap(), "--name", "fine"]);
}

/// Milliseconds the agent spent on a VM's last task of `op`.
fn task_ms(a: &TestAgent, vm: &str, op: &str) -> u64 {
    let hist = a.json(&["vm", "history", vm]);
    let t = hist
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|t| t["operation"] == op)
        .unwrap_or_else(|| panic!("no {op} task: {hist}"));
    t["finished_at_ms"].as_u64().unwrap() - t["started_at_ms"].as_u64().unwrap()
}

#[test]
fn linked_clones_are_instant_independent_and_survive_their_source() {
    let a = TestAgent::start();
    // Same time whatever the disk size.
    a.ok(&[
        "vm",
        "create",
        "--name",
        "small",
        "--disk",
        "1G",
        "--no-nics",
    ]);
    a.ok(&[
        "vm",
        "create",
        "--name",
        "big",
        "--disk",
        "100G",
        "--no-nics",
    ]);
    // The best of three clones of each size: a machine busy with other tests' guests adds
    // scheduling noise to any single run, never a cost that grows with the disk.
    let mut best = Vec::new();
    for (src, dst) in [("small", "small-c"), ("big", "big-c")] {
        let mut runs = Vec::new();
        for i in 0..3 {
            let name = format!("{dst}{i}");
            let t = Instant::now();
            a.ok(&["vm", "clone", src, &name]);
            runs.push((t.elapsed(), task_ms(&a, &name, "vm.clone")));
        }
        best.push((
            runs.iter().map(|r| r.0).min().unwrap(),
            runs.iter().map(|r| r.1).min().unwrap(),
        ));
    }
    eprintln!(
        "clone 1 GiB: {:?}, 100 GiB: {:?} (best of 3)",
        best[0], best[1]
    );
    assert!(best[1].1 <= best[0].1 + 20, "agent time {best:?}");
    assert!(
        best[1].0 < best[0].0 * 3 + Duration::from_millis(100),
        "{best:?}"
    );
    assert_eq!(a.vm("big-c0")["disks"][0]["size_bytes"], 100u64 << 30);

    // The source gets its own overlay: neither writes into the shared base.
    create_source(&a, "src");
    let orig = disk_path(&a.vm("src"), 0);
    a.ok(&["vm", "clone", "src", "dup"]);
    let (src, dup) = (a.vm("src"), a.vm("dup"));
    assert_eq!(disk_path(&src, 0), orig, "the source keeps its volume path");
    let backing = |p: &Path| -> String {
        let info: Value = serde_json::from_str(&run(Command::new("qemu-img")
            .args(["info", "--output=json", "-U"])
            .arg(p)))
        .unwrap();
        info["backing-filename"].as_str().unwrap_or("").to_string()
    };
    let base = backing(&disk_path(&src, 0));
    assert!(
        base.contains("/bases/"),
        "source is an overlay on a base: {base}"
    );
    assert_eq!(backing(&disk_path(&dup, 0)), base, "clone shares the base");
    assert_ne!(src["nics"][0]["mac"], dup["nics"][0]["mac"]);
    images_identical(&guest().disk_qcow2, &disk_path(&dup, 0));

    // Deleting the source is safe: the clone keeps the base and boots.
    a.ok(&["vm", "delete", "src"]);
    assert!(
        Path::new(&base).exists(),
        "the base stays while the clone uses it"
    );
    boots_from_disk(&a, "dup");
    a.ok(&["vm", "delete", "dup"]);
    wait_until(
        Duration::from_secs(10),
        "the unused base to be removed",
        || !Path::new(&base).exists(),
    );
}

#[test]
fn templates_refuse_to_start_and_create_vms_from_clones_and_copies() {
    let a = TestAgent::start();
    create_source(&a, "golden");
    a.ok(&["vm", "convert-to-template", "golden"]);
    let t = a.vm("golden");
    assert_eq!(t["is_template"], true);
    let err = a.fails(&["vm", "start", "golden"]);
    assert!(err.contains("template"), "{err}");

    a.ok(&[
        "vm",
        "create",
        "--template",
        "golden",
        "--name",
        "w1",
        "--memory",
        "256M",
    ]);
    let w1 = a.vm("w1");
    assert_eq!(w1["is_template"], false);
    assert_eq!(
        w1["memory_bytes"],
        256u64 << 20,
        "request overrides the template"
    );
    assert_eq!(w1["vcpus"], t["vcpus"]);
    assert_eq!(w1["description"], t["description"]);
    assert_eq!(w1["template"], "golden");
    images_identical(&disk_path(&t, 0), &disk_path(&w1, 0));

    // A full copy has no backing file and the same data.
    a.ok(&["vm", "copy", "golden", "full"]);
    let full = a.vm("full");
    let info = run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(disk_path(&full, 0)));
    assert!(!info.contains("backing-filename"), "{info}");
    images_identical(&disk_path(&t, 0), &disk_path(&full, 0));

    boots_from_disk(&a, "w1");
    // The template's base is still in use by w1 after the template goes.
    a.ok(&["vm", "delete", "golden"]);
    assert!(disk_path(&t, 0).exists());
    a.ok(&["vm", "delete", "w1"]);
    wait_until(Duration::from_secs(10), "the template's base to go", || {
        !disk_path(&t, 0).exists()
    });
}

#[test]
fn interrupted_export_leaves_no_file_and_cancels_the_task() {
    let a = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    // Incompressible data, so the export takes long enough to interrupt.
    create_random_vm(&a, dir.path());
    let out = dir.path().join("rnd.corral");
    let child = Command::new(corral_bin())
        .arg("--connect")
        .arg(&a.socket)
        .args(["vm", "export", "rnd", "-o"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let partial = dir.path().join("rnd.corral.partial");
    wait_until(
        Duration::from_secs(20),
        "the export to start writing",
        || std::fs::metadata(&partial).is_ok_and(|m| m.len() > 0),
    );
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("interrupted"));
    assert!(!out.exists() && !partial.exists(), "nothing left on Ctrl-C");
    wait_until(
        Duration::from_secs(20),
        "the export task to be cancelled",
        || {
            a.json(&["vm", "history", "rnd"])
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["operation"] == "vm.export" && t["state"] == "cancelled")
        },
    );
    assert!(files(&a).0.is_empty(), "the export's scratch space is gone");
    // The lease went with the task: the VM can be deleted.
    a.ok(&["vm", "delete", "rnd"]);
}

/// A native archive of a one-disk VM whose spec names host files (as a crafted archive would).
fn archive_naming_host_files(dir: &Path) -> PathBuf {
    let raw = dir.join("d.raw");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(&raw)
        .arg("16M"));
    let spec: corral_model::VmSpec = serde_json::from_value(serde_json::json!({
        "name": "evil", "vcpus": 1, "memory_bytes": 134217728u64, "cpu_weight": 256,
        "disks": [{"device": "disk0", "size_bytes": 16777216u64, "format": "raw",
                   "bus": "virtio", "sr": "default", "path": raw}],
        "cdroms": [{"device": "cdrom0", "bus": "sata", "media": "/etc/shadow"}],
        "kernel_boot": {"kernel": guest().kernel, "initrd": "/etc/shadow", "cmdline": "x"},
        "boot_device": "cdrom"
    }))
    .unwrap();
    let src = corral_archive::open_disk_source(&raw, corral_model::DiskFormat::Raw, dir).unwrap();
    let out = dir.join("evil.corral");
    corral_archive::write_archive(
        std::fs::File::create(&out).unwrap(),
        &spec,
        vec![("disk0".into(), src)],
        &corral_archive::WriteOptions::default(),
        &|_| {},
    )
    .unwrap();
    out
}

#[test]
fn imports_never_keep_host_paths_named_by_the_archive() {
    let a = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let evil = archive_naming_host_files(dir.path());
    let evil = evil.to_str().unwrap();

    let plan = a.json(&["vm", "import", evil, "--dry-run"]);
    assert_eq!(plan["spec"]["cdroms"][0]["media"], Value::Null, "{plan}");
    assert_eq!(plan["spec"]["kernel_boot"], Value::Null, "{plan}");

    let out = a.cli(&["vm", "import", evil]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: cdrom0: media /etc/shadow from the archive was not attached"),
        "{err}"
    );
    assert!(
        err.contains("warning: direct kernel boot from") && err.contains("was dropped"),
        "{err}"
    );
    let vm = a.vm("evil");
    assert_eq!(vm["cdroms"].as_array().unwrap().len(), 1, "the drive stays");
    assert_eq!(vm["cdroms"][0]["media"], Value::Null, "{vm}");
    assert_eq!(vm["kernel_boot"], Value::Null, "{vm}");
    assert_eq!(vm["boot_device"], "disk");
    assert!(!vm.to_string().contains("/etc/shadow"), "{vm}");
}

/// VM `rnd` with a disk of 400 MiB of incompressible data; returns its raw source under `dir`.
fn create_random_vm(a: &TestAgent, dir: &Path) -> PathBuf {
    let raw = dir.join("rnd.raw");
    run(Command::new("sh")
        .arg("-c")
        .arg(format!("head -c 400M /dev/urandom > {}", raw.display())));
    let from = format!(",from={},format=raw", raw.display());
    a.ok(&[
        "vm",
        "create",
        "--name",
        "rnd",
        "--disk",
        &from,
        "--no-nics",
    ]);
    raw
}

/// VM `rnd` (400 MiB of incompressible data), exported: an import of it takes long enough to
/// interrupt.
fn big_archive(a: &TestAgent, dir: &Path) -> PathBuf {
    let raw = create_random_vm(a, dir);
    let out = dir.join("rnd.corral");
    a.ok(&["vm", "export", "rnd", "-o", out.to_str().unwrap()]);
    std::fs::remove_file(&raw).unwrap();
    out
}

/// Bytes in the staging area (recursively).
fn staged_bytes(a: &TestAgent) -> u64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&a.state_dir().join("staging"))
}

fn spawn_import(a: &TestAgent, file: &Path, name: &str) -> std::process::Child {
    Command::new(corral_bin())
        .arg("--connect")
        .arg(&a.socket)
        .arg("vm")
        .arg("import")
        .arg(file)
        .args(["--name", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn cancelled_or_crashed_imports_leave_no_vm_and_no_files() {
    let mut a = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let archive = big_archive(&a, dir.path());
    let before = files(&a);

    // Ctrl-C during the upload: the agent sees the stream fail and removes everything.
    let child = spawn_import(&a, &archive, "cancelled");
    wait_until(Duration::from_secs(30), "the import to stage data", || {
        staged_bytes(&a) > 0
    });
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    wait_until(Duration::from_secs(20), "the import to be undone", || {
        files(&a) == before
    });
    assert!(a.cli(&["vm", "show", "cancelled"]).status.code() != Some(0));
    let log = a.log();
    assert!(!log.contains("panicked"), "{log}");

    // kill -9 of the agent mid-import: at restart the staging area is cleaned.
    let mut child = spawn_import(&a, &archive, "crashed");
    wait_until(Duration::from_secs(30), "the import to stage data", || {
        staged_bytes(&a) > 0
    });
    a.kill9();
    let _ = child.wait();
    let staged: Vec<String> = files(&a).0;
    assert_eq!(staged.len(), 1, "one import was staged: {staged:?}");
    // The narrowest crash window: volumes already moved into the repository, VM not yet
    // recorded. Recreate it from the staged import's id (timing a real SIGKILL into that window
    // is not reliable), so the restart must find the volume by the stale staging id.
    let id = &staged[0];
    let stray = a.state_dir().join(format!("srs/default/{id}-disk0.qcow2"));
    std::fs::write(&stray, b"stray").unwrap();
    std::fs::create_dir_all(a.state_dir().join("srs/default/bases")).unwrap();
    let stray_base = a
        .state_dir()
        .join(format!("srs/default/bases/{id}-disk1.qcow2"));
    std::fs::write(&stray_base, b"stray").unwrap();
    a.spawn();
    let (staging, mut sr) = files(&a);
    sr.retain(|f| f != "bases");
    assert!(staging.is_empty(), "staging cleaned at start: {staging:?}");
    assert_eq!(sr, before.1, "no stray volume in the repository");
    assert!(!stray.exists());
    assert!(!stray_base.exists(), "no stray volume in bases/");
    assert!(a.cli(&["vm", "show", "crashed"]).status.code() != Some(0));
    assert_eq!(a.json(&["vm", "list"]).as_array().unwrap().len(), 1);
    let task = a.json(&["task", "list"]);
    assert!(
        !task.to_string().contains("\"running\""),
        "no import task is left running: {task}"
    );
    // The agent still imports the same archive afterwards.
    a.ok(&["vm", "import", archive.to_str().unwrap(), "--name", "fine"]);
}

#[test]
fn import_and_copy_honour_sr_template_and_uncompressed_archives() {
    let a = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let fast = dir.path().join("fast");
    std::fs::create_dir_all(&fast).unwrap();
    a.ok(&["sr", "create", "fast", "--path", fast.to_str().unwrap()]);
    create_source(&a, "src");
    let src = a.vm("src");

    // --compress none: extents are stored as they are, and the archive still round trips.
    let plain = dir.path().join("plain.corral");
    let zst = dir.path().join("zst.corral");
    a.ok(&[
        "vm",
        "export",
        "src",
        "-o",
        plain.to_str().unwrap(),
        "--compress",
        "none",
    ]);
    a.ok(&["vm", "export", "src", "-o", zst.to_str().unwrap()]);
    let names = |p: &Path| -> Vec<String> {
        let f = std::fs::File::open(p).unwrap();
        tar::Archive::new(f)
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    let pn = names(&plain);
    assert!(pn.iter().any(|n| n.ends_with(".raw")), "{pn:?}");
    assert!(!pn.iter().any(|n| n.ends_with(".zst")), "{pn:?}");
    assert!(
        std::fs::metadata(&plain).unwrap().len() > std::fs::metadata(&zst).unwrap().len(),
        "uncompressed is larger"
    );

    // import --sr: the volume lands in that repository.
    a.ok(&[
        "vm",
        "import",
        plain.to_str().unwrap(),
        "--name",
        "in-fast",
        "--sr",
        "fast",
    ]);
    let v = a.vm("in-fast");
    assert_eq!(v["disks"][0]["sr"], "fast");
    assert!(disk_path(&v, 0).starts_with(&fast), "{v}");
    images_identical(&disk_path(&src, 0), &disk_path(&v, 0));

    // import --as-template: a template whose volumes are bases, which cannot start.
    a.ok(&[
        "vm",
        "import",
        zst.to_str().unwrap(),
        "--name",
        "tmpl",
        "--as-template",
    ]);
    let t = a.vm("tmpl");
    assert_eq!(t["is_template"], true);
    assert_eq!(t["autostart"], false);
    assert!(
        disk_path(&t, 0).to_string_lossy().contains("/bases/"),
        "{t}"
    );
    let err = a.fails(&["vm", "start", "tmpl"]);
    assert!(err.contains("template"), "{err}");
    // The command: install from the template.
    // (It may be running its first boot, so read its image without taking the lock.)
    a.ok(&["vm", "install", "--template", "tmpl", "--name", "from-tmpl"]);
    let info: Value = serde_json::from_str(&run(Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(disk_path(&a.vm("from-tmpl"), 0))))
    .unwrap();
    assert_eq!(
        info["backing-filename"].as_str().map(PathBuf::from),
        Some(disk_path(&t, 0)),
        "a linked clone of the imported template"
    );

    // copy --sr: a full, independent copy in the other repository.
    a.ok(&["vm", "copy", "src", "copied", "--sr", "fast"]);
    let c = a.vm("copied");
    assert_eq!(c["disks"][0]["sr"], "fast");
    assert!(disk_path(&c, 0).starts_with(&fast), "{c}");
    let info = run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(disk_path(&c, 0)));
    assert!(!info.contains("backing-filename"), "{info}");
    images_identical(&disk_path(&src, 0), &disk_path(&c, 0));

    // A bad --sr is refused before anything is written.
    let err = a.fails(&[
        "vm",
        "import",
        zst.to_str().unwrap(),
        "--name",
        "x",
        "--sr",
        "nope",
    ]);
    assert!(
        err.contains("no storage repository named \"nope\""),
        "{err}"
    );
}

/// The manifest of a native archive file: its version and the roles of the files it carries.
fn archive_files(path: &Path) -> (String, Vec<String>) {
    let (m, _, _) = corral_archive::read_manifest(
        std::fs::File::open(path).unwrap(),
        &corral_archive::Limits::default(),
    )
    .unwrap();
    let roles = m.files.iter().map(|f| f.role.to_string()).collect();
    (m.version, roles)
}

fn kernel_of(vm: &Value) -> (PathBuf, PathBuf) {
    let kb = &vm["kernel_boot"];
    (
        PathBuf::from(kb["kernel"].as_str().expect("kernel")),
        PathBuf::from(kb["initrd"].as_str().expect("initrd")),
    )
}

#[test]
fn direct_kernel_boot_vms_carry_their_kernel_through_export_import_and_copy() {
    let a = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    // The VM boots a kernel and initrd from a host directory that goes away after the export,
    // as on a host where they came from a download.
    let boot = dir.path().join("boot");
    std::fs::create_dir(&boot).unwrap();
    let g = guest();
    let (k, i) = (boot.join("vmlinuz"), boot.join("initrd.img"));
    std::fs::copy(&g.kernel, &k).unwrap();
    std::fs::copy(&g.initrd, &i).unwrap();
    let (ks, is) = (k.to_str().unwrap(), i.to_str().unwrap());
    a.ok(&[
        "vm",
        "create",
        "--name",
        "kb",
        "--memory",
        "192M",
        "--disk",
        "16M",
        "--kernel",
        ks,
        "--initrd",
        is,
        "--cmdline",
        "console=ttyS0 no_timer_check",
    ]);
    let out = dir.path().join("kb.corral");
    a.ok(&["vm", "export", "kb", "-o", out.to_str().unwrap()]);
    assert_eq!(
        archive_files(&out),
        (
            "2.0".to_string(),
            vec!["kernel".to_string(), "initrd".to_string()]
        )
    );
    std::fs::remove_dir_all(&boot).unwrap();
    let err = a.fails(&["vm", "start", "kb"]);
    assert!(
        err.contains(&format!("kernel boot file {ks} is missing")),
        "{err}"
    );

    // The dry run keeps direct kernel boot and names no host path from the archive.
    let plan = a.json(&[
        "vm",
        "import",
        out.to_str().unwrap(),
        "--name",
        "kb2",
        "--dry-run",
    ]);
    assert_eq!(
        plan["spec"]["kernel_boot"]["cmdline"],
        "console=ttyS0 no_timer_check"
    );
    assert!(!plan.to_string().contains(ks), "{plan}");

    let imported = a.cli(&["vm", "import", out.to_str().unwrap(), "--name", "kb2"]);
    assert!(imported.status.success(), "{imported:?}");
    let stderr = String::from_utf8_lossy(&imported.stderr);
    assert!(!stderr.contains("dropped"), "{stderr}");
    let vm = a.vm("kb2");
    let id = vm["id"].as_str().unwrap().to_string();
    let sr = a.state_dir().join("srs/default");
    let (kernel, initrd) = kernel_of(&vm);
    assert_eq!(kernel, sr.join(format!("{id}-kernel")), "{vm}");
    assert_eq!(initrd, sr.join(format!("{id}-initrd")), "{vm}");
    assert_eq!(
        std::fs::read(&kernel).unwrap(),
        std::fs::read(&g.kernel).unwrap()
    );
    assert_eq!(
        std::fs::read(&initrd).unwrap(),
        std::fs::read(&g.initrd).unwrap()
    );
    assert_eq!(vm["kernel_boot"]["cmdline"], "console=ttyS0 no_timer_check");
    assert!(files(&a).0.is_empty(), "staging is empty after an import");
    a.ok(&["vm", "start", "kb2"]);
    a.wait_console("kb2", "CORRAL-BOOT-SOURCE=kernel", 1, BOOT);
    a.wait_console("kb2", MARKER, 1, BOOT);
    a.ok(&["vm", "poweroff", "kb2"]);

    // A copy gets its own kernel and initrd: deleting the original keeps the copy bootable.
    a.ok(&["vm", "copy", "kb2", "kb3"]);
    let copy = a.vm("kb3");
    let copy_id = copy["id"].as_str().unwrap().to_string();
    let (ck, ci) = kernel_of(&copy);
    assert_eq!(ck, sr.join(format!("{copy_id}-kernel")));
    assert_eq!(ci, sr.join(format!("{copy_id}-initrd")));
    a.ok(&["vm", "delete", "kb2"]);
    assert!(
        !kernel.exists() && !initrd.exists(),
        "a deleted VM's own boot files go"
    );
    assert!(ck.exists() && ci.exists());
    a.ok(&["vm", "start", "kb3"]);
    a.wait_console("kb3", MARKER, 1, BOOT);
    a.ok(&["vm", "poweroff", "kb3"]);
    a.ok(&["vm", "delete", "kb3"]);
    let left: Vec<String> = files(&a)
        .1
        .into_iter()
        .filter(|f| f.ends_with("-kernel") || f.ends_with("-initrd"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_corrupt_carried_kernel_fails_the_import_and_leaves_nothing() {
    let a = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    a.create_kernel_vm("kb", &["--disk", "16M"]);
    let out = dir.path().join("kb.corral");
    a.ok(&["vm", "export", "kb", "-o", out.to_str().unwrap()]);
    let mut bytes = std::fs::read(&out).unwrap();
    let kernel = std::fs::read(guest().kernel).unwrap();
    let at = bytes
        .windows(64)
        .position(|w| w == &kernel[..64])
        .expect("the kernel is inside the archive");
    bytes[at + 1000] ^= 0xff;
    let bad = dir.path().join("bad.corral");
    std::fs::write(&bad, &bytes).unwrap();

    let before = files(&a);
    let err = a.fails(&["vm", "import", bad.to_str().unwrap(), "--name", "kb2"]);
    assert!(
        err.contains("checksum mismatch in the kernel file"),
        "{err}"
    );
    assert_eq!(files(&a), before, "nothing staged or placed is left");
    assert!(a.cli(&["vm", "show", "kb2"]).status.code() != Some(0));
    assert!(
        !a.state_dir().join("tpm").exists()
            || std::fs::read_dir(a.state_dir().join("tpm"))
                .unwrap()
                .next()
                .is_none()
    );
}
