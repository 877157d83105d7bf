//! Route table and handlers. Every route also has its permission in
//! [`crate::auth::PERMISSIONS`]; handlers of lists filter what a token limited to some VMs
//! may see ([`crate::auth::may_see`]).

use crate::auth::{Gate, Identity};
use crate::openapi::Routes;
use crate::remote::RemoteMaterial;
use crate::status_of;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use corral_agent::{Agent, VmOutcome};
use corral_model::api::*;
use corral_model::auth::{AuditQuery, TokenCreateRequest};
use corral_model::{ApiError, ErrorKind};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::sync::Arc;

type AppState = Arc<Agent>;

/// An `ApiError` as a response.
pub struct Failure(pub ApiError);

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure(e)
    }
}

/// The one place an agent error becomes the wire error (its chain as `causes`).
impl From<corral_agent::Error> for Failure {
    fn from(e: corral_agent::Error) -> Self {
        Failure(e.to_api())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        // A 401 says how to authenticate (RFC 9110), whichever layer refused.
        let challenge = self.0.kind == ErrorKind::Unauthorized;
        let mut resp = (status_of(self.0.kind), Json(self.0)).into_response();
        if challenge {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// The largest JSON request body any route takes (the archive upload of `PUT /v1/imports`
/// streams and is not bound by it). Templates, cloud-init data and every other body are far
/// smaller; the bound keeps a client from making the agent buffer what it likes.
pub const JSON_BODY_LIMIT: usize = 1 << 20;

/// A request body read whole, within [`JSON_BODY_LIMIT`].
pub(crate) fn body_bytes(body: std::result::Result<Bytes, BytesRejection>) -> Result<Bytes> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Failure(ApiError::new(
                ErrorKind::TooLarge,
                format!(
                    "the request body is larger than this route accepts ({} MiB)",
                    JSON_BODY_LIMIT >> 20
                ),
            ))
        } else {
            Failure(ApiError::invalid(format!("cannot read request body: {e}")))
        }
    })
}

/// A JSON body decoded strictly: syntax errors and unknown fields become `invalid_input`.
pub struct Body_<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body_<T> {
    type Rejection = Failure;
    async fn from_request(req: Request, state: &S) -> std::result::Result<Self, Failure> {
        let bytes = body_bytes(Bytes::from_request(req, state).await)?;
        serde_json::from_slice(&bytes)
            .map(Body_)
            .map_err(|e| Failure(ApiError::invalid(format!("invalid request body: {e}"))))
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    #[serde(default = "yes")]
    wait: bool,
}
fn yes() -> bool {
    true
}

/// The router every listener serves (the unix socket and the HTTPS listeners alike): the
/// routes and the web console's page, behind the pool's forwarding, the body bound and,
/// outermost, the gate that identifies and authorizes each caller ([`crate::auth`]).
/// `remote` is the HTTPS material when the agent has `--listen`; its token file is then the
/// built-in admin token.
pub fn router(agent: Arc<Agent>, remote: Option<&RemoteMaterial>) -> Router {
    let gate = Gate::new(agent.clone(), remote);
    table()
        .into_router()
        .merge(crate::web::assets::router())
        .merge(crate::pool::member_routes())
        .layer(Extension(gate.web.clone()))
        .layer(Extension(gate.clone()))
        .fallback(|| async { Failure(ApiError::not_found("no such API endpoint")) })
        .layer(axum::middleware::from_fn_with_state(
            agent.clone(),
            crate::pool::route_to_owner,
        ))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            gate,
            crate::auth::guard,
        ))
        .with_state(agent)
}

/// Paths the router serves, for the test that the OpenAPI document covers them all.
pub fn served_paths() -> Vec<&'static str> {
    table().paths()
}

/// Every route. A new route also needs its line in `crate::openapi::operations` and its
/// permission in `crate::auth::PERMISSIONS`; the tests fail until it has both.
fn table() -> Routes<AppState> {
    Routes::new()
        .route("/v1/host", get(host_info))
        .route("/v1/vms", get(list_vms).post(create_vm))
        .route(
            "/v1/vms/{name}",
            get(show_vm).patch(update_vm).delete(delete_vm),
        )
        .route("/v1/vms/{name}/actions/{action}", post(vm_action))
        .route("/v1/vms/{name}/disks", post(disk_add))
        .route("/v1/vms/{name}/disks/{device}", delete(disk_remove))
        .route(
            "/v1/vms/{name}/cdrom",
            post(cdrom_insert).delete(cdrom_eject),
        )
        .route("/v1/vms/{name}/nics", post(nic_add))
        .route("/v1/vms/{name}/nics/{device}", delete(nic_remove))
        .route("/v1/installs", post(install_vm))
        .route("/v1/vms/{name}/tools", post(tools_insert))
        .route("/v1/vms/{name}/history", get(vm_history))
        .route("/v1/vms/{name}/stats", get(vm_stats))
        .route("/v1/vms/{name}/recommend-host", get(vm_recommend_host))
        .route("/v1/vms/{name}/export", get(crate::transfer::export_vm))
        .route(
            "/v1/imports",
            axum::routing::put(crate::transfer::import_vm),
        )
        .route("/v1/p2v", post(crate::transfer::p2v_start))
        .route(
            "/v1/p2v/{id}",
            get(crate::transfer::p2v_show).delete(crate::transfer::p2v_cancel),
        )
        .route(
            "/v1/p2v/{id}/data",
            axum::routing::put(crate::transfer::p2v_data),
        )
        .route("/v1/p2v/{id}/finish", post(crate::transfer::p2v_finish))
        .route("/v1/vms/{name}/clone", post(crate::transfer::clone_vm))
        .route("/v1/vms/{name}/copy", post(crate::transfer::copy_vm))
        .route(
            "/v1/vms/{name}/convert-to-template",
            post(crate::transfer::convert_to_template),
        )
        .route("/v1/vms/{name}/migrate", post(migrate_vm))
        .route("/v1/vms/{name}/console", get(console))
        .route("/v1/vms/{name}/vnc/stream", get(vnc_stream))
        .route("/v1/vms/{name}/console/log", get(console_log))
        .route("/v1/srs", get(list_srs).post(create_sr))
        .route("/v1/isos", get(list_isos))
        .route("/v1/networks", get(list_networks).post(create_network))
        .route("/v1/templates", get(list_templates).post(create_template))
        .route(
            "/v1/templates/{name}",
            get(show_template).delete(delete_template),
        )
        .route("/v1/tasks", get(list_tasks))
        .route("/v1/tasks/{id}", get(show_task))
        .route("/v1/tasks/{id}/cancel", post(cancel_task))
        .route("/v1/events", get(events))
        .route("/v1/pool", get(crate::pool::pool_info))
        .route("/v1/hosts", get(crate::pool::list_hosts))
        .route(
            "/v1/hosts/{name}",
            get(crate::pool::show_host).delete(crate::pool::forget_host),
        )
        .route(
            "/v1/hosts/{name}/evacuate",
            post(crate::pool::evacuate_host),
        )
        // The web console (crate::web): login sessions, console tickets, console websockets.
        .route(
            "/v1/session",
            post(crate::web::login)
                .get(crate::web::session_info)
                .delete(crate::web::logout),
        )
        .route(
            "/v1/vms/{name}/console-ticket",
            post(crate::web::console_ticket),
        )
        .route("/v1/vms/{name}/vnc", get(crate::web::console_ws::vnc_ws))
        .route(
            "/v1/vms/{name}/console/ws",
            get(crate::web::console_ws::serial_ws),
        )
        // Users and the audit log (crate::auth, corral_agent::auth).
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{name}", delete(revoke_token))
        .route("/v1/audit", get(list_audit))
}

/// The caller of a request, when the gate identified one.
type Caller = Option<Extension<Identity>>;

fn caller(c: &Caller) -> Option<&Identity> {
    c.as_ref().map(|e| &e.0)
}

async fn host_info(State(a): State<AppState>) -> Result<Response> {
    Ok(Json(a.host_info()?).into_response())
}

async fn list_vms(State(a): State<AppState>, who: Caller) -> Response {
    match caller(&who).filter(|i| i.vms.is_some()) {
        Some(i) => {
            let mut vms = a.list_vms();
            vms.retain(|v| i.may_see(&v.name));
            Json(vms).into_response()
        }
        // The common case stays the agent's pre-encoded list.
        None => (
            [(header::CONTENT_TYPE, "application/json")],
            a.list_vms_json(),
        )
            .into_response(),
    }
}

async fn show_vm(State(a): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    Ok(Json(a.vm_info(&name)?).into_response())
}

fn vm_answer(task: String, vm: corral_model::VmInfo) -> Response {
    Json(VmTaskAnswer { task, vm }).into_response()
}

async fn create_vm(
    State(a): State<AppState>,
    Body_(req): Body_<VmCreateRequest>,
) -> Result<Response> {
    let (vm, task) = a.create_vm(req).await?;
    Ok((StatusCode::CREATED, vm_answer(task, vm)).into_response())
}

/// A VM request's answer: 200 with the VM when done, 202 with the task when accepted.
fn outcome(o: VmOutcome) -> Response {
    match o {
        VmOutcome::Done { task, vm } => vm_answer(task, *vm),
        VmOutcome::Accepted { task } => {
            (StatusCode::ACCEPTED, Json(TaskAccepted { task })).into_response()
        }
    }
}

async fn update_vm(
    State(a): State<AppState>,
    Path(name): Path<String>,
    Body_(req): Body_<VmUpdateRequest>,
) -> Result<Response> {
    Ok(outcome(a.update_vm(&name, req).await?))
}

async fn delete_vm(
    State(a): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<VmDeleteRequest>,
) -> Result<Response> {
    let task = a.delete_vm(&name, q).await?;
    Ok(Json(TaskAccepted { task }).into_response())
}

async fn vm_action(
    State(a): State<AppState>,
    Path((name, action)): Path<(String, String)>,
    Query(w): Query<WaitQuery>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body = body_bytes(body)?;
    let action = VmAction::parse(&action).ok_or_else(|| {
        ApiError::not_found(format!(
            "unknown action {action:?} (start, shutdown, poweroff, reboot, pause, resume)"
        ))
    })?;
    let opts: ActionRequest = if body.is_empty() {
        ActionRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))?
    };
    Ok(outcome(a.vm_action(&name, action, opts, w.wait).await?))
}

/// `vm migrate`: 202 with the task when a live migration started, 200 for a check or the
/// move of a halted VM.
async fn migrate_vm(
    State(a): State<AppState>,
    Path(name): Path<String>,
    Body_(req): Body_<corral_model::migrate::MigrateRequest>,
) -> Result<Response> {
    let answer = a.migrate_vm(&name, req).await?;
    let status = if answer.task.is_some() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(answer)).into_response())
}

async fn disk_add(
    State(a): State<AppState>,
    Path(name): Path<String>,
    Body_(req): Body_<DiskRequest>,
) -> Result<Response> {
    Ok(outcome(a.add_disk(&name, req).await?))
}

async fn disk_remove(
    State(a): State<AppState>,
    Path((name, device)): Path<(String, String)>,
) -> Result<Response> {
    Ok(outcome(a.remove_disk(&name, device).await?))
}

async fn cdrom_insert(
    State(a): State<AppState>,
    Path(name): Path<String>,
    Body_(req): Body_<CdromInsertRequest>,
) -> Result<Response> {
    Ok(outcome(a.insert_cdrom(&name, req.iso).await?))
}

/// `POST /v1/installs`: answers 202 with the task once the request is valid; with
/// `?wait=true` it answers when the install has finished, like other VM operations. With
/// `?dry_run=true` it runs the checks and the tree's detection, creates nothing and answers
/// 200 with the `InstallPlan`.
async fn install_vm(
    State(a): State<AppState>,
    Query(q): Query<InstallQuery>,
    Body_(req): Body_<VmInstallRequest>,
) -> Result<Response> {
    if q.dry_run {
        if q.wait {
            return Err(
                ApiError::invalid("a dry run starts nothing to wait for: drop wait=true").into(),
            );
        }
        return Ok(Json(a.plan_install(req).await?).into_response());
    }
    let task = a.install_vm(req).await?;
    if !q.wait {
        return Ok((StatusCode::ACCEPTED, Json(TaskAccepted { task })).into_response());
    }
    let done = a
        .tasks()
        .wait(&task)
        .await
        .ok_or_else(|| ApiError::internal(format!("install task {task} vanished")))?;
    if let Some(e) = done.error {
        return Err(e.into());
    }
    let name = done.vm_name.unwrap_or_default();
    Ok(vm_answer(task, a.vm(&name)?.info()))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct InstallQuery {
    #[serde(default)]
    wait: bool,
    /// Plan only: checks and detection, nothing created (`vm install --dry-run`).
    #[serde(default)]
    dry_run: bool,
}

/// `POST /v1/vms/{name}/tools`: put the guest-tools ISO into the CD drive (running or not).
async fn tools_insert(State(a): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    Ok(outcome(a.insert_tools(&name).await?))
}

async fn cdrom_eject(State(a): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    Ok(outcome(a.eject_cdrom(&name).await?))
}

async fn nic_add(
    State(a): State<AppState>,
    Path(name): Path<String>,
    Body_(req): Body_<NicRequest>,
) -> Result<Response> {
    Ok(outcome(a.add_nic(&name, req).await?))
}

async fn nic_remove(
    State(a): State<AppState>,
    Path((name, device)): Path<(String, String)>,
) -> Result<Response> {
    Ok(outcome(a.remove_nic(&name, device).await?))
}

async fn vm_history(State(a): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    Ok(Json(a.history(&name)?).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StatsQuery {
    #[serde(default)]
    follow: bool,
}

/// How often a follower with no new sample checks that the VM is still here.
const STATS_FOLLOW_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// `GET /v1/vms/{name}/stats`: the VM's statistics. With `?follow=true`, newline-delimited
/// JSON: that document first, then each new 5 s sample as it is taken, until the client goes
/// away or the VM leaves this host (a migration: the client asks again and the pool forwards
/// it to the new owner) or is deleted.
async fn vm_stats(
    State(a): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<StatsQuery>,
) -> Result<Response> {
    if !q.follow {
        return Ok(Json(a.vm_stats(&name)?).into_response());
    }
    let id = a.vm(&name)?.id.clone();
    let (doc, rx) = a.follow_vm_stats(&name)?;
    let head = futures_util::stream::iter([ndjson_line(&doc)]);
    let samples =
        futures_util::stream::unfold((a, name, id, rx), |(a, name, id, mut rx)| async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match tokio::time::timeout(STATS_FOLLOW_CHECK, rx.recv()).await {
                    Ok(Ok((vm, sample))) if vm == id => {
                        return Some((ndjson_line(&sample), (a, name, id, rx)));
                    }
                    Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => {}
                    Ok(Err(RecvError::Closed)) => return None,
                    Err(_) => {
                        if a.vm(&name).map(|h| h.id.clone()).ok().as_ref() != Some(&id) {
                            return None;
                        }
                    }
                }
            }
        });
    use futures_util::StreamExt;
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(head.chain(samples)))
        .map_err(|e| ApiError::internal(e.to_string()))?)
}

async fn vm_recommend_host(
    State(a): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response> {
    Ok(Json(a.recommend_host(&name)?).into_response())
}

async fn console_log(State(a): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    let id = a.vm(&name)?.id.clone();
    let path = a.layout().run_dir(&id).join("serial.log");
    let bytes = tokio::fs::read(&path).await.unwrap_or_default();
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// Splice an upgraded HTTP connection to the VM's serial console socket.
async fn console(
    State(a): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response> {
    let info = running(&a, &name, "its console (or see `vm console --log`)")?;
    let socket = a.layout().run_dir(&info.id).join("serial.sock");
    let serial = tokio::net::UnixStream::connect(&socket)
        .await
        .map_err(|e| {
            ApiError::new(
                corral_model::ErrorKind::Busy,
                format!(
                    "cannot connect to the console of {name:?} (is another console attached?): {e}"
                ),
            )
        })?;
    splice(req, serial, "corral-console")
}

/// `GET /v1/vms/{name}/vnc/stream`: the VM's VNC server (RFB) as a raw stream after an HTTP
/// upgrade, for `corral vm vnc --listen`, which serves it on the user's machine. Through
/// the pool's forwarding it reaches the VM on whichever member runs it.
async fn vnc_stream(
    State(a): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response> {
    let info = running(&a, &name, "its graphical console")?;
    splice(req, connect_vnc(&info).await?, "corral-vnc")
}

/// A connection to the VM's VNC server, which QEMU keeps on this host's loopback only (the
/// CLI's stream and the browser's websocket both go through here).
pub(crate) async fn connect_vnc(
    info: &corral_model::VmInfo,
) -> std::result::Result<tokio::net::TcpStream, ApiError> {
    let name = &info.name;
    let addr: std::net::SocketAddr = info
        .vnc
        .as_deref()
        .and_then(|v| v.parse().ok())
        .filter(|v: &std::net::SocketAddr| v.ip().is_loopback())
        .ok_or_else(|| ApiError::internal(format!("VM {name:?} has no loopback VNC address")))?;
    let vnc = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
        ApiError::new(
            corral_model::ErrorKind::Busy,
            format!("cannot connect to the graphical console of {name:?} at {addr}: {e}"),
        )
    })?;
    let _ = vnc.set_nodelay(true);
    Ok(vnc)
}

/// The VM's record, if it runs; `what` names what needs it running.
fn running(a: &AppState, name: &str, what: &str) -> Result<corral_model::VmInfo> {
    let info = a.vm(name)?.info();
    if info.power_state == corral_model::PowerState::Halted {
        return Err(ApiError::new(
            corral_model::ErrorKind::InvalidState,
            format!("VM {name:?} is halted; start it to use {what}"),
        )
        .into());
    }
    Ok(info)
}

/// Answer 101 with `protocol` and copy bytes both ways between the upgraded connection and
/// `stream` until either side closes.
pub(crate) fn splice<S>(req: Request, mut stream: S, protocol: &'static str) -> Result<Response>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let mut client = hyper_util::rt::TokioIo::new(upgraded);
                let _ = corral_agent::pool::peer::splice(&mut client, &mut stream).await;
            }
            Err(e) => tracing::warn!(error = %e, protocol, "upgrade failed"),
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, protocol)
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?)
}

async fn list_srs(State(a): State<AppState>) -> Result<Response> {
    Ok(Json(a.list_srs()?).into_response())
}

async fn create_sr(
    State(a): State<AppState>,
    Body_(req): Body_<SrCreateRequest>,
) -> Result<Response> {
    Ok((StatusCode::CREATED, Json(a.create_sr(req).await?)).into_response())
}

async fn list_isos(State(a): State<AppState>) -> Response {
    Json(a.list_isos()).into_response()
}

async fn list_networks(State(a): State<AppState>) -> Result<Response> {
    Ok(Json(a.list_networks()?).into_response())
}

async fn create_network(
    State(a): State<AppState>,
    Body_(req): Body_<NetworkCreateRequest>,
) -> Result<Response> {
    Ok((StatusCode::CREATED, Json(a.create_network(req).await?)).into_response())
}

/// `GET /v1/templates[?osinfo=true]`: built-in and user templates, or with `osinfo` the
/// templates read from osinfo-db.
async fn list_templates(State(a): State<AppState>, Query(q): Query<TemplateListQuery>) -> Response {
    let t = a.templates();
    if q.osinfo {
        Json(t.list_osinfo()).into_response()
    } else {
        Json(t.list()).into_response()
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TemplateListQuery {
    #[serde(default)]
    osinfo: bool,
}

async fn show_template(State(a): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    let t = a.templates();
    Ok(Json(t.get(&name)?).into_response())
}

async fn create_template(
    State(a): State<AppState>,
    Body_(req): Body_<TemplateCreateRequest>,
) -> Result<Response> {
    let mut t = a.templates_mut();
    Ok((StatusCode::CREATED, Json(t.add(&req.toml)?)).into_response())
}

async fn delete_template(State(a): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    let mut t = a.templates_mut();
    t.remove(&name)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Finished tasks `GET /v1/tasks` returns unless asked for another number.
pub const TASK_LIST_DEFAULT: usize = 100;
/// The most it returns (the agent keeps about this many).
pub const TASK_LIST_MAX: usize = 5000;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TaskListQuery {
    /// How many of the most recent finished tasks (running ones always come).
    #[serde(default)]
    limit: Option<usize>,
    /// Only the tasks of this VM (name as the task recorded it).
    #[serde(default)]
    vm: Option<String>,
}

async fn list_tasks(
    State(a): State<AppState>,
    who: Caller,
    Query(q): Query<TaskListQuery>,
) -> Result<Response> {
    let limit = q.limit.unwrap_or(TASK_LIST_DEFAULT);
    if !(1..=TASK_LIST_MAX).contains(&limit) {
        return Err(Failure(ApiError::invalid(format!(
            "limit must be between 1 and {TASK_LIST_MAX} (got {limit})"
        ))));
    }
    // A task of no VM (a repository, a network) is no business of a VM-limited token.
    let limited = caller(&who).filter(|i| i.vms.is_some());
    let tasks = a.tasks().recent(limit, |t| {
        let name = t.vm_name.as_deref();
        q.vm.as_deref().is_none_or(|v| name == Some(v))
            && limited.is_none_or(|i| name.is_some_and(|n| i.may_see(n)))
    });
    Ok(Json(tasks).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TaskQuery {
    #[serde(default)]
    wait: bool,
}

async fn show_task(
    State(a): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<TaskQuery>,
) -> Result<Response> {
    let task = if q.wait {
        a.tasks().wait(&id).await
    } else {
        a.tasks().get(&id)
    };
    let task = task.ok_or_else(|| ApiError::not_found(format!("no task {id}")))?;
    Ok(Json(task).into_response())
}

async fn cancel_task(State(a): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    a.tasks().cancel(&id)?;
    Ok(StatusCode::ACCEPTED.into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(default)]
    since: Option<u64>,
}

/// One line of a newline-delimited JSON stream.
fn ndjson_line<T: serde::Serialize>(v: &T) -> std::result::Result<Bytes, std::io::Error> {
    let mut out = serde_json::to_vec(v).unwrap_or_default();
    out.push(b'\n');
    Ok(Bytes::from(out))
}

/// Newline-delimited JSON events until the client goes away.
async fn events(State(a): State<AppState>, Query(q): Query<EventsQuery>, who: Caller) -> Response {
    use futures_util::StreamExt;
    let (backlog, rx) = a.events().subscribe(q.since);
    // A VM-limited token sees the events of its VMs only (a task of no VM included).
    let limited = caller(&who).filter(|i| i.vms.is_some()).cloned();
    let visible = move |e: &corral_model::event::EventEnvelope| match (&limited, e.event.vm_name())
    {
        (None, _) => true,
        (Some(i), Some(vm)) => i.may_see(vm),
        (Some(_), None) => false,
    };
    let backlog: Vec<_> = backlog.into_iter().filter(|e| visible(e)).collect();
    let head = futures_util::stream::iter(backlog.iter().map(ndjson_line).collect::<Vec<_>>());
    let live = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |r| {
        let e = r.ok().filter(|e| visible(e));
        async move { e.map(|e| ndjson_line(&e)) }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(head.chain(live)))
        .unwrap_or_else(|e| Failure(ApiError::internal(e.to_string())).into_response())
}

async fn list_tokens(State(a): State<AppState>) -> Result<Response> {
    Ok(Json(a.tokens().list().await?).into_response())
}

/// `POST /v1/tokens`: 201 with the token and its secret, shown this once.
async fn create_token(
    State(a): State<AppState>,
    Body_(req): Body_<TokenCreateRequest>,
) -> Result<Response> {
    let made = a.tokens().create(req, corral_model::time::now_ms()).await?;
    Ok((StatusCode::CREATED, Json(made)).into_response())
}

async fn revoke_token(State(a): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    a.tokens().revoke(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_audit(State(a): State<AppState>, Query(q): Query<AuditQuery>) -> Result<Response> {
    Ok(Json(a.audit().list(&q).await?).into_response())
}
