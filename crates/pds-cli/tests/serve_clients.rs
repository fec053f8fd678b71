//! `pds serve` with real clients: psql, R (DBI + RPostgreSQL), psycopg 3,
//! ADBC Flight SQL and HTTP. Every result is compared with the same
//! statement run through `pds sql` (the gate), and every refusal with the
//! gate's own message. The clients come from Debian and PyPI (`.ci/run`
//! installs them); a missing client fails the test rather than skipping it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{curl, ok, post_json, stderr};

const PASSWORD: &str = "correct horse battery staple";

const PERIMETER: &str = r#"
years = [2022, 2022]
[tables]
IR_BEN_R = ["BEN_NIR_PSA", "BEN_SEX_COD", "BEN_NAI_ANN"]
ER_PRS_F = ["BEN_NIR_PSA", "EXE_SOI_DTD", "PRS_NAT_REF", "PRS_ACT_QTE"]
"#;

/// A home with a loaded snapshot, projects, accounts and a running server.
struct Env {
    _dir: tempfile::TempDir,
    home: PathBuf,
    server: Option<Child>,
    pg: (String, u16),
    flight: String,
    http: String,
    /// Session access tokens of the people, after a real sign-in.
    tokens: std::collections::HashMap<String, String>,
    /// Their authenticators (otpauth URIs).
    totp: std::collections::HashMap<String, String>,
}

impl Env {
    fn token(&self, user: &str) -> String {
        self.tokens[user].clone()
    }

    /// The whole first sign-in of a person over HTTP: password, enrolment
    /// token, authenticator enrolment, first code, session.
    fn sign_in(&mut self, user: &str) {
        let base = format!("https://{}", self.http);
        let (code, body) = post_json(
            &format!("{base}/api/v1/login"),
            None,
            &serde_json::json!({"user": user, "password": PASSWORD}),
        );
        assert_eq!(code, 200, "{body}");
        let j: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(j["status"], "enrolment_required", "{body}");
        let et = j["enrolment_token"].as_str().unwrap().to_string();
        let (code, body) = post_json(
            &format!("{base}/api/v1/mfa/enrol"),
            Some(&et),
            &serde_json::json!({}),
        );
        assert_eq!(code, 200, "{body}");
        let e: serde_json::Value = serde_json::from_str(&body).unwrap();
        let uri = e["otpauth_uri"].as_str().unwrap().to_string();
        assert!(
            e["qr_svg"]
                .as_str()
                .unwrap()
                .starts_with("data:image/svg+xml;base64,")
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let first = pds_accounts::mfa::code_at(&uri, now).unwrap();
        let (code, body) = post_json(
            &format!("{base}/api/v1/mfa/confirm"),
            Some(&et),
            &serde_json::json!({"code": first}),
        );
        assert_eq!(code, 200, "{body}");
        let c: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(c["recovery_codes"].as_array().unwrap().len(), 10, "{body}");
        let token = c["session"]["access_token"].as_str().unwrap().to_string();
        assert!(token.starts_with("pds_at_"), "{body}");
        self.tokens.insert(user.to_string(), token);
        self.totp.insert(user.to_string(), uri);
    }

    fn pds(&self, who: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pds"));
        c.arg("--home").arg(&self.home).arg("--as").arg(who);
        c
    }

    fn run(&self, who: &str, args: &[&str]) -> String {
        ok(&self.pds(who).args(args).output().unwrap())
    }

    /// The same statement through `pds sql` (CSV lines after the header).
    fn expected(&self, project: &str, sql: &str) -> Vec<String> {
        let out = self.run(
            "alice",
            &["sql", "--project", project, "--format", "csv", sql],
        );
        out.lines().skip(1).map(str::to_string).collect()
    }

    fn gate_error(&self, project: &str, sql: &str) -> String {
        let o = self
            .pds("alice")
            .args(["sql", "--project", project, sql])
            .output()
            .unwrap();
        assert!(!o.status.success(), "{sql} should fail through pds sql");
        let e = String::from_utf8_lossy(&o.stderr).into_owned();
        e.trim().trim_start_matches("error: ").to_string()
    }

    fn psql(&self, db: &str, user: &str, password: &str, sslmode: &str, sql: &str) -> Output {
        Command::new("psql")
            .arg(format!(
                "host={} port={} dbname={db} user={user} sslmode={sslmode}",
                self.pg.0, self.pg.1
            ))
            .args([
                "-X",
                "-A",
                "-t",
                "-F",
                ",",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("psql (Debian postgresql-client) must be installed")
    }

    /// Stops the server with SIGTERM and returns what it printed.
    fn stop(&mut self) -> String {
        let mut child = self.server.take().expect("server running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                assert!(status.success(), "pds serve exited with {status}: {err}");
                return err;
            }
            assert!(
                Instant::now() < deadline,
                "pds serve did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn setup(beneficiaries: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let mut env = Env {
        home: home.clone(),
        server: None,
        pg: (String::new(), 0),
        flight: String::new(),
        http: String::new(),
        tokens: Default::default(),
        totp: Default::default(),
        _dir: dir,
    };
    let base = env.home.parent().unwrap().to_path_buf();
    let k = base.join("k");
    env.run(
        "steward",
        &["init", "--master-key-file", k.to_str().unwrap()],
    );
    let delivery = base.join("delivery");
    ok(&Command::new(env!("CARGO_BIN_EXE_pds"))
        .args([
            "synth",
            "-q",
            "-n",
            beneficiaries,
            "--years",
            "2022",
            "--out",
        ])
        .arg(&delivery)
        .output()
        .unwrap());
    env.run("steward", &["load", "-q", delivery.to_str().unwrap()]);
    let per = base.join("perimeter.toml");
    std::fs::write(&per, PERIMETER).unwrap();
    for (id, mode) in [
        ("p-row", "row-level"),
        ("p-agg", "aggregate-only"),
        ("p-old", "row-level"),
    ] {
        env.run(
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
                "--mode",
                mode,
                "--perimeter",
                per.to_str().unwrap(),
            ],
        );
        env.run(
            "steward",
            &["project", "grant", id, "alice", "--role", "researcher"],
        );
    }
    env.run("steward", &["project", "expire", "p-old"]);
    for (name, extra) in [
        ("alice", None),
        ("bob", None),
        ("carol", None),
        ("dave", None),
        ("root", Some("--admin")),
    ] {
        let mut c = env.pds("steward");
        c.args(["user", "add", name])
            .env("PDS_NEW_PASSWORD", PASSWORD);
        if let Some(x) = extra {
            c.arg(x);
        }
        ok(&c.output().unwrap());
    }
    for checker in ["carol", "dave"] {
        env.run(
            "steward",
            &["project", "grant", "p-row", checker, "--role", "checker"],
        );
    }
    env.run("steward", &["user", "add", "etl", "--service"]);
    env.run(
        "steward",
        &["project", "grant", "p-row", "etl", "--role", "researcher"],
    );
    env.run("steward", &["tls", "self-signed"]);
    // Many sign-ins from one address in these tests; the limit itself is
    // tested in identity_oidc.rs.
    let cfg = env.home.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace(
            "login_attempts_per_minute = 30",
            "login_attempts_per_minute = 100000",
        ),
    )
    .unwrap();
    start(&mut env);
    for user in ["alice", "bob", "carol", "dave", "root"] {
        env.sign_in(user);
    }
    env
}

/// Every listener on a free loopback port.
const ANY_PORTS: [&str; 6] = [
    "--pg-listen",
    "127.0.0.1:0",
    "--flight-listen",
    "127.0.0.1:0",
    "--http-listen",
    "127.0.0.1:0",
];

fn start(env: &mut Env) {
    let ready = env.home.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    let child = env
        .pds("steward")
        .arg("serve")
        .args(ANY_PORTS)
        .args(["--grace-secs", "20", "--ready-file"])
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    env.server = Some(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready.exists() {
        if let Some(s) = env.server.as_mut().unwrap().try_wait().unwrap() {
            let mut err = String::new();
            BufReader::new(env.server.as_mut().unwrap().stderr.take().unwrap())
                .lines()
                .map_while(Result::ok)
                .for_each(|l| err.push_str(&l));
            panic!("pds serve exited with {s}: {err}");
        }
        assert!(Instant::now() < deadline, "pds serve did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    let pg = j["pg"].as_str().unwrap();
    let (h, p) = pg.rsplit_once(':').unwrap();
    env.pg = (h.to_string(), p.parse().unwrap());
    env.flight = j["flight"].as_str().unwrap().to_string();
    env.http = j["http"].as_str().unwrap().to_string();
}

/// Statements every front-end must refuse exactly as the gate does, each
/// with a fragment of the gate's reason.
const ADVERSARIAL: &[(&str, &str)] = &[
    // A table outside the perimeter.
    ("SELECT COUNT(*) FROM \"KI_CCI_R\"", "not found"),
    // A column outside the perimeter.
    (
        "SELECT \"PRS_PAI_MNT\" FROM \"ER_PRS_F\" LIMIT 1",
        "PRS_PAI_MNT",
    ),
    // Reading files directly.
    ("SELECT * FROM '/etc/passwd'", "passwd"),
    // Writing.
    ("CREATE TABLE x AS SELECT 1", "only reads are allowed"),
    (
        "INSERT INTO \"IR_BEN_R\" VALUES ('a', 1, 1)",
        "only reads are allowed",
    ),
    // Plans reveal storage.
    ("EXPLAIN SELECT 1", "EXPLAIN is not available"),
];

/// Aggregate-only: rows of the data are refused, through a subquery too.
const AGGREGATE_ONLY: &[(&str, &str)] = &[
    ("SELECT \"BEN_NIR_PSA\" FROM \"ER_PRS_F\"", "aggregate-only"),
    (
        "SELECT * FROM (SELECT \"BEN_NIR_PSA\" AS x FROM \"ER_PRS_F\") t",
        "aggregate-only",
    ),
];

#[test]
fn psql_and_r_dbi() {
    let env = setup("400");
    let count = "SELECT COUNT(*) AS n, COUNT(DISTINCT \"BEN_NIR_PSA\") AS people FROM \"ER_PRS_F\"";
    let expected = env.expected("p-row", count);
    let got = ok(&env.psql("p-row", "alice", &env.token("alice"), "require", count));
    assert_eq!(
        got.lines().map(str::to_string).collect::<Vec<_>>(),
        expected
    );
    assert!(
        expected[0]
            .split(',')
            .next()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            > 100,
        "{expected:?}"
    );
    // Project pseudonyms, exactly as pds sql gives them.
    let top = "SELECT \"BEN_NIR_PSA\", COUNT(*) AS n FROM \"ER_PRS_F\" GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5";
    let got = ok(&env.psql("p-row", "alice", &env.token("alice"), "require", top));
    assert_eq!(
        got.lines().map(str::to_string).collect::<Vec<_>>(),
        env.expected("p-row", top)
    );
    assert!(got.starts_with("v1:"), "{got}");

    // psql's catalogue commands list the perimeter and nothing else.
    let dt = ok(&env.psql("p-row", "alice", &env.token("alice"), "require", "\\dt"));
    let mut names: Vec<&str> = dt.lines().filter_map(|l| l.split(',').nth(1)).collect();
    names.sort();
    assert_eq!(names, vec!["ER_PRS_F", "IR_BEN_R"], "{dt}");
    let d = ok(&env.psql(
        "p-row",
        "alice",
        &env.token("alice"),
        "require",
        "\\d \"IR_BEN_R\"",
    ));
    let cols: Vec<&str> = d.lines().filter_map(|l| l.split(',').next()).collect();
    assert!(
        cols.contains(&"BEN_NIR_PSA") && cols.contains(&"BEN_SEX_COD"),
        "{d}"
    );
    assert!(
        !d.contains("BEN_NAI_MOI") && !d.contains("BEN_RES_COM"),
        "hidden columns listed: {d}"
    );
    let info = ok(&env.psql(
        "p-row",
        "alice",
        &env.token("alice"),
        "require",
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    ));
    assert_eq!(info.trim(), "ER_PRS_F\nIR_BEN_R");

    // Session settings: the allow-list, per connection.
    let o = ok(&env.psql(
        "p-row",
        "alice",
        &env.token("alice"),
        "require",
        "SET statement_timeout = 5000; SHOW statement_timeout",
    ));
    assert_eq!(o.trim().lines().collect::<Vec<_>>(), vec!["SET", "5000"]);
    let o = env.psql(
        "p-row",
        "alice",
        &env.token("alice"),
        "require",
        "SET work_mem = '4GB'",
    );
    assert!(
        stderr(&o).contains("SET work_mem is not allowed"),
        "{}",
        stderr(&o)
    );

    // The adversarial suite, with the gate's own reason.
    for (sql, fragment) in ADVERSARIAL {
        let gate = env.gate_error("p-row", sql);
        assert!(gate.contains(fragment), "{sql}: gate said {gate}");
        let o = env.psql("p-row", "alice", &env.token("alice"), "require", sql);
        assert!(!o.status.success(), "{sql} passed through psql");
        assert!(
            stderr(&o).contains(fragment),
            "{sql}: psql got {}",
            stderr(&o)
        );
    }
    for (sql, fragment) in AGGREGATE_ONLY {
        let o = env.psql("p-agg", "alice", &env.token("alice"), "require", sql);
        assert!(
            stderr(&o).contains(fragment),
            "{sql}: psql got {}",
            stderr(&o)
        );
    }
    // Catalogue queries are not data: allowed in aggregate-only projects.
    let dt = ok(&env.psql("p-agg", "alice", &env.token("alice"), "require", "\\dt"));
    assert!(dt.contains("ER_PRS_F"), "{dt}");
    let agg = "SELECT \"BEN_SEX_COD\", COUNT(*) FROM \"IR_BEN_R\" GROUP BY 1 ORDER BY 1";
    // The last column is pds_suppressed (psql writes booleans as t/f).
    assert_eq!(
        ok(&env.psql("p-agg", "alice", &env.token("alice"), "require", agg))
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>(),
        env.expected("p-agg", agg)
            .iter()
            .map(|l| l.replace(",false", ",f"))
            .collect::<Vec<_>>()
    );
    // What disclosure control withheld comes as a NOTICE before the rows.
    let small = "SELECT \"BEN_NAI_ANN\", COUNT(*) FROM \"IR_BEN_R\" GROUP BY 1";
    let o = env.psql("p-agg", "alice", &env.token("alice"), "require", small);
    let shown = ok(&o);
    assert!(
        stderr(&o).contains("NOTICE:  disclosure control:")
            && stderr(&o).contains("row(s) withheld"),
        "{}",
        stderr(&o)
    );
    assert!(shown.lines().all(|l| l.ends_with(",f")), "{shown}");

    // Sign-in refusals, with PostgreSQL's codes (psql prints the message).
    let o = env.psql("p-row", "alice", "wrong password!", "require", "SELECT 1");
    assert!(
        stderr(&o).contains("password authentication failed for user \"alice\""),
        "{}",
        stderr(&o)
    );
    let o = env.psql("p-row", "nobody", PASSWORD, "require", "SELECT 1");
    assert!(
        stderr(&o).contains("password authentication failed for user \"nobody\""),
        "{}",
        stderr(&o)
    );
    let unknown = env.psql("p-none", "bob", &env.token("bob"), "require", "SELECT 1");
    let non_member = env.psql("p-row", "bob", &env.token("bob"), "require", "SELECT 1");
    assert!(!unknown.status.success() && !non_member.status.success());
    let msg = |o: &Output| stderr(o).replace("p-none", "P").replace("p-row", "P");
    assert_eq!(
        msg(&unknown),
        msg(&non_member),
        "unknown and forbidden projects must look the same"
    );
    let expired = env.psql("p-old", "alice", &env.token("alice"), "require", "SELECT 1");
    assert!(stderr(&expired).contains("expired"), "{}", stderr(&expired));
    let plain = env.psql("p-row", "alice", &env.token("alice"), "disable", "SELECT 1");
    assert!(
        stderr(&plain).contains("TLS connections only"),
        "{}",
        stderr(&plain)
    );
    // A password alone is one factor: refused, with how to sign in.
    let o = env.psql("p-row", "alice", PASSWORD, "require", "SELECT 1");
    assert!(
        stderr(&o).contains("must be an access token"),
        "{}",
        stderr(&o)
    );
    // Someone else's token does not open this account.
    let o = env.psql("p-row", "alice", &env.token("bob"), "require", "SELECT 1");
    assert!(!o.status.success());
    // A service account: its scoped token opens its project only.
    let token = env
        .run(
            "steward",
            &[
                "user",
                "token",
                "etl",
                "--project",
                "p-row",
                "--role",
                "researcher",
                "--days",
                "1",
            ],
        )
        .trim()
        .to_string();
    assert!(token.starts_with("pds_st_"), "{token}");
    let o = ok(&env.psql(
        "p-row",
        "etl",
        &token,
        "require",
        "SELECT COUNT(*) FROM \"IR_BEN_R\"",
    ));
    assert_eq!(
        o.lines().map(str::to_string).collect::<Vec<_>>(),
        env.expected("p-row", "SELECT COUNT(*) FROM \"IR_BEN_R\"")
    );
    let o = env.psql("p-agg", "etl", &token, "require", "SELECT 1");
    assert!(
        !o.status.success(),
        "a service token opened another project"
    );
    let o = env.psql("p-row", "etl", "pds_st_forged", "require", "SELECT 1");
    assert!(
        stderr(&o).contains("password authentication failed"),
        "{}",
        stderr(&o)
    );
    // Revoked: refused at the next connection.
    let tokens = env.run("steward", &["user", "tokens", "etl"]);
    let id = tokens
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    env.run("steward", &["user", "revoke", "etl", &id]);
    let o = env.psql("p-row", "etl", &token, "require", "SELECT 1");
    assert!(!o.status.success(), "a revoked token still works");

    // R: DBI over RPostgreSQL (libpq), the same answers.
    let r = Command::new("Rscript")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/dbi_client.R"))
        .args([
            &env.pg.0,
            &env.pg.1.to_string(),
            "p-row",
            "alice",
            &env.token("alice"),
        ])
        .output()
        .expect("Rscript (Debian r-base-core, r-cran-dbi, r-cran-rpostgresql) must be installed");
    let r = ok(&r);
    assert!(r.contains("tables: ER_PRS_F,IR_BEN_R"), "{r}");
    let fields = env.expected(
        "p-row",
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'IR_BEN_R' ORDER BY ordinal_position",
    );
    assert_eq!(fields.len(), 3, "{fields:?}");
    assert!(
        r.contains(&format!("fields: {}", fields.join(","))),
        "{r}\nexpected {fields:?}"
    );
    let (n, people) = expected[0].split_once(',').unwrap();
    assert!(
        r.contains(&format!("count: {n} {people}")),
        "{r}\nexpected {n} {people}"
    );
    let by_sex = env.expected(
        "p-row",
        "SELECT \"BEN_SEX_COD\" AS sex, COUNT(*) AS n FROM \"IR_BEN_R\" GROUP BY 1 ORDER BY 1",
    );
    let want: Vec<String> = by_sex.iter().map(|l| l.replace(',', "=")).collect();
    assert!(
        r.contains(&format!("by_sex: {}", want.join(","))),
        "{r}\nexpected {want:?}"
    );

    // Every connection, statement and refusal is in the audit log, which verifies.
    let log = env.run(
        "steward",
        &["audit", "show", "--project", "p-row", "--json"],
    );
    assert!(
        log.contains("\"channel\":\"pgwire\""),
        "no pgwire entries in the audit log"
    );
    assert!(log.contains("\"action\":\"connect\""));
    ok(&env
        .pds("steward")
        .args(["audit", "verify"])
        .output()
        .unwrap());
}

fn python(script: &str, args: &[&str]) -> serde_json::Value {
    let o = Command::new("python3")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/clients")
                .join(script),
        )
        .args(args)
        .output()
        .expect("python3 must be installed");
    let out = ok(&o);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{script} printed {out}: {e}"))
}

fn csv_ints(line: &str) -> Vec<i64> {
    line.split(',').map(|x| x.parse().unwrap()).collect()
}

#[test]
fn psycopg_plain_prepared_cursor_cancel() {
    let env = setup("400");
    let port = env.pg.1.to_string();
    let j = python(
        "psycopg_client.py",
        &[&env.pg.0, &port, "p-row", "alice", &env.token("alice")],
    );
    let plain = &env.expected(
        "p-row",
        "SELECT COUNT(*), COUNT(DISTINCT \"BEN_NIR_PSA\") FROM \"ER_PRS_F\"",
    )[0];
    assert_eq!(
        j["plain"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect::<Vec<_>>(),
        csv_ints(plain)
    );
    let value = j["param_value"].as_i64().unwrap();
    let param = env.expected(
        "p-row",
        &format!("SELECT COUNT(*) FROM \"ER_PRS_F\" WHERE \"PRS_NAT_REF\" = {value}"),
    )[0]
    .parse::<i64>()
    .unwrap();
    assert!(param > 0, "the parameter should select rows");
    assert_eq!(j["param"], serde_json::json!([param, param]));
    let text = env.expected(
        "p-row",
        "SELECT COUNT(*) FROM \"IR_BEN_R\" WHERE \"BEN_SEX_COD\" = 1 AND \"BEN_NIR_PSA\" <> 'none'",
    )[0]
    .parse::<i64>()
    .unwrap();
    assert_eq!(j["param_text"], serde_json::json!(text));
    assert_eq!(j["types"], serde_json::json!(["str", "date", "float"]));
    assert_eq!(j["show_timeout"], "120000");
    assert_eq!(
        j["set_refused"]["sqlstate"], "42501",
        "{}",
        j["set_refused"]
    );
    assert_eq!(
        j["hidden_table"]["sqlstate"], "42P01",
        "{}",
        j["hidden_table"]
    );
    assert_eq!(j["write"]["sqlstate"], "42501", "{}", j["write"]);
    let all = csv_ints(plain);
    assert_eq!(j["cursor_rows"], serde_json::json!(all[0]));
    assert_eq!(j["cursor_people"], serde_json::json!(all[1]));
    assert_eq!(j["cancel"]["sqlstate"], "57014", "{}", j["cancel"]);
    assert!(
        j["cancel_seconds"].as_f64().unwrap() < 30.0,
        "{}",
        j["cancel_seconds"]
    );
    assert_eq!(j["after_cancel"], 1);
    assert_eq!(j["timeout"]["sqlstate"], "57014", "{}", j["timeout"]);
    assert!(j["timeout_seconds"].as_f64().unwrap() < 30.0);
    assert!(
        j["wrong_password"]["message"]
            .as_str()
            .unwrap()
            .contains("password authentication failed for user \"alice\""),
        "{}",
        j["wrong_password"]
    );
    assert!(
        j["plaintext"]["message"]
            .as_str()
            .unwrap()
            .contains("TLS connections only"),
        "{}",
        j["plaintext"]
    );
    // The cancelled and timed-out statements are recorded as such.
    let log = env.run(
        "steward",
        &["audit", "show", "--project", "p-row", "--json"],
    );
    assert!(
        log.contains("canceling statement due to user request")
            || log.contains("\"decision\":\"cancelled\""),
        "cancel not audited"
    );
}

#[test]
fn adbc_flight_sql() {
    let env = setup("400");
    let uri = format!("grpc+tls://{}", env.flight);
    let count = "SELECT COUNT(*) AS n, COUNT(DISTINCT \"BEN_NIR_PSA\") AS people FROM \"ER_PRS_F\"";
    let top = "SELECT \"BEN_NIR_PSA\", COUNT(*) AS n FROM \"ER_PRS_F\" GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5";
    let token = env.token("alice");
    let mut args = vec![uri.as_str(), "p-row", "alice", token.as_str(), count, top];
    for (sql, _) in ADVERSARIAL {
        args.push(sql);
    }
    let j = python("adbc_client.py", &args);
    let r = j["results"].as_array().unwrap();
    let row = |x: &serde_json::Value| -> Vec<String> {
        x["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect()
    };
    assert_eq!(row(&r[0]), env.expected("p-row", count), "{}", r[0]);
    assert_eq!(row(&r[1]), env.expected("p-row", top), "{}", r[1]);
    for (i, (sql, fragment)) in ADVERSARIAL.iter().enumerate() {
        let e = r[2 + i]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{sql} passed through Flight SQL: {}", r[2 + i]));
        assert!(e.contains(fragment), "{sql}: {e}");
    }
    assert_eq!(j["tables"], serde_json::json!(["ER_PRS_F", "IR_BEN_R"]));
    assert!(
        j["wrong_password"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("unauthenticated"),
        "{}",
        j["wrong_password"]
    );
}

#[test]
fn http_api_openapi_and_shutdown() {
    let mut env = setup("300");
    let base = format!("https://{}", env.http);
    let login = |user: &str, pw: &str| {
        curl(&[
            "-X",
            "POST",
            &format!("{base}/api/v1/login"),
            "-H",
            "content-type: application/json",
            "-d",
            &serde_json::json!({"user": user, "password": pw}).to_string(),
        ])
    };
    let (code, body) = login("alice", "nope nope nope");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("\"unauthenticated\""), "{body}");
    // The password alone is not a sign-in.
    let (code, body) = login("alice", PASSWORD);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("\"mfa_required\""), "{body}");
    let token = env.token("alice");
    let auth = format!("authorization: Bearer {token}");
    let (code, body) = curl(&["-H", &auth, &format!("{base}/api/v1/projects")]);
    assert_eq!(code, 200);
    let ids: Vec<String> = serde_json::from_str::<serde_json::Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec!["p-agg", "p-old", "p-row"]);
    let (code, body) = curl(&["-H", &auth, &format!("{base}/api/v1/projects/p-row/tables")]);
    assert_eq!(code, 200, "{body}");
    let t: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(t[0]["name"], "ER_PRS_F");
    assert_eq!(t[1]["columns"].as_array().unwrap().len(), 3, "{body}");
    assert!(
        !t[1]["columns"][0]["description"]
            .as_str()
            .unwrap()
            .is_empty(),
        "{body}"
    );
    let q = |project: &str, sql: &str, fmt: &str| {
        curl(&[
            "-X",
            "POST",
            "-H",
            &auth,
            "-H",
            "content-type: application/json",
            &format!("{base}/api/v1/projects/{project}/query"),
            "-d",
            &serde_json::json!({"sql": sql, "format": fmt, "max_rows": 3}).to_string(),
        ])
    };
    let count = "SELECT COUNT(*) AS n FROM \"ER_PRS_F\"";
    let (code, body) = q("p-row", count, "json");
    assert_eq!(code, 200, "{body}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        j["rows"][0]["n"].to_string(),
        env.expected("p-row", count)[0]
    );
    let (code, body) = q(
        "p-row",
        "SELECT \"BEN_NIR_PSA\" FROM \"IR_BEN_R\" ORDER BY 1",
        "json",
    );
    assert_eq!(code, 200, "{body}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["row_count"], 3);
    assert_eq!(j["truncated"], true);
    let first3 = env.expected(
        "p-row",
        "SELECT \"BEN_NIR_PSA\" FROM \"IR_BEN_R\" ORDER BY 1 LIMIT 3",
    );
    assert_eq!(j["rows"][2]["BEN_NIR_PSA"].as_str().unwrap(), first3[2]);
    // Arrow: the stream read back with pyarrow gives the same value.
    let arrow_file = env.home.join("result.arrows");
    let (code, _) = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        "-H",
        "content-type: application/json",
        "-H",
        "accept: application/vnd.apache.arrow.stream",
        "-o",
        arrow_file.to_str().unwrap(),
        &format!("{base}/api/v1/projects/p-row/query"),
        "-d",
        &serde_json::json!({"sql": count}).to_string(),
    ]);
    assert_eq!(code, 200);
    let read = ok(&Command::new("python3")
        .args([
            "-c",
            "import sys, pyarrow.ipc as ipc; t = ipc.open_stream(open(sys.argv[1], 'rb')).read_all(); print(t.column_names[0], t.column(0)[0])",
        ])
        .arg(&arrow_file)
        .output()
        .unwrap());
    assert_eq!(
        read.trim(),
        format!("n {}", env.expected("p-row", count)[0])
    );
    for (sql, fragment) in ADVERSARIAL {
        let (code, body) = q("p-row", sql, "json");
        assert!(code == 403 || code == 400, "{sql}: {code} {body}");
        assert!(body.contains(fragment), "{sql}: {body}");
    }
    let (code, body) = q("p-agg", AGGREGATE_ONLY[0].0, "json");
    assert_eq!(code, 403, "{body}");
    // Aggregate-only results say what was withheld.
    let (code, body) = q(
        "p-agg",
        "SELECT \"BEN_NAI_ANN\", COUNT(*) AS n FROM \"IR_BEN_R\" GROUP BY 1",
        "json",
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["disclosure"]["rows_suppressed"].as_u64().unwrap() > 0,
        "{body}"
    );
    assert_eq!(v["disclosure"]["threshold"], 10);
    assert!(
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["n"].as_i64().unwrap() >= 10),
        "{body}"
    );
    // Non-members and unknown projects look alike.
    let (c1, b1) = q("p-none", count, "json");
    assert_eq!(c1, 403, "{b1}");
    // Admin endpoints need the admin role.
    let (code, _) = curl(&["-H", &auth, &format!("{base}/api/v1/admin/users")]);
    assert_eq!(code, 403);
    let admin = format!("authorization: Bearer {}", env.token("root"));
    let (code, body) = curl(&[
        "-X",
        "PUT",
        "-H",
        &admin,
        "-H",
        "content-type: application/json",
        &format!("{base}/api/v1/admin/projects/p-row/members/bob"),
        "-d",
        r#"{"role":"researcher"}"#,
    ]);
    assert_eq!(code, 204, "{body}");
    let (code, body) = curl(&["-H", &admin, &format!("{base}/api/v1/admin/users")]);
    assert_eq!(code, 200);
    assert!(
        body.contains("\"name\":\"etl\"")
            && body.contains("\"mfa\":true")
            && !body.contains("argon2")
            && !body.contains("totp"),
        "{body}"
    );
    // Health, readiness, metrics (counts only, no names or values).
    assert_eq!(curl(&[&format!("{base}/healthz")]).0, 200);
    assert_eq!(curl(&[&format!("{base}/readyz")]).0, 200);
    let (code, m) = curl(&[&format!("{base}/metrics")]);
    assert_eq!(code, 200);
    assert!(m.contains("pds_statements_total{channel=\"http\"}"), "{m}");
    assert!(
        !m.contains("alice") && !m.contains("p-row") && !m.contains("v1:"),
        "{m}"
    );
    // The OpenAPI document names every endpoint the router serves.
    let (code, doc) = curl(&[&format!("{base}/openapi.json")]);
    assert_eq!(code, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    for p in [
        "/api/v1/login",
        "/api/v1/mfa/enrol",
        "/api/v1/token/refresh",
        "/api/v1/oidc/{provider}/callback",
        "/api/v1/projects/{project}/query",
        "/api/v1/projects/{project}/exports",
        "/api/v1/exports/{id}/reviews",
        "/api/v1/admin/projects/{project}/members/{principal}",
        "/metrics",
    ] {
        assert!(
            doc["paths"].get(p).is_some(),
            "{p} missing from the OpenAPI document"
        );
    }
    // The export airlock over HTTP: request, two checkers, signed download.
    let bearer = |who: &str| format!("authorization: Bearer {}", env.token(who));
    let sql = "SELECT \"BEN_SEX_COD\", COUNT(*) AS n FROM \"IR_BEN_R\" GROUP BY 1 ORDER BY 1";
    let (code, body) = post_json(
        &format!("{base}/api/v1/projects/p-row/exports"),
        Some(&env.token("alice")),
        &serde_json::json!({"name": "table-1", "sql": sql, "format": "csv",
            "context": "Table 1: beneficiaries by sex in 2022",
            "controls": "groups of 10 or more, no identifiers"}),
    );
    assert_eq!(code, 201, "{body}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = e["id"].as_str().unwrap().to_string();
    assert_eq!(e["state"], "pending");
    let review = |who: &str, decision: &str| {
        post_json(
            &format!("{base}/api/v1/exports/{id}/reviews"),
            Some(&env.token(who)),
            &serde_json::json!({"decision": decision}),
        )
    };
    assert_eq!(review("alice", "approve").0, 403);
    let (code, body) = review("carol", "approve");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"state\":\"pending\""), "{body}");
    assert_eq!(review("carol", "approve").0, 409);
    let (code, body) = review("dave", "approve");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"state\":\"released\""), "{body}");
    let (code, body) = curl(&["-H", &bearer("carol"), &format!("{base}/api/v1/exports")]);
    assert_eq!(code, 200);
    assert!(body.contains(&id), "{body}");
    let (code, body) = curl(&[
        "-H",
        &bearer("root"),
        &format!("{base}/api/v1/exports/{id}"),
    ]);
    assert_eq!(code, 404, "not a member: {body}");
    let (code, body) = post_json(
        &format!("{base}/api/v1/exports/{id}/link"),
        Some(&env.token("alice")),
        &serde_json::json!({}),
    );
    assert_eq!(code, 200, "{body}");
    let url = serde_json::from_str::<serde_json::Value>(&body).unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        curl(&["-H", &bearer("carol"), &format!("{base}{url}")]).0,
        403
    );
    let (code, file) = curl(&["-H", &bearer("alice"), &format!("{base}{url}")]);
    assert_eq!(code, 200, "{file}");
    use sha2::Digest;
    assert_eq!(
        sha2::Sha256::digest(file.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        e["sha256"].as_str().unwrap()
    );
    assert_eq!(
        file.lines().skip(1).map(str::to_string).collect::<Vec<_>>(),
        env.expected("p-row", sql)
    );

    // Logout ends the session.
    assert_eq!(
        curl(&["-X", "POST", "-H", &auth, &format!("{base}/api/v1/logout")]).0,
        200
    );
    assert_eq!(
        curl(&["-H", &auth, &format!("{base}/api/v1/projects")]).0,
        401
    );

    // Every endpoint against its OpenAPI description (schemathesis: status
    // codes, content types, response schemas, no server errors, invalid
    // input refused). Sign-out and disabling accounts are left out: they
    // would revoke the token the run uses. Semantic checks (a perimeter's
    // TOML, account name rules) cannot be written in the schema, so the
    // "schema-valid input must be accepted" check is off.
    let fuzz_token = env.token("root");
    let st = Command::new("schemathesis")
        .args([
            "run",
            &format!("{base}/openapi.json"),
            "--tls-verify",
            "false",
            "-H",
        ])
        .arg(format!("Authorization: Bearer {fuzz_token}"))
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            "15",
            "--exclude-path",
            "/api/v1/logout",
            "--exclude-path",
            "/api/v1/admin/users/{name}/disable",
            "--exclude-path",
            "/api/v1/admin/users/{name}/reset-mfa",
            "--seed",
            "1",
        ])
        .env("NO_COLOR", "1")
        .output()
        .expect("schemathesis (PyPI) must be installed");
    assert!(
        st.status.success(),
        "schemathesis found problems:\n{}",
        String::from_utf8_lossy(&st.stdout)
    );

    // SIGTERM: stops cleanly and seals the log with a checkpoint.
    let err = env.stop();
    assert!(err.contains("Stopped"), "{err}");
    let v = env.run("steward", &["audit", "verify"]);
    // The checkpoint signed at shutdown covers every entry.
    assert!(
        v.contains("verified") && !v.contains("later entries"),
        "{v}"
    );

    // TLS configured but unreadable: refuse to start, never plaintext.
    std::fs::write(env.home.join("tls/server.crt"), "not a certificate").unwrap();
    let o = env
        .pds("steward")
        .arg("serve")
        .args(ANY_PORTS)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("TLS") && stderr(&o).contains("server.crt"),
        "{}",
        stderr(&o)
    );
    // Plaintext is for loopback only.
    let o = env
        .pds("steward")
        .args([
            "serve",
            "--insecure-local",
            "--pg-listen",
            "0.0.0.0:0",
            "--flight-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("loopback"), "{}", stderr(&o));
}

/// The main job: `pds demo` ends by serving the project; the commands it
/// prints work, and Ctrl-C stops it cleanly.
#[test]
fn demo_serves_until_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pds"))
        .args(["demo", "-n", "500", "--years", "2022-2022", "--dir"])
        .arg(&demo)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(l) => {
                let done = l.contains("Serving; Ctrl-C stops.");
                printed.push(l);
                if done {
                    break;
                }
            }
            Err(_) => {
                if let Some(s) = child.try_wait().unwrap() {
                    panic!("demo exited with {s}:\n{}", printed.join("\n"));
                }
                assert!(
                    Instant::now() < deadline,
                    "demo did not start serving:\n{}",
                    printed.join("\n")
                );
            }
        }
    }
    let out = printed.join("\n");
    assert!(out.contains("== 6/6"), "{out}");
    // The printed psql command, run as printed (the access token from the file it names).
    let line = printed
        .iter()
        .find(|l| l.contains("psql \"host="))
        .unwrap_or_else(|| panic!("no psql command printed:\n{out}"));
    let conn = line.split('"').nth(1).unwrap().to_string();
    let password = std::fs::read_to_string(demo.join("researcher.token")).unwrap();
    assert!(password.starts_with("pds_at_"), "{password}");
    assert!(demo.join("researcher.totp").exists());
    let o = Command::new("psql")
        .arg(&conn)
        .args(["-X", "-A", "-t", "-c", "SELECT COUNT(*) FROM \"ER_PRS_F\""])
        .env("PGPASSWORD", password.trim())
        .output()
        .unwrap();
    let n: i64 = ok(&o).trim().parse().unwrap();
    assert!(n > 1000, "{n}");
    // Ctrl-C.
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("Stopped"), "{err}");
}
