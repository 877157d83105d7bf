//! VM archive formats for `corral vm export` / `vm import`: corral's native streaming archive,
//! OVA/OVF, and XenServer XVA.
//!
//! DESIGN.md places archives in `corral-storage`; they live in their own crate because every
//! reader here parses untrusted input (files users download, streams from other hosts) and
//! deserves its own fuzz targets, malicious-archive corpus and tests, independent of volume
//! management.
//!
//! How an export flows: the caller opens a [`DiskSource`] per disk ([`RawFileSource`],
//! [`Qcow2Source`]) and calls [`native::write_archive`] (or [`ova::write_ova`]) with the VM spec
//! and an output stream. How an import flows: the caller detects the format
//! ([`detect::detect_format`]), optionally builds a plan without writing anything (dry run),
//! then calls the reader with an [`ImportSink`] (usually a [`DirSink`] over a staging directory
//! it owns). Readers never create files themselves; on any error the caller deletes the
//! staging directory and nothing else exists.
//!
//! Cancelling: every function streams through the caller's `Read`/`Write` and sink, so a
//! caller cancels by making one of them fail (a writer that returns an error once a flag is
//! set); workers drain and exit, and the error comes back. Progress callbacks are called on the
//! calling thread only.
//!
//! Modules: `native` (format 1.0, see `docs/formats/corral-archive.md`), `ova` (OVF 1.x/2.0
//! descriptors, OVA packages), `xva` (XenServer exports), `source` and `sink` (disk I/O), `qcow2` (the streaming qcow2 writer imports use),
//! `tarsafe` (member checks shared by all tar readers).

pub mod detect;
pub mod error;
pub mod native;
pub mod ova;
pub mod progress;
pub mod qcow2;
pub mod sink;
pub mod source;
mod tarsafe;
pub mod xva;

pub use detect::{detect_format, ArchiveKind};
pub use error::ArchiveError;
pub use native::{
    read_archive, read_manifest, write_archive, ArchiveSummary, Compression, FileRole,
    ImportedDisk, ImportedFile, ImportedVm, Limits, WriteOptions,
};
pub use progress::{no_progress, Phase, Progress};
pub use sink::{DirSink, DiskTarget, ImportSink};
pub use source::{
    check_foreign_image, open_disk_source, DiskSource, Qcow2Access, Qcow2Source, RawFileSource,
};
