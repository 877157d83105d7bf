//! Running a browser test script (`web/tests/*.mjs`, Playwright driving Debian's Chromium)
//! from a Rust test: the prerequisites checked with a message that says how to get them,
//! the script run with a deadline, and its figures (one JSON line on stdout) read back.
//! Included with `#[path]` by `console.rs` and `console_pool.rs`.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web")
}

/// The Chromium binary, after checking that it and `web/node_modules` are there.
pub fn chromium() -> String {
    assert!(
        web_dir().join("node_modules/playwright-core").is_dir(),
        "web/node_modules is missing: run scripts/build-web.sh (npm ci from web/package-lock.json)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run scripts/install-deps.sh --test (Debian package chromium)"
    );
    chromium
}

/// `node web/tests/SCRIPT` with `env`; `tick` runs every 200 ms while it does (to answer
/// the script's requests). Answers its figures once it succeeded; on a failure or after
/// `limit`, panics with `context()` (agents' log tails) and where the trace is.
pub fn run_script(
    script: &str,
    env: &[(&str, &str)],
    out: &Path,
    limit: Duration,
    mut tick: impl FnMut(&mut Child),
    context: impl Fn() -> String,
) -> serde_json::Value {
    let mut cmd = Command::new("node");
    cmd.arg(format!("tests/{script}"))
        .current_dir(web_dir())
        .env("CHROMIUM", chromium())
        .env("OUT_DIR", out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .expect("run node (scripts/install-deps.sh --test installs it)");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        tick(&mut child);
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{script} did not finish within {limit:?}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut figures = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut figures)
        .unwrap();
    assert!(
        status.success(),
        "{script} failed ({status}); see its output above and {}/failure.png, trace.zip\n{}",
        out.display(),
        context()
    );
    let figures: serde_json::Value = serde_json::from_str(figures.trim()).unwrap();
    eprintln!("{script} figures: {figures}");
    figures
}
