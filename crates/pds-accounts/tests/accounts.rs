//! Accounts on a real SQLite catalogue: sign-in, tokens, disabling, the
//! refusals, and the audit entries every change leaves.

use std::time::Duration;

use pds_accounts::{AccountError, Accounts, Kind, scram};
use pds_audit::AuditLog;
use pds_catalog::{AuditFilter, Catalog};
use pds_keys::{KeyStore, MasterSource};

const PW: &str = "a long enough passphrase";

async fn setup(dir: &std::path::Path) -> (Catalog, AuditLog) {
    let keyfile = dir.join("master.key");
    MasterSource::create_key_file(&keyfile).unwrap();
    let kdir = dir.join("keys");
    std::fs::create_dir_all(&kdir).unwrap();
    let keys = KeyStore::create(&kdir, &MasterSource::KeyFile(keyfile)).unwrap();
    let url = format!("sqlite://{}", dir.join("catalogue.db").display());
    let cat = Catalog::connect(&url).await.unwrap();
    let log = AuditLog::open(
        cat.clone(),
        &keys,
        "pds.test/audit",
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    (cat, log)
}

#[tokio::test]
async fn sign_in_tokens_disable_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let (cat, log) = setup(dir.path()).await;
    let a = Accounts::new(&cat, &log);

    let alice = a
        .add("steward", "alice", Kind::Local, Some(PW), false)
        .await
        .unwrap();
    assert_eq!(
        (alice.kind, alice.admin, alice.disabled),
        (Kind::Local, false, false)
    );
    // The catalogue holds verifiers, never the password.
    let row = cat.account("alice").await.unwrap().unwrap();
    assert!(
        row.password_hash
            .as_deref()
            .unwrap()
            .starts_with("$argon2id$")
    );
    assert!(!row.password_hash.as_deref().unwrap().contains(PW));
    let v = scram::Verifier::decode(row.scram_verifier.as_deref().unwrap()).unwrap();
    assert_eq!(v.iterations, scram::ITERATIONS);
    assert_eq!(a.scram_verifier("alice").await.unwrap(), Some(v));

    // Password sign-in: right, wrong, unknown and federated all answer alike.
    assert_eq!(a.check_login("alice", PW).await.unwrap().name, "alice");
    a.add("steward", "fed", Kind::Federated, None, false)
        .await
        .unwrap();
    for (user, pw) in [
        ("alice", "a long enough passphrasE"),
        ("ghost", PW),
        ("fed", PW),
    ] {
        let e = a.check_login(user, pw).await.unwrap_err();
        assert!(matches!(e, AccountError::BadCredentials), "{user}: {e}");
        assert_eq!(e.to_string(), "invalid credentials");
    }
    assert!(a.is_federated("fed").await.unwrap());
    assert_eq!(a.scram_verifier("fed").await.unwrap(), None);

    // Tokens: only the digest is stored; a forged or revoked token fails.
    let (token, expires) = a
        .issue_token("alice", "alice", "test", chrono::Duration::minutes(5))
        .await
        .unwrap();
    assert!(token.starts_with(pds_accounts::TOKEN_PREFIX) && token.len() > 40);
    assert!(expires > chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string());
    let stored = cat
        .token(&pds_accounts::token_digest(&token))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.account, "alice");
    assert_eq!(a.check_token(&token).await.unwrap().name, "alice");
    assert!(a.check_token("pds_at_forged").await.is_err());
    assert!(a.check_token(&token[..token.len() - 1]).await.is_err());
    let (expired, _) = a
        .issue_token("alice", "alice", "test", chrono::Duration::seconds(-1))
        .await
        .unwrap();
    assert!(a.check_token(&expired).await.is_err());

    // Disabling revokes every token and stops password and SCRAM sign-in.
    a.set_disabled("steward", "alice", true).await.unwrap();
    assert!(a.check_token(&token).await.is_err());
    assert!(a.check_login("alice", PW).await.is_err());
    assert_eq!(a.scram_verifier("alice").await.unwrap(), None);
    a.set_disabled("steward", "alice", false).await.unwrap();
    assert!(
        a.check_token(&token).await.is_err(),
        "a revoked token stays revoked"
    );
    assert!(a.check_login("alice", PW).await.is_ok());

    // A new password replaces both verifiers.
    a.set_password("alice", "alice", "another long passphrase")
        .await
        .unwrap();
    assert!(a.check_login("alice", PW).await.is_err());
    assert!(
        a.check_login("alice", "another long passphrase")
            .await
            .is_ok()
    );

    // Bad input is refused and changes nothing.
    let before = a.list().await.unwrap();
    for (name, kind, pw, why) in [
        ("bob", Kind::Local, Some("short"), "at least 12"),
        ("bob", Kind::Local, Some("bob-bob-bob-bob"), "account name"),
        ("bob", Kind::Local, None, "needs a password"),
        ("bob", Kind::Federated, Some(PW), "no password"),
        ("bad name", Kind::Local, Some(PW), "account name"),
        ("alice", Kind::Local, Some(PW), "already exists"),
    ] {
        let e = a.add("steward", name, kind, pw, false).await.unwrap_err();
        assert!(e.to_string().contains(why), "{name}: {e}");
    }
    assert_eq!(a.list().await.unwrap(), before);
    let e = a.set_password("steward", "fed", PW).await.unwrap_err();
    assert!(e.to_string().contains("federated"), "{e}");
    assert!(matches!(
        a.set_disabled("steward", "nobody", true).await,
        Err(AccountError::NoAccount(_))
    ));

    // Every change is in the audit log, under who made it.
    let entries = cat.audit_entries(&AuditFilter::default()).await.unwrap();
    let actions: Vec<String> = entries.iter().map(|e| e.action.clone()).collect();
    for want in [
        "account.add",
        "token.issue",
        "account.disable",
        "account.enable",
        "account.passwd",
    ] {
        assert!(
            actions.iter().any(|a| a == want),
            "{want} not in {actions:?}"
        );
    }
    assert!(
        entries.iter().all(|e| !e.body.contains(PW)),
        "a password reached the audit log"
    );
    assert!(
        entries.iter().all(|e| !e.body.contains(&token)),
        "a token reached the audit log"
    );
}
