//! The airlock's state machine end to end, on a loaded synthetic home:
//! automatic checks, self-review refused, one approval not enough, two
//! checkers release, the released file keeps its hash, downloads are
//! limited, signed and expiring, and every step is in the audit log.

use std::sync::Arc;

use pds_airlock::{Airlock, AirlockError, Decision, FileType, NewRequest, Source};
use pds_gate::Gate;
use pds_home::{AirlockConfig, Home, InitMaster};
use pds_project::perimeter::Perimeter;
use pds_project::{AccessMode, NewProject, Role};
use sha2::{Digest, Sha256};

async fn setup(dir: &std::path::Path) -> (Home, Gate) {
    let delivery = dir.join("delivery");
    pds_synth::generate(
        &pds_synth::Config {
            beneficiaries: 200,
            first_year: 2022,
            last_year: 2022,
            seed: 5,
            out: delivery.clone(),
            format: pds_synth::Format::Csv,
            threads: Some(2),
        },
        &|_| {},
    )
    .unwrap();
    let h = Home::init(
        &dir.join("home"),
        &InitMaster::KeyFile(dir.join("master.key")),
    )
    .await
    .unwrap();
    pds_load::load(
        &h,
        &delivery,
        &pds_load::LoadOptions {
            threads: 2,
            ..Default::default()
        },
        Arc::new(|_: &pds_load::Progress| {}),
    )
    .await
    .unwrap();
    let gate = Gate::open(&h).await.unwrap();
    let admin = gate.admin("steward");
    admin
        .create(&NewProject {
            id: "study".into(),
            title: "Airlock test".into(),
            authorisation: "CNIL DR-2026-009".into(),
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
        .grant("study", "alice", Role::Researcher)
        .await
        .unwrap();
    admin.grant("study", "carol", Role::Checker).await.unwrap();
    admin.grant("study", "dave", Role::Checker).await.unwrap();
    admin
        .grant("study", "erin", Role::Researcher)
        .await
        .unwrap();
    (h, gate)
}

fn request(sql: &str) -> NewRequest {
    NewRequest {
        project: "study".into(),
        requester: "alice".into(),
        name: "table-1".into(),
        source: Source::Query {
            sql: sql.into(),
            format: FileType::Csv,
        },
        context: "Table 1 of the paper: beneficiaries by sex, 2022".into(),
        controls: "groups of 10 or more only, no identifiers".into(),
    }
}

async fn actions(gate: &Gate) -> Vec<(String, String, String)> {
    gate.catalog()
        .audit_entries(&pds_catalog::AuditFilter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action.starts_with("export."))
        .map(|e| (e.action, e.principal, e.decision))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_checkers_release_and_only_the_requester_downloads() {
    let dir = tempfile::tempdir().unwrap();
    let (h, gate) = setup(dir.path()).await;
    let storage = h.storage().unwrap();
    let config = AirlockConfig {
        max_downloads: 2,
        ..AirlockConfig::default()
    };
    let a = Airlock {
        gate: &gate,
        storage: &storage,
        config: &config,
    };
    let sql = "SELECT BEN_SEX_COD, count(DISTINCT BEN_NIR_PSA) AS patients FROM IR_BEN_R GROUP BY 1 ORDER BY 1";
    let e = a.request(request(sql)).await.unwrap();
    assert_eq!(e.state, "pending");
    assert_eq!(e.kind, "query");
    assert_eq!(e.statement.as_deref(), Some(sql));
    assert_eq!(e.file_rows, Some(2));
    // The frozen file is the statement's result, hashed.
    let (_, batches) = gate
        .execute("alice", &pds_gate::Target::Project("study".into()), sql)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let expected = pds_airlock::encode(&batches[0].schema(), &batches, FileType::Csv).unwrap();
    assert_eq!(e.sha256, hex::encode(Sha256::digest(&expected)));
    let report: pds_airlock::Report = serde_json::from_str(&e.checks).unwrap();
    assert!(!report.blocked());

    // The requester never reviews; a researcher is no checker.
    for (who, why) in [("alice", "asked for export"), ("erin", "not a checker")] {
        match a.review(&e.id, who, Decision::Approve, "").await {
            Err(AirlockError::Denied(m)) => assert!(m.contains(why), "{m}"),
            other => panic!("{who}: {other:?}"),
        }
    }
    // One approval is not enough; the same checker twice is one approval.
    let e1 = a
        .review(&e.id, "carol", Decision::Approve, "")
        .await
        .unwrap();
    assert_eq!(e1.state, "pending");
    match a.review(&e.id, "carol", Decision::Approve, "").await {
        Err(AirlockError::Conflict(m)) => assert!(m.contains("already reviewed"), "{m}"),
        other => panic!("{other:?}"),
    }
    match a.link(&e.id, "alice").await {
        Err(AirlockError::Conflict(m)) => assert!(m.contains("pending"), "{m}"),
        other => panic!("{other:?}"),
    }
    let e2 = a
        .review(&e.id, "dave", Decision::Approve, "fine")
        .await
        .unwrap();
    assert_eq!(e2.state, "released");
    assert!(e2.released_at.is_some());
    match a
        .review(&e.id, "dave", Decision::Reject, "changed my mind")
        .await
    {
        Err(AirlockError::Conflict(m)) => assert!(m.contains("released"), "{m}"),
        other => panic!("{other:?}"),
    }

    // Only the requester gets a link; the file has the recorded hash.
    assert!(matches!(
        a.link(&e.id, "carol").await,
        Err(AirlockError::Denied(_))
    ));
    let link = a.link(&e.id, "alice").await.unwrap();
    let forged = format!("{}00", &link.signature[..link.signature.len() - 2]);
    assert!(matches!(
        a.download(&e.id, "alice", link.expires, &forged).await,
        Err(AirlockError::Denied(_))
    ));
    assert!(matches!(
        a.download(&e.id, "alice", link.expires + 60, &link.signature)
            .await,
        Err(AirlockError::Denied(_))
    ));
    assert!(matches!(
        a.download(&e.id, "carol", link.expires, &link.signature)
            .await,
        Err(AirlockError::Denied(_))
    ));
    let (row, bytes) = a
        .download(&e.id, "alice", link.expires, &link.signature)
        .await
        .unwrap();
    assert_eq!(bytes, expected);
    assert_eq!(row.downloads, 1);
    a.download(&e.id, "alice", link.expires, &link.signature)
        .await
        .unwrap();
    match a
        .download(&e.id, "alice", link.expires, &link.signature)
        .await
    {
        Err(AirlockError::Denied(m)) => assert!(m.contains("2 of 2 downloads"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        a.link(&e.id, "alice").await,
        Err(AirlockError::Conflict(_))
    ));

    // An expired link is refused even with a good signature.
    let short = AirlockConfig {
        link_minutes: 0,
        ..AirlockConfig::default()
    };
    let b = Airlock {
        gate: &gate,
        storage: &storage,
        config: &short,
    };
    let e = b.request(request(sql)).await.unwrap();
    b.review(&e.id, "carol", Decision::Approve, "")
        .await
        .unwrap();
    b.review(&e.id, "dave", Decision::Approve, "")
        .await
        .unwrap();
    let link = b.link(&e.id, "alice").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    match b
        .download(&e.id, "alice", link.expires, &link.signature)
        .await
    {
        Err(AirlockError::Denied(m)) => assert!(m.contains("expired"), "{m}"),
        other => panic!("{other:?}"),
    }

    // Every step is in the audit log, in order.
    let log = actions(&gate).await;
    let ours: Vec<(&str, &str, &str)> = log
        .iter()
        .take(15)
        .map(|(a, p, d)| (a.as_str(), p.as_str(), d.as_str()))
        .collect();
    assert_eq!(
        ours,
        [
            ("export.request", "alice", "allowed"),
            ("export.review", "alice", "refused"),
            ("export.review", "erin", "refused"),
            ("export.review", "carol", "allowed"),
            ("export.review", "dave", "allowed"),
            ("export.release", "dave", "allowed"),
            ("export.link", "alice", "allowed"),
            ("export.download", "alice", "refused"),
            ("export.download", "alice", "refused"),
            ("export.download", "carol", "refused"),
            ("export.download", "alice", "allowed"),
            ("export.download", "alice", "allowed"),
            ("export.download", "alice", "refused"),
            ("export.request", "alice", "allowed"),
            ("export.review", "carol", "allowed"),
        ]
    );
    let entries = gate
        .catalog()
        .audit_entries(&pds_catalog::AuditFilter::default())
        .await
        .unwrap();
    let released = entries
        .iter()
        .find(|x| x.action == "export.release")
        .unwrap();
    assert!(released.body.contains(&e2.sha256), "{}", released.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_refuse_identifiers_and_objections_end_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let (h, gate) = setup(dir.path()).await;
    let storage = h.storage().unwrap();
    let config = AirlockConfig::default();
    let a = Airlock {
        gate: &gate,
        storage: &storage,
        config: &config,
    };
    // Identifiers never leave: refused, nothing stored.
    match a
        .request(request(
            "SELECT BEN_NIR_PSA, BEN_SEX_COD FROM IR_BEN_R LIMIT 20",
        ))
        .await
    {
        Err(AirlockError::Checks(r)) => {
            assert!(
                r.blocking_text().contains("BEN_NIR_PSA"),
                "{}",
                r.blocking_text()
            )
        }
        other => panic!("{other:?}"),
    }
    // Too many rows.
    match a
        .request(request(
            "SELECT a.BEN_SEX_COD FROM IR_BEN_R a CROSS JOIN IR_BEN_R b",
        ))
        .await
    {
        Err(AirlockError::Checks(r)) => {
            assert!(r.blocking_text().contains("rows"), "{}", r.blocking_text())
        }
        other => panic!("{other:?}"),
    }
    assert!(gate.catalog().exports(None).await.unwrap().is_empty());
    assert!(storage.list("exports/").await.unwrap().is_empty());
    // Missing context.
    let mut r = request("SELECT 1 AS n");
    r.context = "table".into();
    assert!(matches!(a.request(r).await, Err(AirlockError::Invalid(_))));

    // Small counts are flagged for the reviewers, not refused.
    let e = a
        .request(request(
            "SELECT BEN_NAI_ANN, count(*) AS patients FROM IR_BEN_R GROUP BY 1",
        ))
        .await
        .unwrap();
    let report: pds_airlock::Report = serde_json::from_str(&e.checks).unwrap();
    assert!(
        report.findings.iter().any(|f| f.check == "small-count"),
        "{report:?}"
    );
    // A request for changes ends it; nobody can release it after that.
    let e = a
        .review(
            &e.id,
            "carol",
            Decision::RequestChanges,
            "round the counts to 5",
        )
        .await
        .unwrap();
    assert_eq!(e.state, "changes-requested");
    assert!(matches!(
        a.review(&e.id, "dave", Decision::Approve, "").await,
        Err(AirlockError::Conflict(_))
    ));
    assert_eq!(a.withdraw(&e.id, "alice").await.unwrap().state, "withdrawn");

    // A figure: a PNG passes; an SVG with a script does not; a rejection ends it.
    let png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR".to_vec();
    let mut fig = request("");
    fig.source = Source::File {
        name: "figure-1.png".into(),
        bytes: png.clone(),
    };
    let e = a.request(fig.clone()).await.unwrap();
    assert_eq!((e.kind.as_str(), e.file_type.as_str()), ("file", "png"));
    assert_eq!(e.sha256, hex::encode(Sha256::digest(&png)));
    let e = a
        .review(
            &e.id,
            "dave",
            Decision::Reject,
            "axis labels show counts of 3",
        )
        .await
        .unwrap();
    assert_eq!(e.state, "rejected");
    fig.source = Source::File {
        name: "figure-2.svg".into(),
        bytes: b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>".to_vec(),
    };
    match a.request(fig).await {
        Err(AirlockError::Checks(r)) => assert!(
            r.blocking_text().contains("scripts"),
            "{}",
            r.blocking_text()
        ),
        other => panic!("{other:?}"),
    }
}
