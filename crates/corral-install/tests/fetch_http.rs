//! HTTP fetcher against a real server (`python3 -m http.server` on 127.0.0.1).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

mod common;

use common::*;
use corral_install::fetch::{self, FetchError, FetchOptions};
use corral_install::templates::OsFamily;
use corral_install::tree::{detect, DetectError, DetectOptions, Layout};
use corral_install::SourceUrl;
use std::time::Duration;

fn url(port: u16, path: &str) -> SourceUrl {
    SourceUrl::parse(&format!("http://127.0.0.1:{port}/{path}")).expect("url")
}

#[test]
fn detects_and_downloads_over_http() {
    let trees = served_trees(&["debian-mirror", "rhel-treeinfo", "unknown-layout"]);
    let kernel = pattern(3 << 20);
    let kpath = trees.path().join("rhel-treeinfo/images/pxeboot/vmlinuz");
    std::fs::write(&kpath, &kernel).expect("write kernel");
    let srv = http_server(trees.path());
    let opts = FetchOptions::default();

    // Detection over the network.
    let base = url(srv.port, "debian-mirror/");
    let src = fetch::open(&base, &opts).expect("open");
    let d = detect(
        src.as_ref(),
        &base,
        &DetectOptions {
            family_hint: Some(OsFamily::Debian),
            ..Default::default()
        },
    )
    .expect("detect debian");
    assert_eq!(d.layout, Layout::DebianMirror);
    assert_eq!(d.os.codename.as_deref(), Some("bookworm"));
    assert!(
        d.installer_args
            .contains(&format!("mirror/http/hostname=127.0.0.1:{}", srv.port)),
        "{}",
        d.installer_args
    );
    assert!(
        d.installer_args
            .contains("mirror/http/directory=/debian-mirror"),
        "{}",
        d.installer_args
    );

    let base = url(srv.port, "rhel-treeinfo");
    let src = fetch::open(&base, &opts).expect("open");
    let d = detect(src.as_ref(), &base, &DetectOptions::default()).expect("detect rhel");
    assert_eq!(d.os.version, "9.2");
    assert_eq!(
        d.installer_args,
        format!("inst.repo=http://127.0.0.1:{}/rhel-treeinfo/", srv.port)
    );

    // Streaming download with progress.
    let out = tempfile::tempdir().expect("tmp");
    let dest = out.path().join("vmlinuz");
    let mut calls = Vec::new();
    let n = src
        .fetch_to_file(&d.kernel_path, &dest, &mut |p| {
            calls.push(p);
            true
        })
        .expect("download");
    assert_eq!(n, kernel.len() as u64);
    assert_eq!(std::fs::read(&dest).expect("read"), kernel);
    assert!(calls.len() > 1, "progress reported per chunk");
    let last = calls.last().expect("progress");
    assert_eq!(
        (last.done_bytes, last.total_bytes),
        (kernel.len() as u64, Some(kernel.len() as u64))
    );

    // The single-URL form.
    let one = url(srv.port, "rhel-treeinfo/images/pxeboot/vmlinuz");
    let dest2 = out.path().join("k2");
    fetch::fetch_to_file(&one, &dest2, &opts, &mut |_| true).expect("fetch_to_file");
    assert_eq!(
        std::fs::metadata(&dest2).expect("meta").len(),
        kernel.len() as u64
    );

    // 404.
    let err = src
        .fetch_to_file("images/pxeboot/nope", &out.path().join("x"), &mut |_| true)
        .expect_err("404");
    assert!(matches!(err, FetchError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("404"), "{err}");
    assert!(!out.path().join("x").exists());

    // Size cap: nothing is left behind.
    let small = FetchOptions {
        max_bytes: 1 << 20,
        ..FetchOptions::default()
    };
    let capped = fetch::open(&base, &small).expect("open");
    let err = capped
        .fetch_to_file(&d.kernel_path, &out.path().join("big"), &mut |_| true)
        .expect_err("cap");
    assert!(matches!(err, FetchError::TooLarge { .. }), "{err}");
    assert!(!out.path().join("big").exists());

    // Cancellation.
    let err = src
        .fetch_to_file(&d.kernel_path, &out.path().join("c"), &mut |_| false)
        .expect_err("cancel");
    assert!(matches!(err, FetchError::Cancelled { .. }), "{err}");
    assert!(!out.path().join("c").exists());
    let leftovers: Vec<_> = std::fs::read_dir(out.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        2,
        "only the two finished downloads remain: {leftovers:?}"
    );

    // A tree of unknown layout: every probe listed with the server's answer.
    let base = url(srv.port, "unknown-layout/");
    let src = fetch::open(&base, &opts).expect("open");
    let err = detect(src.as_ref(), &base, &DetectOptions::default()).expect_err("unknown");
    let msg = err.to_string();
    assert!(matches!(err, DetectError::NoInstallableTree { .. }));
    for p in [
        ".treeinfo",
        "treeinfo",
        "content",
        "dists/bookworm/Release",
        ".disk/info",
        "images/pxeboot/vmlinuz",
    ] {
        assert!(
            msg.contains(&format!(
                "GET http://127.0.0.1:{}/unknown-layout/{p} → 404",
                srv.port
            )),
            "{p} not in {msg}"
        );
    }
}

#[test]
fn unreachable_host_and_timeouts_are_told_apart() {
    let port = closed_port();
    let base = url(port, "tree/");
    let opts = FetchOptions {
        connect_timeout: Duration::from_secs(2),
        io_timeout: Duration::from_secs(1),
        ..FetchOptions::default()
    };
    let src = fetch::open(&base, &opts).expect("open");
    let err = detect(src.as_ref(), &base, &DetectOptions::default()).expect_err("refused");
    let msg = err.to_string();
    assert!(matches!(err, DetectError::ProbeFailed { .. }), "{msg}");
    assert_eq!(err.probes().len(), 1, "stops at the first failure: {msg}");
    assert!(msg.contains("unreachable"), "{msg}");
    assert!(msg.to_lowercase().contains("refused"), "{msg}");
    let err = src
        .fetch_to_file("x", &std::env::temp_dir().join("corral-never"), &mut |_| {
            true
        })
        .expect_err("refused");
    assert!(matches!(err, FetchError::Unreachable { .. }), "{err}");

    let (_listener, silent) = silent_server();
    let base = url(silent, "tree/");
    let src = fetch::open(&base, &opts).expect("open");
    let err = src
        .fetch_to_file(
            "vmlinuz",
            &std::env::temp_dir().join("corral-never"),
            &mut |_| true,
        )
        .expect_err("timeout");
    assert!(matches!(err, FetchError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("timed out after 1 s"), "{err}");

    let err = fetch::open(
        &SourceUrl::parse("http://no-such-host.invalid/").expect("url"),
        &opts,
    )
    .expect("open")
    .fetch_to_file("x", &std::env::temp_dir().join("corral-never"), &mut |_| {
        true
    })
    .expect_err("dns");
    assert!(matches!(err, FetchError::Resolve { .. }), "{err}");
    assert!(err.to_string().contains("no-such-host.invalid"), "{err}");
}

/// The real Debian installer laid out as a mirror (tests/servers/debian_mirror.sh, from the
/// debian-installer-12-netboot-amd64 package), detected and fetched over HTTP.
#[test]
fn real_debian_installer_mirror_over_http() {
    let cache = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/corral/debian-mirror");
    let out = std::process::Command::new("sh")
        .arg(crate_dir().join("tests/servers/debian_mirror.sh"))
        .arg(&cache)
        .output()
        .expect("run debian_mirror.sh");
    assert!(
        out.status.success(),
        "debian_mirror.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let srv = http_server(&cache);
    let base = url(srv.port, "");
    let src = fetch::open(&base, &FetchOptions::default()).expect("open");
    let opts = DetectOptions {
        family_hint: Some(OsFamily::Debian),
        suite_hints: vec!["bookworm".into()],
        guest_url: Some(SourceUrl::parse(&format!("http://10.0.2.2:{}/", srv.port)).expect("url")),
        ..Default::default()
    };
    let d = detect(src.as_ref(), &base, &opts).expect("detect");
    assert_eq!(d.layout, Layout::DebianMirror);
    assert_eq!(d.os.name, "Debian");
    assert_eq!(d.os.codename.as_deref(), Some("bookworm"));
    assert!(
        d.installer_args
            .contains(&format!("mirror/http/hostname=10.0.2.2:{}", srv.port)),
        "{}",
        d.installer_args
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let k = tmp.path().join("linux");
    let i = tmp.path().join("initrd.gz");
    src.fetch_to_file(&d.kernel_path, &k, &mut |_| true)
        .expect("kernel");
    src.fetch_to_file(&d.initrd_path, &i, &mut |_| true)
        .expect("initrd");
    let kernel = std::fs::read(&k).expect("read");
    assert_eq!(&kernel[0x202..0x206], b"HdrS", "a bzImage");
    let initrd = std::fs::read(&i).expect("read");
    assert_eq!(&initrd[..2], &[0x1f, 0x8b], "a gzip initrd");
}
