//! Remote access: the same router the unix socket serves, offered over HTTPS on TCP
//! listeners (`corral serve --listen ADDR:PORT`), where every caller needs a token.
//!
//! On first start [`RemoteMaterial::load_or_create`] writes a self-signed certificate to
//! `STATE/tls/{cert.pem,key.pem}` and a random token to `STATE/token` (both secrets 0600);
//! later starts reuse them, so clients keep their pinned fingerprint. No CA can vouch for a
//! self-signed certificate, so clients pin it by its SHA-256 fingerprint (`host info` shows it).
//!
//! A request flows: TCP accept -> TLS handshake ([`serve_tls`], one task per connection,
//! [`HANDSHAKE_TIMEOUT`]) -> HTTP/1.1 with upgrades (so the console upgrade works), the
//! request head due within [`HEADER_READ_TIMEOUT`] -> the router, whose outermost layer
//! ([`crate::auth::guard`]) identifies the caller by token, session or pool certificate
//! ([`PoolPeer`]) and checks its role. The token file `STATE/token` is the built-in admin
//! token (`@bootstrap`); named tokens live in the store.

use crate::auth::Peer;
use axum::extract::connect_info::ConnectInfo;
use axum::Router;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A TLS handshake that takes longer than this is dropped, so idle scanners cannot pile up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client must send a request's whole head (request line and headers) within this time
/// after the connection is ready or the previous answer went out; slower ones are cut off,
/// so a slow-loris client cannot hold connections open.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot generate the TLS certificate: {0}")]
    Generate(String),
    #[error("{path} is not a usable {what}: {reason} (delete it to have a new one generated)")]
    Invalid {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
}

/// Certificate, key and token of this agent, ready to serve.
pub struct RemoteMaterial {
    pub cert_path: PathBuf,
    pub token_path: PathBuf,
    /// SHA-256 of the certificate, `AB:CD:...`.
    pub fingerprint: String,
    pub tls: Arc<rustls::ServerConfig>,
    token: String,
}

impl std::fmt::Debug for RemoteMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("RemoteMaterial")
            .field("cert_path", &self.cert_path)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a DER certificate as upper-case hex pairs joined by `:` (what `openssl x509
/// -fingerprint -sha256` prints, so admins can compare with tools they know).
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(der);
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// [`corral_agent::files::write_private`], its error said as this module says them.
fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<(), RemoteError> {
    corral_agent::files::write_private(path, bytes, mode).map_err(|source| RemoteError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// A secret must not be readable by group or others; an admin's `cp` may have widened it.
fn tighten(path: &Path) -> Result<(), RemoteError> {
    let meta = std::fs::metadata(path).map_err(|source| RemoteError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "secret was readable by others; setting mode 0600");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| RemoteError::Write {
                path: path.to_path_buf(),
                source,
            },
        )?;
    }
    Ok(())
}

fn random_token() -> Result<String, RemoteError> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| RemoteError::Generate(format!("no randomness for the token: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl RemoteMaterial {
    /// Load `STATE/tls/*.pem` and `STATE/token`, creating what is missing. `names` go into
    /// the certificate's subject alternative names of a new certificate (informational:
    /// clients pin the fingerprint, not a name).
    pub fn load_or_create(state_dir: &Path, names: &[String]) -> Result<Self, RemoteError> {
        let dir = state_dir.join("tls");
        std::fs::create_dir_all(&dir).map_err(|source| RemoteError::Write {
            path: dir.clone(),
            source,
        })?;
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        if !(cert_path.exists() && key_path.exists()) {
            let mut sans: Vec<String> = vec!["localhost".into()];
            sans.extend(names.iter().filter(|n| !n.is_empty()).cloned());
            sans.dedup();
            let ck = rcgen::generate_simple_self_signed(sans)
                .map_err(|e| RemoteError::Generate(e.to_string()))?;
            // Key first: a cert without its key is useless, a key without a cert is redone.
            write_private(&key_path, ck.signing_key.serialize_pem().as_bytes(), 0o600)?;
            write_private(&cert_path, ck.cert.pem().as_bytes(), 0o644)?;
            tracing::info!(cert = %cert_path.display(), "generated a self-signed TLS certificate");
        }
        tighten(&key_path)?;
        let invalid = |path: &Path, what, reason: String| RemoteError::Invalid {
            path: path.to_path_buf(),
            what,
            reason,
        };
        let cert = CertificateDer::from_pem_file(&cert_path)
            .map_err(|e| invalid(&cert_path, "PEM certificate", e.to_string()))?;
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .map_err(|e| invalid(&key_path, "PEM private key", e.to_string()))?;
        let fingerprint = fingerprint(&cert);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| RemoteError::Generate(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .map_err(|e| invalid(&key_path, "key for the certificate", e.to_string()))?;

        let token_path = state_dir.join("token");
        if !token_path.exists() {
            write_private(
                &token_path,
                format!("{}\n", random_token()?).as_bytes(),
                0o600,
            )?;
            tracing::info!(path = %token_path.display(), "generated the API token");
        }
        tighten(&token_path)?;
        let token = std::fs::read_to_string(&token_path)
            .map_err(|source| RemoteError::Read {
                path: token_path.clone(),
                source,
            })?
            .trim()
            .to_string();
        // A short or blank token would make guessing easy; refuse rather than serve with it.
        if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                &token_path,
                "token",
                "it must be at least 16 printable characters without spaces".into(),
            ));
        }
        Ok(RemoteMaterial {
            cert_path,
            token_path,
            fingerprint,
            tls: Arc::new(tls),
            token,
        })
    }

    /// The agent's token (for `crate::auth`, which compares it in constant time).
    pub(crate) fn token(&self) -> &str {
        &self.token
    }
}

/// Marks a request that came over a connection whose client presented a certificate the
/// pool CA signed (see [`pool_server_config`]).
#[derive(Debug, Clone, Copy)]
pub struct PoolPeer;

/// The HTTPS server configuration of a pool member: its pool certificate, and client
/// certificates verified against the pool CA when offered (members); clients without one
/// (the CLI, the web console) still come in and need the token.
pub fn pool_server_config(
    tls: &corral_agent::pool::PoolTls,
) -> Result<Arc<rustls::ServerConfig>, RemoteError> {
    let gen = |e: String| RemoteError::Generate(e);
    let cert =
        CertificateDer::from_pem_slice(tls.cert_pem.as_bytes()).map_err(|e| gen(e.to_string()))?;
    let key =
        PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(|e| gen(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            CertificateDer::from_pem_slice(tls.ca_pem.as_bytes())
                .map_err(|e| gen(e.to_string()))?,
        )
        .map_err(|e| gen(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| gen(e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| gen(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)
        .map_err(|e| gen(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Accept TLS connections on `listener` forever, serving `app` (the router, whose gate
/// checks every request) on each, with the client's address as its [`crate::auth::Peer`]. Handshake failures (a client that refused our certificate, a scanner) are logged at
/// debug level and cost nothing else.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "cannot accept a TCP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            // The verifier accepted the client's certificate: it is a pool member.
            let app = app.layer(axum::Extension(ConnectInfo(Peer::Tcp(peer))));
            let app = if stream.get_ref().1.peer_certificates().is_some() {
                app.layer(axum::Extension(PoolPeer))
            } else {
                app
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .with_upgrades()
                .await
            {
                tracing::debug!(%peer, error = %e, "HTTPS connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn material_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = RemoteMaterial::load_or_create(dir.path(), &["10.0.0.5".into()]).unwrap();
        let b = RemoteMaterial::load_or_create(dir.path(), &[]).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.token, b.token);
        assert_eq!(a.token.len(), 64);
        assert_eq!(a.fingerprint.len(), 32 * 3 - 1);
        for secret in [dir.path().join("token"), dir.path().join("tls/key.pem")] {
            let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", secret.display());
        }
        // A widened secret is narrowed again on the next start.
        let token = dir.path().join("token");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
        RemoteMaterial::load_or_create(dir.path(), &[]).unwrap();
        let mode = std::fs::metadata(&token).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // The fingerprint is that of the certificate on disk.
        let pem = std::fs::read(dir.path().join("tls/cert.pem")).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        assert_eq!(fingerprint(&der), a.fingerprint);
    }

    #[test]
    fn weak_tokens_and_broken_keys_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        RemoteMaterial::load_or_create(dir.path(), &[]).unwrap();
        std::fs::write(dir.path().join("token"), "short\n").unwrap();
        let e = RemoteMaterial::load_or_create(dir.path(), &[]).unwrap_err();
        assert!(e.to_string().contains("token"), "{e}");
        std::fs::remove_file(dir.path().join("token")).unwrap();
        std::fs::write(dir.path().join("tls/key.pem"), "not a key").unwrap();
        let e = RemoteMaterial::load_or_create(dir.path(), &[]).unwrap_err();
        assert!(e.to_string().contains("key.pem"), "{e}");
    }
}
