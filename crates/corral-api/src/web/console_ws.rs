//! Websocket bridges from the browser to a VM's consoles, behind one-time tickets.
//!
//! `GET /v1/vms/NAME/vnc?ticket=T` (noVNC in the page): the ticket is taken
//! ([`super::Web::redeem`]), the VM's loopback VNC address is read from its `VmInfo` (QEMU
//! picked the port at start, see docs/architecture.md), a TCP connection is made *before* the
//! upgrade is accepted (so a VM that just stopped answers an error, not a dead socket), and
//! then binary frames go one way and TCP bytes the other until either side closes. When QEMU
//! exits (poweroff, a restart) the TCP side ends, the websocket closes, and the page
//! reconnects with a new ticket once the VM runs again.
//!
//! `GET /v1/vms/NAME/console/ws?ticket=T` (xterm.js): the same for the serial console's unix
//! socket, with the scroll-back first: the serial log since the VM started (what `vm console
//! --log` prints, its last [`SCROLLBACK_MAX`] bytes) is sent before the live bytes. The
//! socket is connected before the log is read, so nothing printed in between is lost; a few
//! bytes printed at that very moment can appear twice.

use super::{ConsoleKind, Web};
use crate::auth::Identity;
use crate::routes::Failure;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use corral_agent::Agent;
use corral_model::{ApiError, ErrorKind, PowerState, VmInfo};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// At most this much of the serial log is replayed into a new text console.
pub const SCROLLBACK_MAX: u64 = 1 << 20;

pub use super::handshake::TicketQuery;

/// Whether the console `kind` of this VM can be opened now; the error says why not.
pub fn check_available(info: &VmInfo, kind: ConsoleKind) -> Result<(), ApiError> {
    if !matches!(info.power_state, PowerState::Running | PowerState::Paused) {
        return Err(ApiError::new(
            ErrorKind::InvalidState,
            format!(
                "VM {:?} is {}; its consoles exist while it runs",
                info.name, info.power_state
            ),
        )
        .with_details(serde_json::json!({"power_state": info.power_state})));
    }
    if kind == ConsoleKind::Vnc && info.vnc.is_none() {
        return Err(ApiError::new(
            ErrorKind::InvalidState,
            format!("VM {:?} has no graphical console address yet", info.name),
        ));
    }
    Ok(())
}

/// The websocket upgrade, or a clear error for a plain GET (and for the API probe).
fn upgrade(
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<WebSocketUpgrade, ApiError> {
    ws.map_err(|e| {
        ApiError::invalid(format!(
            "this route is a websocket (connect with `Upgrade: websocket`): {e}"
        ))
    })
}

/// What both console routes check before they bridge, in this order: the ticket is one this
/// agent issued (before the VM is looked up, so nothing is said about VMs without one), it
/// is redeemed for this VM and session, the request is a websocket upgrade, and the VM has
/// that console now. Answers the VM, the upgrade, the browser session's end and the
/// ticket's issuer.
fn admit(
    agent: &Agent,
    web: &Web,
    name: &str,
    q: &TicketQuery,
    headers: &HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    kind: ConsoleKind,
) -> Result<Admitted, Failure> {
    web.check_ticket_known(q.ticket.as_deref())?;
    let info = agent.vm(name)?.info();
    let (end, issuer) = web.redeem(q.ticket.as_deref(), headers, &info.id, kind)?;
    let ws = upgrade(ws)?;
    check_available(&info, kind)?;
    Ok(Admitted {
        info,
        ws,
        end,
        issuer,
    })
}

/// What [`admit`] lets through.
struct Admitted {
    info: VmInfo,
    ws: WebSocketUpgrade,
    end: Option<super::SessionEnd>,
    issuer: Option<Identity>,
}

/// The bridge's answer, carrying the ticket's issuer for the audit log of the session
/// (`crate::auth::guard` writes it; the route itself needs no other credential).
fn opened(mut resp: Response, issuer: Option<Identity>) -> Response {
    if let Some(i) = issuer {
        resp.extensions_mut().insert(i);
    }
    resp
}

/// `GET /v1/vms/{name}/vnc?ticket=`: the graphical console.
pub async fn vnc_ws(
    State(agent): State<Arc<Agent>>,
    Extension(web): Extension<Arc<Web>>,
    Path(name): Path<String>,
    Query(q): Query<TicketQuery>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Failure> {
    let Admitted {
        info,
        ws,
        end,
        issuer,
    } = admit(&agent, &web, &name, &q, &headers, ws, ConsoleKind::Vnc)?;
    let tcp = crate::routes::connect_vnc(&info).await?;
    let resp = ws.on_upgrade(move |socket| async move {
        let (r, w) = tcp.into_split();
        bridge(socket, Vec::new(), r, w, end).await;
    });
    Ok(opened(resp, issuer))
}

/// `GET /v1/vms/{name}/console/ws?ticket=`: the serial console with its scroll-back.
pub async fn serial_ws(
    State(agent): State<Arc<Agent>>,
    Extension(web): Extension<Arc<Web>>,
    Path(name): Path<String>,
    Query(q): Query<TicketQuery>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Failure> {
    let Admitted {
        info,
        ws,
        end,
        issuer,
    } = admit(&agent, &web, &name, &q, &headers, ws, ConsoleKind::Serial)?;
    let run = agent.layout().run_dir(&info.id);
    let serial = tokio::net::UnixStream::connect(run.join("serial.sock"))
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorKind::Busy,
                format!(
                    "cannot connect to the serial console of {name:?} (is another console attached?): {e}"
                ),
            )
        })?;
    let scrollback = read_tail(&run.join("serial.log"), SCROLLBACK_MAX).await;
    let resp = ws.on_upgrade(move |socket| async move {
        let (r, w) = serial.into_split();
        bridge(socket, scrollback, r, w, end).await;
    });
    Ok(opened(resp, issuer))
}

/// The last `max` bytes of a file (empty when it cannot be read: a console without history
/// is still a console).
async fn read_tail(path: &std::path::Path, max: u64) -> Vec<u8> {
    let Ok(mut f) = tokio::fs::File::open(path).await else {
        return Vec::new();
    };
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    if len > max {
        use tokio::io::AsyncSeekExt;
        if f.seek(std::io::SeekFrom::Start(len - max)).await.is_err() {
            return Vec::new();
        }
    }
    let mut out = Vec::new();
    let _ = f.take(max).read_to_end(&mut out).await;
    out
}

/// Bytes both ways between a websocket and a stream until either side ends, or the browser
/// session that opened it does; `first` is sent to the browser before anything from the stream.
async fn bridge<R, W>(
    socket: WebSocket,
    first: Vec<u8>,
    mut from: R,
    mut to: W,
    session: Option<super::SessionEnd>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, mut rx) = socket.split();
    let down = async move {
        for chunk in first.chunks(64 * 1024) {
            if tx
                .send(Message::Binary(Bytes::copy_from_slice(chunk)))
                .await
                .is_err()
            {
                return;
            }
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        // The VM's side ended (QEMU exited): tell the page, which reconnects when it can.
        let _ = tx.send(Message::Close(None)).await;
    };
    let up = async move {
        while let Some(Ok(msg)) = rx.next().await {
            let data: Bytes = match msg {
                Message::Binary(b) => b,
                Message::Text(t) => Bytes::copy_from_slice(t.as_str().as_bytes()),
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if to.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    let ended = async move {
        match session {
            Some(s) => s.wait().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = down => {},
        _ = up => {},
        _ = ended => tracing::debug!("console closed: its browser session ended"),
    }
}
