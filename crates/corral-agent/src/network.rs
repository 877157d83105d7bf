//! Networks: the built-in `default` user-mode NAT network, and bridged networks whose VMs get
//! tap devices on an existing Linux bridge. Tap names are derived from the VM id and NIC index
//! (`cr` + 8 hex + index, within the kernel's 15-character limit) so they can be found and
//! removed again after an agent restart.

use corral_model::host::{Network, NetworkKind};
use tokio::process::Command;

pub const DEFAULT_NETWORK: &str = "default";

pub fn default_network() -> Network {
    Network {
        name: DEFAULT_NETWORK.into(),
        kind: NetworkKind::User,
        bridge: None,
    }
}

/// Is `bridge` an existing Linux bridge?
pub fn bridge_exists(bridge: &str) -> bool {
    !bridge.contains('/')
        && std::path::Path::new("/sys/class/net")
            .join(bridge)
            .join("bridge")
            .is_dir()
}

/// Bridge names follow the kernel's interface-name rules.
pub fn validate_bridge_name(bridge: &str) -> Result<(), String> {
    let ok = !bridge.is_empty()
        && bridge.len() <= 15
        && bridge
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bridge name {bridge:?} is not a valid interface name (1-15 of A-Z a-z 0-9 - _ .)"
        ))
    }
}

pub fn tap_name(vm_id: &str, index: usize) -> String {
    let hex: String = vm_id
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(8)
        .collect();
    format!("cr{hex}{index}")
}

async fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Create a persistent tap device and attach it to the bridge.
pub async fn create_tap(name: &str, bridge: &str) -> Result<(), String> {
    let _ = ip(&["link", "del", name]).await;
    ip(&["tuntap", "add", "dev", name, "mode", "tap"]).await?;
    if let Err(e) = async {
        ip(&["link", "set", name, "master", bridge]).await?;
        ip(&["link", "set", name, "up"]).await
    }
    .await
    {
        let _ = ip(&["link", "del", name]).await;
        return Err(e);
    }
    Ok(())
}

/// Open the tap device `name` (made by [`create_tap`]) for QEMU to inherit as `fd=N`: an
/// unprivileged QEMU may not open `/dev/net/tun` for a device it does not own. Close-on-exec,
/// so no other child of the agent (another VM's QEMU starting at the same moment) gets it;
/// the spawn clears the flag in QEMU's child alone. With a virtio-net header, as QEMU asks
/// for when it opens the device itself.
pub fn open_tap(name: &str) -> Result<std::os::fd::OwnedFd, String> {
    use std::os::fd::FromRawFd;
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;
    const IFF_VNET_HDR: libc::c_short = 0x4000;
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    if name.is_empty() || name.len() > 15 {
        return Err(format!("tap name {name:?} is not 1..15 bytes"));
    }
    // SAFETY: a NUL-terminated constant path; the result is checked.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if raw < 0 {
        return Err(format!(
            "cannot open /dev/net/tun: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `raw` is a descriptor we just opened and own.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which IfReq lays out.
    if unsafe { libc::ioctl(raw, TUNSETIFF, &mut req) } < 0 {
        return Err(format!(
            "cannot attach to tap {name}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(fd)
}

pub async fn delete_tap(name: &str) {
    if std::path::Path::new("/sys/class/net").join(name).exists() {
        let _ = ip(&["link", "del", name]).await;
    }
}
