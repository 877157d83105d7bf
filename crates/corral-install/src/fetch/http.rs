//! `http://` and `https://` sources over `ureq` (blocking, rustls for TLS). Redirects are
//! followed (up to 5); `exists` uses `HEAD`, falling back to `GET` when a server refuses it.

use super::{io_error, read_capped, stream_to_file, FetchError, FetchOptions, ProgressFn, Source};
use crate::tree::{Probe, ProbeResult};
use crate::url::SourceUrl;
use std::path::Path;
use std::time::Instant;

pub struct HttpSource {
    url: SourceUrl,
    opts: FetchOptions,
    agent: ureq::Agent,
}

impl HttpSource {
    pub fn new(url: SourceUrl, opts: FetchOptions) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(opts.connect_timeout)
            .timeout_read(opts.io_timeout)
            .timeout_write(opts.io_timeout)
            .redirects(5)
            .user_agent(concat!("corral/", env!("CARGO_PKG_VERSION")))
            .build();
        HttpSource {
            url: url.as_dir(),
            opts,
            agent,
        }
    }

    fn request(&self, method: &str, rel: &str) -> Result<ureq::Response, FetchError> {
        let target = self.url.join(rel);
        let shown = target.to_string();
        let full = target.to_string_with_credentials();
        match self.agent.request(method, &full).call() {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(code, resp)) => {
                let detail = format!("{code} {}", resp.status_text());
                if matches!(code, 404 | 410) {
                    Err(FetchError::NotFound { url: shown, detail })
                } else {
                    Err(FetchError::Refused {
                        url: shown,
                        detail: format!("server answered {detail}"),
                    })
                }
            }
            Err(ureq::Error::Transport(t)) => {
                Err(transport_error(&shown, &self.url.host, t, &self.opts))
            }
        }
    }
}

fn transport_error(url: &str, host: &str, t: ureq::Transport, opts: &FetchOptions) -> FetchError {
    use ureq::ErrorKind as K;
    let detail = t
        .message()
        .map(str::to_string)
        .unwrap_or_else(|| t.kind().to_string());
    match t.kind() {
        K::Dns => FetchError::Resolve {
            host: host.to_string(),
            detail,
        },
        K::ConnectionFailed => {
            let inner =
                std::error::Error::source(&t).and_then(|s| s.downcast_ref::<std::io::Error>());
            match inner {
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
                None => FetchError::Unreachable {
                    url: url.to_string(),
                    detail,
                },
            }
        }
        K::Io => {
            let inner =
                std::error::Error::source(&t).and_then(|s| s.downcast_ref::<std::io::Error>());
            match inner {
                Some(e) => io_error(url, std::io::Error::new(e.kind(), e.to_string()), opts),
                None => FetchError::Refused {
                    url: url.to_string(),
                    detail,
                },
            }
        }
        K::UnknownScheme | K::InsecureRequestHttpsOnly => FetchError::Unsupported {
            url: url.to_string(),
            detail,
        },
        _ => FetchError::Refused {
            url: url.to_string(),
            detail,
        },
    }
}

impl Probe for HttpSource {
    fn fetch(&self, rel: &str) -> ProbeResult {
        let shown = self.url.join(rel).to_string();
        match self.request("GET", rel) {
            Ok(resp) => match read_capped(resp.into_reader(), &shown, &self.opts) {
                Ok(b) => ProbeResult::Found(b),
                Err(e) => e.into_probe_result(),
            },
            Err(e) => e.into_probe_result(),
        }
    }

    fn exists(&self, rel: &str) -> ProbeResult {
        match self.request("HEAD", rel) {
            Ok(_) => ProbeResult::Found(Vec::new()),
            // Some servers answer HEAD with 405/501; ask with GET and read nothing.
            Err(FetchError::Refused { .. }) => match self.request("GET", rel) {
                Ok(_) => ProbeResult::Found(Vec::new()),
                Err(e) => e.into_probe_result(),
            },
            Err(e) => e.into_probe_result(),
        }
    }

    fn describe(&self, rel: &str) -> String {
        format!("GET {}", self.url.join(rel))
    }
}

impl Source for HttpSource {
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
        let shown = self.url.join(rel).to_string();
        let resp = self.request("GET", rel)?;
        let total = resp
            .header("Content-Length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        stream_to_file(
            resp.into_reader(),
            &shown,
            total,
            dest,
            &self.opts,
            started,
            progress,
        )
    }
}
