//! Which SNDS columns identify a person, directly or potentially.
//!
//! * [`PATIENT_ID_COLUMNS`] hold a patient pseudonym: the loader replaces
//!   them by platform pseudonyms, and a project sees them only through its
//!   own pseudonymisation key.
//! * [`PotentialIdentifier`] classifies the *potential* identifiers the SNDS
//!   names (documentation `glossaire/IdPotentiels.md`): year and month of
//!   birth, commune of residence, exact date of care, exact date of death,
//!   commune of death. A project may see at most one of them at full
//!   precision; the others must be coarsened.

use crate::schema::ColumnType;

/// Columns that hold patient identifiers, in any SNDS table.
pub const PATIENT_ID_COLUMNS: &[&str] = &[
    "BEN_NIR_PSA",
    "NIR_ANO_17",
    "BEN_IDT_ANO",
    "BEN_NIR_ANO",
    "ASS_NIR_ANO",
    "NIR_ANO_MAM",
    "NUM_ENQ",
    "NUM_ENQ_ANO",
    "NUM_ENQ_IDT",
    "DCD_IDT_ENC",
];

/// The column the loader stores beside identifier column `column`: the
/// identifier's *number*, a dense 64-bit integer assigned per snapshot
/// (`PDS_BEN_NIR_PSA_ID` beside `BEN_NIR_PSA`). Every identifier column of
/// a snapshot shares one numbering, so two identifiers are equal exactly
/// when their numbers are. Numbers are internal: the catalogue does not
/// list these columns, so no perimeter can grant them, and the gate maps
/// a number back to its identifier (and on to the project pseudonym)
/// wherever a value is read.
pub fn number_column(column: &str) -> String {
    format!("{NUMBER_PREFIX}{column}{NUMBER_SUFFIX}")
}

/// The identifier column whose number `column` holds, if it is one
/// ([`number_column`]).
pub fn numbered_column(column: &str) -> Option<&str> {
    let id = column
        .strip_prefix(NUMBER_PREFIX)?
        .strip_suffix(NUMBER_SUFFIX)?;
    is_patient_id(id).then_some(id)
}

const NUMBER_PREFIX: &str = "PDS_";
const NUMBER_SUFFIX: &str = "_ID";

/// Where, under a snapshot's storage prefix, the loader writes the
/// dictionary of identifier numbers: one encrypted Parquet file, row `n`
/// holding number `n` ([`DICTIONARY_NUMBER`]) and the stored identifier it
/// stands for ([`DICTIONARY_VALUE`]).
pub const DICTIONARY_PATH: &str = "_pds/identifiers.parquet";
/// The number column of the dictionary.
pub const DICTIONARY_NUMBER: &str = "PDS_ID";
/// The identifier column of the dictionary.
pub const DICTIONARY_VALUE: &str = "VALUE";

/// PMSI markers written in place of an identifier that could not be
/// computed; they are not identifiers and are never pseudonymised, so the
/// standard quality filters keep working.
pub const PSEUDONYM_ERROR_MARKERS: &[&str] = &[
    "xxxxxxxxxxxxxxxxx",
    "XXXXXXXXXXXXXXXXD",
    "XXXXXXXXXXXXXXXXS",
];

/// Whether `column` holds a patient identifier.
pub fn is_patient_id(column: &str) -> bool {
    PATIENT_ID_COLUMNS.contains(&column)
}

/// The potential identifiers of the SNDS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PotentialIdentifier {
    /// Month of birth (with the year, it is the birth date the SNDS knows);
    /// also the age in days of infants.
    BirthMonth,
    /// Commune (or postal code) of residence.
    ResidenceCommune,
    /// Exact (day) date of care, admission, discharge or dispensing.
    CareDate,
    /// Exact (day) date of death.
    DeathDate,
    /// Commune of death.
    DeathCommune,
}

impl PotentialIdentifier {
    /// All of them, in a stable order.
    pub const ALL: [PotentialIdentifier; 5] = [
        PotentialIdentifier::BirthMonth,
        PotentialIdentifier::ResidenceCommune,
        PotentialIdentifier::CareDate,
        PotentialIdentifier::DeathDate,
        PotentialIdentifier::DeathCommune,
    ];

    /// How users name it (in perimeter files and errors).
    pub fn label(self) -> &'static str {
        match self {
            PotentialIdentifier::BirthMonth => "month of birth",
            PotentialIdentifier::ResidenceCommune => "commune of residence",
            PotentialIdentifier::CareDate => "exact date of care",
            PotentialIdentifier::DeathDate => "exact date of death",
            PotentialIdentifier::DeathCommune => "commune of death",
        }
    }
}

/// Flow dates are technical keys of the nine-key DCIR join (month of the
/// flow, processing date), not care dates; coarsening them would create
/// false matches between claims.
const FLOW_KEYS: &[&str] = &["FLX_DIS_DTD", "FLX_TRT_DTD"];

/// The potential identifier a column carries at full precision, if any.
///
/// `ty` is the column's SNDS type: every day-precision date that is not a
/// flow key or a death date is treated as a care date (admission, discharge,
/// dispensing, ALD start, ...), because any exact date of a health event
/// narrows a person down the same way.
pub fn potential_identifier(column: &str, ty: ColumnType) -> Option<PotentialIdentifier> {
    match column {
        "BEN_NAI_MOI" | "AGE_JOU" => Some(PotentialIdentifier::BirthMonth),
        "BEN_RES_COM" | "BDI_COD" => Some(PotentialIdentifier::ResidenceCommune),
        "BEN_DCD_DTE" => Some(PotentialIdentifier::DeathDate),
        "DCD_COM_COD" => Some(PotentialIdentifier::DeathCommune),
        c if FLOW_KEYS.contains(&c) => None,
        _ => match ty {
            ColumnType::Date | ColumnType::CompactDate | ColumnType::SasDateTime => {
                Some(PotentialIdentifier::CareDate)
            }
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_columns_name_their_identifier_and_nothing_else() {
        assert_eq!(number_column("BEN_NIR_PSA"), "PDS_BEN_NIR_PSA_ID");
        assert_eq!(numbered_column("PDS_BEN_NIR_PSA_ID"), Some("BEN_NIR_PSA"));
        assert_eq!(numbered_column("PDS_NIR_ANO_17_ID"), Some("NIR_ANO_17"));
        // The prestation key and lookalikes of non-identifiers are not numbers.
        assert_eq!(numbered_column("PDS_PRS_KEY"), None);
        assert_eq!(numbered_column("PDS_EXE_SOI_DTD_ID"), None);
        assert_eq!(numbered_column("BEN_NIR_PSA"), None);
    }

    #[test]
    fn classifies_the_snds_potential_identifiers() {
        use PotentialIdentifier::*;
        assert_eq!(
            potential_identifier("BEN_NAI_MOI", ColumnType::Month),
            Some(BirthMonth)
        );
        assert_eq!(potential_identifier("BEN_NAI_ANN", ColumnType::Year), None);
        assert_eq!(
            potential_identifier("BDI_COD", ColumnType::String),
            Some(ResidenceCommune)
        );
        assert_eq!(potential_identifier("BDI_DEP", ColumnType::String), None);
        assert_eq!(
            potential_identifier("EXE_SOI_DTD", ColumnType::Date),
            Some(CareDate)
        );
        assert_eq!(
            potential_identifier("ENT_DAT", ColumnType::CompactDate),
            Some(CareDate)
        );
        assert_eq!(potential_identifier("FLX_TRT_DTD", ColumnType::Date), None);
        assert_eq!(
            potential_identifier("BEN_DCD_DTE", ColumnType::Date),
            Some(DeathDate)
        );
        assert_eq!(
            potential_identifier("DCD_COM_COD", ColumnType::String),
            Some(DeathCommune)
        );
        assert_eq!(potential_identifier("SOR_MOI", ColumnType::Month), None);
    }
}
