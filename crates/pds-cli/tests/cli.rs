//! The `pds` binary as a user runs it: exit codes, messages, files.

use std::process::Command;

fn pds() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pds"));
    // Statements and changes are recorded under an account name.
    c.env("PDS_USER", "steward");
    c
}

#[test]
fn synth_writes_files_and_stats_and_prints_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    let stats = dir.path().join("stats.json");
    let o = pds()
        .args([
            "synth",
            "--beneficiaries",
            "300",
            "--years",
            "2022",
            "--seed",
            "3",
            "--out",
        ])
        .arg(&out)
        .arg("--stats-json")
        .arg(&stats)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("ER_PRS_F") && stdout.contains("Per person-year"),
        "{stdout}"
    );
    let prs = std::fs::read_to_string(out.join("ER_PRS_F_2022.csv")).unwrap();
    let rows = prs.lines().count() - 1;
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let t = json["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "ER_PRS_F")
        .unwrap();
    assert_eq!(t["rows"].as_u64().unwrap() as usize, rows);
    assert_eq!(json["beneficiaries"], 300);
    assert!(
        json["families"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["family"] == "DCIR" && f["rows_per_s"].as_f64().unwrap() > 0.0)
    );
}

#[test]
fn bad_arguments_exit_non_zero_with_a_helpful_message_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    for (args, needle) in [
        (vec!["--years", "2023-2021"], "reversed"),
        (vec!["--beneficiaries", "0"], "at least 1"),
        (vec!["--years", "20x1"], "not a year"),
        (vec!["--years", "1990-1991"], "2006"),
    ] {
        let o = pds()
            .arg("synth")
            .args(&args)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} wrote something");
    }
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let o = pds()
        .args(["synth", "-n", "10", "--out"])
        .arg(file.join("x"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing was written"));
}

#[test]
fn home_defaults_and_env_are_accepted() {
    let o = pds()
        .env("PDS_HOME", "/tmp/some-home")
        .args(["--help"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("--home"));
}

#[test]
fn init_creates_a_home_once_and_snapshots_lists_it_empty() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let key = dir.path().join("master.key");
    let o = pds()
        .arg("--home")
        .arg(&home)
        .arg("init")
        .arg("--master-key-file")
        .arg(&key)
        .env_remove("PDS_MASTER_PASSPHRASE")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("back it up"));
    assert!(home.join("config.toml").exists() && key.exists());
    let o = pds()
        .arg("--home")
        .arg(&home)
        .arg("snapshots")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("No snapshot yet"));
    // A second init on the same home is refused and changes nothing.
    let before = std::fs::read(home.join("config.toml")).unwrap();
    let o = pds()
        .arg("--home")
        .arg(&home)
        .arg("init")
        .arg("--master-key-file")
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(home.join("config.toml")).unwrap(), before);
    // Without a master key source, init explains what to do.
    let o = pds()
        .arg("--home")
        .arg(dir.path().join("h2"))
        .arg("init")
        .env_remove("PDS_MASTER_PASSPHRASE")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--master-key-file"));
    assert!(!dir.path().join("h2").exists());
    // PDS_HOME selects the home too.
    let o = pds()
        .env("PDS_HOME", &home)
        .arg("snapshots")
        .output()
        .unwrap();
    assert!(o.status.success());
    let o = pds()
        .env("PDS_HOME", dir.path().join("nope"))
        .arg("snapshots")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a PDS home"));
}

#[test]
fn load_then_tables_and_a_bad_delivery_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let data = dir.path().join("delivery");
    let o = pds()
        .args(["synth", "-n", "80", "--years", "2022", "-q", "--out"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success());
    let o = pds()
        .arg("--home")
        .arg(&home)
        .arg("init")
        .arg("--master-key-file")
        .arg(dir.path().join("k"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let o = pds()
        .arg("--home")
        .arg(&home)
        .arg("load")
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("Snapshot 1 committed") && out.contains("ER_PRS_F"),
        "{out}"
    );
    let o = pds()
        .arg("--home")
        .arg(&home)
        .args(["tables", "--columns"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("T_MCO22B") && out.contains("Nature de la prestation"),
        "{out}"
    );
    // Corrupt one value: precise message, exit 1, still one snapshot.
    let p = data.join("IR_BEN_R.csv");
    let text = std::fs::read_to_string(&p).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let bad = lines[1].replacen(";1;", ";X;", 1);
    lines[1] = &bad;
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    let o = pds()
        .arg("--home")
        .arg(&home)
        .arg("load")
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("IR_BEN_R.csv:2:")
            && err.contains("value `X`")
            && err.contains("nothing was loaded"),
        "{err}"
    );
    let o = pds()
        .arg("--home")
        .arg(&home)
        .arg("snapshots")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().count(), 2, "header + one snapshot: {out}");
}
