//! The console handshake's decisions, apart from the state that feeds them: which session a
//! request's `Cookie` headers name, whether the ticket in a websocket's query string opens
//! the console asked for, and the constant-time comparison both rest on. Depends on `http`,
//! `serde` and `subtle` only, so the fuzz target `console_handshake`
//! (`crates/corral-archive/fuzz`) includes this file as it is.

use http::header::{HeaderMap, COOKIE};

/// The query string of a console websocket (`?ticket=`); nothing else is accepted.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketQuery {
    #[serde(default)]
    pub ticket: Option<String>,
}

/// Equal strings, in time that does not depend on where they differ.
pub fn ct_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
}

/// What a presented ticket was issued for, as the ticket table holds it.
pub struct Issued<'a, K> {
    /// The browser session that asked; `None`: asked with the bearer token or over the unix
    /// socket, so the ticket alone opens the console.
    pub session: Option<&'a str>,
    pub vm_id: &'a str,
    pub kind: K,
    pub expired: bool,
}

/// Whether a ticket opens console `kind` of VM `vm_id` for a request whose cookie names the
/// live session `presented` (if any). `issued` is the ticket as taken from the table (`None`:
/// unknown or already used). The refusal says what was wrong, never which part matched.
pub fn admit<K: PartialEq>(
    issued: Option<Issued<'_, K>>,
    vm_id: &str,
    kind: K,
    presented: Option<&str>,
) -> Result<(), &'static str> {
    let Some(t) = issued else {
        return Err("unknown or already used console ticket");
    };
    if t.expired {
        return Err("the console ticket expired (they last 30 s)");
    }
    if t.vm_id != vm_id || t.kind != kind {
        return Err("the console ticket was issued for another VM or console");
    }
    match (t.session, presented) {
        (None, _) => Ok(()),
        (Some(s), Some(p)) if ct_eq(s, p) => Ok(()),
        (Some(_), Some(_)) => Err("the console ticket belongs to another browser session"),
        (Some(_), None) => {
            Err("the browser session of this console ticket has ended; log in again")
        }
    }
}
