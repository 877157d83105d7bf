//! Live migration between pool members (`corral vm migrate`).
//!
//! A request reaches the VM's owner (the API forwards it there), which is the *source*:
//! 1. [`Migrations::migrate`] runs the source's pre-checks (state, template, CD media, TPM),
//!    picks the target (`--to NAME|auto`) and asks it to check and prepare
//!    (`incoming.rs` on the target, over the pool's mutual TLS). A halted VM just changes
//!    owner; `--check` stops after the checks.
//! 2. The VM's actor takes a migration job (commands that would change the VM are refused
//!    meanwhile) and runs the driver (`source.rs`) off its loop: mirror the disks to the
//!    target's NBD exports (with storage), then the memory over the TLS stream between the
//!    two QEMUs, sampling progress twice a second and escalating by the policy in
//!    `converge.rs`; heartbeats keep the target's half alive.
//! 3. When QEMU completes, the target confirms that the guest runs there (commit) and the
//!    actor moves the record to the target in one compare-and-swap; the source's QEMU quits.
//!    Any failure before that cancels the migration, resumes the source if it was paused,
//!    and tells the target to abort (which it also does by itself when heartbeats stop).
//!
//! The flow, the failure table and the figures are in `docs/migration.md`.

pub mod converge;
pub mod incoming;
mod nbd_proxy;
mod source;

use crate::context::Host;
use crate::error::Error;
use crate::pool::Pool;
use crate::vm::runtime::QemuRuntime;
use crate::vm::VmHandle;
use corral_model::migrate::*;
use corral_model::{ErrorKind, PowerState, VmRecord};
use corral_qemu::qmp::Qmp;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use source::{drive, Completed, Plan};

/// The QOM id of the TLS credentials object both QEMUs get.
pub const TLS_ID: &str = "corral-mig-tls";
/// Timeout of one call to the other member.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// Live migration on this host, both as source and as target.
pub struct Migrations {
    pub(crate) host: Arc<Host>,
    pub(crate) runtime: Arc<QemuRuntime>,
    pub(crate) pool: Arc<Pool>,
    pub incoming: Arc<incoming::Incoming>,
}

impl Migrations {
    pub fn new(
        host: Arc<Host>,
        runtime: Arc<QemuRuntime>,
        pool: Arc<Pool>,
        capacity_memory: Option<u64>,
    ) -> Arc<Self> {
        let incoming =
            incoming::Incoming::new(host.clone(), runtime.clone(), pool.clone(), capacity_memory);
        Arc::new(Migrations {
            host,
            runtime,
            pool,
            incoming,
        })
    }

    /// `vm migrate NAME --to HOST`: see the module documentation.
    pub async fn migrate(
        &self,
        handle: VmHandle,
        req: MigrateRequest,
    ) -> Result<MigrateAnswer, Error> {
        validate(&req)?;
        let info = handle.info();
        let from = self.host.host_name.clone();
        if !self.pool.is_clustered() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "this host is not in a pool: live migration needs at least two members (corral serve --etcd ... --listen ...)",
            ));
        }
        let need = crate::pool::Need {
            exclude_host: Some(self.host.host_id.clone()),
            ..crate::pool::Need::of_info(&info)
        };
        let (to_id, to_name) = self.pool.choose_host(&req.to, &need)?;
        if to_id == self.host.host_id {
            return Err(Error::invalid(format!(
                "VM {:?} is already on host {from:?}",
                info.name
            )));
        }
        let rec = self
            .host
            .records
            .get_json::<VmRecord>(&crate::keys::vm(&handle.id))
            .await?
            .ok_or_else(|| Error::not_found(format!("no VM named {:?}", info.name)))?;
        if info.power_state == PowerState::Halted {
            if req.with_storage {
                return Err(Error::invalid(
                    "--with-storage moves a running VM's disks; a halted VM's disks stay where they are (export and import move them)",
                ));
            }
            let answer = MigrateAnswer {
                vm: info.name.clone(),
                from,
                to: to_name.clone(),
                mode: if req.check { "check" } else { "move" }.into(),
                checks: vec![
                    template_check(&rec.spec),
                    match self.pool.movable(&rec) {
                        None => check("storage", true, "every disk is on a shared repository"),
                        Some(why) => check(
                            "storage",
                            false,
                            &format!("{why}: a halted VM moves only with shared disks"),
                        ),
                    },
                ],
                task: None,
            };
            if !req.check {
                refuse_on(&answer)?;
                self.pool.move_vm(&info.name, &to_id).await?;
            }
            return Ok(answer);
        }
        let mut checks = self.source_checks(&rec);
        let migration_id = uuid::Uuid::new_v4().to_string();
        let source = self.source_qemu().await?;
        let nvram_hex = rec
            .spec
            .firmware
            .is_uefi()
            .then(|| {
                std::fs::read(crate::vm::runtime::nvram_file(
                    &self.host.layout,
                    &rec.id,
                    rec.spec.firmware,
                ))
                .ok()
            })
            .flatten()
            .map(|b| crate::pool::pki::hex(&b));
        let incoming_req = IncomingRequest {
            migration_id: migration_id.clone(),
            source_host_id: self.host.host_id.clone(),
            record: rec.clone(),
            source,
            with_storage: req.with_storage,
            target_sr: req.target_sr.clone(),
            tls: !req.insecure_stream,
            postcopy: req.postcopy,
            nvram_hex,
            check: true,
        };
        // The target's own checks first (nothing is started there yet).
        let target_checks: IncomingAnswer = match self
            .pool
            .call(
                &to_id,
                "/v1/pool/migrations/check",
                &incoming_req,
                PEER_TIMEOUT,
            )
            .await
        {
            Ok(a) => a,
            Err(e) => IncomingAnswer::checks_only(vec![check("target-up", false, &e.message)]),
        };
        if !target_checks.checks.iter().any(|c| c.name == "target-up") {
            checks.insert(
                0,
                check("target-up", true, &format!("host {to_name} answers")),
            );
        }
        checks.extend(target_checks.checks);
        let mut answer = MigrateAnswer {
            vm: info.name.clone(),
            from,
            to: to_name.clone(),
            mode: if req.check { "check" } else { "live" }.into(),
            checks,
            task: None,
        };
        if req.check {
            return Ok(answer);
        }
        refuse_on(&answer)?;
        let task = self.host.tasks.start(
            corral_model::task::Operation::VmMigrate,
            Some((&rec.id, &rec.spec.name)),
        );
        answer.task = Some(task.id.clone());
        let plan = Plan {
            migration_id,
            target_id: to_id,
            target_name: to_name,
            request: req,
            incoming: IncomingRequest {
                check: false,
                ..incoming_req
            },
            pool: self.pool.clone(),
            host: self.host.clone(),
        };
        handle.migrate(plan, task).await?;
        Ok(answer)
    }

    /// Checks the source answers for itself.
    fn source_checks(&self, rec: &VmRecord) -> Vec<PreCheck> {
        let spec = &rec.spec;
        let mut checks = Vec::new();
        checks.push(template_check(spec));
        let local_media: Vec<String> = spec
            .cdroms
            .iter()
            .filter_map(|c| c.media.as_ref().map(|m| (c, m)))
            .filter(|(_, m)| !self.pool.is_on_shared_sr(m))
            .map(|(c, m)| format!("{} holds {}", c.device, m.display()))
            .collect();
        checks.push(check(
            "cdrom",
            local_media.is_empty(),
            &if local_media.is_empty() {
                "no CD media from this host's files".to_string()
            } else {
                format!(
                    "{}, a file of this host only: eject it first (corral vm cdrom eject {})",
                    local_media.join(", "),
                    spec.name
                )
            },
        ));
        checks.push(check(
            "tpm",
            !spec.tpm,
            if spec.tpm {
                "the vTPM's state lives on this host and is not migrated yet: shut the VM down and move it, or remove the TPM"
            } else {
                "no vTPM"
            },
        ));
        checks.push(check(
            "install",
            spec.install.is_none(),
            if spec.install.is_some() {
                "an install is running; migrate the VM after it finished"
            } else {
                "no install running"
            },
        ));
        checks
    }

    /// What the target needs to know about this host's QEMU for the guest.
    async fn source_qemu(&self) -> Result<SourceQemu, Error> {
        let (version, machine) = self.runtime.qemu_facts().await?;
        Ok(SourceQemu {
            version,
            machine,
            accel: self.runtime.accel_name().to_string(),
            cpu: self.runtime.cpu_model().to_string(),
        })
    }
}

/// What the source writes in the VM's run directory while a migration runs
/// (`migrating.json`), so an agent restart can settle it ([`Migrations::recover_sources`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SourceMarker {
    pub migration_id: String,
    pub target_id: String,
    pub target_name: String,
    pub was_paused: bool,
    /// With storage: device -> the target's new volume (known once the target prepared).
    pub volumes: Vec<(String, PathBuf)>,
    pub target_sr: Option<String>,
}

impl SourceMarker {
    const FILE: &'static str = "migrating.json";

    pub fn write(&self, run_dir: &Path) {
        if let Ok(bytes) = serde_json::to_vec_pretty(self) {
            let _ = crate::files::write_private(&run_dir.join(Self::FILE), &bytes, 0o600);
        }
    }
    pub fn read(run_dir: &Path) -> Option<SourceMarker> {
        serde_json::from_slice(&std::fs::read(run_dir.join(Self::FILE)).ok()?).ok()
    }
    pub fn remove(run_dir: &Path) {
        let _ = std::fs::remove_file(run_dir.join(Self::FILE));
    }
}

impl Migrations {
    /// After an agent restart: settle every migration this host was the source of. Its
    /// QEMU's migration is cancelled first (QEMU kept sending while the agent was down);
    /// then the target decides: a guest it committed is handed over (the record flips to
    /// it), anything else is dropped there and the guest resumes here.
    pub async fn recover_sources(self: &Arc<Self>) {
        let handles: Vec<VmHandle> = self.host.registry().by_id.values().cloned().collect();
        for handle in handles {
            let run_dir = self.host.layout.run_dir(&handle.id);
            if let Some(m) = SourceMarker::read(&run_dir) {
                tokio::spawn(self.clone().settle(handle, m, run_dir));
            }
        }
    }

    async fn settle(self: Arc<Self>, handle: VmHandle, m: SourceMarker, run_dir: PathBuf) {
        let name = handle.info().name;
        let local = handle.stop_migration(&self.host.tasks).await;
        let stopped = matches!(
            local.as_deref(),
            Some("postmigrate") | Some("paused") | Some("finish-migrate")
        );
        let beat = format!("/v1/pool/migrations/{}/heartbeat", m.migration_id);
        let began = Instant::now();
        let target = loop {
            match self
                .pool
                .call::<IncomingState>(&m.target_id, &beat, &json!({}), Duration::from_secs(3))
                .await
            {
                Ok(state) => break Some(state),
                // Its QEMU never stopped, so the guest runs here; the target drops its half
                // by itself when heartbeats stay away.
                Err(_) if !stopped && began.elapsed() > Duration::from_secs(10) => break None,
                Err(e) => {
                    if began.elapsed() > Duration::from_secs(30) {
                        tracing::warn!(vm = %name, error = %e.message, "an interrupted migration waits for its target to answer");
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        };
        if target == Some(IncomingState::Committed) {
            tracing::info!(vm = %name, target = %m.target_name, "finishing a migration interrupted by an agent restart: the target runs the guest");
            let done = Completed {
                target_id: m.target_id.clone(),
                target_name: m.target_name.clone(),
                volumes: m.volumes.clone(),
                target_sr: m.target_sr.clone(),
                figures: MigrationFigures::default(),
            };
            let _ = handle
                .call(
                    crate::vm::Op::MigrateEnd(Box::new(Ok(done))),
                    self.host.tasks.untracked(),
                )
                .await;
            return;
        }
        source::tell_target_to_abort(&self.pool, &m.target_id, &m.migration_id).await;
        SourceMarker::remove(&run_dir);
        if stopped && !m.was_paused {
            tracing::info!(vm = %name, "resuming a guest whose migration was interrupted by an agent restart");
            let info = handle.info();
            let task = self.host.tasks.start(
                corral_model::task::Operation::VmResume,
                Some((&info.id, &info.name)),
            );
            let _ = handle
                .call(
                    crate::vm::Op::Action(corral_model::api::VmAction::Resume, Default::default()),
                    task,
                )
                .await;
        }
    }
}

/// Templates never run, and stay where their clones' bases are.
fn template_check(spec: &corral_model::VmSpec) -> PreCheck {
    check(
        "template",
        !spec.is_template,
        if spec.is_template {
            "a template does not move (install or clone a VM from it on the other host)"
        } else {
            "not a template"
        },
    )
}

fn check(name: &str, ok: bool, detail: &str) -> PreCheck {
    PreCheck {
        name: name.into(),
        ok,
        detail: detail.into(),
    }
}

/// Refuse with every failed check named.
fn refuse_on(answer: &MigrateAnswer) -> Result<(), Error> {
    match answer.refusals() {
        None => Ok(()),
        Some(why) => Err(Error::new(
            ErrorKind::InvalidState,
            format!(
                "cannot migrate VM {:?} to host {:?}: {why}",
                answer.vm, answer.to
            ),
        )
        .with_details(serde_json::to_value(answer).unwrap_or_default())),
    }
}

fn validate(req: &MigrateRequest) -> Result<(), Error> {
    if req.to.trim().is_empty() {
        return Err(Error::invalid(
            "--to is required: a pool member's name, or auto",
        ));
    }
    if let Some(d) = req.max_downtime_ms {
        if !(MIN_DOWNTIME_MS..=MAX_DOWNTIME_MS).contains(&d) {
            return Err(Error::invalid(format!(
                "--max-downtime must be between {MIN_DOWNTIME_MS} ms and {} s, got {d} ms",
                MAX_DOWNTIME_MS / 1000
            )));
        }
    }
    if let Some(b) = req.bandwidth_bytes_per_s {
        if b < 1 << 20 {
            return Err(Error::invalid(format!(
                "--bandwidth must be at least 1M (bytes per second), got {b}"
            )));
        }
    }
    if req.deadline_secs == Some(0) {
        return Err(Error::invalid("--deadline must be at least 1 s"));
    }
    Ok(())
}

/// Write the pool CA and this member's certificate as QEMU's `tls-creds-x509` expects them
/// (`ca-cert.pem` and `server-*` or `client-*`) in a private directory under `run_dir`.
pub(crate) fn write_tls_dir(run_dir: &Path, pool: &Pool, server: bool) -> Result<PathBuf, Error> {
    let tls = pool
        .tls()
        .ok_or_else(|| Error::internal("this host has no pool certificate"))?;
    let dir = run_dir.join("migration-tls");
    let role = if server { "server" } else { "client" };
    let write = |name: &str, text: &str| {
        crate::files::write_private(&dir.join(name), text.as_bytes(), 0o600).map_err(|e| {
            Error::caused(
                ErrorKind::Internal,
                format!("cannot write {}", dir.join(name).display()),
                e,
            )
        })
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::caused(ErrorKind::Internal, "cannot create the TLS directory", e))?;
    write("ca-cert.pem", &tls.ca_pem)?;
    write(&format!("{role}-cert.pem"), &tls.cert_pem)?;
    write(&format!("{role}-key.pem"), &tls.key_pem)?;
    // The VM's confined QEMU reads them when the credentials object is added.
    if let Some(uid) = crate::confine::granted_uid(run_dir) {
        use crate::confine::{R, X};
        let files = [
            (dir.clone(), R | X),
            (dir.join("ca-cert.pem"), R),
            (dir.join(format!("{role}-cert.pem")), R),
            (dir.join(format!("{role}-key.pem")), R),
        ];
        crate::confine::grant(run_dir, uid, &files)?;
    }
    Ok(dir)
}

/// `object-add` of the TLS credentials; the server verifies the client's certificate too.
pub(crate) fn tls_object(dir: &Path, endpoint: &str) -> serde_json::Value {
    json!({
        "qom-type": "tls-creds-x509",
        "id": TLS_ID,
        "dir": dir,
        "endpoint": endpoint,
        "verify-peer": true,
    })
}
