//! Who is calling: one token check for every front-end.
//!
//! A caller presents a token: a PDS session access token (after a password
//! and TOTP sign-in, or an identity-provider login), a scoped service token,
//! or an identity provider's own JWT access token. [`Shared::authenticate`]
//! is the only place that turns one into a [`Principal`]; PostgreSQL,
//! Flight SQL and HTTP all call it, so no door is weaker than another.
//! Failures are audited with their reason and answered vaguely.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pds_accounts::{IdpToken, Principal};
use pds_gate::GateError;

use crate::Shared;

/// Sign-in attempts per address, in one-minute windows. Password sign-ins
/// (HTTP) count every attempt, since each costs an Argon2id computation;
/// token sign-ins (PostgreSQL, Flight SQL) count failures only, so a lab
/// behind one address can open many connections. Bounded memory: when
/// full, expired windows are dropped, then the table is cleared.
#[derive(Debug)]
pub(crate) struct AttemptLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

const LIMITER_ENTRIES: usize = 50_000;

/// The unit counted: an IPv4 address, or an IPv6 /64 (one subscriber's
/// prefix, which holds more addresses than the table).
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

impl AttemptLimiter {
    pub(crate) fn new(per_minute: u32) -> AttemptLimiter {
        AttemptLimiter {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` is over the limit now (`Some(seconds to wait)`),
    /// without counting an attempt.
    pub(crate) fn blocked(&self, ip: IpAddr) -> Option<u64> {
        if self.per_minute == 0 {
            return None;
        }
        let w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let (start, n) = w.get(&bucket(ip))?;
        let elapsed = start.elapsed();
        (elapsed < Duration::from_secs(60) && *n >= self.per_minute)
            .then(|| (Duration::from_secs(60) - elapsed).as_secs().max(1))
    }

    /// Counts an attempt from `ip`; `Err(seconds to wait)` past the limit.
    pub(crate) fn attempt(&self, ip: IpAddr) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let minute = Duration::from_secs(60);
        let ip = bucket(ip);
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() >= LIMITER_ENTRIES && !w.contains_key(&ip) {
            w.retain(|_, (start, _)| now.duration_since(*start) < minute);
            // Still full: drop the oldest window, never the whole table.
            if w.len() >= LIMITER_ENTRIES
                && let Some(oldest) = w.iter().min_by_key(|(_, v)| v.0).map(|(k, _)| *k)
            {
                w.remove(&oldest);
            }
        }
        let e = w.entry(ip).or_insert((now, 0));
        if now.duration_since(e.0) >= minute {
            *e = (now, 0);
        }
        e.1 += 1;
        if e.1 > self.per_minute {
            Err(minute
                .saturating_sub(now.duration_since(e.0))
                .as_secs()
                .max(1))
        } else {
            Ok(())
        }
    }
}

impl Shared {
    /// Checks a token of any kind and returns the caller. The error is the
    /// reason, for the audit log only.
    pub(crate) async fn authenticate(&self, token: &str) -> Result<Principal, String> {
        let token = token.trim();
        if pds_accounts::is_pds_token(token) {
            return self
                .accounts()
                .authenticate(token)
                .await
                .map_err(|e| match e {
                    pds_accounts::AccountError::BadCredentials => {
                        "invalid, expired or revoked PDS token".to_string()
                    }
                    e => e.to_string(),
                });
        }
        if !pds_oidc::looks_like_jwt(token) {
            return Err("neither a PDS token nor a JWT".into());
        }
        let provider = self
            .federation
            .for_token(token)
            .ok_or_else(|| "JWT from an issuer that is not configured".to_string())?;
        let v = provider.validate(token).await.map_err(|e| e.to_string())?;
        let id = provider.identity(&v.claims).map_err(|e| e.to_string())?;
        let idp = IdpToken {
            provider: provider.name().to_string(),
            sid: id.sid,
            jti: id.jti,
            exp: id.exp,
            sha256: pds_accounts::token_digest(token),
        };
        self.idp_revoked(&idp).await?;
        let account = self
            .accounts()
            .provision_federated(&id.principal, provider.name())
            .await
            .map_err(|e| e.to_string())?;
        if account.disabled {
            return Err(format!("account `{}` is disabled", account.name));
        }
        Ok(Principal {
            name: account.name,
            admin: account.admin,
            via: format!("oidc:{}", provider.name()),
            session: None,
            scope: None,
            eligible_roles: id.eligible_roles,
            idp: Some(idp),
            token_sha256: None,
        })
    }

    /// Refuses an identity provider's token whose session or id was
    /// revoked here.
    async fn idp_revoked(&self, idp: &IdpToken) -> Result<(), String> {
        let cat = self.gate.catalog();
        for (kind, value) in idp.revocation_keys() {
            if cat
                .idp_revoked(&idp.provider, kind, value)
                .await
                .map_err(|e| e.to_string())?
            {
                return Err(format!(
                    "identity-provider {} revoked here (logout or revocation)",
                    if kind == "sid" { "session" } else { "token" }
                ));
            }
        }
        Ok(())
    }

    /// Audits a refused token.
    pub(crate) async fn audit_refused_token(&self, channel: &str, reason: &str) {
        self.metrics.login_failed(channel);
        let _ = self
            .gate
            .audit()
            .append(pds_audit::Record {
                principal: "?".into(),
                action: "authenticate".into(),
                decision: "refused".into(),
                reason: Some(reason.to_string()),
                details: Some(serde_json::json!({"channel": channel})),
                ..Default::default()
            })
            .await;
    }

    async fn audit_refused_use(&self, principal: &Principal, project: &str, why: &str) {
        let _ = self
            .gate
            .audit()
            .append(pds_audit::Record {
                principal: principal.name.clone(),
                project: Some(project.to_string()),
                action: "authorize".into(),
                decision: "refused".into(),
                reason: Some(why.to_string()),
                details: Some(serde_json::json!({"via": principal.via})),
                ..Default::default()
            })
            .await;
    }

    /// Whether `principal` may work in `project` now: what signed it in
    /// still holds (account enabled, session or token not revoked), it is a
    /// member with a role that may query, and, for scoped tokens and
    /// federated people, a role the token or the claims allow. Called at
    /// connection and before every statement.
    pub(crate) async fn authorize(
        &self,
        principal: &Principal,
        project: &str,
    ) -> Result<(), GateError> {
        self.still_signed_in(principal, project).await?;
        let today = chrono::Utc::now().date_naive();
        let (_, role) =
            pds_project::check_access(self.gate.catalog(), project, &principal.name, today)
                .await
                .map_err(|e| match e {
                    pds_project::ProjectError::Denied(m) => GateError::Refused(m),
                    e => GateError::Setup(e.to_string()),
                })?;
        if let Err(why) = principal.may_use(project, role.as_str()) {
            self.audit_refused_use(principal, project, &why).await;
            return Err(GateError::Refused(why));
        }
        Ok(())
    }

    /// Whether `principal` may act in `project` with `role` (a checker
    /// reviewing exports, say): what signed it in still holds, and its
    /// token or claims allow that role there. Membership itself is checked
    /// by the action.
    pub(crate) async fn authorize_role(
        &self,
        principal: &Principal,
        project: &str,
        role: &str,
    ) -> Result<(), GateError> {
        self.still_signed_in(principal, project).await?;
        if let Err(why) = principal.may_use(project, role) {
            self.audit_refused_use(principal, project, &why).await;
            return Err(GateError::Refused(why));
        }
        Ok(())
    }

    async fn still_signed_in(&self, principal: &Principal, project: &str) -> Result<(), GateError> {
        let mut valid = self.accounts().still_valid(principal).await;
        if valid.is_ok()
            && let Some(idp) = &principal.idp
        {
            // A connection opened with a provider's token lives as long as
            // that token, and no longer than its session here.
            let skew = self
                .federation
                .get(&idp.provider)
                .map_or(0, |p| p.config().clock_skew_secs as i64);
            valid = if idp.exp + skew <= chrono::Utc::now().timestamp() {
                Err("the identity provider's token has expired".into())
            } else {
                self.idp_revoked(idp).await
            };
        }
        if let Err(why) = valid {
            self.audit_refused_use(principal, project, &why).await;
            return Err(GateError::Refused(format!("{why}: sign in again")));
        }
        Ok(())
    }
}
