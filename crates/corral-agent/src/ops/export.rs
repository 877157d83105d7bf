//! `vm export`: the VM's actor grants a read lease (halted only), a blocking thread runs the
//! archive writer into the channel the HTTP response streams, and the `vm.export` task
//! reports bytes. A client that goes away or a cancel ends the stream with an error, so a
//! partial archive is never mistaken for a complete one. The byte plumbing is in
//! [`super::transfer`].

use super::transfer::*;
use crate::error::Error;
use crate::ops::clone::spec_of;
use crate::ops::Ops;
use crate::tasks::TaskHandle;
use crate::vm::{Lease, Op};
use corral_archive::{ArchiveError, FileRole};
use corral_model::task::Operation;
use corral_model::transfer::*;
use corral_model::*;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

impl Ops {
    /// `GET /v1/vms/{name}/export`: lease the (halted) VM, start the `vm.export` task and
    /// return its id, a file name suggestion and the archive stream.
    pub async fn export_vm(
        self: &Arc<Self>,
        name: &str,
        q: ExportQuery,
    ) -> Result<(String, String, ByteStream), Error> {
        let level = q.level.unwrap_or(1);
        if !(1..=19).contains(&level) {
            return Err(Error::invalid(format!(
                "zstd level {level} is outside 1..19"
            )));
        }
        if q.format == ExportFormat::Ova
            && (q.level.is_some() || q.compress != ExportCompression::Zstd)
        {
            return Err(Error::invalid(
                "--compress and --level apply to the corral format; OVA disks are streamOptimized VMDKs",
            ));
        }
        let h = self.vm(name)?;
        let info = h.info();
        let task = self
            .host
            .tasks
            .start(Operation::VmExport, Some((&info.id, &info.name)));
        let lease = Arc::new(Lease {
            kind: crate::vm::state::LeaseKind::Export,
        });
        h.call(Op::Lease(lease.clone()), task.clone()).await?;
        // The snapshot after the lease: nothing changes the disks from here on.
        let spec = spec_of(&h.info());
        let files = crate::vmfiles::export_files(&self.host.layout, &info.id, &spec);
        let scratch = self
            .host
            .layout
            .staging()
            .join(format!("export-{}", task.id));
        let (tx, rx) = byte_channel();
        let file_name = format!(
            "{}.{}",
            spec.name,
            match q.format {
                ExportFormat::Corral => "corral",
                ExportFormat::Ova => "ova",
            }
        );
        let id = task.id.clone();
        tokio::task::spawn_blocking(move || {
            let fail_tx = tx.clone();
            let r = std::fs::create_dir_all(&scratch)
                .map_err(ArchiveError::WriteArchive)
                .and_then(|_| write_export(&spec, files, &q, level, &scratch, tx, &task));
            let _ = std::fs::remove_dir_all(&scratch);
            drop(lease);
            match r {
                Ok(note) => task.succeed(Some(note)),
                Err(e) => {
                    // End the HTTP body with an error so the client sees a failed transfer.
                    let _ = fail_tx.blocking_send(Err(io::Error::other(e.to_string())));
                    if task.is_cancelled() {
                        task.cancelled_with("the export was cancelled");
                    } else {
                        task.fail(&archive_error("cannot export", e));
                    }
                }
            }
        });
        Ok((id, file_name, rx))
    }
}

fn write_export(
    spec: &VmSpec,
    files: Vec<(FileRole, PathBuf)>,
    q: &ExportQuery,
    level: i32,
    scratch: &Path,
    tx: ByteSink,
    task: &TaskHandle,
) -> Result<String, ArchiveError> {
    let mut out = ChanWriter {
        tx,
        buf: Vec::with_capacity(CHUNK_BYTES),
        task: task.clone(),
    };
    let progress = |p: corral_archive::Progress| match p.phase {
        corral_archive::Phase::Preparing => task.phase(
            &format!("preparing {}", p.device.as_deref().unwrap_or("disks")),
            0.0,
        ),
        _ => task.bytes(p.bytes_done, p.bytes_total),
    };
    task.phase("exporting", 0.0);
    let note = match q.format {
        ExportFormat::Corral => {
            let mut disks = Vec::new();
            for d in &spec.disks {
                disks.push((
                    d.device.clone(),
                    corral_archive::open_disk_source(&d.path, d.format, scratch)?,
                ));
            }
            let opts = corral_archive::WriteOptions {
                compression: match q.compress {
                    ExportCompression::Zstd => corral_archive::Compression::Zstd,
                    ExportCompression::None => corral_archive::Compression::None,
                },
                level,
                files,
                ..Default::default()
            };
            let s = corral_archive::write_archive(&mut out, spec, disks, &opts, &progress)?;
            format!(
                "{} bytes, archive xxh3-128 {}",
                s.archive_bytes, s.archive_hash
            )
        }
        ExportFormat::Ova => {
            let disks: Vec<corral_archive::ova::OvaDisk> = spec
                .disks
                .iter()
                .map(|d| corral_archive::ova::OvaDisk {
                    device: d.device.clone(),
                    path: d.path.clone(),
                    format: d.format,
                })
                .collect();
            let s = corral_archive::ova::write_ova(&mut out, spec, &disks, scratch, &progress)?;
            // OVF has no place for a direct-boot kernel or vTPM state (see docs/formats).
            let left: Vec<&str> = files.iter().map(|(r, _)| r.as_str()).collect();
            if left.is_empty() {
                format!("{} bytes (OVA)", s.archive_bytes)
            } else {
                format!(
                    "{} bytes (OVA); not carried (OVF has no place for them): {}",
                    s.archive_bytes,
                    left.join(", ")
                )
            }
        }
    };
    out.flush().map_err(ArchiveError::WriteArchive)?;
    Ok(note)
}
