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
