//! [`Agent`]: start-up (store, accelerator probe, re-attach, autostart) and the host-level
//! operations (create VM, repositories, networks, ISOs, host info). Per-VM operations are
//! forwarded to the VM's actor.

use crate::cgroup::CgroupSupport;
use crate::config::{AccelMode, AgentConfig, Layout};
use crate::events::EventBus;
use crate::network::{self, DEFAULT_NETWORK};
use crate::registry::Registry;
use crate::tasks::{TaskHandle, Tasks};
use crate::templates::Templates;
use crate::vm::{self, Op, VmHandle};
use corral_model::api::*;
use corral_model::event::Event;
use corral_model::host::*;
use corral_model::validate::*;
use corral_model::*;
use corral_store::{Expect, SqliteStore, Store};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

pub struct Agent {
    pub config: AgentConfig,
    pub layout: Layout,
    pub store: Arc<dyn Store>,
    pub events: Arc<EventBus>,
    pub tasks: Arc<Tasks>,
    pub host_id: String,
    pub hostname: String,
    pub accel: AcceleratorInfo,
    pub qemu_version: String,
    pub cgroups: CgroupSupport,
    pub templates: RwLock<Templates>,
    registry: RwLock<Registry>,
    /// Load statistics of the VMs (see `crate::stats`).
    pub(crate) stats: crate::stats::Stats,
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("{what}: {e}"))
}

fn store_err(e: corral_store::StoreError) -> ApiError {
    match e {
        corral_store::StoreError::Conflict { .. } => ApiError::conflict(e.to_string()),
        other => internal("state database", error_chain(&other)),
    }
}

/// `a: b: c` from an error and its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl Agent {
    /// Open the state, probe the accelerator, re-attach running guests and autostart VMs.
    pub async fn start(config: AgentConfig) -> Result<Arc<Agent>, ApiError> {
        let layout = Layout {
            root: config.state_dir.clone(),
        };
        for dir in [
            layout.root.clone(),
            layout.default_sr(),
            layout.templates(),
            layout.root.join("run"),
        ] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| internal(&format!("cannot create {}", dir.display()), e))?;
        }
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&layout.db())
                .map_err(|e| internal("cannot open state", error_chain(&e)))?,
        );
        let interrupted_imports = crate::transfer::clean_staging(&layout.staging());
        let events = Arc::new(EventBus::default());
        let tasks = Tasks::new(store.clone(), events.clone());
        tasks.recover();

        let host_id = match store.get("host/id").map_err(store_err)? {
            Some(v) => String::from_utf8_lossy(&v.value).into_owned(),
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                store
                    .put("host/id", id.as_bytes(), Expect::Any)
                    .map_err(store_err)?;
                id
            }
        };
        let qemu_version = corral_qemu::process::qemu_version(&config.qemu_binary)
            .await
            .map_err(|e| internal("cannot run QEMU", error_chain(&e)))?
            .to_string();
        let accel = choose_accelerator(&config, &layout, &qemu_version).await;
        tracing::info!(accelerator = accel.name.as_str(), reason = %accel.reason, "accelerator chosen");
        let cgroups = CgroupSupport::detect();
        tracing::info!(cpu_weight = %cgroups.describe(), "cpu weight support");
        let templates =
            Templates::load(&layout.templates()).map_err(|e| e.context("cannot load templates"))?;

        let store_for_stats = store.clone();
        let agent = Arc::new(Agent {
            hostname: crate::host::hostname(),
            config,
            layout,
            store,
            events,
            tasks,
            host_id,
            accel,
            qemu_version,
            cgroups,
            templates: RwLock::new(templates),
            registry: RwLock::new(Registry::default()),
            stats: crate::stats::Stats::load(store_for_stats.as_ref()),
        });
        agent.ensure_default_sr()?;
        agent.load_vms().await?;
        agent.remove_interrupted_import_volumes(&interrupted_imports);
        agent.resume_installs();
        crate::clone::gc_bases(agent.clone()).await;
        if agent.config.autostart {
            agent.autostart().await;
        }
        crate::stats::spawn_sampler(&agent);
        Ok(agent)
    }

    fn ensure_default_sr(&self) -> Result<(), ApiError> {
        if self.store.get("srs/default").map_err(store_err)?.is_none() {
            let sr = StorageRepository {
                name: "default".into(),
                path: self.layout.default_sr(),
                shared: false,
                is_default: true,
                free_bytes: None,
                total_bytes: None,
            };
            self.put_json("srs/default", &sr, Expect::Any)?;
        }
        Ok(())
    }

    async fn load_vms(self: &Arc<Self>) -> Result<(), ApiError> {
        let records = self.store.list("vms/").map_err(store_err)?;
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
            let was = rec.power_state;
            let name = rec.spec.name.clone();
            let handle = vm::actor::spawn(self.clone(), rec, v.mod_revision).await;
            let now = handle.info().power_state;
            match (was, now) {
                (PowerState::Running | PowerState::Paused, PowerState::Halted) => {
                    died.push(name.clone())
                }
                (_, PowerState::Running | PowerState::Paused) => reattached.push(name.clone()),
                _ => {}
            }
            self.registry_mut().insert(&name, handle);
        }
        let mut note = format!("agent started (accelerator {})", self.accel.name.as_str());
        if !reattached.is_empty() {
            note.push_str(&format!("; re-attached {}", reattached.join(", ")));
        }
        if !died.is_empty() {
            note.push_str(&format!(
                "; found halted while the agent was down: {}",
                died.join(", ")
            ));
        }
        self.tasks.record("agent.start", None, Ok(note));
        Ok(())
    }

    async fn autostart(self: &Arc<Self>) {
        let handles: Vec<VmHandle> = self.registry().by_id.values().cloned().collect();
        for h in handles {
            let info = h.info();
            if info.autostart && !info.is_template && info.power_state == PowerState::Halted {
                let task = self
                    .tasks
                    .start("vm.autostart", Some((&info.id, &info.name)));
                if let Err(e) = h
                    .call(Op::Action(VmAction::Start, ActionRequest::default()), task)
                    .await
                {
                    tracing::warn!(vm = %info.name, error = %e, "autostart failed");
                }
            }
        }
    }

    pub(crate) fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }
    pub(crate) fn registry_mut(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn put_json<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
        expect: Expect,
    ) -> Result<u64, ApiError> {
        let bytes = serde_json::to_vec(value).map_err(|e| internal("cannot encode record", e))?;
        self.store.put(key, &bytes, expect).map_err(store_err)
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, ApiError> {
        match self.store.get(key).map_err(store_err)? {
            Some(v) => serde_json::from_slice(&v.value)
                .map(Some)
                .map_err(|e| internal(&format!("corrupt record {key}"), e)),
            None => Ok(None),
        }
    }

    // ----- VMs -----

    pub fn vm(&self, name: &str) -> Result<VmHandle, ApiError> {
        self.registry()
            .find(name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no VM named {name:?}")))
    }

    pub fn list_vms(&self) -> Vec<VmInfo> {
        let mut out: Vec<VmInfo> = self.registry().by_id.values().map(|h| h.info()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Run an operation on a VM as a task and wait for it.
    pub async fn vm_op(
        &self,
        name: &str,
        operation: &str,
        op: Op,
    ) -> Result<(VmInfo, String), ApiError> {
        let h = self.vm(name)?;
        let info = h.info();
        let task = self.tasks.start(operation, Some((&info.id, &info.name)));
        let id = task.id.clone();
        h.call(op, task).await?;
        Ok((h.info(), id))
    }

    /// Start an operation on a VM as a task without waiting; returns the task id.
    pub fn vm_op_nowait(&self, name: &str, operation: &str, op: Op) -> Result<String, ApiError> {
        let h = self.vm(name)?;
        let info = h.info();
        let task = self.tasks.start(operation, Some((&info.id, &info.name)));
        let id = task.id.clone();
        tokio::spawn(async move {
            let _ = h.call(op, task).await;
        });
        Ok(id)
    }

    pub fn history(&self, name: &str) -> Result<Vec<corral_model::task::Task>, ApiError> {
        let id = match self.vm(name) {
            Ok(h) => h.id.clone(),
            Err(e) => {
                // History of a deleted VM is still reachable by its id.
                if self
                    .tasks
                    .list()
                    .iter()
                    .any(|t| t.vm_id.as_deref() == Some(name))
                {
                    name.to_string()
                } else {
                    return Err(e);
                }
            }
        };
        Ok(self
            .tasks
            .list()
            .into_iter()
            .filter(|t| t.vm_id.as_deref() == Some(&id))
            .collect())
    }

    pub async fn create_vm(
        self: &Arc<Self>,
        req: VmCreateRequest,
    ) -> Result<(VmInfo, String), ApiError> {
        validate_name("VM", &req.name).map_err(ApiError::invalid)?;
        if let Some(t) = &req.template {
            // A template VM (rather than an OS template) gives clones of its disks.
            if self
                .registry()
                .find(t)
                .is_some_and(|h| h.info().is_template)
            {
                return self.create_from_template_vm(req).await;
            }
        }
        let task = self.tasks.start("vm.create", None);
        let task_id = task.id.clone();
        self.registry_mut()
            .reserve(&req.name)
            .inspect_err(|e| task.fail(e))?;
        let result = self.create_vm_reserved(&req, &task).await;
        if result.is_err() {
            self.registry_mut().release(&req.name);
        }
        task.complete(&result);
        let handle = result?;
        if req.start {
            let info = handle.info();
            let t = self.tasks.start("vm.start", Some((&info.id, &info.name)));
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
    ) -> Result<VmHandle, ApiError> {
        let id = uuid::Uuid::new_v4().to_string();
        task.set_vm(&id, &req.name);
        task.phase("validating", 0.1);
        let spec = self.spec_from_request(&id, req)?;
        let sources: Vec<Option<PathBuf>> = req
            .disks
            .iter()
            .flatten()
            .map(|d| d.import_from.clone())
            .collect();
        self.materialize_vm(id, spec, sources, task).await
    }

    /// Create the volumes of a validated spec (`sources[i]`: image to copy into disk i), store
    /// the record and start the VM's actor. The name must be reserved; on error every volume
    /// created here is removed again.
    pub(crate) async fn materialize_vm(
        self: &Arc<Self>,
        id: String,
        mut spec: VmSpec,
        sources: Vec<Option<PathBuf>>,
        task: &TaskHandle,
    ) -> Result<VmHandle, ApiError> {
        task.phase("creating disks", 0.3);
        let mut created: Vec<PathBuf> = Vec::new();
        for (i, disk) in spec.disks.iter_mut().enumerate() {
            if let Some(phase) = sources.get(i).and_then(|s| s.as_ref()) {
                task.phase(&format!("importing {}", phase.display()), 0.3);
            }
            if let Err(e) = create_disk_volume(disk, sources.get(i).cloned().flatten()).await {
                for p in &created {
                    let _ = corral_storage::remove_volume(p).await;
                }
                return Err(e);
            }
            created.push(disk.path.clone());
        }
        match self.add_vm(id, spec).await {
            Ok(handle) => Ok(handle),
            Err(e) => {
                for p in &created {
                    let _ = corral_storage::remove_volume(p).await;
                }
                Err(e)
            }
        }
    }

    /// Record a new, halted VM on this host (its volumes exist), start its actor and
    /// announce it. The name must be reserved by the caller.
    pub(crate) async fn add_vm(
        self: &Arc<Self>,
        id: String,
        spec: VmSpec,
    ) -> Result<VmHandle, ApiError> {
        let rec = VmRecord {
            id: id.clone(),
            host: self.host_id.clone(),
            spec,
            power_state: PowerState::Halted,
            created_at_ms: crate::now_ms(),
        };
        let rev = self.put_json(&format!("vms/{id}"), &rec, Expect::Absent)?;
        let name = rec.spec.name.clone();
        let handle = vm::actor::spawn(self.clone(), rec, rev).await;
        self.registry_mut().insert(&name, handle.clone());
        self.events.publish(Event::VmCreated { vm: name, id });
        Ok(handle)
    }

    /// Turn a create request into a full spec: template defaults, then the request, then
    /// every check that needs host facts. Nothing is written here.
    pub(crate) fn spec_from_request(
        &self,
        id: &str,
        req: &VmCreateRequest,
    ) -> Result<VmSpec, ApiError> {
        let mut req = req.clone();
        if let Some(name) = req.template.clone() {
            let templates = self.templates_read();
            let tpl = templates.get(&name)?;
            tpl.apply_to_request(&mut req, DEFAULT_NETWORK)
                .map_err(|problems| ApiError::invalid(problems.join("; ")))?;
        }
        // Without a template: 1 vCPU, 1 GiB, no disks, one virtio NIC on the default network.
        let vcpus = req.vcpus.unwrap_or(1);
        validate_vcpus(vcpus).map_err(ApiError::invalid)?;
        let memory_bytes = req.memory_bytes.unwrap_or(1 << 30);
        self.validate_memory_on_host(memory_bytes)?;
        let cpu_weight = req.cpu_weight.unwrap_or(CPU_WEIGHT_NORMAL);
        validate_cpu_weight(cpu_weight).map_err(ApiError::invalid)?;

        let disk_reqs = req.disks.clone().unwrap_or_default();
        if disk_reqs.len() > MAX_DISKS {
            return Err(ApiError::invalid(format!(
                "{} disks is more than the maximum of {MAX_DISKS}",
                disk_reqs.len()
            )));
        }
        let mut disks = Vec::new();
        for (i, d) in disk_reqs.iter().enumerate() {
            let device = format!("disk{i}");
            disks.push(self.disk_from_request(id, &device, d, DiskBus::Virtio)?);
        }

        let nic_reqs = req.nics.clone().unwrap_or_else(|| {
            vec![NicRequest {
                network: DEFAULT_NETWORK.into(),
                ..Default::default()
            }]
        });
        if nic_reqs.len() > MAX_NICS {
            return Err(ApiError::invalid(format!(
                "{} NICs is more than the maximum of {MAX_NICS}",
                nic_reqs.len()
            )));
        }
        let mut nics = Vec::new();
        for (i, n) in nic_reqs.iter().enumerate() {
            nics.push(self.nic_from_request(&format!("nic{i}"), n, NicModel::Virtio)?);
        }

        // CD drives are never virtio; an IDE-disk guest gets an IDE drive too.
        let cdrom_bus = if disks.iter().any(|d| d.bus == DiskBus::Ide) {
            DiskBus::Ide
        } else {
            DiskBus::Sata
        };
        let media = match &req.cdrom {
            Some(p) => Some(self.check_iso_path(p)?),
            None => None,
        };
        let cdroms = vec![Cdrom {
            device: "cdrom0".into(),
            bus: cdrom_bus,
            media,
        }];

        let kernel_boot = match &req.kernel {
            Some(k) => Some(KernelBoot {
                kernel: check_file("kernel", k)?,
                initrd: req
                    .initrd
                    .as_deref()
                    .map(|p| check_file("initrd", p))
                    .transpose()?,
                cmdline: req.cmdline.clone().unwrap_or_default(),
            }),
            None if req.initrd.is_some() || req.cmdline.is_some() => {
                return Err(ApiError::invalid("--initrd and --cmdline need --kernel"))
            }
            None => None,
        };
        let boot_device = req.boot_device.unwrap_or(
            if req.cdrom.is_some() && req.disks.as_ref().is_none_or(|d| !d.is_empty()) {
                // A fresh VM with install media boots from it first.
                BootDevice::Cdrom
            } else {
                BootDevice::Disk
            },
        );

        let spec = VmSpec {
            name: req.name.clone(),
            description: req.description.clone().unwrap_or_default(),
            vcpus,
            memory_bytes,
            autostart: req.autostart.unwrap_or(false),
            cpu_weight,
            firmware: req.firmware.unwrap_or_default(),
            disks,
            cdroms,
            nics,
            kernel_boot,
            boot_device,
            template: req.template.clone(),
            is_template: false,
            install: None,
            tpm: req.tpm.unwrap_or(false),
        };
        Ok(spec)
    }

    pub(crate) fn templates_read(&self) -> std::sync::RwLockReadGuard<'_, Templates> {
        self.templates.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn validate_memory_on_host(&self, bytes: u64) -> Result<(), ApiError> {
        validate_memory(bytes).map_err(ApiError::invalid)?;
        let (total, _) = crate::host::memory();
        if total > 0 && bytes > total {
            return Err(ApiError::invalid(format!(
                "memory {} is more than this host has ({})",
                format_size(bytes),
                format_size(total)
            )));
        }
        Ok(())
    }

    pub(crate) fn disk_from_request(
        &self,
        vm_id: &str,
        device: &str,
        d: &DiskRequest,
        default_bus: DiskBus,
    ) -> Result<Disk, ApiError> {
        match &d.import_from {
            // Size 0 with an image means "the image's size".
            Some(src) => {
                check_file("disk image", src)?;
                if d.size_bytes != 0 {
                    validate_disk_size(d.size_bytes).map_err(ApiError::invalid)?;
                }
            }
            None => validate_disk_size(d.size_bytes).map_err(ApiError::invalid)?,
        }
        let sr_name = d.sr.clone().unwrap_or_else(|| "default".into());
        let sr = self.sr(&sr_name)?;
        let format = d.format.unwrap_or_default();
        Ok(Disk {
            device: device.to_string(),
            size_bytes: d.size_bytes,
            format,
            bus: d.bus.unwrap_or(default_bus),
            path: sr
                .path
                .join(corral_storage::volume_file_name(vm_id, device, format)),
            sr: sr_name,
        })
    }

    pub(crate) fn nic_from_request(
        &self,
        device: &str,
        n: &NicRequest,
        default_model: NicModel,
    ) -> Result<Nic, ApiError> {
        self.network(&n.network)?;
        let mac = match &n.mac {
            Some(m) => {
                validate_mac(m).map_err(ApiError::invalid)?;
                m.to_ascii_lowercase()
            }
            None => random_mac(),
        };
        Ok(Nic {
            device: device.to_string(),
            network: n.network.clone(),
            model: n.model.unwrap_or(default_model),
            mac,
        })
    }

    /// ISO media may be given as a path or as a name in the ISO library.
    pub(crate) fn check_iso_path(&self, p: &Path) -> Result<PathBuf, ApiError> {
        let path = if p.is_absolute() {
            p.to_path_buf()
        } else {
            let in_library = self.config.iso_dir.join(p);
            if in_library.exists() {
                in_library
            } else {
                return Err(ApiError::invalid(format!(
                    "ISO {} is not an absolute path nor in the ISO library ({})",
                    p.display(),
                    self.config.iso_dir.display()
                )));
            }
        };
        if !path.exists() {
            return Err(ApiError::invalid(format!(
                "ISO {} does not exist",
                path.display()
            )));
        }
        corral_storage::check_iso(&path).map_err(ApiError::invalid)?;
        Ok(path)
    }

    // ----- storage repositories -----

    pub fn sr(&self, name: &str) -> Result<StorageRepository, ApiError> {
        self.get_json::<StorageRepository>(&format!("srs/{name}"))?
            .ok_or_else(|| ApiError::invalid(format!("no storage repository named {name:?}")))
    }

    pub fn list_srs(&self) -> Result<Vec<StorageRepository>, ApiError> {
        let mut out = Vec::new();
        for (_, v) in self.store.list("srs/").map_err(store_err)? {
            let mut sr: StorageRepository = serde_json::from_slice(&v.value)
                .map_err(|e| internal("corrupt repository record", e))?;
            if let Some((free, total)) = corral_storage::fs_space(&sr.path) {
                sr.free_bytes = Some(free);
                sr.total_bytes = Some(total);
            }
            out.push(sr);
        }
        Ok(out)
    }

    /// `sr create`, recorded as an `sr.create` task (with its events) like every operation.
    pub fn create_sr(&self, req: SrCreateRequest) -> Result<StorageRepository, ApiError> {
        let task = self.tasks.start("sr.create", None);
        task.phase("checking the directory", 0.0);
        let result = self.create_sr_checked(req);
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

    fn create_sr_checked(&self, req: SrCreateRequest) -> Result<StorageRepository, ApiError> {
        validate_name("storage repository", &req.name).map_err(ApiError::invalid)?;
        if !req.path.is_absolute() {
            return Err(ApiError::invalid(format!(
                "repository path {} is not absolute",
                req.path.display()
            )));
        }
        if !req.path.is_dir() {
            return Err(ApiError::invalid(format!(
                "repository path {} is not a directory",
                req.path.display()
            )));
        }
        let probe = req.path.join(".corral-write-test");
        std::fs::write(&probe, b"").map_err(|e| {
            ApiError::invalid(format!(
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
        self.put_json(&format!("srs/{}", req.name), &sr, Expect::Absent)
            .map_err(|e| {
                if e.kind == ErrorKind::Conflict {
                    ApiError::conflict(format!(
                        "a storage repository named {:?} already exists",
                        req.name
                    ))
                } else {
                    e
                }
            })?;
        Ok(sr)
    }

    // ----- networks -----

    pub fn network(&self, name: &str) -> Result<Network, ApiError> {
        if name == DEFAULT_NETWORK {
            return Ok(network::default_network());
        }
        self.get_json::<Network>(&format!("networks/{name}"))?
            .ok_or_else(|| ApiError::invalid(format!("no network named {name:?}")))
    }

    pub fn list_networks(&self) -> Result<Vec<Network>, ApiError> {
        let mut out = vec![network::default_network()];
        for (_, v) in self.store.list("networks/").map_err(store_err)? {
            out.push(
                serde_json::from_slice(&v.value)
                    .map_err(|e| internal("corrupt network record", e))?,
            );
        }
        Ok(out)
    }

    /// `network create`, recorded as a `network.create` task (with its events).
    pub fn create_network(&self, req: NetworkCreateRequest) -> Result<Network, ApiError> {
        let task = self.tasks.start("network.create", None);
        task.phase("checking the bridge", 0.0);
        let result = self.create_network_checked(req);
        task.finish_with_note(result.as_ref().map_err(Clone::clone).map(|n| {
            format!(
                "created network {:?} on bridge {}",
                n.name,
                n.bridge.as_deref().unwrap_or("-")
            )
        }));
        result
    }

    fn create_network_checked(&self, req: NetworkCreateRequest) -> Result<Network, ApiError> {
        validate_name("network", &req.name).map_err(ApiError::invalid)?;
        if req.name == DEFAULT_NETWORK {
            return Err(ApiError::conflict("the network \"default\" is built in"));
        }
        network::validate_bridge_name(&req.bridge).map_err(ApiError::invalid)?;
        if !network::bridge_exists(&req.bridge) {
            return Err(ApiError::invalid(format!(
                "bridge {:?} does not exist on this host (create it first, e.g. `ip link add {} type bridge`)",
                req.bridge, req.bridge
            )));
        }
        let net = Network {
            name: req.name.clone(),
            kind: NetworkKind::Bridge,
            bridge: Some(req.bridge),
        };
        self.put_json(&format!("networks/{}", req.name), &net, Expect::Absent)
            .map_err(|e| {
                if e.kind == ErrorKind::Conflict {
                    ApiError::conflict(format!("a network named {:?} already exists", req.name))
                } else {
                    e
                }
            })?;
        Ok(net)
    }

    // ----- host -----

    pub fn list_isos(&self) -> Vec<IsoImage> {
        corral_storage::list_isos(&self.config.iso_dir)
    }

    pub fn host_info(&self) -> Result<HostInfo, ApiError> {
        let cpu = crate::host::cpu_facts();
        let (memory_bytes, memory_available_bytes) = crate::host::memory();
        Ok(HostInfo {
            hostname: self.hostname.clone(),
            host_id: self.host_id.clone(),
            cpu_model: cpu.model,
            cpu_cores: cpu.cores,
            cpu_mhz: cpu.mhz,
            memory_bytes,
            memory_available_bytes,
            accelerator: self.accel.clone(),
            qemu_version: self.qemu_version.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            state_dir: self.layout.root.clone(),
            storage_repositories: self.list_srs()?,
            networks: self.list_networks()?,
            cpu_weight_support: self.cgroups.describe(),
            planner: Some(self.planner_capacity()),
            remote: self.config.remote.clone(),
        })
    }
}

/// Create the volume of a new disk, empty or as a copy of `source`; records the final size.
pub(crate) async fn create_disk_volume(
    disk: &mut Disk,
    source: Option<PathBuf>,
) -> Result<(), ApiError> {
    let what = |e: corral_storage::VolumeError| {
        internal(
            &format!("cannot create disk {}", disk.device),
            error_chain(&e),
        )
    };
    match source {
        Some(src) => {
            let size =
                corral_storage::import_volume(&src, &disk.path, disk.format, disk.size_bytes)
                    .await
                    .map_err(|e| {
                        ApiError::invalid(format!(
                            "cannot import {} as disk {}: {}",
                            src.display(),
                            disk.device,
                            error_chain(&e)
                        ))
                    })?;
            disk.size_bytes = size;
            Ok(())
        }
        None => corral_storage::create_volume(&disk.path, disk.format, disk.size_bytes, None)
            .await
            .map_err(what),
    }
}

fn check_file(what: &str, p: &Path) -> Result<PathBuf, ApiError> {
    if !p.is_absolute() {
        return Err(ApiError::invalid(format!(
            "{what} path {} is not absolute",
            p.display()
        )));
    }
    if !p.is_file() {
        return Err(ApiError::invalid(format!(
            "{what} {} does not exist",
            p.display()
        )));
    }
    Ok(p.to_path_buf())
}

/// A random locally administered unicast MAC in QEMU's 52:54:00 range.
pub fn random_mac() -> String {
    let b = uuid::Uuid::new_v4().into_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
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
