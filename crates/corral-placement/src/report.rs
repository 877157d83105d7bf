//! Rendering a [`Plan`] for people and programs: a terminal table, JSON, and a self-contained
//! HTML page with one inline SVG chart per host and resource (no scripts, no external assets).

use crate::plan::{HostReport, Plan, ResourceUse};
use crate::resource::percent;
use std::fmt::Write as _;

/// The plan as JSON (pretty-printed): `hosts_used`, `assignments`, `unplaced`, `hosts` (per-host
/// utilisation per resource), `decisions`, `bounds`.
pub fn to_json(plan: &Plan) -> String {
    serde_json::to_string_pretty(plan).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

fn cell(r: &ResourceUse) -> String {
    match r.capacity {
        Some(_) => percent(r.utilisation),
        None => "-".to_string(),
    }
}

/// What the figures of an explanation are relative to: they are computed on the finished plan
/// (the improvement phase moves workloads after their first placement), not replayed from the
/// moment of the decision.
pub const FINAL_PLAN_NOTE: &str = "figures are against the final plan: the chosen host \
    without and with the workload, every other workload where the plan puts it";

/// `1 host`, `2 hosts`.
fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

/// A plain-text report: the verdict, one row per used host with the peak utilisation of each
/// resource, the unplaced workloads with reasons, and (when `explain`) one line per decision.
pub fn to_table(plan: &Plan, explain: bool) -> String {
    let mut out = String::new();
    let placed = plan.assignments.len();
    let total = placed + plan.unplaced.len();
    let _ = writeln!(
        out,
        "{placed} of {total} {} fit on {} of {} {} ({} mode, every resource capped at {}).",
        plural(total, "workload"),
        plan.hosts_used,
        plan.hosts_available,
        plural(plan.hosts_available, "host"),
        plan.mode,
        percent(plan.max_utilisation)
    );
    let lp = plan
        .bounds
        .lp
        .map(|v| {
            let cut = if plan.bounds.lp_truncated {
                " (LP cut short: best Farley bound)"
            } else {
                ""
            };
            format!(", LP bound {v:.2}{cut}")
        })
        .unwrap_or_default();
    let bound = plan
        .bounds
        .volume
        .max(plan.bounds.lp.map_or(0, |v| (v - 1e-6).ceil() as usize));
    let _ = writeln!(
        out,
        "Lower bound: {bound} {} (volume{lp}){}.",
        plural(bound, "host"),
        if plan.bounds.proven_optimal {
            "; this plan is optimal"
        } else {
            ""
        }
    );
    out.push('\n');
    let headers = [
        "HOST",
        "VMS",
        "CPU",
        "MEMORY",
        "NET IN",
        "NET OUT",
        "DISK",
        "IOPS",
        "TIGHTEST (headroom)",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for h in plan.hosts.iter().filter(|h| h.used) {
        let mut row = vec![h.host.clone(), h.workloads.len().to_string()];
        row.extend(h.resources.iter().map(cell));
        row.push(tightest(h));
        rows.push(row);
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let mut s = String::new();
        for (k, (c, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = w - c.chars().count();
            if k == 0 || k == cells.len() - 1 {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
            s.push_str("  ");
        }
        s.trim_end().to_string()
    };
    let _ = writeln!(
        out,
        "{}",
        line(headers.iter().map(|s| s.to_string()).collect())
    );
    for row in rows {
        let _ = writeln!(out, "{}", line(row));
    }
    let unused: Vec<&str> = plan
        .hosts
        .iter()
        .filter(|h| !h.used)
        .map(|h| h.host.as_str())
        .collect();
    if !unused.is_empty() {
        let _ = writeln!(out, "\nNot needed: {}", unused.join(", "));
    }
    if !plan.unplaced.is_empty() {
        let _ = writeln!(out, "\nCannot place:");
        for u in &plan.unplaced {
            let _ = writeln!(out, "  {}: {}", u.workload, u.reason);
        }
    }
    if explain && !plan.decisions.is_empty() {
        let _ = writeln!(out, "\nWhy ({FINAL_PLAN_NOTE}):");
        for d in &plan.decisions {
            let _ = writeln!(out, "  {}", d.summary);
        }
    }
    out
}

/// The resource closest to its limit and what is left of it: `memory (12 GiB free)`.
fn tightest(h: &HostReport) -> String {
    h.resources
        .iter()
        .filter_map(|r| {
            let (cap, limit) = (r.capacity?, r.limit?);
            (cap > 0.0 && limit > 0.0).then(|| (r.peak / limit, r))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, r)| {
            format!(
                "{} ({} free)",
                r.resource.label(),
                r.resource.format_amount(r.headroom.unwrap_or(0.0).max(0.0))
            )
        })
        .unwrap_or_default()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn colour(u: f64, limit: f64) -> &'static str {
    if u > limit + 1e-9 {
        "#c0392b"
    } else if u > limit * 0.9 {
        "#e67e22"
    } else {
        "#2e86c1"
    }
}

/// One chart: 24 hourly bars when there is a series, else a single bar; a dashed line at the cap.
fn chart(r: &ResourceUse, cap_fraction: f64) -> String {
    let (w, h) = (240.0, 90.0);
    let top = 12.0;
    let plot = h - top - 14.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{}\">",
        esc(&format!("{} utilisation {}", r.resource.label(), percent(r.utilisation)))
    );
    let _ = write!(
        s,
        "<text x=\"0\" y=\"10\" font-size=\"11\">{} — peak {}</text>",
        esc(r.resource.label()),
        percent(r.utilisation)
    );
    let y = |u: f64| top + plot * (1.0 - u.clamp(0.0, 1.0));
    let _ = write!(
        s,
        "<rect x=\"0\" y=\"{top}\" width=\"{w}\" height=\"{plot}\" fill=\"#f4f6f7\"/>"
    );
    if r.hourly.is_empty() {
        let bw = w * r.utilisation.clamp(0.0, 1.0);
        let _ = write!(
            s,
            "<rect x=\"0\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"{}\"/>",
            top + plot * 0.25,
            plot * 0.5,
            colour(r.utilisation, cap_fraction)
        );
        let cx = w * cap_fraction;
        let _ = write!(
            s,
            "<line x1=\"{cx:.1}\" y1=\"{top}\" x2=\"{cx:.1}\" y2=\"{:.1}\" stroke=\"#555\" stroke-dasharray=\"3,2\"/>",
            top + plot
        );
    } else {
        let bw = w / r.hourly.len() as f64;
        for (k, u) in r.hourly.iter().enumerate() {
            let _ = write!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{:02}:00 UTC {}</title></rect>",
                k as f64 * bw + 0.5,
                y(*u),
                bw - 1.0,
                top + plot - y(*u),
                colour(*u, cap_fraction),
                k,
                percent(*u)
            );
        }
        let cy = y(cap_fraction);
        let _ = write!(
            s,
            "<line x1=\"0\" y1=\"{cy:.1}\" x2=\"{w}\" y2=\"{cy:.1}\" stroke=\"#555\" stroke-dasharray=\"3,2\"/>"
        );
        let _ = write!(
            s,
            "<text x=\"0\" y=\"{}\" font-size=\"9\">00h</text>",
            h - 2.0
        );
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" font-size=\"9\">23h UTC</text>",
            w - 40.0,
            h - 2.0
        );
    }
    s.push_str("</svg>");
    s
}

/// A self-contained HTML report: verdict, per-host charts of every resource against the cap,
/// assignments, unplaced workloads and every decision's explanation.
pub fn to_html(plan: &Plan) -> String {
    let mut s = String::new();
    s.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>corral placement plan</title><style>");
    s.push_str("body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}.host{margin:1.5em 0;padding:.5em 1em;border:1px solid #ddd;border-radius:6px}.charts{display:flex;flex-wrap:wrap;gap:12px}.bad{color:#c0392b}li{margin:.2em 0}");
    s.push_str("</style></head><body>\n");
    let placed = plan.assignments.len();
    let total = placed + plan.unplaced.len();
    let _ = write!(
        s,
        "<h1>Placement plan</h1><p><b>{placed} of {total}</b> workloads fit on <b>{} of {}</b> hosts ({} mode, every resource capped at {}). Lower bound: {} hosts{}.</p>",
        plan.hosts_used,
        plan.hosts_available,
        plan.mode,
        percent(plan.max_utilisation),
        plan.bounds.volume.max(plan.bounds.lp.map_or(0, |v| (v - 1e-6).ceil() as usize)),
        if plan.bounds.proven_optimal { " — this plan is optimal" } else { "" }
    );
    s.push_str("<p>Bars show each resource's utilisation of raw capacity (hourly when workloads were measured over time); the dashed line is the cap.</p>");
    if !plan.unplaced.is_empty() {
        s.push_str("<h2 class=\"bad\">Cannot place</h2><ul>");
        for u in &plan.unplaced {
            let _ = write!(
                s,
                "<li><b>{}</b>: {}</li>",
                esc(&u.workload),
                esc(&u.reason)
            );
        }
        s.push_str("</ul>");
    }
    s.push_str("<h2>Hosts</h2>");
    for h in &plan.hosts {
        let _ = write!(
            s,
            "<div class=\"host\"><h3>{}{}</h3><p>{}</p><div class=\"charts\">",
            esc(&h.host),
            if h.used { "" } else { " (not needed)" },
            if h.workloads.is_empty() {
                "no workloads".to_string()
            } else {
                esc(&h.workloads.join(", "))
            }
        );
        for r in &h.resources {
            if r.capacity.is_none() {
                continue;
            }
            let cap_fraction = match (r.limit, r.capacity) {
                (Some(l), Some(c)) if c > 0.0 => l / c,
                _ => plan.max_utilisation,
            };
            s.push_str(&chart(r, cap_fraction));
        }
        s.push_str("</div><table><tr><th>resource</th><th>capacity</th><th>peak</th><th>utilisation</th><th>headroom</th></tr>");
        for r in &h.resources {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                r.resource.label(),
                r.capacity
                    .map_or("unlimited".into(), |c| r.resource.format_amount(c)),
                r.resource.format_amount(r.peak),
                cell(r),
                r.headroom
                    .map_or("-".into(), |x| r.resource.format_amount(x))
            );
        }
        s.push_str("</table></div>");
    }
    if !plan.decisions.is_empty() {
        let _ = write!(
            s,
            "<h2>Why each workload went where it did</h2><p>{}.</p><ul>",
            esc(FINAL_PLAN_NOTE)
        );
        for d in &plan.decisions {
            let _ = write!(s, "<li>{}</li>", esc(&d.summary));
        }
        s.push_str("</ul>");
    }
    s.push_str("<h2>Assignments</h2><table><tr><th>workload</th><th>host</th></tr>");
    for a in &plan.assignments {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td></tr>",
            esc(&a.workload),
            esc(&a.host)
        );
    }
    s.push_str("</table>");
    s.push_str("</body></html>\n");
    s
}
