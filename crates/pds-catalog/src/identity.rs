//! Rows behind multi-factor sign-in, sessions and OIDC federation. As for
//! accounts, the catalogue stores what `pds-accounts` decided: wrapped TOTP
//! seeds, digests of codes and tokens, never a secret in clear.

use sqlx::Row;

use crate::accounts::{token_from, token_select};
use crate::{Catalog, CatalogError, TokenRow};

/// A sign-in session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// Random id.
    pub id: String,
    /// Whose.
    pub account: String,
    /// `password+totp`, `password+recovery-code` or `oidc`.
    pub method: String,
    /// Assurance level the identity provider asserted (`eidas1`...), if any.
    pub acr: Option<String>,
    /// The identity provider (OIDC sessions).
    pub idp: Option<String>,
    /// The provider's session id (`sid`), to refuse its tokens after logout.
    pub idp_sid: Option<String>,
    /// Project roles the provider's claims allow, comma-separated (`None`: any).
    pub roles: Option<String>,
    /// Start.
    pub created_at: String,
    /// Last sign-in or refresh (idle timeout).
    pub last_seen_at: String,
    /// Absolute end.
    pub expires_at: String,
    /// Logout or revocation time.
    pub revoked_at: Option<String>,
}

/// A browser login waiting for its callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLogin {
    /// SHA-256 of `state`, hex.
    pub state_sha256: String,
    /// Provider name.
    pub provider: String,
    /// The nonce the ID token must carry.
    pub nonce: String,
    /// The PKCE code verifier.
    pub pkce_verifier: String,
    /// SHA-256 of the cookie set in the browser that started the login.
    pub browser_sha256: String,
    /// Start.
    pub created_at: String,
    /// Deadline for the callback.
    pub expires_at: String,
}

fn session_from(r: &sqlx::any::AnyRow) -> Result<SessionRow, sqlx::Error> {
    Ok(SessionRow {
        id: r.try_get("id")?,
        account: r.try_get("account")?,
        method: r.try_get("method")?,
        acr: r.try_get("acr")?,
        idp: r.try_get("idp")?,
        idp_sid: r.try_get("idp_sid")?,
        roles: r.try_get("roles")?,
        created_at: r.try_get("created_at")?,
        last_seen_at: r.try_get("last_seen_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

impl Catalog {
    /// Stores a TOTP seed awaiting confirmation (replacing any), or clears
    /// the second factor (`None`), which also drops the recovery codes.
    pub async fn set_totp_seed(&self, name: &str, seed: Option<&str>) -> Result<(), CatalogError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE accounts SET totp_seed = $1, totp_enrolled_at = NULL, totp_last_step = NULL WHERE name = $2",
        )
        .bind(seed)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        if seed.is_none() {
            sqlx::query("DELETE FROM recovery_codes WHERE account = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Confirms an enrolment: the seed becomes the account's second factor,
    /// `step` is spent, and the recovery codes are replaced.
    pub async fn confirm_totp(
        &self,
        name: &str,
        seed: &str,
        step: i64,
        recovery_sha256: &[String],
        at: &str,
    ) -> Result<(), CatalogError> {
        let mut tx = self.pool.begin().await?;
        // Only the seed the code was checked against, and only once.
        let r = sqlx::query(
            "UPDATE accounts SET totp_enrolled_at = $1, totp_last_step = $2 WHERE name = $3 AND totp_seed = $4 AND totp_enrolled_at IS NULL",
        )
        .bind(at)
        .bind(step)
        .bind(name)
        .bind(seed)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Err(CatalogError::Invalid(
                "the enrolment changed or was already confirmed: start it again".into(),
            ));
        }
        sqlx::query(
            "UPDATE access_tokens SET revoked_at = $1 WHERE account = $2 AND kind = 'enrol' AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM recovery_codes WHERE account = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        for h in recovery_sha256 {
            sqlx::query(
                "INSERT INTO recovery_codes (account, code_sha256, created_at, used_at) VALUES ($1, $2, $3, NULL)",
            )
            .bind(name)
            .bind(h)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Spends TOTP time step `step`: true only if it is later than every
    /// step used before. One statement, so two racing sign-ins with the same
    /// code cannot both win.
    pub async fn spend_totp_step(&self, name: &str, step: i64) -> Result<bool, CatalogError> {
        let r = sqlx::query(
            "UPDATE accounts SET totp_last_step = $1 WHERE name = $2 AND totp_enrolled_at IS NOT NULL AND (totp_last_step IS NULL OR totp_last_step < $1)",
        )
        .bind(step)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Spends a recovery code: true if it existed unused.
    pub async fn spend_recovery_code(
        &self,
        name: &str,
        code_sha256: &str,
        at: &str,
    ) -> Result<bool, CatalogError> {
        let r = sqlx::query(
            "UPDATE recovery_codes SET used_at = $1 WHERE account = $2 AND code_sha256 = $3 AND used_at IS NULL",
        )
        .bind(at)
        .bind(name)
        .bind(code_sha256)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Unused recovery codes of an account.
    pub async fn recovery_codes_left(&self, name: &str) -> Result<i64, CatalogError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM recovery_codes WHERE account = $1 AND used_at IS NULL",
        )
        .bind(name)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("n")?)
    }

    /// Counts a sign-in attempt of an account before it is checked: one
    /// statement that only succeeds while the account is not locked, so
    /// parallel attempts are all counted. `Ok(count)` including this one,
    /// or `Err(locked_until)` while locked.
    /// Past `free` failures the same statement also locks the account until
    /// `hold`, so that when a lock runs out exactly one attempt gets its
    /// password checked (and then locks for longer, or succeeds).
    pub async fn begin_login_attempt(
        &self,
        name: &str,
        now: &str,
        free: i64,
        hold: &str,
    ) -> Result<Result<i64, Option<String>>, CatalogError> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE accounts SET failed_logins = failed_logins + 1, \
             locked_until = CASE WHEN failed_logins + 1 > $3 THEN $4 ELSE locked_until END \
             WHERE name = $1 AND (locked_until IS NULL OR locked_until <= $2)",
        )
        .bind(name)
        .bind(now)
        .bind(free)
        .bind(hold)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query("SELECT failed_logins, locked_until FROM accounts WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        let Some(row) = row else {
            return Ok(Err(None));
        };
        if r.rows_affected() == 1 {
            Ok(Ok(row.try_get("failed_logins")?))
        } else {
            Ok(Err(row.try_get("locked_until")?))
        }
    }

    /// [`Catalog::begin_login_attempt`] for a name that is not an account
    /// (`key`: a digest of the name). Drops counters idle since `stale`.
    pub async fn begin_throttled_attempt(
        &self,
        key: &str,
        now: &str,
        stale: &str,
        free: i64,
        hold: &str,
    ) -> Result<Result<i64, Option<String>>, CatalogError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM login_throttle WHERE updated_at < $1 AND (locked_until IS NULL OR locked_until < $2)",
        )
        .bind(stale)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let r = sqlx::query(
            "INSERT INTO login_throttle (name_key, failures, locked_until, updated_at) VALUES ($1, 1, NULL, $2) \
             ON CONFLICT (name_key) DO UPDATE SET failures = login_throttle.failures + 1, updated_at = $2, \
             locked_until = CASE WHEN login_throttle.failures + 1 > $3 THEN $4 ELSE login_throttle.locked_until END \
             WHERE login_throttle.locked_until IS NULL OR login_throttle.locked_until <= $2",
        )
        .bind(key)
        .bind(now)
        .bind(free)
        .bind(hold)
        .execute(&mut *tx)
        .await?;
        let row =
            sqlx::query("SELECT failures, locked_until FROM login_throttle WHERE name_key = $1")
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        let Some(row) = row else {
            return Ok(Err(None));
        };
        if r.rows_affected() == 1 {
            Ok(Ok(row.try_get("failures")?))
        } else {
            Ok(Err(row.try_get("locked_until")?))
        }
    }

    /// Locks a name that is not an account until `until`.
    pub async fn set_throttle_lock(&self, key: &str, until: &str) -> Result<(), CatalogError> {
        sqlx::query("UPDATE login_throttle SET locked_until = $1 WHERE name_key = $2")
            .bind(until)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Takes back the count of an attempt that turned out not to be a
    /// failure (right password, second factor still to come).
    pub async fn undo_login_attempt(&self, name: &str) -> Result<(), CatalogError> {
        sqlx::query(
            "UPDATE accounts SET failed_logins = CASE WHEN failed_logins > 0 THEN failed_logins - 1 ELSE 0 END WHERE name = $1",
        )
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Locks an account's sign-in until `until`.
    pub async fn set_login_lock(&self, name: &str, until: &str) -> Result<(), CatalogError> {
        sqlx::query("UPDATE accounts SET locked_until = $1 WHERE name = $2")
            .bind(until)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records the failed-sign-in counter and lock of an account.
    pub async fn set_login_failures(
        &self,
        name: &str,
        failures: i64,
        locked_until: Option<&str>,
    ) -> Result<(), CatalogError> {
        sqlx::query("UPDATE accounts SET failed_logins = $1, locked_until = $2 WHERE name = $3")
            .bind(failures)
            .bind(locked_until)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Binds a federated account to its identity provider, once: returns
    /// false if another provider got there first.
    pub async fn set_account_idp(&self, name: &str, idp: &str) -> Result<bool, CatalogError> {
        let r = sqlx::query("UPDATE accounts SET idp = $1 WHERE name = $2 AND idp IS NULL")
            .bind(idp)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Starts a session.
    pub async fn insert_session(&self, s: &SessionRow) -> Result<(), CatalogError> {
        sqlx::query(
            "INSERT INTO sessions (id, account, method, acr, idp, idp_sid, roles, created_at, last_seen_at, expires_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL)",
        )
        .bind(&s.id)
        .bind(&s.account)
        .bind(&s.method)
        .bind(&s.acr)
        .bind(&s.idp)
        .bind(&s.idp_sid)
        .bind(&s.roles)
        .bind(&s.created_at)
        .bind(&s.last_seen_at)
        .bind(&s.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One session.
    pub async fn session(&self, id: &str) -> Result<Option<SessionRow>, CatalogError> {
        let row = sqlx::query(
            "SELECT id, account, method, acr, idp, idp_sid, roles, created_at, last_seen_at, expires_at, revoked_at FROM sessions WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(session_from).transpose()?)
    }

    /// Marks a session as just used (refresh).
    pub async fn touch_session(&self, id: &str, at: &str) -> Result<(), CatalogError> {
        sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Revokes a session and every token in it. Returns whether it was live.
    pub async fn revoke_session(&self, id: &str, at: &str) -> Result<bool, CatalogError> {
        let mut tx = self.pool.begin().await?;
        let r =
            sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(at)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        sqlx::query(
            "UPDATE access_tokens SET revoked_at = $1 WHERE session_id = $2 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    /// Revokes every session and token of an account (MFA reset, disable).
    pub async fn revoke_all_of(&self, account: &str, at: &str) -> Result<(), CatalogError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE sessions SET revoked_at = $1 WHERE account = $2 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(account)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE access_tokens SET revoked_at = $1 WHERE account = $2 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(account)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The tokens of an account, newest first (digests only).
    pub async fn tokens_of(&self, account: &str) -> Result<Vec<TokenRow>, CatalogError> {
        let rows = sqlx::query(concat!(
            token_select!(),
            " WHERE account = $1 ORDER BY issued_at DESC"
        ))
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(token_from).collect::<Result<_, _>>()?)
    }

    /// Revokes the live tokens whose digest starts with `prefix` (at least
    /// 12 hex digits) and belong to `account`. Returns how many.
    pub async fn revoke_token_prefix(
        &self,
        account: &str,
        prefix: &str,
        at: &str,
    ) -> Result<u64, CatalogError> {
        if prefix.len() < 12 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(CatalogError::Invalid(format!(
                "token id {prefix:?}: give at least the 12 hexadecimal digits `pds user tokens` shows"
            )));
        }
        let r = sqlx::query(
            "UPDATE access_tokens SET revoked_at = $1 WHERE account = $2 AND token_sha256 LIKE $3 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(account)
        .bind(format!("{}%", prefix.to_ascii_lowercase()))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Stores a browser login in flight.
    pub async fn insert_pending_login(&self, p: &PendingLogin) -> Result<(), CatalogError> {
        sqlx::query("DELETE FROM oidc_pending WHERE expires_at < $1")
            .bind(&p.created_at)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO oidc_pending (state_sha256, provider, nonce, pkce_verifier, browser_sha256, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&p.state_sha256)
        .bind(&p.provider)
        .bind(&p.nonce)
        .bind(&p.pkce_verifier)
        .bind(&p.browser_sha256)
        .bind(&p.created_at)
        .bind(&p.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes (reads and deletes) a browser login: a second callback with the
    /// same `state` finds nothing.
    pub async fn take_pending_login(
        &self,
        state_sha256: &str,
    ) -> Result<Option<PendingLogin>, CatalogError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT state_sha256, provider, nonce, pkce_verifier, browser_sha256, created_at, expires_at FROM oidc_pending WHERE state_sha256 = $1",
        )
        .bind(state_sha256)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = row else {
            return Ok(None);
        };
        let deleted = sqlx::query("DELETE FROM oidc_pending WHERE state_sha256 = $1")
            .bind(state_sha256)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if deleted.rows_affected() != 1 {
            return Ok(None);
        }
        Ok(Some(PendingLogin {
            state_sha256: r.try_get("state_sha256")?,
            provider: r.try_get("provider")?,
            nonce: r.try_get("nonce")?,
            pkce_verifier: r.try_get("pkce_verifier")?,
            browser_sha256: r.try_get("browser_sha256")?,
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
        }))
    }

    /// Refuses an identity provider's session (`kind` = `sid`) or token
    /// (`kind` = `jti`) from now until `expires_at`.
    pub async fn revoke_idp(
        &self,
        provider: &str,
        kind: &str,
        value: &str,
        at: &str,
        expires_at: &str,
    ) -> Result<(), CatalogError> {
        sqlx::query(
            "INSERT INTO oidc_revoked (provider, kind, value, revoked_at, expires_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(provider)
        .bind(kind)
        .bind(value)
        .bind(at)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether an identity provider's session or token was revoked here.
    pub async fn idp_revoked(
        &self,
        provider: &str,
        kind: &str,
        value: &str,
    ) -> Result<bool, CatalogError> {
        let row = sqlx::query(
            "SELECT value FROM oidc_revoked WHERE provider = $1 AND kind = $2 AND value = $3",
        )
        .bind(provider)
        .bind(kind)
        .bind(value)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }
}
