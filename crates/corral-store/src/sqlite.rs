//! SQLite implementation of `Store`: one table of records plus a one-row revision counter,
//! WAL journal so readers (CLI-driven lists) never wait for the writer.

use crate::{Expect, Store, StoreError, Versioned};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Self::init(conn)
    }

    /// An in-memory store for unit tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
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
        )?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back), so a poisoned mutex is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn current_revision(conn: &Connection, key: &str) -> Result<Option<u64>, rusqlite::Error> {
    conn.query_row(
        "SELECT mod_revision FROM records WHERE key = ?1",
        [key],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .map(|o| o.map(|v| v as u64))
}

fn check(key: &str, expect: Expect, found: Option<u64>) -> Result<(), StoreError> {
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

impl Store for SqliteStore {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let conn = self.lock();
        Ok(conn
            .query_row(
                "SELECT value, mod_revision FROM records WHERE key = ?1",
                [key],
                |r| {
                    Ok(Versioned {
                        value: r.get(0)?,
                        mod_revision: r.get::<_, i64>(1)? as u64,
                    })
                },
            )
            .optional()?)
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let conn = self.lock();
        // Range scan instead of LIKE so '%' and '_' in keys are not wildcards.
        let mut upper = prefix.to_string();
        upper.push(char::MAX);
        let mut stmt = conn.prepare_cached(
            "SELECT key, value, mod_revision FROM records WHERE key >= ?1 AND key < ?2 ORDER BY key",
        )?;
        let rows = stmt.query_map(params![prefix, upper], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Versioned {
                    value: r.get(1)?,
                    mod_revision: r.get::<_, i64>(2)? as u64,
                },
            ))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<u64, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        check(key, expect, current_revision(&tx, key)?)?;
        tx.execute("UPDATE meta SET revision = revision + 1 WHERE id = 0", [])?;
        let rev: i64 = tx.query_row("SELECT revision FROM meta WHERE id = 0", [], |r| r.get(0))?;
        tx.execute(
            "INSERT INTO records (key, value, mod_revision) VALUES (?1, ?2, ?3)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value, mod_revision = excluded.mod_revision",
            params![key, value, rev],
        )?;
        tx.commit()?;
        Ok(rev as u64)
    }

    fn delete(&self, key: &str, expect: Expect) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let found = current_revision(&tx, key)?;
        if expect != Expect::Any {
            check(key, expect, found)?;
        }
        if found.is_some() {
            tx.execute("DELETE FROM records WHERE key = ?1", [key])?;
            tx.execute("UPDATE meta SET revision = revision + 1 WHERE id = 0", [])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn revision(&self) -> Result<u64, StoreError> {
        let conn = self.lock();
        Ok(
            conn.query_row("SELECT revision FROM meta WHERE id = 0", [], |r| {
                r.get::<_, i64>(0)
            })? as u64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_delete_with_revisions() {
        let s = SqliteStore::in_memory().unwrap();
        let r1 = s.put("vms/a", b"1", Expect::Absent).unwrap();
        let r2 = s.put("vms/b", b"2", Expect::Absent).unwrap();
        s.put("tasks/x", b"t", Expect::Any).unwrap();
        assert!(r2 > r1);
        assert_eq!(s.get("vms/a").unwrap().unwrap().value, b"1");
        let keys: Vec<String> = s
            .list("vms/")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["vms/a", "vms/b"]);
        // Create-only refuses an existing key.
        assert!(matches!(
            s.put("vms/a", b"x", Expect::Absent),
            Err(StoreError::Conflict { .. })
        ));
        // Compare-and-swap on the revision.
        let r3 = s.put("vms/a", b"3", Expect::Revision(r1)).unwrap();
        assert!(matches!(
            s.put("vms/a", b"4", Expect::Revision(r1)),
            Err(StoreError::Conflict { found: Some(f), .. }) if f == r3
        ));
        s.delete("vms/a", Expect::Revision(r3)).unwrap();
        assert!(s.get("vms/a").unwrap().is_none());
        s.delete("vms/a", Expect::Any).unwrap();
        assert_eq!(s.revision().unwrap(), r3 + 1);
    }

    #[test]
    fn prefix_is_not_a_pattern() {
        let s = SqliteStore::in_memory().unwrap();
        s.put("a%/1", b"", Expect::Any).unwrap();
        s.put("ab/1", b"", Expect::Any).unwrap();
        assert_eq!(s.list("a%/").unwrap().len(), 1);
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.put("k", b"v", Expect::Any).unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.get("k").unwrap().unwrap().value, b"v");
    }
}
