//! `pds sql`: one read-only statement through the gate, as a project member
//! (`--project`) or as the operator (whole snapshot, platform pseudonyms).

use std::path::Path;

use anyhow::{Context, Result};
use clap::ValueEnum;

/// Output formats.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub(crate) enum OutFormat {
    /// An aligned text table.
    Table,
    /// CSV with a header line.
    Csv,
    /// A JSON array of objects.
    Json,
}

/// Arguments of `pds sql`.
#[derive(clap::Args, Debug)]
pub(crate) struct SqlArgs {
    /// One statement: SELECT, WITH, SHOW or DESCRIBE. Names are upper case (ER_PRS_F, BEN_NIR_PSA).
    pub(crate) query: String,
    /// Run in this project: its tables, columns, years, population and pseudonyms only.
    /// Without it, the statement runs on the whole snapshot as the operator (audited).
    #[arg(long)]
    pub(crate) project: Option<String>,
    /// Snapshot id for operator statements (default: the latest; projects use their pinned one).
    #[arg(long, conflicts_with = "project")]
    pub(crate) snapshot: Option<i64>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub(crate) format: OutFormat,
}

/// Who is acting: `--as`, else `PDS_USER`, else the OS account. Until
/// accounts with multi-factor login exist, the CLI trusts the local account
/// (whoever runs it also holds the master key).
pub(crate) fn principal(explicit: Option<&str>) -> Result<String> {
    let name = explicit
        .map(str::to_string)
        .or_else(|| std::env::var("PDS_USER").ok())
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .context("who is acting? Give --as ACCOUNT (or set PDS_USER): every statement and change is recorded under that name")?;
    Ok(name)
}

/// Runs `pds sql`.
pub(crate) async fn sql(home: &Path, who: Option<&str>, a: SqlArgs) -> Result<()> {
    let who = principal(who)?;
    let h = pds_home::Home::open(home)?;
    let gate = pds_gate::Gate::open(&h).await.context("opening the gate")?;
    let target = match a.project {
        Some(p) => pds_gate::Target::Project(p),
        None => pds_gate::Target::Operator {
            snapshot: a.snapshot,
        },
    };
    let stream = gate.execute(&who, &target, &a.query).await?;
    let (schema, batches) = stream.collect().await?;
    let f = match a.format {
        OutFormat::Table => pds_query::Format::Table,
        OutFormat::Csv => pds_query::Format::Csv,
        OutFormat::Json => pds_query::Format::Json,
    };
    print!("{}", pds_query::format(&schema, &batches, f)?);
    Ok(())
}
