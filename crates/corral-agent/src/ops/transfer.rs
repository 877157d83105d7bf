//! The byte plumbing of export and import ([`super::export`], [`super::import`]), the agent
//! side of `GET /v1/vms/{name}/export` and `PUT /v1/imports`.
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
use crate::ops::clone::BASES_DIR;
use crate::ops::Ops;
use crate::tasks::TaskHandle;
use bytes::Bytes;
use corral_archive::ArchiveError;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

/// Chunks in flight between a blocking archive thread and the HTTP body.
pub(super) const CHANNEL_CHUNKS: usize = 8;
/// Size of the chunks an export sends.
pub(super) const CHUNK_BYTES: usize = 1 << 20;
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

pub(super) fn archive_error(what: &str, e: ArchiveError) -> Error {
    Error::caused(e.kind(), what, e)
}

/// Writes an archive into the body channel in chunks; fails once the task is cancelled or the
/// client has gone.
pub(super) struct ChanWriter {
    pub(super) tx: ByteSink,
    pub(super) buf: Vec<u8>,
    pub(super) task: TaskHandle,
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
    pub(super) rx: ByteStream,
    pub(super) cur: Bytes,
    pub(super) task: Option<TaskHandle>,
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
pub(super) struct Recorder<R> {
    pub(super) inner: R,
    pub(super) rec: Vec<u8>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::import::drop_host_paths;
    use corral_archive::FileRole;
    use corral_model::*;

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
