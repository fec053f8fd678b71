//! Editing, deleting, reordering or truncating audit rows in the database
//! is detected by `verify`, which names the first bad entry. Run on SQLite
//! and on the PostgreSQL at 127.0.0.1:5432 (`PDS_TEST_PG_URL` overrides).

use std::time::Duration;

use pds_audit::{AuditLog, Record, parse_public_key, verify};
use pds_catalog::Catalog;
use pds_keys::{KeyStore, MasterSource};
use sqlx::AssertSqlSafe;

async fn exec(url: &str, sql: &str) {
    use sqlx::Connection;
    if url.starts_with("sqlite://") {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(AssertSqlSafe(sql.to_string()))
            .execute(&mut c)
            .await
            .unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(AssertSqlSafe(sql.to_string()))
            .execute(&mut c)
            .await
            .unwrap();
    }
}

fn record(i: usize) -> Record {
    Record {
        principal: format!("user{}", i % 3),
        project: Some("proj-a".into()),
        action: "statement".into(),
        decision: "allowed".into(),
        statement: Some(format!("SELECT {i}")),
        ..Record::default()
    }
}

/// A log of 12 entries with a checkpoint after the 5th and one after the
/// 10th (the one-hour interval never triggers on its own here).
async fn fresh(url: &str, dir: &std::path::Path) -> (Catalog, AuditLog) {
    let keyfile = dir.join("master.key");
    if !keyfile.exists() {
        MasterSource::create_key_file(&keyfile).unwrap();
    }
    let kdir = dir.join("keys");
    let keys = if kdir.exists() {
        KeyStore::open(&kdir, &MasterSource::KeyFile(keyfile)).unwrap()
    } else {
        std::fs::create_dir_all(&kdir).unwrap();
        KeyStore::create(&kdir, &MasterSource::KeyFile(keyfile)).unwrap()
    };
    let cat = Catalog::connect(url).await.unwrap();
    let log = AuditLog::open(
        cat.clone(),
        &keys,
        "pds.test/audit",
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    for i in 1..=12 {
        log.append(record(i)).await.unwrap();
        if i == 5 || i == 10 {
            log.checkpoint().await.unwrap();
        }
    }
    (cat, log)
}

async fn problem(cat: &Catalog, log: &AuditLog) -> (Option<i64>, String) {
    let key = parse_public_key(&log.public_key_hex()).unwrap();
    let r = verify(cat, &key, &[]).await.unwrap();
    let p = r.problem.expect("verification should fail");
    (p.seq, p.what)
}

async fn scenario(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (cat, log) = fresh(url, dir.path()).await;
    let key = parse_public_key(&log.public_key_hex()).unwrap();
    let ok = verify(&cat, &key, &[]).await.unwrap();
    assert_eq!(ok.problem, None);
    assert_eq!(ok.entries, 12);
    // The first append signs a checkpoint too (none existed): 3 in all.
    assert_eq!(ok.checkpoints, 3);
    assert_eq!(ok.last_checkpoint_size, 10);
    assert_eq!(ok.unchecked_tail, 2);

    // An exported checkpoint is checked as well; another key's is refused.
    let cps = cat.checkpoints().await.unwrap();
    let outside = vec![cps[1].note.clone()];
    assert_eq!(verify(&cat, &key, &outside).await.unwrap().problem, None);
    let other = parse_public_key(&hex::encode([1u8; 32]));
    if let Ok(other) = other {
        assert!(verify(&cat, &other, &[]).await.unwrap().problem.is_some());
    }

    // 1. Editing the statement of entry 4.
    exec(
        url,
        "UPDATE audit_entries SET body = REPLACE(body, 'SELECT 4', 'SELECT 44') WHERE seq = 4",
    )
    .await;
    let (seq, what) = problem(&cat, &log).await;
    assert_eq!(seq, Some(4));
    assert!(what.contains("modified"), "{what}");
    exec(
        url,
        "UPDATE audit_entries SET body = REPLACE(body, 'SELECT 44', 'SELECT 4') WHERE seq = 4",
    )
    .await;
    assert_eq!(verify(&cat, &key, &[]).await.unwrap().problem, None);

    // 2. Editing an indexed column only (who did it).
    exec(
        url,
        "UPDATE audit_entries SET principal = 'someone-else' WHERE seq = 7",
    )
    .await;
    let (seq, what) = problem(&cat, &log).await;
    assert_eq!(seq, Some(7));
    assert!(what.contains("indexed columns"), "{what}");
    exec(
        url,
        "UPDATE audit_entries SET principal = 'user1' WHERE seq = 7",
    )
    .await;
    assert_eq!(verify(&cat, &key, &[]).await.unwrap().problem, None);

    // 3. Reordering: entries 8 and 9 swap their contents.
    exec(url, "UPDATE audit_entries SET seq = -8 WHERE seq = 8").await;
    exec(url, "UPDATE audit_entries SET seq = 8 WHERE seq = 9").await;
    exec(url, "UPDATE audit_entries SET seq = 9 WHERE seq = -8").await;
    let (seq, what) = problem(&cat, &log).await;
    assert_eq!(seq, Some(8));
    assert!(
        what.contains("modified") || what.contains("reordered"),
        "{what}"
    );
    exec(url, "UPDATE audit_entries SET seq = -8 WHERE seq = 8").await;
    exec(url, "UPDATE audit_entries SET seq = 8 WHERE seq = 9").await;
    exec(url, "UPDATE audit_entries SET seq = 9 WHERE seq = -8").await;
    assert_eq!(verify(&cat, &key, &[]).await.unwrap().problem, None);

    // 4. Deleting entry 3.
    exec(url, "DELETE FROM audit_entries WHERE seq = 3").await;
    let (seq, what) = problem(&cat, &log).await;
    assert_eq!(seq, Some(3));
    assert!(what.contains("missing"), "{what}");

    // 5. Truncating: a fresh log loses its last 4 entries (the checkpoint
    //    of size 10 no longer fits).
    let dir2 = tempfile::tempdir().unwrap();
    let url2 = if url.starts_with("sqlite://") {
        format!("sqlite://{}", dir2.path().join("c.db").display())
    } else {
        url.to_string()
    };
    if !url.starts_with("sqlite://") {
        exec(url, "DELETE FROM audit_entries").await;
        exec(url, "DELETE FROM audit_checkpoints").await;
    }
    let (cat2, log2) = fresh(&url2, dir.path()).await;
    exec(&url2, "DELETE FROM audit_entries WHERE seq > 8").await;
    let (seq, what) = problem(&cat2, &log2).await;
    assert_eq!(seq, Some(9));
    assert!(what.contains("truncated"), "{what}");
    // Renumbering what is left to hide a deletion breaks the seals.
    exec(&url2, "DELETE FROM audit_entries WHERE seq = 2").await;
    exec(
        &url2,
        "UPDATE audit_entries SET seq = seq - 1 WHERE seq > 2",
    )
    .await;
    let (seq, _) = problem(&cat2, &log2).await;
    assert_eq!(seq, Some(2));
}

#[tokio::test]
async fn tampering_is_detected_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("catalogue.db").display());
    scenario(&url).await;
}

#[tokio::test]
async fn tampering_is_detected_on_postgresql() {
    use sqlx::Connection;
    let base = std::env::var("PDS_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let db = format!("pds_audit_test_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&base)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (set PDS_TEST_PG_URL)");
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{db}"),
        None => panic!("bad PDS_TEST_PG_URL"),
    };
    scenario(&url).await;
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE {db} WITH (FORCE)")))
        .execute(&mut admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn concurrent_writers_never_share_a_position() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("catalogue.db").display());
    let (cat, log) = fresh(&url, dir.path()).await;
    let log = std::sync::Arc::new(log);
    let mut tasks = Vec::new();
    for t in 0..4 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                log.append(record(100 + t * 10 + i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let key = parse_public_key(&log.public_key_hex()).unwrap();
    let r = verify(&cat, &key, &[]).await.unwrap();
    assert_eq!(r.problem, None);
    assert_eq!(r.entries, 52);
}
