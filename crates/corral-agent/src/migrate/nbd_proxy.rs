//! The source's end of a with-storage migration's disk mirror: a unix socket in the VM's run
//! directory that the source QEMU's NBD client connects to, each connection spliced to the
//! target QEMU's exports through the members' mutual TLS
//! (`GET /v1/pool/migrations/{id}/nbd`, `Upgrade: corral-nbd`; the target agent splices it to
//! its QEMU's NBD unix socket). With `--insecure-stream` the user trusts the network with the
//! guest's memory, and the disks go the same way: each connection is spliced to a plain TCP
//! connection to the target QEMU's own NBD server, one hop and the encryption fewer (less
//! work on both members; in the benchmark's 256 MiB mirror the gain was within the noise).
//!
//! Why not QEMU's own NBD-over-TLS: QEMU 7.2 negotiates a new NBD connection in a thread
//! while `blockdev-add` holds the main loop, and that thread's TLS handshake waits for the
//! main loop whenever the server is slow to answer. The two wait for each other forever and
//! the guest's vCPUs with them (seen when the target QEMU died during the handshake). Plain
//! NBD over a local socket never enters that path, and this agent owns both ends: the
//! streams to the target are opened *before* QEMU connects, so QEMU's negotiation only ever
//! waits on a target that is already connected, and dropping the proxy closes QEMU's side,
//! which fails any NBD read QEMU is blocked in.

use super::*;
use tokio::net::UnixListener;
use tokio::task::JoinSet;

/// The protocol name of the member stream.
pub const PROTOCOL: &str = "corral-nbd";

/// How the source's agent reaches the target's exports.
pub enum Route<'a> {
    /// Through the members' mutual TLS and the target's agent.
    Members { pool: Arc<Pool>, target_id: &'a str },
    /// Straight to the target QEMU's NBD server (`--insecure-stream`): its host and port.
    Plain(&'a str, u16),
}

/// A byte stream to the target's exports, whichever way it goes.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for S {}

/// Live while the mirror needs it; dropping it closes every stream (QEMU sees its NBD
/// connections end) and removes the socket.
pub struct NbdProxy {
    socket: PathBuf,
    run_dir: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl NbdProxy {
    /// Open `connections` streams to the target's exports of `migration_id` (one per disk:
    /// QEMU's NBD client opens one connection per `blockdev-add`), then listen for QEMU.
    pub async fn start(
        route: Route<'_>,
        migration_id: &str,
        run_dir: &Path,
        connections: usize,
        timeout: Duration,
    ) -> Result<NbdProxy, Error> {
        let path = format!("/v1/pool/migrations/{migration_id}/nbd");
        let mut ready: Vec<Box<dyn Stream>> = Vec::with_capacity(connections);
        for _ in 0..connections {
            ready.push(match &route {
                Route::Members { pool, target_id } => Box::new(
                    pool.open_stream(target_id, &path, PROTOCOL, timeout)
                        .await?,
                ),
                Route::Plain(host, port) => {
                    let address = format!("{}:{port}", super::incoming::uri_host(host));
                    let tcp =
                        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&address))
                            .await
                            .map_err(|_| format!("no answer within {} s", timeout.as_secs()))
                            .and_then(|r| r.map_err(|e| e.to_string()))
                            .map_err(|why| {
                                Error::new(
                                    ErrorKind::Unavailable,
                                    format!("cannot reach the disk export at {address}: {why}"),
                                )
                            })?;
                    let _ = tcp.set_nodelay(true);
                    Box::new(tcp)
                }
            });
        }
        let socket = run_dir.join("nbd-proxy.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).map_err(|e| {
            Error::caused(
                ErrorKind::Internal,
                format!("cannot listen on {}", socket.display()),
                e,
            )
        })?;
        // A confined QEMU connects as its own uid: it needs write on the socket.
        if let Some(uid) = crate::confine::granted_uid(run_dir) {
            use crate::confine::{R, W};
            crate::confine::grant(run_dir, uid, &[(socket.clone(), R | W)])?;
        }
        let task = tokio::spawn(serve(listener, ready));
        Ok(NbdProxy {
            socket,
            run_dir: run_dir.to_path_buf(),
            task,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for NbdProxy {
    fn drop(&mut self) {
        // The splices are the serving task's children (a `JoinSet`): aborting it drops them
        // and with them both ends of every stream.
        self.task.abort();
        crate::confine::revoke_path(&self.run_dir, &self.socket);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Accept QEMU's connections and splice each to one of the streams opened beforehand; a
/// connection beyond those is closed at once (QEMU's `blockdev-add` then fails quickly).
async fn serve(listener: UnixListener, mut ready: Vec<Box<dyn Stream>>) {
    let mut splices = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut qemu, _)) = accepted else { return };
                let Some(mut target) = ready.pop() else {
                    tracing::warn!("QEMU opened more NBD connections than disks; closing one");
                    continue;
                };
                splices.spawn(async move {
                    let _ = crate::pool::peer::splice(&mut qemu, &mut target).await;
                });
            }
            Some(_) = splices.join_next(), if !splices.is_empty() => {}
        }
    }
}
