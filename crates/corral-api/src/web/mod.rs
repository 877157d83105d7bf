//! The web Administrator Console's server side: login sessions, CSRF, one-time console
//! tickets, the websocket bridges to a VM's graphical (VNC) and serial consoles, and the
//! embedded page ([`assets`]). Everything else the page does goes through the ordinary API
//! routes, exactly as the CLI does: there is no second code path in the agent.
//!
//! A browser's request flows: HTTPS accept ([`crate::remote::serve_tls`]) -> [`guard`],
//! which lets through the page's assets and the login, lets through the websocket routes
//! (they check their ticket themselves, since a browser cannot put headers on a websocket),
//! and otherwise wants either the bearer token (CLI and other hosts, unchanged) or a session
//! cookie; a cookie-authenticated request that changes something (any method but GET/HEAD)
//! must also carry the session's CSRF token in `X-CSRF-Token`, which a page of another
//! origin cannot read. SameSite=Strict keeps the cookie off cross-site requests in the
//! first place; the CSRF header is the second lock.
//!
//! Login (`POST /v1/session {"token"}`) compares the agent's token in constant time and sets
//! `corral_session=ID; HttpOnly; Secure; SameSite=Strict`. A console is opened by
//! `POST /v1/vms/NAME/console-ticket {"kind": "vnc"|"serial"}`, which answers a random
//! ticket bound to the session and the VM's id, usable once within [`TICKET_TTL`]; the page
//! then opens `wss://.../v1/vms/NAME/vnc?ticket=T` (or `/console/ws`), whose handler
//! ([`console_ws`]) takes the ticket, checks it against the cookie and the VM, and bridges.

pub mod assets;
pub mod console_ws;

use crate::routes::{Body_, Failure};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use corral_agent::Agent;
use corral_model::{ApiError, ErrorKind};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A session lives this long after login (then the page asks for the token again).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// A console ticket must be used within this time (the issue's bound is 30 s).
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Bounds on what an agent keeps in memory for browsers, whoever calls.
const MAX_SESSIONS: usize = 1024;
const MAX_TICKETS: usize = 4096;
/// The cookie's name.
pub const COOKIE: &str = "corral_session";
/// The header a cookie-authenticated mutating request must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// `POST /v1/session`: log in with the agent's token.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// The agent's token (`STATE_DIR/token`).
    pub token: String,
}

/// A browser session: the CSRF token the page sends in `X-CSRF-Token` on every mutating
/// request (the session id itself travels only in the HttpOnly cookie).
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SessionAnswer {
    pub csrf: String,
    /// Seconds until the session ends.
    pub expires_in_secs: u64,
}

/// Which console a ticket opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleKind {
    /// The graphical console (VNC over a websocket; noVNC in the page).
    Vnc,
    /// The serial console (bytes over a websocket, scroll-back first; xterm.js in the page).
    Serial,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketRequest {
    pub kind: ConsoleKind,
}

/// A one-time console ticket and the websocket path that takes it.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TicketAnswer {
    pub ticket: String,
    /// `/v1/vms/NAME/vnc?ticket=...` or `/v1/vms/NAME/console/ws?ticket=...`.
    pub path: String,
    pub expires_in_ms: u64,
}

struct Session {
    csrf: String,
    expires: Instant,
    /// Never sent on: dropped when the session ends (logout, or removed after expiry), which
    /// wakes every [`SessionEnd`] of it.
    alive: tokio::sync::watch::Sender<()>,
}

/// Resolves when a session ends (logout or expiry): event streams and consoles opened under
/// it stop then, instead of outliving the login that opened them.
pub struct SessionEnd {
    expires: Instant,
    alive: tokio::sync::watch::Receiver<()>,
}

impl SessionEnd {
    pub async fn wait(mut self) {
        tokio::select! {
            _ = tokio::time::sleep_until(self.expires.into()) => {}
            // Only an error can come: nothing is ever sent, the sender is dropped at the end.
            _ = self.alive.changed() => {}
        }
    }
}

struct Ticket {
    /// The session that asked; `None` when asked over the unix socket or with the bearer
    /// token (no cookie to bind to: the ticket alone opens the console).
    session: Option<String>,
    vm_id: String,
    kind: ConsoleKind,
    expires: Instant,
}

/// The console's state: sessions and tickets (memory only: a restarted agent logs browsers
/// out, which is the safe direction).
pub struct Web {
    /// The agent's token, for login; `None` when the agent has no `--listen` (then there is
    /// no token and no browser to log in).
    token: Option<String>,
    sessions: Mutex<HashMap<String, Session>>,
    tickets: Mutex<HashMap<String, Ticket>>,
}

/// The session a request was authenticated by, put into the request's extensions by
/// [`guard`] for handlers that bind things to it (tickets).
#[derive(Clone, Debug)]
pub struct SessionId(pub String);

fn random_hex(bytes: usize) -> Result<String, ApiError> {
    let mut b = vec![0u8; bytes];
    getrandom::getrandom(&mut b)
        .map_err(|e| ApiError::internal(format!("no randomness for a session: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn ct_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
}

impl Web {
    /// Console state for an agent whose token is `token` (HTTPS listeners configured).
    pub fn with_token(token: Option<String>) -> Arc<Self> {
        Arc::new(Web {
            token,
            sessions: Mutex::new(HashMap::new()),
            tickets: Mutex::new(HashMap::new()),
        })
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tickets(&self) -> std::sync::MutexGuard<'_, HashMap<String, Ticket>> {
        self.tickets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live session named by the request's cookie, with its CSRF token.
    fn session_of(&self, headers: &HeaderMap) -> Option<(String, String)> {
        self.session_with_end(headers)
            .map(|(id, csrf, _)| (id, csrf))
    }

    fn session_with_end(&self, headers: &HeaderMap) -> Option<(String, String, SessionEnd)> {
        let id = cookie(headers, COOKIE)?;
        let mut sessions = self.sessions();
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        sessions.get(&id).map(|s| {
            let end = SessionEnd {
                expires: s.expires,
                alive: s.alive.subscribe(),
            };
            (id.clone(), s.csrf.clone(), end)
        })
    }

    fn login(&self, given: &str) -> Result<(String, SessionAnswer), ApiError> {
        let Some(token) = &self.token else {
            return Err(ApiError::new(
                ErrorKind::Unsupported,
                "the web console needs HTTPS: start the agent with `corral serve --listen ADDR:PORT`",
            ));
        };
        if !ct_eq(given.trim(), token) {
            return Err(ApiError::new(
                ErrorKind::Unauthorized,
                "wrong token: it is in STATE_DIR/token on the agent's host",
            ));
        }
        let id = random_hex(32)?;
        let csrf = random_hex(32)?;
        let mut sessions = self.sessions();
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            // Drop the oldest rather than refuse the person at the keyboard.
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                expires: now + SESSION_TTL,
                alive: tokio::sync::watch::channel(()).0,
            },
        );
        Ok((
            id,
            SessionAnswer {
                csrf,
                expires_in_secs: SESSION_TTL.as_secs(),
            },
        ))
    }

    fn issue_ticket(
        &self,
        session: Option<String>,
        vm_id: String,
        kind: ConsoleKind,
    ) -> Result<String, ApiError> {
        let ticket = random_hex(32)?;
        let mut tickets = self.tickets();
        let now = Instant::now();
        tickets.retain(|_, t| t.expires > now);
        if tickets.len() >= MAX_TICKETS {
            return Err(ApiError::new(
                ErrorKind::Busy,
                "too many console tickets outstanding; try again in 30 s",
            ));
        }
        tickets.insert(
            ticket.clone(),
            Ticket {
                session,
                vm_id,
                kind,
                expires: now + TICKET_TTL,
            },
        );
        Ok(ticket)
    }

    /// Refuse a missing or unknown ticket before anything else is looked at, so a caller
    /// without one cannot even learn whether a VM exists. The ticket stays unused.
    pub fn check_ticket_known(&self, ticket: Option<&str>) -> Result<(), ApiError> {
        let known = ticket
            .filter(|t| !t.is_empty())
            .is_some_and(|t| self.tickets().contains_key(t));
        if known {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorKind::Unauthorized,
                "a console websocket needs a valid ticket: POST /v1/vms/NAME/console-ticket, then connect with ?ticket= within 30 s",
            ))
        }
    }

    /// Take (and so use up) a ticket for `kind` on VM `vm_id`, presented with `headers`.
    /// Every refusal says what was wrong, never which part of a ticket matched. A ticket of a
    /// browser session answers that session's end, which closes the console.
    pub fn redeem(
        &self,
        ticket: Option<&str>,
        headers: &HeaderMap,
        vm_id: &str,
        kind: ConsoleKind,
    ) -> Result<Option<SessionEnd>, ApiError> {
        let unauthorized = |m: &str| ApiError::new(ErrorKind::Unauthorized, m.to_string());
        let Some(ticket) = ticket.filter(|t| !t.is_empty()) else {
            return Err(unauthorized(
                "a console websocket needs a ticket: POST /v1/vms/NAME/console-ticket, then connect with ?ticket=",
            ));
        };
        let taken = self.tickets().remove(ticket);
        let Some(t) = taken else {
            return Err(unauthorized("unknown or already used console ticket"));
        };
        if t.expires <= Instant::now() {
            return Err(unauthorized("the console ticket expired (they last 30 s)"));
        }
        if t.vm_id != vm_id || t.kind != kind {
            return Err(unauthorized(
                "the console ticket was issued for another VM or console",
            ));
        }
        let Some(session) = &t.session else {
            return Ok(None);
        };
        match self.session_with_end(headers) {
            Some((id, _, end)) if ct_eq(&id, session) => Ok(Some(end)),
            Some(_) => Err(unauthorized(
                "the console ticket belongs to another browser session",
            )),
            None => Err(unauthorized(
                "the browser session of this console ticket has ended; log in again",
            )),
        }
    }
}

fn session_cookie(id: &str, max_age: u64) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"
    ))
    .map_err(|e| ApiError::internal(format!("cannot build the session cookie: {e}")))
}

/// `POST /v1/session`: the agent's token in, a session cookie and a CSRF token out.
pub async fn login(
    Extension(web): Extension<Arc<Web>>,
    Body_(req): Body_<SessionRequest>,
) -> Result<Response, Failure> {
    let (id, answer) = web.login(&req.token)?;
    let mut resp = Json(answer).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&id, SESSION_TTL.as_secs())?,
    );
    Ok(resp)
}

fn no_session() -> ApiError {
    ApiError::new(
        ErrorKind::Unauthorized,
        "not logged in: POST /v1/session with the agent's token",
    )
}

/// `GET /v1/session`: the CSRF token of the cookie's session (a reloaded page needs it again;
/// another origin cannot read it, since the agent sends no CORS headers).
pub async fn session_info(
    Extension(web): Extension<Arc<Web>>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let (_, csrf) = web.session_of(&headers).ok_or_else(no_session)?;
    Ok(Json(SessionAnswer {
        csrf,
        expires_in_secs: SESSION_TTL.as_secs(),
    })
    .into_response())
}

/// `DELETE /v1/session`: log out (the cookie is cleared; tickets of the session die with it
/// at their own short expiry).
pub async fn logout(
    Extension(web): Extension<Arc<Web>>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let (id, _) = web.session_of(&headers).ok_or_else(no_session)?;
    web.sessions().remove(&id);
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, session_cookie("", 0)?);
    Ok(resp)
}

/// `POST /v1/vms/{name}/console-ticket`: a one-time ticket for one console of one VM.
pub async fn console_ticket(
    State(agent): State<Arc<Agent>>,
    Extension(web): Extension<Arc<Web>>,
    session: Option<Extension<SessionId>>,
    Path(name): Path<String>,
    Body_(req): Body_<TicketRequest>,
) -> Result<Response, Failure> {
    let info = agent.vm(&name)?.info();
    console_ws::check_available(&info, req.kind)?;
    let ticket = web.issue_ticket(session.map(|s| s.0 .0), info.id.clone(), req.kind)?;
    let route = match req.kind {
        ConsoleKind::Vnc => "vnc",
        ConsoleKind::Serial => "console/ws",
    };
    Ok(Json(TicketAnswer {
        path: format!("/v1/vms/{}/{route}?ticket={ticket}", info.name),
        ticket,
        expires_in_ms: TICKET_TTL.as_millis() as u64,
    })
    .into_response())
}

/// How [`guard`] treats a request.
#[derive(Debug, PartialEq, Eq)]
enum Access {
    /// The page itself and the login: no credentials.
    Open,
    /// Console websockets: their handler checks the ticket.
    Ticket,
    /// The API: bearer token, or session cookie (+ CSRF header when mutating).
    Api,
}

fn access_of(method: &Method, path: &str) -> Access {
    let is_get = method == Method::GET || method == Method::HEAD;
    if is_get && assets::is_asset_path(path) {
        return Access::Open;
    }
    if method == Method::POST && path == "/v1/session" {
        return Access::Open;
    }
    // Whole segments, so a VM named `vnc` (`GET /v1/vms/vnc`) stays an API read.
    let segs: Vec<&str> = path.split('/').collect();
    let console_ws = matches!(
        segs.as_slice(),
        ["", "v1", "vms", name, "vnc"] | ["", "v1", "vms", name, "console", "ws"] if !name.is_empty()
    );
    if is_get && console_ws {
        return Access::Ticket;
    }
    Access::Api
}

/// Route-level guard for the HTTPS listeners, in place of the bearer-only guard: see the
/// module documentation for the rules.
pub async fn guard(
    State((web, bearer)): State<(Arc<Web>, Arc<crate::remote::TokenAuth>)>,
    mut req: Request,
    next: Next,
) -> Response {
    match access_of(req.method(), req.uri().path()) {
        Access::Open | Access::Ticket => return with_security_headers(next.run(req).await),
        Access::Api => {}
    }
    if req.headers().contains_key(header::AUTHORIZATION) {
        return crate::remote::check_bearer(&bearer, req, next).await;
    }
    let Some((id, csrf, end)) = web.session_with_end(req.headers()) else {
        return crate::remote::check_bearer(&bearer, req, next).await;
    };
    let safe = matches!(*req.method(), Method::GET | Method::HEAD);
    if !safe {
        let given = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct_eq(given, &csrf) {
            return Failure(ApiError::new(
                ErrorKind::Unauthorized,
                "missing or wrong X-CSRF-Token for this session (reload the page)",
            ))
            .into_response();
        }
    }
    req.extensions_mut().insert(SessionId(id));
    // A long answer (the event stream, an export download) ends with the session.
    let (parts, body) = next.run(req).await.into_parts();
    let body = axum::body::Body::from_stream(body.into_data_stream().take_until(end.wait()));
    with_security_headers(Response::from_parts(parts, body))
}

/// Headers every answer to a browser carries (the page's own CSP is in [`assets`]).
fn with_security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn with_cookie(id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={id}")).unwrap(),
        );
        h
    }

    #[test]
    fn login_needs_the_token_and_gives_a_session() {
        let web = Web::with_token(Some("0123456789abcdef0123".into()));
        let e = web.login("nope").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unauthorized);
        let (id, answer) = web.login("0123456789abcdef0123").unwrap();
        let (sid, csrf) = web.session_of(&with_cookie(&id)).unwrap();
        assert_eq!(sid, id);
        assert_eq!(csrf, answer.csrf);
        assert!(web.session_of(&with_cookie("forged")).is_none());
        let none = Web::with_token(None);
        assert_eq!(none.login("x").unwrap_err().kind, ErrorKind::Unsupported);
    }

    #[test]
    fn tickets_are_one_time_and_bound_to_session_vm_and_kind() {
        let web = Web::with_token(Some("0123456789abcdef0123".into()));
        let (id, _) = web.login("0123456789abcdef0123").unwrap();
        let h = with_cookie(&id);
        let t = web
            .issue_ticket(Some(id.clone()), "vm1".into(), ConsoleKind::Vnc)
            .unwrap();
        // Missing ticket, wrong VM, wrong kind, another session: refused.
        assert!(web.redeem(None, &h, "vm1", ConsoleKind::Vnc).is_err());
        assert!(web.check_ticket_known(None).is_err());
        assert!(web.check_ticket_known(Some("forged")).is_err());
        web.check_ticket_known(Some(&t)).unwrap();
        let t2 = web
            .issue_ticket(Some(id.clone()), "vm1".into(), ConsoleKind::Vnc)
            .unwrap();
        assert!(web.redeem(Some(&t2), &h, "vm2", ConsoleKind::Vnc).is_err());
        let t3 = web
            .issue_ticket(Some(id.clone()), "vm1".into(), ConsoleKind::Vnc)
            .unwrap();
        assert!(web
            .redeem(Some(&t3), &with_cookie("other"), "vm1", ConsoleKind::Vnc)
            .is_err());
        let t4 = web
            .issue_ticket(Some(id.clone()), "vm1".into(), ConsoleKind::Vnc)
            .unwrap();
        assert!(web
            .redeem(Some(&t4), &h, "vm1", ConsoleKind::Serial)
            .is_err());
        // The right one works once.
        web.redeem(Some(&t), &h, "vm1", ConsoleKind::Vnc).unwrap();
        assert!(web.redeem(Some(&t), &h, "vm1", ConsoleKind::Vnc).is_err());
    }

    #[tokio::test]
    async fn the_end_of_a_session_reaches_what_it_opened() {
        let web = Web::with_token(Some("0123456789abcdef0123".into()));
        let (id, _) = web.login("0123456789abcdef0123").unwrap();
        let h = with_cookie(&id);
        let (_, _, end) = web.session_with_end(&h).unwrap();
        let t = web
            .issue_ticket(Some(id.clone()), "vm1".into(), ConsoleKind::Serial)
            .unwrap();
        let console_end = web
            .redeem(Some(&t), &h, "vm1", ConsoleKind::Serial)
            .unwrap()
            .unwrap();
        // Still alive: neither resolves.
        let early = tokio::time::timeout(Duration::from_millis(50), async {
            tokio::join!(end.wait(), console_end.wait())
        });
        assert!(early.await.is_err());
        let (_, _, end) = web.session_with_end(&h).unwrap();
        web.sessions().remove(&id);
        tokio::time::timeout(Duration::from_secs(1), end.wait())
            .await
            .unwrap();
        // A ticket of an ended session is refused.
        let t = web
            .issue_ticket(Some(id.clone()), "vm1".into(), ConsoleKind::Serial)
            .unwrap();
        assert!(web
            .redeem(Some(&t), &h, "vm1", ConsoleKind::Serial)
            .is_err());
    }

    #[test]
    fn access_classes() {
        assert_eq!(access_of(&Method::GET, "/"), Access::Open);
        assert_eq!(access_of(&Method::GET, "/assets/app.js"), Access::Open);
        assert_eq!(access_of(&Method::POST, "/v1/session"), Access::Open);
        assert_eq!(access_of(&Method::GET, "/v1/session"), Access::Api);
        assert_eq!(access_of(&Method::GET, "/v1/vms/a/vnc"), Access::Ticket);
        assert_eq!(
            access_of(&Method::GET, "/v1/vms/a/console/ws"),
            Access::Ticket
        );
        assert_eq!(access_of(&Method::GET, "/v1/vms/a/console"), Access::Api);
        assert_eq!(access_of(&Method::POST, "/v1/vms/a/vnc"), Access::Api);
        assert_eq!(access_of(&Method::GET, "/v1/vms"), Access::Api);
        // VMs named like the console routes' last segments are still API reads.
        assert_eq!(access_of(&Method::GET, "/v1/vms/vnc"), Access::Api);
        assert_eq!(access_of(&Method::GET, "/v1/vms/console/ws"), Access::Api);
        assert_eq!(access_of(&Method::GET, "/v1/vms/ws"), Access::Api);
        assert_eq!(
            access_of(&Method::GET, "/v1/vms/a/history/vnc"),
            Access::Api
        );
        assert_eq!(access_of(&Method::GET, "/v1/vms//vnc"), Access::Api);
    }
}
