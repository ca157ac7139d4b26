//! Operator commands on the store the config names (SQLite or Redis):
//! sessions and lockouts. Running gateways see their effect: revocations
//! reach every mirror within seconds, and login limits are read from the
//! store on every attempt.

use anyhow::{bail, Context};
use std::path::Path;
use std::sync::Arc;

use crate::cli::{LockoutsCommand, SessionsCommand};
use gateway::config::{self, Config};
use gateway::store::{revoke_user, Store};
use gateway::tokens::rate_limit::{secs, ADDRESS, USER};

const REASON: &str = "revoked by operator";

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

async fn open(path: &Path) -> anyhow::Result<(Config, Arc<dyn Store>)> {
    let config = config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    if config.tokens.is_none() {
        bail!(
            "{}: no [tokens] section: the gateway keeps no sessions or login counts",
            path.display()
        );
    }
    let store = gateway::handler::open_store(&config.store.backend)
        .await
        .context("cannot open the store")?;
    Ok((config, store))
}

fn time(t: i64) -> String {
    u64::try_from(t)
        .ok()
        .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
        .map_or_else(
            || t.to_string(),
            |st| humantime::format_rfc3339_seconds(st).to_string(),
        )
}

pub fn sessions(cmd: SessionsCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        match cmd {
            SessionsCommand::List {
                config,
                user_id,
                json,
            } => {
                let (_, store) = open(&config.config).await?;
                let now = gateway::tokens::unix_now();
                let list = store.sessions(&user_id, now).await?;
                if json {
                    for f in &list {
                        println!(
                            "{}",
                            serde_json::json!({
                                "sid": f.sid,
                                "user_id": f.user_id,
                                "created_at": f.created_at,
                                "expires_at": f.expires_at,
                                "revoked_at": f.revoked_at,
                            })
                        );
                    }
                    return Ok(());
                }
                if list.is_empty() {
                    println!("no sessions for user {user_id}");
                    return Ok(());
                }
                println!(
                    "{:<32}  {:<20}  {:<20}  STATUS",
                    "SID", "CREATED", "EXPIRES"
                );
                for f in &list {
                    let status = match f.revoked_at {
                        Some(t) => format!("revoked {}", time(t)),
                        None => "active".to_string(),
                    };
                    println!(
                        "{:<32}  {:<20}  {:<20}  {status}",
                        f.sid,
                        time(f.created_at),
                        time(f.expires_at)
                    );
                }
                Ok(())
            }
            SessionsCommand::Revoke {
                config,
                user_id,
                sid,
            } => {
                let (_, store) = open(&config.config).await?;
                let now = gateway::tokens::unix_now();
                if let Some(sid) = sid {
                    let Some(family) = store.family(&sid).await? else {
                        bail!("no session {sid} in the store");
                    };
                    if family.revoked_at.is_some() {
                        println!("session {sid} was already revoked");
                        return Ok(());
                    }
                    store.revoke_family(&sid, now, REASON).await?;
                    println!("revoked session {sid} of user {}", family.user_id);
                    return Ok(());
                }
                let user_id = user_id.unwrap_or_default();
                let revoked = revoke_user(store.as_ref(), &user_id, now, REASON).await?;
                println!(
                    "revoked {} session(s) of user {user_id}{}",
                    revoked.len(),
                    revoked
                        .iter()
                        .map(|(s, _)| format!("\n  {s}"))
                        .collect::<String>()
                );
                Ok(())
            }
        }
    })
}

pub fn lockouts(cmd: LockoutsCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        match cmd {
            LockoutsCommand::List { config, all, json } => {
                let (config, store) = open(&config.config).await?;
                let Some(tokens) = &config.tokens else {
                    return Ok(());
                };
                let rl = &tokens.rate_limit;
                let now = gateway::tokens::unix_now();
                let mut rows = Vec::new();
                for (kind, limit, window) in [
                    (USER, rl.per_user, secs(rl.per_user_window)),
                    (ADDRESS, rl.per_address, secs(rl.per_address_window)),
                ] {
                    for c in store
                        .failure_counts(kind, now.saturating_sub(window))
                        .await?
                    {
                        let locked = limit > 0 && c.count >= limit;
                        if locked || all {
                            let retry = if locked {
                                (c.oldest.saturating_add(window) - now).max(1)
                            } else {
                                0
                            };
                            rows.push((c, limit, locked, retry));
                        }
                    }
                }
                if json {
                    for (c, limit, locked, retry) in &rows {
                        println!(
                            "{}",
                            serde_json::json!({
                                "kind": c.kind,
                                "key": c.key,
                                "failures": c.count,
                                "limit": limit,
                                "locked": locked,
                                "retry_after": retry,
                            })
                        );
                    }
                    return Ok(());
                }
                if rows.is_empty() {
                    println!("no lockouts");
                    return Ok(());
                }
                println!(
                    "{:<8}  {:<32}  {:>8}  {:>5}  LOCKED FOR",
                    "KIND", "NAME", "FAILURES", "LIMIT"
                );
                for (c, limit, locked, retry) in &rows {
                    let for_ = if *locked {
                        format!("{retry}s")
                    } else {
                        "-".to_string()
                    };
                    println!(
                        "{:<8}  {:<32}  {:>8}  {:>5}  {for_}",
                        c.kind, c.key, c.count, limit
                    );
                }
                Ok(())
            }
            LockoutsCommand::Clear {
                config,
                name,
                address,
            } => {
                let (_, store) = open(&config.config).await?;
                let kind = if address { ADDRESS } else { USER };
                let n = store.clear_failures(kind, &name).await?;
                let what = if address { "address" } else { "user" };
                println!("cleared {n} failed login(s) of {what} {name}");
                Ok(())
            }
        }
    })
}
