//! The SQLite store: one file, WAL mode, versioned schema migrations
//! (`PRAGMA user_version`), created on first start.
//!
//! Calls are blocking; callers run them on the blocking pool. One
//! connection behind a mutex: the token routes are not the hot path (the
//! edge reads revocations from the in-memory mirror).

use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;

use super::{Family, RefreshUse, Store, StoreError};

/// Schema steps; `user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: families, refresh tokens, login failures.
    "CREATE TABLE families (
        sid TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        revoked_at INTEGER,
        revoke_reason TEXT
     );
     CREATE INDEX families_revoked ON families (revoked_at) WHERE revoked_at IS NOT NULL;
     CREATE TABLE refresh_tokens (
        jti TEXT PRIMARY KEY,
        sid TEXT NOT NULL,
        user_id TEXT NOT NULL,
        issued_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at INTEGER
     );
     CREATE INDEX refresh_tokens_expiry ON refresh_tokens (expires_at);
     CREATE TABLE login_failures (
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        at INTEGER NOT NULL
     );
     CREATE INDEX login_failures_key ON login_failures (kind, key, at);",
];

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Db(e)
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Open(path.display().to_string(), e.to_string()))?;
            }
        }
        let mut conn = Connection::open(path)
            .map_err(|e| StoreError::Open(path.display().to_string(), e.to_string()))?;
        // WAL: readers do not block the writer; NORMAL sync is durable at
        // checkpoints and safe against corruption.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, rusqlite::Error>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        f(&mut conn).map_err(db)
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(db)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::NewerSchema {
            found: version,
            known,
        });
    }
    for (i, step) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        let tx = conn.transaction().map_err(db)?;
        tx.execute_batch(step).map_err(db)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(db)?;
        tx.commit().map_err(db)?;
    }
    Ok(())
}

impl Store for SqliteStore {
    fn create_family(&self, f: &Family) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO families (sid, user_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![f.sid, f.user_id, f.created_at, f.expires_at],
            )
            .map(|_| ())
        })
    }

    fn family(&self, sid: &str) -> Result<Option<Family>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT sid, user_id, created_at, expires_at, revoked_at FROM families WHERE sid = ?1",
                params![sid],
                |r| {
                    Ok(Family {
                        sid: r.get(0)?,
                        user_id: r.get(1)?,
                        created_at: r.get(2)?,
                        expires_at: r.get(3)?,
                        revoked_at: r.get(4)?,
                    })
                },
            )
            .optional()
        })
    }

    fn revoke_family(&self, sid: &str, at: i64, reason: &str) -> Result<Option<i64>, StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE families SET revoked_at = ?2, revoke_reason = ?3 WHERE sid = ?1 AND revoked_at IS NULL",
                params![sid, at, reason],
            )?;
            c.query_row("SELECT expires_at FROM families WHERE sid = ?1", params![sid], |r| r.get(0))
                .optional()
        })
    }

    fn record_refresh(
        &self,
        jti: &str,
        sid: &str,
        user_id: &str,
        issued_at: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO refresh_tokens (jti, sid, user_id, issued_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![jti, sid, user_id, issued_at, expires_at],
            )
            .map(|_| ())
        })
    }

    fn use_refresh(&self, jti: &str, at: i64) -> Result<RefreshUse, StoreError> {
        self.with(|c| {
            // One statement decides the race: only one caller flips used_at.
            let changed = c.execute(
                "UPDATE refresh_tokens SET used_at = ?2 WHERE jti = ?1 AND used_at IS NULL",
                params![jti, at],
            )?;
            if changed == 1 {
                return Ok(RefreshUse::Fresh);
            }
            let known: Option<i64> = c
                .query_row(
                    "SELECT 1 FROM refresh_tokens WHERE jti = ?1",
                    params![jti],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(if known.is_some() {
                RefreshUse::AlreadyUsed
            } else {
                RefreshUse::Unknown
            })
        })
    }

    fn is_used(&self, jti: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT used_at IS NOT NULL FROM refresh_tokens WHERE jti = ?1",
                params![jti],
                |r| r.get::<_, bool>(0),
            )
            .optional()
            .map(|v| v.unwrap_or(false))
        })
    }

    fn refresh_family(&self, jti: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT sid FROM refresh_tokens WHERE jti = ?1",
                params![jti],
                |r| r.get(0),
            )
            .optional()
        })
    }

    fn revoked_families(&self, now: i64) -> Result<Vec<(String, i64)>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT sid, expires_at FROM families WHERE revoked_at IS NOT NULL AND expires_at > ?1")?;
            let rows = stmt.query_map(params![now], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    fn record_failure(&self, kind: &str, key: &str, at: i64) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO login_failures (kind, key, at) VALUES (?1, ?2, ?3)",
                params![kind, key, at],
            )
            .map(|_| ())
        })
    }

    fn failures_since(
        &self,
        kind: &str,
        key: &str,
        since: i64,
    ) -> Result<(u32, Option<i64>), StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*), MIN(at) FROM login_failures WHERE kind = ?1 AND key = ?2 AND at > ?3",
                params![kind, key, since],
                |r| Ok((r.get::<_, u32>(0)?, r.get::<_, Option<i64>>(1)?)),
            )
        })
    }

    fn clear_failures(&self, kind: &str, key: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM login_failures WHERE kind = ?1 AND key = ?2",
                params![kind, key],
            )
            .map(|_| ())
        })
    }

    fn purge(&self, now: i64, failures_before: i64) -> Result<usize, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let mut n = tx.execute(
                "DELETE FROM refresh_tokens WHERE expires_at <= ?1",
                params![now],
            )?;
            n += tx.execute("DELETE FROM families WHERE expires_at <= ?1", params![now])?;
            n += tx.execute(
                "DELETE FROM login_failures WHERE at <= ?1",
                params![failures_before],
            )?;
            tx.commit()?;
            Ok(n)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_refresh_tokens_and_failures_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.create_family(&Family {
                sid: "f1".into(),
                user_id: "7".into(),
                created_at: 10,
                expires_at: 1000,
                revoked_at: None,
            })
            .unwrap();
            s.record_refresh("j1", "f1", "7", 10, 500).unwrap();
            assert_eq!(s.use_refresh("j1", 20).unwrap(), RefreshUse::Fresh);
            assert_eq!(s.use_refresh("j1", 21).unwrap(), RefreshUse::AlreadyUsed);
            assert_eq!(s.use_refresh("nope", 21).unwrap(), RefreshUse::Unknown);
            assert_eq!(s.refresh_family("j1").unwrap().as_deref(), Some("f1"));
            assert_eq!(s.refresh_family("nope").unwrap(), None);
            assert_eq!(s.revoke_family("f1", 30, "reuse").unwrap(), Some(1000));
            s.record_failure("user", "bob", 40).unwrap();
            s.record_failure("user", "bob", 41).unwrap();
            assert_eq!(s.failures_since("user", "bob", 0).unwrap(), (2, Some(40)));
        }
        // Reopened: the revocation survived, and migrations are not rerun.
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(
            s.revoked_families(100).unwrap(),
            vec![("f1".to_string(), 1000)]
        );
        assert!(s.family("f1").unwrap().unwrap().revoked_at.is_some());
        assert_eq!(s.purge(2000, 2000).unwrap(), 4);
        assert!(s.revoked_families(100).unwrap().is_empty());
    }
}
