//! Perimeters: what a project may see, and how it is resolved against a
//! snapshot into per-table views.
//!
//! A perimeter is written in TOML (see `docs/projects.md`):
//!
//! ```toml
//! years = [2022, 2023]
//! population = "BEN_SEX_COD = 2 AND BEN_NAI_ANN <= 1960"
//! [tables]
//! ER_PRS_F = ["BEN_NIR_PSA", "EXE_SOI_DTD", "PRS_NAT_REF"]
//! IR_BEN_R = "*"
//! T_MCOaaB = "*"          # every discharge year within `years`
//! [coarsening]
//! care_dates = "month"    # day | month | year
//! ```
//!
//! [`resolve`] turns it into a [`ResolvedPerimeter`] for one snapshot,
//! refusing unknown tables and columns and any perimeter that shows more
//! than one SNDS potential identifier at full precision.

use std::collections::{BTreeMap, BTreeSet};

use pds_catalog::TableInfo;
use pds_snds::identifiers::{PotentialIdentifier, is_patient_id, potential_identifier};
use pds_snds::{ColumnType, Family};
use serde::{Deserialize, Serialize};

use crate::ProjectError;

/// Precision of a date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatePrecision {
    /// Full precision.
    Day,
    /// First day of the month.
    Month,
    /// First day of the year.
    Year,
}

/// Precision of a place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GeoPrecision {
    /// Full precision (commune, postal code).
    Commune,
    /// Département only.
    Department,
}

/// Precision of the birth date (the SNDS holds year and month).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BirthPrecision {
    /// Year and month.
    Month,
    /// Year only.
    Year,
}

/// How potential identifiers are coarsened. The defaults coarsen all of
/// them; a perimeter may lift at most one to full precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Coarsening {
    /// Dates of care, admission, discharge, dispensing.
    pub care_dates: DatePrecision,
    /// Date of death.
    pub death_date: DatePrecision,
    /// Birth date.
    pub birth: BirthPrecision,
    /// Commune of residence.
    pub residence: GeoPrecision,
    /// Commune of death.
    pub death_place: GeoPrecision,
}

impl Default for Coarsening {
    fn default() -> Self {
        Coarsening {
            care_dates: DatePrecision::Month,
            death_date: DatePrecision::Month,
            birth: BirthPrecision::Year,
            residence: GeoPrecision::Department,
            death_place: GeoPrecision::Department,
        }
    }
}

/// Columns granted on a table: `"*"` or a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Columns {
    /// `"*"`: every column.
    All(String),
    /// These columns.
    Some(Vec<String>),
}

/// A project's perimeter as declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Perimeter {
    /// Granted tables (snapshot names such as `T_MCO22B`, or a PMSI generic
    /// name `T_MCOaaB` for every discharge year in `years`) and columns.
    pub tables: BTreeMap<String, Columns>,
    /// First and last year (care dates, discharge years, death years).
    #[serde(default)]
    pub years: Option<[u16; 2]>,
    /// SQL predicate on `IR_BEN_R` columns restricting the population.
    #[serde(default)]
    pub population: Option<String>,
    /// Coarsening of potential identifiers.
    #[serde(default)]
    pub coarsening: Coarsening,
    /// Disclosure control of aggregate-only results.
    #[serde(default)]
    pub disclosure: DisclosureRules,
}

/// A named set of disclosure-control defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DisclosureProfile {
    /// The SNDS rule: no result computed on fewer than 10 patients.
    #[default]
    Snds,
    /// OpenSAFELY's: counts of 7 or fewer redacted, every count rounded to
    /// the nearest 5.
    Opensafely,
}

/// Disclosure control of aggregate-only results, as declared (`[disclosure]`
/// in a perimeter file). Unset values come from the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DisclosureRules {
    /// The defaults.
    pub profile: DisclosureProfile,
    /// Smallest number of distinct patients behind a published value.
    pub threshold: Option<u32>,
    /// Published counts are rounded to the nearest multiple of this.
    pub rounding: Option<u32>,
    /// Dominance: a sum is withheld when its `dominance_n` largest
    /// contributors (patients) make more than `dominance_percent` of it.
    pub dominance_n: u32,
    /// See `dominance_n`.
    pub dominance_percent: u32,
    /// Refuse a result whose population differs from an earlier one of the
    /// project by fewer than `threshold` patients.
    pub track_populations: bool,
}

impl Default for DisclosureRules {
    fn default() -> Self {
        DisclosureRules {
            profile: DisclosureProfile::Snds,
            threshold: None,
            rounding: None,
            dominance_n: 2,
            dominance_percent: 90,
            track_populations: true,
        }
    }
}

/// The disclosure control a project's aggregate results get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisclosurePolicy {
    /// A value computed on 1 to `threshold - 1` patients is withheld.
    pub threshold: u64,
    /// Counts are rounded to the nearest multiple (1: exact).
    pub rounding: u64,
    /// Dominance: number of largest contributors.
    pub dominance_n: usize,
    /// Dominance: their share, in percent, above which a sum is withheld.
    pub dominance_percent: u32,
    /// The query-set tracker is on.
    pub track_populations: bool,
}

impl DisclosureRules {
    /// Checks the values and applies the profile's defaults.
    pub fn policy(&self) -> Result<DisclosurePolicy, ProjectError> {
        let (t, r) = match self.profile {
            DisclosureProfile::Snds => (10, 1),
            DisclosureProfile::Opensafely => (8, 5),
        };
        let threshold = self.threshold.unwrap_or(t);
        let rounding = self.rounding.unwrap_or(r);
        let bad = |m: String| Err(ProjectError::Perimeter(format!("[disclosure] {m}")));
        if !(2..=1000).contains(&threshold) {
            return bad(format!(
                "threshold = {threshold}: use a number of patients from 2 to 1000 (the SNDS rule is 10)"
            ));
        }
        if !(1..=1000).contains(&rounding) {
            return bad(format!(
                "rounding = {rounding}: use 1 (exact counts) to 1000, for instance 5"
            ));
        }
        if !(1..=10).contains(&self.dominance_n) {
            return bad(format!(
                "dominance_n = {}: use 1 to 10 largest contributors (usually 2)",
                self.dominance_n
            ));
        }
        if !(50..=100).contains(&self.dominance_percent) {
            return bad(format!(
                "dominance_percent = {}: use 50 to 100 (100 turns the rule off; usually 90)",
                self.dominance_percent
            ));
        }
        Ok(DisclosurePolicy {
            threshold: threshold.into(),
            rounding: rounding.into(),
            dominance_n: self.dominance_n as usize,
            dominance_percent: self.dominance_percent,
            track_populations: self.track_populations,
        })
    }
}

impl Perimeter {
    /// Parses a perimeter file.
    pub fn from_toml(text: &str) -> Result<Perimeter, ProjectError> {
        let p: Perimeter =
            toml::from_str(text).map_err(|e| ProjectError::Perimeter(format!("{e}")))?;
        p.disclosure.policy()?;
        Ok(p)
    }

    /// Every column of `tables`, nothing else restricted.
    pub fn all_columns(tables: &[&str]) -> Perimeter {
        Perimeter {
            tables: tables
                .iter()
                .map(|t| (t.to_string(), Columns::All("*".into())))
                .collect(),
            years: None,
            population: None,
            coarsening: Coarsening::default(),
            disclosure: DisclosureRules::default(),
        }
    }
}

/// How a column appears in a project view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnView {
    /// As stored.
    Plain,
    /// A patient identifier: replaced by the project pseudonym.
    Pseudonym,
    /// A date truncated to month or year.
    Truncated(DatePrecision),
    /// A commune code cut to its département (first two characters).
    Department,
}

/// A column of a resolved view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewColumn {
    /// Name.
    pub name: String,
    /// Presentation.
    pub view: ColumnView,
    /// The potential identifier it shows at full precision, if any
    /// (aggregate-only results may not be keyed by it).
    pub potential: Option<PotentialIdentifier>,
}

/// Which rows of a table a project sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowFilter {
    /// Its own columns decide.
    Own {
        /// Date column whose year must be in the range.
        year_column: Option<String>,
        /// Patient column that must belong to the population, and the
        /// `IR_BEN_R` column it matches.
        person: Option<(String, String)>,
    },
    /// Rows that match, on `keys`, a visible row of `parent`.
    Via {
        /// The parent table (`ER_PRS_F`, `T_MCO22C`).
        parent: String,
        /// Join keys.
        keys: Vec<String>,
    },
}

/// One table of a resolved perimeter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewTable {
    /// Table name in the snapshot (and in the project).
    pub name: String,
    /// Visible columns, in snapshot order.
    pub columns: Vec<ViewColumn>,
    /// Columns of the table that the project does not see.
    pub withheld: Vec<String>,
    /// Row restriction.
    pub rows: RowFilter,
}

/// A perimeter resolved against one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPerimeter {
    /// Visible tables, by name.
    pub tables: Vec<ViewTable>,
    /// Row restrictions of tables the project does not see but that restrict
    /// visible ones (`ER_PRS_F` for refinement tables), by name.
    pub parents: Vec<ViewTable>,
    /// Year range.
    pub years: Option<[u16; 2]>,
    /// Population predicate.
    pub population: Option<String>,
    /// Whether a cohort restricts the population.
    pub cohort: bool,
    /// Potential identifiers shown at full precision (at most one).
    pub full_precision: Vec<PotentialIdentifier>,
}

impl ResolvedPerimeter {
    /// Whether any row restriction applies.
    pub fn restricts_rows(&self) -> bool {
        self.years.is_some() || self.population.is_some() || self.cohort
    }
}

fn generic_name(name: &str) -> Option<(&'static pds_snds::TableSchema, Option<u16>)> {
    pds_snds::schema::table(name).ok()
}

/// The SNDS type of `column` in snapshot table `table`.
fn snds_type(table: &str, column: &str) -> Option<ColumnType> {
    let (schema, _) = generic_name(table)?;
    schema
        .columns
        .iter()
        .find(|c| c.name == column)
        .map(|c| c.ty)
}

/// How `column` appears under `c`, or `None` when coarsening removes it.
pub fn column_view(column: &str, ty: Option<ColumnType>, c: &Coarsening) -> Option<ColumnView> {
    if is_patient_id(column) {
        return Some(ColumnView::Pseudonym);
    }
    let Some(ty) = ty else {
        return Some(ColumnView::Plain);
    };
    // Month-level columns are already coarse, but not coarse enough when
    // the perimeter asks for years.
    match column {
        "SOR_MOI" if c.care_dates == DatePrecision::Year => return None,
        "BEN_DCD_AME" if c.death_date == DatePrecision::Year => return None,
        _ => {}
    }
    let date = |p: DatePrecision| match p {
        DatePrecision::Day => ColumnView::Plain,
        p => ColumnView::Truncated(p),
    };
    Some(match potential_identifier(column, ty) {
        None => ColumnView::Plain,
        Some(PotentialIdentifier::CareDate) => date(c.care_dates),
        Some(PotentialIdentifier::DeathDate) => date(c.death_date),
        Some(PotentialIdentifier::BirthMonth) => match c.birth {
            BirthPrecision::Month => ColumnView::Plain,
            // Year of birth is BEN_NAI_ANN; month and age in days go.
            BirthPrecision::Year => return None,
        },
        Some(PotentialIdentifier::ResidenceCommune) => match (c.residence, column) {
            (GeoPrecision::Commune, _) => ColumnView::Plain,
            (GeoPrecision::Department, "BDI_COD") => ColumnView::Department,
            // BEN_RES_COM is the commune within BEN_RES_DPT.
            (GeoPrecision::Department, _) => return None,
        },
        Some(PotentialIdentifier::DeathCommune) => match c.death_place {
            GeoPrecision::Commune => ColumnView::Plain,
            GeoPrecision::Department => return None,
        },
    })
}

fn year_of_table(name: &str) -> Option<u16> {
    generic_name(name).and_then(|(_, y)| y)
}

/// The SNDS family of a table (`None`: a referential, which holds no person).
pub fn family(name: &str) -> Option<Family> {
    generic_name(name).map(|(s, _)| s.family)
}

/// How the rows of `table` are restricted.
fn row_filter(table: &str, columns: &[String]) -> RowFilter {
    let has = |c: &str| columns.iter().any(|x| x == c);
    match (family(table), table) {
        (Some(Family::Dcir), "ER_PRS_F") => RowFilter::Own {
            year_column: Some("EXE_SOI_DTD".into()),
            person: Some(("BEN_NIR_PSA".into(), "BEN_NIR_PSA".into())),
        },
        (Some(Family::Dcir), _) => RowFilter::Via {
            parent: "ER_PRS_F".into(),
            keys: pds_snds::schema::DCIR_JOIN_KEYS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        },
        (Some(Family::PmsiMco), t) if t.ends_with('C') => RowFilter::Own {
            year_column: None,
            person: Some(("NIR_ANO_17".into(), "BEN_NIR_PSA".into())),
        },
        (Some(Family::PmsiMco), t) => RowFilter::Via {
            parent: format!("{}C", &t[..t.len() - 1]),
            keys: vec!["ETA_NUM".into(), "RSA_NUM".into()],
        },
        (Some(Family::Deaths), _) => RowFilter::Own {
            year_column: has("BEN_DCD_DTE").then(|| "BEN_DCD_DTE".into()),
            person: Some(("BEN_IDT_ANO".into(), "BEN_IDT_ANO".into())),
        },
        (Some(Family::Beneficiary), "IR_BEN_R") => RowFilter::Own {
            year_column: None,
            person: Some(("BEN_NIR_PSA".into(), "BEN_NIR_PSA".into())),
        },
        _ => RowFilter::Own {
            year_column: None,
            person: has("BEN_NIR_PSA").then(|| ("BEN_NIR_PSA".into(), "BEN_NIR_PSA".into())),
        },
    }
}

/// Resolves `p` against the tables of a snapshot.
pub fn resolve(
    p: &Perimeter,
    snapshot: &[TableInfo],
    cohort: bool,
) -> Result<ResolvedPerimeter, ProjectError> {
    let err = |m: String| Err(ProjectError::Perimeter(m));
    if p.tables.is_empty() {
        return err("the perimeter grants no table; list tables under [tables]".into());
    }
    if let Some([a, b]) = p.years
        && a > b
    {
        return err(format!(
            "years = [{a}, {b}]: the first year is after the last"
        ));
    }
    let known: Vec<&str> = snapshot.iter().map(|t| t.name.as_str()).collect();
    let by_name = |n: &str| snapshot.iter().find(|t| t.name == n);
    // Expand generic PMSI names to the yearly tables of the snapshot.
    let mut grants: BTreeMap<String, &Columns> = BTreeMap::new();
    for (name, cols) in &p.tables {
        if name.contains("aa") {
            let prefix = name.replace("aa", "");
            let matching: Vec<&TableInfo> = snapshot
                .iter()
                .filter(|t| generic_name(&t.name).is_some_and(|(s, _)| s.name == name.as_str()))
                .collect();
            if matching.is_empty() {
                return err(format!(
                    "table {name}: the snapshot has no yearly table of it ({prefix} pattern); it has: {}",
                    known.join(", ")
                ));
            }
            for t in matching {
                if grants.insert(t.name.clone(), cols).is_some() {
                    return err(format!(
                        "{} is granted twice (by its own name and by {name}); keep one",
                        t.name
                    ));
                }
            }
        } else if by_name(name).is_some() {
            if grants.insert(name.clone(), cols).is_some() {
                return err(format!(
                    "{name} is granted twice (by its own name and by its generic T_MCOaa name); keep one"
                ));
            }
        } else {
            return err(format!(
                "table {name} is not in the snapshot; it has: {}",
                known.join(", ")
            ));
        }
    }
    // Years restrict PMSI tables to their discharge years.
    if let Some([a, b]) = p.years {
        grants.retain(|name, _| year_of_table(name).is_none_or(|y| (a..=b).contains(&y)));
        if grants.is_empty() {
            return err(format!("no granted table has data in years {a}-{b}"));
        }
    }
    let mut tables = Vec::new();
    let mut exposed: BTreeMap<PotentialIdentifier, BTreeSet<String>> = BTreeMap::new();
    for (name, cols) in &grants {
        let info = by_name(name)
            .ok_or_else(|| ProjectError::Perimeter(format!("table {name} vanished")))?;
        let all: Vec<&str> = info.columns.iter().map(|c| c.name.as_str()).collect();
        let mut wanted: Vec<String> = match cols {
            Columns::All(s) if s == "*" => all.iter().map(|s| s.to_string()).collect(),
            Columns::All(s) => {
                return err(format!(
                    "table {name} = {s:?}: write \"*\" for every column or a list of column names"
                ));
            }
            Columns::Some(list) => {
                for c in list {
                    if !all.contains(&c.as_str()) {
                        // A generic PMSI grant may name a column of another year.
                        if p.tables.contains_key(name) || year_of_table(name).is_none() {
                            return err(format!(
                                "table {name} has no column {c}; its columns are: {}",
                                all.join(", ")
                            ));
                        }
                    }
                }
                list.clone()
            }
        };
        let key = pds_snds::schema::PRESTATION_KEY;
        let implied_key = all.contains(&key)
            && !wanted.iter().any(|w| w == key)
            && pds_snds::schema::DCIR_JOIN_KEYS
                .iter()
                .all(|k| wanted.iter().any(|w| w == k));
        if implied_key {
            wanted.push(key.to_string());
        }
        let mut columns = Vec::new();
        let mut withheld = Vec::new();
        for c in &all {
            if !wanted.iter().any(|w| w == c) {
                withheld.push(c.to_string());
                continue;
            }
            let ty = snds_type(name, c);
            match column_view(c, ty, &p.coarsening) {
                None => withheld.push(c.to_string()),
                Some(v) => {
                    let mut potential = None;
                    if v == ColumnView::Plain
                        && let Some(class) = ty.and_then(|t| potential_identifier(c, t))
                    {
                        exposed
                            .entry(class)
                            .or_default()
                            .insert(format!("{name}.{c}"));
                        potential = Some(class);
                    }
                    columns.push(ViewColumn {
                        name: c.to_string(),
                        view: v,
                        potential,
                    });
                }
            }
        }
        // The prestation key is a digest of join keys: a view that shows
        // all nine as stored shows it too, so the optimizer can join on it
        // whatever columns the grant lists. Not when one of them is
        // coarsened: the digest would give the exact value back.
        if implied_key
            && !pds_snds::schema::DCIR_JOIN_KEYS.iter().all(|k| {
                columns
                    .iter()
                    .any(|c| c.name == *k && c.view == ColumnView::Plain)
            })
        {
            columns.retain(|c| c.name != key);
            withheld.push(key.to_string());
        }
        if columns.is_empty() {
            return err(format!(
                "table {name}: no granted column remains visible after coarsening"
            ));
        }
        let all_owned: Vec<String> = all.iter().map(|s| s.to_string()).collect();
        tables.push(ViewTable {
            name: name.clone(),
            columns,
            withheld,
            rows: row_filter(name, &all_owned),
        });
    }
    if exposed.len() > 1 {
        let list: Vec<String> = exposed
            .iter()
            .map(|(k, cols)| {
                let cols: Vec<&str> = cols.iter().map(|s| s.as_str()).take(4).collect();
                format!(
                    "{} ({}{})",
                    k.label(),
                    cols.join(", "),
                    if cols.len() == 4 { ", ..." } else { "" }
                )
            })
            .collect();
        return err(format!(
            "this perimeter shows {} potential identifiers at full precision: {}. The SNDS allows at most one per project: coarsen the others in [coarsening] (care_dates/death_date = \"month\", birth = \"year\", residence/death_place = \"department\") or remove their columns",
            exposed.len(),
            list.join("; ")
        ));
    }
    // Parents that restrict visible tables but are not visible themselves.
    let mut parents = Vec::new();
    let restricted = p.years.is_some() || p.population.is_some() || cohort;
    if restricted {
        for t in &tables {
            if let RowFilter::Via { parent, .. } = &t.rows
                && !tables.iter().any(|v| &v.name == parent)
                && !parents.iter().any(|v: &ViewTable| &v.name == parent)
            {
                let info = by_name(parent).ok_or_else(|| {
                    ProjectError::Perimeter(format!(
                        "table {} is restricted through {parent}, which the snapshot lacks; a year range or population cannot be applied to it",
                        t.name
                    ))
                })?;
                let cols: Vec<String> = info.columns.iter().map(|c| c.name.clone()).collect();
                parents.push(ViewTable {
                    name: parent.clone(),
                    columns: Vec::new(),
                    withheld: Vec::new(),
                    rows: row_filter(parent, &cols),
                });
            }
        }
    }
    if let Some(pop) = &p.population {
        check_population(pop, snapshot)?;
    }
    Ok(ResolvedPerimeter {
        tables,
        parents,
        years: p.years,
        population: p.population.clone(),
        cohort,
        full_precision: exposed.into_keys().collect(),
    })
}

/// Checks that a population predicate is one boolean expression over
/// `IR_BEN_R` columns (the gate plans it; this catches mistakes early).
fn check_population(pred: &str, snapshot: &[TableInfo]) -> Result<(), ProjectError> {
    use sqlparser::dialect::GenericDialect;
    use sqlparser::keywords::Keyword;
    use sqlparser::parser::Parser;
    use sqlparser::tokenizer::{Token, Tokenizer};
    let bad = |m: String| ProjectError::Perimeter(format!("population = {pred:?}: {m}"));
    let ben = snapshot
        .iter()
        .find(|t| t.name == "IR_BEN_R")
        .ok_or_else(|| bad("the snapshot has no IR_BEN_R to select the population from".into()))?;
    let dialect = GenericDialect {};
    Parser::new(&dialect)
        .try_with_sql(pred)
        .and_then(|mut p| {
            let e = p.parse_expr()?;
            p.expect_token(&Token::EOF)?;
            Ok(e)
        })
        .map_err(|e| bad(format!("not one SQL expression ({e})")))?;
    let tokens = Tokenizer::new(&dialect, pred)
        .tokenize()
        .map_err(|e| bad(format!("not one SQL expression ({e})")))?;
    let significant: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let mut names = Vec::new();
    for (i, t) in significant.iter().enumerate() {
        if let Token::Word(w) = t {
            if matches!(w.keyword, Keyword::SELECT | Keyword::FROM) {
                return Err(bad(
                    "subqueries are not allowed; use IR_BEN_R columns only".into()
                ));
            }
            let is_call = matches!(significant.get(i + 1), Some(Token::LParen));
            if (w.keyword == Keyword::NoKeyword || w.quote_style.is_some()) && !is_call {
                names.push(w.value.clone());
            }
        }
    }
    let cols: Vec<&str> = ben.columns.iter().map(|c| c.name.as_str()).collect();
    for n in names {
        if !cols.contains(&n.as_str()) {
            return Err(bad(format!(
                "{n} is not a column of IR_BEN_R; its columns are: {}",
                cols.join(", ")
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prs_with_key() -> TableInfo {
        let mut names: Vec<&str> = pds_snds::schema::DCIR_JOIN_KEYS.to_vec();
        names.extend(["PRS_NAT_REF", pds_snds::schema::PRESTATION_KEY]);
        TableInfo {
            name: "ER_PRS_F".into(),
            title: String::new(),
            rows: 1,
            bytes: 1,
            columns: names
                .iter()
                .map(|n| pds_catalog::ColumnInfo {
                    name: n.to_string(),
                    data_type: String::new(),
                    description: String::new(),
                    nomenclature: String::new(),
                })
                .collect(),
            files: Vec::new(),
        }
    }

    fn visible(grant: &str) -> Vec<String> {
        let p = Perimeter::from_toml(&format!("[tables]\nER_PRS_F = {grant}\n")).unwrap();
        let r = resolve(&p, &[prs_with_key()], false).unwrap();
        r.tables[0].columns.iter().map(|c| c.name.clone()).collect()
    }

    #[test]
    fn the_prestation_key_is_shown_with_the_nine_join_keys_only() {
        let key = pds_snds::schema::PRESTATION_KEY.to_string();
        let nine = pds_snds::schema::DCIR_JOIN_KEYS
            .iter()
            .map(|k| format!("\"{k}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let with_nine = visible(&format!("[{nine}, \"PRS_NAT_REF\"]"));
        assert_eq!(with_nine.last(), Some(&key));
        assert_eq!(with_nine.len(), 11);
        let eight = nine.replace(", \"REM_TYP_AFF\"", "");
        assert!(!visible(&format!("[{eight}, \"PRS_NAT_REF\"]")).contains(&key));
        assert!(visible("\"*\"").contains(&key));
    }

    #[test]
    fn disclosure_rules_come_from_the_profile_and_are_checked() {
        let base = "[tables]\nIR_BEN_R = \"*\"\n";
        let p = Perimeter::from_toml(base).unwrap();
        let d = p.disclosure.policy().unwrap();
        assert_eq!((d.threshold, d.rounding, d.dominance_n), (10, 1, 2));
        assert!(d.track_populations);
        let p = Perimeter::from_toml(&format!("{base}[disclosure]\nprofile = \"opensafely\"\n"))
            .unwrap();
        let d = p.disclosure.policy().unwrap();
        assert_eq!((d.threshold, d.rounding), (8, 5));
        let p = Perimeter::from_toml(&format!(
            "{base}[disclosure]\nprofile = \"opensafely\"\nrounding = 10\n"
        ))
        .unwrap();
        assert_eq!(p.disclosure.policy().unwrap().rounding, 10);
        match Perimeter::from_toml(&format!("{base}[disclosure]\nthreshold = 1\n")) {
            Err(ProjectError::Perimeter(m)) => {
                assert!(
                    m.contains("threshold = 1") && m.contains("2 to 1000"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(Perimeter::from_toml(&format!("{base}[disclosure]\nthreshhold = 5\n")).is_err());
        assert!(
            Perimeter::from_toml(&format!("{base}[disclosure]\ndominance_percent = 20\n")).is_err()
        );
    }
}
