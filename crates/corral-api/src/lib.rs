//! The HTTP API every front end uses (CLI through corral-client, the web console, other
//! hosts). Routes are thin: decode a strictly-typed body (unknown fields are an error), call
//! one [`corral_agent::Agent`] method, encode the answer. Errors carry a kind that maps to one
//! status code here ([`status_of`]); the body is always `corral_model::ApiError`.
//!
//! Long operations answer `202 {"task": ID}` when called with `?wait=false`; by default they
//! wait and answer `200 {"task": ID, "vm": VmInfo}`. The serial console is an HTTP upgrade
//! (`Upgrade: corral-console`) spliced to the VM's console socket; events are NDJSON.
//!
//! The same router serves the unix socket (protected by its file mode and group) and, with
//! `corral serve --listen`, HTTPS listeners ([`remote`]). Its outermost layer, [`auth`],
//! identifies each caller (token, session, pool certificate, or the socket itself), checks
//! the route's permission in one table, throttles failed attempts and writes the audit log.

pub mod auth;
pub mod openapi;
pub mod pool;
pub mod remote;
mod routes;
mod transfer;
pub mod web;

pub use routes::{router, served_paths, JSON_BODY_LIMIT};

use axum::http::StatusCode;
use corral_model::ErrorKind;

/// The one table from error kind to HTTP status.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorKind::InvalidState => StatusCode::CONFLICT,
        ErrorKind::Unsupported => StatusCode::NOT_IMPLEMENTED,
        ErrorKind::Busy => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::Throttled => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
    }
}
