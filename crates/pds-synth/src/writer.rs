//! Output: staging, ordered writing of chunk buffers, Parquet conversion,
//! referential files and the final atomic move into place.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;

use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use rayon::prelude::*;

use crate::simulate::{self, ChunkOut, Context};
use crate::tables::{Table, table_columns};
use crate::{Config, Progress, Report, SynthError, TableStats};

/// Output file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// CNAM extraction dialect: `;` CSV with header.
    #[default]
    Csv,
    /// Typed Parquet (zstd), sentinels as nulls.
    Parquet,
}

impl Format {
    fn ext(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }
}

enum Sink {
    Csv(BufWriter<File>),
    Parquet(Box<ArrowWriter<File>>),
}

struct OutFile {
    name: String,
    columns: Vec<&'static pds_snds::Column>,
    sink: Sink,
    rows: u64,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Output {
        path: path.to_path_buf(),
        source,
    }
}

fn props() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .set_max_row_group_row_count(Some(256 * 1024))
        .set_created_by("pds synth".into())
        .build()
}

impl OutFile {
    fn create(
        dir: &Path,
        name: String,
        columns: Vec<&'static pds_snds::Column>,
        format: Format,
    ) -> Result<Self, SynthError> {
        let path = dir.join(format!("{name}.{}", format.ext()));
        let file = File::create(&path).map_err(io_err(&path))?;
        let sink = match format {
            Format::Csv => {
                let mut w = BufWriter::with_capacity(1 << 20, file);
                let header = columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(";");
                writeln!(w, "{header}").map_err(io_err(&path))?;
                Sink::Csv(w)
            }
            Format::Parquet => {
                let schema = pds_snds::arrow::arrow_schema(&columns);
                Sink::Parquet(Box::new(
                    ArrowWriter::try_new(file, schema, Some(props()))
                        .map_err(|e| SynthError::Parquet(e.to_string()))?,
                ))
            }
        };
        Ok(OutFile {
            name,
            columns,
            sink,
            rows: 0,
        })
    }

    fn write_csv(&mut self, bytes: &[u8], rows: u64, dir: &Path) -> Result<(), SynthError> {
        self.rows += rows;
        match &mut self.sink {
            Sink::Csv(w) => w.write_all(bytes).map_err(io_err(&dir.join(&self.name))),
            Sink::Parquet(w) => {
                if bytes.is_empty() {
                    return Ok(());
                }
                let batch = pds_snds::arrow::csv_to_batch(&self.columns, bytes, 2)
                    .map_err(|e| SynthError::Schema(format!("{}: {e}", self.name)))?;
                w.write(&batch)
                    .map_err(|e| SynthError::Parquet(e.to_string()))
            }
        }
    }

    fn write_batch(&mut self, batch: &RecordBatch) -> Result<(), SynthError> {
        self.rows += batch.num_rows() as u64;
        match &mut self.sink {
            Sink::Parquet(w) => w
                .write(batch)
                .map_err(|e| SynthError::Parquet(e.to_string())),
            Sink::Csv(_) => Err(SynthError::Parquet("batch written to a CSV sink".into())),
        }
    }

    fn finish(self, dir: &Path) -> Result<(String, u64), SynthError> {
        match self.sink {
            Sink::Csv(mut w) => w.flush().map_err(io_err(&dir.join(&self.name)))?,
            Sink::Parquet(w) => {
                w.close().map_err(|e| SynthError::Parquet(e.to_string()))?;
            }
        }
        Ok((self.name, self.rows))
    }
}

/// A chunk's buffers, converted to batches when writing Parquet so that the
/// conversion runs on the worker threads.
enum Payload {
    Csv(ChunkOut),
    Parquet(Vec<Vec<Option<RecordBatch>>>, f64, u64),
}

struct Staging {
    dir: PathBuf,
    armed: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs the generation with `threads` workers.
pub fn run(
    cfg: &Config,
    ctx: &Context,
    threads: usize,
    progress: Progress<'_>,
) -> Result<Report, SynthError> {
    let out = &cfg.out;
    fs::create_dir_all(out).map_err(io_err(out))?;
    let stage_dir = out.join(format!(".pds-synth-staging-{}", std::process::id()));
    fs::create_dir(&stage_dir).map_err(io_err(&stage_dir))?;
    let mut staging = Staging {
        dir: stage_dir.clone(),
        armed: true,
    };

    let years: Vec<u16> = (cfg.first_year..=cfg.last_year).collect();
    let mut files: Vec<Vec<OutFile>> = Vec::new();
    for t in Table::ALL {
        let mut per = Vec::new();
        if t.per_year() {
            for &y in &years {
                per.push(OutFile::create(
                    &stage_dir,
                    t.file_stem(y),
                    table_columns(t, y)?,
                    cfg.format,
                )?);
            }
        } else {
            per.push(OutFile::create(
                &stage_dir,
                t.file_stem(cfg.last_year),
                table_columns(t, cfg.last_year)?,
                cfg.format,
            )?);
        }
        files.push(per);
    }

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| SynthError::InvalidArgument(format!("cannot start {threads} threads: {e}")))?;
    let n_chunks = cfg.beneficiaries.div_ceil(ctx.chunk_size);
    let wave = (threads as u64 * 2).max(2);
    let done = AtomicU64::new(0);
    let format = cfg.format;
    let (tx, rx) = sync_channel::<Result<Vec<Payload>, SynthError>>(1);
    let mut person_years = 0.0;
    let mut deaths = 0;

    let (pool, done) = (&pool, &done);
    std::thread::scope(|s| -> Result<(), SynthError> {
        // `move` hands the sender to the producer, so the channel closes when
        // it is done and the writer loop below ends.
        let producer = s.spawn(move || {
            let mut start = 0;
            while start < n_chunks {
                let end = (start + wave).min(n_chunks);
                let res: Result<Vec<Payload>, SynthError> = pool.install(|| {
                    (start..end)
                        .into_par_iter()
                        .map(|c| {
                            let o = simulate::generate_chunk(ctx, c)?;
                            let n = ((c + 1) * ctx.chunk_size).min(ctx.n) - c * ctx.chunk_size;
                            progress(done.fetch_add(n, Ordering::Relaxed) + n);
                            to_payload(o, format, cfg)
                        })
                        .collect()
                });
                let failed = res.is_err();
                if tx.send(res).is_err() || failed {
                    return;
                }
                start = end;
            }
        });
        for wave in rx {
            for payload in wave? {
                match payload {
                    Payload::Csv(o) => {
                        person_years += o.person_years;
                        deaths += o.deaths;
                        for (ti, per) in o.bufs.iter().enumerate() {
                            for (yi, bytes) in per.iter().enumerate() {
                                files[ti][yi].write_csv(bytes, o.rows[ti][yi], &stage_dir)?;
                            }
                        }
                    }
                    Payload::Parquet(b, py, d) => {
                        person_years += py;
                        deaths += d;
                        for (ti, per) in b.iter().enumerate() {
                            for (yi, batch) in per.iter().enumerate() {
                                if let Some(batch) = batch {
                                    files[ti][yi].write_batch(batch)?;
                                }
                            }
                        }
                    }
                }
            }
        }
        producer
            .join()
            .map_err(|_| SynthError::Schema("a generator thread panicked".into()))?;
        Ok(())
    })?;

    // Establishments of each year (every hospital, and the duplicated
    // geographic FINESS of AP-HP, AP-HM and HCL).
    let e_idx = Table::McoE.index();
    for (yi, &y) in years.iter().enumerate() {
        let (text, rows) = establishments(ctx, y)?;
        files[e_idx][yi].write_csv(&text, rows, &stage_dir)?;
    }

    let mut report = Report {
        person_years,
        deaths,
        ..Default::default()
    };
    for (ti, per) in files.into_iter().enumerate() {
        let mut st = TableStats {
            table: Table::ALL[ti].generic().to_string(),
            ..Default::default()
        };
        for f in per {
            let (name, rows) = f.finish(&stage_dir)?;
            let path = stage_dir.join(format!("{name}.{}", format.ext()));
            st.bytes += fs::metadata(&path).map_err(io_err(&path))?.len();
            st.rows += rows;
            st.files += 1;
        }
        report.tables.push(st);
    }
    report.referentials = referentials(&stage_dir, format)?;

    // Move everything into place only now: a failed run leaves nothing.
    for entry in fs::read_dir(&stage_dir).map_err(io_err(&stage_dir))? {
        let entry = entry.map_err(io_err(&stage_dir))?;
        let target = out.join(entry.file_name());
        fs::rename(entry.path(), &target).map_err(io_err(&target))?;
    }
    fs::remove_dir(&stage_dir).map_err(io_err(&stage_dir))?;
    staging.armed = false;
    Ok(report)
}

fn to_payload(o: ChunkOut, format: Format, cfg: &Config) -> Result<Payload, SynthError> {
    match format {
        Format::Csv => Ok(Payload::Csv(o)),
        Format::Parquet => {
            let mut out = Vec::new();
            for (ti, per) in o.bufs.iter().enumerate() {
                let t = Table::ALL[ti];
                let mut v = Vec::new();
                for (yi, bytes) in per.iter().enumerate() {
                    if bytes.is_empty() {
                        v.push(None);
                        continue;
                    }
                    let year = if t.per_year() {
                        cfg.first_year + yi as u16
                    } else {
                        cfg.last_year
                    };
                    let cols = table_columns(t, year)?;
                    let b = pds_snds::arrow::csv_to_batch(&cols, bytes, 2)
                        .map_err(|e| SynthError::Schema(format!("{}: {e}", t.file_stem(year))))?;
                    v.push(Some(b));
                }
                out.push(v);
            }
            Ok(Payload::Parquet(out, o.person_years, o.deaths))
        }
    }
}

fn establishments(ctx: &Context, year: u16) -> Result<(Vec<u8>, u64), SynthError> {
    let yc = &ctx.cols[(year - ctx.y0) as usize].e;
    let mut w = crate::rows::RowWriter::new();
    let mut out = Vec::new();
    let ann = format!("{year}T4");
    let mut rows = 0;
    for list in &ctx.hospitals {
        for h in list {
            let mut emit = |eta: &str, name: &str| {
                w.start(yc.width);
                w.str(yc.ETA_NUM, eta)
                    .str(yc.ETB_EXE_FIN, &eta[..8])
                    .str(yc.SOC_RAI, name)
                    .str(yc.STA_ETA, if h.public { "DG" } else { "OQN" })
                    .str(yc.REG_ETA, &h.region)
                    .str(yc.ANN_TRT, &ann)
                    .str(yc.VAL_ETA, "VALIDE");
                w.finish(&mut out);
                rows += 1;
            };
            emit(&h.eta_num, &h.name);
            for d in &h.duplicates {
                emit(d, &format!("{} (SITE {d})", h.name));
            }
        }
    }
    Ok((out, rows))
}

/// Writes the referentials the analyses need, in the same dialect.
fn referentials(dir: &Path, format: Format) -> Result<Vec<TableStats>, SynthError> {
    use pds_snds::nomenclature::{self, Nomenclature};
    let err = |e: pds_snds::SndsError| SynthError::Schema(e.to_string());
    let mut list: Vec<(String, Vec<String>, Vec<Vec<String>>)> = Vec::new();
    list.push((
        "IR_PHA_R".into(),
        nomenclature::drug_columns().map_err(err)?,
        nomenclature::drug_records().map_err(err)?,
    ));
    for name in [
        "IR_CIM_V",
        "IR_CCAM_V63",
        "IR_NAT_V",
        "IR_SPE_V",
        "IR_DPT_V",
        "IR_BIO_R",
    ] {
        let n = Nomenclature::get(name).map_err(err)?;
        list.push((
            name.to_string(),
            n.columns().map_err(err)?,
            n.records().map_err(err)?,
        ));
    }
    let mut stats = Vec::new();
    for (name, cols, rows) in list {
        let path = dir.join(format!("{name}.{}", format.ext()));
        match format {
            Format::Csv => {
                let file = File::create(&path).map_err(io_err(&path))?;
                let mut w = csv::WriterBuilder::new()
                    .delimiter(b';')
                    .from_writer(BufWriter::new(file));
                let csv_err = |e: csv::Error| SynthError::Output {
                    path: path.clone(),
                    source: std::io::Error::other(e.to_string()),
                };
                w.write_record(&cols).map_err(csv_err)?;
                for r in &rows {
                    w.write_record(r).map_err(csv_err)?;
                }
                w.flush().map_err(io_err(&path))?;
            }
            Format::Parquet => {
                use arrow_array::{ArrayRef, StringArray};
                use arrow_schema::{DataType, Field, Schema};
                use std::sync::Arc;
                let schema = Arc::new(Schema::new(
                    cols.iter()
                        .map(|c| Field::new(c, DataType::Utf8, true))
                        .collect::<Vec<_>>(),
                ));
                let arrays: Vec<ArrayRef> = (0..cols.len())
                    .map(|i| {
                        Arc::new(StringArray::from_iter(
                            rows.iter()
                                .map(|r| Some(r[i].as_str()).filter(|s| !s.is_empty())),
                        )) as ArrayRef
                    })
                    .collect();
                let batch = RecordBatch::try_new(schema.clone(), arrays)
                    .map_err(|e| SynthError::Parquet(e.to_string()))?;
                let file = File::create(&path).map_err(io_err(&path))?;
                let mut w = ArrowWriter::try_new(file, schema, Some(props()))
                    .map_err(|e| SynthError::Parquet(e.to_string()))?;
                w.write(&batch)
                    .map_err(|e| SynthError::Parquet(e.to_string()))?;
                w.close().map_err(|e| SynthError::Parquet(e.to_string()))?;
            }
        }
        stats.push(TableStats {
            table: name,
            files: 1,
            rows: rows.len() as u64,
            bytes: fs::metadata(&path).map_err(io_err(&path))?.len(),
        });
    }
    Ok(stats)
}
