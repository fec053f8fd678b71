//! SNDS table schemas (Frictionless Table Schema JSON from `schema-snds`).
//!
//! PMSI tables exist once per discharge year (`T_MCOaaB` is `T_MCO21B` for
//! 2021) and their columns change over the years; [`TableSchema::columns_for_year`]
//! gives the column list of one yearly variant, which is what an extraction of
//! that year contains.

use std::sync::OnceLock;

use serde::Deserialize;

use crate::SndsError;

/// Which SNDS product a table belongs to; drives file naming and date dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Out-of-hospital claims (`ER_*_F`), one file per care year.
    Dcir,
    /// Beneficiary referentials (`IR_BEN_R`, `IR_IMB_R`), one file.
    Beneficiary,
    /// PMSI MCO, one table per discharge year (`T_MCOaaX`).
    PmsiMco,
    /// Causes of death (CépiDc `KI_*`), one file.
    Deaths,
}

/// A vendored table schema, before any yearly variant is chosen.
#[derive(Debug, Clone, Copy)]
pub struct TableTemplate {
    /// Generic name (`T_MCOaaB` for PMSI tables).
    pub name: &'static str,
    /// Product family.
    pub family: Family,
    json: &'static str,
}

macro_rules! template {
    ($name:literal, $family:expr) => {
        TableTemplate {
            name: $name,
            family: $family,
            json: include_str!(concat!("../vendor/schemas/", $name, ".json")),
        }
    };
}

/// Every table schema PDS vendors.
pub const TEMPLATES: &[TableTemplate] = &[
    template!("IR_BEN_R", Family::Beneficiary),
    template!("IR_IMB_R", Family::Beneficiary),
    template!("ER_PRS_F", Family::Dcir),
    template!("ER_PHA_F", Family::Dcir),
    template!("ER_BIO_F", Family::Dcir),
    template!("ER_CAM_F", Family::Dcir),
    template!("ER_ETE_F", Family::Dcir),
    template!("T_MCOaaB", Family::PmsiMco),
    template!("T_MCOaaC", Family::PmsiMco),
    template!("T_MCOaaD", Family::PmsiMco),
    template!("T_MCOaaA", Family::PmsiMco),
    template!("T_MCOaaE", Family::PmsiMco),
    template!("KI_CCI_R", Family::Deaths),
    template!("KI_ECD_R", Family::Deaths),
];

/// How a column's values are written in an extraction file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// Free text or code.
    String,
    /// Whole number (also codes stored as numbers).
    Integer,
    /// Decimal number, `.` as separator.
    Number,
    /// PMSI return codes and flags, written `0`/`1` (kept as text).
    Boolean,
    /// DCIR-style date `dd/MM/yyyy`, `01/01/1600` when missing.
    Date,
    /// SAS datetime `ddMMMyyyy:HH:mm:ss` (PMSI).
    SasDateTime,
    /// Compact date `ddmmyyyy` (PMSI `ENT_DAT`, `SOR_DAT`).
    CompactDate,
    /// Year `yyyy`, `1600` when unknown.
    Year,
    /// Year and month `yyyyMM`.
    YearMonth,
    /// Month `MM`.
    Month,
}

/// One column of an SNDS table.
#[derive(Debug, Clone)]
pub struct Column {
    /// Exact SNDS column name.
    pub name: String,
    /// French description from the schema.
    pub description: String,
    /// Value type and dialect.
    pub ty: ColumnType,
    /// Declared length (`"9"`, or `"4,2"` for numbers), as written upstream.
    pub length: Option<String>,
    /// Value list or referential (`IR_NAT_V`), if any.
    pub nomenclature: Option<String>,
    /// First year the column exists.
    pub created: Option<u16>,
    /// Year the column was removed, if it was.
    pub deleted: Option<u16>,
}

impl Column {
    /// Whether the column exists in extractions of `year`.
    pub fn exists_in(&self, year: u16) -> bool {
        self.created.is_none_or(|c| c <= year) && self.deleted.is_none_or(|d| d > year)
    }
}

/// A parsed SNDS table schema.
#[derive(Debug, Clone)]
pub struct TableSchema {
    /// Generic name (`T_MCOaaB`).
    pub name: &'static str,
    /// French title.
    pub title: String,
    /// Product family.
    pub family: Family,
    /// All columns ever defined, in schema order.
    pub columns: Vec<Column>,
    /// Declared primary key.
    pub primary_key: Vec<String>,
}

impl TableSchema {
    /// The columns of the table as extracted for `year` (schema order).
    ///
    /// Tables other than PMSI are not split per year upstream, but their
    /// columns also carry creation/deletion years, so the same rule applies.
    pub fn columns_for_year(&self, year: u16) -> Vec<&Column> {
        self.columns.iter().filter(|c| c.exists_in(year)).collect()
    }

    /// The concrete table name for a year: `T_MCOaaB` → `T_MCO21B`.
    pub fn name_for_year(&self, year: u16) -> String {
        concrete_name(self.name, year)
    }

    /// Columns that must never be empty: the primary key, or for tables
    /// without one the identifiers listed in [`REQUIRED_WITHOUT_KEY`].
    pub fn required_columns(&self) -> Vec<&str> {
        if !self.primary_key.is_empty() {
            return self.primary_key.iter().map(String::as_str).collect();
        }
        REQUIRED_WITHOUT_KEY
            .iter()
            .find(|r| r.0 == self.name)
            .map(|r| r.1.to_vec())
            .unwrap_or_default()
    }

    /// Index of a column in [`Self::columns_for_year`].
    pub fn position(&self, year: u16, column: &str) -> Option<usize> {
        self.columns_for_year(year)
            .iter()
            .position(|c| c.name == column)
    }
}

/// `T_MCOaaB` + 2021 → `T_MCO21B`; other names unchanged.
pub fn concrete_name(generic: &str, year: u16) -> String {
    generic.replacen("aa", &format!("{:02}", year % 100), 1)
}

#[derive(Deserialize)]
struct RawSchema {
    #[serde(default)]
    title: String,
    fields: Vec<RawField>,
    #[serde(default, rename = "primaryKey")]
    primary_key: PrimaryKey,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum PrimaryKey {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RawField {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    length: Option<serde_json::Value>,
    #[serde(default)]
    nomenclature: Option<String>,
    #[serde(default, rename = "dateCreated")]
    created: Option<serde_json::Value>,
    #[serde(default, rename = "dateDeleted")]
    deleted: Option<serde_json::Value>,
}

fn year_of(v: &Option<serde_json::Value>) -> Option<u16> {
    let s = match v.as_ref()? {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return None,
    };
    s.get(..4)?.parse().ok()
}

fn parse(t: &TableTemplate) -> Result<TableSchema, SndsError> {
    let raw: RawSchema = serde_json::from_str(t.json).map_err(|e| SndsError::Vendored {
        file: t.name,
        reason: e.to_string(),
    })?;
    let mut columns = Vec::with_capacity(raw.fields.len());
    for f in raw.fields {
        let ty = match (f.ty.as_str(), f.format.as_deref().unwrap_or("default")) {
            ("string", _) => ColumnType::String,
            ("integer", _) => ColumnType::Integer,
            ("number", _) => ColumnType::Number,
            ("boolean", _) => ColumnType::Boolean,
            ("date", "%m") => ColumnType::Month,
            ("date", "%d%m%Y") => ColumnType::CompactDate,
            ("date", _) => ColumnType::Date,
            ("datetime", _) => ColumnType::SasDateTime,
            ("year", _) => ColumnType::Year,
            ("yearmonth", _) => ColumnType::YearMonth,
            (other, fmt) => {
                return Err(SndsError::Vendored {
                    file: t.name,
                    reason: format!("column {} has unsupported type {other}/{fmt}", f.name),
                });
            }
        };
        let ty = TYPE_OVERRIDES
            .iter()
            .find(|o| o.0 == f.name)
            .map_or(ty, |o| o.1);
        let f_length = match LENGTH_OVERRIDES.iter().find(|o| o.0 == f.name) {
            Some(o) => Some(serde_json::Value::String(o.1.to_string())),
            None => f.length,
        };
        let length = match f_length {
            Some(serde_json::Value::String(s)) if !s.is_empty() && s != "None" => Some(s),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let nomenclature = f.nomenclature.filter(|n| !n.is_empty() && n != "-");
        columns.push(Column {
            name: f.name,
            description: f.description,
            ty,
            length,
            nomenclature,
            created: year_of(&f.created),
            deleted: year_of(&f.deleted),
        });
    }
    let primary_key = match raw.primary_key {
        PrimaryKey::None => vec![],
        PrimaryKey::One(s) => vec![s],
        PrimaryKey::Many(v) => v,
    };
    Ok(TableSchema {
        name: t.name,
        title: raw.title,
        family: t.family,
        columns,
        primary_key,
    })
}

/// Columns whose upstream type is wrong for real extractions, with the type
/// PDS uses instead and why. The Health Data Hub schema is known to be
/// approximate; each override is a fact about real files.
pub const TYPE_OVERRIDES: &[(&str, ColumnType, &str)] = &[(
    "ETA_NUM",
    ColumnType::String,
    "FINESS numbers are 9-character codes: Corsican ones start with 2A/2B and others with 0 (Ain: 01...), which an integer would lose",
)];

/// Declared lengths that real extractions exceed, with the length PDS checks.
pub const LENGTH_OVERRIDES: &[(&str, &str, &str)] = &[(
    "BEN_IDT_ANO",
    "18",
    "BEN_IDT_ANO is BEN_NIR_PSA (17) followed by BEN_RNG_GEM when the NIR is unknown: 18 characters (KI_CCI_R declares 18)",
)];

/// The nine keys that join a DCIR claim line (`ER_PRS_F`) to its
/// refinement tables (`ER_PHA_F`, `ER_BIO_F`, `ER_CAM_F`, `ER_ETE_F`, ...).
pub const DCIR_JOIN_KEYS: [&str; 9] = [
    "FLX_DIS_DTD",
    "FLX_TRT_DTD",
    "FLX_EMT_TYP",
    "FLX_EMT_NUM",
    "FLX_EMT_ORD",
    "ORG_CLE_NUM",
    "DCT_ORD_NUM",
    "PRS_ORD_NUM",
    "REM_TYP_AFF",
];

/// The prestation key PDS adds at load to `ER_PRS_F` and every refinement
/// table: a 126-bit digest (truncated SHA-256) of the eight join keys other
/// than the flow date `FLX_DIS_DTD`, null when any of them is null. Two lines
/// have the same key exactly when their eight keys are equal (up to a
/// collision of truncated SHA-256, about 10^-19 for 10^10 prestations), so
/// the optimizer can join on it instead of the eight columns.
pub const PRESTATION_KEY: &str = "PDS_PRS_KEY";

/// Catalogue description of [`PRESTATION_KEY`].
pub const PRESTATION_KEY_DESCRIPTION: &str = "Clé de prestation calculée par PDS au chargement (empreinte des 8 clés de jointure DCIR hors FLX_DIS_DTD); jointure plus rapide, mêmes résultats";

/// Identifier columns that must never be empty, for tables whose schema
/// declares no primary key (a row without them cannot be linked).
pub const REQUIRED_WITHOUT_KEY: &[(&str, &[&str])] = &[
    ("IR_IMB_R", &["BEN_NIR_PSA", "BEN_RNG_GEM"]),
    ("T_MCOaaD", &["ETA_NUM", "RSA_NUM"]),
    ("T_MCOaaA", &["ETA_NUM", "RSA_NUM"]),
    ("KI_CCI_R", &["DCD_IDT_ENC", "BEN_IDT_ANO"]),
    ("KI_ECD_R", &["DCD_IDT_ENC", "BEN_IDT_ANO"]),
];

static PARSED: OnceLock<Result<Vec<TableSchema>, String>> = OnceLock::new();

/// All vendored table schemas, parsed once.
pub fn all() -> Result<&'static [TableSchema], SndsError> {
    let parsed = PARSED.get_or_init(|| {
        TEMPLATES
            .iter()
            .map(parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())
    });
    match parsed {
        Ok(v) => Ok(v),
        Err(reason) => Err(SndsError::Vendored {
            file: "schemas",
            reason: reason.clone(),
        }),
    }
}

/// Look a table up by generic (`T_MCOaaB`) or concrete (`T_MCO21B`) name.
///
/// Returns the schema and, for a concrete PMSI name, the year it designates.
pub fn table(name: &str) -> Result<(&'static TableSchema, Option<u16>), SndsError> {
    let upper = name.to_ascii_uppercase();
    for t in all()? {
        if t.name.eq_ignore_ascii_case(&upper) {
            return Ok((t, None));
        }
        if let Some(idx) = t.name.find("aa") {
            let (pre, post) = (&t.name[..idx], &t.name[idx + 2..]);
            if upper.len() == t.name.len() && upper.starts_with(pre) && upper.ends_with(post) {
                let yy = &upper[idx..idx + 2];
                if let Ok(yy) = yy.parse::<u16>() {
                    return Ok((t, Some(2000 + yy)));
                }
            }
        }
    }
    Err(SndsError::UnknownTable(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vendored_schema_parses_with_its_key_columns() {
        let all = all().expect("vendored schemas parse");
        assert_eq!(all.len(), TEMPLATES.len());
        let (prs, _) = table("ER_PRS_F").unwrap();
        assert_eq!(prs.columns.len(), 123);
        assert_eq!(prs.primary_key.len(), 9);
        assert_eq!(prs.columns[0].name, "BEN_AMA_COD");
    }

    #[test]
    fn pmsi_yearly_variant_drops_deleted_columns() {
        let (b, year) = table("T_MCO21B").unwrap();
        assert_eq!(year, Some(2021));
        assert_eq!(b.name_for_year(2021), "T_MCO21B");
        let cols: Vec<_> = b
            .columns_for_year(2021)
            .iter()
            .map(|c| c.name.clone())
            .collect();
        assert!(cols.contains(&"DGN_PAL".to_string()));
        // COD_IGS existed 2005→2010 only.
        assert!(!cols.contains(&"COD_IGS".to_string()));
        assert!(b.columns_for_year(2008).iter().any(|c| c.name == "COD_IGS"));
    }

    #[test]
    fn unknown_table_error_names_the_known_ones() {
        let err = table("ER_XXX_F").unwrap_err().to_string();
        assert!(
            err.contains("ER_XXX_F") && err.contains("ER_PRS_F"),
            "{err}"
        );
    }
}
