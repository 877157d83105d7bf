//! The pool's side of the API: host and pool routes, and forwarding a request about a VM to
//! the member that owns it, so a client can talk to any member about any VM.
//!
//! A request flows through [`route_to_owner`] before the ordinary routes:
//! - `/v1/vms/{name}/...` of a VM another member owns is sent there as it came (method,
//!   path, query, body, streamed both ways) over mutual TLS: this member presents its pool
//!   certificate and checks the owner's against the pool CA (server name
//!   `<host-id>.pool.corral`). The owner sees `X-Corral-Forwarded` and answers itself. The
//!   caller's identity goes along in `X-Corral-Identity` (Authorization and Cookie are
//!   removed), which the owner believes only from a member's certificate (`crate::auth`).
//! - `POST /v1/vms` with `"host": NAME|"auto"` goes to the chosen member.
//! - `POST /v1/vms/{name}/actions/start` with `"on": NAME|"auto"` first moves the halted
//!   VM to that member (one store transaction), then goes there with the record's new
//!   revision in `X-Corral-Vm-Revision`; the receiver waits until its view has it.
//! - A VM whose owner is down: reads answer from the pool's view; anything else is
//!   `unavailable`, naming the host.

use crate::routes::Failure;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use corral_agent::pool::Route;
use corral_agent::Agent;
use corral_model::pool::EvacuateRequest;
use corral_model::{ApiError, ErrorKind};
use std::sync::Arc;
use std::time::Duration;

pub use corral_agent::pool::peer::FORWARDED;
pub const VM_REVISION: &str = "x-corral-vm-revision";
/// Bodies read to find `host`/`on` are small JSON documents.
const ROUTING_BODY_LIMIT: usize = 1 << 20;

type Result<T> = std::result::Result<T, Failure>;

pub async fn pool_info(State(a): State<Arc<Agent>>) -> Response {
    Json(a.pool().info().await).into_response()
}

pub async fn list_hosts(State(a): State<Arc<Agent>>) -> Response {
    Json(a.pool().hosts()).into_response()
}

pub async fn show_host(
    State(a): State<Arc<Agent>>,
    Path(name): Path<String>,
    who: Option<axum::Extension<crate::auth::Identity>>,
) -> Result<Response> {
    let mut host = a.pool().host(&name)?;
    // A VM-limited token does not learn the names of the other VMs.
    host.vm_names
        .retain(|vm| crate::auth::may_see(who.as_ref().map(|w| &w.0), vm));
    Ok(Json(host).into_response())
}

pub async fn forget_host(
    State(a): State<Arc<Agent>>,
    Path(name): Path<String>,
) -> Result<Response> {
    a.pool().forget(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn evacuate_host(
    State(a): State<Arc<Agent>>,
    Path(name): Path<String>,
    crate::routes::Body_(req): crate::routes::Body_<EvacuateRequest>,
) -> Result<Response> {
    let to = req.to.unwrap_or_else(|| "auto".into());
    Ok(Json(a.pool().evacuate(&name, &to).await?).into_response())
}

/// Routes only pool members call (the target's half of live migration); a request must have
/// come over a connection whose client certificate the pool CA signed. Not in the public
/// API document: `docs/migration.md` describes them.
pub fn member_routes() -> axum::Router<Arc<Agent>> {
    use axum::routing::post;
    axum::Router::new()
        .route("/v1/pool/migrations/check", post(incoming_check))
        .route("/v1/pool/migrations", post(incoming_prepare))
        .route("/v1/pool/migrations/{id}/{step}", post(incoming_step))
        .route(
            "/v1/pool/migrations/{id}/nbd",
            axum::routing::get(incoming_nbd),
        )
        .route_layer(axum::middleware::from_fn(require_member))
}

async fn require_member(req: Request, next: Next) -> Response {
    if req.extensions().get::<crate::remote::PoolPeer>().is_some() {
        next.run(req).await
    } else {
        failure(
            ErrorKind::Unauthorized,
            "only pool members (with a certificate of the pool's CA) may call this route".into(),
        )
    }
}

async fn incoming_check(
    State(a): State<Arc<Agent>>,
    crate::routes::Body_(req): crate::routes::Body_<corral_model::migrate::IncomingRequest>,
) -> Response {
    let checks = a.incoming().checks(&req).await;
    Json(corral_model::migrate::IncomingAnswer::checks_only(checks)).into_response()
}

async fn incoming_prepare(
    State(a): State<Arc<Agent>>,
    crate::routes::Body_(req): crate::routes::Body_<corral_model::migrate::IncomingRequest>,
) -> Result<Response> {
    Ok(Json(a.incoming().prepare(req).await?).into_response())
}

/// The source's disk mirror: after `101` (`Upgrade: corral-nbd`), the raw NBD stream of
/// the target QEMU's exports, spliced from this member's unix socket.
async fn incoming_nbd(
    State(a): State<Arc<Agent>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response> {
    let socket = a.incoming().nbd_socket(&id)?;
    let stream = tokio::net::UnixStream::connect(&socket)
        .await
        .map_err(|e| {
            Failure(ApiError::new(
                ErrorKind::Unavailable,
                format!("the target QEMU's disk export does not answer: {e}"),
            ))
        })?;
    crate::routes::splice(req, stream, "corral-nbd")
}

/// `heartbeat`, `commit` or `abort` of one incoming migration.
async fn incoming_step(
    State(a): State<Arc<Agent>>,
    Path((id, step)): Path<(String, String)>,
) -> Result<Response> {
    let incoming = a.incoming();
    let state = match step.as_str() {
        "heartbeat" => incoming.heartbeat(&id),
        "commit" => incoming.commit(&id).await?,
        "abort" => {
            incoming.abort(&id, "the source gave up").await;
            corral_model::migrate::IncomingState::Unknown
        }
        other => {
            return Err(Failure(ApiError::not_found(format!(
                "unknown migration step {other:?} (heartbeat, commit, abort)"
            ))))
        }
    };
    Ok(Json(state).into_response())
}

fn failure(kind: ErrorKind, message: String) -> Response {
    Failure(ApiError::new(kind, message)).into_response()
}

/// The middleware; see the module documentation.
pub async fn route_to_owner(State(agent): State<Arc<Agent>>, req: Request, next: Next) -> Response {
    let pool = agent.pool().clone();
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let forwarded = req.headers().contains_key(FORWARDED);
    if forwarded {
        // Already at the owner (or it believed so). After an ownership move, wait for the
        // view to learn it, so the VM's actor runs here.
        if let (Some(name), Some(rev)) = (
            segments.get(2).filter(|_| segments.get(1) == Some(&"vms")),
            req.headers()
                .get(VM_REVISION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok()),
        ) {
            pool.wait_local(name, rev, Duration::from_secs(10)).await;
        }
        return next.run(req).await;
    }
    match segments.as_slice() {
        ["v1", "vms"] if req.method() == axum::http::Method::POST => {
            create_elsewhere(&agent, req, next).await
        }
        ["v1", "vms", name, "actions", "start"] if req.method() == axum::http::Method::POST => {
            let name = name.to_string();
            start_on(&agent, &name, req, next).await
        }
        // A task lives on the member that runs it (a migration's on the VM's owner): one
        // this member does not know is looked for on the others.
        ["v1", "tasks", id, ..] if pool.is_clustered() && agent.tasks().get(id).is_none() => {
            task_elsewhere(&agent, req, next).await
        }
        ["v1", "vms", name, ..] => {
            let is_read = req.method() == axum::http::Method::GET && segments.len() == 3;
            match pool.route(name) {
                Route::Local => next.run(req).await,
                // A show whose owner does not answer (down, but its lease not yet
                // expired) is answered from the view, as last recorded.
                Route::Remote {
                    host_id, address, ..
                } if is_read => {
                    let mut copy = Request::new(Body::empty());
                    *copy.uri_mut() = req.uri().clone();
                    *copy.headers_mut() = req.headers().clone();
                    *copy.extensions_mut() = req.extensions().clone();
                    match try_forward(&agent, &address, &host_id, req, None).await {
                        Ok(r) => r,
                        Err(_) => next.run(copy).await,
                    }
                }
                Route::Remote {
                    host_id, address, ..
                } => forward(&agent, &address, &host_id, req, None).await,
                // The view still knows the VM: show it as last recorded.
                Route::Unreachable { .. } if is_read => next.run(req).await,
                Route::Unreachable { host_name, why } => failure(
                    ErrorKind::Unavailable,
                    format!("VM {name:?} is on host {host_name:?}, which cannot be reached: {why}"),
                ),
            }
        }
        _ => next.run(req).await,
    }
}

/// Ask every other member that is up for a task this member does not know; the first
/// answer that is not 404 wins.
async fn task_elsewhere(agent: &Arc<Agent>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, ROUTING_BODY_LIMIT).await else {
        return failure(ErrorKind::InvalidInput, "cannot read request body".into());
    };
    let me = agent.host_id().to_string();
    for h in agent.pool().hosts() {
        let (Some(address), true) = (
            &h.address,
            h.id != me && h.state == corral_model::pool::HostState::Up,
        ) else {
            continue;
        };
        let copy = Request::from_parts(parts.clone(), Body::from(bytes.clone()));
        if let Ok(resp) = try_forward(agent, address, &h.id, copy, None).await {
            if resp.status() != StatusCode::NOT_FOUND {
                return resp;
            }
        }
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

async fn read_json(
    req: Request,
) -> std::result::Result<(axum::http::request::Parts, bytes::Bytes, serde_json::Value), Response> {
    use axum::extract::FromRequest;
    let (parts, body) = req.into_parts();
    // Read as the routes read bodies, within the same bound and with the same errors.
    let read = bytes::Bytes::from_request(Request::from_parts(parts.clone(), body), &()).await;
    let bytes = crate::routes::body_bytes(read).map_err(IntoResponse::into_response)?;
    let value = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            failure(
                ErrorKind::InvalidInput,
                format!("invalid request body: {e}"),
            )
        })?
    };
    Ok((parts, bytes, value))
}

/// `POST /v1/vms` with a `host`: create it on that member (or the one placement picks).
async fn create_elsewhere(agent: &Arc<Agent>, req: Request, next: Next) -> Response {
    let (parts, bytes, mut value) = match read_json(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let wanted = value
        .get("host")
        .and_then(|h| h.as_str())
        .map(str::to_string);
    let Some(wanted) = wanted else {
        return next
            .run(Request::from_parts(parts, Body::from(bytes)))
            .await;
    };
    // What placement weighs: the request's figures (a template's are not known here; a
    // request without them counts as 1 vCPU and 1 GiB).
    let need = corral_agent::pool::Need {
        name: value
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_string(),
        vcpus: value.get("vcpus").and_then(|v| v.as_u64()).unwrap_or(1) as u32,
        memory_bytes: value
            .get("memory_bytes")
            .and_then(|m| m.as_u64())
            .unwrap_or(1 << 30),
        networks: value
            .get("nics")
            .and_then(|n| n.as_array())
            .map(|nics| {
                nics.iter()
                    .filter_map(|n| {
                        n.get("network")
                            .and_then(|x| x.as_str())
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default(),
        apart: None,
        exclude_host: None,
    };
    let (id, name) = match agent.pool().choose_host(&wanted, &need) {
        Ok(x) => x,
        Err(e) => return Failure::from(e).into_response(),
    };
    // The receiver must not place it again.
    value["host"] = serde_json::Value::String(name.clone());
    let body = serde_json::to_vec(&value).unwrap_or_default();
    let mut parts = parts;
    parts.headers.insert(
        axum::http::header::CONTENT_LENGTH,
        HeaderValue::from(body.len()),
    );
    let req = Request::from_parts(parts, Body::from(body));
    if id == agent.host_id() {
        return next.run(req).await;
    }
    forward_to_member(agent, &id, &name, req, None).await
}

/// `vm start NAME --on HOST`: move the halted VM there, then start it there.
async fn start_on(agent: &Arc<Agent>, name: &str, req: Request, next: Next) -> Response {
    let (parts, bytes, value) = match read_json(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let pool = agent.pool();
    let on = value.get("on").and_then(|h| h.as_str()).map(str::to_string);
    let req = Request::from_parts(parts, Body::from(bytes));
    let Some(on) = on else {
        return match pool.route(name) {
            Route::Local => next.run(req).await,
            Route::Remote { host_id, address, .. } => forward(agent, &address, &host_id, req, None).await,
            Route::Unreachable { host_name, why } => failure(
                ErrorKind::Unavailable,
                format!(
                    "VM {name:?} is on host {host_name:?}, which cannot be reached: {why}; to start it elsewhere: corral vm start {name} --on auto"
                ),
            ),
        };
    };
    let Ok(info) = agent.vm_info(name) else {
        return failure(ErrorKind::NotFound, format!("no VM named {name:?}"));
    };
    let (to_id, to_name) = match pool.choose_host(&on, &corral_agent::pool::Need::of_info(&info)) {
        Ok(x) => x,
        Err(e) => return Failure::from(e).into_response(),
    };
    let revision = match pool.move_vm(name, &to_id).await {
        Ok(r) => r,
        Err(e) => return Failure::from(e).into_response(),
    };
    if to_id == agent.host_id() {
        pool.wait_local(name, revision, Duration::from_secs(10))
            .await;
        return next.run(req).await;
    }
    forward_to_member(agent, &to_id, &to_name, req, Some(revision)).await
}

/// Forward to the member `id` (named `name`) at the address it published.
async fn forward_to_member(
    agent: &Arc<Agent>,
    id: &str,
    name: &str,
    req: Request,
    revision: Option<u64>,
) -> Response {
    match agent
        .pool()
        .hosts()
        .into_iter()
        .find(|h| h.id == id)
        .and_then(|h| h.address)
    {
        Some(address) => forward(agent, &address, id, req, revision).await,
        None => failure(
            ErrorKind::Unavailable,
            format!("host {name:?} serves no network address (start it with --listen)"),
        ),
    }
}

/// Send `req` to the member at `address` (`https://ADDR:PORT`) and hand its answer back,
/// bodies streamed.
async fn forward(
    agent: &Arc<Agent>,
    address: &str,
    host_id: &str,
    req: Request,
    revision: Option<u64>,
) -> Response {
    match try_forward(agent, address, host_id, req, revision).await {
        Ok(r) => r,
        Err(why) => failure(
            ErrorKind::Unavailable,
            format!(
                "cannot reach host {} at {address}: {why}",
                agent.pool().name_of(host_id)
            ),
        ),
    }
}

async fn try_forward(
    agent: &Arc<Agent>,
    address: &str,
    host_id: &str,
    mut req: Request,
    revision: Option<u64>,
) -> std::result::Result<Response, String> {
    // A console (an HTTP upgrade) is spliced through: the client's upgraded connection to
    // the owner's.
    let client_upgrade = req
        .headers()
        .contains_key(axum::http::header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut req));
    let authority = corral_agent::pool::peer::authority(address)?;
    let tls = agent
        .pool()
        .tls()
        .ok_or("this host is not in a clustered pool")?;
    let tls = corral_agent::pool::peer::connect(tls, address, host_id).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let (mut parts, body) = req.into_parts();
    parts.headers.remove(axum::http::header::AUTHORIZATION);
    parts.headers.remove(axum::http::header::COOKIE);
    if let Ok(v) = HeaderValue::from_str(&authority) {
        parts.headers.insert(axum::http::header::HOST, v);
    }
    if let Ok(v) = HeaderValue::from_str(agent.host_id()) {
        parts.headers.insert(FORWARDED, v);
    }
    if let Some(rev) = revision {
        parts.headers.insert(VM_REVISION, HeaderValue::from(rev));
    }
    // The owner authorizes (and refuses) as this member did: the caller travels with the
    // request, in a header only a member's certificate makes it believe.
    if let Some(v) = parts
        .extensions
        .get::<crate::auth::Identity>()
        .and_then(|i| serde_json::to_string(i).ok())
        .and_then(|s| HeaderValue::from_str(&s).ok())
    {
        parts.headers.insert(crate::auth::IDENTITY_HEADER, v);
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    parts.uri = path
        .parse()
        .map_err(|e: axum::http::uri::InvalidUri| e.to_string())?;
    let mut resp = sender
        .send_request(axum::http::Request::from_parts(parts, body))
        .await
        .map_err(|e| e.to_string())?;
    if let (Some(client), StatusCode::SWITCHING_PROTOCOLS) = (client_upgrade, resp.status()) {
        let owner = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match (client.await, owner.await) {
                (Ok(c), Ok(o)) => {
                    let mut c = hyper_util::rt::TokioIo::new(c);
                    let mut o = hyper_util::rt::TokioIo::new(o);
                    let _ = corral_agent::pool::peer::splice(&mut c, &mut o).await;
                }
                (c, o) => tracing::debug!(
                    client = c.is_ok(),
                    owner = o.is_ok(),
                    "a forwarded console upgrade did not complete"
                ),
            }
        });
    }
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(parts, Body::new(body)))
}
