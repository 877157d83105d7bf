//! The web Administrator Console's server side: login sessions, CSRF, one-time console
//! tickets, the websocket bridges to a VM's graphical (VNC) and serial consoles, and the
//! embedded page ([`assets`]). Everything else the page does goes through the ordinary API
//! routes, exactly as the CLI does: there is no second code path in the agent.
//!
//! A browser's request passes the API's gate ([`crate::auth::guard`]) like any other: the
//! page's assets and the login need no credentials, the websocket routes bring their ticket
//! (a browser cannot put headers on a websocket), and everything else wants the bearer token
//! (CLI and other hosts) or a session cookie; a cookie-authenticated request that changes
//! something (any method but GET/HEAD) must also carry the session's CSRF token in
//! `X-CSRF-Token`, which a page of another origin cannot read. SameSite=Strict keeps the
//! cookie off cross-site requests in the first place; the CSRF header is the second lock.
//!
//! Login (`POST /v1/session {"token"}`) takes any token the gate accepts (the agent's token
//! file or a named token) and sets `corral_session=ID; HttpOnly; Secure; SameSite=Strict`.
//! The session keeps the token in memory and the gate checks it again on every request, so
//! the session has the token's role and ends when the token is revoked or expires. A console is opened by
//! `POST /v1/vms/NAME/console-ticket {"kind": "vnc"|"serial"}`, which answers a random
//! ticket bound to the session and the VM's id, usable once within [`TICKET_TTL`]; the page
//! then opens `wss://.../v1/vms/NAME/vnc?ticket=T` (or `/console/ws`), whose handler
//! ([`console_ws`]) takes the ticket, checks it against the cookie and the VM, and bridges.

pub mod assets;
pub mod console_ws;
pub mod handshake;

use crate::auth::{Gate, Identity, Peer};
use crate::routes::{Body_, Failure};
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use corral_agent::Agent;
use corral_model::{ApiError, ErrorKind};
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
    /// The agent's token (`STATE_DIR/token`) or a named token (`corral token create`).
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
    /// The token the session logged in with, checked again on every request.
    credential: String,
    expires: Instant,
    /// Never sent on: dropped when the session ends (logout, or removed after expiry), which
    /// wakes every [`SessionEnd`] of it.
    alive: tokio::sync::watch::Sender<()>,
}

/// Resolves when a session ends (logout or expiry): event streams and consoles opened under
/// it stop then, instead of outliving the login that opened them.
#[derive(Clone)]
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
    /// Who asked for it, for the audit log of the console session.
    issuer: Option<Identity>,
}

/// The console's state: sessions and tickets (memory only: a restarted agent logs browsers
/// out, which is the safe direction).
pub struct Web {
    sessions: Mutex<HashMap<String, Session>>,
    tickets: Mutex<HashMap<String, Ticket>>,
}

/// The session a request was authenticated by, put into the request's extensions by
/// [`guard`] for handlers that bind things to it (tickets).
#[derive(Clone, Debug)]
pub struct SessionId(pub String);

/// A live session as the gate sees it.
pub struct LiveSession {
    pub id: String,
    pub csrf: String,
    pub credential: String,
    end: SessionEnd,
}

impl LiveSession {
    pub fn end(&self) -> SessionEnd {
        self.end.clone()
    }
}

fn random_hex(bytes: usize) -> Result<String, ApiError> {
    let mut b = vec![0u8; bytes];
    getrandom::getrandom(&mut b)
        .map_err(|e| ApiError::internal(format!("no randomness for a session: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

pub use handshake::cookie;

impl Web {
    pub fn new() -> Arc<Self> {
        Arc::new(Web {
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

    /// The live session named by the request's cookie.
    pub fn session_of(&self, headers: &HeaderMap) -> Option<LiveSession> {
        let id = cookie(headers, COOKIE)?;
        let mut sessions = self.sessions();
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        sessions.get(&id).map(|s| LiveSession {
            id: id.clone(),
            csrf: s.csrf.clone(),
            credential: s.credential.clone(),
            end: SessionEnd {
                expires: s.expires,
                alive: s.alive.subscribe(),
            },
        })
    }

    /// End a session (logout, or its token is no longer valid): what it opened stops.
    pub fn end_session(&self, id: &str) {
        self.sessions().remove(id);
    }

    /// A new session for a caller who presented `credential` (already checked).
    fn open_session(&self, credential: &str) -> Result<(String, SessionAnswer), ApiError> {
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
                credential: credential.trim().to_string(),
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
        issuer: Option<Identity>,
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
                issuer,
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
    /// browser session answers that session's end, which closes the console; and who
    /// asked for the ticket.
    pub fn redeem(
        &self,
        ticket: Option<&str>,
        headers: &HeaderMap,
        vm_id: &str,
        kind: ConsoleKind,
    ) -> Result<(Option<SessionEnd>, Option<Identity>), ApiError> {
        let unauthorized = |m: &str| ApiError::new(ErrorKind::Unauthorized, m.to_string());
        let Some(ticket) = ticket.filter(|t| !t.is_empty()) else {
            return Err(unauthorized(
                "a console websocket needs a ticket: POST /v1/vms/NAME/console-ticket, then connect with ?ticket=",
            ));
        };
        let taken = self.tickets().remove(ticket);
        // The cookie's session, if it is live; the ticket's own session end comes with it.
        let live = self.session_of(headers);
        handshake::admit(
            taken.as_ref().map(|t| handshake::Issued {
                session: t.session.as_deref(),
                vm_id: &t.vm_id,
                kind: t.kind,
                expired: t.expires <= Instant::now(),
            }),
            vm_id,
            kind,
            live.as_ref().map(|s| s.id.as_str()),
        )
        .map_err(unauthorized)?;
        match taken {
            Some(t) => Ok((t.session.as_ref().and(live).map(|s| s.end), t.issuer)),
            None => Err(unauthorized("unknown or already used console ticket")),
        }
    }
}

fn session_cookie(id: &str, max_age: u64) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"
    ))
    .map_err(|e| ApiError::internal(format!("cannot build the session cookie: {e}")))
}

/// `POST /v1/session`: a token in, a session cookie and a CSRF token out. A wrong token
/// counts against the caller's address like any other (`crate::auth::Throttle`).
pub async fn login(
    Extension(gate): Extension<Arc<Gate>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Body_(req): Body_<SessionRequest>,
) -> Result<Response, Failure> {
    if !gate.serves_https() {
        return Err(ApiError::new(
            ErrorKind::Unsupported,
            "the web console needs HTTPS: start the agent with `corral serve --listen ADDR:PORT`",
        )
        .into());
    }
    let identity = gate.authenticate(&req.token, &peer).await?;
    let (id, answer) = gate.web.open_session(&req.token)?;
    let mut resp = Json(answer).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&id, SESSION_TTL.as_secs())?,
    );
    // For the audit log: the login's caller is known only now.
    resp.extensions_mut().insert(identity);
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
    let session = web.session_of(&headers).ok_or_else(no_session)?;
    Ok(Json(SessionAnswer {
        csrf: session.csrf,
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
    let session = web.session_of(&headers).ok_or_else(no_session)?;
    web.end_session(&session.id);
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
    identity: Option<Extension<Identity>>,
    Path(name): Path<String>,
    Body_(req): Body_<TicketRequest>,
) -> Result<Response, Failure> {
    let info = agent.vm(&name)?.info();
    console_ws::check_available(&info, req.kind)?;
    let ticket = web.issue_ticket(
        session.map(|s| s.0 .0),
        info.id.clone(),
        req.kind,
        identity.map(|i| i.0),
    )?;
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
    fn a_session_keeps_its_token_and_csrf() {
        let web = Web::new();
        let (id, answer) = web.open_session(" some.token\n").unwrap();
        let s = web.session_of(&with_cookie(&id)).unwrap();
        assert_eq!(s.id, id);
        assert_eq!(s.csrf, answer.csrf);
        assert_eq!(s.credential, "some.token");
        assert!(web.session_of(&with_cookie("forged")).is_none());
    }

    #[test]
    fn tickets_are_one_time_and_bound_to_session_vm_and_kind() {
        let web = Web::new();
        let (id, _) = web.open_session("t").unwrap();
        let h = with_cookie(&id);
        let t = web
            .issue_ticket(Some(id.clone()), "vm1".into(), ConsoleKind::Vnc, None)
            .unwrap();
        // Missing ticket, wrong VM, wrong kind, another session: refused.
        assert!(web.redeem(None, &h, "vm1", ConsoleKind::Vnc).is_err());
        assert!(web.check_ticket_known(None).is_err());
        assert!(web.check_ticket_known(Some("forged")).is_err());
        web.check_ticket_known(Some(&t)).unwrap();
        let t2 = web
            .issue_ticket(Some(id.clone()), "vm1".into(), ConsoleKind::Vnc, None)
            .unwrap();
        assert!(web.redeem(Some(&t2), &h, "vm2", ConsoleKind::Vnc).is_err());
        let t3 = web
            .issue_ticket(Some(id.clone()), "vm1".into(), ConsoleKind::Vnc, None)
            .unwrap();
        assert!(web
            .redeem(Some(&t3), &with_cookie("other"), "vm1", ConsoleKind::Vnc)
            .is_err());
        let t4 = web
            .issue_ticket(Some(id.clone()), "vm1".into(), ConsoleKind::Vnc, None)
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
        let web = Web::new();
        let (id, _) = web.open_session("t").unwrap();
        let h = with_cookie(&id);
        let end = web.session_of(&h).unwrap().end();
        let t = web
            .issue_ticket(Some(id.clone()), "vm1".into(), ConsoleKind::Serial, None)
            .unwrap();
        let console_end = web
            .redeem(Some(&t), &h, "vm1", ConsoleKind::Serial)
            .unwrap()
            .0
            .unwrap();
        // Still alive: neither resolves.
        let early = tokio::time::timeout(Duration::from_millis(50), async {
            tokio::join!(end.wait(), console_end.wait())
        });
        assert!(early.await.is_err());
        let end = web.session_of(&h).unwrap().end();
        web.sessions().remove(&id);
        tokio::time::timeout(Duration::from_secs(1), end.wait())
            .await
            .unwrap();
        // A ticket of an ended session is refused.
        let t = web
            .issue_ticket(Some(id.clone()), "vm1".into(), ConsoleKind::Serial, None)
            .unwrap();
        assert!(web
            .redeem(Some(&t), &h, "vm1", ConsoleKind::Serial)
            .is_err());
    }
}
