//! Value-list checks: coded columns whose value must exist in an SNDS
//! referential.
//!
//! Only closed, slowly changing lists are checked, so that a genuine CNAM
//! delivery is not rejected for a code newer than the vendored referential:
//!
//! | column | tables | referential |
//! |---|---|---|
//! | `BEN_SEX_COD` | ER_PRS_F, IR_BEN_R, KI_CCI_R | IR_SEX_V |
//! | `BEN_CDI_NIR` | ER_PRS_F, IR_BEN_R | IR_NIR_V |
//! | `BEN_RES_DPT` | ER_PRS_F, IR_BEN_R, KI_CCI_R | IR_DPT_V |
//! | `PRS_NAT_REF` | ER_PRS_F | IR_NAT_V |
//! | `PSE_SPE_COD` | ER_PRS_F | IR_SPE_V |
//!
//! When the delivery itself carries the referential (`IR_NAT_V.csv`, ...),
//! its codes are used instead of the vendored copy: the delivery is the
//! authority on its own codes. Codes made only of digits compare as numbers
//! (`075` = `75`), because the CNAM extraction writes numeric codes without
//! their leading zeros in some tables.
//!
//! Not checked, and why: ICD-10 (PMSI uses ATIH's CIM-10 FR with national
//! extensions missing from IR_CIM_V), CCAM and CIP13 (versions change every
//! few months), organism and establishment numbers (open lists).

use std::collections::{HashMap, HashSet};

use arrow_array::{Array, Int64Array, RecordBatch, StringArray};
use pds_snds::arrow::Problem;

use crate::LoadError;

/// The checked columns and their referential.
pub const CHECKED: &[(&str, &str)] = &[
    ("BEN_SEX_COD", "IR_SEX_V"),
    ("BEN_CDI_NIR", "IR_NIR_V"),
    ("BEN_RES_DPT", "IR_DPT_V"),
    ("PRS_NAT_REF", "IR_NAT_V"),
    ("PSE_SPE_COD", "IR_SPE_V"),
];

/// A set of codes with numeric normalisation.
#[derive(Debug, Default, Clone)]
pub struct CodeSet {
    text: HashSet<String>,
    numbers: HashSet<i64>,
    /// Where the codes came from (for the message).
    pub source: String,
}

impl CodeSet {
    /// Builds a set from codes.
    pub fn new(codes: impl IntoIterator<Item = String>, source: &str) -> CodeSet {
        let mut s = CodeSet {
            source: source.to_string(),
            ..CodeSet::default()
        };
        for c in codes {
            if let Some(n) = as_number(&c) {
                s.numbers.insert(n);
            }
            s.text.insert(c);
        }
        s
    }

    fn contains_str(&self, v: &str) -> bool {
        self.text.contains(v) || as_number(v).is_some_and(|n| self.numbers.contains(&n))
    }
}

fn as_number(s: &str) -> Option<i64> {
    if !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// The value lists used by one load.
#[derive(Debug, Default, Clone)]
pub struct ValueLists {
    by_column: HashMap<String, CodeSet>,
}

impl ValueLists {
    /// The vendored referentials, overridden by the ones the delivery
    /// carries (`delivered`: referential name → its codes).
    pub fn new(delivered: &HashMap<String, Vec<String>>) -> Result<ValueLists, LoadError> {
        let mut by_column = HashMap::new();
        for (column, referential) in CHECKED {
            let set = match delivered.get(*referential) {
                Some(codes) => CodeSet::new(
                    codes.iter().cloned(),
                    &format!("{referential} of this delivery"),
                ),
                None => {
                    let n = pds_snds::nomenclature::Nomenclature::get(referential)?;
                    CodeSet::new(n.codes()?, &format!("{referential} (vendored)"))
                }
            };
            by_column.insert(column.to_string(), set);
        }
        Ok(ValueLists { by_column })
    }

    /// Whether any column of `columns` is checked.
    pub fn applies_to(&self, columns: &[&pds_snds::Column]) -> bool {
        columns.iter().any(|c| self.by_column.contains_key(&c.name))
    }

    /// Checks `batch` whose row `i` came from line `first_line + i`, adding
    /// at most `room` problems. Returns how many rows break a list.
    pub fn check(
        &self,
        batch: &RecordBatch,
        first_line: usize,
        problems: &mut Vec<Problem>,
        room: usize,
    ) -> u64 {
        let mut bad_rows = HashSet::new();
        let schema = batch.schema();
        for (i, field) in schema.fields().iter().enumerate() {
            let Some(set) = self.by_column.get(field.name()) else {
                continue;
            };
            let col = batch.column(i);
            let mut report = |row: usize, value: String| {
                bad_rows.insert(row);
                if problems.len() < room {
                    problems.push(Problem {
                        line: first_line + row,
                        column: field.name().clone(),
                        value,
                        rule: format!(
                            "code not in {}; correct the value, or if the code is new, add the current referential file to the delivery",
                            set.source
                        ),
                    });
                }
            };
            if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
                for r in 0..a.len() {
                    if a.is_valid(r) && !set.contains_str(a.value(r)) {
                        report(r, a.value(r).to_string());
                    }
                }
            } else if let Some(a) = col.as_any().downcast_ref::<Int64Array>() {
                for r in 0..a.len() {
                    if a.is_valid(r) && !set.numbers.contains(&a.value(r)) {
                        report(r, a.value(r).to_string());
                    }
                }
            }
        }
        bad_rows.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn numeric_codes_compare_as_numbers_and_unknown_codes_are_reported() {
        let lists = ValueLists::new(&HashMap::new()).unwrap();
        let schema = Arc::new(arrow_schema::Schema::new(vec![
            arrow_schema::Field::new("BEN_RES_DPT", arrow_schema::DataType::Utf8, true),
            arrow_schema::Field::new("BEN_SEX_COD", arrow_schema::DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![
                    Some("075"),
                    Some("75"),
                    Some("ZZZ"),
                    None,
                ])),
                Arc::new(Int64Array::from(vec![Some(1), Some(2), Some(2), Some(7)])),
            ],
        )
        .unwrap();
        let mut problems = vec![];
        let bad = lists.check(&batch, 10, &mut problems, 100);
        assert_eq!(bad, 2);
        let got: Vec<(usize, &str, &str)> = problems
            .iter()
            .map(|p| (p.line, p.column.as_str(), p.value.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![(12, "BEN_RES_DPT", "ZZZ"), (13, "BEN_SEX_COD", "7")]
        );
        assert!(problems[0].rule.contains("IR_DPT_V (vendored)"));
    }

    #[test]
    fn a_delivered_referential_replaces_the_vendored_one() {
        let delivered = HashMap::from([(
            "IR_SEX_V".to_string(),
            vec!["1".into(), "2".into(), "7".into()],
        )]);
        let lists = ValueLists::new(&delivered).unwrap();
        let schema = Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
            "BEN_SEX_COD",
            arrow_schema::DataType::Int64,
            true,
        )]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![7, 8]))]).unwrap();
        let mut problems = vec![];
        assert_eq!(lists.check(&batch, 2, &mut problems, 100), 1);
        assert_eq!(problems[0].value, "8");
        assert!(problems[0].rule.contains("IR_SEX_V of this delivery"));
    }
}
