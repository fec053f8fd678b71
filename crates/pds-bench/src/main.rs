//! `snds-bench`: the PDS side of SNDS-bench (`bench/snds-bench.sh`).
//!
//! The harness (`bench/snds/bench.py`) generates a delivery, loads it with
//! `pds load`, converts the same CSV files for DuckDB, and then asks each
//! engine to run the same SQL files. This binary is the engine runner for
//! PDS, in two flavours:
//!
//! - `gate`: through the gate, as a researcher of a row-level project whose
//!   perimeter is every table and column, care dates at full precision and
//!   death dates by month (the SNDS allows one potential identifier at full
//!   precision): access checks, project views and pseudonyms, limits, audit,
//!   the path every real statement takes;
//! - `datafusion`: DataFusion on the snapshot's files as they are (decrypted
//!   by the snapshot key), without the gate: what PDS adds on top of its
//!   engine.
//!
//! `csv-schema` tells the DuckDB side the type of every delivered column, so
//! both sides read the same values. `disclosure` is the cost of disclosure
//! control (`bench/disclosure.sh`).
//!
//! Times are wall-clock from the statement to its last row in memory. Peak
//! memory is the process's peak resident set (`VmHWM`), so the harness runs
//! each cold query in a fresh process.

#![forbid(unsafe_code)]

mod disclosure;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use clap::{Parser, Subcommand, ValueEnum};
use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool};
use pds_gate::{Gate, Limits, Target};
use pds_project::perimeter::{DatePrecision, Perimeter};
use pds_project::{AccessMode, NewProject, Role};
use serde_json::{Value, json};

/// The project the `gate` engine runs in, and its researcher.
const PROJECT: &str = "snds-bench";
const PROJECT_AGGREGATE: &str = "snds-bench-aggregate";
const RESEARCHER: &str = "bench";

#[derive(Parser)]
#[command(
    name = "snds-bench",
    about = "SNDS-bench engine runner for PDS (see bench/snds-bench.sh)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prints, as JSON, the table and column types of every CSV file of a
    /// delivery (as `pds load` reads them).
    CsvSchema {
        /// The delivery directory.
        delivery: PathBuf,
    },
    /// The cost of disclosure control: the same aggregate analyses in an
    /// aggregate-only and a row-level project (`bench/disclosure.sh`).
    Disclosure {
        /// The PDS home holding the loaded snapshot.
        home: PathBuf,
        /// Timed runs per query and project (after one warm-up run).
        runs: usize,
        /// The JSON report.
        out: PathBuf,
    },
    /// Runs the SQL files of a directory and writes times, memory and results.
    Run {
        /// The PDS home holding the loaded snapshot.
        #[arg(long)]
        home: PathBuf,
        /// Which path the statements take.
        #[arg(long, value_enum)]
        engine: Engine,
        /// Directory of `*.sql` files (one statement each).
        #[arg(long)]
        queries: PathBuf,
        /// Placeholders, `NAME=VALUE`, replaced as `{NAME}` in every file.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Only this query (file stem).
        #[arg(long)]
        only: Option<String>,
        /// Timed runs after the first one (0: the first, cold run only).
        #[arg(long, default_value_t = 0)]
        runs: usize,
        /// Directory where the first run's rows are written, one JSON array
        /// per line, in `<query>.jsonl`.
        #[arg(long)]
        results: Option<PathBuf>,
        /// Rows are written only for results of at most this many rows
        /// (larger ones are compared by count).
        #[arg(long, value_name = "ROWS")]
        results_max_rows: Option<usize>,
        /// The JSON report.
        #[arg(long)]
        out: PathBuf,
        /// Memory of each statement, MiB (the gate's `[gate]` limits and
        /// raw DataFusion's pool). Operators that outgrow it spill to
        /// encrypted files (the gate's `[gate] spill_dir`, raw DataFusion's
        /// `spill` under the home); a statement that still fails is
        /// reported and the run goes on.
        #[arg(long, value_name = "MIB")]
        memory_mib: Option<u64>,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Engine {
    /// Through the gate, in a full-perimeter row-level project.
    Gate,
    /// Through the gate, in an aggregate-only project with the same
    /// perimeter (disclosure control on every result; statements it
    /// refuses are reported, not failed).
    GateAggregate,
    /// Plain DataFusion on the snapshot's files.
    Datafusion,
}

fn kind(ty: pds_snds::ColumnType) -> &'static str {
    use pds_snds::ColumnType as T;
    match ty {
        T::String | T::Boolean => "string",
        T::Integer => "integer",
        T::Number => "number",
        T::Date => "date",
        T::CompactDate => "compact_date",
        T::SasDateTime => "sas_datetime",
        T::Year => "year",
        T::YearMonth => "year_month",
        T::Month => "month",
    }
}

fn csv_schema(delivery: &Path) -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(delivery)
        .with_context(|| format!("cannot read the delivery {}", delivery.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{} holds no .csv file", delivery.display());
    }
    let mut out = Vec::new();
    for f in files {
        let r = pds_load::recognise(&f)?;
        out.push(json!({
            "file": f.file_name().map(|n| n.to_string_lossy().into_owned()),
            "table": r.table,
            "columns": r.columns.iter().map(|c| json!({"name": c.name, "kind": kind(c.ty)})).collect::<Vec<_>>(),
        }));
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// The SQL files of `dir`, by name, with placeholders replaced.
fn queries(dir: &Path, set: &[String], only: Option<&str>) -> Result<Vec<(String, String)>> {
    let mut subst = Vec::new();
    for s in set {
        let (k, v) = s
            .split_once('=')
            .with_context(|| format!("--set {s}: expected NAME=VALUE"))?;
        subst.push((format!("{{{k}}}"), v.to_string()));
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_none_or(|x| x != "sql") {
            continue;
        }
        let name = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let mut sql =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        for (k, v) in &subst {
            sql = sql.replace(k, v);
        }
        let left = sql.find('{').and_then(|i| {
            sql[i..]
                .find('}')
                .filter(|j| *j < 20)
                .map(|j| &sql[i..=i + j])
        });
        if let Some(left) = left {
            bail!(
                "{}: placeholder {left} is left; pass it with --set",
                p.display()
            );
        }
        out.push((name, sql));
    }
    out.sort();
    if out.is_empty() {
        bail!("no query to run in {}", dir.display());
    }
    Ok(out)
}

/// The process's peak resident set, in bytes (Linux).
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Writes the rows as JSON arrays of text cells (null for SQL NULL); the
/// harness normalises numbers and dates before comparing engines.
fn write_rows(path: &Path, batches: &[RecordBatch]) -> Result<()> {
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?,
    );
    let opts = FormatOptions::default();
    for b in batches {
        let cols: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
            .collect::<Result<_, _>>()?;
        for row in 0..b.num_rows() {
            let cells: Vec<Value> = b
                .columns()
                .iter()
                .zip(&cols)
                .map(|(c, f)| {
                    if c.is_null(row) {
                        Value::Null
                    } else {
                        Value::String(f.value(row).to_string())
                    }
                })
                .collect();
            serde_json::to_writer(&mut w, &cells)?;
            w.write_all(b"\n")?;
        }
    }
    w.flush()?;
    Ok(())
}

enum Runner {
    Gate(Box<Gate>, &'static str),
    Raw(pds_query::SnapshotSession),
}

impl Runner {
    async fn open(home: &Path, engine: Engine, memory_mib: Option<u64>) -> Result<Runner> {
        let h = pds_home::Home::open(home)?;
        Ok(match engine {
            Engine::Datafusion => {
                let (pool, spill) = match memory_mib {
                    Some(mib) => {
                        let pool: Arc<dyn MemoryPool> =
                            Arc::new(GreedyMemoryPool::new((mib as usize) << 20));
                        let dir = h.spill_dir();
                        let spill = pds_query::spill::EncryptedSpill::new(&dir, u64::MAX)
                            .with_context(|| format!("spill directory {}", dir.display()))?;
                        (Some(pool), Some(Arc::new(spill)))
                    }
                    None => (None, None),
                };
                Runner::Raw(pds_query::SnapshotSession::open_with(&h, None, pool, spill).await?)
            }
            Engine::Gate | Engine::GateAggregate => {
                let (project, mode) = if engine == Engine::Gate {
                    (PROJECT, AccessMode::RowLevel)
                } else {
                    (PROJECT_AGGREGATE, AccessMode::AggregateOnly)
                };
                let gate = Gate::open(&h).await?;
                if gate.catalog().project(project).await?.is_none() {
                    let snapshot = gate.catalog().latest("snds").await?.id;
                    let tables: Vec<String> = gate
                        .catalog()
                        .tables(snapshot)
                        .await?
                        .into_iter()
                        .map(|t| t.name)
                        .collect();
                    let names: Vec<&str> = tables.iter().map(String::as_str).collect();
                    // Everything, with the SNDS rule of one potential identifier at
                    // full precision: care dates (death dates stay by month).
                    let mut perimeter = Perimeter::all_columns(&names);
                    perimeter.coarsening.care_dates = DatePrecision::Day;
                    let admin = gate.admin("snds-bench");
                    admin
                        .create(&NewProject {
                            id: project.into(),
                            title: "SNDS-bench: every table and column".into(),
                            authorisation: "BENCH".into(),
                            starts_on: "2020-01-01".into(),
                            expires_on: "2099-12-31".into(),
                            mode,
                            snapshot: None,
                            perimeter,
                            cohort: Vec::new(),
                        })
                        .await?;
                    admin.grant(project, RESEARCHER, Role::Researcher).await?;
                }
                let gate = match memory_mib {
                    Some(mib) => {
                        let mut limits = Limits::from_config(&h.config.gate);
                        limits.query_memory = (mib as usize) << 20;
                        limits.total_memory = (mib as usize) << 20;
                        gate.with_limits(limits)
                    }
                    None => gate,
                };
                Runner::Gate(Box::new(gate), project)
            }
        })
    }

    /// Encrypted bytes this process's statements spilled.
    fn spilled_bytes(&self) -> Option<u64> {
        match self {
            Runner::Gate(g, _) => g.spill().map(|s| s.counters().bytes()),
            Runner::Raw(s) => s.spill().map(|s| s.counters().bytes()),
        }
    }

    /// The statement's rows, and whether the gate ran it again with
    /// sort-merge joins after its hash joins ran out of memory.
    async fn run(&self, sql: &str) -> Result<(Vec<RecordBatch>, bool)> {
        Ok(match self {
            Runner::Raw(s) => (s.sql(sql).await?.1, false),
            Runner::Gate(g, project) => {
                let mut s = g
                    .execute(RESEARCHER, &Target::Project((*project).into()), sql)
                    .await?;
                let mut batches = Vec::new();
                while let Some(b) = s.next_batch().await {
                    batches.push(b?);
                }
                (batches, s.rerun())
            }
        })
    }
}

/// How `snds-bench run` runs its statements (see its options).
struct RunOptions<'a> {
    runs: usize,
    results: Option<&'a Path>,
    results_max_rows: Option<usize>,
    out: &'a Path,
    memory_mib: Option<u64>,
}

async fn run(
    home: &Path,
    engine: Engine,
    qs: Vec<(String, String)>,
    opts: &RunOptions<'_>,
) -> Result<()> {
    let RunOptions {
        runs,
        results,
        results_max_rows,
        out,
        memory_mib,
    } = *opts;
    let opened = Instant::now();
    let runner = Runner::open(home, engine, memory_mib).await?;
    let open_s = opened.elapsed().as_secs_f64();
    if let Some(r) = results {
        std::fs::create_dir_all(r).with_context(|| format!("cannot create {}", r.display()))?;
    }
    let mut report = Vec::new();
    for (name, sql) in &qs {
        eprintln!("  {name}");
        let mut times = Vec::new();
        let mut rows = 0;
        let mut refused = None;
        let mut rerun = false;
        for i in 0..=runs {
            let t = Instant::now();
            let batches = match runner.run(sql).await {
                Ok((b, again)) => {
                    rerun |= again;
                    b
                }
                Err(e) if engine == Engine::GateAggregate || memory_mib.is_some() => {
                    refused = Some(format!("{e:#}"));
                    break;
                }
                Err(e) => return Err(e.context(format!("query {name} failed"))),
            };
            times.push(t.elapsed().as_secs_f64());
            if i == 0 {
                rows = batches.iter().map(|b| b.num_rows()).sum::<usize>();
                if let Some(r) = results
                    && results_max_rows.is_none_or(|max| rows <= max)
                {
                    write_rows(&r.join(format!("{name}.jsonl")), &batches)?;
                }
            }
        }
        if let Some(reason) = refused {
            let key = if memory_mib.is_some() {
                "failed"
            } else {
                "refused"
            };
            report.push(json!({ "query": name, key: reason }));
            continue;
        }
        report.push(json!({
            "query": name,
            "first_s": times[0],
            "hot_s": &times[1..],
            "rows": rows,
            "rerun_sort_merge": rerun,
        }));
    }
    let doc = json!({
        "engine": match engine {
            Engine::Gate => "pds-gate",
            Engine::GateAggregate => "pds-gate-aggregate-only",
            Engine::Datafusion => "datafusion",
        },
        "open_s": open_s,
        "peak_rss_bytes": peak_rss(),
        "memory_mib": memory_mib,
        "spilled_bytes": runner.spilled_bytes(),
        "queries": report,
    });
    std::fs::write(out, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::CsvSchema { delivery } => csv_schema(&delivery),
        Command::Disclosure { home, runs, out } => disclosure::run(&home, runs, &out).await,
        Command::Run {
            home,
            engine,
            queries: dir,
            set,
            only,
            runs,
            results,
            results_max_rows,
            out,
            memory_mib,
        } => {
            let qs = queries(&dir, &set, only.as_deref())?;
            let opts = RunOptions {
                runs,
                results: results.as_deref(),
                results_max_rows,
                out: &out,
                memory_mib,
            };
            run(&home, engine, qs, &opts).await
        }
    }
}
