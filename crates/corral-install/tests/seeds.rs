//! Unattended seeds, checked with the system's own tools: xorriso reads the NoCloud ISO back,
//! cpio lists and extracts the archive appended to an initrd.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

use corral_install::seed::{append_to_initrd, build_nocloud_iso, nocloud_meta_data, SeedFile};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn nocloud_iso_has_cidata_label_and_files() {
    let tmp = tempfile::tempdir().expect("tmp");
    let iso = tmp.path().join("seed.iso");
    let user = b"#cloud-config\nhostname: web01\nusers: [default]\n";
    let meta = nocloud_meta_data("i-web01", "web01");
    let net = b"version: 2\nethernets:\n  eth0:\n    dhcp4: true\n";
    build_nocloud_iso(&iso, user, meta.as_bytes(), Some(net)).expect("build");
    let bytes = std::fs::read(&iso).expect("read iso");
    assert_eq!(&bytes[0x8001..0x8006], b"CD001", "ISO 9660 signature");

    let pvd = run(Command::new("xorriso")
        .args(["-indev"])
        .arg(&iso)
        .arg("-pvd_info"));
    assert!(pvd.contains("Volume Id    : cidata"), "{pvd}");
    let ls = run(Command::new("xorriso")
        .args(["-indev"])
        .arg(&iso)
        .args(["-ls", "/"]));
    for f in ["user-data", "meta-data", "network-config"] {
        assert!(ls.contains(&format!("'{f}'")), "{f} not in {ls}");
    }
    let out = tmp.path().join("ud");
    run(Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(&iso)
        .args(["-extract", "/user-data"])
        .arg(&out));
    assert_eq!(std::fs::read(&out).expect("read"), user);

    // Without network-config.
    let iso2 = tmp.path().join("seed2.iso");
    build_nocloud_iso(&iso2, user, meta.as_bytes(), None).expect("build");
    let ls = run(Command::new("xorriso")
        .args(["-indev"])
        .arg(&iso2)
        .args(["-ls", "/"]));
    assert!(!ls.contains("network-config"), "{ls}");
}

fn gzip_cpio_initrd(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("bin")).expect("mkdir");
    std::fs::write(root.join("init"), "#!/bin/sh\necho installer\n").expect("write");
    std::fs::write(root.join("bin/tool"), "tool").expect("write");
    let mut cpio = Command::new("sh")
        .arg("-c")
        .arg("find . | sort | cpio -o -H newc --quiet | gzip -9")
        .current_dir(&root)
        .stdout(Stdio::piped())
        .spawn()
        .expect("cpio");
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(cpio.stdout.as_mut().expect("stdout"), &mut bytes).expect("read");
    assert!(cpio.wait().expect("wait").success());
    let path = dir.join("initrd.gz");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(&bytes))
        .expect("write");
    path
}

#[test]
fn preseed_is_appended_to_the_initrd_as_newc_cpio() {
    let tmp = tempfile::tempdir().expect("tmp");
    let initrd = gzip_cpio_initrd(tmp.path());
    let original = std::fs::read(&initrd).expect("read");
    let preseed =
        b"d-i debian-installer/locale string en_US\nd-i netcfg/get_hostname string web01\n"
            .to_vec();
    let out = tmp.path().join("initrd-seeded.gz");
    let size = append_to_initrd(
        &initrd,
        &out,
        &[
            SeedFile {
                name: "preseed.cfg".into(),
                data: preseed.clone(),
                mode: 0o644,
            },
            SeedFile {
                name: "corral/late.sh".into(),
                data: b"#!/bin/sh\n".to_vec(),
                mode: 0o755,
            },
        ],
    )
    .expect("append");
    let result = std::fs::read(&out).expect("read");
    assert_eq!(result.len() as u64, size);
    assert_eq!(
        &result[..original.len()],
        &original[..],
        "the original initrd is kept intact"
    );
    let tail_at = original.len().div_ceil(4) * 4;
    assert!(
        result[original.len()..tail_at].iter().all(|b| *b == 0),
        "zero padding only"
    );
    let tail = tmp.path().join("tail.cpio");
    std::fs::write(&tail, &result[tail_at..]).expect("write");

    let list = run(Command::new("sh")
        .arg("-c")
        .arg(format!("cpio -it --quiet < '{}'", tail.display())));
    let names: Vec<&str> = list.lines().collect();
    assert_eq!(
        names,
        vec!["preseed.cfg", "corral", "corral/late.sh"],
        "{list}"
    );
    let verbose = run(Command::new("sh")
        .arg("-c")
        .arg(format!("cpio -itv --quiet < '{}'", tail.display())));
    assert!(
        verbose
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("corral/late.sh")),
        "{verbose}"
    );
    let content = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cpio -i --to-stdout --quiet preseed.cfg < '{}'",
            tail.display()
        ))
        .output()
        .expect("cpio");
    assert_eq!(content.stdout, preseed);

    // The first archive is still a valid gzip'd cpio with the installer's own files.
    let first = run(Command::new("sh").arg("-c").arg(format!(
        "head -c {} '{}' | gzip -dc | cpio -it --quiet",
        original.len(),
        out.display()
    )));
    assert!(
        first.lines().any(|l| l.trim_start_matches("./") == "init"),
        "{first}"
    );

    // In place, and a missing initrd names the path.
    append_to_initrd(
        &out,
        &out,
        &[SeedFile {
            name: "ks.cfg".into(),
            data: b"text".to_vec(),
            mode: 0o644,
        }],
    )
    .expect("in place");
    let err = append_to_initrd(&tmp.path().join("nope.gz"), &out, &[]).expect_err("missing");
    assert!(err.to_string().contains("nope.gz"), "{err}");
}
