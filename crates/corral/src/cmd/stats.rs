//! Human output of `corral vm stats` and `corral vm recommend-host`: one row per metric with
//! the current value and p50/p95/max at each resolution; hosts best first with their reasons.

use crate::output;
use corral_model::stats::{HostRecommendation, StatsSample, VmStats};

const METRICS: [&str; 9] = [
    "cpu_ghz",
    "cpu_percent",
    "memory_bytes",
    "net_rx_bytes_per_s",
    "net_tx_bytes_per_s",
    "disk_read_bytes_per_s",
    "disk_write_bytes_per_s",
    "disk_read_iops",
    "disk_write_iops",
];

fn label(metric: &str) -> &'static str {
    match metric {
        "cpu_ghz" => "cpu",
        "cpu_percent" => "cpu (% of a core)",
        "memory_bytes" => "memory (RSS)",
        "net_rx_bytes_per_s" => "net rx",
        "net_tx_bytes_per_s" => "net tx",
        "disk_read_bytes_per_s" => "disk read",
        "disk_write_bytes_per_s" => "disk write",
        "disk_read_iops" => "disk read ops",
        _ => "disk write ops",
    }
}

fn format_value(metric: &str, v: f64) -> String {
    match metric {
        "cpu_ghz" => format!("{v:.2} GHz"),
        "cpu_percent" => format!("{v:.0} %"),
        "memory_bytes" => corral_model::format_size(v as u64),
        "disk_read_iops" | "disk_write_iops" if v < 10.0 => format!("{v:.1}/s"),
        "disk_read_iops" | "disk_write_iops" => format!("{v:.0}/s"),
        _ => format!("{}/s", corral_model::format_size(v as u64)),
    }
}

fn value(s: &StatsSample, metric: &str) -> Option<f64> {
    match metric {
        "cpu_ghz" => Some(s.cpu_ghz),
        "cpu_percent" => Some(s.cpu_percent),
        "memory_bytes" => Some(s.memory_bytes as f64),
        "net_rx_bytes_per_s" => s.net_rx_bytes_per_s,
        "net_tx_bytes_per_s" => s.net_tx_bytes_per_s,
        "disk_read_bytes_per_s" => s.disk_read_bytes_per_s,
        "disk_write_bytes_per_s" => s.disk_write_bytes_per_s,
        "disk_read_iops" => s.disk_read_iops,
        _ => s.disk_write_iops,
    }
}

/// One line per new sample (`vm stats --follow`): the time and every measured metric.
pub fn print_sample(s: &StatsSample) {
    let time = utc_hms(s.at_ms);
    let fields: Vec<String> = METRICS
        .iter()
        .filter(|m| **m != "cpu_ghz")
        .map(|m| match value(s, m) {
            Some(v) => format!("{} {}", label(m), format_value(m, v)),
            None => format!("{} n/a", label(m)),
        })
        .collect();
    println!("{time}  {}", fields.join("  "));
}

/// `HH:MM:SS` (UTC) of a time in milliseconds since the epoch.
fn utc_hms(ms: u64) -> String {
    let secs = ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

pub fn print_stats(s: &VmStats) {
    match &s.current {
        Some(_) => println!(
            "VM {}: sampled every {} s; p50/p95/max per resolution",
            s.vm, s.interval_seconds
        ),
        None => println!(
            "VM {}: no current sample (the VM is not running, or started less than {} s ago)",
            s.vm,
            2 * s.interval_seconds
        ),
    }
    let mut header = vec!["METRIC".to_string(), "CURRENT".to_string()];
    for series in &s.series {
        header.push(format!(
            "{} ({} points)",
            series.resolution,
            series.points.len()
        ));
    }
    let rows = METRICS
        .iter()
        .map(|m| {
            let mut row = vec![label(m).to_string()];
            row.push(match s.current.as_ref().map(|c| value(c, m)) {
                Some(Some(v)) => format_value(m, v),
                Some(None) => "n/a".into(),
                None => "-".into(),
            });
            for series in &s.series {
                row.push(match series.summary.iter().find(|x| x.metric == *m) {
                    Some(x) => format!(
                        "{} / {} / {}",
                        format_value(m, x.p50),
                        format_value(m, x.p95),
                        format_value(m, x.max)
                    ),
                    None if series.points.is_empty() => "-".into(),
                    None => "n/a".into(),
                });
            }
            row
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    output::table(&header, rows);
    for n in &s.not_available {
        println!("not available: {n}");
    }
}

pub fn print_recommendation(r: &HostRecommendation) {
    let demand: Vec<String> = r
        .demand
        .iter()
        .filter(|(_, v)| *v > 0.0)
        .map(|(k, v)| format!("{k} {v:.2}"))
        .collect();
    println!(
        "VM {} needs ({}): {}",
        r.vm,
        r.basis,
        if demand.is_empty() {
            "nothing measurable yet".to_string()
        } else {
            demand.join(", ")
        }
    );
    output::table(
        &["HOST", "SCORE", "REASONS"],
        r.hosts
            .iter()
            .map(|h| {
                vec![
                    h.host.clone(),
                    format!("{:.1} / 5", h.score),
                    h.reasons.join("; "),
                ]
            })
            .collect(),
    );
}

/// `vm stats NAME --follow`: the statistics, then each new sample, following the VM to the
/// member that runs it after a migration (the stream ends there and is asked again).
pub async fn follow(c: &corral_client::Client, name: &str, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut first = true;
    let mut reader_gone = false;
    loop {
        let show_doc = std::mem::take(&mut first);
        c.follow_vm_stats(
            name,
            |doc| {
                if !show_doc {
                    return;
                }
                if json {
                    println!("{}", serde_json::to_string(&doc).unwrap_or_default());
                } else {
                    print_stats(&doc);
                    println!();
                }
            },
            |sample| {
                if json {
                    println!("{}", serde_json::to_string(&sample).unwrap_or_default());
                } else {
                    print_sample(&sample);
                }
                reader_gone = std::io::stdout().flush().is_err();
                !reader_gone
            },
        )
        .await?;
        if reader_gone {
            return Ok(());
        }
        // The stream ended: the VM moved (ask again, the pool forwards) or is gone (the
        // next request says so). A short pause keeps a flapping VM from spinning this.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        c.show_vm(name).await?;
    }
}
