//! Choosing the accelerator by experiment: KVM only if a guest really boots under it.
//!
//! The presence of `/dev/kvm` proves little: on nested or software KVM backends a stock Linux
//! kernel hangs or dies with "KVM internal error" while `/dev/kvm` opens fine. So
//! [`probe_accelerator`] first checks the device (absent, not openable, wrong API version:
//! TCG at once), then boots a small guest under KVM with a timeout and waits for its marker
//! on the serial port:
//! - with `probe_kernel` (a kernel and initrd whose init prints `CORRAL-GUEST-READY` on
//!   ttyS0, like the project's test guest) that kernel boots; this is the trustworthy probe;
//! - without it, a 512-byte boot sector embedded in this crate (`probe/guest.S`) runs through
//!   SeaBIOS, real mode, 32-bit protected mode, paging and 64-bit long mode and prints
//!   `CORRAL-PROBE-READY`. It catches a missing or broken KVM, but not every failure a full
//!   kernel meets (on the development machines it passes where Linux hangs right after its
//!   real-mode setup code), so callers should pass a kernel whenever they have one.
//!
//! Any failure means TCG, with the reason kept for `corral host info`. Probing costs a few
//! seconds, so [`probe_accelerator_cached`] remembers the verdict per QEMU version, host
//! kernel release and probe kind.

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
}

impl ProbeGuest<'_> {
    fn describe(&self) -> &'static str {
        match self {
            ProbeGuest::BootSector => "probe boot sector",
            ProbeGuest::Kernel { .. } => "probe kernel",
        }
    }
    fn marker(&self) -> &'static str {
        match self {
            ProbeGuest::BootSector => PROBE_MARKER,
            ProbeGuest::Kernel { .. } => GUEST_MARKER,
        }
    }
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
    probe_with_guest(qemu, probe_kernel, timeout).await
}

async fn probe_with_guest(
    qemu: &Path,
    probe_kernel: Option<(&Path, &Path)>,
    timeout: Duration,
) -> AcceleratorInfo {
    let guest = match probe_kernel {
        Some((kernel, initrd)) => ProbeGuest::Kernel { kernel, initrd },
        None => ProbeGuest::BootSector,
    };
    match boot_probe_guest(qemu, Accelerator::Kvm, guest, timeout).await {
        Ok(took) => AcceleratorInfo {
            name: Accelerator::Kvm,
            reason: format!(
                "probe: {} printed its marker under KVM in {} ms",
                guest.describe(),
                took.as_millis()
            ),
        },
        Err(e) => {
            tracing::warn!(error = %e, "KVM probe failed; using TCG");
            tcg(format!("probe: {e}"))
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

/// The cache key for a probe verdict: the QEMU version, the host kernel, the probe kind.
pub fn probe_cache_key(qemu_version: &str, kernel_release: &str, with_kernel: bool) -> String {
    let kind = if with_kernel { "kernel" } else { "boot-sector" };
    format!("qemu {qemu_version}; host kernel {kernel_release}; probe {kind}")
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

/// [`probe_accelerator`], reusing the verdict stored in `cache` when QEMU version, host
/// kernel and probe kind are unchanged. An unusable `/dev/kvm` is checked every time (cheap)
/// and never cached.
pub async fn probe_accelerator_cached(
    cache: &Path,
    qemu: &Path,
    probe_kernel: Option<(&Path, &Path)>,
    timeout: Duration,
) -> AcceleratorInfo {
    if let Err(e) = check_kvm_device() {
        return tcg(format!("probe: {e}"));
    }
    let version = match crate::process::qemu_version(qemu).await {
        Ok(v) => v.to_string(),
        Err(e) => return tcg(format!("probe: {e}")),
    };
    let key = probe_cache_key(&version, &host_kernel_release(), probe_kernel.is_some());
    if let Some(mut info) = load_cached_probe(cache, &key) {
        info.reason = format!("{} (cached for {key})", info.reason);
        return info;
    }
    let info = probe_with_guest(qemu, probe_kernel, timeout).await;
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
        let key = probe_cache_key("7.2.22", "6.1.0-1", true);
        assert!(load_cached_probe(&path, &key).is_none());
        let info = tcg("probe: kvm probe kernel did not print its marker within 8s".into());
        store_cached_probe(&path, &key, &info).expect("store");
        assert_eq!(load_cached_probe(&path, &key), Some(info));
        let other = probe_cache_key("8.0.0", "6.1.0-1", true);
        assert!(load_cached_probe(&path, &other).is_none());
        std::fs::write(&path, "not json").expect("write");
        assert!(load_cached_probe(&path, &key).is_none());
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
