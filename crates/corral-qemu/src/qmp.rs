//! An async QMP client: one connection to one QEMU, shared by many callers.
//!
//! [`Qmp::connect`] reads the greeting and negotiates capabilities. After that two tasks own
//! the socket: a writer that sends whole command lines from a queue (so a caller dropping its
//! future mid-write never corrupts the stream) and a reader that routes every reply to the
//! caller waiting for its `id` and broadcasts every event to [`Qmp::subscribe`]rs. When QEMU
//! closes the socket (it exited or was killed) every pending and later command fails with
//! [`QmpError::Closed`], event receivers see the channel close, and [`Qmp::wait_closed`]
//! returns. `Qmp` is cheap to clone; the tasks stop when the last clone is dropped.
//!
//! QEMU's socket chardev serves one client at a time: a second connection is accepted by the
//! kernel but gets no greeting until the first one closes, which shows up as a greeting
//! timeout here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use corral_model::ErrorKind;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// How long a command may take unless the caller says otherwise.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Events buffered per subscriber before the slowest one starts missing them.
const EVENT_BUFFER: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {path:?}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP {what} timed out after {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("QMP connection closed (QEMU exited)")]
    Closed,
    #[error("QMP command {command} failed: {class}: {desc}")]
    CommandFailed {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP protocol error: {0}")]
    Protocol(String),
}

impl QmpError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            QmpError::Closed => ErrorKind::InvalidState,
            QmpError::Timeout { .. } => ErrorKind::Timeout,
            QmpError::CommandFailed { class, .. } if class == "DeviceNotFound" => {
                ErrorKind::NotFound
            }
            _ => ErrorKind::Internal,
        }
    }
}

/// QEMU's version as announced in the greeting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QmpVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
    /// Distribution package string, e.g. `Debian 1:7.2+dfsg-7`.
    pub package: String,
}

/// When QEMU emitted an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct QmpTimestamp {
    pub seconds: i64,
    pub microseconds: i64,
}

/// An asynchronous event (`SHUTDOWN`, `STOP`, `RESUME`, `DEVICE_DELETED`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QmpEvent {
    pub event: String,
    #[serde(default)]
    pub data: Value,
    #[serde(default)]
    pub timestamp: QmpTimestamp,
}

/// QEMU's run state (`query-status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Debug,
    Inmigrate,
    InternalError,
    IoError,
    Paused,
    Postmigrate,
    Prelaunch,
    FinishMigrate,
    RestoreVm,
    Running,
    SaveVm,
    Shutdown,
    Suspended,
    Watchdog,
    GuestPanicked,
    Colo,
    /// A state this client does not know (newer QEMU).
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    pub status: RunState,
    pub running: bool,
}

/// One entry of `query-block`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockInfo {
    /// Block backend name (`cdrom0-drive`), empty for anonymous backends.
    pub device: String,
    /// The device's qdev path or id (`cdrom0`, `/machine/peripheral/disk0/virtio-backend`).
    #[serde(default)]
    pub qdev: Option<String>,
    pub removable: bool,
    pub locked: bool,
    #[serde(default)]
    pub tray_open: Option<bool>,
    #[serde(default)]
    pub inserted: Option<BlockInserted>,
}

/// The medium in a block backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockInserted {
    pub file: String,
    #[serde(rename = "node-name", default)]
    pub node_name: Option<String>,
    pub ro: bool,
    pub drv: String,
}

/// One PCI bus of `query-pci`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PciBus {
    pub bus: u32,
    pub devices: Vec<PciDevice>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PciDevice {
    pub bus: u32,
    pub slot: u32,
    pub function: u32,
    #[serde(default)]
    pub qdev_id: String,
    pub id: PciId,
    #[serde(default)]
    pub pci_bridge: Option<PciBridge>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PciId {
    pub vendor: u32,
    pub device: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PciBridge {
    #[serde(default)]
    pub devices: Vec<PciDevice>,
}

impl PciBus {
    /// Every device on this bus and behind its bridges, depth first.
    pub fn all_devices(&self) -> Vec<&PciDevice> {
        fn walk<'a>(devs: &'a [PciDevice], out: &mut Vec<&'a PciDevice>) {
            for d in devs {
                out.push(d);
                if let Some(b) = &d.pci_bridge {
                    walk(&b.devices, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.devices, &mut out);
        out
    }
}

type Reply = Result<Value, (String, String)>;

struct State {
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    events: Option<broadcast::Sender<QmpEvent>>,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    closed_tx: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the map itself is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.pending.clear(); // dropping the senders wakes every waiter with Closed
        st.events = None; // subscribers see RecvError::Closed
        drop(st);
        self.closed_tx.send_replace(true);
    }
}

struct Conn {
    shared: Arc<Shared>,
    to_writer: mpsc::UnboundedSender<Vec<u8>>,
    next_id: AtomicU64,
    version: QmpVersion,
    closed_rx: watch::Receiver<bool>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Conn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A connected, capability-negotiated QMP session.
#[derive(Clone)]
pub struct Qmp {
    conn: Arc<Conn>,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("version", &self.conn.version)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Removes a pending entry if the caller gives up (timeout or dropped future).
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().pending.remove(&self.id);
    }
}

async fn connect_socket(path: &Path, deadline: Instant) -> Result<UnixStream, QmpError> {
    loop {
        match UnixStream::connect(path).await {
            Ok(s) => return Ok(s),
            // The socket may not exist yet while QEMU starts: retry until the deadline.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(source) => {
                return Err(QmpError::Connect {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

async fn read_message(
    lines: &mut tokio::io::Lines<BufReader<OwnedReadHalf>>,
) -> Result<Value, QmpError> {
    match lines.next_line().await {
        Ok(Some(line)) => serde_json::from_str(&line)
            .map_err(|e| QmpError::Protocol(format!("invalid JSON from QEMU ({e}): {line:?}"))),
        Ok(None) | Err(_) => Err(QmpError::Closed),
    }
}

fn parse_version(greeting: &Value) -> Result<QmpVersion, QmpError> {
    let qmp = greeting
        .get("QMP")
        .ok_or_else(|| QmpError::Protocol(format!("expected a QMP greeting, got {greeting}")))?;
    let v = &qmp["version"]["qemu"];
    let num = |k: &str| v[k].as_u64().and_then(|n| u32::try_from(n).ok());
    match (num("major"), num("minor"), num("micro")) {
        (Some(major), Some(minor), Some(micro)) => Ok(QmpVersion {
            major,
            minor,
            micro,
            package: qmp["version"]["package"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        }),
        _ => Err(QmpError::Protocol(format!(
            "greeting without a version: {greeting}"
        ))),
    }
}

impl Qmp {
    /// Connect to a QMP unix socket, read the greeting and enter command mode, all within
    /// `timeout`. Retries while the socket does not exist yet or refuses connections.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = connect_socket(path, deadline).await?;
        let handshake = async {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let greeting = read_message(&mut lines).await?;
            let version = parse_version(&greeting)?;
            write
                .write_all(b"{\"execute\":\"qmp_capabilities\",\"id\":0}\n")
                .await
                .map_err(|_| QmpError::Closed)?;
            let reply = read_message(&mut lines).await?;
            if let Some(err) = reply.get("error") {
                return Err(QmpError::CommandFailed {
                    command: "qmp_capabilities".into(),
                    class: err["class"].as_str().unwrap_or_default().into(),
                    desc: err["desc"].as_str().unwrap_or_default().into(),
                });
            }
            if reply.get("return").is_none() {
                return Err(QmpError::Protocol(format!(
                    "unexpected reply to qmp_capabilities: {reply}"
                )));
            }
            Ok((lines, write, version))
        };
        // At least a moment for the greeting even when connecting used up the time.
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        let (lines, mut write, version) = tokio::time::timeout(remaining, handshake)
            .await
            .map_err(|_| QmpError::Timeout {
                what: format!("greeting on {path:?} (is another client connected?)"),
                after: timeout,
            })??;

        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (closed_tx, closed_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: HashMap::new(),
                events: Some(events),
                closed: false,
            }),
            closed_tx,
        });
        let (to_writer, mut queue) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = tokio::spawn(async move {
            while let Some(line) = queue.recv().await {
                if write.write_all(&line).await.is_err() {
                    // The reader sees the close too and fails the waiters.
                    break;
                }
            }
        });
        let reader = tokio::spawn(read_loop(lines, shared.clone()));
        Ok(Qmp {
            conn: Arc::new(Conn {
                shared,
                to_writer,
                next_id: AtomicU64::new(1),
                version,
                closed_rx,
                tasks: [reader, writer],
            }),
        })
    }

    /// QEMU's version from the greeting.
    pub fn version(&self) -> &QmpVersion {
        &self.conn.version
    }

    /// Whether QEMU has closed the connection.
    pub fn is_closed(&self) -> bool {
        *self.conn.closed_rx.borrow()
    }

    /// Resolve when QEMU closes the connection (it exited, crashed or was killed).
    pub async fn wait_closed(&self) {
        let mut rx = self.conn.closed_rx.clone();
        // An error means the sender is gone, which only happens after closing.
        let _ = rx.wait_for(|closed| *closed).await;
    }

    /// Receive every event from now on. After QEMU exits the receiver reports `Closed`.
    pub fn subscribe(&self) -> broadcast::Receiver<QmpEvent> {
        match &self.conn.shared.lock().events {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Run a command with [`DEFAULT_COMMAND_TIMEOUT`]. `args` is a JSON object or `null`.
    pub async fn execute(&self, command: &str, args: Value) -> Result<Value, QmpError> {
        self.execute_timeout(command, args, DEFAULT_COMMAND_TIMEOUT)
            .await
    }

    /// Run a command and wait at most `timeout` for its reply.
    pub async fn execute_timeout(
        &self,
        command: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": command });
        match args {
            Value::Null => {}
            Value::Object(_) => msg["arguments"] = args,
            other => {
                return Err(QmpError::Protocol(format!(
                    "arguments of {command} must be a JSON object, not {other}"
                )))
            }
        }
        let id = self.conn.next_id.fetch_add(1, Ordering::Relaxed);
        msg["id"] = json!(id);
        let (tx, rx) = oneshot::channel();
        let shared = &self.conn.shared;
        {
            let mut st = shared.lock();
            if st.closed {
                return Err(QmpError::Closed);
            }
            st.pending.insert(id, tx);
        }
        let _guard = PendingGuard { shared, id };
        let mut line = msg.to_string().into_bytes();
        line.push(b'\n');
        tracing::trace!(command, id, "qmp execute");
        self.conn
            .to_writer
            .send(line)
            .map_err(|_| QmpError::Closed)?;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(QmpError::Timeout {
                what: format!("command {command}"),
                after: timeout,
            }),
            Ok(Err(_)) => Err(QmpError::Closed),
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err((class, desc)))) => Err(QmpError::CommandFailed {
                command: command.to_string(),
                class,
                desc,
            }),
        }
    }

    async fn execute_unit(&self, command: &str, args: Value) -> Result<(), QmpError> {
        self.execute(command, args).await.map(|_| ())
    }

    pub async fn query_status(&self) -> Result<StatusInfo, QmpError> {
        let v = self.execute("query-status", Value::Null).await?;
        decode("query-status", v)
    }

    /// Where the VNC server listens (`query-vnc`): `Some((host, port))`, or `None` when VNC
    /// is disabled.
    pub async fn query_vnc(&self) -> Result<Option<(String, u16)>, QmpError> {
        let v = self.execute("query-vnc", Value::Null).await?;
        if !v.get("enabled").and_then(Value::as_bool).unwrap_or(false) {
            return Ok(None);
        }
        let host = v.get("host").and_then(Value::as_str).unwrap_or("127.0.0.1");
        let port = v
            .get("service")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<u16>().ok());
        Ok(port.map(|p| (host.to_string(), p)))
    }

    /// The `-name guest=` value QEMU holds.
    pub async fn query_name(&self) -> Result<Option<String>, QmpError> {
        let v = self.execute("query-name", Value::Null).await?;
        Ok(v.get("name").and_then(Value::as_str).map(String::from))
    }

    /// Press the ACPI power button.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute_unit("system_powerdown", Value::Null).await
    }

    pub async fn system_reset(&self) -> Result<(), QmpError> {
        self.execute_unit("system_reset", Value::Null).await
    }

    /// Pause the vCPUs.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute_unit("stop", Value::Null).await
    }

    /// Resume (or start, after `-S`) the vCPUs.
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute_unit("cont", Value::Null).await
    }

    /// Ask QEMU to exit now. The connection closing before the reply arrives counts as done.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute_unit("quit", Value::Null).await {
            Err(QmpError::Closed) => Ok(()),
            other => other,
        }
    }

    /// Insert `filename` (an absolute path, read-only, format `raw` unless given) into the
    /// removable drive with qdev id `id` (e.g. `cdrom0`), replacing what was there.
    pub async fn blockdev_change_medium(
        &self,
        id: &str,
        filename: &Path,
        format: Option<&str>,
    ) -> Result<(), QmpError> {
        let filename = filename
            .to_str()
            .ok_or_else(|| QmpError::Protocol(format!("path {filename:?} is not UTF-8")))?;
        self.execute_unit(
            "blockdev-change-medium",
            json!({
                "id": id,
                "filename": filename,
                "format": format.unwrap_or("raw"),
                "read-only-mode": "read-only",
            }),
        )
        .await
    }

    /// Open the tray; `force` overrides a guest lock (the guest is not asked).
    pub async fn blockdev_open_tray(&self, id: &str, force: bool) -> Result<(), QmpError> {
        self.execute_unit("blockdev-open-tray", json!({ "id": id, "force": force }))
            .await
    }

    pub async fn blockdev_close_tray(&self, id: &str) -> Result<(), QmpError> {
        self.execute_unit("blockdev-close-tray", json!({ "id": id }))
            .await
    }

    /// Remove the medium from an open tray.
    pub async fn blockdev_remove_medium(&self, id: &str) -> Result<(), QmpError> {
        self.execute_unit("blockdev-remove-medium", json!({ "id": id }))
            .await
    }

    /// Eject: open the tray (forcibly) and take the medium out; the drive stays, empty.
    pub async fn eject_medium(&self, id: &str) -> Result<(), QmpError> {
        self.blockdev_open_tray(id, true).await?;
        self.blockdev_remove_medium(id).await?;
        self.blockdev_close_tray(id).await
    }

    /// `device_add` with the given properties (`{"driver": ..., "id": ..., ...}`).
    pub async fn device_add(&self, props: Value) -> Result<(), QmpError> {
        self.execute_unit("device_add", props).await
    }

    /// Request unplug; completion is the `DEVICE_DELETED` event (the guest must cooperate).
    pub async fn device_del(&self, id: &str) -> Result<(), QmpError> {
        self.execute_unit("device_del", json!({ "id": id })).await
    }

    pub async fn netdev_add(&self, props: Value) -> Result<(), QmpError> {
        self.execute_unit("netdev_add", props).await
    }

    pub async fn netdev_del(&self, id: &str) -> Result<(), QmpError> {
        self.execute_unit("netdev_del", json!({ "id": id })).await
    }

    pub async fn query_block(&self) -> Result<Vec<BlockInfo>, QmpError> {
        let v = self.execute("query-block", Value::Null).await?;
        decode("query-block", v)
    }

    pub async fn query_pci(&self) -> Result<Vec<PciBus>, QmpError> {
        let v = self.execute("query-pci", Value::Null).await?;
        decode("query-pci", v)
    }

    /// Run a human-monitor command (`info usernet`, ...) and return its text output.
    pub async fn human_monitor_command(&self, command_line: &str) -> Result<String, QmpError> {
        let v = self
            .execute(
                "human-monitor-command",
                json!({ "command-line": command_line }),
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }
}

fn decode<T: serde::de::DeserializeOwned>(command: &str, v: Value) -> Result<T, QmpError> {
    serde_json::from_value(v)
        .map_err(|e| QmpError::Protocol(format!("unexpected {command} reply: {e}")))
}

async fn read_loop(mut lines: tokio::io::Lines<BufReader<OwnedReadHalf>>, shared: Arc<Shared>) {
    loop {
        let msg = match read_message(&mut lines).await {
            Ok(msg) => msg,
            Err(QmpError::Closed) => break,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring unreadable QMP message");
                continue;
            }
        };
        if msg.get("event").is_some() {
            match serde_json::from_value::<QmpEvent>(msg) {
                Ok(ev) => {
                    tracing::debug!(event = %ev.event, "qmp event");
                    if let Some(tx) = &shared.lock().events {
                        // No subscribers is fine.
                        let _ = tx.send(ev);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ignoring malformed QMP event"),
            }
            continue;
        }
        let reply: Reply = if let Some(ret) = msg.get("return") {
            Ok(ret.clone())
        } else if let Some(err) = msg.get("error") {
            Err((
                err["class"].as_str().unwrap_or("GenericError").to_string(),
                err["desc"].as_str().unwrap_or_default().to_string(),
            ))
        } else {
            tracing::warn!(%msg, "ignoring unexpected QMP message");
            continue;
        };
        let Some(id) = msg.get("id").and_then(Value::as_u64) else {
            tracing::warn!(%msg, "QMP reply without an id");
            continue;
        };
        if let Some(tx) = shared.lock().pending.remove(&id) {
            let _ = tx.send(reply);
        }
    }
    shared.close();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    /// A fake QEMU: greets, accepts capabilities, then answers commands out of order.
    #[tokio::test]
    async fn concurrent_commands_are_correlated_and_close_fails_waiters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"{\"QMP\":{\"version\":{\"qemu\":{\"major\":7,\"minor\":2,\"micro\":0},\"package\":\"x\"},\"capabilities\":[]}}\n").await.expect("greet");
            let caps: Value =
                serde_json::from_str(&lines.next_line().await.expect("read").expect("line"))
                    .expect("json");
            assert_eq!(caps["execute"], "qmp_capabilities");
            w.write_all(format!("{{\"return\":{{}},\"id\":{}}}\n", caps["id"]).as_bytes())
                .await
                .expect("w");
            let mut got = Vec::new();
            for _ in 0..3 {
                let m: Value =
                    serde_json::from_str(&lines.next_line().await.expect("read").expect("line"))
                        .expect("json");
                got.push(m);
            }
            w.write_all(b"{\"event\":\"STOP\",\"data\":{},\"timestamp\":{\"seconds\":1,\"microseconds\":2}}\n").await.expect("w");
            // Answer in reverse order, echoing the command name.
            for m in got.iter().rev() {
                let reply = if m["execute"] == "fail" {
                    json!({"error": {"class": "GenericError", "desc": "nope"}, "id": m["id"]})
                } else {
                    json!({"return": m["execute"], "id": m["id"]})
                };
                w.write_all(format!("{reply}\n").as_bytes())
                    .await
                    .expect("w");
            }
            // Swallow one more command without answering, then hang up.
            let _ = lines.next_line().await;
            drop(w);
            let mut rest = Vec::new();
            let _ = lines.into_inner().read_to_end(&mut rest).await;
        });
        let qmp = Qmp::connect(&path, Duration::from_secs(5))
            .await
            .expect("connect");
        assert_eq!(qmp.version().major, 7);
        let mut events = qmp.subscribe();
        let (a, b, c) = tokio::join!(
            qmp.execute("alpha", Value::Null),
            qmp.execute("beta", json!({"x": 1})),
            qmp.execute("fail", Value::Null),
        );
        assert_eq!(a.expect("alpha"), json!("alpha"));
        assert_eq!(b.expect("beta"), json!("beta"));
        match c {
            Err(QmpError::CommandFailed { class, desc, .. }) => {
                assert_eq!((class.as_str(), desc.as_str()), ("GenericError", "nope"))
            }
            other => panic!("expected CommandFailed, got {other:?}"),
        }
        let ev = events.recv().await.expect("event");
        assert_eq!(ev.event, "STOP");
        assert_eq!(ev.timestamp.microseconds, 2);
        let hung = qmp.execute("hang", Value::Null).await;
        assert!(matches!(hung, Err(QmpError::Closed)), "{hung:?}");
        qmp.wait_closed().await;
        assert!(qmp.is_closed());
        assert!(matches!(
            qmp.execute("after", Value::Null).await,
            Err(QmpError::Closed)
        ));
        assert!(matches!(
            events.recv().await,
            Err(broadcast::error::RecvError::Closed)
        ));
        drop(qmp); // lets the fake server see EOF
        server.await.expect("server");
    }

    #[tokio::test]
    async fn connecting_to_a_missing_socket_fails_after_retrying() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("none.sock");
        let err = Qmp::connect(&path, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Connect { .. }), "{err:?}");
    }
}
