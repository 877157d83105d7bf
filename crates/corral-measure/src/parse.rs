//! Pure parsers for the kernel's text files; each takes the file's text and returns counters.

use std::collections::BTreeMap;

/// CPU model, logical CPUs and clock from `/proc/cpuinfo`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CpuInfo {
    pub model: String,
    /// Logical CPUs (hardware threads): what the kernel schedules on, and what consumed GHz
    /// counts (`cores × clock × utilisation`, utilisation being over all logical CPUs).
    pub cores: u32,
    /// Physical cores (distinct `physical id`/`core id` pairs); equals `cores` when the kernel
    /// does not list the topology (many VMs and non-x86 machines).
    pub physical_cores: u32,
    /// Mean "cpu MHz" over the CPUs (or the rated maximum from cpufreq when known).
    pub mhz: f64,
}

pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let (mut mhz_sum, mut mhz_n) = (0.0, 0u32);
    let mut package = String::new();
    let mut physical = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "processor" => {
                info.cores += 1;
                package.clear();
            }
            "physical id" => package = v.to_string(),
            "core id" => {
                physical.insert((package.clone(), v.to_string()));
            }
            "model name" | "Processor" | "cpu model" if info.model.is_empty() => {
                info.model = v.to_string()
            }
            "cpu MHz" => {
                if let Ok(x) = v.parse::<f64>() {
                    mhz_sum += x;
                    mhz_n += 1;
                }
            }
            _ => {}
        }
    }
    if mhz_n > 0 {
        info.mhz = mhz_sum / f64::from(mhz_n);
    }
    info.physical_cores = if physical.is_empty() {
        info.cores
    } else {
        physical.len() as u32
    };
    info
}

/// Aggregate CPU time in clock ticks from the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    /// Ticks spent running something (guest time is already inside user and nice).
    pub fn busy(&self) -> u64 {
        self.user + self.nice + self.system + self.irq + self.softirq + self.steal
    }

    pub fn total(&self) -> u64 {
        self.busy() + self.idle + self.iowait
    }
}

pub fn parse_proc_stat(text: &str) -> Result<CpuTimes, String> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or("no aggregate \"cpu\" line")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| {
            x.parse::<u64>()
                .map_err(|_| format!("cpu time {x:?} is not a number"))
        })
        .collect::<Result<_, _>>()?;
    if v.len() < 4 {
        return Err(format!(
            "cpu line has {} fields, expected at least 4",
            v.len()
        ));
    }
    let g = |i: usize| v.get(i).copied().unwrap_or(0);
    Ok(CpuTimes {
        user: g(0),
        nice: g(1),
        system: g(2),
        idle: g(3),
        iowait: g(4),
        irq: g(5),
        softirq: g(6),
        steal: g(7),
    })
}

/// Memory totals from `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MemInfo {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

impl MemInfo {
    /// Memory in use by programs and the kernel, excluding reclaimable cache and buffers.
    pub fn used_bytes(&self) -> u64 {
        self.total_bytes.saturating_sub(self.available_bytes)
    }
}

pub fn parse_meminfo(text: &str) -> Result<MemInfo, String> {
    let mut fields: BTreeMap<&str, u64> = BTreeMap::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let kib = v
            .split_whitespace()
            .next()
            .and_then(|x| x.parse::<u64>().ok());
        if let Some(kib) = kib {
            fields.insert(k.trim(), kib * 1024);
        }
    }
    let total = *fields.get("MemTotal").ok_or("no MemTotal line")?;
    // Kernels before 3.14 have no MemAvailable: estimate it as free + buffers + cache.
    let available = match fields.get("MemAvailable") {
        Some(a) => *a,
        None => ["MemFree", "Buffers", "Cached", "SReclaimable"]
            .iter()
            .map(|k| fields.get(k).copied().unwrap_or(0))
            .sum(),
    };
    Ok(MemInfo {
        total_bytes: total,
        available_bytes: available.min(total),
    })
}

/// Byte counters of one NIC.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NicCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

pub fn parse_net_dev(text: &str) -> Result<BTreeMap<String, NicCounters>, String> {
    let mut out = BTreeMap::new();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let v: Vec<&str> = rest.split_whitespace().collect();
        if v.len() < 9 {
            return Err(format!(
                "interface {} has {} fields, expected 16",
                name.trim(),
                v.len()
            ));
        }
        let num = |x: &str| {
            x.parse::<u64>()
                .map_err(|_| format!("counter {x:?} is not a number"))
        };
        out.insert(
            name.trim().to_string(),
            NicCounters {
                rx_bytes: num(v[0])?,
                tx_bytes: num(v[8])?,
            },
        );
    }
    Ok(out)
}

/// I/O counters of one block device (sectors are 512 bytes whatever the device's block size).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DiskCounters {
    pub reads: u64,
    pub sectors_read: u64,
    pub writes: u64,
    pub sectors_written: u64,
}

pub fn parse_diskstats(text: &str) -> Result<BTreeMap<String, DiskCounters>, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let v: Vec<&str> = line.split_whitespace().collect();
        if v.is_empty() {
            continue;
        }
        if v.len() < 10 {
            return Err(format!(
                "line {line:?} has {} fields, expected at least 14",
                v.len()
            ));
        }
        let num = |x: &str| {
            x.parse::<u64>()
                .map_err(|_| format!("counter {x:?} is not a number"))
        };
        out.insert(
            v[2].to_string(),
            DiskCounters {
                reads: num(v[3])?,
                sectors_read: num(v[5])?,
                writes: num(v[7])?,
                sectors_written: num(v[9])?,
            },
        );
    }
    Ok(out)
}
