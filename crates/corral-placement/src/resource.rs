//! The six resources every host offers and every workload consumes, and how they are printed.
//!
//! Amounts travel as fixed arrays indexed by [`Resource`], in the units named by
//! [`Resource::unit`]: GHz for CPU (the chapter's cores × clock × utilisation), GiB for memory,
//! Mbit/s for each network direction and MB/s for disk (reads plus writes share one disk), and
//! operations per second for IOPS.

use serde::{Deserialize, Serialize};

/// Number of resources in the model.
pub const RESOURCES: usize = 6;

/// One amount per resource, indexed by `Resource as usize`.
pub type Amounts = [f64; RESOURCES];

/// A resource in the capacity model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// Consumed processor clock: cores × GHz × utilisation.
    Cpu,
    /// Resident memory; never overcommitted unless the plan's `memory_overcommit` says so.
    Memory,
    /// Network receive bandwidth (NICs are full duplex: each direction has the NIC's speed).
    NetIn,
    /// Network transmit bandwidth.
    NetOut,
    /// Disk bandwidth, reads plus writes.
    Disk,
    /// Disk operations per second, reads plus writes.
    Iops,
}

impl Resource {
    /// Every resource, in index order.
    pub const ALL: [Resource; RESOURCES] = [
        Resource::Cpu,
        Resource::Memory,
        Resource::NetIn,
        Resource::NetOut,
        Resource::Disk,
        Resource::Iops,
    ];

    /// Short label for tables and explanations.
    pub fn label(self) -> &'static str {
        match self {
            Resource::Cpu => "CPU",
            Resource::Memory => "memory",
            Resource::NetIn => "net in",
            Resource::NetOut => "net out",
            Resource::Disk => "disk",
            Resource::Iops => "IOPS",
        }
    }

    /// Stable machine key with its unit, used in JSON.
    pub fn key(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu_ghz",
            Resource::Memory => "memory_gib",
            Resource::NetIn => "net_in_mbps",
            Resource::NetOut => "net_out_mbps",
            Resource::Disk => "disk_mbps",
            Resource::Iops => "iops",
        }
    }

    /// Unit of amounts of this resource.
    pub fn unit(self) -> &'static str {
        match self {
            Resource::Cpu => "GHz",
            Resource::Memory => "GiB",
            Resource::NetIn | Resource::NetOut => "Mbit/s",
            Resource::Disk => "MB/s",
            Resource::Iops => "IOPS",
        }
    }

    /// An amount with its unit, rounded for people: `1.6 GHz`, `12.5 GiB`, `940 Mbit/s`.
    pub fn format_amount(self, amount: f64) -> String {
        if !amount.is_finite() {
            return "unlimited".to_string();
        }
        let rounded = if amount.abs() >= 100.0 {
            format!("{amount:.0}")
        } else if amount.abs() >= 10.0 {
            trim_zero(format!("{amount:.1}"))
        } else {
            trim_zero(format!("{amount:.2}"))
        };
        format!("{rounded} {}", self.unit())
    }
}

fn trim_zero(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Format a fraction as a whole percentage: `0.784` → `78 %`.
pub fn percent(fraction: f64) -> String {
    if !fraction.is_finite() {
        return "∞ %".to_string();
    }
    format!("{:.0} %", fraction * 100.0)
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}
