//! `corral measure`: sample this machine's CPU, memory, network and disk use into a profile
//! for `corral plan`. Synchronous; runs as an unprivileged user; Ctrl-C stops it and keeps the
//! samples taken so far.

use anyhow::Context;
use corral_measure::{measure, MeasureOptions, Profile, Sampler};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const EXAMPLES: &str = "\
Examples:
  # A day on the old database server (no agent needed, no root needed)
  corral measure -o srv-db01.json

  # A quick look: every second for two minutes
  corral measure --interval 1s --duration 2m -o /tmp/now.json

  # Then plan with a directory of profiles; each is named after its file
  corral plan --hosts hosts.csv --workloads profiles/

Ctrl-C stops early and keeps every sample taken. The output file is written at the start
(an unwritable path fails at once) and saved again every minute (every 10 samples at most)
while measuring, so even a killed run leaves most of its data. If a save fails midway, the
run stops there and says what was kept, saving the samples to the temporary directory. It holds every sample (CPU
utilisation and consumed GHz = cores x clock x utilisation, memory used without page cache,
receive/transmit Mbit/s per NIC, read/write MB/s and IOPS per whole disk) and p50/p95/max
of each metric.";

/// Measure this machine's load into a workload profile.
#[derive(Debug, clap::Args)]
#[command(
    about = "Measure CPU, memory, network and disk use into a profile for `corral plan`",
    long_about = "Sample this machine's CPU, memory (excluding cache), per-NIC network and \
                  per-disk I/O from /proc and /sys at an interval, and write a profile JSON with \
                  the time series and p50/p95/max per metric.",
    after_long_help = EXAMPLES
)]
pub struct MeasureArgs {
    /// Time between samples (e.g. 5s, 500ms, 1m).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,
    /// How long to measure (e.g. 24h, 30m, 7d); a full day covers the daily cycle.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub duration: Duration,
    /// Where to write the profile JSON.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Do not print a line per sample.
    #[arg(long)]
    pub quiet: bool,
}

/// `500ms`, `5s`, `10m`, `24h`, `7d`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 5s, 10m, 24h)"))?;
    let secs = match unit.trim() {
        "ms" => v / 1000.0,
        "" | "s" => v,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        "d" => v * 86400.0,
        other => {
            return Err(format!(
                "{s:?} has unknown unit {other:?} (use ms, s, m, h or d)"
            ))
        }
    };
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!("{s:?} must be more than zero"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Saves happen about every minute, and at least every this many samples.
const SAVE_EVERY_SAMPLES: usize = 10;

/// Write via a temporary file and rename, so a reader never sees half a profile.
fn save(path: &Path, profile: &Profile) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.partial");
    let text = serde_json::to_string_pretty(profile)?;
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Raise `flag` on Ctrl-C (SIGINT), from a small thread with its own signal listener.
fn stop_on_ctrl_c(flag: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
                flag.store(true, Ordering::SeqCst);
            }
        }
    });
}

/// Run `corral measure` (synchronous; blocks for the duration).
pub fn run(args: MeasureArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_ctrl_c(stop.clone());
    let mut sampler = Sampler::new().context("cannot read this machine's counters")?;
    let options = MeasureOptions {
        interval: args.interval,
        duration: Some(args.duration),
    };
    let every = ((60.0 / args.interval.as_secs_f64()).ceil() as usize).clamp(1, SAVE_EVERY_SAMPLES);
    // Write the (empty) profile now: a bad output path fails before any time is spent.
    save(&args.output, &sampler.profile(args.interval)?)
        .with_context(|| format!("cannot write the profile to {}", args.output.display()))?;
    // (samples in the last good save, the error that stopped the run)
    let mut saved = 0;
    let mut save_error = None;
    eprintln!(
        "measuring {} ({} logical CPUs on {} physical cores x {:.0} MHz, disks: {}) every {:?} for {:?}; Ctrl-C stops and keeps what was measured",
        sampler.cpu.model,
        sampler.cpu.cores,
        sampler.cpu.physical_cores,
        sampler.cpu.mhz,
        sampler.disks().join(", "),
        args.interval,
        args.duration
    );
    let profile = measure(&mut sampler, options, &stop, |p| {
        if let Some(s) = p.samples.last() {
            if !args.quiet {
                eprintln!(
                    "cpu {:5.1} % ({:.2} GHz)  mem {:.2} GiB  net in {:.2} / out {:.2} Mbit/s  disk r {:.2} / w {:.2} MB/s  {:.0} IOPS",
                    s.cpu_utilisation * 100.0,
                    s.cpu_ghz,
                    s.memory_used_gib,
                    s.net_in_mbps,
                    s.net_out_mbps,
                    s.disk_read_mbps,
                    s.disk_write_mbps,
                    s.iops
                );
            }
        }
        if save_error.is_none() && p.samples.len() % every == 0 {
            match save(&args.output, p) {
                Ok(()) => saved = p.samples.len(),
                // Measuring on without a place to keep it would lose the whole run: stop.
                Err(e) => {
                    save_error = Some(e);
                    stop.store(true, Ordering::SeqCst);
                }
            }
        }
    })
    .context("measurement failed")?;
    if let Some(e) = save_error {
        let rescue =
            std::env::temp_dir().join(format!("corral-measure-{}.json", std::process::id()));
        let kept = match save(&rescue, &profile) {
            Ok(()) => format!(
                "all {} samples are saved in {}",
                profile.samples.len(),
                rescue.display()
            ),
            Err(e2) => format!("the samples could not be saved elsewhere either ({e2:#})"),
        };
        anyhow::bail!(
            "measuring stopped after {} samples because the profile could not be saved: {e:#}; \
             the last good save to {} has {saved} samples; {kept}",
            profile.samples.len(),
            args.output.display()
        );
    }
    save(&args.output, &profile)?;
    println!(
        "{} samples{} written to {}",
        profile.samples.len(),
        if profile.interrupted {
            " (stopped early)"
        } else {
            ""
        },
        args.output.display()
    );
    // Totals first, then each NIC and disk (`nic.eth0.rx_mbps`, `disk.sda.read_iops`).
    let width = profile
        .summary
        .keys()
        .map(|k| k.len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "{:<width$} {:>10} {:>10} {:>10}",
        "metric", "p50", "p95", "max"
    );
    let (totals, devices): (Vec<_>, Vec<_>) =
        profile.summary.iter().partition(|(k, _)| !k.contains('.'));
    for (k, s) in totals.into_iter().chain(devices) {
        println!(
            "{k:<width$} {:>10.2} {:>10.2} {:>10.2}",
            s.p50, s.p95, s.max
        );
    }
    Ok(())
}
