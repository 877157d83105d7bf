//! `vm import IMAGE --convert` (V2V, issue 12): an offline disk image of a Linux server
//! (raw, qcow2 or VMDK) becomes a VM whose own copy of the disk is converted to boot on
//! virtio-blk and virtio-net. The client's image is never touched: it is uploaded, and
//! everything happens to the copy in `STATE/staging/<vm-uuid>/` until the VM is recorded.
//!
//! How a request flows (`PUT /v1/imports?convert=true&name=N`): the first 64 KiB tell the
//! format and size ([`detect_image`]); the name is checked and the space the import needs
//! is compared with what the repository has, all before anything is written (a dry run
//! answers here). Then, as task `vm.import` (phase `copying`), the upload is written into
//! staging: a raw image straight into a qcow2 volume (one pass, zero blocks left
//! unallocated), a qcow2 or VMDK image as a file that `qemu-img info` must find
//! self-contained ([`check_image_info`]) and `qemu-img measure` sizes for the exact space
//! check. The request answers 202 with the task; the task goes on in the background:
//! qemu-img converts a qcow2/VMDK upload into the VM's volume and grows it to `--disk-size`,
//! `corral_convert` inspects and converts the guest in one libguestfs appliance (phases
//! `inspecting`, `converting`; refusals such as "no Linux" end the task with a typed error),
//! a root that cannot grow in place is grown by `virt-resize`, and the volume is moved into
//! the repository and the VM recorded with the firmware the source had. Its `changes` list
//! every change; the VM's description says where it came from. Any failure or cancel removes
//! the staging directory (and a volume already moved) and releases the name, so nothing is
//! left half-created; an agent killed meanwhile cleans up at start like any import
//! ([`super::transfer::clean_staging`]).

use super::import_image_plan::*;
use super::transfer::*;
use crate::error::Error;
use crate::ops::Ops;
use crate::tasks::TaskHandle;
use corral_model::task::Operation;
use corral_model::transfer::*;
use corral_model::validate::validate_name;
use corral_model::*;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Blocks compared with zero before they are written (and left as holes when they are).
const BLOCK: usize = 64 << 10;
/// Bytes read from the upload at a time.
const READ_BYTES: usize = 1 << 20;

/// Shares of the task's progress: copying, inspecting, converting.
const COPY_END: f64 = 0.35;
const INSPECT_END: f64 = 0.45;
const CONVERT_END: f64 = 0.95;

pub(super) fn refusal(kind: ErrorKind, message: impl Into<String>, code: &str) -> Error {
    Error::new(kind, message).with_details(serde_json::json!({ "refusal": code }))
}

fn no_space(sr: &str, place: Place, needed: u64, free: u64) -> Error {
    let where_ = match place {
        Place::Repository => format!("repository {sr:?}"),
        Place::Staging => "the agent's staging directory".into(),
    };
    Error::new(
        ErrorKind::InvalidInput,
        format!(
            "not enough space in {where_}: the import needs about {}, {} is free",
            format_size(needed),
            format_size(free)
        ),
    )
    .with_details(serde_json::json!({
        "refusal": "no_space", "needed_bytes": needed, "free_bytes": free,
    }))
}

/// The error of a failed conversion, with a kind and a refusal code clients can act on.
fn convert_error(e: corral_convert::ConvertError) -> Error {
    use corral_convert::{ConvertError as C, Refusal as R};
    let (kind, code) = match &e {
        C::Refused(R::NoLinux { .. }) => (ErrorKind::InvalidInput, "no_linux"),
        C::Refused(_) => (ErrorKind::Unsupported, "unsupported_guest"),
        C::Unreadable { .. } => (ErrorKind::InvalidInput, "unreadable_file_system"),
        C::Cancelled => (ErrorKind::InvalidState, "cancelled"),
        C::Appliance(_) | C::GuestCommand { .. } | C::Resize(_) => {
            (ErrorKind::Internal, "conversion_failed")
        }
    };
    Error::caused(kind, "cannot convert the image", e)
        .with_details(serde_json::json!({ "refusal": code }))
}

/// What the background part of an import needs.
pub(super) struct Received {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) spec: VmSpec,
    pub(super) image: ImageHead,
    pub(super) staging: PathBuf,
    /// The staged upload (qcow2/VMDK) or the volume already written (raw, P2V).
    pub(super) staged: PathBuf,
    pub(super) sr: corral_model::host::StorageRepository,
    pub(super) network: ConvertNetwork,
    /// Where the disk came from, for the VM's description.
    pub(super) origin: Origin,
    /// Directories the conversion empties (left out of a P2V copy).
    pub(super) emptied: Vec<String>,
}

/// Where a converted disk came from.
pub(super) enum Origin {
    /// `vm import IMAGE --convert`.
    Image,
    /// `corral p2v` from a running server: its host name, how the copy was made consistent,
    /// and the description the user gave, if any.
    P2v {
        host: String,
        method: String,
        description: Option<String>,
    },
}

impl Ops {
    /// `PUT /v1/imports?convert=true`: the task of the conversion once the image is received
    /// and checked, or the plan of a dry run. See the module documentation.
    pub async fn import_image(
        self: &Arc<Self>,
        q: ImportQuery,
        body: ByteStream,
        length: Option<u64>,
    ) -> Result<Result<String, ImportPlan>, Error> {
        let name = q.name.clone().ok_or_else(|| {
            Error::invalid("a disk image carries no VM name; give the new VM one with --name")
        })?;
        validate_name("VM", &name).map_err(Error::invalid)?;
        if q.as_template || q.preserve_macs {
            return Err(Error::invalid(
                "--as-template and --preserve-macs are for archives; convert the image first (then `corral vm convert-to-template` if wanted)",
            ));
        }
        let sr = self.sr(q.sr.as_deref().unwrap_or("default"))?;
        if !on_path("guestfish") {
            return Err(refusal(
                ErrorKind::Unsupported,
                "this host cannot convert disk images: guestfish is not installed (Debian package libguestfs-tools, with a kernel package such as linux-image-amd64 for its appliance)",
                "no_converter",
            ));
        }
        let (head, reader) = tokio::task::spawn_blocking(move || {
            let mut r = ChanReader::new(body);
            let mut head = vec![0u8; IMAGE_HEAD_BYTES];
            let mut got = 0;
            while got < head.len() {
                match r.read(&mut head[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) => return Err(e),
                }
            }
            head.truncate(got);
            Ok((head, r))
        })
        .await
        .map_err(|e| Error::caused(ErrorKind::Internal, "import worker failed", e))?
        .map_err(|e| Error::caused(ErrorKind::InvalidInput, "cannot read the upload", e))?;
        // A dry run uploads only the image's first bytes; the client says how long it is.
        let whole = match (q.dry_run, q.image_bytes) {
            (true, Some(n)) => Some(n.max(length.unwrap_or(0))),
            _ => length,
        };
        let image = detect_image(&head, whole).map_err(|e| {
            refusal(
                ErrorKind::InvalidInput,
                format!("cannot convert the upload: {e}"),
                "bad_image",
            )
        })?;
        let disk_size =
            converted_disk_size(q.disk_size_bytes, image.virtual_size, "the image's disk")?;
        let id = uuid::Uuid::new_v4().to_string();
        let spec = self.converted_vm_spec(&id, &name, disk_size, &sr)?;

        // Space, before anything is written: a raw upload becomes the volume as it arrives;
        // a qcow2 or VMDK upload is staged and then converted.
        let staging_root = self.host.layout.staging();
        let (data, upload) = match image.format {
            ImageFormat::Raw => (q.data_bytes.unwrap_or(0).min(image.virtual_size), 0),
            _ => (whole.unwrap_or(0), whole.unwrap_or(0)),
        };
        check_space(&sr, &staging_root, data, upload, 0)?;

        if q.dry_run {
            if self.host.registry().find(&name).is_some() {
                return Err(Error::conflict(format!(
                    "a VM named {name:?} already exists; choose another name with --name"
                )));
            }
            let mut shown = spec.clone();
            for d in shown.disks.iter_mut() {
                d.path = PathBuf::new();
            }
            return Ok(Err(ImportPlan {
                format: image.format.as_str().into(),
                spec: shown,
                disks: vec![PlannedDisk {
                    device: "disk0".into(),
                    virtual_size_bytes: disk_size,
                    allocated_bytes: q.data_bytes.or(whole),
                    format: DiskFormat::Qcow2,
                    bus: DiskBus::Virtio,
                }],
                warnings: vec![
                    "the image is converted to boot on virtio once uploaded; the firmware (BIOS or UEFI) is the one the image boots with".into(),
                ],
            }));
        }

        self.host.registry_mut().reserve(&name).map_err(|e| {
            Error::conflict(format!("{}; choose another name with --name", e.message))
        })?;
        let task = self
            .host
            .tasks
            .start(Operation::VmImport, Some((&id, &name)));
        let staging = staging_root.join(&id);
        let received = self
            .receive_image(&id, &image, head, reader, length, &staging, &sr, &task)
            .await;
        let staged = match received {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                self.host.registry_mut().release(&name);
                if task.is_cancelled() {
                    task.cancelled_with("the import was cancelled; nothing was created");
                } else {
                    task.fail(&e);
                }
                return Err(e);
            }
        };
        let job = Received {
            id,
            name,
            spec,
            image,
            staging,
            staged,
            sr,
            network: q.network.unwrap_or_default(),
            origin: Origin::Image,
            emptied: Vec::new(),
        };
        Ok(Ok(self.spawn_conversion(job, task)))
    }

    /// Convert a received disk in the background (see [`Self::convert_received`]): on
    /// success the VM is recorded; on failure or cancel nothing is left and the name is free.
    /// The task's id.
    pub(super) fn spawn_conversion(self: &Arc<Self>, job: Received, task: TaskHandle) -> String {
        let ops = self.clone();
        let task_id = task.id.clone();
        tokio::spawn(async move {
            let (name, staging) = (job.name.clone(), job.staging.clone());
            let result = ops.convert_received(job, &task).await;
            let _ = std::fs::remove_dir_all(&staging);
            match result {
                Ok((changes, note)) => {
                    task.set_changes(&changes);
                    task.succeed(Some(note));
                }
                Err((e, changes)) => {
                    ops.host.registry_mut().release(&name);
                    task.set_changes(&changes);
                    if task.is_cancelled() {
                        task.cancelled_with("the import was cancelled; nothing was created");
                    } else {
                        task.fail(&e);
                    }
                }
            }
        });
        task_id
    }

    /// Write the upload into `staging` (phase `copying`) and check it; the staged file.
    #[allow(clippy::too_many_arguments)]
    async fn receive_image(
        &self,
        id: &str,
        image: &ImageHead,
        head: Vec<u8>,
        mut reader: ChanReader,
        length: Option<u64>,
        staging: &Path,
        sr: &corral_model::host::StorageRepository,
        task: &TaskHandle,
    ) -> Result<PathBuf, Error> {
        std::fs::create_dir_all(staging).map_err(|e| {
            Error::caused(
                ErrorKind::Internal,
                format!("cannot create {}", staging.display()),
                e,
            )
        })?;
        task.phase_span("copying", 0.0, COPY_END * 0.6);
        reader.task = Some(task.clone());
        let dest = match image.format {
            ImageFormat::Raw => staging.join("disk0.qcow2"),
            f => staging.join(format!("upload.{}", f.as_str())),
        };
        // A raw disk is looked at as it passes: one with nothing Linux on it is refused
        // without an appliance.
        let probe = (image.format == ImageFormat::Raw).then(|| {
            corral_convert::probe::Probe::new(
                &head[..head.len().min(corral_convert::probe::TABLE_BYTES)],
            )
        });
        let written = {
            let (dest, image, task) = (dest.clone(), *image, task.clone());
            tokio::task::spawn_blocking(move || {
                let mut probe = probe;
                let r = receive(
                    io::Cursor::new(head).chain(reader),
                    &dest,
                    &image,
                    length,
                    &task,
                    probe.as_mut(),
                );
                r.map(|n| (n, probe))
            })
            .await
            .map_err(|e| Error::caused(ErrorKind::Internal, "import worker failed", e))?
        };
        let (received, probe) = written.map_err(|e| {
            if task.is_cancelled() {
                Error::new(ErrorKind::InvalidState, "the import was cancelled")
            } else if e.raw_os_error() == Some(libc::ENOSPC) {
                Error::caused(
                    ErrorKind::InvalidInput,
                    "not enough space to receive the image: no space left on the device",
                    e,
                )
                .with_details(serde_json::json!({ "refusal": "no_space" }))
            } else {
                Error::caused(ErrorKind::InvalidInput, "cannot receive the image", e)
            }
        })?;
        tracing::info!(vm = %id, bytes = received, format = image.format.as_str(), "image received");
        if let Some(corral_convert::probe::Verdict::NoLinux(found)) = probe.map(|p| p.verdict()) {
            return Err(refusal(
                ErrorKind::InvalidInput,
                format!("cannot convert the image: no Linux system found on the image ({found})"),
                "no_linux",
            ));
        }
        let staged_bytes = std::fs::metadata(&dest)
            .map(|m| m.blocks() * 512)
            .unwrap_or(0);
        let (data, upload) = match image.format {
            // Already the volume: only the conversion's margin (and a copy across file
            // systems) is still to come.
            ImageFormat::Raw => (staged_bytes, 0),
            f => {
                let info =
                    qemu_img_json(&["info", "-f", f.as_str(), "--output=json"], &dest).await?;
                check_image_info(&info, &dest.to_string_lossy(), f).map_err(|e| {
                    refusal(
                        ErrorKind::InvalidInput,
                        format!("cannot convert the upload: {e}"),
                        "bad_image",
                    )
                })?;
                let m = qemu_img_json(
                    &["measure", "-f", f.as_str(), "-O", "qcow2", "--output=json"],
                    &dest,
                )
                .await?;
                (m["required"].as_u64().unwrap_or(0), staged_bytes)
            }
        };
        // What is staged is on disk already: only the rest is still to be written.
        check_space(sr, &self.host.layout.staging(), data, upload, staged_bytes)?;
        Ok(dest)
    }

    /// The background part: copy into the volume, convert, place, record. On failure the
    /// error and the changes made before it (for the record).
    async fn convert_received(
        self: &Arc<Self>,
        job: Received,
        task: &TaskHandle,
    ) -> Result<(Vec<String>, String), (Error, Vec<String>)> {
        let mut changes = Vec::new();
        let volume = job.staging.join("disk0.qcow2");
        let fail = |e: Error, c: &Vec<String>| (e, c.clone());
        if job.image.format != ImageFormat::Raw {
            task.phase_span("copying", COPY_END * 0.6, COPY_END);
            let opts = corral_storage::qemu_img::ConvertOptions {
                output_format: "qcow2",
                input_format: Some(job.image.format.as_str()),
                shared_read: false,
            };
            let mut t = task.clone();
            let progress_task = task.clone();
            corral_storage::qemu_img::convert(
                &job.staged,
                &volume,
                opts,
                move |pct| {
                    let f = (pct / 100.0).clamp(0.0, 1.0);
                    let from = COPY_END * 0.6;
                    progress_task.phase_span("copying", from + (COPY_END - from) * f, COPY_END)
                },
                async move { t.cancelled().await },
            )
            .await
            .map_err(|e| {
                fail(
                    Error::caused(
                        ErrorKind::Internal,
                        "cannot copy the image into the VM's volume",
                        e,
                    ),
                    &changes,
                )
            })?;
            let _ = std::fs::remove_file(&job.staged);
        }
        let disk_size = job.spec.disks[0].size_bytes;
        let grow = disk_size > job.image.virtual_size;
        if grow {
            let size = disk_size.to_string();
            let args = [
                std::ffi::OsStr::new("resize"),
                std::ffi::OsStr::new("-q"),
                std::ffi::OsStr::new("-f"),
                std::ffi::OsStr::new("qcow2"),
                volume.as_os_str(),
                std::ffi::OsStr::new(&size),
            ];
            corral_storage::qemu_img::run("resize", &volume, &args)
                .await
                .map_err(|e| {
                    fail(
                        Error::caused(ErrorKind::Internal, "cannot grow the VM's volume", e),
                        &changes,
                    )
                })?;
            changes.push(format!(
                "grew the disk from {} to {}",
                format_size(job.image.virtual_size),
                format_size(disk_size)
            ));
        }

        task.phase_span("inspecting", COPY_END, INSPECT_END);
        let appliance = corral_convert::ApplianceOptions {
            tcg: self.runtime.accel_name() == "tcg",
            command_timeout: std::time::Duration::from_secs(10 * 60),
            // Two vCPUs: update-initramfs runs its compressor beside the rest (about 15 %
            // faster here under TCG, measured on the fixture: 100 s instead of 117 s).
            smp: std::thread::available_parallelism()
                .map(|n| n.get().min(2) as u32)
                .unwrap_or(1),
        };
        let request = corral_convert::Request {
            disk: &volume,
            format: "qcow2",
            options: corral_convert::Options {
                network: match job.network {
                    ConvertNetwork::Dhcp => corral_convert::NetworkMode::Dhcp,
                    ConvertNetwork::Keep => corral_convert::NetworkMode::Keep,
                },
                nic_macs: job.spec.nics.iter().map(|n| n.mac.clone()).collect(),
                grow,
                emptied: job.emptied.clone(),
            },
            appliance: appliance.clone(),
        };
        let progress_task = task.clone();
        let progress = move |stage: corral_convert::Stage, f: f64, what: &str| {
            tracing::debug!(stage = ?stage, progress = f, what, "conversion");
            let (name, from, to) = match stage {
                corral_convert::Stage::Inspecting => ("inspecting", COPY_END, INSPECT_END),
                corral_convert::Stage::Converting => ("converting", INSPECT_END, CONVERT_END),
            };
            progress_task.phase_span(name, from + (to - from) * f.clamp(0.0, 1.0), to);
        };
        let mut t = task.clone();
        let report =
            corral_convert::convert_disk(&request, &progress, async move { t.cancelled().await })
                .await
                .map_err(|e| fail(convert_error(e), &changes))?;
        changes.extend(report.changes.iter().cloned());
        task.set_changes(&changes);
        tracing::info!(vm = %job.name, os = %report.os, changes = changes.len(), "guest converted");

        if let Some(expand) = &report.expand_by_copy {
            task.phase_span("converting", CONVERT_END, CONVERT_END);
            let resized = job.staging.join("disk0-resized.qcow2");
            corral_storage::create_volume(&resized, DiskFormat::Qcow2, disk_size, None)
                .await
                .map_err(|e| {
                    fail(
                        Error::caused(ErrorKind::Internal, "cannot create the grown volume", e),
                        &changes,
                    )
                })?;
            let mut t = task.clone();
            let change = corral_convert::expand_by_copy(
                &volume,
                &resized,
                "qcow2",
                expand,
                &appliance,
                async move { t.cancelled().await },
            )
            .await
            .map_err(|e| fail(convert_error(e), &changes))?;
            std::fs::rename(&resized, &volume).map_err(|e| {
                fail(
                    Error::caused(ErrorKind::Internal, "cannot replace the volume", e),
                    &changes,
                )
            })?;
            changes.push(change);
            task.set_changes(&changes);
        }

        task.phase_span("moving the volume into place", CONVERT_END, 1.0);
        let mut spec = job.spec;
        let dest = spec.disks[0].path.clone();
        if let Err(e) = super::import::place_volume(&volume, &dest).await {
            return Err(fail(e, &changes));
        }
        spec.firmware = report.firmware;
        spec.description = match &job.origin {
            Origin::Image => converted_description(
                job.image.format,
                &report.os,
                report.firmware.as_str(),
                changes.len(),
                &task.id,
            ),
            Origin::P2v {
                description: Some(d),
                ..
            } => d.clone(),
            Origin::P2v { host, method, .. } => p2v_description(
                host,
                method,
                &report.os,
                report.firmware.as_str(),
                changes.len(),
                &task.id,
            ),
        };
        if let Err(e) = self.add_vm(job.id.clone(), spec).await {
            let _ = std::fs::remove_file(&dest);
            return Err(fail(e, &changes));
        }
        task.phase_span("done", 1.0, 1.0);
        let mut note = format!(
            "converted {} ({}) to boot on virtio as VM {:?} in repository {:?}: {} changes",
            report.os,
            report.firmware.as_str(),
            job.name,
            job.sr.name,
            changes.len()
        );
        if !report.warnings.is_empty() {
            note.push_str("; warnings: ");
            note.push_str(&report.warnings.join("; "));
        }
        Ok((changes, note))
    }
}

/// The converted VM's disk size: the source's, or `requested` when larger (whole sectors).
pub(super) fn converted_disk_size(
    requested: Option<u64>,
    source: u64,
    what: &str,
) -> Result<u64, Error> {
    match requested {
        Some(s) if s < source => Err(Error::invalid(format!(
            "--disk-size {} is smaller than {what} ({}); disks are not shrunk",
            format_size(s),
            format_size(source)
        ))),
        Some(s) if s > MAX_DISK_BYTES => Err(Error::invalid(format!(
            "--disk-size {} is more than the largest disk taken ({})",
            format_size(s),
            format_size(MAX_DISK_BYTES)
        ))),
        Some(s) => Ok(s.div_ceil(512) * 512),
        None => Ok(source),
    }
}

impl Ops {
    /// The spec of a converted server: the host's defaults, and one virtio qcow2 disk of
    /// `disk_size` in `sr` (the firmware is set once the conversion knows it).
    pub(super) fn converted_vm_spec(
        &self,
        id: &str,
        name: &str,
        disk_size: u64,
        sr: &corral_model::host::StorageRepository,
    ) -> Result<VmSpec, Error> {
        let mut spec = crate::spec::spec_from_request(
            self.host.as_ref(),
            id,
            &corral_model::api::VmCreateRequest {
                name: name.to_string(),
                disks: Some(vec![]),
                ..Default::default()
            },
        )?;
        spec.disks.push(Disk {
            device: "disk0".into(),
            size_bytes: disk_size,
            format: DiskFormat::Qcow2,
            bus: DiskBus::Virtio,
            sr: sr.name.clone(),
            path: sr.path.join(corral_storage::volume_file_name(
                id,
                "disk0",
                DiskFormat::Qcow2,
            )),
        });
        Ok(spec)
    }
}

/// Whether `program` is an executable in a directory of `PATH`.
pub(super) fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            std::fs::metadata(d.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Refuse when the import cannot fit (see [`space_needed`]).
pub(super) fn check_space(
    sr: &corral_model::host::StorageRepository,
    staging: &Path,
    data: u64,
    upload: u64,
    written: u64,
) -> Result<(), Error> {
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    let same = match (dev(staging), dev(&sr.path)) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    let needs = space_needed(data, upload, written, same);
    let free = |p: Place| {
        let path = match p {
            Place::Repository => sr.path.as_path(),
            Place::Staging => staging,
        };
        corral_storage::fs_space(path)
            .map(|(f, _)| f)
            .unwrap_or(u64::MAX)
    };
    match shortfall(&needs, free) {
        Some((place, needed, free)) => Err(no_space(&sr.name, place, needed, free)),
        None => Ok(()),
    }
}

/// `qemu-img ARGS PATH` answering JSON (info, measure), with the format always given: an
/// uploaded image is never probed.
async fn qemu_img_json(args: &[&str], path: &Path) -> Result<serde_json::Value, Error> {
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    all.push(path.as_os_str());
    let run = corral_storage::qemu_img::run(
        if args[0] == "info" { "info" } else { "measure" },
        path,
        &all,
    );
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::Timeout,
                "qemu-img did not read the image within 120 s",
            )
        })?
        .map_err(|e| Error::caused(ErrorKind::InvalidInput, "cannot read the image", e))?;
    serde_json::from_slice(&out)
        .map_err(|e| Error::caused(ErrorKind::Internal, "cannot parse qemu-img's answer", e))
}

/// Write the upload to `dest`: a raw image as a qcow2 volume of its size, a qcow2 or VMDK
/// image as the file it is; zero blocks are never written. The bytes received.
fn receive(
    mut input: impl Read,
    dest: &Path,
    image: &ImageHead,
    length: Option<u64>,
    task: &TaskHandle,
    mut probe: Option<&mut corral_convert::probe::Probe>,
) -> io::Result<u64> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .open(dest)?;
    enum Out {
        Qcow2(corral_archive::qcow2::Qcow2Writer),
        File(std::fs::File),
    }
    let out = match image.format {
        ImageFormat::Raw => Out::Qcow2(corral_archive::qcow2::Qcow2Writer::new(
            file,
            image.virtual_size,
        )?),
        _ => Out::File(file),
    };
    let total = length.unwrap_or(0);
    let mut buf = vec![0u8; READ_BYTES];
    let mut done = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match input.read(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            break;
        }
        if let Some(p) = probe.as_deref_mut() {
            p.feed(done, &buf[..filled]);
        }
        for (i, block) in buf[..filled].chunks(BLOCK).enumerate() {
            if block.iter().all(|&b| b == 0) {
                continue;
            }
            let at = done + (i * BLOCK) as u64;
            match &out {
                Out::Qcow2(w) => w.write_at(at, block)?,
                Out::File(f) => f.write_all_at(block, at)?,
            }
        }
        done += filled as u64;
        if length.is_some_and(|l| done > l) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the upload is longer than its Content-Length",
            ));
        }
        task.bytes(done, total.max(done));
        if filled < buf.len() {
            break;
        }
    }
    if let Some(l) = length {
        if done != l {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the upload ended after {done} of {l} bytes"),
            ));
        }
    }
    match out {
        Out::Qcow2(w) => {
            w.finish()?;
        }
        Out::File(f) => {
            f.set_len(done)?;
            f.sync_all()?;
        }
    }
    Ok(done)
}
