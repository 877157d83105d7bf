//! The source's migration driver: runs off the VM actor's loop with a clone of the VM's QMP
//! session, and ends by handing the actor either [`Completed`] (the guest runs on the target,
//! which holds it for the ownership flip) or an error after a full rollback (the guest runs
//! here as before, the target has been told to drop its half).

use super::converge::{Converge, Policy, Sample, Step};
use super::*;
use crate::tasks::TaskHandle;
use corral_qemu::migration::{self as qm, MigrationInfo, MigrationStatus};

const POLL: Duration = Duration::from_millis(500);
/// How long a sampling query waits before it re-checks the target's heartbeats.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a final `query-migrate` status without a total time may be the previous
/// migration's (see `Driver::memory`).
const STALE_STATUS_GRACE: Duration = Duration::from_secs(10);
/// How long a `completed` migration may take to show QEMU's own total time and downtime.
const FIGURES_GRACE: Duration = Duration::from_secs(2);
/// How long connecting to the target's disk export may take (QEMU's attempt blocks its
/// monitor and the guest's I/O; see `Driver::mirror`).
const NBD_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A rollback must end: no monitor command in it waits longer than this.
const ROLLBACK_QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// The target is given up when it has not answered a heartbeat for this long.
const TARGET_SILENCE: Duration = Duration::from_secs(5);
/// QEMU's own default (32 MiB/s) would make every migration slow; without `--bandwidth`
/// the stream may use what the link gives.
const UNLIMITED_BANDWIDTH: u64 = 100 << 30;

/// Everything the driver needs, decided before the job starts.
pub struct Plan {
    pub migration_id: String,
    pub target_id: String,
    pub target_name: String,
    pub request: MigrateRequest,
    pub incoming: IncomingRequest,
    pub pool: Arc<Pool>,
    pub host: Arc<Host>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("migration_id", &self.migration_id)
            .field("target", &self.target_name)
            .finish_non_exhaustive()
    }
}

/// A migration whose guest runs on the target.
#[derive(Debug)]
pub struct Completed {
    pub target_id: String,
    pub target_name: String,
    /// With storage: device -> the volume on the target that replaces this host's.
    pub volumes: Vec<(String, PathBuf)>,
    pub target_sr: Option<String>,
    pub figures: MigrationFigures,
}

fn qmp_err(what: &str) -> impl FnOnce(corral_qemu::qmp::QmpError) -> Error + '_ {
    move |e| Error::caused(e.kind(), what, e)
}

/// Heartbeats to the target every second, in their own task.
struct Beats {
    last_ok: Arc<Mutex<Instant>>,
    state: Arc<Mutex<IncomingState>>,
    task: tokio::task::JoinHandle<()>,
    target_name: String,
}

impl Beats {
    fn start(plan: &Plan) -> Beats {
        let last_ok = Arc::new(Mutex::new(Instant::now()));
        let state = Arc::new(Mutex::new(IncomingState::Receiving));
        let (pool, target, path) = (
            plan.pool.clone(),
            plan.target_id.clone(),
            format!("/v1/pool/migrations/{}/heartbeat", plan.migration_id),
        );
        let (l, s) = (last_ok.clone(), state.clone());
        let task = tokio::spawn(async move {
            loop {
                if let Ok(answer) = pool
                    .call::<IncomingState>(&target, &path, &json!({}), Duration::from_secs(2))
                    .await
                {
                    *l.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                    *s.lock().unwrap_or_else(|p| p.into_inner()) = answer;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Beats {
            last_ok,
            state,
            task,
            target_name: plan.target_name.clone(),
        }
    }

    /// An error when the target went silent or dropped the migration.
    fn check(&self) -> Result<(), Error> {
        let silent = self
            .last_ok
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        if silent > TARGET_SILENCE {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "host {:?} has not answered for {} s",
                    self.target_name,
                    silent.as_secs()
                ),
            ));
        }
        if *self.state.lock().unwrap_or_else(|p| p.into_inner()) == IncomingState::Unknown {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "host {:?} dropped the migration (its QEMU exited or its agent restarted)",
                    self.target_name
                ),
            ));
        }
        Ok(())
    }
}

impl Drop for Beats {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Run the migration; see the module documentation. `was_paused`: the guest's vCPUs were
/// stopped by the user before (a rollback leaves them so).
pub async fn drive(
    plan: Plan,
    qmp: Qmp,
    mut task: TaskHandle,
    run_dir: PathBuf,
    was_paused: bool,
) -> Result<Completed, Error> {
    task.phase_span(&format!("preparing host {}", plan.target_name), 0.0, 0.05);
    let preparing = Instant::now();
    let mut marker = SourceMarker {
        migration_id: plan.migration_id.clone(),
        target_id: plan.target_id.clone(),
        target_name: plan.target_name.clone(),
        was_paused,
        volumes: Vec::new(),
        target_sr: plan.request.with_storage.then(|| {
            plan.request
                .target_sr
                .clone()
                .unwrap_or_else(|| "default".into())
        }),
    };
    marker.write(&run_dir);
    let prepare = plan.pool.call::<IncomingAnswer>(
        &plan.target_id,
        "/v1/pool/migrations",
        &plan.incoming,
        super::PEER_TIMEOUT,
    );
    let answer = tokio::select! {
        a = prepare => a?,
        _ = task.cancelled() => {
            // The target may have prepared already; it also drops its half by itself when no
            // heartbeat comes.
            abort_target(&plan).await;
            return Err(cancelled());
        }
    };
    if let Some(why) = failed_checks(&answer.checks) {
        return Err(Error::new(
            ErrorKind::InvalidState,
            format!("host {:?} refused: {why}", plan.target_name),
        ));
    }
    marker.volumes = answer.volumes.clone();
    marker.write(&run_dir);
    let beats = Beats::start(&plan);
    let mut driver = Driver {
        plan: &plan,
        qmp: &qmp,
        answer: &answer,
        beats: &beats,
        figures: MigrationFigures::default(),
        started: Instant::now(),
        mirrors: Vec::new(),
        nbd_proxy: None,
        ram_total: 0,
        events: qmp.subscribe(),
        timeline: vec![("prepare", preparing.elapsed())],
    };
    let outcome = driver.run(&mut task, &run_dir).await;
    match outcome {
        Ok(figures) => {
            // Where the time went, for an operator comparing migrations (the task has the
            // totals QEMU measured).
            let phases: Vec<String> = driver
                .timeline
                .iter()
                .map(|(phase, took)| format!("{phase} {} ms", took.as_millis()))
                .collect();
            tracing::info!(migration = %plan.migration_id, phases = %phases.join(", "), "migrated");
            Ok(Completed {
                target_id: marker.target_id,
                target_name: marker.target_name,
                volumes: marker.volumes,
                target_sr: marker.target_sr,
                figures,
            })
        }
        Err(e) => {
            tracing::warn!(migration = %plan.migration_id, error = %e, "migration failed; rolling back");
            task.phase("rolling back: the VM stays on this host", 0.0);
            let rolling_back = Instant::now();
            driver.rollback(was_paused).await;
            drop(beats);
            abort_target(&plan).await;
            tracing::info!(migration = %plan.migration_id, took_ms = rolling_back.elapsed().as_millis() as u64, "rolled back");
            Err(e)
        }
    }
}

async fn abort_target(plan: &Plan) {
    tell_target_to_abort(&plan.pool, &plan.target_id, &plan.migration_id).await;
}

/// Ask member `target_id` to drop its half of `migration_id` (best effort, 5 s at most).
pub(super) async fn tell_target_to_abort(pool: &Pool, target_id: &str, migration_id: &str) {
    let path = format!("/v1/pool/migrations/{migration_id}/abort");
    let _ = pool
        .call::<serde_json::Value>(target_id, &path, &json!({}), Duration::from_secs(5))
        .await;
}

fn cancelled() -> Error {
    Error::new(
        ErrorKind::InvalidState,
        "migration cancelled; the VM keeps running on this host",
    )
}

struct Driver<'a> {
    plan: &'a Plan,
    qmp: &'a Qmp,
    answer: &'a IncomingAnswer,
    beats: &'a Beats,
    figures: MigrationFigures,
    started: Instant,
    /// Devices whose disk is being mirrored (node and job `mig-<device>`).
    mirrors: Vec<String>,
    /// The mirror's way to the target's exports, while it is needed.
    nbd_proxy: Option<super::nbd_proxy::NbdProxy>,
    /// The guest's RAM as QEMU counts it.
    ram_total: u64,
    /// QEMU's events: a migration or block job changing state ends the wait for the next
    /// sample at once, so a short migration is not held up by the sampling interval.
    events: tokio::sync::broadcast::Receiver<corral_qemu::qmp::QmpEvent>,
    /// How long each phase took, in order (logged when the migration completes).
    timeline: Vec<(&'static str, Duration)>,
}

impl Driver<'_> {
    /// Until the next sample: `POLL`, or sooner when QEMU reports a migration or block-job
    /// state change.
    async fn next_sample(&mut self) {
        let until = tokio::time::Instant::now() + POLL;
        loop {
            match tokio::time::timeout_at(until, self.events.recv()).await {
                Err(_) => return,
                Ok(Ok(ev))
                    if matches!(
                        ev.event.as_str(),
                        "MIGRATION" | "BLOCK_JOB_READY" | "BLOCK_JOB_COMPLETED" | "BLOCK_JOB_ERROR"
                    ) =>
                {
                    return
                }
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                    tokio::time::sleep_until(until).await;
                    return;
                }
                Ok(_) => {}
            }
        }
    }

    /// Fault injection for the tests: a line `NAME SECONDS` in `STATE_DIR/failpoints` holds
    /// the driver that long at the named point, so a test can kill or cut something in a
    /// phase it could not otherwise catch (`after-prepare`: the target is ready, nothing sent
    /// yet; `at-switchover`: the vCPUs are stopped before the switchover). The hold watches
    /// what a slow phase watches (cancel, the target's heartbeats, the deadline), so a fault
    /// ends it as it would end real work. Read each time, so no restart is needed; absent,
    /// it costs one failed `open`.
    async fn failpoint(&self, task: &TaskHandle, name: &str) -> Result<(), Error> {
        let Ok(text) = std::fs::read_to_string(self.plan.host.layout.root.join("failpoints"))
        else {
            return Ok(());
        };
        let secs = text.lines().find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(name))
                .then(|| w.next().and_then(|s| s.parse::<u64>().ok()))
                .flatten()
        });
        let Some(secs) = secs else { return Ok(()) };
        tracing::warn!(failpoint = name, secs, "migration held by a test failpoint");
        let until = Instant::now() + Duration::from_secs(secs.min(120));
        while Instant::now() < until {
            self.keep_going(task)?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    async fn q(&self, cmd: &str, args: serde_json::Value) -> Result<serde_json::Value, Error> {
        self.qmp
            .execute(cmd, args)
            .await
            .map_err(qmp_err(&format!("QEMU refused {cmd}")))
    }

    /// A sampling query (`query-migrate`, `query-block-jobs`). QEMU's monitor can stall
    /// while its main loop waits on the target (stopping the vCPUs drains the guest's
    /// in-flight writes, which a write-blocking mirror sends into a cut network): every
    /// `SAMPLE_TIMEOUT` the wait re-checks cancel, the target's heartbeats and the deadline,
    /// so a dead target starts the rollback (which frees QEMU) within its heartbeat window
    /// instead of after the monitor's 30 s.
    async fn sample_query(&self, task: &TaskHandle, cmd: &str) -> Result<serde_json::Value, Error> {
        let started = Instant::now();
        loop {
            match self
                .qmp
                .execute_timeout(cmd, json!({}), SAMPLE_TIMEOUT)
                .await
            {
                Ok(v) => return Ok(v),
                Err(e)
                    if e.kind() == ErrorKind::Timeout
                        && started.elapsed() < corral_qemu::qmp::DEFAULT_COMMAND_TIMEOUT =>
                {
                    self.keep_going(task)?
                }
                Err(e) => return Err(qmp_err(&format!("QEMU refused {cmd}"))(e)),
            }
        }
    }

    fn deadline(&self) -> Duration {
        Duration::from_secs(
            self.plan
                .request
                .deadline_secs
                .unwrap_or(DEFAULT_DEADLINE_SECS),
        )
    }

    /// Between two samples: the user's cancel, the target's silence, the deadline.
    fn keep_going(&self, task: &TaskHandle) -> Result<(), Error> {
        if task.is_cancelled() {
            return Err(cancelled());
        }
        self.beats.check()?;
        if self.started.elapsed() > self.deadline() {
            let f = &self.figures;
            let mib =
                |b: Option<u64>| format!("{:.1} MiB", b.unwrap_or(0) as f64 / (1u64 << 20) as f64);
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "the migration did not converge within its deadline of {} s: {} still to send, the guest dirties {}/s, the link carries {}/s",
                    self.deadline().as_secs(),
                    mib(f.remaining_bytes),
                    mib(f.dirty_rate_bytes_per_s),
                    mib(f.transfer_rate_bytes_per_s)
                ),
            ));
        }
        Ok(())
    }

    async fn run(
        &mut self,
        task: &mut TaskHandle,
        run_dir: &Path,
    ) -> Result<MigrationFigures, Error> {
        let tls = self.plan.incoming.tls;
        let host = self
            .answer
            .host
            .clone()
            .ok_or_else(|| Error::internal("the target gave no address"))?;
        let _ = self.q("object-del", json!({ "id": TLS_ID })).await;
        if tls {
            let dir = write_tls_dir(run_dir, &self.plan.pool, false)?;
            self.q("object-add", tls_object(&dir, "client")).await?;
        }
        self.failpoint(task, "after-prepare").await?;
        self.keep_going(task)?;
        if self.plan.request.with_storage {
            let mirroring = Instant::now();
            self.mirror(task, run_dir).await?;
            self.timeline.push(("mirror", mirroring.elapsed()));
        }
        let moving = Instant::now();
        self.memory(task, &host, tls).await?;
        self.timeline
            .push(("memory and switchover", moving.elapsed()));
        task.phase_span(
            &format!("switching over to host {}", self.plan.target_name),
            0.97,
            1.0,
        );
        // The memory's byte count stays on the task, complete.
        task.bytes(self.ram_total, self.ram_total);
        let committing = Instant::now();
        self.commit().await?;
        self.timeline.push(("commit", committing.elapsed()));
        Ok(self.figures.clone())
    }

    /// Mirror every disk to the target's NBD export, in write-blocking mode: once a job is
    /// ready, every guest write reaches the target before it completes. QEMU's NBD client
    /// reaches the exports through this agent (`nbd_proxy`), never with its own TLS.
    async fn mirror(&mut self, task: &TaskHandle, run_dir: &Path) -> Result<(), Error> {
        task.phase_span("mirroring disks", 0.05, 0.5);
        if !self.answer.nbd {
            return Err(Error::internal("the target serves no disk export"));
        }
        use super::nbd_proxy::Route;
        let route = match (self.answer.nbd_port, &self.answer.host) {
            (Some(port), Some(host)) => Route::Plain(host, port),
            _ => Route::Members {
                pool: self.plan.pool.clone(),
                target_id: &self.plan.target_id,
            },
        };
        let proxy = super::nbd_proxy::NbdProxy::start(
            route,
            &self.plan.migration_id,
            run_dir,
            self.answer.volumes.len(),
            NBD_CONNECT_TIMEOUT,
        )
        .await?;
        let socket = proxy.socket().to_path_buf();
        self.nbd_proxy = Some(proxy);
        for (device, _) in &self.answer.volumes {
            let node = format!("mig-{device}");
            // `discard: unmap` lets the mirror write zeroes as zeroes (an NBD command, no
            // data): without it QEMU copies and rate-limits a disk's holes like its data.
            let nbd = json!({
                "driver": "nbd", "node-name": node, "discard": "unmap",
                "server": { "type": "unix", "path": socket },
                "export": device,
            });
            // QEMU 7.2 negotiates an NBD node while it holds its main lock: the monitor and
            // the guest's I/O wait for the target's answer. The stream is already open, and
            // a rollback after a timeout drops the proxy, which ends QEMU's wait.
            self.qmp
                .execute_timeout("blockdev-add", nbd, NBD_CONNECT_TIMEOUT)
                .await
                .map_err(qmp_err(&format!(
                    "QEMU cannot reach host {:?}'s disk export",
                    self.plan.target_name
                )))?;
            self.mirrors.push(device.clone());
            let mut mirror = json!({
                "job-id": node, "device": corral_qemu::argv::ids::disk_format_node(device),
                "target": node, "sync": "full", "copy-mode": "write-blocking",
            });
            // `--bandwidth` limits the disks' copy as it limits the memory stream.
            if let Some(bw) = self.plan.request.bandwidth_bytes_per_s {
                mirror["speed"] = json!(bw);
            }
            self.q("blockdev-mirror", mirror).await?;
        }
        loop {
            self.keep_going(task)?;
            let jobs = qm::parse_block_jobs(&self.sample_query(task, "query-block-jobs").await?)
                .map_err(|e| Error::internal(format!("unreadable query-block-jobs: {e}")))?;
            let ours: Vec<&qm::BlockJob> = jobs
                .iter()
                .filter(|j| self.mirrors.iter().any(|d| j.device == format!("mig-{d}")))
                .collect();
            if let Some(j) = ours.iter().find(|j| j.error.is_some()) {
                return Err(Error::new(
                    ErrorKind::Internal,
                    format!(
                        "mirroring {} failed: {}",
                        j.device,
                        j.error.clone().unwrap_or_default()
                    ),
                ));
            }
            if ours.len() < self.mirrors.len() {
                return Err(Error::internal("a disk mirror ended before it was ready"));
            }
            let (done, total) = ours
                .iter()
                .fold((0, 0), |(d, t), j| (d + j.offset, t + j.len));
            task.bytes(done, total);
            self.figures.disk_bytes = Some(done);
            task.figures(&self.figures);
            if ours.iter().all(|j| j.ready) {
                return Ok(());
            }
            self.next_sample().await;
        }
    }

    async fn memory(&mut self, task: &TaskHandle, host: &str, tls: bool) -> Result<(), Error> {
        let req = &self.plan.request;
        task.phase_span(
            "migrating memory",
            if req.with_storage { 0.5 } else { 0.05 },
            0.97,
        );
        let policy = Policy {
            start_downtime_ms: DEFAULT_START_DOWNTIME_MS
                .min(req.max_downtime_ms.unwrap_or(DEFAULT_MAX_DOWNTIME_MS)),
            max_downtime_ms: req.max_downtime_ms.unwrap_or(DEFAULT_MAX_DOWNTIME_MS),
            postcopy: req.postcopy,
            deadline: self.deadline().saturating_sub(self.started.elapsed()),
            stall: Duration::from_secs(3),
        };
        let mut converge = Converge::new(policy);
        self.q(
            "migrate-set-capabilities",
            qm::capabilities(req.postcopy, req.with_storage),
        )
        .await?;
        let mut params = qm::neutral_throttle();
        params["downtime-limit"] = json!(converge.downtime_ms());
        params["max-bandwidth"] = json!(req.bandwidth_bytes_per_s.unwrap_or(UNLIMITED_BANDWIDTH));
        params["tls-creds"] = json!(if tls { TLS_ID } else { "" });
        params["tls-hostname"] = json!(if tls {
            self.answer.tls_hostname.clone().unwrap_or_default()
        } else {
            String::new()
        });
        // Switches and ARP caches learn the guest's MACs on the new port at once.
        params["announce-rounds"] = json!(5);
        self.q("migrate-set-parameters", params).await?;
        self.figures.downtime_limit_ms = Some(converge.downtime_ms());
        let port = self
            .answer
            .migration_port
            .ok_or_else(|| Error::internal("the target gave no migration port"))?;
        self.q(
            "migrate",
            json!({ "uri": format!("tcp:{}:{port}", incoming::uri_host(host)) }),
        )
        .await?;
        let memory_started = Instant::now();
        // Until this migration shows itself (setup, active, ...), a final status may be the
        // QEMU's previous migration (the one that brought the guest here, or a cancelled
        // one): taken as ours only with QEMU's total time, or after a grace period.
        let mut seen_start = false;
        let mut completed_seen: Option<Instant> = None;
        let mut continued = false;
        loop {
            let info = MigrationInfo::parse(&self.sample_query(task, "query-migrate").await?)
                .map_err(|e| Error::internal(format!("unreadable query-migrate: {e}")))?;
            let stale = info.status.is_final()
                && !seen_start
                && info.total_time.unwrap_or(0) == 0
                && memory_started.elapsed() < STALE_STATUS_GRACE;
            seen_start |= !info.status.is_final() && info.status != MigrationStatus::None;
            if stale || info.status == MigrationStatus::None {
                self.keep_going(task)?;
                self.next_sample().await;
                continue;
            }
            // QEMU announces `completed` before its migration thread computes the total time
            // and downtime (it does once it holds the main lock again), and the MIGRATION
            // event wakes us right into that window: ask again, briefly.
            if info.status == MigrationStatus::Completed
                && info.total_time.unwrap_or(0) == 0
                && completed_seen.get_or_insert_with(Instant::now).elapsed() < FIGURES_GRACE
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            self.sample(task, &info);
            match info.status {
                MigrationStatus::Completed => {
                    self.figures.downtime_ms = info.downtime;
                    self.figures.total_ms = info.total_time;
                    task.figures(&self.figures);
                    return Ok(());
                }
                MigrationStatus::Failed | MigrationStatus::Cancelled => {
                    return Err(Error::new(
                        ErrorKind::Internal,
                        format!(
                            "QEMU's migration {}: {}",
                            if info.status == MigrationStatus::Failed {
                                "failed"
                            } else {
                                "was cancelled"
                            },
                            info.error_desc.unwrap_or_else(|| "no reason given".into())
                        ),
                    ))
                }
                // Once: QEMU may still report `pre-switchover` for a moment after it was told
                // to continue (its migration thread has not woken yet), and a second
                // `migrate-continue` then finds it in `device` and fails the migration.
                MigrationStatus::PreSwitchover if !continued => {
                    self.timeline
                        .push(("memory copy", memory_started.elapsed()));
                    self.failpoint(task, "at-switchover").await?;
                    let finishing = Instant::now();
                    self.finish_mirrors().await?;
                    self.timeline
                        .push(("mirror completion", finishing.elapsed()));
                    self.q("migrate-continue", json!({ "state": "pre-switchover" }))
                        .await?;
                    continued = true;
                    continue;
                }
                MigrationStatus::PreSwitchover => {}
                MigrationStatus::PostcopyActive => {}
                _ => {
                    self.keep_going(task)?;
                    let step = converge.observe(Sample {
                        at: memory_started.elapsed(),
                        remaining: info.ram.as_ref().map(|r| r.remaining).unwrap_or(0),
                        dirty_rate: info.dirty_rate(),
                        transfer_rate: info.transfer_rate(),
                        passes: info.ram.as_ref().map(|r| r.dirty_sync_count).unwrap_or(0),
                    });
                    if let Some(step) = step {
                        self.escalate(step, task).await?;
                    }
                }
            }
            self.next_sample().await;
        }
    }

    fn sample(&mut self, task: &TaskHandle, info: &MigrationInfo) {
        if let Some(ram) = &info.ram {
            task.bytes(ram.total.saturating_sub(ram.remaining), ram.total);
            self.ram_total = ram.total;
            self.figures.memory_bytes_sent = Some(ram.transferred);
            self.figures.remaining_bytes = Some(ram.remaining);
        }
        self.figures.dirty_rate_bytes_per_s = Some(info.dirty_rate());
        self.figures.transfer_rate_bytes_per_s = Some(info.transfer_rate());
        self.figures.expected_downtime_ms = info.expected_downtime;
        self.figures.cpu_throttle_percent = info.cpu_throttle_percentage;
        task.figures(&self.figures);
    }

    async fn escalate(&mut self, step: Step, task: &TaskHandle) -> Result<(), Error> {
        let reason = match step {
            Step::Throttle { reason } => {
                self.q("migrate-set-parameters", qm::escalated_throttle())
                    .await?;
                reason
            }
            Step::RaiseDowntime { to_ms, reason } => {
                self.q("migrate-set-parameters", json!({ "downtime-limit": to_ms }))
                    .await?;
                self.figures.downtime_limit_ms = Some(to_ms);
                reason
            }
            Step::Postcopy { reason } => {
                self.q("migrate-start-postcopy", json!({})).await?;
                reason
            }
            Step::GiveUp { reason } => {
                return Err(Error::new(ErrorKind::Timeout, reason));
            }
        };
        tracing::info!(vm = %self.plan.incoming.record.spec.name, "{reason}");
        self.figures.escalations.push(reason);
        task.figures(&self.figures);
        Ok(())
    }

    /// At the switchover (vCPUs stopped): complete the mirrors without pivoting, so the
    /// target's disks hold every write, then drop the NBD connections.
    async fn finish_mirrors(&mut self) -> Result<(), Error> {
        for d in &self.mirrors {
            self.q("block-job-cancel", json!({ "device": format!("mig-{d}") }))
                .await?;
        }
        self.wait_mirrors_gone(Duration::from_secs(30)).await?;
        for d in std::mem::take(&mut self.mirrors) {
            let _ = self
                .q("blockdev-del", json!({ "node-name": format!("mig-{d}") }))
                .await;
        }
        self.nbd_proxy = None;
        Ok(())
    }

    async fn wait_mirrors_gone(&self, timeout: Duration) -> Result<(), Error> {
        let until = Instant::now() + timeout;
        loop {
            // Bounded: a rollback calls this too, and must end.
            let jobs = self
                .qmp
                .execute_timeout("query-block-jobs", json!({}), ROLLBACK_QMP_TIMEOUT)
                .await
                .map_err(qmp_err("QEMU refused query-block-jobs"))?;
            let jobs = qm::parse_block_jobs(&jobs).unwrap_or_default();
            let left = jobs
                .iter()
                .filter(|j| self.mirrors.iter().any(|d| j.device == format!("mig-{d}")))
                .count();
            if left == 0 {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    "the disk mirrors did not finish at the switchover",
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// QEMU completed: the target must confirm the guest runs there. Until it does, the
    /// guest can still resume here.
    async fn commit(&self) -> Result<(), Error> {
        let path = format!("/v1/pool/migrations/{}/commit", self.plan.migration_id);
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            match self
                .plan
                .pool
                .call::<IncomingState>(
                    &self.plan.target_id,
                    &path,
                    &json!({}),
                    Duration::from_secs(12),
                )
                .await
            {
                Ok(IncomingState::Committed) => return Ok(()),
                Ok(other) => {
                    return Err(Error::new(
                        ErrorKind::Internal,
                        format!("the target did not take the guest over ({other:?})"),
                    ))
                }
                Err(e) if e.kind == ErrorKind::Unavailable && Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
                Err(e) => {
                    return Err(Error::new(
                        e.kind,
                        format!("the target did not take the guest over: {}", e.message),
                    ))
                }
            }
        }
    }

    /// `ss -K` of this host's TCP connections to the target's migration and NBD ports.
    async fn kill_streams(&self) {
        let Some(host) = self.answer.host.as_deref() else {
            return;
        };
        // The disks' streams end with the proxy (`rollback`).
        if let Some(port) = self.answer.migration_port {
            let filter = ["dst", host, "dport", "=", &format!(":{port}")];
            let out = tokio::process::Command::new("ss")
                .arg("-K")
                .args(filter)
                .output()
                .await;
            if let Err(e) = out {
                tracing::warn!(error = %e, "cannot run ss -K to end the migration streams");
            }
        }
    }

    /// Undo everything on this side: cancel QEMU's migration and the mirrors, and let the
    /// guest run again if the migration stopped it.
    async fn rollback(&mut self, was_paused: bool) {
        // A stream to a target that vanished (a cut network) can leave QEMU blocked in a
        // write, its monitor unanswered, until TCP gives up many minutes later. Destroying
        // this host's sockets to the target's ports ends those writes at once; QEMU then
        // sees its migration and mirrors fail and answers again.
        self.kill_streams().await;
        // Closing QEMU's NBD connections fails any read it waits in (a negotiation with a
        // target that stopped answering holds QEMU's main loop).
        self.nbd_proxy = None;
        let _ = self
            .qmp
            .execute_timeout("migrate_cancel", json!({}), ROLLBACK_QMP_TIMEOUT)
            .await;
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            let status = self
                .qmp
                .execute_timeout("query-migrate", json!({}), ROLLBACK_QMP_TIMEOUT)
                .await
                .ok()
                .and_then(|v| MigrationInfo::parse(&v).ok())
                .map(|i| i.status)
                .unwrap_or_default();
            if !matches!(
                status,
                MigrationStatus::Active
                    | MigrationStatus::Setup
                    | MigrationStatus::Cancelling
                    | MigrationStatus::Device
                    | MigrationStatus::PreSwitchover
            ) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for d in &self.mirrors {
            let _ = self
                .qmp
                .execute_timeout(
                    "block-job-cancel",
                    json!({ "device": format!("mig-{d}"), "force": true }),
                    ROLLBACK_QMP_TIMEOUT,
                )
                .await;
        }
        let _ = self.wait_mirrors_gone(Duration::from_secs(10)).await;
        for d in std::mem::take(&mut self.mirrors) {
            let _ = self
                .qmp
                .execute_timeout(
                    "blockdev-del",
                    json!({ "node-name": format!("mig-{d}") }),
                    ROLLBACK_QMP_TIMEOUT,
                )
                .await;
        }
        let _ = self
            .qmp
            .execute_timeout("object-del", json!({ "id": TLS_ID }), ROLLBACK_QMP_TIMEOUT)
            .await;
        let status = self
            .qmp
            .execute_timeout("query-status", json!({}), ROLLBACK_QMP_TIMEOUT)
            .await
            .ok()
            .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(str::to_string));
        if !was_paused
            && matches!(
                status.as_deref(),
                Some("paused") | Some("postmigrate") | Some("finish-migrate")
            )
        {
            if let Err(e) = self
                .qmp
                .execute_timeout("cont", json!({}), ROLLBACK_QMP_TIMEOUT)
                .await
            {
                tracing::error!(error = %e, "cannot resume the guest after a failed migration");
            }
        }
    }
}
