//! End-to-end: the API over HTTPS (`serve --listen`) with the agent's token and its pinned
//! certificate, through the real CLI and a real TCG guest (console and events over TLS).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

mod common;
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Run the CLI and require failure; returns stderr.
fn must_fail(o: Output, what: &str) -> String {
    assert!(
        !o.status.success(),
        "{what} should have failed but printed:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    stderr(&o)
}

struct Remote {
    url: String,
    token: String,
    fingerprint: String,
}

impl Remote {
    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec![
            "--connect",
            &self.url,
            "--token",
            &self.token,
            "--fingerprint",
            &self.fingerprint,
        ];
        v.extend_from_slice(extra);
        v
    }

    fn ok(&self, extra: &[&str]) -> String {
        let o = corral(&self.args(extra));
        assert!(
            o.status.success(),
            "remote corral {} failed: {}",
            extra.join(" "),
            stderr(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn json(&self, extra: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(extra);
        serde_json::from_str(&self.ok(&a)).expect("JSON output")
    }
}

#[test]
fn https_with_token_and_pinned_certificate() {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut agent = TestAgent::start_with(&["--listen", &listen]);

    // The secrets exist and only the agent's user can read them.
    let state = agent.state_dir().to_path_buf();
    for secret in [state.join("token"), state.join("tls/key.pem")] {
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", secret.display());
    }
    let token = std::fs::read_to_string(state.join("token"))
        .unwrap()
        .trim()
        .to_string();
    assert!(token.len() >= 32, "token is long enough to resist guessing");

    // host info (over the socket) names the listener and the certificate's fingerprint.
    let host = agent.json(&["host", "info"]);
    assert_eq!(host["remote"]["listen"][0], listen.as_str());
    let fingerprint = host["remote"]["cert_sha256"].as_str().unwrap().to_string();
    assert_eq!(fingerprint.len(), 32 * 3 - 1, "{fingerprint}");
    let human = agent.ok(&["host", "info"]);
    assert!(human.contains(&fingerprint), "{human}");
    assert!(human.contains(&format!("https on {listen}")), "{human}");

    let r = Remote {
        url: format!("https://{listen}"),
        token: token.clone(),
        fingerprint: fingerprint.clone(),
    };

    // create / list / show over HTTPS.
    let g = guest();
    let (k, i) = (g.kernel.to_str().unwrap(), g.initrd.to_str().unwrap());
    r.ok(&[
        "vm",
        "create",
        "--name",
        "far01",
        "--memory",
        "192M",
        "--kernel",
        k,
        "--initrd",
        i,
        "--cmdline",
        "console=ttyS0 no_timer_check",
    ]);
    let list = r.json(&["vm", "list"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["far01"]);
    let vm = r.json(&["vm", "show", "far01"]);
    assert_eq!(vm["power_state"], "halted");
    assert_eq!(vm["memory_bytes"], 192u64 << 20);
    assert!(r.ok(&["vm", "list"]).contains("far01"));

    // Refusals: each exits non-zero with a message that says what to do.
    let url = r.url.as_str();
    let no_token = must_fail(
        corral(&[
            "--connect",
            url,
            "--fingerprint",
            &fingerprint,
            "vm",
            "list",
        ]),
        "no token",
    );
    assert!(no_token.contains("needs a token"), "{no_token}");
    assert!(
        no_token.contains(&state.join("token").display().to_string()),
        "says where the token lives: {no_token}"
    );
    let wrong_token = must_fail(
        corral(&[
            "--connect",
            url,
            "--token",
            "0123456789abcdef0123456789abcdef",
            "--fingerprint",
            &fingerprint,
            "vm",
            "create",
            "--name",
            "intruder",
        ]),
        "wrong token",
    );
    assert!(wrong_token.contains("wrong token"), "{wrong_token}");
    let other_fp = format!("00{}", &fingerprint[2..]);
    let other_fp = if other_fp == fingerprint {
        format!("11{}", &fingerprint[2..])
    } else {
        other_fp
    };
    let wrong_fp = must_fail(
        corral(&[
            "--connect",
            url,
            "--token",
            &token,
            "--fingerprint",
            &other_fp,
            "vm",
            "list",
        ]),
        "wrong fingerprint",
    );
    assert!(
        wrong_fp.contains("refusing") && wrong_fp.contains(&fingerprint),
        "{wrong_fp}"
    );
    let no_fp = must_fail(
        corral(&["--connect", url, "--token", &token, "vm", "list"]),
        "no fingerprint",
    );
    assert!(
        no_fp.contains(&fingerprint) && no_fp.contains("--fingerprint"),
        "prints the fingerprint and how to pass it: {no_fp}"
    );
    let plain = must_fail(
        corral(&["--connect", &format!("http://{listen}"), "vm", "list"]),
        "http://",
    );
    assert!(plain.contains("only HTTPS"), "{plain}");
    let no_port = must_fail(
        corral(&["--connect", "https://127.0.0.1", "vm", "list"]),
        "no port",
    );
    assert!(no_port.contains("no port"), "{no_port}");
    let down = format!("https://127.0.0.1:{}", free_port());
    let unreachable = must_fail(
        corral(&[
            "--connect",
            &down,
            "--token",
            &token,
            "--fingerprint",
            &fingerprint,
            "vm",
            "list",
        ]),
        "unreachable",
    );
    assert!(unreachable.contains("cannot connect"), "{unreachable}");
    // The refused requests changed nothing.
    assert_eq!(r.json(&["vm", "list"]).as_array().unwrap().len(), 1);
    // The unix socket needs no token.
    assert_eq!(agent.json(&["vm", "list"]).as_array().unwrap().len(), 1);

    // Start over HTTPS; the serial console log, the interactive console (HTTP upgrade) and
    // the event stream all work through TLS.
    r.ok(&["vm", "start", "far01"]);
    let deadline = Instant::now() + BOOT;
    loop {
        if r.ok(&["vm", "console", "far01", "--log"]).contains(MARKER) {
            break;
        }
        assert!(Instant::now() < deadline, "no marker over HTTPS");
        std::thread::sleep(Duration::from_millis(300));
    }
    console_round_trip(&r);
    events_over_https(&r);

    r.ok(&["vm", "poweroff", "far01"]);
    assert_eq!(r.json(&["vm", "show", "far01"])["power_state"], "halted");

    // A restart keeps certificate and token: pinned clients go on working.
    agent.stop();
    agent.spawn();
    assert_eq!(
        agent.json(&["host", "info"])["remote"]["cert_sha256"],
        fingerprint.as_str()
    );
    r.ok(&["vm", "delete", "far01"]);
    assert!(r.json(&["vm", "list"]).as_array().unwrap().is_empty());
}

/// Type a command into the guest's shell over the upgraded TLS connection and read its
/// answer back.
fn console_round_trip(r: &Remote) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client =
        corral_client::Client::https(&r.url, Some(&r.token), Some(&r.fingerprint)).unwrap();
    rt.block_on(async {
        let mut console = client.console("far01").await.expect("console over https");
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 4096];
        // The shell may still be starting: repeat the command until its answer shows.
        while !String::from_utf8_lossy(&seen).contains("TLS-CONSOLE-42") {
            assert!(
                Instant::now() < deadline,
                "no answer on the console: {}",
                String::from_utf8_lossy(&seen)
            );
            console
                .write_all(b"echo TLS-CONSOLE-$((6*7))\n")
                .await
                .unwrap();
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(2), console.read(&mut buf)).await
            {
                assert!(n > 0, "console closed");
                seen.extend_from_slice(&buf[..n]);
            }
        }
    });
}

/// `corral events --json` over HTTPS replays the backlog, including this VM's start.
fn events_over_https(r: &Remote) {
    let mut child = Command::new(corral_bin())
        .args(r.args(&["--json", "events", "--since", "0"]))
        .env_remove("CORRAL_CONNECT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut found = false;
    while !found && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            let ev: Value = serde_json::from_str(&line).expect("an event per line");
            found =
                ev["type"] == "power_state_changed" && ev["vm"] == "far01" && ev["to"] == "running";
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "the start of far01 was in the event stream");
}
