//! The pool's certificate authority and join token.
//!
//! When a pool is founded, the founder makes a CA (an ECDSA P-256 key and a self-signed
//! certificate) and a random join token. The pool record in the store keeps the CA
//! certificate, the CA key **sealed** with a key derived from the token
//! (ChaCha20-Poly1305), and a check value of the token (a SHA-256 under its own label), so:
//! - a host joining with the right token unseals the CA key and issues itself a member
//!   certificate (server and client use) for mutual TLS with the other members;
//! - a wrong token is refused at once, by the check value, before anything is written;
//! - the token itself never crosses the wire, and the store holds nothing that lets a
//!   reader without the token make a member certificate.
//!
//! Members authenticate each other by the CA alone (no trust on first use): the server name
//! a member presents and expects is `<host-id>.pool.corral`.

use crate::error::Error;
use corral_model::ErrorKind;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// What the store keeps about the pool (`pool/info`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolRecord {
    pub name: String,
    pub founded_at_ms: u64,
    /// Host id of the founder.
    pub founder: String,
    pub ca_cert_pem: String,
    /// Hex of nonce ‖ ciphertext ‖ tag of the CA key's PEM.
    pub ca_key_sealed: String,
    /// Hex of SHA-256("corral join token check\0" ‖ token).
    pub token_check: String,
}

/// A member's TLS material, PEM.
#[derive(Debug, Clone)]
pub struct MemberCert {
    pub cert_pem: String,
    pub key_pem: String,
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn labelled_digest(label: &str, token: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(label.as_bytes());
    ctx.update(&[0]);
    ctx.update(token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn seal_key(token: &str) -> Result<LessSafeKey, Error> {
    let key = labelled_digest("corral pool CA seal", token);
    UnboundKey::new(&CHACHA20_POLY1305, &key)
        .map(LessSafeKey::new)
        .map_err(|_| Error::internal("cannot derive the sealing key"))
}

fn token_check(token: &str) -> String {
    hex(&labelled_digest("corral join token check", token))
}

/// A new join token: 32 random bytes, hex, with a prefix that says what it is.
pub fn new_token() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::internal("no randomness for the join token"))?;
    Ok(format!("corral-join-{}", hex(&bytes)))
}

fn ca_params(pool: &str) -> Result<rcgen::CertificateParams, Error> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| Error::internal(format!("CA parameters: {e}")))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("corral pool {pool} CA"));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn gen_error(e: rcgen::Error) -> Error {
    Error::internal(format!("cannot make a certificate: {e}"))
}

/// Found a pool: its CA, sealed under `token`.
pub fn found(pool: &str, founder: &str, token: &str, now_ms: u64) -> Result<PoolRecord, Error> {
    let key = rcgen::KeyPair::generate().map_err(gen_error)?;
    let cert = ca_params(pool)?.self_signed(&key).map_err(gen_error)?;
    let sealing = seal_key(token)?;
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| Error::internal("no randomness for the seal"))?;
    let mut sealed = key.serialize_pem().into_bytes();
    sealing
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(pool.as_bytes()),
            &mut sealed,
        )
        .map_err(|_| Error::internal("cannot seal the CA key"))?;
    let mut blob = nonce.to_vec();
    blob.extend_from_slice(&sealed);
    Ok(PoolRecord {
        name: pool.to_string(),
        founded_at_ms: now_ms,
        founder: founder.to_string(),
        ca_cert_pem: cert.pem(),
        ca_key_sealed: hex(&blob),
        token_check: token_check(token),
    })
}

/// The server name a member's certificate carries and its peers expect.
pub fn member_server_name(host_id: &str) -> String {
    format!("{host_id}.pool.corral")
}

/// Check `token` against the pool and issue a member certificate for `host_id`. A wrong
/// token is `unauthorized` and nothing is made.
pub fn enroll(
    pool: &PoolRecord,
    token: &str,
    host_id: &str,
    host_name: &str,
) -> Result<MemberCert, Error> {
    use subtle_eq::ct_eq;
    if !ct_eq(token_check(token).as_bytes(), pool.token_check.as_bytes()) {
        return Err(Error::new(
            ErrorKind::Unauthorized,
            format!(
                "the join token does not match pool {:?} (the founding host keeps it in STATE_DIR/pool/join-token)",
                pool.name
            ),
        ));
    }
    let blob = unhex(&pool.ca_key_sealed)
        .filter(|b| b.len() > NONCE_LEN)
        .ok_or_else(|| Error::internal("the pool record's sealed CA key is unreadable"))?;
    let (nonce, sealed) = blob.split_at(NONCE_LEN);
    let mut sealed = sealed.to_vec();
    let nonce = Nonce::try_assume_unique_for_key(nonce)
        .map_err(|_| Error::internal("the pool record's seal is unreadable"))?;
    let plain = seal_key(token)?
        .open_in_place(nonce, Aad::from(pool.name.as_bytes()), &mut sealed)
        .map_err(|_| Error::internal("the pool's CA key does not open with this token"))?;
    let ca_key_pem =
        std::str::from_utf8(plain).map_err(|_| Error::internal("the pool's CA key is not PEM"))?;
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem).map_err(gen_error)?;
    let issuer = rcgen::Issuer::new(ca_params(&pool.name)?, ca_key);

    let key = rcgen::KeyPair::generate().map_err(gen_error)?;
    let mut params =
        rcgen::CertificateParams::new(vec![member_server_name(host_id)]).map_err(gen_error)?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("corral host {host_name}"),
    );
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, &issuer).map_err(gen_error)?;
    Ok(MemberCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Constant-time equality for the token check (the length is no secret).
mod subtle_eq {
    pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_right_token_enrolls_and_a_wrong_one_is_refused() {
        let token = new_token().unwrap();
        assert!(token.starts_with("corral-join-") && token.len() == 12 + 64);
        let pool = found("lab", "h1", &token, 1).unwrap();
        assert!(!pool.ca_key_sealed.contains("PRIVATE"));
        assert!(!pool.token_check.contains(&token[12..]));
        let member = enroll(&pool, &token, "h2", "xen02").unwrap();
        assert!(member.cert_pem.contains("BEGIN CERTIFICATE"));
        let wrong = enroll(&pool, &new_token().unwrap(), "h3", "xen03").unwrap_err();
        assert_eq!(wrong.kind, ErrorKind::Unauthorized);
        assert!(
            wrong.message.contains("join token does not match"),
            "{wrong}"
        );
    }

    #[test]
    fn a_member_certificate_verifies_against_the_pool_ca_only() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let token = new_token().unwrap();
        let pool = found("lab", "h1", &token, 1).unwrap();
        let other = found("other", "h9", &token, 1).unwrap();
        let member = enroll(&pool, &token, "h2", "xen02").unwrap();
        let leaf = CertificateDer::from_pem_slice(member.cert_pem.as_bytes()).unwrap();
        let verify = |ca: &str| {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
                .unwrap();
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            v.verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from(member_server_name("h2")).unwrap(),
                &[],
                UnixTime::now(),
            )
            .is_ok()
        };
        assert!(verify(&pool.ca_cert_pem));
        assert!(!verify(&other.ca_cert_pem));
    }
}
