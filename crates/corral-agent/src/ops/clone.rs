//! Linked clones, and the bases they share (freezing, backing chains, collection). Full
//! copies are in [`super::copy`], templates and VMs stamped from them in [`super::template`].
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
use crate::ops::Ops;
use crate::spec::random_mac;
use crate::tasks::TaskHandle;
use crate::vm::Op;
use corral_model::task::Operation;
use corral_model::transfer::CloneRequest;
use corral_model::validate::*;
use corral_model::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Held by whatever creates or removes references to bases, and by the collector.
pub(super) static BASES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

pub(super) fn io_err(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
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
    pub(super) async fn with_new_name<F, Fut>(
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
    pub(super) async fn layer_and_record(
        self: &Arc<Self>,
        spec: VmSpec,
        frozen: &[FrozenDisk],
        task: &TaskHandle,
        source: (&str, bool),
    ) -> Result<(), Error> {
        let id = uuid::Uuid::new_v4().to_string();
        task.set_vm(&id, &spec.name);
        // Before the first overlay: a crash from here on is undone at the next start
        // (`crate::intents` removes every file named by the new id).
        crate::intents::begin_create(&self.host, &id, &spec.name, Vec::new()).await?;
        let result = self.layer_and_record_files(spec, frozen, &id, source).await;
        if let Err(e) = &result {
            if e.kind != ErrorKind::Unavailable {
                crate::intents::finish(&self.host, &id).await;
            }
        }
        result
    }

    async fn layer_and_record_files(
        self: &Arc<Self>,
        mut spec: VmSpec,
        frozen: &[FrozenDisk],
        id: &str,
        source: (&str, bool),
    ) -> Result<(), Error> {
        let id = id.to_string();
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
            disks: vec![Disk {
                device: "disk0".into(),
                size_bytes: 4096,
                format: DiskFormat::Raw,
                bus: DiskBus::Virtio,
                sr: "default".into(),
                path: vol.clone(),
            }],
            ..corral_testkit::vm_spec("vm")
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
