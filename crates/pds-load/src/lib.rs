//! `pds load`: turns a CNAM delivery into a new immutable, encrypted snapshot.
//!
//! For each file of the delivery: recognise its table from the file name and
//! header, check every value against the SNDS schema (type, date dialect,
//! length, required keys), replace every patient identifier by its platform
//! pseudonym (HMAC-SHA256 under the platform key), and write zstd Parquet
//! encrypted with the snapshot's data key (Parquet modular encryption,
//! AES-GCM), the object path bound as AAD so files cannot be swapped. DCIR is
//! partitioned by flow month (`FLX_DIS_DTD`), PMSI by year.
//!
//! Files are written under a staging directory and moved to
//! `snapshots/<id>/` just before the catalogue commit, which is one
//! transaction: an interrupted or failed load leaves no visible snapshot, and
//! the next load removes any leftovers.
#![forbid(unsafe_code)]

mod pseudo;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow_array::{Array, Date32Array, RecordBatch};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::encryption::encrypt::FileEncryptionProperties;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use pds_catalog::{ColumnInfo, DataFile, NewSnapshot, SourceFile, TableInfo};
use pds_home::Home;
use pds_snds::arrow::Problem;
use pds_snds::schema::{self, Family};
use sha2::{Digest, Sha256};

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
}

/// What a load did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// The new snapshot.
    pub snapshot: i64,
    /// Per table: name, rows, bytes written, files.
    pub tables: Vec<(String, i64, i64, usize)>,
    /// Source bytes read.
    pub source_bytes: u64,
    /// Rows read.
    pub rows: u64,
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
    let header: Vec<&str> = header.trim_end_matches(['\n', '\r']).split(';').collect();
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

struct PartWriter {
    rel_path: String,
    writer: ArrowWriter<File>,
    rows: i64,
}

/// Splits a batch by partition: DCIR by flow month of `FLX_DIS_DTD`, PMSI
/// by year, referentials and beneficiary tables not at all. `None` means
/// every row of the batch.
fn partition_groups(r: &Recognised, batch: &RecordBatch) -> Vec<(String, Option<Vec<u32>>)> {
    match r.family {
        Some(Family::Dcir) => {
            let col = batch.schema().index_of("FLX_DIS_DTD").ok().and_then(|i| {
                batch
                    .column(i)
                    .as_any()
                    .downcast_ref::<Date32Array>()
                    .cloned()
            });
            let mut groups: BTreeMap<Option<(i64, i64)>, Vec<u32>> = BTreeMap::new();
            for i in 0..batch.num_rows() {
                let key = col
                    .as_ref()
                    .filter(|c| c.is_valid(i))
                    .map(|c| civil_month(c.value(i) as i64));
                groups.entry(key).or_default().push(i as u32);
            }
            let whole = groups.len() == 1;
            groups
                .into_iter()
                .map(|(k, idx)| {
                    let name = match k {
                        Some((y, m)) => format!("flx_month={y:04}-{m:02}"),
                        None => "flx_month=unknown".into(),
                    };
                    (name, (!whole).then_some(idx))
                })
                .collect()
        }
        Some(Family::PmsiMco) => vec![(format!("year={}", r.year), None)],
        _ => vec![(String::new(), None)],
    }
}

fn civil_month(days: i64) -> (i64, i64) {
    use chrono::Datelike;
    // Date32 counts days from 1970-01-01, i.e. day 719 163 of the common era.
    chrono::NaiveDate::from_num_days_from_ce_opt((days + 719_163) as i32)
        .map_or((0, 0), |d| (d.year() as i64, d.month() as i64))
}

fn sha256_file(path: &Path) -> Result<(String, u64), LoadError> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(io(path))?;
        if k == 0 {
            break;
        }
        n += k as u64;
        h.update(&buf[..k]);
    }
    Ok((hex::encode(h.finalize()), n))
}

/// Writer properties for one file: zstd, statistics on, row groups sized for
/// pruning, encrypted with the snapshot key and bound to its path.
fn writer_props(key: &pds_keys::SecretKey, rel_path: &str) -> Result<WriterProperties, LoadError> {
    let enc = FileEncryptionProperties::builder(key.expose().to_vec())
        .with_aad_prefix(rel_path.as_bytes().to_vec())
        .with_aad_prefix_storage(false)
        .build()
        .map_err(|e| LoadError::Parquet(e.to_string()))?;
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).map_err(|e| LoadError::Parquet(e.to_string()))?,
        ))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(128 * 1024))
        .set_created_by("pds load".into())
        .with_file_encryption_properties(enc)
        .build())
}

/// Loads the delivery in `dir` into a new snapshot of `home`.
pub async fn load(
    home: &Home,
    dir: &Path,
    opts: &LoadOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
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

    let keys = home.keys()?;
    let cat = home.catalog().await?;
    cat.ensure_dataset("snds", "Système national des données de santé (SNDS)")
        .await?;
    let objects = home.local_storage_dir().ok_or_else(|| {
        LoadError::Delivery("only file:// storage is supported by this version of pds load".into())
    })?;
    // Leftovers of interrupted loads are never referenced: remove them.
    fs::create_dir_all(&objects).map_err(io(&objects))?;
    for e in fs::read_dir(&objects).map_err(io(&objects))?.flatten() {
        if e.file_name().to_string_lossy().starts_with(".staging-") {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    let id = cat.next_snapshot_id().await?;
    let final_dir = objects.join("snapshots").join(id.to_string());
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
    }
    let staging = objects.join(format!(".staging-{id}-{}", std::process::id()));
    let result = write_snapshot(
        &keys,
        &recognised,
        &staging,
        id,
        opts,
        total_bytes,
        progress,
    );
    let Written {
        tables,
        wrapped,
        sources,
        rows,
    } = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    fs::create_dir_all(final_dir.parent().unwrap_or(&objects)).map_err(io(&objects))?;
    fs::rename(&staging, &final_dir).map_err(io(&final_dir))?;
    let snapshot = NewSnapshot {
        dataset: "snds".into(),
        created_by: opts.created_by.clone(),
        source_dir: dir.display().to_string(),
        storage_prefix: format!("snapshots/{id}"),
        wrapped_key: serde_json::to_string(&wrapped)
            .map_err(|e| LoadError::Parquet(e.to_string()))?,
        note: opts.note.clone(),
        sources,
        tables: tables.clone(),
    };
    if let Err(e) = cat.commit_snapshot(id, &snapshot).await {
        let _ = fs::remove_dir_all(&final_dir);
        return Err(e.into());
    }
    cat.close().await;
    Ok(LoadReport {
        snapshot: id,
        tables: tables
            .iter()
            .map(|t| (t.name.clone(), t.rows, t.bytes, t.files.len()))
            .collect(),
        source_bytes: total_bytes,
        rows,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One converted chunk of a file, ready to write.
struct Chunk {
    bytes: u64,
    rejected: u64,
    problems: Vec<Problem>,
    parts: Vec<(String, RecordBatch)>,
}

/// Reads `r` in chunks of 50 000 lines, checks and converts them,
/// pseudonymises identifiers and splits rows by partition. Hashes the file
/// on the way (SHA-256 and size), so it is read once.
fn produce(
    r: &Recognised,
    cols: &[&pds_snds::Column],
    required: &[usize],
    pseudo: &Pseudonymiser,
    mut room: usize,
    tx: &std::sync::mpsc::SyncSender<Result<Chunk, LoadError>>,
) -> Result<(String, u64), LoadError> {
    let mut reader = BufReader::with_capacity(1 << 20, File::open(&r.path).map_err(io(&r.path))?);
    let mut header = Vec::new();
    reader.read_until(b'\n', &mut header).map_err(io(&r.path))?;
    let mut hash = Sha256::new();
    hash.update(&header);
    let mut size = header.len() as u64;
    let mut line_no = 2usize;
    let mut any_rejected = false;
    loop {
        let mut text = Vec::with_capacity(8 << 20);
        let mut lines = 0usize;
        while lines < 50_000 {
            let n = reader.read_until(b'\n', &mut text).map_err(io(&r.path))?;
            if n == 0 {
                break;
            }
            lines += 1;
        }
        if lines == 0 {
            return Ok((hex::encode(hash.finalize()), size));
        }
        hash.update(&text);
        size += text.len() as u64;
        let mut problems = Vec::new();
        let (batch, rejected) = pds_snds::arrow::csv_to_batch_checked(
            cols,
            required,
            &text,
            line_no,
            &mut problems,
            room,
        )?;
        room = room.saturating_sub(problems.len());
        line_no += lines;
        any_rejected |= rejected > 0;
        let mut parts = Vec::new();
        if !any_rejected {
            // Referentials hold no patient identifier.
            let batch = if r.family.is_some() {
                pseudo.apply(&batch)?
            } else {
                batch
            };
            for (part, idx) in partition_groups(r, &batch) {
                let sub = match idx {
                    None => batch.clone(),
                    Some(idx) => {
                        let ind = arrow_array::UInt32Array::from(idx);
                        arrow_select::take::take_record_batch(&batch, &ind)
                            .map_err(|e| LoadError::Parquet(e.to_string()))?
                    }
                };
                parts.push((part, sub));
            }
        }
        let chunk = Chunk {
            bytes: text.len() as u64,
            rejected,
            problems,
            parts,
        };
        if tx.send(Ok(chunk)).is_err() {
            // The writer stopped (error or abort): the digest is not needed.
            return Ok((String::new(), size));
        }
    }
}

struct Written {
    tables: Vec<TableInfo>,
    wrapped: pds_keys::WrappedKey,
    sources: Vec<SourceFile>,
    rows: u64,
}

fn write_snapshot(
    keys: &pds_keys::KeyStore,
    recognised: &[Recognised],
    staging: &Path,
    id: i64,
    opts: &LoadOptions,
    total_bytes: u64,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Written, LoadError> {
    fs::create_dir_all(staging).map_err(io(staging))?;
    let (data_key, wrapped) = keys.new_data_key(&format!("pds/snapshot/{id}"))?;
    let pseudo = Pseudonymiser::new(keys.platform_key());
    let mut problems: Vec<(String, Problem)> = Vec::new();
    let mut tables: BTreeMap<String, TableInfo> = BTreeMap::new();
    let mut writers: BTreeMap<(String, String), PartWriter> = BTreeMap::new();
    let mut sources = Vec::new();
    let mut done_bytes = 0u64;
    let mut total_rows = 0u64;
    let mut rejected_total = 0u64;
    for r in recognised {
        let cols: Vec<&pds_snds::Column> = r.columns.iter().collect();
        let required: Vec<usize> = r
            .required
            .iter()
            .filter_map(|k| cols.iter().position(|c| &c.name == k))
            .collect();
        let file_name = r
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let info = tables.entry(r.table.clone()).or_insert_with(|| TableInfo {
            name: r.table.clone(),
            title: r.title.clone(),
            rows: 0,
            bytes: 0,
            columns: cols
                .iter()
                .map(|c| ColumnInfo {
                    name: c.name.clone(),
                    data_type: pds_snds::arrow::arrow_type(c.ty).to_string(),
                    description: c.description.clone(),
                    nomenclature: c.nomenclature.clone().unwrap_or_default(),
                })
                .collect(),
            files: vec![],
        });
        let mut file_rows = 0u64;
        let mut file_rejected = 0u64;
        let problems_before = problems.len();
        // Two stages on two threads: this one writes (Parquet encoding,
        // compression, encryption); the producer reads, checks, converts,
        // pseudonymises and splits by partition.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Chunk, LoadError>>(2);
        let max_errors = opts.max_errors;
        let pseudo = &pseudo;
        let cols = &cols;
        let required = &required;
        let (sha, bytes) = std::thread::scope(|scope| -> Result<(String, u64), LoadError> {
            let producer = scope.spawn(move || {
                let res = produce(
                    r,
                    cols,
                    required,
                    pseudo,
                    max_errors.saturating_sub(problems_before),
                    &tx,
                );
                match res {
                    Ok(digest) => Some(digest),
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        None
                    }
                }
            });
            for chunk in rx {
                let chunk = chunk?;
                done_bytes += chunk.bytes;
                problems.extend(chunk.problems.into_iter().map(|p| (file_name.clone(), p)));
                file_rejected += chunk.rejected;
                rejected_total += chunk.rejected;
                if problems.len() >= opts.max_errors {
                    // Dropping the receiver stops the producer.
                    return Err(LoadError::Invalid {
                        problems: std::mem::take(&mut problems),
                        aborted: true,
                    });
                }
                if rejected_total > 0 {
                    // Keep checking the rest to report every problem, but write nothing more.
                    continue;
                }
                for (part, sub) in chunk.parts {
                    file_rows += sub.num_rows() as u64;
                    let key = (r.table.clone(), part.clone());
                    if !writers.contains_key(&key) {
                        let rel = if part.is_empty() {
                            format!("snapshots/{id}/{}/part-0.parquet", r.table)
                        } else {
                            format!("snapshots/{id}/{}/{part}/part-0.parquet", r.table)
                        };
                        let local_path =
                            staging.join(rel.trim_start_matches(&format!("snapshots/{id}/")));
                        if let Some(parent) = local_path.parent() {
                            fs::create_dir_all(parent).map_err(io(parent))?;
                        }
                        let file = File::create(&local_path).map_err(io(&local_path))?;
                        let writer = ArrowWriter::try_new(
                            file,
                            sub.schema(),
                            Some(writer_props(&data_key, &rel)?),
                        )
                        .map_err(|e| LoadError::Parquet(e.to_string()))?;
                        writers.insert(
                            key.clone(),
                            PartWriter {
                                rel_path: rel,
                                writer,
                                rows: 0,
                            },
                        );
                    }
                    let w = writers
                        .get_mut(&key)
                        .ok_or_else(|| LoadError::Parquet("writer vanished".into()))?;
                    w.rows += sub.num_rows() as i64;
                    w.writer
                        .write(&sub)
                        .map_err(|e| LoadError::Parquet(e.to_string()))?;
                    // Bound memory: many partitions are open at once, so close
                    // a row group early rather than buffer a whole partition.
                    if w.writer.in_progress_size() > 24 << 20 {
                        w.writer
                            .flush()
                            .map_err(|e| LoadError::Parquet(e.to_string()))?;
                    }
                }
                progress(done_bytes, total_bytes);
            }
            // The channel closed after the last chunk: the producer is done.
            let digest = producer
                .join()
                .map_err(|_| LoadError::Parquet("the reader thread panicked".into()))?;
            digest.ok_or_else(|| {
                LoadError::Parquet("the reader thread stopped without a result".into())
            })
        })?;
        total_rows += file_rows;
        info.rows += file_rows as i64;
        sources.push(SourceFile {
            name: file_name,
            table: r.table.clone(),
            bytes: bytes as i64,
            sha256: sha,
            rows_loaded: file_rows as i64,
            rows_rejected: file_rejected as i64,
        });
    }
    if !problems.is_empty() {
        return Err(LoadError::Invalid {
            problems,
            aborted: false,
        });
    }
    for ((table, part), w) in writers {
        w.writer
            .close()
            .map_err(|e| LoadError::Parquet(e.to_string()))?;
        let local = staging.join(w.rel_path.trim_start_matches(&format!("snapshots/{id}/")));
        let (sha, bytes) = sha256_file(&local)?;
        if let Some(t) = tables.get_mut(&table) {
            t.bytes += bytes as i64;
            t.files.push(DataFile {
                path: w.rel_path.clone(),
                partition: part
                    .trim_start_matches("flx_month=")
                    .trim_start_matches("year=")
                    .to_string(),
                rows: w.rows,
                bytes: bytes as i64,
                sha256: sha,
            });
        }
    }
    progress(total_bytes, total_bytes);
    Ok(Written {
        tables: tables.into_values().collect(),
        wrapped,
        sources,
        rows: total_rows,
    })
}

/// Reads back a snapshot file (for checks and the steward's tools):
/// decrypts with the data key, the object path as AAD.
pub fn read_file(
    objects: &Path,
    rel_path: &str,
    key: &pds_keys::SecretKey,
) -> Result<Vec<RecordBatch>, LoadError> {
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
    use parquet::encryption::decrypt::FileDecryptionProperties;
    let dec = FileDecryptionProperties::builder(key.expose().to_vec())
        .with_aad_prefix(rel_path.as_bytes().to_vec())
        .build()
        .map_err(|e| LoadError::Parquet(e.to_string()))?;
    let path = objects.join(rel_path);
    let file = File::open(&path).map_err(io(&path))?;
    let opts = ArrowReaderOptions::new().with_file_decryption_properties(dec);
    let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(file, opts)
        .map_err(|e| LoadError::Parquet(e.to_string()))?
        .build()
        .map_err(|e| LoadError::Parquet(e.to_string()))?;
    reader
        .map(|b| b.map_err(|e| LoadError::Parquet(e.to_string())))
        .collect()
}
