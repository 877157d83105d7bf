//! What the local backends share: the async [`Store`] face over a synchronous [`Engine`],
//! the watch hub (a ring of recent changes plus one channel per watcher) and leases kept in
//! the process (a timer per lease deletes its records when it is not renewed).
//!
//! Flow of a write: `txn` checks leases, the engine applies every op in one database
//! transaction and returns the changes it made, and the hub — under one lock, so a watcher
//! that subscribes concurrently sees each change exactly once — appends them to the ring and
//! sends them to every watcher whose prefix matches.

use crate::{BoxFuture, Change, LeaseId, Store, StoreError, TxnOp, Versioned, Watch, WatchEvent};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Changes kept for watchers that resume from an older revision.
const RING: usize = 10_000;

/// A synchronous key-value engine with revisions.
pub trait Engine: Send + Sync + 'static {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;
    fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError>;
    /// Check every op's condition and apply all of them at one new revision, or none.
    /// Returns the revision after and the changes made (deletes of absent keys are none).
    fn apply(&self, ops: &[TxnOp]) -> Result<(u64, Vec<WatchEvent>), StoreError>;
    fn revision(&self) -> Result<u64, StoreError>;
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: HashSet<String>,
}

#[derive(Default)]
struct Hub {
    ring: VecDeque<WatchEvent>,
    /// Revision of the oldest change the ring can replay from (exclusive).
    ring_floor: u64,
    watchers: Vec<(String, mpsc::UnboundedSender<WatchEvent>)>,
    leases: HashMap<LeaseId, Lease>,
    key_lease: HashMap<String, LeaseId>,
    next_lease: i64,
}

/// A store made of an engine and the in-process hub.
pub struct LocalStore<E: Engine> {
    inner: Arc<Inner<E>>,
}

struct Inner<E> {
    engine: E,
    hub: Mutex<Hub>,
}

impl<E: Engine> LocalStore<E> {
    pub(crate) fn with_engine(engine: E) -> Result<Self, StoreError> {
        let floor = engine.revision()?;
        Ok(Self::from_parts(engine, floor))
    }

    /// `revision`: the engine's current revision (watch history starts there).
    pub(crate) fn from_parts(engine: E, revision: u64) -> Self {
        LocalStore {
            inner: Arc::new(Inner {
                engine,
                hub: Mutex::new(Hub {
                    ring_floor: revision,
                    next_lease: 1,
                    ..Hub::default()
                }),
            }),
        }
    }

    /// Run an engine call on tokio's blocking pool. SQLite holds its connection's lock for
    /// the call and a WAL checkpoint may fsync; on a runtime worker that stalled every
    /// request the agent was serving (two workers on two cores), not just the store's.
    fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Inner<E>) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || call(&inner))
                .await
                .map_err(StoreError::backend)?
        })
    }

    #[cfg(test)]
    pub(crate) fn engine(&self) -> &E {
        &self.inner.engine
    }
}

impl<E> Inner<E> {
    fn hub(&self) -> MutexGuard<'_, Hub> {
        // Hub state is plain data updated in single steps; a panic elsewhere leaves it usable.
        self.hub.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<E: Engine> Inner<E> {
    fn txn(&self, ops: &[TxnOp]) -> Result<u64, StoreError> {
        let mut hub = self.hub();
        for op in ops {
            if let TxnOp::Put { lease: Some(l), .. } = op {
                if !hub.leases.contains_key(l) {
                    return Err(StoreError::LeaseNotFound(*l));
                }
            }
        }
        let (revision, events) = self.engine.apply(ops)?;
        for op in ops {
            let key = op.key().to_string();
            if let Some(old) = hub.key_lease.remove(&key) {
                if let Some(l) = hub.leases.get_mut(&old) {
                    l.keys.remove(&key);
                }
            }
            if let TxnOp::Put { lease: Some(l), .. } = op {
                hub.key_lease.insert(key.clone(), *l);
                if let Some(lease) = hub.leases.get_mut(l) {
                    lease.keys.insert(key);
                }
            }
        }
        publish(&mut hub, events);
        Ok(revision)
    }

    /// Delete the records of an expired or revoked lease.
    fn end_lease(&self, id: LeaseId) -> Result<(), StoreError> {
        let keys: Vec<String> = {
            let mut hub = self.hub();
            match hub.leases.remove(&id) {
                Some(l) => l.keys.into_iter().collect(),
                None => return Ok(()),
            }
        };
        let ops: Vec<TxnOp> = keys
            .iter()
            .map(|k| TxnOp::delete(k.clone(), crate::Expect::Any))
            .collect();
        if !ops.is_empty() {
            self.txn(&ops)?;
        }
        Ok(())
    }
}

fn publish(hub: &mut Hub, events: Vec<WatchEvent>) {
    for ev in events {
        hub.watchers.retain(|(prefix, tx)| {
            !ev.key.starts_with(prefix.as_str()) || tx.send(ev.clone()).is_ok()
        });
        if hub.ring.len() == RING {
            if let Some(old) = hub.ring.pop_front() {
                hub.ring_floor = old.mod_revision;
            }
        }
        hub.ring.push_back(ev);
    }
}

impl<E: Engine> Store for LocalStore<E> {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, StoreError>> {
        let key = key.to_string();
        self.blocking(move |inner| inner.engine.get(&key))
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, Versioned)>, StoreError>> {
        let prefix = prefix.to_string();
        self.blocking(move |inner| inner.engine.list(&prefix))
    }

    fn txn(&self, ops: Vec<TxnOp>) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.blocking(move |inner| inner.txn(&ops))
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after_revision: u64,
    ) -> BoxFuture<'a, Result<Watch, StoreError>> {
        Box::pin(async move {
            let mut hub = self.inner.hub();
            let (tx, rx) = mpsc::unbounded_channel();
            if after_revision > 0 {
                if after_revision < hub.ring_floor {
                    return Err(StoreError::Compacted {
                        requested: after_revision,
                        oldest: hub.ring_floor,
                    });
                }
                for ev in hub.ring.iter() {
                    if ev.mod_revision > after_revision && ev.key.starts_with(prefix) {
                        let _ = tx.send(ev.clone());
                    }
                }
            }
            hub.watchers.push((prefix.to_string(), tx));
            Ok(Watch { rx })
        })
    }

    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>> {
        Box::pin(async move {
            let id = {
                let mut hub = self.inner.hub();
                let id = LeaseId(hub.next_lease);
                hub.next_lease += 1;
                hub.leases.insert(
                    id,
                    Lease {
                        ttl,
                        deadline: Instant::now() + ttl,
                        keys: HashSet::new(),
                    },
                );
                id
            };
            // The timer holds the store weakly: a dropped store ends its leases' timers.
            let inner = Arc::downgrade(&self.inner);
            tokio::spawn(async move {
                loop {
                    let Some(store) = inner.upgrade() else { return };
                    let deadline = match store.hub().leases.get(&id) {
                        Some(l) => l.deadline,
                        None => return,
                    };
                    drop(store);
                    tokio::time::sleep_until(deadline).await;
                    let Some(store) = inner.upgrade() else { return };
                    let expired = store
                        .hub()
                        .leases
                        .get(&id)
                        .is_some_and(|l| l.deadline <= Instant::now());
                    if expired {
                        let ended = tokio::task::spawn_blocking(move || store.end_lease(id)).await;
                        if let Ok(Err(e)) = ended {
                            tracing_free_warn(&e);
                        }
                        return;
                    }
                }
            });
            Ok(id)
        })
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut hub = self.inner.hub();
            match hub.leases.get_mut(&lease) {
                Some(l) => {
                    l.deadline = Instant::now() + l.ttl;
                    Ok(())
                }
                None => Err(StoreError::LeaseNotFound(lease)),
            }
        })
    }

    fn revoke(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        self.blocking(move |inner| inner.end_lease(lease))
    }

    fn revision(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.blocking(|inner| inner.engine.revision())
    }
}

/// This crate has no logger; an expiry that cannot delete its records is reported on stderr
/// and retried by nobody (the records stay until the next open, which removes leased ones).
fn tracing_free_warn(e: &StoreError) {
    eprintln!("corral-store: cannot delete the records of an expired lease: {e}");
}

/// The changes a put makes, for engines.
pub(crate) fn put_event(key: &str, value: &[u8], revision: u64) -> WatchEvent {
    WatchEvent {
        key: key.to_string(),
        change: Change::Put(value.to_vec()),
        mod_revision: revision,
    }
}

pub(crate) fn delete_event(key: &str, revision: u64) -> WatchEvent {
    WatchEvent {
        key: key.to_string(),
        change: Change::Delete,
        mod_revision: revision,
    }
}
