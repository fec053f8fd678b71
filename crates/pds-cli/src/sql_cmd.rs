//! `pds sql`: read-only SQL on a snapshot, for stewards checking a load.

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
    /// One statement: SELECT, WITH, EXPLAIN or SHOW. Names are upper case (ER_PRS_F, BEN_NIR_PSA).
    pub(crate) query: String,
    /// Snapshot id (default: the latest).
    #[arg(long)]
    pub(crate) snapshot: Option<i64>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub(crate) format: OutFormat,
}

/// Runs `pds sql`.
pub(crate) async fn sql(home: &Path, a: SqlArgs) -> Result<()> {
    let h = pds_home::Home::open(home)?;
    let session = pds_query::SnapshotSession::open(&h, a.snapshot)
        .await
        .context("opening the snapshot")?;
    let (schema, batches) = session.sql(&a.query).await?;
    let f = match a.format {
        OutFormat::Table => pds_query::Format::Table,
        OutFormat::Csv => pds_query::Format::Csv,
        OutFormat::Json => pds_query::Format::Json,
    };
    print!("{}", pds_query::format(&schema, &batches, f)?);
    Ok(())
}
