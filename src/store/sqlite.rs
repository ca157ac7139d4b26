//! The SQLite store: one file, WAL mode, versioned schema migrations
//! (`PRAGMA user_version`), created on first start.
//!
//! One connection behind a mutex, used on the blocking pool: the token
//! routes are not the hot path (the edge reads revocations from the
//! in-memory mirror). Other processes (`gateway sessions revoke`) may
//! write the same file; the running gateway polls for their revocations.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{
    Attempt, FailureCount, Family, Limit, Outage, RefreshUse, RevokedFamilies, Store, StoreError,
    StoreFuture,
};

/// How often the running gateway looks for revocations written by other
/// processes.
const POLL: Duration = Duration::from_secs(1);

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
    // 2: login attempts are reserved under an id before the password is
    // checked (and released by id on success); sessions listed by user.
    "ALTER TABLE login_failures ADD COLUMN id TEXT;
     CREATE INDEX families_user ON families (user_id);",
];

pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    outage: Outage,
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
        let mut conn = connect(path)
            .map_err(|e| StoreError::Open(path.display().to_string(), e.to_string()))?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
            outage: Outage::default(),
        })
    }

    /// Runs `f` on the connection, on the blocking pool.
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let conn = self.conn.clone();
        Box::pin(async move {
            let r = tokio::task::spawn_blocking(move || {
                let mut c = conn.lock().map_err(|_| StoreError::Poisoned)?;
                f(&mut c).map_err(db)
            })
            .await
            .unwrap_or(Err(StoreError::Join));
            self.outage.observe(&self.describe(), &r);
            r
        })
    }
}

/// Opens `path` with the settings every connection uses.
fn connect(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    // WAL: readers do not block the writer; NORMAL sync is durable at
    // checkpoints and safe against corruption.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// When the database file has been removed while the gateway runs (an
/// operator's `rm`, a cleanup job), the open connection still reads and
/// writes the unlinked file, and everything written would be gone at the
/// next start: revocations included. So the file is written back from the
/// open copy (`VACUUM INTO` a temporary file, renamed into place) and the
/// connection moved to it. Returns whether it did.
fn restore_if_removed(c: &mut Connection, path: &Path) -> Result<bool, rusqlite::Error> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        _ => return Ok(false),
    }
    let to_sql = |e: std::io::Error| {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(e.to_string()),
        )
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(to_sql)?;
    }
    // Everything into the main (unlinked) file, the WAL emptied: closing
    // this connection below then removes a WAL that holds nothing.
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".restore");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let tmp_str = tmp.to_string_lossy().into_owned();
    c.execute("VACUUM INTO ?1", params![tmp_str])?;
    // The old connection must be closed (its WAL and shared-memory files
    // removed) before the copy takes the name they belong to.
    let old = std::mem::replace(c, Connection::open_in_memory()?);
    old.close().map_err(|(_, e)| e)?;
    std::fs::rename(&tmp, path).map_err(to_sql)?;
    *c = connect(path)?;
    Ok(true)
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

fn family_row(r: &rusqlite::Row<'_>) -> Result<Family, rusqlite::Error> {
    Ok(Family {
        sid: r.get(0)?,
        user_id: r.get(1)?,
        created_at: r.get(2)?,
        expires_at: r.get(3)?,
        revoked_at: r.get(4)?,
    })
}

/// Whole seconds until the oldest failure in the window leaves it (>= 1).
pub(crate) fn retry_after(oldest: Option<i64>, window: i64, now: i64) -> u64 {
    let left = oldest.map_or(window, |t| t.saturating_add(window) - now);
    u64::try_from(left.max(1)).unwrap_or(1)
}

impl Store for SqliteStore {
    fn create_family<'a>(&'a self, f: &'a Family) -> StoreFuture<'a, ()> {
        let f = f.clone();
        self.run(move |c| {
            c.execute(
                "INSERT INTO families (sid, user_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![f.sid, f.user_id, f.created_at, f.expires_at],
            )
            .map(|_| ())
        })
    }

    fn family<'a>(&'a self, sid: &'a str) -> StoreFuture<'a, Option<Family>> {
        let sid = sid.to_string();
        self.run(move |c| {
            c.query_row(
                "SELECT sid, user_id, created_at, expires_at, revoked_at FROM families WHERE sid = ?1",
                params![sid],
                family_row,
            )
            .optional()
        })
    }

    fn sessions<'a>(&'a self, user_id: &'a str, now: i64) -> StoreFuture<'a, Vec<Family>> {
        let user_id = user_id.to_string();
        self.run(move |c| {
            let mut stmt = c.prepare(
                "SELECT sid, user_id, created_at, expires_at, revoked_at FROM families WHERE user_id = ?1 AND expires_at > ?2 ORDER BY created_at, sid",
            )?;
            let rows = stmt.query_map(params![user_id, now], family_row)?;
            rows.collect()
        })
    }

    fn revoke_family<'a>(
        &'a self,
        sid: &'a str,
        at: i64,
        reason: &'a str,
    ) -> StoreFuture<'a, Option<i64>> {
        let (sid, reason) = (sid.to_string(), reason.to_string());
        self.run(move |c| {
            c.execute(
                "UPDATE families SET revoked_at = ?2, revoke_reason = ?3 WHERE sid = ?1 AND revoked_at IS NULL",
                params![sid, at, reason],
            )?;
            c.query_row("SELECT expires_at FROM families WHERE sid = ?1", params![sid], |r| r.get(0))
                .optional()
        })
    }

    fn record_refresh<'a>(
        &'a self,
        jti: &'a str,
        sid: &'a str,
        user_id: &'a str,
        issued_at: i64,
        expires_at: i64,
    ) -> StoreFuture<'a, ()> {
        let (jti, sid, user_id) = (jti.to_string(), sid.to_string(), user_id.to_string());
        self.run(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO refresh_tokens (jti, sid, user_id, issued_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![jti, sid, user_id, issued_at, expires_at],
            )
            .map(|_| ())
        })
    }

    fn use_refresh<'a>(&'a self, jti: &'a str, at: i64) -> StoreFuture<'a, RefreshUse> {
        let jti = jti.to_string();
        self.run(move |c| {
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

    fn is_used<'a>(&'a self, jti: &'a str) -> StoreFuture<'a, bool> {
        let jti = jti.to_string();
        self.run(move |c| {
            c.query_row(
                "SELECT used_at IS NOT NULL FROM refresh_tokens WHERE jti = ?1",
                params![jti],
                |r| r.get::<_, bool>(0),
            )
            .optional()
            .map(|v| v.unwrap_or(false))
        })
    }

    fn refresh_family<'a>(&'a self, jti: &'a str) -> StoreFuture<'a, Option<String>> {
        let jti = jti.to_string();
        self.run(move |c| {
            c.query_row(
                "SELECT sid FROM refresh_tokens WHERE jti = ?1",
                params![jti],
                |r| r.get(0),
            )
            .optional()
        })
    }

    fn revoked_families(&self, now: i64) -> StoreFuture<'_, Vec<(String, i64)>> {
        self.run(move |c| {
            let mut stmt = c.prepare("SELECT sid, expires_at FROM families WHERE revoked_at IS NOT NULL AND expires_at > ?1")?;
            let rows = stmt.query_map(params![now], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    fn reserve_attempt<'a>(
        &'a self,
        limits: &'a [Limit],
        id: &'a str,
        now: i64,
    ) -> StoreFuture<'a, Attempt> {
        let (limits, id) = (limits.to_vec(), id.to_string());
        self.run(move |c| {
            // IMMEDIATE: the write lock is taken before counting, so no
            // other connection (or process) counts in between.
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut refused = 0;
            for l in &limits {
                let (count, oldest): (u32, Option<i64>) = tx.query_row(
                    "SELECT COUNT(*), MIN(at) FROM login_failures WHERE kind = ?1 AND key = ?2 AND at > ?3",
                    params![l.kind, l.key, now.saturating_sub(l.window)],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                if count >= l.limit {
                    refused = refused.max(retry_after(oldest, l.window, now));
                }
            }
            if refused > 0 {
                return Ok(Attempt::Refused {
                    retry_after: refused,
                });
            }
            for l in &limits {
                tx.execute(
                    "INSERT INTO login_failures (kind, key, at, id) VALUES (?1, ?2, ?3, ?4)",
                    params![l.kind, l.key, now, id],
                )?;
            }
            tx.commit()?;
            Ok(Attempt::Reserved)
        })
    }

    fn release_attempt<'a>(
        &'a self,
        kind: &'a str,
        key: &'a str,
        id: &'a str,
    ) -> StoreFuture<'a, ()> {
        let (kind, key, id) = (kind.to_string(), key.to_string(), id.to_string());
        self.run(move |c| {
            c.execute(
                "DELETE FROM login_failures WHERE kind = ?1 AND key = ?2 AND id = ?3",
                params![kind, key, id],
            )
            .map(|_| ())
        })
    }

    fn failure_counts<'a>(
        &'a self,
        kind: &'a str,
        since: i64,
    ) -> StoreFuture<'a, Vec<FailureCount>> {
        let kind = kind.to_string();
        self.run(move |c| {
            let mut stmt = c.prepare(
                "SELECT key, COUNT(*), MIN(at) FROM login_failures WHERE kind = ?1 AND at > ?2 GROUP BY key ORDER BY key",
            )?;
            let rows = stmt.query_map(params![kind, since], |r| {
                Ok(FailureCount {
                    kind: kind.clone(),
                    key: r.get(0)?,
                    count: r.get(1)?,
                    oldest: r.get(2)?,
                })
            })?;
            rows.collect()
        })
    }

    fn clear_failures<'a>(&'a self, kind: &'a str, key: &'a str) -> StoreFuture<'a, u64> {
        let (kind, key) = (kind.to_string(), key.to_string());
        self.run(move |c| {
            c.execute(
                "DELETE FROM login_failures WHERE kind = ?1 AND key = ?2",
                params![kind, key],
            )
            .map(|n| n as u64)
        })
    }

    fn purge(&self, now: i64, failures_before: i64) -> StoreFuture<'_, usize> {
        self.run(move |c| {
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

    fn follow_revocations(&self, mirror: Arc<RevokedFamilies>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            // Revocation times are whole seconds: look back a little, so a
            // revocation committed in the second of the last poll is seen.
            let mut since = crate::clock::unix_now().saturating_sub(2);
            loop {
                tokio::time::sleep(POLL).await;
                let path = self.path.clone();
                match self.run(move |c| restore_if_removed(c, &path)).await {
                    Ok(true) => tracing::error!(
                        store = %self.describe(),
                        "the store file was removed while the gateway ran: written back from the open database"
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::error!(
                        store = %self.describe(),
                        error = %crate::body::error_chain(&e),
                        "the store file was removed and cannot be written back"
                    ),
                }
                let now = crate::clock::unix_now();
                let found = self.run(move |c| {
                    let mut stmt = c.prepare_cached(
                        "SELECT sid, expires_at FROM families WHERE revoked_at >= ?1 AND expires_at > ?2",
                    )?;
                    let rows = stmt.query_map(params![since, now], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                    })?;
                    rows.collect::<Result<Vec<_>, _>>()
                });
                if let Ok(rows) = found.await {
                    for (sid, until) in rows {
                        mirror.insert(&sid, until);
                    }
                    since = now.saturating_sub(2);
                }
            }
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        self.run(|c| c.query_row("SELECT 1", [], |_| Ok(())))
    }

    fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_removed_file_is_written_back_with_what_was_written_since() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/g.db");
        let s = SqliteStore::open(&path).unwrap();
        let family = |sid: &str| Family {
            sid: sid.into(),
            user_id: "7".into(),
            created_at: 10,
            expires_at: 1000,
            revoked_at: None,
        };
        s.create_family(&family("before")).await.unwrap();
        // `rm -r state`: the database, its WAL and shared memory, the dir.
        std::fs::remove_dir_all(dir.path().join("state")).unwrap();
        // Written to the unlinked file, as before the guard ran.
        s.create_family(&family("between")).await.unwrap();
        let p = path.clone();
        assert!(s.run(move |c| restore_if_removed(c, &p)).await.unwrap());
        let p = path.clone();
        assert!(!s.run(move |c| restore_if_removed(c, &p)).await.unwrap());
        // Written after: to the restored file.
        assert_eq!(
            s.revoke_family("between", 30, "logout").await.unwrap(),
            Some(1000)
        );
        drop(s);
        let again = SqliteStore::open(&path).unwrap();
        assert!(again.family("before").await.unwrap().is_some());
        assert_eq!(
            again.revoked_families(100).await.unwrap(),
            vec![("between".to_string(), 1000)]
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".restore"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn families_refresh_tokens_and_failures_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        {
            let s = SqliteStore::open(&path).unwrap();
            let f = Family {
                sid: "f1".into(),
                user_id: "7".into(),
                created_at: 10,
                expires_at: 1000,
                revoked_at: None,
            };
            s.create_family(&f).await.unwrap();
            assert_eq!(s.sessions("7", 20).await.unwrap(), vec![f]);
            s.record_refresh("j1", "f1", "7", 10, 500).await.unwrap();
            assert_eq!(s.use_refresh("j1", 20).await.unwrap(), RefreshUse::Fresh);
            assert_eq!(
                s.use_refresh("j1", 21).await.unwrap(),
                RefreshUse::AlreadyUsed
            );
            assert_eq!(
                s.use_refresh("nope", 21).await.unwrap(),
                RefreshUse::Unknown
            );
            assert_eq!(s.refresh_family("j1").await.unwrap().as_deref(), Some("f1"));
            assert_eq!(s.refresh_family("nope").await.unwrap(), None);
            assert_eq!(
                s.revoke_family("f1", 30, "reuse").await.unwrap(),
                Some(1000)
            );
        }
        // Reopened: the revocation survived, and migrations are not rerun.
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(
            s.revoked_families(100).await.unwrap(),
            vec![("f1".to_string(), 1000)]
        );
        assert!(s.family("f1").await.unwrap().unwrap().revoked_at.is_some());
        assert_eq!(s.purge(2000, 2000).await.unwrap(), 2);
        assert!(s.revoked_families(100).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn attempts_are_reserved_all_or_nothing() {
        let s = SqliteStore::open(Path::new(":memory:")).unwrap();
        let limits = |user: &str| {
            vec![
                Limit {
                    kind: "user",
                    key: user.to_string(),
                    limit: 2,
                    window: 100,
                },
                Limit {
                    kind: "address",
                    key: "10.0.0.1".to_string(),
                    limit: 3,
                    window: 10,
                },
            ]
        };
        let bob = limits("bob");
        assert_eq!(
            s.reserve_attempt(&bob, "a", 1000).await.unwrap(),
            Attempt::Reserved
        );
        assert_eq!(
            s.reserve_attempt(&bob, "b", 1001).await.unwrap(),
            Attempt::Reserved
        );
        // bob is full: refused until his oldest attempt leaves the window,
        // and the address is not charged for the refused attempt.
        assert_eq!(
            s.reserve_attempt(&bob, "c", 1002).await.unwrap(),
            Attempt::Refused { retry_after: 98 }
        );
        let carol = limits("carol");
        assert_eq!(
            s.reserve_attempt(&carol, "d", 1003).await.unwrap(),
            Attempt::Reserved
        );
        assert_eq!(
            s.reserve_attempt(&carol, "e", 1004).await.unwrap(),
            Attempt::Refused { retry_after: 6 }
        );
        // A released attempt frees its slot.
        s.release_attempt("address", "10.0.0.1", "d").await.unwrap();
        s.release_attempt("user", "carol", "d").await.unwrap();
        assert_eq!(
            s.reserve_attempt(&carol, "f", 1005).await.unwrap(),
            Attempt::Reserved
        );
        let counts = s.failure_counts("user", 900).await.unwrap();
        assert_eq!(
            counts
                .iter()
                .map(|c| (c.key.as_str(), c.count, c.oldest))
                .collect::<Vec<_>>(),
            vec![("bob", 2, 1000), ("carol", 1, 1005)]
        );
        assert_eq!(s.clear_failures("user", "bob").await.unwrap(), 2);
        assert_eq!(
            s.reserve_attempt(&bob, "g", 1012).await.unwrap(),
            Attempt::Reserved
        );
    }
}
