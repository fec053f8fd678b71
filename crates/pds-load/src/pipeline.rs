//! The load pipeline for one delivery, run on a blocking thread.
//!
//! Per file, four kinds of threads, connected by bounded channels so memory
//! stays flat whatever the file size:
//!
//! ```text
//! reader ──chunks of ~10 MiB of lines──▶ converters (N) ──▶ dispatcher ──▶ encoders (N)
//!  SHA-256 of the file               check, convert,     in file order,   one Parquet writer
//!                                    value lists,        counts, errors   per partition,
//!                                    pseudonymise,                        zstd + AES-GCM,
//!                                    split by partition                   object store upload
//! ```
//!
//! The dispatcher restores file order, so a file's rows keep their order
//! inside each partition and a load is reproducible. Each partition goes to
//! one encoder (by hash), so a Parquet file is written by one thread.
//! Writers are closed at the end of each file: at most one file's partitions
//! are open at once, which bounds memory.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use arrow_array::{Array, Date32Array, RecordBatch};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::encryption::encrypt::FileEncryptionProperties;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use pds_catalog::{ColumnInfo, DataFile, SourceFile, TableInfo};
use pds_snds::arrow::Problem;
use pds_snds::schema::Family;
use pds_storage::{ObjectWriter, Storage};
use sha2::{Digest, Sha256};

use crate::numbers::Numbering;
use crate::values::ValueLists;
use crate::{LoadError, LoadOptions, Progress, ProgressFn, Pseudonymiser, Recognised, io};

/// Bytes per chunk (whole lines): large enough to amortise per-batch costs,
/// small enough that the chunks in flight (about 4 per thread) stay small.
const CHUNK_BYTES: usize = 10 << 20;

/// Everything a load needs, owned, so it can run on a blocking thread.
pub(crate) struct Job {
    pub recognised: Vec<Recognised>,
    pub storage: Storage,
    pub prefix: String,
    pub data_key: pds_keys::SecretKey,
    pub pseudo: Pseudonymiser,
    pub lists: ValueLists,
    pub opts: LoadOptions,
    pub total_bytes: u64,
    pub progress: ProgressFn,
    pub rt: tokio::runtime::Handle,
}

/// What a successful pipeline produced (not yet committed).
pub(crate) struct Written {
    pub tables: Vec<TableInfo>,
    pub sources: Vec<SourceFile>,
    pub rows: u64,
    /// Distinct identifiers numbered (`crate::numbers`).
    pub identifiers: u64,
}

/// Cumulative counters across the files of a load.
#[derive(Default)]
struct Totals {
    progress: Progress,
    problems: Vec<(String, Problem)>,
}

impl Job {
    pub(crate) fn run(self) -> Result<Written, LoadError> {
        let mut totals = Totals {
            progress: Progress {
                bytes_total: self.total_bytes,
                ..Progress::default()
            },
            problems: Vec::new(),
        };
        let mut tables: BTreeMap<String, TableInfo> = BTreeMap::new();
        let mut sources = Vec::new();
        let mut numbering = Numbering::new(
            self.storage.clone(),
            self.rt.clone(),
            &self.prefix,
            self.data_key.clone(),
            self.opts.compression,
        );
        for (index, r) in self.recognised.iter().enumerate() {
            let file_name = r
                .path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let out = self.run_file(index, r, &file_name, &mut totals, &mut numbering)?;
            let info = tables.entry(r.table.clone()).or_insert_with(|| TableInfo {
                name: r.table.clone(),
                title: r.title.clone(),
                rows: 0,
                bytes: 0,
                columns: vec![],
                files: vec![],
            });
            // The file's columns, plus for a table loaded from several yearly
            // files the ones later years introduced: the catalogue describes all.
            for c in &r.columns {
                if !info.columns.iter().any(|k| k.name == c.name) {
                    info.columns.push(ColumnInfo {
                        name: c.name.clone(),
                        data_type: pds_snds::arrow::arrow_type(c.ty).to_string(),
                        description: c.description.clone(),
                        nomenclature: c.nomenclature.clone().unwrap_or_default(),
                    });
                }
            }
            let key = pds_snds::schema::PRESTATION_KEY;
            if crate::prskey::applies(&r.columns) && !info.columns.iter().any(|k| k.name == key) {
                info.columns.push(ColumnInfo {
                    name: key.to_string(),
                    data_type: crate::prskey::type_name(),
                    description: pds_snds::schema::PRESTATION_KEY_DESCRIPTION.to_string(),
                    nomenclature: String::new(),
                });
            }
            info.rows += out.rows as i64;
            for f in out.files {
                info.bytes += f.bytes;
                info.files.push(f);
            }
            sources.push(SourceFile {
                name: file_name,
                table: r.table.clone(),
                bytes: out.size as i64,
                sha256: out.sha256,
                rows_loaded: out.rows as i64,
                rows_rejected: out.rejected as i64,
            });
        }
        if !totals.problems.is_empty() {
            return Err(LoadError::Invalid {
                problems: totals.problems,
                aborted: false,
            });
        }
        for t in tables.values_mut() {
            t.files.sort_by(|a, b| a.path.cmp(&b.path));
        }
        let identifiers = numbering.finish()?;
        Ok(Written {
            tables: tables.into_values().collect(),
            sources,
            rows: totals.progress.rows,
            identifiers,
        })
    }

    fn run_file(
        &self,
        index: usize,
        r: &Recognised,
        file_name: &str,
        totals: &mut Totals,
        numbering: &mut Numbering,
    ) -> Result<FileOutcome, LoadError> {
        let threads = self.opts.threads.max(1);
        let cols: Vec<&pds_snds::Column> = r.columns.iter().collect();
        let required: Vec<usize> = r
            .required
            .iter()
            .filter_map(|k| cols.iter().position(|c| &c.name == k))
            .collect();
        // Value lists apply to data tables (a referential defines its codes).
        let value_rules: Vec<Option<&dyn pds_snds::arrow::ValueRule>> = cols
            .iter()
            .map(|c| {
                r.family
                    .is_some()
                    .then(|| self.lists.for_column(&c.name))
                    .flatten()
                    .map(|set| set as &dyn pds_snds::arrow::ValueRule)
            })
            .collect();
        // Set once anything is rejected (nothing will be committed, so stop
        // spending time on pseudonyms and partitions) or the load aborts.
        let rejected_seen = AtomicBool::new(totals.progress.rejected > 0);
        let abort = AtomicBool::new(false);
        let (work_tx, work_rx) = sync_channel::<Work>(threads);
        // Shared by the converters only: when they have all stopped, the
        // receiver is gone and a reader blocked on a full queue wakes up.
        let work_rx = Arc::new(Mutex::new(work_rx));
        let (res_tx, res_rx) = sync_channel::<(usize, Result<Chunk, LoadError>)>(threads);
        let ctx = ConvertCtx {
            r,
            cols: &cols,
            checks: pds_snds::arrow::Checks {
                required: &required,
                values: value_rules,
            },
            pseudo: &self.pseudo,
            room: self.opts.max_errors,
            rejected_seen: &rejected_seen,
            prestation_key: crate::prskey::applies(&r.columns),
        };
        std::thread::scope(|s| -> Result<FileOutcome, LoadError> {
            let reader = s.spawn(move || read_chunks(r, work_tx));
            for _ in 0..threads {
                let res_tx = res_tx.clone();
                let work_rx = Arc::clone(&work_rx);
                let ctx = &ctx;
                let abort = &abort;
                s.spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next chunk.
                        let next = match work_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(work) = next else { return };
                        if abort.load(Ordering::SeqCst) {
                            return;
                        }
                        let seq = work.seq;
                        let out = ctx.convert(work);
                        if res_tx.send((seq, out)).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(res_tx);
            drop(work_rx);
            let mut enc_txs = Vec::new();
            let mut encoders = Vec::new();
            for _ in 0..threads {
                let (tx, rx) = sync_channel::<(String, RecordBatch)>(2);
                enc_txs.push(tx);
                let abort = &abort;
                let budget = (LOAD_BUFFER_BYTES / threads).max(MIN_ENCODER_BUFFER_BYTES);
                encoders.push(s.spawn(move || self.encode(index, r, rx, budget, abort)));
            }
            let dispatched = self.dispatch(
                r,
                file_name,
                res_rx,
                &enc_txs,
                totals,
                &rejected_seen,
                numbering,
            );
            if dispatched.is_err() {
                abort.store(true, Ordering::SeqCst);
            }
            drop(enc_txs);
            let mut files = Vec::new();
            let mut encode_error = None;
            for e in encoders {
                match e.join() {
                    Ok(Ok(mut f)) => files.append(&mut f),
                    Ok(Err(err)) => encode_error = encode_error.or(Some(err)),
                    Err(_) => {
                        encode_error = encode_error.or(Some(LoadError::Parquet(
                            "an encoder thread panicked".into(),
                        )))
                    }
                }
            }
            // An encoder's own error says more than the dispatcher's "stopped".
            if let Some(e) = encode_error {
                return Err(e);
            }
            let (rows, rejected, received) = dispatched?;
            let (sha256, size, sent) = reader
                .join()
                .map_err(|_| LoadError::Parquet("the reader thread panicked".into()))??;
            if received != sent {
                // A converter died (panic) and its chunk never arrived.
                return Err(LoadError::Parquet(format!(
                    "{file_name}: {received} of {sent} chunks converted; a converter thread failed"
                )));
            }
            Ok(FileOutcome {
                rows,
                rejected,
                files,
                sha256,
                size,
            })
        })
    }

    /// Receives converted chunks, puts them back in file order, counts,
    /// collects problems, numbers identifiers (in file order, so a load is
    /// reproducible) and hands partitions to the encoders. Returns (rows,
    /// rejected lines, chunks received) of the file.
    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &self,
        r: &Recognised,
        file_name: &str,
        res_rx: Receiver<(usize, Result<Chunk, LoadError>)>,
        enc_txs: &[SyncSender<(String, RecordBatch)>],
        totals: &mut Totals,
        rejected_seen: &AtomicBool,
        numbering: &mut Numbering,
    ) -> Result<(u64, u64, usize), LoadError> {
        let mut pending: BTreeMap<usize, Chunk> = BTreeMap::new();
        let mut next = 0usize;
        let mut rows = 0u64;
        let mut rejected = 0u64;
        for (seq, chunk) in res_rx {
            pending.insert(seq, chunk?);
            while let Some(chunk) = pending.remove(&next) {
                next += 1;
                totals.progress.bytes_done += chunk.bytes;
                totals.progress.rejected += chunk.rejected;
                rejected += chunk.rejected;
                for mut p in chunk.problems {
                    if totals.problems.len() < self.opts.max_errors {
                        // Clear patient identifiers never reach the terminal or logs.
                        if crate::IDENTIFIER_COLUMNS.contains(&p.column.as_str())
                            && !p.value.is_empty()
                        {
                            p.value = format!(
                                "<patient identifier, {} characters, not shown>",
                                p.value.chars().count()
                            );
                        }
                        totals.problems.push((file_name.to_string(), p));
                    }
                }
                if totals.problems.len() >= self.opts.max_errors {
                    return Err(LoadError::Invalid {
                        problems: std::mem::take(&mut totals.problems),
                        aborted: true,
                    });
                }
                if totals.progress.rejected > 0 {
                    // Keep checking the rest to report every problem, but write nothing more.
                    rejected_seen.store(true, Ordering::Relaxed);
                } else {
                    for (part, batch) in chunk.parts {
                        // Referentials hold no patient identifier.
                        let batch = if r.family.is_some() {
                            numbering.number(batch)?
                        } else {
                            batch
                        };
                        let n = batch.num_rows() as u64;
                        let mut h = std::collections::hash_map::DefaultHasher::new();
                        part.hash(&mut h);
                        let e = (h.finish() % enc_txs.len() as u64) as usize;
                        if enc_txs[e].send((part, batch)).is_err() {
                            // The encoder stopped on an error; it is reported by its join.
                            return Err(LoadError::Parquet(format!("writing {} stopped", r.table)));
                        }
                        rows += n;
                        totals.progress.rows += n;
                    }
                }
                (self.progress)(&totals.progress);
            }
        }
        if !pending.is_empty() {
            return Err(LoadError::Parquet(format!(
                "{file_name}: chunk {next} never arrived; a converter thread failed"
            )));
        }
        Ok((rows, rejected, next))
    }

    /// Owns the Parquet writers of the partitions hashed to it; closes them
    /// when the file is done (or abandons them on abort).
    fn encode(
        &self,
        index: usize,
        r: &Recognised,
        rx: Receiver<(String, RecordBatch)>,
        budget: usize,
        abort: &AtomicBool,
    ) -> Result<Vec<DataFile>, LoadError> {
        let mut writers: HashMap<String, PartWriter> = HashMap::new();
        // Batches wait here and go to Parquet a whole row group at a time:
        // an open row group holds a compressor per column (zstd contexts
        // are large), so only one row group is open at any moment.
        let mut buffered = 0usize;
        for (part, batch) in rx {
            if !writers.contains_key(&part) {
                let rel = if part.is_empty() {
                    format!("{}/{}/part-{index}.parquet", self.prefix, r.table)
                } else {
                    format!("{}/{}/{part}/part-{index}.parquet", self.prefix, r.table)
                };
                let sink = HashingWriter {
                    inner: self.storage.writer(&rel, self.rt.clone()),
                    hash: Sha256::new(),
                };
                let cluster_name = cluster_column(&r.table);
                let cluster = cluster_name.and_then(|c| batch.schema().index_of(c).ok());
                let writer = ArrowWriter::try_new(
                    sink,
                    batch.schema(),
                    Some(writer_props(
                        &self.data_key,
                        &rel,
                        &batch.schema(),
                        cluster_name,
                        self.opts.compression,
                    )?),
                )
                .map_err(pq)?;
                writers.insert(
                    part.clone(),
                    PartWriter {
                        rel_path: rel,
                        writer,
                        rows: 0,
                        cluster,
                        pending: Vec::new(),
                        pending_rows: 0,
                        pending_bytes: 0,
                    },
                );
            }
            let w = writers
                .get_mut(&part)
                .ok_or_else(|| LoadError::Parquet("writer vanished".into()))?;
            let bytes = batch.get_array_memory_size();
            w.rows += batch.num_rows() as i64;
            w.pending_rows += batch.num_rows();
            w.pending_bytes += bytes;
            w.pending.push(batch);
            buffered += bytes;
            if w.pending_rows >= ROW_GROUP_ROWS {
                buffered -= w.write_row_group()?;
            }
            // Over budget: write out the partition holding the most.
            while buffered > budget {
                let Some(biggest) = writers.values_mut().max_by_key(|w| w.pending_bytes) else {
                    break;
                };
                buffered -= biggest.write_row_group()?;
            }
        }
        if abort.load(Ordering::SeqCst) {
            // Dropping the writers abandons their uploads.
            return Ok(vec![]);
        }
        for w in writers.values_mut() {
            w.write_row_group()?;
        }
        let mut files = Vec::new();
        for (part, w) in writers {
            let sink = w.writer.into_inner().map_err(pq)?;
            let sha = hex::encode(sink.hash.finalize());
            let bytes = sink.inner.finish()?;
            files.push(DataFile {
                path: w.rel_path,
                partition: part
                    .trim_start_matches("flx_month=")
                    .trim_start_matches("year=")
                    .to_string(),
                rows: w.rows,
                bytes: bytes as i64,
                sha256: sha,
            });
        }
        Ok(files)
    }
}

pub(crate) fn pq(e: parquet::errors::ParquetError) -> LoadError {
    LoadError::Parquet(e.to_string())
}

struct FileOutcome {
    rows: u64,
    rejected: u64,
    files: Vec<DataFile>,
    sha256: String,
    size: u64,
}

/// Rows per row group (at most): large enough for good compression and
/// few footers, small enough for pruning by flow date.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Arrow bytes all encoders of a file may hold, shared equally, before
/// each writes its largest partition. A delivery in patient order spreads
/// every chunk over all flow months (about 18 partitions for one year of
/// `ER_PRS_F`): the buffer must hold a full row group of each for row
/// groups to reach [`ROW_GROUP_ROWS`]. With 96 MiB per encoder they held
/// 12,500 rows, and `ER_PRS_F` had 2,190 row groups for 27.5 M lines: large
/// footers and page indexes, and clustered pages spread over every row
/// group (`docs/performance.md`).
const LOAD_BUFFER_BYTES: usize = 2 << 30;

/// An encoder's buffer however many encoders share [`LOAD_BUFFER_BYTES`].
const MIN_ENCODER_BUFFER_BYTES: usize = 96 << 20;

/// The column whose values order the rows of each row group, per table:
/// the code analyses select on (nature of prestation, drug, biology act,
/// CCAM act). Sorted row groups with page statistics on that column let a
/// scan skip the pages of every other code (`docs/performance.md`); the
/// rows and their values are the same.
const CLUSTER_COLUMNS: &[(&str, &str)] = &[
    ("ER_PRS_F", "PRS_NAT_REF"),
    ("ER_PHA_F", "PHA_PRS_C13"),
    ("ER_BIO_F", "BIO_PRS_IDE"),
    ("ER_CAM_F", "CAM_PRS_IDE"),
];

/// The same for the PMSI MCO tables of every year (`T_MCO22B`): stays by
/// main diagnosis, associated diagnoses, CCAM acts.
const PMSI_CLUSTER_COLUMNS: &[(&str, &str)] =
    &[("B", "DGN_PAL"), ("D", "ASS_DGN"), ("A", "CDC_ACT")];

fn cluster_column(table: &str) -> Option<&'static str> {
    if let Some(c) = CLUSTER_COLUMNS.iter().find(|(t, _)| *t == table) {
        return Some(c.1);
    }
    let rest = table.strip_prefix("T_MCO")?;
    let (year, suffix) = rest.split_at_checked(2)?;
    if !year.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    PMSI_CLUSTER_COLUMNS
        .iter()
        .find(|(s, _)| *s == suffix)
        .map(|(_, c)| *c)
}

/// Rows per data page in a clustered table: small enough for the page
/// statistics of the cluster column to skip most of a row group.
const CLUSTERED_PAGE_ROWS: usize = 2048;

struct PartWriter {
    rel_path: String,
    writer: ArrowWriter<HashingWriter>,
    rows: i64,
    /// Index of the cluster column (`CLUSTER_COLUMNS`), if any.
    cluster: Option<usize>,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    pending_bytes: usize,
}

impl PartWriter {
    /// Writes the pending batches as one row group; returns the bytes freed.
    fn write_row_group(&mut self) -> Result<usize, LoadError> {
        if self.pending.is_empty() {
            return Ok(0);
        }
        match self.cluster {
            Some(col) => {
                let schema = self.pending[0].schema();
                let whole = arrow_select::concat::concat_batches(&schema, &self.pending)
                    .map_err(|e| LoadError::Parquet(e.to_string()))?;
                self.pending.clear();
                let order = arrow_ord::sort::sort_to_indices(whole.column(col), None, None)
                    .map_err(|e| LoadError::Parquet(e.to_string()))?;
                let sorted = arrow_select::take::take_record_batch(&whole, &order)
                    .map_err(|e| LoadError::Parquet(e.to_string()))?;
                drop(whole);
                self.writer.write(&sorted).map_err(pq)?;
            }
            None => {
                for b in self.pending.drain(..) {
                    self.writer.write(&b).map_err(pq)?;
                }
            }
        }
        self.writer.flush().map_err(pq)?;
        self.pending_rows = 0;
        Ok(std::mem::take(&mut self.pending_bytes))
    }
}

/// Hashes what it forwards, so each data file's SHA-256 is known without
/// reading it back.
struct HashingWriter {
    inner: ObjectWriter,
    hash: Sha256,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A chunk of raw lines.
struct Work {
    seq: usize,
    text: Vec<u8>,
    first_line: usize,
}

/// A converted chunk, ready to write.
struct Chunk {
    bytes: u64,
    rejected: u64,
    problems: Vec<Problem>,
    parts: Vec<(String, RecordBatch)>,
}

/// Reads the file in chunks of whole lines (about [`CHUNK_BYTES`]), hashing
/// everything it reads, so the file is read once and copied once. Returns
/// the SHA-256 and size.
fn read_chunks(r: &Recognised, tx: SyncSender<Work>) -> Result<(String, u64, usize), LoadError> {
    read_chunks_of(&r.path, CHUNK_BYTES, tx)
}

fn read_chunks_of(
    path: &std::path::Path,
    chunk_bytes: usize,
    tx: SyncSender<Work>,
) -> Result<(String, u64, usize), LoadError> {
    let mut file = File::open(path).map_err(io(path))?;
    let mut hash = Sha256::new();
    let mut size = 0u64;
    let mut carry: Vec<u8> = Vec::new();
    let mut eof = false;
    let mut header_skipped = false;
    let mut line_no = 2usize;
    let mut seq = 0usize;
    loop {
        let mut text = std::mem::take(&mut carry);
        text.reserve(chunk_bytes + (64 << 10));
        // Fill the chunk; keep reading while it holds no complete line.
        while !eof && (text.len() < chunk_bytes || !text.contains(&b'\n')) {
            let start = text.len();
            let n = (&mut file)
                .take((chunk_bytes + (64 << 10) - start.min(chunk_bytes)) as u64)
                .read_to_end(&mut text)
                .map_err(io(path))?;
            hash.update(&text[start..]);
            size += n as u64;
            eof = n == 0;
        }
        if !header_skipped {
            // The header was checked by `recognise`.
            let end = memchr::memchr(b'\n', &text).map_or(text.len(), |i| i + 1);
            text.drain(..end);
            header_skipped = true;
        }
        if !eof && let Some(last) = last_record_end(&text) {
            carry = text.split_off(last + 1);
        }
        if text.is_empty() {
            if eof {
                return Ok((hex::encode(hash.finalize()), size, seq));
            }
            continue;
        }
        let mut lines = memchr::memchr_iter(b'\n', &text).count();
        if text.last() != Some(&b'\n') {
            lines += 1;
        }
        let work = Work {
            seq,
            text,
            first_line: line_no,
        };
        seq += 1;
        line_no += lines;
        if tx.send(work).is_err() {
            // The load stopped (error or abort): the digest is not needed.
            return Ok((String::new(), size, seq));
        }
    }
}

/// The last line break of `text` that ends a record: outside double quotes
/// (a quoted field may hold line breaks). `text` starts at a record start.
fn last_record_end(text: &[u8]) -> Option<usize> {
    if memchr::memchr(b'"', text).is_none() {
        return memchr::memrchr(b'\n', text);
    }
    // `""` inside a quoted field flips twice, so parity tells inside/outside.
    let mut inside = false;
    let mut last = None;
    for i in memchr::memchr2_iter(b'"', b'\n', text) {
        if text[i] == b'"' {
            inside = !inside;
        } else if !inside {
            last = Some(i);
        }
    }
    last
}

struct ConvertCtx<'a> {
    r: &'a Recognised,
    cols: &'a [&'a pds_snds::Column],
    checks: pds_snds::arrow::Checks<'a>,
    pseudo: &'a Pseudonymiser,
    room: usize,
    rejected_seen: &'a AtomicBool,
    /// Whether this table gets the prestation key (`crate::prskey`).
    prestation_key: bool,
}

impl ConvertCtx<'_> {
    fn convert(&self, work: Work) -> Result<Chunk, LoadError> {
        let mut problems = Vec::new();
        let (batch, rejected) = pds_snds::arrow::csv_to_batch_with(
            self.cols,
            &self.checks,
            &work.text,
            work.first_line,
            &mut problems,
            self.room,
        )?;
        let mut parts = Vec::new();
        if rejected == 0 && !self.rejected_seen.load(Ordering::Relaxed) {
            // Referentials hold no patient identifier.
            let batch = if self.r.family.is_some() {
                self.pseudo.apply(&batch)?
            } else {
                batch
            };
            let batch = if self.prestation_key {
                crate::prskey::append(&batch)?
            } else {
                batch
            };
            for (part, idx) in partition_groups(self.r, &batch) {
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
        Ok(Chunk {
            bytes: work.text.len() as u64,
            rejected,
            problems,
            parts,
        })
    }
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
            // Few distinct flow days per chunk: find each one's month once.
            let mut month_of_day: HashMap<i32, (i32, u32)> = HashMap::new();
            let mut groups: BTreeMap<Option<(i32, u32)>, Vec<u32>> = BTreeMap::new();
            for i in 0..batch.num_rows() {
                let key = col.as_ref().filter(|c| c.is_valid(i)).map(|c| {
                    *month_of_day
                        .entry(c.value(i))
                        .or_insert_with(|| civil_month(c.value(i)))
                });
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

fn civil_month(days: i32) -> (i32, u32) {
    use chrono::Datelike;
    // Date32 counts days from 1970-01-01, i.e. day 719 163 of the common era.
    chrono::NaiveDate::from_num_days_from_ce_opt(days.saturating_add(719_163))
        .map_or((0, 0), |d| (d.year(), d.month()))
}

/// Writer properties for one file: the load's codec, statistics on, row
/// groups sized for pruning, encrypted with the snapshot key and bound to
/// its path; small pages with their own statistics on the cluster column,
/// if any.
pub(crate) fn writer_props(
    key: &pds_keys::SecretKey,
    rel_path: &str,
    schema: &arrow_schema::Schema,
    cluster: Option<&str>,
    compression: pds_home::Compression,
) -> Result<WriterProperties, LoadError> {
    let enc = FileEncryptionProperties::builder(key.expose().to_vec())
        .with_aad_prefix(rel_path.as_bytes().to_vec())
        .with_aad_prefix_storage(false)
        .build()
        .map_err(pq)?;
    let mut b = WriterProperties::builder()
        // Dictionaries pay off on text codes and pseudonyms; on numbers and
        // dates the codec does nearly as well for a fraction of the CPU.
        .set_dictionary_enabled(true);
    for f in schema.fields() {
        match f.data_type() {
            // Digests (the prestation key) never repeat within a page, nor
            // do most identifier numbers within a row group.
            arrow_schema::DataType::Utf8 | arrow_schema::DataType::Decimal128(..) => {
                b = b.set_column_dictionary_enabled(f.name().as_str().into(), false);
            }
            arrow_schema::DataType::Int64
                if pds_snds::identifiers::numbered_column(f.name()).is_some() =>
            {
                b = b.set_column_dictionary_enabled(f.name().as_str().into(), false);
            }
            // Page-level min/max (the page index) where queries filter on
            // ranges: dates. Elsewhere row-group statistics are enough.
            arrow_schema::DataType::Date32 | arrow_schema::DataType::Timestamp(..) => {
                b = b.set_column_statistics_enabled(
                    f.name().as_str().into(),
                    EnabledStatistics::Page,
                );
            }
            _ => {}
        }
    }
    if let Some(c) = cluster {
        b = b
            .set_column_statistics_enabled(c.into(), EnabledStatistics::Page)
            .set_data_page_row_count_limit(CLUSTERED_PAGE_ROWS);
    }
    Ok(b.set_compression(match compression {
        pds_home::Compression::Lz4 => Compression::LZ4_RAW,
        pds_home::Compression::Zstd => Compression::ZSTD(ZstdLevel::try_new(1).map_err(pq)?),
    })
    .set_statistics_enabled(EnabledStatistics::Chunk)
    .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
    .set_created_by("pds load".into())
    .with_file_encryption_properties(enc)
    .build())
}

/// Codes of the referentials the delivery carries (first column of each
/// line), used for the value-list checks instead of the vendored copies.
pub(crate) fn delivered_codes(
    recognised: &[Recognised],
) -> Result<HashMap<String, Vec<String>>, LoadError> {
    let mut out = HashMap::new();
    for r in recognised {
        if r.family.is_some()
            || !crate::values::CHECKED
                .iter()
                .any(|(_, referential)| *referential == r.table)
        {
            continue;
        }
        let reader = BufReader::new(File::open(&r.path).map_err(io(&r.path))?);
        let mut codes = Vec::new();
        for line in reader.lines().skip(1) {
            let line = line.map_err(io(&r.path))?;
            if let Some(code) = line.split(';').next().filter(|c| !c.is_empty()) {
                codes.push(code.trim_end_matches('\r').to_string());
            }
        }
        out.insert(r.table.clone(), codes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_with_the_loads_codec_and_read_back_with_the_key() {
        use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
        use parquet::encryption::decrypt::FileDecryptionProperties;
        let key = pds_keys::SecretKey::from_bytes([9; 32]);
        let schema = Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
            "PRS_NAT_REF",
            arrow_schema::DataType::Int32,
            false,
        )]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(arrow_array::Int32Array::from_iter_values(
                (0..5000).map(|i| i % 7),
            ))],
        )
        .unwrap();
        for (codec, expected) in [
            (pds_home::Compression::Lz4, Compression::LZ4_RAW),
            (
                pds_home::Compression::Zstd,
                Compression::ZSTD(ZstdLevel::try_new(1).unwrap()),
            ),
        ] {
            let props = writer_props(
                &key,
                "t/part-0.parquet",
                &schema,
                Some("PRS_NAT_REF"),
                codec,
            )
            .unwrap();
            let mut file = tempfile::tempfile().unwrap();
            let mut w = ArrowWriter::try_new(&mut file, schema.clone(), Some(props)).unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
            let dec = FileDecryptionProperties::builder(key.expose().to_vec())
                .with_aad_prefix(b"t/part-0.parquet".to_vec())
                .build()
                .unwrap();
            let opts = ArrowReaderOptions::new().with_file_decryption_properties(dec);
            let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(file, opts).unwrap();
            let meta = reader.metadata().clone();
            for rg in meta.row_groups() {
                assert_eq!(rg.column(0).compression(), expected, "{codec:?}");
            }
            let rows: usize = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
            assert_eq!(rows, 5000);
        }
    }

    #[test]
    fn dcir_and_pmsi_tables_of_any_year_have_their_cluster_column() {
        assert_eq!(cluster_column("ER_PRS_F"), Some("PRS_NAT_REF"));
        assert_eq!(cluster_column("T_MCO22B"), Some("DGN_PAL"));
        assert_eq!(cluster_column("T_MCO09D"), Some("ASS_DGN"));
        assert_eq!(cluster_column("T_MCO21A"), Some("CDC_ACT"));
        assert_eq!(cluster_column("T_MCO21C"), None);
        assert_eq!(cluster_column("T_MCOxxB"), None);
        assert_eq!(cluster_column("T_MCO21BB"), None);
        assert_eq!(cluster_column("IR_BEN_R"), None);
    }

    /// Reads `text` in chunks of `size` bytes; returns (first line, text) of each.
    fn chunks(text: &[u8], size: usize) -> (Vec<(usize, Vec<u8>)>, String, u64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("T.csv");
        std::fs::write(&path, text).unwrap();
        let (tx, rx) = sync_channel(1000);
        let (sha, n, _) = read_chunks_of(&path, size, tx).unwrap();
        let got = rx.into_iter().map(|w| (w.first_line, w.text)).collect();
        (got, sha, n)
    }

    #[test]
    fn chunks_are_whole_lines_numbered_from_two_and_the_digest_covers_the_file() {
        let mut text = b"A;B\n".to_vec();
        for i in 0..500 {
            text.extend_from_slice(format!("{i};{}\r\n", "x".repeat(i % 37)).as_bytes());
        }
        text.extend_from_slice(b"last;no-newline");
        for size in [7, 64, 1000, 1 << 20] {
            let (got, sha, n) = chunks(&text, size);
            assert_eq!(n, text.len() as u64);
            use sha2::Digest;
            assert_eq!(sha, hex::encode(Sha256::digest(&text)));
            let mut line = 2;
            let mut joined = Vec::new();
            for (first, t) in &got {
                assert_eq!(*first, line, "chunk size {size}");
                assert!(t.ends_with(b"\n") || t.ends_with(b"no-newline"));
                line += t.iter().filter(|b| **b == b'\n').count();
                joined.extend_from_slice(t);
            }
            assert_eq!(joined, &text[4..], "chunk size {size}");
            // 500 lines, then the last one without a newline.
            assert_eq!(line, 502);
        }
        // A quoted field with line breaks is never cut between chunks.
        let mut q = b"A;B\n".to_vec();
        for i in 0..50 {
            q.extend_from_slice(format!("{i};\"two\nlines \"\"quoted\"\"\"\n").as_bytes());
        }
        for size in [5, 40, 333] {
            let (got, _, _) = chunks(&q, size);
            let mut line = 2;
            for (first, t) in &got {
                assert_eq!(*first, line);
                let quotes = t.iter().filter(|b| **b == b'"').count();
                assert_eq!(
                    quotes % 2,
                    0,
                    "chunk cut inside a quoted field (size {size})"
                );
                line += t.iter().filter(|b| **b == b'\n').count();
            }
            assert_eq!(line, 102);
        }
        // A header alone gives no chunk.
        let (got, _, _) = chunks(b"A;B\n", 8);
        assert!(got.is_empty());
    }
}
