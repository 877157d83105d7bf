//! Local directories (`file://` URLs and plain paths): an install tree on this host, such as
//! a mounted ISO or the test installer tree.

use super::{io_error, read_capped, stream_to_file, FetchError, FetchOptions, ProgressFn, Source};
use crate::tree::{Probe, ProbeResult};
use crate::url::SourceUrl;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct LocalSource {
    url: SourceUrl,
    opts: FetchOptions,
}

impl LocalSource {
    pub fn new(url: SourceUrl, opts: FetchOptions) -> Self {
        LocalSource {
            url: url.as_dir(),
            opts,
        }
    }

    fn path_of(&self, rel: &str) -> PathBuf {
        PathBuf::from(self.url.join_path(rel))
    }

    fn open(&self, rel: &str) -> Result<(std::fs::File, u64), FetchError> {
        let path = self.path_of(rel);
        let shown = path.display().to_string();
        let not_found = |detail: &str| FetchError::NotFound {
            url: shown.clone(),
            detail: detail.to_string(),
        };
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(not_found("no such file"))
            }
            Err(e) => {
                return Err(FetchError::Refused {
                    url: shown,
                    detail: e.to_string(),
                })
            }
        };
        let meta = file
            .metadata()
            .map_err(|e| io_error(&shown, e, &self.opts))?;
        if !meta.is_file() {
            return Err(not_found("not a regular file"));
        }
        Ok((file, meta.len()))
    }
}

impl Probe for LocalSource {
    fn fetch(&self, rel: &str) -> ProbeResult {
        let shown = self.path_of(rel).display().to_string();
        match self.open(rel) {
            Ok((f, _)) => match read_capped(f, &shown, &self.opts) {
                Ok(b) => ProbeResult::Found(b),
                Err(e) => e.into_probe_result(),
            },
            Err(e) => e.into_probe_result(),
        }
    }

    fn exists(&self, rel: &str) -> ProbeResult {
        match self.open(rel) {
            Ok(_) => ProbeResult::Found(Vec::new()),
            Err(e) => e.into_probe_result(),
        }
    }

    fn describe(&self, rel: &str) -> String {
        format!("read {}", self.path_of(rel).display())
    }
}

impl Source for LocalSource {
    fn url(&self) -> &SourceUrl {
        &self.url
    }

    fn fetch_to_file(
        &self,
        rel: &str,
        dest: &Path,
        progress: ProgressFn<'_>,
    ) -> Result<u64, FetchError> {
        let started = Instant::now();
        let (f, len) = self.open(rel)?;
        let shown = self.path_of(rel).display().to_string();
        stream_to_file(f, &shown, Some(len), dest, &self.opts, started, progress)
    }
}
