//! The on-disk shape of a template file: every field optional, so a child template names only
//! what it changes. `overlay` merges a child over its parent; `resolve` in the parent module
//! turns the merged result into a checked [`Template`](super::Template).

use serde::{Deserialize, Serialize};

/// A size as written in a file: a number of bytes or text such as `"512M"` or `"1G"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl SizeValue {
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            SizeValue::Bytes(b) => Ok(*b),
            SizeValue::Text(t) => corral_model::parse_size(t),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOs {
    pub family: Option<String>,
    pub variant: Option<String>,
    pub version: Option<String>,
    pub codename: Option<String>,
    pub osinfo_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMemory {
    pub minimum: Option<SizeValue>,
    pub recommended: Option<SizeValue>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDisk {
    pub size: SizeValue,
    pub bus: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNics {
    pub count: Option<u32>,
    pub model: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRestrictions {
    pub max_vcpus: Option<u32>,
    pub max_nics: Option<u32>,
    pub max_disks: Option<u32>,
    pub min_memory: Option<SizeValue>,
    pub max_memory: Option<SizeValue>,
}

/// One template file. Unknown fields are errors, so a typo never silently loses a setting.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub derived_from: Option<String>,
    pub vcpus: Option<u32>,
    pub device_model: Option<String>,
    pub firmware: Option<String>,
    /// Attach a virtual TPM 2.0.
    pub tpm: Option<bool>,
    pub install_methods: Option<Vec<String>>,
    pub installer_args: Option<String>,
    pub unattended: Option<String>,
    pub os: Option<RawOs>,
    pub memory: Option<RawMemory>,
    pub disks: Option<Vec<RawDisk>>,
    pub nics: Option<RawNics>,
    pub restrictions: Option<RawRestrictions>,
}

fn pick<T>(child: Option<T>, parent: Option<T>) -> Option<T> {
    child.or(parent)
}

/// Merge `child` over `parent`: scalars and lists from the child win when present; the
/// `os`, `memory`, `nics` and `restrictions` tables merge field by field. `name`,
/// `description` and `derived_from` always come from the child.
pub fn overlay(parent: &RawTemplate, child: &RawTemplate) -> RawTemplate {
    let p = parent.clone();
    let c = child.clone();
    let os = match (p.os, c.os) {
        (Some(p), Some(c)) => Some(RawOs {
            family: pick(c.family, p.family),
            variant: pick(c.variant, p.variant),
            version: pick(c.version, p.version),
            codename: pick(c.codename, p.codename),
            osinfo_id: pick(c.osinfo_id, p.osinfo_id),
        }),
        (p, c) => c.or(p),
    };
    let memory = match (p.memory, c.memory) {
        (Some(p), Some(c)) => Some(RawMemory {
            minimum: pick(c.minimum, p.minimum),
            recommended: pick(c.recommended, p.recommended),
        }),
        (p, c) => c.or(p),
    };
    let nics = match (p.nics, c.nics) {
        (Some(p), Some(c)) => Some(RawNics {
            count: pick(c.count, p.count),
            model: pick(c.model, p.model),
        }),
        (p, c) => c.or(p),
    };
    let restrictions = match (p.restrictions, c.restrictions) {
        (Some(p), Some(c)) => Some(RawRestrictions {
            max_vcpus: pick(c.max_vcpus, p.max_vcpus),
            max_nics: pick(c.max_nics, p.max_nics),
            max_disks: pick(c.max_disks, p.max_disks),
            min_memory: pick(c.min_memory, p.min_memory),
            max_memory: pick(c.max_memory, p.max_memory),
        }),
        (p, c) => c.or(p),
    };
    RawTemplate {
        name: c.name,
        description: pick(c.description, p.description),
        derived_from: c.derived_from,
        vcpus: pick(c.vcpus, p.vcpus),
        device_model: pick(c.device_model, p.device_model),
        firmware: pick(c.firmware, p.firmware),
        tpm: pick(c.tpm, p.tpm),
        install_methods: pick(c.install_methods, p.install_methods),
        installer_args: pick(c.installer_args, p.installer_args),
        unattended: pick(c.unattended, p.unattended),
        os,
        memory,
        disks: pick(c.disks, p.disks),
        nics,
        restrictions,
    }
}
