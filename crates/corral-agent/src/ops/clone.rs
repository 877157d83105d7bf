//! Linked clones, full copies, templates made from VMs, and creating VMs from them.
//!
//! Linked clones share data through qcow2 backing files, and a backing file must never be
//! written again once something is layered on it. So a clone *freezes* the source first: the
//! source VM's actor renames each of its volumes into the repository's `bases/` directory
//! (read-only from then on) and gives the source a fresh empty overlay at its old volume path;
//! the clone gets an overlay on the same base. Both then write only to their own overlays, so
//! neither can corrupt the other, and deleting either one (the source included) is safe: a
//! base is removed by [`gc_bases`] once no VM's backing chain names it. Overlays are written
//! natively (`corral_storage::create_overlay`), so a clone takes the same time whatever the
//! disk size.
//!
//! A template VM keeps its volumes *in* `bases/` (conversion moves them there without an
//! overlay: a template never starts, so never writes), and VMs created from it
//! ([`Ops::create_from_template_vm`], used by `vm create --template` and `vm install
//! --template` when the name is a template VM) get overlays directly on its bases, so cloning a
//! template repeatedly does not lengthen chains. A copy flattens the whole chain with
//! `qemu-img convert` into independent volumes, as a task with progress.
//!
//! Request flow of a clone: validate and reserve the new name, take the bases lock (so the
//! collector cannot run between freezing and recording the clone), `Op::Freeze` on the
//! source's actor, write the overlays, record the VM, spawn its actor.

use crate::error::Error;
use crate::network::DEFAULT_NETWORK;
use crate::ops::Ops;
use crate::spec::random_mac;
use crate::tasks::TaskHandle;
use crate::vm::{Lease, Op};
use corral_model::api::*;
use corral_model::host::StorageRepository;
use corral_model::task::Operation;
use corral_model::transfer::CloneRequest;
use corral_model::validate::*;
use corral_model::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Held by whatever creates or removes references to bases, and by the collector.
static BASES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Name of the directory of read-only bases inside a repository.
pub const BASES_DIR: &str = "bases";

/// A source disk after freezing: the base its clones are layered on.
#[derive(Debug, Clone)]
pub struct FrozenDisk {
    /// The source disk (device, size, bus, repository) as it was.
    pub disk: Disk,
    pub base: PathBuf,
    pub base_format: DiskFormat,
}

/// What to undo when recording a freeze fails: (base, original path, overlay created).
pub(crate) type Undo = Vec<(PathBuf, PathBuf, Option<PathBuf>)>;

/// Whether a volume is a base (lives in a repository's `bases/`).
pub fn is_base(path: &Path) -> bool {
    path.parent()
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == BASES_DIR)
}

fn io_err(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::caused(ErrorKind::Internal, what, e)
}

/// Move each disk of `spec` into its repository's `bases/`; with `overlay`, give the VM an
/// empty qcow2 overlay on it (for a clone source), else point the disk at the base (for a
/// template). Disks already in `bases/` are returned as they are.
pub(crate) fn freeze_disks(
    spec: &mut VmSpec,
    vm_id: &str,
    overlay: bool,
) -> Result<(Vec<FrozenDisk>, Undo), Error> {
    let mut frozen = Vec::new();
    let mut undo: Undo = Vec::new();
    for d in spec.disks.iter_mut() {
        let before = d.clone();
        if is_base(&d.path) {
            frozen.push(FrozenDisk {
                disk: before,
                base: d.path.clone(),
                base_format: d.format,
            });
            continue;
        }
        let step = (|| {
            let sr_dir = d
                .path
                .parent()
                .ok_or_else(|| Error::internal("volume path has no directory"))?;
            let bases = sr_dir.join(BASES_DIR);
            std::fs::create_dir_all(&bases)
                .map_err(|e| io_err(&format!("cannot create {}", bases.display()), e))?;
            let base = bases.join(format!("{}.{}", uuid::Uuid::new_v4(), d.format.as_str()));
            std::fs::rename(&d.path, &base).map_err(|e| {
                io_err(
                    &format!("cannot move {} to {}", d.path.display(), base.display()),
                    e,
                )
            })?;
            let mut created = None;
            if overlay {
                let path = sr_dir.join(corral_storage::volume_file_name(
                    vm_id,
                    &d.device,
                    DiskFormat::Qcow2,
                ));
                if let Err(e) = corral_storage::create_overlay(&path, &base, d.format, d.size_bytes)
                {
                    let _ = std::fs::rename(&base, &d.path);
                    return Err(io_err(
                        &format!("cannot create overlay {}", path.display()),
                        e,
                    ));
                }
                created = Some(path.clone());
                d.path = path;
                d.format = DiskFormat::Qcow2;
            } else {
                d.path = base.clone();
            }
            Ok((base, created))
        })();
        match step {
            Ok((base, created)) => {
                undo.push((base.clone(), before.path.clone(), created));
                frozen.push(FrozenDisk {
                    base_format: before.format,
                    disk: before,
                    base,
                });
            }
            Err(e) => {
                unfreeze(undo);
                return Err(e);
            }
        }
    }
    Ok((frozen, undo))
}

/// Put volumes back where they were before a freeze.
pub(crate) fn unfreeze(undo: Undo) {
    for (base, original, overlay) in undo.into_iter().rev() {
        if let Some(o) = overlay {
            let _ = std::fs::remove_file(o);
        }
        let _ = std::fs::rename(base, original);
    }
}

/// Longest backing chain followed. Beyond it the chain is treated as unreadable: a base deeper
/// than this might still be in use, so garbage collection must not guess.
pub(crate) const MAX_CHAIN_DEPTH: usize = 64;

/// Every file of the backing chain that starts at `top` (itself included), with `next` giving
/// a file's backing file. An error when a link cannot be read, when the chain loops, or when
/// it is longer than `max` files: in each case the full set of used files is unknown.
pub(crate) fn backing_chain(
    top: &Path,
    max: usize,
    next: impl Fn(&Path) -> Result<Option<PathBuf>, String>,
) -> Result<Vec<PathBuf>, String> {
    let mut chain = vec![top.to_path_buf()];
    loop {
        let cur = chain.last().cloned().unwrap_or_default();
        match next(&cur).map_err(|e| format!("{}: {e}", cur.display()))? {
            None => return Ok(chain),
            Some(b) => {
                if chain.contains(&b) {
                    return Err(format!("{}: the backing chain loops", b.display()));
                }
                if chain.len() >= max {
                    return Err(format!(
                        "{}: the backing chain is longer than {max} files",
                        top.display()
                    ));
                }
                chain.push(b);
            }
        }
    }
}

/// Remove bases no VM's backing chain names any more. Conservative: when any VM disk's chain
/// cannot be read completely (an unreadable link, a loop, or more than [`MAX_CHAIN_DEPTH`]
/// files), nothing is removed.
pub async fn gc_bases(host: Arc<crate::context::Host>) {
    let _guard = BASES.lock().await;
    let mut used = std::collections::HashSet::new();
    for info in host.list_vms() {
        for d in &info.disks {
            let chain = backing_chain(&d.path, MAX_CHAIN_DEPTH, |p| {
                corral_storage::backing_file(p).map_err(|e| e.to_string())
            });
            match chain {
                Ok(c) => used.extend(c),
                Err(e) => {
                    tracing::warn!(vm = %info.name, error = %e,
                        "cannot read a backing chain completely; leaving unused bases in place");
                    return;
                }
            }
        }
    }
    let srs = host.list_srs();
    for sr in srs {
        let Ok(entries) = std::fs::read_dir(sr.path.join(BASES_DIR)) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if !used.contains(&p) && p.is_file() {
                match std::fs::remove_file(&p) {
                    Ok(()) => tracing::info!(base = %p.display(), "removed unused base"),
                    Err(e) => tracing::warn!(base = %p.display(), error = %e, "cannot remove base"),
                }
            }
        }
    }
}

/// The spec of a VM as its snapshot shows it.
pub fn spec_of(i: &VmInfo) -> VmSpec {
    VmSpec {
        name: i.name.clone(),
        description: i.description.clone(),
        vcpus: i.vcpus,
        memory_bytes: i.memory_bytes,
        autostart: i.autostart,
        cpu_weight: i.cpu_weight,
        firmware: i.firmware,
        disks: i.disks.clone(),
        cdroms: i.cdroms.clone(),
        nics: i.nics.clone(),
        kernel_boot: i.kernel_boot.clone(),
        boot_device: i.boot_device,
        template: i.template.clone(),
        is_template: i.is_template,
        install: i.install.clone(),
        tpm: i.tpm,
    }
}

impl Ops {
    /// Run `f` with `name` reserved as a task `operation`; releases the name on failure.
    async fn with_new_name<F, Fut>(
        self: &Arc<Self>,
        name: &str,
        operation: Operation,
        f: F,
    ) -> Result<(VmInfo, String), Error>
    where
        F: FnOnce(TaskHandle) -> Fut,
        Fut: std::future::Future<Output = Result<(), Error>>,
    {
        validate_name("VM", name).map_err(Error::invalid)?;
        self.host.registry_mut().reserve(name)?;
        let task = self.host.tasks.start(operation, None);
        let id = task.id.clone();
        let result = f(task.clone()).await;
        if result.is_err() {
            self.host.registry_mut().release(name);
        }
        task.complete(&result);
        result?;
        Ok((self.vm(name)?.info(), id))
    }

    /// `vm clone SRC DST`: a linked clone of a halted VM (or a template).
    pub async fn clone_vm(
        self: &Arc<Self>,
        source: &str,
        req: CloneRequest,
    ) -> Result<(VmInfo, String), Error> {
        let src = self.vm(source)?;
        if req.sr.is_some() {
            return Err(Error::invalid(
                "a linked clone shares its source's repository; use `vm copy --sr` for another one",
            ));
        }
        let name = req.name.clone();
        self.with_new_name(&req.name, Operation::VmClone, |task| async move {
            let _guard = BASES.lock().await;
            let info = src.info();
            let frozen = if info.is_template {
                let mut spec = spec_of(&info);
                freeze_disks(&mut spec, &info.id, true)?.0
            } else {
                let (tx, rx) = oneshot::channel();
                src.call(Op::Freeze(tx), task.clone()).await?;
                rx.await
                    .map_err(|_| Error::internal("the source VM did not answer"))?
            };
            let mut spec = spec_of(&src.info());
            spec.name = name.clone();
            spec.is_template = false;
            spec.autostart = spec.autostart && !info.is_template;
            for n in spec.nics.iter_mut() {
                n.mac = random_mac();
            }
            self.layer_and_record(spec, &frozen, &task, (&info.id, true))
                .await
        })
        .await
    }

    /// Give a new VM overlays on `frozen` bases and its own copies of the files the source
    /// (`source.0`) owns (`crate::vmfiles`; TPM state only when `source.1`), and record it.
    async fn layer_and_record(
        self: &Arc<Self>,
        mut spec: VmSpec,
        frozen: &[FrozenDisk],
        task: &TaskHandle,
        source: (&str, bool),
    ) -> Result<(), Error> {
        let id = uuid::Uuid::new_v4().to_string();
        task.set_vm(&id, &spec.name);
        let mut disks = Vec::new();
        let mut created: Vec<PathBuf> = Vec::new();
        for f in frozen {
            let sr_dir = f
                .base
                .parent()
                .and_then(Path::parent)
                .ok_or_else(|| Error::internal("base has no repository"))?;
            let path = sr_dir.join(corral_storage::volume_file_name(
                &id,
                &f.disk.device,
                DiskFormat::Qcow2,
            ));
            if let Err(e) =
                corral_storage::create_overlay(&path, &f.base, f.base_format, f.disk.size_bytes)
            {
                for p in &created {
                    let _ = std::fs::remove_file(p);
                }
                return Err(io_err(&format!("cannot create {}", path.display()), e));
            }
            created.push(path.clone());
            disks.push(Disk {
                path,
                format: DiskFormat::Qcow2,
                ..f.disk.clone()
            });
        }
        // Disks the request adds on top of the cloned ones keep their own volumes.
        let mut extra = std::mem::take(&mut spec.disks);
        extra.retain(|d| !frozen.iter().any(|f| f.disk.device == d.device));
        disks.extend(extra);
        spec.disks = disks;
        match crate::vmfiles::copy_owned(&self.host.layout, source.0, &id, &mut spec, source.1) {
            Ok(files) => created.extend(files),
            Err(e) => {
                crate::vmfiles::remove_created(&created);
                return Err(e);
            }
        }
        if let Err(e) = self.add_vm(id, spec).await {
            crate::vmfiles::remove_created(&created);
            return Err(e);
        }
        Ok(())
    }

    /// `vm convert-to-template NAME`.
    pub async fn convert_to_template(&self, name: &str) -> Result<(VmInfo, String), Error> {
        let _guard = BASES.lock().await;
        self.vm_op(name, Operation::VmConvertToTemplate, Op::ConvertToTemplate)
            .await
    }

    /// `vm create --template T` (and `vm install --template T`) where `T` is a template VM:
    /// the new VM gets linked clones of T's disks and T's settings, overridden by the request.
    /// Disks the request lists are added after the cloned ones; NICs the request lists replace
    /// T's (otherwise T's NICs are kept with new MACs).
    pub async fn create_from_template_vm(
        self: &Arc<Self>,
        req: VmCreateRequest,
    ) -> Result<(VmInfo, String), Error> {
        let tname = req.template.clone().unwrap_or_default();
        let tpl = self.vm(&tname)?;
        let t = tpl.info();
        if !t.is_template {
            return Err(Error::invalid(format!(
                "VM {tname:?} is not a template (convert it with `vm convert-to-template`, or clone it)"
            )));
        }
        let name = req.name.clone();
        let start = req.start;
        let (info, task) = self
            .with_new_name(&name, Operation::VmCreate, |task| async move {
                let _guard = BASES.lock().await;
                let t = tpl.info();
                let mut spec = spec_of(&t);
                let frozen: Vec<FrozenDisk> = t
                    .disks
                    .iter()
                    .map(|d| FrozenDisk {
                        disk: d.clone(),
                        base: d.path.clone(),
                        base_format: d.format,
                    })
                    .collect();
                self.apply_overrides(&mut spec, &req, &frozen)?;
                // A fresh TPM: VMs stamped from one template must not share its identity.
                self.layer_and_record(spec, &frozen, &task, (&t.id, false))
                    .await
            })
            .await?;
        if start {
            let h = self.vm(&name)?;
            let t = self
                .host
                .tasks
                .start(Operation::VmStart, Some((&info.id, &info.name)));
            h.call(Op::Action(VmAction::Start, ActionRequest::default()), t)
                .await?;
            return Ok((h.info(), task));
        }
        Ok((info, task))
    }

    fn apply_overrides(
        &self,
        spec: &mut VmSpec,
        req: &VmCreateRequest,
        frozen: &[FrozenDisk],
    ) -> Result<(), Error> {
        spec.template = req.template.clone();
        spec.name = req.name.clone();
        spec.is_template = false;
        if let Some(d) = &req.description {
            spec.description = d.clone();
        }
        if let Some(v) = req.vcpus {
            validate_vcpus(v).map_err(Error::invalid)?;
            spec.vcpus = v;
        }
        if let Some(m) = req.memory_bytes {
            crate::spec::check_memory(self.host.as_ref(), m)?;
            spec.memory_bytes = m;
        }
        if let Some(a) = req.autostart {
            spec.autostart = a;
        }
        if let Some(w) = req.cpu_weight {
            validate_cpu_weight(w).map_err(Error::invalid)?;
            spec.cpu_weight = w;
        }
        if let Some(f) = req.firmware {
            spec.firmware = f;
        }
        if let Some(t) = req.tpm {
            spec.tpm = t;
        }
        if let Some(b) = req.boot_device {
            spec.boot_device = b;
        }
        match &req.nics {
            Some(nics) => {
                if nics.len() > MAX_NICS {
                    return Err(Error::invalid(format!(
                        "{} NICs is more than the maximum of {MAX_NICS}",
                        nics.len()
                    )));
                }
                spec.nics = nics
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        crate::spec::nic_from_request(
                            self.host.as_ref(),
                            &format!("nic{i}"),
                            n,
                            NicModel::Virtio,
                        )
                    })
                    .collect::<Result<_, _>>()?;
            }
            None => {
                for n in spec.nics.iter_mut() {
                    n.mac = random_mac();
                    if self.network(&n.network).is_err() {
                        n.network = DEFAULT_NETWORK.into();
                    }
                }
            }
        }
        if let Some(extra) = &req.disks {
            if frozen.len() + extra.len() > MAX_DISKS {
                return Err(Error::invalid(format!(
                    "{} disks is more than the maximum of {MAX_DISKS}",
                    frozen.len() + extra.len()
                )));
            }
            if !extra.is_empty() {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "extra disks with a template VM: create the VM, then `vm disk add`",
                ));
            }
        }
        if let Some(k) = &req.kernel {
            if !k.is_absolute() || !k.is_file() {
                return Err(Error::invalid(format!(
                    "kernel {} is not an existing absolute path",
                    k.display()
                )));
            }
            spec.kernel_boot = Some(KernelBoot {
                kernel: k.clone(),
                initrd: req.initrd.clone(),
                cmdline: req.cmdline.clone().unwrap_or_default(),
            });
        } else if let Some(kb) = spec.kernel_boot.as_mut() {
            if let Some(i) = &req.initrd {
                kb.initrd = Some(i.clone());
            }
            if let Some(c) = &req.cmdline {
                kb.cmdline = c.clone();
            }
        }
        if let Some(iso) = &req.cdrom {
            let path = crate::spec::iso_path(self.host.as_ref(), iso)?;
            match spec.cdroms.first_mut() {
                Some(c) => c.media = Some(path),
                None => spec.cdroms.push(Cdrom {
                    device: "cdrom0".into(),
                    bus: DiskBus::Sata,
                    media: Some(path),
                }),
            }
        }
        Ok(())
    }

    /// `vm copy SRC DST [--sr NAME]`: independent, flattened volumes. Runs as a task; with
    /// `wait` the answer comes when it is done, else at once with the task id.
    pub async fn copy_vm(
        self: &Arc<Self>,
        source: &str,
        req: CloneRequest,
        wait: bool,
    ) -> Result<(Option<VmInfo>, String), Error> {
        let src = self.vm(source)?;
        validate_name("VM", &req.name).map_err(Error::invalid)?;
        let target_sr = match &req.sr {
            Some(s) => Some(self.sr(s)?),
            None => None,
        };
        self.host.registry_mut().reserve(&req.name)?;
        let info = src.info();
        let task = self.host.tasks.start(Operation::VmCopy, None);
        let lease = Arc::new(Lease {
            kind: crate::vm::state::LeaseKind::Copy,
        });
        if let Err(e) = src.call(Op::Lease(lease.clone()), task.clone()).await {
            self.host.registry_mut().release(&req.name);
            return Err(e);
        }
        let task_id = task.id.clone();
        let agent = self.clone();
        let name = req.name.clone();
        let job = async move {
            let r = agent.copy_leased(info, &name, target_sr, &task).await;
            drop(lease);
            if r.is_err() {
                agent.host.registry_mut().release(&name);
            }
            match (&r, task.is_cancelled()) {
                (Err(_), true) => {
                    task.cancelled_with("the copy was cancelled; nothing was created")
                }
                _ => task.complete(&r),
            }
            r.and_then(|_| agent.vm(&name).map(|h| h.info()))
        };
        if wait {
            Ok((Some(job.await?), task_id))
        } else {
            tokio::spawn(job);
            Ok((None, task_id))
        }
    }

    async fn copy_leased(
        self: &Arc<Self>,
        info: VmInfo,
        name: &str,
        target_sr: Option<StorageRepository>,
        task: &TaskHandle,
    ) -> Result<(), Error> {
        let id = uuid::Uuid::new_v4().to_string();
        task.set_vm(&id, name);
        let total: u64 = info.disks.iter().map(|d| d.size_bytes).sum();
        let mut done = 0u64;
        let mut created: Vec<PathBuf> = Vec::new();
        let mut disks = Vec::new();
        let mut result = Ok(());
        for d in &info.disks {
            let (sr_name, sr_dir) = match &target_sr {
                Some(sr) => (sr.name.clone(), sr.path.clone()),
                None => (
                    d.sr.clone(),
                    d.path
                        .parent()
                        .map(|p| {
                            if is_base(d.path.as_path()) {
                                p.parent().unwrap_or(p)
                            } else {
                                p
                            }
                        })
                        .unwrap_or(Path::new("/"))
                        .to_path_buf(),
                ),
            };
            let path = sr_dir.join(corral_storage::volume_file_name(
                &id,
                &d.device,
                DiskFormat::Qcow2,
            ));
            task.phase(&format!("copying {}", d.device), 0.0);
            created.push(path.clone());
            if let Err(e) =
                convert_with_progress(&d.path, &path, task, done, d.size_bytes, total).await
            {
                result = Err(e);
                break;
            }
            done += d.size_bytes;
            disks.push(Disk {
                path,
                format: DiskFormat::Qcow2,
                sr: sr_name,
                ..d.clone()
            });
        }
        if result.is_ok() {
            let mut spec = spec_of(&info);
            spec.name = name.to_string();
            spec.is_template = false;
            spec.disks = disks;
            for n in spec.nics.iter_mut() {
                n.mac = random_mac();
            }
            result = crate::vmfiles::copy_owned(&self.host.layout, &info.id, &id, &mut spec, true)
                .map(|files| created.extend(files));
            if result.is_ok() {
                result = self.add_vm(id, spec).await.map(|_| ());
            }
        }
        if result.is_err() {
            crate::vmfiles::remove_created(&created);
        }
        result
    }
}

/// `qemu-img convert` (flattens any backing chain) reporting progress into the task;
/// cancelling the task stops the conversion and removes `dst`.
async fn convert_with_progress(
    src: &Path,
    dst: &Path,
    task: &TaskHandle,
    before: u64,
    size: u64,
    total: u64,
) -> Result<(), Error> {
    let mut cancel = task.clone();
    let opts = corral_storage::qemu_img::ConvertOptions {
        output_format: "qcow2",
        input_format: None,
        shared_read: false,
    };
    let progress = |pct: f64| task.bytes(before + (size as f64 * pct / 100.0) as u64, total);
    corral_storage::qemu_img::convert(
        src,
        dst,
        opts,
        progress,
        async move { cancel.cancelled().await },
    )
    .await
    .map_err(|e| match e {
        corral_storage::VolumeError::Cancelled => Error::new(ErrorKind::InvalidState, "cancelled"),
        e => Error::caused(
            ErrorKind::Internal,
            format!("cannot copy {}", src.display()),
            e,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_are_recognised_by_directory() {
        assert!(is_base(Path::new("/srv/sr/bases/x.qcow2")));
        assert!(!is_base(Path::new("/srv/sr/x.qcow2")));
        assert!(!is_base(Path::new("/x.qcow2")));
    }

    /// A chain `/c/0 -> /c/1 -> ... -> /c/<len-1>`.
    fn synthetic(len: usize) -> impl Fn(&Path) -> Result<Option<PathBuf>, String> {
        move |p: &Path| {
            let i: usize = p.file_name().unwrap().to_str().unwrap().parse().unwrap();
            Ok((i + 1 < len).then(|| PathBuf::from(format!("/c/{}", i + 1))))
        }
    }

    #[test]
    fn deep_or_broken_backing_chains_are_unknown_not_short() {
        let top = Path::new("/c/0");
        // Up to the cap, the whole chain is returned.
        let c = backing_chain(top, MAX_CHAIN_DEPTH, synthetic(MAX_CHAIN_DEPTH)).unwrap();
        assert_eq!(c.len(), MAX_CHAIN_DEPTH);
        assert_eq!(c.last().unwrap(), Path::new("/c/63"));
        // One deeper: an error (gc then removes nothing), never a truncated "used" set in
        // which the deepest bases look unused and get deleted.
        let e = backing_chain(top, MAX_CHAIN_DEPTH, synthetic(MAX_CHAIN_DEPTH + 1)).unwrap_err();
        assert!(e.contains("longer than 64 files"), "{e}");
        assert!(backing_chain(top, MAX_CHAIN_DEPTH, synthetic(1000)).is_err());
        // A loop and an unreadable link are unknown too.
        let looped = |p: &Path| {
            Ok(Some(if p == Path::new("/a") {
                PathBuf::from("/b")
            } else {
                PathBuf::from("/a")
            }))
        };
        let e = backing_chain(Path::new("/a"), MAX_CHAIN_DEPTH, looped).unwrap_err();
        assert!(e.contains("loops"), "{e}");
        let broken = |_: &Path| Err("permission denied".to_string());
        assert!(backing_chain(top, MAX_CHAIN_DEPTH, broken).is_err());
    }

    #[test]
    fn backing_chain_follows_real_overlays() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
        let mid = dir.path().join("mid.qcow2");
        let top = dir.path().join("top.qcow2");
        corral_storage::create_overlay(&mid, &base, DiskFormat::Raw, 1 << 20).unwrap();
        corral_storage::create_overlay(&top, &mid, DiskFormat::Qcow2, 1 << 20).unwrap();
        let next = |p: &Path| corral_storage::backing_file(p).map_err(|e| e.to_string());
        assert_eq!(
            backing_chain(&top, MAX_CHAIN_DEPTH, next).unwrap(),
            vec![top.clone(), mid.clone(), base.clone()]
        );
        assert!(backing_chain(&top, 2, next).is_err());
    }

    #[test]
    fn freeze_moves_volumes_and_undo_restores_them() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vm-disk0.raw");
        std::fs::write(&vol, vec![7u8; 4096]).unwrap();
        let mut spec = VmSpec {
            name: "a".into(),
            description: String::new(),
            vcpus: 1,
            memory_bytes: 1 << 30,
            autostart: false,
            cpu_weight: 256,
            firmware: Firmware::Bios,
            disks: vec![Disk {
                device: "disk0".into(),
                size_bytes: 4096,
                format: DiskFormat::Raw,
                bus: DiskBus::Virtio,
                sr: "default".into(),
                path: vol.clone(),
            }],
            cdroms: vec![],
            nics: vec![],
            kernel_boot: None,
            boot_device: BootDevice::Disk,
            template: None,
            is_template: false,
            install: None,
            tpm: false,
        };
        let (frozen, undo) = freeze_disks(&mut spec, "vm", true).unwrap();
        assert!(is_base(&frozen[0].base) && frozen[0].base.exists());
        assert!(!vol.exists(), "the raw volume became the base");
        assert_eq!(spec.disks[0].format, DiskFormat::Qcow2);
        assert_eq!(
            corral_storage::backing_file(&spec.disks[0].path).unwrap(),
            Some(frozen[0].base.clone())
        );
        unfreeze(undo);
        assert!(vol.exists() && !frozen[0].base.exists());
        assert!(!dir.path().join("vm-disk0.qcow2").exists());
    }
}
