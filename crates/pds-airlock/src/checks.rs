//! The automatic checks run on every file before a person reviews it.
//!
//! They do not decide: they tell reviewers where to look. A finding is
//! `blocking` (the request is refused and nothing is stored: wrong file
//! type, too large, too many rows, a column named as a patient identifier),
//! a `warning` (small counts, unrounded counts, exact dates, values that
//! look like pseudonyms) or `info`.

use std::collections::HashSet;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use pds_project::perimeter::DisclosurePolicy;
use serde::{Deserialize, Serialize};

/// File types that may leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    /// Comma- or semicolon-separated text with a header line.
    Csv,
    /// Apache Parquet.
    Parquet,
    /// A PNG image.
    Png,
    /// An SVG image.
    Svg,
}

impl FileType {
    /// Text form (also the file extension).
    pub fn as_str(self) -> &'static str {
        match self {
            FileType::Csv => "csv",
            FileType::Parquet => "parquet",
            FileType::Png => "png",
            FileType::Svg => "svg",
        }
    }

    /// The media type served at download.
    pub fn media_type(self) -> &'static str {
        match self {
            FileType::Csv => "text/csv",
            FileType::Parquet => "application/vnd.apache.parquet",
            FileType::Png => "image/png",
            FileType::Svg => "image/svg+xml",
        }
    }
}

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The request is refused.
    Blocking,
    /// Reviewers must look at it.
    Warning,
    /// For the record.
    Info,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Which check (`file-type`, `size`, `rows`, `identifier`, `small-count`,
    /// `rounding`, `exact-date`, `pseudonym-like`, `figure`).
    pub check: String,
    /// How serious.
    pub severity: Severity,
    /// What, where, and what to do.
    pub message: String,
}

/// The report attached to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Detected type, when known.
    pub file_type: Option<FileType>,
    /// Size in bytes.
    pub bytes: u64,
    /// Rows (tables).
    pub rows: Option<u64>,
    /// Threshold and rounding the counts were checked against.
    pub threshold: u64,
    /// See `threshold`.
    pub rounding: u64,
    /// Findings, most serious first.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether a finding refuses the request.
    pub fn blocked(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.severity == Severity::Blocking)
    }

    /// The blocking findings, one per line.
    pub fn blocking_text(&self) -> String {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Blocking)
            .map(|f| format!("- {}: {}", f.check, f.message))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The report of a query result cut short at `max_rows` + 1 rows.
    pub fn too_many_rows(name: &str, max_rows: u64, policy: &DisclosurePolicy) -> Report {
        let mut r = Report {
            file_type: None,
            bytes: 0,
            rows: None,
            threshold: policy.threshold,
            rounding: policy.rounding,
            findings: Vec::new(),
        };
        r.add(
            "rows",
            Severity::Blocking,
            format!(
                "the result of {name} has more than {max_rows} rows ([airlock] max_rows): results leave as aggregates, not as data"
            ),
        );
        r
    }

    fn add(&mut self, check: &str, severity: Severity, message: String) {
        self.findings.push(Finding {
            check: check.into(),
            severity,
            message,
        });
    }
}

/// Limits of the `[airlock]` configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest file, bytes.
    pub max_bytes: u64,
    /// Most rows.
    pub max_rows: u64,
}

/// The type of a file, from its content (the name's extension must agree).
pub fn detect(name: &str, bytes: &[u8]) -> Result<FileType, String> {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    let by_content = if bytes.len() >= 8 && bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1") {
        Some(FileType::Parquet)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(FileType::Png)
    } else if let Ok(text) = std::str::from_utf8(bytes) {
        let head = text.trim_start_matches('\u{feff}').trim_start();
        if (head.starts_with("<svg") || head.starts_with("<?xml")) && text.contains("<svg") {
            Some(FileType::Svg)
        } else if !text.contains('\0') {
            Some(FileType::Csv)
        } else {
            None
        }
    } else {
        None
    };
    let Some(t) = by_content else {
        return Err(format!(
            "{name} is none of the file types that may leave (CSV, Parquet, PNG, SVG)"
        ));
    };
    if !ext.is_empty() && ext != t.as_str() {
        return Err(format!(
            "{name} holds {} but its name ends in .{ext}; rename it to .{}",
            t.as_str().to_uppercase(),
            t.as_str()
        ));
    }
    Ok(t)
}

/// Reads a table file (CSV or Parquet) into batches.
pub fn read_table(t: FileType, bytes: &[u8]) -> Result<Vec<RecordBatch>, String> {
    match t {
        FileType::Csv => {
            let first = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
            let delimiter = if first.iter().filter(|b| **b == b';').count()
                > first.iter().filter(|b| **b == b',').count()
            {
                b';'
            } else {
                b','
            };
            let format = arrow::csv::reader::Format::default()
                .with_header(true)
                .with_delimiter(delimiter);
            let (schema, _) = format
                .infer_schema(std::io::Cursor::new(bytes), Some(10_000))
                .map_err(|e| format!("the CSV file cannot be read: {e}"))?;
            let reader = arrow::csv::ReaderBuilder::new(std::sync::Arc::new(schema))
                .with_format(format)
                .build(std::io::Cursor::new(bytes))
                .map_err(|e| format!("the CSV file cannot be read: {e}"))?;
            reader
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("the CSV file cannot be read: {e}"))
        }
        FileType::Parquet => {
            let b = bytes::Bytes::copy_from_slice(bytes);
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(b)
                .and_then(|r| r.build())
                .map_err(|e| format!("the Parquet file cannot be read: {e}"))?;
            reader
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("the Parquet file cannot be read: {e}"))
        }
        FileType::Png | FileType::Svg => Ok(Vec::new()),
    }
}

fn int_values(a: &ArrayRef) -> Option<Vec<i128>> {
    use arrow::datatypes::*;
    macro_rules! prim {
        ($t:ty) => {
            Some(
                a.as_primitive::<$t>()
                    .iter()
                    .flatten()
                    .map(|v| v as i128)
                    .collect(),
            )
        };
    }
    match a.data_type() {
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => prim!(UInt64Type),
        _ => None,
    }
}

/// Whether a column name says it holds a year (whose values are not counts).
fn not_a_count(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "year", "annee", "ann", "_cod", "code", "month", "mois", "age", "sex", "id",
    ]
    .iter()
    .any(|k| n == *k || n.ends_with(k) || n.starts_with(k))
}

/// Runs every check on a file.
pub fn check(name: &str, bytes: &[u8], policy: &DisclosurePolicy, limits: Limits) -> Report {
    let mut r = Report {
        file_type: None,
        bytes: bytes.len() as u64,
        rows: None,
        threshold: policy.threshold,
        rounding: policy.rounding,
        findings: Vec::new(),
    };
    if r.bytes > limits.max_bytes {
        r.add(
            "size",
            Severity::Blocking,
            format!(
                "{name} is {} bytes; at most {} may leave ([airlock] max_file_mib). Aggregate further or split the result",
                r.bytes, limits.max_bytes
            ),
        );
    }
    let t = match detect(name, bytes) {
        Ok(t) => t,
        Err(e) => {
            r.add("file-type", Severity::Blocking, e);
            return r;
        }
    };
    r.file_type = Some(t);
    if t == FileType::Svg {
        let text = String::from_utf8_lossy(bytes).to_ascii_lowercase();
        if [
            "<script",
            "javascript:",
            "<foreignobject",
            "onload=",
            "onclick=",
            "href=\"http",
            "href='http",
        ]
        .iter()
        .any(|k| text.contains(k))
        {
            r.add(
                "active-content",
                Severity::Blocking,
                format!("{name} holds scripts or links to other sites; export the figure without them (plain SVG, or PNG)"),
            );
        }
    }
    if matches!(t, FileType::Png | FileType::Svg) {
        r.add(
            "figure",
            Severity::Info,
            "figures are not read automatically: reviewers check every label, point and axis for small numbers".into(),
        );
        return r;
    }
    let batches = match read_table(t, bytes) {
        Ok(b) => b,
        Err(e) => {
            r.add("file-type", Severity::Blocking, e);
            return r;
        }
    };
    let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    r.rows = Some(rows);
    if rows > limits.max_rows {
        r.add(
            "rows",
            Severity::Blocking,
            format!(
                "{name} has {rows} rows; at most {} may leave ([airlock] max_rows): results leave as aggregates, not as data",
                limits.max_rows
            ),
        );
    }
    let Some(schema) = batches.first().map(|b| b.schema()) else {
        return r;
    };
    for (i, field) in schema.fields().iter().enumerate() {
        let col = field.name();
        let upper = col.to_ascii_uppercase();
        if pds_snds::identifiers::is_patient_id(&upper) {
            r.add(
                "identifier",
                Severity::Blocking,
                format!("column {col} is named as a patient identifier; identifiers never leave"),
            );
            continue;
        }
        let arrays: Vec<ArrayRef> = batches.iter().map(|b| b.column(i).clone()).collect();
        if let Some(values) = arrays
            .iter()
            .map(int_values)
            .collect::<Option<Vec<_>>>()
            .map(|v| v.concat())
        {
            if not_a_count(col) {
                continue;
            }
            let small = values
                .iter()
                .filter(|v| **v > 0 && (**v as u128) < u128::from(policy.threshold))
                .count();
            if small > 0 {
                r.add(
                    "small-count",
                    Severity::Warning,
                    format!(
                        "column {col} holds {small} value(s) from 1 to {}: if they count patients, they are under the threshold of {}",
                        policy.threshold - 1,
                        policy.threshold
                    ),
                );
            }
            if policy.rounding > 1 {
                let unrounded = values
                    .iter()
                    .filter(|v| (**v).rem_euclid(i128::from(policy.rounding)) != 0)
                    .count();
                if unrounded > 0 {
                    r.add(
                        "rounding",
                        Severity::Warning,
                        format!(
                            "column {col} holds {unrounded} value(s) that are not multiples of {}, as the project's rules require of counts",
                            policy.rounding
                        ),
                    );
                }
            }
            continue;
        }
        match field.data_type() {
            DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _) => {
                let mut exact = 0usize;
                for a in &arrays {
                    let days = arrow::compute::cast(a, &DataType::Date32)
                        .ok()
                        .map(|d| d.as_primitive::<arrow::datatypes::Date32Type>().clone());
                    if let Some(d) = days {
                        exact += d
                            .iter()
                            .flatten()
                            .filter(|v| {
                                arrow::temporal_conversions::date32_to_datetime(*v)
                                    .is_some_and(|t| chrono::Datelike::day(&t) != 1)
                            })
                            .count();
                    }
                }
                if exact > 0 {
                    r.add(
                        "exact-date",
                        Severity::Warning,
                        format!(
                            "column {col} holds {exact} exact date(s) (not the first of a month): exact dates of care are potential identifiers"
                        ),
                    );
                }
            }
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                let mut seen = HashSet::new();
                let mut long = 0usize;
                let mut total = 0usize;
                for a in &arrays {
                    let a = arrow::compute::cast(a, &DataType::Utf8).ok();
                    let Some(a) = a else { continue };
                    for v in a.as_string::<i32>().iter().flatten() {
                        total += 1;
                        if v.len() >= 16
                            && v.chars()
                                .all(|c| c.is_ascii_alphanumeric() || "_-+/=".contains(c))
                        {
                            long += 1;
                            seen.insert(v.to_string());
                        }
                    }
                }
                if total >= 5 && long * 10 >= total * 9 && seen.len() * 10 >= long * 9 {
                    r.add(
                        "pseudonym-like",
                        Severity::Warning,
                        format!(
                            "column {col} holds long, distinct codes ({} of {total}): they look like identifiers",
                            seen.len()
                        ),
                    );
                }
            }
            _ => {}
        }
    }
    r.findings.sort_by_key(|f| match f.severity {
        Severity::Blocking => 0,
        Severity::Warning => 1,
        Severity::Info => 2,
    });
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(threshold: u64, rounding: u64) -> DisclosurePolicy {
        DisclosurePolicy {
            threshold,
            rounding,
            dominance_n: 2,
            dominance_percent: 90,
            track_populations: true,
        }
    }

    const LIMITS: Limits = Limits {
        max_bytes: 1 << 20,
        max_rows: 100,
    };

    #[test]
    fn small_counts_identifiers_rounding_and_dates_are_found() {
        let csv = "ATC;year;patients;first_care\nA10;2022;3;2022-03-17\nC09;2022;120;2022-04-01\n";
        let r = check("t.csv", csv.as_bytes(), &policy(10, 5), LIMITS);
        assert!(!r.blocked(), "{r:?}");
        let checks: Vec<&str> = r.findings.iter().map(|f| f.check.as_str()).collect();
        assert!(checks.contains(&"small-count"), "{checks:?}");
        assert!(checks.contains(&"rounding"), "{checks:?}");
        assert!(checks.contains(&"exact-date"), "{checks:?}");
        assert_eq!(r.rows, Some(2));
        let id = "BEN_NIR_PSA,n\nabc,12\n";
        let r = check("t.csv", id.as_bytes(), &policy(10, 1), LIMITS);
        assert!(r.blocked());
        assert!(
            r.blocking_text().contains("BEN_NIR_PSA"),
            "{}",
            r.blocking_text()
        );
    }

    #[test]
    fn sizes_rows_and_types_are_enforced() {
        let mut big = String::from("n\n");
        for i in 0..150 {
            big.push_str(&format!("{}\n", 100 + i));
        }
        let r = check("t.csv", big.as_bytes(), &policy(10, 1), LIMITS);
        assert!(r.blocked());
        assert!(
            r.blocking_text().contains("150 rows"),
            "{}",
            r.blocking_text()
        );
        let r = check(
            "t.exe",
            b"MZ\x90\x00\x03\x00\x00\x00\x04",
            &policy(10, 1),
            LIMITS,
        );
        assert!(r.blocked());
        let r = check("plot.csv", b"\x89PNG\r\n\x1a\nrest", &policy(10, 1), LIMITS);
        assert!(r.blocking_text().contains("rename it to .png"), "{r:?}");
        let r = check("plot.png", b"\x89PNG\r\n\x1a\nrest", &policy(10, 1), LIMITS);
        assert!(!r.blocked());
        assert_eq!(r.file_type, Some(FileType::Png));
    }
}
