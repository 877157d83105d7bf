//! Who is calling and whether they may: the one gate every request of every listener passes
//! (the unix socket and the HTTPS listeners serve the same router, and this is its outermost
//! layer).
//!
//! A request flows through [`guard`]:
//! 1. Its route is looked up in [`PERMISSIONS`], the one table of what each route needs
//!    (`public`, `ticket`, `read`, `operate`, `admin`); a path that is in no entry needs
//!    `admin`. The tests compare the table with the router and the OpenAPI document.
//! 2. The caller is identified by how it came ([`Peer`], set by the listener):
//!    - the unix socket: `@local`, an admin (the socket's file mode and group decide who
//!      reaches it);
//!    - HTTPS from a pool member (its certificate was verified against the pool CA,
//!      [`crate::remote::PoolPeer`]): the caller it forwards for, from
//!      [`IDENTITY_HEADER`], which only such a connection may set; without one, `@pool`;
//!    - other HTTPS: `Authorization: Bearer` with the agent's token file (`@bootstrap`, an
//!      admin) or a named token (`NAME.SECRET`, checked by `corral_agent::auth::Tokens`),
//!      or the web console's session cookie (its token is checked again on every request,
//!      so a revoked or expired token ends its sessions too; mutating requests also need
//!      the session's CSRF header). Public routes need nothing; console websockets bring
//!      their one-time ticket, checked by their handler.
//! 3. Failed attempts (a wrong, revoked or expired token, in a header or a login) are
//!    counted per client address ([`Throttle`]): after
//!    [`MAX_FAILURES`] within [`FAILURE_WINDOW`] the address is answered 429 with
//!    `Retry-After` until the window has passed.
//! 4. The role must allow the route's permission, and a token limited to a VM pattern may
//!    only name matching VMs (also through a task it cancels or reads); refusals are 403
//!    `forbidden` saying which role and permission. Lists are filtered by the handlers with
//!    [`Identity::may_see`].
//! 5. The request runs with the [`Identity`] in its extensions (pool forwarding passes it
//!    on); afterwards mutating requests and console sessions are written to the audit log
//!    (who, what, when, from where, result), never a token.

use crate::remote::{PoolPeer, RemoteMaterial};
use crate::routes::Failure;
use crate::web::Web;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use corral_agent::auth::AuthFailure;
use corral_agent::Agent;
use corral_model::auth::{AuditEntry, Permission, Role, TokenInfo};
use corral_model::{ApiError, ErrorKind};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The header a pool member sets on a forwarded request: the caller it authenticated, as
/// JSON. Ignored (removed) on any connection that is not a verified pool member's.
pub const IDENTITY_HEADER: &str = "x-corral-identity";
/// Failed authentications an address may make within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: usize = 10;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses the throttle remembers; past that the quietest are forgotten, so a flood of
/// addresses cannot grow the agent's memory.
const MAX_TRACKED: usize = 4096;

use Permission::{Admin, Operate, Public, Read, Ticket};

/// What every route needs: method, route pattern (as in the router and the OpenAPI
/// document), permission. `HEAD` is treated as `GET`. A route missing here needs `admin`,
/// and `cargo test -p corral-api` fails until it is added.
#[rustfmt::skip]
pub const PERMISSIONS: &[(&str, &str, Permission)] = &[
    ("GET", "/v1/host", Read),
    ("GET", "/v1/vms", Read),
    ("POST", "/v1/vms", Admin),
    ("GET", "/v1/vms/{name}", Read),
    ("PATCH", "/v1/vms/{name}", Admin),
    ("DELETE", "/v1/vms/{name}", Admin),
    ("POST", "/v1/vms/{name}/actions/{action}", Operate),
    ("POST", "/v1/vms/{name}/disks", Admin),
    ("DELETE", "/v1/vms/{name}/disks/{device}", Admin),
    ("POST", "/v1/vms/{name}/cdrom", Operate),
    ("DELETE", "/v1/vms/{name}/cdrom", Operate),
    ("POST", "/v1/vms/{name}/nics", Admin),
    ("DELETE", "/v1/vms/{name}/nics/{device}", Admin),
    ("POST", "/v1/installs", Admin),
    // The guest-tools ISO is a CD insert.
    ("POST", "/v1/vms/{name}/tools", Operate),
    ("GET", "/v1/vms/{name}/history", Read),
    ("GET", "/v1/vms/{name}/stats", Read),
    ("GET", "/v1/vms/{name}/recommend-host", Read),
    // A GET, but it hands out the VM's disks.
    ("GET", "/v1/vms/{name}/export", Admin),
    ("PUT", "/v1/imports", Admin),
    // P2V creates a VM from a server's disk, like an import.
    ("POST", "/v1/p2v", Admin),
    ("GET", "/v1/p2v/{id}", Admin),
    ("DELETE", "/v1/p2v/{id}", Admin),
    ("PUT", "/v1/p2v/{id}/data", Admin),
    ("POST", "/v1/p2v/{id}/finish", Admin),
    ("POST", "/v1/vms/{name}/clone", Admin),
    ("POST", "/v1/vms/{name}/copy", Admin),
    ("POST", "/v1/vms/{name}/migrate", Admin),
    ("POST", "/v1/vms/{name}/convert-to-template", Admin),
    ("GET", "/v1/vms/{name}/console", Operate),
    ("GET", "/v1/vms/{name}/vnc/stream", Operate),
    // What the console printed (logins, passwords typed at a prompt): console content.
    ("GET", "/v1/vms/{name}/console/log", Operate),
    ("GET", "/v1/srs", Read),
    ("POST", "/v1/srs", Admin),
    ("GET", "/v1/isos", Read),
    ("GET", "/v1/networks", Read),
    ("POST", "/v1/networks", Admin),
    ("GET", "/v1/templates", Read),
    ("POST", "/v1/templates", Admin),
    ("GET", "/v1/templates/{name}", Read),
    ("DELETE", "/v1/templates/{name}", Admin),
    ("GET", "/v1/tasks", Read),
    ("GET", "/v1/tasks/{id}", Read),
    ("POST", "/v1/tasks/{id}/cancel", Operate),
    ("GET", "/v1/events", Read),
    ("GET", "/v1/pool", Read),
    ("GET", "/v1/hosts", Read),
    ("GET", "/v1/hosts/{name}", Read),
    ("DELETE", "/v1/hosts/{name}", Admin),
    ("POST", "/v1/hosts/{name}/evacuate", Admin),
    // Logging in needs no credentials (the token is in the body); any caller may see and
    // end its own session.
    ("POST", "/v1/session", Public),
    ("GET", "/v1/session", Read),
    ("DELETE", "/v1/session", Read),
    ("POST", "/v1/vms/{name}/console-ticket", Operate),
    // Browsers cannot put headers on a websocket: the ticket (issued to an operator) is
    // the credential.
    ("GET", "/v1/vms/{name}/vnc", Ticket),
    ("GET", "/v1/vms/{name}/console/ws", Ticket),
    ("GET", "/v1/tokens", Admin),
    ("POST", "/v1/tokens", Admin),
    ("DELETE", "/v1/tokens/{name}", Admin),
    ("GET", "/v1/audit", Admin),
];

/// A request's entry in [`PERMISSIONS`], with the VM or task its path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAccess {
    /// The pattern, or the path itself for a path in no entry.
    pub pattern: String,
    pub permission: Permission,
    /// `{name}` of a `/v1/vms/{name}/...` route.
    pub vm: Option<String>,
    /// `{id}` of a `/v1/tasks/{id}...` route.
    pub task: Option<String>,
}

/// Look up `method path` in [`PERMISSIONS`]. Where a literal segment and a `{param}` both
/// fit, the entry with more literal segments wins.
pub fn route_access(method: &Method, path: &str) -> RouteAccess {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    let segs: Vec<&str> = path.split('/').collect();
    let mut best: Option<(usize, &str, Permission)> = None;
    for &(m, pattern, permission) in PERMISSIONS {
        if m != method {
            continue;
        }
        let pat: Vec<&str> = pattern.split('/').collect();
        if pat.len() != segs.len() {
            continue;
        }
        let mut literal = 0;
        let fits = pat.iter().zip(&segs).all(|(p, s)| {
            if p.starts_with('{') {
                !s.is_empty()
            } else {
                literal += 1;
                p == s
            }
        });
        if fits && best.is_none_or(|(l, _, _)| literal > l) {
            best = Some((literal, pattern, permission));
        }
    }
    let Some((_, pattern, permission)) = best else {
        return RouteAccess {
            pattern: path.to_string(),
            permission: Admin,
            vm: None,
            task: None,
        };
    };
    // The fourth segment of these routes is the VM's name or the task's id.
    let fourth = || segs.get(3).map(|s| s.to_string());
    RouteAccess {
        pattern: pattern.to_string(),
        permission,
        vm: pattern.starts_with("/v1/vms/{name}").then(fourth).flatten(),
        task: pattern.starts_with("/v1/tasks/{id}").then(fourth).flatten(),
    }
}

/// Who a request runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The token's name, or `@local`, `@bootstrap`, `@pool` (names a token cannot have).
    pub name: String,
    pub role: Role,
    /// Only VMs whose name matches this pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vms: Option<String>,
}

impl Identity {
    fn builtin(name: &str) -> Self {
        Identity {
            name: name.to_string(),
            role: Role::Admin,
            vms: None,
        }
    }

    fn of_token(t: TokenInfo) -> Self {
        Identity {
            name: t.name,
            role: t.role,
            vms: t.vms,
        }
    }

    /// Whether this caller may see (and, with the role for it, act on) VM `name`.
    pub fn may_see(&self, name: &str) -> bool {
        self.vms
            .as_deref()
            .is_none_or(|p| corral_model::auth::vm_pattern_matches(p, name))
    }
}

/// Whether a request's caller may see VM `name` (no identity: an internal call, all).
pub fn may_see(identity: Option<&Identity>, name: &str) -> bool {
    identity.is_none_or(|i| i.may_see(name))
}

/// How a request reached the agent: set by each listener (the unix socket through axum's
/// connect info, HTTPS by [`crate::remote::serve_tls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    /// The caller's uid, from the socket's peer credentials.
    Unix(Option<u32>),
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{a}"),
            Peer::Unix(Some(uid)) => write!(f, "unix uid={uid}"),
            Peer::Unix(None) => f.write_str("unix"),
        }
    }
}

impl Connected<axum::serve::IncomingStream<'_, tokio::net::UnixListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        Peer::Unix(stream.io().peer_cred().ok().map(|c| c.uid()))
    }
}

/// Failed authentications per client address, in a sliding window.
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl Throttle {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, VecDeque<Instant>>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `ip` must wait, if it has used up its failures.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let mut map = self.map();
        let q = map.get_mut(&ip)?;
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= FAILURE_WINDOW)
        {
            q.pop_front();
        }
        if q.is_empty() {
            map.remove(&ip);
            return None;
        }
        (q.len() >= MAX_FAILURES)
            .then(|| q.front().map(|t| FAILURE_WINDOW - now.duration_since(*t)))
            .flatten()
    }

    pub fn fail(&self, ip: IpAddr, now: Instant) {
        let mut map = self.map();
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            // Forget the address whose last failure is oldest.
            if let Some(quiet) = map
                .iter()
                .min_by_key(|(_, q)| q.back().copied())
                .map(|(k, _)| *k)
            {
                map.remove(&quiet);
            }
        }
        let q = map.entry(ip).or_default();
        q.push_back(now);
        // Only the newest MAX_FAILURES matter for the decision.
        while q.len() > MAX_FAILURES {
            q.pop_front();
        }
    }
}

/// The agent's token file, for `@bootstrap` and for the message of a refusal.
struct Bootstrap {
    token: String,
    path: PathBuf,
}

/// The gate's state: see the module documentation.
pub struct Gate {
    agent: Arc<Agent>,
    /// None when the agent has no HTTPS listener (then there is no token file either).
    bootstrap: Option<Bootstrap>,
    pub(crate) web: Arc<Web>,
    throttle: Throttle,
}

/// A refusal of an unknown caller (401; [`Failure`] adds `WWW-Authenticate`).
fn unauthorized(message: String) -> ApiError {
    ApiError::new(ErrorKind::Unauthorized, message)
}

/// A refusal of a known caller (403).
fn forbidden(message: String) -> ApiError {
    ApiError::new(ErrorKind::Forbidden, message)
}

fn ct_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Gate {
    pub fn new(agent: Arc<Agent>, remote: Option<&RemoteMaterial>) -> Arc<Self> {
        Arc::new(Gate {
            agent,
            bootstrap: remote.map(|m| Bootstrap {
                token: m.token().to_string(),
                path: m.token_path.clone(),
            }),
            web: Web::new(),
            throttle: Throttle::default(),
        })
    }

    /// Whether browsers can log in (the agent serves HTTPS and so has a token file).
    pub fn serves_https(&self) -> bool {
        self.bootstrap.is_some()
    }

    fn where_token(&self) -> String {
        match &self.bootstrap {
            Some(b) => format!(
                "the agent's token is in {} on its host, named tokens come from `corral token create` (corral: --token or CORRAL_TOKEN)",
                b.path.display()
            ),
            None => "named tokens come from `corral token create`".into(),
        }
    }

    /// Check a presented token. Failures the caller caused count against `peer`.
    pub async fn authenticate(&self, presented: &str, peer: &Peer) -> Result<Identity, ApiError> {
        let result = self.verify(presented).await;
        if let (Err(e), Peer::Tcp(a)) = (&result, peer) {
            if e.kind == ErrorKind::Unauthorized {
                self.throttle.fail(a.ip(), Instant::now());
            }
        }
        result
    }

    /// Check a token: the token file, or a named token that exists, matches and has not
    /// expired.
    async fn verify(&self, presented: &str) -> Result<Identity, ApiError> {
        let presented = presented.trim();
        if let Some(b) = &self.bootstrap {
            if ct_eq(presented, &b.token) {
                return Ok(Identity::builtin("@bootstrap"));
            }
        }
        let now = corral_model::time::now_ms();
        match self.agent.tokens().authenticate(presented, now).await {
            Ok(t) => Ok(Identity::of_token(t)),
            Err(AuthFailure::Store(e)) => Err(e.to_api()),
            Err(AuthFailure::Unknown) => Err(unauthorized(format!(
                "wrong token (or a revoked one): {}",
                self.where_token()
            ))),
            Err(AuthFailure::Expired { name, at_ms }) => Err(unauthorized(format!(
                "token {name:?} expired at {}; an admin can make a new one with `corral token create`",
                corral_model::time::format_utc(at_ms)
            ))),
        }
    }

    /// Who sent `req`. `None`: a route that needs no caller.
    async fn identify(
        &self,
        req: &mut Request,
        peer: &Peer,
        access: &RouteAccess,
    ) -> Result<Option<Identity>, ApiError> {
        let from_member = req.extensions().get::<PoolPeer>().is_some();
        let forwarded = req.headers_mut().remove(IDENTITY_HEADER);
        match peer {
            Peer::Unix(_) => return Ok(Some(Identity::builtin("@local"))),
            Peer::Tcp(_) if from_member => {
                // A member forwards for a caller it authenticated; without one it acts on
                // its own behalf.
                return match forwarded {
                    None => Ok(Some(Identity::builtin("@pool"))),
                    Some(v) => serde_json::from_slice(v.as_bytes()).map(Some).map_err(|e| {
                        ApiError::invalid(format!("bad {IDENTITY_HEADER} header: {e}"))
                    }),
                };
            }
            Peer::Tcp(_) => {}
        }
        if matches!(access.permission, Public | Ticket) {
            return Ok(None);
        }
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("").to_string());
        if let Some(b) = bearer {
            let Some(token) = b.strip_prefix("Bearer ") else {
                if let Peer::Tcp(a) = peer {
                    self.throttle.fail(a.ip(), Instant::now());
                }
                return Err(unauthorized(format!(
                    "the Authorization header must be `Bearer TOKEN`: {}",
                    self.where_token()
                )));
            };
            return self.authenticate(token, peer).await.map(Some);
        }
        if let Some(session) = self.web.session_of(req.headers()) {
            let safe = matches!(*req.method(), Method::GET | Method::HEAD);
            let given = req
                .headers()
                .get(crate::web::CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !safe && !ct_eq(given, &session.csrf) {
                return Err(unauthorized(
                    "missing or wrong X-CSRF-Token for this session (reload the page)".into(),
                ));
            }
            // The session's token was good at login; when it is no longer (revoked,
            // expired) the session ends, and the browser is sent back to its login rather
            // than counted as guessing.
            let identity = match self.verify(&session.credential).await {
                Ok(i) => i,
                Err(e) => {
                    if e.kind == ErrorKind::Unauthorized {
                        self.web.end_session(&session.id);
                    }
                    return Err(e);
                }
            };
            req.extensions_mut()
                .insert(crate::web::SessionId(session.id.clone()));
            req.extensions_mut().insert(session.end());
            return Ok(Some(identity));
        }
        // No credential at all is not an attempt to guess one (a browser whose session
        // ended sends a few such requests at once): refused, but not counted.
        Err(unauthorized(format!(
            "this agent needs a token over the network (`Authorization: Bearer TOKEN`): {}",
            self.where_token()
        )))
    }

    /// Refuse what `who`'s role or VM pattern does not allow.
    fn authorize(&self, who: &Identity, access: &RouteAccess) -> Result<(), ApiError> {
        if !who.role.allows(access.permission) {
            return Err(forbidden(format!(
                "token {:?} has role {}, which may not do this: {} needs permission {} (an {} token)",
                who.name,
                who.role,
                access.pattern,
                access.permission,
                needed_role(access.permission),
            )));
        }
        let Some(pattern) = &who.vms else {
            return Ok(());
        };
        let outside = |what: String| {
            forbidden(format!(
                "token {:?} may only touch VMs matching {pattern:?}; {what} is not one of them",
                who.name
            ))
        };
        if let Some(vm) = &access.vm {
            // `{name}` may be an id: decide on the VM's name. A VM that does not exist
            // gets the same answer, so the pattern also hides which VMs exist.
            let name = self.agent.vm_info(vm).map(|i| i.name).unwrap_or_default();
            if !who.may_see(&name) {
                return Err(outside(format!("VM {vm:?}")));
            }
        }
        if let Some(id) = &access.task {
            let vm = self.agent.tasks().get(id).and_then(|t| t.vm_name);
            if !vm.as_deref().is_some_and(|n| who.may_see(n)) {
                return Err(outside(format!("task {id}")));
            }
        }
        Ok(())
    }

    async fn audit(&self, entry: AuditEntry) {
        self.agent.audit().record(&entry).await;
    }
}

/// The least role with `permission`, for refusals.
fn needed_role(permission: Permission) -> Role {
    Role::ALL
        .into_iter()
        .find(|r| r.allows(permission))
        .unwrap_or(Role::Admin)
}

/// Whether a request is written to the audit log: anything that changes something, and
/// anything beyond reading (consoles, exports, the token and audit routes themselves).
fn audited(method: &Method, access: &RouteAccess) -> bool {
    let read = matches!(*method, Method::GET | Method::HEAD);
    !read || matches!(access.permission, Operate | Admin | Ticket)
}

/// The middleware; see the module documentation.
pub async fn guard(State(gate): State<Arc<Gate>>, mut req: Request, next: Next) -> Response {
    let Some(peer) = req.extensions().get::<ConnectInfo<Peer>>().map(|c| c.0) else {
        // Every listener sets its peer; a router served without one is a bug, and must not
        // fall open.
        return Failure(ApiError::internal("request without a listener's peer")).into_response();
    };
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let is_asset =
        matches!(method, Method::GET | Method::HEAD) && crate::web::assets::is_asset_path(&path);
    let access = if is_asset {
        RouteAccess {
            pattern: path.clone(),
            permission: Public,
            vm: None,
            task: None,
        }
    } else {
        route_access(&method, &path)
    };
    let from_member = req.extensions().get::<PoolPeer>().is_some();
    if let (Peer::Tcp(addr), false) = (peer, from_member) {
        if let Some(wait) = gate.throttle.blocked(addr.ip(), Instant::now()) {
            let secs = wait.as_secs() + 1;
            let mut resp = Failure(ApiError::new(
                ErrorKind::Throttled,
                format!(
                    "too many failed logins or wrong tokens from {}: try again in {secs} s",
                    addr.ip()
                ),
            ))
            .into_response();
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return resp;
        }
    }
    // The entry member records a forwarded request; the owner does not record it again.
    let forwarded_in = from_member && req.headers().contains_key(crate::pool::FORWARDED);
    let record = audited(&method, &access) && !forwarded_in;
    let entry = |who: Option<&Identity>, status: u16| AuditEntry {
        time_ms: corral_model::time::now_ms(),
        who: who.map_or("-".into(), |i| i.name.clone()),
        role: who.map(|i| i.role),
        method: method.to_string(),
        route: access.pattern.clone(),
        path: path.clone(),
        vm: access.vm.clone(),
        peer: peer.to_string(),
        status,
        host: gate.agent.host_name().to_string(),
    };
    let identity = match gate.identify(&mut req, &peer, &access).await {
        Ok(i) => i,
        Err(e) => {
            let refusal = Failure(e).into_response();
            if record {
                gate.audit(entry(None, refusal.status().as_u16())).await;
            }
            return browser_headers(&peer, refusal);
        }
    };
    if let Some(who) = &identity {
        if let Err(e) = gate.authorize(who, &access) {
            let refusal = Failure(e).into_response();
            if record {
                gate.audit(entry(Some(who), refusal.status().as_u16()))
                    .await;
            }
            return browser_headers(&peer, refusal);
        }
        req.extensions_mut().insert(who.clone());
    }
    let session_end = req.extensions_mut().remove::<crate::web::SessionEnd>();
    let resp = next.run(req).await;
    if record {
        // Public and ticket routes learn their caller in the handler (the login's token,
        // the ticket's issuer), which leaves it on the answer.
        let who = identity
            .as_ref()
            .or_else(|| resp.extensions().get::<Identity>());
        gate.audit(entry(who, resp.status().as_u16())).await;
    }
    let resp = match session_end {
        // A long answer (the event stream, an export download) ends with the session.
        Some(end) => {
            let (parts, body) = resp.into_parts();
            let body =
                axum::body::Body::from_stream(body.into_data_stream().take_until(end.wait()));
            Response::from_parts(parts, body)
        }
        None => resp,
    };
    browser_headers(&peer, resp)
}

/// Headers every HTTPS answer carries for browsers (the page's own CSP is in
/// [`crate::web::assets`]).
fn browser_headers(peer: &Peer, mut resp: Response) -> Response {
    if let Peer::Tcp(_) = peer {
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
    }
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::collections::BTreeSet;

    /// The table, the router and the OpenAPI document name the same routes: a route added
    /// to the router without its permission fails here.
    #[test]
    fn every_route_has_exactly_one_permission() {
        let table: Vec<(String, String)> = PERMISSIONS
            .iter()
            .map(|(m, p, _)| (m.to_string(), p.to_string()))
            .collect();
        let unique: BTreeSet<_> = table.iter().cloned().collect();
        assert_eq!(unique.len(), table.len(), "a route is in the table twice");
        let documented: BTreeSet<(String, String)> = crate::openapi::operations()
            .iter()
            .map(|o| (o.method().to_ascii_uppercase(), o.path().to_string()))
            .collect();
        let missing: Vec<_> = documented.difference(&unique).collect();
        assert!(
            missing.is_empty(),
            "routes without a permission in auth::PERMISSIONS: {missing:?}"
        );
        let extra: Vec<_> = unique.difference(&documented).collect();
        assert!(
            extra.is_empty(),
            "permissions of routes that are not served: {extra:?}"
        );
        let paths: BTreeSet<&str> = PERMISSIONS.iter().map(|(_, p, _)| *p).collect();
        for served in crate::served_paths() {
            assert!(
                paths.contains(served),
                "{served} is served but not in auth::PERMISSIONS"
            );
        }
    }

    #[test]
    fn lookups_find_the_most_specific_route() {
        let a = route_access(&Method::POST, "/v1/vms/web01/actions/start");
        assert_eq!(a.pattern, "/v1/vms/{name}/actions/{action}");
        assert_eq!((a.permission, a.vm.as_deref()), (Operate, Some("web01")));
        let a = route_access(&Method::GET, "/v1/vms/web01/console/ws");
        assert_eq!((a.permission, a.vm.as_deref()), (Ticket, Some("web01")));
        // A VM named like a route's last segment is still the VM.
        let a = route_access(&Method::GET, "/v1/vms/console");
        assert_eq!(
            (a.pattern.as_str(), a.vm.as_deref()),
            ("/v1/vms/{name}", Some("console"))
        );
        let a = route_access(&Method::HEAD, "/v1/vms");
        assert_eq!((a.permission, a.vm), (Read, None));
        let a = route_access(&Method::POST, "/v1/tasks/abc/cancel");
        assert_eq!((a.permission, a.task.as_deref()), (Operate, Some("abc")));
        // Unknown routes need admin.
        for (m, p) in [
            (Method::GET, "/v1/secret"),
            (Method::POST, "/v1/host"),
            (Method::GET, "/v1/vms//history"),
        ] {
            let a = route_access(&m, p);
            assert_eq!(a.permission, Admin, "{m} {p}");
        }
        assert_eq!(
            route_access(&Method::POST, "/v1/session").permission,
            Public
        );
        // The templates route's `{name}` is no VM.
        assert_eq!(route_access(&Method::GET, "/v1/templates/x").vm, None);
    }

    #[test]
    fn the_throttle_blocks_after_ten_failures_for_the_rest_of_the_minute() {
        let t = Throttle::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..MAX_FAILURES {
            assert_eq!(t.blocked(ip, t0), None, "after {i}");
            t.fail(ip, t0 + Duration::from_secs(i as u64));
        }
        let wait = t.blocked(ip, t0 + Duration::from_secs(20)).unwrap();
        assert_eq!(wait, Duration::from_secs(40));
        assert_eq!(t.blocked(other, t0), None);
        // The oldest failure leaves the window: one more try.
        assert_eq!(t.blocked(ip, t0 + Duration::from_secs(60)), None);
    }
}
