//! `pds demo`: the whole steward path on synthetic data, in one command.
//!
//! init a home → synthesise a delivery → load it as snapshot 1 → run three
//! analyses researchers typically start with, printing the SQL and results.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Arguments of `pds demo`.
#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// Working directory (home, master key, delivery). Re-running replaces an
    /// earlier demo there; any other non-empty directory is refused.
    #[arg(long, default_value = "pds-demo")]
    dir: PathBuf,
    /// Beneficiaries to synthesise.
    #[arg(long, short = 'n', default_value_t = 20_000)]
    beneficiaries: u64,
    /// Care years.
    #[arg(long, default_value = "2022-2023")]
    years: String,
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Stop after the analyses instead of starting `pds serve` (scripts, CI).
    #[arg(long)]
    no_serve: bool,
}

const MARKER: &str = ".pds-demo";
const PROJECT: &str = "demo-diabetes";
const STEWARD: &str = "steward";
const RESEARCHER: &str = "researcher";

/// The demo project's perimeter: the tables the three analyses need, the
/// demo years, default coarsening (no potential identifier at full precision).
pub(crate) fn demo_perimeter(y0: u16, y1: u16) -> String {
    format!(
        r#"years = [{y0}, {y1}]

[tables]
ER_PRS_F = "*"
ER_PHA_F = "*"
ER_BIO_F = "*"
IR_PHA_R = "*"
IR_IMB_R = ["BEN_NIR_PSA", "BEN_RNG_GEM", "IMB_ALD_NUM", "IMB_ALD_DTD", "IMB_ALD_DTF", "MED_MTF_COD"]
T_MCOaaB = "*"
T_MCOaaC = "*"

[coarsening]
care_dates = "month"
"#
    )
}

/// The three analyses, for care years `y0..=y1`.
pub(crate) fn analyses(y0: u16, y1: u16) -> Vec<(&'static str, String)> {
    // The 9 keys that join a DCIR claim line to its refinement tables.
    let keys = |a: &str, b: &str| {
        pds_snds::schema::DCIR_JOIN_KEYS
            .iter()
            .map(|k| format!("{a}.{k} = {b}.{k}"))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let stays = (y0..=y1)
        .map(|y| {
            let yy = y % 100;
            format!(
                "SELECT {y} AS year, b.ETA_NUM, b.RSA_NUM, b.DGN_PAL, b.SEJ_NBJ, b.GRG_GHM, c.NIR_ANO_17 \
                 FROM T_MCO{yy:02}B b JOIN T_MCO{yy:02}C c ON b.ETA_NUM = c.ETA_NUM AND b.RSA_NUM = c.RSA_NUM \
                 WHERE c.NIR_RET = '0' AND c.NAI_RET = '0' AND c.SEX_RET = '0' AND c.SEJ_RET = '0' \
                 AND c.FHO_RET = '0' AND c.PMS_RET = '0' AND c.DAT_RET = '0'"
            )
        })
        .collect::<Vec<_>>()
        .join("\n    UNION ALL ");
    vec![
        (
            "People dispensed an antidiabetic (ATC A10) per year and age group",
            format!(
                "SELECT EXTRACT(YEAR FROM p.EXE_SOI_DTD) AS year,
       CASE WHEN EXTRACT(YEAR FROM p.EXE_SOI_DTD) - p.BEN_NAI_ANN < 45 THEN '00-44'
            WHEN EXTRACT(YEAR FROM p.EXE_SOI_DTD) - p.BEN_NAI_ANN < 65 THEN '45-64'
            WHEN EXTRACT(YEAR FROM p.EXE_SOI_DTD) - p.BEN_NAI_ANN < 80 THEN '65-79'
            ELSE '80+' END AS age_group,
       COUNT(DISTINCT p.BEN_NIR_PSA) AS people,
       SUM(f.PHA_ACT_QSN) AS boxes
FROM ER_PRS_F p
JOIN ER_PHA_F f ON {}
JOIN IR_PHA_R r ON f.PHA_PRS_C13 = r.PHA_CIP_C13
WHERE r.PHA_ATC_C07 LIKE 'A10%' AND p.DPN_QLF <> 71 AND p.CPL_MAJ_TOP < 2
  AND EXTRACT(YEAR FROM p.EXE_SOI_DTD) BETWEEN {y0} AND {y1}
GROUP BY 1, 2 ORDER BY 1, 2",
                keys("p", "f")
            ),
        ),
        (
            "Acute stays with a main diagnosis of ischaemic stroke (ICD-10 I63), chained patients only",
            format!(
                "WITH stays AS (
    {stays}
)
SELECT year, COUNT(*) AS stays, COUNT(DISTINCT NIR_ANO_17) AS patients,
       ROUND(AVG(SEJ_NBJ), 1) AS mean_length_days
FROM stays
WHERE DGN_PAL LIKE 'I63%' AND GRG_GHM NOT LIKE '90%'
GROUP BY year ORDER BY year"
            ),
        ),
        (
            "HbA1c tests (NABM 1577) per person with a diabetes ALD (ICD-10 E11)",
            format!(
                "WITH diabetics AS (
    SELECT DISTINCT BEN_NIR_PSA FROM IR_IMB_R WHERE MED_MTF_COD LIKE 'E11%'
), tests AS (
    SELECT p.BEN_NIR_PSA, EXTRACT(YEAR FROM p.EXE_SOI_DTD) AS year, SUM(b.BIO_ACT_QSN) AS n
    FROM ER_PRS_F p JOIN ER_BIO_F b ON {}
    WHERE b.BIO_PRS_IDE = 1577 AND p.DPN_QLF <> 71
    GROUP BY 1, 2
), years AS (
    SELECT DISTINCT year FROM tests WHERE year BETWEEN {y0} AND {y1}
)
SELECT y.year, COUNT(*) AS diabetics,
       ROUND(AVG(COALESCE(t.n, 0)), 2) AS tests_per_diabetic,
       ROUND(100.0 * AVG(CASE WHEN t.n > 0 THEN 1 ELSE 0 END), 1) AS pct_with_a_test
FROM diabetics d CROSS JOIN years y
LEFT JOIN tests t ON t.BEN_NIR_PSA = d.BEN_NIR_PSA AND t.year = y.year
GROUP BY y.year ORDER BY y.year",
                keys("p", "b")
            ),
        ),
    ]
}

fn prepare_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_none();
        if !empty {
            if !dir.join(MARKER).exists() {
                bail!(
                    "{} exists and was not made by `pds demo`; choose another --dir",
                    dir.display()
                );
            }
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("removing the previous demo in {}", dir.display()))?;
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        "made by `pds demo`; `pds demo` may delete this directory\n",
    )
    .with_context(|| format!("writing in {}", dir.display()))?;
    Ok(())
}

/// Runs the demo.
pub(crate) async fn demo(a: DemoArgs) -> Result<()> {
    let started = Instant::now();
    let (y0, y1) = crate::parse_years(&a.years)?;
    let cfg = pds_synth::Config {
        beneficiaries: a.beneficiaries,
        first_year: y0,
        last_year: y1,
        seed: a.seed,
        out: a.dir.join("delivery"),
        format: pds_synth::Format::Csv,
        threads: None,
    };
    cfg.validate()?;
    prepare_dir(&a.dir)?;
    let home = a.dir.join("home");

    println!("== 1/6 Create a home (config, key store, SQLite catalogue, local object store)");
    crate::init(
        &home,
        crate::InitArgs {
            master_key_file: Some(a.dir.join("master.key")),
        },
    )
    .await?;

    println!(
        "\n== 2/6 Synthesise a CNAM delivery: {} beneficiaries, {y0}-{y1}",
        a.beneficiaries
    );
    let report = tokio::task::spawn_blocking(move || pds_synth::generate(&cfg, &|_| {}))
        .await
        .context("the generator thread failed")??;
    let rows: u64 = report.tables.iter().map(|t| t.rows).sum();
    let bytes: u64 = report.tables.iter().map(|t| t.bytes).sum();
    println!(
        "{rows} rows in {} files ({:.1} MB of CSV) in {:.1} s",
        report.tables.iter().map(|t| t.files).sum::<usize>() + report.referentials.len(),
        bytes as f64 / 1e6,
        report.seconds
    );

    println!("\n== 3/6 Load it: validate, pseudonymise, encrypt, commit snapshot 1");
    crate::load_cmd::load(
        &home,
        crate::load_cmd::LoadArgs {
            dir: a.dir.join("delivery"),
            max_errors: None,
            note: "pds demo".into(),
            threads: None,
            compression: None,
            quiet: false,
        },
    )
    .await?;

    println!("\n== 4/6 Declare a research project: its perimeter, a member, its own pseudonyms");
    let perimeter_file = a.dir.join("perimeter.toml");
    std::fs::write(&perimeter_file, demo_perimeter(y0, y1))
        .with_context(|| format!("writing {}", perimeter_file.display()))?;
    println!("{}:\n{}", perimeter_file.display(), demo_perimeter(y0, y1));
    let h = pds_home::Home::open(&home)?;
    let gate = pds_gate::Gate::open(&h).await?;
    let admin = gate.admin(STEWARD);
    let perimeter = pds_project::Perimeter::from_toml(&demo_perimeter(y0, y1))?;
    admin
        .create(&pds_project::NewProject {
            id: PROJECT.into(),
            title: "Diabetes and stroke care pathways (demo)".into(),
            authorisation: "DEMO-0001 (synthetic data)".into(),
            starts_on: chrono::Utc::now().date_naive().to_string(),
            expires_on: (chrono::Utc::now().date_naive() + chrono::Days::new(365)).to_string(),
            mode: pds_project::AccessMode::RowLevel,
            snapshot: None,
            perimeter,
            cohort: Vec::new(),
        })
        .await?;
    admin
        .grant(PROJECT, RESEARCHER, pds_project::Role::Lead)
        .await?;
    println!(
        "Project {PROJECT} created by {STEWARD}; {RESEARCHER} is its lead. Care dates are coarsened to the month, \
         identifiers are project pseudonyms (v1:...), and only the tables above exist for it."
    );

    println!("\n== 5/6 Three analyses by {RESEARCHER}, through the gate (every statement audited)");
    let target = pds_gate::Target::Project(PROJECT.into());
    for (i, (title, sql)) in analyses(y0, y1).into_iter().enumerate() {
        let t = Instant::now();
        let (schema, batches) = gate
            .execute(RESEARCHER, &target, &sql)
            .await
            .with_context(|| format!("analysis {}: {title}", i + 1))?
            .collect()
            .await
            .with_context(|| format!("analysis {}: {title}", i + 1))?;
        println!("\n-- {}. {title}\n{sql};", i + 1);
        print!(
            "{}",
            pds_query::format(&schema, &batches, pds_query::Format::Table)?
        );
        println!("({:.2} s)", t.elapsed().as_secs_f64());
    }
    let key = pds_audit::parse_public_key(&gate.audit().public_key_hex())?;
    let report = pds_audit::verify(gate.catalog(), &key, &[]).await?;
    if let Some(p) = report.problem {
        bail!("the audit log does not verify: {p}");
    }
    println!(
        "\nAudit log: {} entries (project creation, grant, each statement and its result hash), verified.",
        report.entries
    );
    println!(
        "\nDone in {:.1} s. Try:\n  pds --home {h} --as {RESEARCHER} sql --project {PROJECT} \"SELECT COUNT(DISTINCT BEN_NIR_PSA) FROM ER_PRS_F\"\n  pds --home {h} project show {PROJECT}\n  pds --home {h} audit show --project {PROJECT}\n  pds --home {h} audit verify",
        started.elapsed().as_secs_f64(),
        h = home.display()
    );
    if a.no_serve {
        return Ok(());
    }
    drop(gate);
    serve(&a.dir, &home).await
}

/// Step 6: an account for the researcher, a self-signed certificate, and
/// `pds serve` until Ctrl-C.
async fn serve(dir: &Path, home: &Path) -> Result<()> {
    println!(
        "\n== 6/6 Serve the project to psql, Python, R and HTTP clients (TLS, through the same gate)"
    );
    let h = pds_home::Home::open(home)?;
    let password = {
        let mut b = [0u8; 18];
        getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    };
    let pw_file = dir.join("researcher.password");
    pds_keys::write_private(&pw_file, password.as_bytes())?;
    let totp_file = dir.join("researcher.totp");
    let token_file = dir.join("researcher.token");
    let qr = {
        // The researcher's whole sign-in, as a person would do it: account,
        // TOTP enrolment (the demo plays the phone), then password plus a
        // recovery code (the enrolment code's time step is spent).
        let gate = pds_gate::Gate::open(&h).await?;
        let policy = crate::serve_cmd::policy(&h)?;
        let accounts = pds_accounts::Accounts::new(gate.catalog(), gate.audit());
        accounts
            .add(
                STEWARD,
                RESEARCHER,
                pds_accounts::Kind::Local,
                Some(&password),
                false,
            )
            .await?;
        let e = accounts
            .begin_enrolment(gate.keys(), &policy, RESEARCHER, RESEARCHER)
            .await?;
        pds_keys::write_private(&totp_file, e.otpauth_uri.as_bytes())?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let codes = accounts
            .confirm_enrolment(
                gate.keys(),
                &policy,
                RESEARCHER,
                RESEARCHER,
                &pds_accounts::mfa::code_at(&e.otpauth_uri, now)?,
            )
            .await?;
        let outcome = accounts
            .login(
                gate.keys(),
                &policy,
                RESEARCHER,
                &password,
                pds_accounts::SecondFactor::Recovery(&codes[0]),
                "demo",
            )
            .await?;
        let pds_accounts::LoginOutcome::Signed(tokens) = outcome else {
            anyhow::bail!("the demo researcher was not signed in after enrolment");
        };
        pds_keys::write_private(&token_file, tokens.access_token.as_bytes())?;
        e.qr_text
    };
    let cert = h.root.join(&h.config.serve.tls_cert);
    let key = h.root.join(&h.config.serve.tls_key);
    pds_serve::tls::self_signed(&cert, &key, &["localhost".into(), "127.0.0.1".into()])?;
    let args = crate::serve_cmd::ServeArgs::defaults();
    let (server, _) = crate::serve_cmd::start(&h, &args).await.context(
        "starting the server (are ports 6432, 8815 and 8443 free? `pds serve --pg-listen ...` chooses others)",
    )?;
    let pg = server.pg_addr.map(|a| a.to_string()).unwrap_or_default();
    let (host, port) = pg.rsplit_once(':').unwrap_or(("127.0.0.1", "6432"));
    let http = server.http_addr.map(|a| a.to_string()).unwrap_or_default();
    let flight = server
        .flight_addr
        .map(|a| a.to_string())
        .unwrap_or_default();
    let pw = pw_file.display();
    let tok = token_file.display();
    println!(
        "{qr}\nAccount {RESEARCHER} created: password in {pw}, TOTP authenticator in {totp} (the QR code above;\n\
scan it to sign in from your phone), and a signed-in session's access token in {tok}\n\
(valid {ttl} minutes). TLS certificate: self-signed, {cert}.\n\n\
Sign in again (password + the 6-digit code of your app):\n  curl -sk https://{http}/api/v1/login -H 'content-type: application/json' \\\n    -d '{{\"user\":\"{RESEARCHER}\",\"password\":\"'$(cat {pw})'\",\"totp\":\"123456\"}}'\n\n\
psql (the access token is the password):\n  PGPASSWORD=$(cat {tok}) psql \"host={host} port={port} dbname={PROJECT} user={RESEARCHER} sslmode=require\" \\\n    -c 'SELECT COUNT(DISTINCT \"BEN_NIR_PSA\") FROM \"ER_PRS_F\"'\n\n\
Python (psycopg 3):\n  python3 -c \"import psycopg; c = psycopg.connect(host='{host}', port={port}, dbname='{PROJECT}', user='{RESEARCHER}', password=open('{tok}').read(), sslmode='require'); print(c.execute('SELECT COUNT(*) FROM \\\"ER_PRS_F\\\"').fetchone())\"\n\n\
Python (ADBC Flight SQL, Arrow results): grpc+tls://{flight}, username {RESEARCHER}, password = the access token, call header x-pds-project={PROJECT}\n\n\
HTTP:\n  curl -sk https://{http}/api/v1/projects -H \"Authorization: Bearer $(cat {tok})\"\n  (the API is described at https://{http}/openapi.json)\n\nServing; Ctrl-C stops.",
        cert = cert.display(),
        totp = totp_file.display(),
        ttl = h.config.serve.token_ttl_minutes,
    );
    crate::serve_cmd::stop_signal().await;
    crate::serve_cmd::stop(server, 30).await;
    Ok(())
}
