//! XVA import: archives from two independent writers (xen-orchestra's `@xen-orchestra/xva`
//! package through node, and a Python generator in xapi's style with SHA-1 checksums), plain,
//! gzip and zstd; and a corpus of hostile XVAs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

mod common;

use common::*;
use corral_archive::xva::*;
use corral_archive::*;
use corral_model::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn writer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/xva-writer")
}

fn run(cmd: &mut Command) {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Install the node writer's dependencies once (npm registry), then run it.
fn xo_write(out: &Path, opts: serde_json::Value) {
    let dir = writer_dir();
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        if !dir.join("node_modules/@xen-orchestra/xva").exists() {
            run(Command::new("npm")
                .args(["install", "--no-audit", "--no-fund"])
                .current_dir(&dir));
        }
    });
    run(Command::new("node")
        .arg(dir.join("write-xva.mjs"))
        .arg(out)
        .arg(opts.to_string()));
}

/// A 5.5 MiB disk: data in blocks 0 and 3, zeros elsewhere, a byte near the end.
fn disk_image(path: &Path) -> Vec<u8> {
    let mut d = vec![0u8; (11 << 20) / 2];
    d[..1 << 20].copy_from_slice(&noise(1 << 20, 11));
    d[3 << 20..(3 << 20) + 5000].fill(0x5a);
    let n = d.len();
    d[n - 3] = 1;
    std::fs::write(path, &d).unwrap();
    d
}

#[test]
fn xen_orchestra_xva_imports_plain_gzip_and_zstd() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let mut want = disk_image(&raw);
    // xen-orchestra rounds the VDI size up to whole MiB; the tail reads as zeros.
    want.resize(6 << 20, 0);
    let xva = dir.path().join("vm.xva");
    xo_write(
        &xva,
        serde_json::json!({"name": "xo vm", "nCpus": 2, "memory": 536870912u64,
            "firmware": "uefi", "disks": [raw], "macs": ["aa:bb:cc:dd:ee:01"], "network": "lan"}),
    );
    let gz = dir.path().join("vm.xva.gz");
    run(Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {} > {}", xva.display(), gz.display())));
    let zst = dir.path().join("vm.xva.zst");
    run(Command::new("zstd")
        .args(["-q", "-f", "-o"])
        .arg(&zst)
        .arg(&xva));
    for (path, compression) in [(&xva, "none"), (&gz, "gzip"), (&zst, "zstd")] {
        let head = std::fs::read(path).unwrap();
        assert_eq!(detect_format(&head[..4096]), ArchiveKind::Xva);
        let plan = plan_xva(std::fs::File::open(path).unwrap(), &Limits::default()).unwrap();
        assert_eq!(plan.compression, compression);
        assert_eq!(plan.spec.name, "xo-vm");
        assert_eq!(plan.spec.vcpus, 2);
        assert_eq!(plan.spec.memory_bytes, 512 << 20);
        assert_eq!(plan.spec.firmware, Firmware::Uefi);
        assert_eq!(plan.disks.len(), 1);
        assert_eq!(plan.disks[0].virtual_size, 6 << 20);
        assert_eq!(plan.spec.nics.len(), 1);
        assert_eq!(plan.spec.nics[0].mac, "aa:bb:cc:dd:ee:01");
        assert_eq!(plan.spec.nics[0].network, "lan");

        let staging = tempfile::tempdir().unwrap();
        let mut sink = DirSink::new(staging.path(), Some(DiskFormat::Raw));
        let vm = read_xva(
            std::fs::File::open(path).unwrap(),
            &mut sink,
            &Limits::default(),
            &no_progress,
        )
        .unwrap();
        let got = std::fs::read(&vm.disks[0].path).unwrap();
        assert!(got == want, "{compression}: imported disk differs");
        assert_eq!(vm.spec.disks[0].path, vm.disks[0].path);
    }
}

#[test]
fn xapi_style_xva_with_sha1_checksums_imports_to_qcow2() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let want = disk_image(&raw);
    let xva = dir.path().join("vm.xva");
    run(Command::new("python3")
        .arg(writer_dir().join("make_xva.py"))
        .arg(&xva)
        .arg(&raw)
        .args(["--pv", "--weight", "512", "--mac", "02:00:00:00:00:07"]));
    let staging = tempfile::tempdir().unwrap();
    let mut sink = DirSink::new(staging.path(), None);
    let vm = read_xva(
        std::fs::File::open(&xva).unwrap(),
        &mut sink,
        &Limits::default(),
        &no_progress,
    )
    .unwrap();
    assert_eq!(vm.spec.name, "xapi-vm");
    assert_eq!(vm.spec.description, "made by make_xva.py");
    assert_eq!(vm.spec.vcpus, 3);
    assert_eq!(vm.spec.memory_bytes, 768 << 20);
    assert_eq!(vm.spec.cpu_weight, 512);
    assert!(vm.spec.autostart);
    assert_eq!(vm.spec.cdroms.len(), 1);
    assert_eq!(
        vm.spec.nics[0].network,
        "Pool-wide network associated with eth0"
    );
    assert!(
        vm.warnings.iter().any(|w| w.contains("PV guest")),
        "{:?}",
        vm.warnings
    );
    assert_eq!(vm.disks[0].format, DiskFormat::Qcow2);
    assert_eq!(vm.disks[0].virtual_size, want.len() as u64);
    let back = dir.path().join("back.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&vm.disks[0].path)
        .arg(&back));
    assert!(std::fs::read(&back).unwrap() == want);
}

fn ova_xml(size: u64) -> String {
    format!(
        "<value><struct><member><name>objects</name><value><array><data>\
<value><struct><member><name>class</name><value>VM</value></member><member><name>id</name><value>Ref:1</value></member>\
<member><name>snapshot</name><value><struct><member><name>name_label</name><value>h</value></member>\
<member><name>memory_static_max</name><value>268435456</value></member><member><name>VCPUs_at_startup</name><value><int>1</int></value></member>\
<member><name>HVM_boot_policy</name><value>BIOS order</value></member>\
<member><name>VBDs</name><value><array><data><value>Ref:2</value></data></array></value></member></struct></value></member></struct></value>\
<value><struct><member><name>class</name><value>VBD</value></member><member><name>id</name><value>Ref:2</value></member>\
<member><name>snapshot</name><value><struct><member><name>VDI</name><value>Ref:3</value></member><member><name>type</name><value>Disk</value></member></struct></value></member></struct></value>\
<value><struct><member><name>class</name><value>VDI</value></member><member><name>id</name><value>Ref:3</value></member>\
<member><name>snapshot</name><value><struct><member><name>virtual_size</name><value>{size}</value></member></struct></value></member></struct></value>\
</data></array></value></member></struct></value>"
    )
}

fn block(name: &str, data: &[u8]) -> [Member; 2] {
    use sha1::Digest;
    [
        Member::file(name, data),
        Member::file(
            &format!("{name}.checksum"),
            hex::encode(sha1::Sha1::digest(data)).as_bytes(),
        ),
    ]
}

#[test]
fn hostile_xvas_are_rejected() {
    let xml = ova_xml(2 << 20);
    let good_block = noise(1 << 20, 5);
    let mut flipped = block("Ref:3/00000000", &good_block);
    flipped[0].data[10] ^= 1;
    let deep = format!(
        "{}{}",
        "<value><array><data>".repeat(100),
        "</data></array></value>".repeat(100)
    );
    let bomb = "<?xml version=\"1.0\"?><!DOCTYPE v [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\">]><value>&b;</value>";
    let mut cases: Vec<(&str, Vec<Member>, &str)> = vec![
        (
            "bad checksum",
            vec![
                Member::file("ova.xml", xml.as_bytes()),
                flipped[0].clone(),
                flipped[1].clone(),
            ],
            "checksum mismatch in block Ref:3/00000000 (SHA-1)",
        ),
        (
            "no checksum",
            vec![
                Member::file("ova.xml", xml.as_bytes()),
                Member::file("Ref:3/00000000", &good_block),
            ],
            "has no checksum member",
        ),
        (
            "past the end",
            [
                vec![Member::file("ova.xml", xml.as_bytes())],
                block("Ref:3/00000002", &good_block).to_vec(),
            ]
            .concat(),
            "past the end of the disk",
        ),
        (
            "oversized block",
            [
                vec![Member::file("ova.xml", xml.as_bytes())],
                block("Ref:3/00000000", &noise(2 << 20, 1)).to_vec(),
            ]
            .concat(),
            "blocks hold",
        ),
        (
            "unknown disk",
            [
                vec![Member::file("ova.xml", xml.as_bytes())],
                block("Ref:9/00000000", &good_block).to_vec(),
            ]
            .concat(),
            "belongs to no disk",
        ),
        (
            "out of order",
            [
                vec![Member::file("ova.xml", xml.as_bytes())],
                block("Ref:3/00000001", &good_block).to_vec(),
                block("Ref:3/00000000", &good_block).to_vec(),
            ]
            .concat(),
            "out of order",
        ),
        (
            "traversal",
            vec![
                Member::file("ova.xml", xml.as_bytes()),
                Member::file("Ref:3/../../x", b"x"),
            ],
            "'..' is not allowed",
        ),
        (
            "absolute",
            vec![
                Member::file("ova.xml", xml.as_bytes()),
                Member::file("/Ref:3/00000000", b"x"),
            ],
            "absolute paths",
        ),
        (
            "hardlink",
            vec![
                Member::file("ova.xml", xml.as_bytes()),
                Member::special("Ref:3/00000000", b'1', "/etc/shadow"),
            ],
            "hard links",
        ),
        (
            "xml first",
            vec![Member::file("Ref:3/00000000", &good_block)],
            "not ova.xml",
        ),
        (
            "xml bomb",
            vec![Member::file("ova.xml", bomb.as_bytes())],
            "DTD",
        ),
        (
            "deep nesting",
            vec![Member::file("ova.xml", deep.as_bytes())],
            "too deeply",
        ),
        (
            "no blocks",
            vec![Member::file("ova.xml", xml.as_bytes())],
            "no block of disk",
        ),
        (
            "huge disk",
            vec![Member::file("ova.xml", ova_xml(1 << 60).as_bytes())],
            "more than the maximum",
        ),
    ];
    let big = format!("{}{}", xml, " ".repeat(5 << 20));
    cases.push((
        "oversized ova.xml",
        vec![Member::file("ova.xml", big.as_bytes())],
        "more than the maximum of 4194304",
    ));
    for (case, members, needle) in cases {
        let bytes = write_tar(&members);
        let root = tempfile::tempdir().unwrap();
        let staging = root.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        let mut sink = DirSink::new(&staging, Some(DiskFormat::Raw));
        let err =
            read_xva(&bytes[..], &mut sink, &Limits::default(), &no_progress).expect_err(case);
        let msg = err.to_string();
        assert!(msg.contains(needle), "{case}: {msg}");
        assert!(
            files_under(root.path())
                .iter()
                .all(|f| f.starts_with("staging/")),
            "{case}"
        );
    }
    // A zstd bomb: a GNU long-name member declaring 256 MiB (the tar crate would buffer it).
    let mut h = tar::Header::new_gnu();
    h.set_size(256 << 20);
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_cksum();
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    std::io::Write::write_all(&mut enc, h.as_bytes()).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        std::io::Write::write_all(&mut enc, &zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 1 << 20);
    let staging = tempfile::tempdir().unwrap();
    let mut sink = DirSink::new(staging.path(), Some(DiskFormat::Raw));
    let err = read_xva(&bomb[..], &mut sink, &Limits::default(), &no_progress).unwrap_err();
    assert!(
        err.to_string().contains("GNU long name of 268435456 bytes"),
        "{err}"
    );

    // A truncated gzip stream.
    let good = write_tar(
        &[
            vec![Member::file("ova.xml", xml.as_bytes())],
            block("Ref:3/00000001", &good_block).to_vec(),
        ]
        .concat(),
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &good).unwrap();
    let gz = gz.finish().unwrap();
    let staging = tempfile::tempdir().unwrap();
    let mut sink = DirSink::new(staging.path(), Some(DiskFormat::Raw));
    assert!(read_xva(&gz[..], &mut sink, &Limits::default(), &no_progress).is_ok());
    let staging = tempfile::tempdir().unwrap();
    let mut sink = DirSink::new(staging.path(), Some(DiskFormat::Raw));
    let err = read_xva(
        &gz[..gz.len() / 2],
        &mut sink,
        &Limits::default(),
        &no_progress,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ArchiveError::Truncated(_) | ArchiveError::ReadArchive(_)
        ),
        "{err}"
    );
}
