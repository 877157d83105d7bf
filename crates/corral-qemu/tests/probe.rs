//! The accelerator probe against real QEMU: the embedded boot sector and the test guest's
//! kernel really print their markers (checked under TCG, which works everywhere), and the
//! KVM probe returns a verdict with a reason whatever the host's KVM is like.

mod common;

use std::time::Duration;

use common::{qemu, test_guest};
use corral_model::host::Accelerator;
use corral_qemu::probe::{self, ProbeError, ProbeGuest};

/// Generous: TCG on two shared cores under load.
const TCG_TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn boot_sector_prints_its_marker_under_tcg() {
    let took = probe::boot_probe_guest(
        &qemu(),
        Accelerator::Tcg,
        ProbeGuest::BootSector,
        TCG_TIMEOUT,
    )
    .await
    .expect("boot sector under TCG");
    assert!(took < TCG_TIMEOUT);
}

#[tokio::test]
async fn test_guest_kernel_prints_its_marker_under_tcg() {
    let guest = test_guest();
    probe::boot_probe_guest(
        &qemu(),
        Accelerator::Tcg,
        ProbeGuest::Kernel {
            kernel: &guest.kernel,
            initrd: &guest.initrd,
        },
        TCG_TIMEOUT,
    )
    .await
    .expect("test guest kernel under TCG");
}

#[tokio::test]
async fn a_guest_that_cannot_boot_is_reported_with_qemus_words() {
    // Not a kernel: QEMU refuses it (or the guest never prints CORRAL-GUEST-READY), and the
    // probe must say so rather than hang or pass.
    let dir = tempfile::tempdir().expect("tempdir");
    let not_a_kernel = dir.path().join("not-a-kernel");
    std::fs::write(&not_a_kernel, b"garbage").expect("write");
    let err = probe::boot_probe_guest(
        &qemu(),
        Accelerator::Tcg,
        ProbeGuest::Kernel {
            kernel: &not_a_kernel,
            initrd: &not_a_kernel,
        },
        Duration::from_secs(20),
    )
    .await
    .expect_err("garbage kernel must not pass");
    match &err {
        ProbeError::Exited { stderr, .. } => assert!(!stderr.is_empty(), "{err}"),
        ProbeError::NoMarker { .. } => {}
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("tcg probe kernel"), "{err}");
}

#[tokio::test]
async fn probe_gives_a_verdict_with_a_reason() {
    let guest = test_guest();
    let info = probe::probe_accelerator(
        &qemu(),
        Some((&guest.kernel, &guest.initrd)),
        probe::DEFAULT_PROBE_TIMEOUT,
    )
    .await;
    assert!(info.reason.starts_with("probe: "), "{info:?}");
    match info.name {
        Accelerator::Kvm => assert!(info.reason.contains("under KVM in"), "{info:?}"),
        Accelerator::Tcg => assert!(info.reason.contains("kvm"), "{info:?}"),
    }
    eprintln!("accelerator verdict: {info:?}");
}

#[tokio::test]
async fn cached_probe_reuses_the_verdict() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("accel.json");
    let plan = probe::default_probe_plan(None);
    let first =
        probe::probe_accelerator_cached(&cache, &qemu(), &plan, probe::DEFAULT_PROBE_TIMEOUT).await;
    if probe::check_kvm_device().is_err() {
        // Without a usable /dev/kvm nothing is booted and nothing is cached.
        assert_eq!(first.name, Accelerator::Tcg);
        assert!(!cache.exists());
        return;
    }
    assert!(cache.exists(), "verdict not cached: {first:?}");
    let second =
        probe::probe_accelerator_cached(&cache, &qemu(), &plan, probe::DEFAULT_PROBE_TIMEOUT).await;
    assert_eq!(second.name, first.name);
    assert!(second.reason.contains("(cached; delete "), "{second:?}");
    // The key names the guest: a verdict for the boot sector is not reused for a kernel.
    let text = std::fs::read_to_string(&cache).expect("cache");
    assert!(text.contains(&plan.identity()), "{text}");
}
