//! The four POST endpoints: obtain, refresh, verify, blacklist.

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{Map, Value};
use std::net::IpAddr;

use super::credentials::Lookup;
use super::issue::{extra_claims, new_jti, Claims};
use super::{rate_limit, request, unix_now, TokenError, TokenService};
use crate::auth::jwt::TokenProblem;
use crate::auth::Authenticator;
use crate::body::{self as response, Body};
use crate::store::{Family, RefreshUse};

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn ok(body: Value) -> Response<Body> {
    response::json_response(StatusCode::OK, body.to_string())
}

impl TokenService {
    /// POST {"username","password"} -> {"refresh","access"}.
    pub(super) async fn obtain(
        &self,
        ct: Option<&str>,
        body: &Bytes,
        peer: IpAddr,
    ) -> Result<Response<Body>, TokenError> {
        let fields = request::fields(ct, body, &["username", "password"])?;
        let (username, password) = (&fields[0], &fields[1]);
        let limits = &self.cfg.rate_limit;
        let store = self.store.as_ref();
        // SECURITY: the attempt is counted before the password is checked,
        // so concurrent guesses cannot all pass the limit.
        let slot = match rate_limit::reserve(store, limits, username, peer).await {
            Ok(slot) => slot,
            Err(e) => {
                if matches!(e, TokenError::RateLimited { .. }) {
                    crate::metrics::login("rate_limited");
                }
                return Err(e);
            }
        };
        let user = match self.credentials.authenticate(username, password).await {
            Ok(Some(u)) => u,
            // A failure keeps its reserved slot: it is the count.
            Ok(None) => {
                crate::metrics::login("failed");
                return Err(TokenError::BadCredentials);
            }
            Err(e) => {
                rate_limit::release(store, limits, username, slot).await?;
                return Err(TokenError::CredentialsUnavailable(e));
            }
        };
        rate_limit::succeeded(store, limits, username, slot).await?;

        let now = unix_now();
        let family = Family {
            sid: new_jti(),
            user_id: user.user_id.clone(),
            created_at: now,
            expires_at: now.saturating_add(secs(self.cfg.session_max)),
            revoked_at: None,
        };
        self.store
            .create_family(&family)
            .await
            .map_err(TokenError::Store)?;
        let refresh = self
            .issue_refresh(&user.user_id, &user.claims, &family, now)
            .await?;
        let access = self.mint(
            "access",
            &user.user_id,
            &user.claims,
            &family.sid,
            now,
            self.access_exp(now).min(family.expires_at),
        )?;
        crate::metrics::login("succeeded");
        crate::metrics::tokens("issued");
        Ok(ok(
            serde_json::json!({"refresh": refresh, "access": access.0}),
        ))
    }

    /// POST {"refresh"} -> {"access"} (+ a new "refresh" when rotating).
    pub(super) async fn refresh(
        &self,
        ct: Option<&str>,
        body: &Bytes,
        auth: &Authenticator,
    ) -> Result<Response<Body>, TokenError> {
        let (claims, jti) = refresh_token(ct, body, auth)?;
        let now = unix_now();
        let user_id = claims
            .get(&self.user_id_claim)
            .and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .ok_or(TokenError::Token(TokenProblem::Invalid))?;
        let sid = claims.get("sid").and_then(Value::as_str).map(str::to_owned);

        // The family: ours (sid) or a new one for a simplejwt-issued token.
        let family = match &sid {
            Some(sid) => {
                let fam = self.store.family(sid).await.map_err(TokenError::Store)?;
                match fam {
                    Some(f) if f.revoked_at.is_some() => {
                        return Err(TokenError::Token(TokenProblem::Blacklisted))
                    }
                    Some(f) if f.expires_at <= now => {
                        return Err(TokenError::Token(TokenProblem::Expired))
                    }
                    Some(f) => f,
                    // Minted with our key but unknown to the store: refuse.
                    None => return Err(TokenError::Token(TokenProblem::Blacklisted)),
                }
            }
            None => Family {
                sid: new_jti(),
                user_id: user_id.clone(),
                created_at: now,
                expires_at: now.saturating_add(secs(self.cfg.session_max)),
                revoked_at: None,
            },
        };

        // Single use: mark this refresh token used, atomically.
        let single_use = self.cfg.rotate_refresh && self.cfg.blacklist_after_rotation;
        if !single_use && sid.is_none() {
            // Reusable refresh tokens (as simplejwt without rotation): a
            // simplejwt token stays usable until blacklisted.
            let used = self.store.is_used(&jti).await.map_err(TokenError::Store)?;
            if used {
                return Err(TokenError::Token(TokenProblem::Blacklisted));
            }
        }
        if single_use {
            let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(now);
            if sid.is_none() {
                // A simplejwt token: remember it, so it too is single use.
                self.store
                    .record_refresh(&jti, &family.sid, &user_id, now, exp)
                    .await
                    .map_err(TokenError::Store)?;
            }
            let outcome = self
                .store
                .use_refresh(&jti, now)
                .await
                .map_err(TokenError::Store)?;
            match outcome {
                RefreshUse::Fresh => {}
                RefreshUse::AlreadyUsed | RefreshUse::Unknown => {
                    // SECURITY: a replayed refresh token means it leaked;
                    // revoke every token of its login (OAuth 2.0 BCP 4.14.2).
                    // A replayed simplejwt token has no sid: its family is
                    // the one its first use started, recorded with its jti.
                    let victim = match &sid {
                        Some(sid) => Some(sid.clone()),
                        None => self
                            .store
                            .refresh_family(&jti)
                            .await
                            .map_err(TokenError::Store)?
                            .filter(|s| !s.is_empty()),
                    };
                    if let Some(sid) = &victim {
                        tracing::warn!(sid = %sid, user_id = %user_id, "refresh token reuse detected: revoking its token family");
                        self.revoke(sid, now, "refresh token reuse").await?;
                    }
                    return Err(TokenError::Token(TokenProblem::Blacklisted));
                }
            }
        }

        // The user is looked up again: inactive or removed users get nothing.
        let extra = match self.credentials.lookup(&user_id) {
            Lookup::Active(u) => u.claims,
            Lookup::Gone => return Err(TokenError::InactiveForToken),
            Lookup::NotChecked => extra_claims(&claims, &self.user_id_claim),
        };
        if sid.is_none() {
            self.store
                .create_family(&family)
                .await
                .map_err(TokenError::Store)?;
        }
        let access = self.mint(
            "access",
            &user_id,
            &extra,
            &family.sid,
            now,
            // No token of the family outlives the session (session_max).
            self.access_exp(now).min(family.expires_at),
        )?;
        crate::metrics::tokens("refreshed");
        if !self.cfg.rotate_refresh {
            return Ok(ok(serde_json::json!({"access": access.0})));
        }
        let refresh = self.issue_refresh(&user_id, &extra, &family, now).await?;
        Ok(ok(
            serde_json::json!({"access": access.0, "refresh": refresh}),
        ))
    }

    /// POST {"token"} -> {} when it verifies (any token type).
    pub(super) async fn verify(
        &self,
        ct: Option<&str>,
        body: &Bytes,
        auth: &Authenticator,
    ) -> Result<Response<Body>, TokenError> {
        let fields = request::fields(ct, body, &["token"])?;
        let claims = auth
            .verify_issued(&fields[0], None)
            .map_err(TokenError::Token)?;
        if self.cfg.blacklist_after_rotation {
            // simplejwt with blacklisting answers a blacklisted token 400.
            if let Some(sid) = claims.get("sid").and_then(Value::as_str) {
                if self.revoked.is_revoked(sid) {
                    return Err(TokenError::VerifyBlacklisted);
                }
            }
            // A rotated or blacklisted refresh token is blacklisted to
            // simplejwt too, even while its family lives on (and a
            // simplejwt-issued one has no family at all).
            let is_refresh = claims.get("token_type").and_then(Value::as_str) == Some("refresh");
            if let (true, Some(jti)) = (is_refresh, claims.get("jti").and_then(Value::as_str)) {
                if self.store.is_used(jti).await.map_err(TokenError::Store)? {
                    return Err(TokenError::VerifyBlacklisted);
                }
            }
        }
        Ok(ok(serde_json::json!({})))
    }

    /// POST {"refresh"} -> {}: logs out the token's whole family.
    pub(super) async fn blacklist(
        &self,
        ct: Option<&str>,
        body: &Bytes,
        auth: &Authenticator,
    ) -> Result<Response<Body>, TokenError> {
        let (claims, jti) = refresh_token(ct, body, auth)?;
        let now = unix_now();
        match claims.get("sid").and_then(Value::as_str) {
            Some(sid) => {
                if self.revoked.is_revoked(sid) {
                    return Err(TokenError::Token(TokenProblem::Blacklisted));
                }
                let fam = self.store.family(sid).await.map_err(TokenError::Store)?;
                if fam.as_ref().is_some_and(|f| f.revoked_at.is_some()) {
                    return Err(TokenError::Token(TokenProblem::Blacklisted));
                }
                // Mark it used: a token rotated before is being replayed
                // (simplejwt: already blacklisted), which revokes the
                // family like any other reuse.
                let outcome = self
                    .store
                    .use_refresh(&jti, now)
                    .await
                    .map_err(TokenError::Store)?;
                if outcome == RefreshUse::AlreadyUsed {
                    tracing::warn!(sid = %sid, "rotated refresh token presented for logout: revoking its token family");
                    self.revoke(sid, now, "refresh token reuse").await?;
                    return Err(TokenError::Token(TokenProblem::Blacklisted));
                }
                self.revoke(sid, now, "blacklisted").await?;
            }
            None => {
                // A simplejwt token: blacklist it by jti.
                let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(now);
                self.store
                    .record_refresh(&jti, "", "", now, exp)
                    .await
                    .map_err(TokenError::Store)?;
                let outcome = self
                    .store
                    .use_refresh(&jti, now)
                    .await
                    .map_err(TokenError::Store)?;
                if outcome != RefreshUse::Fresh {
                    // Used before at the refresh route: revoke the family
                    // that use started, as any other reuse does.
                    let started = self
                        .store
                        .refresh_family(&jti)
                        .await
                        .map_err(TokenError::Store)?
                        .filter(|s| !s.is_empty());
                    if let Some(sid) = started {
                        self.revoke(&sid, now, "refresh token reuse").await?;
                    }
                    return Err(TokenError::Token(TokenProblem::Blacklisted));
                }
            }
        }
        crate::metrics::tokens("blacklisted");
        Ok(ok(serde_json::json!({})))
    }

    /// Mints a refresh token of `family` and records it as outstanding. It
    /// expires after refresh_ttl, or when the session does if sooner.
    async fn issue_refresh(
        &self,
        user_id: &str,
        extra: &Map<String, Value>,
        family: &Family,
        now: i64,
    ) -> Result<String, TokenError> {
        let exp = now
            .saturating_add(secs(self.cfg.refresh_ttl))
            .min(family.expires_at);
        let (token, jti) = self.mint("refresh", user_id, extra, &family.sid, now, exp)?;
        self.store
            .record_refresh(&jti, &family.sid, user_id, now, exp)
            .await
            .map_err(TokenError::Store)?;
        Ok(token)
    }

    /// Revokes a family in the store and in the edge's mirror.
    async fn revoke(&self, sid: &str, now: i64, reason: &'static str) -> Result<(), TokenError> {
        let expires = self
            .store
            .revoke_family(sid, now, reason)
            .await
            .map_err(TokenError::Store)?;
        // Access tokens may outlive the family's end by one access_ttl.
        let until = expires.unwrap_or(now).max(self.access_exp(now));
        self.revoked.insert(sid, until);
        Ok(())
    }

    fn access_exp(&self, now: i64) -> i64 {
        now.saturating_add(secs(self.cfg.access_ttl))
    }

    /// Signs one token; returns it with its jti.
    fn mint(
        &self,
        token_type: &'static str,
        user_id: &str,
        extra: &Map<String, Value>,
        sid: &str,
        now: i64,
        exp: i64,
    ) -> Result<(String, String), TokenError> {
        let claims = Claims {
            token_type,
            exp,
            iat: now,
            jti: new_jti(),
            user_id_claim: &self.user_id_claim,
            user_id,
            extra,
            sid: Some(sid),
            audience: &self.audience,
            issuer: self.issuer.as_deref(),
        };
        let jti = claims.jti.clone();
        let token = self
            .signer
            .sign(&claims.to_map())
            .map_err(TokenError::Sign)?;
        Ok((token, jti))
    }
}

/// The `refresh` field, verified as a refresh token: its claims and jti.
fn refresh_token(
    ct: Option<&str>,
    body: &Bytes,
    auth: &Authenticator,
) -> Result<(Map<String, Value>, String), TokenError> {
    let fields = request::fields(ct, body, &["refresh"])?;
    let claims = auth
        .verify_issued(&fields[0], Some("refresh"))
        .map_err(TokenError::Token)?;
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Ok((claims, jti))
}
