//! An in-memory engine for unit tests: the same semantics as SQLite, nothing on disk.

use crate::hub::{delete_event, put_event, Engine, LocalStore};
use crate::{check, StoreError, TxnOp, Versioned, WatchEvent};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Records in a `BTreeMap` with a revision counter.
#[derive(Default)]
pub struct MemoryEngine {
    state: Mutex<(u64, BTreeMap<String, Versioned>)>,
}

/// The in-memory store.
pub type MemoryStore = LocalStore<MemoryEngine>;

impl LocalStore<MemoryEngine> {
    pub fn new() -> Self {
        LocalStore::from_parts(MemoryEngine::default(), 0)
    }
}

impl Default for LocalStore<MemoryEngine> {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryEngine {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, BTreeMap<String, Versioned>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Engine for MemoryEngine {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        Ok(self.lock().1.get(key).cloned())
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        Ok(self
            .lock()
            .1
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn apply(&self, ops: &[TxnOp]) -> Result<(u64, Vec<WatchEvent>), StoreError> {
        let mut state = self.lock();
        for op in ops {
            match op {
                TxnOp::Put { key, expect, .. } | TxnOp::Delete { key, expect } => {
                    check(key, *expect, state.1.get(key).map(|v| v.mod_revision))?
                }
            }
        }
        let revision = state.0 + 1;
        let mut events = Vec::new();
        for op in ops {
            match op {
                TxnOp::Put { key, value, .. } => {
                    state.1.insert(
                        key.clone(),
                        Versioned {
                            value: value.clone(),
                            mod_revision: revision,
                        },
                    );
                    events.push(put_event(key, value, revision));
                }
                TxnOp::Delete { key, .. } => {
                    if state.1.remove(key).is_some() {
                        events.push(delete_event(key, revision));
                    }
                }
            }
        }
        if !events.is_empty() {
            state.0 = revision;
        }
        Ok((state.0, events))
    }

    fn revision(&self) -> Result<u64, StoreError> {
        Ok(self.lock().0)
    }
}
