//! Fetchers: read install trees over `http(s)://`, `ftp://`, `nfs://` and local directories.
//!
//! Each protocol implements [`Source`]: the small-file [`Probe`] that tree detection uses, and
//! a streaming [`Source::fetch_to_file`] for kernels, initrds and images, with a size cap, an
//! overall deadline, progress reporting and cancellation. Downloads go to a temporary file
//! beside the destination and are renamed into place only when complete, so a failed or
//! cancelled download never leaves a half-written kernel behind.
//!
//! Errors say which of the things users need to tell apart happened: the host could not be
//! resolved or reached, the file is not there, the server took too long, or it refused.
//! URLs in errors are redacted (`user:***@`).
//!
//! Everything here blocks; the agent runs it on `spawn_blocking` threads.

mod ftp;
mod http;
mod local;
mod nfs;

pub use ftp::FtpSource;
pub use http::HttpSource;
pub use local::LocalSource;
pub use nfs::NfsSource;

use crate::tree::{Probe, ProbeResult, PROBE_CAP_BYTES};
use crate::url::{Scheme, SourceUrl};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What went wrong fetching. Every message names the (redacted) URL or path.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot resolve host {host:?}: {detail}")]
    Resolve { host: String, detail: String },
    #[error("cannot reach {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("{url} not found ({detail})")]
    NotFound { url: String, detail: String },
    #[error("{url} timed out after {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("{url} is larger than the limit of {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: {detail}")]
    Refused { url: String, detail: String },
    #[error("download of {url} was cancelled")]
    Cancelled { url: String },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: {detail}")]
    Unsupported { url: String, detail: String },
}

impl FetchError {
    pub fn kind(&self) -> corral_model::ErrorKind {
        use corral_model::ErrorKind as K;
        match self {
            FetchError::NotFound { .. } => K::NotFound,
            FetchError::Resolve { .. }
            | FetchError::Unreachable { .. }
            | FetchError::Timeout { .. } => K::Unsupported,
            FetchError::TooLarge { .. } => K::InvalidInput,
            FetchError::Refused { .. } => K::Unsupported,
            FetchError::Cancelled { .. } => K::InvalidState,
            FetchError::Write { .. } => K::Internal,
            FetchError::Unsupported { .. } => K::Unsupported,
        }
    }

    /// The form a [`Probe`] reports.
    pub fn into_probe_result(self) -> ProbeResult {
        match self {
            FetchError::NotFound { detail, .. } => ProbeResult::NotFound(detail),
            other => ProbeResult::Error(other.short()),
        }
    }

    /// The message without the URL (probe records already show it).
    fn short(&self) -> String {
        match self {
            FetchError::Resolve { host, detail } => {
                format!("cannot resolve host {host:?}: {detail}")
            }
            FetchError::Unreachable { detail, .. } => format!("unreachable: {detail}"),
            FetchError::NotFound { detail, .. } => detail.clone(),
            FetchError::Timeout { secs, .. } => format!("timed out after {secs} s"),
            FetchError::TooLarge { limit, .. } => format!("larger than {limit} bytes"),
            FetchError::Refused { detail, .. } | FetchError::Unsupported { detail, .. } => {
                detail.clone()
            }
            FetchError::Cancelled { .. } => "cancelled".into(),
            FetchError::Write { source, .. } => source.to_string(),
        }
    }
}

/// Limits for fetching.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Connecting (TCP, and the NFS mount handshake).
    pub connect_timeout: Duration,
    /// Longest wait for any single read.
    pub io_timeout: Duration,
    /// Whole download, for `fetch_to_file`.
    pub total_timeout: Duration,
    /// Largest file `fetch_to_file` accepts.
    pub max_bytes: u64,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(30 * 60),
            max_bytes: 8 << 30,
        }
    }
}

/// Progress of one download: bytes written so far and the total when the server said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done_bytes: u64,
    pub total_bytes: Option<u64>,
}

/// Called after each chunk; return `false` to cancel the download.
pub type ProgressFn<'a> = &'a mut dyn FnMut(Progress) -> bool;

/// An install source: probes for detection plus streaming downloads.
pub trait Source: Probe + Send {
    /// The tree's URL (a directory).
    fn url(&self) -> &SourceUrl;
    /// Download `relative_path` to `dest`, atomically. Returns the bytes written.
    fn fetch_to_file(
        &self,
        relative_path: &str,
        dest: &Path,
        progress: ProgressFn<'_>,
    ) -> Result<u64, FetchError>;
}

/// Open a source for `url` (treated as a directory).
pub fn open(url: &SourceUrl, opts: &FetchOptions) -> Result<Box<dyn Source>, FetchError> {
    let dir = url.as_dir();
    Ok(match url.scheme {
        Scheme::Http | Scheme::Https => Box::new(HttpSource::new(dir, opts.clone())),
        Scheme::Ftp => Box::new(FtpSource::new(dir, opts.clone())),
        Scheme::Nfs => Box::new(NfsSource::connect(dir, opts.clone())?),
        Scheme::File => Box::new(LocalSource::new(dir, opts.clone())),
    })
}

/// Download one URL to `dest` (the URL names a file; its directory becomes the source).
pub fn fetch_to_file(
    url: &SourceUrl,
    dest: &Path,
    opts: &FetchOptions,
    progress: ProgressFn<'_>,
) -> Result<u64, FetchError> {
    let path = url.path.trim_end_matches('/');
    let (dir, file) = match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("/", path),
    };
    if file.is_empty() {
        return Err(FetchError::NotFound {
            url: url.to_string(),
            detail: "the URL names a directory, not a file".into(),
        });
    }
    let mut base = url.clone();
    base.path = dir.to_string();
    open(&base, opts)?.fetch_to_file(file, dest, progress)
}

/// Copy `reader` into a temporary file next to `dest`, enforcing the cap, the deadline and
/// cancellation, then rename it into place. Shared by every protocol.
pub(crate) fn stream_to_file(
    mut reader: impl Read,
    url: &str,
    total: Option<u64>,
    dest: &Path,
    opts: &FetchOptions,
    started: Instant,
    progress: ProgressFn<'_>,
) -> Result<u64, FetchError> {
    if let Some(t) = total {
        if t > opts.max_bytes {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                limit: opts.max_bytes,
            });
        }
    }
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let write_err = |source| FetchError::Write {
        path: dest.to_path_buf(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".corral-download-")
        .tempfile_in(&dir)
        .map_err(write_err)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut done: u64 = 0;
    loop {
        if started.elapsed() > opts.total_timeout {
            return Err(FetchError::Timeout {
                url: url.to_string(),
                secs: opts.total_timeout.as_secs(),
            });
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(url, e, opts)),
        };
        done += n as u64;
        if done > opts.max_bytes {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                limit: opts.max_bytes,
            });
        }
        tmp.write_all(&buf[..n]).map_err(write_err)?;
        if !progress(Progress {
            done_bytes: done,
            total_bytes: total,
        }) {
            return Err(FetchError::Cancelled {
                url: url.to_string(),
            });
        }
    }
    if let Some(t) = total {
        if done < t {
            return Err(FetchError::Refused {
                url: url.to_string(),
                detail: format!("transfer ended after {done} of {t} bytes"),
            });
        }
    }
    tmp.as_file().sync_all().map_err(write_err)?;
    tmp.persist(dest).map_err(|e| write_err(e.error))?;
    Ok(done)
}

/// Read at most [`PROBE_CAP_BYTES`] from `reader`.
pub(crate) fn read_capped(
    reader: impl Read,
    url: &str,
    opts: &FetchOptions,
) -> Result<Vec<u8>, FetchError> {
    let mut out = Vec::new();
    reader
        .take(PROBE_CAP_BYTES as u64)
        .read_to_end(&mut out)
        .map_err(|e| io_error(url, e, opts))?;
    Ok(out)
}

/// Classify an I/O error on an established transfer.
pub(crate) fn io_error(url: &str, e: std::io::Error, opts: &FetchOptions) -> FetchError {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::TimedOut | K::WouldBlock => FetchError::Timeout {
            url: url.to_string(),
            secs: opts.io_timeout.as_secs(),
        },
        K::ConnectionRefused
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::HostUnreachable
        | K::NetworkUnreachable => FetchError::Unreachable {
            url: url.to_string(),
            detail: e.to_string(),
        },
        _ => FetchError::Refused {
            url: url.to_string(),
            detail: e.to_string(),
        },
    }
}

/// Resolve and connect with a timeout, trying each address; errors tell resolution from
/// connection failures.
pub(crate) fn connect_tcp(
    host: &str,
    port: u16,
    url: &str,
    opts: &FetchOptions,
) -> Result<std::net::TcpStream, FetchError> {
    use std::net::ToSocketAddrs;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<_> = (bare, port)
        .to_socket_addrs()
        .map_err(|e| FetchError::Resolve {
            host: host.to_string(),
            detail: e.to_string(),
        })?
        .collect();
    let mut last = None;
    for a in addrs {
        match std::net::TcpStream::connect_timeout(&a, opts.connect_timeout) {
            Ok(s) => {
                let _ = s.set_read_timeout(Some(opts.io_timeout));
                let _ = s.set_write_timeout(Some(opts.io_timeout));
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) =>
        {
            FetchError::Timeout {
                url: url.to_string(),
                secs: opts.connect_timeout.as_secs(),
            }
        }
        Some(e) => FetchError::Unreachable {
            url: url.to_string(),
            detail: e.to_string(),
        },
        None => FetchError::Resolve {
            host: host.to_string(),
            detail: "no addresses".into(),
        },
    })
}
