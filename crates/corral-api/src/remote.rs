//! Remote access: the same router the unix socket serves, offered over HTTPS on TCP
//! listeners (`corral serve --listen ADDR:PORT`) and guarded by a bearer token.
//!
//! On first start [`RemoteMaterial::load_or_create`] writes a self-signed certificate to
//! `STATE/tls/{cert.pem,key.pem}` and a random token to `STATE/token` (both secrets 0600);
//! later starts reuse them, so clients keep their pinned fingerprint. No CA can vouch for a
//! self-signed certificate, so clients pin it by its SHA-256 fingerprint (`host info` shows it).
//!
//! A request flows: TCP accept -> TLS handshake ([`serve_tls`], one task per connection) ->
//! HTTP/1.1 with upgrades (so the console upgrade works) -> [`require_token`] (constant-time
//! compare; 401 with an `ApiError` saying where the token lives) -> the ordinary routes. The
//! unix socket does not pass through here: its file mode is its protection.

use crate::routes::Failure;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use corral_model::{ApiError, ErrorKind};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A TLS handshake that takes longer than this is dropped, so idle scanners cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

    /// The router wrapped so every request must carry this agent's token.
    pub fn guard(&self, app: Router) -> Router {
        app.layer(axum::middleware::from_fn_with_state(
            self.token_auth(),
            require_token,
        ))
    }

    /// The bearer check on its own, for the web console's guard (`crate::web::guard`), which
    /// also accepts a session cookie.
    pub fn token_auth(&self) -> Arc<TokenAuth> {
        Arc::new(TokenAuth {
            token: self.token.clone(),
            token_path: self.token_path.clone(),
        })
    }

    /// The web console's state, whose login compares against this agent's token.
    pub fn web(&self) -> Arc<crate::web::Web> {
        crate::web::Web::with_token(Some(self.token.clone()))
    }

    /// The router wrapped by the web console's guard: the page and login open, console
    /// websockets by ticket, the API by bearer token or session cookie with CSRF header.
    pub fn guard_web(&self, app: Router, web: Arc<crate::web::Web>) -> Router {
        app.layer(axum::middleware::from_fn_with_state(
            (web, self.token_auth()),
            crate::web::guard,
        ))
    }
}

/// The agent's token and where it lives (for the message of a refusal).
pub struct TokenAuth {
    token: String,
    token_path: PathBuf,
}

fn unauthorized(message: String) -> Response {
    let mut resp = Failure(ApiError::new(ErrorKind::Unauthorized, message)).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}

/// Let a request through only with `Authorization: Bearer <token>`.
async fn require_token(State(auth): State<Arc<TokenAuth>>, req: Request, next: Next) -> Response {
    check_bearer(&auth, req, next).await
}

/// Run `next` when `req` carries `Authorization: Bearer <token>`, else answer 401.
pub async fn check_bearer(auth: &TokenAuth, req: Request, next: Next) -> Response {
    use subtle::ConstantTimeEq;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let where_ = format!(
        "the token is in {} on the agent's host (corral: --token or CORRAL_TOKEN)",
        auth.token_path.display()
    );
    match given {
        // `ct_eq` on slices of different lengths is false without comparing contents; the
        // length of the token is no secret.
        Some(t) if bool::from(t.as_bytes().ct_eq(auth.token.as_bytes())) => next.run(req).await,
        // A pool member, authenticated by its certificate (checked against the pool CA in
        // the TLS handshake): it forwards requests its own client was authorized for.
        _ if req.extensions().get::<PoolPeer>().is_some() => next.run(req).await,
        Some(_) => unauthorized(format!("wrong token: {where_}")),
        None => unauthorized(format!(
            "this agent needs a token over the network (`Authorization: Bearer TOKEN`): {where_}"
        )),
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

/// Accept TLS connections on `listener` forever, serving `app` (already token-guarded) on
/// each. Handshake failures (a client that refused our certificate, a scanner) are logged at
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
            let app = if stream.get_ref().1.peer_certificates().is_some() {
                app.layer(axum::Extension(PoolPeer))
            } else {
                app
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
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
