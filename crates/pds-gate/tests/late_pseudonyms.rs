//! Project pseudonyms mapped late give the same results as mapped in the
//! views, and no stored (platform) pseudonym ever reaches a result or an
//! error message, whatever the statement does with identifiers.

mod common;

use std::collections::BTreeSet;

use common::*;
use pds_gate::{Gate, GateError};
use pds_project::perimeter::Perimeter;
use pds_project::{AccessMode, NewProject, Role};

async fn setup(dir: &std::path::Path) -> Gate {
    let h = loaded(dir).await;
    let gate = Gate::open(&h).await.unwrap();
    let admin = gate.admin("steward");
    let mut perimeter =
        Perimeter::all_columns(&["IR_BEN_R", "ER_PRS_F", "ER_PHA_F", "T_MCOaaB", "T_MCOaaC"]);
    perimeter.years = Some([2021, 2022]);
    admin
        .create(&NewProject {
            id: "late".into(),
            title: "Late mapping".into(),
            authorisation: "CNIL DR-2026-002".into(),
            starts_on: "2020-01-01".into(),
            expires_on: "2099-12-31".into(),
            mode: AccessMode::RowLevel,
            snapshot: None,
            perimeter,
            cohort: Vec::new(),
        })
        .await
        .unwrap();
    admin
        .grant("late", "alice", Role::Researcher)
        .await
        .unwrap();
    gate
}

/// Every cell of a result, row by row, as text; rows sorted unless the
/// statement orders them.
fn table(batches: &[arrow::array::RecordBatch], ordered: bool) -> Vec<Vec<String>> {
    let n = batches.first().map_or(0, |b| b.num_columns());
    let cols: Vec<Vec<String>> = (0..n).map(|i| strings(batches, i)).collect();
    let rows = cols.first().map_or(0, Vec::len);
    let mut out: Vec<Vec<String>> = (0..rows)
        .map(|r| cols.iter().map(|c| c[r].clone()).collect())
        .collect();
    if !ordered {
        out.sort();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_mapping_changes_no_result_and_leaks_no_stored_pseudonym() {
    let dir = tempfile::tempdir().unwrap();
    let g = setup(dir.path()).await;
    let proj = p("late");
    let platform: BTreeSet<String> = strings(
        &run(&g, "steward", &op(), "SELECT BEN_NIR_PSA FROM IR_BEN_R")
            .await
            .unwrap(),
        0,
    )
    .into_iter()
    .collect();
    assert!(platform.len() >= 300);
    // A project pseudonym to compare with literally.
    let some = strings(
        &run(&g, "alice", &proj, "SELECT MIN(BEN_NIR_PSA) FROM IR_BEN_R")
            .await
            .unwrap(),
        0,
    )
    .remove(0);
    assert!(some.starts_with("v1:"), "{some}");

    let statements = [
        // Equality joins and grouping: where late mapping saves the work.
        "SELECT b.BEN_NIR_PSA, COUNT(*) AS n FROM ER_PRS_F p JOIN IR_BEN_R b ON p.BEN_NIR_PSA = b.BEN_NIR_PSA GROUP BY b.BEN_NIR_PSA",
        "SELECT COUNT(DISTINCT BEN_NIR_PSA), COUNT(BEN_NIR_PSA) FROM ER_PRS_F",
        "SELECT b.BEN_NIR_PSA, c.NIR_ANO_17, c.ETA_NUM FROM IR_BEN_R b LEFT JOIN T_MCO22C c ON c.NIR_ANO_17 = b.BEN_NIR_PSA",
        "WITH f AS (SELECT BEN_NIR_PSA, MIN(EXE_SOI_DTD) AS d FROM ER_PRS_F GROUP BY BEN_NIR_PSA) \
         SELECT f.BEN_NIR_PSA, f.d, b.BEN_SEX_COD FROM f JOIN IR_BEN_R b ON f.BEN_NIR_PSA = b.BEN_NIR_PSA",
        "SELECT DISTINCT BEN_NIR_PSA FROM ER_PHA_F f JOIN ER_PRS_F p ON f.FLX_DIS_DTD = p.FLX_DIS_DTD AND f.FLX_TRT_DTD = p.FLX_TRT_DTD \
         AND f.FLX_EMT_TYP = p.FLX_EMT_TYP AND f.FLX_EMT_NUM = p.FLX_EMT_NUM AND f.FLX_EMT_ORD = p.FLX_EMT_ORD AND f.ORG_CLE_NUM = p.ORG_CLE_NUM \
         AND f.DCT_ORD_NUM = p.DCT_ORD_NUM AND f.PRS_ORD_NUM = p.PRS_ORD_NUM AND f.REM_TYP_AFF = p.REM_TYP_AFF",
        "SELECT BEN_NIR_PSA FROM ER_PRS_F UNION SELECT NIR_ANO_17 FROM T_MCO22C",
        "SELECT BEN_NIR_PSA, ROW_NUMBER() OVER (PARTITION BY BEN_NIR_PSA ORDER BY EXE_SOI_DTD, PRS_ORD_NUM, DCT_ORD_NUM) AS r FROM ER_PRS_F",
        "SELECT b.BEN_NIR_PSA FROM IR_BEN_R b WHERE b.BEN_NIR_PSA IN (SELECT BEN_NIR_PSA FROM ER_PRS_F)",
        "SELECT b.BEN_NIR_PSA FROM IR_BEN_R b WHERE NOT EXISTS (SELECT 1 FROM T_MCO22C c WHERE c.NIR_ANO_17 = b.BEN_NIR_PSA)",
        "SELECT b.BEN_NIR_PSA, (SELECT COUNT(*) FROM ER_PRS_F p WHERE p.BEN_NIR_PSA = b.BEN_NIR_PSA) AS n FROM IR_BEN_R b",
        "SELECT * FROM T_MCO22C",
        // Where the value itself matters: mapped first.
        "SELECT MIN(BEN_NIR_PSA), MAX(BEN_NIR_PSA) FROM ER_PRS_F",
        "SELECT substr(BEN_NIR_PSA, 1, 5) AS s, COUNT(*) FROM IR_BEN_R GROUP BY substr(BEN_NIR_PSA, 1, 5)",
        "SELECT BEN_NIR_PSA || '/' || BEN_SEX_COD, length(BEN_NIR_PSA) FROM IR_BEN_R",
        "SELECT p.BEN_NIR_PSA, p.EXE_SOI_DTD FROM ER_PRS_F p JOIN IR_BEN_R b ON p.BEN_NIR_PSA = b.BEN_NIR_PSA WHERE p.BEN_NIR_PSA > 'v1:M'",
        "SELECT b.BEN_NIR_PSA FROM IR_BEN_R b JOIN (SELECT BEN_NIR_PSA AS k FROM IR_BEN_R ORDER BY BEN_NIR_PSA LIMIT 3) t ON t.k = b.BEN_NIR_PSA",
        "SELECT BEN_NIR_PSA, BEN_SEX_COD FROM IR_BEN_R WHERE BEN_NIR_PSA IN (SELECT NIR_ANO_17 FROM T_MCO22C) OR BEN_SEX_COD = 2",
    ];
    let ordered = [
        (
            "SELECT BEN_NIR_PSA FROM IR_BEN_R ORDER BY BEN_NIR_PSA LIMIT 7",
            true,
        ),
        (
            "SELECT BEN_NIR_PSA, COUNT(*) FROM ER_PRS_F GROUP BY BEN_NIR_PSA ORDER BY BEN_NIR_PSA DESC LIMIT 5",
            true,
        ),
    ];
    let literal =
        format!("SELECT BEN_NIR_PSA, BEN_SEX_COD FROM IR_BEN_R WHERE BEN_NIR_PSA = '{some}'");
    let all = statements
        .iter()
        .map(|s| (s.to_string(), false))
        .chain(ordered.iter().map(|(s, o)| (s.to_string(), *o)))
        .chain([(literal.clone(), false)]);
    for (sql, ordered) in all {
        g.set_late_pseudonyms(false);
        let early = table(&run(&g, "alice", &proj, &sql).await.unwrap(), ordered);
        g.set_late_pseudonyms(true);
        let late = table(&run(&g, "alice", &proj, &sql).await.unwrap(), ordered);
        assert_eq!(early.len(), late.len(), "{sql}");
        assert!(early == late, "{sql}: results differ");
        for row in &late {
            for v in row {
                assert!(
                    !platform.iter().any(|s| v.contains(s.as_str())),
                    "{sql}: a stored pseudonym reached the result"
                );
            }
        }
    }
    // Identifiers grouped on stored values leave sorted by project
    // pseudonym: the order of the platform values shows nowhere.
    let grouped = strings(
        &run(
            &g,
            "alice",
            &proj,
            "SELECT b.BEN_NIR_PSA FROM ER_PRS_F p JOIN IR_BEN_R b ON p.BEN_NIR_PSA = b.BEN_NIR_PSA GROUP BY b.BEN_NIR_PSA",
        )
        .await
        .unwrap(),
        0,
    );
    let mut sorted = grouped.clone();
    sorted.sort();
    assert!(grouped.len() > 100);
    assert_eq!(grouped, sorted);

    // The literal found its one patient.
    let found = run(&g, "alice", &proj, &literal).await.unwrap();
    assert_eq!(strings(&found, 0), vec![some.clone()]);

    // Errors quote mapped values only.
    for sql in [
        "SELECT CAST(BEN_NIR_PSA AS INT) FROM IR_BEN_R",
        "SELECT CAST(b.BEN_NIR_PSA AS BIGINT) FROM ER_PRS_F p JOIN IR_BEN_R b ON p.BEN_NIR_PSA = b.BEN_NIR_PSA",
    ] {
        let m = match run(&g, "alice", &proj, sql).await {
            Err(GateError::Failed(m)) => m,
            other => panic!("{sql}: expected a failure, got {other:?}"),
        };
        assert!(
            !platform.iter().any(|s| m.contains(s.as_str())),
            "{sql}: a stored pseudonym in the error: {m}"
        );
    }
}

/// The snapshot numbers identifiers: statements that only join, group or
/// count patients never read the dictionary; a statement that shows
/// identifiers reads it, and a snapshot whose dictionary is gone fails
/// with an error that says so (without the identifiers or the number),
/// where mapping in the views still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_stand_for_identifiers_until_a_value_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let g = setup(dir.path()).await;
    let proj = p("late");
    let count = "SELECT COUNT(DISTINCT p.BEN_NIR_PSA) AS n FROM ER_PRS_F p JOIN IR_BEN_R b \
                 ON p.BEN_NIR_PSA = b.BEN_NIR_PSA AND p.BEN_RNG_GEM = b.BEN_RNG_GEM";
    let expected = one(&run(&g, "alice", &proj, count).await.unwrap());
    assert!(expected >= 200, "{expected}");
    let list = "SELECT DISTINCT BEN_NIR_PSA FROM ER_PRS_F";
    let listed = strings(&run(&g, "alice", &proj, list).await.unwrap(), 0);
    assert_eq!(listed.len() as i64, expected);

    // The dictionary removed, in a fresh gate (nothing in memory).
    let home = pds_home::Home::open(&dir.path().join("home")).unwrap();
    let objects = home.local_storage_dir().unwrap();
    let dictionary = objects
        .join("snapshots/1")
        .join(pds_snds::identifiers::DICTIONARY_PATH);
    assert!(dictionary.is_file(), "{}", dictionary.display());
    std::fs::remove_file(&dictionary).unwrap();
    let g = Gate::open(&home).await.unwrap();
    assert_eq!(
        one(&run(&g, "alice", &proj, count).await.unwrap()),
        expected
    );
    let m = match run(&g, "alice", &proj, list).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a listing without the dictionary must fail"),
    };
    assert!(m.contains("identifier dictionary"), "{m}");
    assert!(m.contains("pds load"), "{m}");
    assert!(
        !m.contains("snapshots/1"),
        "storage path in the message: {m}"
    );
    // Mapped in the views, the stored identifiers are read instead.
    g.set_late_pseudonyms(false);
    let eager = strings(&run(&g, "alice", &proj, list).await.unwrap(), 0);
    let (mut a, mut b) = (eager, listed);
    a.sort();
    b.sort();
    assert_eq!(a, b);
}
