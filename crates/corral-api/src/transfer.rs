//! Routes of export, import, clone, copy and templates made from VMs. Export and import
//! stream their bodies through bounded channels (`corral_agent::transfer`), so neither side
//! ever holds a whole archive.

use crate::routes::{Body_, Failure};
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use corral_agent::Agent;
use corral_model::api::TaskAccepted;
use corral_model::transfer::*;
use corral_model::ApiError;
use futures_util::StreamExt;
use serde::Deserialize;
use std::sync::Arc;

type AppState = Arc<Agent>;
type Result<T> = std::result::Result<T, Failure>;

/// Header naming the task of a streamed export.
pub const TASK_HEADER: &str = "x-corral-task";

pub async fn export_vm(
    State(a): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<ExportQuery>,
) -> Result<Response> {
    let (task, file_name, rx) = a.export_vm(&name, q).await?;
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-tar")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{file_name}\""),
        )
        .header(TASK_HEADER, task)
        .body(Body::from_stream(stream))
        .map_err(|e| Failure(ApiError::internal(e.to_string())))
}

pub async fn import_vm(
    State(a): State<AppState>,
    Query(q): Query<ImportQuery>,
    req: Request,
) -> Result<Response> {
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (rx, pump) = pump_body(req);
    if q.convert {
        let result = a.import_image(q, rx, length).await;
        let _ = pump.await;
        return match result? {
            Ok(task) => Ok((StatusCode::ACCEPTED, Json(TaskAccepted { task })).into_response()),
            Err(plan) => Ok(Json(plan).into_response()),
        };
    }
    let result = a.import_vm(q, rx).await;
    let _ = pump.await;
    match result? {
        Ok(done) => Ok((StatusCode::CREATED, Json(done)).into_response()),
        Err(plan) => Ok(Json(plan).into_response()),
    }
}

/// Pump an upload into the agent's bounded channel. When the agent stops reading early (a
/// dry run, a name collision, a bad archive), the rest is drained before answering: an
/// HTTP/1.1 client still writing its body would otherwise see a broken connection instead
/// of the answer. Await the pump before answering.
fn pump_body(
    req: Request,
) -> (
    corral_agent::transfer::ByteStream,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = corral_agent::transfer::byte_channel();
    let mut body = req.into_body().into_data_stream();
    let pump = tokio::spawn(async move {
        let mut forward = true;
        while let Some(chunk) = body.next().await {
            let failed = chunk.is_err();
            if forward {
                let item = chunk.map_err(|e| std::io::Error::other(format!("upload failed: {e}")));
                forward = tx.send(item).await.is_ok();
            }
            if failed {
                break;
            }
        }
    });
    (rx, pump)
}

pub async fn p2v_start(
    State(a): State<AppState>,
    Body_(req): Body_<P2vStartRequest>,
) -> Result<Response> {
    Ok((StatusCode::CREATED, Json(a.p2v_start(req).await?)).into_response())
}

pub async fn p2v_show(State(a): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    Ok(Json(a.p2v_show(&id)?).into_response())
}

pub async fn p2v_cancel(State(a): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    a.p2v_cancel(&id)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassQuery {
    pass: u32,
}

pub async fn p2v_data(
    State(a): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<PassQuery>,
    req: Request,
) -> Result<Response> {
    let (rx, pump) = pump_body(req);
    let result = a.p2v_data(&id, q.pass, rx).await;
    let _ = pump.await;
    Ok(Json(result?).into_response())
}

pub async fn p2v_finish(
    State(a): State<AppState>,
    Path(id): Path<String>,
    Body_(req): Body_<P2vFinishRequest>,
) -> Result<Response> {
    let task = a.p2v_finish(&id, req).await?;
    Ok((StatusCode::ACCEPTED, Json(TaskAccepted { task })).into_response())
}

pub async fn clone_vm(
    State(a): State<AppState>,
    Path(name): Path<String>,
    Body_(req): Body_<CloneRequest>,
) -> Result<Response> {
    let (vm, task) = a.clone_vm(&name, req).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "task": task, "vm": vm })),
    )
        .into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    #[serde(default = "yes")]
    wait: bool,
}
fn yes() -> bool {
    true
}

pub async fn copy_vm(
    State(a): State<AppState>,
    Path(name): Path<String>,
    Query(w): Query<WaitQuery>,
    Body_(req): Body_<CloneRequest>,
) -> Result<Response> {
    match a.copy_vm(&name, req, w.wait).await? {
        (Some(vm), task) => Ok((
            StatusCode::CREATED,
            Json(serde_json::json!({ "task": task, "vm": vm })),
        )
            .into_response()),
        (None, task) => Ok((StatusCode::ACCEPTED, Json(TaskAccepted { task })).into_response()),
    }
}

pub async fn convert_to_template(
    State(a): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response> {
    let (vm, task) = a.convert_to_template(&name).await?;
    Ok(Json(serde_json::json!({ "task": task, "vm": vm })).into_response())
}
