//! The checked-in OpenAPI document (`docs/openapi.json`) is exactly what the code generates.
//! After changing a type or a route: `CORRAL_BLESS=1 cargo test -p corral-api --test openapi`,
//! then review the diff of docs/openapi.json.

use serde_json::Value;
use std::path::PathBuf;

fn checked_in() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[test]
fn checked_in_document_matches_the_code() {
    let generated = corral_api::openapi::document_text();
    let path = checked_in();
    if std::env::var_os("CORRAL_BLESS").is_some_and(|v| v != "0") {
        std::fs::write(&path, &generated).expect("write docs/openapi.json");
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    if on_disk != generated {
        let first = on_disk
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(on_disk.lines().count().min(generated.lines().count()));
        panic!(
            "docs/openapi.json differs from the generated document from line {} on \
             (CORRAL_BLESS=1 cargo test -p corral-api --test openapi regenerates it; review the diff)",
            first + 1
        );
    }
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    if let Some(s) = x.as_str() {
                        out.push(s.to_string());
                    }
                }
                refs(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn every_reference_resolves_and_every_operation_answers() {
    let doc = corral_api::openapi::document();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external $ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
    }
    let paths = doc["paths"].as_object().unwrap();
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            let answers = op["responses"].as_object().unwrap();
            assert!(answers.len() >= 2, "{method} {path} documents an answer");
            for seg in path.split('/').filter(|s| s.starts_with('{')) {
                let name = seg.trim_matches(['{', '}']);
                assert!(
                    op["parameters"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|x| x["name"] == name)),
                    "{method} {path} documents its parameter {name}"
                );
            }
        }
    }
    // Every path the router serves is documented (methods are checked against a running
    // agent in crates/corral/tests/api_schema.rs).
    for served in corral_api::served_paths() {
        assert!(
            paths.contains_key(served),
            "route {served} is served but missing from the OpenAPI document \
             (add its line to corral_api::openapi::operations)"
        );
    }
    assert_eq!(
        paths.len(),
        corral_api::served_paths().len(),
        "documented paths that no route serves"
    );
}
