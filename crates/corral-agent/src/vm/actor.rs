//! The VM actor: one tokio task per VM that owns its record and, while it runs, its QMP
//! connection. Commands arrive in order on a channel; QMP events (pause, resume, QEMU exit)
//! arrive on another; the actor applies both to one state machine and publishes a snapshot.
//!
//! Every command and QEMU event is first put to the pure state table ([`super::state`]): a
//! refusal is answered before anything is touched, naming the state that caused it. The
//! actor holds a narrow context — the host's records, events, tasks and registry
//! ([`Host`]) — and a [`Runtime`] that launches, re-attaches and cleans up guests; it never
//! sees the agent facade. `shutdown` presses the ACPI button and completes when the guest's
//! QEMU exits (other commands, such as `poweroff`, stay possible meanwhile); it fails if the
//! guest ignores the button past its timeout.

use super::jobs::{Ending, Job, JobKind, Jobs};
use super::runtime::{ReattachError, Running, Runtime};
use super::state::{self, Edit, Event as VmEvent, VmState};
use super::{Command, Notice, Op, VmHandle};
use crate::context::{encode, error_chain, Host};
use crate::error::Error;
use crate::keys;
use crate::spec;
use crate::tasks::TaskHandle;
use corral_model::api::*;
use corral_model::event::Event;
use corral_model::task::Operation;
use corral_model::validate::*;
use corral_model::*;
use corral_store::{Expect, TxnOp};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(120);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a power action (`stop`, `cont`, `system_reset`, ...) waits for QEMU's monitor.
/// A healthy QEMU answers these at once; one that does not within this time is hung, and
/// the VM's actor (which every other operation on the VM waits for) must not wait longer.
const ACTION_QMP_TIMEOUT: Duration = Duration::from_secs(10);
const SHUTDOWN_REPRESS: Duration = Duration::from_secs(5);

struct Actor<R: Runtime> {
    host: Arc<Host>,
    runtime: Arc<R>,
    rec: VmRecord,
    rev: u64,
    run: Option<Running>,
    info: Arc<RwLock<super::Snapshot>>,
    /// Long work running off the loop (see [`super::jobs`]).
    jobs: Jobs,
    deleted: bool,
}

/// Load a VM: re-attach to its QEMU if one is running, then start its actor.
pub(crate) async fn spawn<R: Runtime>(
    host: Arc<Host>,
    runtime: Arc<R>,
    rec: VmRecord,
    rev: u64,
) -> VmHandle {
    let info = Arc::new(RwLock::new(super::Snapshot::new(VmInfo::from_record(
        &rec,
        &host.host_name,
    ))));
    let mut actor = Actor {
        host,
        runtime,
        rec,
        rev,
        run: None,
        info: info.clone(),
        jobs: Jobs::default(),
        deleted: false,
    };
    actor.recover().await;
    let (tx, rx) = mpsc::channel(64);
    let handle = VmHandle {
        id: actor.rec.id.clone(),
        tx,
        snapshot: info,
    };
    tokio::spawn(actor.run_loop(rx));
    handle
}

/// A refusal of the state table as the API reports it, with the power state in the details.
fn refusal_error(name: &str, refusal: state::Refusal, power: PowerState) -> Error {
    Error::new(refusal.kind(), refusal.message(name))
        .with_details(serde_json::json!({ "power_state": power }))
}

/// A failed QMP command, keeping the QMP error's kind (a QEMU that does not answer in time
/// is `timeout`, a closed connection `invalid_state`).
fn qmp_error(what: &str, e: corral_qemu::qmp::QmpError) -> Error {
    Error::caused(e.kind(), what, e)
}

impl<R: Runtime> Actor<R> {
    fn name(&self) -> &str {
        &self.rec.spec.name
    }

    /// The state the table decides on.
    fn state(&mut self) -> VmState {
        VmState {
            power: self.rec.power_state,
            leased: self.jobs.lease(),
            template: self.rec.spec.is_template,
            shutting_down: self.jobs.shutting_down(),
            migrating: self.jobs.migrating(),
        }
    }

    /// Ask the state table whether `event` may happen now.
    fn check(&mut self, event: VmEvent) -> Result<VmState, Error> {
        let s = self.state();
        state::transition(s, event).map_err(|r| refusal_error(self.name(), r, s.power))
    }

    /// At load: find the QEMU of a VM recorded as running; a VM whose QEMU died while the
    /// agent was down becomes halted, with the reason in its history.
    async fn recover(&mut self) {
        let vm = (self.rec.id.clone(), self.rec.spec.name.clone());
        match self.runtime.reattach(&self.rec).await {
            Ok((run, state)) => {
                let note = format!(
                    "re-attached to QEMU process {} after an agent restart ({state})",
                    run.pid
                );
                self.run = Some(run);
                self.set_power(state, "re-attached").await;
                self.host
                    .tasks
                    .record(Operation::VmReattach, Some((&vm.0, &vm.1)), Ok(note));
            }
            Err(why @ ReattachError::HalfStarted { .. }) => {
                // Halted in the record already; say in its history what was cleaned up.
                self.host.tasks.record(
                    Operation::VmRecover,
                    Some((&vm.0, &vm.1)),
                    Ok(format!(
                        "a start interrupted by an agent restart ({}); the VM stays halted",
                        error_chain(&why)
                    )),
                );
                self.runtime.clear_leftovers(&self.rec).await;
            }
            Err(why) => {
                if self.rec.power_state != PowerState::Halted {
                    self.set_power(PowerState::Halted, "QEMU exited while the agent was down")
                        .await;
                    self.host.tasks.record(
                        Operation::VmRecover,
                        Some((&vm.0, &vm.1)),
                        Ok(format!(
                            "the guest stopped while the agent was down ({}); marked halted",
                            error_chain(&why)
                        )),
                    );
                    self.runtime.clear_leftovers(&self.rec).await;
                }
            }
        }
        self.publish();
    }

    async fn run_loop(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            let deadline = self.jobs.next_deadline();
            let cancels = self.jobs.cancellable();
            tokio::select! {
                id = first_cancelled(cancels) => self.cancel_shutdown(&id),
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                ev = next_event(&mut self.run) => self.on_qmp_event(ev).await,
                _ = sleep_until(deadline) => self.expire_jobs(),
            }
            if self.deleted {
                break;
            }
        }
    }

    /// Counters for the stats sampler; QMP is asked here because this actor owns the session.
    async fn counters(&self) -> Option<super::RuntimeCounters> {
        let run = self.run.as_ref()?;
        Some(super::RuntimeCounters {
            pid: run.pid,
            taps: run.taps.clone(),
            block: crate::stats::query_block_counters(&run.qmp).await,
        })
    }

    fn publish(&self) {
        let mut info = VmInfo::from_record(&self.rec, &self.host.host_name);
        if let Some(run) = &self.run {
            info.pid = Some(run.pid);
            info.cpu_weight_status = Some(run.cpu_weight.clone());
            info.vnc = run.vnc.clone();
        }
        self.host
            .fence_sync(&self.rec, self.run.as_ref().map(|r| r.pid));
        *self.info.write().unwrap_or_else(|p| p.into_inner()) = super::Snapshot::new(info);
    }

    /// Write the record, compare-and-swap on the revision this actor last wrote.
    async fn persist(&mut self) -> Result<(), Error> {
        self.rev = self
            .host
            .records
            .put_json(
                &keys::vm(&self.rec.id),
                &self.rec,
                Expect::Revision(self.rev),
            )
            .await?;
        self.publish();
        Ok(())
    }

    /// Write the record and move its name in the index, in one transaction.
    async fn persist_renamed(&mut self, old_name: &str) -> Result<(), Error> {
        let key = keys::vm(&self.rec.id);
        let new_name = self.rec.spec.name.clone();
        self.rev = self
            .host
            .records
            .txn(vec![
                TxnOp::put(
                    key.clone(),
                    encode(&key, &self.rec)?,
                    Expect::Revision(self.rev),
                ),
                TxnOp::delete(keys::vm_name(old_name), Expect::Any),
                TxnOp::put(
                    keys::vm_name(&new_name),
                    self.rec.id.as_bytes(),
                    Expect::Absent,
                ),
            ])
            .await
            .map_err(|e| Host::exists_as(e, "VM", &new_name))?;
        self.publish();
        Ok(())
    }

    async fn set_power(&mut self, to: PowerState, reason: &str) {
        let from = self.rec.power_state;
        if from == to {
            return;
        }
        self.rec.power_state = to;
        if let Err(e) = self.persist().await {
            tracing::error!(vm = %self.name(), error = %e, "cannot record power state");
        }
        tracing::info!(vm = %self.name(), from = %from, to = %to, reason, "power state");
        self.host.events.publish(Event::PowerStateChanged {
            vm: self.rec.spec.name.clone(),
            id: self.rec.id.clone(),
            from,
            to,
            reason: reason.to_string(),
        });
    }

    async fn handle(&mut self, cmd: Command) {
        let Command { op, task, reply } = cmd;
        let op = match op {
            Op::Counters(answer) => {
                // The sampler gives up after a few seconds, but its request stays queued
                // here: behind a hung QEMU (each query waits its timeout) stale requests
                // would pile up and delay whatever comes after them, a force-off included.
                if !answer.is_closed() && !reply.is_closed() {
                    let _ = answer.send(self.counters().await);
                }
                let _ = reply.send(Ok(()));
                return;
            }
            op => op,
        };
        if let Op::Action(VmAction::Shutdown, opts) = &op {
            // Completes later, when QEMU exits.
            match self.begin_shutdown(opts) {
                Ok((deadline, presser)) => self.jobs.add(Job {
                    kind: JobKind::Shutdown { presser, reply },
                    task: Some(task),
                    deadline: Some(deadline),
                }),
                Err(e) => {
                    task.fail(&e);
                    let _ = reply.send(Err(e));
                }
            }
            return;
        }
        // Leases and freezes are steps of a larger task that the caller finishes; a
        // migration's task ends with the migration.
        let step = matches!(op, Op::Lease(_) | Op::Freeze(_) | Op::Migrate { .. });
        let result = self.apply(op, &task).await;
        match (&result, step) {
            (Ok(()), true) => {}
            _ => task.complete(&result),
        }
        let _ = reply.send(result);
    }

    async fn apply(&mut self, op: Op, task: &TaskHandle) -> Result<(), Error> {
        match op {
            Op::Action(action, _) => self.action(action, task).await,
            Op::Lease(lease) => {
                self.check(VmEvent::Lease(lease.kind))?;
                self.jobs.add(Job {
                    kind: JobKind::Lease(Arc::downgrade(&lease)),
                    task: None,
                    deadline: None,
                });
                Ok(())
            }
            Op::Freeze(answer) => {
                self.check(VmEvent::Freeze)?;
                let mut spec = self.rec.spec.clone();
                let (frozen, undo) =
                    crate::ops::clone::freeze_disks(&mut spec, &self.rec.id, true)?;
                let old = std::mem::replace(&mut self.rec.spec, spec);
                if let Err(e) = self.persist().await {
                    self.rec.spec = old;
                    crate::ops::clone::unfreeze(undo);
                    return Err(e);
                }
                let _ = answer.send(frozen);
                self.changed();
                Ok(())
            }
            Op::ConvertToTemplate => {
                self.check(VmEvent::ConvertToTemplate)?;
                let mut spec = self.rec.spec.clone();
                let (_, undo) = crate::ops::clone::freeze_disks(&mut spec, &self.rec.id, false)?;
                spec.is_template = true;
                let old = std::mem::replace(&mut self.rec.spec, spec);
                if let Err(e) = self.persist().await {
                    self.rec.spec = old;
                    crate::ops::clone::unfreeze(undo);
                    return Err(e);
                }
                self.changed();
                Ok(())
            }
            Op::Update(req) => self.update(req).await,
            Op::DiskAdd(req) => {
                self.check(VmEvent::Edit(Edit::Disks { add: true }))?;
                spec::check_limits(self.host.as_ref(), &self.rec.spec, 0, 1)?;
                let device = next_device(
                    "disk",
                    self.rec.spec.disks.iter().map(|d| d.device.as_str()),
                );
                let default_bus = self
                    .rec
                    .spec
                    .disks
                    .first()
                    .map(|d| d.bus)
                    .unwrap_or_default();
                let mut disk = spec::disk_from_request(
                    self.host.as_ref(),
                    &self.rec.id,
                    &device,
                    &req,
                    default_bus,
                )?;
                task.phase("creating volume", 0.3);
                // Before the volume exists: a crash until the record names it removes the
                // volume at the next start (`crate::intents`).
                crate::intents::begin_disk_add(
                    &self.host,
                    &self.rec.id,
                    &self.rec.spec.name,
                    disk.path.clone(),
                )
                .await?;
                if let Err(e) =
                    crate::ops::create::create_disk_volume(&mut disk, req.import_from.clone()).await
                {
                    // A half-written volume (a full file system, a bad image) goes too.
                    let _ = corral_storage::remove_volume(&disk.path).await;
                    crate::intents::finish(&self.host, &self.rec.id).await;
                    return Err(e);
                }
                self.rec.spec.disks.push(disk.clone());
                if let Err(e) = self.persist().await {
                    self.rec.spec.disks.pop();
                    let _ = corral_storage::remove_volume(&disk.path).await;
                    crate::intents::finish(&self.host, &self.rec.id).await;
                    return Err(e);
                }
                crate::intents::finish(&self.host, &self.rec.id).await;
                self.changed();
                Ok(())
            }
            Op::DiskRemove(device) => {
                self.check(VmEvent::Edit(Edit::Disks { add: false }))?;
                let idx = self
                    .rec
                    .spec
                    .disks
                    .iter()
                    .position(|d| d.device == device)
                    .ok_or_else(|| {
                        Error::not_found(format!("VM {:?} has no disk {device:?}", self.name()))
                    })?;
                let disk = self.rec.spec.disks.remove(idx);
                self.persist().await?;
                if !crate::ops::clone::is_base(&disk.path) {
                    corral_storage::remove_volume(&disk.path)
                        .await
                        .map_err(|e| Error::from_error(ErrorKind::Internal, e))?;
                }
                tokio::spawn(crate::ops::clone::gc_bases(self.host.clone()));
                self.changed();
                Ok(())
            }
            Op::CdromInsert(iso) => {
                self.check(VmEvent::Configure)?;
                let path = spec::iso_path(self.host.as_ref(), &iso)?;
                let device = self.cdrom_device()?;
                let run_dir = self.host.layout.run_dir(&self.rec.id);
                let old_media = self.rec.spec.cdroms[0].media.clone();
                if let Some(run) = &self.run {
                    // A confined QEMU opens the ISO itself, as its own user.
                    if let Some(uid) = crate::confine::granted_uid(&run_dir) {
                        crate::confine::grant(&run_dir, uid, &[(path.clone(), crate::confine::R)])?;
                    }
                    run.qmp
                        .execute(
                            "blockdev-change-medium",
                            serde_json::json!({ "id": device, "filename": path, "format": "raw", "read-only-mode": "read-only" }),
                        )
                        .await
                        .map_err(|e| qmp_error(&format!("cannot insert {}", path.display()), e))?;
                }
                if let Some(old) = old_media.filter(|o| *o != path) {
                    crate::confine::revoke_path(&run_dir, &old);
                }
                self.rec.spec.cdroms[0].media = Some(path);
                self.persist().await?;
                self.changed();
                Ok(())
            }
            Op::CdromEject => {
                self.check(VmEvent::Configure)?;
                let device = self.cdrom_device()?;
                if let Some(run) = &self.run {
                    run.qmp
                        .execute("eject", serde_json::json!({ "id": device, "force": true }))
                        .await
                        .map_err(|e| qmp_error("cannot eject", e))?;
                    if let Some(old) = &self.rec.spec.cdroms[0].media {
                        crate::confine::revoke_path(&self.host.layout.run_dir(&self.rec.id), old);
                    }
                }
                self.rec.spec.cdroms[0].media = None;
                if self.rec.spec.boot_device == BootDevice::Cdrom {
                    self.rec.spec.boot_device = BootDevice::Disk;
                }
                self.persist().await?;
                self.changed();
                Ok(())
            }
            Op::NicAdd(req) => {
                self.check(VmEvent::Edit(Edit::Nics { add: true }))?;
                spec::check_limits(self.host.as_ref(), &self.rec.spec, 1, 0)?;
                let device =
                    next_device("nic", self.rec.spec.nics.iter().map(|n| n.device.as_str()));
                let default_model = self
                    .rec
                    .spec
                    .nics
                    .first()
                    .map(|n| n.model)
                    .unwrap_or_default();
                let nic = spec::nic_from_request(self.host.as_ref(), &device, &req, default_model)?;
                self.rec.spec.nics.push(nic);
                self.persist().await?;
                self.changed();
                Ok(())
            }
            Op::NicRemove(device) => {
                self.check(VmEvent::Edit(Edit::Nics { add: false }))?;
                let idx = self
                    .rec
                    .spec
                    .nics
                    .iter()
                    .position(|n| n.device == device)
                    .ok_or_else(|| {
                        Error::not_found(format!("VM {:?} has no NIC {device:?}", self.name()))
                    })?;
                self.rec.spec.nics.remove(idx);
                self.persist().await?;
                self.changed();
                Ok(())
            }
            Op::FinishInstall { eject_cdrom } => {
                self.check(VmEvent::Edit(Edit::FinishInstall))?;
                let spec = &mut self.rec.spec;
                spec.install = None;
                spec.kernel_boot = None;
                spec.boot_device = BootDevice::Disk;
                if eject_cdrom {
                    // The drive stays, empty, as after ejecting vendor media by hand.
                    for c in &mut spec.cdroms {
                        c.media = None;
                    }
                }
                self.persist().await?;
                self.changed();
                Ok(())
            }
            Op::Release => {
                if self.jobs.migrating() {
                    // The migration moves the record itself when it ends.
                    return Ok(());
                }
                self.release().await;
                Ok(())
            }
            Op::Migrate { plan, handle } => self.begin_migration(*plan, handle, task),
            Op::MigrateEnd(outcome) => {
                self.end_migration(*outcome).await;
                Ok(())
            }
            Op::StopMigration(answer) => {
                let _ = answer.send(self.stop_stray_migration().await);
                Ok(())
            }
            Op::Delete(req) => {
                self.check(VmEvent::Delete { force: req.force })?;
                if self.rec.power_state != PowerState::Halted {
                    self.poweroff().await?;
                }
                self.delete(req.keep_disks).await
            }
            // Answered in `handle` before any task is involved.
            Op::Counters(answer) => {
                let _ = answer.send(self.counters().await);
                Ok(())
            }
        }
    }

    fn changed(&self) {
        self.host.events.publish(Event::VmChanged {
            vm: self.rec.spec.name.clone(),
            id: self.rec.id.clone(),
        });
    }

    fn cdrom_device(&self) -> Result<String, Error> {
        self.rec
            .spec
            .cdroms
            .first()
            .map(|c| c.device.clone())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Unsupported,
                    format!("VM {:?} has no CD drive", self.name()),
                )
            })
    }

    async fn action(&mut self, action: VmAction, task: &TaskHandle) -> Result<(), Error> {
        match action {
            VmAction::Start => {
                self.check(VmEvent::Start)?;
                task.phase("starting QEMU", 0.2);
                let run = self.runtime.launch(&self.rec, false).await?;
                self.run = Some(run);
                self.set_power(PowerState::Running, "started").await;
                if self.rec.spec.install.is_some() {
                    self.installer_started().await;
                }
                Ok(())
            }
            VmAction::Poweroff => {
                self.check(VmEvent::Poweroff)?;
                self.poweroff().await
            }
            VmAction::Reboot => {
                self.check(VmEvent::Reboot)?;
                self.qmp("system_reset").await
            }
            VmAction::Pause => {
                self.check(VmEvent::Pause)?;
                self.qmp("stop").await?;
                self.set_power(PowerState::Paused, "paused").await;
                Ok(())
            }
            VmAction::Resume => {
                self.check(VmEvent::Resume)?;
                self.qmp("cont").await?;
                self.set_power(PowerState::Running, "resumed").await;
                Ok(())
            }
            // Handled in `handle`: it completes later, when QEMU exits.
            VmAction::Shutdown => Err(Error::internal(
                "shutdown reached the synchronous action path",
            )),
        }
    }

    /// The installer (re)started: it gets a fresh deadline, and when no `vm.install` task is
    /// watching (the start is a retry after a failed or cancelled install), a new one waits
    /// for the installer and switches the VM to disk boot, as the first task would have.
    /// Any running `vm.install` task of this VM counts, not only the one the install state
    /// names: after an agent restart the resumed install watches under a new task, and an
    /// autostart of the same VM must not add a second watcher.
    async fn installer_started(&mut self) {
        let watched = self
            .host
            .tasks
            .is_running(Operation::VmInstall, &self.rec.id);
        let watcher = (!watched).then(|| {
            self.host.tasks.start(
                Operation::VmInstall,
                Some((&self.rec.id, &self.rec.spec.name)),
            )
        });
        if let Some(install) = &mut self.rec.spec.install {
            let secs = install
                .timeout_secs
                .unwrap_or(crate::ops::install::DEFAULT_INSTALL_TIMEOUT.as_secs());
            install.deadline_ms = Some(crate::clock::now_ms().saturating_add(secs * 1000));
            if let Some(t) = &watcher {
                install.task_id = t.id.clone();
            }
        }
        if let Err(e) = self.persist().await {
            tracing::warn!(vm = %self.name(), "cannot record the installer's deadline: {}", e.message);
        }
        self.publish();
        if let Some(task) = watcher {
            self.host.notify(Notice::InstallerStarted {
                vm_id: self.rec.id.clone(),
                task,
            });
        }
    }

    async fn qmp(&self, command: &str) -> Result<(), Error> {
        let run = self
            .run
            .as_ref()
            .ok_or_else(|| Error::internal("no QEMU process"))?;
        run.qmp
            .execute_timeout(command, serde_json::json!({}), ACTION_QMP_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|e| qmp_error(&format!("QMP {command} failed"), e))
    }

    fn begin_shutdown(
        &mut self,
        opts: &ActionRequest,
    ) -> Result<(Instant, tokio::task::JoinHandle<()>), Error> {
        self.check(VmEvent::Shutdown)?;
        let run = self
            .run
            .as_ref()
            .ok_or_else(|| Error::internal("no QEMU process"))?;
        let qmp = run.qmp.clone();
        let timeout = opts
            .timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
        // Press the button again every few seconds: a guest still booting (before its ACPI
        // daemon runs) drops the first press. Exit arrives through the QMP event stream.
        let presser = tokio::spawn(async move {
            let give_up = Instant::now() + timeout;
            while !qmp.is_closed() && Instant::now() < give_up {
                if let Err(e) = qmp.system_powerdown().await {
                    if !qmp.is_closed() {
                        tracing::warn!(error = %error_chain(&e), "system_powerdown failed");
                    }
                }
                tokio::select! {
                    _ = qmp.wait_closed() => break,
                    _ = tokio::time::sleep(SHUTDOWN_REPRESS) => {}
                }
            }
        });
        Ok((Instant::now() + timeout, presser))
    }

    /// `task cancel` of a pending shutdown: stop pressing and waiting; the guest keeps running.
    fn cancel_shutdown(&mut self, task_id: &str) {
        let note = format!(
            "shutdown cancelled; VM {:?} is still {}",
            self.rec.spec.name, self.rec.power_state
        );
        self.jobs
            .finish_shutdowns(Some(task_id), || Ending::Cancelled(note.clone()));
    }

    fn expire_jobs(&mut self) {
        let name = self.rec.spec.name.clone();
        self.jobs.expire(Instant::now(), |_| {
            Error::new(
                ErrorKind::Busy,
                format!(
                    "VM {name:?} did not power off after the ACPI power button; it is still running (use poweroff to force)"
                ),
            )
        });
    }

    /// Pull the plug: ask QEMU to quit, kill it if it does not, and wait for it to be gone.
    async fn poweroff(&mut self) -> Result<(), Error> {
        if let Some(run) = self.run.as_mut() {
            let qmp = run.qmp.clone();
            let answered = matches!(
                tokio::time::timeout(
                    Duration::from_secs(2),
                    qmp.execute("quit", serde_json::json!({})),
                )
                .await,
                Ok(Ok(_))
            );
            // A QEMU whose monitor does not acknowledge `quit` is hung (stopped, stuck in
            // I/O; an earlier command timed out) or already gone: waiting for it to exit on
            // its own only delays the force-off.
            let exited = answered
                && tokio::time::timeout(POWEROFF_TIMEOUT, wait_closed(&mut run.events))
                    .await
                    .is_ok();
            if !exited {
                tracing::warn!(vm = %self.rec.spec.name, pid = run.pid, answered, "QEMU did not exit when told to quit; killing it");
                self.runtime.kill(run);
            }
        }
        self.on_exit("powered off").await;
        Ok(())
    }

    async fn on_qmp_event(&mut self, ev: Option<corral_qemu::qmp::QmpEvent>) {
        let Some(ev) = ev else {
            self.on_exit("the guest powered off").await;
            return;
        };
        if self.jobs.migrating() {
            // The migration stops and resumes the vCPUs as it goes; the VM's power state is
            // what it was until the migration ends.
            return;
        }
        let (event, reason) = match ev.event.as_str() {
            "STOP" => (VmEvent::QemuStopped, "paused"),
            "RESUME" => (VmEvent::QemuResumed, "resumed"),
            _ => return,
        };
        // QEMU's news is never refused; it may not change the state.
        if let Ok(next) = self.check(event) {
            self.set_power(next.power, reason).await;
        }
    }

    /// QEMU is gone: clean up and record the VM halted; pending shutdowns succeed.
    async fn on_exit(&mut self, reason: &str) {
        if let Some(run) = self.run.take() {
            self.runtime.cleanup(&self.rec.id, &run).await;
        }
        self.set_power(PowerState::Halted, reason).await;
        self.publish();
        self.jobs.finish_shutdowns(None, || Ending::Done);
    }

    async fn update(&mut self, req: VmUpdateRequest) -> Result<(), Error> {
        let mut spec = self.rec.spec.clone();
        let ha_asked = (req.ha, req.ha_priority, req.keep_apart.clone());
        let mut notes = Vec::new();
        if let Some(d) = req.description {
            spec.description = d;
        }
        if let Some(v) = req.vcpus {
            spec.vcpus = v;
        }
        if let Some(m) = req.memory_bytes {
            spec.memory_bytes = m;
        }
        if (req.vcpus.is_some() || req.memory_bytes.is_some()) && self.run.is_some() {
            notes.push("vCPU and memory changes take effect at the next start");
        }
        if req.vcpus.is_some() || req.memory_bytes.is_some() {
            spec::check_limits(self.host.as_ref(), &spec, 0, 0)?;
        }
        if let Some(a) = req.autostart {
            spec.autostart = a;
        }
        if let Some(w) = req.cpu_weight {
            validate_cpu_weight(w).map_err(Error::invalid)?;
            spec.cpu_weight = w;
        }
        if let Some(b) = req.boot_device {
            spec.boot_device = b;
        }
        let tpm_removed = req.tpm == Some(false) && spec.tpm;
        if let Some(t) = req.tpm.filter(|t| *t != spec.tpm) {
            self.check(VmEvent::Edit(Edit::Tpm { attach: t }))?;
            spec.tpm = t;
        }
        if let Some(model) = req.device_model {
            self.check(VmEvent::Edit(Edit::DeviceModel))?;
            set_device_model(&mut spec, model);
        }
        let abandoned = req.abandon_install;
        if abandoned {
            self.check(VmEvent::Edit(Edit::AbandonInstall))?;
            if spec.install.is_none() {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    format!("VM {:?} has no unfinished install", spec.name),
                ));
            }
            abandon_install(&mut spec);
        }
        match req.kernel {
            Some(k) if k.as_os_str().is_empty() => spec.kernel_boot = None,
            Some(k) => {
                if !k.is_absolute() || !k.is_file() {
                    return Err(Error::invalid(format!(
                        "kernel {} is not an existing absolute path",
                        k.display()
                    )));
                }
                let prev = spec.kernel_boot.take().unwrap_or_default();
                spec.kernel_boot = Some(KernelBoot { kernel: k, ..prev });
            }
            None => {}
        }
        if let Some(i) = req.initrd {
            let kb = spec
                .kernel_boot
                .as_mut()
                .ok_or_else(|| Error::invalid("--initrd needs a kernel"))?;
            kb.initrd = if i.as_os_str().is_empty() {
                None
            } else {
                Some(i)
            };
        }
        if let Some(c) = req.cmdline {
            let kb = spec
                .kernel_boot
                .as_mut()
                .ok_or_else(|| Error::invalid("--cmdline needs a kernel"))?;
            kb.cmdline = c;
        }
        let rename = match req.name {
            Some(n) if n != spec.name => {
                validate_name("VM", &n).map_err(Error::invalid)?;
                self.host.registry_mut().reserve(&n)?;
                Some(n)
            }
            _ => None,
        };
        let ha = match ha_policy(self.host.as_ref(), &spec, self.rec.ha.clone(), ha_asked) {
            Ok(ha) => ha,
            Err(e) => {
                if let Some(n) = &rename {
                    self.host.registry_mut().release(n);
                }
                return Err(e);
            }
        };
        let old_name = spec.name.clone();
        if let Some(n) = &rename {
            spec.name = n.clone();
        }
        let old = std::mem::replace(&mut self.rec.spec, spec);
        let old_ha = std::mem::replace(&mut self.rec.ha, ha);
        let written = match &rename {
            Some(_) => self.persist_renamed(&old_name).await,
            None => self.persist().await,
        };
        if let Err(e) = written {
            self.rec.spec = old;
            self.rec.ha = old_ha;
            if let Some(n) = &rename {
                self.host.registry_mut().release(n);
            }
            return Err(e);
        }
        crate::vmfiles::remove_replaced(&self.rec.id, &old, &self.rec.spec);
        if let Some(n) = &rename {
            let mut reg = self.host.registry_mut();
            reg.release(n);
            reg.rename(&old_name, n);
        }
        if let (Some(w), Some(run)) = (req.cpu_weight, self.run.as_mut()) {
            run.cpu_weight = self.runtime.set_cpu_weight(&self.rec.id, w);
            self.publish();
        }
        for n in notes {
            tracing::info!(vm = %self.name(), "{n}");
        }
        if abandoned {
            let _ = std::fs::remove_dir_all(self.host.layout.install_dir(&self.rec.id));
        }
        if tpm_removed {
            // A removed TPM's keys are gone for good; a TPM attached later starts empty.
            let _ =
                std::fs::remove_dir_all(crate::vmfiles::tpm_dir(&self.host.layout, &self.rec.id));
        }
        self.changed();
        Ok(())
    }

    /// Start the migration job: the driver gets a clone of the QMP session and hands its
    /// outcome back through `handle` as [`Op::MigrateEnd`].
    fn begin_migration(
        &mut self,
        plan: crate::migrate::Plan,
        handle: VmHandle,
        task: &TaskHandle,
    ) -> Result<(), Error> {
        self.check(VmEvent::Migrate)?;
        let run = self
            .run
            .as_ref()
            .ok_or_else(|| Error::internal("no QEMU process"))?;
        let (qmp, run_dir) = (run.qmp.clone(), self.host.layout.run_dir(&self.rec.id));
        let was_paused = self.rec.power_state == PowerState::Paused;
        self.jobs.add(Job {
            kind: JobKind::Migrate,
            task: Some(task.clone()),
            deadline: None,
        });
        let (task, untracked) = (task.clone(), self.host.tasks.untracked());
        tokio::spawn(async move {
            let outcome = crate::migrate::drive(plan, qmp, task, run_dir, was_paused).await;
            let _ = handle
                .call(Op::MigrateEnd(Box::new(outcome)), untracked)
                .await;
        });
        self.publish();
        Ok(())
    }

    /// The migration ended: on success move the record to the target in one
    /// compare-and-swap, then let this host's QEMU go; on failure the VM runs on here.
    async fn end_migration(&mut self, outcome: Result<crate::migrate::Completed, Error>) {
        let run_dir = self.host.layout.run_dir(&self.rec.id);
        // No job: a migration settled after an agent restart (`Migrations::recover_sources`).
        let task = self.jobs.end_migration().unwrap_or_else(|| {
            self.host.tasks.start(
                Operation::VmMigrate,
                Some((&self.rec.id, &self.rec.spec.name)),
            )
        });
        crate::migrate::SourceMarker::remove(&run_dir);
        let done = match outcome {
            Err(e) => {
                if task.is_cancelled() {
                    task.cancelled_with(&e.message);
                } else {
                    task.fail(&e);
                }
                self.publish();
                return;
            }
            Ok(done) => done,
        };
        let mut rec = self.rec.clone();
        rec.host = done.target_id.clone();
        let mut replaced = Vec::new();
        for (device, path) in &done.volumes {
            if let Some(d) = rec.spec.disks.iter_mut().find(|d| &d.device == device) {
                replaced.push(std::mem::replace(&mut d.path, path.clone()));
                if let Some(sr) = &done.target_sr {
                    d.sr = sr.clone();
                }
            }
        }
        let old = std::mem::replace(&mut self.rec, rec);
        let mut written = self.persist().await;
        for _ in 0..20 {
            if written.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            written = self.persist().await;
        }
        if let Err(e) = written {
            // The guest runs on the target, which holds it until the record names it; this
            // host's QEMU stays stopped so there is still one running copy.
            self.rec = old;
            task.fail(&Error::new(
                e.kind,
                format!(
                    "the guest runs on host {} but its record could not be moved there: {} (the agent retries at its next start)",
                    done.target_name, e.message
                ),
            ));
            return;
        }
        if let Some(run) = self.run.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                run.qmp.execute("quit", serde_json::json!({})),
            )
            .await;
            self.runtime.cleanup(&self.rec.id, &run).await;
        }
        for path in replaced {
            if !crate::ops::clone::is_base(&path) {
                let _ = corral_storage::remove_volume(&path).await;
            }
        }
        self.host.fence_sync(&self.rec, None);
        let _ = std::fs::remove_dir_all(self.host.layout.run_dir(&self.rec.id));
        for fw in [Firmware::Uefi, Firmware::UefiSecure] {
            let _ = std::fs::remove_file(super::runtime::nvram_file(
                &self.host.layout,
                &self.rec.id,
                fw,
            ));
        }
        self.host.registry_mut().remove(&self.rec.id);
        self.deleted = true;
        let f = &done.figures;
        let note = format!(
            "migrated to host {}: downtime {} ms, total {} ms{}",
            done.target_name,
            f.downtime_ms.unwrap_or(0),
            f.total_ms.unwrap_or(0),
            if f.escalations.is_empty() {
                String::new()
            } else {
                format!("; {}", f.escalations.join("; "))
            }
        );
        tracing::info!(vm = %self.name(), "{note}");
        self.changed();
        task.succeed(Some(note));
    }

    /// Cancel a migration QEMU kept running while the agent was down; QEMU's run state after.
    async fn stop_stray_migration(&mut self) -> Option<String> {
        let run = self.run.as_ref()?;
        let _ = run
            .qmp
            .execute("migrate_cancel", serde_json::json!({}))
            .await;
        for _ in 0..200 {
            let status = run
                .qmp
                .execute("query-migrate", serde_json::json!({}))
                .await
                .ok()
                .and_then(|v| corral_qemu::migration::MigrationInfo::parse(&v).ok())
                .map(|i| i.status)
                .unwrap_or_default();
            if status.is_final() || status == corral_qemu::migration::MigrationStatus::None {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        run.qmp
            .execute("query-status", serde_json::json!({}))
            .await
            .ok()
            .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(str::to_string))
    }

    /// Another member owns the VM now (see [`Op::Release`]).
    async fn release(&mut self) {
        if let Some(run) = self.run.take() {
            tracing::warn!(vm = %self.name(), pid = run.pid, "killing QEMU: another pool member owns this VM now");
            self.runtime.kill(&run);
        }
        self.runtime.clear_leftovers(&self.rec).await;
        self.host.fence_sync(&self.rec, None);
        let _ = std::fs::remove_dir_all(self.host.layout.run_dir(&self.rec.id));
        self.host.registry_mut().remove(&self.rec.id);
        self.deleted = true;
    }

    async fn delete(&mut self, keep_disks: bool) -> Result<(), Error> {
        // Bases (template disks, disks shared by linked clones) go when nothing uses them
        // any more: `gc_bases` below.
        let volumes: Vec<std::path::PathBuf> = if keep_disks {
            Vec::new()
        } else {
            self.rec
                .spec
                .disks
                .iter()
                .filter(|d| !crate::ops::clone::is_base(&d.path))
                .map(|d| d.path.clone())
                // Its own boot files too, so a crash before `remove_owned` below does not
                // leave them behind for good.
                .chain(crate::vmfiles::owned_boot_files(
                    &self.rec.spec,
                    &self.rec.id,
                ))
                .collect()
        };
        // Record, name and the intent to remove the volumes in one transaction, expecting
        // the record's revision (in a pool, a member that lost the VM cannot delete it); a
        // crash after it finishes the removal at the next start (`crate::intents`).
        self.host
            .records
            .txn(vec![
                TxnOp::delete(keys::vm(&self.rec.id), Expect::Revision(self.rev)),
                TxnOp::delete(keys::vm_name(&self.rec.spec.name), Expect::Any),
                crate::intents::delete_step(
                    &self.host,
                    &self.rec.id,
                    &self.rec.spec.name,
                    volumes.clone(),
                )?,
            ])
            .await?;
        for v in &volumes {
            if let Err(e) = corral_storage::remove_volume(v).await {
                tracing::warn!(vm = %self.name(), path = %v.display(), error = %e, "cannot remove a volume; the next start retries");
            }
        }
        let _ = std::fs::remove_dir_all(self.host.layout.run_dir(&self.rec.id));
        let _ = std::fs::remove_dir_all(self.host.layout.install_dir(&self.rec.id));
        let _ = std::fs::remove_file(self.host.layout.seed_iso(&self.rec.id));
        let _ = std::fs::remove_file(self.host.layout.nvram(&self.rec.id));
        crate::vmfiles::remove_owned(&self.host.layout, &self.rec.id, &self.rec.spec, keep_disks);
        // Last: until here a crash leaves the intent, and the next start removes the rest.
        crate::intents::finish(&self.host, &self.rec.id).await;
        self.host.registry_mut().remove(&self.rec.id);
        self.host.events.publish(Event::VmDeleted {
            vm: self.rec.spec.name.clone(),
            id: self.rec.id.clone(),
        });
        self.deleted = true;
        tokio::spawn(crate::ops::clone::gc_bases(self.host.clone()));
        Ok(())
    }
}

/// The HA policy `vm set --ha/--ha-priority` asks for. Restarting elsewhere needs every disk
/// on a shared repository (a survivor must see them).
fn ha_policy(
    host: &Host,
    spec: &VmSpec,
    current: corral_model::pool::HaPolicy,
    (restart, priority, apart): (Option<bool>, Option<i32>, Option<String>),
) -> Result<corral_model::pool::HaPolicy, Error> {
    let mut ha = current;
    match apart {
        Some(g) if g.is_empty() => ha.apart = None,
        Some(g) => {
            validate_name("keep-apart group", &g).map_err(Error::invalid)?;
            ha.apart = Some(g);
        }
        None => {}
    }
    if let Some(r) = restart {
        ha.restart = r;
    }
    if let Some(p) = priority {
        ha.priority = p;
    }
    if ha.restart && restart == Some(true) && spec.tpm {
        // The vTPM's state lives on this host (STATE/tpm/<id>): a restart elsewhere would
        // come up with an empty TPM and lose sealed secrets.
        return Err(Error::invalid(
            "--ha restart is refused for a VM with a TPM: its TPM state lives on this host and would be lost by a restart elsewhere",
        ));
    }
    if ha.restart && restart == Some(true) {
        let local: Vec<String> = spec
            .disks
            .iter()
            .filter(|d| host.sr(&d.sr).map(|sr| !sr.shared).unwrap_or(true))
            .map(|d| format!("{} (repository {})", d.device, d.sr))
            .collect();
        if !local.is_empty() {
            return Err(Error::invalid(format!(
                "--ha restart needs every disk on a shared repository (`corral sr create NAME --path DIR --shared`); not shared: {}",
                local.join(", ")
            )));
        }
    }
    Ok(ha)
}

/// Give up an install: the installer's boot settings go, the VM boots from its disk, and
/// install media leaves the drive (which stays).
fn abandon_install(spec: &mut VmSpec) {
    spec.install = None;
    spec.kernel_boot = None;
    if spec.boot_device == BootDevice::Cdrom {
        for c in &mut spec.cdroms {
            c.media = None;
        }
    }
    spec.boot_device = BootDevice::Disk;
}

/// Move disks and NICs between paravirtual and emulated devices. Volumes and MACs stay, so
/// the guest finds the same data and keeps its addresses; CD drives are never virtio and an
/// IDE-disk guest keeps IDE CD drives.
fn set_device_model(spec: &mut VmSpec, model: DeviceModel) {
    let (disk_bus, nic_model) = match model {
        DeviceModel::Pv => (DiskBus::Virtio, NicModel::Virtio),
        DeviceModel::Emulated => (DiskBus::Ide, NicModel::E1000),
    };
    for d in &mut spec.disks {
        d.bus = disk_bus;
    }
    for n in &mut spec.nics {
        n.model = nic_model;
    }
}

/// The next free device name: `disk0`, `disk1`, ... reusing gaps.
fn next_device<'a>(prefix: &str, used: impl Iterator<Item = &'a str>) -> String {
    let used: std::collections::HashSet<&str> = used.collect();
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|n| !used.contains(n.as_str()))
        .unwrap_or_default()
}

/// The next QMP event of a running VM; `None` once QEMU has exited (the connection closed).
async fn next_event(run: &mut Option<Running>) -> Option<corral_qemu::qmp::QmpEvent> {
    let Some(run) = run.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match run.events.recv().await {
            Ok(ev) => return Some(ev),
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

async fn wait_closed(events: &mut broadcast::Receiver<corral_qemu::qmp::QmpEvent>) {
    loop {
        if let Err(broadcast::error::RecvError::Closed) = events.recv().await {
            return;
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Resolves with the id of the first of `tasks` to be cancelled; never when there are none.
async fn first_cancelled(tasks: Vec<TaskHandle>) -> String {
    use std::future::Future;
    use std::task::Poll;
    if tasks.is_empty() {
        return std::future::pending().await;
    }
    let mut waits: Vec<std::pin::Pin<Box<dyn Future<Output = String> + Send>>> = tasks
        .into_iter()
        .map(|mut t| {
            Box::pin(async move {
                t.cancelled().await;
                t.id.clone()
            }) as std::pin::Pin<Box<dyn Future<Output = String> + Send>>
        })
        .collect();
    std::future::poll_fn(|cx| {
        for w in waits.iter_mut() {
            if let Poll::Ready(id) = w.as_mut().poll(cx) {
                return Poll::Ready(id);
            }
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_fill_gaps() {
        assert_eq!(next_device("disk", ["disk0", "disk2"].into_iter()), "disk1");
        assert_eq!(next_device("nic", std::iter::empty()), "nic0");
    }
}
