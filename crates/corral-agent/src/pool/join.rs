//! Joining: founding the pool or enrolling in it (the CA and the join token, see
//! [`super::pki`]), taking a unique host name, and the membership lease a restarted agent
//! keeps renewing.

use super::*;

/// Found the pool, or enroll in it; answers the pool record, this member's TLS material
/// and whether this host founded the pool.
pub(super) async fn enroll(
    host: &Host,
    store: &dyn Store,
    options: &PoolOptions,
) -> Result<(pki::PoolRecord, PoolTls, bool), Error> {
    let dir = pool_dir(host);
    std::fs::create_dir_all(&dir).map_err(|e| {
        Error::caused(
            ErrorKind::Internal,
            format!("cannot create {}", dir.display()),
            e,
        )
    })?;
    let token_file = dir.join("join-token");
    let saved_token = std::fs::read_to_string(&token_file)
        .ok()
        .map(|s| s.trim().to_string());
    let existing = store.get(keys::POOL_INFO).await.map_err(store_error)?;
    let (record, token, founded) = match existing {
        Some(v) => {
            let record: pki::PoolRecord = serde_json::from_slice(&v.value).map_err(|e| {
                Error::caused(ErrorKind::Internal, "the pool record is unreadable", e)
            })?;
            let token = options.join_token.clone().or(saved_token).ok_or_else(|| {
                Error::new(
                    ErrorKind::Unauthorized,
                    format!(
                        "pool {:?} exists in this store: give its join token (--join-token; the founding host keeps it in STATE_DIR/pool/join-token)",
                        record.name
                    ),
                )
            })?;
            let founded = record.founder == host.host_id;
            (record, token, founded)
        }
        None => {
            let token = match &options.join_token {
                Some(t) => t.clone(),
                None => pki::new_token()?,
            };
            let name = if options.pool_name.is_empty() {
                "pool".to_string()
            } else {
                options.pool_name.clone()
            };
            let record = pki::found(&name, &host.host_id, &token, now_ms())?;
            match store
                .put(keys::POOL_INFO, &encode("pool", &record)?, Expect::Absent)
                .await
            {
                Ok(_) => (record, token, true),
                Err(StoreError::Conflict { .. }) => {
                    return Err(Error::conflict(
                        "another host founded the pool at the same moment: start this one again with that pool's --join-token",
                    ))
                }
                Err(e) => return Err(store_error(e)),
            }
        }
    };
    if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid(
            "a join token is at least 16 printable characters without spaces",
        ));
    }
    let member = pki::enroll(&record, &token, &host.host_id, &options.host_name)?;
    let write = |name: &str, text: &str| -> Result<(), Error> {
        let path = dir.join(name);
        crate::files::write_private(&path, text.as_bytes(), 0o600).map_err(|e| {
            Error::caused(
                ErrorKind::Internal,
                format!("cannot write {}", path.display()),
                e,
            )
        })
    };
    write("join-token", &format!("{token}\n"))?;
    write("ca.pem", &record.ca_cert_pem)?;
    write("cert.pem", &member.cert_pem)?;
    write("key.pem", &member.key_pem)?;
    let pem_sha256 = |pem: &str| -> Result<String, Error> {
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| Error::internal(format!("a pool certificate is unreadable: {e}")))?;
        Ok(sha256_hex(&der))
    };
    let ca_sha256 = pem_sha256(&record.ca_cert_pem)?;
    let cert_sha256 = pem_sha256(&member.cert_pem)?;
    Ok((
        record.clone(),
        PoolTls {
            ca_pem: record.ca_cert_pem,
            cert_pem: member.cert_pem,
            key_pem: member.key_pem,
            ca_sha256,
            cert_sha256,
        },
        founded,
    ))
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Reserve `name` for this host in the pool: refused when another member has it.
pub(super) async fn claim_host_name(
    store: &dyn Store,
    host_id: &str,
    name: &str,
) -> Result<(), Error> {
    corral_model::validate::validate_name("host", name).map_err(Error::invalid)?;
    let key = keys::pool_host_name(name);
    match store.get(&key).await.map_err(store_error)? {
        Some(v) if v.value == host_id.as_bytes() => Ok(()),
        Some(v) => {
            let other = String::from_utf8_lossy(&v.value).to_string();
            let up = store
                .get(&keys::pool_member(&other))
                .await
                .map_err(store_error)?
                .is_some();
            Err(Error::conflict(format!(
                "host name {name:?} is taken by another member of the pool (host id {other}, {}): choose another --host-name{}",
                if up { "up" } else { "down" },
                if up { String::new() } else { format!(", or `corral host forget {name}` if that host is gone") }
            )))
        }
        None => {
            // This host may have had another name: free it in the same transaction.
            let mut ops = vec![TxnOp::put(key.clone(), host_id.as_bytes(), Expect::Absent)];
            for (old_key, v) in store
                .list(keys::POOL_HOST_NAMES)
                .await
                .map_err(store_error)?
            {
                if v.value == host_id.as_bytes() {
                    ops.push(TxnOp::delete(old_key, Expect::Revision(v.mod_revision)));
                }
            }
            store.txn(ops).await.map_err(|e| match e {
                StoreError::Conflict { .. } => Error::conflict(format!(
                    "host name {name:?} was taken by another member at the same moment"
                )),
                other => store_error(other),
            })?;
            Ok(())
        }
    }
}

/// The membership lease: the one a previous run of this agent kept alive, if it still
/// lives (an agent restart is not a host failure), else a new one.
pub(super) async fn membership_lease(
    store: &dyn Store,
    fence: Option<&FenceFiles>,
    t: HaTimings,
) -> Result<LeaseId, Error> {
    if let Some(saved) = fence.and_then(FenceFiles::saved_lease) {
        if store.keep_alive(LeaseId(saved)).await.is_ok() {
            return Ok(LeaseId(saved));
        }
    }
    let lease = store.grant_lease(t.lease_ttl).await.map_err(store_error)?;
    if let Some(f) = fence {
        let _ = f.save_lease(lease.0);
    }
    Ok(lease)
}
