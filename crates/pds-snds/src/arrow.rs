//! Arrow types for SNDS columns and conversion of extraction-dialect CSV text
//! into typed record batches (sentinels become nulls).
//!
//! Codes that look numeric but carry meaning as text (PMSI return codes,
//! departments) stay `Utf8`; the schema's `integer` and `number` become
//! `Int64`/`Float64`, dates `Date32`, SAS datetimes `Timestamp(s)`.

use std::sync::Arc;

use arrow_array::builder::{
    Date32Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampSecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::NaiveDate;

use crate::SndsError;
use crate::dialect;
use crate::schema::{Column, ColumnType};

/// The Arrow type PDS uses for a column type.
pub fn arrow_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::String | ColumnType::Boolean => DataType::Utf8,
        ColumnType::Integer => DataType::Int64,
        ColumnType::Number => DataType::Float64,
        ColumnType::Date | ColumnType::CompactDate => DataType::Date32,
        ColumnType::SasDateTime => DataType::Timestamp(TimeUnit::Second, None),
        ColumnType::Year | ColumnType::YearMonth | ColumnType::Month => DataType::Int32,
    }
}

/// The Arrow type of the prestation key ([`crate::schema::PRESTATION_KEY`]):
/// a 126-bit integer fits `Decimal128(38, 0)` (10^38 > 2^126), one
/// fixed-width column that every engine and client can read.
pub const PRESTATION_KEY_TYPE: DataType = DataType::Decimal128(38, 0);

/// Arrow schema for a list of columns (all nullable; descriptions as metadata).
pub fn arrow_schema(columns: &[&Column]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| {
                Field::new(&c.name, arrow_type(c.ty), true).with_metadata(
                    [("description".to_string(), c.description.clone())]
                        .into_iter()
                        .collect(),
                )
            })
            .collect::<Vec<_>>(),
    ))
}

fn epoch_days(d: NaiveDate) -> i32 {
    const EPOCH_CE: i32 = 719_163; // days from 0001-01-01 to 1970-01-01
    chrono::Datelike::num_days_from_ce(&d) - EPOCH_CE
}

/// One parsed field, before it is appended: a line is appended only when
/// every field of it parsed, so a rejected line leaves no partial row. Text
/// is not copied here: it is appended from the line itself.
#[derive(Clone, Copy)]
enum Value {
    Null,
    /// Byte range of the text in the line.
    Str(u32, u32),
    I64(i64),
    F64(f64),
    Date(Option<i32>),
    Ts(Option<i64>),
    I32(Option<i32>),
}

enum Builder {
    Str(StringBuilder),
    I64(Int64Builder),
    F64(Float64Builder),
    Date(Date32Builder),
    Ts(TimestampSecondBuilder),
    I32(Int32Builder),
}

impl Builder {
    fn new(ty: ColumnType) -> Self {
        match arrow_type(ty) {
            DataType::Utf8 => Builder::Str(StringBuilder::new()),
            DataType::Int64 => Builder::I64(Int64Builder::new()),
            DataType::Float64 => Builder::F64(Float64Builder::new()),
            DataType::Date32 => Builder::Date(Date32Builder::new()),
            DataType::Timestamp(..) => Builder::Ts(TimestampSecondBuilder::new()),
            _ => Builder::I32(Int32Builder::new()),
        }
    }

    fn append(&mut self, v: Value, text: &str) {
        match (self, v) {
            (Builder::Str(b), Value::Str(..)) => b.append_value(text),
            (Builder::I64(b), Value::I64(x)) => b.append_value(x),
            (Builder::F64(b), Value::F64(x)) => b.append_value(x),
            (Builder::Date(b), Value::Date(x)) => b.append_option(x),
            (Builder::Ts(b), Value::Ts(x)) => b.append_option(x),
            (Builder::I32(b), Value::I32(x)) => b.append_option(x),
            (Builder::Str(b), _) => b.append_null(),
            (Builder::I64(b), _) => b.append_null(),
            (Builder::F64(b), _) => b.append_null(),
            (Builder::Date(b), _) => b.append_null(),
            (Builder::Ts(b), _) => b.append_null(),
            (Builder::I32(b), _) => b.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Builder::Str(mut b) => Arc::new(b.finish()),
            Builder::I64(mut b) => Arc::new(b.finish()),
            Builder::F64(mut b) => Arc::new(b.finish()),
            Builder::Date(mut b) => Arc::new(b.finish()),
            Builder::Ts(mut b) => Arc::new(b.finish()),
            Builder::I32(mut b) => Arc::new(b.finish()),
        }
    }
}

/// Parses one field in the dialect and checks it against its column (type,
/// declared length); sentinels become nulls. The error is the rule broken.
fn parse_field(ty: ColumnType, max_len: Option<usize>, field: &str) -> Result<Value, String> {
    if field.is_empty() {
        return Ok(Value::Null);
    }
    let bad = || format!("not a valid {}", expected_words(ty));
    Ok(match ty {
        ColumnType::String | ColumnType::Boolean => {
            // Characters never outnumber bytes: count them only when needed.
            if let Some(max) = max_len
                && field.len() > max
                && field.chars().count() > max
            {
                return Err(format!("text longer than {max} characters"));
            }
            // The range is filled in by the caller, which knows the line.
            Value::Str(0, 0)
        }
        ColumnType::Integer => Value::I64(field.parse().map_err(|_| bad())?),
        ColumnType::Number => Value::F64(
            field
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(bad)?,
        ),
        ColumnType::Date => {
            Value::Date(dialect::parse_date(field).ok_or_else(bad)?.map(epoch_days))
        }
        ColumnType::CompactDate => Value::Date(
            dialect::parse_compact_date(field)
                .ok_or_else(bad)?
                .map(epoch_days),
        ),
        ColumnType::SasDateTime => Value::Ts(
            dialect::parse_sas_datetime(field)
                .ok_or_else(bad)?
                .map(|dt| dt.and_utc().timestamp()),
        ),
        ColumnType::Year => {
            let y: i32 = field
                .parse()
                .ok()
                .filter(|_| field.len() == 4)
                .ok_or_else(bad)?;
            Value::I32((y != dialect::SENTINEL_YEAR).then_some(y))
        }
        ColumnType::YearMonth => {
            let ok = field.len() == 6
                && field[4..]
                    .parse::<u32>()
                    .is_ok_and(|m| (1..=12).contains(&m));
            Value::I32(Some(field.parse().ok().filter(|_| ok).ok_or_else(bad)?))
        }
        ColumnType::Month => {
            let m: i32 = field
                .parse()
                .ok()
                .filter(|m| (1..=12).contains(m))
                .ok_or_else(bad)?;
            Value::I32(Some(m))
        }
    })
}

fn expected_words(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::String | ColumnType::Boolean => "text",
        ColumnType::Integer => "integer",
        ColumnType::Number => "decimal number (dot as separator)",
        ColumnType::Date => "date dd/MM/yyyy (01/01/1600 when missing)",
        ColumnType::CompactDate => "date ddmmyyyy",
        ColumnType::SasDateTime => "SAS datetime ddMMMyyyy:HH:mm:ss",
        ColumnType::Year => "year yyyy",
        ColumnType::YearMonth => "year-month yyyyMM",
        ColumnType::Month => "month MM",
    }
}

/// One problem found in an extraction file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line number (header = 1).
    pub line: usize,
    /// Column name.
    pub column: String,
    /// The offending value.
    pub value: String,
    /// The rule it breaks.
    pub rule: String,
}

/// Parses `text` in one pass. Every problem goes to `on_problem`; a line with
/// a problem is not appended. Returns the batch and the number of rejected
/// lines, or the first error `on_problem` returns.
fn convert(
    columns: &[&Column],
    opts: &Checks<'_>,
    text: &[u8],
    first_line: usize,
    mut on_problem: impl FnMut(Problem) -> Result<(), SndsError>,
) -> Result<(RecordBatch, u64), SndsError> {
    let schema = arrow_schema(columns);
    let required = opts.required;
    let mut builders: Vec<Builder> = columns.iter().map(|c| Builder::new(c.ty)).collect();
    // Column types side by side: the loop below reads them for every field.
    let tys: Vec<ColumnType> = columns.iter().map(|c| c.ty).collect();
    let max_lens: Vec<Option<usize>> = columns
        .iter()
        .map(|c| c.length.as_deref().and_then(|l| l.parse::<usize>().ok()))
        .collect();
    let mut is_required = vec![false; columns.len()];
    for &i in required {
        if let Some(r) = is_required.get_mut(i) {
            *r = true;
        }
    }
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(b';')
        .has_headers(false)
        .flexible(true)
        .from_reader(text);
    let mut rec = csv::ByteRecord::new();
    let mut rejected = 0u64;
    let mut line = first_line;
    // Reused for every line: no allocation per row.
    let mut row: Vec<Value> = Vec::with_capacity(columns.len());
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(SndsError::Csv(format!("line {line}: {e}"))),
        }
        // The physical line where the record starts (a quoted field may
        // hold line breaks, so records and lines can differ).
        if let Some(p) = rec.position() {
            line = first_line + p.line() as usize - 1;
        }
        let mut bad = false;
        row.clear();
        // One UTF-8 check for the whole line; fields are then slices of it.
        let whole = std::str::from_utf8(rec.as_slice()).ok();
        if rec.len() != columns.len() {
            bad = true;
            on_problem(Problem {
                line,
                column: "(line)".into(),
                value: format!("{} fields", rec.len()),
                rule: format!("every line has the header's {} fields", columns.len()),
            })?;
        } else {
            for (i, &ty) in tys.iter().enumerate() {
                let problem = |value: String, rule: String| Problem {
                    line,
                    column: columns[i].name.clone(),
                    value,
                    rule,
                };
                // A slice of the valid line is valid unless it cuts a
                // character (bytes of two fields that only form UTF-8 together).
                let range = rec.range(i);
                let sliced = whole.and_then(|w| range.clone().and_then(|r| w.get(r)));
                let field = match sliced {
                    Some(f) => f,
                    None => {
                        let raw = rec.get(i).unwrap_or_default();
                        match std::str::from_utf8(raw) {
                            Ok(f) if whole.is_none() => f,
                            _ => {
                                bad = true;
                                on_problem(problem(
                                    String::from_utf8_lossy(raw).into_owned(),
                                    "text must be UTF-8".into(),
                                ))?;
                                continue;
                            }
                        }
                    }
                };
                if field.is_empty() && is_required[i] {
                    bad = true;
                    on_problem(problem(
                        String::new(),
                        "required key column is empty".into(),
                    ))?;
                    continue;
                }
                match parse_field(ty, max_lens[i], field) {
                    Ok(mut v) => {
                        if !field.is_empty()
                            && let Some(Some(check)) = opts.values.get(i)
                            && let Some(rule) = check.violation(field)
                        {
                            bad = true;
                            on_problem(problem(field.to_string(), rule))?;
                            continue;
                        }
                        if let (Value::Str(..), Some(r)) = (v, &range) {
                            v = Value::Str(r.start as u32, r.end as u32);
                        }
                        row.push(v)
                    }
                    Err(rule) => {
                        bad = true;
                        on_problem(problem(field.to_string(), rule))?;
                    }
                }
            }
        }
        if bad {
            rejected += 1;
        } else if let Some(w) = whole {
            for (b, v) in builders.iter_mut().zip(&row) {
                let text = match *v {
                    Value::Str(a, z) => w.get(a as usize..z as usize).unwrap_or(""),
                    _ => "",
                };
                b.append(*v, text);
            }
        }
        line += 1;
    }
    let arrays: Vec<ArrayRef> = builders.into_iter().map(Builder::finish).collect();
    Ok((RecordBatch::try_new(schema, arrays)?, rejected))
}

/// A value rule beyond the column's type (a value list, for instance).
pub trait ValueRule: Sync {
    /// The rule `value` breaks, if any, worded for the steward.
    fn violation(&self, value: &str) -> Option<String>;
}

/// What [`csv_to_batch_with`] checks beyond types and formats.
#[derive(Default)]
pub struct Checks<'a> {
    /// Columns that must not be empty (indexes into the columns).
    pub required: &'a [usize],
    /// Per column (by index), an extra rule on non-empty values, e.g. a
    /// value list.
    pub values: Vec<Option<&'a dyn ValueRule>>,
}

/// Converts `;`-separated, header-less extraction text into a batch.
///
/// Empty fields and date sentinels become nulls; the first value that breaks
/// its column's rule (type, dialect, length) stops the conversion with an
/// error naming line, column, value and rule. `first_line` numbers the lines.
pub fn csv_to_batch(
    columns: &[&Column],
    text: &[u8],
    first_line: usize,
) -> Result<RecordBatch, SndsError> {
    let (batch, _) = convert(columns, &Checks::default(), text, first_line, |p| {
        Err(SndsError::BadValue {
            line: p.line,
            column: p.column,
            value: p.value,
            rule: p.rule,
        })
    })?;
    Ok(batch)
}

/// Like [`csv_to_batch`], but also requires the `required` columns and,
/// instead of stopping at the first problem, rejects the bad lines and
/// reports each problem. At most `max_problems` are reported.
pub fn csv_to_batch_checked(
    columns: &[&Column],
    required: &[usize],
    text: &[u8],
    first_line: usize,
    problems: &mut Vec<Problem>,
    max_problems: usize,
) -> Result<(RecordBatch, u64), SndsError> {
    let checks = Checks {
        required,
        ..Checks::default()
    };
    csv_to_batch_with(columns, &checks, text, first_line, problems, max_problems)
}

/// Like [`csv_to_batch_checked`], with extra value rules (a value list per
/// column, for instance) checked in the same pass.
pub fn csv_to_batch_with(
    columns: &[&Column],
    checks: &Checks<'_>,
    text: &[u8],
    first_line: usize,
    problems: &mut Vec<Problem>,
    max_problems: usize,
) -> Result<(RecordBatch, u64), SndsError> {
    convert(columns, checks, text, first_line, |p| {
        if problems.len() < max_problems {
            problems.push(p);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, Date32Array, Int64Array};

    #[test]
    fn converts_dialect_and_nulls_sentinels() {
        let (t, _) = crate::schema::table("IR_IMB_R").unwrap();
        let cols = t.columns_for_year(2021);
        let names: Vec<_> = cols.iter().map(|c| c.name.as_str()).collect();
        let mut line = vec![""; cols.len()];
        let dtd = names.iter().position(|n| *n == "IMB_ALD_DTD").unwrap();
        let dtf = names.iter().position(|n| *n == "IMB_ALD_DTF").unwrap();
        let num = names.iter().position(|n| *n == "IMB_ALD_NUM").unwrap();
        line[dtd] = "15/03/2020";
        line[dtf] = "01/01/1600";
        line[num] = "8";
        let text = format!("{}\n", line.join(";"));
        let batch = csv_to_batch(&cols, text.as_bytes(), 2).unwrap();
        let d = batch
            .column(dtd)
            .as_any()
            .downcast_ref::<Date32Array>()
            .unwrap();
        assert_eq!(
            d.value(0),
            epoch_days(NaiveDate::from_ymd_opt(2020, 3, 15).unwrap())
        );
        assert!(batch.column(dtf).is_null(0));
        let n = batch
            .column(num)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(n.value(0), 8);
    }

    #[test]
    fn bad_value_names_line_column_and_value() {
        let (t, _) = crate::schema::table("IR_IMB_R").unwrap();
        let cols = t.columns_for_year(2021);
        let dtd = cols.iter().position(|c| c.name == "IMB_ALD_DTD").unwrap();
        let mut line = vec![""; cols.len()];
        line[dtd] = "2020-03-15";
        let err = csv_to_batch(&cols, format!("{}\n", line.join(";")).as_bytes(), 7)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 7") && err.contains("IMB_ALD_DTD") && err.contains("2020-03-15"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod checked_tests {
    use super::*;

    #[test]
    fn bad_lines_are_rejected_and_every_problem_reported() {
        let (t, _) = crate::schema::table("IR_IMB_R").unwrap();
        let cols = t.columns_for_year(2021);
        let pos = |n: &str| cols.iter().position(|c| c.name == n).unwrap();
        let mk = |dtd: &str, psa: &str| {
            let mut l = vec![""; cols.len()];
            l[pos("IMB_ALD_DTD")] = dtd;
            l[pos("BEN_NIR_PSA")] = psa;
            l.join(";")
        };
        let text = format!(
            "{}\n{}\n{}\n",
            mk("01/02/2020", "A"),
            mk("2020-02-01", "B"),
            mk("01/02/2020", "")
        );
        let mut problems = Vec::new();
        let (batch, rejected) = csv_to_batch_checked(
            &cols,
            &[pos("BEN_NIR_PSA")],
            text.as_bytes(),
            2,
            &mut problems,
            10,
        )
        .unwrap();
        assert_eq!((batch.num_rows(), rejected), (1, 2));
        assert_eq!(problems.len(), 2);
        assert_eq!(
            (
                problems[0].line,
                problems[0].column.as_str(),
                problems[0].value.as_str()
            ),
            (3, "IMB_ALD_DTD", "2020-02-01")
        );
        assert!(problems[0].rule.contains("dd/MM/yyyy"));
        assert_eq!(
            (problems[1].line, problems[1].column.as_str()),
            (4, "BEN_NIR_PSA")
        );
        assert!(problems[1].rule.contains("required"));
    }
}
