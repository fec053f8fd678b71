//! The catalogue against both back-ends: SQLite (a temporary file) and the
//! PostgreSQL server on 127.0.0.1:5432 (a fresh database per run, dropped at
//! the end). `PDS_TEST_PG_URL` overrides the server URL.

use pds_catalog::{
    Backend, Catalog, CatalogError, ColumnInfo, DataFile, NewSnapshot, SourceFile, TableInfo,
};

fn snapshot(files: usize) -> NewSnapshot {
    NewSnapshot {
        dataset: "snds".into(),
        created_by: "steward".into(),
        source_dir: "/deliveries/2026-11".into(),
        storage_prefix: "snapshots/1".into(),
        wrapped_key: "{\"purpose\":\"pds/snapshot/1\"}".into(),
        note: "test".into(),
        sources: vec![SourceFile {
            name: "ER_PRS_F_2021.csv".into(),
            table: "ER_PRS_F".into(),
            bytes: 1234,
            sha256: "ab".repeat(32),
            rows_loaded: 10,
            rows_rejected: 0,
        }],
        tables: vec![TableInfo {
            name: "ER_PRS_F".into(),
            title: "Table des prestations".into(),
            rows: 10,
            bytes: 999,
            columns: vec![
                ColumnInfo {
                    name: "BEN_NIR_PSA".into(),
                    data_type: "Utf8".into(),
                    description: "Identifiant".into(),
                    nomenclature: "".into(),
                },
                ColumnInfo {
                    name: "PRS_NAT_REF".into(),
                    data_type: "Int64".into(),
                    description: "Nature".into(),
                    nomenclature: "IR_NAT_V".into(),
                },
            ],
            files: (0..files)
                .map(|i| DataFile {
                    path: format!("snapshots/1/ER_PRS_F/flx=2021-0{}/part.parquet", i + 1),
                    partition: format!("2021-0{}", i + 1),
                    rows: 5,
                    bytes: 500,
                    sha256: "cd".repeat(32),
                })
                .collect(),
        }],
    }
}

async fn exercise(cat: &Catalog) {
    assert!(matches!(
        cat.latest("snds").await,
        Err(CatalogError::Empty(_))
    ));
    cat.ensure_dataset("snds", "Système national des données de santé")
        .await
        .unwrap();
    cat.ensure_dataset("snds", "again").await.unwrap();
    let id = cat.next_snapshot_id().await.unwrap();
    assert_eq!(id, 1);
    assert_eq!(cat.commit_snapshot(id, &snapshot(2)).await.unwrap(), 1);
    // A stale id is refused and changes nothing.
    let e = cat.commit_snapshot(1, &snapshot(2)).await.unwrap_err();
    assert!(e.to_string().contains("no longer the next"), "{e}");
    // A snapshot whose source names an undeclared table is refused.
    let mut bad = snapshot(1);
    bad.sources[0].table = "ER_XXX_F".into();
    assert!(matches!(
        cat.commit_snapshot(2, &bad).await,
        Err(CatalogError::Invalid(_))
    ));
    // A failing statement inside the transaction leaves no partial snapshot:
    // the same file path twice violates the primary key after some inserts.
    let mut dup = snapshot(2);
    let f = dup.tables[0].files[0].clone();
    dup.tables[0].files.push(f);
    assert!(cat.commit_snapshot(2, &dup).await.is_err());
    assert_eq!(
        cat.snapshots().await.unwrap().len(),
        1,
        "no partial snapshot after a failed commit"
    );
    assert_eq!(cat.next_snapshot_id().await.unwrap(), 2);

    assert_eq!(cat.commit_snapshot(2, &snapshot(3)).await.unwrap(), 2);
    let all = cat.snapshots().await.unwrap();
    assert_eq!(all.iter().map(|s| s.id).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(all[1].parent, Some(1));
    assert_eq!(all[0].parent, None);
    assert_eq!((all[1].tables, all[1].rows, all[1].bytes), (1, 10, 999));
    assert_eq!(cat.latest("snds").await.unwrap().id, 2);
    let tables = cat.tables(2).await.unwrap();
    assert_eq!(tables.len(), 1);
    assert_eq!(tables[0].columns[1].nomenclature, "IR_NAT_V");
    assert_eq!(tables[0].files.len(), 3);
    assert_eq!(
        cat.tables(1).await.unwrap()[0].files.len(),
        2,
        "older snapshots are unchanged"
    );
    assert_eq!(cat.sources(1).await.unwrap()[0].sha256, "ab".repeat(32));
    assert!(matches!(
        cat.snapshot(9).await,
        Err(CatalogError::NoSnapshot(9))
    ));
    cat.set_wrapped_key(1, "rewrapped").await.unwrap();
    assert_eq!(cat.snapshot(1).await.unwrap().wrapped_key, "rewrapped");
    assert!(cat.set_wrapped_key(9, "x").await.is_err());
}

#[tokio::test]
async fn sqlite_catalogue() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("catalogue.db").display());
    let cat = Catalog::connect(&url).await.unwrap();
    assert_eq!(cat.backend(), Backend::Sqlite);
    exercise(&cat).await;
    cat.close().await;
    // Reopening migrates nothing and keeps the data.
    let again = Catalog::connect(&url).await.unwrap();
    assert_eq!(again.snapshots().await.unwrap().len(), 2);
}

#[tokio::test]
async fn postgres_catalogue() {
    use sqlx::Connection;
    let base = std::env::var("PDS_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let db = format!("pds_catalog_test_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&base)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (set PDS_TEST_PG_URL)");
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{db}"),
        None => panic!("bad PDS_TEST_PG_URL"),
    };
    let cat = Catalog::connect(&url).await.unwrap();
    assert_eq!(cat.backend(), Backend::Postgres);
    exercise(&cat).await;
    cat.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {db}")))
        .execute(&mut admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn unsupported_url_is_refused() {
    let e = Catalog::connect("mysql://x").await.unwrap_err();
    assert!(e.to_string().contains("sqlite://"));
}
