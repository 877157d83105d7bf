//! Cluster-ready state: a `Store` of key-value records with revisions.
//!
//! The agent keeps every durable record (VMs, tasks, repositories, networks) as a JSON value
//! under a slash-separated key (`vms/<uuid>`, `tasks/<uuid>`, `srs/<name>`). Every write bumps
//! one store-wide revision, like etcd's, and writes may be conditional on the record's current
//! revision (compare-and-swap), so the same agent code can later run against etcd for pools of
//! hosts. SQL never leaves this crate: `SqliteStore` is one implementation of the trait.

mod sqlite;

pub use sqlite::SqliteStore;

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
    #[error("cannot open state database {path}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database error")]
    Database(#[from] rusqlite::Error),
}

/// Durable key-value records with revisions. Implementations must be safe to share between
/// threads; every method is a single atomic operation.
pub trait Store: Send + Sync {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;
    /// All records whose key starts with `prefix`, in key order.
    fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError>;
    /// Write a record; returns its new revision.
    fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<u64, StoreError>;
    /// Delete a record; deleting an absent record with `Expect::Any` is not an error.
    fn delete(&self, key: &str, expect: Expect) -> Result<(), StoreError>;
    /// The current store revision.
    fn revision(&self) -> Result<u64, StoreError>;
}
