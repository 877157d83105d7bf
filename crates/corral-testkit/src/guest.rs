//! The project's test guest (built by `scripts/build-test-guest.sh` into
//! `~/.cache/corral/test-guest`, or `CORRAL_TEST_GUEST_DIR`): a Debian cloud kernel, a busybox
//! initramfs that prints [`MARKER`] on the serial console, and a bootable disk. Tests that
//! need it fail, never skip, when it is missing.

use std::path::PathBuf;

/// What the test guest prints on its serial console once booted.
pub const MARKER: &str = "CORRAL-GUEST-READY";

pub struct TestGuest {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub disk_qcow2: PathBuf,
}

/// Where the test guest is (whether or not it was built).
pub fn test_guest_dir() -> PathBuf {
    std::env::var_os("CORRAL_TEST_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".cache/corral/test-guest")
        })
}

/// The test guest; panics with the command that builds it when it is missing.
pub fn test_guest() -> TestGuest {
    let dir = test_guest_dir();
    let g = TestGuest {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        disk_qcow2: dir.join("disk.qcow2"),
        dir,
    };
    assert!(
        g.kernel.is_file() && g.initrd.is_file() && g.disk_qcow2.is_file(),
        "the test guest is missing in {}: run scripts/build-test-guest.sh (the README's test \
         command does) or set CORRAL_TEST_GUEST_DIR",
        g.dir.display()
    );
    g
}
