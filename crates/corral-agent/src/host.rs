//! Facts about this host for `corral host info`: CPU, memory, QEMU version.

pub struct CpuFacts {
    pub model: String,
    pub cores: u32,
    pub mhz: f64,
}

pub fn cpu_facts() -> CpuFacts {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    CpuFacts {
        model: field("model name").unwrap_or_else(|| "unknown".into()),
        cores,
        mhz: field("cpu MHz").and_then(|v| v.parse().ok()).unwrap_or(0.0),
    }
}

/// (total, available) memory in bytes from /proc/meminfo.
pub fn memory() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (kib("MemTotal:"), kib("MemAvailable:"))
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
