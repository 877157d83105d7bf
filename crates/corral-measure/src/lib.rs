//! corral-measure: what `corral measure` and `corral host info` know about this machine.
//!
//! A [`Sampler`] reads kernel counters from `/proc` and `/sys` (no privileges needed): CPU time
//! from `/proc/stat`, memory from `/proc/meminfo` (used = total − available, so page cache is
//! not counted), NIC bytes from `/proc/net/dev`, and disk sectors and operations from
//! `/proc/diskstats` (whole disks only, so a partition is not counted twice). Each
//! [`Sampler::sample`] turns the difference from the previous reading into rates. [`measure`]
//! samples at an interval until its duration ends or a stop flag is raised (Ctrl-C), and returns
//! a [`Profile`] with every sample and p50/p95/max per metric; an interrupted run keeps what it
//! has. [`host_capacity`] describes this machine as a planner [`Host`], noting every guess.
//!
//! All paths are relative to a root directory (normally `/`), so tests can feed fixed files.

mod parse;

pub use corral_placement::input::{DiskSample, NicSample, Profile, Sample, Stats, PROFILE_FORMAT};
use corral_placement::Host;
pub use parse::{
    parse_cpuinfo, parse_diskstats, parse_meminfo, parse_net_dev, parse_proc_stat, CpuInfo,
    CpuTimes, DiskCounters, MemInfo, NicCounters,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A kernel file that could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot understand {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("interval must be at least 100 ms, got {0:?}")]
    Interval(Duration),
}

/// Counters at one instant.
#[derive(Debug, Clone)]
struct Reading {
    at: Instant,
    cpu: CpuTimes,
    nics: BTreeMap<String, NicCounters>,
    disks: BTreeMap<String, DiskCounters>,
}

/// Reads counters under a root directory and turns successive readings into samples.
pub struct Sampler {
    root: PathBuf,
    /// CPUs and clock, read once.
    pub cpu: CpuInfo,
    physical_nics: Option<Vec<String>>,
    whole_disks: Vec<String>,
    last: Reading,
}

fn read(root: &Path, rel: &str) -> Result<String, MeasureError> {
    let path = root.join(rel);
    std::fs::read_to_string(&path).map_err(|source| MeasureError::Read { path, source })
}

fn parse_err(root: &Path, rel: &str, message: String) -> MeasureError {
    MeasureError::Parse {
        path: root.join(rel),
        message,
    }
}

/// Names of directory entries (empty if the directory is missing).
fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

impl Sampler {
    /// A sampler for this machine.
    pub fn new() -> Result<Sampler, MeasureError> {
        Sampler::with_root("/")
    }

    /// A sampler reading `proc/…` and `sys/…` under `root`.
    pub fn with_root(root: impl Into<PathBuf>) -> Result<Sampler, MeasureError> {
        let root = root.into();
        let cpu = cpu_info(&root)?;
        // Physical NICs have a `device` link; bridges, taps and loopback do not. When none has
        // one (some containers), every interface but loopback counts.
        let nic_names = list(&root.join("sys/class/net"));
        let physical: Vec<String> = nic_names
            .iter()
            .filter(|n| root.join("sys/class/net").join(n).join("device").exists())
            .cloned()
            .collect();
        let physical_nics = (!physical.is_empty()).then_some(physical);
        // Whole disks are the entries of /sys/block; partitions live below them. Loop, RAM,
        // zram and device-mapper devices are views of other storage and are skipped.
        let whole_disks = list(&root.join("sys/block"))
            .into_iter()
            .filter(|d| {
                !["loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd"]
                    .iter()
                    .any(|p| d.starts_with(p))
            })
            .collect();
        let last = Reading {
            at: Instant::now(),
            cpu: CpuTimes::default(),
            nics: BTreeMap::new(),
            disks: BTreeMap::new(),
        };
        let mut s = Sampler {
            root,
            cpu,
            physical_nics,
            whole_disks,
            last,
        };
        s.last = s.read_counters()?;
        Ok(s)
    }

    /// Disks whose traffic is measured (whole disks such as `vda`, `sda`, `nvme0n1`).
    pub fn disks(&self) -> &[String] {
        &self.whole_disks
    }

    fn read_counters(&self) -> Result<Reading, MeasureError> {
        let stat = read(&self.root, "proc/stat")?;
        let cpu = parse_proc_stat(&stat).map_err(|m| parse_err(&self.root, "proc/stat", m))?;
        let net = read(&self.root, "proc/net/dev")?;
        let nics = parse_net_dev(&net)
            .map_err(|m| parse_err(&self.root, "proc/net/dev", m))?
            .into_iter()
            .filter(|(n, _)| match &self.physical_nics {
                Some(p) => p.contains(n),
                None => n != "lo",
            })
            .collect();
        let ds = read(&self.root, "proc/diskstats")?;
        let disks = parse_diskstats(&ds)
            .map_err(|m| parse_err(&self.root, "proc/diskstats", m))?
            .into_iter()
            .filter(|(n, _)| self.whole_disks.contains(n))
            .collect();
        Ok(Reading {
            at: Instant::now(),
            cpu,
            nics,
            disks,
        })
    }

    /// Read the counters now and return the rates since the previous call (or creation).
    pub fn sample(&mut self) -> Result<Sample, MeasureError> {
        let now = self.read_counters()?;
        let mem_text = read(&self.root, "proc/meminfo")?;
        let mem = parse_meminfo(&mem_text).map_err(|m| parse_err(&self.root, "proc/meminfo", m))?;
        let secs = now.at.duration_since(self.last.at).as_secs_f64().max(1e-3);
        let busy = now.cpu.busy().saturating_sub(self.last.cpu.busy()) as f64;
        let total = now.cpu.total().saturating_sub(self.last.cpu.total()) as f64;
        let util = if total > 0.0 {
            (busy / total).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let mut s = Sample {
            unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            cpu_utilisation: util,
            cpu_ghz: util * f64::from(self.cpu.cores) * self.cpu.mhz / 1000.0,
            memory_used_gib: mem.used_bytes() as f64 / f64::from(1u32 << 30),
            ..Sample::default()
        };
        for (name, c) in &now.nics {
            let Some(p) = self.last.nics.get(name) else {
                continue;
            };
            let n = NicSample {
                rx_bytes_per_s: c.rx_bytes.saturating_sub(p.rx_bytes) as f64 / secs,
                tx_bytes_per_s: c.tx_bytes.saturating_sub(p.tx_bytes) as f64 / secs,
            };
            s.net_in_mbps += n.rx_bytes_per_s * 8.0 / 1e6;
            s.net_out_mbps += n.tx_bytes_per_s * 8.0 / 1e6;
            s.nics.insert(name.clone(), n);
        }
        for (name, c) in &now.disks {
            let Some(p) = self.last.disks.get(name) else {
                continue;
            };
            let d = DiskSample {
                read_bytes_per_s: c.sectors_read.saturating_sub(p.sectors_read) as f64 * 512.0
                    / secs,
                write_bytes_per_s: c.sectors_written.saturating_sub(p.sectors_written) as f64
                    * 512.0
                    / secs,
                read_iops: c.reads.saturating_sub(p.reads) as f64 / secs,
                write_iops: c.writes.saturating_sub(p.writes) as f64 / secs,
            };
            s.disk_read_mbps += d.read_bytes_per_s / 1e6;
            s.disk_write_mbps += d.write_bytes_per_s / 1e6;
            s.iops += d.read_iops + d.write_iops;
            s.disks.insert(name.clone(), d);
        }
        self.last = now;
        Ok(s)
    }

    /// An empty profile describing this machine.
    pub fn profile(&self, interval: Duration) -> Result<Profile, MeasureError> {
        let mem_text = read(&self.root, "proc/meminfo")?;
        let mem = parse_meminfo(&mem_text).map_err(|m| parse_err(&self.root, "proc/meminfo", m))?;
        Ok(Profile {
            format: PROFILE_FORMAT.to_string(),
            hostname: hostname(&self.root),
            cpu_model: self.cpu.model.clone(),
            cores: self.cpu.cores,
            physical_cores: self.cpu.physical_cores,
            mhz: self.cpu.mhz,
            memory_total_gib: mem.total_bytes as f64 / f64::from(1u32 << 30),
            interval_s: interval.as_secs_f64(),
            ..Profile::default()
        })
    }
}

fn hostname(root: &Path) -> String {
    read(root, "proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn cpu_info(root: &Path) -> Result<CpuInfo, MeasureError> {
    cpu_info_with_source(root).map(|(info, _)| info)
}

/// CPU facts and where the clock came from (`cpufreq` rated maximum or `/proc/cpuinfo`).
fn cpu_info_with_source(root: &Path) -> Result<(CpuInfo, &'static str), MeasureError> {
    let text = read(root, "proc/cpuinfo")?;
    let mut info = parse_cpuinfo(&text);
    let mut source = "the mean momentary \"cpu MHz\" of /proc/cpuinfo";
    if info.cores == 0 {
        // Some architectures list no "processor" lines; count cpuN lines in /proc/stat.
        let stat = read(root, "proc/stat")?;
        info.cores = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count() as u32;
        info.physical_cores = info.cores;
    }
    // The rated clock, when cpufreq tells it, is steadier than the momentary "cpu MHz".
    if let Ok(khz) = read(root, "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") {
        if let Ok(k) = khz.trim().parse::<f64>() {
            if k > 0.0 {
                info.mhz = k / 1000.0;
                source = "the rated maximum in cpufreq (cpuinfo_max_freq)";
            }
        }
    }
    if info.cores == 0 || info.mhz <= 0.0 {
        return Err(parse_err(
            root,
            "proc/cpuinfo",
            "no processors or clock found".to_string(),
        ));
    }
    Ok((info, source))
}

/// How long and how often to sample.
#[derive(Debug, Clone, Copy)]
pub struct MeasureOptions {
    pub interval: Duration,
    /// Stop after this long; `None` runs until the stop flag is raised.
    pub duration: Option<Duration>,
}

/// Sample every `interval` until `duration` has passed or `stop` is raised, calling
/// `on_sample` with the profile so far after each sample (to save it, show progress). An
/// interrupted run returns the samples it has and sets `Profile::interrupted`.
pub fn measure(
    sampler: &mut Sampler,
    options: MeasureOptions,
    stop: &AtomicBool,
    mut on_sample: impl FnMut(&Profile),
) -> Result<Profile, MeasureError> {
    if options.interval < Duration::from_millis(100) {
        return Err(MeasureError::Interval(options.interval));
    }
    let mut profile = sampler.profile(options.interval)?;
    let start = Instant::now();
    let mut next = start + options.interval;
    loop {
        // Sleep in short steps so Ctrl-C is noticed within 50 ms.
        while Instant::now() < next {
            if stop.load(Ordering::SeqCst) {
                profile.interrupted = true;
                profile.summarise();
                return Ok(profile);
            }
            let left = next.saturating_duration_since(Instant::now());
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        profile.samples.push(sampler.sample()?);
        profile.summarise();
        on_sample(&profile);
        next += options.interval;
        if let Some(d) = options.duration {
            if start.elapsed() + Duration::from_millis(1) >= d {
                return Ok(profile);
            }
        }
    }
}

/// This machine as a planner host, with a note saying where each figure came from (read from
/// the kernel, or a typical figure assumed).
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostCapacity {
    pub host: Host,
    pub notes: Vec<String>,
}

/// Describe this machine (or the one under `root`) in the placement model.
pub fn host_capacity(root: impl AsRef<Path>) -> Result<HostCapacity, MeasureError> {
    let root = root.as_ref();
    let (cpu, clock_source) = cpu_info_with_source(root)?;
    let mem = parse_meminfo(&read(root, "proc/meminfo")?)
        .map_err(|m| parse_err(root, "proc/meminfo", m))?;
    let mut notes = vec![
        format!(
            "cores: {} logical CPUs from /proc/cpuinfo ({} physical cores); consumed GHz counts logical CPUs",
            cpu.cores, cpu.physical_cores
        ),
        format!("clock: {:.2} GHz from {clock_source}", cpu.mhz / 1000.0),
        "memory: MemTotal of /proc/meminfo".to_string(),
    ];
    let mut net = 0.0;
    for nic in list(&root.join("sys/class/net")) {
        let dir = root.join("sys/class/net").join(&nic);
        if !dir.join("device").exists() {
            continue;
        }
        match std::fs::read_to_string(dir.join("speed"))
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
        {
            Some(s) if s > 0.0 => {
                notes.push(format!(
                    "NIC {nic}: {s} Mbit/s link speed from /sys/class/net"
                ));
                net += s
            }
            _ => {
                notes.push(format!(
                    "NIC {nic} reports no link speed (virtual NIC?): counted as 1000 Mbit/s"
                ));
                net += 1000.0;
            }
        }
    }
    if net == 0.0 {
        notes.push("no physical NIC found: network capacity assumed 1000 Mbit/s".to_string());
        net = 1000.0;
    }
    let (mut disk, mut iops) = (0.0, 0.0);
    for d in list(&root.join("sys/block")) {
        if ["loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd"]
            .iter()
            .any(|p| d.starts_with(p))
        {
            continue;
        }
        let rotational =
            std::fs::read_to_string(root.join("sys/block").join(&d).join("queue/rotational"))
                .map(|s| s.trim() == "1")
                .unwrap_or(false);
        let (mbps, ops, kind) = if d.starts_with("nvme") {
            (2000.0, 200_000.0, "NVMe")
        } else if rotational {
            (150.0, 150.0, "rotational")
        } else {
            (500.0, 50_000.0, "solid-state or virtual")
        };
        notes.push(format!(
            "disk {d} ({kind}): bandwidth and IOPS are typical figures ({mbps} MB/s, {ops} IOPS), not measured"
        ));
        disk += mbps;
        iops += ops;
    }
    if disk == 0.0 {
        notes.push("no disk found: disk capacity assumed 150 MB/s and 150 IOPS".to_string());
        disk = 150.0;
        iops = 150.0;
    }
    let mut host = Host::new(
        &hostname(root),
        cpu.cores,
        cpu.mhz / 1000.0,
        mem.total_bytes as f64 / f64::from(1u32 << 30),
        net,
        disk,
    );
    host.iops = Some(iops);
    Ok(HostCapacity { host, notes })
}
