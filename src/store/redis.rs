//! The Redis store, shared by every replica. Each check-and-change is one
//! Lua script, so Redis decides every race; revocations are published on
//! a channel that each replica's `follow_revocations` turns into its
//! in-memory mirror.
//!
//! Keys, under the configured prefix (default `gateway:`):
//! `family:SID` (hash), `user:ID` (sorted set of SIDs by expiry),
//! `refresh:JTI` (hash), `revoked` (sorted set of SIDs by expiry),
//! `fail:KIND:KEY` (sorted set of attempt ids by time); channel
//! `revocations` ("SID EXPIRY"). Records expire with what they describe.

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, FromRedisValue, IntoConnectionInfo, Script};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use super::{
    Attempt, FailureCount, Family, Limit, Outage, RefreshUse, RevokedFamilies, Store, StoreError,
    StoreFuture,
};

/// How long requests fail at once after a failed connect, before the next
/// one tries again.
const RECONNECT_MS: u64 = 500;

/// How long to wait before subscribing again after the channel was lost.
const RESUBSCRIBE: Duration = Duration::from_secs(1);

static CREATE_FAMILY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('HSET', KEYS[1], 'user_id', ARGV[2], 'created_at', ARGV[3], 'expires_at', ARGV[4])
redis.call('EXPIREAT', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if last[2] then redis.call('EXPIREAT', KEYS[2], last[2]) end
return 1",
    )
});

static REVOKE_FAMILY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local exp = redis.call('HGET', KEYS[1], 'expires_at')
if not exp then return false end
if redis.call('HSETNX', KEYS[1], 'revoked_at', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'reason', ARGV[2])
  redis.call('ZADD', KEYS[2], exp, ARGV[3])
  redis.call('PUBLISH', ARGV[4], ARGV[3] .. ' ' .. exp)
end
return tonumber(exp)",
    )
});

static RECORD_REFRESH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'sid', ARGV[1], 'user_id', ARGV[2], 'issued_at', ARGV[3], 'expires_at', ARGV[4])
redis.call('EXPIREAT', KEYS[1], math.max(tonumber(ARGV[4]), tonumber(ARGV[3])) + 60)
return 1",
    )
});

static USE_REFRESH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'used_at', ARGV[1]) == 1 then return 1 end
return 2",
    )
});

/// All or nothing: refused (seconds to wait) if any counter is full, else
/// the attempt is counted in every one.
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local now = tonumber(ARGV[1])
local wait = 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[1 + 2 * i])
  local window = tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= limit then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local left = window
    if oldest[2] then left = tonumber(oldest[2]) + window - now end
    if left < 1 then left = 1 end
    if left > wait then wait = left end
  end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[2])
  redis.call('EXPIRE', key, tonumber(ARGV[2 + 2 * i]))
end
return 0",
    )
});

static CLEAR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = redis.call('ZCARD', KEYS[1])
redis.call('DEL', KEYS[1])
return n",
    )
});

/// Where Redis is and how to talk to it (`[store] url`).
pub struct RedisSettings {
    pub url: String,
    pub password: Option<String>,
    pub key_prefix: String,
    pub timeout: Duration,
}

pub struct RedisStore {
    client: Client,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    prefix: String,
    timeout: Duration,
    /// False from losing the revocation channel until the mirror has been
    /// reloaded whole: until then token routes answer 503, as the replica
    /// may have missed revocations.
    synced: AtomicBool,
    /// No new connection attempt before this (clock::now_ms): while Redis
    /// is down, requests fail at once instead of queueing on connects.
    retry_at: AtomicU64,
    outage: Outage,
    name: String,
}

impl RedisStore {
    /// Connects and checks that Redis answers.
    pub async fn connect(s: &RedisSettings) -> Result<RedisStore, StoreError> {
        let name = format!("redis {}", redact(&s.url));
        let open = |e: String| StoreError::Open(redact(&s.url), e);
        let mut info = s
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| open(e.to_string()))?;
        if let Some(pw) = &s.password {
            let redis = info.redis_settings().clone().set_password(pw);
            info = info.set_redis_settings(redis);
        }
        let client = Client::open(info).map_err(|e| open(e.to_string()))?;
        let store = RedisStore {
            client,
            conn: tokio::sync::Mutex::new(None),
            prefix: s.key_prefix.clone(),
            timeout: s.timeout,
            synced: AtomicBool::new(true),
            retry_at: AtomicU64::new(0),
            outage: Outage::default(),
            name,
        };
        store
            .query::<String>(&redis::cmd("PING"), false)
            .await
            .map_err(|e| open(crate::body::error_chain(&e)))?;
        Ok(store)
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                k.push(':');
            }
            k.push_str(p);
        }
        k
    }

    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        if crate::clock::now_ms() < self.retry_at.load(Ordering::Acquire) {
            return Err(StoreError::Unreachable);
        }
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let c = tokio::time::timeout(
            self.timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&cfg),
        )
        .await
        .map_err(|_| StoreError::Timeout(self.timeout))
        .and_then(|r| r.map_err(StoreError::Redis));
        match c {
            Ok(c) => {
                *slot = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                self.retry_at
                    .store(crate::clock::now_ms() + RECONNECT_MS, Ordering::Release);
                Err(e)
            }
        }
    }

    /// One command or script, with the deadline; a broken connection is
    /// dropped so the next call connects again. `gated`: refused while the
    /// mirror is not resynced.
    async fn exec<T: FromRedisValue>(&self, run: Run<'_>, gated: bool) -> Result<T, StoreError> {
        let r = async {
            if gated && !self.synced.load(Ordering::Acquire) {
                return Err(StoreError::NotSynced);
            }
            let mut conn = self.connection().await?;
            let fut = async {
                match run {
                    Run::Cmd(c) => c.query_async(&mut conn).await,
                    Run::Script(s) => s.invoke_async(&mut conn).await,
                }
            };
            match tokio::time::timeout(self.timeout, fut).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => {
                    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                        *self.conn.lock().await = None;
                    }
                    Err(StoreError::Redis(e))
                }
                Err(_) => {
                    *self.conn.lock().await = None;
                    Err(StoreError::Timeout(self.timeout))
                }
            }
        }
        .await;
        self.outage.observe(&self.name, &r);
        r
    }

    async fn query<T: FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        gated: bool,
    ) -> Result<T, StoreError> {
        self.exec(Run::Cmd(cmd), gated).await
    }

    async fn script<T: FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.exec(Run::Script(inv), true).await
    }

    async fn family_of(&self, sid: &str) -> Result<Option<Family>, StoreError> {
        let fields: Vec<Option<i64>> = self
            .query(
                redis::cmd("HMGET").arg(self.key(&["family", sid])).arg(&[
                    "created_at",
                    "expires_at",
                    "revoked_at",
                ]),
                true,
            )
            .await?;
        let user_id: Option<String> = self
            .query(
                redis::cmd("HGET")
                    .arg(self.key(&["family", sid]))
                    .arg("user_id"),
                true,
            )
            .await?;
        let (Some(user_id), [Some(created_at), Some(expires_at), revoked_at]) =
            (user_id, fields.as_slice())
        else {
            return Ok(None);
        };
        Ok(Some(Family {
            sid: sid.to_string(),
            user_id,
            created_at: *created_at,
            expires_at: *expires_at,
            revoked_at: *revoked_at,
        }))
    }

    /// Subscribes, reloads the mirror whole, then follows the channel until
    /// the connection is lost.
    async fn follow_once(&self, mirror: &RevokedFamilies) -> Result<(), StoreError> {
        use futures_util::StreamExt;
        let channel = self.key(&["revocations"]);
        let mut pubsub = tokio::time::timeout(self.timeout, self.client.get_async_pubsub())
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
            .map_err(StoreError::Redis)?;
        tokio::time::timeout(self.timeout, pubsub.subscribe(&channel))
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
            .map_err(StoreError::Redis)?;
        // Subscribed before reading: a revocation published from here on
        // arrives on the channel, and every earlier one is in the set.
        let now = crate::clock::unix_now();
        let all: Vec<(String, i64)> = self
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.key(&["revoked"]))
                    .arg(format!("({now}"))
                    .arg("+inf")
                    .arg("WITHSCORES"),
                false,
            )
            .await?;
        for (sid, until) in &all {
            mirror.insert(sid, *until);
        }
        if !self.synced.swap(true, Ordering::AcqRel) {
            tracing::info!(
                store = %self.name,
                revoked = all.len(),
                "revocation mirror resynced"
            );
        }
        let mut messages = pubsub.into_on_message();
        let mut check = tokio::time::interval(RESUBSCRIBE);
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else {
                        return Err(StoreError::ChannelLost);
                    };
                    let Ok(text) = msg.get_payload::<String>() else {
                        continue;
                    };
                    if let Some((sid, until)) = text.split_once(' ') {
                        if let Ok(until) = until.parse::<i64>() {
                            mirror.insert(sid, until);
                        }
                    }
                }
                // A silent network failure does not close the channel, but
                // commands time out: resubscribe and reload to be sure no
                // revocation was missed meanwhile.
                _ = check.tick() => {
                    if self.outage.is_down() {
                        return Err(StoreError::ChannelLost);
                    }
                }
            }
        }
    }
}

enum Run<'a> {
    Cmd(&'a redis::Cmd),
    Script(&'a redis::ScriptInvocation<'a>),
}

/// The URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

impl Store for RedisStore {
    fn create_family<'a>(&'a self, f: &'a Family) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut inv = CREATE_FAMILY.prepare_invoke();
            inv.key(self.key(&["family", &f.sid]))
                .key(self.key(&["user", &f.user_id]))
                .arg(&f.sid)
                .arg(&f.user_id)
                .arg(f.created_at)
                .arg(f.expires_at);
            self.script::<i64>(&inv).await.map(|_| ())
        })
    }

    fn family<'a>(&'a self, sid: &'a str) -> StoreFuture<'a, Option<Family>> {
        Box::pin(self.family_of(sid))
    }

    fn sessions<'a>(&'a self, user_id: &'a str, now: i64) -> StoreFuture<'a, Vec<Family>> {
        Box::pin(async move {
            let sids: Vec<String> = self
                .query(
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(self.key(&["user", user_id]))
                        .arg(format!("({now}"))
                        .arg("+inf"),
                    true,
                )
                .await?;
            let mut out = Vec::with_capacity(sids.len());
            for sid in sids {
                if let Some(f) = self.family_of(&sid).await? {
                    out.push(f);
                }
            }
            out.sort_by(|a, b| (a.created_at, &a.sid).cmp(&(b.created_at, &b.sid)));
            Ok(out)
        })
    }

    fn revoke_family<'a>(
        &'a self,
        sid: &'a str,
        at: i64,
        reason: &'a str,
    ) -> StoreFuture<'a, Option<i64>> {
        Box::pin(async move {
            let mut inv = REVOKE_FAMILY.prepare_invoke();
            inv.key(self.key(&["family", sid]))
                .key(self.key(&["revoked"]))
                .arg(at)
                .arg(reason)
                .arg(sid)
                .arg(self.key(&["revocations"]));
            self.script(&inv).await
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
        Box::pin(async move {
            let mut inv = RECORD_REFRESH.prepare_invoke();
            inv.key(self.key(&["refresh", jti]))
                .arg(sid)
                .arg(user_id)
                .arg(issued_at)
                .arg(expires_at);
            self.script::<i64>(&inv).await.map(|_| ())
        })
    }

    fn use_refresh<'a>(&'a self, jti: &'a str, at: i64) -> StoreFuture<'a, RefreshUse> {
        Box::pin(async move {
            let mut inv = USE_REFRESH.prepare_invoke();
            inv.key(self.key(&["refresh", jti])).arg(at);
            Ok(match self.script::<i64>(&inv).await? {
                0 => RefreshUse::Unknown,
                1 => RefreshUse::Fresh,
                _ => RefreshUse::AlreadyUsed,
            })
        })
    }

    fn is_used<'a>(&'a self, jti: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            self.query(
                redis::cmd("HEXISTS")
                    .arg(self.key(&["refresh", jti]))
                    .arg("used_at"),
                true,
            )
            .await
        })
    }

    fn refresh_family<'a>(&'a self, jti: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            self.query(
                redis::cmd("HGET")
                    .arg(self.key(&["refresh", jti]))
                    .arg("sid"),
                true,
            )
            .await
        })
    }

    fn revoked_families(&self, now: i64) -> StoreFuture<'_, Vec<(String, i64)>> {
        Box::pin(async move {
            self.query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.key(&["revoked"]))
                    .arg(format!("({now}"))
                    .arg("+inf")
                    .arg("WITHSCORES"),
                false,
            )
            .await
        })
    }

    fn reserve_attempt<'a>(
        &'a self,
        limits: &'a [Limit],
        id: &'a str,
        now: i64,
    ) -> StoreFuture<'a, Attempt> {
        Box::pin(async move {
            let mut inv = RESERVE.prepare_invoke();
            inv.arg(now).arg(id);
            for l in limits {
                inv.key(self.key(&["fail", l.kind, &l.key]))
                    .arg(l.limit)
                    .arg(l.window);
            }
            let wait: i64 = self.script(&inv).await?;
            Ok(match u64::try_from(wait) {
                Ok(0) | Err(_) => Attempt::Reserved,
                Ok(retry_after) => Attempt::Refused { retry_after },
            })
        })
    }

    fn release_attempt<'a>(
        &'a self,
        kind: &'a str,
        key: &'a str,
        id: &'a str,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.query::<i64>(
                redis::cmd("ZREM")
                    .arg(self.key(&["fail", kind, key]))
                    .arg(id),
                true,
            )
            .await
            .map(|_| ())
        })
    }

    fn failure_counts<'a>(
        &'a self,
        kind: &'a str,
        since: i64,
    ) -> StoreFuture<'a, Vec<FailureCount>> {
        Box::pin(async move {
            let head = self.key(&["fail", kind, ""]);
            let pattern = format!("{}*", glob_escape(&head));
            let mut cursor: u64 = 0;
            let mut out = Vec::new();
            loop {
                let (next, keys): (u64, Vec<String>) = self
                    .query(
                        redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(500),
                        true,
                    )
                    .await?;
                for k in keys {
                    let first: Vec<(String, i64)> = self
                        .query(
                            redis::cmd("ZRANGEBYSCORE")
                                .arg(&k)
                                .arg(format!("({since}"))
                                .arg("+inf")
                                .arg("WITHSCORES")
                                .arg("LIMIT")
                                .arg(0)
                                .arg(1),
                            true,
                        )
                        .await?;
                    let Some((_, oldest)) = first.first() else {
                        continue;
                    };
                    let count: u32 = self
                        .query(
                            redis::cmd("ZCOUNT")
                                .arg(&k)
                                .arg(format!("({since}"))
                                .arg("+inf"),
                            true,
                        )
                        .await?;
                    out.push(FailureCount {
                        kind: kind.to_string(),
                        key: k[head.len()..].to_string(),
                        count,
                        oldest: *oldest,
                    });
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
    }

    fn clear_failures<'a>(&'a self, kind: &'a str, key: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let mut inv = CLEAR.prepare_invoke();
            inv.key(self.key(&["fail", kind, key]));
            self.script(&inv).await
        })
    }

    fn purge(&self, now: i64, _failures_before: i64) -> StoreFuture<'_, usize> {
        // Everything else expires by itself (EXPIREAT at its end).
        Box::pin(async move {
            self.query(
                redis::cmd("ZREMRANGEBYSCORE")
                    .arg(self.key(&["revoked"]))
                    .arg("-inf")
                    .arg(now),
                true,
            )
            .await
        })
    }

    fn follow_revocations(&self, mirror: Arc<RevokedFamilies>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            loop {
                let r = self.follow_once(&mirror).await;
                // Whatever revocations are published from now until the
                // next full reload may be missed: stop trusting the mirror
                // for the token routes (the edge keeps reading it).
                self.synced.store(false, Ordering::Release);
                self.outage.observe(&self.name, &r);
                tokio::time::sleep(RESUBSCRIBE).await;
            }
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        // Gated: a replica whose mirror is not resynced is not ready.
        Box::pin(async move {
            self.query::<String>(&redis::cmd("PING"), true)
                .await
                .map(|_| ())
        })
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// `s` as a literal in a SCAN MATCH pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_logged_without_their_password() {
        assert_eq!(
            redact("redis://:s3cret@10.0.0.5:6379/0"),
            "redis://***@10.0.0.5:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1/1"), "redis://127.0.0.1/1");
        assert_eq!(glob_escape("g*:fail:"), "g\\*:fail:");
    }
}
