//! Human sizes: `512M`, `1G`, `1GiB`, `10g`, `1.5G` or plain bytes. Binary multiples throughout
//! (`1G` = 1 GiB), as qemu-img and every hypervisor CLI our users know treat them.

/// Parse a size. Errors name the offending text.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("size is empty".into());
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("size {text:?} does not start with a number"));
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "size {text:?} has unknown unit {other:?} (use B, K, M, G, T or KiB, MiB, GiB, TiB)"
            ))
        }
    };
    if num.contains('.') {
        let v: f64 = num
            .parse()
            .map_err(|_| format!("size {text:?} is not a number"))?;
        let bytes = v * (1u64 << shift) as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(format!("size {text:?} is too large"));
        }
        if bytes.fract() != 0.0 {
            return Err(format!("size {text:?} is not a whole number of bytes"));
        }
        return Ok(bytes as u64);
    }
    let v: u64 = num
        .parse()
        .map_err(|_| format!("size {text:?} is too large"))?;
    v.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// Format bytes with the largest binary unit that keeps one decimal meaningful: `1.5 GiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_users_type() {
        let cases: &[(&str, u64)] = &[
            ("512M", 512 << 20),
            ("1G", 1 << 30),
            ("1GiB", 1 << 30),
            ("1gb", 1 << 30),
            ("4096", 4096),
            ("1.5G", 3 << 29),
            ("10T", 10 << 40),
            (" 2K ", 2048),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text), Ok(*want), "{text}");
        }
    }

    #[test]
    fn rejects_garbage_with_the_text_in_the_error() {
        for bad in [
            "",
            "abc",
            "G",
            "1X",
            "-1G",
            "99999999999999999999",
            "18446744073709551615T",
        ] {
            let err = parse_size(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
        assert!(parse_size("abc").unwrap_err().contains("abc"));
    }

    #[test]
    fn formats_sizes() {
        assert_eq!(format_size(1 << 30), "1 GiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size(100), "100 B");
    }
}
