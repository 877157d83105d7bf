//! HTTPS to an agent's `--listen` address: URL checks, TCP connect with a timeout, and a TLS
//! handshake that trusts exactly one certificate, named by its SHA-256 fingerprint.
//!
//! Agents use self-signed certificates (no CA can vouch for a host's own certificate), so the
//! usual web-PKI validation cannot work; pinning is what SSH does with host keys. The verifier
//! still checks the handshake signature against the pinned certificate, so only the holder of
//! the agent's key can pass. When no fingerprint is given, or it differs, the verifier records
//! what the agent presented and the handshake fails; the caller turns that into an error that
//! prints the fingerprint (trust on first use, but only after a human looked).

use crate::{ClientError, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Parse a SHA-256 fingerprint as users paste it: hex pairs with or without `:`, any case,
/// optionally prefixed by `sha256:` (as `openssl x509 -fingerprint -sha256` prints it, too).
pub fn parse_fingerprint(text: &str) -> std::result::Result<[u8; 32], String> {
    let t = text.trim();
    let t = t
        .strip_prefix("sha256:")
        .or_else(|| t.strip_prefix("SHA256:"))
        .or_else(|| t.strip_prefix("sha256 Fingerprint="))
        .unwrap_or(t);
    let hex: String = t.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "fingerprint {text:?} is not a SHA-256 fingerprint (64 hex digits, `:` between pairs allowed)"
        ));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("fingerprint {text:?} is not hexadecimal"))?;
    }
    Ok(out)
}

fn format_fingerprint(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Where and how to reach one agent over HTTPS.
pub struct HttpsTarget {
    /// `https://host:port`, as shown in errors.
    pub(crate) url: String,
    host: String,
    port: u16,
    /// `host:port` for the Host header.
    pub(crate) authority: String,
    pub(crate) token: Option<String>,
    verifier: Arc<PinnedCert>,
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for HttpsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of debug output and logs.
        f.debug_struct("HttpsTarget")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

/// Split `https://HOST:PORT[/]` into host and port, with errors that say what to type.
fn parse_url(url: &str) -> std::result::Result<(String, u16), String> {
    let hint =
        "use https://HOST:PORT, the address the agent was started with (`corral serve --listen`)";
    let rest = if let Some(r) = url.strip_prefix("https://") {
        r
    } else if url.starts_with("http://") {
        return Err(format!(
            "{url:?}: the agent serves only HTTPS over the network (tokens must not travel in clear text); {hint}"
        ));
    } else {
        return Err(format!("{url:?} is not an agent address; {hint}"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('?') || rest.contains('@') {
        return Err(format!("{url:?} has a path, query or user part; {hint}"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, p) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?} has an unclosed `[`; {hint}"))?;
        (h.to_string(), p.strip_prefix(':').unwrap_or(p))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p),
            None => (rest.to_string(), ""),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host; {hint}"));
    }
    if port.is_empty() {
        return Err(format!(
            "{url:?} has no port (the agent has no default port); {hint}"
        ));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{url:?}: port {port:?} is not a number in 1..65535"))?;
    Ok((host, port))
}

/// Whether this CPU encrypts AES-GCM in hardware (AES-NI and carry-less multiply).
fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

impl HttpsTarget {
    pub fn new(url: &str, token: Option<&str>, fingerprint: Option<&str>) -> Result<Self> {
        let (host, port) = parse_url(url).map_err(ClientError::Address)?;
        let expected = fingerprint
            .map(parse_fingerprint)
            .transpose()
            .map_err(ClientError::Address)?;
        let mut provider = rustls::crypto::ring::default_provider();
        // Without AES instructions (old servers run `corral p2v`), AES-GCM in software is a
        // few times slower than ChaCha20-Poly1305: ask for ChaCha first. The agent follows
        // the client's order.
        if !aes_in_hardware() {
            provider
                .cipher_suites
                .sort_by_key(|s| !format!("{:?}", s.suite()).contains("CHACHA20"));
        }
        let provider = Arc::new(provider);
        let verifier = Arc::new(PinnedCert {
            expected,
            seen: Mutex::new(None),
            algorithms: provider.signature_verification_algorithms,
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(HttpsTarget {
            url: format!("https://{authority}"),
            host,
            port,
            authority,
            token: token
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
            verifier,
            config: Arc::new(config),
        })
    }

    /// TCP connect and TLS handshake, with errors that tell a refused certificate from an
    /// unreachable host.
    pub(crate) async fn connect(
        &self,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let connect_err = |source| ClientError::Connect {
            endpoint: self.url.clone(),
            source,
        };
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| {
            connect_err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
            ))
        })?
        .map_err(connect_err)?;
        let _ = tcp.set_nodelay(true);
        let name = match self.host.parse::<std::net::IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(self.host.clone())
                .map_err(|e| ClientError::Address(format!("host {:?}: {e}", self.host)))?,
        };
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(source)) => Err(self.refused(source)),
            Err(_) => Err(ClientError::Tls {
                endpoint: self.url.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no TLS answer within 10s (is this the agent's --listen address?)",
                ),
            }),
        }
    }

    /// Why a handshake failed: our pin refused the certificate, or something else.
    fn refused(&self, source: std::io::Error) -> ClientError {
        let seen = *self.verifier.seen.lock().unwrap_or_else(|p| p.into_inner());
        match (seen, self.verifier.expected) {
            (Some(actual), None) => ClientError::UnknownCertificate {
                endpoint: self.url.clone(),
                actual: format_fingerprint(&actual),
            },
            (Some(actual), Some(expected)) if actual != expected => {
                ClientError::FingerprintMismatch {
                    endpoint: self.url.clone(),
                    expected: format_fingerprint(&expected),
                    actual: format_fingerprint(&actual),
                }
            }
            _ => ClientError::Tls {
                endpoint: self.url.clone(),
                source,
            },
        }
    }
}

/// Trusts exactly the certificate whose SHA-256 is `expected`.
#[derive(Debug)]
struct PinnedCert {
    expected: Option<[u8; 32]>,
    /// The fingerprint the agent presented last, for the error message.
    seen: Mutex<Option<[u8; 32]>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(end_entity.as_ref()).into();
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(digest);
        // Names and dates do not matter: the certificate is trusted because it is exactly the
        // one the admin named, like an SSH host key.
        if self.expected == Some(digest) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_https_host_and_port() {
        assert_eq!(
            parse_url("https://10.0.0.5:8443").unwrap(),
            ("10.0.0.5".into(), 8443)
        );
        assert_eq!(
            parse_url("https://host.example:1/").unwrap(),
            ("host.example".into(), 1)
        );
        assert_eq!(parse_url("https://[::1]:9").unwrap(), ("::1".into(), 9));
        for (bad, says) in [
            ("http://h:1", "only HTTPS"),
            ("https://h", "no port"),
            ("https://h:", "no port"),
            ("https://:80", "no host"),
            ("https://h:0", "1..65535"),
            ("https://h:99999", "1..65535"),
            ("https://h:1/v1", "path"),
            ("ftp://h:1", "not an agent address"),
            ("https://[::1:5", "unclosed"),
        ] {
            let e = parse_url(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn fingerprints_parse_in_the_usual_spellings() {
        let colon = "AB:".repeat(31) + "CD";
        let want = {
            let mut w = [0xABu8; 32];
            w[31] = 0xCD;
            w
        };
        assert_eq!(parse_fingerprint(&colon).unwrap(), want);
        assert_eq!(
            parse_fingerprint(&colon.replace(':', "").to_lowercase()).unwrap(),
            want
        );
        assert_eq!(parse_fingerprint(&format!("sha256:{colon}")).unwrap(), want);
        assert_eq!(format_fingerprint(&want), colon);
        for bad in ["", "AB", "zz".repeat(32).as_str(), &"AB".repeat(33)] {
            assert!(parse_fingerprint(bad).is_err(), "{bad}");
        }
    }
}
