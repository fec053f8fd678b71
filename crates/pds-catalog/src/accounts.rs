//! Account and access-token rows. The catalogue stores what `pds-accounts`
//! decides (verifiers, roles, token digests); it never sees a password or a
//! token.

use sqlx::Row;

use crate::{Catalog, CatalogError};

/// An account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRow {
    /// Login name.
    pub name: String,
    /// `local` or `federated`.
    pub kind: String,
    /// Comma-separated platform roles (`admin`), possibly empty.
    pub roles: String,
    /// Argon2id PHC string (local accounts).
    pub password_hash: Option<String>,
    /// Creation time.
    pub created_at: String,
    /// Who created it.
    pub created_by: String,
    /// When the password was last set.
    pub password_changed_at: Option<String>,
    /// When it was disabled, if it is.
    pub disabled_at: Option<String>,
    /// The TOTP seed, wrapped by the master key (JSON), if one is set.
    pub totp_seed: Option<String>,
    /// When the TOTP enrolment was confirmed (`None`: pending or absent).
    pub totp_enrolled_at: Option<String>,
    /// The last TOTP time step accepted (codes are single-use).
    pub totp_last_step: Option<i64>,
    /// Consecutive failed sign-ins.
    pub failed_logins: i64,
    /// Sign-ins are refused until then (RFC 3339), after repeated failures.
    pub locked_until: Option<String>,
    /// Federated accounts: the identity provider they belong to.
    pub idp: Option<String>,
}

/// An access token as stored (its digest, never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// SHA-256 of the token, hex.
    pub token_sha256: String,
    /// Whose.
    pub account: String,
    /// `login`, `cli`...
    pub purpose: String,
    /// Issue time.
    pub issued_at: String,
    /// Expiry time.
    pub expires_at: String,
    /// Revocation time.
    pub revoked_at: Option<String>,
    /// `access`, `refresh`, `service` or `enrol`.
    pub kind: String,
    /// The session it belongs to (access and refresh tokens).
    pub session_id: Option<String>,
    /// The only project it opens (service tokens).
    pub project: Option<String>,
    /// The role it carries in that project (service tokens).
    pub role: Option<String>,
}

fn account_from(r: &sqlx::any::AnyRow) -> Result<AccountRow, sqlx::Error> {
    Ok(AccountRow {
        name: r.try_get("name")?,
        kind: r.try_get("kind")?,
        roles: r.try_get("roles")?,
        password_hash: r.try_get("password_hash")?,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
        password_changed_at: r.try_get("password_changed_at")?,
        disabled_at: r.try_get("disabled_at")?,
        totp_seed: r.try_get("totp_seed")?,
        totp_enrolled_at: r.try_get("totp_enrolled_at")?,
        totp_last_step: r.try_get("totp_last_step")?,
        failed_logins: r.try_get("failed_logins")?,
        locked_until: r.try_get("locked_until")?,
        idp: r.try_get("idp")?,
    })
}

pub(crate) fn token_from(r: &sqlx::any::AnyRow) -> Result<TokenRow, sqlx::Error> {
    Ok(TokenRow {
        token_sha256: r.try_get("token_sha256")?,
        account: r.try_get("account")?,
        purpose: r.try_get("purpose")?,
        issued_at: r.try_get("issued_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
        kind: r.try_get("kind")?,
        session_id: r.try_get("session_id")?,
        project: r.try_get("project")?,
        role: r.try_get("role")?,
    })
}

macro_rules! token_select {
    () => {
        "SELECT token_sha256, account, purpose, issued_at, expires_at, revoked_at, kind, session_id, project, role FROM access_tokens"
    };
}
pub(crate) use token_select;

macro_rules! account_select {
    () => {
        "SELECT name, kind, roles, password_hash, created_at, created_by, password_changed_at, disabled_at, totp_seed, totp_enrolled_at, totp_last_step, failed_logins, locked_until, idp FROM accounts"
    };
}

impl Catalog {
    /// Creates an account; fails if the name is taken.
    pub async fn create_account(&self, a: &AccountRow) -> Result<(), CatalogError> {
        let mut tx = self.pool.begin().await?;
        let exists = sqlx::query("SELECT name FROM accounts WHERE name = $1")
            .bind(&a.name)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(CatalogError::Invalid(format!(
                "account `{}` already exists; `pds user passwd {}` sets a new password",
                a.name, a.name
            )));
        }
        sqlx::query(
            "INSERT INTO accounts (name, kind, roles, password_hash, created_at, created_by, password_changed_at, disabled_at, idp) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8)",
        )
        .bind(&a.name)
        .bind(&a.kind)
        .bind(&a.roles)
        .bind(&a.password_hash)
        .bind(&a.created_at)
        .bind(&a.created_by)
        .bind(&a.password_changed_at)
        .bind(&a.idp)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// One account, if it exists.
    pub async fn account(&self, name: &str) -> Result<Option<AccountRow>, CatalogError> {
        let row = sqlx::query(concat!(account_select!(), " WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(account_from).transpose()?)
    }

    /// Every account, by name.
    pub async fn accounts(&self) -> Result<Vec<AccountRow>, CatalogError> {
        let rows = sqlx::query(concat!(account_select!(), " ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(account_from).collect::<Result<_, _>>()?)
    }

    /// Replaces an account's password hash. Returns whether it exists.
    pub async fn set_account_password(
        &self,
        name: &str,
        password_hash: &str,
        at: &str,
    ) -> Result<bool, CatalogError> {
        let r = sqlx::query(
            "UPDATE accounts SET password_hash = $1, password_changed_at = $2 WHERE name = $3",
        )
        .bind(password_hash)
        .bind(at)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Disables (`Some(time)`) or re-enables (`None`) an account, and on
    /// disabling revokes its tokens, in one transaction. Returns whether it
    /// exists.
    pub async fn set_account_disabled(
        &self,
        name: &str,
        disabled_at: Option<&str>,
    ) -> Result<bool, CatalogError> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("UPDATE accounts SET disabled_at = $1 WHERE name = $2")
            .bind(disabled_at)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if let Some(at) = disabled_at {
            sqlx::query(
                "UPDATE access_tokens SET revoked_at = $1 WHERE account = $2 AND revoked_at IS NULL",
            )
            .bind(at)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    /// Stores a new token digest.
    pub async fn insert_token(&self, t: &TokenRow) -> Result<(), CatalogError> {
        sqlx::query(
            "INSERT INTO access_tokens (token_sha256, account, purpose, issued_at, expires_at, revoked_at, kind, session_id, project, role) VALUES ($1, $2, $3, $4, $5, NULL, $6, $7, $8, $9)",
        )
        .bind(&t.token_sha256)
        .bind(&t.account)
        .bind(&t.purpose)
        .bind(&t.issued_at)
        .bind(&t.expires_at)
        .bind(&t.kind)
        .bind(&t.session_id)
        .bind(&t.project)
        .bind(&t.role)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The token with this digest, if any.
    pub async fn token(&self, sha256: &str) -> Result<Option<TokenRow>, CatalogError> {
        let row = sqlx::query(concat!(token_select!(), " WHERE token_sha256 = $1"))
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(token_from).transpose()?)
    }

    /// Revokes one token. Returns whether a live token was revoked.
    pub async fn revoke_token(&self, sha256: &str, at: &str) -> Result<bool, CatalogError> {
        let r = sqlx::query(
            "UPDATE access_tokens SET revoked_at = $1 WHERE token_sha256 = $2 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(sha256)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }
}
