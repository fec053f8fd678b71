//! `pds export`: the airlock from the command line (request, review,
//! withdraw, download, list, show). The HTTP API offers the same.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use pds_airlock::{Airlock, Decision, FileType, NewRequest, Source};
use pds_catalog::ExportRow;

use crate::sql_cmd::principal;

/// Format of a query result to export.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub(crate) enum ExportFormat {
    /// Comma-separated, with a header line.
    Csv,
    /// Apache Parquet.
    Parquet,
}

/// `pds export ...`
#[derive(Subcommand, Debug)]
pub(crate) enum ExportCommand {
    /// Ask for a result to leave: a statement run now through the gate, or a file (a figure).
    Request {
        /// Project.
        #[arg(long)]
        project: String,
        /// A short name for the result (letters, digits, - _ .).
        #[arg(long)]
        name: String,
        /// The statement whose result should leave.
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        sql: Option<String>,
        /// Format of the statement's result.
        #[arg(long, value_enum, default_value = "csv")]
        format: ExportFormat,
        /// A file to export instead (CSV, Parquet, PNG, SVG).
        #[arg(long)]
        file: Option<PathBuf>,
        /// For the reviewers: what the result shows, on which population, for what.
        #[arg(long)]
        context: String,
        /// The disclosure controls applied (threshold, rounding, suppression).
        #[arg(long)]
        controls: String,
    },
    /// List export requests (of one project, or all).
    List {
        /// Project.
        #[arg(long)]
        project: Option<String>,
    },
    /// Show a request: its file, automatic checks and reviews.
    Show {
        /// Request id.
        id: String,
    },
    /// Review a request (checkers of its project; never your own).
    Review {
        /// Request id.
        id: String,
        /// approve, request-changes or reject.
        #[arg(long)]
        decision: String,
        /// Why (required unless approving).
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Withdraw your request.
    Withdraw {
        /// Request id.
        id: String,
    },
    /// Download a released file (its requester only; counted).
    Download {
        /// Request id.
        id: String,
        /// Where to write it (default: its file name, in the current folder).
        #[arg(long, short = 'o')]
        out: Option<PathBuf>,
    },
}

fn print_row(e: &ExportRow) {
    println!(
        "{}  {}  {}  {}  {} by {}  {} ({} bytes{}) sha256 {}",
        e.id,
        e.project_id,
        e.state,
        e.created_at,
        e.name,
        e.requester,
        e.file_name,
        e.file_bytes,
        e.file_rows
            .map(|r| format!(", {r} rows"))
            .unwrap_or_default(),
        e.sha256
    );
}

pub(crate) async fn run(home: &Path, who: Option<&str>, cmd: ExportCommand) -> Result<()> {
    let who = principal(who)?;
    let h = pds_home::Home::open(home)?;
    let gate = pds_gate::Gate::open(&h).await.context("opening the gate")?;
    let storage = h.storage()?;
    let airlock = Airlock {
        gate: &gate,
        storage: &storage,
        config: &h.config.airlock,
    };
    match cmd {
        ExportCommand::Request {
            project,
            name,
            sql,
            format,
            file,
            context,
            controls,
        } => {
            let source = match (sql, file) {
                (Some(sql), None) => Source::Query {
                    sql,
                    format: match format {
                        ExportFormat::Csv => FileType::Csv,
                        ExportFormat::Parquet => FileType::Parquet,
                    },
                },
                (None, Some(f)) => Source::File {
                    name: f
                        .file_name()
                        .map(|n| n.to_string_lossy().to_string())
                        .unwrap_or_default(),
                    bytes: std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?,
                },
                _ => bail!("give either --sql or --file"),
            };
            let e = airlock
                .request(NewRequest {
                    project,
                    requester: who,
                    name,
                    source,
                    context,
                    controls,
                })
                .await?;
            print_row(&e);
            print_checks(&e)?;
            println!(
                "Two checkers of the project must now approve it: pds export review {} --decision approve",
                e.id
            );
        }
        ExportCommand::List { project } => {
            for e in gate.catalog().exports(project.as_deref()).await? {
                print_row(&e);
            }
        }
        ExportCommand::Show { id } => {
            let e = airlock.get(&id).await?;
            print_row(&e);
            if let Some(s) = &e.statement {
                println!(
                    "statement (snapshot {}): {s}",
                    e.snapshot_id.unwrap_or_default()
                );
            }
            println!("context: {}", e.context);
            println!("controls: {}", e.controls);
            print_checks(&e)?;
            for r in gate.catalog().reviews(&id).await? {
                println!(
                    "review: {} {} {} {}",
                    r.created_at, r.reviewer, r.decision, r.comment
                );
            }
            println!("downloads: {} of {}", e.downloads, e.max_downloads);
        }
        ExportCommand::Review {
            id,
            decision,
            comment,
        } => {
            let e = airlock
                .review(&id, &who, Decision::parse(&decision)?, &comment)
                .await?;
            println!("export {} is now {}", e.id, e.state);
        }
        ExportCommand::Withdraw { id } => {
            let e = airlock.withdraw(&id, &who).await?;
            println!("export {} is now {}", e.id, e.state);
        }
        ExportCommand::Download { id, out } => {
            let link = airlock.link(&id, &who).await?;
            let (e, bytes) = airlock
                .download(&id, &who, link.expires, &link.signature)
                .await?;
            let out = out.unwrap_or_else(|| PathBuf::from(&e.file_name));
            if out.exists() {
                bail!("{} exists; choose another --out", out.display());
            }
            std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "wrote {} ({} bytes, sha256 {}); download {} of {}",
                out.display(),
                bytes.len(),
                e.sha256,
                e.downloads,
                e.max_downloads
            );
        }
    }
    Ok(())
}

fn print_checks(e: &ExportRow) -> Result<()> {
    let report: pds_airlock::Report =
        serde_json::from_str(&e.checks).context("reading the checks report")?;
    if report.findings.is_empty() {
        println!("automatic checks: nothing found");
    }
    for f in &report.findings {
        println!(
            "check {} [{}]: {}",
            f.check,
            serde_json::to_value(f.severity)?
                .as_str()
                .unwrap_or_default(),
            f.message
        );
    }
    Ok(())
}
