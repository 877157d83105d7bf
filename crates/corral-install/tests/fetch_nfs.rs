//! NFS fetcher (libnfs's nfs-cat, user space) against a real NFSv3 server: nfs-ganesha
//! started by `tests/servers/nfs_server.sh` (needs root for rpcbind; see docs/install.md).

mod common;

use common::*;
use corral_install::fetch::{self, FetchError, FetchOptions};
use corral_install::templates::OsFamily;
use corral_install::tree::{detect, DetectError, DetectOptions, Layout};
use corral_install::SourceUrl;

#[test]
fn detects_and_downloads_over_nfs() {
    let trees = served_trees(&["rhel-treeinfo", "corral-test-installer", "unknown-layout"]);
    let initrd = pattern((5 << 20) + 3);
    std::fs::write(
        trees.path().join("rhel-treeinfo/images/pxeboot/initrd.img"),
        &initrd,
    )
    .expect("write");
    let work = tempfile::tempdir().expect("work");
    let export = trees.path().to_path_buf();
    let _srv = nfs_server(&export, work.path());
    let opts = FetchOptions::default();
    let nfs = |sub: &str| {
        SourceUrl::parse(&format!("nfs://127.0.0.1{}/{sub}", export.display())).expect("url")
    };

    let base = nfs("rhel-treeinfo");
    let src = fetch::open(&base, &opts).expect("open");
    let d = detect(
        src.as_ref(),
        &base,
        &DetectOptions {
            unattended: corral_install::tree::Unattended::InInitrd,
            ..Default::default()
        },
    )
    .expect("detect rhel over nfs");
    assert_eq!(d.layout, Layout::Treeinfo);
    assert_eq!(d.os.family, OsFamily::Rhel);
    assert_eq!(
        d.installer_args,
        format!(
            "inst.repo=nfs:127.0.0.1:{}/rhel-treeinfo inst.ks=file:/ks.cfg",
            export.display()
        )
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let mut calls = 0;
    let n = src
        .fetch_to_file(&d.initrd_path, &tmp.path().join("initrd.img"), &mut |_| {
            calls += 1;
            true
        })
        .expect("download initrd");
    assert_eq!(n, initrd.len() as u64);
    assert_eq!(
        std::fs::read(tmp.path().join("initrd.img")).expect("read"),
        initrd
    );
    assert!(calls > 1);

    let base = nfs("corral-test-installer/");
    let src = fetch::open(&base, &opts).expect("open");
    let d = detect(src.as_ref(), &base, &DetectOptions::default()).expect("detect test installer");
    assert_eq!(d.os.family, OsFamily::CorralTest);
    assert!(
        d.installer_args
            .starts_with("corral.install=nfs://127.0.0.1/"),
        "{}",
        d.installer_args
    );

    let err = src
        .fetch_to_file("boot/nope", &tmp.path().join("n"), &mut |_| true)
        .expect_err("missing");
    assert!(matches!(err, FetchError::NotFound { .. }), "{err}");
    assert!(!tmp.path().join("n").exists());

    let base = nfs("unknown-layout/");
    let src = fetch::open(&base, &opts).expect("open");
    let err = detect(src.as_ref(), &base, &DetectOptions::default()).expect_err("unknown");
    assert!(
        matches!(err, DetectError::NoInstallableTree { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("/unknown-layout/.treeinfo → NFS3ERR_NOENT"),
        "{err}"
    );

    // A path outside the export is refused by the server, and the error says so.
    let outside = SourceUrl::parse("nfs://127.0.0.1/etc/").expect("url");
    let src = fetch::open(&outside, &opts).expect("open");
    let err = detect(src.as_ref(), &outside, &DetectOptions::default()).expect_err("not exported");
    assert!(matches!(err, DetectError::ProbeFailed { .. }), "{err}");
    assert!(
        err.to_string().contains("does not export this path"),
        "{err}"
    );
}
