//! The adversarial suite: a member of a project tries to read what its
//! perimeter does not grant, by every route SQL offers. Every case asserts
//! the exact refusal or the exact allowed result (computed independently,
//! through the operator's raw access to the same snapshot).

mod common;

use common::*;
use pds_gate::Gate;
use pds_project::perimeter::{Columns, Perimeter};
use pds_project::{AccessMode, NewProject, Role};

fn cols(list: &[&str]) -> Columns {
    Columns::Some(list.iter().map(|s| s.to_string()).collect())
}

fn project(id: &str, mode: AccessMode, perimeter: Perimeter) -> NewProject {
    NewProject {
        id: id.into(),
        title: format!("Test project {id}"),
        authorisation: "CNIL DR-2026-001".into(),
        starts_on: "2020-01-01".into(),
        expires_on: "2099-12-31".into(),
        mode,
        snapshot: None,
        perimeter,
        cohort: Vec::new(),
    }
}

/// Project A: DCIR 2022 with a few claim columns, its pharmacy lines, the
/// beneficiaries (birth month and commune granted but coarsened away) and
/// the PMSI stays; default coarsening.
fn perimeter_a() -> Perimeter {
    let mut p = Perimeter::all_columns(&["ER_PHA_F", "T_MCOaaC"]);
    let mut prs = vec!["BEN_NIR_PSA", "EXE_SOI_DTD", "PRS_NAT_REF"];
    prs.extend(pds_snds::schema::DCIR_JOIN_KEYS);
    p.tables.insert("ER_PRS_F".into(), cols(&prs));
    p.tables.insert(
        "IR_BEN_R".into(),
        cols(&[
            "BEN_NIR_PSA",
            "BEN_SEX_COD",
            "BEN_NAI_ANN",
            "BEN_NAI_MOI",
            "BEN_RES_DPT",
            "BEN_RES_COM",
        ]),
    );
    p.years = Some([2022, 2022]);
    p
}

async fn setup(dir: &std::path::Path) -> Gate {
    let h = loaded(dir).await;
    let gate = Gate::open(&h).await.unwrap();
    {
        let admin = gate.admin("steward");
        admin
            .create(&project("proj-a", AccessMode::RowLevel, perimeter_a()))
            .await
            .unwrap();
        admin
            .grant("proj-a", "alice", Role::Researcher)
            .await
            .unwrap();
        admin.grant("proj-a", "carol", Role::Checker).await.unwrap();
        let b = Perimeter::all_columns(&["IR_BEN_R", "ER_PRS_F"]);
        admin
            .create(&project("proj-b", AccessMode::RowLevel, b))
            .await
            .unwrap();
        admin.grant("proj-b", "alice", Role::Lead).await.unwrap();
        admin
            .grant("proj-b", "bob", Role::Researcher)
            .await
            .unwrap();
        let c = Perimeter::all_columns(&["IR_BEN_R", "ER_PRS_F"]);
        admin
            .create(&project("proj-agg", AccessMode::AggregateOnly, c))
            .await
            .unwrap();
        admin
            .grant("proj-agg", "alice", Role::Researcher)
            .await
            .unwrap();
        let mut d = Perimeter::all_columns(&["IR_BEN_R", "ER_PRS_F", "ER_PHA_F"]);
        d.population = Some("BEN_SEX_COD = 2".into());
        admin
            .create(&project("proj-women", AccessMode::RowLevel, d))
            .await
            .unwrap();
        admin
            .grant("proj-women", "alice", Role::Researcher)
            .await
            .unwrap();
    }
    gate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_sees_its_perimeter_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let g = setup(dir.path()).await;
    let a = p("proj-a");

    // --- access ---
    let m = refused(&g, "bob", &a, "SELECT 1").await;
    assert_eq!(
        m,
        "project proj-a does not exist or bob is not a member of it"
    );
    let m = refused(&g, "bob", &p("proj-zz"), "SELECT 1").await;
    assert_eq!(
        m,
        "project proj-zz does not exist or bob is not a member of it"
    );
    let m = refused(&g, "carol", &a, "SELECT 1").await;
    assert!(
        m.contains("checker") && m.contains("do not run statements"),
        "{m}"
    );

    // --- columns: exactly the granted ones, minus those coarsening removes ---
    let all = run(&g, "alice", &a, "SELECT * FROM IR_BEN_R LIMIT 1")
        .await
        .unwrap();
    assert_eq!(
        names(&all),
        ["BEN_NIR_PSA", "BEN_NAI_ANN", "BEN_SEX_COD", "BEN_RES_DPT"]
    );
    let m = failed(&g, "alice", &a, "SELECT BEN_NAI_MOI FROM IR_BEN_R").await;
    assert!(m.contains("No field named \"BEN_NAI_MOI\""), "{m}");
    let m = failed(&g, "alice", &a, "SELECT PRS_PAI_MNT FROM ER_PRS_F").await;
    assert!(
        m.contains("No field named \"PRS_PAI_MNT\"") && !m.contains("\"PRS_PAI_MNT\","),
        "{m}"
    );
    // Not through a subquery, a CTE, a join or a window either.
    for sql in [
        "SELECT COUNT(*) FROM ER_PRS_F WHERE PRS_NAT_REF IN (SELECT PRS_PAI_MNT FROM ER_PRS_F)",
        "WITH x AS (SELECT BEN_RES_COM FROM IR_BEN_R) SELECT * FROM x",
        "SELECT b.BEN_NAI_MOI FROM ER_PRS_F p JOIN IR_BEN_R b ON p.BEN_NIR_PSA = b.BEN_NIR_PSA",
        "SELECT row_number() OVER (PARTITION BY PRS_PAI_MNT) FROM ER_PRS_F",
    ] {
        let m = failed(&g, "alice", &a, sql).await;
        assert!(m.contains("No field named"), "{sql}: {m}");
    }

    // --- tables ---
    let m = failed(&g, "alice", &a, "SELECT COUNT(*) FROM ER_BIO_F").await;
    assert!(m.contains("ER_BIO_F") && m.contains("not found"), "{m}");
    assert!(
        m.contains("the tables you can query are: ER_PHA_F, ER_PRS_F, IR_BEN_R, T_MCO22C"),
        "{m}"
    );
    // The 2021 PMSI table is outside the years.
    failed(&g, "alice", &a, "SELECT COUNT(*) FROM T_MCO21C").await;
    let t = run(
        &g,
        "alice",
        &a,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .await
    .unwrap();
    assert_eq!(
        strings(&t, 0),
        ["ER_PHA_F", "ER_PRS_F", "IR_BEN_R", "T_MCO22C"]
    );
    let c = run(
        &g,
        "alice",
        &a,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'IR_BEN_R' ORDER BY 1",
    )
    .await
    .unwrap();
    assert_eq!(
        strings(&c, 0),
        ["BEN_NAI_ANN", "BEN_NIR_PSA", "BEN_RES_DPT", "BEN_SEX_COD"]
    );
    // Another project's name means nothing here.
    failed(&g, "alice", &a, "SELECT * FROM \"proj-b\".ER_PRS_F").await;

    // --- years: only 2022 care, refinement lines of 2022 claims only ---
    let visible = one(&run(&g, "alice", &a, "SELECT COUNT(*) FROM ER_PRS_F")
        .await
        .unwrap());
    let expected = one(
        &run(
            &g,
            "steward",
            &op(),
            "SELECT COUNT(*) FROM ER_PRS_F WHERE EXE_SOI_DTD >= DATE '2022-01-01' AND EXE_SOI_DTD < DATE '2023-01-01'",
        )
        .await
        .unwrap(),
    );
    assert!(expected > 100);
    assert_eq!(visible, expected);
    let keys = pds_snds::schema::DCIR_JOIN_KEYS
        .iter()
        .map(|k| format!("h.{k} = p.{k}"))
        .collect::<Vec<_>>()
        .join(" AND ");
    let pha_expected = one(
        &run(
            &g,
            "steward",
            &op(),
            &format!(
                "SELECT COUNT(*) FROM ER_PHA_F h WHERE EXISTS (SELECT 1 FROM ER_PRS_F p WHERE {keys} AND p.EXE_SOI_DTD >= DATE '2022-01-01' AND p.EXE_SOI_DTD < DATE '2023-01-01')"
            ),
        )
        .await
        .unwrap(),
    );
    let pha_all = one(&run(&g, "steward", &op(), "SELECT COUNT(*) FROM ER_PHA_F")
        .await
        .unwrap());
    assert!(pha_expected > 0 && pha_expected < pha_all);
    assert_eq!(
        one(&run(&g, "alice", &a, "SELECT COUNT(*) FROM ER_PHA_F")
            .await
            .unwrap()),
        pha_expected
    );
    for sql in [
        "SELECT COUNT(*) FROM ER_PRS_F WHERE EXE_SOI_DTD < DATE '2022-01-01' OR EXE_SOI_DTD >= DATE '2023-01-01'",
        "WITH x AS (SELECT * FROM ER_PRS_F) SELECT COUNT(*) FROM x WHERE EXTRACT(year FROM EXE_SOI_DTD) <> 2022",
        "SELECT COUNT(*) FROM (SELECT EXE_SOI_DTD d FROM ER_PRS_F UNION ALL SELECT EXE_SOI_DTD FROM ER_PRS_F) u WHERE EXTRACT(year FROM d) <> 2022",
    ] {
        assert_eq!(one(&run(&g, "alice", &a, sql).await.unwrap()), 0, "{sql}");
    }
    let w = run(
        &g,
        "alice",
        &a,
        "SELECT MAX(r) FROM (SELECT row_number() OVER (ORDER BY EXE_SOI_DTD) r FROM ER_PRS_F) t",
    )
    .await
    .unwrap();
    assert_eq!(one(&w), visible);

    // --- coarsening: care dates to the month, whatever the cast ---
    assert_eq!(
        one(&run(
            &g,
            "alice",
            &a,
            "SELECT COUNT(*) FROM ER_PRS_F WHERE EXTRACT(day FROM EXE_SOI_DTD) <> 1"
        )
        .await
        .unwrap()),
        0
    );
    let days = run(
        &g,
        "alice",
        &a,
        "SELECT DISTINCT CAST(EXE_SOI_DTD AS VARCHAR) FROM ER_PRS_F",
    )
    .await
    .unwrap();
    assert!(
        strings(&days, 0).iter().all(|d| d.ends_with("-01")),
        "{:?}",
        strings(&days, 0)
    );

    // --- an error cannot reveal rows outside the perimeter ---
    // Evaluated on a 2021 row, this predicate divides by zero; the barrier
    // keeps it above the perimeter filter, so it never sees one.
    let oracle = "SELECT COUNT(*) FROM ER_PRS_F WHERE 1 / (CASE WHEN EXE_SOI_DTD < DATE '2022-01-01' THEN 0 ELSE 1 END) = 1";
    assert_eq!(one(&run(&g, "alice", &a, oracle).await.unwrap()), visible);
    let w = p("proj-women");
    let women = one(&run(&g, "alice", &w, "SELECT COUNT(*) FROM IR_BEN_R")
        .await
        .unwrap());
    assert_eq!(
        women,
        one(&run(
            &g,
            "steward",
            &op(),
            "SELECT COUNT(*) FROM IR_BEN_R WHERE BEN_SEX_COD = 2"
        )
        .await
        .unwrap())
    );
    let oracle =
        "SELECT COUNT(*) FROM IR_BEN_R WHERE 1 / (CASE WHEN BEN_SEX_COD = 1 THEN 0 ELSE 1 END) = 1";
    assert_eq!(one(&run(&g, "alice", &w, oracle).await.unwrap()), women);
    // The population reaches DCIR and its refinement tables.
    assert_eq!(
        one(&run(
            &g,
            "alice",
            &w,
            "SELECT COUNT(*) FROM ER_PRS_F WHERE BEN_SEX_COD <> 2"
        )
        .await
        .unwrap()),
        0
    );
    let men_claims = one(&run(
        &g,
        "steward",
        &op(),
        "SELECT COUNT(*) FROM ER_PRS_F WHERE BEN_SEX_COD = 1",
    )
    .await
    .unwrap());
    let all_claims = one(&run(&g, "steward", &op(), "SELECT COUNT(*) FROM ER_PRS_F")
        .await
        .unwrap());
    assert_eq!(
        one(&run(&g, "alice", &w, "SELECT COUNT(*) FROM ER_PRS_F")
            .await
            .unwrap()),
        all_claims - men_claims
    );

    // --- statements that are not reads ---
    let copy_target = dir.path().join("leak.csv");
    for (sql, why) in [
        (
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
            "DDL not supported",
        ),
        (
            "CREATE VIEW v AS SELECT * FROM ER_PRS_F",
            "DDL not supported",
        ),
        ("DROP TABLE ER_PRS_F", "DDL not supported"),
        (
            "INSERT INTO ER_PRS_F (PRS_NAT_REF) VALUES (1)",
            "DML not supported",
        ),
        (
            &format!(
                "COPY (SELECT * FROM ER_PRS_F) TO '{}'",
                copy_target.display()
            ),
            "DML not supported",
        ),
        (
            "SET datafusion.execution.batch_size = 1",
            "Statement not supported",
        ),
        (
            "SET datafusion.runtime.memory_limit = '1T'",
            "Statement not supported",
        ),
        ("BEGIN TRANSACTION", "only reads are allowed"),
        (
            "EXPLAIN SELECT * FROM ER_PRS_F",
            "EXPLAIN is not available to projects",
        ),
        (
            "EXPLAIN ANALYZE SELECT * FROM ER_PRS_F",
            "EXPLAIN is not available to projects",
        ),
    ] {
        let m = refused(&g, "alice", &a, sql).await;
        assert!(m.contains(why), "{sql}: {m}");
        assert!(!m.contains("snapshots/") && !m.contains("pds://"), "{m}");
    }
    assert!(!copy_target.exists());
    // No file, URL or table function reaches storage.
    for sql in [
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM read_parquet('objects/snapshots/1/x.parquet')",
        "SELECT * FROM read_csv('/etc/passwd')",
    ] {
        let m = failed(&g, "alice", &a, sql).await;
        assert!(!m.contains("snapshots/1/"), "{m}");
    }
    failed(&g, "alice", &a, "SELECT project_pseudonym('0123')").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_pseudonyms_are_private_to_each_project_and_keep_linkage() {
    let dir = tempfile::tempdir().unwrap();
    let g = setup(dir.path()).await;
    let (a, b) = (p("proj-a"), p("proj-b"));
    let platform: std::collections::BTreeSet<String> = strings(
        &run(&g, "steward", &op(), "SELECT BEN_NIR_PSA FROM IR_BEN_R")
            .await
            .unwrap(),
        0,
    )
    .into_iter()
    .collect();
    let in_a: std::collections::BTreeSet<String> = strings(
        &run(&g, "alice", &a, "SELECT BEN_NIR_PSA FROM IR_BEN_R")
            .await
            .unwrap(),
        0,
    )
    .into_iter()
    .collect();
    let in_b: std::collections::BTreeSet<String> = strings(
        &run(&g, "alice", &b, "SELECT BEN_NIR_PSA FROM IR_BEN_R")
            .await
            .unwrap(),
        0,
    )
    .into_iter()
    .collect();
    assert_eq!(in_a.len(), platform.len());
    assert_eq!(in_b.len(), platform.len());
    assert!(
        in_a.iter().all(|v| v.starts_with("v1:") && v.len() == 35),
        "{in_a:?}"
    );
    assert!(in_a.is_disjoint(&platform) && in_b.is_disjoint(&platform));
    assert!(in_a.is_disjoint(&in_b), "two projects share pseudonyms");
    // No column of any visible table carries a platform pseudonym.
    let pmsi = run(&g, "alice", &a, "SELECT * FROM T_MCO22C")
        .await
        .unwrap();
    for (i, f) in pmsi[0].schema().fields().iter().enumerate() {
        for v in strings(&pmsi, i) {
            assert!(
                !platform.contains(&v),
                "T_MCO22C.{} shows a platform pseudonym",
                f.name()
            );
        }
    }

    // Linkage inside the project: DCIR ↔ beneficiaries ↔ PMSI.
    let link = |sql: &str| sql.to_string();
    let joined = one(&run(
        &g,
        "alice",
        &a,
        &link("SELECT COUNT(*) FROM ER_PRS_F p JOIN IR_BEN_R b ON p.BEN_NIR_PSA = b.BEN_NIR_PSA"),
    )
    .await
    .unwrap());
    let raw = one(
        &run(
            &g,
            "steward",
            &op(),
            "SELECT COUNT(*) FROM ER_PRS_F p JOIN IR_BEN_R b ON p.BEN_NIR_PSA = b.BEN_NIR_PSA WHERE p.EXE_SOI_DTD >= DATE '2022-01-01' AND p.EXE_SOI_DTD < DATE '2023-01-01'",
        )
        .await
        .unwrap(),
    );
    assert!(raw > 0);
    assert_eq!(joined, raw);
    let stays = one(&run(
        &g,
        "alice",
        &a,
        "SELECT COUNT(*) FROM T_MCO22C c JOIN IR_BEN_R b ON c.NIR_ANO_17 = b.BEN_NIR_PSA",
    )
    .await
    .unwrap());
    let raw_stays = one(&run(
        &g,
        "steward",
        &op(),
        "SELECT COUNT(*) FROM T_MCO22C c JOIN IR_BEN_R b ON c.NIR_ANO_17 = b.BEN_NIR_PSA",
    )
    .await
    .unwrap());
    assert!(raw_stays > 0);
    assert_eq!(stays, raw_stays);

    // Rotation: every pseudonym changes, linkage stays.
    let admin = g.admin("steward");
    assert_eq!(admin.rotate_key("proj-a").await.unwrap(), 2);
    let after: std::collections::BTreeSet<String> = strings(
        &run(&g, "alice", &a, "SELECT BEN_NIR_PSA FROM IR_BEN_R")
            .await
            .unwrap(),
        0,
    )
    .into_iter()
    .collect();
    assert_eq!(after.len(), in_a.len());
    assert!(after.iter().all(|v| v.starts_with("v2:")));
    assert!(after.is_disjoint(&in_a));
    assert_eq!(
        one(&run(
            &g,
            "alice",
            &a,
            "SELECT COUNT(*) FROM ER_PRS_F p JOIN IR_BEN_R b ON p.BEN_NIR_PSA = b.BEN_NIR_PSA"
        )
        .await
        .unwrap()),
        raw
    );
    let keys = g.catalog().project_keys("proj-a").await.unwrap();
    assert_eq!(keys.len(), 2);
    assert!(
        keys[0].wrapped_key.is_empty() && keys[0].retired_at.is_some(),
        "old key destroyed"
    );

    // Expiry ends access at once.
    admin.expire("proj-b").await.unwrap();
    let m = refused(&g, "bob", &b, "SELECT COUNT(*) FROM IR_BEN_R").await;
    assert!(m.contains("expired"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_only_projects_get_aggregates() {
    let dir = tempfile::tempdir().unwrap();
    let g = setup(dir.path()).await;
    let c = p("proj-agg");
    for sql in [
        "SELECT * FROM ER_PRS_F",
        "SELECT BEN_SEX_COD FROM IR_BEN_R",
        "SELECT BEN_NIR_PSA, COUNT(*) FROM ER_PRS_F GROUP BY BEN_NIR_PSA",
        "SELECT MAX(BEN_NIR_PSA) FROM ER_PRS_F",
        "SELECT array_agg(BEN_NAI_ANN) FROM IR_BEN_R",
        "SELECT n FROM (SELECT COUNT(*) n FROM IR_BEN_R) t UNION ALL SELECT BEN_NAI_ANN FROM IR_BEN_R",
        // Values smuggled through a scalar subquery, a VALUES row or an alias.
        "SELECT (SELECT string_agg(BEN_NIR_PSA, ',') FROM ER_PRS_F)",
        "SELECT (SELECT BEN_NIR_PSA FROM IR_BEN_R LIMIT 1)",
        "VALUES ((SELECT BEN_NIR_PSA FROM IR_BEN_R LIMIT 1))",
        "SELECT p, COUNT(*) FROM (SELECT BEN_NIR_PSA AS p FROM ER_PRS_F) t GROUP BY p",
        "SELECT MAX(p) FROM (SELECT BEN_NIR_PSA AS p FROM ER_PRS_F) t",
        "SELECT MAX(x) FROM (SELECT BEN_NIR_PSA || '' FROM ER_PRS_F) t(x)",
        "SELECT COUNT(*) FROM (SELECT first_value(BEN_NIR_PSA) OVER () AS f FROM ER_PRS_F) t GROUP BY f",
    ] {
        let m = refused(&g, "alice", &c, sql).await;
        assert!(m.contains("aggregate-only"), "{sql}: {m}");
    }
    let by_sex = run(
        &g,
        "alice",
        &c,
        "SELECT BEN_SEX_COD, COUNT(*) n FROM IR_BEN_R GROUP BY 1 ORDER BY 1",
    )
    .await
    .unwrap();
    let raw = run(
        &g,
        "steward",
        &op(),
        "SELECT BEN_SEX_COD, COUNT(*) n FROM IR_BEN_R GROUP BY 1 ORDER BY 1",
    )
    .await
    .unwrap();
    assert_eq!(strings(&by_sex, 1), strings(&raw, 1));
    let people = one(&run(
        &g,
        "alice",
        &c,
        "SELECT COUNT(DISTINCT BEN_NIR_PSA) FROM ER_PRS_F",
    )
    .await
    .unwrap());
    let raw_people = one(&run(
        &g,
        "steward",
        &op(),
        "SELECT COUNT(DISTINCT BEN_NIR_PSA) FROM ER_PRS_F",
    )
    .await
    .unwrap());
    assert_eq!(people, raw_people);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_perimeter_with_two_full_precision_identifiers_is_refused_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let g = setup(dir.path()).await;
    let admin = g.admin("steward");
    let mut per = Perimeter::all_columns(&["ER_PRS_F", "IR_BEN_R"]);
    per.coarsening.care_dates = pds_project::perimeter::DatePrecision::Day;
    per.coarsening.residence = pds_project::perimeter::GeoPrecision::Commune;
    let before = g
        .catalog()
        .audit_entries(&Default::default())
        .await
        .unwrap()
        .len();
    let e = admin
        .create(&project("proj-x", AccessMode::RowLevel, per.clone()))
        .await
        .unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("2 potential identifiers at full precision"),
        "{m}"
    );
    assert!(
        m.contains("exact date of care (ER_PRS_F.EXE_SOI_DTD"),
        "{m}"
    );
    assert!(
        m.contains("commune of residence (") && m.contains("IR_BEN_R.BEN_RES_COM"),
        "{m}"
    );
    assert!(g.catalog().project("proj-x").await.unwrap().is_none());
    assert_eq!(
        g.catalog()
            .audit_entries(&Default::default())
            .await
            .unwrap()
            .len(),
        before
    );
    // One identifier at full precision is allowed, and shown as such.
    per.coarsening.residence = pds_project::perimeter::GeoPrecision::Department;
    admin
        .create(&project("proj-x", AccessMode::RowLevel, per))
        .await
        .unwrap();
    admin
        .grant("proj-x", "alice", Role::Researcher)
        .await
        .unwrap();
    let x = p("proj-x");
    let days = one(&run(
        &g,
        "alice",
        &x,
        "SELECT COUNT(DISTINCT EXTRACT(day FROM EXE_SOI_DTD)) FROM ER_PRS_F",
    )
    .await
    .unwrap());
    assert!(days > 1, "exact days are visible");
    // Unknown tables and columns are named.
    let mut bad = Perimeter::all_columns(&["ER_XXX_F"]);
    let m = admin
        .create(&project("proj-y", AccessMode::RowLevel, bad.clone()))
        .await
        .unwrap_err()
        .to_string();
    assert!(m.contains("table ER_XXX_F is not in the snapshot"), "{m}");
    bad = Perimeter::all_columns(&[]);
    bad.tables.insert("ER_PRS_F".into(), cols(&["NOPE"]));
    let m = admin
        .create(&project("proj-y", AccessMode::RowLevel, bad))
        .await
        .unwrap_err()
        .to_string();
    assert!(m.contains("table ER_PRS_F has no column NOPE"), "{m}");
    let mut twice = Perimeter::all_columns(&["T_MCOaaB"]);
    twice
        .tables
        .insert("T_MCO22B".into(), cols(&["ETA_NUM", "RSA_NUM"]));
    let m = admin
        .create(&project("proj-y", AccessMode::RowLevel, twice))
        .await
        .unwrap_err()
        .to_string();
    assert!(m.contains("T_MCO22B is granted twice"), "{m}");
    let mut pop = Perimeter::all_columns(&["IR_BEN_R"]);
    pop.population = Some("BEN_SEX_COD = 2 AND PRS_NAT_REF = 1".into());
    let m = admin
        .create(&project("proj-y", AccessMode::RowLevel, pop))
        .await
        .unwrap_err()
        .to_string();
    assert!(m.contains("PRS_NAT_REF is not a column of IR_BEN_R"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cohort_restricts_every_table_including_pmsi_through_its_stays() {
    let dir = tempfile::tempdir().unwrap();
    let g = setup(dir.path()).await;
    // Five people who had a 2022 stay, chosen by the steward (platform pseudonyms).
    let chosen = strings(
        &run(
            &g,
            "steward",
            &op(),
            "SELECT DISTINCT NIR_ANO_17 FROM T_MCO22C WHERE NIR_ANO_17 NOT LIKE 'X%' AND NIR_ANO_17 NOT LIKE 'x%' ORDER BY 1 LIMIT 5",
        )
        .await
        .unwrap(),
        0,
    );
    assert_eq!(chosen.len(), 5);
    let list = chosen
        .iter()
        .map(|c| format!("'{c}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let admin = g.admin("steward");
    let mut per = Perimeter::all_columns(&["IR_BEN_R", "ER_PRS_F", "T_MCOaaB", "T_MCOaaC"]);
    per.years = Some([2022, 2022]);
    let mut np = project("proj-cohort", AccessMode::RowLevel, per);
    np.cohort = chosen.clone();
    admin.create(&np).await.unwrap();
    admin
        .grant("proj-cohort", "alice", Role::Researcher)
        .await
        .unwrap();
    let c = p("proj-cohort");
    let count = |sql: String| {
        let g = &g;
        async move { one(&run(g, "steward", &op(), &sql).await.unwrap()) }
    };
    assert_eq!(
        one(&run(
            &g,
            "alice",
            &c,
            "SELECT COUNT(DISTINCT BEN_NIR_PSA) FROM IR_BEN_R"
        )
        .await
        .unwrap()),
        5
    );
    assert_eq!(
        one(&run(&g, "alice", &c, "SELECT COUNT(*) FROM ER_PRS_F").await.unwrap()),
        count(format!(
            "SELECT COUNT(*) FROM ER_PRS_F WHERE BEN_NIR_PSA IN ({list}) AND EXE_SOI_DTD >= DATE '2022-01-01' AND EXE_SOI_DTD < DATE '2023-01-01'"
        ))
        .await
    );
    let stays = count(format!(
        "SELECT COUNT(*) FROM T_MCO22C WHERE NIR_ANO_17 IN ({list})"
    ))
    .await;
    assert!(stays >= 5);
    assert_eq!(
        one(&run(&g, "alice", &c, "SELECT COUNT(*) FROM T_MCO22C")
            .await
            .unwrap()),
        stays
    );
    let b_rows = count(format!(
        "SELECT COUNT(*) FROM T_MCO22B b WHERE EXISTS (SELECT 1 FROM T_MCO22C c WHERE c.ETA_NUM = b.ETA_NUM AND c.RSA_NUM = b.RSA_NUM AND c.NIR_ANO_17 IN ({list}))"
    ))
    .await;
    assert!(b_rows >= 5);
    assert_eq!(
        one(&run(&g, "alice", &c, "SELECT COUNT(*) FROM T_MCO22B")
            .await
            .unwrap()),
        b_rows
    );
    // Replacing the cohort by five other people takes effect at once.
    let before: std::collections::BTreeSet<String> = strings(
        &run(&g, "alice", &c, "SELECT BEN_NIR_PSA FROM IR_BEN_R")
            .await
            .unwrap(),
        0,
    )
    .into_iter()
    .collect();
    let others = strings(
        &run(
            &g,
            "steward",
            &op(),
            &format!("SELECT DISTINCT BEN_NIR_PSA FROM IR_BEN_R WHERE BEN_NIR_PSA NOT IN ({list}) ORDER BY 1 LIMIT 5"),
        )
        .await
        .unwrap(),
        0,
    );
    // Lower case and duplicates are normalised.
    let mut given: Vec<String> = others.iter().map(|o| o.to_lowercase()).collect();
    given.push(others[0].clone());
    let mut per2 = Perimeter::all_columns(&["IR_BEN_R"]);
    per2.years = Some([2022, 2022]);
    admin
        .set_perimeter("proj-cohort", &per2, &given, None)
        .await
        .unwrap();
    let after: std::collections::BTreeSet<String> = strings(
        &run(&g, "alice", &c, "SELECT BEN_NIR_PSA FROM IR_BEN_R")
            .await
            .unwrap(),
        0,
    )
    .into_iter()
    .collect();
    assert_eq!(after.len(), 5);
    assert!(after.is_disjoint(&before));
    let mut expected = others.clone();
    expected.sort();
    assert_eq!(g.catalog().cohort("proj-cohort").await.unwrap(), expected);
    // A cohort line that is not a platform pseudonym is refused, nothing changes.
    let e = admin
        .set_perimeter(
            "proj-cohort",
            &Perimeter::all_columns(&["IR_BEN_R"]),
            &["not-a-pseudonym".into()],
            None,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("cohort line 1"), "{e}");
    assert_eq!(g.catalog().cohort("proj-cohort").await.unwrap(), expected);
}
