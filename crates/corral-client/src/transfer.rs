//! Streaming calls: export (download an archive) and import (upload one), plus clone, copy
//! and convert-to-template. Bodies are streamed in chunks both ways; nothing here holds a
//! whole archive.

use super::{proto, seg, Client, ClientError, Result, VmTaskAnswer};
use bytes::Bytes;
use corral_model::api::TaskAccepted;
use corral_model::transfer::*;
use corral_model::ApiError;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::{Method, StatusCode};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// An upload body fed from a channel; an `Err` item aborts the upload.
pub struct ChannelBody(pub mpsc::Receiver<std::io::Result<Bytes>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

/// A running export: the task id and the archive body.
pub struct Download {
    pub task: String,
    /// Suggested file name from the agent.
    pub file_name: Option<String>,
    body: Incoming,
}

impl Download {
    /// The next chunk of the archive; `None` at a clean end. A transfer the agent aborted
    /// (export failed or was cancelled) is an error, never a clean end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(ClientError::Protocol(format!(
                        "the export stream broke off: {e}"
                    )))
                }
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

/// Answer of an import upload.
#[derive(Debug, Clone)]
pub enum ImportOutcome {
    Imported(ImportAnswer),
    /// `--dry-run`.
    Plan(ImportPlan),
    /// `--convert`: the image was received; this task converts it into the VM.
    Accepted(String),
}

async fn error_of(resp: hyper::Response<Incoming>) -> ClientError {
    let status = resp.status();
    let bytes = match resp.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return proto(e),
    };
    serde_json::from_slice::<ApiError>(&bytes)
        .unwrap_or_else(|_| {
            ApiError::internal(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            ))
        })
        .into()
}

impl Client {
    /// Start an export; read the archive with [`Download::chunk`].
    pub async fn export_vm(&self, name: &str, q: &ExportQuery) -> Result<Download> {
        let mut path = format!(
            "/v1/vms/{}/export?format={}&compress={}",
            seg(name),
            q.format.as_str(),
            match q.compress {
                ExportCompression::Zstd => "zstd",
                ExportCompression::None => "none",
            }
        );
        if let Some(l) = q.level {
            path.push_str(&format!("&level={l}"));
        }
        let mut sender = self.connect_with::<http_body_util::Empty<Bytes>>().await?;
        let req = self
            .request(Method::GET, &path)
            .body(http_body_util::Empty::new())
            .map_err(proto)?;
        let resp = sender.send_request(req).await.map_err(proto)?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        let header = |h: &str| {
            resp.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let task = header("x-corral-task").unwrap_or_default();
        let file_name = header("content-disposition").and_then(|d| {
            d.split("filename=\"")
                .nth(1)
                .map(|s| s.trim_end_matches('"').to_string())
        });
        Ok(Download {
            task,
            file_name,
            body: resp.into_body(),
        })
    }

    /// Upload an archive (fed into `body`'s channel by the caller). `length`, when known,
    /// is sent as Content-Length.
    pub async fn import_vm(
        &self,
        q: &ImportQuery,
        body: ChannelBody,
        length: Option<u64>,
    ) -> Result<ImportOutcome> {
        let mut path = format!(
            "/v1/imports?as_template={}&preserve_macs={}&dry_run={}",
            q.as_template, q.preserve_macs, q.dry_run
        );
        if let Some(n) = &q.name {
            path.push_str(&format!("&name={}", seg(n)));
        }
        if let Some(s) = &q.sr {
            path.push_str(&format!("&sr={}", seg(s)));
        }
        if q.convert {
            path.push_str("&convert=true");
            if let Some(n) = q.disk_size_bytes {
                path.push_str(&format!("&disk_size_bytes={n}"));
            }
            if let Some(n) = q.network {
                path.push_str(&format!("&network={}", n.as_str()));
            }
            if let Some(n) = q.data_bytes {
                path.push_str(&format!("&data_bytes={n}"));
            }
            if let Some(n) = q.image_bytes {
                path.push_str(&format!("&image_bytes={n}"));
            }
        }
        let mut sender = self.connect_with::<ChannelBody>().await?;
        let mut b = self
            .request(Method::PUT, &path)
            .header("content-type", "application/octet-stream");
        if let Some(l) = length {
            b = b.header("content-length", l);
        }
        let resp = sender
            .send_request(b.body(body).map_err(proto)?)
            .await
            .map_err(proto)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(error_of(resp).await);
        }
        let bytes = resp.into_body().collect().await.map_err(proto)?.to_bytes();
        if status == StatusCode::CREATED {
            serde_json::from_slice(&bytes)
                .map(ImportOutcome::Imported)
                .map_err(proto)
        } else if status == StatusCode::ACCEPTED {
            serde_json::from_slice::<TaskAccepted>(&bytes)
                .map(|a| ImportOutcome::Accepted(a.task))
                .map_err(proto)
        } else {
            serde_json::from_slice(&bytes)
                .map(ImportOutcome::Plan)
                .map_err(proto)
        }
    }

    /// Open a P2V session (`corral p2v`).
    pub async fn p2v_start(&self, req: &P2vStartRequest) -> Result<P2vSession> {
        self.call(Method::POST, "/v1/p2v", Self::json(req)).await
    }

    pub async fn p2v_show(&self, id: &str) -> Result<P2vSession> {
        self.call(Method::GET, &format!("/v1/p2v/{}", seg(id)), None)
            .await
    }

    /// Send one pass's frames (fed into `body`'s channel by the caller); the session as the
    /// agent has it after the upload.
    pub async fn p2v_data(&self, id: &str, pass: u32, body: ChannelBody) -> Result<P2vSession> {
        let path = format!("/v1/p2v/{}/data?pass={pass}", seg(id));
        let mut sender = self.connect_with::<ChannelBody>().await?;
        let b = self
            .request(Method::PUT, &path)
            .header("content-type", "application/octet-stream");
        let resp = sender
            .send_request(b.body(body).map_err(proto)?)
            .await
            .map_err(proto)?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        let bytes = resp.into_body().collect().await.map_err(proto)?.to_bytes();
        serde_json::from_slice(&bytes).map_err(proto)
    }

    /// The transfer is complete: the conversion's task.
    pub async fn p2v_finish(&self, id: &str, req: &P2vFinishRequest) -> Result<String> {
        let a: TaskAccepted = self
            .call(
                Method::POST,
                &format!("/v1/p2v/{}/finish", seg(id)),
                Self::json(req),
            )
            .await?;
        Ok(a.task)
    }

    /// Abandon a session: the agent removes what it wrote.
    pub async fn p2v_cancel(&self, id: &str) -> Result<()> {
        self.raw(Method::DELETE, &format!("/v1/p2v/{}", seg(id)), None)
            .await
            .map(|_| ())
    }

    pub async fn clone_vm(&self, name: &str, req: &CloneRequest) -> Result<VmTaskAnswer> {
        self.call(
            Method::POST,
            &format!("/v1/vms/{}/clone", seg(name)),
            Self::json(req),
        )
        .await
    }

    /// Start a full copy; returns the task id.
    pub async fn copy_vm_nowait(&self, name: &str, req: &CloneRequest) -> Result<String> {
        let a: TaskAccepted = self
            .call(
                Method::POST,
                &format!("/v1/vms/{}/copy?wait=false", seg(name)),
                Self::json(req),
            )
            .await?;
        Ok(a.task)
    }

    pub async fn convert_to_template(&self, name: &str) -> Result<VmTaskAnswer> {
        self.call(
            Method::POST,
            &format!("/v1/vms/{}/convert-to-template", seg(name)),
            None,
        )
        .await
    }
}
