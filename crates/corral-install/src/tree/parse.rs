//! Parsers for the small text files that identify trees: treeinfo (INI), Debian `Release`
//! (RFC 822 style) and SUSE `content` (`KEY value` lines). All are lenient: unknown lines
//! are ignored, because the files come from servers we do not control.

use std::collections::BTreeMap;

/// A parsed INI file: section → key → value. Keys and section names are kept as written;
/// lookups are case-sensitive for sections and case-insensitive for keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ini {
    pub sections: BTreeMap<String, BTreeMap<String, String>>,
}

impl Ini {
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.sections
            .get(section)?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// Parse treeinfo-style INI text (`[section]`, `key = value`, `#`/`;` comments).
pub fn parse_ini(text: &str) -> Ini {
    let mut ini = Ini::default();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            ini.sections.entry(section.clone()).or_default();
            continue;
        }
        if let Some((k, v)) = line.split_once('=').or_else(|| line.split_once(':')) {
            ini.sections
                .entry(section.clone())
                .or_default()
                .insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    ini
}

/// Parse the first paragraph of a Debian `Release` file (`Key: value`; continuation lines
/// start with a space and are skipped).
pub fn parse_rfc822(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            out.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    out
}

/// Parse SUSE's `content` file: `KEY value` per line (the first word is the key).
pub fn parse_suse_content(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        out.entry(k.to_string())
            .or_insert_with(|| v.trim().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_sections_and_comments() {
        let ini = parse_ini("# c\n[general]\nfamily = Red Hat Enterprise Linux\nVersion=9.2\n; x\n[images-x86_64]\nkernel = images/pxeboot/vmlinuz\nbroken line\n");
        assert_eq!(
            ini.get("general", "family"),
            Some("Red Hat Enterprise Linux")
        );
        assert_eq!(ini.get("general", "version"), Some("9.2"));
        assert_eq!(
            ini.get("images-x86_64", "kernel"),
            Some("images/pxeboot/vmlinuz")
        );
        assert_eq!(ini.get("nope", "kernel"), None);
    }

    #[test]
    fn release_and_content() {
        let r = parse_rfc822(
            "Origin: Debian\nCodename: bookworm\nMD5Sum:\n abc 12 main/x\n\nOther: y\n",
        );
        assert_eq!(r.get("Origin").map(String::as_str), Some("Debian"));
        assert_eq!(r.get("Codename").map(String::as_str), Some("bookworm"));
        assert!(!r.contains_key("Other"));
        let c = parse_suse_content(
            "PRODUCT SUSE_SLES\nVERSION 15.5\nLABEL SUSE Linux Enterprise Server 15 SP5\n",
        );
        assert_eq!(
            c.get("LABEL").map(String::as_str),
            Some("SUSE Linux Enterprise Server 15 SP5")
        );
        assert_eq!(c.get("VERSION").map(String::as_str), Some("15.5"));
    }
}
