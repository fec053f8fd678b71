//! The SNDS as PDS knows it: vendored table schemas, nomenclatures and the CNAM
//! extraction dialect.
//!
//! Everything here is compiled into the binary (`include_str!`), so no command
//! ever reads `../shared` or the network at run time. The data files come from
//! the public Health Data Hub `schema-snds` project and the SCALPEL drug
//! referential snapshot; see `vendor/PROVENANCE.md` for origins and licences.
//!
//! * [`schema`]: the SNDS table schemas (column names, order, types, lengths,
//!   value lists, the years each column exists) for the tables PDS handles.
//! * [`nomenclature`]: the value lists and referentials (`IR_PHA_R`, `IR_CIM_V`,
//!   `IR_CCAM_V63`, ...), as parsed records.
//! * [`dialect`]: how CNAM extraction files write values (`dd/MM/yyyy`, SAS
//!   datetimes, `01/01/1600` sentinels), both ways.
//! * [`identifiers`]: patient identifier columns and the SNDS potential
//!   identifiers (birth month, commune, exact dates).
//! * [`arrow`]: the Arrow type of each SNDS column and the conversion of one
//!   extraction-dialect CSV chunk into a typed `RecordBatch`.
#![forbid(unsafe_code)]

pub mod arrow;
pub mod dialect;
pub mod identifiers;
pub mod nomenclature;
pub mod schema;

pub use schema::{Column, ColumnType, Family, TableSchema, TableTemplate};

/// Errors raised while reading the vendored schemas or converting data.
#[derive(Debug, thiserror::Error)]
pub enum SndsError {
    /// The table name is not one PDS knows.
    #[error("unknown SNDS table `{0}`: PDS knows {known}", known = schema::TEMPLATES.iter().map(|t| t.name).collect::<Vec<_>>().join(", "))]
    UnknownTable(String),
    /// A vendored file could not be parsed (a build defect, not a user error).
    #[error("vendored file `{file}` is malformed: {reason}")]
    Vendored {
        /// The vendored file.
        file: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A value in an extraction file does not match its column type.
    #[error(
        "line {line}, column {column}: value `{value}`: {rule}; fix the extraction or the column type"
    )]
    BadValue {
        /// 1-based line number in the chunk (header = line 1).
        line: usize,
        /// Column name.
        column: String,
        /// The offending text.
        value: String,
        /// The rule it breaks, in words.
        rule: String,
    },
    /// A CSV chunk does not have the expected header or field count.
    #[error("malformed CSV: {0}")]
    Csv(String),
    /// Building an Arrow array failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
}
