//! PDS accounts: who may sign in, and how.
//!
//! Two kinds of account:
//!
//! - **local**: a password, kept only as two verifiers: an Argon2id hash
//!   (password logins over HTTP and Flight SQL, where the password arrives
//!   over TLS) and a SCRAM-SHA-256 verifier (the PostgreSQL protocol, where
//!   the password never crosses the network; see [`scram`]).
//! - **federated**: no password at all; the person signs in with an access
//!   token (the identity issue adds tokens from an OIDC provider).
//!
//! Access tokens are random 256-bit strings; the catalogue keeps only their
//! SHA-256, with an expiry, and disabling an account revokes them all. Every
//! change to an account is written to the audit log before it is applied.
//! Failed sign-ins say "invalid credentials" whatever the reason (unknown
//! account, disabled, wrong password), and take the same time.
#![forbid(unsafe_code)]

pub mod scram;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD as B64, URL_SAFE_NO_PAD as B64URL};
use pds_audit::{AuditLog, Record};
use pds_catalog::{AccountRow, Catalog, TokenRow};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Errors of account operations.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// Sign-in refused. Deliberately vague.
    #[error("invalid credentials")]
    BadCredentials,
    /// Bad input (name, password policy...).
    #[error("{0}")]
    Invalid(String),
    /// No such account.
    #[error("account `{0}` does not exist; `pds user list` lists them")]
    NoAccount(String),
    /// The audit log could not be written: nothing changed.
    #[error("audit log unavailable, nothing changed: {0}")]
    Audit(String),
    /// Catalogue or system failure.
    #[error("{0}")]
    Internal(String),
}

impl From<pds_catalog::CatalogError> for AccountError {
    fn from(e: pds_catalog::CatalogError) -> Self {
        match e {
            pds_catalog::CatalogError::Invalid(m) => AccountError::Invalid(m),
            e => AccountError::Internal(e.to_string()),
        }
    }
}

/// How an account signs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Password (SCRAM on the PostgreSQL protocol).
    Local,
    /// Access token only.
    Federated,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Local => "local",
            Kind::Federated => "federated",
        }
    }
}

/// An account, as the rest of PDS sees it (no verifier).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name (the principal in the audit log and in project members).
    pub name: String,
    /// How it signs in.
    pub kind: Kind,
    /// Platform administrator (projects, members, accounts).
    pub admin: bool,
    /// Whether it is disabled.
    pub disabled: bool,
    /// Creation time.
    pub created_at: String,
}

fn account(r: &AccountRow) -> Account {
    Account {
        name: r.name.clone(),
        kind: if r.kind == "federated" {
            Kind::Federated
        } else {
            Kind::Local
        },
        admin: r.roles.split(',').any(|x| x.trim() == "admin"),
        disabled: r.disabled_at.is_some(),
        created_at: r.created_at.clone(),
    }
}

/// Argon2id parameters for password hashes (OWASP's first choice: 19 MiB,
/// two passes, one lane).
const ARGON_M_KIB: u32 = 19 * 1024;
const ARGON_T: u32 = 2;
const ARGON_P: u32 = 1;

/// Minimum password length. The identity issue adds the full policy and MFA.
pub const MIN_PASSWORD_CHARS: usize = 12;

fn random<const N: usize>() -> Result<[u8; N], AccountError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| AccountError::Internal(format!("no randomness: {e}")))?;
    Ok(b)
}

fn argon(password: &[u8], salt: &[u8], m: u32, t: u32, p: u32) -> Result<[u8; 32], AccountError> {
    let params = argon2::Params::new(m, t, p, Some(32))
        .map_err(|e| AccountError::Internal(format!("Argon2 parameters: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    a.hash_password_into(password, salt, &mut out)
        .map_err(|e| AccountError::Internal(format!("Argon2id: {e}")))?;
    Ok(out)
}

/// Hashes a password as a PHC string (`$argon2id$v=19$m=..,t=..,p=..$salt$hash`).
pub fn hash_password(password: &str) -> Result<String, AccountError> {
    let salt = random::<16>()?;
    let h = argon(password.as_bytes(), &salt, ARGON_M_KIB, ARGON_T, ARGON_P)?;
    Ok(format!(
        "$argon2id$v=19$m={ARGON_M_KIB},t={ARGON_T},p={ARGON_P}${}${}",
        B64.encode(salt),
        B64.encode(h)
    ))
}

/// Checks a password against a PHC string, in constant time for the
/// comparison. A malformed hash never matches.
pub fn verify_password(phc: &str, password: &str) -> bool {
    let parts: Vec<&str> = phc.split('$').collect();
    let [_, "argon2id", "v=19", params, salt, hash] = parts.as_slice() else {
        return false;
    };
    let mut m = 0;
    let mut t = 0;
    let mut p = 0;
    for kv in params.split(',') {
        match kv.split_once('=') {
            Some(("m", v)) => m = v.parse().unwrap_or(0),
            Some(("t", v)) => t = v.parse().unwrap_or(0),
            Some(("p", v)) => p = v.parse().unwrap_or(0),
            _ => return false,
        }
    }
    let (Ok(salt), Ok(expected)) = (B64.decode(salt), B64.decode(hash)) else {
        return false;
    };
    match argon(password.as_bytes(), &salt, m, t, p) {
        Ok(h) => h.ct_eq(expected.as_slice()).into(),
        Err(_) => false,
    }
}

/// Checks a new password against the policy.
pub fn check_password(name: &str, password: &str) -> Result<(), AccountError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AccountError::Invalid(format!(
            "the password must have at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if password.to_lowercase().contains(&name.to_lowercase()) {
        return Err(AccountError::Invalid(
            "the password must not contain the account name".into(),
        ));
    }
    if password.chars().any(|c| c.is_control()) {
        return Err(AccountError::Invalid(
            "the password must not contain control characters".into(),
        ));
    }
    Ok(())
}

/// The SHA-256 of a token, hex: its key in the catalogue.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Prefix of PDS access tokens (lets secret scanners find leaked ones).
pub const TOKEN_PREFIX: &str = "pds_at_";

/// The accounts of one home. Changes are audited first.
#[derive(Debug)]
pub struct Accounts<'a> {
    cat: &'a Catalog,
    audit: &'a AuditLog,
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl<'a> Accounts<'a> {
    /// The accounts of the catalogue, auditing into `audit`.
    pub fn new(cat: &'a Catalog, audit: &'a AuditLog) -> Accounts<'a> {
        Accounts { cat, audit }
    }

    async fn record(
        &self,
        actor: &str,
        action: &str,
        details: serde_json::Value,
    ) -> Result<(), AccountError> {
        self.audit
            .append(Record {
                principal: actor.to_string(),
                action: action.to_string(),
                decision: "done".into(),
                details: Some(details),
                ..Record::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| AccountError::Audit(e.to_string()))
    }

    /// Creates an account. Local accounts need a password.
    pub async fn add(
        &self,
        actor: &str,
        name: &str,
        kind: Kind,
        password: Option<&str>,
        admin: bool,
    ) -> Result<Account, AccountError> {
        pds_project::check_principal(name).map_err(|e| AccountError::Invalid(e.to_string()))?;
        let (hash, verifier) = match (kind, password) {
            (Kind::Local, Some(p)) => {
                check_password(name, p)?;
                let salt = random::<16>()?;
                (
                    Some(hash_password(p)?),
                    Some(scram::Verifier::new(p, &salt, scram::ITERATIONS).encode()),
                )
            }
            (Kind::Local, None) => {
                return Err(AccountError::Invalid(format!(
                    "local account `{name}` needs a password"
                )));
            }
            (Kind::Federated, Some(_)) => {
                return Err(AccountError::Invalid(
                    "a federated account has no password: it signs in with an access token".into(),
                ));
            }
            (Kind::Federated, None) => (None, None),
        };
        if self.cat.account(name).await?.is_some() {
            return Err(AccountError::Invalid(format!(
                "account `{name}` already exists; `pds user passwd {name}` sets a new password"
            )));
        }
        let at = now();
        self.record(
            actor,
            "account.add",
            serde_json::json!({"account": name, "kind": kind.as_str(), "admin": admin}),
        )
        .await?;
        let row = AccountRow {
            name: name.to_string(),
            kind: kind.as_str().into(),
            roles: if admin { "admin".into() } else { String::new() },
            password_hash: hash,
            scram_verifier: verifier,
            created_at: at.clone(),
            created_by: actor.to_string(),
            password_changed_at: password.map(|_| at),
            disabled_at: None,
        };
        self.cat.create_account(&row).await?;
        Ok(account(&row))
    }

    /// Sets a local account's password.
    pub async fn set_password(
        &self,
        actor: &str,
        name: &str,
        password: &str,
    ) -> Result<(), AccountError> {
        let row = self
            .cat
            .account(name)
            .await?
            .ok_or_else(|| AccountError::NoAccount(name.to_string()))?;
        if row.kind != "local" {
            return Err(AccountError::Invalid(format!(
                "`{name}` is a federated account: it has no password"
            )));
        }
        check_password(name, password)?;
        let salt = random::<16>()?;
        let hash = hash_password(password)?;
        let verifier = scram::Verifier::new(password, &salt, scram::ITERATIONS).encode();
        self.record(
            actor,
            "account.passwd",
            serde_json::json!({"account": name}),
        )
        .await?;
        self.cat
            .set_account_password(name, &hash, &verifier, &now())
            .await?;
        Ok(())
    }

    /// Disables (and revokes every token of) or re-enables an account.
    pub async fn set_disabled(
        &self,
        actor: &str,
        name: &str,
        disabled: bool,
    ) -> Result<(), AccountError> {
        if self.cat.account(name).await?.is_none() {
            return Err(AccountError::NoAccount(name.to_string()));
        }
        let action = if disabled {
            "account.disable"
        } else {
            "account.enable"
        };
        self.record(actor, action, serde_json::json!({"account": name}))
            .await?;
        let at = now();
        self.cat
            .set_account_disabled(name, disabled.then_some(at.as_str()))
            .await?;
        Ok(())
    }

    /// Every account.
    pub async fn list(&self) -> Result<Vec<Account>, AccountError> {
        Ok(self.cat.accounts().await?.iter().map(account).collect())
    }

    /// The SCRAM verifier of an enabled local account; `None` otherwise
    /// (the caller runs a decoy exchange).
    pub async fn scram_verifier(
        &self,
        name: &str,
    ) -> Result<Option<scram::Verifier>, AccountError> {
        Ok(self
            .cat
            .account(name)
            .await?
            .filter(|r| r.disabled_at.is_none() && r.kind == "local")
            .and_then(|r| r.scram_verifier)
            .and_then(|v| scram::Verifier::decode(&v)))
    }

    /// Whether `name` is an enabled federated account (signs in by token).
    pub async fn is_federated(&self, name: &str) -> Result<bool, AccountError> {
        Ok(self
            .cat
            .account(name)
            .await?
            .is_some_and(|r| r.kind == "federated" && r.disabled_at.is_none()))
    }

    /// Checks a password. Unknown, disabled and federated accounts cost the
    /// same Argon2id computation as a wrong password.
    pub async fn check_login(&self, name: &str, password: &str) -> Result<Account, AccountError> {
        let row = self.cat.account(name).await?;
        let hash = row
            .as_ref()
            .filter(|r| r.disabled_at.is_none())
            .and_then(|r| r.password_hash.clone());
        // A decoy hash keeps the time of a failed lookup equal to a wrong password.
        let decoy = format!(
            "$argon2id$v=19$m={ARGON_M_KIB},t={ARGON_T},p={ARGON_P}${}${}",
            B64.encode([0u8; 16]),
            B64.encode([0u8; 32])
        );
        let ok = verify_password(hash.as_deref().unwrap_or(&decoy), password);
        match (ok, hash, row) {
            (true, Some(_), Some(r)) => Ok(account(&r)),
            _ => Err(AccountError::BadCredentials),
        }
    }

    /// Issues an access token for an enabled account, valid for `ttl`.
    /// Returns the token (shown once) and its expiry.
    pub async fn issue_token(
        &self,
        actor: &str,
        name: &str,
        purpose: &str,
        ttl: chrono::Duration,
    ) -> Result<(String, String), AccountError> {
        let row = self
            .cat
            .account(name)
            .await?
            .ok_or_else(|| AccountError::NoAccount(name.to_string()))?;
        if row.disabled_at.is_some() {
            return Err(AccountError::Invalid(format!(
                "account `{name}` is disabled"
            )));
        }
        let token = Zeroizing::new(format!("{TOKEN_PREFIX}{}", B64URL.encode(random::<32>()?)));
        let issued = chrono::Utc::now();
        let expires = (issued + ttl).format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let digest = token_digest(&token);
        self.record(
            actor,
            "token.issue",
            serde_json::json!({"account": name, "purpose": purpose, "expires_at": expires, "token_sha256_prefix": &digest[..12]}),
        )
        .await?;
        self.cat
            .insert_token(&TokenRow {
                token_sha256: digest,
                account: name.to_string(),
                purpose: purpose.to_string(),
                issued_at: issued.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                expires_at: expires.clone(),
                revoked_at: None,
            })
            .await?;
        Ok((token.to_string(), expires))
    }

    /// The account a live token belongs to.
    pub async fn check_token(&self, token: &str) -> Result<Account, AccountError> {
        if !token.starts_with(TOKEN_PREFIX) {
            return Err(AccountError::BadCredentials);
        }
        let Some(t) = self.cat.token(&token_digest(token)).await? else {
            return Err(AccountError::BadCredentials);
        };
        if t.revoked_at.is_some() || t.expires_at.as_str() <= now().as_str() {
            return Err(AccountError::BadCredentials);
        }
        match self.cat.account(&t.account).await? {
            Some(r) if r.disabled_at.is_none() => Ok(account(&r)),
            _ => Err(AccountError::BadCredentials),
        }
    }

    /// Revokes a token (sign-out).
    pub async fn revoke_token(&self, actor: &str, token: &str) -> Result<bool, AccountError> {
        let digest = token_digest(token);
        self.record(
            actor,
            "token.revoke",
            serde_json::json!({"token_sha256_prefix": &digest[..12]}),
        )
        .await?;
        Ok(self.cat.revoke_token(&digest, &now()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_round_trip() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password(&h, "correct horse battery"));
        assert!(!verify_password(&h, "correct horse batterY"));
        assert!(!verify_password("$argon2id$v=19$m=8,t=1,p=1$AA$AA", "x"));
        assert!(!verify_password("garbage", "x"));
    }

    #[test]
    fn password_policy() {
        assert!(check_password("alice", "short").is_err());
        assert!(check_password("alice", "my-alice-password-1").is_err());
        assert!(check_password("alice", "a long enough passphrase").is_ok());
    }
}
