#![no_main]
//! The console websocket's handshake on arbitrary input: the query string (`?ticket=`, parsed
//! as axum's `Query` does, with serde_urlencoded), the `Cookie` header the session is read
//! from, and the ticket decision. Nothing panics; a cookie value is a piece of its header with
//! no `;` in it; and a ticket opens a console exactly when it is known, unexpired, for this VM
//! and console, and either unbound or bound to the session the cookie names.
//!
//! The code under test is `crates/corral-api/src/web/handshake.rs` itself, included as it is
//! (it depends on `http`, `serde` and `subtle` only), so this crate does not build the agent.
#[path = "../../../corral-api/src/web/handshake.rs"]
mod handshake;

use handshake::{admit, cookie, Issued, TicketQuery};
use http::header::{HeaderMap, HeaderValue, COOKIE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    // Fields separated by 0xFF: query, Cookie header, the ticket's session, its VM, the VM
    // asked for.
    let mut parts = rest.split(|b| *b == 0xFF);
    let query = parts.next().unwrap_or_default();
    let cookie_header = parts.next().unwrap_or_default();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let session = text(parts.next().unwrap_or_default());
    let issued_vm = text(parts.next().unwrap_or_default());
    let asked_vm = text(parts.next().unwrap_or_default());

    if let Ok(q) = serde_urlencoded::from_bytes::<TicketQuery>(query) {
        // A ticket that decodes is text the ticket table can be asked about.
        assert!(q.ticket.is_none_or(|t| std::str::from_utf8(t.as_bytes()).is_ok()));
    }

    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(cookie_header) {
        headers.append(COOKIE, v);
    }
    let presented = cookie(&headers, "corral_session");
    if let Some(p) = &presented {
        assert!(!p.contains(';'), "a cookie value with a ';': {p:?}");
        let raw = String::from_utf8_lossy(cookie_header);
        assert!(raw.contains(p.as_str()), "a cookie value not in its header: {p:?}");
    }

    let known = flags & 1 != 0;
    let bound = flags & 2 != 0;
    let expired = flags & 4 != 0;
    let (issued_kind, asked_kind) = ((flags >> 3) & 1, (flags >> 4) & 1);
    let issued = known.then(|| Issued {
        session: bound.then_some(session.as_str()),
        vm_id: issued_vm.as_str(),
        kind: issued_kind,
        expired,
    });
    let verdict = admit(issued, &asked_vm, asked_kind, presented.as_deref());
    let expected = known
        && !expired
        && issued_vm == asked_vm
        && issued_kind == asked_kind
        && (!bound || presented.as_deref() == Some(session.as_str()));
    assert_eq!(verdict.is_ok(), expected, "verdict {verdict:?}");
});
