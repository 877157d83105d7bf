//! P2V sessions (issue 12), the agent side of `corral p2v`: a running server's system disk
//! arrives in passes of frames and becomes a VM converted like `vm import IMAGE --convert`.
//!
//! How a session flows: `POST /v1/p2v` checks the name, the space and the converter before
//! anything is written, reserves the name, starts a `vm.import` task and opens a qcow2
//! volume in `STATE/staging/<id>/` ([`Ops::p2v_start`]). Each pass is one
//! `PUT /v1/p2v/{id}/data?pass=N` of [`corral_p2v::wire`] frames: every frame is verified
//! (range inside the disk, checksum) and written at its offset; the session remembers the
//! last frame applied, so an upload cut off mid-pass resumes with the next frame
//! ([`Ops::p2v_data`]). A pass is complete when its end frame arrives. The final pass only
//! overwrites what changed on the server since the first. `POST /v1/p2v/{id}/finish`
//! closes the volume and hands it to the same background conversion as an imported image
//! ([`Ops::spawn_conversion`]): inspect, convert, record the VM. `DELETE /v1/p2v/{id}`, a
//! cancelled task, or [`IDLE_LIMIT`] without a request end the session and remove
//! everything; an agent restart loses open sessions (their staging is removed at start) and
//! the client is told to start again.

use super::import_image::{check_space, converted_disk_size, on_path, refusal, Origin, Received};
use super::import_image_plan::{ImageFormat, ImageHead, MAX_DISK_BYTES, MIN_DISK_BYTES};
use super::transfer::{ByteStream, ChanReader};
use crate::error::Error;
use crate::ops::Ops;
use crate::tasks::TaskHandle;
use corral_archive::qcow2::Qcow2Writer;
use corral_model::task::Operation;
use corral_model::transfer::*;
use corral_model::validate::validate_name;
use corral_model::*;
use corral_p2v::wire::{FrameKind, FrameReader};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A session with no request for this long is abandoned (the server went away).
pub const IDLE_LIMIT: Duration = Duration::from_secs(15 * 60);
/// How often abandoned and cancelled sessions are looked for.
const WATCH_EVERY: Duration = Duration::from_secs(5);
/// The share of the task the transfer takes; the conversion follows.
const TRANSFER_END: f64 = 0.35;

/// The open sessions of this agent.
#[derive(Default)]
pub struct P2vSessions {
    open: Mutex<HashMap<String, Arc<Session>>>,
}

struct Session {
    id: String,
    name: String,
    spec: VmSpec,
    disk_bytes: u64,
    /// What the first pass announced it sends (the task's byte total for that pass).
    data_bytes: u64,
    staging: PathBuf,
    sr: corral_model::host::StorageRepository,
    network: ConvertNetwork,
    source_host: String,
    description: Option<String>,
    exclude: Vec<String>,
    task: TaskHandle,
    /// One upload (or the finish) at a time; a second is refused until the first ends.
    busy: AtomicBool,
    state: Mutex<State>,
}

struct State {
    /// Taken out while an upload writes (on a blocking thread) and put back after.
    writer: Option<Qcow2Writer>,
    pass: u32,
    applied: u64,
    pass_complete: bool,
    bytes_written: u64,
    wire_bytes: u64,
    last_request: Instant,
}

/// Holds a session's `busy` flag; released on drop.
struct Busy<'a>(&'a AtomicBool);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Session {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn claim(&self) -> Result<Busy<'_>, Error> {
        self.busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| Busy(&self.busy))
            .map_err(|_| {
                Error::conflict(format!(
                    "P2V session {} is receiving another upload; retry when it has ended",
                    self.id
                ))
            })
    }

    fn answer(&self) -> P2vSession {
        let s = self.state();
        P2vSession {
            id: self.id.clone(),
            task: self.task.id.clone(),
            name: self.name.clone(),
            pass: s.pass,
            applied: s.applied,
            pass_complete: s.pass_complete,
            bytes_written: s.bytes_written,
            wire_bytes: s.wire_bytes,
        }
    }
}

impl P2vSessions {
    fn get(&self, id: &str) -> Result<Arc<Session>, Error> {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| {
                Error::not_found(format!(
                    "no P2V session {id}: it was finished or abandoned, or the agent restarted; start the P2V again"
                ))
            })
    }

    fn remove(&self, id: &str) -> Option<Arc<Session>> {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
    }
}

impl Ops {
    /// `POST /v1/p2v`: check everything that can be checked before data flows, reserve the
    /// name, open the volume. See the module documentation.
    pub async fn p2v_start(self: &Arc<Self>, req: P2vStartRequest) -> Result<P2vSession, Error> {
        validate_name("VM", &req.name).map_err(Error::invalid)?;
        if let Some(d) = &req.description {
            corral_model::validate::validate_description(d).map_err(Error::invalid)?;
        }
        let source_host = req.source_host.clone().unwrap_or_else(|| "?".into());
        if source_host.len() > 253 || source_host.chars().any(|c| c.is_control()) {
            return Err(Error::invalid("the source host name is not a host name"));
        }
        if !req.disk_bytes.is_multiple_of(512)
            || !(MIN_DISK_BYTES..=MAX_DISK_BYTES).contains(&req.disk_bytes)
        {
            return Err(Error::invalid(format!(
                "the server's disk size {} is not a whole number of sectors between {} and {}",
                req.disk_bytes,
                format_size(MIN_DISK_BYTES),
                format_size(MAX_DISK_BYTES)
            )));
        }
        if req.exclude.len() > 64 {
            return Err(Error::invalid("at most 64 --exclude directories"));
        }
        for e in &req.exclude {
            corral_convert::exclude_path_ok(e).map_err(Error::invalid)?;
        }
        let disk_size =
            converted_disk_size(req.disk_size_bytes, req.disk_bytes, "the server's disk")?;
        let sr = self.sr(req.sr.as_deref().unwrap_or("default"))?;
        if !on_path("guestfish") {
            return Err(refusal(
                ErrorKind::Unsupported,
                "this host cannot convert servers: guestfish is not installed (Debian package libguestfs-tools, with a kernel package such as linux-image-amd64 for its appliance)",
                "no_converter",
            ));
        }
        let staging_root = self.host.layout.staging();
        // The volume is written as the data arrives: only the data and the conversion's
        // margin are needed.
        check_space(&sr, &staging_root, req.data_bytes.min(req.disk_bytes), 0, 0)?;

        let id = uuid::Uuid::new_v4().to_string();
        let spec = self.converted_vm_spec(&id, &req.name, disk_size, &sr)?;
        self.host.registry_mut().reserve(&req.name).map_err(|e| {
            Error::conflict(format!("{}; choose another name with --name", e.message))
        })?;
        let staging = staging_root.join(&id);
        let opened = std::fs::create_dir_all(&staging)
            .and_then(|_| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(staging.join("disk0.qcow2"))
            })
            .and_then(|f| Qcow2Writer::new(f, req.disk_bytes));
        let writer = match opened {
            Ok(w) => w,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                self.host.registry_mut().release(&req.name);
                return Err(Error::caused(
                    ErrorKind::Internal,
                    "cannot open the new VM's volume",
                    e,
                ));
            }
        };
        let task = self
            .host
            .tasks
            .start(Operation::VmImport, Some((&id, &req.name)));
        task.phase_span("first pass", 0.0, TRANSFER_END * 0.9);
        let session = Arc::new(Session {
            id: id.clone(),
            name: req.name.clone(),
            spec,
            disk_bytes: req.disk_bytes,
            data_bytes: req.data_bytes,
            staging,
            sr,
            network: req.network.unwrap_or_default(),
            source_host,
            description: req.description.clone(),
            exclude: req.exclude.clone(),
            task,
            busy: AtomicBool::new(false),
            state: Mutex::new(State {
                writer: Some(writer),
                pass: 1,
                applied: 0,
                pass_complete: false,
                bytes_written: 0,
                wire_bytes: 0,
                last_request: Instant::now(),
            }),
        });
        self.p2v
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), session.clone());
        tracing::info!(vm = %req.name, session = %id, disk = req.disk_bytes, data = req.data_bytes, "P2V session opened");
        self.watch_p2v_session(id);
        Ok(session.answer())
    }

    /// `GET /v1/p2v/{id}`.
    pub fn p2v_show(&self, id: &str) -> Result<P2vSession, Error> {
        let s = self.p2v.get(id)?;
        s.state().last_request = Instant::now();
        Ok(s.answer())
    }

    /// `PUT /v1/p2v/{id}/data?pass=N`: write the frames of pass `pass` (see the module
    /// documentation). Frames already applied (a resumed upload) are skipped; a gap in the
    /// sequence is refused.
    pub async fn p2v_data(
        &self,
        id: &str,
        pass: u32,
        body: ByteStream,
    ) -> Result<P2vSession, Error> {
        let s = self.p2v.get(id)?;
        let _busy = s.claim()?;
        let writer = {
            let mut st = s.state();
            st.last_request = Instant::now();
            if pass != st.pass {
                if pass != st.pass + 1 || !st.pass_complete {
                    return Err(Error::invalid(format!(
                        "pass {pass} cannot start: the session is in pass {} ({})",
                        st.pass,
                        if st.pass_complete {
                            "complete"
                        } else {
                            "not complete"
                        }
                    )));
                }
                st.pass = pass;
                st.applied = 0;
                st.pass_complete = false;
                s.task
                    .phase_span("final pass", TRANSFER_END * 0.9, TRANSFER_END);
            }
            st.writer.take().ok_or_else(|| {
                Error::new(ErrorKind::Internal, "the session's volume is not available")
            })?
        };
        let (first, total) = {
            let st = s.state();
            (st.applied, if pass == 1 { s.data_bytes } else { 0 })
        };
        let sess = s.clone();
        let disk_bytes = s.disk_bytes;
        let outcome = tokio::task::spawn_blocking(move || {
            let mut reader = ChanReader::new(body);
            reader.task = Some(sess.task.clone());
            let mut frames = FrameReader::new(reader, disk_bytes);
            let mut applied = first;
            let result = (|| -> Result<(), Error> {
                while let Some(f) = frames
                    .next_frame()
                    .map_err(|e| Error::caused(ErrorKind::InvalidInput, "bad P2V upload", e))?
                {
                    if f.seq <= applied {
                        continue;
                    }
                    if f.seq != applied + 1 {
                        return Err(Error::invalid(format!(
                            "frame {} arrived after frame {applied}: frames are missing",
                            f.seq
                        )));
                    }
                    if f.kind == FrameKind::Data {
                        writer.write_at(f.offset, &f.data).map_err(|e| {
                            Error::caused(
                                ErrorKind::Internal,
                                "cannot write the new VM's volume",
                                e,
                            )
                        })?;
                    }
                    applied = f.seq;
                    let mut st = sess.state();
                    st.applied = applied;
                    st.wire_bytes += f.wire_bytes;
                    st.bytes_written += f.data.len() as u64;
                    st.last_request = Instant::now();
                    if f.kind == FrameKind::End {
                        st.pass_complete = true;
                    }
                    if total > 0 {
                        sess.task
                            .bytes(st.bytes_written, total.max(st.bytes_written));
                    }
                }
                Ok(())
            })();
            (writer, result)
        })
        .await;
        let (writer, result) = match outcome {
            Ok(x) => x,
            Err(e) => {
                // The writer is lost with the worker: the session cannot go on.
                self.p2v_abort(id, "the upload's worker failed");
                return Err(Error::caused(
                    ErrorKind::Internal,
                    "P2V upload worker failed",
                    e,
                ));
            }
        };
        s.state().writer = Some(writer);
        if s.task.is_cancelled() {
            self.p2v_abort(id, "the P2V was cancelled; nothing was created");
            return Err(Error::new(ErrorKind::InvalidState, "the P2V was cancelled"));
        }
        // A cut connection is not an error of the session: the client resumes.
        if let Err(e) = result {
            if e.kind == ErrorKind::InvalidInput && !e.message.contains("upload failed") {
                tracing::warn!(session = %id, error = %e, "P2V upload refused");
            }
            return Err(e);
        }
        Ok(s.answer())
    }

    /// `POST /v1/p2v/{id}/finish`: close the volume and convert it in the background. The
    /// conversion's task (the session's).
    pub async fn p2v_finish(
        self: &Arc<Self>,
        id: &str,
        req: P2vFinishRequest,
    ) -> Result<String, Error> {
        let s = self.p2v.get(id)?;
        if req.method.is_empty()
            || req.method.len() > 200
            || req.method.chars().any(|c| c.is_control())
        {
            return Err(Error::invalid(
                "the consistency method must be 1 to 200 printable characters",
            ));
        }
        let _busy = s.claim()?;
        let writer = {
            let mut st = s.state();
            if !st.pass_complete {
                return Err(Error::invalid(format!(
                    "pass {} is not complete: send the rest of it before finishing",
                    st.pass
                )));
            }
            st.writer.take().ok_or_else(|| {
                Error::new(ErrorKind::Internal, "the session's volume is not available")
            })?
        };
        self.p2v.remove(id);
        let closed = tokio::task::spawn_blocking(move || writer.finish()).await;
        if !matches!(closed, Ok(Ok(_))) {
            let _ = std::fs::remove_dir_all(&s.staging);
            self.host.registry_mut().release(&s.name);
            let e = Error::new(ErrorKind::Internal, "cannot close the new VM's volume");
            s.task.fail(&e);
            return Err(e);
        }
        let (written, wire) = {
            let st = s.state();
            (st.bytes_written, st.wire_bytes)
        };
        tracing::info!(vm = %s.name, written, wire, method = %req.method, final_pass_ms = ?req.final_pass_ms, "P2V transfer complete");
        let job = Received {
            id: s.id.clone(),
            name: s.name.clone(),
            spec: s.spec.clone(),
            image: ImageHead {
                format: ImageFormat::Raw,
                virtual_size: s.disk_bytes,
            },
            staging: s.staging.clone(),
            staged: s.staging.join("disk0.qcow2"),
            sr: s.sr.clone(),
            network: s.network,
            origin: Origin::P2v {
                host: s.source_host.clone(),
                method: match req.final_pass_ms {
                    Some(ms) => format!("{}, final pass {ms} ms", req.method),
                    None => req.method.clone(),
                },
                description: s.description.clone(),
            },
            emptied: s.exclude.clone(),
        };
        Ok(self.spawn_conversion(job, s.task.clone()))
    }

    /// `DELETE /v1/p2v/{id}`: end the session, removing everything it wrote.
    pub fn p2v_cancel(&self, id: &str) -> Result<(), Error> {
        let s = self.p2v.get(id)?;
        let _busy = s.claim()?;
        self.p2v_abort(
            id,
            "the P2V was abandoned by its client; nothing was created",
        );
        Ok(())
    }

    /// Remove a session and all it wrote; the name is free again.
    fn p2v_abort(&self, id: &str, why: &str) {
        let Some(s) = self.p2v.remove(id) else {
            return;
        };
        let _ = std::fs::remove_dir_all(&s.staging);
        self.host.registry_mut().release(&s.name);
        tracing::info!(vm = %s.name, session = %id, why, "P2V session ended");
        s.task.cancelled_with(why);
    }

    /// End the session `id` when its task is cancelled between uploads or its client has
    /// been silent for [`IDLE_LIMIT`].
    fn watch_p2v_session(self: &Arc<Self>, id: String) {
        let ops = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_EVERY).await;
                let Some(ops) = ops.upgrade() else { return };
                let Ok(s) = ops.p2v.get(&id) else { return };
                if s.busy.load(Ordering::Acquire) {
                    continue;
                }
                if s.task.is_cancelled() {
                    ops.p2v_abort(&id, "the P2V was cancelled; nothing was created");
                    return;
                }
                let idle = s.state().last_request.elapsed();
                if idle > IDLE_LIMIT {
                    ops.p2v_abort(
                        &id,
                        &format!(
                            "the P2V client sent nothing for {} min; the session was abandoned and nothing was created",
                            IDLE_LIMIT.as_secs() / 60
                        ),
                    );
                    return;
                }
            }
        });
    }
}
