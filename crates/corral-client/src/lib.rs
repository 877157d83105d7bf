//! Typed async client of the corral API.
//!
//! One HTTP/1.1 connection per request, to the agent's unix socket or to one of its HTTPS
//! listeners (cheap on a local socket, and it keeps the client free of pooling state). Every
//! method maps an error response back to the `ApiError` the agent sent, so callers see the
//! agent's kind and message unchanged. HTTPS pins the agent's self-signed certificate by its
//! SHA-256 fingerprint and sends the bearer token (module `tls`).

mod tls;

pub use tls::{parse_fingerprint, HttpsTarget};

use bytes::Bytes;
use corral_model::api::*;
use corral_model::event::EventEnvelope;
use corral_model::host::*;
use corral_model::stats::{StatsSample, VmStats};
use corral_model::task::Task;
use corral_model::{ApiError, VmInfo};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the corral agent at {endpoint} (is `corral serve` running?)")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Api(#[from] ApiError),
    /// `--connect` is not something the client can talk to.
    #[error("{0}")]
    Address(String),
    #[error(
        "the agent at {endpoint} presented a certificate with SHA-256 fingerprint {actual}, \
         which corral does not trust yet: check it on the agent's host (`corral host info` \
         shows it), then pass --fingerprint {actual} or set CORRAL_FINGERPRINT"
    )]
    UnknownCertificate { endpoint: String, actual: String },
    #[error(
        "refusing to talk to {endpoint}: its certificate has SHA-256 fingerprint {actual}, \
         not the expected {expected} (the connection may be intercepted, or the agent's \
         certificate was regenerated; `corral host info` on the agent's host shows the current one)"
    )]
    FingerprintMismatch {
        endpoint: String,
        expected: String,
        actual: String,
    },
    #[error("TLS handshake with the corral agent at {endpoint} failed")]
    Tls {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bad answer from the agent: {0}")]
    Protocol(String),
}

impl ClientError {
    pub fn kind(&self) -> Option<corral_model::ErrorKind> {
        match self {
            ClientError::Api(e) => Some(e.kind),
            _ => None,
        }
    }
}

mod transfer;
pub use transfer::{ChannelBody, Download, ImportOutcome};

type Result<T> = std::result::Result<T, ClientError>;

/// Answer of operations that ran as a task on a VM.
pub use corral_model::api::VmTaskAnswer;

#[derive(Debug, Clone)]
pub struct Client {
    transport: Transport,
}

#[derive(Debug, Clone)]
enum Transport {
    Unix(PathBuf),
    Https(std::sync::Arc<HttpsTarget>),
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Run the HTTP/1.1 handshake on any byte stream; the connection task lives until the
/// request (or the upgraded console) is done. `B` is the request body type (JSON, or a
/// streamed upload).
async fn handshake<S, B>(stream: S) -> Result<hyper::client::conn::http1::SendRequest<B>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(proto)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

fn proto(e: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol(e.to_string())
}

/// Percent-encode a path segment (VM names are restricted, but ids and devices come from
/// users too).
fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    pub fn unix(socket: impl Into<PathBuf>) -> Self {
        Client {
            transport: Transport::Unix(socket.into()),
        }
    }

    /// An agent's HTTPS listener: `url` is `https://HOST:PORT`; `token` is the agent's
    /// bearer token; `fingerprint` the SHA-256 of its certificate. Without a fingerprint every
    /// request fails with [`ClientError::UnknownCertificate`], which names the fingerprint the
    /// agent presented: the client never trusts a certificate silently.
    pub fn https(url: &str, token: Option<&str>, fingerprint: Option<&str>) -> Result<Self> {
        Ok(Client {
            transport: Transport::Https(std::sync::Arc::new(HttpsTarget::new(
                url,
                token,
                fingerprint,
            )?)),
        })
    }

    pub fn endpoint(&self) -> String {
        match &self.transport {
            Transport::Unix(p) => p.display().to_string(),
            Transport::Https(t) => t.url.clone(),
        }
    }

    async fn connect(&self) -> Result<Sender> {
        self.connect_with().await
    }

    /// A connection whose requests carry bodies of type `B`.
    pub(crate) async fn connect_with<B>(&self) -> Result<hyper::client::conn::http1::SendRequest<B>>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match &self.transport {
            Transport::Unix(socket) => {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .map_err(|source| ClientError::Connect {
                        endpoint: self.endpoint(),
                        source,
                    })?;
                handshake(stream).await
            }
            Transport::Https(t) => handshake(t.connect().await?).await,
        }
    }

    /// A request with the headers every call carries (host; the token over HTTPS).
    pub(crate) fn request(&self, method: Method, path: &str) -> hyper::http::request::Builder {
        let b = Request::builder().method(method).uri(path);
        match &self.transport {
            Transport::Unix(_) => b.header("host", "corral"),
            Transport::Https(t) => {
                let b = b.header("host", &t.authority);
                match &t.token {
                    Some(token) => b.header("authorization", format!("Bearer {token}")),
                    None => b,
                }
            }
        }
    }

    fn build(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Request<Full<Bytes>>> {
        let mut b = self.request(method, path);
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        b.body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(proto)
    }

    /// Send a request and return status and body; error statuses become `ClientError::Api`.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes)> {
        let mut sender = self.connect().await?;
        let resp = sender
            .send_request(self.build(method, path, body)?)
            .await
            .map_err(proto)?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(proto)?.to_bytes();
        if !status.is_success() {
            let err = serde_json::from_slice::<ApiError>(&bytes).unwrap_or_else(|_| {
                ApiError::internal(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes)
                ))
            });
            return Err(err.into());
        }
        Ok((status, bytes))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T> {
        let body = body
            .map(|b| serde_json::to_vec(&b))
            .transpose()
            .map_err(proto)?;
        let (_, bytes) = self.raw(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(proto)
    }

    fn json<T: serde::Serialize>(v: &T) -> Option<serde_json::Value> {
        serde_json::to_value(v).ok()
    }

    pub async fn host_info(&self) -> Result<HostInfo> {
        self.call(Method::GET, "/v1/host", None).await
    }
    pub async fn pool_info(&self) -> Result<corral_model::pool::PoolInfo> {
        self.call(Method::GET, "/v1/pool", None).await
    }
    pub async fn list_hosts(&self) -> Result<Vec<corral_model::pool::HostSummary>> {
        self.call(Method::GET, "/v1/hosts", None).await
    }
    pub async fn show_host(&self, name: &str) -> Result<corral_model::pool::HostDetail> {
        self.call(Method::GET, &format!("/v1/hosts/{}", seg(name)), None)
            .await
    }
    pub async fn forget_host(&self, name: &str) -> Result<()> {
        self.raw(Method::DELETE, &format!("/v1/hosts/{}", seg(name)), None)
            .await
            .map(|_| ())
    }
    pub async fn evacuate_host(
        &self,
        name: &str,
        req: &corral_model::pool::EvacuateRequest,
    ) -> Result<corral_model::pool::EvacuateAnswer> {
        self.call(
            Method::POST,
            &format!("/v1/hosts/{}/evacuate", seg(name)),
            Self::json(req),
        )
        .await
    }
    pub async fn vm_stats(&self, name: &str) -> Result<corral_model::stats::VmStats> {
        self.call(Method::GET, &format!("/v1/vms/{}/stats", seg(name)), None)
            .await
    }
    pub async fn recommend_host(
        &self,
        name: &str,
    ) -> Result<corral_model::stats::HostRecommendation> {
        self.call(
            Method::GET,
            &format!("/v1/vms/{}/recommend-host", seg(name)),
            None,
        )
        .await
    }
    pub async fn list_vms(&self) -> Result<Vec<VmInfo>> {
        self.call(Method::GET, "/v1/vms", None).await
    }
    pub async fn show_vm(&self, name: &str) -> Result<VmInfo> {
        self.call(Method::GET, &format!("/v1/vms/{}", seg(name)), None)
            .await
    }
    pub async fn create_vm(&self, req: &VmCreateRequest) -> Result<VmTaskAnswer> {
        self.call(Method::POST, "/v1/vms", Self::json(req)).await
    }
    pub async fn update_vm(&self, name: &str, req: &VmUpdateRequest) -> Result<VmTaskAnswer> {
        self.call(
            Method::PATCH,
            &format!("/v1/vms/{}", seg(name)),
            Self::json(req),
        )
        .await
    }
    pub async fn delete_vm(
        &self,
        name: &str,
        force: bool,
        keep_disks: bool,
    ) -> Result<TaskAccepted> {
        let path = format!(
            "/v1/vms/{}?force={force}&keep_disks={keep_disks}",
            seg(name)
        );
        self.call(Method::DELETE, &path, None).await
    }
    pub async fn action(
        &self,
        name: &str,
        action: VmAction,
        opts: &ActionRequest,
    ) -> Result<VmTaskAnswer> {
        let path = format!("/v1/vms/{}/actions/{}", seg(name), action.as_str());
        self.call(Method::POST, &path, Self::json(opts)).await
    }
    /// `vm migrate`: the pre-checks, and the task of a live migration that started.
    pub async fn migrate_vm(
        &self,
        name: &str,
        req: &corral_model::migrate::MigrateRequest,
    ) -> Result<corral_model::migrate::MigrateAnswer> {
        let path = format!("/v1/vms/{}/migrate", seg(name));
        self.call(Method::POST, &path, Self::json(req)).await
    }
    /// Start an action without waiting; returns the task id.
    pub async fn action_nowait(
        &self,
        name: &str,
        action: VmAction,
        opts: &ActionRequest,
    ) -> Result<String> {
        let path = format!(
            "/v1/vms/{}/actions/{}?wait=false",
            seg(name),
            action.as_str()
        );
        let a: TaskAccepted = self.call(Method::POST, &path, Self::json(opts)).await?;
        Ok(a.task)
    }
    pub async fn disk_add(&self, name: &str, req: &DiskRequest) -> Result<VmTaskAnswer> {
        self.call(
            Method::POST,
            &format!("/v1/vms/{}/disks", seg(name)),
            Self::json(req),
        )
        .await
    }
    pub async fn disk_remove(&self, name: &str, device: &str) -> Result<VmTaskAnswer> {
        self.call(
            Method::DELETE,
            &format!("/v1/vms/{}/disks/{}", seg(name), seg(device)),
            None,
        )
        .await
    }
    pub async fn cdrom_insert(&self, name: &str, iso: PathBuf) -> Result<VmTaskAnswer> {
        let req = CdromInsertRequest { iso };
        self.call(
            Method::POST,
            &format!("/v1/vms/{}/cdrom", seg(name)),
            Self::json(&req),
        )
        .await
    }
    pub async fn cdrom_eject(&self, name: &str) -> Result<VmTaskAnswer> {
        self.call(
            Method::DELETE,
            &format!("/v1/vms/{}/cdrom", seg(name)),
            None,
        )
        .await
    }
    pub async fn nic_add(&self, name: &str, req: &NicRequest) -> Result<VmTaskAnswer> {
        self.call(
            Method::POST,
            &format!("/v1/vms/{}/nics", seg(name)),
            Self::json(req),
        )
        .await
    }
    pub async fn nic_remove(&self, name: &str, device: &str) -> Result<VmTaskAnswer> {
        self.call(
            Method::DELETE,
            &format!("/v1/vms/{}/nics/{}", seg(name), seg(device)),
            None,
        )
        .await
    }
    /// Start an install; answers with its task id once the request is valid.
    pub async fn install_vm(&self, req: &VmInstallRequest) -> Result<String> {
        let t: TaskAccepted = self
            .call(Method::POST, "/v1/installs?wait=false", Self::json(req))
            .await?;
        Ok(t.task)
    }
    /// What an install would do (`?dry_run=true`): checks and tree detection, nothing created.
    pub async fn plan_install(
        &self,
        req: &VmInstallRequest,
    ) -> Result<corral_model::install::InstallPlan> {
        self.call(Method::POST, "/v1/installs?dry_run=true", Self::json(req))
            .await
    }
    pub async fn tools_insert(&self, name: &str) -> Result<VmTaskAnswer> {
        self.call(Method::POST, &format!("/v1/vms/{}/tools", seg(name)), None)
            .await
    }
    pub async fn history(&self, name: &str) -> Result<Vec<Task>> {
        self.call(Method::GET, &format!("/v1/vms/{}/history", seg(name)), None)
            .await
    }
    pub async fn console_log(&self, name: &str) -> Result<Bytes> {
        Ok(self
            .raw(
                Method::GET,
                &format!("/v1/vms/{}/console/log", seg(name)),
                None,
            )
            .await?
            .1)
    }
    pub async fn list_srs(&self) -> Result<Vec<StorageRepository>> {
        self.call(Method::GET, "/v1/srs", None).await
    }
    pub async fn create_sr(&self, req: &SrCreateRequest) -> Result<StorageRepository> {
        self.call(Method::POST, "/v1/srs", Self::json(req)).await
    }
    pub async fn list_isos(&self) -> Result<Vec<IsoImage>> {
        self.call(Method::GET, "/v1/isos", None).await
    }
    pub async fn list_networks(&self) -> Result<Vec<Network>> {
        self.call(Method::GET, "/v1/networks", None).await
    }
    pub async fn create_network(&self, req: &NetworkCreateRequest) -> Result<Network> {
        self.call(Method::POST, "/v1/networks", Self::json(req))
            .await
    }
    /// Built-in and user templates; with `osinfo`, the `osinfo:<id>` ones from osinfo-db.
    pub async fn list_templates(&self, osinfo: bool) -> Result<Vec<serde_json::Value>> {
        let path = if osinfo {
            "/v1/templates?osinfo=true"
        } else {
            "/v1/templates"
        };
        self.call(Method::GET, path, None).await
    }
    pub async fn show_template(&self, name: &str) -> Result<serde_json::Value> {
        self.call(Method::GET, &format!("/v1/templates/{}", seg(name)), None)
            .await
    }
    pub async fn create_template(&self, toml: &str) -> Result<serde_json::Value> {
        self.call(
            Method::POST,
            "/v1/templates",
            Some(serde_json::json!({ "toml": toml })),
        )
        .await
    }
    pub async fn delete_template(&self, name: &str) -> Result<()> {
        self.raw(
            Method::DELETE,
            &format!("/v1/templates/{}", seg(name)),
            None,
        )
        .await
        .map(|_| ())
    }
    pub async fn list_tokens(&self) -> Result<Vec<corral_model::auth::TokenInfo>> {
        self.call(Method::GET, "/v1/tokens", None).await
    }
    /// Create a named token; the answer's `secret` is shown this once.
    pub async fn create_token(
        &self,
        req: &corral_model::auth::TokenCreateRequest,
    ) -> Result<corral_model::auth::TokenCreated> {
        self.call(Method::POST, "/v1/tokens", Self::json(req)).await
    }
    pub async fn revoke_token(&self, name: &str) -> Result<()> {
        self.raw(Method::DELETE, &format!("/v1/tokens/{}", seg(name)), None)
            .await
            .map(|_| ())
    }
    /// The audit log, oldest first, filtered by `q`.
    pub async fn audit(
        &self,
        q: &corral_model::auth::AuditQuery,
    ) -> Result<Vec<corral_model::auth::AuditEntry>> {
        let mut params = Vec::new();
        if let Some(since) = q.since_ms {
            params.push(format!("since_ms={since}"));
        }
        if let Some(vm) = &q.vm {
            params.push(format!("vm={}", seg(vm)));
        }
        let path = match params.is_empty() {
            true => "/v1/audit".to_string(),
            false => format!("/v1/audit?{}", params.join("&")),
        };
        self.call(Method::GET, &path, None).await
    }
    /// The running tasks and the agent's default number of recent finished ones.
    pub async fn list_tasks(&self) -> Result<Vec<Task>> {
        self.call(Method::GET, "/v1/tasks", None).await
    }
    /// The running tasks and the `limit` most recent finished ones, of one VM if asked.
    pub async fn list_recent_tasks(&self, limit: usize, vm: Option<&str>) -> Result<Vec<Task>> {
        let mut path = format!("/v1/tasks?limit={limit}");
        if let Some(vm) = vm {
            path.push_str(&format!("&vm={}", seg(vm)));
        }
        self.call(Method::GET, &path, None).await
    }
    pub async fn show_task(&self, id: &str, wait: bool) -> Result<Task> {
        self.call(
            Method::GET,
            &format!("/v1/tasks/{}?wait={wait}", seg(id)),
            None,
        )
        .await
    }
    pub async fn cancel_task(&self, id: &str) -> Result<()> {
        self.raw(Method::POST, &format!("/v1/tasks/{}/cancel", seg(id)), None)
            .await
            .map(|_| ())
    }

    /// Follow the event stream, calling `f` for each event until it returns false.
    pub async fn events(
        &self,
        since: Option<u64>,
        mut f: impl FnMut(EventEnvelope) -> bool,
    ) -> Result<()> {
        let path = match since {
            Some(s) => format!("/v1/events?since={s}"),
            None => "/v1/events".to_string(),
        };
        self.follow_lines(&path, |line| {
            serde_json::from_slice::<EventEnvelope>(line).map_or(true, &mut f)
        })
        .await
    }

    /// Follow a VM's statistics: `first` gets the document (history included), then
    /// `sample` each new 5 s sample until it returns false. Ends when the VM leaves the
    /// member that answers (a migration: ask again) or is deleted.
    pub async fn follow_vm_stats(
        &self,
        name: &str,
        first: impl FnOnce(VmStats),
        mut sample: impl FnMut(StatsSample) -> bool,
    ) -> Result<()> {
        let mut first = Some(first);
        self.follow_lines(
            &format!("/v1/vms/{}/stats?follow=true", seg(name)),
            |line| match first.take() {
                Some(f) => {
                    if let Ok(doc) = serde_json::from_slice::<VmStats>(line) {
                        f(doc);
                    }
                    true
                }
                None => serde_json::from_slice::<StatsSample>(line).map_or(true, &mut sample),
            },
        )
        .await
    }

    /// Read a newline-delimited stream, line by line, until `f` returns false or it ends.
    async fn follow_lines(&self, path: &str, mut f: impl FnMut(&[u8]) -> bool) -> Result<()> {
        let mut sender = self.connect().await?;
        let resp = sender
            .send_request(self.build(Method::GET, path, None)?)
            .await
            .map_err(proto)?;
        if !resp.status().is_success() {
            let bytes = resp.into_body().collect().await.map_err(proto)?.to_bytes();
            let err = serde_json::from_slice::<ApiError>(&bytes).unwrap_or_else(|_| {
                ApiError::internal(String::from_utf8_lossy(&bytes).into_owned())
            });
            return Err(err.into());
        }
        let mut body = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(proto)?;
            if let Some(data) = frame.data_ref() {
                buf.extend_from_slice(data);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    if !f(&line) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Open the VM's serial console as a raw byte stream.
    pub async fn console(&self, name: &str) -> Result<TokioIo<hyper::upgrade::Upgraded>> {
        self.upgrade(&format!("/v1/vms/{}/console", seg(name)), "corral-console")
            .await
    }

    /// The VM's VNC server (RFB) as a raw stream, wherever in the pool the VM runs.
    pub async fn vnc(&self, name: &str) -> Result<TokioIo<hyper::upgrade::Upgraded>> {
        self.upgrade(&format!("/v1/vms/{}/vnc/stream", seg(name)), "corral-vnc")
            .await
    }

    async fn upgrade(
        &self,
        path: &str,
        protocol: &str,
    ) -> Result<TokioIo<hyper::upgrade::Upgraded>> {
        let mut sender = self.connect().await?;
        let req = self
            .request(Method::GET, path)
            .header("connection", "upgrade")
            .header("upgrade", protocol)
            .body(Full::new(Bytes::new()))
            .map_err(proto)?;
        let resp = sender.send_request(req).await.map_err(proto)?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let bytes = resp.into_body().collect().await.map_err(proto)?.to_bytes();
            let err = serde_json::from_slice::<ApiError>(&bytes).unwrap_or_else(|_| {
                ApiError::internal(String::from_utf8_lossy(&bytes).into_owned())
            });
            return Err(err.into());
        }
        let upgraded = hyper::upgrade::on(resp).await.map_err(proto)?;
        Ok(TokioIo::new(upgraded))
    }
}
