//! `ftp://` sources: a small passive-mode FTP client (RFC 959 with RFC 2428's `EPSV`).
//!
//! One control connection is kept per source and reused across probes; it is dropped and
//! re-opened after any error. Data connections go to the control connection's peer address,
//! whatever address `PASV` announces (as curl does), which avoids both NAT trouble and
//! FTP-bounce redirection to other hosts. Anonymous login unless the URL carries a user.

use super::{
    connect_tcp, io_error, read_capped, stream_to_file, FetchError, FetchOptions, ProgressFn,
    Source,
};
use crate::tree::{Probe, ProbeResult, PROBE_CAP_BYTES};
use crate::url::SourceUrl;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// Longest reply line we accept from a server.
const MAX_LINE: usize = 8192;

struct Conn {
    ctrl: BufReader<TcpStream>,
    peer: IpAddr,
}

pub struct FtpSource {
    url: SourceUrl,
    opts: FetchOptions,
    conn: Mutex<Option<Conn>>,
}

impl FtpSource {
    pub fn new(url: SourceUrl, opts: FetchOptions) -> Self {
        FtpSource {
            url: url.as_dir(),
            opts,
            conn: Mutex::new(None),
        }
    }

    fn shown(&self, rel: &str) -> String {
        self.url.join(rel).to_string()
    }

    fn login(&self) -> Result<Conn, FetchError> {
        let shown = self.url.to_string();
        let stream = connect_tcp(
            &self.url.host,
            self.url.port_or_default(),
            &shown,
            &self.opts,
        )?;
        let peer = stream
            .peer_addr()
            .map_err(|e| io_error(&shown, e, &self.opts))?
            .ip();
        let mut c = Conn {
            ctrl: BufReader::new(stream),
            peer,
        };
        let (code, text) = c.reply(&shown, &self.opts)?;
        if code != 220 {
            return Err(refused(&shown, "greeting", code, &text));
        }
        let user = self.url.user.clone().unwrap_or_else(|| "anonymous".into());
        let pass = self
            .url
            .password
            .clone()
            .unwrap_or_else(|| "corral@".into());
        let (code, text) = c.cmd(&format!("USER {user}"), &shown, &self.opts)?;
        let (code, text) = if code == 331 {
            c.cmd(&format!("PASS {pass}"), &shown, &self.opts)?
        } else {
            (code, text)
        };
        if code != 230 {
            return Err(refused(&shown, "login", code, &text));
        }
        let (code, text) = c.cmd("TYPE I", &shown, &self.opts)?;
        if code != 200 {
            return Err(refused(&shown, "TYPE I", code, &text));
        }
        Ok(c)
    }

    /// Run `f` on a logged-in connection; on a connection-level failure, retry once on a
    /// fresh one. `f` returns whether the connection may be reused.
    fn with_conn<T>(
        &self,
        f: impl Fn(&mut Conn) -> Result<(T, bool), FetchError>,
    ) -> Result<T, FetchError> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..2 {
            let (mut conn, reused) = match guard.take() {
                Some(c) => (c, true),
                None => (self.login()?, false),
            };
            match f(&mut conn) {
                Ok((v, reusable)) => {
                    if reusable {
                        *guard = Some(conn);
                    }
                    return Ok(v);
                }
                // The server may have closed an idle control connection: log in again.
                Err(FetchError::Unreachable { .. }) if reused => continue,
                Err(e @ FetchError::NotFound { .. }) => {
                    *guard = Some(conn);
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(FetchError::Unreachable {
            url: self.url.to_string(),
            detail: "control connection lost twice".into(),
        })
    }

    fn path(&self, rel: &str) -> Result<String, FetchError> {
        let p = self.url.join_path(rel);
        if p.contains(['\r', '\n']) {
            return Err(FetchError::Unsupported {
                url: self.shown(rel),
                detail: "path contains a line break".into(),
            });
        }
        Ok(p)
    }

    /// `SIZE`: `Some(bytes)`, or `None` when the server does not support it.
    fn size(&self, c: &mut Conn, rel: &str) -> Result<Option<u64>, FetchError> {
        let shown = self.shown(rel);
        let (code, text) = c.cmd(&format!("SIZE {}", self.path(rel)?), &shown, &self.opts)?;
        match code {
            213 => Ok(text.trim().parse().ok()),
            550 => Err(FetchError::NotFound {
                url: shown,
                detail: format!("550 {}", text.trim()),
            }),
            _ => Ok(None),
        }
    }

    fn open_data(&self, c: &mut Conn, shown: &str) -> Result<TcpStream, FetchError> {
        let (code, text) = c.cmd("EPSV", shown, &self.opts)?;
        let port = if code == 229 {
            parse_epsv(&text)
        } else {
            let (code, text) = c.cmd("PASV", shown, &self.opts)?;
            if code != 227 {
                return Err(refused(shown, "PASV", code, &text));
            }
            parse_pasv(&text)
        };
        let port = port.ok_or_else(|| FetchError::Refused {
            url: shown.to_string(),
            detail: format!("cannot parse passive-mode reply {text:?}"),
        })?;
        connect_tcp(&c.peer.to_string(), port, shown, &self.opts)
    }

    /// Start `RETR`; the returned stream yields the file.
    fn retr(&self, c: &mut Conn, rel: &str) -> Result<TcpStream, FetchError> {
        let shown = self.shown(rel);
        let data = self.open_data(c, &shown)?;
        let (code, text) = c.cmd(&format!("RETR {}", self.path(rel)?), &shown, &self.opts)?;
        match code {
            125 | 150 => Ok(data),
            550 => Err(FetchError::NotFound {
                url: shown,
                detail: format!("550 {}", text.trim()),
            }),
            _ => Err(refused(&shown, "RETR", code, &text)),
        }
    }

    fn finish_transfer(&self, c: &mut Conn, shown: &str) -> Result<(), FetchError> {
        let (code, text) = c.reply(shown, &self.opts)?;
        if code == 226 || code == 250 {
            Ok(())
        } else {
            Err(refused(shown, "transfer", code, &text))
        }
    }
}

fn refused(url: &str, what: &str, code: u16, text: &str) -> FetchError {
    FetchError::Refused {
        url: url.to_string(),
        detail: format!("{what} failed: {code} {}", text.trim()),
    }
}

impl Conn {
    fn line(&mut self, url: &str, opts: &FetchOptions) -> Result<String, FetchError> {
        let mut buf = Vec::new();
        let n = (&mut self.ctrl)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .map_err(|e| io_error(url, e, opts))?;
        if n == 0 {
            return Err(FetchError::Unreachable {
                url: url.to_string(),
                detail: "the server closed the control connection".into(),
            });
        }
        Ok(String::from_utf8_lossy(&buf).trim_end().to_string())
    }

    /// Read one reply, joining multi-line replies (`123-...` up to `123 ...`).
    fn reply(&mut self, url: &str, opts: &FetchOptions) -> Result<(u16, String), FetchError> {
        let first = self.line(url, opts)?;
        let code: u16 =
            first
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| FetchError::Refused {
                    url: url.to_string(),
                    detail: format!("not an FTP reply: {first:?}"),
                })?;
        let mut text = first.get(4..).unwrap_or_default().to_string();
        if first.as_bytes().get(3) == Some(&b'-') {
            let end = format!("{code} ");
            for _ in 0..1000 {
                let l = self.line(url, opts)?;
                if l.starts_with(&end) {
                    text.push('\n');
                    text.push_str(&l[4..]);
                    break;
                }
            }
        }
        Ok((code, text))
    }

    fn cmd(
        &mut self,
        line: &str,
        url: &str,
        opts: &FetchOptions,
    ) -> Result<(u16, String), FetchError> {
        let s = self.ctrl.get_mut();
        s.write_all(format!("{line}\r\n").as_bytes())
            .map_err(|e| io_error(url, e, opts))?;
        self.reply(url, opts)
    }
}

/// `229 Entering Extended Passive Mode (|||6446|)` → 6446.
fn parse_epsv(text: &str) -> Option<u16> {
    let inner = text.split('(').nth(1)?.split(')').next()?;
    let delim = inner.chars().next()?;
    inner.split(delim).nth(3)?.parse().ok()
}

/// `227 Entering Passive Mode (127,0,0,1,200,10)` → 51210 (the address part is ignored).
fn parse_pasv(text: &str) -> Option<u16> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let nums: Vec<u16> = text[start..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(6)
        .map(|s| s.parse().ok())
        .collect::<Option<Vec<_>>>()?;
    if nums.len() < 6 || nums[4] > 255 || nums[5] > 255 {
        return None;
    }
    Some(nums[4] * 256 + nums[5])
}

impl Probe for FtpSource {
    fn fetch(&self, rel: &str) -> ProbeResult {
        let shown = self.shown(rel);
        let res = self.with_conn(|c| {
            let data = self.retr(c, rel)?;
            let bytes = read_capped(data, &shown, &self.opts)?;
            if bytes.len() >= PROBE_CAP_BYTES {
                // Cut short: the server will complain about the closed data connection, so
                // this control connection is not reused.
                return Ok((bytes, false));
            }
            self.finish_transfer(c, &shown)?;
            Ok((bytes, true))
        });
        match res {
            Ok(b) => ProbeResult::Found(b),
            Err(e) => e.into_probe_result(),
        }
    }

    fn exists(&self, rel: &str) -> ProbeResult {
        let res = self.with_conn(|c| Ok((self.size(c, rel)?, true)));
        match res {
            Ok(Some(_)) => ProbeResult::Found(Vec::new()),
            // No SIZE support: start a download and stop at once.
            Ok(None) => match self.with_conn(|c| self.retr(c, rel).map(|_| ((), false))) {
                Ok(()) => ProbeResult::Found(Vec::new()),
                Err(e) => e.into_probe_result(),
            },
            Err(e) => e.into_probe_result(),
        }
    }

    fn describe(&self, rel: &str) -> String {
        format!("RETR {}", self.shown(rel))
    }
}

impl Source for FtpSource {
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
        let shown = self.shown(rel);
        // One closure call, so the progress callback is only borrowed once.
        let progress = std::cell::RefCell::new(progress);
        self.with_conn(|c| {
            let total = self.size(c, rel)?;
            let data = self.retr(c, rel)?;
            let mut p = progress.borrow_mut();
            let n = stream_to_file(data, &shown, total, dest, &self.opts, started, &mut **p)?;
            self.finish_transfer(c, &shown)?;
            Ok((n, true))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passive_replies() {
        assert_eq!(
            parse_epsv("Entering Extended Passive Mode (|||6446|)"),
            Some(6446)
        );
        assert_eq!(
            parse_pasv("Entering Passive Mode (127,0,0,1,200,10)."),
            Some(51210)
        );
        assert_eq!(parse_pasv("Entering Passive Mode (127,0,0,1,999,10)"), None);
        assert_eq!(parse_epsv("garbage"), None);
    }
}
