//! Cluster-ready state: a [`Store`] of key-value records with revisions, transactions,
//! watches and leases — the shape of etcd's API, so the agent runs the same on one host
//! (SQLite, embedded) and on a pool (etcd).
//!
//! The agent keeps every durable record as a JSON value under a slash-separated key. Every
//! write bumps one store-wide revision; a write may be conditional on a record's current
//! revision or absence ([`Expect`]), and a [`TxnOp`] list commits all or nothing. A
//! [`Watch`] delivers every change under a prefix after a given revision, in order, so a
//! cache can be built from a list plus a watch and resumed after a reconnect. A lease
//! ([`LeaseId`]) is a time-to-live that records can be attached to: when it is not kept
//! alive, its records are deleted (membership, ownership). Errors are backend-neutral
//! ([`StoreError`]); backend types never cross this crate's edge.
//!
//! Backends: [`SqliteStore`] (the embedded default; leases and the watch history live in the
//! process, records attached to a lease are removed when the store is opened again),
//! [`EtcdStore`] (pools: every operation is one etcd request, see the `etcd` module's table
//! of how each maps) and [`MemoryStore`] (for unit tests). SQLite and memory share the watch
//! and lease machinery in `hub`; etcd brings its own (revisions, watches and leases are
//! etcd's). All three pass the same conformance tests.
//!
//! On etcd, in short: a record's revision is its `mod_revision`; [`Expect::Absent`] is
//! `create_revision == 0` and [`Expect::Revision`] is `mod_revision == r` in the compare list
//! of the one etcd transaction a `txn` becomes; `list` is a prefix range; `watch(prefix,
//! after)` is an etcd watch from `after + 1` that resumes on another member from the last
//! revision it delivered, and a start below etcd's compaction is [`StoreError::Compacted`];
//! leases are etcd leases (a `keep_alive` renews once). Every call has a deadline, and a
//! cluster that does not answer is [`StoreError::Unavailable`] naming the endpoints tried.

mod etcd;
mod hub;
mod memory;
mod sqlite;

pub use etcd::{EtcdOptions, EtcdStore};
pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A future a store method returns (object-safe, `Send`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A value with the store revision of its last modification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub mod_revision: u64,
}

/// Precondition of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Write whatever is there.
    Any,
    /// Only create: fail if the key exists.
    Absent,
    /// Only if the record is unchanged since this revision.
    Revision(u64),
}

/// A lease granted by the store; records put with it vanish when it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

/// One step of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Put {
        key: String,
        value: Vec<u8>,
        expect: Expect,
        lease: Option<LeaseId>,
    },
    /// Deleting an absent key with `Expect::Any` is not an error.
    Delete { key: String, expect: Expect },
}

impl TxnOp {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>, expect: Expect) -> Self {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            expect,
            lease: None,
        }
    }
    pub fn delete(key: impl Into<String>, expect: Expect) -> Self {
        TxnOp::Delete {
            key: key.into(),
            expect,
        }
    }
    fn key(&self) -> &str {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key, .. } => key,
        }
    }
}

/// What happened to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(Vec<u8>),
    Delete,
}

/// One change seen by a [`Watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub key: String,
    pub change: Change,
    pub mod_revision: u64,
}

/// Changes under a prefix, in revision order. Ends (`None`) when the store goes away.
pub struct Watch {
    rx: tokio::sync::mpsc::UnboundedReceiver<WatchEvent>,
}

impl Watch {
    pub async fn next(&mut self) -> Option<WatchEvent> {
        self.rx.recv().await
    }
    /// The next change if one is waiting, without blocking.
    pub fn try_next(&mut self) -> Option<WatchEvent> {
        self.rx.try_recv().ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "record {key:?} changed concurrently (expected {expected:?}, found revision {found:?})"
    )]
    Conflict {
        key: String,
        expected: Expect,
        found: Option<u64>,
    },
    /// A watch asked for history the store no longer keeps; list again and watch from there.
    #[error("revision {requested} is compacted (the oldest kept is {oldest})")]
    Compacted { requested: u64, oldest: u64 },
    #[error("lease {0:?} does not exist or has expired")]
    LeaseNotFound(LeaseId),
    /// The store cannot be reached at all (pool stores: every endpoint tried).
    #[error("state store unavailable (tried {endpoints})")]
    Unavailable {
        endpoints: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot open state database {path}")]
    Open {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("state database error")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub(crate) fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

/// Durable key-value records with revisions. Every method is one atomic operation.
pub trait Store: Send + Sync {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, StoreError>>;
    /// All records whose key starts with `prefix`, in key order.
    fn list<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, Versioned)>, StoreError>>;
    /// Apply every op or none (a failed precondition fails the whole transaction with
    /// `Conflict`); returns the store revision after it.
    fn txn(&self, ops: Vec<TxnOp>) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// Changes under `prefix` with a revision above `after_revision` (0: from now on).
    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after_revision: u64,
    ) -> BoxFuture<'a, Result<Watch, StoreError>>;
    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>>;
    /// Renew a lease for another TTL.
    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>>;
    /// End a lease now, deleting its records.
    fn revoke(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The current store revision.
    fn revision(&self) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Write a record; returns its new revision.
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        expect: Expect,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.txn(vec![TxnOp::put(key, value, expect)])
    }
    /// Delete a record; deleting an absent record with `Expect::Any` is not an error.
    fn delete<'a>(&'a self, key: &'a str, expect: Expect) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.txn(vec![TxnOp::delete(key, expect)]).await?;
            Ok(())
        })
    }
}

/// The condition check every backend applies to one op.
pub(crate) fn check(key: &str, expect: Expect, found: Option<u64>) -> Result<(), StoreError> {
    let ok = match expect {
        Expect::Any => true,
        Expect::Absent => found.is_none(),
        Expect::Revision(r) => found == Some(r),
    };
    if ok {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            key: key.to_string(),
            expected: expect,
            found,
        })
    }
}

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod etcd_cluster;
