//! Human output: aligned tables, sizes, and the one place errors are printed.

use corral_model::ApiError;

/// Print rows as a table with a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

/// `key: value` lines, keys aligned.
pub fn fields(rows: &[(&str, String)]) {
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{k:<w$}  {v}", w = w + 1);
    }
}

pub fn json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("corral: cannot encode output: {e}"),
    }
}

pub fn print_error(e: &anyhow::Error, as_json: bool) {
    let api = e
        .downcast_ref::<corral_client::ClientError>()
        .and_then(|c| match c {
            corral_client::ClientError::Api(a) => Some(a.clone()),
            _ => None,
        });
    if as_json {
        let body = api.unwrap_or_else(|| ApiError::internal(format!("{e:#}")));
        if let Ok(s) = serde_json::to_string(&body) {
            eprintln!("{s}");
        }
    } else {
        eprintln!("corral: error: {e:#}");
    }
}

/// A time as the CLI prints it (UTC; see `corral_model::time`).
pub fn time(ms: u64) -> String {
    corral_model::time::format_utc(ms)
}
