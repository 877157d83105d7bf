//! Install-source URLs: `http://`, `https://`, `ftp://`, `nfs://host/export/path`, `file://`
//! and plain local paths, plus the `--location URL,kernel=PATH,initrd=PATH` form.
//!
//! Parsing checks the scheme, the host and the port, and keeps any credentials out of every
//! string meant for people ([`SourceUrl`]'s `Display` writes `user:***@`). Paths are kept
//! percent-decoded; fetchers re-encode them where the protocol needs it.

use std::fmt;

/// Problems with a URL or a `--location` value. Messages quote the (redacted) input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("location is empty")]
    Empty,
    #[error("location {url:?} has unsupported scheme {scheme:?}; use http, https, ftp, nfs, file or a local path")]
    Scheme { url: String, scheme: String },
    #[error("location {url:?} has no host")]
    NoHost { url: String },
    #[error("location {url:?} has an invalid host {host:?}")]
    BadHost { url: String, host: String },
    #[error("location {url:?} has an invalid port {port:?}")]
    BadPort { url: String, port: String },
    #[error("location {url:?}: {message}")]
    BadPath { url: String, message: String },
    #[error("location option {option:?} is not kernel=PATH or initrd=PATH")]
    BadOption { option: String },
    #[error("location {url:?} names initrd= without kernel=")]
    InitrdWithoutKernel { url: String },
}

/// The protocol of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    Http,
    Https,
    Ftp,
    Nfs,
    File,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Ftp => "ftp",
            Scheme::Nfs => "nfs",
            Scheme::File => "file",
        }
    }
    pub fn default_port(self) -> Option<u16> {
        match self {
            Scheme::Http => Some(80),
            Scheme::Https => Some(443),
            Scheme::Ftp => Some(21),
            Scheme::Nfs => Some(2049),
            Scheme::File => None,
        }
    }
}

/// A parsed source URL. `path` is absolute and percent-decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct SourceUrl {
    pub scheme: Scheme,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Empty for `file`. IPv6 addresses keep their brackets.
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
}

impl fmt::Debug for SourceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceUrl({self})")
    }
}

impl fmt::Display for SourceUrl {
    /// The URL with the password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scheme == Scheme::File {
            return write!(f, "file://{}", encode_path(&self.path));
        }
        write!(f, "{}://", self.scheme.as_str())?;
        if let Some(u) = &self.user {
            write!(f, "{}", encode_component(u))?;
            if self.password.is_some() {
                f.write_str(":***")?;
            }
            f.write_str("@")?;
        }
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        f.write_str(&encode_path(&self.path))
    }
}

fn hex(b: u8) -> char {
    char::from_digit(u32::from(b), 16).map_or('0', |c| c.to_ascii_uppercase())
}

fn encode_with(s: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(hex(b >> 4));
            out.push(hex(b & 15));
        }
    }
    out
}

/// Percent-encode a path for a URL, keeping `/` and the characters mirrors use.
pub fn encode_path(path: &str) -> String {
    encode_with(path, |b| b"/+:@!$&'()*,;=".contains(&b))
}

fn encode_component(s: &str) -> String {
    encode_with(s, |_| false)
}

/// Decode `%XX` escapes. Invalid escapes and non-UTF-8 results are errors.
pub fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hexpart = s
                .get(i + 1..i + 3)
                .ok_or_else(|| format!("bad escape in {s:?}"))?;
            let v = u8::from_str_radix(hexpart, 16)
                .map_err(|_| format!("bad escape %{hexpart} in {s:?}"))?;
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8"))
}

fn redact_text(text: &str) -> String {
    // Hide anything between "://" and the last '@' of the authority.
    if let Some(start) = text.find("://") {
        let rest = &text[start + 3..];
        let auth_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..auth_end].rfind('@') {
            return format!("{}***@{}", &text[..start + 3], &rest[at + 1..]);
        }
    }
    text.to_string()
}

fn valid_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

impl SourceUrl {
    /// Parse a URL or a local path (absolute, or relative to the current directory).
    pub fn parse(text: &str) -> Result<SourceUrl, UrlError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(UrlError::Empty);
        }
        let Some((scheme_text, rest)) = text.split_once("://") else {
            // A plain path.
            if text.contains("..") && text.split('/').any(|c| c == "..") {
                return Err(UrlError::BadPath {
                    url: text.to_string(),
                    message: "path must not contain \"..\"".into(),
                });
            }
            let abs = std::path::absolute(text).map_err(|e| UrlError::BadPath {
                url: text.to_string(),
                message: e.to_string(),
            })?;
            return Ok(SourceUrl {
                scheme: Scheme::File,
                user: None,
                password: None,
                host: String::new(),
                port: None,
                path: abs.to_string_lossy().into_owned(),
            });
        };
        let shown = redact_text(text);
        let scheme = match scheme_text.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "ftp" => Scheme::Ftp,
            "nfs" => Scheme::Nfs,
            "file" => Scheme::File,
            other => {
                return Err(UrlError::Scheme {
                    url: shown,
                    scheme: other.to_string(),
                })
            }
        };
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, raw_path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = percent_decode(raw_path).map_err(|message| UrlError::BadPath {
            url: shown.clone(),
            message,
        })?;
        if path.split('/').any(|c| c == "..") {
            return Err(UrlError::BadPath {
                url: shown,
                message: "path must not contain \"..\"".into(),
            });
        }
        if scheme == Scheme::File {
            if !authority.is_empty() && authority != "localhost" {
                return Err(UrlError::BadHost {
                    url: shown,
                    host: authority.to_string(),
                });
            }
            return Ok(SourceUrl {
                scheme,
                user: None,
                password: None,
                host: String::new(),
                port: None,
                path,
            });
        }
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (name, pass) = match u.split_once(':') {
                    Some((n, p)) => (n, Some(p)),
                    None => (u, None),
                };
                let dec = |s: &str| {
                    percent_decode(s).map_err(|message| UrlError::BadPath {
                        url: shown.clone(),
                        message,
                    })
                };
                (Some(dec(name)?), pass.map(dec).transpose()?)
            }
        };
        let (host, port) = if let Some(end) = hostport.find(']') {
            let host = &hostport[..=end];
            let port = hostport[end + 1..].strip_prefix(':');
            (host, port)
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::NoHost { url: shown });
        }
        if !valid_host(host) {
            return Err(UrlError::BadHost {
                url: shown,
                host: host.to_string(),
            });
        }
        let port = match port {
            None => None,
            Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                UrlError::BadPort {
                    url: shown.clone(),
                    port: p.to_string(),
                }
            })?),
        };
        if scheme == Scheme::Nfs && path == "/" {
            return Err(UrlError::BadPath {
                url: shown,
                message: "an nfs:// location needs an export path, e.g. nfs://filer/exports/tree"
                    .into(),
            });
        }
        Ok(SourceUrl {
            scheme,
            user,
            password,
            host: host.to_ascii_lowercase(),
            port,
            path,
        })
    }

    /// The same URL with a trailing `/` on its path, for use as a directory base.
    pub fn as_dir(&self) -> SourceUrl {
        let mut u = self.clone();
        if !u.path.ends_with('/') {
            u.path.push('/');
        }
        u
    }

    /// `host` or `host:port` when the port is not the scheme's default.
    pub fn authority(&self) -> String {
        match self.port {
            Some(p) if Some(p) != self.scheme.default_port() => format!("{}:{p}", self.host),
            _ => self.host.clone(),
        }
    }

    /// The port to connect to.
    pub fn port_or_default(&self) -> u16 {
        self.port.or(self.scheme.default_port()).unwrap_or(0)
    }

    /// The decoded path of `relative` inside this directory URL.
    pub fn join_path(&self, relative: &str) -> String {
        let base = self.as_dir().path;
        format!("{base}{}", relative.trim_start_matches('/'))
    }

    /// The URL (redacted) of `relative` inside this directory URL.
    pub fn join(&self, relative: &str) -> SourceUrl {
        let mut u = self.as_dir();
        u.path = self.join_path(relative);
        u
    }

    /// The full URL with credentials, for the protocol client only; never log it.
    pub fn to_string_with_credentials(&self) -> String {
        let shown = self.to_string();
        match (&self.user, &self.password) {
            (Some(u), Some(p)) => shown.replacen(
                &format!("{}:***@", encode_component(u)),
                &format!("{}:{}@", encode_component(u), encode_component(p)),
                1,
            ),
            _ => shown,
        }
    }
}

/// Check a path inside a tree: relative, no `..`, no empty components beyond slashes, no
/// control characters. Returns the normalized path (no leading `./` or `/`).
pub fn clean_relative(path: &str) -> Result<String, String> {
    let p = path.trim();
    if p.is_empty() {
        return Err("path is empty".into());
    }
    if p.starts_with('/') {
        return Err(format!(
            "path {p:?} is absolute; give it relative to the tree"
        ));
    }
    if p.chars().any(|c| c.is_control()) {
        return Err(format!("path {p:?} contains control characters"));
    }
    let mut parts = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(format!("path {p:?} leaves the tree with \"..\"")),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(format!("path {p:?} names no file"));
    }
    Ok(parts.join("/"))
}

/// A `--location` value: a tree URL and optional kernel/initrd paths inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub url: SourceUrl,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
}

impl Location {
    /// Parse `URL[,kernel=PATH][,initrd=PATH]`. Paths are relative to the URL and may not
    /// leave it.
    pub fn parse(text: &str) -> Result<Location, UrlError> {
        let mut pieces: Vec<&str> = Vec::new();
        let mut url_end = text.len();
        // Options are the trailing comma-separated `key=value` pieces; the URL itself may
        // contain commas.
        let mut rest = text;
        while let Some(i) = rest.rfind(',') {
            let candidate = &rest[i + 1..];
            let key = candidate.split('=').next().unwrap_or_default().trim();
            if candidate.contains('=') && !key.contains('/') && !key.contains(':') {
                pieces.push(candidate);
                url_end = i;
                rest = &rest[..i];
            } else {
                break;
            }
        }
        let url = SourceUrl::parse(&text[..url_end])?;
        let (mut kernel, mut initrd) = (None, None);
        for piece in pieces.into_iter().rev() {
            let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
            let bad_path = |message: String| UrlError::BadPath {
                url: url.to_string(),
                message: format!("{}: {message}", k.trim()),
            };
            match k.trim() {
                "kernel" => kernel = Some(clean_relative(v).map_err(bad_path)?),
                "initrd" => initrd = Some(clean_relative(v).map_err(bad_path)?),
                _ => {
                    return Err(UrlError::BadOption {
                        option: piece.to_string(),
                    })
                }
            }
        }
        if initrd.is_some() && kernel.is_none() {
            return Err(UrlError::InitrdWithoutKernel {
                url: url.to_string(),
            });
        }
        Ok(Location {
            url,
            kernel,
            initrd,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::type_complexity)]
    fn parses_urls() {
        let cases: &[(&str, Scheme, &str, Option<u16>, &str, &str)] = &[
            (
                "http://mirror/debian/",
                Scheme::Http,
                "mirror",
                None,
                "/debian/",
                "http://mirror/debian/",
            ),
            (
                "HTTP://Mirror.Example:8080/a%20b",
                Scheme::Http,
                "mirror.example",
                Some(8080),
                "/a b",
                "http://mirror.example:8080/a%20b",
            ),
            (
                "ftp://u:secret@h/pub",
                Scheme::Ftp,
                "h",
                None,
                "/pub",
                "ftp://u:***@h/pub",
            ),
            (
                "nfs://filer/exports/rhel9",
                Scheme::Nfs,
                "filer",
                None,
                "/exports/rhel9",
                "nfs://filer/exports/rhel9",
            ),
            (
                "file:///srv/tree",
                Scheme::File,
                "",
                None,
                "/srv/tree",
                "file:///srv/tree",
            ),
            (
                "/srv/tree",
                Scheme::File,
                "",
                None,
                "/srv/tree",
                "file:///srv/tree",
            ),
            (
                "http://[::1]:8000/x",
                Scheme::Http,
                "[::1]",
                Some(8000),
                "/x",
                "http://[::1]:8000/x",
            ),
            ("http://h", Scheme::Http, "h", None, "/", "http://h/"),
        ];
        for (text, scheme, host, port, path, shown) in cases {
            let u = SourceUrl::parse(text).expect(text);
            assert_eq!(
                (u.scheme, u.host.as_str(), u.port, u.path.as_str()),
                (*scheme, *host, *port, *path),
                "{text}"
            );
            assert_eq!(u.to_string(), *shown, "{text}");
        }
        let u = SourceUrl::parse("ftp://u:se%40cret@h/pub").expect("creds");
        assert_eq!(u.password.as_deref(), Some("se@cret"));
        assert_eq!(u.to_string_with_credentials(), "ftp://u:se%40cret@h/pub");
    }

    #[test]
    fn rejects_bad_urls_without_leaking_passwords() {
        let cases: &[(&str, &str)] = &[
            ("", "location is empty"),
            ("gopher://h/", "unsupported scheme \"gopher\""),
            ("http:///x", "has no host"),
            ("http://bad host/x", "invalid host"),
            ("http://h:99999/", "invalid port \"99999\""),
            ("http://h:0/", "invalid port \"0\""),
            ("http://h/a/../b", "must not contain \"..\""),
            ("nfs://filer", "needs an export path"),
            ("ftp://u:hunter2@bad host/", "ftp://***@bad host/"),
            ("file://otherhost/x", "invalid host"),
            ("http://h/%zz", "bad escape"),
        ];
        for (text, needle) in cases {
            let err = SourceUrl::parse(text).expect_err(text).to_string();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn location_overrides() {
        let l = Location::parse("http://h/t/,kernel=boot/vmlinuz,initrd=./boot/initrd.img")
            .expect("parse");
        assert_eq!(l.url.to_string(), "http://h/t/");
        assert_eq!(l.kernel.as_deref(), Some("boot/vmlinuz"));
        assert_eq!(l.initrd.as_deref(), Some("boot/initrd.img"));
        let l = Location::parse("http://h/a,b/").expect("comma in url");
        assert_eq!(l.url.path, "/a,b/");
        assert_eq!(l.kernel, None);
        let cases: &[(&str, &str)] = &[
            (
                "http://h/,kernel=../../etc/passwd",
                "kernel: path \"../../etc/passwd\" leaves the tree",
            ),
            (
                "http://h/,kernel=/vmlinuz",
                "kernel: path \"/vmlinuz\" is absolute",
            ),
            ("http://h/,initrd=i", "names initrd= without kernel="),
            (
                "http://h/,kernl=k",
                "\"kernl=k\" is not kernel=PATH or initrd=PATH",
            ),
            ("http://h/,kernel=", "kernel: path is empty"),
        ];
        for (text, needle) in cases {
            let err = Location::parse(text).expect_err(text).to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn clean_relative_paths() {
        assert_eq!(clean_relative("./a//b/./c").as_deref(), Ok("a/b/c"));
        assert!(clean_relative("a/../b").is_err());
        assert!(clean_relative("/a").is_err());
        assert!(clean_relative("a\nb").is_err());
        assert!(clean_relative("./").is_err());
    }
}
