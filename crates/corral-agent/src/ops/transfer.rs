//! Export and import: the agent side of `GET /v1/vms/{name}/export` and `PUT /v1/imports`.
//!
//! The formats live in `corral-archive`, whose readers and writers are synchronous and stream
//! through `Read`/`Write`; here they run on blocking threads joined to the HTTP body by bounded
//! channels of byte chunks, so memory stays bounded whatever the disk size and a slow client
//! slows the export down instead of filling memory.
//!
//! Export: the VM's actor grants a read lease (the VM must be halted; while the lease lives it
//! cannot start, be deleted, change disks or be cloned), a task `vm.export` reports bytes,
//! and the archive is written into the channel the HTTP response streams. A write error (the
//! client went away) or a cancelled task stops the writer; the stream then ends with an error,
//! so a client never mistakes a partial archive for a complete one.
//!
//! Import: the head of the upload is read while being recorded (at most [`HEAD_LIMIT`]), the
//! format is detected and the plan (manifest, OVF descriptor or `ova.xml`) is parsed, and the
//! target name is checked and reserved: a dry run answers here, and a name collision fails
//! here, before any data is written. Then the recorded head and the rest of the stream feed
//! the reader, which writes into `STATE/staging/<uuid>/`. Only when the whole archive has been
//! verified are the volumes moved into the repository and the VM recorded; on any error or
//! cancel the staging directory is removed and the name released. Stale staging directories
//! (an agent that died mid-import) are removed at agent start.

use crate::error::Error;
use crate::network::DEFAULT_NETWORK;
use crate::ops::clone::{spec_of, BASES_DIR};
use crate::ops::Ops;
use crate::spec::random_mac;
use crate::tasks::TaskHandle;
use crate::vm::{Lease, Op};
use bytes::Bytes;
use corral_archive::{ArchiveError, ArchiveKind, FileRole, Limits};
use corral_model::host::StorageRepository;
use corral_model::task::Operation;
use corral_model::transfer::*;
use corral_model::validate::*;
use corral_model::*;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Chunks in flight between a blocking archive thread and the HTTP body.
const CHANNEL_CHUNKS: usize = 8;
/// Size of the chunks an export sends.
const CHUNK_BYTES: usize = 1 << 20;
/// Most bytes of an upload recorded while its plan is read (manifest / descriptor / ova.xml).
pub const HEAD_LIMIT: usize = 32 << 20;

/// A stream of body chunks: what an export produces and an import consumes.
pub type ByteStream = mpsc::Receiver<io::Result<Bytes>>;
pub type ByteSink = mpsc::Sender<io::Result<Bytes>>;

/// A bounded channel for an upload or download body.
pub fn byte_channel() -> (ByteSink, ByteStream) {
    mpsc::channel(CHANNEL_CHUNKS)
}

/// Remove staging directories left by an agent that stopped mid-import or mid-export. Returns
/// the ids of the interrupted imports (directories named by a UUID): the agent stopped before
/// removing their staging directory, so it may also have stopped after moving some of their
/// volumes into a repository and before recording the VM; see
/// [`Ops::remove_interrupted_import_volumes`].
pub fn clean_staging(staging: &Path) -> Vec<String> {
    let mut ids = Vec::new();
    if let Ok(entries) = std::fs::read_dir(staging) {
        for e in entries.flatten() {
            tracing::info!(path = %e.path().display(), "removing stale staging directory");
            let _ = std::fs::remove_dir_all(e.path());
            let name = e.file_name().to_string_lossy().into_owned();
            if uuid::Uuid::parse_str(&name).is_ok() {
                ids.push(name);
            }
        }
    }
    let _ = std::fs::create_dir_all(staging);
    ids
}

/// Files in `dirs` that belong to one of the imports `ids`: volume names start with the VM id
/// (`<id>-<device>.<format>`, or `.partial` while copied across file systems), and an import's
/// id is a fresh UUID, so no other VM's volume can match.
fn import_volumes_in(dirs: &[PathBuf], ids: &[String]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in dirs {
        let Ok(entries) = std::fs::read_dir(d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let owned = ids.iter().any(|id| {
                name.strip_prefix(id.as_str())
                    .is_some_and(|rest| rest.starts_with('-'))
            });
            if owned && e.path().is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

impl Ops {
    /// Remove volumes an interrupted import (`ids` from [`clean_staging`]) had moved into a
    /// repository before the agent stopped, unless its VM was recorded (then the import had
    /// finished and only its staging directory was left).
    pub(crate) fn remove_interrupted_import_volumes(&self, ids: &[String]) {
        let recorded: std::collections::HashSet<String> =
            self.list_vms().into_iter().map(|v| v.id).collect();
        let ids: Vec<String> = ids
            .iter()
            .filter(|id| !recorded.contains(*id))
            .cloned()
            .collect();
        if ids.is_empty() {
            return;
        }
        let Ok(srs) = self.list_srs() else { return };
        let dirs: Vec<PathBuf> = srs
            .iter()
            .flat_map(|sr| [sr.path.clone(), sr.path.join(BASES_DIR)])
            .collect();
        for id in &ids {
            // Its TPM state, if the archive carried one (`crate::vmfiles`).
            let _ = std::fs::remove_dir_all(crate::vmfiles::tpm_dir(&self.host.layout, id));
        }
        for p in import_volumes_in(&dirs, &ids) {
            match std::fs::remove_file(&p) {
                Ok(()) => {
                    tracing::info!(path = %p.display(), "removed a volume of an interrupted import")
                }
                Err(e) => tracing::warn!(path = %p.display(), error = %e,
                    "cannot remove a volume of an interrupted import"),
            }
        }
    }
}

fn archive_error(what: &str, e: ArchiveError) -> Error {
    Error::caused(e.kind(), what, e)
}

/// Writes an archive into the body channel in chunks; fails once the task is cancelled or the
/// client has gone.
struct ChanWriter {
    tx: ByteSink,
    buf: Vec<u8>,
    task: TaskHandle,
}

impl ChanWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.task.is_cancelled() {
            return Err(io::Error::other("the export was cancelled"));
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        self.tx
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChanWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK_BYTES - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Reads an upload from the body channel; fails once the task is cancelled.
pub struct ChanReader {
    rx: ByteStream,
    cur: Bytes,
    task: Option<TaskHandle>,
}

impl ChanReader {
    pub fn new(rx: ByteStream) -> Self {
        ChanReader {
            rx,
            cur: Bytes::new(),
            task: None,
        }
    }
}

impl Read for ChanReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            if self.task.as_ref().is_some_and(|t| t.is_cancelled()) {
                return Err(io::Error::other("the import was cancelled"));
            }
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

/// Records what is read through it (up to a limit), so the head of a stream can be parsed
/// and then replayed to the real reader.
struct Recorder<R> {
    inner: R,
    rec: Vec<u8>,
}

impl<R: Read> Read for Recorder<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        if self.rec.len() + n > HEAD_LIMIT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the archive's description (manifest, descriptor or ova.xml) does not end within its first {} MiB",
                    HEAD_LIMIT >> 20
                ),
            ));
        }
        self.rec.extend_from_slice(&out[..n]);
        Ok(n)
    }
}

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

/// Move a verified staged volume into its repository: a rename on the same file system, else a
/// copy under a temporary name renamed at the end.
async fn place_volume(staged: &Path, dest: &Path) -> Result<(), Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupted_imports_are_found_by_staging_id() {
        let root = tempfile::tempdir().unwrap();
        let staging = root.path().join("staging");
        let id = uuid::Uuid::new_v4().to_string();
        let other = uuid::Uuid::new_v4().to_string();
        std::fs::create_dir_all(staging.join(&id)).unwrap();
        std::fs::create_dir_all(staging.join("export-123")).unwrap();
        assert_eq!(clean_staging(&staging), vec![id.clone()]);
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);

        let sr = root.path().join("sr");
        let bases = sr.join(BASES_DIR);
        std::fs::create_dir_all(&bases).unwrap();
        let mine = [
            sr.join(format!("{id}-disk0.qcow2")),
            sr.join(format!("{id}-disk1.partial")),
            bases.join(format!("{id}-disk2.qcow2")),
        ];
        let theirs = [
            sr.join(format!("{other}-disk0.qcow2")),
            sr.join(format!("{id}x-disk0.qcow2")),
        ];
        for p in mine.iter().chain(&theirs) {
            std::fs::write(p, b"x").unwrap();
        }
        let mut want = mine.to_vec();
        want.sort();
        assert_eq!(import_volumes_in(&[sr.clone(), bases], &[id]), want);
    }

    #[test]
    fn imported_specs_name_no_host_files() {
        let mut spec: VmSpec = serde_json::from_value(serde_json::json!({
            "name": "evil", "vcpus": 1, "memory_bytes": 268435456, "cpu_weight": 256,
            "disks": [], "nics": [],
            "cdroms": [{"device": "cdrom0", "bus": "sata", "media": "/etc/shadow"},
                       {"device": "cdrom1", "bus": "sata"}],
            "kernel_boot": {"kernel": "/etc/passwd", "initrd": "/etc/hostname", "cmdline": "x"},
            "boot_device": "cdrom"
        }))
        .unwrap();
        let mut warnings = Vec::new();
        drop_host_paths(&mut spec, &[], &mut warnings);
        assert!(spec.cdroms.iter().all(|c| c.media.is_none()));
        assert_eq!(spec.cdroms.len(), 2, "the drives stay");
        assert!(spec.kernel_boot.is_none());
        assert_eq!(spec.boot_device, BootDevice::Disk);
        let all = warnings.join("\n");
        assert!(all.contains("cdrom0: media /etc/shadow"), "{all}");
        assert!(all.contains("/etc/passwd and /etc/hostname"), "{all}");
        assert_eq!(warnings.len(), 2, "{all}");
        // An archive without host paths gets no warning, and an empty drive when it had none.
        let mut plain = spec.clone();
        plain.cdroms.clear();
        let mut w = Vec::new();
        drop_host_paths(&mut plain, &[], &mut w);
        assert!(w.is_empty());
        assert_eq!(plain.cdroms.len(), 1);
    }

    #[test]
    fn carried_boot_files_keep_kernel_boot_without_the_archive_paths() {
        let json = serde_json::json!({
            "name": "k", "vcpus": 1, "memory_bytes": 268435456, "cpu_weight": 256,
            "kernel_boot": {"kernel": "/etc/passwd", "initrd": "/etc/hostname", "cmdline": "console=ttyS0"},
        });
        let mut spec: VmSpec = serde_json::from_value(json.clone()).unwrap();
        let mut warnings = Vec::new();
        drop_host_paths(
            &mut spec,
            &[FileRole::Kernel, FileRole::Initrd],
            &mut warnings,
        );
        let kb = spec.kernel_boot.clone().unwrap();
        assert_eq!(
            kb.kernel,
            PathBuf::new(),
            "filled by the import, never /etc/passwd"
        );
        assert_eq!(kb.initrd, Some(PathBuf::new()));
        assert_eq!(kb.cmdline, "console=ttyS0");
        assert!(warnings.is_empty(), "{warnings:?}");

        // Kernel carried, initrd not: boot without it, and say so.
        let mut spec: VmSpec = serde_json::from_value(json).unwrap();
        let mut warnings = Vec::new();
        drop_host_paths(&mut spec, &[FileRole::Kernel], &mut warnings);
        assert_eq!(spec.kernel_boot.unwrap().initrd, None);
        assert!(
            warnings[0].contains("/etc/hostname is not in the archive"),
            "{warnings:?}"
        );
    }

    #[test]
    fn recorder_replays_exactly_what_was_consumed() {
        let (tx, rx) = byte_channel();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for c in data.chunks(7000) {
            tx.try_send(Ok(Bytes::copy_from_slice(c))).ok();
            if tx.capacity() == 0 {
                break;
            }
        }
        drop(tx);
        let mut r = Recorder {
            inner: ChanReader::new(rx),
            rec: Vec::new(),
        };
        let mut buf = [0u8; 1000];
        r.read_exact(&mut buf).unwrap();
        let mut rest = Vec::new();
        io::Cursor::new(r.rec.clone())
            .chain(r.inner)
            .read_to_end(&mut rest)
            .unwrap();
        assert_eq!(&rest[..], &data[..rest.len()]);
        assert_eq!(rest.len(), 7000 * 8);
    }
}
