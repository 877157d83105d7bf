//! The OpenAPI document against a running agent: every route the router serves is documented
//! with the methods it answers, and real answers (successes and errors, no guest boot needed)
//! validate against the schema the document gives for that route and status.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

mod common;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

/// Decode a chunked body; an incomplete last chunk (a stream cut short) is dropped.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        let start = eol + 2;
        if size == 0 || raw.len() < start + size {
            break;
        }
        out.extend_from_slice(&raw[start..start + size]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
    out
}

/// One HTTP/1.1 request over the agent's unix socket, written by hand so the test sees the
/// exact bytes the agent sends (no client library in between). Streams are read until
/// `read_for` passes.
fn http(socket: &Path, method: &str, path: &str, body: Option<&str>, read_for: Duration) -> Answer {
    let mut s = UnixStream::connect(socket).expect("connect to the agent");
    s.set_read_timeout(Some(read_for)).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: corral\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let rest = &raw[split + 4..];
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let body = if header("transfer-encoding").eq_ignore_ascii_case("chunked") {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Answer {
        status,
        content_type: header("content-type"),
        body,
    }
}

/// Only the status of a request (for probing which methods a path answers).
fn status_of(socket: &Path, method: &str, path: &str) -> u16 {
    let mut s = UnixStream::connect(socket).expect("connect to the agent");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: corral\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line")
}

struct Checker {
    doc: Value,
    socket: std::path::PathBuf,
    checked: Vec<String>,
}

impl Checker {
    /// Validate `value` against `schema`, resolving `#/components/...` in the document.
    fn validate(&self, schema: &Value, value: &Value, what: &str) {
        let mut root = schema.as_object().cloned().expect("schema object");
        root.insert("components".into(), self.doc["components"].clone());
        let validator = jsonschema::draft202012::new(&Value::Object(root))
            .unwrap_or_else(|e| panic!("{what}: the document's schema does not compile: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what}: the answer does not match the OpenAPI document:\n{}\nanswer: {}",
            errors.join("\n"),
            value
        );
    }

    /// Call `method concrete` and check the answer against `method template` in the document.
    fn call(
        &mut self,
        method: &str,
        template: &str,
        concrete: &str,
        body: Option<Value>,
        want: u16,
    ) -> Value {
        let body = body.map(|b| b.to_string());
        let read_for = if template == "/v1/events" {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(60)
        };
        let a = http(&self.socket, method, concrete, body.as_deref(), read_for);
        let what = format!("{method} {concrete} -> {}", a.status);
        assert_eq!(
            a.status,
            want,
            "{what}: {}",
            String::from_utf8_lossy(&a.body)
        );
        let op = &self.doc["paths"][template][method.to_ascii_lowercase()];
        assert!(op.is_object(), "{method} {template} is not in the document");
        let documented = &op["responses"][a.status.to_string()];
        let answer = if a.status >= 400 {
            assert!(documented.is_null(), "{what}: errors go under `default`");
            &op["responses"]["default"]
        } else {
            assert!(
                documented.is_object(),
                "{what}: status {} is not documented",
                a.status
            );
            documented
        };
        self.checked
            .push(format!("{method} {template} {}", a.status));
        let Some(content) = answer["content"].as_object() else {
            assert!(a.body.is_empty(), "{what}: undocumented body");
            return Value::Null;
        };
        let (ct, media) = content.iter().next().expect("one media type");
        assert!(
            a.content_type.starts_with(ct.as_str()),
            "{what}: content type {:?}, documented {ct}",
            a.content_type
        );
        let schema = &media["schema"];
        match ct.as_str() {
            "application/json" => {
                let v: Value = serde_json::from_slice(&a.body)
                    .unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
                self.validate(schema, &v, &what);
                v
            }
            "application/x-ndjson" => {
                let text = String::from_utf8_lossy(&a.body).to_string();
                let lines: Vec<Value> = text
                    .lines()
                    .map(|l| serde_json::from_str(l).expect("one JSON value per line"))
                    .collect();
                assert!(!lines.is_empty(), "{what}: no events");
                for l in &lines {
                    self.validate(schema, l, &what);
                }
                Value::Array(lines)
            }
            _ => Value::Null,
        }
    }
}

#[test]
fn answers_match_the_openapi_document() {
    let agent = TestAgent::start();
    let mut c = Checker {
        doc: corral_api::openapi::document(),
        socket: agent.socket.clone(),
        checked: Vec::new(),
    };
    let sr_dir = agent.state_dir().join("sr-extra");
    std::fs::create_dir_all(&sr_dir).unwrap();

    c.call("GET", "/v1/host", "/v1/host", None, 200);
    c.call("GET", "/v1/vms", "/v1/vms", None, 200);
    let created = c.call(
        "POST",
        "/v1/vms",
        "/v1/vms",
        Some(
            json!({"name": "s1", "description": "schema check", "memory_bytes": 64u64 << 20,
                    "disks": [{"size_bytes": 1u64 << 20}], "nics": [{"network": "default"}]}),
        ),
        201,
    );
    let task = created["task"].as_str().unwrap().to_string();
    c.call("GET", "/v1/vms", "/v1/vms", None, 200);
    c.call("GET", "/v1/vms/{name}", "/v1/vms/s1", None, 200);
    c.call(
        "PATCH",
        "/v1/vms/{name}",
        "/v1/vms/s1",
        Some(json!({"description": "changed", "cpu_weight": 512})),
        200,
    );
    // The web console's routes over the unix socket: no --listen, so no login (501); no
    // session (401); a console ticket for a halted VM says why not (409).
    c.call(
        "POST",
        "/v1/session",
        "/v1/session",
        Some(json!({"token": "0123456789abcdef"})),
        501,
    );
    c.call("GET", "/v1/session", "/v1/session", None, 401);
    c.call(
        "POST",
        "/v1/vms/{name}/console-ticket",
        "/v1/vms/s1/console-ticket",
        Some(json!({"kind": "serial"})),
        409,
    );
    c.call(
        "POST",
        "/v1/vms/{name}/disks",
        "/v1/vms/s1/disks",
        Some(json!({"size_bytes": 1u64 << 20, "format": "raw", "bus": "sata"})),
        200,
    );
    c.call(
        "DELETE",
        "/v1/vms/{name}/disks/{device}",
        "/v1/vms/s1/disks/disk1",
        None,
        200,
    );
    c.call(
        "POST",
        "/v1/vms/{name}/nics",
        "/v1/vms/s1/nics",
        Some(json!({"network": "default", "model": "e1000"})),
        200,
    );
    c.call(
        "DELETE",
        "/v1/vms/{name}/nics/{device}",
        "/v1/vms/s1/nics/nic1",
        None,
        200,
    );
    c.call(
        "DELETE",
        "/v1/vms/{name}/cdrom",
        "/v1/vms/s1/cdrom",
        None,
        200,
    );
    c.call(
        "GET",
        "/v1/vms/{name}/history",
        "/v1/vms/s1/history",
        None,
        200,
    );
    c.call(
        "GET",
        "/v1/vms/{name}/console/log",
        "/v1/vms/s1/console/log",
        None,
        200,
    );
    c.call("GET", "/v1/tasks", "/v1/tasks", None, 200);
    c.call("GET", "/v1/tasks", "/v1/tasks?limit=2&vm=s1", None, 200);
    let over = c.call("GET", "/v1/tasks", "/v1/tasks?limit=9999", None, 400);
    assert!(
        over.to_string()
            .contains("limit must be between 1 and 5000"),
        "{over}"
    );
    c.call(
        "GET",
        "/v1/tasks/{id}",
        &format!("/v1/tasks/{task}"),
        None,
        200,
    );
    c.call(
        "GET",
        "/v1/tasks/{id}",
        &format!("/v1/tasks/{task}?wait=true"),
        None,
        200,
    );
    c.call("GET", "/v1/srs", "/v1/srs", None, 200);
    c.call(
        "POST",
        "/v1/srs",
        "/v1/srs",
        Some(json!({"name": "extra", "path": sr_dir})),
        201,
    );
    c.call("GET", "/v1/isos", "/v1/isos", None, 200);
    c.call("GET", "/v1/networks", "/v1/networks", None, 200);
    let templates = c.call("GET", "/v1/templates", "/v1/templates", None, 200);
    let first = templates[0]["name"].as_str().expect("built-in templates");
    c.call(
        "GET",
        "/v1/templates/{name}",
        &format!("/v1/templates/{first}"),
        None,
        200,
    );
    let events = c.call("GET", "/v1/events", "/v1/events?since=0", None, 200);
    assert!(events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "vm_created" && e["vm"] == "s1"));

    // Tokens and the audit log (over the socket: an admin).
    let made = c.call(
        "POST",
        "/v1/tokens",
        "/v1/tokens",
        Some(json!({"name": "schema", "role": "operator", "vms": "s*", "expires_in_secs": 3600})),
        201,
    );
    assert!(made["secret"].as_str().unwrap().starts_with("schema."));
    c.call("GET", "/v1/tokens", "/v1/tokens", None, 200);
    c.call(
        "POST",
        "/v1/tokens",
        "/v1/tokens",
        Some(json!({"name": "schema", "role": "root"})),
        400,
    );
    c.call(
        "DELETE",
        "/v1/tokens/{name}",
        "/v1/tokens/schema",
        None,
        204,
    );
    let audit = c.call("GET", "/v1/audit", "/v1/audit?vm=s1", None, 200);
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["who"] == "@local"));

    // Errors: every one is an ApiError under `default`.
    c.call("GET", "/v1/vms/{name}", "/v1/vms/nope", None, 404);
    c.call(
        "POST",
        "/v1/vms",
        "/v1/vms",
        Some(json!({"name": "s1"})),
        409,
    );
    c.call(
        "POST",
        "/v1/vms",
        "/v1/vms",
        Some(json!({"name": "s2", "bogus": 1})),
        400,
    );
    let halted = c.call(
        "POST",
        "/v1/vms/{name}/actions/{action}",
        "/v1/vms/s1/actions/pause",
        None,
        409,
    );
    assert_eq!(halted["kind"], "invalid_state");
    c.call(
        "POST",
        "/v1/vms/{name}/actions/{action}",
        "/v1/vms/s1/actions/explode",
        None,
        404,
    );
    c.call(
        "GET",
        "/v1/vms/{name}/console",
        "/v1/vms/s1/console",
        None,
        409,
    );
    c.call(
        "POST",
        "/v1/tasks/{id}/cancel",
        &format!("/v1/tasks/{task}/cancel"),
        None,
        409,
    );
    c.call(
        "POST",
        "/v1/networks",
        "/v1/networks",
        Some(json!({"name": "lan", "bridge": "no-such-br0"})),
        400,
    );
    c.call(
        "DELETE",
        "/v1/templates/{name}",
        "/v1/templates/no-such-template",
        None,
        404,
    );
    // Stats, placement advice, clones, templates and installs of a halted VM.
    c.call("GET", "/v1/vms/{name}/stats", "/v1/vms/s1/stats", None, 200);
    c.call(
        "GET",
        "/v1/vms/{name}/recommend-host",
        "/v1/vms/s1/recommend-host",
        None,
        200,
    );
    c.call(
        "POST",
        "/v1/vms/{name}/clone",
        "/v1/vms/s1/clone",
        Some(json!({"name": "s1-clone"})),
        201,
    );
    c.call(
        "POST",
        "/v1/vms/{name}/convert-to-template",
        "/v1/vms/s1-clone/convert-to-template",
        None,
        200,
    );
    c.call(
        "POST",
        "/v1/installs",
        "/v1/installs",
        Some(
            json!({"vm": {"name": "i1", "template": "debian-12", "vcpus": 9},
                    "source": {"kind": "location", "location": "http://127.0.0.1:9/"}}),
        ),
        400,
    );
    c.call(
        "POST",
        "/v1/installs",
        "/v1/installs?dry_run=true",
        Some(
            json!({"vm": {"name": "i3", "template": "corral-test-guest"},
                    "source": {"kind": "disk_import", "image": guest().disk_qcow2}}),
        ),
        200,
    );
    c.call(
        "POST",
        "/v1/installs",
        "/v1/installs",
        Some(json!({"vm": {"name": "i2", "template": "s1-clone"}})),
        202,
    );
    c.call(
        "DELETE",
        "/v1/vms/{name}",
        "/v1/vms/s1?keep_disks=false",
        None,
        200,
    );
    c.call("GET", "/v1/vms", "/v1/vms", None, 200);
    assert!(c.checked.len() >= 30, "{:?}", c.checked);
}

/// Every path the router serves, probed with every method: the ones it answers (anything
/// but 405) are exactly the documented ones. Probes use ids that do not exist and empty
/// bodies, so nothing changes.
#[test]
fn every_served_route_and_method_is_documented() {
    let agent = TestAgent::start();
    let doc = corral_api::openapi::document();
    let documented = doc["paths"].as_object().unwrap();
    let mut probed = 0;
    for path in corral_api::served_paths() {
        let concrete: String = path
            .split('/')
            .map(|s| if s.starts_with('{') { "zz-probe" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let status = status_of(&agent.socket, method, &concrete);
            let in_doc = documented
                .get(path)
                .is_some_and(|ops| ops.get(method.to_ascii_lowercase()).is_some());
            if status == 405 {
                assert!(!in_doc, "{method} {path} is documented but not served");
            } else {
                assert!(
                    in_doc,
                    "{method} {path} is served (answered {status}) but not in the OpenAPI \
                     document: add its line to corral_api::openapi::operations"
                );
                probed += 1;
            }
        }
    }
    let documented_ops: usize = documented
        .values()
        .map(|ops| ops.as_object().unwrap().len())
        .sum();
    assert_eq!(
        probed, documented_ops,
        "every documented operation answered"
    );
    // Unknown paths reach the fallback, an ApiError too.
    let a = http(
        &agent.socket,
        "GET",
        "/v1/nope",
        None,
        Duration::from_secs(10),
    );
    assert_eq!(a.status, 404);
    let v: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["kind"], "not_found");
}
