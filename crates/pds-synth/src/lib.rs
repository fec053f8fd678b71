//! A deterministic, disease-driven generator of synthetic SNDS extractions.
//!
//! People come first (France's age/sex pyramid and departments), then their
//! chronic conditions with age/sex-dependent prevalence, acute events and
//! deaths; every claim line, hospital stay, exemption and death certificate
//! follows from those. Files are written in the CNAM extraction dialect
//! (`;` CSV, `dd/MM/yyyy`, SAS datetimes, `01/01/1600` sentinels) with the
//! exact column names and order of the SNDS schemas, or as Parquet.
//!
//! Work is split into chunks of beneficiaries, each with a random stream
//! derived from `(seed, chunk)`: the output is byte-identical whatever the
//! number of threads, and memory is bounded by the number of chunks in flight,
//! not by the number of beneficiaries. See `docs/synthetic-data.md`.
#![forbid(unsafe_code)]

pub mod model;
pub mod population;
mod rows;
mod simulate;
pub mod tables;
mod writer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

pub use tables::Table;
pub use writer::Format;

/// Errors from the generator.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// An argument is out of range; nothing was written.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The output directory cannot be used; nothing was written.
    #[error("cannot write to {path}: {source}")]
    Output {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A vendored schema or data file does not match what the generator needs.
    #[error("schema: {0}")]
    Schema(String),
    /// Writing Parquet failed.
    #[error("parquet: {0}")]
    Parquet(String),
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Config {
    /// Number of beneficiaries (people, not identifier pairs).
    pub beneficiaries: u64,
    /// First care year.
    pub first_year: u16,
    /// Last care year (inclusive).
    pub last_year: u16,
    /// Seed of every random choice.
    pub seed: u64,
    /// Output directory (created if missing).
    pub out: PathBuf,
    /// CSV (extraction dialect) or Parquet.
    pub format: Format,
    /// Worker threads (`None` = all cores). Does not change the output.
    pub threads: Option<usize>,
}

/// Oldest and newest years the generator accepts.
pub const YEAR_RANGE: (u16, u16) = (2006, 2099);

impl Config {
    /// Checks the arguments; the error says what is wrong and how to fix it.
    pub fn validate(&self) -> Result<(), SynthError> {
        if self.beneficiaries == 0 {
            return Err(SynthError::InvalidArgument(
                "--beneficiaries must be at least 1 (e.g. --beneficiaries 10000)".into(),
            ));
        }
        if self.beneficiaries > 100_000_000 {
            return Err(SynthError::InvalidArgument(format!(
                "--beneficiaries {} is above the supported maximum of 100000000",
                self.beneficiaries
            )));
        }
        if self.first_year > self.last_year {
            return Err(SynthError::InvalidArgument(format!(
                "--years {}-{} is reversed: write the first year first, e.g. --years {}-{}",
                self.first_year, self.last_year, self.last_year, self.first_year
            )));
        }
        if self.first_year < YEAR_RANGE.0 || self.last_year > YEAR_RANGE.1 {
            return Err(SynthError::InvalidArgument(format!(
                "--years {}-{} is outside {}-{} (DCIR starts in 2006)",
                self.first_year, self.last_year, YEAR_RANGE.0, YEAR_RANGE.1
            )));
        }
        if self.last_year - self.first_year >= 20 {
            return Err(SynthError::InvalidArgument(
                "--years spans more than 20 years; the SNDS keeps 19 + the current one".into(),
            ));
        }
        if self.threads == Some(0) {
            return Err(SynthError::InvalidArgument(
                "--threads must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Beneficiaries per chunk: fixed by the number of years only, so the
    /// output does not depend on the thread count, and small enough that a
    /// few chunks in flight stay well under 1 GiB.
    pub fn chunk_size(&self) -> u64 {
        let years = (self.last_year - self.first_year + 1) as u64;
        (2048 / years).max(128)
    }
}

/// Rows and bytes written for one table family.
#[derive(Debug, Clone, Default)]
pub struct TableStats {
    /// Table (generic name).
    pub table: String,
    /// Files written.
    pub files: usize,
    /// Data rows.
    pub rows: u64,
    /// Bytes on disk.
    pub bytes: u64,
}

/// What a run produced.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Per table.
    pub tables: Vec<TableStats>,
    /// Referential files written.
    pub referentials: Vec<TableStats>,
    /// Beneficiaries.
    pub beneficiaries: u64,
    /// Person-years alive inside the window.
    pub person_years: f64,
    /// Deaths inside the window.
    pub deaths: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Threads used.
    pub threads: usize,
}

impl Report {
    /// Rows of a table.
    pub fn rows(&self, t: Table) -> u64 {
        self.tables
            .iter()
            .find(|s| s.table == t.generic())
            .map_or(0, |s| s.rows)
    }

    /// Volumes per person-year, for comparison with the real SNDS.
    pub fn per_person_year(&self, t: Table) -> f64 {
        self.rows(t) as f64 / self.person_years.max(1e-9)
    }
}

/// Progress callback: beneficiaries done so far.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

fn build_context(cfg: &Config) -> Result<simulate::Context, SynthError> {
    let pop = population::Population::load()?;
    let cols = (cfg.first_year..=cfg.last_year)
        .map(tables::YearColumns::resolve)
        .collect::<Result<Vec<_>, _>>()?;
    let schema_err = |e: pds_snds::SndsError| SynthError::Schema(e.to_string());
    // Drugs: listed presentations of every ATC prefix the model uses.
    let mut prefixes: Vec<&'static str> = Vec::new();
    for c in model::CONDITIONS {
        prefixes.extend(c.drugs.iter().map(|d| d.0));
    }
    prefixes.extend(model::ACUTE_DRUGS.iter().map(|d| d.0));
    prefixes.extend(model::ANTIBIOTICS.iter().map(|d| d.0));
    prefixes.extend(model::SECONDARY_PREVENTION.iter().copied());
    prefixes.push(model::CONTRACEPTION);
    let all = pds_snds::nomenclature::drugs().map_err(schema_err)?;
    let mut drugs = HashMap::new();
    for p in prefixes {
        let mut list: Vec<simulate::DrugRef> = all
            .iter()
            .filter(|d| d.listed && d.atc7.starts_with(p) && d.price_cents > 0 && d.units > 0)
            .map(|d| simulate::DrugRef {
                cip13: d.cip13,
                units: d.units,
                price: d.price_cents as i64,
                rate: d.rate,
            })
            .collect();
        list.sort_by_key(|d| d.cip13);
        if list.is_empty() {
            return Err(SynthError::Schema(format!(
                "no listed drug with ATC prefix {p} in IR_PHA_R"
            )));
        }
        drugs.insert(p, list);
    }
    let bio = pds_snds::nomenclature::Nomenclature::get("IR_BIO_R").map_err(schema_err)?;
    let bio_cols = bio.columns().map_err(schema_err)?;
    let coef_i = bio_cols.iter().position(|c| c == "BIO_TAR_COF");
    let mut bio_price = HashMap::new();
    for r in bio.records().map_err(schema_err)? {
        let (Ok(code), Some(i)) = (r[0].parse::<u32>(), coef_i) else {
            continue;
        };
        if let Ok(coef) = r[i].parse::<f64>() {
            // Coefficient × value of the B letter (0.27 €).
            bio_price.insert(code, (coef * 27.0).round() as i64);
        }
    }
    let cim = pds_snds::nomenclature::Nomenclature::get("IR_CIM_V").map_err(schema_err)?;
    let cim_labels = cim
        .records()
        .map_err(schema_err)?
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    // Hospitals: in each department a public hospital and two private
    // clinics; Paris, Marseille and Lyon get AP-HP, AP-HM and HCL.
    let mut hospitals = Vec::new();
    for (i, d) in pop.departments.iter().enumerate() {
        let dd = if d.code.starts_with("97") {
            d.code[..3].to_string()
        } else {
            d.code[1..].to_string()
        };
        let pad = |kind: u32, k: u32| -> String {
            let s = format!("{dd}{kind}{k:0width$}", width = 9 - dd.len() - 1);
            s[..9].to_string()
        };
        let mut list = Vec::new();
        let big = simulate::DUPLICATE_FINESS
            .iter()
            .find(|(eta, _)| eta[..2] == dd[..2.min(dd.len())] && dd.len() == 2);
        match big {
            Some((eta, dups)) => list.push(simulate::Establishment {
                eta_num: eta.to_string(),
                name: match *eta {
                    "750712184" => "ASSISTANCE PUBLIQUE HOPITAUX DE PARIS".into(),
                    "130786049" => "ASSISTANCE PUBLIQUE HOPITAUX DE MARSEILLE".into(),
                    _ => "HOSPICES CIVILS DE LYON".into(),
                },
                public: true,
                region: d.region.clone(),
                duplicates: dups.to_vec(),
            }),
            None => list.push(simulate::Establishment {
                eta_num: pad(0, i as u32 + 1),
                name: format!("CENTRE HOSPITALIER {}", d.name),
                public: true,
                region: d.region.clone(),
                duplicates: vec![],
            }),
        }
        for k in 0..2 {
            list.push(simulate::Establishment {
                eta_num: pad(3, 500 + i as u32 * 2 + k),
                name: format!("CLINIQUE {} {}", d.name, k + 1),
                public: false,
                region: d.region.clone(),
                duplicates: vec![],
            });
        }
        hospitals.push(list);
    }
    Ok(simulate::Context {
        y0: cfg.first_year,
        y1: cfg.last_year,
        seed: cfg.seed,
        n: cfg.beneficiaries,
        chunk_size: cfg.chunk_size(),
        pop,
        cols,
        drugs,
        bio_price,
        cim_labels,
        hospitals,
    })
}

/// Generates the dataset described by `cfg`.
///
/// Files are written to a hidden staging directory inside `cfg.out` and moved
/// into place only when everything succeeded; on error nothing is left behind.
pub fn generate(cfg: &Config, progress: Progress<'_>) -> Result<Report, SynthError> {
    cfg.validate()?;
    let started = Instant::now();
    let ctx = build_context(cfg)?;
    let threads = cfg
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let mut report = writer::run(cfg, &ctx, threads, progress)?;
    report.beneficiaries = cfg.beneficiaries;
    report.threads = threads;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
