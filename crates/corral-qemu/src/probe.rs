//! Choosing the accelerator by experiment: KVM only if a guest really boots under it.
//!
//! The presence of `/dev/kvm` proves little: on nested or software KVM backends a stock Linux
//! kernel hangs or dies with "KVM internal error" while `/dev/kvm` opens fine. So
//! [`probe_accelerator`] first checks the device (absent, not openable, wrong API version:
//! TCG at once), then boots a small guest under KVM with a timeout and waits for its marker
//! on the serial port:
//! - with `probe_kernel` (a kernel and initrd whose init prints `CORRAL-GUEST-READY` on
//!   ttyS0, like the project's test guest) that kernel boots; this is the trustworthy probe;
//! - a host kernel (`/boot/vmlinuz-$(uname -r)`) booted without an initrd: reaching the
//!   panic for its missing root file system (`Kernel panic - not syncing`) proves that KVM
//!   carried Linux through decompression, paging, interrupts and the timer;
//! - as a last resort, a 512-byte boot sector embedded in this crate (`probe/guest.S`) runs
//!   through SeaBIOS, real mode, 32-bit protected mode, paging and 64-bit long mode and prints
//!   `CORRAL-PROBE-READY`. It catches a missing or broken KVM, but not every failure a full
//!   kernel meets (on the development machines it passes where Linux hangs right after its
//!   real-mode setup code), so its verdict is reported as weak ("probe: boot sector only").
//!
//! [`plan_probe`] picks the strongest guest available: `--probe-kernel/--probe-initrd`, else
//! the cached test guest, else the host's kernel, else the boot sector.
//!
//! Any failure means TCG, with the reason kept for `corral host info`. Probing costs a few
//! seconds, so [`probe_accelerator_cached`] remembers the verdict per QEMU version, host
//! kernel release and probe guest (kind, path, size and modification time).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use corral_model::host::{Accelerator, AcceleratorInfo};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::argv::{escape_opt, KVM_CPU, TCG_CPU};

/// The embedded boot sector (source: `src/probe/guest.S`).
pub const PROBE_BOOT_SECTOR: &[u8; 512] = include_bytes!("probe/guest.bin");
/// What the boot sector prints once in long mode.
pub const PROBE_MARKER: &str = "CORRAL-PROBE-READY";
/// What the test guest's init prints on ttyS0.
pub const GUEST_MARKER: &str = "CORRAL-GUEST-READY";
/// What a host kernel booted without an initrd prints once it gave up finding its root.
pub const HOST_KERNEL_MARKER: &str = "Kernel panic - not syncing";
/// A sensible probe timeout: the test guest needs 2-3 s under TCG, far less under KVM.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(8);
/// Serial output kept for error messages.
const SERIAL_KEEP: usize = 64 * 1024;
const KVM_DEVICE: &str = "/dev/kvm";

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{KVM_DEVICE} does not exist")]
    NoKvmDevice,
    #[error("cannot open {KVM_DEVICE}")]
    OpenKvm(#[source] std::io::Error),
    #[error("{KVM_DEVICE} reports API version {0}, expected 12")]
    KvmApiVersion(i32),
    #[error("cannot prepare the probe guest")]
    Prepare(#[source] std::io::Error),
    #[error("cannot run {qemu:?}")]
    Spawn {
        qemu: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{guest} did not print its marker within {after:?}{}",
        detail(serial, stderr)
    )]
    NoMarker {
        guest: String,
        after: Duration,
        serial: String,
        stderr: String,
    },
    #[error(
        "QEMU exited ({status}) before the {guest} printed its marker{}",
        detail(serial, stderr)
    )]
    Exited {
        guest: String,
        status: String,
        serial: String,
        stderr: String,
    },
}

fn detail(serial: &str, stderr: &str) -> String {
    let mut out = String::new();
    if stderr.contains("KVM internal error") {
        out.push_str(" (KVM internal error)");
    }
    if !stderr.is_empty() {
        out.push_str(&format!("; QEMU said: {stderr}"));
    }
    let last = serial.lines().rev().find(|l| !l.trim().is_empty());
    if let Some(line) = last {
        out.push_str(&format!("; last console line: {:?}", line.trim()));
    }
    out
}

/// What the probe boots.
#[derive(Debug, Clone, Copy)]
pub enum ProbeGuest<'a> {
    /// The embedded boot sector.
    BootSector,
    /// A kernel and initrd that print [`GUEST_MARKER`] on ttyS0.
    Kernel { kernel: &'a Path, initrd: &'a Path },
    /// A stock kernel without initrd: it panics for want of a root file system
    /// ([`HOST_KERNEL_MARKER`]).
    HostKernel { kernel: &'a Path },
}

impl ProbeGuest<'_> {
    fn describe(&self) -> &'static str {
        match self {
            ProbeGuest::BootSector => "probe boot sector",
            ProbeGuest::Kernel { .. } => "probe kernel",
            ProbeGuest::HostKernel { .. } => "host kernel",
        }
    }
    fn marker(&self) -> &'static str {
        match self {
            ProbeGuest::BootSector => PROBE_MARKER,
            ProbeGuest::Kernel { .. } => GUEST_MARKER,
            ProbeGuest::HostKernel { .. } => HOST_KERNEL_MARKER,
        }
    }
}

/// Where the probe guest of a [`ProbePlan`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeSource {
    /// `--probe-kernel/--probe-initrd` (or `probe_kernel`/`probe_initrd` in corral.toml).
    Configured,
    /// The project's test guest in the user's cache (`scripts/build-test-guest.sh`).
    TestGuest,
    /// `/boot/vmlinuz-$(uname -r)`.
    HostKernel,
    /// Nothing better: the embedded boot sector.
    BootSector,
}

/// What the probe will boot, chosen by [`plan_probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePlan {
    pub source: ProbeSource,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
}

impl ProbePlan {
    fn guest(&self) -> ProbeGuest<'_> {
        match (&self.kernel, &self.initrd) {
            (Some(kernel), Some(initrd)) => ProbeGuest::Kernel { kernel, initrd },
            (Some(kernel), None) => ProbeGuest::HostKernel { kernel },
            _ => ProbeGuest::BootSector,
        }
    }

    /// Human words for the guest: "cached test guest /root/.cache/corral/test-guest/vmlinuz".
    pub fn describe(&self) -> String {
        let what = match self.source {
            ProbeSource::Configured => "configured probe kernel",
            ProbeSource::TestGuest => "cached test guest",
            ProbeSource::HostKernel => "host kernel",
            ProbeSource::BootSector => return "boot sector only".into(),
        };
        match &self.kernel {
            Some(k) => format!("{what} {}", k.display()),
            None => what.into(),
        }
    }

    /// The guest's identity for the cache key: kind, path, size and modification time, so a
    /// rebuilt or different kernel is probed again.
    pub fn identity(&self) -> String {
        let kind = match self.source {
            ProbeSource::Configured => "configured",
            ProbeSource::TestGuest => "test-guest",
            ProbeSource::HostKernel => "host-kernel",
            ProbeSource::BootSector => return "boot-sector".into(),
        };
        let mut out = kind.to_string();
        for p in self.kernel.iter().chain(self.initrd.iter()) {
            let (size, mtime) = std::fs::metadata(p)
                .map(|m| {
                    let mtime = m
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    (m.len(), mtime)
                })
                .unwrap_or((0, 0));
            out.push_str(&format!(" {} ({size} bytes, mtime {mtime})", p.display()));
        }
        out
    }
}

fn readable(p: &Path) -> bool {
    p.is_file() && std::fs::File::open(p).is_ok()
}

/// The test guest's cache directory: `$CORRAL_TEST_GUEST_DIR`, else
/// `$XDG_CACHE_HOME/corral/test-guest`, else `~/.cache/corral/test-guest`.
pub fn test_guest_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var("CORRAL_TEST_GUEST_DIR") {
        return Some(d);
    }
    if let Some(d) = var("XDG_CACHE_HOME") {
        return Some(d.join("corral/test-guest"));
    }
    var("HOME").map(|h| h.join(".cache/corral/test-guest"))
}

/// Choose the strongest probe guest available: the configured kernel and initrd, else the
/// test guest in `test_guest` (a directory with `vmlinuz` and `initrd.img`), else
/// `boot_dir/vmlinuz-<kernel_release>`, else the boot sector. Unreadable candidates are
/// skipped (an agent not running as root cannot read Debian's `/boot/vmlinuz-*`).
pub fn plan_probe(
    configured: Option<(&Path, &Path)>,
    test_guest: Option<&Path>,
    boot_dir: &Path,
    kernel_release: &str,
) -> ProbePlan {
    if let Some((k, i)) = configured {
        return ProbePlan {
            source: ProbeSource::Configured,
            kernel: Some(k.to_path_buf()),
            initrd: Some(i.to_path_buf()),
        };
    }
    if let Some(dir) = test_guest {
        let (k, i) = (dir.join("vmlinuz"), dir.join("initrd.img"));
        if readable(&k) && readable(&i) {
            return ProbePlan {
                source: ProbeSource::TestGuest,
                kernel: Some(k),
                initrd: Some(i),
            };
        }
    }
    let host = boot_dir.join(format!("vmlinuz-{kernel_release}"));
    if !kernel_release.is_empty() && readable(&host) {
        return ProbePlan {
            source: ProbeSource::HostKernel,
            kernel: Some(host),
            initrd: None,
        };
    }
    ProbePlan {
        source: ProbeSource::BootSector,
        kernel: None,
        initrd: None,
    }
}

/// [`plan_probe`] with this host's defaults: the test guest from [`test_guest_dir`], `/boot`
/// and the running kernel's release.
pub fn default_probe_plan(configured: Option<(&Path, &Path)>) -> ProbePlan {
    plan_probe(
        configured,
        test_guest_dir().as_deref(),
        Path::new("/boot"),
        &host_kernel_release(),
    )
}

/// Check that `/dev/kvm` exists, opens read-write and speaks KVM API 12.
pub fn check_kvm_device() -> Result<(), ProbeError> {
    use std::os::fd::AsRawFd;
    if !Path::new(KVM_DEVICE).exists() {
        return Err(ProbeError::NoKvmDevice);
    }
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(KVM_DEVICE)
        .map_err(ProbeError::OpenKvm)?;
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int.
    let version = unsafe { libc::ioctl(dev.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if version != 12 {
        return Err(ProbeError::KvmApiVersion(version));
    }
    Ok(())
}

/// Boot `guest` under `accel` and wait at most `timeout` for its marker on the serial port.
/// Returns how long it took. QEMU is killed as soon as the marker appears.
pub async fn boot_probe_guest(
    qemu: &Path,
    accel: Accelerator,
    guest: ProbeGuest<'_>,
    timeout: Duration,
) -> Result<Duration, ProbeError> {
    let dir = tempfile::Builder::new()
        .prefix("corral-probe-")
        .tempdir()
        .map_err(ProbeError::Prepare)?;
    let mut args: Vec<String> = vec![
        "-machine".into(),
        "q35".into(),
        "-accel".into(),
        accel.as_str().into(),
        "-cpu".into(),
        match accel {
            Accelerator::Kvm => KVM_CPU.into(),
            Accelerator::Tcg => TCG_CPU.into(),
        },
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-m".into(),
        "256".into(),
        "-no-reboot".into(),
        "-serial".into(),
        "stdio".into(),
    ];
    match guest {
        ProbeGuest::BootSector => {
            let image = dir.path().join("probe.img");
            let mut f = std::fs::File::create(&image).map_err(ProbeError::Prepare)?;
            f.write_all(PROBE_BOOT_SECTOR)
                .map_err(ProbeError::Prepare)?;
            // SeaBIOS will not boot a disk smaller than a cylinder.
            f.set_len(1 << 20).map_err(ProbeError::Prepare)?;
            let image = image.to_str().ok_or_else(|| {
                ProbeError::Prepare(std::io::Error::other("temporary directory is not UTF-8"))
            })?;
            args.extend([
                "-blockdev".into(),
                format!(
                    "driver=file,node-name=probe-file,filename={}",
                    escape_opt(image)
                ),
                "-blockdev".into(),
                "driver=raw,node-name=probe,file=probe-file".into(),
                "-device".into(),
                "ide-hd,drive=probe,bus=ide.0,bootindex=1".into(),
            ]);
        }
        ProbeGuest::Kernel { kernel, initrd } => {
            args.extend([
                "-kernel".into(),
                kernel.display().to_string(),
                "-initrd".into(),
                initrd.display().to_string(),
                "-append".into(),
                "console=ttyS0 panic=-1".into(),
            ]);
        }
        ProbeGuest::HostKernel { kernel } => {
            args.extend([
                "-kernel".into(),
                kernel.display().to_string(),
                "-append".into(),
                "console=ttyS0 panic=-1".into(),
            ]);
        }
    }
    let mut child = tokio::process::Command::new(qemu)
        .args(&args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ProbeError::Spawn {
            qemu: qemu.to_path_buf(),
            source,
        })?;
    let stderr_task = child.stderr.take().map(|mut e| {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = e.read_to_end(&mut buf).await;
            String::from_utf8_lossy(&buf).trim().to_string()
        })
    });
    let mut stdout = child.stdout.take();
    let started = Instant::now();
    let marker = guest.marker().as_bytes();
    let mut serial: Vec<u8> = Vec::new();
    let watch = async {
        let Some(out) = stdout.as_mut() else {
            return false;
        };
        let mut chunk = [0u8; 4096];
        loop {
            match out.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => {
                    serial.extend_from_slice(&chunk[..n]);
                    if serial.windows(marker.len()).any(|w| w == marker) {
                        return true;
                    }
                    if serial.len() > SERIAL_KEEP {
                        serial.drain(..serial.len() - SERIAL_KEEP);
                    }
                }
            }
        }
    };
    let outcome = tokio::time::timeout(timeout, watch).await;
    let elapsed = started.elapsed();
    let _ = child.start_kill();
    let status = child.wait().await;
    let stderr = match stderr_task {
        Some(t) => t.await.unwrap_or_default(),
        None => String::new(),
    };
    let serial = String::from_utf8_lossy(&serial).into_owned();
    // Only QEMU's own messages matter; the kill itself produces "terminating on signal".
    let stderr: String = stderr
        .lines()
        .filter(|l| !l.contains("terminating on signal"))
        .collect::<Vec<_>>()
        .join("; ");
    let name = format!("{} {}", accel.as_str(), guest.describe());
    match outcome {
        Ok(true) => Ok(elapsed),
        Ok(false) => Err(ProbeError::Exited {
            guest: name,
            status: status
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string()),
            serial,
            stderr,
        }),
        Err(_) => Err(ProbeError::NoMarker {
            guest: name,
            after: timeout,
            serial,
            stderr,
        }),
    }
}

/// Decide between KVM and TCG (see the module documentation). Never fails: every problem
/// is a reason to use TCG.
pub async fn probe_accelerator(
    qemu: &Path,
    probe_kernel: Option<(&Path, &Path)>,
    timeout: Duration,
) -> AcceleratorInfo {
    if let Err(e) = check_kvm_device() {
        return tcg(format!("probe: {e}"));
    }
    let plan = match probe_kernel {
        Some(_) => plan_probe(probe_kernel, None, Path::new("/nonexistent"), ""),
        None => ProbePlan {
            source: ProbeSource::BootSector,
            kernel: None,
            initrd: None,
        },
    };
    probe_with_plan(qemu, &plan, timeout).await
}

/// Boot `plan`'s guest under KVM and turn the outcome into a verdict whose reason names the
/// guest; a boot-sector-only verdict says it is weak.
pub async fn probe_with_plan(qemu: &Path, plan: &ProbePlan, timeout: Duration) -> AcceleratorInfo {
    let guest = plan.guest();
    let weak = if plan.source == ProbeSource::BootSector {
        "probe: boot sector only, no Linux kernel to boot (give --probe-kernel/--probe-initrd, \
         build the test guest or make /boot/vmlinuz-$(uname -r) readable); "
    } else {
        "probe: "
    };
    match boot_probe_guest(qemu, Accelerator::Kvm, guest, timeout).await {
        Ok(took) => AcceleratorInfo {
            name: Accelerator::Kvm,
            reason: format!(
                "{weak}{} printed {:?} under KVM in {} ms",
                plan.describe(),
                guest.marker(),
                took.as_millis()
            ),
        },
        Err(e) => {
            tracing::warn!(error = %e, guest = %plan.describe(), "KVM probe failed; using TCG");
            tcg(format!("{weak}{}: {e}", plan.describe()))
        }
    }
}

fn tcg(reason: String) -> AcceleratorInfo {
    AcceleratorInfo {
        name: Accelerator::Tcg,
        reason,
    }
}

/// The host kernel release (`uname -r`), part of the cache key.
pub fn host_kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The cache key for a probe verdict: the QEMU version, the host kernel, the probe guest
/// ([`ProbePlan::identity`]).
pub fn probe_cache_key(qemu_version: &str, kernel_release: &str, guest: &str) -> String {
    format!("qemu {qemu_version}; host kernel {kernel_release}; probe {guest}")
}

#[derive(Debug, Serialize, Deserialize)]
struct CacheEntry {
    key: String,
    info: AcceleratorInfo,
}

/// A verdict cached under `key` in `path`, if there is one.
pub fn load_cached_probe(path: &Path, key: &str) -> Option<AcceleratorInfo> {
    let text = std::fs::read_to_string(path).ok()?;
    let entry: CacheEntry = serde_json::from_str(&text).ok()?;
    (entry.key == key).then_some(entry.info)
}

/// Store a verdict (atomically: write a sibling file, then rename).
pub fn store_cached_probe(path: &Path, key: &str, info: &AcceleratorInfo) -> std::io::Result<()> {
    let entry = CacheEntry {
        key: key.to_string(),
        info: info.clone(),
    };
    let text = serde_json::to_string_pretty(&entry).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Probe with `plan`, reusing the verdict stored in `cache` when QEMU version, host kernel
/// and probe guest are unchanged. An unusable `/dev/kvm` is checked every time (cheap) and
/// never cached.
pub async fn probe_accelerator_cached(
    cache: &Path,
    qemu: &Path,
    plan: &ProbePlan,
    timeout: Duration,
) -> AcceleratorInfo {
    if let Err(e) = check_kvm_device() {
        return tcg(format!("probe: {e}"));
    }
    let version = match crate::process::qemu_version(qemu).await {
        Ok(v) => v.to_string(),
        Err(e) => return tcg(format!("probe: {e}")),
    };
    let key = probe_cache_key(&version, &host_kernel_release(), &plan.identity());
    if let Some(mut info) = load_cached_probe(cache, &key) {
        info.reason = format!(
            "{} (cached; delete {} to probe again)",
            info.reason,
            cache.display()
        );
        return info;
    }
    let info = probe_with_plan(qemu, plan, timeout).await;
    if let Err(e) = store_cached_probe(cache, &key, &info) {
        tracing::warn!(error = %e, cache = %cache.display(), "cannot cache the accelerator probe");
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_sector_is_bootable() {
        assert_eq!(&PROBE_BOOT_SECTOR[510..], &[0x55, 0xaa]);
        let text = String::from_utf8_lossy(PROBE_BOOT_SECTOR);
        assert!(text.contains(PROBE_MARKER));
    }

    #[test]
    fn cache_round_trip_and_key_mismatch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("accel.json");
        let key = probe_cache_key(
            "7.2.22",
            "6.1.0-1",
            "test-guest /g/vmlinuz (1 bytes, mtime 2)",
        );
        assert!(load_cached_probe(&path, &key).is_none());
        let info = tcg("probe: kvm probe kernel did not print its marker within 8s".into());
        store_cached_probe(&path, &key, &info).expect("store");
        assert_eq!(load_cached_probe(&path, &key), Some(info));
        let other = probe_cache_key(
            "8.0.0",
            "6.1.0-1",
            "test-guest /g/vmlinuz (1 bytes, mtime 2)",
        );
        assert!(load_cached_probe(&path, &other).is_none());
        let other_guest = probe_cache_key("7.2.22", "6.1.0-1", "boot-sector");
        assert!(load_cached_probe(&path, &other_guest).is_none());
        std::fs::write(&path, "not json").expect("write");
        assert!(load_cached_probe(&path, &key).is_none());
    }

    #[test]
    fn plan_prefers_configured_then_test_guest_then_host_kernel() {
        let dir = tempfile::tempdir().expect("tempdir");
        let guest = dir.path().join("guest");
        let boot = dir.path().join("boot");
        std::fs::create_dir_all(&guest).expect("mkdir");
        std::fs::create_dir_all(&boot).expect("mkdir");
        let none = plan_probe(None, Some(&guest), &boot, "6.1.0-9-amd64");
        assert_eq!(none.source, ProbeSource::BootSector);
        assert_eq!(none.describe(), "boot sector only");
        assert_eq!(none.identity(), "boot-sector");

        std::fs::write(boot.join("vmlinuz-6.1.0-9-amd64"), b"k").expect("write");
        let host = plan_probe(None, Some(&guest), &boot, "6.1.0-9-amd64");
        assert_eq!(host.source, ProbeSource::HostKernel);
        assert_eq!(host.initrd, None);
        assert!(
            host.identity().starts_with("host-kernel "),
            "{}",
            host.identity()
        );
        // Another release's kernel is not this host's.
        let other = plan_probe(None, Some(&guest), &boot, "6.1.0-10-amd64");
        assert_eq!(other.source, ProbeSource::BootSector);

        // Half a test guest does not count.
        std::fs::write(guest.join("vmlinuz"), b"kk").expect("write");
        let half = plan_probe(None, Some(&guest), &boot, "6.1.0-9-amd64");
        assert_eq!(half.source, ProbeSource::HostKernel);
        std::fs::write(guest.join("initrd.img"), b"i").expect("write");
        let tg = plan_probe(None, Some(&guest), &boot, "6.1.0-9-amd64");
        assert_eq!(tg.source, ProbeSource::TestGuest);
        assert!(
            tg.describe().starts_with("cached test guest "),
            "{}",
            tg.describe()
        );
        assert_ne!(tg.identity(), host.identity());

        let (k, i) = (dir.path().join("k"), dir.path().join("i"));
        let conf = plan_probe(Some((&k, &i)), Some(&guest), &boot, "6.1.0-9-amd64");
        assert_eq!(conf.source, ProbeSource::Configured);
        assert_eq!(conf.kernel.as_deref(), Some(k.as_path()));
    }

    #[test]
    fn failure_messages_say_what_happened() {
        let e = ProbeError::NoMarker {
            guest: "kvm probe kernel".into(),
            after: Duration::from_secs(8),
            serial: "Probing EDD (edd=off to disable)... ok\r\n".into(),
            stderr: "KVM internal error. Suberror: 1".into(),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("kvm probe kernel did not print its marker within 8s"),
            "{text}"
        );
        assert!(text.contains("(KVM internal error)"), "{text}");
        assert!(
            text.contains("last console line: \"Probing EDD (edd=off to disable)... ok\""),
            "{text}"
        );
    }
}
