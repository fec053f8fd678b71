//! PDS accounts: who may sign in, and how.
//!
//! Three kinds of account:
//!
//! - **local** (a person): a password, kept only as an Argon2id hash, and a
//!   mandatory TOTP second factor ([`mfa`]). Until the person has enrolled
//!   an authenticator, a correct password only yields an enrolment token.
//! - **federated** (a person): no password; the identity provider proves
//!   who they are (`pds-oidc`) and PDS opens a session for them.
//! - **service** (a program): no password, no session; it uses scoped API
//!   tokens (one project, one role, an expiry), shown once.
//!
//! A sign-in opens a **session**: a short-lived access token and a refresh
//! token that rotates at each use (a refresh token used twice revokes the
//! session: it was stolen). Tokens are random 256-bit strings; the
//! catalogue keeps only their SHA-256. Repeated failures lock the name with
//! exponential backoff, known or not (names that are not accounts are
//! counted by digest in the catalogue too), so a lock says nothing about
//! whether the account exists. Every change and every sign-in is audited first.
#![forbid(unsafe_code)]

pub mod mfa;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD as B64, URL_SAFE_NO_PAD as B64URL};
use pds_audit::{AuditLog, Record};
use pds_catalog::{AccountRow, Catalog, SessionRow, TokenRow};
use pds_keys::{KeyStore, SecretKey, WrappedKey};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Errors of account operations.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// Sign-in refused. Deliberately vague.
    #[error("invalid credentials")]
    BadCredentials,
    /// The password was right but the second factor is missing.
    #[error(
        "this account needs its second factor: send the 6-digit code of your authenticator app (`totp`) or a recovery code (`recovery_code`)"
    )]
    SecondFactorRequired,
    /// Too many failures: wait.
    #[error("too many failed sign-ins: try again in {0} s")]
    Locked(u64),
    /// Session ended (idle, expired, logged out): sign in again.
    #[error("{0}: sign in again")]
    SessionEnded(String),
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
    /// A person with a password and a TOTP second factor.
    Local,
    /// A person signed in by an identity provider (OIDC).
    Federated,
    /// A program with scoped API tokens.
    Service,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Local => "local",
            Kind::Federated => "federated",
            Kind::Service => "service",
        }
    }

    fn parse(s: &str) -> Kind {
        match s {
            "federated" => Kind::Federated,
            "service" => Kind::Service,
            _ => Kind::Local,
        }
    }
}

/// An account, as the rest of PDS sees it (no secret).
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
    /// Whether a TOTP second factor is enrolled.
    pub mfa: bool,
    /// Refused sign-ins until then, if locked.
    pub locked_until: Option<String>,
    /// Creation time.
    pub created_at: String,
}

fn account(r: &AccountRow) -> Account {
    Account {
        name: r.name.clone(),
        kind: Kind::parse(&r.kind),
        admin: r.roles.split(',').any(|x| x.trim() == "admin"),
        disabled: r.disabled_at.is_some(),
        mfa: r.totp_enrolled_at.is_some(),
        locked_until: r.locked_until.clone(),
        created_at: r.created_at.clone(),
    }
}

/// Argon2id parameters for password hashes (OWASP's first choice: 19 MiB,
/// two passes, one lane).
const ARGON_M_KIB: u32 = 19 * 1024;
const ARGON_T: u32 = 2;
const ARGON_P: u32 = 1;

/// Minimum password length (ANSSI: 12 for a password guarded by a second
/// factor and a lockout).
pub const MIN_PASSWORD_CHARS: usize = 12;

pub(crate) fn random<const N: usize>() -> Result<[u8; N], AccountError> {
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

/// The key of a name that is not an account in the lock table: its
/// SHA-256, lower-cased first (names are case-insensitive for locking).
fn throttle_key(name: &str) -> String {
    token_digest(&name.to_lowercase())
}

/// A sign-in name as the audit log may show it: names that could not be an
/// account (control characters, megabytes of text) become `?`.
fn audit_name(name: &str) -> &str {
    if pds_project::check_principal(name).is_ok() {
        name
    } else {
        "?"
    }
}

/// Argon2id work at once: each computation holds 19 MiB and a core, so a
/// burst of sign-ins queues here instead of stalling the async runtime.
fn argon_permits() -> &'static tokio::sync::Semaphore {
    static S: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    })
}

/// [`verify_password`] on a blocking thread, at most one per core.
pub async fn verify_password_blocking(phc: String, password: String) -> Result<bool, AccountError> {
    let _permit = argon_permits()
        .acquire()
        .await
        .map_err(|e| AccountError::Internal(e.to_string()))?;
    let password = Zeroizing::new(password);
    tokio::task::spawn_blocking(move || verify_password(&phc, &password))
        .await
        .map_err(|e| AccountError::Internal(format!("password check: {e}")))
}

/// Passwords too common to allow whatever their length.
const COMMON: &[&str] = &[
    "password",
    "motdepasse",
    "azerty",
    "qwerty",
    "123456",
    "letmein",
    "welcome",
    "bienvenue",
    "soleil",
    "admin",
];

/// Checks a new password against the policy: length, not the account name,
/// not built on a common password, at least 5 distinct characters.
pub fn check_password(name: &str, password: &str) -> Result<(), AccountError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AccountError::Invalid(format!(
            "the password must have at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if password.chars().count() > 256 {
        return Err(AccountError::Invalid(
            "the password must have at most 256 characters".into(),
        ));
    }
    let lower = password.to_lowercase();
    if lower.contains(&name.to_lowercase()) {
        return Err(AccountError::Invalid(
            "the password must not contain the account name".into(),
        ));
    }
    if password.chars().any(|c| c.is_control()) {
        return Err(AccountError::Invalid(
            "the password must not contain control characters".into(),
        ));
    }
    let mut distinct: Vec<char> = password.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 5 {
        return Err(AccountError::Invalid(
            "the password must use at least 5 different characters".into(),
        ));
    }
    if let Some(w) = COMMON.iter().find(|w| lower.contains(*w)) {
        return Err(AccountError::Invalid(format!(
            "the password must not be built on a common password ({w:?}); a passphrase of several words works well"
        )));
    }
    Ok(())
}

/// The SHA-256 of a token, hex: its key in the catalogue.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Prefix of session access tokens (lets secret scanners find leaked ones).
pub const TOKEN_PREFIX: &str = "pds_at_";
/// Prefix of refresh tokens.
pub const REFRESH_PREFIX: &str = "pds_rt_";
/// Prefix of service API tokens.
pub const SERVICE_PREFIX: &str = "pds_st_";
/// Prefix of enrolment tokens (they only open the TOTP enrolment).
pub const ENROL_PREFIX: &str = "pds_et_";

/// Whether a string looks like a PDS token (any kind).
pub fn is_pds_token(s: &str) -> bool {
    [TOKEN_PREFIX, REFRESH_PREFIX, SERVICE_PREFIX, ENROL_PREFIX]
        .iter()
        .any(|p| s.starts_with(p))
}

/// Sign-in and session rules.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Failures allowed before the first lock.
    pub free_failures: u32,
    /// First lock; each further failure doubles it.
    pub lock_base: chrono::Duration,
    /// Longest lock.
    pub lock_max: chrono::Duration,
    /// Life of an access token.
    pub access_ttl: chrono::Duration,
    /// A session not refreshed for this long ends.
    pub session_idle: chrono::Duration,
    /// A session ends this long after sign-in, whatever happens.
    pub session_max: chrono::Duration,
    /// Life of an enrolment token.
    pub enrol_ttl: chrono::Duration,
    /// Longest life of a service token.
    pub service_max: chrono::Duration,
    /// TOTP hash.
    pub totp_algorithm: mfa::TotpAlgorithm,
    /// Issuer shown in authenticator apps.
    pub totp_issuer: String,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            free_failures: 5,
            lock_base: chrono::Duration::seconds(30),
            lock_max: chrono::Duration::hours(1),
            access_ttl: chrono::Duration::minutes(15),
            session_idle: chrono::Duration::minutes(20),
            session_max: chrono::Duration::hours(10),
            enrol_ttl: chrono::Duration::minutes(10),
            service_max: chrono::Duration::days(366),
            totp_algorithm: mfa::TotpAlgorithm::Sha256,
            totp_issuer: "PDS".into(),
        }
    }
}

impl Policy {
    /// How long `failures` consecutive failures lock the name.
    pub fn lock_for(&self, failures: i64) -> Option<chrono::Duration> {
        let over = failures - i64::from(self.free_failures);
        if over < 0 {
            return None;
        }
        let factor = 1i64 << over.min(20);
        let secs = self
            .lock_base
            .num_seconds()
            .saturating_mul(factor)
            .min(self.lock_max.num_seconds());
        Some(chrono::Duration::seconds(secs))
    }
}

/// What proved a sign-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondFactor<'a> {
    /// Nothing (refused for an enrolled account).
    None,
    /// A TOTP code.
    Totp(&'a str),
    /// A recovery code.
    Recovery(&'a str),
}

/// What an identity provider said about a person signing in.
#[derive(Debug, Clone, Copy)]
pub struct Federated<'a> {
    /// Provider name.
    pub provider: &'a str,
    /// Assurance level.
    pub acr: Option<&'a str>,
    /// The provider's session id.
    pub sid: Option<&'a str>,
    /// Project roles its claims allow (`None`: any).
    pub eligible_roles: Option<&'a [String]>,
}

/// Tokens of a session.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// Bearer token; also the password on the PostgreSQL protocol and Flight SQL.
    pub access_token: String,
    /// Exchanged for new tokens at `/api/v1/token/refresh`.
    pub refresh_token: String,
    /// Access token expiry (RFC 3339).
    pub access_expires_at: String,
    /// Session end, at the latest (RFC 3339).
    pub session_expires_at: String,
    /// Session id.
    pub session_id: String,
}

/// The result of a correct password.
#[derive(Debug, Clone)]
pub enum LoginOutcome {
    /// Signed in.
    Signed(Tokens),
    /// No second factor yet: this token opens only the enrolment.
    EnrolmentRequired {
        /// The enrolment token.
        token: String,
        /// Its expiry.
        expires_at: String,
    },
}

/// A project and role a service token is limited to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Project id.
    pub project: String,
    /// Role in it.
    pub role: String,
}

/// Who is calling, after a token was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Account name.
    pub name: String,
    /// Platform administrator (never through a service token).
    pub admin: bool,
    /// What proved it: `session`, `service-token` or `oidc:<provider>`.
    pub via: String,
    /// The PDS session, if any.
    pub session: Option<String>,
    /// Service tokens: the only project and role.
    pub scope: Option<Scope>,
    /// Identity-provider tokens: the project roles the claims allow
    /// (`None`: any).
    pub eligible_roles: Option<Vec<String>>,
    /// Identity-provider tokens: what to revoke at logout.
    pub idp: Option<IdpToken>,
    /// Service tokens: the token's digest, to notice its revocation on
    /// connections already open.
    pub token_sha256: Option<String>,
}

/// An identity provider's token, as far as revocation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpToken {
    /// Provider name.
    pub provider: String,
    /// Its session id.
    pub sid: Option<String>,
    /// Its token id.
    pub jti: Option<String>,
    /// Its expiry (seconds since the epoch).
    pub exp: i64,
    /// SHA-256 of the token (revoked by itself when it has no `sid`/`jti`).
    pub sha256: String,
}

impl IdpToken {
    /// The entries of the revocation list that refuse this token: its
    /// session, its id, and the token itself.
    pub fn revocation_keys(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("sid", self.sid.as_deref()),
            ("jti", self.jti.as_deref()),
            ("sha256", Some(self.sha256.as_str())),
        ]
        .into_iter()
        .filter_map(|(kind, v)| v.map(|v| (kind, v)))
    }
}

impl Principal {
    /// Whether this caller may act in `project` where its membership gives
    /// `role`. The error says why not.
    pub fn may_use(&self, project: &str, role: &str) -> Result<(), String> {
        if let Some(s) = &self.scope
            && (s.project != project || s.role != role)
        {
            return Err(format!(
                "this token is limited to project `{}` with role `{}`",
                s.project, s.role
            ));
        }
        if let Some(e) = &self.eligible_roles
            && !e.iter().any(|r| r == role)
        {
            return Err(format!(
                "your identity provider's attributes do not allow the `{role}` role (allowed: {})",
                if e.is_empty() {
                    "none".to_string()
                } else {
                    e.join(", ")
                }
            ));
        }
        Ok(())
    }
}

/// The accounts of one home. Changes are audited first.
#[derive(Debug)]
pub struct Accounts<'a> {
    cat: &'a Catalog,
    audit: &'a AuditLog,
}

fn fmt_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn now() -> String {
    fmt_time(chrono::Utc::now())
}

fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

fn totp_purpose(name: &str) -> String {
    format!("pds/totp/{name}")
}

fn new_token(prefix: &str) -> Result<Zeroizing<String>, AccountError> {
    Ok(Zeroizing::new(format!(
        "{prefix}{}",
        B64URL.encode(random::<32>()?)
    )))
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
        self.record_decision(actor, action, "done", None, details)
            .await
    }

    async fn record_decision(
        &self,
        actor: &str,
        action: &str,
        decision: &str,
        reason: Option<String>,
        details: serde_json::Value,
    ) -> Result<(), AccountError> {
        self.audit
            .append(Record {
                principal: actor.to_string(),
                action: action.to_string(),
                decision: decision.to_string(),
                reason,
                details: Some(details),
                ..Record::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| AccountError::Audit(e.to_string()))
    }

    async fn row(&self, name: &str) -> Result<AccountRow, AccountError> {
        self.cat
            .account(name)
            .await?
            .ok_or_else(|| AccountError::NoAccount(name.to_string()))
    }

    /// Creates an account. Local accounts need a password; the others must
    /// not have one.
    pub async fn add(
        &self,
        actor: &str,
        name: &str,
        kind: Kind,
        password: Option<&str>,
        admin: bool,
    ) -> Result<Account, AccountError> {
        pds_project::check_principal(name).map_err(|e| AccountError::Invalid(e.to_string()))?;
        let hash = match (kind, password) {
            (Kind::Local, Some(p)) => {
                check_password(name, p)?;
                Some(hash_password(p)?)
            }
            (Kind::Local, None) => {
                return Err(AccountError::Invalid(format!(
                    "local account `{name}` needs a password"
                )));
            }
            (Kind::Federated, Some(_)) => {
                return Err(AccountError::Invalid(
                    "a federated account has no password: its identity provider signs it in".into(),
                ));
            }
            (Kind::Service, Some(_)) => {
                return Err(AccountError::Invalid(
                    "a service account has no password: it uses API tokens (`pds user token`)"
                        .into(),
                ));
            }
            (_, None) => None,
        };
        if admin && kind == Kind::Service {
            return Err(AccountError::Invalid(
                "a service account cannot be a platform administrator".into(),
            ));
        }
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
            created_at: at.clone(),
            created_by: actor.to_string(),
            password_changed_at: password.map(|_| at),
            disabled_at: None,
            totp_seed: None,
            totp_enrolled_at: None,
            totp_last_step: None,
            failed_logins: 0,
            locked_until: None,
            idp: None,
        };
        self.cat.create_account(&row).await?;
        Ok(account(&row))
    }

    /// One account.
    pub async fn get(&self, name: &str) -> Result<Account, AccountError> {
        Ok(account(&self.row(name).await?))
    }

    /// Sets a local account's password.
    pub async fn set_password(
        &self,
        actor: &str,
        name: &str,
        password: &str,
    ) -> Result<(), AccountError> {
        let row = self.row(name).await?;
        if row.kind != "local" {
            return Err(AccountError::Invalid(format!(
                "`{name}` is a {} account: it has no password",
                row.kind
            )));
        }
        check_password(name, password)?;
        let hash = hash_password(password)?;
        self.record(
            actor,
            "account.passwd",
            serde_json::json!({"account": name}),
        )
        .await?;
        let at = now();
        self.cat.set_account_password(name, &hash, &at).await?;
        // A new password ends what the old one opened.
        self.cat.revoke_all_of(name, &at).await?;
        Ok(())
    }

    /// Disables (and ends every session and token of) or re-enables an account.
    pub async fn set_disabled(
        &self,
        actor: &str,
        name: &str,
        disabled: bool,
    ) -> Result<(), AccountError> {
        self.row(name).await?;
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
        if disabled {
            self.cat.revoke_all_of(name, &at).await?;
        }
        Ok(())
    }

    /// Removes the second factor and ends every session: the person
    /// enrols again at their next sign-in (lost phone).
    pub async fn reset_mfa(&self, actor: &str, name: &str) -> Result<(), AccountError> {
        let row = self.row(name).await?;
        if row.kind != "local" {
            return Err(AccountError::Invalid(format!(
                "`{name}` is a {} account: PDS holds no second factor for it",
                row.kind
            )));
        }
        self.record(
            actor,
            "account.mfa_reset",
            serde_json::json!({"account": name}),
        )
        .await?;
        self.cat.set_totp_seed(name, None).await?;
        self.cat.revoke_all_of(name, &now()).await?;
        Ok(())
    }

    /// Lifts a lock after failed sign-ins.
    pub async fn unlock(&self, actor: &str, name: &str) -> Result<(), AccountError> {
        self.row(name).await?;
        self.record(
            actor,
            "account.unlock",
            serde_json::json!({"account": name}),
        )
        .await?;
        self.cat.set_login_failures(name, 0, None).await?;
        Ok(())
    }

    /// Every account.
    pub async fn list(&self) -> Result<Vec<Account>, AccountError> {
        Ok(self.cat.accounts().await?.iter().map(account).collect())
    }

    /// Counts this attempt before anything is checked, atomically, so
    /// that parallel attempts cannot outrun the lock: returns the failure
    /// count including it, or refuses while the name is locked. When a
    /// lock has run out, one attempt is checked (the others wait for its
    /// outcome): a failure locks for twice as long, a success clears all.
    async fn begin_attempt(
        &self,
        policy: &Policy,
        name: &str,
        known: bool,
        channel: &str,
    ) -> Result<i64, AccountError> {
        let t = chrono::Utc::now();
        // Past the threshold, the counting statement holds the name while
        // this attempt is checked; `fail` then sets the real lock.
        let free = i64::from(policy.free_failures);
        let hold = fmt_time(t + policy.lock_base);
        let stored = if known {
            Some(
                self.cat
                    .begin_login_attempt(name, &fmt_time(t), free, &hold)
                    .await?,
            )
        } else if pds_project::check_principal(name).is_ok() {
            let stale = fmt_time(t - chrono::Duration::days(1));
            Some(
                self.cat
                    .begin_throttled_attempt(&throttle_key(name), &fmt_time(t), &stale, free, &hold)
                    .await?,
            )
        } else {
            // Not a possible account name: nothing to remember.
            None
        };
        let counted = match stored {
            None => Ok(1),
            Some(Ok(n)) => Ok(n),
            Some(Err(until)) => Err(until
                .as_deref()
                .and_then(parse_time)
                .map(|u| (u - t).num_seconds().max(1) as u64)
                .unwrap_or(1)),
        };
        let refused = counted.err();
        if let Some(left) = refused {
            self.record_decision(
                audit_name(name),
                "login",
                "refused",
                Some("locked after repeated failures".into()),
                serde_json::json!({"channel": channel}),
            )
            .await?;
            return Err(AccountError::Locked(left));
        }
        counted.map_err(|_| AccountError::Internal("lock state".into()))
    }

    async fn set_lock(
        &self,
        name: &str,
        known: bool,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), AccountError> {
        if known {
            self.cat.set_login_lock(name, &fmt_time(until)).await?;
        } else if pds_project::check_principal(name).is_ok() {
            self.cat
                .set_throttle_lock(&throttle_key(name), &fmt_time(until))
                .await?;
        }
        Ok(())
    }

    /// A failed attempt (already counted): locks the name once the count
    /// reaches the threshold, and audits.
    #[allow(clippy::too_many_arguments)]
    async fn fail(
        &self,
        policy: &Policy,
        name: &str,
        known: bool,
        failures: i64,
        channel: &str,
        reason: &str,
    ) -> Result<(), AccountError> {
        let until = policy.lock_for(failures).map(|d| chrono::Utc::now() + d);
        if let Some(u) = until {
            self.set_lock(name, known, u).await?;
        }
        self.record_decision(
            audit_name(name),
            "login",
            "refused",
            Some(reason.to_string()),
            serde_json::json!({"channel": channel, "failures": failures, "locked_until": until.map(fmt_time)}),
        )
        .await
    }

    /// Signs in with a password and a second factor. A wrong password, an
    /// unknown, disabled or non-local account all cost one Argon2id
    /// computation and answer [`AccountError::BadCredentials`]. Failures
    /// count towards a lock, for unknown names too.
    #[allow(clippy::too_many_arguments)]
    pub async fn login(
        &self,
        keys: &KeyStore,
        policy: &Policy,
        name: &str,
        password: &str,
        second: SecondFactor<'_>,
        channel: &str,
    ) -> Result<LoginOutcome, AccountError> {
        let row = self.cat.account(name).await?;
        let failures = self
            .begin_attempt(policy, name, row.is_some(), channel)
            .await?;
        let hash = row
            .as_ref()
            .filter(|r| r.disabled_at.is_none() && r.kind == "local")
            .and_then(|r| r.password_hash.clone());
        // A decoy hash keeps the time of a failed lookup equal to a wrong password.
        let decoy = format!(
            "$argon2id$v=19$m={ARGON_M_KIB},t={ARGON_T},p={ARGON_P}${}${}",
            B64.encode([0u8; 16]),
            B64.encode([0u8; 32])
        );
        let ok = verify_password_blocking(hash.unwrap_or(decoy), password.to_string()).await?;
        let (true, Some(r)) = (ok, row.as_ref().filter(|r| r.password_hash.is_some())) else {
            self.fail(
                policy,
                name,
                row.is_some(),
                failures,
                channel,
                "invalid credentials",
            )
            .await?;
            return Err(AccountError::BadCredentials);
        };
        if r.totp_enrolled_at.is_none() {
            self.cat.set_login_failures(name, 0, None).await?;
            let token = new_token(ENROL_PREFIX)?;
            let expires = fmt_time(chrono::Utc::now() + policy.enrol_ttl);
            self.record_decision(
                name,
                "login",
                "enrolment",
                Some("password accepted; a second factor must be enrolled".into()),
                serde_json::json!({"channel": channel}),
            )
            .await?;
            self.store_token(&token, name, "enrol", channel, &expires, None, None)
                .await?;
            return Ok(LoginOutcome::EnrolmentRequired {
                token: token.to_string(),
                expires_at: expires,
            });
        }
        let method = match second {
            SecondFactor::None => {
                // The password was right: this attempt is not a failure.
                self.cat.undo_login_attempt(name).await?;
                self.record_decision(
                    name,
                    "login",
                    "refused",
                    Some("second factor missing".into()),
                    serde_json::json!({"channel": channel}),
                )
                .await?;
                return Err(AccountError::SecondFactorRequired);
            }
            SecondFactor::Totp(code) => {
                if self.check_totp(keys, policy, r, code).await? {
                    "password+totp"
                } else {
                    self.fail(
                        policy,
                        name,
                        true,
                        failures,
                        channel,
                        "wrong or reused TOTP code",
                    )
                    .await?;
                    return Err(AccountError::BadCredentials);
                }
            }
            SecondFactor::Recovery(code) => {
                if self
                    .cat
                    .spend_recovery_code(name, &mfa::recovery_digest(code), &now())
                    .await?
                {
                    "password+recovery-code"
                } else {
                    self.fail(
                        policy,
                        name,
                        true,
                        failures,
                        channel,
                        "wrong or used recovery code",
                    )
                    .await?;
                    return Err(AccountError::BadCredentials);
                }
            }
        };
        {
            self.cat.set_login_failures(name, 0, None).await?;
        }
        let tokens = self
            .start_session(name, method, None, policy, channel)
            .await?;
        Ok(LoginOutcome::Signed(tokens))
    }

    async fn check_totp(
        &self,
        keys: &KeyStore,
        policy: &Policy,
        r: &AccountRow,
        code: &str,
    ) -> Result<bool, AccountError> {
        let seed = self.seed(keys, r)?;
        let totp = mfa::generator(
            seed.expose(),
            policy.totp_algorithm,
            &policy.totp_issuer,
            &r.name,
        )?;
        let Some(step) =
            mfa::matching_step(&totp, code, chrono::Utc::now().timestamp().max(0) as u64)
        else {
            return Ok(false);
        };
        Ok(self.cat.spend_totp_step(&r.name, step as i64).await?)
    }

    fn seed(&self, keys: &KeyStore, r: &AccountRow) -> Result<SecretKey, AccountError> {
        let wrapped: WrappedKey = r
            .totp_seed
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| {
                AccountError::Internal(format!("account `{}` has no TOTP seed", r.name))
            })?;
        keys.unwrap_data_key(&wrapped, &totp_purpose(&r.name))
            .map_err(|e| AccountError::Internal(format!("TOTP seed of `{}`: {e}", r.name)))
    }

    /// Starts (or restarts) TOTP enrolment: a new seed, wrapped by the
    /// master key, pending until [`Accounts::confirm_enrolment`].
    pub async fn begin_enrolment(
        &self,
        keys: &KeyStore,
        policy: &Policy,
        actor: &str,
        name: &str,
    ) -> Result<mfa::Enrolment, AccountError> {
        let r = self.row(name).await?;
        if r.kind != "local" || r.disabled_at.is_some() {
            return Err(AccountError::Invalid(format!(
                "`{name}` cannot enrol a second factor (only enabled local accounts have one)"
            )));
        }
        if r.totp_enrolled_at.is_some() {
            return Err(AccountError::Invalid(format!(
                "`{name}` already has a second factor; an administrator resets it with `pds user reset-mfa {name}`"
            )));
        }
        let seed = SecretKey::random().map_err(|e| AccountError::Internal(e.to_string()))?;
        let wrapped = keys
            .wrap_key(&seed, &totp_purpose(name))
            .map_err(|e| AccountError::Internal(e.to_string()))?;
        let totp = mfa::generator(
            seed.expose(),
            policy.totp_algorithm,
            &policy.totp_issuer,
            name,
        )?;
        let enrolment = mfa::enrolment(&totp)?;
        self.record(
            actor,
            "account.mfa_enrol_start",
            serde_json::json!({"account": name}),
        )
        .await?;
        let json =
            serde_json::to_string(&wrapped).map_err(|e| AccountError::Internal(e.to_string()))?;
        self.cat.set_totp_seed(name, Some(&json)).await?;
        Ok(enrolment)
    }

    /// Confirms enrolment with a first code. Returns the recovery codes,
    /// shown once.
    pub async fn confirm_enrolment(
        &self,
        keys: &KeyStore,
        policy: &Policy,
        actor: &str,
        name: &str,
        code: &str,
    ) -> Result<Vec<String>, AccountError> {
        let r = self.row(name).await?;
        if r.totp_enrolled_at.is_some() {
            return Err(AccountError::Invalid(format!(
                "`{name}` is already enrolled"
            )));
        }
        if r.totp_seed.is_none() {
            return Err(AccountError::Invalid(format!(
                "`{name}` has no enrolment in progress: start one first"
            )));
        }
        let seed = self.seed(keys, &r)?;
        let totp = mfa::generator(
            seed.expose(),
            policy.totp_algorithm,
            &policy.totp_issuer,
            name,
        )?;
        let Some(step) =
            mfa::matching_step(&totp, code, chrono::Utc::now().timestamp().max(0) as u64)
        else {
            self.record_decision(
                actor,
                "account.mfa_enrol",
                "refused",
                Some("wrong code".into()),
                serde_json::json!({"account": name}),
            )
            .await?;
            return Err(AccountError::Invalid(
                "that code does not match: check the time on your phone and type the code shown now".into(),
            ));
        };
        let codes = mfa::recovery_codes()?;
        let digests: Vec<String> = codes.iter().map(|c| c.1.clone()).collect();
        self.record(
            actor,
            "account.mfa_enrol",
            serde_json::json!({"account": name, "recovery_codes": digests.len()}),
        )
        .await?;
        let seed_json = r.totp_seed.clone().unwrap_or_default();
        self.cat
            .confirm_totp(name, &seed_json, step as i64, &digests, &now())
            .await?;
        Ok(codes.into_iter().map(|c| c.0).collect())
    }

    /// Unused recovery codes left.
    pub async fn recovery_codes_left(&self, name: &str) -> Result<i64, AccountError> {
        Ok(self.cat.recovery_codes_left(name).await?)
    }

    #[allow(clippy::too_many_arguments)]
    async fn store_token(
        &self,
        token: &str,
        name: &str,
        kind: &str,
        purpose: &str,
        expires: &str,
        session: Option<&str>,
        scope: Option<&Scope>,
    ) -> Result<(), AccountError> {
        self.cat
            .insert_token(&TokenRow {
                token_sha256: token_digest(token),
                account: name.to_string(),
                purpose: purpose.to_string(),
                issued_at: now(),
                expires_at: expires.to_string(),
                revoked_at: None,
                kind: kind.to_string(),
                session_id: session.map(str::to_string),
                project: scope.map(|s| s.project.clone()),
                role: scope.map(|s| s.role.clone()),
            })
            .await?;
        Ok(())
    }

    /// Opens a session for a person already authenticated (password and
    /// second factor, or an identity provider).
    #[allow(clippy::too_many_arguments)]
    pub async fn start_session(
        &self,
        name: &str,
        method: &str,
        federation: Option<&Federated<'_>>,
        policy: &Policy,
        channel: &str,
    ) -> Result<Tokens, AccountError> {
        let acr = federation.and_then(|f| f.acr);
        let idp = federation.map(|f| f.provider);
        let idp_sid = federation.and_then(|f| f.sid);
        let roles = federation
            .and_then(|f| f.eligible_roles)
            .map(|r| r.join(","));
        let t = chrono::Utc::now();
        let id = hex::encode(random::<16>()?);
        let session = SessionRow {
            id: id.clone(),
            account: name.to_string(),
            method: method.to_string(),
            acr: acr.map(str::to_string),
            idp: idp.map(str::to_string),
            idp_sid: idp_sid.map(str::to_string),
            roles,
            created_at: fmt_time(t),
            last_seen_at: fmt_time(t),
            expires_at: fmt_time(t + policy.session_max),
            revoked_at: None,
        };
        self.record_decision(
            name,
            "login",
            "allowed",
            None,
            serde_json::json!({"channel": channel, "method": method, "acr": acr, "idp": idp, "session": id}),
        )
        .await?;
        self.cat.insert_session(&session).await?;
        self.session_tokens(&session, policy, channel).await
    }

    async fn session_tokens(
        &self,
        s: &SessionRow,
        policy: &Policy,
        channel: &str,
    ) -> Result<Tokens, AccountError> {
        let t = chrono::Utc::now();
        let end = parse_time(&s.expires_at).unwrap_or(t);
        let access = new_token(TOKEN_PREFIX)?;
        let refresh = new_token(REFRESH_PREFIX)?;
        let access_exp = fmt_time((t + policy.access_ttl).min(end));
        self.record(
            &s.account,
            "token.issue",
            serde_json::json!({"session": s.id, "channel": channel, "expires_at": access_exp,
                "token_sha256_prefix": &token_digest(&access)[..12]}),
        )
        .await?;
        self.store_token(
            &access,
            &s.account,
            "access",
            channel,
            &access_exp,
            Some(&s.id),
            None,
        )
        .await?;
        self.store_token(
            &refresh,
            &s.account,
            "refresh",
            channel,
            &s.expires_at,
            Some(&s.id),
            None,
        )
        .await?;
        Ok(Tokens {
            access_token: access.to_string(),
            refresh_token: refresh.to_string(),
            access_expires_at: access_exp,
            session_expires_at: s.expires_at.clone(),
            session_id: s.id.clone(),
        })
    }

    /// Exchanges a refresh token for new tokens. The old refresh token dies;
    /// presenting a dead one again ends the whole session (theft).
    pub async fn refresh(
        &self,
        policy: &Policy,
        refresh_token: &str,
    ) -> Result<Tokens, AccountError> {
        if !refresh_token.starts_with(REFRESH_PREFIX) {
            return Err(AccountError::BadCredentials);
        }
        let digest = token_digest(refresh_token);
        let Some(t) = self.cat.token(&digest).await? else {
            return Err(AccountError::BadCredentials);
        };
        let Some(sid) = t.session_id.clone().filter(|_| t.kind == "refresh") else {
            return Err(AccountError::BadCredentials);
        };
        let at = now();
        if t.revoked_at.is_some() {
            self.record_decision(
                &t.account,
                "token.refresh",
                "refused",
                Some("refresh token reused: session revoked".into()),
                serde_json::json!({"session": sid}),
            )
            .await?;
            self.cat.revoke_session(&sid, &at).await?;
            return Err(AccountError::SessionEnded(
                "this refresh token was already used, so the session was ended".into(),
            ));
        }
        let s = self
            .cat
            .session(&sid)
            .await?
            .ok_or(AccountError::BadCredentials)?;
        let idle = parse_time(&s.last_seen_at)
            .map(|l| chrono::Utc::now() - l > policy.session_idle)
            .unwrap_or(true);
        let reason = if s.revoked_at.is_some() {
            Some("the session was logged out or revoked".to_string())
        } else if s.expires_at.as_str() <= at.as_str() {
            Some("the session reached its maximum length".to_string())
        } else if idle {
            Some(format!(
                "the session was idle for more than {} minutes",
                policy.session_idle.num_minutes()
            ))
        } else {
            None
        };
        let acct = self.cat.account(&s.account).await?;
        if acct.as_ref().is_none_or(|a| a.disabled_at.is_some()) {
            return Err(AccountError::BadCredentials);
        }
        if let Some(reason) = reason {
            self.record_decision(
                &t.account,
                "token.refresh",
                "refused",
                Some(reason.clone()),
                serde_json::json!({"session": sid}),
            )
            .await?;
            return Err(AccountError::SessionEnded(reason));
        }
        if !self.cat.revoke_token(&digest, &at).await? {
            // Lost a race with another refresh of the same token.
            self.cat.revoke_session(&sid, &at).await?;
            return Err(AccountError::SessionEnded(
                "this refresh token was already used, so the session was ended".into(),
            ));
        }
        self.cat.touch_session(&sid, &at).await?;
        self.session_tokens(&s, policy, "refresh").await
    }

    /// Issues a service API token: one project, one role, an expiry.
    /// Returns the token (shown once) and its expiry.
    pub async fn issue_service_token(
        &self,
        actor: &str,
        policy: &Policy,
        name: &str,
        scope: &Scope,
        ttl: chrono::Duration,
    ) -> Result<(String, String), AccountError> {
        let r = self.row(name).await?;
        if r.kind != "service" {
            return Err(AccountError::Invalid(format!(
                "`{name}` is a {} account: API tokens are for service accounts (`pds user add NAME --service`); people sign in with their second factor",
                r.kind
            )));
        }
        if r.disabled_at.is_some() {
            return Err(AccountError::Invalid(format!(
                "account `{name}` is disabled"
            )));
        }
        if ttl <= chrono::Duration::zero() || ttl > policy.service_max {
            return Err(AccountError::Invalid(format!(
                "a service token lives between 1 minute and {} days",
                policy.service_max.num_days()
            )));
        }
        let role = self
            .cat
            .memberships(name)
            .await?
            .into_iter()
            .find(|(p, _)| p.id == scope.project)
            .map(|(_, role)| role);
        if role.as_deref() != Some(scope.role.as_str()) {
            return Err(AccountError::Invalid(format!(
                "`{name}` is not a member of project `{}` with role `{}`; add it first (`pds project member add`)",
                scope.project, scope.role
            )));
        }
        let token = new_token(SERVICE_PREFIX)?;
        let expires = fmt_time(chrono::Utc::now() + ttl);
        self.record(
            actor,
            "token.issue",
            serde_json::json!({"account": name, "kind": "service", "project": scope.project, "role": scope.role,
                "expires_at": expires, "token_sha256_prefix": &token_digest(&token)[..12]}),
        )
        .await?;
        self.store_token(&token, name, "service", "api", &expires, None, Some(scope))
            .await?;
        Ok((token.to_string(), expires))
    }

    /// The tokens of an account (digests, never tokens).
    pub async fn tokens(&self, name: &str) -> Result<Vec<TokenRow>, AccountError> {
        self.row(name).await?;
        Ok(self.cat.tokens_of(name).await?)
    }

    /// Revokes an account's tokens by digest prefix.
    pub async fn revoke_token_id(
        &self,
        actor: &str,
        name: &str,
        prefix: &str,
    ) -> Result<u64, AccountError> {
        self.row(name).await?;
        self.record(
            actor,
            "token.revoke",
            serde_json::json!({"account": name, "token_sha256_prefix": prefix}),
        )
        .await?;
        let at = now();
        let n = self.cat.revoke_token_prefix(name, prefix, &at).await?;
        // A session's token: the whole session goes (its refresh token
        // would otherwise mint a new one, and its connections would stay).
        let prefix = prefix.to_ascii_lowercase();
        for t in self.cat.tokens_of(name).await? {
            if t.token_sha256.starts_with(&prefix)
                && let Some(sid) = t.session_id
            {
                self.cat.revoke_session(&sid, &at).await?;
            }
        }
        Ok(n)
    }

    /// Checks an access or service token: live, its session live, its
    /// account enabled. Enrolment and refresh tokens are refused here.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AccountError> {
        let kind = if token.starts_with(TOKEN_PREFIX) {
            "access"
        } else if token.starts_with(SERVICE_PREFIX) {
            "service"
        } else {
            return Err(AccountError::BadCredentials);
        };
        let t = self.live_token(token, kind).await?;
        let mut eligible_roles = None;
        if let Some(sid) = &t.session_id {
            let s = self
                .cat
                .session(sid)
                .await?
                .ok_or(AccountError::BadCredentials)?;
            if s.revoked_at.is_some() || s.expires_at <= now() {
                return Err(AccountError::BadCredentials);
            }
            eligible_roles = s.roles.map(|r| {
                r.split(',')
                    .filter(|x| !x.is_empty())
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            });
        }
        let r = self.cat.account(&t.account).await?;
        let Some(r) = r.filter(|r| r.disabled_at.is_none()) else {
            return Err(AccountError::BadCredentials);
        };
        let scope = match (t.project, t.role) {
            (Some(project), Some(role)) => Some(Scope { project, role }),
            _ => None,
        };
        Ok(Principal {
            admin: scope.is_none() && account(&r).admin,
            name: r.name,
            via: if kind == "service" {
                "service-token".into()
            } else {
                "session".into()
            },
            session: t.session_id,
            scope,
            eligible_roles,
            idp: None,
            token_sha256: (kind == "service").then_some(t.token_sha256),
        })
    }

    /// Whether what let `p` in still holds: the account is enabled, its
    /// session is neither logged out nor past its end, its service token
    /// not revoked or expired. Checked on every statement, so a logout, a
    /// revocation or a disabled account also stops connections already
    /// open. (An access token's own 15-minute life only bounds when a
    /// connection can be opened.) The error is the reason.
    pub async fn still_valid(&self, p: &Principal) -> Result<(), String> {
        let internal = |e: pds_catalog::CatalogError| e.to_string();
        let at = now();
        match self.cat.account(&p.name).await.map_err(internal)? {
            Some(r) if r.disabled_at.is_none() => {}
            _ => return Err(format!("account `{}` is disabled", p.name)),
        }
        if let Some(id) = &p.session {
            match self.cat.session(id).await.map_err(internal)? {
                Some(s) if s.revoked_at.is_none() && s.expires_at > at => {}
                _ => return Err("the session was logged out, revoked or has ended".into()),
            }
        }
        if let Some(d) = &p.token_sha256 {
            match self.cat.token(d).await.map_err(internal)? {
                Some(t) if t.revoked_at.is_none() && t.expires_at > at => {}
                _ => return Err("the service token was revoked or has expired".into()),
            }
        }
        Ok(())
    }

    async fn live_token(&self, token: &str, kind: &str) -> Result<TokenRow, AccountError> {
        let Some(t) = self.cat.token(&token_digest(token)).await? else {
            return Err(AccountError::BadCredentials);
        };
        if t.kind != kind || t.revoked_at.is_some() || t.expires_at.as_str() <= now().as_str() {
            return Err(AccountError::BadCredentials);
        }
        Ok(t)
    }

    /// The account an enrolment token was issued to.
    pub async fn enrolment_account(&self, token: &str) -> Result<String, AccountError> {
        if !token.starts_with(ENROL_PREFIX) {
            return Err(AccountError::BadCredentials);
        }
        Ok(self.live_token(token, "enrol").await?.account)
    }

    /// Ends the session a token belongs to (logout), or revokes the token
    /// alone if it has no session. Returns the session row, if any.
    pub async fn logout(
        &self,
        actor: &str,
        token: &str,
    ) -> Result<Option<SessionRow>, AccountError> {
        let digest = token_digest(token);
        let t = self.cat.token(&digest).await?;
        let at = now();
        match t.and_then(|t| t.session_id) {
            Some(sid) => {
                self.record(actor, "logout", serde_json::json!({"session": sid}))
                    .await?;
                self.cat.revoke_session(&sid, &at).await?;
                Ok(self.cat.session(&sid).await?)
            }
            None => {
                self.record(
                    actor,
                    "token.revoke",
                    serde_json::json!({"token_sha256_prefix": &digest[..12]}),
                )
                .await?;
                self.cat.revoke_token(&digest, &at).await?;
                Ok(None)
            }
        }
    }

    /// Makes sure a federated account exists for a person an identity
    /// provider vouched for (created on first sign-in, audited), and
    /// returns it. A disabled account stays disabled.
    pub async fn provision_federated(
        &self,
        name: &str,
        provider: &str,
    ) -> Result<Account, AccountError> {
        match self.cat.account(name).await? {
            Some(r) if r.kind == "federated" && r.idp.as_deref() == Some(provider) => {
                Ok(account(&r))
            }
            // Created ahead of the first sign-in by an administrator:
            // the first provider to vouch for the name keeps it.
            Some(r) if r.kind == "federated" && r.idp.is_none() => {
                self.record(
                    &format!("oidc:{provider}"),
                    "account.bind_idp",
                    serde_json::json!({"account": name, "idp": provider}),
                )
                .await?;
                if !self.cat.set_account_idp(name, provider).await? {
                    return Err(AccountError::Invalid(format!(
                        "`{name}` was just bound to another identity provider"
                    )));
                }
                Ok(account(&r))
            }
            Some(r) => Err(AccountError::Invalid(format!(
                "`{name}` is not an account of identity provider `{provider}` ({} account{})",
                r.kind,
                r.idp.map(|i| format!(" of `{i}`")).unwrap_or_default()
            ))),
            None => {
                let a = self
                    .add(
                        &format!("oidc:{provider}"),
                        name,
                        Kind::Federated,
                        None,
                        false,
                    )
                    .await?;
                if !self.cat.set_account_idp(name, provider).await? {
                    return Err(AccountError::Invalid(format!(
                        "`{name}` was just bound to another identity provider"
                    )));
                }
                Ok(a)
            }
        }
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
        assert!(check_password("alice", "aaaaaaaaaaaaaaaa").is_err());
        assert!(check_password("alice", "Azerty-2026-bureau").is_err());
        assert!(check_password("alice", "a long enough passphrase").is_ok());
    }

    #[test]
    fn lock_doubles_then_caps() {
        let p = Policy::default();
        assert_eq!(p.lock_for(4), None);
        assert_eq!(p.lock_for(5), Some(chrono::Duration::seconds(30)));
        assert_eq!(p.lock_for(6), Some(chrono::Duration::seconds(60)));
        assert_eq!(p.lock_for(8), Some(chrono::Duration::seconds(240)));
        assert_eq!(p.lock_for(40), Some(chrono::Duration::hours(1)));
    }

    #[test]
    fn service_scope_and_eligible_roles() {
        let p = Principal {
            name: "etl".into(),
            admin: false,
            via: "service-token".into(),
            session: None,
            scope: Some(Scope {
                project: "p1".into(),
                role: "researcher".into(),
            }),
            eligible_roles: None,
            idp: None,
            token_sha256: None,
        };
        assert!(p.may_use("p1", "researcher").is_ok());
        assert!(p.may_use("p2", "researcher").is_err());
        assert!(p.may_use("p1", "lead").is_err());
        let f = Principal {
            scope: None,
            eligible_roles: Some(vec!["researcher".into()]),
            ..p
        };
        assert!(f.may_use("p9", "researcher").is_ok());
        assert!(f.may_use("p9", "checker").unwrap_err().contains("checker"));
    }
}
