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

enum Builder {
    Str(StringBuilder),
    I64(Int64Builder),
    F64(Float64Builder),
    Date(Date32Builder),
    Ts(TimestampSecondBuilder),
    I32(Int32Builder),
}

/// Converts `;`-separated, header-less extraction text into a batch.
///
/// Empty fields and date sentinels become nulls. `first_line` numbers the
/// lines in error messages.
pub fn csv_to_batch(
    columns: &[&Column],
    text: &[u8],
    first_line: usize,
) -> Result<RecordBatch, SndsError> {
    let schema = arrow_schema(columns);
    let mut builders: Vec<Builder> = columns
        .iter()
        .map(|c| match arrow_type(c.ty) {
            DataType::Utf8 => Builder::Str(StringBuilder::new()),
            DataType::Int64 => Builder::I64(Int64Builder::new()),
            DataType::Float64 => Builder::F64(Float64Builder::new()),
            DataType::Date32 => Builder::Date(Date32Builder::new()),
            DataType::Timestamp(..) => Builder::Ts(TimestampSecondBuilder::new()),
            _ => Builder::I32(Int32Builder::new()),
        })
        .collect();
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(b';')
        .has_headers(false)
        .from_reader(text);
    for (i, rec) in rdr.records().enumerate() {
        let line = first_line + i;
        let rec = rec.map_err(|e| SndsError::Csv(format!("line {line}: {e}")))?;
        if rec.len() != columns.len() {
            return Err(SndsError::Csv(format!(
                "line {line}: {} fields, the schema has {} columns",
                rec.len(),
                columns.len()
            )));
        }
        for ((field, col), b) in rec.iter().zip(columns).zip(builders.iter_mut()) {
            let bad = |expected: &str| SndsError::BadValue {
                line,
                column: col.name.clone(),
                value: field.to_string(),
                expected: expected.to_string(),
            };
            if field.is_empty() {
                match b {
                    Builder::Str(b) => b.append_null(),
                    Builder::I64(b) => b.append_null(),
                    Builder::F64(b) => b.append_null(),
                    Builder::Date(b) => b.append_null(),
                    Builder::Ts(b) => b.append_null(),
                    Builder::I32(b) => b.append_null(),
                }
                continue;
            }
            match b {
                Builder::Str(b) => b.append_value(field),
                Builder::I64(b) => b.append_value(field.parse().map_err(|_| bad("integer"))?),
                Builder::F64(b) => {
                    b.append_value(field.parse().map_err(|_| bad("decimal number"))?)
                }
                Builder::Date(b) => {
                    let parsed = if col.ty == ColumnType::CompactDate {
                        dialect::parse_compact_date(field).ok_or_else(|| bad("date ddmmyyyy"))?
                    } else {
                        dialect::parse_date(field).ok_or_else(|| bad("date dd/MM/yyyy"))?
                    };
                    b.append_option(parsed.map(epoch_days));
                }
                Builder::Ts(b) => {
                    let parsed = dialect::parse_sas_datetime(field)
                        .ok_or_else(|| bad("SAS datetime ddMMMyyyy:HH:mm:ss"))?;
                    b.append_option(parsed.map(|dt| dt.and_utc().timestamp()));
                }
                Builder::I32(b) => {
                    let v: i32 = field
                        .parse()
                        .map_err(|_| bad("year, year-month or month number"))?;
                    b.append_option(
                        (!(col.ty == ColumnType::Year && v == dialect::SENTINEL_YEAR)).then_some(v),
                    );
                }
            }
        }
    }
    let arrays: Vec<ArrayRef> = builders
        .into_iter()
        .map(|b| -> ArrayRef {
            match b {
                Builder::Str(mut b) => Arc::new(b.finish()),
                Builder::I64(mut b) => Arc::new(b.finish()),
                Builder::F64(mut b) => Arc::new(b.finish()),
                Builder::Date(mut b) => Arc::new(b.finish()),
                Builder::Ts(mut b) => Arc::new(b.finish()),
                Builder::I32(mut b) => Arc::new(b.finish()),
            }
        })
        .collect();
    Ok(RecordBatch::try_new(schema, arrays)?)
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

fn check_value(col: &Column, field: &str) -> Result<(), String> {
    if field.is_empty() {
        return Ok(());
    }
    let ok = match col.ty {
        ColumnType::String | ColumnType::Boolean => {
            match col.length.as_deref().and_then(|l| l.parse::<usize>().ok()) {
                Some(max) if field.chars().count() > max => {
                    return Err(format!("text longer than {max} characters"));
                }
                _ => true,
            }
        }
        ColumnType::Integer => field.parse::<i64>().is_ok(),
        ColumnType::Number => field.parse::<f64>().is_ok_and(f64::is_finite),
        ColumnType::Date => dialect::parse_date(field).is_some(),
        ColumnType::CompactDate => dialect::parse_compact_date(field).is_some(),
        ColumnType::SasDateTime => dialect::parse_sas_datetime(field).is_some(),
        ColumnType::Year => field.len() == 4 && field.parse::<i32>().is_ok(),
        ColumnType::YearMonth => {
            field.len() == 6
                && field.parse::<i32>().is_ok()
                && field[4..]
                    .parse::<u32>()
                    .is_ok_and(|m| (1..=12).contains(&m))
        }
        ColumnType::Month => field.parse::<u32>().is_ok_and(|m| (1..=12).contains(&m)),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("not a valid {}", expected_words(col.ty)))
    }
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

/// Like [`csv_to_batch`], but checks every value (type, length, required
/// columns) and, instead of stopping at the first problem, rejects the bad
/// lines and reports each problem. At most `max_problems` are reported.
pub fn csv_to_batch_checked(
    columns: &[&Column],
    required: &[usize],
    text: &[u8],
    first_line: usize,
    problems: &mut Vec<Problem>,
    max_problems: usize,
) -> Result<(RecordBatch, u64), SndsError> {
    let mut good: Vec<u8> = Vec::with_capacity(text.len());
    let mut rejected = 0u64;
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(b';')
        .has_headers(false)
        .flexible(true)
        .from_reader(text);
    let mut rec = csv::ByteRecord::new();
    let mut line = first_line;
    let mut w = csv::WriterBuilder::new()
        .delimiter(b';')
        .from_writer(&mut good);
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(SndsError::Csv(format!("line {line}: {e}"))),
        }
        let mut bad = false;
        let mut push = |p: Problem, problems: &mut Vec<Problem>| {
            bad = true;
            if problems.len() < max_problems {
                problems.push(p);
            }
        };
        if rec.len() != columns.len() {
            push(
                Problem {
                    line,
                    column: "(line)".into(),
                    value: format!("{} fields", rec.len()),
                    rule: format!("every line has the header's {} fields", columns.len()),
                },
                problems,
            );
        } else {
            for (i, (raw, col)) in rec.iter().zip(columns).enumerate() {
                let Ok(field) = std::str::from_utf8(raw) else {
                    push(
                        Problem {
                            line,
                            column: col.name.clone(),
                            value: String::from_utf8_lossy(raw).into_owned(),
                            rule: "text must be UTF-8".into(),
                        },
                        problems,
                    );
                    continue;
                };
                if field.is_empty() && required.contains(&i) {
                    push(
                        Problem {
                            line,
                            column: col.name.clone(),
                            value: String::new(),
                            rule: "required key column is empty".into(),
                        },
                        problems,
                    );
                } else if let Err(rule) = check_value(col, field) {
                    push(
                        Problem {
                            line,
                            column: col.name.clone(),
                            value: field.to_string(),
                            rule,
                        },
                        problems,
                    );
                }
            }
        }
        if bad {
            rejected += 1;
        } else {
            w.write_byte_record(&rec)
                .map_err(|e| SndsError::Csv(e.to_string()))?;
        }
        line += 1;
    }
    w.flush().map_err(|e| SndsError::Csv(e.to_string()))?;
    drop(w);
    Ok((csv_to_batch(columns, &good, first_line)?, rejected))
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
