//! The one error type of this crate. Messages name the problem and the offending member, disk
//! or value; the caller prints the chain once (`cannot import "x.corral": ...`).

use corral_model::ErrorKind;
use std::io;

/// Everything that can go wrong while writing or reading an archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read the archive")]
    ReadArchive(#[source] io::Error),
    #[error("cannot write the archive")]
    WriteArchive(#[source] io::Error),
    #[error("cannot read disk {device:?}")]
    ReadDisk {
        device: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write disk {device:?}")]
    WriteDisk {
        device: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the {role} file {}", path.display())]
    ReadFile {
        role: String,
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the {role} file")]
    WriteFile {
        role: String,
        #[source]
        source: io::Error,
    },
    #[error("archive format {found} is newer than this corral understands ({supported}); upgrade corral")]
    NewerVersion { found: String, supported: String },
    #[error("not a corral archive: {0}")]
    NotCorralArchive(String),
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    #[error("unsafe archive member {name:?}: {reason}")]
    UnsafeMember { name: String, reason: String },
    #[error("invalid archive member {name:?}: {reason}")]
    InvalidMember { name: String, reason: String },
    #[error("checksum mismatch in {what}: expected {expected}, computed {actual}")]
    ChecksumMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("archive is truncated: {0}")]
    Truncated(String),
    #[error("archive exceeds a limit: {0}")]
    LimitExceeded(String),
    #[error("invalid OVF descriptor: {0}")]
    InvalidOvf(String),
    #[error("invalid XVA: {0}")]
    InvalidXva(String),
    #[error("{tool} failed: {message}")]
    ToolFailed { tool: String, message: String },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("cancelled")]
    Cancelled,
}

impl ArchiveError {
    /// The API error kind this error maps to at the boundary.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ArchiveError::ReadArchive(_)
            | ArchiveError::WriteArchive(_)
            | ArchiveError::ReadDisk { .. }
            | ArchiveError::WriteDisk { .. }
            | ArchiveError::ReadFile { .. }
            | ArchiveError::WriteFile { .. }
            | ArchiveError::ToolFailed { .. } => ErrorKind::Internal,
            ArchiveError::NewerVersion { .. } | ArchiveError::Unsupported(_) => {
                ErrorKind::Unsupported
            }
            ArchiveError::Cancelled => ErrorKind::InvalidState,
            _ => ErrorKind::InvalidInput,
        }
    }

    pub(crate) fn member(name: &str, reason: impl Into<String>) -> Self {
        ArchiveError::InvalidMember {
            name: name.to_string(),
            reason: reason.into(),
        }
    }

    /// Map an I/O error met while reading an archive: an unexpected end is a truncation.
    pub(crate) fn read(e: io::Error) -> Self {
        // The tar crate reports a short stream as `Other` with an "unexpected EOF" message.
        let m = e.to_string();
        let short = e.kind() == io::ErrorKind::UnexpectedEof
            || m.contains("unexpected EOF")
            || m.contains("failed to read entire block");
        if short {
            ArchiveError::Truncated("the stream ended in the middle of a member".into())
        } else {
            ArchiveError::ReadArchive(e)
        }
    }
}
