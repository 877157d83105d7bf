//! Validation of values a user controls. Each function returns a message naming the problem
//! and the offending value; callers wrap it in an `ApiError` of kind `InvalidInput`.

use crate::vm::{CPU_WEIGHT_HIGH, CPU_WEIGHT_LOW, CPU_WEIGHT_NORMAL, MAX_VCPUS};

/// Names of VMs, repositories, networks and templates: `[A-Za-z0-9][A-Za-z0-9._-]{0,62}`.
/// Safe in file names, QEMU option values and URLs without escaping, which is why it is strict.
pub fn validate_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{kind} name is empty"));
    }
    if name.len() > 63 {
        return Err(format!(
            "{kind} name {name:?} is {} characters long; the maximum is 63",
            name.len()
        ));
    }
    let mut chars = name.chars();
    let first = chars.next().unwrap_or(' ');
    if !first.is_ascii_alphanumeric() {
        return Err(format!(
            "{kind} name {name:?} must start with a letter or digit"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{kind} name {name:?} contains {bad:?}; use letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// `low`, `normal`, `high` or a number 1..=65535.
/// A description: at most 4,096 characters, no control characters but newlines and tabs.
pub fn validate_description(text: &str) -> Result<(), String> {
    if text.chars().count() > 4096 {
        return Err("a description has at most 4096 characters".into());
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err("a description cannot contain control characters".into());
    }
    Ok(())
}

pub fn parse_cpu_weight(text: &str) -> Result<u32, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "low" => Ok(CPU_WEIGHT_LOW),
        "normal" => Ok(CPU_WEIGHT_NORMAL),
        "high" => Ok(CPU_WEIGHT_HIGH),
        other => {
            let n: u32 = other.parse().map_err(|_| {
                format!("CPU weight {text:?} is not low, normal, high or a number 1..65535")
            })?;
            validate_cpu_weight(n)?;
            Ok(n)
        }
    }
}

pub fn validate_cpu_weight(weight: u32) -> Result<(), String> {
    if (1..=65535).contains(&weight) {
        Ok(())
    } else {
        Err(format!("CPU weight {weight} is outside 1..65535"))
    }
}

/// Name a weight for display: `high (512)` or `1000`.
pub fn describe_cpu_weight(weight: u32) -> String {
    match weight {
        CPU_WEIGHT_LOW => "low (128)".into(),
        CPU_WEIGHT_NORMAL => "normal (256)".into(),
        CPU_WEIGHT_HIGH => "high (512)".into(),
        n => n.to_string(),
    }
}

pub fn validate_vcpus(vcpus: u32) -> Result<(), String> {
    if vcpus == 0 {
        Err("vCPUs must be at least 1".into())
    } else if vcpus > MAX_VCPUS {
        Err(format!(
            "{vcpus} vCPUs is more than the maximum of {MAX_VCPUS}"
        ))
    } else {
        Ok(())
    }
}

/// Memory must be a positive whole number of MiB, at least 16 MiB (QEMU's floor for a PC).
pub fn validate_memory(bytes: u64) -> Result<(), String> {
    const MIB: u64 = 1 << 20;
    if bytes == 0 {
        return Err("memory must be larger than 0".into());
    }
    if bytes < 16 * MIB {
        return Err(format!(
            "memory {bytes} bytes is less than the minimum of 16 MiB"
        ));
    }
    if !bytes.is_multiple_of(MIB) {
        return Err(format!("memory {bytes} bytes is not a whole number of MiB"));
    }
    Ok(())
}

/// A unicast MAC address written `aa:bb:cc:dd:ee:ff`.
pub fn validate_mac(mac: &str) -> Result<(), String> {
    let parts: Vec<&str> = mac.split(':').collect();
    let well_formed = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if !well_formed {
        return Err(format!(
            "MAC address {mac:?} is not of the form 52:54:00:12:34:56"
        ));
    }
    let first = u8::from_str_radix(parts[0], 16).unwrap_or(1);
    if first & 1 == 1 {
        return Err(format!("MAC address {mac:?} is a multicast address"));
    }
    Ok(())
}

/// Disk sizes: at least 1 MiB, a multiple of 512 bytes.
pub fn validate_disk_size(bytes: u64) -> Result<(), String> {
    if bytes == 0 {
        return Err("disk size must be larger than 0".into());
    }
    if bytes < (1 << 20) {
        return Err(format!(
            "disk size {bytes} bytes is less than the minimum of 1 MiB"
        ));
    }
    if !bytes.is_multiple_of(512) {
        return Err(format!("disk size {bytes} bytes is not a multiple of 512"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["web01", "a", "A.b_c-d", "9lives", &"x".repeat(63)] {
            assert!(validate_name("VM", good).is_ok(), "{good}");
        }
        let cases = [
            ("", "empty"),
            ("web,01", "','"),
            ("web/01", "'/'"),
            ("web 01", "' '"),
            ("-web", "start with"),
            (".hidden", "start with"),
            ("wéb", "'é'"),
        ];
        for (bad, needle) in cases {
            let err = validate_name("VM", bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        assert!(validate_name("VM", &"x".repeat(64))
            .unwrap_err()
            .contains("63"));
    }

    #[test]
    fn cpu_weights() {
        assert_eq!(parse_cpu_weight("low"), Ok(128));
        assert_eq!(parse_cpu_weight("Normal"), Ok(256));
        assert_eq!(parse_cpu_weight("high"), Ok(512));
        assert_eq!(parse_cpu_weight("1000"), Ok(1000));
        assert!(parse_cpu_weight("0").is_err());
        assert!(parse_cpu_weight("65536").is_err());
        assert!(parse_cpu_weight("fast").is_err());
    }

    #[test]
    fn macs() {
        assert!(validate_mac("52:54:00:12:34:56").is_ok());
        assert!(validate_mac("01:54:00:12:34:56").is_err());
        assert!(validate_mac("52:54:00:12:34").is_err());
        assert!(validate_mac("52:54:00:12:34:5g").is_err());
    }

    #[test]
    fn limits() {
        assert!(validate_vcpus(0).is_err());
        assert!(validate_vcpus(65).is_err());
        assert!(validate_vcpus(64).is_ok());
        assert!(validate_memory(0).is_err());
        assert!(validate_memory(1 << 30).is_ok());
        assert!(validate_disk_size(0).is_err());
        assert!(validate_disk_size(10 << 30).is_ok());
    }
}
