//! The VM actor: one tokio task per VM that owns its record and, while it runs, its QMP
//! connection. Commands arrive in order on a channel; QMP events (pause, resume, QEMU exit)
//! arrive on another; the actor applies both to one state machine and publishes a snapshot.
//!
//! State machine (power states): halted --start--> running <--pause/resume--> paused;
//! running|paused --poweroff / guest exit--> halted. `shutdown` presses the ACPI button and
//! completes when the guest's QEMU exits (other commands, such as `poweroff`, stay possible
//! meanwhile); it fails if the guest ignores the button past its timeout.

use super::runtime::{self, Running};
use super::{Command, Op, VmHandle};
use crate::agent::{error_chain, Agent};
use crate::tasks::TaskHandle;
use corral_model::api::*;
use corral_model::event::Event;
use corral_model::validate::*;
use corral_model::*;
use corral_store::Expect;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(120);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(10);
const SHUTDOWN_REPRESS: Duration = Duration::from_secs(5);

struct PendingShutdown {
    task: TaskHandle,
    reply: oneshot::Sender<Result<(), ApiError>>,
    deadline: Instant,
    /// Presses the ACPI button every few seconds; aborted when the shutdown is cancelled.
    presser: tokio::task::JoinHandle<()>,
}

struct Actor {
    agent: Arc<Agent>,
    rec: VmRecord,
    rev: u64,
    run: Option<Running>,
    info: Arc<RwLock<VmInfo>>,
    pending: Vec<PendingShutdown>,
    deleted: bool,
    leases: Vec<std::sync::Weak<super::Lease>>,
}

/// Load a VM: re-attach to its QEMU if one is running, then start its actor.
pub(crate) async fn spawn(agent: Arc<Agent>, rec: VmRecord, rev: u64) -> VmHandle {
    let info = Arc::new(RwLock::new(VmInfo::from_record(&rec)));
    let mut actor = Actor {
        agent,
        rec,
        rev,
        run: None,
        info: info.clone(),
        pending: Vec::new(),
        deleted: false,
        leases: Vec::new(),
    };
    actor.recover().await;
    let (tx, rx) = mpsc::channel(64);
    let handle = VmHandle {
        id: actor.rec.id.clone(),
        tx,
        info,
    };
    tokio::spawn(actor.run_loop(rx));
    handle
}

fn state_error(name: &str, state: PowerState, action: &str) -> ApiError {
    ApiError::new(
        ErrorKind::InvalidState,
        format!("cannot {action} VM {name:?}: it is {state}"),
    )
    .with_details(serde_json::json!({ "power_state": state }))
}

impl Actor {
    fn name(&self) -> &str {
        &self.rec.spec.name
    }

    /// At load: find the QEMU of a VM recorded as running; a VM whose QEMU died while the
    /// agent was down becomes halted, with the reason in its history.
    async fn recover(&mut self) {
        let vm = (self.rec.id.clone(), self.rec.spec.name.clone());
        match runtime::reattach(&self.agent, &self.rec).await {
            Ok((run, state)) => {
                let note = format!(
                    "re-attached to QEMU process {} after an agent restart ({state})",
                    run.pid
                );
                self.run = Some(run);
                self.set_power(state, "re-attached");
                self.agent
                    .tasks
                    .record("vm.reattach", Some((&vm.0, &vm.1)), Ok(note));
            }
            Err(why) if why.starts_with(runtime::HALF_STARTED) => {
                // Halted in the record already; say in its history what was cleaned up.
                self.agent.tasks.record(
                    "vm.recover",
                    Some((&vm.0, &vm.1)),
                    Ok(format!(
                        "a start interrupted by an agent restart ({why}); the VM stays halted"
                    )),
                );
                runtime::cleanup_taps(&runtime::existing_taps(&self.rec)).await;
                self.agent.cgroups.remove(&self.rec.id);
            }
            Err(why) => {
                if self.rec.power_state != PowerState::Halted {
                    self.set_power(PowerState::Halted, "QEMU exited while the agent was down");
                    self.agent.tasks.record(
                        "vm.recover",
                        Some((&vm.0, &vm.1)),
                        Ok(format!(
                            "the guest stopped while the agent was down ({why}); marked halted"
                        )),
                    );
                    runtime::cleanup_taps(&runtime::existing_taps(&self.rec)).await;
                    self.agent.cgroups.remove(&self.rec.id);
                }
            }
        }
        self.publish();
    }

    async fn run_loop(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            let deadline = self.pending.iter().map(|p| p.deadline).min();
            let cancels: Vec<TaskHandle> = self.pending.iter().map(|p| p.task.clone()).collect();
            tokio::select! {
                id = first_cancelled(cancels) => self.cancel_shutdown(&id),
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                ev = next_event(&mut self.run) => self.on_qmp_event(ev).await,
                _ = sleep_until(deadline) => self.expire_shutdowns(),
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
        let mut info = VmInfo::from_record(&self.rec);
        if let Some(run) = &self.run {
            info.pid = Some(run.pid);
            info.cpu_weight_status = Some(run.cpu_weight.clone());
            info.vnc = run.vnc.clone();
        }
        *self.info.write().unwrap_or_else(|p| p.into_inner()) = info;
    }

    fn persist(&mut self) -> Result<(), ApiError> {
        let key = format!("vms/{}", self.rec.id);
        self.rev = self
            .agent
            .put_json(&key, &self.rec, Expect::Revision(self.rev))?;
        self.publish();
        Ok(())
    }

    fn set_power(&mut self, to: PowerState, reason: &str) {
        let from = self.rec.power_state;
        if from == to {
            return;
        }
        self.rec.power_state = to;
        if let Err(e) = self.persist() {
            tracing::error!(vm = %self.name(), error = %e, "cannot record power state");
        }
        tracing::info!(vm = %self.name(), from = %from, to = %to, reason, "power state");
        self.agent.events.publish(Event::PowerStateChanged {
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
                let _ = answer.send(self.counters().await);
                let _ = reply.send(Ok(()));
                return;
            }
            op => op,
        };
        if let Op::Action(VmAction::Shutdown, opts) = &op {
            // Completes later, when QEMU exits.
            match self.begin_shutdown(opts) {
                Ok((deadline, presser)) => self.pending.push(PendingShutdown {
                    task,
                    reply,
                    deadline,
                    presser,
                }),
                Err(e) => {
                    task.fail(&e);
                    let _ = reply.send(Err(e));
                }
            }
            return;
        }
        // Leases and freezes are steps of a larger task that the caller finishes.
        let step = matches!(op, Op::Lease(_) | Op::Freeze(_));
        let result = self.apply(op, &task).await;
        match (&result, step) {
            (Ok(()), true) => {}
            _ => task.complete(&result),
        }
        let _ = reply.send(result);
    }

    async fn apply(&mut self, op: Op, task: &TaskHandle) -> Result<(), ApiError> {
        let state = self.rec.power_state;
        match op {
            Op::Action(action, _) => {
                if action == VmAction::Start {
                    self.require_free("start")?;
                }
                self.action(action, task).await
            }
            Op::Lease(lease) => {
                self.require_halted(lease.verb)?;
                self.leases.push(Arc::downgrade(&lease));
                Ok(())
            }
            Op::Freeze(answer) => {
                self.require_halted("clone")?;
                self.require_free("clone")?;
                let mut spec = self.rec.spec.clone();
                let (frozen, undo) = crate::clone::freeze_disks(&mut spec, &self.rec.id, true)?;
                let old = std::mem::replace(&mut self.rec.spec, spec);
                if let Err(e) = self.persist() {
                    self.rec.spec = old;
                    crate::clone::unfreeze(undo);
                    return Err(e);
                }
                let _ = answer.send(frozen);
                self.changed();
                Ok(())
            }
            Op::ConvertToTemplate => {
                self.require_halted("convert to a template")?;
                self.require_free("convert to a template")?;
                if self.rec.spec.is_template {
                    return Err(ApiError::new(
                        ErrorKind::InvalidState,
                        format!("VM {:?} is already a template", self.name()),
                    ));
                }
                let mut spec = self.rec.spec.clone();
                let (_, undo) = crate::clone::freeze_disks(&mut spec, &self.rec.id, false)?;
                spec.is_template = true;
                let old = std::mem::replace(&mut self.rec.spec, spec);
                if let Err(e) = self.persist() {
                    self.rec.spec = old;
                    crate::clone::unfreeze(undo);
                    return Err(e);
                }
                self.changed();
                Ok(())
            }
            Op::Update(req) => self.update(req).await,
            Op::DiskAdd(req) => {
                self.require_halted("add a disk to")?;
                self.require_free("add a disk to")?;
                if self.rec.spec.disks.len() >= MAX_DISKS {
                    return Err(ApiError::invalid(format!(
                        "VM already has the maximum of {MAX_DISKS} disks"
                    )));
                }
                self.check_template_restrictions(0, 1)?;
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
                let mut disk =
                    self.agent
                        .disk_from_request(&self.rec.id, &device, &req, default_bus)?;
                task.phase("creating volume", 0.3);
                crate::agent::create_disk_volume(&mut disk, req.import_from.clone()).await?;
                self.rec.spec.disks.push(disk.clone());
                if let Err(e) = self.persist() {
                    self.rec.spec.disks.pop();
                    let _ = corral_storage::remove_volume(&disk.path).await;
                    return Err(e);
                }
                self.changed();
                Ok(())
            }
            Op::DiskRemove(device) => {
                self.require_halted("remove a disk from")?;
                self.require_free("remove a disk from")?;
                let idx = self
                    .rec
                    .spec
                    .disks
                    .iter()
                    .position(|d| d.device == device)
                    .ok_or_else(|| {
                        ApiError::not_found(format!("VM {:?} has no disk {device:?}", self.name()))
                    })?;
                let disk = self.rec.spec.disks.remove(idx);
                self.persist()?;
                if !crate::clone::is_base(&disk.path) {
                    corral_storage::remove_volume(&disk.path)
                        .await
                        .map_err(|e| ApiError::internal(error_chain(&e)))?;
                }
                tokio::spawn(crate::clone::gc_bases(self.agent.clone()));
                self.changed();
                Ok(())
            }
            Op::CdromInsert(iso) => {
                let path = self.agent.check_iso_path(&iso)?;
                let device = self.cdrom_device()?;
                if let Some(run) = &self.run {
                    run.qmp
                        .execute(
                            "blockdev-change-medium",
                            serde_json::json!({ "id": device, "filename": path, "format": "raw", "read-only-mode": "read-only" }),
                        )
                        .await
                        .map_err(|e| ApiError::internal(format!("cannot insert {}: {}", path.display(), error_chain(&e))))?;
                }
                self.rec.spec.cdroms[0].media = Some(path);
                self.persist()?;
                self.changed();
                Ok(())
            }
            Op::CdromEject => {
                let device = self.cdrom_device()?;
                if let Some(run) = &self.run {
                    run.qmp
                        .execute("eject", serde_json::json!({ "id": device, "force": true }))
                        .await
                        .map_err(|e| {
                            ApiError::internal(format!("cannot eject: {}", error_chain(&e)))
                        })?;
                }
                self.rec.spec.cdroms[0].media = None;
                if self.rec.spec.boot_device == BootDevice::Cdrom {
                    self.rec.spec.boot_device = BootDevice::Disk;
                }
                self.persist()?;
                self.changed();
                Ok(())
            }
            Op::NicAdd(req) => {
                self.require_halted("add a NIC to")?;
                if self.rec.spec.nics.len() >= MAX_NICS {
                    return Err(ApiError::invalid(format!(
                        "VM {:?} already has the maximum of {MAX_NICS} NICs",
                        self.name()
                    )));
                }
                self.check_template_restrictions(1, 0)?;
                let device =
                    next_device("nic", self.rec.spec.nics.iter().map(|n| n.device.as_str()));
                let default_model = self
                    .rec
                    .spec
                    .nics
                    .first()
                    .map(|n| n.model)
                    .unwrap_or_default();
                let nic = self.agent.nic_from_request(&device, &req, default_model)?;
                self.rec.spec.nics.push(nic);
                self.persist()?;
                self.changed();
                Ok(())
            }
            Op::NicRemove(device) => {
                self.require_halted("remove a NIC from")?;
                let idx = self
                    .rec
                    .spec
                    .nics
                    .iter()
                    .position(|n| n.device == device)
                    .ok_or_else(|| {
                        ApiError::not_found(format!("VM {:?} has no NIC {device:?}", self.name()))
                    })?;
                self.rec.spec.nics.remove(idx);
                self.persist()?;
                self.changed();
                Ok(())
            }
            Op::FinishInstall { eject_cdrom } => {
                self.require_halted("finish the install of")?;
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
                self.persist()?;
                self.changed();
                Ok(())
            }
            Op::Delete(req) => {
                self.require_free("delete")?;
                if state != PowerState::Halted {
                    if !req.force {
                        return Err(ApiError::new(
                            ErrorKind::InvalidState,
                            format!("cannot delete VM {:?}: it is {state}; shut it down first or use --force", self.name()),
                        )
                        .with_details(serde_json::json!({ "power_state": state })));
                    }
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
        self.agent.events.publish(Event::VmChanged {
            vm: self.rec.spec.name.clone(),
            id: self.rec.id.clone(),
        });
    }

    /// Refuse changes to the disks while an export or copy reads them.
    fn require_free(&mut self, what: &str) -> Result<(), ApiError> {
        self.leases.retain(|l| l.strong_count() > 0);
        match self.leases.iter().find_map(|l| l.upgrade()) {
            Some(l) => Err(ApiError::new(
                ErrorKind::Busy,
                format!(
                    "cannot {what} VM {:?}: it is being {} (wait for that task or cancel it)",
                    self.name(),
                    l.what
                ),
            )),
            None => Ok(()),
        }
    }

    fn require_halted(&self, what: &str) -> Result<(), ApiError> {
        match self.rec.power_state {
            PowerState::Halted => Ok(()),
            s => Err(state_error(self.name(), s, what)),
        }
    }

    fn cdrom_device(&self) -> Result<String, ApiError> {
        self.rec
            .spec
            .cdroms
            .first()
            .map(|c| c.device.clone())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::Unsupported,
                    format!("VM {:?} has no CD drive", self.name()),
                )
            })
    }

    async fn action(&mut self, action: VmAction, task: &TaskHandle) -> Result<(), ApiError> {
        let state = self.rec.power_state;
        let name = self.name().to_string();
        match action {
            VmAction::Start => {
                if state != PowerState::Halted {
                    return Err(state_error(&name, state, "start"));
                }
                if self.rec.spec.is_template {
                    return Err(ApiError::new(
                        ErrorKind::InvalidState,
                        format!("{name:?} is a template; install a VM from it instead"),
                    ));
                }
                task.phase("starting QEMU", 0.2);
                let run = runtime::launch(&self.agent, &self.rec, false).await?;
                self.run = Some(run);
                self.set_power(PowerState::Running, "started");
                if self.rec.spec.install.is_some() {
                    self.installer_started();
                }
                Ok(())
            }
            VmAction::Poweroff => {
                if state == PowerState::Halted {
                    return Err(state_error(&name, state, "power off"));
                }
                self.poweroff().await
            }
            VmAction::Reboot => {
                if state != PowerState::Running {
                    return Err(state_error(&name, state, "reboot"));
                }
                self.qmp("system_reset").await
            }
            VmAction::Pause => {
                if state != PowerState::Running {
                    return Err(state_error(&name, state, "pause"));
                }
                self.qmp("stop").await?;
                self.set_power(PowerState::Paused, "paused");
                Ok(())
            }
            VmAction::Resume => {
                if state != PowerState::Paused {
                    return Err(state_error(&name, state, "resume"));
                }
                self.qmp("cont").await?;
                self.set_power(PowerState::Running, "resumed");
                Ok(())
            }
            VmAction::Shutdown => unreachable!("shutdown is handled before apply"),
        }
    }

    /// The installer (re)started: it gets a fresh deadline, and when no `vm.install` task is
    /// watching (the start is a retry after a failed or cancelled install), a new one waits
    /// for the installer and switches the VM to disk boot, as the first task would have.
    /// Any running `vm.install` task of this VM counts, not only the one the install state
    /// names: after an agent restart `resume_installs` watches under a new task, and an
    /// autostart of the same VM must not add a second watcher.
    fn installer_started(&mut self) {
        let watched = self.agent.tasks.is_running("vm.install", &self.rec.id);
        let watcher = (!watched).then(|| {
            self.agent
                .tasks
                .start("vm.install", Some((&self.rec.id, &self.rec.spec.name)))
        });
        if let Some(install) = &mut self.rec.spec.install {
            let secs = install
                .timeout_secs
                .unwrap_or(crate::install::DEFAULT_INSTALL_TIMEOUT.as_secs());
            install.deadline_ms = Some(crate::clock::now_ms().saturating_add(secs * 1000));
            if let Some(t) = &watcher {
                install.task_id = t.id.clone();
            }
        }
        if let Err(e) = self.persist() {
            tracing::warn!(vm = %self.name(), "cannot record the installer's deadline: {}", e.message);
        }
        self.publish();
        if let Some(task) = watcher {
            crate::install::watch_install(self.agent.clone(), self.rec.id.clone(), task);
        }
    }

    /// Template restrictions (`max_nics`, `max_disks`, ...) hold for devices added later too.
    fn check_template_restrictions(
        &self,
        more_nics: usize,
        more_disks: usize,
    ) -> Result<(), ApiError> {
        let spec = &self.rec.spec;
        let Some(t) = &spec.template else {
            return Ok(());
        };
        let Ok(tpl) = self.agent.templates_read().get(t).cloned() else {
            // The template was deleted since: nothing left to enforce.
            return Ok(());
        };
        tpl.check_restrictions(
            spec.vcpus,
            spec.memory_bytes,
            spec.nics.len() + more_nics,
            spec.disks.len() + more_disks,
        )
        .map_err(|p| ApiError::invalid(p.join("; ")))
    }

    async fn qmp(&self, command: &str) -> Result<(), ApiError> {
        let run = self
            .run
            .as_ref()
            .ok_or_else(|| ApiError::internal("no QEMU process"))?;
        run.qmp
            .execute(command, serde_json::json!({}))
            .await
            .map(|_| ())
            .map_err(|e| ApiError::internal(format!("QMP {command} failed: {}", error_chain(&e))))
    }

    fn begin_shutdown(
        &mut self,
        opts: &ActionRequest,
    ) -> Result<(Instant, tokio::task::JoinHandle<()>), ApiError> {
        let state = self.rec.power_state;
        if state != PowerState::Running {
            return Err(state_error(self.name(), state, "shut down"));
        }
        let run = self
            .run
            .as_ref()
            .ok_or_else(|| ApiError::internal("no QEMU process"))?;
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
        let Some(i) = self.pending.iter().position(|p| p.task.id == task_id) else {
            return;
        };
        let p = self.pending.remove(i);
        p.presser.abort();
        let note = format!(
            "shutdown cancelled; VM {:?} is still {}",
            self.rec.spec.name, self.rec.power_state
        );
        p.task.cancelled_with(&note);
        let _ = p
            .reply
            .send(Err(ApiError::new(ErrorKind::InvalidState, note)));
    }

    fn expire_shutdowns(&mut self) {
        let now = Instant::now();
        let (expired, keep): (Vec<_>, Vec<_>) =
            self.pending.drain(..).partition(|p| p.deadline <= now);
        self.pending = keep;
        for p in expired {
            p.presser.abort();
            let e = ApiError::new(
                ErrorKind::Busy,
                format!(
                    "VM {:?} did not power off after the ACPI power button; it is still running (use poweroff to force)",
                    self.rec.spec.name
                ),
            );
            p.task.fail(&e);
            let _ = p.reply.send(Err(e));
        }
    }

    /// Pull the plug: ask QEMU to quit, kill it if it does not, and wait for it to be gone.
    async fn poweroff(&mut self) -> Result<(), ApiError> {
        if let Some(run) = self.run.as_mut() {
            let qmp = run.qmp.clone();
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                qmp.execute("quit", serde_json::json!({})),
            )
            .await;
            let exited = tokio::time::timeout(POWEROFF_TIMEOUT, wait_closed(&mut run.events))
                .await
                .is_ok();
            if !exited {
                runtime::kill_pid(run.pid);
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
        match ev.event.as_str() {
            "STOP" if self.rec.power_state == PowerState::Running => {
                self.set_power(PowerState::Paused, "paused")
            }
            "RESUME" if self.rec.power_state == PowerState::Paused => {
                self.set_power(PowerState::Running, "resumed")
            }
            _ => {}
        }
    }

    /// QEMU is gone: clean up and record the VM halted; pending shutdowns succeed.
    async fn on_exit(&mut self, reason: &str) {
        if let Some(run) = self.run.take() {
            runtime::cleanup(&self.agent, &self.rec.id, &run).await;
        }
        self.set_power(PowerState::Halted, reason);
        self.publish();
        for p in self.pending.drain(..) {
            p.presser.abort();
            p.task.succeed(None);
            let _ = p.reply.send(Ok(()));
        }
    }

    async fn update(&mut self, req: VmUpdateRequest) -> Result<(), ApiError> {
        let mut spec = self.rec.spec.clone();
        let mut notes = Vec::new();
        if let Some(d) = req.description {
            spec.description = d;
        }
        if let Some(v) = req.vcpus {
            validate_vcpus(v).map_err(ApiError::invalid)?;
            spec.vcpus = v;
        }
        if let Some(m) = req.memory_bytes {
            self.agent.validate_memory_on_host(m)?;
            spec.memory_bytes = m;
        }
        if (req.vcpus.is_some() || req.memory_bytes.is_some()) && self.run.is_some() {
            notes.push("vCPU and memory changes take effect at the next start");
        }
        if let Some(t) = &spec.template {
            if let Ok(tpl) = self.agent.templates_read().get(t) {
                tpl.check_restrictions(
                    spec.vcpus,
                    spec.memory_bytes,
                    spec.nics.len(),
                    spec.disks.len(),
                )
                .map_err(|p| ApiError::invalid(p.join("; ")))?;
            }
        }
        if let Some(a) = req.autostart {
            spec.autostart = a;
        }
        if let Some(w) = req.cpu_weight {
            validate_cpu_weight(w).map_err(ApiError::invalid)?;
            spec.cpu_weight = w;
        }
        if let Some(b) = req.boot_device {
            spec.boot_device = b;
        }
        let tpm_removed = req.tpm == Some(false) && spec.tpm;
        if let Some(t) = req.tpm.filter(|t| *t != spec.tpm) {
            self.require_halted(if t {
                "attach a TPM to"
            } else {
                "remove the TPM of"
            })?;
            spec.tpm = t;
        }
        if let Some(model) = req.device_model {
            self.require_halted("change the device model of")?;
            set_device_model(&mut spec, model);
        }
        let abandoned = req.abandon_install;
        if abandoned {
            self.require_halted("abandon the install of")?;
            if spec.install.is_none() {
                return Err(ApiError::new(
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
                    return Err(ApiError::invalid(format!(
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
                .ok_or_else(|| ApiError::invalid("--initrd needs a kernel"))?;
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
                .ok_or_else(|| ApiError::invalid("--cmdline needs a kernel"))?;
            kb.cmdline = c;
        }
        let rename = match req.name {
            Some(n) if n != spec.name => {
                validate_name("VM", &n).map_err(ApiError::invalid)?;
                self.agent.registry_mut().reserve(&n)?;
                Some(n)
            }
            _ => None,
        };
        let old_name = spec.name.clone();
        if let Some(n) = &rename {
            spec.name = n.clone();
        }
        let old = std::mem::replace(&mut self.rec.spec, spec);
        if let Err(e) = self.persist() {
            self.rec.spec = old;
            if let Some(n) = &rename {
                self.agent.registry_mut().release(n);
            }
            return Err(e);
        }
        crate::vmfiles::remove_replaced(&self.rec.id, &old, &self.rec.spec);
        if let Some(n) = &rename {
            let mut reg = self.agent.registry_mut();
            reg.release(n);
            reg.rename(&old_name, n);
        }
        if let (Some(w), Some(run)) = (req.cpu_weight, self.run.as_mut()) {
            run.cpu_weight =
                CpuWeightStatus::from_result(w, self.agent.cgroups.update(&self.rec.id, w));
            self.publish();
        }
        for n in notes {
            tracing::info!(vm = %self.name(), "{n}");
        }
        if abandoned {
            let _ = std::fs::remove_dir_all(self.agent.layout.install_dir(&self.rec.id));
        }
        if tpm_removed {
            // A removed TPM's keys are gone for good; a TPM attached later starts empty.
            let _ =
                std::fs::remove_dir_all(crate::vmfiles::tpm_dir(&self.agent.layout, &self.rec.id));
        }
        self.changed();
        Ok(())
    }

    async fn delete(&mut self, keep_disks: bool) -> Result<(), ApiError> {
        if !keep_disks {
            // Bases (template disks, disks shared by linked clones) go when nothing uses
            // them any more: `gc_bases` below.
            for d in self
                .rec
                .spec
                .disks
                .iter()
                .filter(|d| !crate::clone::is_base(&d.path))
            {
                corral_storage::remove_volume(&d.path)
                    .await
                    .map_err(|e| ApiError::internal(error_chain(&e)))?;
            }
        }
        self.agent
            .store
            .delete(&format!("vms/{}", self.rec.id), Expect::Any)
            .map_err(|e| ApiError::internal(error_chain(&e)))?;
        let _ = std::fs::remove_dir_all(self.agent.layout.run_dir(&self.rec.id));
        let _ = std::fs::remove_dir_all(self.agent.layout.install_dir(&self.rec.id));
        let _ = std::fs::remove_file(self.agent.layout.seed_iso(&self.rec.id));
        let _ = std::fs::remove_file(
            self.agent
                .layout
                .root
                .join("nvram")
                .join(format!("{}.fd", self.rec.id)),
        );
        crate::vmfiles::remove_owned(&self.agent.layout, &self.rec.id, &self.rec.spec, keep_disks);
        self.agent.registry_mut().remove(&self.rec.id);
        self.agent.events.publish(Event::VmDeleted {
            vm: self.rec.spec.name.clone(),
            id: self.rec.id.clone(),
        });
        self.deleted = true;
        tokio::spawn(crate::clone::gc_bases(self.agent.clone()));
        Ok(())
    }
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
