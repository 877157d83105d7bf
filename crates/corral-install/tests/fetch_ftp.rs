//! FTP fetcher against a real server (pyftpdlib, `tests/servers/ftp_server.py`, on 127.0.0.1).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

mod common;

use common::*;
use corral_install::fetch::{self, FetchError, FetchOptions};
use corral_install::templates::OsFamily;
use corral_install::tree::{detect, DetectError, DetectOptions, Layout};
use corral_install::SourceUrl;

fn url(port: u16, path: &str) -> SourceUrl {
    SourceUrl::parse(&format!("ftp://127.0.0.1:{port}/{path}")).expect("url")
}

#[test]
fn detects_and_downloads_over_ftp() {
    let trees = served_trees(&["debian-mirror", "corral-test-installer", "unknown-layout"]);
    let kernel = pattern((2 << 20) + 17);
    std::fs::write(
        trees.path().join("corral-test-installer/boot/vmlinuz"),
        &kernel,
    )
    .expect("write");
    let srv = ftp_server(trees.path());
    let opts = FetchOptions::default();

    let base = url(srv.port, "debian-mirror");
    let src = fetch::open(&base, &opts).expect("open");
    let d = detect(
        src.as_ref(),
        &base,
        &DetectOptions {
            family_hint: Some(OsFamily::Debian),
            ..Default::default()
        },
    )
    .expect("detect debian over ftp");
    assert_eq!(d.layout, Layout::DebianMirror);
    assert!(
        d.installer_args.contains("mirror/protocol=ftp"),
        "{}",
        d.installer_args
    );
    assert!(
        d.installer_args
            .contains(&format!("mirror/ftp/hostname=127.0.0.1:{}", srv.port)),
        "{}",
        d.installer_args
    );
    assert!(
        d.installer_args
            .contains("mirror/ftp/directory=/debian-mirror"),
        "{}",
        d.installer_args
    );
    assert!(
        d.probes
            .iter()
            .all(|p| p.request.starts_with("RETR ftp://127.0.0.1:")),
        "{:?}",
        d.probes
    );

    let base = url(srv.port, "corral-test-installer/");
    let src = fetch::open(&base, &opts).expect("open");
    let d = detect(src.as_ref(), &base, &DetectOptions::default()).expect("detect test installer");
    assert_eq!(d.os.family, OsFamily::CorralTest);
    let tmp = tempfile::tempdir().expect("tmp");
    let mut last = None;
    let n = src
        .fetch_to_file(&d.kernel_path, &tmp.path().join("k"), &mut |p| {
            last = Some(p);
            true
        })
        .expect("download");
    assert_eq!(n, kernel.len() as u64);
    assert_eq!(std::fs::read(tmp.path().join("k")).expect("read"), kernel);
    assert_eq!(
        last.and_then(|p| p.total_bytes),
        Some(kernel.len() as u64),
        "SIZE gives the total"
    );
    // The control connection is reused after a transfer and after a 550.
    let err = src
        .fetch_to_file("boot/nope", &tmp.path().join("n"), &mut |_| true)
        .expect_err("550");
    assert!(matches!(err, FetchError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("550"), "{err}");
    src.fetch_to_file(&d.initrd_path, &tmp.path().join("i"), &mut |_| true)
        .expect("initrd after 550");

    // Login with credentials; the password never shows.
    let base = SourceUrl::parse(&format!(
        "ftp://corral:s3cret@127.0.0.1:{}/corral-test-installer/",
        srv.port
    ))
    .expect("url");
    let src = fetch::open(&base, &opts).expect("open");
    let d = detect(src.as_ref(), &base, &DetectOptions::default()).expect("detect with login");
    assert!(
        d.probes.iter().all(|p| !p.request.contains("s3cret")),
        "{:?}",
        d.probes
    );
    let bad =
        SourceUrl::parse(&format!("ftp://corral:wrong@127.0.0.1:{}/", srv.port)).expect("url");
    let err = fetch::open(&bad, &opts)
        .expect("open")
        .fetch_to_file("x", &tmp.path().join("x"), &mut |_| true)
        .expect_err("login");
    assert!(err.to_string().contains("login failed: 530"), "{err}");
    assert!(!err.to_string().contains("wrong"), "{err}");

    // Unknown layout: every probe listed.
    let base = url(srv.port, "unknown-layout/");
    let src = fetch::open(&base, &opts).expect("open");
    let err = detect(src.as_ref(), &base, &DetectOptions::default()).expect_err("unknown");
    assert!(matches!(err, DetectError::NoInstallableTree { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "RETR ftp://127.0.0.1:{}/unknown-layout/.treeinfo → 550",
            srv.port
        )),
        "{msg}"
    );
    assert!(msg.contains("images/pxeboot/vmlinuz → 550"), "{msg}");
}

#[test]
fn ftp_unreachable_host() {
    let base = url(closed_port(), "x/");
    let src = fetch::open(&base, &FetchOptions::default()).expect("open");
    let err = detect(src.as_ref(), &base, &DetectOptions::default()).expect_err("refused");
    assert!(matches!(err, DetectError::ProbeFailed { .. }), "{err}");
    assert!(err.to_string().contains("unreachable"), "{err}");
}
