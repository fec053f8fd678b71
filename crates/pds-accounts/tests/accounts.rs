//! Accounts on a real SQLite catalogue: the whole local sign-in (password,
//! TOTP enrolment, codes used once, recovery codes), sessions and refresh,
//! lockout, service tokens, disabling, and the audit entries they leave.

use std::time::Duration;

use pds_accounts::{
    AccountError, Accounts, Kind, LoginOutcome, Policy, Scope, SecondFactor, Tokens, mfa,
};
use pds_audit::AuditLog;
use pds_catalog::{AuditFilter, Catalog};
use pds_keys::{KeyStore, MasterSource};

const PW: &str = "a long enough passphrase";

/// A catalogue: SQLite in `dir`, or (`pg`) a fresh database on the
/// PostgreSQL server of `PDS_TEST_PG_URL` (default the machine's).
async fn setup_on(dir: &std::path::Path, pg: Option<&str>) -> (Catalog, AuditLog, KeyStore) {
    let keyfile = dir.join("master.key");
    MasterSource::create_key_file(&keyfile).unwrap();
    let kdir = dir.join("keys");
    std::fs::create_dir_all(&kdir).unwrap();
    let keys = KeyStore::create(&kdir, &MasterSource::KeyFile(keyfile)).unwrap();
    let url = match pg {
        None => format!("sqlite://{}", dir.join("catalogue.db").display()),
        Some(name) => pg_database(name).await,
    };
    let cat = Catalog::connect(&url).await.unwrap();
    let log = AuditLog::open(
        cat.clone(),
        &keys,
        "pds.test/audit",
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    (cat, log, keys)
}

async fn setup(dir: &std::path::Path) -> (Catalog, AuditLog, KeyStore) {
    setup_on(dir, None).await
}

/// Creates (replacing) database `name` on the test PostgreSQL server; the
/// next run replaces it again, so at most one copy stays behind.
async fn pg_database(name: &str) -> String {
    use sqlx::Connection;
    let base = std::env::var("PDS_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let db = name;
    let mut admin = sqlx::PgConnection::connect(&base)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (set PDS_TEST_PG_URL)");
    for sql in [
        format!("DROP DATABASE IF EXISTS {db}"),
        format!("CREATE DATABASE {db}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{db}"),
        None => panic!("bad PDS_TEST_PG_URL"),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn signed(o: LoginOutcome) -> Tokens {
    match o {
        LoginOutcome::Signed(t) => t,
        other => panic!("expected a session, got {other:?}"),
    }
}

/// Creates `name` and enrols its authenticator; returns the otpauth URI and
/// the recovery codes.
async fn enrolled(
    a: &Accounts<'_>,
    keys: &KeyStore,
    policy: &Policy,
    name: &str,
) -> (String, Vec<String>) {
    a.add("steward", name, Kind::Local, Some(PW), false)
        .await
        .unwrap();
    let token = match a
        .login(keys, policy, name, PW, SecondFactor::None, "test")
        .await
        .unwrap()
    {
        LoginOutcome::EnrolmentRequired { token, .. } => token,
        other => panic!("expected enrolment, got {other:?}"),
    };
    assert!(token.starts_with(pds_accounts::ENROL_PREFIX));
    assert_eq!(a.enrolment_account(&token).await.unwrap(), name);
    // An enrolment token is not an access token.
    assert!(a.authenticate(&token).await.is_err());
    let e = a.begin_enrolment(keys, policy, name, name).await.unwrap();
    assert!(e.otpauth_uri.contains("algorithm=SHA256"));
    // A wrong first code is refused and changes nothing.
    let good = mfa::code_at(&e.otpauth_uri, now()).unwrap();
    let wrong = format!("{:06}", (good.parse::<u32>().unwrap() + 1) % 1_000_000);
    assert!(matches!(
        a.confirm_enrolment(keys, policy, name, name, &wrong).await,
        Err(AccountError::Invalid(_))
    ));
    assert!(!a.get(name).await.unwrap().mfa);
    let codes = a
        .confirm_enrolment(keys, policy, name, name, &good)
        .await
        .unwrap();
    assert_eq!(codes.len(), mfa::RECOVERY_CODES);
    assert!(a.get(name).await.unwrap().mfa);
    (e.otpauth_uri, codes)
}

#[tokio::test]
async fn password_totp_recovery_sessions_and_refresh() {
    totp_flow(None).await;
}

async fn totp_flow(pg: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let (cat, log, keys) = setup_on(dir.path(), pg).await;
    let a = Accounts::new(&cat, &log);
    let p = Policy::default();
    let (uri, codes) = enrolled(&a, &keys, &p, "alice").await;

    // At rest: a seed wrapped for this account only, no password, no codes.
    let row = cat.account("alice").await.unwrap().unwrap();
    let seed = row.totp_seed.clone().unwrap();
    let secret = uri
        .split("secret=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    assert!(!seed.contains(secret));
    let wrapped: pds_keys::WrappedKey = serde_json::from_str(&seed).unwrap();
    assert!(keys.unwrap_data_key(&wrapped, "pds/totp/bob").is_err());
    assert!(keys.unwrap_data_key(&wrapped, "pds/totp/alice").is_ok());
    assert!(!row.password_hash.unwrap().contains(PW));

    // The password alone is not enough.
    assert!(matches!(
        a.login(&keys, &p, "alice", PW, SecondFactor::None, "test")
            .await,
        Err(AccountError::SecondFactorRequired)
    ));
    // The code that confirmed the enrolment was spent: replay refused.
    let spent = mfa::code_at(&uri, now()).unwrap();
    assert!(matches!(
        a.login(&keys, &p, "alice", PW, SecondFactor::Totp(&spent), "test")
            .await,
        Err(AccountError::BadCredentials)
    ));
    // The next time step's code is inside the window and unused.
    let next = mfa::code_at(&uri, now() + mfa::STEP_SECS).unwrap();
    let s1 = signed(
        a.login(&keys, &p, "alice", PW, SecondFactor::Totp(&next), "test")
            .await
            .unwrap(),
    );
    // ... once.
    assert!(
        a.login(&keys, &p, "alice", PW, SecondFactor::Totp(&next), "test")
            .await
            .is_err()
    );
    // A code two steps ahead is outside the window.
    let far = mfa::code_at(&uri, now() + 3 * mfa::STEP_SECS).unwrap();
    assert!(
        a.login(&keys, &p, "alice", PW, SecondFactor::Totp(&far), "test")
            .await
            .is_err()
    );
    // A wrong password with a good code is refused.
    assert!(matches!(
        a.login(
            &keys,
            &p,
            "alice",
            "not the password at all",
            SecondFactor::Recovery(&codes[1]),
            "test"
        )
        .await,
        Err(AccountError::BadCredentials)
    ));
    // Recovery codes: each works once, typed in any case.
    let s2 = signed(
        a.login(
            &keys,
            &p,
            "alice",
            PW,
            SecondFactor::Recovery(&codes[0].to_lowercase()),
            "test",
        )
        .await
        .unwrap(),
    );
    assert!(
        a.login(
            &keys,
            &p,
            "alice",
            PW,
            SecondFactor::Recovery(&codes[0]),
            "test"
        )
        .await
        .is_err()
    );
    assert_eq!(a.recovery_codes_left("alice").await.unwrap(), 9);
    a.unlock("steward", "alice").await.unwrap();

    // Access tokens authenticate; refresh tokens do not.
    let who = a.authenticate(&s1.access_token).await.unwrap();
    assert_eq!((who.name.as_str(), who.via.as_str()), ("alice", "session"));
    assert!(a.authenticate(&s1.refresh_token).await.is_err());
    assert!(a.authenticate("pds_at_forged").await.is_err());

    // Refresh rotates; a refresh token used twice ends the session.
    let s1b = a.refresh(&p, &s1.refresh_token).await.unwrap();
    assert_ne!(s1b.access_token, s1.access_token);
    assert_eq!(s1b.session_id, s1.session_id);
    assert!(a.authenticate(&s1b.access_token).await.is_ok());
    assert!(matches!(
        a.refresh(&p, &s1.refresh_token).await,
        Err(AccountError::SessionEnded(_))
    ));
    assert!(a.authenticate(&s1b.access_token).await.is_err());
    assert!(a.authenticate(&s1.access_token).await.is_err());

    // An idle session cannot be refreshed.
    let idle = Policy {
        session_idle: chrono::Duration::seconds(-1),
        ..Policy::default()
    };
    match a.refresh(&idle, &s2.refresh_token).await {
        Err(AccountError::SessionEnded(m)) => assert!(m.contains("idle"), "{m}"),
        other => panic!("expected an idle refusal, got {other:?}"),
    }

    // Logout ends the session and every token in it.
    a.logout("alice", &s2.access_token).await.unwrap();
    assert!(a.authenticate(&s2.access_token).await.is_err());
    assert!(a.refresh(&p, &s2.refresh_token).await.is_err());

    // Every step is in the audit log, which verifies.
    let entries = cat.audit_entries(&AuditFilter::default()).await.unwrap();
    let count = |action: &str, decision: &str| {
        entries
            .iter()
            .filter(|e| e.action == action && e.decision == decision)
            .count()
    };
    assert!(count("login", "allowed") >= 2);
    assert!(count("login", "refused") >= 5);
    assert_eq!(count("account.mfa_enrol", "done"), 1);
    assert_eq!(count("account.mfa_enrol", "refused"), 1);
    assert_eq!(count("logout", "done"), 1);
    assert!(count("token.refresh", "refused") >= 1);
    // Codes and tokens never reach the log.
    for e in &entries {
        let text = format!("{:?}", e);
        assert!(!text.contains(&s1.access_token) && !text.contains(&codes[0]));
    }
}

#[tokio::test]
async fn lockout_backs_off_for_known_and_unknown_names() {
    lockout(None).await;
}

/// The same on PostgreSQL: the conditional counters and the upsert of
/// unknown names are the statements that differ most between the two.
#[tokio::test]
async fn lockout_and_totp_on_postgres() {
    lockout(Some("pds_accounts_lock")).await;
    totp_flow(Some("pds_accounts_totp")).await;
}

async fn lockout(pg: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let (cat, log, keys) = setup_on(dir.path(), pg).await;
    let a = Accounts::new(&cat, &log);
    let p = Policy {
        free_failures: 3,
        ..Policy::default()
    };
    let (uri, codes) = enrolled(&a, &keys, &p, "carol").await;
    for name in ["carol", "nobody"] {
        for _ in 0..3 {
            assert!(matches!(
                a.login(
                    &keys,
                    &p,
                    name,
                    "wrong password!!",
                    SecondFactor::None,
                    "test"
                )
                .await,
                Err(AccountError::BadCredentials)
            ));
        }
        // Locked now, even with the right password, for 30 s (base).
        match a
            .login(&keys, &p, name, PW, SecondFactor::None, "test")
            .await
        {
            Err(AccountError::Locked(s)) => assert!((25..=30).contains(&s), "{s}"),
            other => panic!("{name}: expected a lock, got {other:?}"),
        }
    }
    let row = cat.account("carol").await.unwrap().unwrap();
    assert_eq!(row.failed_logins, 3);
    assert!(row.locked_until.is_some());
    // The next failure doubles the lock.
    a.unlock("steward", "carol").await.unwrap();
    cat.set_login_failures("carol", 3, None).await.unwrap();
    assert!(
        a.login(
            &keys,
            &p,
            "carol",
            "wrong password!!",
            SecondFactor::None,
            "test"
        )
        .await
        .is_err()
    );
    match a
        .login(&keys, &p, "carol", PW, SecondFactor::None, "test")
        .await
    {
        Err(AccountError::Locked(s)) => assert!((55..=60).contains(&s), "{s}"),
        other => panic!("expected a 60 s lock, got {other:?}"),
    }
    // When a lock runs out, the right credentials get in (and the counter
    // is cleared); the lock only ever delays.
    cat.set_login_failures("carol", 7, Some("2000-01-01T00:00:00Z"))
        .await
        .unwrap();
    signed(
        a.login(
            &keys,
            &p,
            "carol",
            PW,
            SecondFactor::Recovery(&codes[0]),
            "test",
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        cat.account("carol").await.unwrap().unwrap().failed_logins,
        0
    );
    // After an expired lock, one more failure locks again, for longer.
    cat.set_login_failures("carol", 7, Some("2000-01-01T00:00:00Z"))
        .await
        .unwrap();
    assert!(matches!(
        a.login(
            &keys,
            &p,
            "carol",
            "wrong password!!",
            SecondFactor::None,
            "test"
        )
        .await,
        Err(AccountError::BadCredentials)
    ));
    match a
        .login(&keys, &p, "carol", PW, SecondFactor::None, "test")
        .await
    {
        Err(AccountError::Locked(s)) => assert!(s > 60, "{s}"),
        other => panic!("expected a longer lock, got {other:?}"),
    }
    // An administrator lifts it; success resets the counter.
    a.unlock("steward", "carol").await.unwrap();
    let code = mfa::code_at(&uri, now() + mfa::STEP_SECS).unwrap();
    signed(
        a.login(&keys, &p, "carol", PW, SecondFactor::Totp(&code), "test")
            .await
            .unwrap(),
    );
    assert_eq!(
        cat.account("carol").await.unwrap().unwrap().failed_logins,
        0
    );
}

#[tokio::test]
async fn kinds_service_tokens_reset_and_disable() {
    let dir = tempfile::tempdir().unwrap();
    let (cat, log, keys) = setup(dir.path()).await;
    let a = Accounts::new(&cat, &log);
    let p = Policy::default();
    let (uri, _) = enrolled(&a, &keys, &p, "dave").await;

    // Passwords only for people with local accounts.
    assert!(matches!(
        a.add("steward", "etl", Kind::Service, Some(PW), false)
            .await,
        Err(AccountError::Invalid(_))
    ));
    assert!(matches!(
        a.add("steward", "etl", Kind::Service, None, true).await,
        Err(AccountError::Invalid(_))
    ));
    a.add("steward", "etl", Kind::Service, None, false)
        .await
        .unwrap();
    // A service account cannot sign in with a password, nor get a session.
    assert!(
        a.login(&keys, &p, "etl", PW, SecondFactor::None, "test")
            .await
            .is_err()
    );
    let scope = Scope {
        project: "p1".into(),
        role: "researcher".into(),
    };
    // Tokens only for service accounts that are members with that role.
    match a
        .issue_service_token("steward", &p, "dave", &scope, chrono::Duration::days(1))
        .await
    {
        Err(AccountError::Invalid(m)) => assert!(m.contains("service accounts"), "{m}"),
        other => panic!("{other:?}"),
    }
    match a
        .issue_service_token("steward", &p, "etl", &scope, chrono::Duration::days(1))
        .await
    {
        Err(AccountError::Invalid(m)) => assert!(m.contains("not a member"), "{m}"),
        other => panic!("{other:?}"),
    }
    match a
        .issue_service_token("steward", &p, "etl", &scope, chrono::Duration::days(400))
        .await
    {
        Err(AccountError::Invalid(m)) => assert!(m.contains("days"), "{m}"),
        other => panic!("{other:?}"),
    }

    // Resetting MFA ends sessions; the next sign-in enrols again.
    let code = mfa::code_at(&uri, now() + mfa::STEP_SECS).unwrap();
    let s = signed(
        a.login(&keys, &p, "dave", PW, SecondFactor::Totp(&code), "test")
            .await
            .unwrap(),
    );
    a.reset_mfa("steward", "dave").await.unwrap();
    assert!(a.authenticate(&s.access_token).await.is_err());
    assert!(matches!(
        a.login(&keys, &p, "dave", PW, SecondFactor::None, "test")
            .await,
        Ok(LoginOutcome::EnrolmentRequired { .. })
    ));
    assert_eq!(a.recovery_codes_left("dave").await.unwrap(), 0);

    // Disabling refuses sign-in with the right password (same answer).
    a.set_disabled("steward", "dave", true).await.unwrap();
    assert!(matches!(
        a.login(&keys, &p, "dave", PW, SecondFactor::None, "test")
            .await,
        Err(AccountError::BadCredentials)
    ));
    // Federated accounts are provisioned once and never get a password.
    let f = a.provision_federated("psc-810001", "psc").await.unwrap();
    assert_eq!(f.kind, Kind::Federated);
    assert!(a.provision_federated("psc-810001", "psc").await.is_ok());
    // Another provider naming the same person is refused.
    match a.provision_federated("psc-810001", "chu").await {
        Err(AccountError::Invalid(m)) => assert!(m.contains("`psc`"), "{m}"),
        other => panic!("{other:?}"),
    }
    // An account created ahead by an administrator binds to the first
    // provider that vouches for it, and only that one.
    a.add("steward", "chu-42", Kind::Federated, None, false)
        .await
        .unwrap();
    assert!(a.provision_federated("chu-42", "chu").await.is_ok());
    assert!(a.provision_federated("chu-42", "psc").await.is_err());
    assert!(a.provision_federated("etl", "psc").await.is_err());
    assert!(
        a.login(&keys, &p, "psc-810001", PW, SecondFactor::None, "test")
            .await
            .is_err()
    );
}
