//! The OpenAPI 3.1 document of the API (`docs/openapi.json`), generated from the real types so
//! it cannot drift: request and answer schemas come from corral-model's `schemars` derives
//! (feature `schema`), and [`operations`] lists every route with one line each.
//!
//! Three tests keep it honest: `tests/openapi.rs` in this crate compares the generated document
//! with the checked-in file (`CORRAL_BLESS=1` rewrites it); `crates/corral/tests/api_schema.rs`
//! asks a running agent for every route the router serves ([`Routes`] records them) and checks
//! each is documented, and validates real answers against the documented schemas.
//!
//! Adding a route: add the `.route(...)` in `routes.rs`, then one line to [`operations`], e.g.
//! `Op::post("/v1/vms/{name}/export", "Export a VM").body::<ExportRequest>().accepted::<TaskAccepted>(),`
//! then `CORRAL_BLESS=1 cargo test -p corral-api --test openapi` and review the diff.

use crate::web::{SessionAnswer, SessionRequest, TicketAnswer, TicketRequest};
use axum::routing::MethodRouter;
use axum::Router;
use corral_model::api::*;
use corral_model::auth::{AuditEntry, TokenCreateRequest, TokenCreated, TokenInfo};
use corral_model::event::EventEnvelope;
use corral_model::host::{HostInfo, IsoImage, Network, StorageRepository};
use corral_model::migrate::{MigrateAnswer, MigrateRequest};
use corral_model::pool::{EvacuateAnswer, EvacuateRequest, HostDetail, HostSummary, PoolInfo};
use corral_model::stats::{HostRecommendation, VmStats};
use corral_model::task::Task;
use corral_model::transfer::{
    CloneRequest, ImportAnswer, ImportPlan, P2vFinishRequest, P2vSession, P2vStartRequest,
};
use corral_model::{ApiError, VmInfo};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

/// A router that remembers the paths it was given: axum cannot list its routes, and the tests
/// need them to check that the document covers everything served.
pub struct Routes<S> {
    router: Router<S>,
    paths: Vec<&'static str>,
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Routes {
            router: Router::new(),
            paths: Vec::new(),
        }
    }
    pub fn route(mut self, path: &'static str, methods: MethodRouter<S>) -> Self {
        self.paths.push(path);
        self.router = self.router.route(path, methods);
        self
    }
    pub fn into_router(self) -> Router<S> {
        self.router
    }
    pub fn paths(&self) -> Vec<&'static str> {
        self.paths.clone()
    }
}

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// Templates are defined by corral-install (TOML data with inheritance), outside the model.
fn template(_: &mut SchemaGenerator) -> Schema {
    Schema::from(
        json!({"type": "object", "description": "A resolved template (docs/install.md)."})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    )
}

fn templates(g: &mut SchemaGenerator) -> Schema {
    Schema::from(
        json!({"type": "array", "items": template(g)})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    )
}

/// `POST /v1/installs` answers 200 with the VM when it waited for the install, or with the
/// plan of a dry run.
fn installed_or_plan(g: &mut SchemaGenerator) -> Schema {
    let vm = g.subschema_for::<VmTaskAnswer>();
    let plan = g.subschema_for::<corral_model::install::InstallPlan>();
    Schema::from(
        json!({"oneOf": [vm, plan]})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    )
}

enum Content {
    Json(SchemaFn),
    /// NDJSON: one JSON value per line, each matching the schema.
    Ndjson(SchemaFn),
    Octets,
    /// A binary stream of this media type (archives).
    Binary(&'static str),
    None,
}

struct Answer {
    status: u16,
    description: &'static str,
    content: Content,
}

struct Param {
    name: &'static str,
    kind: &'static str,
    description: &'static str,
}

/// One documented operation; built with the chainable methods below.
pub struct Op {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    body: Option<(SchemaFn, bool)>,
    /// The request body is a binary stream (an archive upload) instead of JSON.
    binary_body: bool,
    query: Vec<Param>,
    answers: Vec<Answer>,
}

impl Op {
    fn new(method: &'static str, path: &'static str, summary: &'static str) -> Self {
        Op {
            method,
            path,
            summary,
            body: None,
            binary_body: false,
            query: Vec::new(),
            answers: Vec::new(),
        }
    }
    pub fn get(path: &'static str, summary: &'static str) -> Self {
        Self::new("get", path, summary)
    }
    pub fn post(path: &'static str, summary: &'static str) -> Self {
        Self::new("post", path, summary)
    }
    pub fn put(path: &'static str, summary: &'static str) -> Self {
        Self::new("put", path, summary)
    }
    pub fn patch(path: &'static str, summary: &'static str) -> Self {
        Self::new("patch", path, summary)
    }
    pub fn delete(path: &'static str, summary: &'static str) -> Self {
        Self::new("delete", path, summary)
    }
    /// A required JSON request body.
    pub fn body<T: JsonSchema>(mut self) -> Self {
        self.body = Some((schema::<T>, true));
        self
    }
    /// A required binary request body (`application/octet-stream`), streamed.
    pub fn binary_body(mut self) -> Self {
        self.binary_body = true;
        self
    }
    /// An optional JSON request body.
    pub fn optional_body<T: JsonSchema>(mut self) -> Self {
        self.body = Some((schema::<T>, false));
        self
    }
    pub fn query(
        mut self,
        name: &'static str,
        kind: &'static str,
        description: &'static str,
    ) -> Self {
        self.query.push(Param {
            name,
            kind,
            description,
        });
        self
    }
    fn answer(mut self, status: u16, description: &'static str, content: Content) -> Self {
        self.answers.push(Answer {
            status,
            description,
            content,
        });
        self
    }
    /// `200` with a JSON `T`.
    pub fn ok<T: JsonSchema>(self) -> Self {
        self.answer(200, "OK", Content::Json(schema::<T>))
    }
    /// `201` with a JSON `T`.
    pub fn created<T: JsonSchema>(self) -> Self {
        self.answer(201, "Created", Content::Json(schema::<T>))
    }
    /// `202` with a JSON `T` (a task id, usually).
    pub fn accepted<T: JsonSchema>(self) -> Self {
        self.answer(
            202,
            "Accepted: running as a task",
            Content::Json(schema::<T>),
        )
    }
    fn ok_with(self, f: SchemaFn) -> Self {
        self.answer(200, "OK", Content::Json(f))
    }
    fn created_with(self, f: SchemaFn) -> Self {
        self.answer(201, "Created", Content::Json(f))
    }
    fn empty(self, status: u16, description: &'static str) -> Self {
        self.answer(status, description, Content::None)
    }
    fn octets(self) -> Self {
        self.answer(200, "OK", Content::Octets)
    }
    fn binary(self, media: &'static str) -> Self {
        self.answer(200, "OK", Content::Binary(media))
    }
    fn ndjson<T: JsonSchema>(self) -> Self {
        self.answer(200, "OK", Content::Ndjson(schema::<T>))
    }

    pub fn method(&self) -> &'static str {
        self.method
    }
    pub fn path(&self) -> &'static str {
        self.path
    }
}

/// Every route of the API, one line each. See the module docs for adding one.
#[rustfmt::skip]
pub fn operations() -> Vec<Op> {
    vec![
        Op::get("/v1/host", "Host facts, repositories, networks, remote access").ok::<HostInfo>(),
        Op::get("/v1/vms", "All VMs, sorted by name").ok::<Vec<VmInfo>>(),
        Op::post("/v1/vms", "Create a VM").body::<VmCreateRequest>().created::<VmTaskAnswer>(),
        Op::get("/v1/vms/{name}", "One VM (name or id)").ok::<VmInfo>(),
        Op::patch("/v1/vms/{name}", "Change a VM's settings").body::<VmUpdateRequest>().ok::<VmTaskAnswer>(),
        Op::delete("/v1/vms/{name}", "Delete a VM (running: only with force)").query("force", "boolean", "power off a running VM first").query("keep_disks", "boolean", "keep the volumes").ok::<TaskAccepted>(),
        Op::post("/v1/vms/{name}/actions/{action}", "start, shutdown, poweroff, reboot, pause or resume").optional_body::<ActionRequest>().query("wait", "boolean", "false: answer 202 at once").ok::<VmTaskAnswer>().accepted::<TaskAccepted>(),
        Op::post("/v1/vms/{name}/disks", "Add a disk (VM halted)").body::<DiskRequest>().ok::<VmTaskAnswer>(),
        Op::delete("/v1/vms/{name}/disks/{device}", "Remove a disk and its volume").ok::<VmTaskAnswer>(),
        Op::post("/v1/vms/{name}/cdrom", "Insert an ISO (also while running)").body::<CdromInsertRequest>().ok::<VmTaskAnswer>(),
        Op::delete("/v1/vms/{name}/cdrom", "Eject the CD; the empty drive stays").ok::<VmTaskAnswer>(),
        Op::post("/v1/vms/{name}/nics", "Add a NIC (VM halted)").body::<NicRequest>().ok::<VmTaskAnswer>(),
        Op::delete("/v1/vms/{name}/nics/{device}", "Remove a NIC").ok::<VmTaskAnswer>(),
        Op::get("/v1/vms/{name}/history", "The VM's tasks, oldest first").ok::<Vec<Task>>(),
        Op::get("/v1/vms/{name}/console", "Serial console: send `Connection: upgrade`, `Upgrade: corral-console`; raw bytes both ways after 101").empty(101, "Switching to the raw console stream"),
        Op::get("/v1/vms/{name}/vnc/stream", "Graphical console (the VM's VNC server, RFB): send `Connection: upgrade`, `Upgrade: corral-vnc`; raw bytes both ways after 101").empty(101, "Switching to the raw VNC stream"),
        Op::get("/v1/vms/{name}/console/log", "What the serial console printed since the VM started").octets(),
        Op::post("/v1/installs", "Create a VM and install an OS into it (task vm.install); with dry_run=true, only the plan: every check and the tree's detection, nothing created").body::<VmInstallRequest>().query("wait", "boolean", "true: answer when installed").query("dry_run", "boolean", "true: answer 200 with the InstallPlan, create nothing").accepted::<TaskAccepted>().ok_with(installed_or_plan),
        Op::post("/v1/vms/{name}/tools", "Insert the guest-tools ISO into the CD drive").ok::<VmTaskAnswer>(),
        Op::get("/v1/vms/{name}/stats", "Measured load: current sample and history at 5 s, 1 min, 1 h. With follow=true: newline-delimited JSON, this document first, then each new 5 s sample (a StatsSample) as it is taken, until the VM leaves the answering member or is deleted").query("follow", "boolean", "stream new samples after the document").ok::<VmStats>(),
        Op::get("/v1/vms/{name}/recommend-host", "Hosts rated 0-5 for this VM, with reasons").ok::<HostRecommendation>(),
        Op::get("/v1/vms/{name}/export", "Export a halted VM as a streamed archive (task id in X-Corral-Task)").query("format", "string", "corral or ova").query("compress", "string", "zstd or none").query("level", "integer", "zstd level").binary("application/x-tar"),
        Op::put("/v1/imports", "Import a VM from a streamed archive (corral, OVA, XVA), or (convert=true) a Linux server's disk image (raw, qcow2, VMDK) converted to boot on virtio").binary_body().query("name", "string", "name of the new VM (required with convert)").query("sr", "string", "storage repository").query("as_template", "boolean", "import as a template").query("preserve_macs", "boolean", "keep the archive's MAC addresses").query("dry_run", "boolean", "answer the plan, write nothing").query("convert", "boolean", "the body is a disk image to convert (V2V); 202 with the vm.import task once it is received").query("disk_size_bytes", "integer", "with convert: the VM's disk size; larger grows the root file system").query("network", "string", "with convert: dhcp (default) or keep").query("data_bytes", "integer", "with convert: bytes of data in the client's image (a hint for the space check)").query("image_bytes", "integer", "with convert and dry_run: the image's whole length").created::<ImportAnswer>().ok::<ImportPlan>().accepted::<TaskAccepted>(),
        Op::post("/v1/p2v", "Open a P2V session for a running server (`corral p2v`): checks the name, space and converter, reserves the name and starts the vm.import task").body::<P2vStartRequest>().created::<P2vSession>(),
        Op::get("/v1/p2v/{id}", "A P2V session: the pass and the last frame applied (an interrupted upload resumes after it)").ok::<P2vSession>(),
        Op::delete("/v1/p2v/{id}", "Abandon a P2V session: everything it wrote is removed and the name freed").empty(204, "Abandoned"),
        Op::put("/v1/p2v/{id}/data", "One pass of the server's disk as P2V frames (docs/p2v.md); frames already applied are skipped").binary_body().query("pass", "integer", "1 for the first pass, 2 for the final pass").ok::<P2vSession>(),
        Op::post("/v1/p2v/{id}/finish", "The transfer is complete: convert the disk to boot on virtio in the background (202 with the session's vm.import task)").body::<P2vFinishRequest>().accepted::<TaskAccepted>(),
        Op::post("/v1/vms/{name}/clone", "Linked clone of a halted VM or template").body::<CloneRequest>().created::<VmTaskAnswer>(),
        Op::post("/v1/vms/{name}/copy", "Full copy of a halted VM or template").body::<CloneRequest>().query("wait", "boolean", "false: answer 202 at once").created::<VmTaskAnswer>().accepted::<TaskAccepted>(),
        Op::post("/v1/vms/{name}/convert-to-template", "Make a halted VM a template").ok::<VmTaskAnswer>(),
        Op::get("/v1/srs", "Storage repositories with free space").ok::<Vec<StorageRepository>>(),
        Op::post("/v1/srs", "Register a directory as a repository").body::<SrCreateRequest>().created::<StorageRepository>(),
        Op::get("/v1/isos", "ISO images in the library").ok::<Vec<IsoImage>>(),
        Op::get("/v1/networks", "Networks").ok::<Vec<Network>>(),
        Op::post("/v1/networks", "Create a bridged network").body::<NetworkCreateRequest>().created::<Network>(),
        Op::get("/v1/templates", "Templates").query("osinfo", "boolean", "true: the templates read from osinfo-db").ok_with(templates),
        Op::post("/v1/templates", "Add a template from TOML").body::<TemplateCreateRequest>().created_with(template),
        Op::get("/v1/templates/{name}", "One template, resolved").ok_with(template),
        Op::delete("/v1/templates/{name}", "Delete a user template").empty(204, "Deleted"),
        Op::get("/v1/tasks", "The running tasks and the most recent finished ones, oldest first").query("limit", "integer", "finished tasks to return, 1 to 5000 (default 100)").query("vm", "string", "only the tasks of this VM").ok::<Vec<Task>>(),
        Op::get("/v1/tasks/{id}", "One task").query("wait", "boolean", "true: answer when it has finished").ok::<Task>(),
        Op::post("/v1/tasks/{id}/cancel", "Ask a running task to stop (vm.copy, vm.install, vm.import, vm.export, vm.shutdown; others and finished tasks: 409 invalid_state)").empty(202, "Cancellation requested"),
        Op::get("/v1/pool", "The pool: store endpoints and health, hosts, HA timings").ok::<PoolInfo>(),
        Op::get("/v1/hosts", "Every member of the pool: up/down, load, free memory, VMs").ok::<Vec<HostSummary>>(),
        Op::get("/v1/hosts/{name}", "One member of the pool").ok::<HostDetail>(),
        Op::delete("/v1/hosts/{name}", "Forget a member that is down and owns no VM").empty(204, "Forgotten"),
        Op::post("/v1/vms/{name}/migrate", "Move a VM to another member: a running VM live (202 with the task), a halted one by changing its owner; with check only the pre-checks").body::<MigrateRequest>().ok::<MigrateAnswer>().accepted::<MigrateAnswer>(),
        Op::post("/v1/hosts/{name}/evacuate", "Move every VM off a member (running VMs live-migrate, halted ones on shared storage change owner)").body::<EvacuateRequest>().ok::<EvacuateAnswer>(),
        Op::get("/v1/events", "Event stream until the client disconnects").query("since", "integer", "also replay remembered events after this sequence number").ndjson::<EventEnvelope>(),
        Op::post("/v1/session", "Web console login with the agent's token: sets the session cookie (HttpOnly, Secure, SameSite=Strict), answers the CSRF token for X-CSRF-Token").body::<SessionRequest>().ok::<SessionAnswer>(),
        Op::get("/v1/session", "The CSRF token of the cookie's session").ok::<SessionAnswer>(),
        Op::delete("/v1/session", "Log out: the session ends, the cookie is cleared").empty(204, "Logged out"),
        Op::post("/v1/vms/{name}/console-ticket", "A one-time ticket (30 s, bound to the session and VM) for a console websocket").body::<TicketRequest>().ok::<TicketAnswer>(),
        Op::get("/v1/vms/{name}/vnc", "Graphical console as a websocket bridged to the VM's VNC server (RFB in binary frames); needs ?ticket=").query("ticket", "string", "from POST /v1/vms/{name}/console-ticket").empty(101, "Switching to the websocket"),
        Op::get("/v1/vms/{name}/console/ws", "Serial console as a websocket: the scroll-back, then live bytes both ways; needs ?ticket=").query("ticket", "string", "from POST /v1/vms/{name}/console-ticket").empty(101, "Switching to the websocket"),
        Op::get("/v1/tokens", "Named API tokens (never their secrets)").ok::<Vec<TokenInfo>>(),
        Op::post("/v1/tokens", "Create a named token with a role; the answer holds its secret, shown this once").body::<TokenCreateRequest>().created::<TokenCreated>(),
        Op::delete("/v1/tokens/{name}", "Revoke a token: every pool member refuses it from now on").empty(204, "Revoked"),
        Op::get("/v1/audit", "The audit log, oldest first: mutating requests and console sessions").query("since_ms", "integer", "only entries at or after this time (ms since the epoch)").query("vm", "string", "only entries about this VM").ok::<Vec<AuditEntry>>(),
    ]
}

fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
        })
        .collect()
}

fn content(g: &mut SchemaGenerator, c: &Content) -> Option<Value> {
    match c {
        Content::Json(f) => Some(json!({"application/json": {"schema": f(g)}})),
        Content::Ndjson(f) => Some(json!({"application/x-ndjson": {"schema": f(g)}})),
        Content::Octets => Some(
            json!({"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}),
        ),
        Content::Binary(media) => {
            Some(json!({*media: {"schema": {"type": "string", "format": "binary"}}}))
        }
        Content::None => None,
    }
}

/// The whole OpenAPI document.
pub fn document() -> Value {
    // The deserialize contract: what a client must accept (and what our client parses).
    let mut g = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .into_generator();
    let error = g.subschema_for::<ApiError>();
    let mut paths = Map::new();
    for op in operations() {
        let mut o = Map::new();
        o.insert("summary".into(), json!(op.summary));
        o.insert(
            "operationId".into(),
            json!(format!(
                "{}{}",
                op.method,
                op.path
                    .replace(['/', '{', '}'], "_")
                    .replace("__", "_")
                    .trim_end_matches('_')
            )),
        );
        let mut params = path_params(op.path);
        params.extend(op.query.iter().map(|q| {
            json!({"name": q.name, "in": "query", "required": false,
                   "description": q.description, "schema": {"type": q.kind}})
        }));
        if !params.is_empty() {
            o.insert("parameters".into(), Value::Array(params));
        }
        if op.binary_body {
            o.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/octet-stream":
                    {"schema": {"type": "string", "format": "binary"}}}}),
            );
        }
        if let Some((f, required)) = op.body {
            o.insert(
                "requestBody".into(),
                json!({"required": required, "content": {"application/json": {"schema": f(&mut g)}}}),
            );
        }
        let mut answers = Map::new();
        for a in &op.answers {
            let mut r = Map::new();
            r.insert("description".into(), json!(a.description));
            if let Some(c) = content(&mut g, &a.content) {
                r.insert("content".into(), c);
            }
            answers.insert(a.status.to_string(), Value::Object(r));
        }
        answers.insert(
            "default".into(),
            json!({"description": "An error; the status follows from `kind` (docs/api.md)",
                   "content": {"application/json": {"schema": error.clone()}}}),
        );
        o.insert("responses".into(), Value::Object(answers));
        let entry = paths
            .entry(op.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            m.insert(op.method.to_string(), Value::Object(o));
        }
    }
    let schemas = g.take_definitions(true);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "corral host agent API",
            "version": "v1",
            "description": "Generated from crates/corral-api/src/openapi.rs; see docs/api.md.",
        },
        "servers": [
            {"url": "https://{host}:{port}", "description": "`corral serve --listen`; bearer token, pinned certificate",
             "variables": {"host": {"default": "localhost"}, "port": {"default": "8443"}}},
        ],
        "components": {
            "schemas": schemas,
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer",
                "description": "STATE_DIR/token (admin) or a named token from POST /v1/tokens (its role decides; docs/security.md); only over HTTPS (the unix socket needs none)"}},
        },
        "security": [{"token": []}],
        "paths": paths,
    })
}

/// The document as checked into `docs/openapi.json`: pretty JSON and a final newline.
pub fn document_text() -> String {
    let mut s = serde_json::to_string_pretty(&document()).unwrap_or_default();
    s.push('\n');
    s
}
