//! Named API tokens and the audit log, both kept in the store so that in a pool every
//! member honours the same tokens and shows the same log.
//!
//! A token is `NAME.SECRET`: the name finds its record (`auth/tokens/<name>`, see
//! [`crate::keys`]) in one read, the secret (32 random bytes, hex) is checked against the
//! SHA-256 the record keeps, compared in constant time. The secret itself is never stored,
//! logged or listed: [`Tokens::create`] answers it once. Expiry is checked only after the
//! secret matched, so a caller learns that a token expired only by presenting it.
//!
//! The API layer (`corral-api`'s `auth` module) calls [`Tokens::authenticate`] on every
//! request that carries a named token, decides the permission, and after the answer calls
//! [`Audit::record`] for mutating requests and console sessions. The audit log keeps the
//! newest [`AUDIT_LIMIT`] entries under `audit/<time>-<uuid>` (keys sort by time); each
//! member prunes the excess every [`PRUNE_EVERY`] writes.

use crate::context::{store_error, Records};
use crate::error::Error;
use crate::keys;
use corral_model::auth::*;
use corral_model::validate::validate_name;
use corral_model::ErrorKind;
use corral_store::{Expect, TxnOp};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Entries the audit log keeps (the newest).
pub const AUDIT_LIMIT: usize = 10_000;
/// A member prunes the log after this many of its own writes (and on its first).
const PRUNE_EVERY: u64 = 100;
/// `last used` is written at most this often per token, so a busy client does not turn
/// every read into a store write.
const LAST_USED_EVERY_MS: u64 = 60_000;
/// Deletes per store transaction when pruning (etcd refuses large transactions).
const PRUNE_BATCH: usize = 100;

/// A token's record: what is listed, and the hash of its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRecord {
    #[serde(flatten)]
    info: TokenInfo,
    /// SHA-256 of the secret's text, lower-case hex.
    sha256: String,
}

/// Why a presented token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthFailure {
    /// Not a named token, no such name (never created, or revoked), or the secret differs.
    #[error("unknown or revoked token")]
    Unknown,
    #[error("token {name:?} expired at {at_ms} (ms since the epoch)")]
    Expired { name: String, at_ms: u64 },
    /// The store could not be read: not the caller's fault.
    #[error(transparent)]
    Store(#[from] Error),
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random_hex() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| Error::internal(format!("no randomness for a token: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Named tokens in the store.
pub struct Tokens {
    records: Records,
    /// When this member last wrote each token's `last_used_ms`.
    last_written: Mutex<HashMap<String, u64>>,
}

impl Tokens {
    pub fn new(records: Records) -> Self {
        Tokens {
            records,
            last_written: Mutex::new(HashMap::new()),
        }
    }

    /// Check a request, make the token and answer its secret (the only time it is seen).
    pub async fn create(
        &self,
        req: TokenCreateRequest,
        now_ms: u64,
    ) -> Result<TokenCreated, Error> {
        validate_name("token", &req.name).map_err(Error::invalid)?;
        if let Some(p) = &req.vms {
            validate_vm_pattern(p).map_err(Error::invalid)?;
            if req.role == Role::Admin {
                return Err(Error::invalid(
                    "an admin token touches every VM: --vms is for viewer and operator tokens",
                ));
            }
        }
        let expires_ms = match req.expires_in_secs {
            Some(0) => return Err(Error::invalid("a token's lifetime must be positive")),
            Some(s) if s > MAX_TOKEN_LIFETIME_SECS => {
                return Err(Error::invalid(format!(
                "a token may live at most ten years ({MAX_TOKEN_LIFETIME_SECS} s); {s} s is longer"
            )))
            }
            Some(s) => Some(now_ms + s * 1000),
            None => None,
        };
        let secret = random_hex()?;
        let info = TokenInfo {
            name: req.name.clone(),
            role: req.role,
            vms: req.vms,
            created_ms: now_ms,
            expires_ms,
            last_used_ms: None,
        };
        let record = TokenRecord {
            info: info.clone(),
            sha256: sha256_hex(&secret),
        };
        match self
            .records
            .put_json(&keys::token(&req.name), &record, Expect::Absent)
            .await
        {
            Ok(_) => {}
            Err(e) if e.kind == ErrorKind::Conflict => {
                return Err(Error::conflict(format!(
                    "a token named {:?} exists; revoke it first or choose another name",
                    req.name
                )))
            }
            Err(e) => return Err(e),
        }
        tracing::info!(token = %req.name, role = %req.role, "token created");
        Ok(TokenCreated {
            token: info,
            secret: format!("{}.{secret}", req.name),
        })
    }

    /// Every token, by name; never a secret or its hash.
    pub async fn list(&self) -> Result<Vec<TokenInfo>, Error> {
        let mut v: Vec<TokenInfo> = self
            .records
            .list_json::<TokenRecord>(keys::TOKENS, "token")
            .await?
            .into_iter()
            .map(|r| r.info)
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// Remove a token: every member refuses it from its next request on.
    pub async fn revoke(&self, name: &str) -> Result<(), Error> {
        let key = keys::token(name);
        let found = self.records.store().get(&key).await.map_err(store_error)?;
        let Some(v) = found else {
            return Err(Error::not_found(format!("no token named {name:?}")));
        };
        self.records
            .delete(&key, Expect::Revision(v.mod_revision))
            .await?;
        tracing::info!(token = %name, "token revoked");
        Ok(())
    }

    /// The token `presented` (`NAME.SECRET`) if it exists, matches and has not expired.
    pub async fn authenticate(
        &self,
        presented: &str,
        now_ms: u64,
    ) -> Result<TokenInfo, AuthFailure> {
        use subtle::ConstantTimeEq;
        let Some((name, secret)) = presented.rsplit_once('.') else {
            return Err(AuthFailure::Unknown);
        };
        if validate_name("token", name).is_err() {
            return Err(AuthFailure::Unknown);
        }
        let key = keys::token(name);
        let Some(v) = self.records.store().get(&key).await.map_err(store_error)? else {
            return Err(AuthFailure::Unknown);
        };
        let record: TokenRecord = serde_json::from_slice(&v.value).map_err(|e| {
            Error::caused(
                ErrorKind::Internal,
                format!("corrupt token record {key}"),
                e,
            )
        })?;
        // Both sides are 64 hex digits; the hash of a wrong secret says nothing about the
        // right one.
        let given = sha256_hex(secret);
        if !bool::from(given.as_bytes().ct_eq(record.sha256.as_bytes())) {
            return Err(AuthFailure::Unknown);
        }
        if let Some(at_ms) = record.info.expires_ms.filter(|&at| at <= now_ms) {
            return Err(AuthFailure::Expired {
                name: name.to_string(),
                at_ms,
            });
        }
        self.note_use(&key, record.clone(), v.mod_revision, now_ms)
            .await;
        Ok(record.info)
    }

    /// Record `last_used_ms`, at most once a minute per token and member. A lost race (the
    /// token was revoked or used elsewhere meanwhile) is fine: the revision check keeps a
    /// revoked token from coming back.
    async fn note_use(&self, key: &str, mut record: TokenRecord, revision: u64, now_ms: u64) {
        {
            let mut last = self.last_written.lock().unwrap_or_else(|p| p.into_inner());
            let name = record.info.name.clone();
            let seen = record.info.last_used_ms.max(last.get(&name).copied());
            if seen.is_some_and(|t| now_ms.saturating_sub(t) < LAST_USED_EVERY_MS) {
                return;
            }
            last.insert(name, now_ms);
        }
        record.info.last_used_ms = Some(now_ms);
        if let Err(e) = self
            .records
            .put_json(key, &record, Expect::Revision(revision))
            .await
        {
            tracing::debug!(error = %e, "cannot record a token's last use");
        }
    }
}

/// The audit log in the store.
pub struct Audit {
    records: Records,
    writes: AtomicU64,
    limit: usize,
}

impl Audit {
    pub fn new(records: Records) -> Self {
        Self::with_limit(records, AUDIT_LIMIT)
    }

    fn with_limit(records: Records, limit: usize) -> Self {
        Audit {
            records,
            writes: AtomicU64::new(0),
            limit,
        }
    }

    /// Store one entry (and now and then drop the oldest beyond the limit). A failure is
    /// logged, never turned into the request's answer: the request already happened.
    pub async fn record(&self, entry: &AuditEntry) {
        let key = keys::audit(entry.time_ms, &uuid::Uuid::new_v4().simple().to_string());
        if let Err(e) = self.records.put_json(&key, entry, Expect::Absent).await {
            tracing::warn!(error = %e, who = %entry.who, route = %entry.route, "cannot write an audit entry");
            return;
        }
        if self
            .writes
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PRUNE_EVERY)
        {
            if let Err(e) = self.prune().await {
                tracing::warn!(error = %e, "cannot prune the audit log");
            }
        }
    }

    /// Delete the oldest entries beyond the limit. Another member pruning at the same time
    /// deletes the same keys; deleting an absent key is not an error.
    async fn prune(&self) -> Result<usize, Error> {
        let all = self
            .records
            .store()
            .list(keys::AUDIT)
            .await
            .map_err(store_error)?;
        let excess = all.len().saturating_sub(self.limit);
        // `list` answers keys in order, and keys start with the time.
        let doomed: Vec<String> = all.into_iter().take(excess).map(|(k, _)| k).collect();
        for chunk in doomed.chunks(PRUNE_BATCH) {
            let ops = chunk
                .iter()
                .map(|k| TxnOp::delete(k.clone(), Expect::Any))
                .collect();
            self.records.txn(ops).await?;
        }
        Ok(excess)
    }

    /// Entries matching `q`, oldest first.
    pub async fn list(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, Error> {
        let mut v: Vec<AuditEntry> = self.records.list_json(keys::AUDIT, "audit").await?;
        v.retain(|e| {
            q.since_ms.is_none_or(|s| e.time_ms >= s)
                && q.vm.as_deref().is_none_or(|vm| e.vm.as_deref() == Some(vm))
        });
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::Arc;

    fn records() -> Records {
        Records::new(Arc::new(corral_store::MemoryStore::new()))
    }

    fn req(name: &str, role: Role) -> TokenCreateRequest {
        TokenCreateRequest {
            name: name.into(),
            role,
            vms: None,
            expires_in_secs: None,
        }
    }

    #[tokio::test]
    async fn tokens_authenticate_expire_and_revoke() {
        let t = Tokens::new(records());
        let made = t.create(req("ci", Role::Operator), 1_000).await.unwrap();
        assert!(made.secret.starts_with("ci."));
        let info = t.authenticate(&made.secret, 2_000).await.unwrap();
        assert_eq!(info.role, Role::Operator);
        // The store holds the hash, never the secret.
        let listed = t.list().await.unwrap();
        assert_eq!(listed[0].last_used_ms, Some(2_000));
        let raw = t.records.store().list(keys::TOKENS).await.unwrap();
        let secret = made.secret.split_once('.').unwrap().1;
        assert!(!String::from_utf8_lossy(&raw[0].1.value).contains(secret));
        // Wrong secret, other name, malformed: all the same answer.
        for bad in ["ci.00", "nope.abc", "no-dot", ""] {
            assert!(
                matches!(t.authenticate(bad, 2_000).await, Err(AuthFailure::Unknown)),
                "{bad}"
            );
        }
        // Duplicate names are refused.
        let e = t.create(req("ci", Role::Viewer), 3_000).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);
        t.revoke("ci").await.unwrap();
        assert!(matches!(
            t.authenticate(&made.secret, 4_000).await,
            Err(AuthFailure::Unknown)
        ));
        assert_eq!(t.revoke("ci").await.unwrap_err().kind, ErrorKind::NotFound);

        let mut r = req("short", Role::Viewer);
        r.expires_in_secs = Some(10);
        let made = t.create(r, 1_000).await.unwrap();
        assert!(t.authenticate(&made.secret, 10_999).await.is_ok());
        match t.authenticate(&made.secret, 11_000).await {
            Err(AuthFailure::Expired { name, at_ms }) => {
                assert_eq!((name.as_str(), at_ms), ("short", 11_000))
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn bad_requests_say_what_is_wrong() {
        let t = Tokens::new(records());
        let e = t.create(req("-x", Role::Viewer), 0).await.unwrap_err();
        assert!(e.message.contains("token name"), "{}", e.message);
        let mut r = req("a", Role::Admin);
        r.vms = Some("web-*".into());
        assert!(t
            .create(r, 0)
            .await
            .unwrap_err()
            .message
            .contains("viewer and operator"));
        let mut r = req("a", Role::Viewer);
        r.vms = Some("web/*".into());
        assert_eq!(
            t.create(r, 0).await.unwrap_err().kind,
            ErrorKind::InvalidInput
        );
        let mut r = req("a", Role::Viewer);
        r.expires_in_secs = Some(MAX_TOKEN_LIFETIME_SECS + 1);
        assert!(t
            .create(r, 0)
            .await
            .unwrap_err()
            .message
            .contains("ten years"));
    }

    #[tokio::test]
    async fn the_audit_log_is_bounded_and_filtered() {
        let a = Audit::with_limit(records(), 5);
        for i in 0..(PRUNE_EVERY + 1) {
            a.record(&AuditEntry {
                time_ms: 1_000 + i,
                who: "ci".into(),
                role: Some(Role::Operator),
                method: "POST".into(),
                route: "/v1/vms/{name}/actions/{action}".into(),
                path: "/v1/vms/web/actions/start".into(),
                vm: Some(if i % 2 == 0 { "web" } else { "db" }.into()),
                peer: "127.0.0.1:1".into(),
                status: 200,
                host: "h".into(),
            })
            .await;
        }
        // Pruned at the 1st and 101st write: the newest 5 are left.
        let all = a.list(&AuditQuery::default()).await.unwrap();
        let times: Vec<u64> = all.iter().map(|e| e.time_ms).collect();
        assert_eq!(times, [1_096, 1_097, 1_098, 1_099, 1_100]);
        let web = a
            .list(&AuditQuery {
                since_ms: Some(1_097),
                vm: Some("web".into()),
            })
            .await
            .unwrap();
        assert_eq!(
            web.iter().map(|e| e.time_ms).collect::<Vec<_>>(),
            [1_098, 1_100]
        );
    }
}
