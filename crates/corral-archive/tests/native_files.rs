//! Native format 2.0: files carried beside the disks (direct-boot kernel and initrd, TPM
//! state). Round trips, the version a writer picks, and archives whose carried files lie about
//! their size, hash, order or role, each of which must fail with a clear error and leave
//! nothing outside the sink's staging directory.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code may panic

mod common;

use common::*;
use corral_archive::*;
use corral_model::DiskFormat;
use std::path::{Path, PathBuf};

struct Fixture {
    _dir: tempfile::TempDir,
    kernel: PathBuf,
    initrd: PathBuf,
    kernel_data: Vec<u8>,
    initrd_data: Vec<u8>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinuz");
    let initrd = dir.path().join("initrd.img");
    // Not a multiple of any block size, and larger than one copy buffer.
    let kernel_data = noise((1 << 20) + 12345, 7);
    let initrd_data = noise(333, 9);
    std::fs::write(&kernel, &kernel_data).unwrap();
    std::fs::write(&initrd, &initrd_data).unwrap();
    Fixture {
        _dir: dir,
        kernel,
        initrd,
        kernel_data,
        initrd_data,
    }
}

fn export_with(files: Vec<(FileRole, PathBuf)>) -> Vec<u8> {
    let spec = spec("web01", &["disk0"]);
    let disks: Vec<(String, Box<dyn DiskSource + Send + Sync>)> =
        vec![("disk0".into(), Box::new(sample_disk()))];
    let opts = WriteOptions {
        files,
        extent_max_bytes: 1 << 20,
        ..Default::default()
    };
    let mut out = Vec::new();
    write_archive(&mut out, &spec, disks, &opts, &no_progress).unwrap();
    out
}

fn good(f: &Fixture) -> Vec<(String, Vec<u8>)> {
    read_tar(&export_with(vec![
        (FileRole::Kernel, f.kernel.clone()),
        (FileRole::Initrd, f.initrd.clone()),
    ]))
}

fn import(bytes: &[u8], dir: &Path, limits: &Limits) -> Result<ImportedVm, ArchiveError> {
    let mut sink = DirSink::new(dir, Some(DiskFormat::Raw));
    read_archive(bytes, &mut sink, limits, &no_progress)
}

fn version_of(members: &[(String, Vec<u8>)]) -> String {
    let m: serde_json::Value = serde_json::from_slice(&members[0].1).unwrap();
    m["version"].as_str().unwrap().to_string()
}

#[test]
fn carried_files_round_trip_and_make_the_archive_2_0() {
    let f = fixture();
    let members = good(&f);
    let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        &names[..3],
        &["corral-archive.json", "files/kernel", "files/initrd"]
    );
    assert!(names[3].starts_with("disks/0/"));
    assert_eq!(version_of(&members), "2.0");

    let dir = tempfile::tempdir().unwrap();
    let vm = import(&to_tar(&members), dir.path(), &Limits::default()).unwrap();
    assert_eq!(vm.format_version, "2.0");
    assert_eq!(vm.files.len(), 2);
    assert_eq!(vm.files[0].role, FileRole::Kernel);
    assert_eq!(vm.files[0].size, f.kernel_data.len() as u64);
    assert_eq!(std::fs::read(&vm.files[0].path).unwrap(), f.kernel_data);
    assert_eq!(vm.files[1].role, FileRole::Initrd);
    assert_eq!(std::fs::read(&vm.files[1].path).unwrap(), f.initrd_data);
    // Both inside the sink's directory, under names the archive did not choose.
    for file in &vm.files {
        assert_eq!(file.path.parent(), Some(dir.path()));
    }
    assert_eq!(
        std::fs::read(&vm.disks[0].path).unwrap(),
        sample_disk().data
    );

    // Without files the archive stays 1.0, readable by every corral.
    assert_eq!(version_of(&read_tar(&export_with(vec![]))), "1.0");
}

#[test]
fn the_writer_refuses_a_role_twice_and_files_that_are_not_regular() {
    let f = fixture();
    let spec = spec("web01", &[]);
    for (files, needle) in [
        (
            vec![
                (FileRole::Kernel, f.kernel.clone()),
                (FileRole::Kernel, f.initrd.clone()),
            ],
            "the kernel file is given twice",
        ),
        (
            vec![(FileRole::Kernel, PathBuf::from("/"))],
            "cannot read the kernel file /",
        ),
        (
            vec![(FileRole::Initrd, PathBuf::from("/nonexistent/initrd"))],
            "cannot read the initrd file /nonexistent/initrd",
        ),
    ] {
        let opts = WriteOptions {
            files,
            ..Default::default()
        };
        let err = write_archive(Vec::new(), &spec, vec![], &opts, &no_progress).unwrap_err();
        assert!(err.to_string().contains(needle), "{err} lacks {needle:?}");
    }
}

fn expect_rejected(case: &str, members: &[(String, Vec<u8>)], limits: &Limits, needle: &str) {
    let root = tempfile::tempdir().unwrap();
    let staging = root.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    let err = import(&to_tar(members), &staging, limits).expect_err(case);
    let msg = chain(&err);
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
        let ok = (f.starts_with("disk") && f.ends_with(".raw"))
            || f == "file-kernel"
            || f == "file-initrd";
        assert!(ok, "{case}: stray {f}");
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// An archive as its members: (name, data) in order.
type Members = Vec<(String, Vec<u8>)>;

fn with_manifest(members: &mut [(String, Vec<u8>)], edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&members[0].1).unwrap();
    edit(&mut v);
    members[0].1 = serde_json::to_vec(&v).unwrap();
}

#[test]
fn lying_carried_files_are_rejected() {
    let f = fixture();
    let limits = Limits::default();
    let sealed = |edit: &dyn Fn(&mut Members)| {
        let mut m = good(&f);
        edit(&mut m);
        reseal(&mut m);
        m
    };
    let cases: Vec<(&str, Members, &str)> = vec![
        (
            "kernel bytes changed, archive hash resealed",
            sealed(&|m| m[1].1[100] ^= 1),
            "checksum mismatch in the kernel file",
        ),
        (
            "kernel bytes changed, archive hash not resealed",
            {
                let mut m = good(&f);
                m[1].1[100] ^= 1;
                m
            },
            "checksum mismatch in the kernel file",
        ),
        (
            "member shorter than the manifest says",
            sealed(&|m| {
                m[2].1.pop();
            }),
            "stores 332 bytes, not the declared 333",
        ),
        (
            "manifest and member agree on a larger size, hash not",
            sealed(&|m| {
                m[2].1.push(0);
                with_manifest(m, |v| v["files"][1]["size"] = 334.into());
            }),
            "checksum mismatch in the initrd file",
        ),
        (
            "files swapped",
            sealed(&|m| m.swap(1, 2)),
            "is out of order",
        ),
        (
            "file after an extent",
            sealed(&|m| {
                let k = m.remove(1);
                m.insert(3, k);
            }),
            "is out of order",
        ),
        (
            "file missing",
            sealed(&|m| {
                m.remove(2);
            }),
            "comes before the initrd file the manifest lists",
        ),
        (
            "a file the manifest does not list",
            sealed(&|m| {
                with_manifest(m, |v| {
                    v["files"].as_array_mut().unwrap().pop();
                });
            }),
            "is not a file the manifest lists",
        ),
        (
            "a role the format does not know",
            sealed(&|m| {
                m[2].0 = "files/passwd".into();
                with_manifest(m, |v| v["files"][1]["role"] = "passwd".into());
            }),
            "unknown variant `passwd`",
        ),
        (
            "a member name that is a path",
            sealed(&|m| m[2].0 = "files/../../etc/passwd".into()),
            "'..' is not allowed",
        ),
        (
            "a role twice",
            sealed(&|m| {
                with_manifest(m, |v| v["files"][1]["role"] = "kernel".into());
            }),
            "the kernel file appears twice",
        ),
        (
            "a size past the limit",
            sealed(&|m| {
                with_manifest(m, |v| v["files"][0]["size"] = (2u64 << 30).into());
            }),
            "more than the maximum of 1073741824",
        ),
        (
            "TPM state held to its own, smaller limit",
            sealed(&|m| {
                with_manifest(m, |v| {
                    v["files"][1]["role"] = "tpm_state".into();
                    v["files"][1]["size"] = (17u64 << 20).into();
                });
            }),
            "the tpm_state file is 17825792 bytes, more than the maximum of 16777216",
        ),
        (
            "a hash that is not hex",
            sealed(&|m| {
                with_manifest(m, |v| v["files"][0]["xxh3"] = "../../etc/passwd".into());
            }),
            "is not 16 lower-case hex digits",
        ),
        (
            "files in a 1.0 archive",
            sealed(&|m| with_manifest(m, |v| v["version"] = "1.0".into())),
            "format 1.0 cannot carry files",
        ),
        (
            "archive ends inside a file",
            {
                let mut m = good(&f);
                m.truncate(2);
                m
            },
            "truncated",
        ),
    ];
    for (case, members, needle) in cases {
        expect_rejected(case, &members, &limits, needle);
    }
    let small = Limits {
        max_file_bytes: 1 << 20,
        ..Limits::default()
    };
    expect_rejected(
        "a size past the caller's limit",
        &good(&f),
        &small,
        "the kernel file is 1060921 bytes, more than the maximum of 1048576",
    );
}
