//! The SQLite engine: one table of records plus a one-row revision counter, WAL journal so
//! readers (CLI-driven lists) never wait for the writer. A record attached to a lease
//! carries the lease in a column; leases live in the process, so opening the database
//! removes every leased record (its holder is gone).

use crate::hub::{delete_event, put_event, Engine, LocalStore};
use crate::{check, StoreError, TxnOp, Versioned, WatchEvent};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;

pub struct SqliteEngine {
    conn: Mutex<Connection>,
}

/// The embedded store.
pub type SqliteStore = LocalStore<SqliteEngine>;

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::backend(e)
}

impl LocalStore<SqliteEngine> {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            source: Box::new(e),
        })?;
        LocalStore::with_engine(SqliteEngine::init(conn)?)
    }

    /// An in-memory SQLite database, for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        LocalStore::with_engine(SqliteEngine::init(
            Connection::open_in_memory().map_err(db)?,
        )?)
    }
}

impl SqliteEngine {
    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS records (
                 key TEXT PRIMARY KEY NOT NULL,
                 value BLOB NOT NULL,
                 mod_revision INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS meta (
                 id INTEGER PRIMARY KEY CHECK (id = 0),
                 revision INTEGER NOT NULL
             );
             INSERT OR IGNORE INTO meta (id, revision) VALUES (0, 0);",
        )
        .map_err(db)?;
        // Databases from before leases lack the column.
        let has_lease: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('records') WHERE name = 'lease'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(db)?
            > 0;
        if !has_lease {
            conn.execute("ALTER TABLE records ADD COLUMN lease INTEGER", [])
                .map_err(db)?;
        }
        let engine = SqliteEngine {
            conn: Mutex::new(conn),
        };
        engine.drop_leased()?;
        Ok(engine)
    }

    /// Leases end with the process that held them: their records go at open.
    fn drop_leased(&self) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        let n = tx
            .execute("DELETE FROM records WHERE lease IS NOT NULL", [])
            .map_err(db)?;
        if n > 0 {
            tx.execute("UPDATE meta SET revision = revision + 1 WHERE id = 0", [])
                .map_err(db)?;
        }
        tx.commit().map_err(db)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back), so a poisoned mutex is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn current_revision(conn: &Connection, key: &str) -> Result<Option<u64>, StoreError> {
    conn.query_row(
        "SELECT mod_revision FROM records WHERE key = ?1",
        [key],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .map(|o| o.map(|v| v as u64))
    .map_err(db)
}

impl Engine for SqliteEngine {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let conn = self.lock();
        conn.query_row(
            "SELECT value, mod_revision FROM records WHERE key = ?1",
            [key],
            |r| {
                Ok(Versioned {
                    value: r.get(0)?,
                    mod_revision: r.get::<_, i64>(1)? as u64,
                })
            },
        )
        .optional()
        .map_err(db)
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let conn = self.lock();
        // Range scan instead of LIKE so '%' and '_' in keys are not wildcards.
        let mut upper = prefix.to_string();
        upper.push(char::MAX);
        let mut stmt = conn
            .prepare_cached(
                "SELECT key, value, mod_revision FROM records WHERE key >= ?1 AND key < ?2 ORDER BY key",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map(params![prefix, upper], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Versioned {
                        value: r.get(1)?,
                        mod_revision: r.get::<_, i64>(2)? as u64,
                    },
                ))
            })
            .map_err(db)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db)
    }

    fn apply(&self, ops: &[TxnOp]) -> Result<(u64, Vec<WatchEvent>), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        let mut found = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                TxnOp::Put { key, expect, .. } | TxnOp::Delete { key, expect } => {
                    let f = current_revision(&tx, key)?;
                    check(key, *expect, f)?;
                    found.push(f);
                }
            }
        }
        let current: i64 = tx
            .query_row("SELECT revision FROM meta WHERE id = 0", [], |r| r.get(0))
            .map_err(db)?;
        let revision = current as u64 + 1;
        let mut events = Vec::new();
        for (op, f) in ops.iter().zip(found) {
            match op {
                TxnOp::Put {
                    key, value, lease, ..
                } => {
                    tx.execute(
                        "INSERT INTO records (key, value, mod_revision, lease) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT(key) DO UPDATE SET value = excluded.value,
                             mod_revision = excluded.mod_revision, lease = excluded.lease",
                        params![key, value, revision as i64, lease.map(|l| l.0)],
                    )
                    .map_err(db)?;
                    events.push(put_event(key, value, revision));
                }
                TxnOp::Delete { key, .. } => {
                    if f.is_some() {
                        tx.execute("DELETE FROM records WHERE key = ?1", [key])
                            .map_err(db)?;
                        events.push(delete_event(key, revision));
                    }
                }
            }
        }
        if events.is_empty() {
            return Ok((current as u64, events));
        }
        tx.execute(
            "UPDATE meta SET revision = ?1 WHERE id = 0",
            [revision as i64],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok((revision, events))
    }

    fn revision(&self) -> Result<u64, StoreError> {
        let conn = self.lock();
        conn.query_row("SELECT revision FROM meta WHERE id = 0", [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|r| r as u64)
        .map_err(db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Expect, Store};

    #[tokio::test]
    async fn survives_reopen_and_drops_leased_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.put("k", b"v", Expect::Any).await.unwrap();
            let lease = s
                .grant_lease(std::time::Duration::from_secs(60))
                .await
                .unwrap();
            s.txn(vec![TxnOp::Put {
                key: "alive/me".into(),
                value: b"1".to_vec(),
                expect: Expect::Absent,
                lease: Some(lease),
            }])
            .await
            .unwrap();
            assert!(s.get("alive/me").await.unwrap().is_some());
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.get("k").await.unwrap().unwrap().value, b"v");
        assert!(s.get("alive/me").await.unwrap().is_none());
    }

    #[test]
    fn a_database_from_before_leases_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE records (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL, mod_revision INTEGER NOT NULL);
             CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 0), revision INTEGER NOT NULL);
             INSERT INTO meta VALUES (0, 7);
             INSERT INTO records VALUES ('vms/a', x'7b7d', 7);",
        )
        .unwrap();
        drop(conn);
        let s = SqliteStore::open(&path).unwrap();
        let e = s.engine();
        assert_eq!(e.revision().unwrap(), 7);
        assert_eq!(e.get("vms/a").unwrap().unwrap().mod_revision, 7);
    }
}
