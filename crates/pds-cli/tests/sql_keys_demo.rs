//! `pds sql`, `pds keys rotate` and `pds demo` through the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn pds() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pds"));
    // Statements and changes are recorded under an account name.
    c.env("PDS_USER", "steward");
    c
}

fn run(home: &Path, args: &[&str]) -> Output {
    pds().arg("--home").arg(home).args(args).output().unwrap()
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

fn rotate(home: &Path, new_key: &Path) -> Output {
    run(
        home,
        &[
            "keys",
            "rotate",
            "--new-master-key-file",
            new_key.to_str().unwrap(),
        ],
    )
}

fn err(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push((
                    e.path().display().to_string(),
                    std::fs::read(e.path()).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// A home (master key file `k1`) with `loads` snapshots of a synthetic
/// delivery of `n` people; returns (home, delivery, key file).
fn loaded_home(dir: &Path, n: &str, loads: usize) -> (PathBuf, PathBuf, PathBuf) {
    let home = dir.join("home");
    let k1 = dir.join("k1");
    ok(&run(
        &home,
        &["init", "--master-key-file", k1.to_str().unwrap()],
    ));
    let delivery = dir.join("delivery");
    ok(&pds()
        .args(["synth", "-q", "-n", n, "--years", "2021", "--out"])
        .arg(&delivery)
        .output()
        .unwrap());
    for _ in 0..loads {
        ok(&run(&home, &["load", "-q", delivery.to_str().unwrap()]));
    }
    (home, delivery, k1)
}

/// Steps 1-2 of a rotation from `old` to `new`, stopped there as by a crash:
/// the first `keep` stored keys (all when `None`; snapshots come first) re-wrapped in the
/// catalogue. Returns the prepared store.
fn rotate_until_catalogue(
    home: &Path,
    old: &pds_keys::KeyStore,
    new: &pds_keys::MasterSource,
    keep: Option<usize>,
) -> pds_keys::KeyStore {
    let next = old.prepare_rotation(new).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cat = pds_home::Home::open(home).unwrap().catalog().await.unwrap();
        let mut rewrapped = Vec::new();
        for (which, wrapped) in cat.wrapped_keys().await.unwrap() {
            let w: pds_keys::WrappedKey = serde_json::from_str(&wrapped).unwrap();
            let w2 = old.rewrap(&next, &w).unwrap();
            rewrapped.push((which, serde_json::to_string(&w2).unwrap()));
        }
        let n = keep.unwrap_or(rewrapped.len());
        cat.set_wrapped_keys(&rewrapped[..n]).await.unwrap();
        cat.close().await;
    });
    next
}

#[test]
fn sql_answers_and_key_rotation_rewraps_without_rewriting_data() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let k1 = dir.path().join("k1");
    ok(&run(
        &home,
        &["init", "--master-key-file", k1.to_str().unwrap()],
    ));
    let e = err(&run(&home, &["sql", "SELECT 1"]));
    assert!(
        e.contains("no snapshot yet") && e.contains("pds load"),
        "{e}"
    );
    let delivery = dir.path().join("delivery");
    ok(&pds()
        .args(["synth", "-q", "-n", "80", "--years", "2021", "--out"])
        .arg(&delivery)
        .output()
        .unwrap());
    ok(&run(&home, &["load", "-q", delivery.to_str().unwrap()]));

    // Answers match the delivery.
    let ben = std::fs::read_to_string(delivery.join("IR_BEN_R.csv")).unwrap();
    let q = "SELECT COUNT(*) AS n FROM IR_BEN_R";
    let answer = ok(&run(&home, &["sql", "--format", "csv", q]));
    assert_eq!(answer, format!("n\n{}\n", ben.lines().count() - 1));
    let json = ok(&run(&home, &["sql", "--format", "json", q]));
    assert_eq!(
        json.trim(),
        format!("[{{\"n\":{}}}]", ben.lines().count() - 1)
    );
    // Read-only and helpful errors.
    let e = err(&run(&home, &["sql", "DROP TABLE IR_BEN_R"]));
    assert!(e.contains("error"), "{e}");
    let e = err(&run(&home, &["sql", "SELECT * FROM ir_ben_r"]));
    assert!(e.contains("upper case"), "{e}");
    let e = err(&run(&home, &["sql", "--snapshot", "7", q]));
    assert!(e.contains("snapshot 7 does not exist"), "{e}");

    // Rotate to a new key file: data untouched, same answers.
    let data_before = files(&home.join("objects"));
    let k2 = dir.path().join("k2");
    let out = ok(&rotate(&home, &k2));
    // The snapshot key and the audit log's signing key (made by `pds sql`).
    assert!(out.contains("2 stored key(s)"), "{out}");
    assert!(k2.exists());
    let config = std::fs::read_to_string(home.join("config.toml")).unwrap();
    assert!(config.contains(k2.to_str().unwrap()), "{config}");
    assert_eq!(
        files(&home.join("objects")),
        data_before,
        "no data file rewritten"
    );
    assert_eq!(ok(&run(&home, &["sql", "--format", "csv", q])), answer);
    // The old key no longer opens the home.
    std::fs::write(
        home.join("config.toml"),
        config.replace(k2.to_str().unwrap(), k1.to_str().unwrap()),
    )
    .unwrap();
    let e = err(&run(&home, &["sql", q]));
    assert!(e.contains("does not open the key store"), "{e}");
    std::fs::write(home.join("config.toml"), &config).unwrap();
    // Rotating to the key in use is refused and changes nothing.
    let e = err(&rotate(&home, &k2));
    assert!(e.contains("is the current one"), "{e}");
    assert_eq!(ok(&run(&home, &["sql", "--format", "csv", q])), answer);
    // A second load after rotation works and the first snapshot still reads.
    ok(&run(&home, &["load", "-q", delivery.to_str().unwrap()]));
    assert_eq!(
        ok(&run(
            &home,
            &["sql", "--snapshot", "1", "--format", "csv", q]
        )),
        answer
    );
}

#[test]
fn demo_runs_end_to_end_and_refuses_a_foreign_directory() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let o = pds()
        .args([
            "demo",
            "-n",
            "3000",
            "--years",
            "2022-2022",
            "--no-serve",
            "--dir",
        ])
        .arg(&demo)
        .output()
        .unwrap();
    let out = ok(&o);
    for needle in [
        "== 1/6",
        "Project demo-diabetes created",
        "Audit log: ",
        "Snapshot 1 committed",
        "-- 1. People dispensed an antidiabetic",
        "-- 2. Acute stays",
        "-- 3. HbA1c tests",
    ] {
        assert!(out.contains(needle), "{needle} missing:\n{out}");
    }
    // Every analysis printed a non-empty result.
    let results: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with('(') && l.ends_with("rows)") || *l == "(1 row)")
        .collect();
    assert_eq!(results.len(), 3, "{out}");
    assert!(!out.contains("(0 rows)"), "{out}");
    // The home it made answers `pds sql`.
    let n = ok(&run(
        &demo.join("home"),
        &[
            "sql",
            "--format",
            "csv",
            "SELECT COUNT(*) AS n FROM ER_PRS_F",
        ],
    ));
    let rows: i64 = n.lines().nth(1).unwrap().parse().unwrap();
    assert!(rows > 10_000, "{n}");
    // Running it again replaces the earlier demo; a foreign directory is refused.
    let foreign = dir.path().join("mine");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("thesis.tex"), "x").unwrap();
    let e = err(&pds()
        .args(["demo", "-n", "100", "--dir"])
        .arg(&foreign)
        .output()
        .unwrap());
    assert!(e.contains("not made by `pds demo`"), "{e}");
    assert!(foreign.join("thesis.tex").exists());
}

#[test]
fn an_interrupted_rotation_is_completed_by_running_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let (home, _, _) = loaded_home(dir.path(), "50", 2);
    let q = "SELECT COUNT(*) AS n FROM IR_BEN_R";
    let answer = ok(&run(&home, &["sql", "--format", "csv", q]));

    // Crash after step 2, with only the first snapshot's key re-wrapped in
    // the catalogue; key store and config not yet replaced.
    let k2 = dir.path().join("k2");
    pds_keys::MasterSource::create_key_file(&k2).unwrap();
    let old = pds_home::Home::open(&home).unwrap().keys().unwrap();
    rotate_until_catalogue(
        &home,
        &old,
        &pds_keys::MasterSource::KeyFile(k2.clone()),
        Some(1),
    );
    // The half-rotated home cannot read snapshot 1 with the old key...
    let e = err(&run(&home, &["sql", "--snapshot", "1", q]));
    assert!(
        e.contains("does not decrypt") && e.contains("run it again"),
        "{e}"
    );
    // ... and the same command again finishes the job.
    let out = ok(&rotate(&home, &k2));
    assert!(out.contains("3 stored key(s)"), "{out}");
    for snap in ["1", "2"] {
        assert_eq!(
            ok(&run(
                &home,
                &["sql", "--snapshot", snap, "--format", "csv", q]
            )),
            answer
        );
    }
}

#[test]
fn a_second_writer_is_refused_while_a_load_holds_the_home() {
    let dir = tempfile::tempdir().unwrap();
    let (home, delivery, _) = loaded_home(dir.path(), "30", 0);
    let h = pds_home::Home::open(&home).unwrap();
    let lock = h.lock_for_writing("test").unwrap();
    let e = err(&run(&home, &["load", "-q", delivery.to_str().unwrap()]));
    assert!(e.contains("another PDS process is writing"), "{e}");
    let e = err(&rotate(&home, &dir.path().join("k2")));
    assert!(e.contains("another PDS process is writing"), "{e}");
    drop(lock);
    let out = ok(&run(&home, &["load", "-q", delivery.to_str().unwrap()]));
    assert!(out.contains("Snapshot 1 committed"), "{out}");
}

#[test]
fn an_interrupted_rotation_to_a_passphrase_completes_too() {
    let dir = tempfile::tempdir().unwrap();
    let (home, _, _) = loaded_home(dir.path(), "40", 1);
    let q = "SELECT COUNT(*) AS n FROM IR_BEN_R";
    let answer = ok(&run(&home, &["sql", "--format", "csv", q]));
    let pass = "correct horse battery staple";
    // Crash after step 2: every snapshot key re-wrapped for a passphrase
    // whose salt exists only in the pending store.
    let old = pds_home::Home::open(&home).unwrap().keys().unwrap();
    rotate_until_catalogue(
        &home,
        &old,
        &pds_keys::MasterSource::Passphrase(pass.into()),
        None,
    );
    let o = pds()
        .arg("--home")
        .arg(&home)
        .args(["keys", "rotate"])
        .env("PDS_NEW_MASTER_PASSPHRASE", pass)
        .output()
        .unwrap();
    let out = ok(&o);
    assert!(out.contains("2 stored key(s)"), "{out}");
    assert!(!home.join("keys").join(pds_keys::PENDING_FILE).exists());
    let config = std::fs::read_to_string(home.join("config.toml")).unwrap();
    assert!(config.contains("master = \"passphrase\""), "{config}");
    let o = pds()
        .arg("--home")
        .arg(&home)
        .args(["sql", "--format", "csv", q])
        .env("PDS_MASTER_PASSPHRASE", pass)
        .output()
        .unwrap();
    assert_eq!(ok(&o), answer);

    // Crash after step 3 of a rotation back to a key file: the store is
    // replaced, config.toml still says passphrase. Running it again fixes it.
    let k3 = dir.path().join("k3");
    pds_keys::MasterSource::create_key_file(&k3).unwrap();
    let h = pds_home::Home::open(&home).unwrap();
    let old = pds_keys::KeyStore::open(
        &h.keys_dir(),
        &pds_keys::MasterSource::Passphrase(pass.into()),
    )
    .unwrap();
    let next = rotate_until_catalogue(
        &home,
        &old,
        &pds_keys::MasterSource::KeyFile(k3.clone()),
        None,
    );
    next.commit_rotation().unwrap();
    let o = pds()
        .arg("--home")
        .arg(&home)
        .args(["keys", "rotate", "--new-master-key-file"])
        .arg(&k3)
        .env("PDS_MASTER_PASSPHRASE", pass)
        .output()
        .unwrap();
    let out = ok(&o);
    assert!(out.contains("already uses the new master key"), "{out}");
    assert_eq!(ok(&run(&home, &["sql", "--format", "csv", q])), answer);
}
