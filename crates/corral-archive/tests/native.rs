//! Native format: round trips through real files and qcow2 images, version handling, and a
//! corpus of malicious and broken archives, each of which must fail with a clear error and
//! leave nothing outside the sink's staging directory.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

mod common;

use common::*;
use corral_archive::native::Manifest;
use corral_archive::*;
use corral_model::DiskFormat;
use std::path::Path;
use std::process::Command;

fn export(disks: Vec<(&str, MemSource)>, opts: &WriteOptions) -> (Vec<u8>, ArchiveSummary) {
    let names: Vec<&str> = disks.iter().map(|d| d.0).collect();
    let spec = spec("web01", &names);
    let boxed: Vec<(String, Box<dyn DiskSource + Send + Sync>)> = disks
        .into_iter()
        .map(|(n, s)| {
            (
                n.to_string(),
                Box::new(s) as Box<dyn DiskSource + Send + Sync>,
            )
        })
        .collect();
    let mut out = Vec::new();
    let summary = write_archive(&mut out, &spec, boxed, opts, &no_progress).unwrap();
    (out, summary)
}

fn import(bytes: &[u8], dir: &Path) -> Result<ImportedVm, ArchiveError> {
    let mut sink = DirSink::new(dir, Some(DiskFormat::Raw));
    read_archive(bytes, &mut sink, &Limits::default(), &no_progress)
}

fn good_archive() -> Vec<u8> {
    export(
        vec![("disk0", sample_disk()), ("disk1", sample_disk())],
        &WriteOptions::default(),
    )
    .0
}

#[test]
fn round_trip_preserves_data_spec_and_skips_zeros() {
    for compression in [Compression::Zstd, Compression::None] {
        let opts = WriteOptions {
            compression,
            threads: 3,
            extent_max_bytes: 1 << 20,
            ..Default::default()
        };
        let src = sample_disk();
        let want = src.data.clone();
        let (bytes, summary) = export(vec![("disk0", src)], &opts);
        let d = &summary.disks[0];
        assert_eq!(d.allocated_bytes, (4 << 20) + 65536);
        // the zero MiB inside the first range is not stored
        assert!(d.data_bytes < d.allocated_bytes - (1 << 20) + 1, "{d:?}");
        assert_eq!(summary.archive_bytes, bytes.len() as u64);
        assert_eq!(detect_format(&bytes[..4096]), ArchiveKind::Native);
        if compression == Compression::Zstd {
            assert!(d.stored_bytes < d.data_bytes);
        }

        let dir = tempfile::tempdir().unwrap();
        let progress = std::cell::RefCell::new(Vec::new());
        let mut sink = DirSink::new(dir.path(), None);
        let vm = read_archive(&bytes[..], &mut sink, &Limits::default(), &|p: Progress| {
            progress.borrow_mut().push(p)
        })
        .unwrap();
        assert_eq!(vm.archive_hash, summary.archive_hash);
        assert_eq!(vm.spec.name, "web01");
        assert_eq!(vm.spec.vcpus, 2);
        assert_eq!(vm.spec.cpu_weight, 512);
        assert!(vm.spec.autostart);
        assert_eq!(vm.spec.description, "a test VM");
        assert_eq!(vm.spec.nics[0].mac, "52:54:00:12:34:56");
        assert_eq!(vm.spec.disks[0].path, vm.disks[0].path);
        assert_eq!(vm.disks[0].format, DiskFormat::Raw);
        assert!(vm.disks[0].path.starts_with(dir.path()));
        let got = std::fs::read(&vm.disks[0].path).unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "imported disk differs");
        // progress is monotonic and exact
        let p = progress.borrow();
        assert!(p.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done));
        let last = p.iter().rfind(|p| p.phase == Phase::Importing).unwrap();
        assert_eq!(last.bytes_done, last.bytes_total);
        assert_eq!(last.bytes_total, (4 << 20) + 65536);
    }
}

#[test]
fn export_progress_is_exact_and_monotonic() {
    let src = sample_disk();
    let spec = spec("web01", &["disk0"]);
    let seen = std::cell::RefCell::new(Vec::new());
    write_archive(
        std::io::sink(),
        &spec,
        vec![("disk0".into(), Box::new(src))],
        &WriteOptions::default(),
        &|p: Progress| seen.borrow_mut().push(p),
    )
    .unwrap();
    let seen = seen.borrow();
    assert_eq!(seen[0].bytes_done, 0);
    assert!(seen.iter().all(|p| p.bytes_total == (4 << 20) + 65536));
    assert_eq!(seen.last().unwrap().bytes_done, (4 << 20) + 65536);
    assert!(seen.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done));
}

fn qemu_img(args: &[&str]) {
    let st = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        st.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

fn qemu_io(file: &str, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let st = c.arg(file).output().unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
}

#[test]
fn raw_and_qcow2_sources_round_trip_through_qcow2_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    // A raw file with a hole in the middle.
    qemu_img(&["create", "-f", "raw", &p("a.raw"), "32M"]);
    qemu_io(&p("a.raw"), &["write -P 0x11 0 3M", "write -P 0x22 20M 1M"]);
    // A plain qcow2 (read directly) and a linked clone of it (flattened).
    qemu_img(&["create", "-f", "qcow2", &p("b.qcow2"), "48M"]);
    qemu_io(
        &p("b.qcow2"),
        &["write -P 0x33 1M 2M", "write -P 0x44 40M 64k"],
    );
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        &p("b.qcow2"),
        "-F",
        "qcow2",
        &p("c.qcow2"),
    ]);
    qemu_io(&p("c.qcow2"), &["write -P 0x55 2M 512k"]);

    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let a = open_disk_source(Path::new(&p("a.raw")), DiskFormat::Raw, &scratch).unwrap();
    let b = Qcow2Source::open(Path::new(&p("b.qcow2")), &scratch).unwrap();
    assert_eq!(b.access(), Qcow2Access::Direct);
    assert_eq!(
        b.allocated_extents()
            .unwrap()
            .iter()
            .map(|e| e.1)
            .sum::<u64>(),
        (2 << 20) + 65536
    );
    let c = Qcow2Source::open(Path::new(&p("c.qcow2")), &scratch).unwrap();
    assert_eq!(c.access(), Qcow2Access::Flattened);
    assert_eq!(
        a.allocated_extents()
            .unwrap()
            .iter()
            .map(|e| e.1)
            .sum::<u64>(),
        4 << 20
    );

    let mut spec = spec("vm", &["disk0", "disk1", "disk2"]);
    spec.disks[1].format = DiskFormat::Qcow2;
    spec.disks[2].format = DiskFormat::Qcow2;
    let mut out = Vec::new();
    write_archive(
        &mut out,
        &spec,
        vec![
            ("disk0".into(), a),
            ("disk1".into(), Box::new(b)),
            ("disk2".into(), Box::new(c)),
        ],
        &WriteOptions::default(),
        &no_progress,
    )
    .unwrap();
    let staging = dir.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    let mut sink = DirSink::new(&staging, None);
    let vm = read_archive(&out[..], &mut sink, &Limits::default(), &no_progress).unwrap();
    assert_eq!(vm.disks[0].format, DiskFormat::Raw);
    assert_eq!(vm.disks[1].format, DiskFormat::Qcow2);
    assert_eq!(
        files_under(&staging),
        vec!["disk0.raw", "disk1.qcow2", "disk2.qcow2"]
    );
    for (i, orig) in ["a.raw", "b.qcow2", "c.qcow2"].iter().enumerate() {
        let got = vm.disks[i].path.display().to_string();
        qemu_img(&["compare", &p(orig), &got]);
    }
    let _ = std::fs::remove_dir(&scratch); // flattened scratch copies are gone
    assert!(std::fs::read_dir(&scratch).map_or(true, |mut d| d.next().is_none()));
}

#[test]
fn empty_100_gib_disk_exports_in_under_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.raw");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(100 << 30)
        .unwrap();
    let src = RawFileSource::open(&path).unwrap();
    let t = std::time::Instant::now();
    let mut out = Vec::new();
    let s = write_archive(
        &mut out,
        &spec("big", &["disk0"]),
        vec![("disk0".into(), Box::new(src))],
        &WriteOptions::default(),
        &no_progress,
    )
    .unwrap();
    assert!(t.elapsed().as_secs_f64() < 1.0, "{:?}", t.elapsed());
    assert_eq!(s.disks[0].extents, 0);
    assert!(out.len() < 16 << 10);
    let staging = tempfile::tempdir().unwrap();
    let vm = import(&out, staging.path()).unwrap();
    assert_eq!(
        std::fs::metadata(&vm.disks[0].path).unwrap().len(),
        100 << 30
    );
}

#[test]
fn unknown_optional_fields_are_accepted_with_warnings() {
    let mut members = read_tar(&good_archive());
    let mut m: serde_json::Value = serde_json::from_slice(&members[0].1).unwrap();
    m["version"] = "1.7".into();
    m["signature"] = serde_json::json!({"by": "someone"});
    m["disks"][0]["label"] = "root".into();
    m["vm"]["numa"] = serde_json::json!([1, 2]);
    members[0].1 = serde_json::to_vec(&m).unwrap();
    reseal(&mut members);
    let dir = tempfile::tempdir().unwrap();
    let vm = import(&to_tar(&members), dir.path()).unwrap();
    assert_eq!(vm.format_version, "1.7");
    assert_eq!(vm.warnings.len(), 1, "{:?}", vm.warnings);
    assert!(vm.warnings[0].contains("vm.numa"));
}

#[test]
fn newer_major_version_is_refused_with_a_clear_message() {
    let mut members = read_tar(&good_archive());
    let mut m: serde_json::Value = serde_json::from_slice(&members[0].1).unwrap();
    m["version"] = "3.0".into();
    m["disks"] = "a different layout".into();
    members[0].1 = serde_json::to_vec(&m).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = import(&to_tar(&members), dir.path()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "archive format 3.0 is newer than this corral understands (2.x); upgrade corral"
    );
    // the dry-run path says the same
    let err = read_manifest(&to_tar(&members)[..], &Limits::default()).unwrap_err();
    assert!(err.to_string().contains("upgrade corral"));
}

#[test]
fn read_manifest_reads_only_the_first_member() {
    let bytes = good_archive();
    // cut right after the manifest: the dry run still works
    let cut = 512 + read_tar(&bytes)[0].1.len().div_ceil(512) * 512;
    let (m, spec, warnings): (Manifest, _, _) =
        read_manifest(&bytes[..cut], &Limits::default()).unwrap();
    assert_eq!(m.disks.len(), 2);
    assert_eq!(spec.name, "web01");
    assert!(warnings.is_empty());
}

/// Run one malicious case: it must fail, the message must contain `needle`, and nothing may
/// exist outside the staging directory.
fn expect_rejected(case: &str, bytes: &[u8], needle: &str) {
    let root = tempfile::tempdir().unwrap();
    let staging = root.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    let err = import(bytes, &staging).expect_err(case);
    let msg = error_chain(&err);
    assert!(msg.contains(needle), "{case}: {msg:?} lacks {needle:?}");
    let outside: Vec<String> = files_under(root.path())
        .into_iter()
        .filter(|f| !f.starts_with("staging/"))
        .collect();
    assert!(
        outside.is_empty(),
        "{case}: files outside staging: {outside:?}"
    );
    for f in files_under(&staging) {
        assert!(
            f.starts_with("disk") && f.ends_with(".raw"),
            "{case}: stray {f}"
        );
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn edit(f: impl FnOnce(&mut Vec<(String, Vec<u8>)>), seal: bool) -> Vec<u8> {
    let mut members = read_tar(&good_archive());
    f(&mut members);
    if seal {
        reseal(&mut members);
    }
    to_tar(&members)
}

fn edit_manifest(f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    edit(
        |m| {
            let mut v: serde_json::Value = serde_json::from_slice(&m[0].1).unwrap();
            f(&mut v);
            m[0].1 = serde_json::to_vec(&v).unwrap();
        },
        true,
    )
}

/// The `<hash>.<ext>` end of an extent name.
fn tail(name: &str) -> String {
    name.rsplit('-').next().unwrap().to_string()
}

fn first_extent(m: &[(String, Vec<u8>)]) -> usize {
    m.iter().position(|(n, _)| n.starts_with("disks/")).unwrap()
}

#[test]
fn truncated_archives_are_rejected() {
    let bytes = good_archive();
    for cut in [
        0,
        100,
        512,
        2000,
        bytes.len() / 3,
        bytes.len() / 2,
        bytes.len() - 3000,
    ] {
        let root = tempfile::tempdir().unwrap();
        let err = import(&bytes[..cut], root.path()).expect_err("truncated");
        let msg = error_chain(&err);
        assert!(
            msg.contains("truncated")
                || msg.contains("not a corral archive")
                || msg.contains("empty"),
            "cut {cut}: {msg}"
        );
    }
}

#[test]
fn malicious_and_broken_archives_are_rejected() {
    let good = read_tar(&good_archive());
    let manifest = good[0].1.clone();
    let ext = first_extent(&good);
    let ext_name = good[ext].0.clone();

    // Path traversal, absolute paths, links and devices, as first or later members.
    for (case, member, needle) in [
        (
            "dotdot",
            Member::file("../evil", b"x"),
            "'..' is not allowed",
        ),
        (
            "absolute",
            Member::file("/tmp/evil", b"x"),
            "absolute paths",
        ),
        (
            "symlink",
            Member::special("disks/0/link", b'2', "/etc/passwd"),
            "symbolic links",
        ),
        (
            "hardlink",
            Member::special("disks/0/hard", b'1', "/etc/passwd"),
            "hard links",
        ),
        (
            "chardev",
            Member::special("disks/0/dev", b'3', ""),
            "device files",
        ),
        ("fifo", Member::special("disks/0/fifo", b'6', ""), "FIFOs"),
    ] {
        let second = write_tar(&[Member::file("corral-archive.json", &manifest), member]);
        expect_rejected(case, &second, needle);
    }
    let first = write_tar(&[Member::file("../corral-archive.json", &manifest)]);
    expect_rejected("dotdot first", &first, "'..' is not allowed");

    // Bad hashes: flipped data byte (stored uncompressed so the hash is what catches it),
    // wrong hash in a name, a dropped extent, an edited manifest without resealing.
    let opts = WriteOptions {
        compression: Compression::None,
        ..Default::default()
    };
    let (raw, _) = export(vec![("disk0", sample_disk())], &opts);
    let mut m = read_tar(&raw);
    let i = first_extent(&m);
    m[i].1[100] ^= 1;
    expect_rejected("flipped byte", &to_tar(&m), "checksum mismatch in extent");
    let bad_name = edit(
        |m| {
            let n = &mut m[ext].0;
            let h = n.len() - 5;
            n.replace_range(h..h + 1, if &n[h..h + 1] == "0" { "1" } else { "0" });
        },
        true,
    );
    expect_rejected("wrong hash in name", &bad_name, "checksum mismatch");
    let dropped = edit(
        |m| {
            m.remove(ext);
        },
        false,
    );
    expect_rejected(
        "dropped extent",
        &dropped,
        "checksum mismatch in the archive",
    );
    let dropped_resealed = edit(
        |m| {
            m.remove(ext);
        },
        true,
    );
    expect_rejected(
        "dropped extent, resealed",
        &dropped_resealed,
        "extents with",
    );
    let unsealed = edit(|m| m[0].1.extend_from_slice(b" "), false);
    expect_rejected(
        "edited manifest",
        &unsealed,
        "checksum mismatch in the archive",
    );

    // Zip bomb: an extent declared as 64 KiB whose frame expands to 32 MiB.
    let bomb = zstd::bulk::compress(&vec![0u8; 32 << 20], 19).unwrap();
    let bomb_name = format!("disks/0/{:016x}-{:x}-{:016x}.zst", 0, 65536, 0);
    let bombed = edit(|m| m[ext] = (bomb_name.clone(), bomb.clone()), true);
    // a 32 MiB frame of zeros compresses below zstd's bound for 64 KiB, so only the
    // bounded decompression stops it
    assert!(bomb.len() < 65536);
    expect_rejected(
        "zip bomb",
        &bombed,
        "does not decompress to its declared 65536 bytes",
    );

    // Lying sizes.
    let lying_alloc = edit_manifest(|v| v["disks"][0]["allocated_bytes"] = 12345.into());
    expect_rejected("allocated bytes", &lying_alloc, "add up to");
    let past_end = edit_manifest(|v| v["disks"][0]["virtual_size"] = (1u64 << 20).into());
    expect_rejected("ranges past end", &past_end, "ends past the virtual size");
    let overlapping = edit_manifest(|v| {
        v["disks"][0]["allocated"] = serde_json::json!([[0, 4194304], [1048576, 1048576]]);
        v["disks"][0]["allocated_bytes"] = (5u64 << 20).into();
    });
    expect_rejected("overlapping ranges", &overlapping, "overlaps");
    let mut huge_member = vec![Member::file("corral-archive.json", &manifest)];
    huge_member.push(Member {
        declared_size: Some(1 << 32),
        ..Member::file(&ext_name, b"x")
    });
    expect_rejected(
        "member size",
        &write_tar(&huge_member),
        "disagrees with its length",
    );
    // An extent outside the allocated ranges (in the 6..7 MiB hole), then a duplicate.
    let outside = edit(
        |m| m[ext].0 = format!("disks/0/{:016x}-10000-{}", 6u64 << 20, tail(&m[ext].0)),
        true,
    );
    expect_rejected("extent in a hole", &outside, "outside the allocated ranges");
    let dup = edit(
        |m| {
            let e = m[ext].clone();
            m.insert(ext + 1, e);
        },
        true,
    );
    expect_rejected("duplicate extent", &dup, "overlaps or precedes");
    let huge_extent = edit(
        |m| m[ext].0 = format!("disks/0/{:016x}-{:x}-{}", 0, 128u64 << 20, tail(&m[ext].0)),
        true,
    );
    expect_rejected("huge extent", &huge_extent, "extent length");

    // Oversized manifest, too many disks, unknown members, no checksums, trailing members.
    let mut big = serde_json::from_slice::<serde_json::Value>(&manifest).unwrap();
    big["padding"] = "x".repeat(5 << 20).into();
    let big = write_tar(&[Member::file(
        "corral-archive.json",
        &serde_json::to_vec(&big).unwrap(),
    )]);
    expect_rejected(
        "oversized manifest",
        &big,
        "more than the maximum of 4194304",
    );
    let many = edit_manifest(|v| {
        let d = v["disks"][0].clone();
        v["disks"] = serde_json::Value::Array(
            (0..17)
                .map(|i| {
                    let mut d = d.clone();
                    d["device"] = format!("d{i}").into();
                    d
                })
                .collect(),
        );
    });
    expect_rejected("too many disks", &many, "17 disks");
    let bad_device = edit_manifest(|v| v["disks"][0]["device"] = "../../etc".into());
    expect_rejected("device name", &bad_device, "disk device name");
    let stray = edit(|m| m.insert(1, ("notes.txt".into(), b"hi".to_vec())), true);
    expect_rejected("stray member", &stray, "unexpected member");
    let no_sums = edit(
        |m| {
            m.pop();
        },
        false,
    );
    expect_rejected(
        "no checksums",
        &no_sums,
        "truncated: it ends before checksums.json",
    );
    let trailing = edit(|m| m.push(("extra".into(), vec![1])), false);
    expect_rejected("after checksums", &trailing, "follows checksums.json");
    expect_rejected("not tar", &[7u8; 4096], "not a corral archive");
    let ova = write_tar(&[Member::file("vm.ovf", b"<Envelope/>")]);
    expect_rejected("an ova", &ova, "first member is \"vm.ovf\"");
}

#[test]
fn extents_are_capped_at_16_mib_on_both_sides() {
    // The reader refuses a manifest declaring extents larger than writers produce, so a hostile
    // archive cannot make it hold more than the byte budget of extents.
    let big = edit_manifest(|m| m["extent_max_bytes"] = serde_json::json!(32u64 << 20));
    expect_rejected(
        "32 MiB extents",
        &big,
        "extent size 33554432 is outside 1..16777216",
    );
    // 16 MiB extents still round trip (readers accept what writers write).
    let opts = WriteOptions {
        extent_max_bytes: native::MAX_EXTENT_BYTES,
        ..Default::default()
    };
    let src = sample_disk();
    let want = src.data.clone();
    let (bytes, _) = export(vec![("disk0", src)], &opts);
    let dir = tempfile::tempdir().unwrap();
    let vm = import(&bytes, dir.path()).unwrap();
    assert!(std::fs::read(&vm.disks[0].path).unwrap() == want);
    // The writer refuses larger extents.
    let spec = spec("web01", &["disk0"]);
    let e = write_archive(
        std::io::sink(),
        &spec,
        vec![("disk0".into(), Box::new(sample_disk()))],
        &WriteOptions {
            extent_max_bytes: 32 << 20,
            ..Default::default()
        },
        &no_progress,
    )
    .unwrap_err();
    assert!(e.to_string().contains("outside 64 KiB..16 MiB"), "{e}");
}

/// Wraps a [`DirSink`]: delays writes by an amount that depends on the offset, so workers
/// complete extents far out of archive order, and counts the writes that reach the disk.
struct ScramblingSink {
    inner: DirSink,
    writes: std::sync::atomic::AtomicUsize,
}

impl ImportSink for ScramblingSink {
    fn create_disk(&mut self, target: &DiskTarget) -> std::io::Result<()> {
        self.inner.create_disk(target)
    }
    fn write_at(&self, disk: usize, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let ms = (offset / 4096).wrapping_mul(0x9e37_79b9) % 7;
        std::thread::sleep(std::time::Duration::from_millis(ms));
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.write_at(disk, offset, data)
    }
    fn finish_disk(
        &mut self,
        disk: usize,
        progress: &dyn Fn(Progress),
    ) -> std::io::Result<(std::path::PathBuf, DiskFormat)> {
        self.inner.finish_disk(disk, progress)
    }
}

/// A 40 MiB disk with allocated ranges that start and end inside qcow2 clusters (4 KiB
/// aligned, as `SEEK_DATA` reports them), text, noise and zero blocks.
fn ragged_disk() -> MemSource {
    let mut data = vec![0u8; 40 << 20];
    let text = b"ragged extents for the parallel writer; ".repeat(100_000);
    data[4096..4096 + text.len()].copy_from_slice(&text);
    data[(9 << 20) + 12288..(31 << 20) + 4096].copy_from_slice(&noise((22 << 20) - 8192, 11));
    // Zero blocks inside allocated ranges split extents at 64 KiB boundaries.
    data[(12 << 20)..(12 << 20) + 3 * 65536].fill(0);
    data[(40 << 20) - 5000] = 0x5a;
    MemSource {
        data,
        allocated: vec![
            (4096, text.len() as u64 + 8192),
            ((9 << 20) + 12288, (22 << 20) - 8192),
            ((40 << 20) - 8192, 8192),
        ],
    }
}

fn write_raw(path: &Path, src: &MemSource) {
    std::fs::write(path, &src.data).unwrap();
}

#[test]
fn extents_completing_out_of_order_import_to_an_identical_qcow2() {
    let dir = tempfile::tempdir().unwrap();
    let want = dir.path().join("want.raw");
    let src = ragged_disk();
    write_raw(&want, &src);
    let opts = WriteOptions {
        extent_max_bytes: 256 << 10,
        ..Default::default()
    };
    let (bytes, summary) = export(vec![("disk0", src)], &opts);
    assert!(summary.disks[0].extents > 100, "{:?}", summary.disks[0]);
    for threads in [1, 4] {
        let staging = dir.path().join(format!("staging{threads}"));
        std::fs::create_dir(&staging).unwrap();
        let mut sink = ScramblingSink {
            inner: DirSink::new(&staging, Some(DiskFormat::Qcow2)),
            writes: Default::default(),
        };
        let limits = Limits {
            threads,
            ..Default::default()
        };
        let vm = read_archive(&bytes[..], &mut sink, &limits, &no_progress).unwrap();
        let got = vm.disks[0].path.display().to_string();
        qemu_img(&["check", "-f", "qcow2", &got]);
        qemu_img(&[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            want.to_str().unwrap(),
            &got,
        ]);
    }
}

/// A corrupted extent in the middle of a disk fails the import with an error naming it, even
/// while other workers are writing; no write happens after `read_archive` returns, so the
/// caller's deletion of the staging directory really leaves nothing.
#[test]
fn corrupt_extent_fails_cleanly_while_workers_write() {
    let opts = WriteOptions {
        extent_max_bytes: 1 << 20,
        compression: Compression::None,
        ..Default::default()
    };
    let (bytes, _) = export(vec![("disk0", ragged_disk())], &opts);
    let mut members = read_tar(&bytes);
    let extents: Vec<usize> = (0..members.len())
        .filter(|&i| members[i].0.starts_with("disks/"))
        .collect();
    let bad = extents[extents.len() / 2];
    members[bad].1[100] ^= 0xff;
    reseal(&mut members);
    let corrupted = to_tar(&members);

    let root = tempfile::tempdir().unwrap();
    let staging = root.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    let mut sink = ScramblingSink {
        inner: DirSink::new(&staging, Some(DiskFormat::Qcow2)),
        writes: Default::default(),
    };
    let limits = Limits {
        threads: 4,
        ..Default::default()
    };
    let err = read_archive(&corrupted[..], &mut sink, &limits, &no_progress).unwrap_err();
    let msg = error_chain(&err);
    assert!(
        msg.contains("checksum mismatch") && msg.contains(&members[bad].0),
        "{msg}"
    );
    let writes = sink.writes.load(std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        sink.writes.load(std::sync::atomic::Ordering::SeqCst),
        writes,
        "a worker wrote after read_archive returned"
    );
    assert_eq!(files_under(&staging), vec!["disk0.qcow2"]);
    std::fs::remove_dir_all(&staging).unwrap();
    assert!(files_under(root.path()).is_empty());
}
