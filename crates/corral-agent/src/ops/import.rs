//! `vm import`: an upload becomes a VM. The head of the stream is recorded while the format is
//! detected and the plan parsed (checks and the name reservation happen here, before any
//! data is written; a dry run answers here); then the recorded head and the rest feed the
//! archive reader, which writes into `STATE/staging/<uuid>/`. Only when every hash has
//! verified are volumes and carried files moved into the repository and the VM recorded;
//! any failure removes the staging directory and releases the name. The byte plumbing is in
//! [`super::transfer`].

use super::transfer::*;
use crate::error::Error;
use crate::network::DEFAULT_NETWORK;
use crate::ops::clone::BASES_DIR;
use crate::ops::Ops;
use crate::spec::random_mac;
use crate::tasks::TaskHandle;
use corral_archive::{ArchiveError, ArchiveKind, FileRole, Limits};
use corral_model::host::StorageRepository;
use corral_model::task::Operation;
use corral_model::transfer::*;
use corral_model::validate::*;
use corral_model::*;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the head of an upload says.
struct Head {
    kind: ArchiveKind,
    spec: VmSpec,
    disks: Vec<PlannedDisk>,
    /// Files the archive carries beside its disks (native format 2.0).
    files: Vec<FileRole>,
    warnings: Vec<String>,
}

fn kind_name(k: ArchiveKind) -> &'static str {
    match k {
        ArchiveKind::Native => "corral",
        ArchiveKind::Ova => "ova",
        ArchiveKind::Xva => "xva",
        ArchiveKind::OvfDescriptor => "ovf",
        ArchiveKind::Unknown => "unknown",
    }
}

/// Detect the format and parse the plan from the head of `input`; returns the recorded bytes.
fn read_head(input: ChanReader, limits: &Limits) -> (Result<Head, Error>, Vec<u8>, ChanReader) {
    let mut r = Recorder {
        inner: input,
        rec: Vec::new(),
    };
    let mut first = vec![0u8; 4096];
    let mut got = 0;
    while got < first.len() {
        match r.read(&mut first[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => {
                let err = Error::caused(ErrorKind::InvalidInput, "cannot read the upload", e);
                return (Err(err), r.rec, r.inner);
            }
        }
    }
    let kind = corral_archive::detect_format(&first[..got]);
    let head_bytes = first[..got].to_vec();
    let mut replay = io::Cursor::new(head_bytes).chain(&mut r);
    let bad = |e: ArchiveError| archive_error("cannot read the archive", e);
    let result = match kind {
        ArchiveKind::Native => corral_archive::read_manifest(&mut replay, limits)
            .map_err(bad)
            .map(|(m, spec, warnings)| {
                let disks = m
                    .disks
                    .iter()
                    .map(|d| PlannedDisk {
                        device: d.device.clone(),
                        virtual_size_bytes: d.virtual_size,
                        allocated_bytes: Some(d.allocated_bytes),
                        format: DiskFormat::Qcow2,
                        bus: bus_of(&spec, &d.device),
                    })
                    .collect();
                Head {
                    kind,
                    spec,
                    disks,
                    files: m.files.iter().map(|f| f.role).collect(),
                    warnings,
                }
            }),
        ArchiveKind::Ova => corral_archive::ova::plan_ova(&mut replay, limits)
            .map_err(bad)
            .map(|p| Head {
                kind,
                disks: p
                    .disks
                    .iter()
                    .map(|d| PlannedDisk {
                        device: d.device.clone(),
                        virtual_size_bytes: d.capacity_bytes,
                        allocated_bytes: d.file.as_ref().and_then(|f| f.size),
                        format: DiskFormat::Qcow2,
                        bus: d.bus,
                    })
                    .collect(),
                spec: p.spec,
                files: Vec::new(),
                warnings: p.warnings,
            }),
        ArchiveKind::Xva => corral_archive::xva::plan_xva(&mut replay, limits)
            .map_err(bad)
            .map(|p| {
                let mut warnings = p.warnings;
                warnings.retain(|w| !w.is_empty());
                Head {
                    kind,
                    disks: p
                        .disks
                        .iter()
                        .map(|d| PlannedDisk {
                            device: d.device.clone(),
                            virtual_size_bytes: d.virtual_size,
                            allocated_bytes: None,
                            format: DiskFormat::Qcow2,
                            bus: d.bus,
                        })
                        .collect(),
                    spec: p.spec,
                    files: Vec::new(),
                    warnings,
                }
            }),
        ArchiveKind::OvfDescriptor => Err(Error::invalid(
            "a bare OVF descriptor cannot be uploaded (its disks are separate files); \
             `corral vm import FILE.ovf` sends the package as an OVA stream",
        )),
        ArchiveKind::Unknown => Err(Error::invalid(
            "the upload is not a corral archive, an OVA or an XVA (plain, gzip or zstd)",
        )),
    };
    drop(replay);
    (result, r.rec, r.inner)
}

fn bus_of(spec: &VmSpec, device: &str) -> DiskBus {
    spec.disks
        .iter()
        .find(|d| d.device == device)
        .map(|d| d.bus)
        .unwrap_or_default()
}

/// Where an import's volumes end up.
struct Target {
    sr: StorageRepository,
    as_template: bool,
}

impl Ops {
    /// Map an archive's spec onto this host: name, networks, MACs, host paths, limits.
    fn map_imported_spec(
        &self,
        spec: &mut VmSpec,
        q: &ImportQuery,
        carried: &[FileRole],
        warnings: &mut Vec<String>,
    ) -> Result<(), Error> {
        if let Some(n) = &q.name {
            spec.name = n.clone();
        }
        validate_name("VM", &spec.name).map_err(|e| {
            Error::invalid(format!(
                "the archive's VM name: {e}; choose one with --name"
            ))
        })?;
        validate_vcpus(spec.vcpus).map_err(|e| Error::invalid(format!("the archive's VM: {e}")))?;
        crate::spec::check_memory(self.host.as_ref(), spec.memory_bytes)
            .map_err(|e| e.context("the archive's VM"))?;
        if validate_cpu_weight(spec.cpu_weight).is_err() {
            warnings.push(format!(
                "CPU weight {} is out of range; set to normal ({CPU_WEIGHT_NORMAL})",
                spec.cpu_weight
            ));
            spec.cpu_weight = CPU_WEIGHT_NORMAL;
        }
        if spec.nics.len() > MAX_NICS {
            return Err(Error::invalid(format!(
                "the archive's VM has {} NICs, more than the maximum of {MAX_NICS}",
                spec.nics.len()
            )));
        }
        for n in spec.nics.iter_mut() {
            if self.network(&n.network).is_err() {
                warnings.push(format!(
                    "{}: network {:?} does not exist on this host; attached to {DEFAULT_NETWORK:?}",
                    n.device, n.network
                ));
                n.network = DEFAULT_NETWORK.into();
            }
            if q.preserve_macs {
                if validate_mac(&n.mac).is_ok() {
                    n.mac = n.mac.to_ascii_lowercase();
                } else {
                    warnings.push(format!(
                        "{}: MAC {:?} is not a unicast address; a new one was chosen",
                        n.device, n.mac
                    ));
                    n.mac = random_mac();
                }
            } else {
                n.mac = random_mac();
            }
        }
        drop_host_paths(spec, carried, warnings);
        spec.is_template = spec.is_template || q.as_template;
        if spec.is_template {
            spec.autostart = false;
        }
        Ok(())
    }

    /// `PUT /v1/imports`: read the upload from `body`. A dry run answers the plan; else the
    /// VM is imported (see the module documentation) and its info answered.
    pub async fn import_vm(
        self: &Arc<Self>,
        q: ImportQuery,
        body: ByteStream,
    ) -> Result<Result<ImportAnswer, ImportPlan>, Error> {
        if let Some(n) = &q.name {
            validate_name("VM", n).map_err(Error::invalid)?;
        }
        let sr = self.sr(q.sr.as_deref().unwrap_or("default"))?;
        let limits = Limits::default();
        let (head, recorded, reader) = {
            let limits = limits.clone();
            tokio::task::spawn_blocking(move || read_head(ChanReader::new(body), &limits))
                .await
                .map_err(|e| Error::caused(ErrorKind::Internal, "import worker failed", e))?
        };
        let mut head = head?;
        let mut warnings = std::mem::take(&mut head.warnings);
        let mut spec = head.spec.clone();
        self.map_imported_spec(&mut spec, &q, &head.files, &mut warnings)?;
        if head.disks.len() > MAX_DISKS {
            return Err(Error::invalid(format!(
                "the archive has {} disks, more than the maximum of {MAX_DISKS}",
                head.disks.len()
            )));
        }
        if q.dry_run {
            if self.host.registry().find(&spec.name).is_some() {
                return Err(Error::conflict(format!(
                    "a VM named {:?} already exists; choose another name with --name",
                    spec.name
                )));
            }
            for d in spec.disks.iter_mut() {
                d.path = PathBuf::new();
                d.sr = sr.name.clone();
                d.format = DiskFormat::Qcow2;
            }
            return Ok(Err(ImportPlan {
                format: kind_name(head.kind).into(),
                spec,
                disks: head.disks,
                warnings,
            }));
        }
        let name = spec.name.clone();
        self.host.registry_mut().reserve(&name).map_err(|e| {
            Error::conflict(format!("{}; choose another name with --name", e.message))
        })?;
        let id = uuid::Uuid::new_v4().to_string();
        let task = self
            .host
            .tasks
            .start(Operation::VmImport, Some((&id, &name)));
        let staging = self.host.layout.staging().join(&id);
        let target = Target {
            sr,
            as_template: spec.is_template,
        };
        let result = self
            .import_staged(
                &id,
                spec,
                &head,
                recorded,
                reader,
                &staging,
                &target,
                &task,
                &limits,
                &mut warnings,
            )
            .await;
        let _ = std::fs::remove_dir_all(&staging);
        match &result {
            Ok(()) => {
                let note = if warnings.is_empty() {
                    format!("imported from a {} archive", kind_name(head.kind))
                } else {
                    format!(
                        "imported from a {} archive; {}",
                        kind_name(head.kind),
                        warnings.join("; ")
                    )
                };
                task.succeed(Some(note));
            }
            Err(e) => {
                self.host.registry_mut().release(&name);
                if task.is_cancelled() {
                    task.cancelled_with("the import was cancelled; nothing was created");
                } else {
                    task.fail(e);
                }
            }
        }
        result?;
        Ok(Ok(ImportAnswer {
            task: task.id.clone(),
            vm: self.vm(&name)?.info(),
            warnings,
        }))
    }

    #[allow(clippy::too_many_arguments)]
    async fn import_staged(
        self: &Arc<Self>,
        id: &str,
        mut spec: VmSpec,
        head: &Head,
        recorded: Vec<u8>,
        mut reader: ChanReader,
        staging: &Path,
        target: &Target,
        task: &TaskHandle,
        limits: &Limits,
        warnings: &mut Vec<String>,
    ) -> Result<(), Error> {
        std::fs::create_dir_all(staging).map_err(|e| {
            Error::caused(
                ErrorKind::Internal,
                format!("cannot create {}", staging.display()),
                e,
            )
        })?;
        task.phase("importing", 0.0);
        reader.task = Some(task.clone());
        let kind = head.kind;
        let imported = {
            let (staging, limits, task) = (staging.to_path_buf(), limits.clone(), task.clone());
            tokio::task::spawn_blocking(move || {
                let mut sink = corral_archive::DirSink::new(&staging, Some(DiskFormat::Qcow2));
                let input = io::Cursor::new(recorded).chain(reader);
                let progress = |p: corral_archive::Progress| {
                    if p.phase == corral_archive::Phase::Finishing {
                        task.phase(
                            &format!("converting {}", p.device.as_deref().unwrap_or("disk")),
                            1.0,
                        );
                    } else {
                        task.bytes(p.bytes_done, p.bytes_total);
                    }
                };
                match kind {
                    ArchiveKind::Native => {
                        corral_archive::read_archive(input, &mut sink, &limits, &progress)
                    }
                    ArchiveKind::Ova => {
                        corral_archive::ova::read_ova(input, &mut sink, &limits, &progress)
                    }
                    _ => corral_archive::xva::read_xva(input, &mut sink, &limits, &progress),
                }
            })
            .await
            .map_err(|e| Error::caused(ErrorKind::Internal, "import worker failed", e))?
        };
        let imported = imported.map_err(|e| {
            if task.is_cancelled() {
                Error::new(ErrorKind::InvalidState, "the import was cancelled")
            } else {
                archive_error("cannot import the archive", e)
            }
        })?;
        for w in imported.warnings {
            if !warnings.contains(&w) {
                warnings.push(w);
            }
        }
        // Settings from the plan (already mapped), disks from what was imported.
        let mut disks = imported.spec.disks.clone();
        task.phase("moving volumes into place", 1.0);
        let dir = if target.as_template {
            target.sr.path.join(BASES_DIR)
        } else {
            target.sr.path.clone()
        };
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::caused(
                ErrorKind::Internal,
                format!("cannot create {}", dir.display()),
                e,
            )
        })?;
        let mut placed: Vec<PathBuf> = Vec::new();
        let mut result = Ok(());
        for d in disks.iter_mut() {
            let dest = dir.join(corral_storage::volume_file_name(id, &d.device, d.format));
            match place_volume(&d.path, &dest).await {
                Ok(()) => {
                    placed.push(dest.clone());
                    d.path = dest;
                    d.sr = target.sr.name.clone();
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            spec.disks = disks;
            result = self.place_files(id, &mut spec, &imported.files, &target.sr, &mut placed);
        }
        if result.is_ok() {
            result = self.add_vm(id.to_string(), spec).await.map(|_| ());
        }
        if result.is_err() {
            crate::vmfiles::remove_created(&placed);
        }
        result
    }

    /// Give an imported VM its own copies of the files its archive carried: boot files into
    /// the target repository (`<id>-kernel`, `<id>-initrd`), TPM state into its TPM directory
    /// (`crate::vmfiles`); points the spec at them. `spec` was mapped by `drop_host_paths`, so
    /// it names a boot file (with an empty path) only when the archive carries it, and never
    /// a host path from the archive. Whatever is placed is pushed onto `placed`.
    fn place_files(
        &self,
        id: &str,
        spec: &mut VmSpec,
        files: &[corral_archive::ImportedFile],
        sr: &StorageRepository,
        placed: &mut Vec<PathBuf>,
    ) -> Result<(), Error> {
        for f in files {
            let slot = match (f.role, spec.kernel_boot.as_mut()) {
                (FileRole::Kernel, Some(kb)) => Some(&mut kb.kernel),
                (FileRole::Initrd, Some(kb)) => kb.initrd.as_mut(),
                _ => None,
            };
            if let Some(slot) = slot {
                let dest = sr.path.join(crate::vmfiles::boot_file_name(id, f.role));
                crate::vmfiles::place_file(&f.path, &dest)?;
                placed.push(dest.clone());
                *slot = dest;
            } else if f.role == FileRole::TpmState && spec.tpm {
                let dir = crate::vmfiles::create_tpm_dir(&self.host.layout, id)?;
                placed.push(dir.clone());
                crate::vmfiles::place_file(&f.path, &dir.join(crate::vmfiles::TPM_STATE_FILE))?;
            }
        }
        // Every slot `drop_host_paths` left empty was filled by a verified carried file.
        if let Some(kb) = &spec.kernel_boot {
            let empty = kb.kernel.as_os_str().is_empty()
                || kb.initrd.as_ref().is_some_and(|i| i.as_os_str().is_empty());
            if empty {
                return Err(Error::internal(
                    "the archive's kernel or initrd was not imported",
                ));
            }
        }
        Ok(())
    }
}

/// Clear every host path an archive names outside its disks: CD-ROM media and direct kernel
/// boot files. An archive is untrusted, so honouring them would let a crafted one attach any
/// host file (`/etc/shadow`) to the VM, readable by its guest. The drives stay, empty; a
/// warning lists what was dropped so the user can attach media from the ISO library again.
///
/// Direct kernel boot survives when the archive carries the files (`carried`, format 2.0):
/// the spec keeps its command line and names the kernel (and initrd) with an empty path, which
/// the import fills with the VM's own copies once they are verified (`place_files`).
pub(crate) fn drop_host_paths(spec: &mut VmSpec, carried: &[FileRole], warnings: &mut Vec<String>) {
    // Install state (its PXE TFTP root is a host directory) never survives an export.
    spec.install = None;
    for c in spec.cdroms.iter_mut() {
        if let Some(m) = c.media.take() {
            warnings.push(format!(
                "{}: media {} from the archive was not attached (an archive cannot name host files); the drive is empty",
                c.device,
                m.display()
            ));
        }
    }
    if spec.cdroms.is_empty() {
        spec.cdroms.push(Cdrom {
            device: "cdrom0".into(),
            bus: DiskBus::Sata,
            media: None,
        });
    }
    let has = |r: FileRole| carried.contains(&r);
    if spec.kernel_boot.is_none() && (has(FileRole::Kernel) || has(FileRole::Initrd)) {
        warnings.push(
            "the archive carries boot files the VM does not boot from; they were ignored".into(),
        );
    }
    if spec.tpm != has(FileRole::TpmState) {
        if spec.tpm {
            warnings.push(
                "the archive carries no TPM state; the VM's TPM starts empty (keys sealed to the old one are lost)".into(),
            );
        } else {
            warnings.push(
                "the archive carries TPM state for a VM without a TPM; it was ignored".into(),
            );
        }
    }
    if let Some(kb) = spec.kernel_boot.take() {
        if has(FileRole::Kernel) {
            let initrd = match kb.initrd {
                Some(_) if has(FileRole::Initrd) => Some(PathBuf::new()),
                Some(i) => {
                    warnings.push(format!(
                        "the initrd {} is not in the archive; the VM boots its kernel without one",
                        i.display()
                    ));
                    None
                }
                None => None,
            };
            spec.kernel_boot = Some(KernelBoot {
                kernel: PathBuf::new(),
                initrd,
                cmdline: kb.cmdline,
            });
            return;
        }
        let mut files = vec![kb.kernel.display().to_string()];
        if let Some(i) = &kb.initrd {
            files.push(i.display().to_string());
        }
        warnings.push(format!(
            "direct kernel boot from {} was dropped (an archive cannot name host files); the VM boots from its disks",
            files.join(" and ")
        ));
        spec.boot_device = BootDevice::Disk;
    }
}

/// Move a verified staged volume into its repository: a rename on the same file system, else a
/// copy under a temporary name renamed at the end.
pub(super) async fn place_volume(staged: &Path, dest: &Path) -> Result<(), Error> {
    if crate::vmfiles::rename_new(staged, dest)? {
        return Ok(());
    }
    let tmp = dest.with_extension("partial");
    let opts = corral_storage::qemu_img::ConvertOptions {
        output_format: "qcow2",
        input_format: Some("qcow2"),
        shared_read: false,
    };
    corral_storage::qemu_img::convert(staged, &tmp, opts, |_| {}, std::future::pending())
        .await
        .map_err(|e| {
            Error::caused(
                ErrorKind::Internal,
                format!("cannot copy {} into {}", staged.display(), dest.display()),
                e,
            )
        })?;
    std::fs::rename(&tmp, dest).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::caused(
            ErrorKind::Internal,
            format!("cannot rename {}", tmp.display()),
            e,
        )
    })
}
