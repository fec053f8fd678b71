//! The disclosure suite: a member of an aggregate-only project tries to
//! learn something about fewer than the threshold of patients. Every case
//! compares what the project gets with the truth computed independently
//! (the operator's raw access to the same snapshot, counting the stored
//! patient identifiers), so a small count that leaks fails the test.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::RecordBatch;
use common::*;
use pds_gate::disclosure::Summary;
use pds_gate::{Gate, GateError, Target};
use pds_project::perimeter::{DatePrecision, DisclosureProfile, Perimeter};
use pds_project::{AccessMode, NewProject, Role};

fn project(id: &str, perimeter: Perimeter) -> NewProject {
    NewProject {
        id: id.into(),
        title: format!("Disclosure test {id}"),
        authorisation: "CNIL DR-2026-007".into(),
        starts_on: "2020-01-01".into(),
        expires_on: "2099-12-31".into(),
        mode: AccessMode::AggregateOnly,
        snapshot: None,
        perimeter,
        cohort: Vec::new(),
    }
}

async fn setup(dir: &std::path::Path) -> Gate {
    let h = loaded(dir).await;
    let gate = Gate::open(&h).await.unwrap();
    let admin = gate.admin("steward");
    let tables = ["IR_BEN_R", "ER_PRS_F", "ER_PHA_F", "T_MCOaaB"];
    admin
        .create(&project("agg", Perimeter::all_columns(&tables)))
        .await
        .unwrap();
    let mut os = Perimeter::all_columns(&tables);
    os.disclosure.profile = DisclosureProfile::Opensafely;
    admin.create(&project("agg-os", os)).await.unwrap();
    let mut days = Perimeter::all_columns(&tables);
    days.coarsening.care_dates = DatePrecision::Day;
    days.disclosure.track_populations = false;
    admin.create(&project("agg-days", days)).await.unwrap();
    // Tests not about differencing run without the query-set tracker, so
    // that their many populations do not refuse each other.
    let mut free = Perimeter::all_columns(&tables);
    free.disclosure.track_populations = false;
    admin.create(&project("agg-free", free)).await.unwrap();
    for id in ["agg", "agg-os", "agg-days", "agg-free"] {
        admin.grant(id, "alice", Role::Researcher).await.unwrap();
    }
    gate
}

/// Runs an aggregate-only statement; returns its rows and what was
/// withheld.
async fn agg(g: &Gate, t: &Target, sql: &str) -> Result<(Vec<RecordBatch>, Summary), GateError> {
    let mut s = g.execute("alice", t, sql).await?;
    let mut out = Vec::new();
    while let Some(b) = s.next_batch().await {
        out.push(b?);
    }
    let summary = s
        .disclosure()
        .expect("aggregate-only results are controlled");
    Ok((out, summary))
}

/// key (first column) -> value (column `i`), as text.
fn map(b: &[RecordBatch], i: usize) -> BTreeMap<String, String> {
    strings(b, 0).into_iter().zip(strings(b, i)).collect()
}

/// The truth: key -> (value, distinct patients), from the operator.
async fn truth(g: &Gate, sql: &str) -> BTreeMap<String, (String, i64)> {
    let b = run(g, "steward", &op(), sql).await.unwrap();
    let k = strings(&b, 0);
    let v = strings(&b, 1);
    let n = strings(&b, 2);
    k.into_iter()
        .zip(v.into_iter().zip(n))
        .map(|(k, (v, n))| (k, (v, n.parse().unwrap())))
        .collect()
}

fn rows(b: &[RecordBatch]) -> usize {
    b.iter().map(|x| x.num_rows()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_cells_never_leave_whatever_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let g = setup(dir.path()).await;
    let a = p("agg-free");

    // --- counts per birth year: many years hold fewer than 10 people ---
    let (got, s) = agg(
        &g,
        &a,
        "SELECT BEN_NAI_ANN, count(*) AS n FROM IR_BEN_R GROUP BY BEN_NAI_ANN ORDER BY 1",
    )
    .await
    .unwrap();
    let want = truth(
        &g,
        "SELECT BEN_NAI_ANN, count(*), count(DISTINCT BEN_NIR_PSA) FROM IR_BEN_R GROUP BY BEN_NAI_ANN",
    )
    .await;
    assert_eq!(names(&got), ["BEN_NAI_ANN", "n", "pds_suppressed"]);
    let small = want.values().filter(|(_, n)| *n < 10).count();
    assert!(small > 0, "the data must hold small birth years");
    let expected: BTreeMap<String, String> = want
        .iter()
        .filter(|(_, (_, n))| *n >= 10)
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect();
    assert_eq!(map(&got, 1), expected);
    assert_eq!(s.rows_suppressed, small as u64);
    assert_eq!(s.threshold, 10);
    assert!(strings(&got, 2).iter().all(|f| f == "false"));

    // --- counting claims, not patients: a group of many claims from few
    // patients is still withheld ---
    let (got, _) = agg(
        &g,
        &a,
        "SELECT PRS_NAT_REF, count(*) FROM ER_PRS_F GROUP BY PRS_NAT_REF",
    )
    .await
    .unwrap();
    let want = truth(
        &g,
        "SELECT PRS_NAT_REF, count(*), count(DISTINCT BEN_NIR_PSA) FROM ER_PRS_F GROUP BY PRS_NAT_REF",
    )
    .await;
    let few_patients_many_claims = want
        .values()
        .filter(|(claims, n)| *n < 10 && claims.parse::<i64>().unwrap() >= 10)
        .count();
    assert!(few_patients_many_claims > 0, "{want:?}");
    let expected: BTreeMap<String, String> = want
        .iter()
        .filter(|(_, (_, n))| *n >= 10)
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect();
    assert_eq!(map(&got, 1), expected);

    // --- a filtered value inside a large group: min, max, avg, sum, count
    // over the few patients it covers are withheld, the rest is shown ---
    let old = truth(
        &g,
        "SELECT BEN_SEX_COD, max(BEN_NAI_ANN), count(DISTINCT BEN_NIR_PSA) FROM IR_BEN_R WHERE BEN_NAI_ANN < 1940 GROUP BY BEN_SEX_COD",
    )
    .await;
    let (got, s) = agg(
        &g,
        &a,
        "SELECT BEN_SEX_COD, count(*) AS people, \
                max(BEN_NAI_ANN) FILTER (WHERE BEN_NAI_ANN < 1940) AS oldest, \
                avg(BEN_NAI_ANN) FILTER (WHERE BEN_NAI_ANN < 1940) AS mean_old, \
                sum(CASE WHEN BEN_NAI_ANN < 1940 THEN 1 ELSE 0 END) AS n_old, \
                count(CASE WHEN BEN_NAI_ANN < 1940 THEN 1 END) AS c_old \
         FROM IR_BEN_R GROUP BY BEN_SEX_COD ORDER BY 1",
    )
    .await
    .unwrap();
    let keys = strings(&got, 0);
    assert!(!keys.is_empty());
    for (row, key) in keys.iter().enumerate() {
        let few = old.get(key).map_or(0, |(_, n)| *n);
        let shown = |col: usize| strings(&got, col)[row] != "NULL";
        assert_eq!(shown(2), few >= 10, "{key}: max over {few} patients");
        assert_eq!(shown(3), few >= 10, "{key}: avg over {few} patients");
        assert_eq!(
            shown(4),
            few >= 10,
            "{key}: sum of a rare flag over {few} patients"
        );
        assert_eq!(shown(5), few >= 10, "{key}: count over {few} patients");
        assert!(shown(1), "the group itself is large");
        assert_eq!(strings(&got, 6)[row] == "true", few < 10);
        if few >= 10 {
            assert_eq!(strings(&got, 2)[row], old[key].0);
        }
    }
    assert!(s.cells_suppressed > 0);

    // --- a single count over a small population: withheld, not 0 or n ---
    let y = want_small_year(&g).await;
    let (got, s) = agg(
        &g,
        &a,
        &format!("SELECT count(*) FROM IR_BEN_R WHERE BEN_NAI_ANN = {y}"),
    )
    .await
    .unwrap();
    assert_eq!(rows(&got), 0);
    assert_eq!(s.rows_suppressed, 1);
    // Nor through a scalar subquery in a large result.
    let (got, _) = agg(
        &g,
        &a,
        &format!(
            "SELECT count(*) AS everyone, (SELECT count(*) FROM IR_BEN_R WHERE BEN_NAI_ANN = {y}) AS few FROM IR_BEN_R"
        ),
    )
    .await
    .unwrap();
    assert_eq!(strings(&got, 1), ["NULL"]);
    assert_ne!(strings(&got, 0), ["NULL"]);
    // Nor through a ratio computed above the aggregate.
    let (got, _) = agg(
        &g,
        &a,
        &format!(
            "SELECT BEN_SEX_COD, 1000 * count(*) FILTER (WHERE BEN_NAI_ANN = {y}) / count(*) FROM IR_BEN_R GROUP BY 1"
        ),
    )
    .await
    .unwrap();
    assert!(
        strings(&got, 1).iter().all(|v| v == "NULL"),
        "{:?}",
        strings(&got, 1)
    );

    // --- per-patient inner aggregates are fine: a distribution of claims
    // per patient, each bucket shown only if 10 patients or more ---
    let (got, _) = agg(
        &g,
        &a,
        "SELECT least(n / 20, 5) AS bucket, count(*) FROM (SELECT BEN_NIR_PSA, count(*) AS n FROM ER_PRS_F GROUP BY BEN_NIR_PSA) t GROUP BY 1",
    )
    .await
    .unwrap();
    let want = truth(
        &g,
        "SELECT least(n / 20, 5) AS bucket, count(*) AS a, count(*) AS b FROM (SELECT BEN_NIR_PSA, count(*) AS n FROM ER_PRS_F GROUP BY BEN_NIR_PSA) t GROUP BY 1",
    )
    .await;
    let expected: BTreeMap<String, String> = want
        .iter()
        .filter(|(_, (_, n))| *n >= 10)
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(map(&got, 1), expected);
    // Patients are followed through UNION ALL (a procedure in two settings):
    // each source counts its own patients, a small one is withheld.
    let union = format!(
        "SELECT src, count(DISTINCT BEN_NIR_PSA) AS n FROM ( \
           SELECT 'claims' AS src, BEN_NIR_PSA FROM ER_PRS_F \
           UNION ALL SELECT 'people', BEN_NIR_PSA FROM IR_BEN_R \
           UNION ALL SELECT 'old', BEN_NIR_PSA FROM IR_BEN_R WHERE BEN_NAI_ANN = {y}) t GROUP BY 1 ORDER BY 1"
    );
    let (got, s) = agg(&g, &a, &union).await.unwrap();
    let claims = one(&run(
        &g,
        "steward",
        &op(),
        "SELECT count(DISTINCT BEN_NIR_PSA) FROM ER_PRS_F",
    )
    .await
    .unwrap());
    let people = one(&run(
        &g,
        "steward",
        &op(),
        "SELECT count(DISTINCT BEN_NIR_PSA) FROM IR_BEN_R",
    )
    .await
    .unwrap());
    assert_eq!(strings(&got, 0), ["claims", "people"]);
    assert_eq!(strings(&got, 1), [claims.to_string(), people.to_string()]);
    assert_eq!(s.rows_suppressed, 1);
    // ... but an inner aggregate that is not per patient cannot be followed.
    let m = refused(
        &g,
        "alice",
        &a,
        "SELECT avg(n) FROM (SELECT PRS_NAT_REF, count(*) AS n FROM ER_PRS_F GROUP BY PRS_NAT_REF) t",
    )
    .await;
    assert!(m.contains("not per patient"), "{m}");
}

/// A birth year before 1950 with 1 to 9 people.
async fn want_small_year(g: &Gate) -> String {
    let t = truth(
        g,
        "SELECT BEN_NAI_ANN, count(*), count(DISTINCT BEN_NIR_PSA) FROM IR_BEN_R GROUP BY BEN_NAI_ANN",
    )
    .await;
    t.iter()
        .find(|(k, (_, n))| (1..10).contains(n) && k.parse::<i64>().is_ok_and(|y| y < 1950))
        .map(|(k, _)| k.clone())
        .expect("a small birth year")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifiers_and_exact_dates_are_refused_under_any_disguise() {
    let dir = tempfile::tempdir().unwrap();
    let g = setup(dir.path()).await;
    let a = p("agg-free");
    for sql in [
        "SELECT BEN_NIR_PSA FROM IR_BEN_R",
        "SELECT BEN_NIR_PSA, count(*) FROM ER_PRS_F GROUP BY BEN_NIR_PSA",
        "SELECT CAST(BEN_NIR_PSA AS VARCHAR) AS x, count(*) FROM ER_PRS_F GROUP BY 1",
        "SELECT concat(BEN_NIR_PSA, 'x') AS x, count(*) FROM ER_PRS_F GROUP BY 1",
        "SELECT substr(BEN_NIR_PSA, 1, 5), count(*) FROM ER_PRS_F GROUP BY 1",
        "SELECT x, count(*) FROM (SELECT BEN_NIR_PSA AS x FROM ER_PRS_F) t GROUP BY x",
        "SELECT x, count(*) FROM (SELECT substr(BEN_NIR_PSA, 2) AS x FROM ER_PRS_F) t GROUP BY x",
        "SELECT max(BEN_NIR_PSA) FROM ER_PRS_F",
        "SELECT array_agg(BEN_NIR_PSA) FROM IR_BEN_R",
        "SELECT string_agg(BEN_NIR_PSA, ',') FROM IR_BEN_R",
        "WITH t AS (SELECT BEN_NIR_PSA AS p FROM IR_BEN_R) SELECT min(p) FROM t",
    ] {
        let m = refused(&g, "alice", &a, sql).await;
        assert!(m.contains("aggregate-only"), "{sql}: {m}");
    }
    // Rows of a table without a patient column must be joined to the
    // parent that attributes them.
    let m = refused(
        &g,
        "alice",
        &a,
        "SELECT PHA_PRS_C13, count(*) FROM ER_PHA_F GROUP BY 1",
    )
    .await;
    assert!(m.contains("join ER_PHA_F to ER_PRS_F"), "{m}");
    let y = want_small_year(&g).await;
    for (sql, why) in [
        // Whether a row appears would answer a question about a few people.
        (format!("SELECT count(*) FROM IR_BEN_R WHERE EXISTS (SELECT 1 FROM IR_BEN_R b WHERE b.BEN_NAI_ANN = {y})"), "subquery"),
        (format!("SELECT 1 AS x WHERE EXISTS (SELECT 1 FROM IR_BEN_R WHERE BEN_NAI_ANN = {y})"), "subquery"),
        (format!("SELECT count(*) FROM IR_BEN_R WHERE BEN_SEX_COD IN (SELECT BEN_SEX_COD FROM IR_BEN_R WHERE BEN_NAI_ANN = {y})"), "subquery"),
        (format!("SELECT EXISTS (SELECT 1 FROM IR_BEN_R WHERE BEN_NAI_ANN = {y}) AS anyone"), "subquery"),
        // A window over several people hands each row a value of others.
        (format!("SELECT max(c) FROM (SELECT sum(CASE WHEN BEN_NAI_ANN = {y} THEN 1 ELSE 0 END) OVER () AS c FROM IR_BEN_R) t"), "window"),
        // Another value under an identifier's name.
        ("SELECT BEN_NIR_PSA, count(*) FROM (SELECT BEN_SEX_COD AS BEN_NIR_PSA FROM IR_BEN_R) t GROUP BY 1".into(), "aggregate-only"),
    ] {
        let m = refused(&g, "alice", &a, &sql).await;
        assert!(m.contains(why), "{sql}: {m}");
    }
    // Per-patient filters and windows are fine, and exact.
    let women = one(&run(&g, "steward", &op(), "SELECT count(*) FROM ER_PRS_F WHERE BEN_NIR_PSA IN (SELECT BEN_NIR_PSA FROM IR_BEN_R WHERE BEN_SEX_COD = 2)").await.unwrap());
    let (got, _) = agg(&g, &a, "SELECT count(*) FROM ER_PRS_F WHERE BEN_NIR_PSA IN (SELECT BEN_NIR_PSA FROM IR_BEN_R WHERE BEN_SEX_COD = 2)").await.unwrap();
    assert_eq!(strings(&got, 0), [women.to_string()]);
    let patients = one(&run(
        &g,
        "steward",
        &op(),
        "SELECT count(DISTINCT BEN_NIR_PSA) FROM ER_PRS_F",
    )
    .await
    .unwrap());
    let (got, _) = agg(
        &g,
        &a,
        "SELECT count(*) FROM (SELECT BEN_NIR_PSA, row_number() OVER (PARTITION BY BEN_NIR_PSA ORDER BY EXE_SOI_DTD) AS rn FROM ER_PRS_F) t WHERE rn = 1",
    )
    .await
    .unwrap();
    assert_eq!(strings(&got, 0), [patients.to_string()]);
    // DCIR refinement rows joined on the nine keys count their claims' patients.
    let keys = pds_snds::schema::DCIR_JOIN_KEYS
        .iter()
        .map(|k| format!("p.{k} = f.{k}"))
        .collect::<Vec<_>>()
        .join(" AND ");
    let join = format!(
        "SELECT count(DISTINCT p.BEN_NIR_PSA), sum(f.PHA_ACT_QSN) FROM ER_PRS_F p JOIN ER_PHA_F f ON {keys}"
    );
    let want = run(&g, "steward", &op(), &join).await.unwrap();
    let (got, _) = agg(&g, &a, &join).await.unwrap();
    assert_eq!(strings(&got, 0), strings(&want, 0));
    assert_eq!(strings(&got, 1), strings(&want, 1));
    // A value shaped by a small subgroup (an affine CASE) is withheld.
    let by_sex = truth(
        &g,
        &format!("SELECT BEN_SEX_COD, 0 AS z, count(DISTINCT BEN_NIR_PSA) FILTER (WHERE BEN_NAI_ANN = {y}) FROM IR_BEN_R GROUP BY 1"),
    )
    .await;
    let (got, _) = agg(
        &g,
        &a,
        &format!("SELECT BEN_SEX_COD, avg(CASE WHEN BEN_NAI_ANN = {y} THEN 2 ELSE 1 END) AS v FROM IR_BEN_R GROUP BY 1"),
    )
    .await
    .unwrap();
    for (row, key) in strings(&got, 0).iter().enumerate() {
        let few = by_sex.get(key).map_or(0, |(_, n)| *n);
        assert_eq!(
            strings(&got, 1)[row] == "NULL",
            few > 0,
            "{key}: {few} patients in the branch"
        );
    }
    // A subquery in VALUES is refused (it would escape the aggregate's control).
    let m = refused(
        &g,
        "alice",
        &a,
        &format!("VALUES ((SELECT count(*) FROM IR_BEN_R WHERE BEN_NAI_ANN = {y}))"),
    )
    .await;
    assert!(m.contains("subquery"), "{m}");

    // A count of identifiers is an aggregate.
    let (got, _) = agg(&g, &a, "SELECT count(DISTINCT BEN_NIR_PSA) FROM ER_PRS_F")
        .await
        .unwrap();
    let want = one(&run(
        &g,
        "steward",
        &op(),
        "SELECT count(DISTINCT BEN_NIR_PSA) FROM ER_PRS_F",
    )
    .await
    .unwrap());
    assert_eq!(strings(&got, 0), [want.to_string()]);

    // Exact care dates, where the perimeter shows them, only coarsened.
    let d = p("agg-days");
    let m = refused(
        &g,
        "alice",
        &d,
        "SELECT EXE_SOI_DTD, count(*) FROM ER_PRS_F GROUP BY EXE_SOI_DTD",
    )
    .await;
    assert!(
        m.contains("EXE_SOI_DTD") && m.contains("full precision"),
        "{m}"
    );
    let m = refused(&g, "alice", &d, "SELECT max(EXE_SOI_DTD) FROM ER_PRS_F").await;
    assert!(m.contains("exact value"), "{m}");
    let (got, _) = agg(
        &g,
        &d,
        "SELECT date_trunc('month', EXE_SOI_DTD) AS m, count(*) FROM ER_PRS_F GROUP BY 1",
    )
    .await
    .unwrap();
    assert!(rows(&got) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differencing_attacks_are_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let g = setup(dir.path()).await;
    let a = p("agg");

    // --- a table with margins: no shown margin has exactly one hidden cell ---
    let sql = "SELECT BEN_SEX_COD, BEN_NAI_ANN / 10 AS decade, count(*) AS n FROM IR_BEN_R \
               GROUP BY ROLLUP (BEN_SEX_COD, BEN_NAI_ANN / 10)";
    let (got, s) = agg(&g, &a, sql).await.unwrap();
    let all = run(
        &g,
        "steward",
        &op(),
        "SELECT BEN_SEX_COD, BEN_NAI_ANN / 10, count(DISTINCT BEN_NIR_PSA) FROM IR_BEN_R GROUP BY 1, 2",
    )
    .await
    .unwrap();
    let cells: Vec<(String, String, i64)> = strings(&all, 0)
        .into_iter()
        .zip(strings(&all, 1))
        .zip(strings(&all, 2))
        .map(|((a, b), n)| (a, b, n.parse().unwrap()))
        .collect();
    let shown: BTreeSet<(String, String)> =
        strings(&got, 0).into_iter().zip(strings(&got, 1)).collect();
    let mut margins_checked = 0;
    for sex in cells.iter().map(|c| c.0.clone()).collect::<BTreeSet<_>>() {
        if !shown.contains(&(sex.clone(), "NULL".into())) {
            continue;
        }
        margins_checked += 1;
        let hidden: Vec<&(String, String, i64)> = cells
            .iter()
            .filter(|c| c.0 == sex && !shown.contains(&(c.0.clone(), c.1.clone())))
            .collect();
        assert_ne!(
            hidden.len(),
            1,
            "sex {sex}: one hidden cell would be its margin minus the others: {hidden:?}"
        );
        for c in &hidden {
            assert!(
                c.2 < 10 || s.rows_secondary > 0,
                "{c:?} hidden without cause"
            );
        }
    }
    assert!(margins_checked > 0);
    for c in &cells {
        if c.2 < 10 {
            assert!(
                !shown.contains(&(c.0.clone(), c.1.clone())),
                "small cell {c:?} shown"
            );
        }
    }

    // --- two overlapping populations a few patients apart ---
    let y = want_small_year(&g).await;
    let few = truth(
        &g,
        &format!("SELECT BEN_NAI_ANN, count(*), count(DISTINCT BEN_NIR_PSA) FROM IR_BEN_R WHERE BEN_NAI_ANN = {y} GROUP BY 1"),
    )
    .await[&y]
        .1;
    let base = "SELECT count(*) FROM IR_BEN_R WHERE BEN_NAI_ANN >= 1950";
    let (first, _) = agg(&g, &a, base).await.unwrap();
    assert_eq!(rows(&first), 1);
    let m = refused(&g, "alice", &a, &format!("{base} OR BEN_NAI_ANN = {y}")).await;
    assert!(
        m.contains("differs from that of an earlier result") && m.contains("threshold of 10"),
        "{m}"
    );
    // The refusal tells neither how many patients apart nor who ran the
    // earlier statement.
    assert!(
        !m.contains(&format!(" {few} ")) && !m.contains("alice"),
        "{m}"
    );
    // The same population again is fine (nothing new is learnt).
    let (again, _) = agg(&g, &a, base).await.unwrap();
    assert_eq!(strings(&again, 0), strings(&first, 0));
    // A population 10 or more patients away is fine.
    let (other, _) = agg(
        &g,
        &a,
        "SELECT count(*) FROM IR_BEN_R WHERE BEN_NAI_ANN >= 1970",
    )
    .await
    .unwrap();
    assert_eq!(rows(&other), 1);

    // --- removing one person from an earlier population ---
    let groups = truth(
        &g,
        "SELECT CAST(BEN_NAI_ANN AS VARCHAR) || '/' || CAST(BEN_SEX_COD AS VARCHAR) || '/' || BEN_RES_DPT, 0, count(DISTINCT BEN_NIR_PSA) \
         FROM IR_BEN_R WHERE BEN_NAI_ANN >= 1950 GROUP BY 1",
    )
    .await;
    let (key, _) = groups
        .iter()
        .find(|(_, (_, n))| *n == 1)
        .expect("someone alone in their birth year, sex and département");
    let parts: Vec<&str> = key.split('/').collect();
    let m = refused(
        &g,
        "alice",
        &a,
        &format!(
            "{base} AND NOT (BEN_NAI_ANN = {} AND BEN_SEX_COD = {} AND BEN_RES_DPT = '{}')",
            parts[0], parts[1], parts[2]
        ),
    )
    .await;
    assert!(m.contains("differs from that of an earlier result"), "{m}");
    // ... nor through a filtered value of a larger result.
    let m = refused(
        &g,
        "alice",
        &a,
        &format!(
            "SELECT count(*) AS everyone, count(*) FILTER (WHERE BEN_NAI_ANN >= 1950 AND NOT (BEN_NAI_ANN = {} AND BEN_SEX_COD = {} AND BEN_RES_DPT = '{}')) AS nearly FROM IR_BEN_R",
            parts[0], parts[1], parts[2]
        ),
    )
    .await;
    assert!(m.contains("differs from that of an earlier result"), "{m}");

    // --- the same attack inside one statement ---
    let m = refused(
        &g,
        "alice",
        &a,
        &format!(
            "SELECT count(*) FROM IR_BEN_R WHERE BEN_NAI_ANN >= 1960 \
             UNION ALL SELECT count(*) FROM IR_BEN_R WHERE BEN_NAI_ANN >= 1960 OR BEN_NAI_ANN = {y}"
        ),
    )
    .await;
    assert!(m.contains("differs from that of an earlier result"), "{m}");

    // Every refusal is in the audit log with its reason.
    let entries = g
        .catalog()
        .audit_entries(&pds_catalog::AuditFilter {
            project: Some("agg".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let refusals = entries
        .iter()
        .filter(|e| e.decision == "refused" && e.body.contains("earlier result"))
        .count();
    assert!(refusals >= 3, "{refusals}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounding_and_dominance() {
    let dir = tempfile::tempdir().unwrap();
    let g = setup(dir.path()).await;

    // --- OpenSAFELY profile: 7 or fewer withheld, counts to the nearest 5 ---
    let (got, s) = agg(
        &g,
        &p("agg-os"),
        "SELECT BEN_NAI_ANN, count(DISTINCT BEN_NIR_PSA) FROM IR_BEN_R GROUP BY 1",
    )
    .await
    .unwrap();
    let want = truth(
        &g,
        "SELECT BEN_NAI_ANN, count(DISTINCT BEN_NIR_PSA) AS a, count(DISTINCT BEN_NIR_PSA) AS b FROM IR_BEN_R GROUP BY 1",
    )
    .await;
    let expected: BTreeMap<String, String> = want
        .iter()
        .filter(|(_, (_, n))| *n >= 8)
        .map(|(k, (_, n))| (k.clone(), (((n + 2) / 5) * 5).to_string()))
        .collect();
    assert!(expected.values().any(|v| v != "0"));
    assert_eq!(map(&got, 1), expected);
    assert_eq!((s.threshold, s.rounding), (8, 5));
    assert!(
        s.notice().contains("rounded to the nearest 5"),
        "{}",
        s.notice()
    );

    // --- dominance: a few patients make almost all of a sum ---
    let (got, s) = agg(
        &g,
        &p("agg-free"),
        "SELECT count(*) AS patients, sum(power(CAST(n AS DOUBLE), 20)) AS weight \
         FROM (SELECT BEN_NIR_PSA, count(*) AS n FROM ER_PRS_F GROUP BY BEN_NIR_PSA) t",
    )
    .await
    .unwrap();
    assert_ne!(strings(&got, 0), ["NULL"]);
    assert_eq!(strings(&got, 1), ["NULL"]);
    assert_eq!(strings(&got, 2), ["true"]);
    assert_eq!(s.cells_dominance, 1, "{s:?}");
    // A value shaped by a rare subgroup is withheld as a small cell.
    let y = want_small_year(&g).await;
    let (got, s) = agg(
        &g,
        &p("agg-free"),
        &format!(
            "SELECT count(*) AS n, sum(CASE WHEN BEN_NAI_ANN = {y} THEN 1000000 ELSE 1 END) AS weight FROM IR_BEN_R"
        ),
    )
    .await
    .unwrap();
    assert_eq!(strings(&got, 1), ["NULL"]);
    assert_eq!(s.cells_suppressed, 1, "{s:?}");
    // Without the outlier, no sum is dominated.
    let (got, s) = agg(
        &g,
        &p("agg-free"),
        "SELECT BEN_SEX_COD, sum(BEN_NAI_ANN) FROM IR_BEN_R GROUP BY 1",
    )
    .await
    .unwrap();
    assert!(strings(&got, 1).iter().all(|w| w != "NULL"));
    assert_eq!(s.cells_dominance, 0);
}

/// A cohort with follow-up (SNDS-bench q04's shape): per-patient inner
/// aggregates, a LEFT JOIN of outcomes, CASE conditions in a SUM. Its
/// conditions once reached DataFusion's common-subexpression rule and failed
/// planning; the published counts must be the operator's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cohort_with_follow_up_plans_and_publishes_only_true_counts() {
    let dir = tempfile::tempdir().unwrap();
    let g = setup(dir.path()).await;
    let sql = "WITH idx AS (SELECT BEN_NIR_PSA, MIN(EXE_SOI_DTD) AS index_date FROM ER_PRS_F GROUP BY BEN_NIR_PSA), \
               later AS (SELECT BEN_NIR_PSA, MIN(EXE_SOI_DTD) AS d FROM ER_PRS_F WHERE PRS_NAT_REF = 1111 GROUP BY BEN_NIR_PSA) \
               SELECT COUNT(*) AS cohort, COUNT(l.BEN_NIR_PSA) AS with_event, \
                 SUM(CASE WHEN ben.BEN_DCD_DTE IS NOT NULL \
                           AND date_trunc('month', ben.BEN_DCD_DTE) <= date_trunc('month', i.index_date + INTERVAL '365 days') \
                          THEN 1 ELSE 0 END) AS died \
               FROM idx i JOIN IR_BEN_R ben ON ben.BEN_NIR_PSA = i.BEN_NIR_PSA \
               LEFT JOIN later l ON l.BEN_NIR_PSA = i.BEN_NIR_PSA AND l.d > i.index_date";
    let (got, s) = agg(&g, &p("agg-days"), sql).await.unwrap();
    let want = run(&g, "steward", &op(), sql).await.unwrap();
    let cohort: i64 = strings(&want, 0)[0].parse().unwrap();
    assert!(cohort >= 10, "{cohort}");
    // The row is either published with the operator's counts or withheld
    // and said so. (Today it is withheld when fewer than 10 patients had an
    // event: the outcome's patient column counts too; docs/outputs.md.)
    assert_eq!(rows(&got) as u64 + s.rows_suppressed, 1, "{}", s.notice());
    if rows(&got) == 1 {
        assert_eq!(strings(&got, 0), strings(&want, 0), "{}", s.notice());
        assert_eq!(strings(&got, 1), strings(&want, 1), "{}", s.notice());
    } else {
        assert!(s.notice().contains("withheld"), "{}", s.notice());
    }
}
