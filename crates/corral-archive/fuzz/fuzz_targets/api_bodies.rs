#![no_main]
//! Every JSON request body of the HTTP API (the model types the routes deserialize, as
//! listed in `crates/corral-api/src/openapi.rs`) on arbitrary bytes: the first byte picks the
//! type. A body is refused or accepted without a panic; what is accepted serializes and
//! parses back to the same value (what the agent stores and forwards to other members is what
//! it was sent); and the model's own checks of the names and patterns in it answer without a
//! panic.
use corral_model::api::*;
use corral_model::auth::{validate_vm_pattern, TokenCreateRequest};
use corral_model::migrate::MigrateRequest;
use corral_model::pool::EvacuateRequest;
use corral_model::transfer::{CloneRequest, P2vFinishRequest, P2vStartRequest};
use corral_model::validate::validate_name;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Parse as `T`; if accepted, check the round trip and answer the value.
fn body<T: DeserializeOwned + Serialize>(data: &[u8]) -> Option<serde_json::Value> {
    let parsed: T = serde_json::from_slice(data).ok()?;
    let value = serde_json::to_value(&parsed).expect("an accepted body serializes");
    let again: T = serde_json::from_value(value.clone()).expect("a serialized body parses back");
    assert_eq!(
        serde_json::to_value(&again).expect("serializes"),
        value,
        "the body changed on its round trip"
    );
    Some(value)
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let accepted = match pick % 17 {
        0 => body::<VmCreateRequest>(rest),
        1 => body::<VmUpdateRequest>(rest),
        2 => body::<VmInstallRequest>(rest),
        3 => body::<ActionRequest>(rest),
        4 => body::<CdromInsertRequest>(rest),
        5 => body::<DiskRequest>(rest),
        6 => body::<NicRequest>(rest),
        7 => body::<NetworkCreateRequest>(rest),
        8 => body::<SrCreateRequest>(rest),
        9 => body::<TemplateCreateRequest>(rest),
        10 => body::<CloneRequest>(rest),
        11 => body::<MigrateRequest>(rest),
        12 => body::<EvacuateRequest>(rest),
        13 => body::<TokenCreateRequest>(rest),
        14 => body::<P2vStartRequest>(rest),
        15 => body::<P2vFinishRequest>(rest),
        _ => body::<serde_json::Value>(rest),
    };
    // The checks the agent applies first, on whatever the body carried.
    if let Some(v) = accepted {
        if let Some(name) = v.get("name").and_then(|n| n.as_str()) {
            let _ = validate_name("VM", name);
        }
        if let Some(pattern) = v.get("vms").and_then(|n| n.as_str()) {
            let _ = validate_vm_pattern(pattern);
        }
        for dir in v.get("exclude").and_then(|e| e.as_array()).into_iter().flatten() {
            if let Some(d) = dir.as_str() {
                // What passes is quoted into a guest shell command: it must be harmless.
                if corral_convert::exclude_path_ok(d).is_ok() {
                    assert!(!d.contains(['\'', '$', '`', ' ', '\\', ';']), "{d:?}");
                }
            }
        }
    }
});
