//! `vm copy`: a new VM with independent, flattened volumes (`qemu-img convert` through the
//! one runner in `corral-storage`), as a cancellable task with byte progress. The source is
//! held by a read lease for the duration, so it cannot start or change its disks meanwhile.

use super::clone::{is_base, spec_of};
use crate::error::Error;
use crate::ops::Ops;
use crate::spec::random_mac;
use crate::tasks::TaskHandle;
use crate::vm::{Lease, Op};
use corral_model::host::StorageRepository;
use corral_model::task::Operation;
use corral_model::transfer::CloneRequest;
use corral_model::validate::*;
use corral_model::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

impl Ops {
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
        // Before the first file: a crash from here on is undone at the next start, which
        // removes every file named by the new id (`crate::intents`).
        crate::intents::begin_create(&self.host, &id, name, Vec::new()).await?;
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
                result = self.add_vm(id.clone(), spec).await.map(|_| ());
            }
        }
        if let Err(e) = &result {
            crate::vmfiles::remove_created(&created);
            // Whether the record was written is unknown when the store did not answer: the
            // intent stays for the next reconcile to settle.
            if e.kind != ErrorKind::Unavailable {
                crate::intents::finish(&self.host, &id).await;
            }
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
