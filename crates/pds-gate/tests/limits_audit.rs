//! Limits stop floods without harming the machine, and every statement is
//! on record before its first row: if the record cannot be written, the
//! statement does not run.

mod common;

use std::time::{Duration, Instant};

use arrow::ipc::writer::StreamWriter;
use common::*;
use pds_audit::{parse_public_key, verify};
use pds_gate::{Gate, GateError, Limits};
use pds_project::perimeter::Perimeter;
use pds_project::{AccessMode, NewProject, Role};
use sha2::{Digest, Sha256};
use sqlx::AssertSqlSafe;

async fn setup(dir: &std::path::Path) -> (pds_home::Home, Gate) {
    let h = loaded(dir).await;
    let gate = Gate::open(&h).await.unwrap().with_limits(Limits {
        timeout: Duration::from_secs(3),
        query_memory: 32 << 20,
        total_memory: 64 << 20,
        max_rows: 1000,
        concurrent: 2,
        max_sql_bytes: 4000,
    });
    let admin = gate.admin("steward");
    let mut per = Perimeter::all_columns(&["ER_PRS_F", "IR_BEN_R"]);
    per.years = Some([2021, 2022]);
    admin
        .create(&NewProject {
            id: "proj-a".into(),
            title: "Limits".into(),
            authorisation: "CNIL DR-2026-002".into(),
            starts_on: "2020-01-01".into(),
            expires_on: "2099-12-31".into(),
            mode: AccessMode::RowLevel,
            snapshot: None,
            perimeter: per,
            cohort: Vec::new(),
        })
        .await
        .unwrap();
    admin
        .grant("proj-a", "alice", Role::Researcher)
        .await
        .unwrap();
    (h, gate)
}

/// The body of the audit log's last entry.
async fn last_entry(g: &Gate) -> serde_json::Value {
    let entries = g
        .catalog()
        .audit_entries(&Default::default())
        .await
        .unwrap();
    serde_json::from_str(&entries.last().unwrap().body).unwrap()
}

async fn limited(g: &Gate, sql: &str, max: Duration) -> String {
    let t = Instant::now();
    let r = run(g, "alice", &p("proj-a"), sql).await;
    let took = t.elapsed();
    assert!(took < max, "{sql}: took {took:?}");
    match r {
        Err(GateError::Limit(m)) => m,
        other => panic!("{sql}: expected a limit, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_hit_the_limits_not_the_machine() {
    let dir = tempfile::tempdir().unwrap();
    let (_h, g) = setup(dir.path()).await;
    let m = limited(
        &g,
        "SELECT * FROM generate_series(1, 100000)",
        Duration::from_secs(10),
    )
    .await;
    assert!(m.contains("more than 1000 rows"), "{m}");
    let m = limited(
        &g,
        "SELECT COUNT(*) FROM generate_series(1, 1000000000000)",
        Duration::from_secs(15),
    )
    .await;
    assert!(m.contains("timeout"), "{m}");
    let m = limited(
        &g,
        "SELECT COUNT(*) FROM ER_PRS_F a, ER_PRS_F b, ER_PRS_F c",
        Duration::from_secs(30),
    )
    .await;
    assert!(m.contains("timeout") || m.contains("more memory"), "{m}");
    // A cross join keeps one side in memory (aggregations and joins spill
    // instead: see below).
    let m = limited(
        &g,
        "SELECT SUM(a.v * b.w) FROM generate_series(1, 8000000) a(v), generate_series(1, 8000000) b(w)",
        Duration::from_secs(30),
    )
    .await;
    assert!(
        m.contains("more memory than allowed (32 MiB per statement"),
        "{m}"
    );
    assert!(m.contains("a cross join keeps one side in memory"), "{m}");
    assert!(m.contains("it ran out in CrossJoinExec"), "{m}");
    // A client that stops reading cancels the statement: it is recorded as
    // cancelled and its slot is free again.
    {
        let mut s = g
            .execute(
                "alice",
                &p("proj-a"),
                "SELECT * FROM generate_series(1, 900)",
            )
            .await
            .unwrap();
        assert!(s.next_batch().await.unwrap().is_ok());
    }
    let mut cancelled = 0;
    for _ in 0..50 {
        cancelled = g
            .catalog()
            .audit_entries(&Default::default())
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.decision == "cancelled")
            .count();
        if cancelled == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cancelled, 1);
    let long = format!("SELECT 1{}", " ".repeat(5000));
    let m = refused(&g, "alice", &p("proj-a"), &long).await;
    assert!(m.contains("the limit is 4000 bytes"), "{m}");
    // Nothing is left running: the next statement gets the whole budget.
    let n = one(
        &run(&g, "alice", &p("proj-a"), "SELECT COUNT(*) FROM IR_BEN_R")
            .await
            .unwrap(),
    );
    let raw = one(&run(&g, "steward", &op(), "SELECT COUNT(*) FROM IR_BEN_R")
        .await
        .unwrap());
    assert!(raw >= 300);
    assert_eq!(n, raw);
    let stopped = g
        .catalog()
        .audit_entries(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.decision == "stopped")
        .count();
    assert_eq!(stopped, 4);
}

/// Top five of `k = (v * 7919) % groups` over `v` in `1..=rows` by the sum
/// of `v`: 7919 is prime to `groups`, so each `k` has one `v0` in
/// `1..=groups` and `rows / groups` values `v0 + i * groups`.
fn expected_top5(rows: i64, groups: i64) -> Vec<(i64, i64, i64)> {
    let per = rows / groups;
    (0..5)
        .map(|j| {
            let v0 = groups - j;
            let sum = per * v0 + groups * per * (per - 1) / 2;
            ((v0 * 7919) % groups, per, sum)
        })
        .collect()
}

fn triples(batches: &[arrow::array::RecordBatch]) -> Vec<(i64, i64, i64)> {
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    let mut out = Vec::new();
    for b in batches {
        let c = |i: usize| b.column(i).as_primitive::<Int64Type>().clone();
        let (k, n, s) = (c(0), c(1), c(2));
        for r in 0..b.num_rows() {
            out.push((k.value(r), n.value(r), s.value(r)));
        }
    }
    out
}

/// What outgrows a statement's memory spills to encrypted, unnamed files
/// and answers as it would in memory; a spill quota too small for it stops
/// it with an error naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregations_larger_than_memory_spill_and_answer_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (h, g) = setup(dir.path()).await;
    let limits = Limits {
        timeout: Duration::from_secs(120),
        query_memory: 24 << 20,
        total_memory: 64 << 20,
        max_rows: 1000,
        concurrent: 2,
        max_sql_bytes: 4000,
    };
    let g = g.with_limits(limits);
    let (rows, groups) = (2_000_000i64, 500_000i64);
    let sql = format!(
        "SELECT k, COUNT(*) AS n, SUM(v) AS s FROM (SELECT (v * 7919) % {groups} AS k, v FROM generate_series(1, {rows}) t(v)) GROUP BY k ORDER BY s DESC LIMIT 5"
    );
    let spill = g.spill().expect("spilling is on by default");
    assert_eq!(spill.dir(), h.spill_dir());
    assert_eq!(spill.counters().files(), 0);
    let got = triples(&run(&g, "alice", &p("proj-a"), &sql).await.unwrap());
    assert_eq!(got, expected_top5(rows, groups));
    let spill = g.spill().unwrap();
    assert!(spill.counters().files() > 0, "the statement did not spill");
    assert!(
        spill.counters().bytes() > 1 << 20,
        "{}",
        spill.counters().bytes()
    );
    // The closing entry says what this statement spilled.
    let end = last_entry(&g).await;
    assert_eq!(end["details"]["spilled_bytes"], spill.counters().bytes());
    // Every file is gone with the statement: nothing counted, nothing named.
    assert_eq!(spill.used_bytes(), 0);
    assert_eq!(std::fs::read_dir(h.spill_dir()).unwrap().count(), 0);

    // Too little disk for it: the statement stops on the spill quota, and
    // what it wrote is given back.
    let tight = std::sync::Arc::new(
        pds_query::spill::EncryptedSpill::new(&h.spill_dir(), 1 << 20).unwrap(),
    );
    let g = g.with_spill(Some(tight.clone()));
    match run(&g, "alice", &p("proj-a"), &sql).await {
        Err(GateError::Limit(m)) => {
            assert!(m.contains("more temporary disk space than allowed"), "{m}");
            assert!(m.contains("the 1 MiB"), "{m}");
            assert!(m.contains("[gate] max_spill_mib"), "{m}");
        }
        other => panic!("expected the spill quota, got {other:?}"),
    }
    // The failed statement's tasks wind down after the error reaches the
    // client; its files go with them.
    for _ in 0..100 {
        if tight.used_bytes() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(tight.used_bytes(), 0);
}

/// The two integers of a one-row `COUNT(*), SUM(..)` result.
fn count_and_sum(batches: &[arrow::array::RecordBatch]) -> (i64, i64) {
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 1, "expected one row");
    let b = batches.iter().find(|b| b.num_rows() == 1).unwrap();
    let c = |i: usize| b.column(i).as_primitive::<Int64Type>().value(0);
    (c(0), c(1))
}

/// A hash join whose table outgrows the statement's memory runs again,
/// before its first row, with sort-merge joins: same answer, recorded in
/// the closing entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_larger_than_memory_run_again_as_sort_merge_joins() {
    let dir = tempfile::tempdir().unwrap();
    let (_h, g) = setup(dir.path()).await;
    // First both sides come sorted, so the sort-merge join needs no sort;
    // then they do not, and its sorts spill.
    let g = g.with_limits(Limits {
        timeout: Duration::from_secs(120),
        query_memory: 64 << 20,
        total_memory: 128 << 20,
        max_rows: 1000,
        concurrent: 2,
        max_sql_bytes: 4000,
    });
    // Every value of a is in b once: n matches, and the sum of a's side is
    // n(n + 1) / 2.
    let n = 4_000_000i64;
    let sql = format!(
        "SELECT COUNT(*) AS n, SUM(a.v) AS s FROM generate_series(1, {n}) a(v) JOIN generate_series(1, {}) b(w) ON a.v = b.w",
        2 * n
    );
    let got = run(&g, "alice", &p("proj-a"), &sql).await.unwrap();
    assert_eq!(count_and_sum(&got), (n, n * (n + 1) / 2));
    let end = last_entry(&g).await;
    assert_eq!(end["action"], "statement.end");
    assert_eq!(end["decision"], "completed");
    assert!(
        end["details"]["rerun"]
            .as_str()
            .unwrap()
            .starts_with("sort-merge joins"),
        "{end}"
    );
    assert_eq!(end["rows"], 1);

    // Unsorted sides: the second attempt's sorts outgrow the memory and
    // spill, sharing it fairly. b is a permutation of 1..=2n (7919 is prime
    // to 2n), so each value of a still matches once.
    let m = 2 * n;
    let shuffled = format!(
        "SELECT COUNT(*) AS n, SUM(a.v) AS s FROM generate_series(1, {n}) a(v) JOIN (SELECT (w * 7919) % {m} + 1 AS w FROM generate_series(1, {m}) t(w)) b ON a.v = b.w"
    );
    let got = run(&g, "alice", &p("proj-a"), &shuffled).await.unwrap();
    assert_eq!(count_and_sum(&got), (n, n * (n + 1) / 2));
    let end = last_entry(&g).await;
    assert_eq!(end["decision"], "completed", "{end}");
    assert!(end["details"]["rerun"].is_string(), "{end}");
    assert!(
        end["details"]["spilled_bytes"].as_u64().unwrap_or(0) > 1 << 20,
        "the sorts did not spill: {end}"
    );

    // A join that fits runs once, as a hash join: nothing recorded.
    let small = "SELECT COUNT(*) FROM generate_series(1, 1000) a(v) JOIN generate_series(1, 1000) b(w) ON a.v = b.w";
    assert_eq!(
        one(&run(&g, "alice", &p("proj-a"), small).await.unwrap()),
        1000
    );
    let end = last_entry(&g).await;
    assert!(end["details"]["rerun"].is_null(), "{end}");
    assert!(end["details"]["spilled_bytes"].is_null(), "{end}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_statement_is_audited_before_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (h, g) = setup(dir.path()).await;
    let a = p("proj-a");
    let sql = "SELECT BEN_SEX_COD, COUNT(*) AS n FROM IR_BEN_R GROUP BY BEN_SEX_COD ORDER BY 1";
    let batches = run(&g, "alice", &a, sql).await.unwrap();
    refused(&g, "mallory", &a, "SELECT * FROM ER_PRS_F").await;
    refused(&g, "alice", &a, "DROP TABLE IR_BEN_R").await;

    let entries = g
        .catalog()
        .audit_entries(&Default::default())
        .await
        .unwrap();
    let actions: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e.action.as_str(), e.decision.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("project.create", "done"),
            ("project.grant", "done"),
            ("statement", "allowed"),
            ("statement.end", "completed"),
            ("statement", "refused"),
            ("statement", "refused"),
        ]
    );
    let body = |i: usize| -> serde_json::Value { serde_json::from_str(&entries[i].body).unwrap() };
    let allowed = body(2);
    assert_eq!(allowed["principal"], "alice");
    assert_eq!(allowed["project"], "proj-a");
    assert_eq!(allowed["statement"], sql);
    assert_eq!(allowed["snapshot"], 1);
    assert_eq!(allowed["plan_fingerprint"].as_str().unwrap().len(), 64);
    assert_eq!(
        allowed["objects"],
        serde_json::json!([{"table": "IR_BEN_R", "columns": ["BEN_SEX_COD"]}])
    );
    let end = body(3);
    assert_eq!(end["request_id"], allowed["request_id"]);
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(end["rows"], rows as u64);
    // The recorded hash is the SHA-256 of the result as an Arrow IPC stream.
    let mut buf = Vec::new();
    {
        let mut w = StreamWriter::try_new(&mut buf, &batches[0].schema()).unwrap();
        for b in &batches {
            w.write(b).unwrap();
        }
        w.finish().unwrap();
    }
    assert_eq!(end["bytes"], buf.len() as u64);
    assert_eq!(end["result_sha256"], hex::encode(Sha256::digest(&buf)));
    let refusal = body(4);
    assert_eq!(refusal["principal"], "mallory");
    assert!(refusal["reason"].as_str().unwrap().contains("not a member"));
    assert!(
        body(5)["reason"]
            .as_str()
            .unwrap()
            .contains("DDL not supported")
    );

    // The log verifies with the key written beside the key store.
    let public =
        std::fs::read_to_string(h.keys_dir().join(pds_gate::AUDIT_PUBLIC_KEY_FILE)).unwrap();
    let key = parse_public_key(&public).unwrap();
    assert_eq!(verify(g.catalog(), &key, &[]).await.unwrap().problem, None);

    // If the audit log cannot be written, nothing runs and nothing returns.
    let url = h.catalogue_url();
    let mut c = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::query(AssertSqlSafe(
        "CREATE TRIGGER no_audit BEFORE INSERT ON audit_entries BEGIN SELECT RAISE(ABORT, 'disk full'); END".to_string(),
    ))
    .execute(&mut c)
    .await
    .unwrap();
    match g
        .execute("alice", &a, "SELECT COUNT(*) FROM IR_BEN_R")
        .await
    {
        Err(GateError::Audit(m)) => assert!(m.contains("disk full"), "{m}"),
        Ok(_) => panic!("a statement ran without an audit record"),
        Err(e) => panic!("unexpected {e:?}"),
    }
    sqlx::query(AssertSqlSafe("DROP TRIGGER no_audit".to_string()))
        .execute(&mut c)
        .await
        .unwrap();
    assert_eq!(
        one(&run(&g, "alice", &a, "SELECT COUNT(*) FROM IR_BEN_R")
            .await
            .unwrap()),
        one(&run(&g, "steward", &op(), "SELECT COUNT(*) FROM IR_BEN_R")
            .await
            .unwrap())
    );
}
