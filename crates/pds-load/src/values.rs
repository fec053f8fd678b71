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

use std::collections::HashMap;

use crate::LoadError;

/// The checked columns and their referential.
pub const CHECKED: &[(&str, &str)] = &[
    ("BEN_SEX_COD", "IR_SEX_V"),
    ("BEN_CDI_NIR", "IR_NIR_V"),
    ("BEN_RES_DPT", "IR_DPT_V"),
    ("PRS_NAT_REF", "IR_NAT_V"),
    ("PSE_SPE_COD", "IR_SPE_V"),
];

/// A set of codes with numeric normalisation. Sorted vectors, not hash
/// sets: lists are small (at most a few thousand codes) and a binary search
/// beats hashing the value on every one of millions of lines.
#[derive(Debug, Default, Clone)]
pub struct CodeSet {
    text: Vec<String>,
    numbers: Vec<i64>,
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
                s.numbers.push(n);
            }
            s.text.push(c);
        }
        s.text.sort_unstable();
        s.text.dedup();
        s.numbers.sort_unstable();
        s.numbers.dedup();
        s
    }

    fn contains_str(&self, v: &str) -> bool {
        match as_number(v) {
            Some(n) => self.numbers.binary_search(&n).is_ok(),
            None => self.text.binary_search_by(|c| c.as_str().cmp(v)).is_ok(),
        }
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

    /// The list a column is checked against, if any.
    pub fn for_column(&self, column: &str) -> Option<&CodeSet> {
        self.by_column.get(column)
    }
}

impl pds_snds::arrow::ValueRule for CodeSet {
    fn violation(&self, value: &str) -> Option<String> {
        (!self.contains_str(value)).then(|| {
            format!(
                "code not in {}; correct the value, or if the code is new, add the current referential file to the delivery",
                self.source
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pds_snds::arrow::ValueRule;

    #[test]
    fn numeric_codes_compare_as_numbers_and_unknown_codes_are_named() {
        let lists = ValueLists::new(&HashMap::new()).unwrap();
        let dpt = lists.for_column("BEN_RES_DPT").unwrap();
        assert_eq!(dpt.violation("075"), None);
        assert_eq!(dpt.violation("75"), None);
        let rule = dpt.violation("ZZZ").unwrap();
        assert!(rule.contains("IR_DPT_V (vendored)"), "{rule}");
        let sex = lists.for_column("BEN_SEX_COD").unwrap();
        assert_eq!(sex.violation("2"), None);
        assert!(sex.violation("7").is_some());
        assert!(lists.for_column("PRS_PAI_MNT").is_none());
    }

    #[test]
    fn a_delivered_referential_replaces_the_vendored_one() {
        let delivered = HashMap::from([(
            "IR_SEX_V".to_string(),
            vec!["1".into(), "2".into(), "7".into()],
        )]);
        let lists = ValueLists::new(&delivered).unwrap();
        let sex = lists.for_column("BEN_SEX_COD").unwrap();
        assert_eq!(sex.violation("7"), None);
        let rule = sex.violation("8").unwrap();
        assert!(rule.contains("IR_SEX_V of this delivery"), "{rule}");
    }
}
