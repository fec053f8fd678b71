//! SNDS value lists (`*_V`) and referentials (`*_R`) vendored from `schema-snds`,
//! plus the CNAM drug referential `IR_PHA_R` (SCALPEL snapshot of 2017-09).
//!
//! The upstream CSVs are `;`-separated with a header; some quote every field.
//! [`Nomenclature::records`] hides those differences.

use std::collections::HashMap;

use serde::Deserialize;

use crate::SndsError;

/// A vendored nomenclature: its schema (column names) and its CSV content.
#[derive(Debug, Clone, Copy)]
pub struct Nomenclature {
    /// SNDS name (`IR_CIM_V`).
    pub name: &'static str,
    schema_json: &'static str,
    csv: &'static str,
}

macro_rules! nomenclature {
    ($name:literal) => {
        Nomenclature {
            name: $name,
            schema_json: include_str!(concat!("../vendor/nomenclatures/", $name, ".json")),
            csv: include_str!(concat!("../vendor/nomenclatures/", $name, ".csv")),
        }
    };
}

/// Every vendored nomenclature except `IR_PHA_R` (see [`drugs`]).
pub const NOMENCLATURES: &[Nomenclature] = &[
    nomenclature!("IR_CIM_V"),
    nomenclature!("IR_CCAM_V63"),
    nomenclature!("IR_NAT_V"),
    nomenclature!("IR_SPE_V"),
    nomenclature!("IR_DPT_V"),
    nomenclature!("IR_BIO_R"),
    nomenclature!("IR_NIR_V"),
    nomenclature!("IR_ALD_V"),
    nomenclature!("IR_ETM_V"),
    nomenclature!("IR_SEX_V"),
    nomenclature!("IR_AMA_V"),
];

const IR_PHA_R_SCHEMA: &str = include_str!("../vendor/nomenclatures/IR_PHA_R.json");
const IR_PHA_R_CSV: &str = include_str!("../vendor/nomenclatures/IR_PHA_R_2017-09_scalpel.csv");

#[derive(Deserialize)]
struct RawSchema {
    fields: Vec<RawField>,
    #[serde(default)]
    title: String,
}

#[derive(Deserialize)]
struct RawField {
    name: String,
    #[serde(default, rename = "type")]
    ty: String,
}

fn typed_columns(file: &'static str, json: &str) -> Result<Vec<crate::Column>, SndsError> {
    let raw: RawSchema = serde_json::from_str(json).map_err(|e| SndsError::Vendored {
        file,
        reason: e.to_string(),
    })?;
    Ok(raw
        .fields
        .into_iter()
        .map(|f| crate::Column {
            ty: match f.ty.as_str() {
                "integer" => crate::ColumnType::Integer,
                "number" => crate::ColumnType::Number,
                _ => crate::ColumnType::String,
            },
            name: f.name,
            description: String::new(),
            length: None,
            nomenclature: None,
            created: None,
            deleted: None,
        })
        .collect())
}

/// Typed columns of a referential (`IR_PHA_R` or any vendored nomenclature),
/// with its title, for loading it as a table.
pub fn referential_columns(name: &str) -> Result<(String, Vec<crate::Column>), SndsError> {
    if name.eq_ignore_ascii_case("IR_PHA_R") {
        let title = serde_json::from_str::<RawSchema>(IR_PHA_R_SCHEMA)
            .map(|s| s.title)
            .unwrap_or_default();
        return Ok((title, typed_columns("IR_PHA_R", IR_PHA_R_SCHEMA)?));
    }
    let n = Nomenclature::get(name)?;
    Ok((n.title(), typed_columns(n.name, n.schema_json)?))
}

impl Nomenclature {
    /// Look a nomenclature up by name.
    pub fn get(name: &str) -> Result<&'static Nomenclature, SndsError> {
        NOMENCLATURES
            .iter()
            .find(|n| n.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| SndsError::UnknownTable(name.to_string()))
    }

    /// Column names in schema order.
    pub fn columns(&self) -> Result<Vec<String>, SndsError> {
        schema_columns(self.name, self.schema_json)
    }

    /// French title.
    pub fn title(&self) -> String {
        serde_json::from_str::<RawSchema>(self.schema_json)
            .map(|s| s.title)
            .unwrap_or_default()
    }

    /// All rows, as strings, in schema column order.
    pub fn records(&self) -> Result<Vec<Vec<String>>, SndsError> {
        let columns = self.columns()?;
        read_csv(self.name, self.csv, &columns)
    }

    /// The set of codes (first schema column), e.g. every ICD-10 code.
    pub fn codes(&self) -> Result<std::collections::HashSet<String>, SndsError> {
        Ok(self
            .records()?
            .into_iter()
            .filter_map(|r| r.into_iter().next())
            .collect())
    }
}

fn schema_columns(file: &'static str, json: &str) -> Result<Vec<String>, SndsError> {
    let raw: RawSchema = serde_json::from_str(json).map_err(|e| SndsError::Vendored {
        file,
        reason: e.to_string(),
    })?;
    Ok(raw.fields.into_iter().map(|f| f.name).collect())
}

/// Reads a vendored CSV and reorders its fields to `columns` (missing → empty).
fn read_csv(
    file: &'static str,
    text: &str,
    columns: &[String],
) -> Result<Vec<Vec<String>>, SndsError> {
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(b';')
        .flexible(true)
        .from_reader(text.as_bytes());
    let bad = |e: csv::Error| SndsError::Vendored {
        file,
        reason: e.to_string(),
    };
    let header: Vec<String> = rdr
        .headers()
        .map_err(bad)?
        .iter()
        .map(str::to_string)
        .collect();
    let index: HashMap<&str, usize> = header
        .iter()
        .enumerate()
        .map(|(i, h)| (h.as_str(), i))
        .collect();
    let map: Vec<Option<usize>> = columns
        .iter()
        .map(|c| index.get(c.as_str()).copied())
        .collect();
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(bad)?;
        out.push(
            map.iter()
                .map(|i| i.and_then(|i| rec.get(i)).unwrap_or("").to_string())
                .collect(),
        );
    }
    Ok(out)
}

/// One CIP13 presentation of the drug referential.
#[derive(Debug, Clone)]
pub struct Drug {
    /// CIP13 code (`3400…`).
    pub cip13: u64,
    /// Short name.
    pub name: String,
    /// ATC level-5 code (`C10AA05`).
    pub atc7: String,
    /// Units per box.
    pub units: u32,
    /// Public price per box, in cents.
    pub price_cents: u32,
    /// Reimbursement rate in percent (15, 30, 65, 100).
    pub rate: u8,
    /// Still listed at the snapshot date.
    pub listed: bool,
}

/// The `IR_PHA_R` column names (76, schema order).
pub fn drug_columns() -> Result<Vec<String>, SndsError> {
    schema_columns("IR_PHA_R", IR_PHA_R_SCHEMA)
}

/// `IR_PHA_R` rows in schema order (columns absent from the snapshot are empty).
pub fn drug_records() -> Result<Vec<Vec<String>>, SndsError> {
    read_csv("IR_PHA_R", IR_PHA_R_CSV, &drug_columns()?)
}

/// The drug referential as typed records.
pub fn drugs() -> Result<Vec<Drug>, SndsError> {
    let cols = [
        "PHA_CIP_C13",
        "PHA_NOM_COURT",
        "PHA_ATC_C07",
        "PHA_UNT_NBR_DSES",
        "PHA_PRI_UNI",
        "PHA_TAU_COD",
        "PHA_INS_DTF",
    ]
    .map(String::from);
    let rows = read_csv("IR_PHA_R", IR_PHA_R_CSV, &cols)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let Ok(cip13) = r[0].parse::<u64>() else {
            continue;
        };
        out.push(Drug {
            cip13,
            name: r[1].clone(),
            atc7: r[2].clone(),
            units: r[3].parse().unwrap_or(1),
            price_cents: r[4].parse().unwrap_or(0),
            rate: r[5].parse().unwrap_or(65),
            listed: r[6] == "0",
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nomenclatures_parse_and_hold_known_codes() {
        let cim = Nomenclature::get("IR_CIM_V").unwrap().codes().unwrap();
        assert!(cim.contains("E11") && cim.contains("I214"));
        let ccam = Nomenclature::get("IR_CCAM_V63").unwrap().codes().unwrap();
        assert!(ccam.contains("NFKA007"));
        let bio = Nomenclature::get("IR_BIO_R").unwrap().codes().unwrap();
        assert!(bio.contains("1577"));
    }

    #[test]
    fn drug_referential_maps_cip13_to_atc() {
        let d = drugs().unwrap();
        assert!(d.len() > 20_000);
        assert!(d.iter().any(|x| x.atc7.starts_with("A10BA02") && x.listed));
        assert_eq!(drug_columns().unwrap().len(), 76);
        assert_eq!(drug_records().unwrap()[0].len(), 76);
    }
}
