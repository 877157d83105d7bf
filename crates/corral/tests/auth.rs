//! End-to-end: users and roles on a real agent over HTTPS. Named tokens (create, list,
//! revoke, expiry), every route of the OpenAPI document walked with a token of each role,
//! a token limited to some VMs, the audit log, the throttle of failed attempts, the body
//! bound and the header read timeout, the web console's login with a named token, and the
//! unix socket's mode.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

mod common;
use common::*;
use corral_model::auth::{Permission, Role};
use corral_model::ErrorKind;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::Duration;

/// An agent with an HTTPS listener, and how to reach it.
struct Remote {
    agent: TestAgent,
    url: String,
    fingerprint: String,
    /// The agent's token file (`@bootstrap`).
    bootstrap: String,
}

impl Remote {
    fn start() -> Remote {
        let listen = format!("127.0.0.1:{}", free_port());
        let agent = TestAgent::start_with(&["--listen", &listen]);
        let fingerprint = agent.json(&["host", "info"])["remote"]["cert_sha256"]
            .as_str()
            .unwrap()
            .to_string();
        let bootstrap = std::fs::read_to_string(agent.state_dir().join("token"))
            .unwrap()
            .trim()
            .to_string();
        Remote {
            agent,
            url: format!("https://{listen}"),
            fingerprint,
            bootstrap,
        }
    }

    /// The CLI over HTTPS with `token`.
    fn cli(&self, token: &str, args: &[&str]) -> Output {
        let mut a = vec![
            "--connect",
            &self.url,
            "--token",
            token,
            "--fingerprint",
            &self.fingerprint,
        ];
        a.extend_from_slice(args);
        corral(&a)
    }

    fn ok(&self, token: &str, args: &[&str]) -> String {
        let o = self.cli(token, args);
        assert!(
            o.status.success(),
            "corral {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The CLI's error (it must fail), as the agent's JSON error.
    fn err(&self, token: &str, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let o = self.cli(token, &a);
        assert!(
            !o.status.success(),
            "corral {} should have failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout)
        );
        let text = String::from_utf8_lossy(&o.stderr);
        serde_json::from_str(text.trim()).unwrap_or_else(|_| panic!("JSON error: {text}"))
    }

    /// Make a token over the unix socket (an admin); answers its secret.
    fn token(&self, name: &str, extra: &[&str]) -> String {
        let mut a = vec!["token", "create", name];
        a.extend_from_slice(extra);
        let out = self.agent.json(&a);
        out["secret"].as_str().unwrap().to_string()
    }

    fn client(&self, token: &str) -> corral_client::Client {
        corral_client::Client::https(&self.url, Some(token), Some(&self.fingerprint)).unwrap()
    }

    /// `curl` against the agent: answers the head and body. `-k` is fine here: the tests
    /// of pinning are in remote.rs; this checks headers the typed client does not show.
    fn curl(&self, args: &[&str]) -> (String, String) {
        let o = Command::new("curl")
            .args(["-k", "-s", "-D", "-", "--max-time", "20"])
            .args(args)
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (head.to_string(), body.to_string())
    }
}

/// A halted VM with no disk (nothing to boot: these tests never start one).
fn create_vm(agent: &TestAgent, name: &str) {
    agent.ok(&["vm", "create", "--name", name, "--memory", "64M"]);
}

/// What a route answered a role: `Refused` is 403 (`forbidden`).
#[derive(Debug, PartialEq)]
enum Seen {
    Refused(String),
    /// Any other status, or a stream that was still open (the request was let through).
    Through(String),
}

async fn probe(c: &corral_client::Client, method: &str, path: &str) -> Seen {
    let method = hyper::Method::from_bytes(method.as_bytes()).unwrap();
    let body = (method != hyper::Method::GET).then(|| b"{}".to_vec());
    match tokio::time::timeout(Duration::from_secs(5), c.raw(method, path, body)).await {
        Err(_) => Seen::Through("still streaming".into()),
        Ok(Ok((status, _))) => Seen::Through(status.to_string()),
        Ok(Err(corral_client::ClientError::Api(e))) if e.kind == ErrorKind::Forbidden => {
            Seen::Refused(e.message)
        }
        Ok(Err(corral_client::ClientError::Api(e))) => {
            Seen::Through(format!("{}: {}", e.kind.as_str(), e.message))
        }
        Ok(Err(e)) => panic!("{path}: {e}"),
    }
}

/// Every route of the OpenAPI document, with a token of each role: viewers are refused
/// everything beyond reading, operators everything an admin alone may do, admins nothing.
/// A route the document has and the permission table lacks fails here (and in corral-api's
/// unit test, which also compares the table with the router).
#[test]
fn every_route_answers_each_role_as_the_table_says() {
    let r = Remote::start();
    let tokens: Vec<(Role, String)> = Role::ALL
        .iter()
        .map(|role| {
            (
                *role,
                r.token(&format!("walk-{role}"), &["--role", role.as_str()]),
            )
        })
        .collect();
    let table = corral_api::auth::PERMISSIONS;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut walked = 0;
    for op in corral_api::openapi::operations() {
        let method = op.method().to_ascii_uppercase();
        let entry = table
            .iter()
            .find(|(m, p, _)| *m == method && *p == op.path())
            .unwrap_or_else(|| panic!("{method} {} has no entry in auth::PERMISSIONS", op.path()));
        let permission = entry.2;
        // Names that do not exist: whatever a request is let through to changes nothing.
        let path = op
            .path()
            .replace("{name}", "nosuch")
            .replace("{action}", "pause")
            .replace("{device}", "disk9")
            .replace("{id}", "nosuch");
        for (role, secret) in &tokens {
            let seen = rt.block_on(probe(&r.client(secret), &method, &path));
            let what = format!("{role} {method} {path} ({permission}): {seen:?}");
            match permission {
                Permission::Ticket => assert!(
                    matches!(&seen, Seen::Through(s) if s.starts_with("unauthorized")),
                    "a console websocket wants its ticket, whoever asks: {what}"
                ),
                _ if role.allows(permission) => {
                    assert!(matches!(seen, Seen::Through(_)), "{what}")
                }
                _ => match &seen {
                    Seen::Refused(m) => {
                        // The refusal names the caller's role and the permission needed.
                        assert!(m.contains(role.as_str()), "{what}");
                        assert!(m.contains(&format!("permission {permission}")), "{what}");
                    }
                    Seen::Through(_) => panic!("should be refused: {what}"),
                },
            }
            // Viewers change nothing: every mutating route refuses them, except their own
            // browser session's login and logout.
            let own_session = op.path() == "/v1/session";
            if *role == Role::Viewer && method != "GET" && !own_session {
                assert!(matches!(seen, Seen::Refused(_)), "mutating: {what}");
            }
            walked += 1;
        }
    }
    assert!(walked >= 3 * 50, "walked {walked} route/role pairs");
    // Nothing was created by the walk.
    assert_eq!(r.agent.json(&["vm", "list"]), Value::Array(vec![]));
}

#[test]
fn tokens_expire_are_revoked_and_their_secrets_never_shown() {
    let r = Remote::start();
    create_vm(&r.agent, "w1");

    // Bad requests say what is wrong.
    let e = r.agent.fails(&["token", "create", "x", "--role", "root"]);
    assert!(e.contains("admin, operator or viewer"), "{e}");
    let e = r.agent.fails(&[
        "token",
        "create",
        "x",
        "--role",
        "viewer",
        "--expires",
        "30",
    ]);
    assert!(e.contains("unit") && e.contains("30d"), "{e}");
    let e = r
        .agent
        .fails(&["token", "create", "--role", "viewer", "--", "-x"]);
    assert!(e.contains("token name"), "{e}");
    let e = r
        .agent
        .fails(&["token", "create", "x", "--role", "admin", "--vms", "w*"]);
    assert!(e.contains("viewer and operator"), "{e}");

    let secret = r.token("ci", &["--role", "viewer", "--expires", "30d"]);
    assert!(secret.starts_with("ci."), "{secret}");
    let e = r
        .agent
        .fails(&["token", "create", "ci", "--role", "viewer"]);
    assert!(e.contains("exists"), "{e}");
    assert!(r.ok(&secret, &["vm", "list"]).contains("w1"));

    // Listed with role, expiry and last use; never the secret (human or JSON).
    let list = r.agent.json(&["token", "list"]);
    let ci = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci")
        .unwrap();
    assert_eq!(ci["role"], "viewer");
    let created = ci["created_ms"].as_u64().unwrap();
    let expires = ci["expires_ms"].as_u64().unwrap();
    assert_eq!(expires - created, 30 * 86400 * 1000);
    assert!(ci["last_used_ms"].as_u64().unwrap() >= created);
    let human = r.agent.ok(&["token", "list"]);
    assert!(human.contains("ci") && human.contains("viewer"), "{human}");
    let hex = secret.split_once('.').unwrap().1;
    for shown in [human, list.to_string()] {
        assert!(!shown.contains(hex), "the secret is listed: {shown}");
    }

    // A token that expired is refused with a 401 that says so.
    let short = r.token("short", &["--role", "operator", "--expires", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let e = r.err(&short, &["vm", "list"]);
    assert_eq!(e["kind"], "unauthorized");
    let m = e["message"].as_str().unwrap();
    assert!(m.contains("\"short\" expired at"), "{m}");

    // Revoked: refused from the next request on.
    r.agent.ok(&["token", "revoke", "ci"]);
    let e = r.err(&secret, &["vm", "list"]);
    assert_eq!(e["kind"], "unauthorized");
    assert!(e["message"].as_str().unwrap().contains("revoked"), "{e}");
    let e = r.agent.fails(&["token", "revoke", "ci"]);
    assert!(e.contains("no token named"), "{e}");

    // The web console logs in with a named token; the session has the token's role and
    // ends when the token is revoked.
    let op = r.token("desk", &["--role", "operator"]);
    let jar = r.agent.state_dir().join("cookies");
    let jar = jar.to_str().unwrap();
    let (head, body) = r.curl(&[
        "-c",
        jar,
        "-H",
        "content-type: application/json",
        "-d",
        &format!("{{\"token\": \"{op}\"}}"),
        &format!("{}/v1/session", r.url),
    ]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let csrf = serde_json::from_str::<Value>(&body).unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_string();
    let with_session = |method: &str, path: &str| {
        r.curl(&[
            "-b",
            jar,
            "-X",
            method,
            "-H",
            &format!("x-csrf-token: {csrf}"),
            "-H",
            "content-type: application/json",
            "-d",
            "{}",
            &format!("{}{path}", r.url),
        ])
    };
    let (head, body) = with_session("POST", "/v1/vms");
    assert!(head.starts_with("HTTP/1.1 403"), "{head}{body}");
    let (head, _) = with_session("POST", "/v1/vms/w1/actions/pause");
    assert!(
        head.starts_with("HTTP/1.1 409"),
        "an operator may try: {head}"
    );
    r.agent.ok(&["token", "revoke", "desk"]);
    let (head, _) = with_session("GET", "/v1/vms");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");

    // No secret in the audit log, nor in the state database.
    let audit = r.agent.ok(&["--json", "audit"]);
    let db = std::fs::read(r.agent.state_dir().join("corral.db")).unwrap();
    let db = String::from_utf8_lossy(&db);
    for s in [&secret, &short, &op, &r.bootstrap] {
        let hex = s.rsplit('.').next().unwrap();
        assert!(!audit.contains(hex), "a secret is in the audit log");
        assert!(!db.contains(hex), "a secret is in the state database");
    }
    let entries: Value = serde_json::from_str(&audit).unwrap();
    let logins: Vec<&Value> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["route"] == "/v1/session" && e["method"] == "POST")
        .collect();
    assert_eq!(logins.len(), 1, "{audit}");
    assert_eq!(logins[0]["who"], "desk");
    assert_eq!(logins[0]["status"], 200);
}

#[test]
fn a_vm_pattern_hides_and_refuses_other_vms_and_the_audit_log_says_who() {
    let r = Remote::start();
    for vm in ["web-1", "web-2", "db-1"] {
        create_vm(&r.agent, vm);
    }
    let db_id = r.agent.vm("db-1")["id"].as_str().unwrap().to_string();
    let ops = r.token("ops", &["--role", "operator", "--vms", "web-*"]);

    // Lists hide the other VMs and their tasks.
    let list: Value = serde_json::from_str(&r.ok(&ops, &["--json", "vm", "list"])).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web-1", "web-2"]);
    let tasks: Value = serde_json::from_str(&r.ok(&ops, &["--json", "task", "list"])).unwrap();
    let tasks = tasks.as_array().unwrap();
    assert!(!tasks.is_empty());
    assert!(tasks
        .iter()
        .all(|t| t["vm_name"].as_str().unwrap().starts_with("web-")));

    // Others are refused, by name or by id, shown or acted on; a VM that does not exist
    // is refused alike.
    for args in [
        vec!["vm", "show", "db-1"],
        vec!["vm", "show", &db_id],
        vec!["vm", "pause", "db-1"],
        vec!["vm", "show", "nosuch"],
    ] {
        let e = r.err(&ops, &args);
        assert_eq!(e["kind"], "forbidden", "{args:?}: {e}");
        assert!(e["message"].as_str().unwrap().contains("web-*"), "{e}");
    }
    let db_task = r
        .agent
        .json(&["task", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["vm_name"] == "db-1")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        r.err(&ops, &["task", "show", &db_task])["kind"],
        "forbidden"
    );

    // The event stream carries only its VMs' events.
    let (_, events) = r.curl(&[
        "--max-time",
        "2",
        "-H",
        &format!("authorization: Bearer {ops}"),
        &format!("{}/v1/events?since=0", r.url),
    ]);
    let events: Vec<Value> = events
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!events.is_empty());
    for e in &events {
        let vm = e["vm"]
            .as_str()
            .or(e["task"]["vm_name"].as_str())
            .unwrap_or("");
        assert!(vm.starts_with("web-"), "{e}");
    }

    // Its own VMs: an operator may power them (a halted VM cannot pause: 409), not delete.
    let e = r.err(&ops, &["vm", "pause", "web-1"]);
    assert_eq!(e["kind"], "invalid_state", "{e}");
    let e = r.err(&ops, &["vm", "delete", "web-1"]);
    assert_eq!(e["kind"], "forbidden");
    assert!(e["message"].as_str().unwrap().contains("operator"), "{e}");
    // Nor read the audit log.
    assert_eq!(r.err(&ops, &["audit"])["kind"], "forbidden");

    // The audit log: who, what, which VM, from where, the result; reads are not in it.
    let all = r.agent.json(&["audit"]);
    let all = all.as_array().unwrap();
    let pause = all
        .iter()
        .find(|e| e["who"] == "ops" && e["path"] == "/v1/vms/web-1/actions/pause")
        .unwrap_or_else(|| panic!("{all:?}"));
    assert_eq!(pause["method"], "POST");
    assert_eq!(pause["route"], "/v1/vms/{name}/actions/{action}");
    assert_eq!(pause["vm"], "web-1");
    assert_eq!(pause["role"], "operator");
    assert_eq!(pause["status"], 409);
    assert!(
        pause["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{pause}"
    );
    let refused = all
        .iter()
        .find(|e| e["who"] == "ops" && e["path"] == "/v1/vms/web-1" && e["method"] == "DELETE")
        .unwrap();
    assert_eq!(refused["status"], 403);
    assert!(all
        .iter()
        .all(|e| e["method"] != "GET" || e["route"] == "/v1/audit"));
    // VMs made over the unix socket are recorded too, as @local with the caller's uid.
    let local = all
        .iter()
        .find(|e| e["vm"].is_null() && e["path"] == "/v1/vms")
        .unwrap();
    assert_eq!(local["who"], "@local");
    assert!(
        local["peer"].as_str().unwrap().starts_with("unix"),
        "{local}"
    );

    // Filters: by VM and by time.
    let web1 = r.agent.json(&["audit", "--vm", "web-1"]);
    assert!(web1.as_array().unwrap().iter().all(|e| e["vm"] == "web-1"));
    assert!(web1.as_array().unwrap().len() >= 2);
    assert!(!r
        .agent
        .json(&["audit", "--since", "1h"])
        .as_array()
        .unwrap()
        .is_empty());
    let future = r.agent.json(&["audit", "--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(future, Value::Array(vec![]));
    let human = r.agent.ok(&["audit", "--vm", "web-1"]);
    assert!(
        human.contains("POST /v1/vms/web-1/actions/pause") && human.contains("ops"),
        "{human}"
    );
    let e = r.agent.fails(&["audit", "--since", "yesterday"]);
    assert!(e.contains("neither a duration"), "{e}");
}

#[test]
fn failed_tokens_are_throttled_bodies_bounded_and_the_socket_closed() {
    let r = Remote::start();

    // A body beyond the bound: 413 too_large, before any JSON is read.
    let admin = r.client(&r.bootstrap);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let big = vec![b' '; corral_api::JSON_BODY_LIMIT + 1];
    match rt.block_on(admin.raw(hyper::Method::POST, "/v1/vms", Some(big))) {
        Err(corral_client::ClientError::Api(e)) => {
            assert_eq!(e.kind, ErrorKind::TooLarge, "{e}")
        }
        other => panic!("{other:?}"),
    }

    // The unix socket: root and group corral when that group exists, else only the agent's
    // user.
    let meta = std::fs::metadata(&r.agent.socket).unwrap();
    let group = Command::new("getent")
        .args(["group", "corral"])
        .output()
        .unwrap();
    if group.status.success() {
        use std::os::unix::fs::MetadataExt;
        let gid: u32 = String::from_utf8_lossy(&group.stdout)
            .split(':')
            .nth(2)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert_eq!(meta.gid(), gid);
    } else {
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    // Requests without any token are refused, but are no guess: not counted.
    for _ in 0..corral_api::auth::MAX_FAILURES + 2 {
        let (head, _) = r.curl(&[&format!("{}/v1/vms", r.url)]);
        assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    }
    // Ten wrong tokens in a minute, then even the right one waits.
    for i in 0..corral_api::auth::MAX_FAILURES {
        let e = r.err(&format!("nobody.{i:064}"), &["vm", "list"]);
        assert_eq!(e["kind"], "unauthorized", "attempt {i}: {e}");
    }
    let e = r.err(&r.bootstrap, &["vm", "list"]);
    assert_eq!(e["kind"], "throttled", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("try again in"),
        "{e}"
    );
    let (head, _) = r.curl(&[
        "-H",
        &format!("authorization: Bearer {}", r.bootstrap),
        &format!("{}/v1/vms", r.url),
    ]);
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    let retry: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .unwrap_or_else(|| panic!("no Retry-After: {head}"))
        .trim()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // The unix socket is not throttled: it has no token to guess.
    r.agent.ok(&["vm", "list"]);

    // A client that never finishes its request's head is cut off (slow-loris).
    let addr = r.url.trim_start_matches("https://");
    let started = std::time::Instant::now();
    let mut slow = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", addr])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl");
    let mut stdin = slow.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"GET /v1/vms HTTP/1.1\r\nHost: x\r\n").unwrap();
    // stdin stays open: only the agent can end the connection.
    wait_until(Duration::from_secs(30), "the slow client cut off", || {
        slow.try_wait().unwrap().is_some()
    });
    let after = started.elapsed();
    drop(stdin);
    let limit = corral_api::remote::HEADER_READ_TIMEOUT;
    assert!(
        after >= limit && after < limit + Duration::from_secs(5),
        "{after:?}"
    );
}
