//! SQL on loaded snapshots: answers match the delivered CSV, statements that
//! write or reach outside the snapshot are refused, keys stay out of SQL.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use pds_home::{Home, InitMaster};
use pds_query::{Format, SnapshotKeys, SnapshotSession, context, format};

fn synth(dir: &Path, n: u64, seed: u64) {
    let cfg = pds_synth::Config {
        beneficiaries: n,
        first_year: 2021,
        last_year: 2021,
        seed,
        out: dir.to_path_buf(),
        format: pds_synth::Format::Csv,
        threads: Some(2),
    };
    pds_synth::generate(&cfg, &|_| {}).unwrap();
}

fn csv_column(path: &Path, col: &str) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let i = lines
        .next()
        .unwrap()
        .split(';')
        .position(|h| h == col)
        .unwrap();
    lines
        .map(|l| l.split(';').nth(i).unwrap_or("").to_string())
        .collect()
}

async fn loaded(dir: &Path) -> Home {
    let delivery = dir.join("delivery");
    synth(&delivery, 300, 5);
    let h = Home::init(&dir.join("home"), &InitMaster::KeyFile(dir.join("k")))
        .await
        .unwrap();
    let opts = pds_load::LoadOptions {
        threads: 2,
        ..Default::default()
    };
    pds_load::load(&h, &delivery, &opts, Arc::new(|_: &pds_load::Progress| {}))
        .await
        .unwrap();
    h
}

async fn one_i64(s: &SnapshotSession, sql: &str) -> i64 {
    let (_, batches) = s.sql(sql).await.unwrap();
    let b = &batches[0];
    assert_eq!((b.num_rows(), b.num_columns()), (1, 1), "{sql}");
    b.column(0).as_primitive::<Int64Type>().value(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_match_the_delivery_and_the_session_is_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let h = loaded(dir.path()).await;
    let delivery = dir.path().join("delivery");
    let s = SnapshotSession::open(&h, None).await.unwrap();
    assert_eq!(s.snapshot, 1);
    for t in ["ER_PRS_F", "ER_PHA_F", "IR_BEN_R", "IR_PHA_R", "T_MCO21B"] {
        assert!(s.tables.iter().any(|n| n == t), "{t}: {:?}", s.tables);
    }

    // Counts equal the CSV's, across all flow-month files.
    let prs_rows = csv_column(&delivery.join("ER_PRS_F_2021.csv"), "BEN_NIR_PSA").len();
    assert_eq!(
        one_i64(&s, "SELECT COUNT(*) FROM ER_PRS_F").await,
        prs_rows as i64
    );
    let people: HashSet<String> = csv_column(&delivery.join("IR_BEN_R.csv"), "BEN_NIR_PSA")
        .into_iter()
        .collect();
    assert_eq!(
        one_i64(&s, "SELECT COUNT(DISTINCT BEN_NIR_PSA) FROM IR_BEN_R").await,
        people.len() as i64
    );
    // A sum over a typed column equals the CSV's (amounts in the CNAM dialect use `,` or `.`).
    let paid: f64 = csv_column(&delivery.join("ER_PRS_F_2021.csv"), "PRS_PAI_MNT")
        .iter()
        .filter(|v| !v.is_empty())
        .map(|v| v.replace(',', ".").parse::<f64>().unwrap())
        .sum();
    let (_, b) = s
        .sql("SELECT SUM(PRS_PAI_MNT) FROM ER_PRS_F")
        .await
        .unwrap();
    let got = b[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Float64Type>()
        .value(0);
    assert!(
        (got - paid).abs() < 0.01 * paid.abs().max(1.0),
        "{got} vs {paid}"
    );
    // Pseudonyms link DCIR to the beneficiary table (no clear id anywhere).
    assert_eq!(
        one_i64(
            &s,
            "SELECT COUNT(*) FROM ER_PRS_F p LEFT JOIN (SELECT DISTINCT BEN_NIR_PSA FROM IR_BEN_R) b \
             ON p.BEN_NIR_PSA = b.BEN_NIR_PSA WHERE b.BEN_NIR_PSA IS NULL"
        )
        .await,
        0
    );
    let clear = people.iter().next().unwrap();
    assert_eq!(
        one_i64(
            &s,
            &format!("SELECT COUNT(*) FROM IR_BEN_R WHERE BEN_NIR_PSA = '{clear}'")
        )
        .await,
        0
    );
    // The referential joins the drug lines without a cast.
    assert!(
        one_i64(
            &s,
            "SELECT COUNT(*) FROM ER_PHA_F f JOIN IR_PHA_R r ON f.PHA_PRS_C13 = r.PHA_CIP_C13"
        )
        .await
            > 0
    );

    // Refused: writing, DDL, settings, other files. Nothing is created.
    let outside = dir.path().join("leak.csv");
    for sql in [
        format!("COPY (SELECT * FROM IR_BEN_R) TO '{}'", outside.display()),
        format!(
            "CREATE EXTERNAL TABLE leak STORED AS CSV LOCATION '{}'",
            delivery.join("IR_BEN_R.csv").display()
        ),
        "CREATE VIEW v AS SELECT 1".to_string(),
        "DROP TABLE IR_BEN_R".to_string(),
        "INSERT INTO IR_BEN_R SELECT * FROM IR_BEN_R".to_string(),
        "SET datafusion.execution.parquet.crypto.factory_id = 'x'".to_string(),
        format!(
            "SELECT * FROM '{}'",
            delivery.join("IR_BEN_R.csv").display()
        ),
    ] {
        let e = s.sql(&sql).await.err();
        assert!(e.is_some(), "accepted: {sql}");
    }
    assert!(!outside.exists());
    assert_eq!(
        one_i64(&s, "SELECT COUNT(*) FROM IR_BEN_R").await,
        csv_column(&delivery.join("IR_BEN_R.csv"), "BEN_NIR_PSA").len() as i64,
        "the table is still there"
    );
    // Lower-case names get a hint.
    let e = s
        .sql("SELECT * FROM er_prs_f")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("upper case") && e.contains("ER_PRS_F"), "{e}");

    // Output formats.
    let (schema, b) = s
        .sql("SELECT BEN_SEX_COD, COUNT(*) AS n FROM IR_BEN_R GROUP BY 1 ORDER BY 1")
        .await
        .unwrap();
    let csv = format(&schema, &b, Format::Csv).unwrap();
    assert!(csv.starts_with("BEN_SEX_COD,n\n1,"), "{csv}");
    let json: serde_json::Value =
        serde_json::from_str(&format(&schema, &b, Format::Json).unwrap()).unwrap();
    let total: i64 = json
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["n"].as_i64().unwrap())
        .sum();
    assert_eq!(
        total,
        csv_column(&delivery.join("IR_BEN_R.csv"), "BEN_NIR_PSA").len() as i64
    );
    let table = format(&schema, &b, Format::Table).unwrap();
    assert!(
        table.contains("| BEN_SEX_COD |") && table.contains("rows)"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_snapshot_key_nothing_reads_and_old_snapshots_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let h = loaded(dir.path()).await;
    let cat = h.catalog().await.unwrap();
    let ben = cat
        .tables(1)
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.name == "IR_BEN_R")
        .unwrap();
    // A session with the right store but another key cannot read the files.
    let mut wrong = SnapshotKeys::default();
    wrong.insert("snapshots/1", pds_keys::SecretKey::random().unwrap());
    let ctx = context(h.storage().unwrap().store(), wrong, None, None).unwrap();
    let url = format!("{}/{}", pds_query::STORE_URL, ben.files[0].path);
    let e = cfg_for(&url).infer_schema(&ctx.state()).await.err();
    assert!(e.is_some(), "read with a wrong key");
    // A key for another prefix is no key at all.
    let mut other = SnapshotKeys::default();
    other.insert("snapshots/2", pds_keys::SecretKey::random().unwrap());
    let ctx = context(h.storage().unwrap().store(), other, None, None).unwrap();
    let e = cfg_for(&url).infer_schema(&ctx.state()).await.unwrap_err();
    assert!(e.to_string().contains("belongs to no open snapshot"), "{e}");

    // Snapshot 1 answers the same after snapshot 2 is loaded.
    let q = "SELECT COUNT(*) AS n, COUNT(DISTINCT BEN_NIR_PSA) AS p, ROUND(SUM(PRS_PAI_MNT), 2) AS s FROM ER_PRS_F";
    let s1 = SnapshotSession::open(&h, Some(1)).await.unwrap();
    let (schema, b) = s1.sql(q).await.unwrap();
    let before = format(&schema, &b, Format::Csv).unwrap();
    drop(s1);
    let delivery2 = dir.path().join("delivery2");
    synth(&delivery2, 200, 6);
    pds_load::load(
        &h,
        &delivery2,
        &pds_load::LoadOptions::default(),
        Arc::new(|_: &pds_load::Progress| {}),
    )
    .await
    .unwrap();
    let latest = SnapshotSession::open(&h, None).await.unwrap();
    assert_eq!(latest.snapshot, 2);
    let (schema, b) = latest.sql(q).await.unwrap();
    assert_ne!(format(&schema, &b, Format::Csv).unwrap(), before);
    let s1 = SnapshotSession::open(&h, Some(1)).await.unwrap();
    let (schema, b) = s1.sql(q).await.unwrap();
    assert_eq!(format(&schema, &b, Format::Csv).unwrap(), before);
    // A missing snapshot is a clear error.
    let e = SnapshotSession::open(&h, Some(9))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("snapshot 9 does not exist"), "{e}");
}

fn cfg_for(url: &str) -> datafusion::datasource::listing::ListingTableConfig {
    datafusion::datasource::listing::ListingTableConfig::new(
        datafusion::datasource::listing::ListingTableUrl::parse(url).unwrap(),
    )
    .with_listing_options(pds_query::listing_options(std::sync::Arc::new(
        pds_query::footers::FooterCache::new(64 << 20),
    )))
}

/// The nine keys of the standard DCIR join, `p` to `f`.
const NINE: &str = "f.FLX_DIS_DTD = p.FLX_DIS_DTD AND f.FLX_TRT_DTD = p.FLX_TRT_DTD \
    AND f.FLX_EMT_TYP = p.FLX_EMT_TYP AND f.FLX_EMT_NUM = p.FLX_EMT_NUM AND f.FLX_EMT_ORD = p.FLX_EMT_ORD \
    AND f.ORG_CLE_NUM = p.ORG_CLE_NUM AND f.DCT_ORD_NUM = p.DCT_ORD_NUM AND f.PRS_ORD_NUM = p.PRS_ORD_NUM \
    AND f.REM_TYP_AFF = p.REM_TYP_AFF";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nine_key_join_runs_on_the_loaded_prestation_key_with_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let h = loaded(dir.path()).await;
    let s = SnapshotSession::open(&h, None).await.unwrap();
    // Every DCIR table with the nine keys carries the key, and only those.
    for (t, has) in [
        ("ER_PRS_F", true),
        ("ER_PHA_F", true),
        ("ER_BIO_F", true),
        ("IR_BEN_R", false),
    ] {
        let n = one_i64(
            &s,
            &format!(
                "SELECT COUNT(*) FROM information_schema.columns WHERE table_name = '{t}' AND column_name = 'PDS_PRS_KEY'"
            ),
        )
        .await;
        assert_eq!(n, has as i64, "{t}");
    }
    // As written, the join is rewritten; with one key computed, it is not.
    for table in ["ER_PHA_F", "ER_BIO_F"] {
        let written = format!("SELECT COUNT(*) FROM ER_PRS_F p JOIN {table} f ON {NINE}");
        let unrewritten = written.replace(
            "f.REM_TYP_AFF = p.REM_TYP_AFF",
            "f.REM_TYP_AFF + 0 = p.REM_TYP_AFF",
        );
        let fast = one_i64(&s, &written).await;
        assert!(fast > 0, "{table}: the synthetic delivery joins");
        assert_eq!(fast, one_i64(&s, &unrewritten).await, "{table}");
        let (schema, plan) = s.sql(&format!("EXPLAIN {written}")).await.unwrap();
        let text = format(&schema, &plan, Format::Csv).unwrap();
        let join = text
            .lines()
            .find(|l| l.contains("HashJoinExec"))
            .unwrap_or_default()
            .to_string();
        assert!(
            join.contains("PDS_PRS_KEY") && !join.contains("ORG_CLE_NUM"),
            "{text}"
        );
        let (schema, plan) = s.sql(&format!("EXPLAIN {unrewritten}")).await.unwrap();
        let text = format(&schema, &plan, Format::Csv).unwrap();
        assert!(!text.contains("PDS_PRS_KEY"), "{text}");
    }
    // A line of a refinement table and its prestation have the same key.
    let mismatched = one_i64(
        &s,
        &format!(
            "SELECT COUNT(*) FROM ER_PRS_F p JOIN ER_PHA_F f ON {} WHERE f.PDS_PRS_KEY <> p.PDS_PRS_KEY",
            NINE.replace("f.REM_TYP_AFF = p.REM_TYP_AFF", "f.REM_TYP_AFF + 0 = p.REM_TYP_AFF")
        ),
    )
    .await;
    assert_eq!(mismatched, 0);
}

/// Decrypted footers and page indexes are kept by the open snapshot, so a
/// second session over it (the gate opens one per statement) reads none of
/// them again, and answers the same; a cache with no room holds nothing and
/// answers the same too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_snapshot_keeps_decrypted_footers_for_every_session() {
    let dir = tempfile::tempdir().unwrap();
    let h = loaded(dir.path()).await;
    let delivery = dir.path().join("delivery");
    let expected = csv_column(&delivery.join("ER_PRS_F_2021.csv"), "PRS_NAT_REF")
        .iter()
        .filter(|v| v.as_str() == "1110")
        .count() as i64;
    assert!(expected > 0, "the synthetic delivery has GP consultations");
    let cat = h.catalog().await.unwrap();
    let prs = cat
        .tables(1)
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.name == "ER_PRS_F")
        .unwrap();
    let prs_files = prs.files.len();
    let open = pds_query::open_snapshot(&cat, &h.keys().unwrap(), &h.storage().unwrap(), None)
        .await
        .unwrap();
    // Reading the schemas at open goes around the cache.
    assert_eq!(open.footers.usage(), (0, 0));
    let q = "SELECT COUNT(*) FROM ER_PRS_F WHERE PRS_NAT_REF = 1110";
    let session = || {
        let ctx = context(h.storage().unwrap().store(), open.keys.clone(), None, None).unwrap();
        for (name, table) in &open.tables {
            ctx.register_table(
                datafusion::common::TableReference::bare(name.as_str()),
                table.clone(),
            )
            .unwrap();
        }
        ctx
    };
    let count = |ctx: datafusion::prelude::SessionContext| async move {
        let b = ctx.sql(q).await.unwrap().collect().await.unwrap();
        b[0].column(0).as_primitive::<Int64Type>().value(0)
    };
    assert_eq!(count(session()).await, expected);
    let (files, bytes) = open.footers.usage();
    assert!(
        files > 0 && files <= prs_files,
        "{files} of {prs_files} files"
    );
    assert!(bytes > 0);
    // A new session: the same answer, nothing new read into the cache.
    assert_eq!(count(session()).await, expected);
    assert_eq!(open.footers.usage(), (files, bytes));

    // No room: every scan reads its metadata from storage, with the same result.
    let empty = Arc::new(pds_query::footers::FooterCache::new(0));
    let ctx = context(h.storage().unwrap().store(), open.keys.clone(), None, None).unwrap();
    let urls = prs
        .files
        .iter()
        .map(|f| {
            datafusion::datasource::listing::ListingTableUrl::parse(format!(
                "{}/{}",
                pds_query::STORE_URL,
                f.path
            ))
            .unwrap()
        })
        .collect();
    let config = datafusion::datasource::listing::ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(pds_query::listing_options(empty.clone()))
        .infer_schema(&ctx.state())
        .await
        .unwrap();
    let table = datafusion::datasource::listing::ListingTable::try_new(config).unwrap();
    ctx.register_table(
        datafusion::common::TableReference::bare("ER_PRS_F"),
        Arc::new(table),
    )
    .unwrap();
    assert_eq!(count(ctx).await, expected);
    assert_eq!(empty.usage(), (0, 0));
}
