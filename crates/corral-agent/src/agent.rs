//! [`Agent`]: the facade every front end calls. It starts the host (store, accelerator
//! probe, re-attach, autostart), answers host-level requests (repositories, networks, ISOs,
//! host info) and hands VM work to the VM's actor or to an operation in [`crate::ops`].
//! Its fields are private: actors and operations get the narrow [`Host`] context and the
//! [`QemuRuntime`] instead, and send the facade [`Notice`]s rather than calling back.

use crate::cgroup::CgroupSupport;
use crate::config::{AccelMode, AgentConfig, Layout};
use crate::context::{store_error, Host, Records};
use crate::error::Error;
use crate::events::EventBus;
use crate::keys;
use crate::network;
use crate::ops::Ops;
use crate::spec;
use crate::tasks::{TaskHandle, Tasks};
use crate::templates::Templates;
use crate::vm::runtime::QemuRuntime;
use crate::vm::{self, Notice, Op, VmHandle};
use corral_model::api::*;
use corral_model::host::*;
use corral_model::task::Operation;
use corral_model::transfer::{CloneRequest, ExportQuery, ImportAnswer, ImportPlan, ImportQuery};
use corral_model::validate::*;
use corral_model::*;
use corral_store::{EtcdOptions, EtcdStore, Expect, SqliteStore, Store};
use std::path::PathBuf;
use std::sync::Arc;

pub struct Agent {
    config: AgentConfig,
    pub(crate) host: Arc<Host>,
    pub(crate) runtime: Arc<QemuRuntime>,
    /// Clone, copy, export, import, install (see [`crate::ops`]).
    ops: Arc<Ops>,
    hostname: String,
    accel: AcceleratorInfo,
    qemu_version: String,
    cgroups: CgroupSupport,
    /// Load statistics of the VMs, filled by the sampler (see `crate::stats`).
    stats: Arc<crate::stats::Stats>,
    /// Placement advice (see `crate::advice`).
    advisor: Arc<crate::advice::Advisor>,
    /// The statistics sampler's context; the loop ends when the agent is dropped.
    sampler: Arc<crate::stats::Sampler>,
    /// This host's membership of its pool, and the pool-wide view (see [`crate::pool`]).
    pool: Arc<crate::pool::Pool>,
    /// Live migration, as source and as target (see [`crate::migrate`]).
    migrations: Arc<crate::migrate::Migrations>,
    /// Named API tokens and the audit log, in the store (see [`crate::auth`]).
    tokens: Arc<crate::auth::Tokens>,
    audit: Arc<crate::auth::Audit>,
}

/// How a VM request was answered: done (with the VM as it is now), or accepted and still
/// running as the task.
#[derive(Debug)]
pub enum VmOutcome {
    Done { task: String, vm: Box<VmInfo> },
    Accepted { task: String },
}

/// Keep this host's planner figures (capacity, hourly load) current in its pool record.
fn spawn_planner_publisher(
    advisor: std::sync::Weak<crate::advice::Advisor>,
    pool: Arc<crate::pool::Pool>,
) {
    let every = pool.timings().publish_every;
    tokio::spawn(async move {
        loop {
            let Some(a) = advisor.upgrade() else { return };
            // Reading /proc and /sys is blocking work.
            let snapshot = tokio::task::spawn_blocking(move || a.local_planner()).await;
            if let Ok(s) = snapshot {
                pool.set_local_planner(s).await;
            }
            tokio::time::sleep(every).await;
        }
    });
}

fn internal(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::caused(ErrorKind::Internal, what, e)
}

impl Agent {
    /// Open the state, probe the accelerator, re-attach running guests and autostart VMs.
    pub async fn start(config: AgentConfig) -> Result<Arc<Agent>, Error> {
        let layout = Layout {
            root: config.state_dir.clone(),
        };
        if crate::confine::available() {
            // Before the store and anything else is created: what the agent makes is its
            // own, and a VM's QEMU reaches only what a launch grants it.
            crate::confine::set_private_umask();
        }
        for dir in [
            layout.root.clone(),
            layout.default_sr(),
            layout.templates(),
            layout.root.join("run"),
        ] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| internal(&format!("cannot create {}", dir.display()), e))?;
        }
        let store: Arc<dyn Store> = if config.pool.etcd.is_empty() {
            Arc::new(
                SqliteStore::open(&layout.db())
                    .map_err(|e| Error::caused(ErrorKind::Internal, "cannot open state", e))?,
            )
        } else {
            Arc::new(
                EtcdStore::connect(&config.pool.etcd, EtcdOptions::default())
                    .await
                    .map_err(|e| {
                        Error::caused(
                            ErrorKind::Unavailable,
                            "cannot reach the pool's etcd cluster (is every endpoint an etcd client URL, e.g. http://10.0.0.5:2379?)",
                            e,
                        )
                    })?,
            )
        };
        let interrupted_imports = crate::ops::transfer::clean_staging(&layout.staging());
        let host_id = keys::host_id(&layout.root, store.as_ref()).await?;
        let upgraded = keys::upgrade(store.as_ref(), &host_id).await?;
        if let Some(u) = &upgraded {
            tracing::info!(
                from = u.from,
                to = keys::SCHEMA,
                moved = u.moved,
                names = u.names,
                "upgraded the state's layout"
            );
        }
        let events = Arc::new(EventBus::default());
        let tasks = Tasks::load(store.clone(), keys::tasks(&host_id), events.clone())
            .await
            .map_err(store_error)?;

        let qemu_version = corral_qemu::process::qemu_version(&config.qemu_binary)
            .await
            .map_err(|e| Error::caused(ErrorKind::Internal, "cannot run QEMU", e))?
            .to_string();
        let accel = choose_accelerator(&config, &layout, &qemu_version).await;
        tracing::info!(accelerator = accel.name.as_str(), reason = %accel.reason, "accelerator chosen");
        let cgroups = CgroupSupport::detect();
        tracing::info!(cpu_weight = %cgroups.describe(), "cpu weight support");
        let templates =
            Templates::load(&layout.templates()).map_err(|e| e.context("cannot load templates"))?;

        let stats =
            Arc::new(crate::stats::Stats::load(store.as_ref(), &keys::stats(&host_id)).await);
        let (host, notices) = Host::new(
            Records::new(store),
            events,
            tasks,
            layout,
            (host_id, config.pool.host_name.clone()),
            config.iso_dir.clone(),
            templates,
        );
        let host = Arc::new(host);
        let tokens = Arc::new(crate::auth::Tokens::new(host.records.clone()));
        let audit = Arc::new(crate::auth::Audit::new(host.records.clone()));
        host.load_catalog().await?;
        if crate::confine::available() {
            let srs: Vec<_> = host.list_srs().into_iter().map(|sr| sr.path).collect();
            crate::confine::secure_state(&host.layout.root, &srs);
        }
        let finished = crate::intents::recover(&host).await?;
        let runtime = Arc::new(QemuRuntime::new(
            host.clone(),
            config.qemu_binary.clone(),
            accel.name,
            cgroups.clone(),
        ));
        let ops = Arc::new(Ops {
            host: host.clone(),
            runtime: runtime.clone(),
            iso_dir: config.iso_dir.clone(),
            tools_iso: config.tools_iso.clone(),
            p2v: Default::default(),
        });
        let pool =
            crate::pool::Pool::start(host.clone(), runtime.clone(), config.pool.clone()).await?;
        let hostname = crate::host::hostname();
        let advisor = Arc::new(crate::advice::Advisor {
            host: host.clone(),
            stats: stats.clone(),
            hostname: hostname.clone(),
            capacity: config.capacity,
            pool: pool.clone(),
        });
        if pool.is_clustered() {
            spawn_planner_publisher(Arc::downgrade(&advisor), pool.clone());
        }
        let sampler = Arc::new(crate::stats::Sampler {
            host: host.clone(),
            stats: stats.clone(),
            advisor: advisor.clone(),
        });
        let migrations = crate::migrate::Migrations::new(
            host.clone(),
            runtime.clone(),
            pool.clone(),
            config
                .capacity
                .memory_gib
                .map(|g| (g * (1u64 << 30) as f64) as u64),
        );
        migrations.incoming.recover().await;
        let agent = Arc::new(Agent {
            migrations,
            hostname,
            config,
            host,
            runtime,
            ops,
            accel,
            qemu_version,
            cgroups,
            stats,
            advisor,
            sampler,
            pool,
            tokens,
            audit,
        });
        agent.ensure_default_sr().await?;
        agent.load_vms(upgraded, finished).await?;
        agent.migrations.recover_sources().await;
        agent
            .ops
            .remove_interrupted_import_volumes(&interrupted_imports);
        agent.ops.resume_installs();
        spawn_notice_loop(Arc::downgrade(&agent.ops), notices);
        crate::ops::clone::gc_bases(agent.host.clone()).await;
        if agent.config.autostart {
            agent.autostart().await;
        }
        crate::stats::spawn_sampler(&agent.sampler);
        Ok(agent)
    }

    // ----- what front ends read -----

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }
    pub fn layout(&self) -> &Layout {
        &self.host.layout
    }
    pub fn tasks(&self) -> &Arc<Tasks> {
        &self.host.tasks
    }
    pub fn events(&self) -> &Arc<EventBus> {
        &self.host.events
    }
    pub fn templates(&self) -> std::sync::RwLockReadGuard<'_, Templates> {
        self.host.templates()
    }
    pub fn tokens(&self) -> &Arc<crate::auth::Tokens> {
        &self.tokens
    }
    pub fn audit(&self) -> &Arc<crate::auth::Audit> {
        &self.audit
    }
    /// This host's name in its pool (what audit entries say recorded them).
    pub fn host_name(&self) -> &str {
        &self.config.pool.host_name
    }
    pub fn templates_mut(&self) -> std::sync::RwLockWriteGuard<'_, Templates> {
        self.host.templates_mut()
    }

    /// Before the agent exits: wait until what it recorded in memory (task updates) is
    /// in the store. Guests keep running; nothing else needs saying.
    pub async fn flush(&self) {
        self.host.tasks.flush().await;
    }

    async fn ensure_default_sr(&self) -> Result<(), Error> {
        if self.host.sr("default").is_err() {
            let sr = StorageRepository {
                name: "default".into(),
                path: self.host.layout.default_sr(),
                shared: false,
                is_default: true,
                free_bytes: None,
                total_bytes: None,
            };
            self.host.add_sr(sr, Expect::Any).await?;
        }
        Ok(())
    }

    async fn load_vms(
        self: &Arc<Self>,
        upgraded: Option<keys::Upgrade>,
        finished: Vec<String>,
    ) -> Result<(), Error> {
        let records = self
            .host
            .records
            .store()
            .list(keys::VMS)
            .await
            .map_err(store_error)?;
        let mut reattached = Vec::new();
        let mut died = Vec::new();
        for (key, v) in records {
            let rec: VmRecord = match serde_json::from_slice(&v.value) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(%key, error = %e, "skipping unreadable VM record");
                    continue;
                }
            };
            if rec.host != self.host.host_id {
                // Another member's VM (pools): its owner runs it.
                continue;
            }
            let was = rec.power_state;
            let name = rec.spec.name.clone();
            let handle =
                vm::actor::spawn(self.host.clone(), self.runtime.clone(), rec, v.mod_revision)
                    .await;
            let now = handle.info().power_state;
            match (was, now) {
                (PowerState::Running | PowerState::Paused, PowerState::Halted) => {
                    died.push(name.clone())
                }
                (_, PowerState::Running | PowerState::Paused) => reattached.push(name.clone()),
                _ => {}
            }
            self.host.registry_mut().insert(&name, handle);
        }
        let mut note = format!("agent started (accelerator {})", self.accel.name.as_str());
        if let Some(u) = upgraded {
            note.push_str(&format!(
                "; upgraded the state from schema {} to {} ({} host records moved, {} VM names indexed)",
                u.from,
                keys::SCHEMA,
                u.moved,
                u.names
            ));
        }
        if !reattached.is_empty() {
            note.push_str(&format!("; re-attached {}", reattached.join(", ")));
        }
        if !died.is_empty() {
            note.push_str(&format!(
                "; found halted while the agent was down: {}",
                died.join(", ")
            ));
        }
        for f in finished {
            note.push_str("; ");
            note.push_str(&f);
        }
        self.host
            .tasks
            .record(Operation::AgentStart, None, Ok(note));
        Ok(())
    }

    async fn autostart(self: &Arc<Self>) {
        let handles: Vec<VmHandle> = self.host.registry().by_id.values().cloned().collect();
        for h in handles {
            let info = h.info();
            if info.autostart && !info.is_template && info.power_state == PowerState::Halted {
                let task = self
                    .host
                    .tasks
                    .start(Operation::VmAutostart, Some((&info.id, &info.name)));
                if let Err(e) = h
                    .call(Op::Action(VmAction::Start, ActionRequest::default()), task)
                    .await
                {
                    tracing::warn!(vm = %info.name, error = %e, "autostart failed");
                }
            }
        }
    }

    // ----- VMs -----

    pub fn vm(&self, name: &str) -> Result<VmHandle, Error> {
        self.host.vm(name)
    }

    /// This host's id in the pool.
    pub fn host_id(&self) -> &str {
        &self.host.host_id
    }

    /// The pool this host is a member of.
    pub fn pool(&self) -> &Arc<crate::pool::Pool> {
        &self.pool
    }

    /// A VM of the pool: this host's live snapshot, or the record another member wrote.
    pub fn vm_info(&self, name: &str) -> Result<VmInfo, Error> {
        match self.host.vm(name) {
            Ok(h) => Ok(h.info()),
            Err(e) => self.pool.remote_vm(name).ok_or(e),
        }
    }

    /// `vm list` already encoded as a JSON array (see [`crate::pool::Pool::list_json`]).
    pub fn list_vms_json(&self) -> Vec<u8> {
        self.pool.list_json()
    }

    pub fn list_vms(&self) -> Vec<VmInfo> {
        self.pool.list_vms()
    }

    /// A power action (start, shutdown, ...) as its task; `wait: false` answers at once.
    pub async fn vm_action(
        &self,
        name: &str,
        action: VmAction,
        options: ActionRequest,
        wait: bool,
    ) -> Result<VmOutcome, Error> {
        let operation = match action {
            VmAction::Start => Operation::VmStart,
            VmAction::Shutdown => Operation::VmShutdown,
            VmAction::Poweroff => Operation::VmPoweroff,
            VmAction::Reboot => Operation::VmReboot,
            VmAction::Pause => Operation::VmPause,
            VmAction::Resume => Operation::VmResume,
        };
        self.vm_outcome(name, operation, Op::Action(action, options), wait)
            .await
    }

    /// `vm set`.
    pub async fn update_vm(&self, name: &str, req: VmUpdateRequest) -> Result<VmOutcome, Error> {
        self.vm_outcome(name, Operation::VmUpdate, Op::Update(req), true)
            .await
    }

    /// `vm delete`; answers the task id.
    pub async fn delete_vm(&self, name: &str, req: VmDeleteRequest) -> Result<String, Error> {
        let (_, task) = self
            .vm_op(name, Operation::VmDelete, Op::Delete(req))
            .await?;
        Ok(task)
    }

    pub async fn add_disk(&self, name: &str, req: DiskRequest) -> Result<VmOutcome, Error> {
        self.vm_outcome(name, Operation::VmDiskAdd, Op::DiskAdd(req), true)
            .await
    }

    pub async fn remove_disk(&self, name: &str, device: String) -> Result<VmOutcome, Error> {
        self.vm_outcome(name, Operation::VmDiskRemove, Op::DiskRemove(device), true)
            .await
    }

    pub async fn insert_cdrom(&self, name: &str, iso: PathBuf) -> Result<VmOutcome, Error> {
        self.vm_outcome(name, Operation::VmCdromInsert, Op::CdromInsert(iso), true)
            .await
    }

    pub async fn eject_cdrom(&self, name: &str) -> Result<VmOutcome, Error> {
        self.vm_outcome(name, Operation::VmCdromEject, Op::CdromEject, true)
            .await
    }

    /// `vm tools insert`: the guest-tools ISO into the CD drive (running or not).
    pub async fn insert_tools(&self, name: &str) -> Result<VmOutcome, Error> {
        let iso = self.tools_iso()?;
        self.vm_outcome(name, Operation::VmToolsInsert, Op::CdromInsert(iso), true)
            .await
    }

    pub async fn add_nic(&self, name: &str, req: NicRequest) -> Result<VmOutcome, Error> {
        self.vm_outcome(name, Operation::VmNicAdd, Op::NicAdd(req), true)
            .await
    }

    pub async fn remove_nic(&self, name: &str, device: String) -> Result<VmOutcome, Error> {
        self.vm_outcome(name, Operation::VmNicRemove, Op::NicRemove(device), true)
            .await
    }

    async fn vm_outcome(
        &self,
        name: &str,
        operation: Operation,
        op: Op,
        wait: bool,
    ) -> Result<VmOutcome, Error> {
        if wait {
            let (vm, task) = self.vm_op(name, operation, op).await?;
            Ok(VmOutcome::Done {
                task,
                vm: Box::new(vm),
            })
        } else {
            let task = self.ops.vm_op_nowait(name, operation, op)?;
            Ok(VmOutcome::Accepted { task })
        }
    }

    async fn vm_op(
        &self,
        name: &str,
        operation: Operation,
        op: Op,
    ) -> Result<(VmInfo, String), Error> {
        self.ops.vm_op(name, operation, op).await
    }

    pub fn history(&self, name: &str) -> Result<Vec<corral_model::task::Task>, Error> {
        let tasks = &self.host.tasks;
        let id = match self.vm(name) {
            Ok(h) => h.id.clone(),
            Err(e) => {
                // History of a deleted VM is still reachable by its id.
                if !tasks
                    .recent(1, |t| t.vm_id.as_deref() == Some(name))
                    .is_empty()
                {
                    name.to_string()
                } else {
                    return Err(e);
                }
            }
        };
        Ok(tasks.recent(usize::MAX, |t| t.vm_id.as_deref() == Some(&id)))
    }

    pub async fn create_vm(
        self: &Arc<Self>,
        req: VmCreateRequest,
    ) -> Result<(VmInfo, String), Error> {
        validate_name("VM", &req.name).map_err(Error::invalid)?;
        if let Some(t) = &req.template {
            // A template VM (rather than an OS template) gives clones of its disks.
            if self.host.is_template_vm(t) {
                return self.ops.create_from_template_vm(req).await;
            }
        }
        let task = self.host.tasks.start(Operation::VmCreate, None);
        let task_id = task.id.clone();
        self.host
            .registry_mut()
            .reserve(&req.name)
            .inspect_err(|e| task.fail(e))?;
        let result = self.create_vm_reserved(&req, &task).await;
        if result.is_err() {
            self.host.registry_mut().release(&req.name);
        }
        task.complete(&result);
        let handle = result?;
        if req.start {
            let info = handle.info();
            let t = self
                .host
                .tasks
                .start(Operation::VmStart, Some((&info.id, &info.name)));
            handle
                .call(Op::Action(VmAction::Start, ActionRequest::default()), t)
                .await?;
        }
        Ok((handle.info(), task_id))
    }

    async fn create_vm_reserved(
        self: &Arc<Self>,
        req: &VmCreateRequest,
        task: &TaskHandle,
    ) -> Result<VmHandle, Error> {
        let id = uuid::Uuid::new_v4().to_string();
        task.set_vm(&id, &req.name);
        task.phase("validating", 0.1);
        let spec = spec::spec_from_request(self.host.as_ref(), &id, req)?;
        let sources: Vec<Option<PathBuf>> = req
            .disks
            .iter()
            .flatten()
            .map(|d| d.import_from.clone())
            .collect();
        self.ops.materialize_vm(id, spec, sources, task).await
    }

    // ----- operations in `crate::ops` -----

    /// `vm clone SRC DST`.
    pub async fn clone_vm(
        &self,
        source: &str,
        req: CloneRequest,
    ) -> Result<(VmInfo, String), Error> {
        self.ops.clone_vm(source, req).await
    }

    /// `vm copy SRC DST`.
    pub async fn copy_vm(
        &self,
        source: &str,
        req: CloneRequest,
        wait: bool,
    ) -> Result<(Option<VmInfo>, String), Error> {
        self.ops.copy_vm(source, req, wait).await
    }

    /// `vm import` from a stream (see [`crate::ops::transfer`]): the new VM, or the plan of
    /// a dry run.
    pub async fn import_vm(
        &self,
        q: ImportQuery,
        body: crate::ops::transfer::ByteStream,
    ) -> Result<Result<ImportAnswer, ImportPlan>, Error> {
        self.ops.import_vm(q, body).await
    }

    /// `vm import IMAGE --convert` from a stream (see [`crate::ops::import_image`]): the task
    /// converting it, or the plan of a dry run.
    pub async fn import_image(
        &self,
        q: ImportQuery,
        body: crate::ops::transfer::ByteStream,
        length: Option<u64>,
    ) -> Result<Result<String, ImportPlan>, Error> {
        self.ops.import_image(q, body, length).await
    }

    /// `POST /v1/p2v` (see [`crate::ops::p2v`]).
    pub async fn p2v_start(
        &self,
        req: corral_model::transfer::P2vStartRequest,
    ) -> Result<corral_model::transfer::P2vSession, Error> {
        self.ops.p2v_start(req).await
    }

    /// `GET /v1/p2v/{id}`.
    pub fn p2v_show(&self, id: &str) -> Result<corral_model::transfer::P2vSession, Error> {
        self.ops.p2v_show(id)
    }

    /// `PUT /v1/p2v/{id}/data?pass=N`.
    pub async fn p2v_data(
        &self,
        id: &str,
        pass: u32,
        body: crate::ops::transfer::ByteStream,
    ) -> Result<corral_model::transfer::P2vSession, Error> {
        self.ops.p2v_data(id, pass, body).await
    }

    /// `POST /v1/p2v/{id}/finish`: the conversion's task.
    pub async fn p2v_finish(
        &self,
        id: &str,
        req: corral_model::transfer::P2vFinishRequest,
    ) -> Result<String, Error> {
        self.ops.p2v_finish(id, req).await
    }

    /// `DELETE /v1/p2v/{id}`.
    pub fn p2v_cancel(&self, id: &str) -> Result<(), Error> {
        self.ops.p2v_cancel(id)
    }

    /// `vm export`: the task, the file name and the archive stream.
    pub async fn export_vm(
        &self,
        name: &str,
        q: ExportQuery,
    ) -> Result<(String, String, crate::ops::transfer::ByteStream), Error> {
        self.ops.export_vm(name, q).await
    }

    /// `vm migrate NAME --to HOST` (see [`crate::migrate`]): the pre-checks, and the task
    /// of a migration that started.
    pub async fn migrate_vm(
        &self,
        name: &str,
        req: corral_model::migrate::MigrateRequest,
    ) -> Result<corral_model::migrate::MigrateAnswer, Error> {
        let handle = self.vm(name)?;
        self.migrations.migrate(handle, req).await
    }

    /// The target's half of live migration, for the pool's internal routes.
    pub fn incoming(&self) -> &Arc<crate::migrate::incoming::Incoming> {
        &self.migrations.incoming
    }

    /// `vm convert-to-template`.
    pub async fn convert_to_template(&self, name: &str) -> Result<(VmInfo, String), Error> {
        self.ops.convert_to_template(name).await
    }

    /// `vm install` (see [`crate::ops::install`]); answers the task id.
    pub async fn install_vm(&self, req: VmInstallRequest) -> Result<String, Error> {
        self.ops.install_vm(req).await
    }

    /// `vm install --dry-run`: the plan, nothing made.
    pub async fn plan_install(
        &self,
        req: VmInstallRequest,
    ) -> Result<corral_model::install::InstallPlan, Error> {
        self.ops.plan_install(req).await
    }

    /// The guest-tools ISO.
    pub fn tools_iso(&self) -> Result<PathBuf, Error> {
        self.ops.tools_iso()
    }

    // ----- statistics and placement advice -----

    /// `vm stats`: the VM's load history at 5 s, 1 min and 1 h resolution.
    pub fn vm_stats(&self, name: &str) -> Result<corral_model::stats::VmStats, Error> {
        Ok(self.stats.vm_stats(&self.vm(name)?))
    }

    /// `vm stats --follow`: the VM's statistics now, and its new samples as they are taken.
    /// The receiver carries every VM's samples, each with its VM's id.
    pub fn follow_vm_stats(
        &self,
        name: &str,
    ) -> Result<
        (
            corral_model::stats::VmStats,
            tokio::sync::broadcast::Receiver<(String, corral_model::stats::StatsSample)>,
        ),
        Error,
    > {
        // Subscribed first, so no sample falls between the document and the stream.
        let rx = self.stats.follow();
        Ok((self.stats.vm_stats(&self.vm(name)?), rx))
    }

    /// `vm recommend-host`: the hosts rated for the VM's measured demand.
    pub fn recommend_host(
        &self,
        name: &str,
    ) -> Result<corral_model::stats::HostRecommendation, Error> {
        self.advisor.recommend_host(name)
    }

    // ----- storage repositories -----

    pub fn sr(&self, name: &str) -> Result<StorageRepository, Error> {
        self.host.sr(name)
    }

    pub fn list_srs(&self) -> Result<Vec<StorageRepository>, Error> {
        Ok(self.host.list_srs())
    }

    /// `sr create`, recorded as an `sr.create` task (with its events) like every operation.
    pub async fn create_sr(&self, req: SrCreateRequest) -> Result<StorageRepository, Error> {
        let task = self.host.tasks.start(Operation::SrCreate, None);
        task.phase("checking the directory", 0.0);
        let result = self.create_sr_checked(req).await;
        task.finish_with_note(result.as_ref().map_err(Clone::clone).map(|sr| {
            format!(
                "created storage repository {:?} at {}{}",
                sr.name,
                sr.path.display(),
                if sr.shared { " (shared)" } else { "" }
            )
        }));
        result
    }

    async fn create_sr_checked(&self, req: SrCreateRequest) -> Result<StorageRepository, Error> {
        validate_name("storage repository", &req.name).map_err(Error::invalid)?;
        if !req.path.is_absolute() {
            return Err(Error::invalid(format!(
                "repository path {} is not absolute",
                req.path.display()
            )));
        }
        if !req.path.is_dir() {
            return Err(Error::invalid(format!(
                "repository path {} is not a directory",
                req.path.display()
            )));
        }
        let probe = req.path.join(".corral-write-test");
        std::fs::write(&probe, b"").map_err(|e| {
            Error::invalid(format!(
                "repository path {} is not writable: {e}",
                req.path.display()
            ))
        })?;
        let _ = std::fs::remove_file(&probe);
        let sr = StorageRepository {
            name: req.name.clone(),
            path: req.path,
            shared: req.shared,
            is_default: false,
            free_bytes: None,
            total_bytes: None,
        };
        self.host.add_sr(sr.clone(), Expect::Absent).await?;
        Ok(sr)
    }

    // ----- networks -----

    pub fn network(&self, name: &str) -> Result<Network, Error> {
        self.host.network(name)
    }

    pub fn list_networks(&self) -> Result<Vec<Network>, Error> {
        Ok(self.host.list_networks())
    }

    /// `network create`, recorded as a `network.create` task (with its events).
    pub async fn create_network(&self, req: NetworkCreateRequest) -> Result<Network, Error> {
        let task = self.host.tasks.start(Operation::NetworkCreate, None);
        task.phase("checking the bridge", 0.0);
        let result = self.create_network_checked(req).await;
        task.finish_with_note(result.as_ref().map_err(Clone::clone).map(|n| {
            format!(
                "created network {:?} on bridge {}",
                n.name,
                n.bridge.as_deref().unwrap_or("-")
            )
        }));
        result
    }

    async fn create_network_checked(&self, req: NetworkCreateRequest) -> Result<Network, Error> {
        validate_name("network", &req.name).map_err(Error::invalid)?;
        if req.name == network::DEFAULT_NETWORK {
            return Err(Error::conflict("the network \"default\" is built in"));
        }
        network::validate_bridge_name(&req.bridge).map_err(Error::invalid)?;
        if !network::bridge_exists(&req.bridge) {
            return Err(Error::invalid(format!(
                "bridge {:?} does not exist on this host (create it first, e.g. `ip link add {} type bridge`)",
                req.bridge, req.bridge
            )));
        }
        let net = Network {
            name: req.name.clone(),
            kind: NetworkKind::Bridge,
            bridge: Some(req.bridge),
        };
        self.host.add_network(net.clone()).await?;
        Ok(net)
    }

    // ----- host -----

    pub fn list_isos(&self) -> Vec<IsoImage> {
        corral_storage::list_isos(&self.config.iso_dir)
    }

    pub fn host_info(&self) -> Result<HostInfo, Error> {
        let cpu = crate::host::cpu_facts();
        let (memory_bytes, memory_available_bytes) = crate::host::memory();
        Ok(HostInfo {
            hostname: self.hostname.clone(),
            host_id: self.host.host_id.clone(),
            cpu_model: cpu.model,
            cpu_cores: cpu.cores,
            cpu_mhz: cpu.mhz,
            memory_bytes,
            memory_available_bytes,
            accelerator: self.accel.clone(),
            qemu_version: self.qemu_version.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            state_dir: self.host.layout.root.clone(),
            storage_repositories: self.list_srs()?,
            networks: self.list_networks()?,
            cpu_weight_support: self.cgroups.describe(),
            planner: Some(self.advisor.planner_capacity()),
            // A pool member serves HTTPS with its pool certificate, not the self-signed one.
            remote: self.config.remote.clone().map(|mut r| {
                if let Some(t) = self.pool.tls() {
                    r.cert_sha256 = t.cert_sha256.clone();
                    r.cert_path = self.host.layout.root.join("pool").join("cert.pem");
                }
                r
            }),
        })
    }
}

/// Honour `--accel`, else use a cached probe result for this QEMU and kernel, else probe.
async fn choose_accelerator(
    config: &AgentConfig,
    layout: &Layout,
    qemu_version: &str,
) -> AcceleratorInfo {
    match config.accel {
        AccelMode::Kvm => {
            return AcceleratorInfo {
                name: Accelerator::Kvm,
                reason: "forced by --accel kvm".into(),
            }
        }
        AccelMode::Tcg => {
            return AcceleratorInfo {
                name: Accelerator::Tcg,
                reason: "forced by --accel tcg".into(),
            }
        }
        AccelMode::Auto => {}
    }
    // The probe boots a real Linux kernel whenever one is available (configured, the cached
    // test guest, the host's own): a boot sector passes on hosts where Linux hangs under KVM.
    let configured = config
        .probe_kernel
        .as_ref()
        .map(|(k, i)| (k.as_path(), i.as_path()));
    let plan = corral_qemu::probe::default_probe_plan(configured);
    tracing::info!(guest = %plan.describe(), qemu = qemu_version, "probing KVM");
    corral_qemu::probe::probe_accelerator_cached(
        &layout.accel_cache(),
        &config.qemu_binary,
        &plan,
        corral_qemu::probe::DEFAULT_PROBE_TIMEOUT,
    )
    .await
}

/// Act on the actors' notices for as long as the agent lives.
fn spawn_notice_loop(
    agent: std::sync::Weak<Ops>,
    mut notices: tokio::sync::mpsc::UnboundedReceiver<Notice>,
) {
    tokio::spawn(async move {
        while let Some(notice) = notices.recv().await {
            let Some(agent) = agent.upgrade() else { break };
            match notice {
                Notice::InstallerStarted { vm_id, task } => {
                    crate::ops::install::watch_install(agent, vm_id, task)
                }
            }
        }
    });
}
