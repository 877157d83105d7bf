//! The target side of a live migration: checks that this host can receive the VM, starts
//! its QEMU with `-incoming defer` and the same devices, listens for the migration stream
//! (and, with storage, serves the new volumes over NBD for the source's mirror), and then
//! either hands the running guest over to an ordinary VM actor (commit) or removes every
//! trace of it (abort).
//!
//! The rule that keeps one copy of the guest: the target never keeps a guest the source has
//! not committed. An incoming migration whose source stops sending heartbeats for
//! [`HEARTBEAT_TIMEOUT`], or whose QEMU exits, is aborted here. A committed one waits for the
//! source's compare-and-swap of the VM's owner; the pool's view then adopts the VM and its
//! actor re-attaches to the QEMU started here. A marker file in the VM's run directory
//! (`incoming.json`) carries the same facts across an agent restart
//! ([`Incoming::recover`]).

use super::*;
use corral_model::migrate::*;

/// An incoming migration without a heartbeat from its source for this long is aborted.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
const MARKER: &str = "incoming.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Marker {
    migration_id: String,
    vm_id: String,
    vm_name: String,
    source_host_id: String,
    pid: u32,
    /// Volumes created here for a migration with storage (removed on abort).
    volumes: Vec<PathBuf>,
    committed: bool,
}

struct Entry {
    marker: Mutex<Marker>,
    state: Mutex<IncomingState>,
    last_beat: Mutex<Instant>,
    /// The QMP session until commit (then the VM's actor takes QEMU's only monitor).
    qmp: tokio::sync::Mutex<Option<Qmp>>,
    taps: Vec<String>,
    storage: bool,
}

pub struct Incoming {
    host: Arc<Host>,
    runtime: Arc<QemuRuntime>,
    pool: Arc<Pool>,
    /// The memory this host offers its VMs when configured (`--capacity-memory-gib`).
    capacity_memory: Option<u64>,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Incoming {
    pub fn new(
        host: Arc<Host>,
        runtime: Arc<QemuRuntime>,
        pool: Arc<Pool>,
        capacity_memory: Option<u64>,
    ) -> Arc<Self> {
        Arc::new(Incoming {
            host,
            runtime,
            pool,
            capacity_memory,
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// The pre-checks this host answers for (see `docs/migration.md`).
    pub async fn checks(&self, req: &IncomingRequest) -> Vec<PreCheck> {
        let mut checks = Vec::new();
        let spec = &req.record.spec;
        let here = self.host.host_name.clone();
        // Memory: what this host's running VMs have committed plus this one must fit in its
        // capacity, and the kernel must have it available now.
        let (total, available) = crate::host::memory();
        let capacity = self.capacity_memory.unwrap_or(total);
        let committed: u64 = self
            .host
            .list_vms()
            .iter()
            .filter(|v| v.power_state != PowerState::Halted)
            .map(|v| v.memory_bytes)
            .sum();
        let need = spec.memory_bytes;
        checks.push(memory_check(&here, need, committed, capacity, available));
        // Same QEMU: the machine type and the CPU model must mean the same devices here.
        let here_qemu = match self.runtime.qemu_facts().await {
            Ok((version, machine)) => SourceQemu {
                version,
                machine,
                accel: self.runtime.accel_name().to_string(),
                cpu: self.runtime.cpu_model().to_string(),
            },
            Err(e) => SourceQemu {
                version: format!("unknown ({})", e.message),
                machine: String::new(),
                accel: self.runtime.accel_name().to_string(),
                cpu: self.runtime.cpu_model().to_string(),
            },
        };
        checks.extend(qemu_checks(&here, &req.source, &here_qemu));
        let mut add = |name: &str, ok: bool, detail: String| {
            checks.push(PreCheck {
                name: name.into(),
                ok,
                detail,
            })
        };
        let missing: Vec<String> = spec
            .nics
            .iter()
            .filter(|n| self.host.network(&n.network).is_err())
            .map(|n| format!("{} (network {})", n.device, n.network))
            .collect();
        add(
            "networks",
            missing.is_empty(),
            if missing.is_empty() {
                "every NIC's network exists here".into()
            } else {
                format!("host {here} has no network for {}", missing.join(", "))
            },
        );
        if req.postcopy && self.runtime.confined() {
            // Post-copy makes the target QEMU handle page faults with userfaultfd. QEMU 7.2
            // only knows the system call, which an unprivileged process may use for faults in
            // the kernel only when the host allows it (QEMU 8.1 and later can be handed
            // /dev/userfaultfd instead).
            let allowed = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
                .is_ok_and(|v| v.trim() == "1");
            add(
                "postcopy",
                allowed,
                if allowed {
                    "the confined QEMU may use userfaultfd (vm.unprivileged_userfaultfd=1)".into()
                } else {
                    format!("host {here} runs QEMU unprivileged and vm.unprivileged_userfaultfd is 0, so post-copy cannot work there (set it to 1 with sysctl, or migrate without --postcopy)")
                },
            );
        }
        if req.with_storage {
            let sr_name = req.target_sr.clone().unwrap_or_else(|| "default".into());
            match self.host.sr(&sr_name) {
                Ok(sr) => {
                    let need: u64 = spec.disks.iter().map(|d| d.size_bytes).sum();
                    let free = corral_storage::fs_space(&sr.path)
                        .map(|(f, _)| f)
                        .unwrap_or(0);
                    // Mirrored volumes are sparse; refuse only when not even a tenth fits.
                    let ok = free >= need / 10;
                    add(
                        "storage",
                        ok,
                        format!(
                            "disks mirrored to repository {sr_name} ({} free for {} of virtual disks)",
                            corral_model::format_size(free),
                            corral_model::format_size(need)
                        ),
                    );
                }
                Err(e) => add("storage", false, e.message),
            }
        } else {
            let unseen: Vec<String> = spec
                .disks
                .iter()
                .filter(|d| {
                    !self.host.sr(&d.sr).map(|s| s.shared).unwrap_or(false) || !d.path.exists()
                })
                .map(|d| format!("{} ({})", d.device, d.path.display()))
                .collect();
            add(
                "storage",
                unseen.is_empty(),
                if unseen.is_empty() {
                    "every disk is on a shared repository this host sees".into()
                } else {
                    format!(
                        "host {here} cannot see disks {}: use --with-storage to mirror them",
                        unseen.join(", ")
                    )
                },
            );
        }
        let busy = self.host.registry().by_id.contains_key(&req.record.id)
            || self.host.layout.run_dir(&req.record.id).exists();
        add(
            "vm",
            !busy,
            if busy {
                format!(
                    "host {here} already has VM {:?} or a migration of it",
                    spec.name
                )
            } else {
                "not already on this host".into()
            },
        );
        checks
    }

    /// Get ready to receive: see the module documentation. Runs to its end in a task of
    /// its own even when the source hangs up meanwhile (a cancel during set-up): a half-made
    /// incoming migration must reach the point where its watchdog can remove it.
    pub async fn prepare(self: &Arc<Self>, req: IncomingRequest) -> Result<IncomingAnswer, Error> {
        let this = self.clone();
        tokio::spawn(async move { this.prepare_here(req).await })
            .await
            .unwrap_or_else(|e| Err(Error::internal(format!("the set-up task failed: {e}"))))
    }

    async fn prepare_here(self: &Arc<Self>, req: IncomingRequest) -> Result<IncomingAnswer, Error> {
        let checks = self.checks(&req).await;
        if req.check || checks.iter().any(|c| !c.ok) {
            return Ok(IncomingAnswer::checks_only(checks));
        }
        let listen_host = self.listen_host()?;
        let mut rec = req.record.clone();
        rec.host = self.host.host_id.clone();
        let run_dir = self.host.layout.run_dir(&rec.id);
        std::fs::create_dir_all(&run_dir).map_err(|e| {
            Error::caused(ErrorKind::Internal, "cannot create the run directory", e)
        })?;
        let mut marker = Marker {
            migration_id: req.migration_id.clone(),
            vm_id: rec.id.clone(),
            vm_name: rec.spec.name.clone(),
            source_host_id: req.source_host_id.clone(),
            pid: 0,
            volumes: Vec::new(),
            committed: false,
        };
        let started = self
            .start_receiving(&req, &mut rec, &mut marker, &listen_host)
            .await;
        match started {
            Ok((run, answer)) => {
                let entry = Arc::new(Entry {
                    marker: Mutex::new(marker),
                    state: Mutex::new(IncomingState::Receiving),
                    last_beat: Mutex::new(Instant::now()),
                    qmp: tokio::sync::Mutex::new(Some(run.qmp)),
                    taps: run.taps,
                    storage: req.with_storage,
                });
                lock(&self.entries).insert(req.migration_id.clone(), entry.clone());
                tokio::spawn(self.clone().supervise(req.migration_id.clone(), entry));
                tracing::info!(vm = %rec.spec.name, migration = %req.migration_id, "receiving a live migration");
                Ok(IncomingAnswer { checks, ..answer })
            }
            Err(e) => {
                self.remove_traces(&marker, &[]).await;
                Err(e)
            }
        }
    }

    /// Host part of this member's published address: where QEMU listens.
    fn listen_host(&self) -> Result<String, Error> {
        let address = self.pool.address_of(&self.host.host_id)?;
        let authority = crate::pool::peer::authority(&address).map_err(Error::internal)?;
        let host = match authority.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
            None => authority,
        };
        Ok(host)
    }

    async fn start_receiving(
        &self,
        req: &IncomingRequest,
        rec: &mut VmRecord,
        marker: &mut Marker,
        listen_host: &str,
    ) -> Result<(crate::vm::runtime::Running, IncomingAnswer), Error> {
        let mut volumes = Vec::new();
        if req.with_storage {
            let sr_name = req.target_sr.clone().unwrap_or_else(|| "default".into());
            let sr = self.host.sr(&sr_name)?;
            for d in &mut rec.spec.disks {
                let path = sr.path.join(corral_storage::volume_file_name(
                    &rec.id, &d.device, d.format,
                ));
                corral_storage::create_volume(&path, d.format, d.size_bytes, None)
                    .await
                    .map_err(|e| {
                        Error::caused(
                            ErrorKind::Internal,
                            format!("cannot create the volume for {}", d.device),
                            e,
                        )
                    })?;
                marker.volumes.push(path.clone());
                d.path = path.clone();
                d.sr = sr_name.clone();
                volumes.push((d.device.clone(), path));
            }
        }
        if let Some(hex) = &req.nvram_hex {
            let bytes = crate::pool::pki::unhex(hex)
                .ok_or_else(|| Error::invalid("the UEFI variable store is not hex"))?;
            let path = self.host.layout.nvram(&rec.id);
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            std::fs::write(&path, bytes).map_err(|e| {
                Error::caused(
                    ErrorKind::Internal,
                    "cannot write the UEFI variable store",
                    e,
                )
            })?;
        }
        self.write_marker(marker);
        let run = crate::vm::runtime::launch_incoming(&self.runtime, rec).await?;
        marker.pid = run.pid;
        self.write_marker(marker);
        let qmp = run.qmp.clone();
        let setup = async {
            let q = |cmd: &'static str, args: serde_json::Value| {
                let qmp = qmp.clone();
                async move {
                    qmp.execute(cmd, args).await.map_err(|e| {
                        Error::caused(e.kind(), format!("target QEMU refused {cmd}"), e)
                    })
                }
            };
            if req.tls {
                let dir = write_tls_dir(&self.host.layout.run_dir(&rec.id), &self.pool, true)?;
                q("object-add", tls_object(&dir, "server")).await?;
            }
            q(
                "migrate-set-capabilities",
                corral_qemu::migration::capabilities(req.postcopy, false),
            )
            .await?;
            q(
                "migrate-set-parameters",
                json!({ "tls-creds": if req.tls { TLS_ID } else { "" } }),
            )
            .await?;
            let mut nbd_port = None;
            if req.with_storage && !req.tls {
                // `--insecure-stream`: the user trusts the network with the memory stream, so
                // the disks cross it plain too, straight to this QEMU (one hop fewer, no
                // encryption; see `nbd_proxy`). QEMU 7.2 cannot say which port it bound, so
                // the port is one that was free a moment ago.
                let port = std::net::TcpListener::bind((listen_host, 0))
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
                    .map_err(|e| {
                        Error::caused(
                            ErrorKind::Internal,
                            format!("no free TCP port on {listen_host} for the disk export"),
                            e,
                        )
                    })?;
                q(
                    "nbd-server-start",
                    json!({ "addr": { "type": "inet",
                                      "data": { "host": listen_host, "port": port.to_string() } } }),
                )
                .await?;
                nbd_port = Some(port);
            } else if req.with_storage {
                // On a unix socket only this agent reaches: the source's QEMU comes in through
                // the members' mutual TLS and the two agents (`nbd_stream`), never with
                // QEMU's own NBD TLS, whose client can deadlock QEMU 7.2 (see `nbd_proxy`).
                let run_dir = self.host.layout.run_dir(&rec.id);
                let socket = nbd_socket(&run_dir);
                // A directory the confined QEMU may create its socket in.
                let dir = socket.parent().unwrap_or(&run_dir).to_path_buf();
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).map_err(|e| {
                    Error::caused(
                        ErrorKind::Internal,
                        format!("cannot create {}", dir.display()),
                        e,
                    )
                })?;
                if let Some(uid) = crate::confine::granted_uid(&run_dir) {
                    use crate::confine::{R, W, X};
                    crate::confine::grant(&run_dir, uid, &[(dir, R | W | X)])?;
                }
                q(
                    "nbd-server-start",
                    json!({ "addr": { "type": "unix", "data": { "path": socket } } }),
                )
                .await?;
            }
            if req.with_storage {
                for d in &rec.spec.disks {
                    q(
                        "block-export-add",
                        json!({ "type": "nbd", "id": format!("mig-{}", d.device),
                                "node-name": corral_qemu::argv::ids::disk_format_node(&d.device),
                                "name": d.device, "writable": true }),
                    )
                    .await?;
                }
            }
            q(
                "migrate-incoming",
                json!({ "uri": format!("tcp:{}:0", uri_host(listen_host)) }),
            )
            .await?;
            let info = q("query-migrate", json!({})).await?;
            let port = corral_qemu::migration::MigrationInfo::parse(&info)
                .ok()
                .and_then(|i| i.listening_port())
                .ok_or_else(|| Error::internal("the target QEMU did not say where it listens"))?;
            Ok::<_, Error>(IncomingAnswer {
                checks: Vec::new(),
                host: Some(listen_host.to_string()),
                migration_port: Some(port),
                nbd: req.with_storage,
                nbd_port,
                volumes: volumes.clone(),
                tls_hostname: Some(crate::pool::pki::member_server_name(&self.host.host_id)),
            })
        }
        .await;
        match setup {
            Ok(answer) => Ok((run, answer)),
            Err(e) => {
                crate::vm::runtime::kill_pid(run.pid);
                Err(e)
            }
        }
    }

    fn write_marker(&self, m: &Marker) {
        let path = self.host.layout.run_dir(&m.vm_id).join(MARKER);
        if let Ok(bytes) = serde_json::to_vec_pretty(m) {
            let _ = crate::files::write_private(&path, &bytes, 0o600);
        }
    }

    /// The NBD socket of incoming migration `id`'s QEMU, while it receives (the source's
    /// disk mirror connects through `GET /v1/pool/migrations/{id}/nbd`).
    pub fn nbd_socket(&self, id: &str) -> Result<PathBuf, Error> {
        let e = lock(&self.entries).get(id).cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("no incoming migration {id} here"),
            )
        })?;
        if *lock(&e.state) != IncomingState::Receiving {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!("incoming migration {id} no longer receives"),
            ));
        }
        let vm_id = lock(&e.marker).vm_id.clone();
        Ok(nbd_socket(&self.host.layout.run_dir(&vm_id)))
    }

    /// The source's heartbeat; answers what this host holds.
    pub fn heartbeat(&self, id: &str) -> IncomingState {
        let Some(e) = lock(&self.entries).get(id).cloned() else {
            return IncomingState::Unknown;
        };
        *lock(&e.last_beat) = Instant::now();
        let state = *lock(&e.state);
        state
    }

    /// The source finished sending and its QEMU completed: check the guest runs here, stop
    /// serving the disks, and hold the guest for the ownership flip.
    pub async fn commit(&self, id: &str) -> Result<IncomingState, Error> {
        let entry = lock(&self.entries).get(id).cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("no incoming migration {id} here"),
            )
        })?;
        if *lock(&entry.state) == IncomingState::Committed {
            return Ok(IncomingState::Committed);
        }
        let mut guard = entry.qmp.lock().await;
        let qmp = guard
            .as_ref()
            .ok_or_else(|| Error::internal("the incoming migration has no QMP session"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = qmp
                .execute("query-status", json!({}))
                .await
                .map_err(|e| Error::caused(e.kind(), "the target QEMU does not answer", e))?;
            match status.get("status").and_then(|s| s.as_str()) {
                Some("running") => break,
                Some("inmigrate") | Some("postmigrate") | Some("prelaunch") | Some("paused")
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                other => {
                    return Err(Error::new(
                        ErrorKind::InvalidState,
                        format!("the guest does not run on the target (QEMU status {other:?})"),
                    ))
                }
            }
        }
        if entry.storage {
            let _ = qmp.execute("nbd-server-stop", json!({})).await;
        }
        *guard = None;
        *lock(&entry.state) = IncomingState::Committed;
        let marker = {
            let mut m = lock(&entry.marker);
            m.committed = true;
            m.clone()
        };
        self.write_marker(&marker);
        Ok(IncomingState::Committed)
    }

    /// Remove an uncommitted incoming migration: its QEMU, volumes and files.
    pub async fn abort(&self, id: &str, why: &str) {
        let Some(entry) = lock(&self.entries).remove(id) else {
            return;
        };
        if *lock(&entry.state) == IncomingState::Committed {
            // Never drop a guest that runs here on the source's word: put it back.
            lock(&self.entries).insert(id.to_string(), entry);
            return;
        }
        let marker = lock(&entry.marker).clone();
        tracing::warn!(vm = %marker.vm_name, migration = id, "incoming migration aborted: {why}");
        *entry.qmp.lock().await = None;
        self.remove_traces(&marker, &entry.taps).await;
    }

    async fn remove_traces(&self, m: &Marker, taps: &[String]) {
        // The marker's pid, and whatever QEMU of this VM the run directory's pid file names
        // (a marker written before the launch returned has no pid yet).
        let pidfile = crate::vm::runtime::paths(&self.host.layout, &m.vm_id).pidfile;
        let pids = [
            Some(m.pid),
            corral_qemu::process::find_vm_process(&pidfile, &m.vm_id),
        ];
        for pid in pids.into_iter().flatten().filter(|p| *p > 0) {
            if !corral_qemu::process::is_alive(pid) {
                continue;
            }
            tracing::info!(vm = %m.vm_name, pid, "stopping the QEMU of an incoming migration");
            crate::vm::runtime::kill_pid(pid);
            for _ in 0..100 {
                if !corral_qemu::process::is_alive(pid) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        crate::vm::runtime::remove_taps(taps).await;
        // The confined QEMU's file grants go with it (the ledger is in the run directory).
        crate::confine::revoke_all(&self.host.layout.run_dir(&m.vm_id), &m.vm_id);
        for v in &m.volumes {
            let _ = corral_storage::remove_volume(v).await;
        }
        let _ = std::fs::remove_dir_all(self.host.layout.run_dir(&m.vm_id));
        if !self.host.registry().by_id.contains_key(&m.vm_id) {
            let _ = std::fs::remove_file(self.host.layout.nvram(&m.vm_id));
        }
    }

    async fn supervise(self: Arc<Self>, id: String, entry: Arc<Entry>) {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let state = *lock(&entry.state);
            let marker = lock(&entry.marker).clone();
            match state {
                IncomingState::Receiving => {
                    if lock(&entry.last_beat).elapsed() > HEARTBEAT_TIMEOUT {
                        self.abort(&id, "the source sent no heartbeat for 5 s")
                            .await;
                        return;
                    }
                    if !corral_qemu::process::is_alive(marker.pid) {
                        self.abort(&id, "the target QEMU exited").await;
                        return;
                    }
                }
                IncomingState::Committed => {
                    if self.pool.owner_of(&marker.vm_id).as_deref()
                        == Some(self.host.host_id.as_str())
                    {
                        let _ = std::fs::remove_file(
                            self.host.layout.run_dir(&marker.vm_id).join(MARKER),
                        );
                        lock(&self.entries).remove(&id);
                        return;
                    }
                }
                IncomingState::Unknown => return,
            }
            if !lock(&self.entries).contains_key(&id) {
                return;
            }
        }
    }

    /// After an agent restart: markers of migrations this host was receiving. One whose VM
    /// became this host's is done; a committed one waits for the source's flip; any other
    /// is removed (its source gave up when heartbeats stopped).
    pub async fn recover(self: &Arc<Self>) {
        let run_root = self.host.layout.root.join("run");
        let Ok(dirs) = std::fs::read_dir(&run_root) else {
            return;
        };
        for d in dirs.flatten() {
            let path = d.path().join(MARKER);
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let Ok(m) = serde_json::from_slice::<Marker>(&bytes) else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            if self.pool.owner_of(&m.vm_id).as_deref() == Some(self.host.host_id.as_str()) {
                let _ = std::fs::remove_file(&path);
            } else if m.committed && corral_qemu::process::is_alive(m.pid) {
                let entry = Arc::new(Entry {
                    marker: Mutex::new(m.clone()),
                    state: Mutex::new(IncomingState::Committed),
                    last_beat: Mutex::new(Instant::now()),
                    qmp: tokio::sync::Mutex::new(None),
                    taps: Vec::new(),
                    storage: false,
                });
                lock(&self.entries).insert(m.migration_id.clone(), entry.clone());
                tokio::spawn(self.clone().supervise(m.migration_id.clone(), entry));
            } else {
                tracing::warn!(vm = %m.vm_name, migration = %m.migration_id, "removing an incoming migration interrupted by an agent restart");
                self.remove_traces(&m, &[]).await;
            }
        }
    }
}

/// Whether this host's memory takes the guest: what its running VMs committed plus the
/// guest's must fit its capacity, and the kernel must have the guest's memory available.
fn memory_check(here: &str, need: u64, committed: u64, capacity: u64, available: u64) -> PreCheck {
    let size = corral_model::format_size;
    PreCheck {
        name: "memory".into(),
        ok: committed.checked_add(need).is_some_and(|t| t <= capacity) && need <= available,
        detail: format!(
            "needs {}; host {here} has {} committed of {} and {} available",
            size(need),
            size(committed),
            size(capacity),
            size(available)
        ),
    }
}

/// Whether this host's QEMU can load the guest's state: the same versioned machine type,
/// the same accelerator, and under TCG (`-cpu max`, whose features follow QEMU's version) the
/// same QEMU version.
fn qemu_checks(here: &str, source: &SourceQemu, local: &SourceQemu) -> [PreCheck; 2] {
    let machine_ok = !local.machine.is_empty() && local.machine == source.machine;
    let cpu_ok =
        local.accel == source.accel && (local.accel != "tcg" || local.version == source.version);
    [
        PreCheck {
            name: "machine".into(),
            ok: machine_ok,
            detail: if machine_ok {
                format!("machine type {} is available", local.machine)
            } else {
                format!(
                    "the guest runs machine type {} (QEMU {}); host {here} has {} (QEMU {})",
                    source.machine,
                    source.version,
                    if local.machine.is_empty() {
                        "none"
                    } else {
                        &local.machine
                    },
                    local.version
                )
            },
        },
        PreCheck {
            name: "cpu".into(),
            ok: cpu_ok,
            detail: if cpu_ok {
                format!("-cpu {} under {} is the same here", source.cpu, local.accel)
            } else {
                format!(
                    "the guest runs -cpu {} under {} on QEMU {}; host {here} runs {} on QEMU {}",
                    source.cpu, source.accel, source.version, local.accel, local.version
                )
            },
        },
    ]
}

/// `tcp:` URIs write IPv6 hosts in brackets.
/// Where the target's QEMU serves the disks of an incoming migration.
fn nbd_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("nbd").join("export.sock")
}

pub(super) fn uri_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    #[test]
    fn memory_counts_what_is_committed() {
        // (need, committed, capacity, available) -> ok
        let rows = [
            ((G, 0, 8 * G, 8 * G), true),
            ((G, 7 * G, 8 * G, 8 * G), true),
            ((G, 7 * G + 1, 8 * G, 8 * G), false),
            ((2 * G, 0, 8 * G, G), false),
            ((u64::MAX, 1, u64::MAX, u64::MAX), false),
        ];
        for ((need, committed, capacity, available), ok) in rows {
            let c = memory_check("xen02", need, committed, capacity, available);
            assert_eq!(
                c.ok, ok,
                "{need} {committed} {capacity} {available}: {}",
                c.detail
            );
            assert!(c.detail.contains("host xen02 has"), "{}", c.detail);
        }
    }

    #[test]
    fn machine_and_cpu_must_match() {
        let q = |version: &str, machine: &str, accel: &str| SourceQemu {
            version: version.into(),
            machine: machine.into(),
            accel: accel.into(),
            cpu: if accel == "kvm" { "host" } else { "max" }.into(),
        };
        let src = q("7.2.22", "pc-q35-7.2", "tcg");
        // (local, machine ok, cpu ok, a fragment of the refusal)
        let rows = [
            (q("7.2.22", "pc-q35-7.2", "tcg"), true, true, ""),
            (
                q("8.0.0", "pc-q35-8.0", "tcg"),
                false,
                false,
                "has pc-q35-8.0",
            ),
            (
                q("7.2.23", "pc-q35-7.2", "tcg"),
                true,
                false,
                "runs tcg on QEMU 7.2.23",
            ),
            (q("7.2.22", "pc-q35-7.2", "kvm"), true, false, "under tcg"),
            (q("7.2.22", "", "tcg"), false, true, "has none"),
        ];
        for (local, machine_ok, cpu_ok, why) in rows {
            let [m, c] = qemu_checks("xen02", &src, &local);
            assert_eq!((m.ok, c.ok), (machine_ok, cpu_ok), "{local:?}");
            let refusal = format!(
                "{} {}",
                if m.ok { "" } else { &m.detail },
                if c.ok { "" } else { &c.detail }
            );
            assert!(refusal.contains(why), "{refusal}");
        }
        // Under KVM (-cpu host) the version may differ.
        let kvm = q("7.2.22", "pc-q35-7.2", "kvm");
        let [_, c] = qemu_checks("xen02", &kvm, &q("7.2.23", "pc-q35-7.2", "kvm"));
        assert!(c.ok, "{}", c.detail);
    }
}
