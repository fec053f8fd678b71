//! `pds`: the single command-line entry point of PDS.
//!
//! Subcommands are thin: they parse arguments, call a library crate, and add
//! context to errors.
#![forbid(unsafe_code)]

#[cfg(feature = "sql")]
mod audit_cmd;
#[cfg(feature = "sql")]
mod demo;
#[cfg(feature = "sql")]
mod export_cmd;
mod keys_cmd;
mod load_cmd;
#[cfg(feature = "sql")]
mod project_cmd;
#[cfg(feature = "sql")]
mod serve_cmd;
#[cfg(feature = "sql")]
mod sql_cmd;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use pds_synth::{Config, Format, Report, Table};

/// PDS: sovereign, pseudonymised, fully traced access to the SNDS.
#[derive(Parser, Debug)]
#[command(name = "pds", version, about, long_about = None)]
struct Cli {
    /// PDS home (configuration, keys, catalogue, storage) used by commands that need one.
    #[arg(long, global = true, env = "PDS_HOME", default_value = "./pds-home")]
    home: PathBuf,
    /// Who is acting (default: PDS_USER, else the OS account).
    #[arg(id = "acting_as", long = "as", global = true, value_name = "ACCOUNT")]
    acting_as: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate a synthetic SNDS extraction (CNAM dialect) with realistic care trajectories.
    Synth(SynthArgs),
    /// Create a data home: documented config, key store, catalogue, object folder.
    Init(InitArgs),
    /// List the committed snapshots of the catalogue.
    Snapshots,
    /// Load a CNAM delivery (directory of `;` CSV files) as a new snapshot.
    Load(load_cmd::LoadArgs),
    /// List the tables of a snapshot (default: the latest) with rows and columns.
    Tables(TablesArgs),
    /// Run one read-only statement through the gate (in a project with --project).
    #[cfg(feature = "sql")]
    Sql(sql_cmd::SqlArgs),
    /// Research projects: perimeter, members, keys.
    #[cfg(feature = "sql")]
    #[command(subcommand)]
    Project(project_cmd::ProjectCommand),
    /// The export airlock: request, review (two checkers), download.
    #[cfg(feature = "sql")]
    #[command(subcommand)]
    Export(export_cmd::ExportCommand),
    /// The audit log: verify, show, export, checkpoint.
    #[cfg(feature = "sql")]
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// Serve the PostgreSQL protocol, Arrow Flight SQL and the HTTP API, each through the gate.
    #[cfg(feature = "sql")]
    Serve(serve_cmd::ServeArgs),
    /// Accounts that sign in to `pds serve`.
    #[cfg(feature = "sql")]
    #[command(subcommand)]
    User(serve_cmd::UserCommand),
    /// TLS certificates for `pds serve`.
    #[cfg(feature = "sql")]
    #[command(subcommand)]
    Tls(serve_cmd::TlsCommand),
    /// Key management (master-key rotation).
    #[command(subcommand)]
    Keys(keys_cmd::KeysCommand),
    /// Try PDS end to end: init a home, synthesise, load, run three analyses.
    #[cfg(feature = "sql")]
    Demo(demo::DemoArgs),
}

#[derive(clap::Args, Debug)]
struct TablesArgs {
    /// Snapshot id (default: the latest).
    #[arg(long)]
    snapshot: Option<i64>,
    /// Also list every column with its SNDS description.
    #[arg(long)]
    columns: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct InitArgs {
    /// Protect the master key with this key file (created, mode 0600, if missing).
    /// Keep it off the data disk. Without it, PDS_MASTER_PASSPHRASE is used.
    #[arg(long)]
    pub(crate) master_key_file: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum FormatArg {
    /// `;`-separated CSV in the CNAM extraction dialect.
    Csv,
    /// Typed Parquet, zstd-compressed.
    Parquet,
}

#[derive(clap::Args, Debug)]
struct SynthArgs {
    /// Number of beneficiaries (people).
    #[arg(long, short = 'n', default_value_t = 10_000)]
    beneficiaries: u64,
    /// Care years, `2021-2023` or `2022`.
    #[arg(long, default_value = "2021-2023")]
    years: String,
    /// Seed: the same arguments and seed give byte-identical files.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output directory (created if missing; files of the same names are replaced).
    #[arg(long, short = 'o', default_value = "synth-out")]
    out: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "csv")]
    format: FormatArg,
    /// Worker threads (default: all cores). The output does not depend on it.
    #[arg(long)]
    threads: Option<usize>,
    /// Also write the run's figures (rows, bytes, rates) as JSON to this file.
    #[arg(long)]
    stats_json: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(long, short = 'q')]
    quiet: bool,
}

fn parse_years(s: &str) -> Result<(u16, u16)> {
    let parse = |p: &str| -> Result<u16> {
        p.trim().parse::<u16>().with_context(|| {
            format!("--years `{s}`: `{p}` is not a year; write e.g. --years 2021-2023")
        })
    };
    match s.split_once('-') {
        Some((a, b)) => Ok((parse(a)?, parse(b)?)),
        None => {
            let y = parse(s)?;
            Ok((y, y))
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Synth(a) => synth(a),
        Command::Init(a) => runtime().and_then(|rt| rt.block_on(init(&cli.home, a))),
        Command::Snapshots => runtime().and_then(|rt| rt.block_on(snapshots(&cli.home))),
        Command::Load(a) => {
            runtime().and_then(|rt| rt.block_on(load_cmd::load(&cli.home, a)).map(|_| ()))
        }
        Command::Tables(a) => runtime().and_then(|rt| rt.block_on(tables(&cli.home, a))),
        #[cfg(feature = "sql")]
        Command::Sql(a) => runtime()
            .and_then(|rt| rt.block_on(sql_cmd::sql(&cli.home, cli.acting_as.as_deref(), a))),
        #[cfg(feature = "sql")]
        Command::Project(c) => runtime()
            .and_then(|rt| rt.block_on(project_cmd::run(&cli.home, cli.acting_as.as_deref(), c))),
        #[cfg(feature = "sql")]
        Command::Export(c) => runtime()
            .and_then(|rt| rt.block_on(export_cmd::run(&cli.home, cli.acting_as.as_deref(), c))),
        #[cfg(feature = "sql")]
        Command::Audit(c) => runtime().and_then(|rt| rt.block_on(audit_cmd::run(&cli.home, c))),
        #[cfg(feature = "sql")]
        Command::Serve(a) => runtime().and_then(|rt| rt.block_on(serve_cmd::serve(&cli.home, a))),
        #[cfg(feature = "sql")]
        Command::User(c) => runtime()
            .and_then(|rt| rt.block_on(serve_cmd::user(&cli.home, cli.acting_as.as_deref(), c))),
        #[cfg(feature = "sql")]
        Command::Tls(c) => serve_cmd::tls(&cli.home, c),
        Command::Keys(k) => runtime().and_then(|rt| rt.block_on(keys_cmd::run(&cli.home, k))),
        #[cfg(feature = "sql")]
        Command::Demo(a) => runtime().and_then(|rt| rt.block_on(demo::demo(a))),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub(crate) async fn init(home: &std::path::Path, a: InitArgs) -> Result<()> {
    let master = match (a.master_key_file, std::env::var("PDS_MASTER_PASSPHRASE")) {
        (Some(f), _) => pds_home::InitMaster::KeyFile(f),
        (None, Ok(p)) => pds_home::InitMaster::Passphrase(p),
        (None, Err(_)) => bail!(
            "pds init needs a master key: pass --master-key-file PATH (created if missing; keep it off the data disk) \
             or set PDS_MASTER_PASSPHRASE (at least 12 characters)"
        ),
    };
    let h = pds_home::Home::init(home, &master)
        .await
        .with_context(|| format!("pds init {} failed; nothing was created", home.display()))?;
    println!("Created PDS home {}", h.root.display());
    println!(
        "  config     {}",
        h.root.join(pds_home::CONFIG_FILE).display()
    );
    println!("  keys       {}", h.keys_dir().display());
    println!("  catalogue  {}", h.catalogue_url());
    if let Some(d) = h.local_storage_dir() {
        println!("  objects    {}", d.display());
    }
    if let pds_home::InitMaster::KeyFile(f) = &master {
        println!(
            "The master key is in {}: back it up and keep it away from the data.",
            f.display()
        );
    }
    Ok(())
}

async fn snapshots(home: &std::path::Path) -> Result<()> {
    let h = pds_home::Home::open(home)?;
    let cat = h.catalog().await?;
    let list = cat.snapshots().await?;
    if list.is_empty() {
        println!("No snapshot yet in {}.", home.display());
    } else {
        println!(
            "{:>4} {:<8} {:<21} {:<12} {:>7} {:>14} {:>12}",
            "id", "dataset", "created", "by", "tables", "rows", "MB"
        );
        for s in list {
            println!(
                "{:>4} {:<8} {:<21} {:<12} {:>7} {:>14} {:>12.1}",
                s.id,
                s.dataset,
                s.created_at,
                s.created_by,
                s.tables,
                s.rows,
                s.bytes as f64 / 1e6
            );
        }
    }
    cat.close().await;
    Ok(())
}

async fn tables(home: &std::path::Path, a: TablesArgs) -> Result<()> {
    let h = pds_home::Home::open(home)?;
    let cat = h.catalog().await?;
    let snap = match a.snapshot {
        Some(id) => cat.snapshot(id).await?,
        None => cat.latest("snds").await?,
    };
    println!(
        "Snapshot {} ({}, by {})",
        snap.id, snap.created_at, snap.created_by
    );
    println!(
        "{:<12} {:>12} {:>10} {:>6}  title",
        "table", "rows", "MB", "files"
    );
    for t in cat.tables(snap.id).await? {
        println!(
            "{:<12} {:>12} {:>10.1} {:>6}  {}",
            t.name,
            t.rows,
            t.bytes as f64 / 1e6,
            t.files.len(),
            t.title
        );
        if a.columns {
            for c in &t.columns {
                println!("    {:<14} {:<22} {}", c.name, c.data_type, c.description);
            }
        }
    }
    cat.close().await;
    Ok(())
}

fn synth(a: SynthArgs) -> Result<()> {
    let (first_year, last_year) = parse_years(&a.years)?;
    let cfg = Config {
        beneficiaries: a.beneficiaries,
        first_year,
        last_year,
        seed: a.seed,
        out: a.out.clone(),
        format: match a.format {
            FormatArg::Csv => Format::Csv,
            FormatArg::Parquet => Format::Parquet,
        },
        threads: a.threads,
    };
    cfg.validate()?;
    if let Some(p) = &a.stats_json
        && let Some(parent) = p.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        bail!(
            "--stats-json {}: directory {} does not exist",
            p.display(),
            parent.display()
        );
    }
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(cfg.beneficiaries)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} beneficiaries ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let progress = |n: u64| bar.set_position(n);
    let report = pds_synth::generate(&cfg, &progress).with_context(|| {
        format!(
            "synthetic data generation into {} failed; nothing was written",
            cfg.out.display()
        )
    })?;
    bar.finish_and_clear();
    if !a.quiet {
        print_report(&cfg, &report);
    }
    if let Some(p) = &a.stats_json {
        let json = stats_json(&cfg, &report);
        std::fs::write(p, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn family(t: &str) -> &'static str {
    if t.starts_with("ER_") {
        "DCIR"
    } else if t.starts_with("T_MCO") {
        "PMSI MCO"
    } else if t.starts_with("KI_") {
        "Deaths"
    } else {
        "Beneficiaries"
    }
}

fn print_report(cfg: &Config, r: &Report) {
    println!(
        "Wrote {} beneficiaries x {}-{} to {} in {:.1} s ({} threads)",
        r.beneficiaries,
        cfg.first_year,
        cfg.last_year,
        cfg.out.display(),
        r.seconds,
        r.threads
    );
    println!(
        "{:<12} {:>5} {:>12} {:>10} {:>12} {:>9}",
        "table", "files", "rows", "MB", "rows/s", "MB/s"
    );
    for t in r.tables.iter().chain(r.referentials.iter()) {
        let mb = t.bytes as f64 / 1e6;
        println!(
            "{:<12} {:>5} {:>12} {:>10.1} {:>12.0} {:>9.1}",
            t.table,
            t.files,
            t.rows,
            mb,
            t.rows as f64 / r.seconds.max(1e-9),
            mb / r.seconds.max(1e-9)
        );
    }
    println!(
        "Per person-year ({:.0} person-years, {} deaths): ER_PRS_F {:.1} lines, ER_PHA_F {:.1}, ER_BIO_F {:.1}, MCO stays {:.3}",
        r.person_years,
        r.deaths,
        r.per_person_year(Table::ErPrs),
        r.per_person_year(Table::ErPha),
        r.per_person_year(Table::ErBio),
        r.per_person_year(Table::McoB)
    );
    println!(
        "Real SNDS for comparison: about 25-35 ER_PRS_F lines, 10-15 ER_PHA_F lines and 0.2-0.3 MCO stays per person-year."
    );
}

fn stats_json(cfg: &Config, r: &Report) -> serde_json::Value {
    let mut families: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
    for t in &r.tables {
        let e = families.entry(family(&t.table)).or_default();
        e.0 += t.rows;
        e.1 += t.bytes;
    }
    let secs = r.seconds.max(1e-9);
    serde_json::json!({
        "beneficiaries": r.beneficiaries,
        "years": [cfg.first_year, cfg.last_year],
        "seed": cfg.seed,
        "format": format!("{:?}", cfg.format).to_lowercase(),
        "threads": r.threads,
        "seconds": r.seconds,
        "person_years": r.person_years,
        "deaths": r.deaths,
        "per_person_year": {
            "ER_PRS_F": r.per_person_year(Table::ErPrs),
            "ER_PHA_F": r.per_person_year(Table::ErPha),
            "ER_BIO_F": r.per_person_year(Table::ErBio),
            "MCO_stays": r.per_person_year(Table::McoB),
        },
        "families": families.iter().map(|(f, (rows, bytes))| serde_json::json!({
            "family": f, "rows": rows, "bytes": bytes,
            "rows_per_s": *rows as f64 / secs, "mb_per_s": *bytes as f64 / 1e6 / secs,
        })).collect::<Vec<_>>(),
        "tables": r.tables.iter().chain(r.referentials.iter()).map(|t| serde_json::json!({
            "table": t.table, "files": t.files, "rows": t.rows, "bytes": t.bytes,
        })).collect::<Vec<_>>(),
    })
}
