//! The gate with its catalogue (projects, members, keys, audit log) on
//! PostgreSQL, as in production: the PostgreSQL at 127.0.0.1:5432
//! (`PDS_TEST_PG_URL` overrides), a fresh database per run.

use std::sync::Arc;

use pds_audit::{parse_public_key, verify};
use pds_gate::{Gate, GateError, Target};
use pds_project::perimeter::Perimeter;
use pds_project::{AccessMode, NewProject, Role};
use sqlx::{AssertSqlSafe, Connection};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_statements_and_audit_on_postgresql() {
    let base = std::env::var("PDS_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let db = format!("pds_gate_test_{}", std::process::id());
    let mut admin_conn = sqlx::PgConnection::connect(&base)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (set PDS_TEST_PG_URL)");
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
        .execute(&mut admin_conn)
        .await
        .unwrap();
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin_conn)
        .await
        .unwrap();
    let url = match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{db}"),
        None => panic!("bad PDS_TEST_PG_URL"),
    };

    let dir = tempfile::tempdir().unwrap();
    let delivery = dir.path().join("delivery");
    pds_synth::generate(
        &pds_synth::Config {
            beneficiaries: 120,
            first_year: 2022,
            last_year: 2022,
            seed: 3,
            out: delivery.clone(),
            format: pds_synth::Format::Csv,
            threads: Some(2),
        },
        &|_| {},
    )
    .unwrap();
    let root = dir.path().join("home");
    pds_home::Home::init(&root, &pds_home::InitMaster::KeyFile(dir.path().join("k")))
        .await
        .unwrap();
    // Point the home at PostgreSQL.
    let cfg = root.join(pds_home::CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace(
            "url = \"sqlite://catalogue.db\"",
            &format!("url = \"{url}\""),
        ),
    )
    .unwrap();
    let h = pds_home::Home::open(&root).unwrap();
    assert!(h.catalogue_url().starts_with("postgres://"));
    let opts = pds_load::LoadOptions {
        threads: 2,
        ..Default::default()
    };
    pds_load::load(&h, &delivery, &opts, Arc::new(|_: &pds_load::Progress| {}))
        .await
        .unwrap();

    let g = Gate::open(&h).await.unwrap();
    let admin = g.admin("steward");
    admin
        .create(&NewProject {
            id: "pg-proj".into(),
            title: "On PostgreSQL".into(),
            authorisation: "CNIL DR-2026-077".into(),
            starts_on: "2020-01-01".into(),
            expires_on: "2099-12-31".into(),
            mode: AccessMode::RowLevel,
            snapshot: None,
            perimeter: Perimeter::all_columns(&["IR_BEN_R", "ER_PRS_F"]),
            cohort: Vec::new(),
        })
        .await
        .unwrap();
    admin
        .grant("pg-proj", "alice", Role::Researcher)
        .await
        .unwrap();
    let t = Target::Project("pg-proj".into());
    let (_, b) = g
        .execute(
            "alice",
            &t,
            "SELECT COUNT(DISTINCT BEN_NIR_PSA) AS n FROM ER_PRS_F",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(b.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    match g.execute("bob", &t, "SELECT 1").await {
        Err(GateError::Refused(m)) => assert!(m.contains("not a member"), "{m}"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    let entries = g
        .catalog()
        .audit_entries(&pds_catalog::AuditFilter {
            project: Some("pg-proj".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e.decision.as_str()).collect();
    assert_eq!(actions, ["done", "done", "allowed", "completed", "refused"]);
    let key = parse_public_key(&g.audit().public_key_hex()).unwrap();
    assert_eq!(verify(g.catalog(), &key, &[]).await.unwrap().problem, None);
    g.catalog().close().await;
    drop(g);
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE {db} WITH (FORCE)")))
        .execute(&mut admin_conn)
        .await
        .unwrap();
}
