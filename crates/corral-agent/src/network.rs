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

pub async fn delete_tap(name: &str) {
    if std::path::Path::new("/sys/class/net").join(name).exists() {
        let _ = ip(&["link", "del", name]).await;
    }
}
