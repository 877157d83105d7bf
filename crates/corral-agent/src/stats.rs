//! Per-VM load statistics: what each running VM consumes of the six planner resources, sampled
//! every 5 s and kept at decreasing resolution (5 s for 10 minutes, 1 min for 2 hours, 1 h for
//! a week).
//!
//! Flow: [`spawn_sampler`] wakes every [`INTERVAL`]; for each VM that runs it asks the VM's
//! actor for the counters only the actor can reach (`Op::Counters`: QMP `query-blockstats`,
//! since the actor owns the one QMP session of that QEMU, and the names of its tap devices),
//! then reads the QEMU process's CPU time and resident memory from `/proc/<pid>` and the taps'
//! byte counters from `/sys/class/net/<tap>/statistics`. Two successive readings give rates;
//! the first reading after a start only sets the baseline. NICs on user-mode NAT have no
//! counters anywhere, so their traffic is reported as not available (`null`), never as zero.
//!
//! Each 5 s sample goes into a ring of 120; samples are averaged into one point per minute
//! (ring of 120) and minute points into one point per hour (ring of 168). Coarse points are
//! averages (like RRD's AVERAGE) and carry the maximum of each metric beside the mean (like
//! RRD's MAX), so a burst shorter than the step still counts for placement: the summaries'
//! `max` and the hourly demand profile of `crate::advice` use it. The minute and hour rings are
//! persisted in the state database (`stats/<vm id>`) each time a minute point is added, so an
//! agent restart keeps the coarse history; the 5 s ring is memory only (it is rebuilt within
//! minutes). A VM's statistics are dropped when the VM is deleted.
//!
//! `GET /v1/vms/{name}/stats` reads this through [`Agent::vm_stats`]; the placement advice in
//! `crate::advice` uses the measured profile.

use crate::advice::Advisor;
use crate::clock::now_ms;
use crate::context::Host;
use corral_model::host::NetworkKind;
use corral_model::stats::{MetricSummary, StatsSample, StatsSeries, VmStats};
use corral_model::PowerState;
use corral_store::Expect;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Time between samples.
pub const INTERVAL: Duration = Duration::from_secs(5);
const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 3_600_000;
/// 10 minutes of 5 s samples, 2 hours of minutes, a week of hours.
const KEEP_FINE: usize = 120;
const KEEP_MINUTES: usize = 120;
const KEEP_HOURS: usize = 168;

/// Block I/O counters of one QEMU, summed over its devices.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BlockCounters {
    pub rd_bytes: u64,
    pub wr_bytes: u64,
    pub rd_ops: u64,
    pub wr_ops: u64,
}

/// Ask QEMU for its block statistics (called by the VM's actor, which owns the session).
pub(crate) async fn query_block_counters(qmp: &corral_qemu::qmp::Qmp) -> Option<BlockCounters> {
    let v = qmp
        .execute_timeout(
            "query-blockstats",
            serde_json::Value::Null,
            Duration::from_secs(2),
        )
        .await
        .ok()?;
    parse_blockstats(&v)
}

/// Sum `stats` of every entry of a `query-blockstats` answer.
pub(crate) fn parse_blockstats(v: &serde_json::Value) -> Option<BlockCounters> {
    let list = v.as_array()?;
    let mut c = BlockCounters::default();
    for dev in list {
        let s = &dev["stats"];
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        c.rd_bytes += n("rd_bytes");
        c.wr_bytes += n("wr_bytes");
        c.rd_ops += n("rd_operations");
        c.wr_ops += n("wr_operations");
    }
    Some(c)
}

/// CPU time (user + system, in clock ticks) from the text of `/proc/<pid>/stat`.
pub(crate) fn parse_proc_stat_ticks(text: &str) -> Option<u64> {
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of stat(5), utime 14 and stime 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory in bytes from the text of `/proc/<pid>/status`.
pub(crate) fn parse_status_rss(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// One reading of a VM's cumulative counters.
#[derive(Debug, Clone)]
struct Reading {
    at_ms: u64,
    pid: u32,
    cpu_ticks: u64,
    rss_bytes: u64,
    /// Bytes the taps received and sent (host view), `None` without taps.
    taps: Option<(u64, u64)>,
    block: Option<BlockCounters>,
}

/// Rates between two readings of the same process.
fn rates(prev: &Reading, cur: &Reading, ghz_per_core: f64, ticks: f64) -> Option<StatsSample> {
    if cur.pid != prev.pid || cur.at_ms <= prev.at_ms {
        return None;
    }
    let dt = (cur.at_ms - prev.at_ms) as f64 / 1000.0;
    let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / dt;
    let cores_busy = per_s(prev.cpu_ticks, cur.cpu_ticks) / ticks;
    let (rx, tx) = match (prev.taps, cur.taps) {
        // A tap receives what the guest sends: the guest's rx is the tap's tx.
        (Some((prx, ptx)), Some((crx, ctx))) => (Some(per_s(ptx, ctx)), Some(per_s(prx, crx))),
        _ => (None, None),
    };
    let block = match (prev.block, cur.block) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => None,
    };
    Some(StatsSample {
        at_ms: cur.at_ms,
        cpu_ghz: cores_busy * ghz_per_core,
        cpu_percent: cores_busy * 100.0,
        memory_bytes: cur.rss_bytes,
        net_rx_bytes_per_s: rx,
        net_tx_bytes_per_s: tx,
        disk_read_bytes_per_s: block.map(|(a, b)| per_s(a.rd_bytes, b.rd_bytes)),
        disk_write_bytes_per_s: block.map(|(a, b)| per_s(a.wr_bytes, b.wr_bytes)),
        disk_read_iops: block.map(|(a, b)| per_s(a.rd_ops, b.rd_ops)),
        disk_write_iops: block.map(|(a, b)| per_s(a.wr_ops, b.wr_ops)),
        max: None,
    })
}

/// The highest value of each metric over samples (their own maxima where they are coarse
/// points); a metric is `None` only if it is `None` in all of them.
fn maximum(samples: &[StatsSample], at_ms: u64) -> StatsSample {
    let peak = |s: &StatsSample| s.max.as_deref().cloned().unwrap_or_else(|| s.clone());
    let peaks: Vec<StatsSample> = samples.iter().map(peak).collect();
    let opt = |f: fn(&StatsSample) -> Option<f64>| peaks.iter().filter_map(f).reduce(f64::max);
    StatsSample {
        at_ms,
        cpu_ghz: peaks.iter().map(|s| s.cpu_ghz).fold(0.0, f64::max),
        cpu_percent: peaks.iter().map(|s| s.cpu_percent).fold(0.0, f64::max),
        memory_bytes: peaks.iter().map(|s| s.memory_bytes).max().unwrap_or(0),
        net_rx_bytes_per_s: opt(|s| s.net_rx_bytes_per_s),
        net_tx_bytes_per_s: opt(|s| s.net_tx_bytes_per_s),
        disk_read_bytes_per_s: opt(|s| s.disk_read_bytes_per_s),
        disk_write_bytes_per_s: opt(|s| s.disk_write_bytes_per_s),
        disk_read_iops: opt(|s| s.disk_read_iops),
        disk_write_iops: opt(|s| s.disk_write_iops),
        max: None,
    }
}

/// Average of samples, with their maxima in `max`; a metric is `None` only if it is `None`
/// in all of them.
fn mean(samples: &[StatsSample], at_ms: u64) -> StatsSample {
    let n = samples.len().max(1) as f64;
    let opt = |f: fn(&StatsSample) -> Option<f64>| {
        let v: Vec<f64> = samples.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    StatsSample {
        at_ms,
        cpu_ghz: samples.iter().map(|s| s.cpu_ghz).sum::<f64>() / n,
        cpu_percent: samples.iter().map(|s| s.cpu_percent).sum::<f64>() / n,
        memory_bytes: (samples.iter().map(|s| s.memory_bytes as f64).sum::<f64>() / n) as u64,
        net_rx_bytes_per_s: opt(|s| s.net_rx_bytes_per_s),
        net_tx_bytes_per_s: opt(|s| s.net_tx_bytes_per_s),
        disk_read_bytes_per_s: opt(|s| s.disk_read_bytes_per_s),
        disk_write_bytes_per_s: opt(|s| s.disk_write_bytes_per_s),
        disk_read_iops: opt(|s| s.disk_read_iops),
        disk_write_iops: opt(|s| s.disk_write_iops),
        max: Some(Box::new(maximum(samples, at_ms))),
    }
}

/// Every metric of a sample as (name, value), `None` where not measured.
pub(crate) fn metrics(s: &StatsSample) -> [(&'static str, Option<f64>); 9] {
    [
        ("cpu_ghz", Some(s.cpu_ghz)),
        ("cpu_percent", Some(s.cpu_percent)),
        ("memory_bytes", Some(s.memory_bytes as f64)),
        ("net_rx_bytes_per_s", s.net_rx_bytes_per_s),
        ("net_tx_bytes_per_s", s.net_tx_bytes_per_s),
        ("disk_read_bytes_per_s", s.disk_read_bytes_per_s),
        ("disk_write_bytes_per_s", s.disk_write_bytes_per_s),
        ("disk_read_iops", s.disk_read_iops),
        ("disk_write_iops", s.disk_write_iops),
    ]
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50 / p95 / max of each metric over `points`; p50 and p95 of coarse points are over their
/// means, the max over their maxima.
pub(crate) fn summarise<'a>(
    points: impl Iterator<Item = &'a StatsSample> + Clone,
) -> Vec<MetricSummary> {
    let names = metrics(&StatsSample::default()).map(|(n, _)| n);
    let mut out = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let mut v: Vec<f64> = points.clone().filter_map(|s| metrics(s)[k].1).collect();
        if v.is_empty() {
            continue;
        }
        v.sort_by(f64::total_cmp);
        let max = points
            .clone()
            .filter_map(|s| metrics(s.max.as_deref().unwrap_or(s))[k].1)
            .fold(v[v.len() - 1], f64::max);
        out.push(MetricSummary {
            metric: name.to_string(),
            p50: percentile(&v, 50.0),
            p95: percentile(&v, 95.0),
            max,
        });
    }
    out
}

/// The persisted part of a VM's statistics.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct Coarse {
    minutes: VecDeque<StatsSample>,
    hours: VecDeque<StatsSample>,
    /// Minute points of the hour not finished yet.
    pending_hour: Vec<StatsSample>,
}

#[derive(Debug, Default)]
struct VmSeries {
    fine: VecDeque<StatsSample>,
    /// 5 s samples of the minute not finished yet.
    pending_minute: Vec<StatsSample>,
    coarse: Coarse,
    last: Option<Reading>,
    not_available: Vec<String>,
}

impl VmSeries {
    /// Add a 5 s sample; true when a minute point was completed (time to persist).
    fn push(&mut self, s: StatsSample) -> bool {
        let mut minute_done = false;
        if let Some(first) = self.pending_minute.first() {
            let bucket = first.at_ms / MINUTE_MS;
            if s.at_ms / MINUTE_MS != bucket {
                let point = mean(&self.pending_minute, (bucket + 1) * MINUTE_MS);
                self.pending_minute.clear();
                self.push_minute(point);
                minute_done = true;
            }
        }
        self.pending_minute.push(s.clone());
        self.fine.push_back(s);
        while self.fine.len() > KEEP_FINE {
            self.fine.pop_front();
        }
        minute_done
    }

    fn push_minute(&mut self, point: StatsSample) {
        let c = &mut self.coarse;
        if let Some(first) = c.pending_hour.first() {
            let bucket = first.at_ms.saturating_sub(1) / HOUR_MS;
            if point.at_ms.saturating_sub(1) / HOUR_MS != bucket {
                let hour = mean(&c.pending_hour, (bucket + 1) * HOUR_MS);
                c.pending_hour.clear();
                c.hours.push_back(hour);
                while c.hours.len() > KEEP_HOURS {
                    c.hours.pop_front();
                }
            }
        }
        c.pending_hour.push(point.clone());
        c.minutes.push_back(point);
        while c.minutes.len() > KEEP_MINUTES {
            c.minutes.pop_front();
        }
    }
}

/// Statistics of every VM, by VM id.
pub struct Stats {
    vms: Mutex<HashMap<String, VmSeries>>,
    /// Each new 5 s sample, with its VM's id, for the followers of `vm stats --follow`
    /// and the web console's charts (pushed, never polled).
    fresh: tokio::sync::broadcast::Sender<(String, StatsSample)>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            vms: Mutex::default(),
            fresh: tokio::sync::broadcast::channel(256).0,
        }
    }
}

impl Stats {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VmSeries>> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Load the coarse history persisted before a restart.
    pub async fn load(store: &dyn corral_store::Store, prefix: &str) -> Stats {
        let stats = Stats::default();
        if let Ok(list) = store.list(prefix).await {
            let mut vms = stats.lock();
            for (key, v) in list {
                let id = key.trim_start_matches(prefix).to_string();
                match serde_json::from_slice::<Coarse>(&v.value) {
                    Ok(coarse) => {
                        vms.insert(
                            id,
                            VmSeries {
                                coarse,
                                ..VmSeries::default()
                            },
                        );
                    }
                    Err(e) => tracing::warn!(%key, error = %e, "skipping unreadable statistics"),
                }
            }
        }
        stats
    }
}

/// What the sampler works with: the host's VMs and records, the statistics it fills, and the
/// advisor for the clock the planner's capacity states.
pub(crate) struct Sampler {
    pub host: Arc<Host>,
    pub stats: Arc<Stats>,
    pub advisor: Arc<Advisor>,
}

/// Start the sampling loop; it ends when the sampler's owner drops it.
pub(crate) fn spawn_sampler(sampler: &Arc<Sampler>) {
    let weak: Weak<Sampler> = Arc::downgrade(sampler);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(agent) = weak.upgrade() else { break };
            sample_all(&agent).await;
        }
    });
}

async fn sample_all(agent: &Sampler) {
    let handles: Vec<crate::vm::VmHandle> = agent.host.registry().by_id.values().cloned().collect();
    // Consumed GHz at the clock the planner's capacity states (the cpufreq maximum when
    // known), so a VM's demand and the host's capacity are in the same unit.
    let ghz = agent.advisor.planner_host().0.ghz;
    let ticks = clock_ticks();
    let user_networks: Vec<String> = agent
        .host
        .list_networks()
        .into_iter()
        .filter(|n| n.kind == NetworkKind::User)
        .map(|n| n.name)
        .collect();
    // Forget VMs that no longer exist, in memory and in the store.
    let gone: Vec<String> = {
        let vms = agent.stats.lock();
        vms.keys()
            .filter(|id| !handles.iter().any(|h| &h.id == *id))
            .cloned()
            .collect()
    };
    for id in gone {
        agent.stats.lock().remove(&id);
        let key = format!("{}{id}", crate::keys::stats(&agent.host.host_id));
        let _ = agent.host.records.delete(&key, Expect::Any).await;
    }
    for h in handles {
        let info = h.info();
        let running = matches!(info.power_state, PowerState::Running | PowerState::Paused);
        if !running {
            if let Some(s) = agent.stats.lock().get_mut(&h.id) {
                s.last = None;
            }
            continue;
        }
        let Ok(Some(counters)) =
            tokio::time::timeout(Duration::from_secs(3), h.counters(&agent.host.tasks)).await
        else {
            continue;
        };
        let pid = counters.pid;
        let (Some(cpu_ticks), Some(rss_bytes)) = (
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|t| parse_proc_stat_ticks(&t)),
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|t| parse_status_rss(&t)),
        ) else {
            continue;
        };
        let taps = if counters.taps.is_empty() {
            None
        } else {
            let mut sum = (0u64, 0u64);
            for tap in &counters.taps {
                let base = format!("/sys/class/net/{tap}/statistics");
                sum.0 += read_u64(&format!("{base}/rx_bytes")).unwrap_or(0);
                sum.1 += read_u64(&format!("{base}/tx_bytes")).unwrap_or(0);
            }
            Some(sum)
        };
        let mut not_available = Vec::new();
        let nat: Vec<&str> = info
            .nics
            .iter()
            .filter(|n| user_networks.contains(&n.network))
            .map(|n| n.device.as_str())
            .collect();
        if !nat.is_empty() {
            not_available.push(format!(
                "network traffic of {} (user-mode NAT has no counters){}",
                nat.join(", "),
                if taps.is_some() {
                    "; network figures cover the bridged NICs only"
                } else {
                    ""
                }
            ));
        } else if info.nics.is_empty() {
            not_available.push("network traffic (the VM has no NICs)".into());
        }
        if counters.block.is_none() {
            not_available.push("disk I/O (QEMU did not answer query-blockstats)".into());
        }
        let reading = Reading {
            at_ms: now_ms(),
            pid,
            cpu_ticks,
            rss_bytes,
            taps,
            block: counters.block,
        };
        let persist = {
            let mut vms = agent.stats.lock();
            let series = vms.entry(h.id.clone()).or_default();
            series.not_available = not_available;
            let sample = series
                .last
                .as_ref()
                .and_then(|prev| rates(prev, &reading, ghz, ticks));
            series.last = Some(reading);
            match sample {
                Some(s) => {
                    let _ = agent.stats.fresh.send((h.id.clone(), s.clone()));
                    series.push(s).then(|| series.coarse.clone())
                }
                None => None,
            }
        };
        if let Some(coarse) = persist {
            let key = format!("{}{}", crate::keys::stats(&agent.host.host_id), h.id);
            if let Err(e) = agent
                .host
                .records
                .put_json(&key, &coarse, Expect::Any)
                .await
            {
                tracing::warn!(vm = %info.name, error = %e, "cannot persist statistics");
            }
        }
    }
}

impl Stats {
    /// New samples as they are taken (every VM's: the receiver picks by id).
    pub fn follow(&self) -> tokio::sync::broadcast::Receiver<(String, StatsSample)> {
        self.fresh.subscribe()
    }

    /// `GET /v1/vms/{name}/stats` of the VM `h`.
    pub fn vm_stats(&self, h: &crate::vm::VmHandle) -> VmStats {
        let info = h.info();
        let running = matches!(info.power_state, PowerState::Running | PowerState::Paused);
        let vms = self.lock();
        let empty = VmSeries::default();
        let s = vms.get(&h.id).unwrap_or(&empty);
        let fresh = now_ms().saturating_sub(3 * INTERVAL.as_millis() as u64);
        let current = s
            .fine
            .back()
            .filter(|c| running && s.last.is_some() && c.at_ms >= fresh)
            .cloned();
        let series =
            |resolution: &str, step: u64, keep: usize, points: Vec<StatsSample>| StatsSeries {
                resolution: resolution.to_string(),
                step_seconds: step,
                span_seconds: step * keep as u64,
                summary: summarise(points.iter()),
                points,
            };
        VmStats {
            vm: info.name.clone(),
            interval_seconds: INTERVAL.as_secs(),
            current,
            not_available: if running {
                s.not_available.clone()
            } else {
                Vec::new()
            },
            series: vec![
                series("5s", 5, KEEP_FINE, s.fine.iter().cloned().collect()),
                series(
                    "1m",
                    60,
                    KEEP_MINUTES,
                    s.coarse.minutes.iter().cloned().collect(),
                ),
                series(
                    "1h",
                    3600,
                    KEEP_HOURS,
                    s.coarse.hours.iter().cloned().collect(),
                ),
            ],
        }
    }

    /// Every point of a VM's history, 5 s samples, minute and hour points alike (for
    /// placement advice, which takes the highest value per hour of the day).
    pub(crate) fn history(&self, vm_id: &str) -> Vec<StatsSample> {
        self.lock()
            .get(vm_id)
            .map(|s| {
                s.fine
                    .iter()
                    .chain(&s.pending_minute)
                    .chain(&s.coarse.minutes)
                    .chain(&s.coarse.hours)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, cpu: f64) -> StatsSample {
        StatsSample {
            at_ms,
            cpu_ghz: cpu,
            memory_bytes: 100,
            ..StatsSample::default()
        }
    }

    #[test]
    fn proc_stat_with_spaces_and_parentheses_in_the_name() {
        let text = "1234 (qemu (x) y) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_proc_stat_ticks(text), Some(300));
        assert_eq!(parse_proc_stat_ticks("garbage"), None);
        assert_eq!(
            parse_status_rss("Name:\tqemu\nVmRSS:\t  2048 kB\n"),
            Some(2048 * 1024)
        );
    }

    #[test]
    fn blockstats_are_summed_over_devices() {
        let v = serde_json::json!([
            {"device": "", "qdev": "disk0", "stats": {"rd_bytes": 10, "wr_bytes": 20, "rd_operations": 1, "wr_operations": 2}},
            {"device": "", "qdev": "cdrom0", "stats": {"rd_bytes": 5, "wr_bytes": 0, "rd_operations": 1, "wr_operations": 0}}
        ]);
        assert_eq!(
            parse_blockstats(&v),
            Some(BlockCounters {
                rd_bytes: 15,
                wr_bytes: 20,
                rd_ops: 2,
                wr_ops: 2
            })
        );
    }

    #[test]
    fn rates_swap_tap_directions_and_need_the_same_process() {
        let a = Reading {
            at_ms: 1_000,
            pid: 7,
            cpu_ticks: 100,
            rss_bytes: 1,
            taps: Some((1_000, 0)),
            block: None,
        };
        let mut b = a.clone();
        b.at_ms = 6_000;
        b.cpu_ticks = 600; // 500 ticks in 5 s at 100 Hz: one core busy
        b.taps = Some((6_000, 500));
        let s = rates(&a, &b, 2.5, 100.0).unwrap();
        assert!((s.cpu_percent - 100.0).abs() < 1e-9 && (s.cpu_ghz - 2.5).abs() < 1e-9);
        assert_eq!(s.net_tx_bytes_per_s, Some(1_000.0)); // the tap received it: the guest sent it
        assert_eq!(s.net_rx_bytes_per_s, Some(100.0));
        assert_eq!(s.disk_read_iops, None);
        b.pid = 8;
        assert!(rates(&a, &b, 2.5, 100.0).is_none());
    }

    #[test]
    fn samples_roll_up_into_minutes_and_hours() {
        let mut s = VmSeries::default();
        let mut minutes = 0;
        // Two hours and a bit of 5 s samples; CPU alternates 1 and 3 (mean 2).
        for k in 0..(2 * 720 + 24) {
            let cpu = if k % 2 == 0 { 1.0 } else { 3.0 };
            if s.push(sample(k * 5_000, cpu)) {
                minutes += 1;
            }
        }
        assert_eq!(s.fine.len(), KEEP_FINE);
        assert_eq!(minutes, 121);
        assert_eq!(s.coarse.minutes.len(), KEEP_MINUTES);
        assert_eq!(s.coarse.hours.len(), 2);
        assert!(s
            .coarse
            .hours
            .iter()
            .all(|h| (h.cpu_ghz - 2.0).abs() < 1e-9));
        assert_eq!(s.coarse.hours[0].at_ms, HOUR_MS);
        // The mean flattens the alternation; the maximum beside it keeps the peak.
        assert!(s
            .coarse
            .minutes
            .iter()
            .all(|m| m.max.as_ref().is_some_and(|x| x.cpu_ghz == 3.0)));
        assert!(s
            .coarse
            .hours
            .iter()
            .all(|h| h.max.as_ref().is_some_and(|x| x.cpu_ghz == 3.0)));
        let hours = summarise(s.coarse.hours.iter());
        let cpu = hours.iter().find(|m| m.metric == "cpu_ghz").unwrap();
        assert_eq!((cpu.p50, cpu.max), (2.0, 3.0));
        let sum = summarise(s.fine.iter());
        let cpu = sum.iter().find(|m| m.metric == "cpu_ghz").unwrap();
        assert_eq!((cpu.p50, cpu.p95, cpu.max), (1.0, 3.0, 3.0));
        assert!(sum.iter().all(|m| m.metric != "disk_read_iops"));
    }
}
