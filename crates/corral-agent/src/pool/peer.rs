//! Talking to another pool member over mutual TLS: this member presents its pool
//! certificate, and checks the other's against the pool CA under the server name
//! `<host-id>.pool.corral`. [`connect`] gives the raw TLS stream (the API's request
//! forwarding sends whole HTTP exchanges over it); [`Pool::call`] sends one JSON request to a
//! member's internal routes (live migration's set-up, heartbeats and commit) and decodes the
//! answer, with the member's own `ApiError` when it refuses.

use super::*;
use http_body_util::{BodyExt, Full};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The header that marks a request sent by a member (the receiver also requires the
/// member's certificate, see the API's `PoolPeer`).
pub const FORWARDED: &str = "x-corral-forwarded";

pub type PeerStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Each direction's buffer in [`splice`]. With tokio's default (8 KiB) every 8 KiB of a
/// disk mirror cost a read, a TLS record and a write on each agent; a mirror moves hundreds
/// of MiB in requests of up to 1 MiB.
const SPLICE_BUFFER: usize = 256 * 1024;

/// Copy bytes both ways between two streams until either side closes: a stream between
/// members (live migration's disk mirror, a forwarded console) and a local socket.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> std::io::Result<(u64, u64)>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, SPLICE_BUFFER, SPLICE_BUFFER).await
}

/// The TLS client members use with each other: the pool CA as the only root, this member's
/// certificate as the client identity.
pub fn client_config(tls: &PoolTls) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(tls.ca_pem.as_bytes()).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let cert =
        CertificateDer::from_pem_slice(tls.cert_pem.as_bytes()).map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert], key)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
}

/// `ADDR:PORT` of a member's `https://ADDR:PORT` address.
pub fn authority(address: &str) -> Result<String, String> {
    Ok(address
        .strip_prefix("https://")
        .ok_or_else(|| format!("{address} is not an https:// address"))?
        .trim_end_matches('/')
        .to_string())
}

/// A TLS connection to the member `host_id` at `address`, both sides authenticated.
pub async fn connect(tls: &PoolTls, address: &str, host_id: &str) -> Result<PeerStream, String> {
    let authority = authority(address)?;
    let config = client_config(tls)?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&authority))
        .await
        .map_err(|_| "connection timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let server_name = rustls::pki_types::ServerName::try_from(pki::member_server_name(host_id))
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(server_name, tcp),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_string())?
    .map_err(|e| format!("TLS handshake failed: {e}"))
}

impl Pool {
    /// The published `https://` address of member `host_id`.
    pub fn address_of(&self, host_id: &str) -> Result<String, Error> {
        let v = self.read();
        let h = v.hosts.get(host_id);
        let name = v.host_name(host_id);
        match h {
            Some(h) if !h.up => Err(Error::new(
                ErrorKind::Unavailable,
                format!("host {name:?} is down"),
            )),
            Some(view::HostEntry {
                record:
                    Some(HostRecord {
                        address: Some(a), ..
                    }),
                ..
            }) => Ok(a.clone()),
            _ => Err(Error::new(
                ErrorKind::Unavailable,
                format!("host {name:?} serves no network address (start it with --listen)"),
            )),
        }
    }

    /// One request to member `host_id` over a new mutual-TLS connection, marked as sent by
    /// this member (`Host` and the forwarded header added here); the connection serves an
    /// upgrade if the answer is one.
    async fn send<B>(
        &self,
        tls: &PoolTls,
        address: &str,
        host_id: &str,
        req: hyper::http::request::Builder,
        body: B,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = connect(tls, address, host_id).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn.with_upgrades());
        let req = req
            .header(hyper::header::HOST, authority(address)?)
            .header(FORWARDED, self.host.host_id.as_str())
            .body(body)
            .map_err(|e| e.to_string())?;
        sender.send_request(req).await.map_err(|e| e.to_string())
    }

    /// A raw byte stream to member `host_id`: `GET path` with `Upgrade: protocol` over the
    /// members' mutual TLS, and the connection after the member's 101. Live migration's
    /// disk mirror runs through it (see `migrate::nbd_proxy`).
    pub async fn open_stream(
        &self,
        host_id: &str,
        path: &str,
        protocol: &'static str,
        timeout: Duration,
    ) -> Result<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>, Error> {
        let name = self.name_of(host_id);
        let tls = self
            .tls()
            .ok_or_else(|| Error::internal("this host is not in a clustered pool"))?;
        let address = self.address_of(host_id)?;
        let exchange = async {
            let req = hyper::Request::get(path)
                .header(hyper::header::CONNECTION, "upgrade")
                .header(hyper::header::UPGRADE, protocol);
            let mut resp = self
                .send(tls, &address, host_id, req, http_body_util::Empty::new())
                .await?;
            if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let why = serde_json::from_slice::<corral_model::ApiError>(&body)
                    .map(|e| e.message)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
                return Err(format!("answered {status}: {why}"));
            }
            hyper::upgrade::on(&mut resp)
                .await
                .map(hyper_util::rt::TokioIo::new)
                .map_err(|e| e.to_string())
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {} s", timeout.as_secs()))
            .and_then(|r| r)
            .map_err(|why| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!("cannot open a stream to host {name:?}: {why}"),
                )
            })
    }

    /// Send `body` as JSON to `path` on member `host_id` and decode its JSON answer. A
    /// member that cannot be reached (or does not answer within `timeout`) is
    /// `unavailable`; a refusal comes back as the member's own error.
    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        host_id: &str,
        path: &str,
        body: &impl serde::Serialize,
        timeout: Duration,
    ) -> Result<T, Error> {
        let name = self.name_of(host_id);
        let unreachable = |why: String| {
            Error::new(
                ErrorKind::Unavailable,
                format!("cannot reach host {name:?}: {why}"),
            )
        };
        let tls = self
            .tls()
            .ok_or_else(|| Error::internal("this host is not in a clustered pool"))?;
        let address = self.address_of(host_id)?;
        let json = serde_json::to_vec(body).map_err(|e| Error::internal(e.to_string()))?;
        let exchange = async {
            let req =
                hyper::Request::post(path).header(hyper::header::CONTENT_TYPE, "application/json");
            let resp = self
                .send(
                    tls,
                    &address,
                    host_id,
                    req,
                    Full::new(bytes::Bytes::from(json)),
                )
                .await?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {} s", timeout.as_secs())))?
            .map_err(unreachable)?;
        if !status.is_success() {
            let e = serde_json::from_slice::<corral_model::ApiError>(&bytes).unwrap_or_else(|_| {
                corral_model::ApiError::new(
                    ErrorKind::Internal,
                    format!(
                        "host {name:?} answered {status}: {}",
                        String::from_utf8_lossy(&bytes)
                    ),
                )
            });
            return Err(Error::new(e.kind, e.message));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::internal(format!("host {name:?} answered unreadable JSON: {e}")))
    }
}
