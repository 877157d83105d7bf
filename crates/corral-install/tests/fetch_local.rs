//! Local directories (`file://` and plain paths) as install sources.

mod common;

use common::*;
use corral_install::fetch::{self, FetchError, FetchOptions};
use corral_install::templates::OsFamily;
use corral_install::tree::{detect, DetectOptions, Layout};
use corral_install::SourceUrl;

#[test]
fn detects_and_copies_from_a_local_tree() {
    let trees = served_trees(&["corral-test-installer-productmd", "suse-content"]);
    let root = trees.path().join("corral-test-installer-productmd");
    for text in [
        root.display().to_string(),
        format!("file://{}", root.display()),
    ] {
        let url = SourceUrl::parse(&text).expect("url");
        let src = fetch::open(&url, &FetchOptions::default()).expect("open");
        let d = detect(src.as_ref(), &url, &DetectOptions::default()).expect("detect");
        assert_eq!(d.os.family, OsFamily::CorralTest, "{text}");
        assert_eq!(d.layout, Layout::Treeinfo);
        assert!(d.probes[0].request.starts_with("read /"), "{:?}", d.probes);
        assert!(
            d.notes.iter().any(|n| n.contains("local directory")),
            "{:?}",
            d.notes
        );
        let tmp = tempfile::tempdir().expect("tmp");
        let n = src
            .fetch_to_file(&d.kernel_path, &tmp.path().join("k"), &mut |_| true)
            .expect("copy");
        assert_eq!(
            n,
            std::fs::metadata(root.join(&d.kernel_path))
                .expect("meta")
                .len()
        );
        let err = src
            .fetch_to_file("images", &tmp.path().join("d"), &mut |_| true)
            .expect_err("dir");
        assert!(matches!(err, FetchError::NotFound { .. }), "{err}");
    }
    let url =
        SourceUrl::parse(&trees.path().join("suse-content").display().to_string()).expect("url");
    let src = fetch::open(&url, &FetchOptions::default()).expect("open");
    let d = detect(src.as_ref(), &url, &DetectOptions::default()).expect("detect suse");
    assert_eq!(d.layout, Layout::SuseContent);
}
