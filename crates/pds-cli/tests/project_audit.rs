//! `pds project`, `pds sql --project` and `pds audit` through the real
//! binary: a steward declares a project, a researcher queries it, an
//! auditor verifies the log and notices tampering.

use std::path::Path;
use std::process::{Command, Output};

fn pds(home: &Path, who: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pds"));
    c.arg("--home").arg(home).arg("--as").arg(who);
    c
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn run(home: &Path, who: &str, args: &[&str]) -> Output {
    pds(home, who).args(args).output().unwrap()
}

const PERIMETER: &str = r#"
years = [2022, 2022]
[tables]
IR_BEN_R = ["BEN_NIR_PSA", "BEN_SEX_COD", "BEN_NAI_ANN"]
ER_PRS_F = ["BEN_NIR_PSA", "EXE_SOI_DTD", "PRS_NAT_REF"]
"#;

const TWO_IDENTIFIERS: &str = r#"
[tables]
IR_BEN_R = "*"
ER_PRS_F = "*"
[coarsening]
care_dates = "day"
birth = "month"
"#;

#[test]
fn steward_researcher_and_auditor() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let k = dir.path().join("k");
    ok(&run(
        &home,
        "steward",
        &["init", "--master-key-file", k.to_str().unwrap()],
    ));
    let delivery = dir.path().join("delivery");
    ok(&Command::new(env!("CARGO_BIN_EXE_pds"))
        .args(["synth", "-q", "-n", "60", "--years", "2021-2022", "--out"])
        .arg(&delivery)
        .output()
        .unwrap());
    ok(&run(
        &home,
        "steward",
        &["load", "-q", delivery.to_str().unwrap()],
    ));

    let per = dir.path().join("perimeter.toml");
    std::fs::write(&per, PERIMETER).unwrap();
    let create = |id: &str, file: &Path| {
        run(
            &home,
            "steward",
            &[
                "project",
                "create",
                id,
                "--title",
                "Study",
                "--authorisation",
                "CNIL DR-2026-042",
                "--expires",
                "2099-12-31",
                "--perimeter",
                file.to_str().unwrap(),
            ],
        )
    };
    let out = ok(&create("p1", &per));
    assert!(out.contains("Project p1 created"), "{out}");
    assert!(
        out.contains("table ER_PRS_F: BEN_NIR_PSA* EXE_SOI_DTD~month PRS_NAT_REF"),
        "{out}"
    );
    assert!(out.contains("years          2022-2022"), "{out}");
    // A perimeter breaking the one-identifier rule is explained and not created.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, TWO_IDENTIFIERS).unwrap();
    let e = err(&create("p2", &bad));
    assert!(
        e.contains("2 potential identifiers at full precision"),
        "{e}"
    );
    assert!(
        e.contains("month of birth") && e.contains("exact date of care"),
        "{e}"
    );
    let list = ok(&run(&home, "steward", &["project", "list"]));
    assert!(list.contains("p1 ") && !list.contains("p2 "), "{list}");
    // A broken perimeter file is named with its line.
    std::fs::write(&bad, "years = [2022]\n[tables]\nIR_BEN_R = \"*\"\n").unwrap();
    let e = err(&create("p2", &bad));
    assert!(e.contains("bad.toml") && e.contains("years"), "{e}");

    ok(&run(
        &home,
        "steward",
        &["project", "grant", "p1", "alice", "--role", "researcher"],
    ));
    let raw = ok(&run(
        &home,
        "steward",
        &[
            "sql",
            "--format",
            "csv",
            "SELECT COUNT(*) AS n FROM IR_BEN_R",
        ],
    ));
    let mine = ok(&run(
        &home,
        "alice",
        &[
            "sql",
            "--project",
            "p1",
            "--format",
            "csv",
            "SELECT COUNT(*) AS n FROM IR_BEN_R",
        ],
    ));
    assert_eq!(mine, raw);
    let ids = ok(&run(
        &home,
        "alice",
        &[
            "sql",
            "--project",
            "p1",
            "--format",
            "csv",
            "SELECT DISTINCT BEN_NIR_PSA FROM IR_BEN_R",
        ],
    ));
    assert!(ids.lines().skip(1).all(|l| l.starts_with("v1:")), "{ids}");
    let e = err(&run(&home, "bob", &["sql", "--project", "p1", "SELECT 1"]));
    assert!(
        e.contains("p1 does not exist or bob is not a member"),
        "{e}"
    );
    let e = err(&run(
        &home,
        "alice",
        &["sql", "--project", "p1", "SELECT PRS_PAI_MNT FROM ER_PRS_F"],
    ));
    assert!(e.contains("No field named"), "{e}");

    // The auditor's view.
    let log = ok(&run(
        &home,
        "auditor",
        &["audit", "show", "--project", "p1"],
    ));
    assert!(log.contains("steward p1 project.create done"), "{log}");
    // The actor is who ran the command (--as), not the member it names.
    assert!(
        log.contains("steward p1 project.grant done {\"principal\":\"alice\""),
        "{log}"
    );
    assert!(log.contains("alice p1 statement allowed"), "{log}");
    assert!(
        log.contains("alice p1 statement.end completed rows=1"),
        "{log}"
    );
    assert!(log.contains("bob p1 statement refused"), "{log}");
    let v = ok(&run(&home, "auditor", &["audit", "verify"]));
    assert!(v.contains("Audit log verified"), "{v}");
    let cp = ok(&run(&home, "steward", &["audit", "checkpoint"]));
    assert!(cp.contains("Checkpoint 2 signed"), "{cp}");
    let export = dir.path().join("export");
    ok(&run(
        &home,
        "auditor",
        &["audit", "export", "--out", export.to_str().unwrap()],
    ));
    let note = export.join("checkpoints").join("000002.note");
    assert!(note.exists());
    let v = ok(&run(
        &home,
        "auditor",
        &["audit", "verify", "--against", note.to_str().unwrap()],
    ));
    assert!(v.contains("Audit log verified"), "{v}");

    // Someone edits who ran a statement, directly in the catalogue.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let url = format!("sqlite://{}", home.join("catalogue.db").display());
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("UPDATE audit_entries SET body = REPLACE(body, '\"alice\"', '\"carol\"') WHERE principal = 'alice'")
            .execute(&mut c)
            .await
            .unwrap();
    });
    let e = err(&run(&home, "auditor", &["audit", "verify"]));
    assert!(e.contains("FAILED verification: entry"), "{e}");
    assert!(e.contains("modified"), "{e}");

    // Expiry ends access.
    ok(&run(&home, "steward", &["project", "expire", "p1"]));
    let e = err(&run(
        &home,
        "alice",
        &["sql", "--project", "p1", "SELECT 1"],
    ));
    assert!(e.contains("expired"), "{e}");
}
