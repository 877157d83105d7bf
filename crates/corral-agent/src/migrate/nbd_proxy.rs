//! The source's end of a with-storage migration's disk mirror: a unix socket in the VM's run
//! directory that the source QEMU's NBD client connects to, each connection spliced to the
//! target QEMU's exports through the members' mutual TLS
//! (`GET /v1/pool/migrations/{id}/nbd`, `Upgrade: corral-nbd`; the target agent splices it to
//! its QEMU's NBD unix socket).
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
        pool: Arc<Pool>,
        target_id: &str,
        migration_id: &str,
        run_dir: &Path,
        connections: usize,
        timeout: Duration,
    ) -> Result<NbdProxy, Error> {
        let path = format!("/v1/pool/migrations/{migration_id}/nbd");
        let mut ready = Vec::with_capacity(connections);
        for _ in 0..connections {
            ready.push(
                pool.open_stream(target_id, &path, PROTOCOL, timeout)
                    .await?,
            );
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

type Upstream = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;

/// Accept QEMU's connections and splice each to one of the streams opened beforehand; a
/// connection beyond those is closed at once (QEMU's `blockdev-add` then fails quickly).
async fn serve(listener: UnixListener, mut ready: Vec<Upstream>) {
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
