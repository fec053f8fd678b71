//! `pds load`: turns a CNAM delivery into a new immutable, encrypted snapshot.
//!
//! For each file of the delivery: recognise its table from the file name and
//! header, check every value against the SNDS schema (type, date dialect,
//! length, required keys), replace every patient identifier by its platform
//! pseudonym (HMAC-SHA256 under the platform key), and write Parquet (LZ4
//! or zstd, see [`pds_home::Compression`]) encrypted with the snapshot's data key (Parquet
//! modular encryption, AES-GCM), the object path bound as AAD so files
//! cannot be swapped. DCIR is
//! partitioned by flow month (`FLX_DIS_DTD`), PMSI by year.
//!
//! Files go to the object store (local folder or S3) under
//! `snapshots/<id>/`; they become a snapshot only when the catalogue commits
//! it, in one transaction. An interrupted or failed load therefore leaves no
//! visible snapshot, and the next load (under the home's write lock) removes
//! the objects no committed snapshot references.
//!
//! See [`values`] for the coded columns checked against referentials.
#![forbid(unsafe_code)]

mod numbers;
mod pipeline;
mod prskey;
mod pseudo;
pub mod values;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::RecordBatch;
use pds_catalog::NewSnapshot;
use pds_home::Home;
use pds_snds::arrow::Problem;
use pds_snds::schema::{self, Family};

pub use pseudo::{IDENTIFIER_COLUMNS, Pseudonymiser};

/// Errors of a load. Whatever the error, nothing was committed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The delivery directory is unusable.
    #[error("{0}")]
    Delivery(String),
    /// A file is not an SNDS table PDS knows, or its header is wrong.
    #[error("{file}: {reason}")]
    File {
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
    /// Values break the schema; every problem is listed.
    #[error("{} problem(s) in the delivery{}; nothing was loaded", .problems.len(), if *.aborted { " (stopped at --max-errors)" } else { "" })]
    Invalid {
        /// File-qualified problems.
        problems: Vec<(String, Problem)>,
        /// Whether the load stopped at the error limit.
        aborted: bool,
    },
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// Parquet writing error.
    #[error("parquet: {0}")]
    Parquet(String),
    /// SNDS schema error.
    #[error(transparent)]
    Snds(#[from] pds_snds::SndsError),
    /// Key error.
    #[error(transparent)]
    Keys(#[from] pds_keys::KeyError),
    /// Catalogue error.
    #[error(transparent)]
    Catalog(#[from] pds_catalog::CatalogError),
    /// Home error.
    #[error(transparent)]
    Home(#[from] pds_home::HomeError),
    /// Object storage error.
    #[error(transparent)]
    Storage(#[from] pds_storage::StorageError),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Options of a load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Stop after this many problems.
    pub max_errors: usize,
    /// Who loads (recorded in the catalogue).
    pub created_by: String,
    /// Free note.
    pub note: String,
    /// Worker threads for converting and for encoding (each); 0 = one per core.
    pub threads: usize,
    /// Codec of the files written (`load.compression`).
    pub compression: pds_home::Compression,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_errors: 100,
            created_by: String::new(),
            note: String::new(),
            threads: 0,
            compression: pds_home::Compression::default(),
        }
    }
}

/// Progress of a load, reported after each chunk of every file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of CSV read and checked.
    pub bytes_done: u64,
    /// Bytes of CSV in the delivery.
    pub bytes_total: u64,
    /// Rows accepted so far.
    pub rows: u64,
    /// Lines rejected so far.
    pub rejected: u64,
}

/// Receives [`Progress`] reports (from a loader thread).
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// What a load did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// The new snapshot.
    pub snapshot: i64,
    /// Per table: name, rows, bytes written, files.
    pub tables: Vec<(String, i64, i64, usize)>,
    /// Source bytes read.
    pub source_bytes: u64,
    /// Rows loaded.
    pub rows: u64,
    /// Distinct patient identifiers numbered (see `pds_snds::identifiers::number_column`).
    pub identifiers: u64,
    /// Where the files went (`file:///...` or `s3://...`).
    pub storage: String,
    /// Seconds.
    pub seconds: f64,
}

/// A recognised delivery file.
#[derive(Debug, Clone)]
pub struct Recognised {
    /// Path.
    pub path: PathBuf,
    /// Catalogue table name (`ER_PRS_F`, `T_MCO21B`, `IR_BEN_R`, `IR_PHA_R`).
    pub table: String,
    /// Product family; `None` for a referential (nomenclature).
    pub family: Option<Family>,
    /// Year variant used for the columns (PMSI partitions).
    pub year: u16,
    /// Title.
    pub title: String,
    /// Columns in file order.
    pub columns: Vec<pds_snds::Column>,
    /// Columns that must not be empty.
    pub required: Vec<String>,
}

/// Recognises a file's table from its name (`ER_PRS_F_2021.csv`,
/// `T_MCO21B.csv`, `IR_BEN_R.csv`) and checks its header against the schema.
pub fn recognise(path: &Path) -> Result<Recognised, LoadError> {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bad = |reason: String| LoadError::File {
        file: file.clone(),
        reason,
    };
    let stem = file
        .strip_suffix(".csv")
        .ok_or_else(|| bad("only .csv files (CNAM extraction dialect) are loaded".into()))?;
    let (name, year_suffix) = match stem.rsplit_once('_') {
        Some((n, y)) if y.len() == 4 && y.chars().all(|c| c.is_ascii_digit()) => {
            (n.to_string(), y.parse::<u16>().ok())
        }
        _ => (stem.to_string(), None),
    };
    let mut header = String::new();
    BufReader::new(File::open(path).map_err(io(path))?)
        .read_line(&mut header)
        .map_err(io(path))?;
    // A byte-order mark (some export tools add one) is not part of the first name.
    let header: Vec<&str> = header
        .trim_start_matches('\u{feff}')
        .trim_end_matches(['\n', '\r'])
        .split(';')
        .collect();
    let mismatch = |cols: &[&pds_snds::Column], what: &str| {
        let first_diff = cols
            .iter()
            .map(|c| c.name.as_str())
            .zip(header.iter().copied())
            .position(|(a, b)| a != b);
        let detail = match first_diff {
            Some(i) => format!(
                "column {} is `{}`, the schema expects `{}`",
                i + 1,
                header[i],
                cols[i].name
            ),
            None => format!("{} columns, the schema has {}", header.len(), cols.len()),
        };
        bad(format!(
            "header does not match the SNDS schema of {what}: {detail}"
        ))
    };
    let Ok((t, pmsi_year)) = schema::table(&name) else {
        // Not a data table: maybe a referential (IR_PHA_R, IR_CIM_V, ...).
        let (title, cols) = pds_snds::nomenclature::referential_columns(&name).map_err(|_| {
            bad(format!(
                "`{name}` is not an SNDS table PDS loads; expected names like ER_PRS_F_2021.csv, T_MCO21B.csv, IR_BEN_R.csv, IR_PHA_R.csv"
            ))
        })?;
        let refs: Vec<&pds_snds::Column> = cols.iter().collect();
        if refs.len() != header.len() || refs.iter().zip(&header).any(|(c, h)| c.name != *h) {
            return Err(mismatch(&refs, &name));
        }
        let required = cols
            .first()
            .map(|c| vec![c.name.clone()])
            .unwrap_or_default();
        return Ok(Recognised {
            path: path.to_path_buf(),
            table: name.to_ascii_uppercase(),
            family: None,
            year: 0,
            title,
            columns: cols,
            required,
        });
    };
    let candidates: Vec<u16> = match pmsi_year.or(year_suffix) {
        Some(y) => vec![y],
        None => (2006..=2035).rev().collect(),
    };
    for y in &candidates {
        let cols = t.columns_for_year(*y);
        if cols.len() == header.len() && cols.iter().zip(&header).all(|(c, h)| c.name == *h) {
            let table = if t.family == Family::PmsiMco {
                t.name_for_year(*y)
            } else {
                t.name.to_string()
            };
            return Ok(Recognised {
                path: path.to_path_buf(),
                table,
                family: Some(t.family),
                year: *y,
                title: t.title.clone(),
                columns: cols.into_iter().cloned().collect(),
                required: t.required_columns().iter().map(|s| s.to_string()).collect(),
            });
        }
    }
    let y = candidates[0];
    Err(mismatch(
        &t.columns_for_year(y),
        &format!("{} ({y})", t.name),
    ))
}

/// Loads the delivery in `dir` into a new snapshot of `home`.
pub async fn load(
    home: &Home,
    dir: &Path,
    opts: &LoadOptions,
    progress: ProgressFn,
) -> Result<LoadReport, LoadError> {
    let started = Instant::now();
    if !dir.is_dir() {
        return Err(LoadError::Delivery(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(LoadError::Delivery(format!(
            "{} holds no file to load",
            dir.display()
        )));
    }
    // Recognise everything before writing anything.
    let mut recognised = Vec::new();
    let mut seen = BTreeMap::new();
    for f in &files {
        let r = recognise(f)?;
        if let Some(prev) = seen.insert(r.table.clone(), f.clone())
            && r.family != Some(Family::Dcir)
        {
            return Err(LoadError::File {
                file: f.display().to_string(),
                reason: format!(
                    "table {} also comes from {}; a delivery holds one file per table",
                    r.table,
                    prev.display()
                ),
            });
        }
        recognised.push(r);
    }
    let total_bytes: u64 = files
        .iter()
        .map(|f| fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let lists = values::ValueLists::new(&pipeline::delivered_codes(&recognised)?)?;

    let _lock = home.lock_for_writing("pds load")?;
    let keys = home.keys()?;
    let cat = home.catalog().await?;
    cat.ensure_dataset("snds", "Système national des données de santé (SNDS)")
        .await?;
    let storage = home.storage()?;
    // Objects no committed snapshot references were left by an interrupted
    // or failed load: remove them (we hold the write lock, so no load is
    // writing them now).
    sweep(&cat, &storage).await?;
    let id = cat.next_snapshot_id().await?;
    let prefix = format!("snapshots/{id}");
    let (data_key, wrapped) = keys.new_data_key(&format!("pds/snapshot/{id}"))?;
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.threads
    };
    let job = pipeline::Job {
        recognised,
        storage: storage.clone(),
        prefix: prefix.clone(),
        data_key,
        pseudo: Pseudonymiser::new(keys.platform_key()),
        lists,
        opts: LoadOptions {
            threads,
            ..opts.clone()
        },
        total_bytes,
        progress,
        rt: tokio::runtime::Handle::current(),
    };
    let result = tokio::task::spawn_blocking(move || job.run())
        .await
        .unwrap_or_else(|e| Err(LoadError::Parquet(format!("the load thread failed: {e}"))));
    let written = match result {
        Ok(w) => w,
        Err(e) => {
            let _ = sweep(&cat, &storage).await;
            return Err(e);
        }
    };
    let snapshot = NewSnapshot {
        dataset: "snds".into(),
        created_by: opts.created_by.clone(),
        source_dir: dir.display().to_string(),
        storage_prefix: prefix,
        wrapped_key: serde_json::to_string(&wrapped)
            .map_err(|e| LoadError::Parquet(e.to_string()))?,
        note: opts.note.clone(),
        sources: written.sources,
        tables: written.tables.clone(),
    };
    if let Err(e) = cat.commit_snapshot(id, &snapshot).await {
        // Read the catalogue again before sweeping: a commit reported as
        // failed may have landed (connection lost during COMMIT), and then
        // its files must stay.
        let _ = sweep(&cat, &storage).await;
        return Err(e.into());
    }
    cat.close().await;
    Ok(LoadReport {
        snapshot: id,
        tables: written
            .tables
            .iter()
            .map(|t| (t.name.clone(), t.rows, t.bytes, t.files.len()))
            .collect(),
        source_bytes: total_bytes,
        rows: written.rows,
        identifiers: written.identifiers,
        storage: storage.to_string(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Removes the storage folders no committed snapshot references, reading
/// the catalogue at this moment (never a list taken earlier).
async fn sweep(
    cat: &pds_catalog::Catalog,
    storage: &pds_storage::Storage,
) -> Result<usize, LoadError> {
    let keep: BTreeSet<String> = cat
        .snapshots()
        .await?
        .into_iter()
        .map(|s| s.storage_prefix)
        .collect();
    Ok(storage.remove_unreferenced(&keep).await?)
}

/// Reads back a snapshot file (for checks and the steward's tools):
/// decrypts with the data key, the object path as AAD.
pub async fn read_file(
    storage: &pds_storage::Storage,
    rel_path: &str,
    key: &pds_keys::SecretKey,
) -> Result<Vec<RecordBatch>, LoadError> {
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
    use parquet::encryption::decrypt::FileDecryptionProperties;
    let dec = FileDecryptionProperties::builder(key.expose().to_vec())
        .with_aad_prefix(rel_path.as_bytes().to_vec())
        .build()
        .map_err(|e| LoadError::Parquet(e.to_string()))?;
    let file = storage.get(rel_path).await?;
    let opts = ArrowReaderOptions::new().with_file_decryption_properties(dec);
    let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(file, opts)
        .map_err(|e| LoadError::Parquet(e.to_string()))?
        .build()
        .map_err(|e| LoadError::Parquet(e.to_string()))?;
    reader
        .map(|b| b.map_err(|e| LoadError::Parquet(e.to_string())))
        .collect()
}
