//! Naming what detection found with an osinfo-db short id (`debian10`, `ubuntu20.04`,
//! `opensuse42.3`, `sles10sp4`, `mageia5`, `rhel9.2`), the way virt-install's `urldetect.py`
//! does: from the release's codename (in the tree's files or in its URL, `…/dists/buster/…`),
//! or from its version, walking back through minor releases to the newest one osinfo knows
//! (a tree of RHEL 7.6 is `rhel7.5` when osinfo stops there), and for any other treeinfo tree
//! from the `<tree>` patterns osinfo-db publishes.
//!
//! The known ids come from the template catalogue ([`crate::Catalog::os_names`]): built-in
//! templates first (Debian's osinfo-db 20230308 has no `debian12`, our `debian-12` template
//! does), then every osinfo-db OS. An id is only ever returned when it is known, so a plan
//! never names an OS nobody can look up. Everything here is a pure function of its inputs.

use super::{DetectedOs, Layout};
use crate::templates::osinfo::{match_treeinfo, OsinfoTree};
use crate::templates::OsFamily;
use crate::url::SourceUrl;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One OS an id can name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownOs {
    /// The osinfo-db short id: `debian10`.
    pub short_id: String,
    /// The distribution as osinfo-db spells it (`debian`, `ubuntu`, `sles`, `opensuse`).
    pub distro: String,
    pub version: String,
    /// `buster`, or Ubuntu's `Focal Fossa` (its first word is the suite).
    pub codename: Option<String>,
}

/// The ids detection may use, cheap to clone (it travels in [`super::DetectOptions`]).
#[derive(Debug, Clone, Default)]
pub struct OsNames {
    known: Arc<Vec<KnownOs>>,
    /// osinfo `<tree>` elements by template name (`osinfo:fedora37`), for generic treeinfo.
    trees: Arc<BTreeMap<String, Vec<OsinfoTree>>>,
}

impl OsNames {
    /// `known` in order of preference (the first entry with an id wins).
    pub fn new(known: Vec<KnownOs>, trees: BTreeMap<String, Vec<OsinfoTree>>) -> OsNames {
        OsNames {
            known: Arc::new(known),
            trees: Arc::new(trees),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    fn has(&self, id: &str) -> bool {
        self.known.iter().any(|k| k.short_id == id)
    }

    /// The first id (of `candidates`, in order) that is known.
    fn first_known(&self, candidates: &[String]) -> Option<String> {
        candidates.iter().find(|c| self.has(c)).cloned()
    }

    /// The OS of `distro` whose codename (first word, any case) is `codename`.
    fn by_codename(&self, distro: &str, codename: &str) -> Option<String> {
        let codename = codename.to_ascii_lowercase();
        self.known
            .iter()
            .find(|k| {
                k.distro.eq_ignore_ascii_case(distro)
                    && k.codename.as_deref().is_some_and(|c| {
                        c.split_whitespace()
                            .next()
                            .is_some_and(|w| w.eq_ignore_ascii_case(&codename))
                    })
            })
            .map(|k| k.short_id.clone())
    }

    /// Codenames of `distro` that appear as a whole segment of `path` (`/dists/buster/`).
    fn codename_in_path(&self, distro: &str, path: &str) -> Option<String> {
        let segments: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_ascii_lowercase)
            .collect();
        self.known
            .iter()
            .filter(|k| k.distro.eq_ignore_ascii_case(distro))
            .find(|k| {
                k.codename
                    .as_deref()
                    .and_then(|c| c.split_whitespace().next())
                    .is_some_and(|c| segments.iter().any(|s| s.eq_ignore_ascii_case(c)))
            })
            .map(|k| k.short_id.clone())
    }
}

/// `9.2` → (9, Some(2)); `42.3-0` → (42, Some(3)); `12` → (12, None); junk → None.
fn split_version(version: &str) -> Option<(u32, Option<u32>)> {
    let v = version.split(['-', ' ']).next().unwrap_or_default();
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok());
    Some((major, minor))
}

/// Ids to try for `prefix` and `version`, most specific first: `rhel7.6`, `rhel7.5`, …,
/// `rhel7.0`, `rhel7` (osinfo writes first releases either way: `rhel7.0`, `sles12`).
fn walk_back(prefix: &str, version: &str, sle: bool) -> Vec<String> {
    let Some((major, minor)) = split_version(version) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(minor) = minor {
        for m in (0..=minor.min(99)).rev() {
            if sle {
                // SLE ids: sles10sp4, and sles10 for the first release.
                if m > 0 {
                    out.push(format!("{prefix}{major}sp{m}"));
                }
            } else {
                out.push(format!("{prefix}{major}.{m}"));
            }
        }
    }
    out.push(format!("{prefix}{major}"));
    if minor.is_none() && !sle {
        // `version = 7` names osinfo's `centos7.0`.
        out.push(format!("{prefix}{major}.0"));
    }
    out
}

/// The distribution prefix osinfo uses for a treeinfo/product name.
fn rhel_like_prefix(name: &str) -> Option<&'static str> {
    let n = name.to_ascii_lowercase();
    [
        ("red hat enterprise linux", "rhel"),
        ("rhel", "rhel"),
        ("centos stream", "centos-stream"),
        ("centos", "centos"),
        ("scientific", "sl"),
        ("fedora", "fedora"),
        ("almalinux", "almalinux"),
        ("rocky", "rocky"),
        ("oracle", "ol"),
    ]
    .iter()
    .find(|(k, _)| n.contains(k))
    .map(|(_, p)| *p)
}

fn suse_prefix(name: &str) -> Option<(&'static str, bool)> {
    let n = name.to_ascii_lowercase();
    if n.contains("enterprise server") || n.contains("sles") {
        Some(("sles", true))
    } else if n.contains("enterprise desktop") || n.contains("sled") {
        Some(("sled", true))
    } else if n.contains("opensuse") {
        Some(("opensuse", false))
    } else {
        None
    }
}

/// The SLE version from a product name: `SUSE Linux Enterprise Server 10 SP4` → `10.4`.
fn sle_version(name: &str) -> Option<String> {
    let words: Vec<&str> = name.split_whitespace().collect();
    let major = words
        .iter()
        .find(|w| w.chars().all(|c| c.is_ascii_digit()))?;
    let sp = words.iter().find_map(|w| {
        w.strip_prefix("SP")
            .or_else(|| w.strip_prefix("sp"))
            .filter(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
    });
    Some(match sp {
        Some(sp) => format!("{major}.{sp}"),
        None => major.to_string(),
    })
}

/// The osinfo short id of what detection found at `url`, when osinfo (or a template) knows it.
pub fn identify(
    os: &DetectedOs,
    layout: Layout,
    url: &SourceUrl,
    names: &OsNames,
) -> Option<String> {
    if names.is_empty() || os.family == OsFamily::CorralTest {
        return None;
    }
    let lower = os.name.to_ascii_lowercase();
    if layout == Layout::DebianDaily {
        // Daily images install the next release: osinfo calls it `debiantesting`.
        return names.first_known(&["debiantesting".to_string()]);
    }
    if layout == Layout::Mageia {
        return names.first_known(&walk_back("mageia", &os.version, false));
    }
    let debian_like = matches!(os.family, OsFamily::Debian | OsFamily::Ubuntu)
        || lower.contains("debian")
        || lower.contains("ubuntu");
    if debian_like {
        let distro = if lower.contains("ubuntu") || os.family == OsFamily::Ubuntu {
            "ubuntu"
        } else {
            "debian"
        };
        if let Some(id) = os
            .codename
            .as_deref()
            .and_then(|c| names.by_codename(distro, c))
        {
            return Some(id);
        }
        if let Some(id) = names.codename_in_path(distro, &url.path) {
            return Some(id);
        }
        // Debian ids carry the major version (`debian10`), Ubuntu's the release (`ubuntu20.04`).
        let mut candidates = Vec::new();
        if let Some((major, minor)) = split_version(&os.version) {
            if let Some(minor) = minor {
                candidates.push(format!("{distro}{major}.{minor:02}"));
                candidates.push(format!("{distro}{major}.{minor}"));
            }
            candidates.push(format!("{distro}{major}"));
        }
        return names.first_known(&candidates);
    }
    if os.family == OsFamily::Suse || suse_prefix(&os.name).is_some() {
        if lower.contains("tumbleweed") {
            return names.first_known(&["opensusetumbleweed".to_string()]);
        }
        let (prefix, sle) = suse_prefix(&os.name)?;
        let version = if sle {
            sle_version(&os.name).unwrap_or_else(|| os.version.clone())
        } else {
            os.version.clone()
        };
        return names.first_known(&walk_back(prefix, &version, sle));
    }
    if let Some(prefix) = rhel_like_prefix(&os.name) {
        if let Some(id) = names.first_known(&walk_back(prefix, &os.version, false)) {
            return Some(id);
        }
    }
    // Any other treeinfo tree: osinfo's own `<tree>` patterns for it.
    if layout == Layout::Treeinfo || layout == Layout::Manual {
        if let Some(name) = match_treeinfo(names.trees.iter(), &os.name, &os.version) {
            return Some(name.strip_prefix("osinfo:").unwrap_or(name).to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_walk_back_to_what_osinfo_knows() {
        assert_eq!(
            walk_back("rhel", "7.2", false),
            ["rhel7.2", "rhel7.1", "rhel7.0", "rhel7"]
        );
        assert_eq!(
            walk_back("sles", "10.4", true),
            ["sles10sp4", "sles10sp3", "sles10sp2", "sles10sp1", "sles10"]
        );
        assert_eq!(walk_back("mageia", "5", false), ["mageia5", "mageia5.0"]);
        assert!(walk_back("x", "rawhide", false).is_empty());
        assert_eq!(
            sle_version("SUSE Linux Enterprise Server 10 SP4").as_deref(),
            Some("10.4")
        );
        assert_eq!(
            sle_version("SUSE Linux Enterprise Server 12").as_deref(),
            Some("12")
        );
    }
}
