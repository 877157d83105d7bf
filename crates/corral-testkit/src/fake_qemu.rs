//! A fake QEMU process: a QMP server on a unix socket with a run status.
//!
//! Flow: [`FakeQemu::start`] binds the socket and serves one client at a time (the agent
//! reconnects after a restart, as with a real QEMU). Each command gets the answer a real QEMU
//! would give; `cont`/`stop` change the status and emit `RESUME`/`STOP`; `system_powerdown`
//! shuts the fake down after a delay when [`Behaviour::honours_powerdown`]; `quit` and
//! [`FakeQemu::kill`] end it at once. Once ended, the socket is gone and connections close,
//! which is how the agent learns that QEMU exited.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

/// How the fake guest behaves.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// Whether the guest powers off when the ACPI button is pressed.
    pub honours_powerdown: bool,
    /// How long the guest takes to power off after the button.
    pub powerdown_delay: Duration,
    /// The status at start: `prelaunch` (started with `-S`), `running` or `paused`.
    pub initial_status: &'static str,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            honours_powerdown: true,
            powerdown_delay: Duration::from_millis(50),
            initial_status: "prelaunch",
        }
    }
}

struct State {
    status: String,
    /// Every command received, in order, for assertions.
    commands: Vec<String>,
}

/// A running fake QEMU; ends (closes its socket) when dropped.
pub struct FakeQemu {
    socket: PathBuf,
    state: Arc<Mutex<State>>,
    exit: watch::Sender<bool>,
}

impl FakeQemu {
    /// Serve QMP on `socket` (any stale file there is removed first).
    pub fn start(socket: &Path, behaviour: Behaviour) -> std::io::Result<FakeQemu> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        let state = Arc::new(Mutex::new(State {
            status: behaviour.initial_status.to_string(),
            commands: Vec::new(),
        }));
        let (exit, exit_rx) = watch::channel(false);
        let fake = FakeQemu {
            socket: socket.to_path_buf(),
            state: state.clone(),
            exit: exit.clone(),
        };
        tokio::spawn(serve(listener, state, behaviour, exit, exit_rx));
        Ok(fake)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The current run status (`running`, `paused`, `prelaunch`).
    pub fn status(&self) -> String {
        lock(&self.state).status.clone()
    }

    /// Every command received so far.
    pub fn commands(&self) -> Vec<String> {
        lock(&self.state).commands.clone()
    }

    /// Whether the fake has ended (quit, powered off or killed).
    pub fn has_exited(&self) -> bool {
        *self.exit.borrow()
    }

    /// End the fake at once, as `kill -9` ends QEMU.
    pub fn kill(&self) {
        let _ = self.exit.send(true);
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for FakeQemu {
    fn drop(&mut self) {
        self.kill();
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

async fn serve(
    listener: UnixListener,
    state: Arc<Mutex<State>>,
    behaviour: Behaviour,
    exit: watch::Sender<bool>,
    exit_rx: watch::Receiver<bool>,
) {
    loop {
        let mut ended = exit_rx.clone();
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { return };
                if session(stream, &state, &behaviour, &exit, exit_rx.clone()).await {
                    return;
                }
            }
            _ = exited(&mut ended) => return,
        }
    }
}

/// Serve one client until it leaves (false) or the fake ends (true).
async fn session(
    stream: UnixStream,
    state: &Arc<Mutex<State>>,
    behaviour: &Behaviour,
    exit: &watch::Sender<bool>,
    mut exit_rx: watch::Receiver<bool>,
) -> bool {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let greeting = json!({"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": "fake"}, "capabilities": []}});
    if send(&mut write, &greeting).await.is_err() {
        return false;
    }
    // Events are queued here by commands and by the delayed power-off.
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { return false };
                let Ok(msg) = serde_json::from_str::<Value>(&line) else { continue };
                let command = msg["execute"].as_str().unwrap_or_default().to_string();
                let id = msg.get("id").cloned().unwrap_or(Value::Null);
                lock(state).commands.push(command.clone());
                let (reply, quit) = answer(&command, state, behaviour, &events_tx, exit);
                let mut reply = reply;
                reply["id"] = id;
                if send(&mut write, &reply).await.is_err() {
                    return false;
                }
                if quit {
                    let _ = exit.send(true);
                    return true;
                }
            }
            Some(event) = events_rx.recv() => {
                if send(&mut write, &event).await.is_err() {
                    return false;
                }
            }
            _ = exited(&mut exit_rx) => return true,
        }
    }
}

/// Resolve once the fake has ended (the borrow of the flag ends inside, keeping callers Send).
async fn exited(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|e| *e).await.map(|_| ());
}

fn event(name: &str) -> Value {
    json!({"event": name, "data": {}, "timestamp": {"seconds": 0, "microseconds": 0}})
}

/// The reply to `command`, and whether the fake quits after sending it.
fn answer(
    command: &str,
    state: &Arc<Mutex<State>>,
    behaviour: &Behaviour,
    events: &tokio::sync::mpsc::UnboundedSender<Value>,
    exit: &watch::Sender<bool>,
) -> (Value, bool) {
    let ok = |v: Value| (json!({ "return": v }), false);
    match command {
        "qmp_capabilities" | "system_reset" | "blockdev-change-medium" | "eject" => ok(json!({})),
        "query-status" => {
            let status = lock(state).status.clone();
            ok(json!({"status": status, "running": status == "running", "singlestep": false}))
        }
        "cont" => {
            lock(state).status = "running".into();
            let _ = events.send(event("RESUME"));
            ok(json!({}))
        }
        "stop" => {
            lock(state).status = "paused".into();
            let _ = events.send(event("STOP"));
            ok(json!({}))
        }
        "system_powerdown" => {
            if behaviour.honours_powerdown {
                let (events, exit, delay) =
                    (events.clone(), exit.clone(), behaviour.powerdown_delay);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = events.send(event("SHUTDOWN"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let _ = exit.send(true);
                });
            }
            ok(json!({}))
        }
        "quit" => (json!({"return": {}}), true),
        "query-vnc" => ok(json!({"enabled": false})),
        "query-blockstats" => ok(json!([])),
        other => (
            json!({"error": {"class": "CommandNotFound", "desc": format!("The command {other} has not been found")}}),
            false,
        ),
    }
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, v: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v)?;
    line.push(b'\n');
    write.write_all(&line).await
}
