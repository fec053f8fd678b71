//! `pds load`: progress on a terminal, a summary at the end, every problem
//! as `file:line: column: value: rule`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `pds load`.
#[derive(clap::Args, Debug)]
pub(crate) struct LoadArgs {
    /// The delivery directory.
    pub(crate) dir: PathBuf,
    /// Stop after this many problems (default: `load.max_errors` of config.toml, 100).
    #[arg(long)]
    pub(crate) max_errors: Option<usize>,
    /// A note recorded with the snapshot.
    #[arg(long, default_value = "")]
    pub(crate) note: String,
    /// Converter and encoder threads, each (default: `load.threads`, 0 = one per core).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Codec of the files written, lz4 or zstd (default: `load.compression`, lz4).
    #[arg(long)]
    pub(crate) compression: Option<pds_home::Compression>,
    /// Print only the summary line (no table list, no progress bar).
    #[arg(long, short = 'q')]
    pub(crate) quiet: bool,
}

/// Runs `pds load` and prints its summary.
pub(crate) async fn load(home: &Path, a: LoadArgs) -> Result<pds_load::LoadReport> {
    let h = pds_home::Home::open(home)?;
    let opts = pds_load::LoadOptions {
        max_errors: a
            .max_errors
            .unwrap_or(h.config.load.max_errors as usize)
            .max(1),
        created_by: std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
        note: a.note,
        threads: a.threads.unwrap_or(h.config.load.threads as usize),
        compression: a.compression.unwrap_or(h.config.load.compression),
    };
    let bar = if a.quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} of CSV ({bytes_per_sec}) {msg} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let progress: pds_load::ProgressFn = {
        let bar = bar.clone();
        Arc::new(move |p: &pds_load::Progress| {
            bar.set_length(p.bytes_total);
            bar.set_position(p.bytes_done);
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            let rejected = if p.rejected > 0 {
                format!(", {} rejected", p.rejected)
            } else {
                String::new()
            };
            bar.set_message(format!(
                "{} rows, {:.0} rows/s{rejected}",
                p.rows,
                p.rows as f64 / secs
            ));
        })
    };
    let result = pds_load::load(&h, &a.dir, &opts, progress).await;
    bar.finish_and_clear();
    match result {
        Ok(r) => {
            let out_bytes: i64 = r.tables.iter().map(|t| t.2).sum();
            println!(
                "Snapshot {} committed: {} tables, {} rows from {:.1} MB of CSV in {:.1} s ({:.0} rows/s, {:.1} MB/s), 0 rejected lines; {:.1} MB encrypted Parquet in {}",
                r.snapshot,
                r.tables.len(),
                r.rows,
                r.source_bytes as f64 / 1e6,
                r.seconds,
                r.rows as f64 / r.seconds.max(1e-9),
                r.source_bytes as f64 / 1e6 / r.seconds.max(1e-9),
                out_bytes as f64 / 1e6,
                r.storage
            );
            if !a.quiet {
                println!(
                    "{} distinct patient identifiers numbered (the gate joins and groups on the numbers)",
                    r.identifiers
                );
                println!("{:<12} {:>12} {:>10} {:>6}", "table", "rows", "MB", "files");
                for (t, rows, bytes, files) in &r.tables {
                    println!(
                        "{t:<12} {rows:>12} {:>10.1} {files:>6}",
                        *bytes as f64 / 1e6
                    );
                }
            }
            Ok(r)
        }
        Err(pds_load::LoadError::Invalid { problems, aborted }) => {
            for (file, p) in &problems {
                eprintln!(
                    "{file}:{}:{}: value `{}`: {}",
                    p.line, p.column, p.value, p.rule
                );
            }
            bail!(
                "{} problem(s){}; nothing was loaded, the catalogue and storage are unchanged. \
                 Fix the delivery (or its extraction) and load again",
                problems.len(),
                if aborted {
                    " (stopped at --max-errors; there may be more)"
                } else {
                    ""
                }
            )
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "loading {} failed; nothing was loaded",
            a.dir.display()
        ))),
    }
}
