//! Project views: one table provider per granted table, showing only the
//! project's rows and columns, with pseudonyms mapped and potential
//! identifiers coarsened.
//!
//! A view is a [`PerimeterTable`]: its rows come from a logical plan over
//! the snapshot's Parquet scans (row restriction → column mapping), planned
//! inside `scan()` and wrapped in a [`Barrier`]. A view of one stored table
//! (no population or parent join) is planned directly from its parts; the
//! others through DataFusion's planner. The barrier is what keeps the
//! perimeter first: DataFusion pushes filters down and merges them with
//! the ones below, and a user's predicate evaluated *before* the perimeter
//! filter could fail (or not) on a row the project must not see, an
//! oracle through error messages. The provider lets only predicates that
//! cannot fail (column-against-literal comparisons) reach below the
//! barrier, where they help pruning, and the barrier lets through only
//! DataFusion's dynamic join filters on columns shown as stored (bounds
//! and set membership, which cannot fail either); everything else runs
//! above it, on visible rows only.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, LargeStringArray, LargeStringBuilder, StringBuilder,
    StringViewBuilder,
};
use arrow::datatypes::{DataType, Field, FieldRef, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, ScalarValue, TableReference};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::expr_rewriter::unnormalize_col;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, JoinType, LogicalPlan, LogicalPlanBuilder, Operator,
    ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    TableProviderFilterPushDown, TableType, Volatility, cast, lit,
};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::expressions::{Column as PhysicalColumn, DynamicFilterPhysicalExpr};
use datafusion::physical_plan::filter::FilterExecBuilder;
use datafusion::physical_plan::filter_pushdown::{
    ChildFilterDescription, FilterDescription, FilterPushdownPhase,
};
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PhysicalExpr, PlanProperties,
    SendableRecordBatchStream,
};
use datafusion::prelude::SessionContext;
use pds_project::Pseudonymiser;
use pds_project::perimeter::{ColumnView, DatePrecision, ResolvedPerimeter, RowFilter, ViewTable};
use pds_query::ids::IdDictionary;
use pds_snds::identifiers::PATIENT_ID_COLUMNS;

/// A project's pseudonym function as the functions below hold it: compared
/// and hashed by project (two plans of one project use the same function),
/// and never printed with its key.
#[derive(Clone)]
struct ProjectFn {
    pseudo: Pseudonymiser,
    project: String,
}

impl fmt::Debug for ProjectFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectFn")
            .field("project", &self.project)
            .finish_non_exhaustive()
    }
}

impl PartialEq for ProjectFn {
    fn eq(&self, other: &Self) -> bool {
        self.project == other.project
    }
}
impl Eq for ProjectFn {}
impl Hash for ProjectFn {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.project.hash(state)
    }
}

/// The pseudonym mapping as a scalar function. It is never registered in
/// a session's function registry, so SQL cannot call it by name; it only
/// exists inside view plans.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PseudonymUdf {
    f: ProjectFn,
    /// The snapshot's identifier numbers, if it has them: the views' late
    /// variants then show numbers ([`NumberedPseudonymUdf`]).
    numbers: Option<Numbers>,
    signature: Signature,
}

/// A snapshot's dictionary of identifier numbers as the functions hold it:
/// compared and hashed by snapshot, never printed.
#[derive(Clone)]
struct Numbers(Arc<IdDictionary>);

impl fmt::Debug for Numbers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Numbers(snapshot {})", self.0.snapshot())
    }
}
impl PartialEq for Numbers {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for Numbers {}
impl Hash for Numbers {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.snapshot().hash(state)
    }
}

impl PseudonymUdf {
    /// The function of one project.
    pub fn udf(project: &str, pseudo: Pseudonymiser) -> ScalarUDF {
        PseudonymUdf::udf_with_numbers(project, pseudo, None)
    }

    /// The function of one project over a snapshot whose identifiers are
    /// numbered (`numbers`, the snapshot's dictionary), so that statements
    /// can join and group on the numbers ([`crate::late`]).
    pub fn udf_with_numbers(
        project: &str,
        pseudo: Pseudonymiser,
        numbers: Option<Arc<IdDictionary>>,
    ) -> ScalarUDF {
        ScalarUDF::new_from_impl(PseudonymUdf {
            f: ProjectFn {
                pseudo,
                project: project.to_string(),
            },
            numbers: numbers.map(Numbers),
            signature: Signature::string(1, Volatility::Immutable),
        })
    }

    /// The function that maps the *numbers* of the identifiers `udf` maps,
    /// giving values of type `out` (the view column's), or `None` if `udf`
    /// is not a pseudonym function or its snapshot has no numbers.
    pub fn numbered_of(udf: &ScalarUDF, out: &DataType) -> Option<ScalarUDF> {
        let p = udf.inner().downcast_ref::<PseudonymUdf>()?;
        if !is_string_type(out) {
            return None;
        }
        Some(ScalarUDF::new_from_impl(NumberedPseudonymUdf {
            f: p.f.clone(),
            numbers: p.numbers.clone()?,
            out: out.clone(),
            signature: Signature::exact(vec![DataType::Int64], Volatility::Immutable),
        }))
    }

    /// The function that maps a key built by [`DelimitedUdf`] from this
    /// function's stored identifiers back to what the statement wrote, or
    /// `None` if `udf` is not a pseudonym function.
    pub fn prefixed_of(udf: &ScalarUDF) -> Option<ScalarUDF> {
        if let Some(n) = udf.inner().downcast_ref::<NumberedPseudonymUdf>() {
            return Some(ScalarUDF::new_from_impl(NumberedPrefixedUdf {
                f: n.f.clone(),
                numbers: n.numbers.clone(),
                signature: Signature::string(1, Volatility::Immutable),
            }));
        }
        let p = udf.inner().downcast_ref::<PseudonymUdf>()?;
        Some(ScalarUDF::new_from_impl(PrefixedPseudonymUdf {
            f: p.f.clone(),
            signature: Signature::string(1, Volatility::Immutable),
        }))
    }

    /// The function that builds the delimited key of a stored value mapped
    /// by `udf` (see [`DelimitedUdf`], [`NumberKeyUdf`]). A number's key is
    /// a string of type `cast_to`, or of the view column's type.
    pub fn delimiter_of(udf: &ScalarUDF, cast_to: Option<&DataType>) -> Option<ScalarUDF> {
        if let Some(n) = udf.inner().downcast_ref::<NumberedPseudonymUdf>() {
            let out = cast_to.unwrap_or(&n.out);
            if !is_string_type(out) {
                return None;
            }
            return Some(ScalarUDF::new_from_impl(NumberKeyUdf {
                out: out.clone(),
                signature: Signature::exact(vec![DataType::Int64], Volatility::Immutable),
            }));
        }
        udf.inner()
            .downcast_ref::<PseudonymUdf>()
            .map(|_| DelimitedUdf::udf())
    }

    /// Whether `udf` maps identifier numbers rather than stored identifiers.
    pub fn is_numbered(udf: &ScalarUDF) -> bool {
        udf.inner().downcast_ref::<NumberedPseudonymUdf>().is_some()
    }

    /// The dictionaries a plan's number mappings read: each must be loaded
    /// ([`IdDictionary::load`]) before the plan runs.
    pub fn dictionaries(plan: &LogicalPlan) -> Vec<Arc<IdDictionary>> {
        let mut out: Vec<Arc<IdDictionary>> = Vec::new();
        let _ = plan.apply(|node| {
            for e in node.expressions() {
                let _ = e.apply(|x| {
                    if let Expr::ScalarFunction(f) = x {
                        let inner = f.func.inner();
                        let n = inner
                            .downcast_ref::<NumberedPseudonymUdf>()
                            .map(|u| &u.numbers)
                            .or_else(|| {
                                inner
                                    .downcast_ref::<NumberedPrefixedUdf>()
                                    .map(|u| &u.numbers)
                            });
                        if let Some(n) = n
                            && !out.iter().any(|d| Arc::ptr_eq(d, &n.0))
                        {
                            out.push(n.0.clone());
                        }
                    }
                    Ok(TreeNodeRecursion::Continue)
                });
            }
            Ok(TreeNodeRecursion::Continue)
        });
        out
    }
}

impl ScalarUDFImpl for PseudonymUdf {
    fn name(&self) -> &str {
        "project_pseudonym"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types.first().cloned().unwrap_or(DataType::Utf8))
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        // The mapping can replace the column without changing any schema.
        Ok(same_field(self.name(), &args))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arg = args.args.into_iter().next().ok_or_else(|| {
            DataFusionError::Internal("project_pseudonym takes one argument".into())
        })?;
        // Claims of one person are often adjacent: the last result (still
        // in the output buffer) is reused.
        let mut last: Option<String> = None;
        map_strings(self.name(), arg, |s, out| {
            if last.as_deref() != Some(s) {
                self.f.pseudo.pseudonym_into(s, out);
                last = Some(s.to_string());
            }
            Ok(())
        })
    }
}

/// Applies `f` to every value of a string array or scalar, keeping its
/// string type (and so the schema of whatever the function replaces). `f`
/// writes each result into one buffer, which keeps the previous result
/// until `f` changes it.
fn map_strings(
    name: &str,
    arg: ColumnarValue,
    mut f: impl FnMut(&str, &mut String) -> Result<()>,
) -> Result<ColumnarValue> {
    let mut buf = String::new();
    match arg {
        ColumnarValue::Scalar(s) => {
            let (v, wrap): (_, fn(Option<String>) -> ScalarValue) = match s {
                ScalarValue::Utf8(v) => (v, ScalarValue::Utf8),
                ScalarValue::Utf8View(v) => (v, ScalarValue::Utf8View),
                ScalarValue::LargeUtf8(v) => (v, ScalarValue::LargeUtf8),
                other => {
                    return Err(DataFusionError::Internal(format!(
                        "{name} of a {}",
                        other.data_type()
                    )));
                }
            };
            let v = match v {
                Some(v) => {
                    f(&v, &mut buf)?;
                    Some(buf)
                }
                None => None,
            };
            Ok(ColumnarValue::Scalar(wrap(v)))
        }
        ColumnarValue::Array(a) => {
            let n = a.len();
            macro_rules! fill {
                ($values:expr, $builder:expr) => {{
                    let mut out = $builder;
                    for v in $values {
                        match v {
                            None => out.append_null(),
                            Some(s) => {
                                f(s, &mut buf)?;
                                out.append_value(&buf);
                            }
                        }
                    }
                    Arc::new(out.finish()) as ArrayRef
                }};
            }
            let out = match a.data_type() {
                DataType::Utf8View => fill!(
                    a.as_string_view().iter(),
                    StringViewBuilder::with_capacity(n)
                ),
                DataType::Utf8 => fill!(
                    a.as_string::<i32>().iter(),
                    StringBuilder::with_capacity(n, n * 36)
                ),
                DataType::LargeUtf8 => fill!(
                    a.as_string::<i64>().iter(),
                    LargeStringBuilder::with_capacity(n, n * 36)
                ),
                other => {
                    return Err(DataFusionError::Internal(format!("{name} of a {other}")));
                }
            };
            Ok(ColumnarValue::Array(out))
        }
    }
}

/// The field of a function that keeps its argument's type and
/// nullability (a NULL stays NULL, nothing else becomes NULL).
fn same_field(name: &str, args: &ReturnFieldArgs) -> FieldRef {
    Arc::new(match args.arg_fields.first() {
        Some(f) => f.as_ref().clone().with_name(name),
        None => Field::new(name, DataType::Utf8, true),
    })
}

/// A stored identifier made self-delimiting: its length in bytes, `:`,
/// then the identifier (`17:…`). It stands in for the identifier's
/// project pseudonym at the head of a concatenation that a statement only
/// groups, compares or counts (`COUNT(DISTINCT BEN_NIR_PSA ||
/// BEN_RNG_GEM)`, the SNDS's way of counting patients): like the
/// pseudonyms, whose set is prefix-free (see
/// `pds_project::Pseudonymiser::pseudonym`), no two identifiers followed
/// by anything give the same string, so two such keys are equal exactly
/// when the mapped ones are, with no hash computed. It never fails, and
/// like [`PseudonymUdf`] it is never registered in a session.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DelimitedUdf {
    signature: Signature,
}

impl DelimitedUdf {
    /// The function.
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(DelimitedUdf {
            signature: Signature::string(1, Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for DelimitedUdf {
    fn name(&self) -> &str {
        "pds_delimited"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types.first().cloned().unwrap_or(DataType::Utf8))
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(same_field(self.name(), &args))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arg =
            args.args.into_iter().next().ok_or_else(|| {
                DataFusionError::Internal("pds_delimited takes one argument".into())
            })?;
        map_strings(self.name(), arg, |s, out| {
            use std::fmt::Write;
            out.clear();
            let _ = write!(out, "{}:", s.len());
            out.push_str(s);
            Ok(())
        })
    }
}

/// The inverse of building a key with [`DelimitedUdf`], composed with the
/// pseudonym mapping: `17:<id><rest>` becomes `<project pseudonym of
/// id><rest>`, the value the statement wrote. Applied where such a key's
/// value is read (see [`crate::late`]).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PrefixedPseudonymUdf {
    f: ProjectFn,
    signature: Signature,
}

impl ScalarUDFImpl for PrefixedPseudonymUdf {
    fn name(&self) -> &str {
        "project_pseudonym_prefixed"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types.first().cloned().unwrap_or(DataType::Utf8))
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(same_field(self.name(), &args))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arg = args.args.into_iter().next().ok_or_else(|| {
            DataFusionError::Internal("project_pseudonym_prefixed takes one argument".into())
        })?;
        map_strings(self.name(), arg, |s, out| {
            // Only keys built by `pds_delimited` reach this function.
            let malformed = || DataFusionError::Internal("a delimited key is malformed".into());
            let (len, tail) = s.split_once(':').ok_or_else(malformed)?;
            let len: usize = len.parse().map_err(|_| malformed())?;
            let id = tail.get(..len).ok_or_else(malformed)?;
            let rest = tail.get(len..).ok_or_else(malformed)?;
            self.f.pseudo.pseudonym_into(id, out);
            out.push_str(rest);
            Ok(())
        })
    }
}

fn is_string_type(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8)
}

/// The project pseudonym of an identifier *number*
/// (`pds_snds::identifiers::number_column`): the snapshot's dictionary
/// gives the stored identifier, the project's function its pseudonym, as
/// a string of the view column's type. [`crate::late`] puts it where a
/// value kept as a number is first read; like [`PseudonymUdf`] it is never
/// registered in a session.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct NumberedPseudonymUdf {
    f: ProjectFn,
    numbers: Numbers,
    out: DataType,
    signature: Signature,
}

impl NumberedPseudonymUdf {
    /// Writes the project pseudonym of number `n` into `out`.
    fn pseudonym_of(&self, values: &LargeStringArray, n: i64, out: &mut String) -> Result<()> {
        let id = usize::try_from(n)
            .ok()
            .filter(|i| *i < values.len())
            .ok_or_else(|| {
                // Never the number itself: it is an internal value.
                DataFusionError::Internal(
                    "an identifier number is not in the snapshot's dictionary".into(),
                )
            })?;
        self.f.pseudo.pseudonym_into(values.value(id), out);
        Ok(())
    }
}

/// The loaded dictionary, or an error saying it was not loaded (the gate
/// loads it before running a plan that needs it).
fn loaded(n: &Numbers) -> Result<&LargeStringArray> {
    n.0.values()
        .ok_or_else(|| DataFusionError::Internal("the identifier dictionary was not loaded".into()))
}

impl ScalarUDFImpl for NumberedPseudonymUdf {
    fn name(&self) -> &str {
        "project_pseudonym_of_number"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.out.clone())
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let nullable = args.arg_fields.first().is_none_or(|f| f.is_nullable());
        Ok(Arc::new(Field::new(
            self.name(),
            self.out.clone(),
            nullable,
        )))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arg = args.args.into_iter().next().ok_or_else(|| {
            DataFusionError::Internal("project_pseudonym_of_number takes one argument".into())
        })?;
        let values = loaded(&self.numbers)?;
        // Lines of one person are often adjacent: the last result (still
        // in the buffer) is reused.
        let mut last: Option<i64> = None;
        map_numbers(self.name(), arg, &self.out, |n, out| {
            if last != Some(n) {
                out.clear();
                self.pseudonym_of(values, n, out)?;
                last = Some(n);
            }
            Ok(())
        })
    }
}

/// The delimited key of an identifier number: the number in decimal, then
/// `:` (`123:`). Digits never include `:`, so keys are prefix-free, as
/// [`DelimitedUdf`]'s are, and two concatenations headed by keys are equal
/// exactly when their numbers (so their identifiers) and tails are.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct NumberKeyUdf {
    out: DataType,
    signature: Signature,
}

impl ScalarUDFImpl for NumberKeyUdf {
    fn name(&self) -> &str {
        "pds_number_key"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.out.clone())
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let nullable = args.arg_fields.first().is_none_or(|f| f.is_nullable());
        Ok(Arc::new(Field::new(
            self.name(),
            self.out.clone(),
            nullable,
        )))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arg =
            args.args.into_iter().next().ok_or_else(|| {
                DataFusionError::Internal("pds_number_key takes one argument".into())
            })?;
        map_numbers(self.name(), arg, &self.out, |n, out| {
            use std::fmt::Write;
            out.clear();
            let _ = write!(out, "{n}:");
            Ok(())
        })
    }
}

/// [`PrefixedPseudonymUdf`] for keys built by [`NumberKeyUdf`]:
/// `123:<rest>` becomes `<project pseudonym of identifier 123><rest>`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct NumberedPrefixedUdf {
    f: ProjectFn,
    numbers: Numbers,
    signature: Signature,
}

impl ScalarUDFImpl for NumberedPrefixedUdf {
    fn name(&self) -> &str {
        "project_pseudonym_number_prefixed"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types.first().cloned().unwrap_or(DataType::Utf8))
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(same_field(self.name(), &args))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arg = args.args.into_iter().next().ok_or_else(|| {
            DataFusionError::Internal("project_pseudonym_number_prefixed takes one argument".into())
        })?;
        let values = loaded(&self.numbers)?;
        map_strings(self.name(), arg, |s, out| {
            // Only keys built by `pds_number_key` reach this function.
            let malformed = || DataFusionError::Internal("a delimited key is malformed".into());
            let (n, rest) = s.split_once(':').ok_or_else(malformed)?;
            let n: usize = n.parse().map_err(|_| malformed())?;
            if n >= values.len() {
                return Err(DataFusionError::Internal(
                    "an identifier number is not in the snapshot's dictionary".into(),
                ));
            }
            out.clear();
            self.f.pseudo.pseudonym_into(values.value(n), out);
            out.push_str(rest);
            Ok(())
        })
    }
}

/// Applies `f` to every value of an `Int64` array or scalar, giving
/// strings of type `out`. `f` writes each result into one buffer, which
/// keeps the previous result until `f` changes it.
fn map_numbers(
    name: &str,
    arg: ColumnarValue,
    out: &DataType,
    mut f: impl FnMut(i64, &mut String) -> Result<()>,
) -> Result<ColumnarValue> {
    let mut buf = String::new();
    match arg {
        ColumnarValue::Scalar(ScalarValue::Int64(v)) => {
            let v = match v {
                Some(n) => {
                    f(n, &mut buf)?;
                    Some(buf)
                }
                None => None,
            };
            Ok(ColumnarValue::Scalar(match out {
                DataType::Utf8View => ScalarValue::Utf8View(v),
                DataType::LargeUtf8 => ScalarValue::LargeUtf8(v),
                _ => ScalarValue::Utf8(v),
            }))
        }
        ColumnarValue::Array(a) => {
            let numbers = a
                .as_primitive_opt::<arrow::datatypes::Int64Type>()
                .ok_or_else(|| {
                    DataFusionError::Internal(format!("{name} of a {}", a.data_type()))
                })?;
            let n = numbers.len();
            macro_rules! fill {
                ($builder:expr) => {{
                    let mut b = $builder;
                    for v in numbers.iter() {
                        match v {
                            None => b.append_null(),
                            Some(x) => {
                                f(x, &mut buf)?;
                                b.append_value(&buf);
                            }
                        }
                    }
                    Arc::new(b.finish()) as ArrayRef
                }};
            }
            let array = match out {
                DataType::Utf8View => fill!(StringViewBuilder::with_capacity(n)),
                DataType::LargeUtf8 => fill!(LargeStringBuilder::with_capacity(n, n * 36)),
                _ => fill!(StringBuilder::with_capacity(n, n * 36)),
            };
            Ok(ColumnarValue::Array(array))
        }
        ColumnarValue::Scalar(other) => Err(DataFusionError::Internal(format!(
            "{name} of a {}",
            other.data_type()
        ))),
    }
}

/// Truncates dates and timestamps to the first day of their month or year,
/// keeping the type. Written for PDS rather than `date_trunc` because it
/// cannot fail: `date_trunc` goes through nanosecond timestamps and errors
/// (quoting the value) on dates after 2262, which the SNDS uses as
/// placeholders. A value that cannot be truncated becomes NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TruncDate {
    year_only: bool,
    signature: Signature,
}

impl TruncDate {
    /// Truncation to `p` (month or year; day is the identity).
    pub fn new(p: DatePrecision) -> TruncDate {
        TruncDate {
            year_only: p == DatePrecision::Year,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }

    fn trunc(&self, d: chrono::NaiveDate) -> Option<chrono::NaiveDate> {
        use chrono::Datelike;
        let month = if self.year_only { 1 } else { d.month() };
        chrono::NaiveDate::from_ymd_opt(d.year(), month, 1)
    }
}

/// Days from 0001-01-01 (chrono's day 1) to 1970-01-01 (Arrow's day 0).
const EPOCH_DAYS_CE: i32 = 719_163;

impl ScalarUDFImpl for TruncDate {
    fn name(&self) -> &str {
        if self.year_only {
            "coarsen_to_year"
        } else {
            "coarsen_to_month"
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types.first().cloned().unwrap_or(DataType::Date32))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use arrow::array::{Date32Array, TimestampSecondArray};
        use chrono::Datelike;
        let (arr, scalar) = match args.args.into_iter().next() {
            Some(ColumnarValue::Array(a)) => (a, false),
            Some(ColumnarValue::Scalar(s)) => (s.to_array()?, true),
            None => {
                return Err(DataFusionError::Internal(
                    "coarsening takes one argument".into(),
                ));
            }
        };
        let day = |days: i32| {
            chrono::NaiveDate::from_num_days_from_ce_opt(days.checked_add(EPOCH_DAYS_CE)?)
                .and_then(|d| self.trunc(d))
                .map(|d| d.num_days_from_ce() - EPOCH_DAYS_CE)
        };
        let out: ArrayRef = match arr.data_type() {
            DataType::Date32 => {
                let a = arr.as_primitive::<arrow::datatypes::Date32Type>();
                Arc::new(a.iter().map(|v| v.and_then(day)).collect::<Date32Array>())
            }
            DataType::Timestamp(arrow::datatypes::TimeUnit::Second, tz) => {
                let a = arr.as_primitive::<arrow::datatypes::TimestampSecondType>();
                let secs = |s: i64| {
                    let days = i32::try_from(s.div_euclid(86_400)).ok()?;
                    day(days).map(|d| i64::from(d) * 86_400)
                };
                Arc::new(
                    a.iter()
                        .map(|v| v.and_then(secs))
                        .collect::<TimestampSecondArray>()
                        .with_timezone_opt(tz.clone()),
                )
            }
            other => {
                return Err(DataFusionError::Internal(format!(
                    "coarsening a {other} column"
                )));
            }
        };
        if scalar {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?));
        }
        Ok(ColumnarValue::Array(out))
    }
}

fn column(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

/// Days since 1970-01-01 of 1 January of `year`.
fn jan_first(year: i32) -> Result<ScalarValue> {
    let d = chrono::NaiveDate::from_ymd_opt(year, 1, 1)
        .ok_or_else(|| DataFusionError::Plan(format!("year {year} is out of range")))?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)
        .ok_or_else(|| DataFusionError::Internal("epoch".into()))?;
    Ok(ScalarValue::Date32(Some((d - epoch).num_days() as i32)))
}

/// Everything needed to build the views of one project request.
pub struct ViewBuilder<'a> {
    /// The request's session (to parse the population predicate).
    pub ctx: &'a SessionContext,
    /// Base tables of the snapshot.
    pub base: &'a [(String, Arc<datafusion::datasource::listing::ListingTable>)],
    /// The resolved perimeter.
    pub perimeter: &'a ResolvedPerimeter,
    /// The project's pseudonym function.
    pub udf: Arc<ScalarUDF>,
    /// Cohort of platform pseudonyms (empty: none).
    pub cohort: &'a [String],
}

impl ViewBuilder<'_> {
    fn base_scan(&self, name: &str) -> Result<LogicalPlanBuilder> {
        let (_, t) =
            self.base.iter().find(|(n, _)| n == name).ok_or_else(|| {
                DataFusionError::Plan(format!("table {name} is not in the snapshot"))
            })?;
        LogicalPlanBuilder::scan(
            TableReference::bare(name),
            provider_as_source(t.clone() as Arc<dyn TableProvider>),
            None,
        )
    }

    /// `IR_BEN_R.<column>` of the project's population.
    fn population(&self, wanted: &str) -> Result<LogicalPlan> {
        let mut b = self.base_scan("IR_BEN_R")?;
        if let Some(pred) = &self.perimeter.population {
            let schema = b.schema().clone();
            let e = self.ctx.parse_sql_expr(pred, &schema)?;
            b = b.filter(e)?;
        }
        if !self.cohort.is_empty() {
            let list: Vec<Expr> = self.cohort.iter().map(|c| lit(c.as_str())).collect();
            b = b.filter(column("BEN_NIR_PSA").in_list(list, false))?;
        }
        b.project(vec![column(wanted)])?.build()
    }

    /// The visible rows of `t`, all its columns.
    fn restricted(&self, t: &ViewTable) -> Result<LogicalPlan> {
        let mut b = self.base_scan(&t.name)?;
        if !self.perimeter.restricts_rows() {
            return b.build();
        }
        match &t.rows {
            RowFilter::Own {
                year_column,
                person,
            } => {
                if let (Some(c), Some([from, to])) = (year_column, self.perimeter.years) {
                    let c = cast(column(c), DataType::Date32);
                    b = b.filter(
                        c.clone()
                            .gt_eq(Expr::Literal(jan_first(from as i32)?, None))
                            .and(c.lt(Expr::Literal(jan_first(to as i32 + 1)?, None))),
                    )?;
                }
                if let Some((own, ben)) = person
                    && (self.perimeter.population.is_some() || !self.cohort.is_empty())
                {
                    let pop = self.population(ben)?;
                    let pop = LogicalPlanBuilder::from(pop).alias("population")?.build()?;
                    b = b.join(
                        pop,
                        JoinType::LeftSemi,
                        (
                            vec![Column::new(
                                Some(TableReference::bare(t.name.as_str())),
                                own,
                            )],
                            vec![Column::new(Some(TableReference::bare("population")), ben)],
                        ),
                        None,
                    )?;
                }
            }
            RowFilter::Via { parent, keys } => {
                let parent_table = self
                    .perimeter
                    .tables
                    .iter()
                    .chain(self.perimeter.parents.iter())
                    .find(|v| &v.name == parent)
                    .ok_or_else(|| {
                        DataFusionError::Plan(format!("{parent} is needed to restrict {}", t.name))
                    })?;
                let p = LogicalPlanBuilder::from(self.restricted(parent_table)?)
                    .project(keys.iter().map(|k| column(k)).collect::<Vec<_>>())?
                    .alias("parent")?
                    .build()?;
                b = b.join(
                    p,
                    JoinType::LeftSemi,
                    (
                        keys.iter()
                            .map(|k| Column::new(Some(TableReference::bare(t.name.as_str())), k))
                            .collect::<Vec<_>>(),
                        keys.iter()
                            .map(|k| Column::new(Some(TableReference::bare("parent")), k))
                            .collect::<Vec<_>>(),
                    ),
                    None,
                )?;
            }
        }
        b.build()
    }

    /// The view of `t`: restricted rows, visible columns mapped.
    pub fn view(&self, t: &ViewTable) -> Result<LogicalPlan> {
        self.build(t, None)
    }

    /// The view of `t` with one more column, [`PATIENT_COLUMN`]: the stored
    /// patient identifier, for disclosure control to count patients with.
    /// `None` when the table holds no patient. Only the gate's rewrite of
    /// an already checked statement scans it: no statement can name it.
    pub fn view_with_patient(&self, t: &ViewTable) -> Result<Option<LogicalPlan>> {
        let Some((_, base)) = self.base.iter().find(|(n, _)| n == &t.name) else {
            return Ok(None);
        };
        let schema = base.schema();
        let Some(id) = PATIENT_ID_COLUMNS
            .iter()
            .find(|c| schema.field_with_name(c).is_ok())
        else {
            return Ok(None);
        };
        self.build(t, Some(id)).map(Some)
    }

    fn build(&self, t: &ViewTable, patient: Option<&str>) -> Result<LogicalPlan> {
        let restricted = self.restricted(t)?;
        let schema = restricted.schema().clone();
        let mut exprs = Vec::new();
        for c in &t.columns {
            let base = column(&c.name);
            // Fails early, naming the column, if the snapshot lacks it.
            schema.qualified_field_with_unqualified_name(&c.name)?;
            let e = match c.view {
                ColumnView::Plain => base,
                ColumnView::Pseudonym => self.udf.call(vec![base]),
                ColumnView::Truncated(p) => {
                    ScalarUDF::new_from_impl(TruncDate::new(p)).call(vec![base])
                }
                ColumnView::Department => {
                    datafusion::functions::unicode::expr_fn::left(base, lit(2i64))
                }
            };
            exprs.push(e.alias(&c.name));
        }
        if let Some(id) = patient {
            exprs.push(cast(column(id), DataType::Utf8).alias(PATIENT_COLUMN));
        }
        LogicalPlanBuilder::from(restricted)
            .project(exprs)?
            .alias(TableReference::bare(t.name.as_str()))?
            .build()
    }
}

/// The hidden column of [`ViewBuilder::view_with_patient`].
pub const PATIENT_COLUMN: &str = "__pds_patient";

/// A project table: the view plan, planned behind a [`Barrier`].
#[derive(Debug)]
pub struct PerimeterTable {
    plan: LogicalPlan,
    schema: SchemaRef,
    /// Columns shown as stored: only predicates on these may go below the
    /// barrier (a predicate on a mapped or coarsened column would be
    /// rewritten over the stored value and could fail on a hidden row).
    plain: Vec<String>,
    /// The same view with its pseudonym columns left as stored, for
    /// [`crate::late`]; `None` when the view maps no column (or its shape
    /// is not the one [`ViewBuilder`] builds).
    late: Option<Arc<LateView>>,
    /// Whether this provider is the late variant (stored pseudonyms).
    shows_stored: bool,
    /// `plan` taken apart for [`PerimeterTable::scan`] to plan without the
    /// optimiser; `None` when the view is not one stored table (a
    /// population or parent restriction joins another).
    direct: Option<Arc<Direct>>,
}

/// A view over one stored table, taken apart: what `scan` needs to build
/// its physical plan (stored scan → row restriction → column expressions)
/// directly.
///
/// Why: optimising and planning the whole view (every column of the
/// table) inside each `scan`, before DataFusion optimises the statement's
/// physical plan again, was the largest part of a small statement's fixed
/// cost. The plan built here is the one the optimiser arrived at (only the
/// columns used are read; the restriction and the pushable predicates go
/// to a filter that the physical optimiser pushes into the Parquet scan).
#[derive(Debug)]
struct Direct {
    base: Arc<dyn TableProvider>,
    /// The row restriction (perimeter years), over stored columns.
    keep: Option<Expr>,
    /// One expression per view column, over stored columns, unaliased.
    exprs: Vec<Expr>,
}

/// `plan` taken apart if it is `alias(projection(filter?(scan)))` of one
/// stored table, as [`ViewBuilder`] builds a view with no join.
fn direct(plan: &LogicalPlan) -> Option<Direct> {
    let LogicalPlan::SubqueryAlias(alias) = plan else {
        return None;
    };
    let LogicalPlan::Projection(p) = alias.input.as_ref() else {
        return None;
    };
    let (keep, input) = match p.input.as_ref() {
        LogicalPlan::Filter(f) => (Some(unnormalize_col(f.predicate.clone())), f.input.as_ref()),
        other => (None, other),
    };
    let LogicalPlan::TableScan(scan) = input else {
        return None;
    };
    if scan.projection.is_some() || !scan.filters.is_empty() || scan.fetch.is_some() {
        return None;
    }
    let base = source_as_provider(&scan.source).ok()?;
    let stored = base.schema();
    let exprs: Vec<Expr> = p
        .expr
        .iter()
        .map(|e| unnormalize_col(e.clone().unalias()))
        .collect();
    // Every column named must be stored (the view builder checked it; a
    // view of another shape is planned the general way).
    let all_stored = exprs
        .iter()
        .chain(keep.iter())
        .flat_map(|e| e.column_refs())
        .all(|c| stored.index_of(&c.name).is_ok());
    if !all_stored || exprs.len() != plan.schema().fields().len() {
        return None;
    }
    // `CAST(date AS DATE) >= ...` as the optimiser would leave it, so that
    // Parquet statistics can prune on it.
    let keep = match keep {
        Some(k) => {
            let schema = DFSchema::try_from(stored.as_ref().clone()).ok()?;
            let simplifier = ExprSimplifier::new(
                SimplifyContext::builder()
                    .with_schema(Arc::new(schema))
                    .build(),
            );
            Some(simplifier.simplify(k.clone()).unwrap_or(k))
        }
        None => None,
    };
    Some(Direct { base, keep, exprs })
}

/// Pseudonym columns of a view by name, with the function that maps each.
pub type PseudonymColumns = Vec<(String, Arc<ScalarUDF>)>;

/// A view whose pseudonym columns are mapped later in the plan.
#[derive(Debug)]
struct LateView {
    stored: LogicalPlan,
    /// Column name → the function that maps it.
    columns: PseudonymColumns,
}

/// The mapping function of `e` when `e` is `project_pseudonym(column)`.
pub fn pseudonym_call(e: &Expr) -> Option<(&Column, &Arc<ScalarUDF>)> {
    match e {
        Expr::ScalarFunction(f) if f.func.inner().downcast_ref::<PseudonymUdf>().is_some() => {
            match f.args.as_slice() {
                [Expr::Column(c)] => Some((c, &f.func)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The view of `plan` with `project_pseudonym(c) AS n` replaced by `c AS n`
/// in its top projection, or by `PDS_c_ID AS n` when the snapshot numbers
/// identifiers (an `Int64` where the view shows a string: the only change
/// of schema allowed); `None` if the schema would change otherwise.
fn late_view(plan: &LogicalPlan) -> Option<LateView> {
    let LogicalPlan::SubqueryAlias(alias) = plan else {
        return None;
    };
    let LogicalPlan::Projection(p) = alias.input.as_ref() else {
        return None;
    };
    let input = p.input.schema();
    let mut columns = Vec::new();
    let mut exprs = Vec::with_capacity(p.expr.len());
    let mut numbered = std::collections::HashSet::new();
    for (i, e) in p.expr.iter().enumerate() {
        match e {
            Expr::Alias(a) => match pseudonym_call(&a.expr) {
                Some((c, udf)) => {
                    let shown = p.schema.field(i);
                    let number = Column::new(
                        c.relation.clone(),
                        pds_snds::identifiers::number_column(&c.name),
                    );
                    // The number, where the snapshot has it with the
                    // identifier's nullability.
                    let with_number = input
                        .qualified_field_from_column(&number)
                        .map(|(_, f)| f)
                        .ok()
                        .filter(|f| {
                            f.data_type() == &DataType::Int64
                                && f.is_nullable() == shown.is_nullable()
                        })
                        .and_then(|_| PseudonymUdf::numbered_of(udf, shown.data_type()));
                    match with_number {
                        Some(mapping) => {
                            columns.push((a.name.clone(), Arc::new(mapping)));
                            exprs.push(Expr::Column(number).alias(&a.name));
                            numbered.insert(a.name.clone());
                        }
                        None => {
                            columns.push((a.name.clone(), udf.clone()));
                            exprs.push(Expr::Column(c.clone()).alias(&a.name));
                        }
                    }
                }
                None => exprs.push(e.clone()),
            },
            _ => exprs.push(e.clone()),
        }
    }
    if columns.is_empty() {
        return None;
    }
    let projection = datafusion::logical_expr::Projection::try_new(exprs, p.input.clone()).ok()?;
    let stored = LogicalPlan::SubqueryAlias(
        datafusion::logical_expr::SubqueryAlias::try_new(
            Arc::new(LogicalPlan::Projection(projection)),
            alias.alias.clone(),
        )
        .ok()?,
    );
    // Fail safe: a late variant whose schema differs in any other way would
    // break the plan it is swapped into; the eager view is then the only one.
    let (a, b) = (stored.schema().as_arrow(), plan.schema().as_arrow());
    let compatible = a.fields().len() == b.fields().len()
        && a.fields().iter().zip(b.fields()).all(|(x, y)| {
            x.name() == y.name()
                && x.is_nullable() == y.is_nullable()
                && (x.data_type() == y.data_type()
                    || (numbered.contains(x.name()) && x.data_type() == &DataType::Int64))
        });
    if !compatible {
        return None;
    }
    Some(LateView { stored, columns })
}

impl PerimeterTable {
    /// A table whose rows are those of `plan`; `plain` are the columns
    /// shown as stored.
    pub fn new(plan: LogicalPlan, plain: Vec<String>) -> PerimeterTable {
        let schema = Arc::new(plan.schema().as_arrow().clone());
        let late = late_view(&plan).map(Arc::new);
        let direct = direct(&plan).map(Arc::new);
        PerimeterTable {
            plan,
            schema,
            plain,
            late,
            shows_stored: false,
            direct,
        }
    }

    /// The same table showing its pseudonym columns as stored (as their
    /// numbers, `Int64`, where the snapshot numbers identifiers), and the
    /// function that maps each of them; `None` if it has none. Only
    /// [`crate::late`] uses it, and it maps every such column before any
    /// value can be seen.
    pub fn stored_variant(&self) -> Option<(PerimeterTable, PseudonymColumns)> {
        if self.shows_stored {
            return None;
        }
        let late = self.late.as_ref()?;
        Some((
            PerimeterTable {
                plan: late.stored.clone(),
                // Numbered identifiers are `Int64` here.
                schema: Arc::new(late.stored.schema().as_arrow().clone()),
                plain: self.plain.clone(),
                late: Some(late.clone()),
                shows_stored: true,
                direct: direct(&late.stored).map(Arc::new),
            },
            late.columns.clone(),
        ))
    }

    /// Whether this provider shows stored pseudonyms (the late variant).
    pub fn shows_stored(&self) -> bool {
        self.shows_stored
    }

    fn pushable(&self, e: &Expr) -> bool {
        cannot_fail(e)
            && e.column_refs()
                .iter()
                .all(|c| self.plain.iter().any(|p| p == &c.name))
    }

    /// The view's columns a scan returns, in order: `projection`, or all.
    fn positions(&self, projection: Option<&Vec<usize>>) -> Vec<usize> {
        match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        }
    }

    /// Positions, in the scan's output, of the columns shown as stored.
    fn plain_outputs(&self, projection: Option<&Vec<usize>>) -> Vec<usize> {
        self.positions(projection)
            .iter()
            .enumerate()
            .filter(|(_, i)| {
                let name = self.schema.field(**i).name();
                self.plain.iter().any(|p| p == name)
            })
            .map(|(k, _)| k)
            .collect()
    }

    /// The view's rows as [`Direct`] plans them: the stored scan of the
    /// columns used, one filter (restriction and pushable predicates), the
    /// view's expressions. `None` (plan the general way) if the result
    /// would not have the view's column types.
    async fn scan_direct(
        &self,
        d: &Direct,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let wanted = self.positions(projection);
        let mut predicates: Vec<Expr> = d.keep.iter().cloned().collect();
        for f in filters.iter().filter(|f| self.pushable(f)) {
            // Over the view's columns; a plain column is its stored one,
            // but the view's expression is substituted all the same.
            let f = unnormalize_col(f.clone())
                .transform_up(|e| match e {
                    Expr::Column(c) => {
                        let i = self.schema.index_of(&c.name)?;
                        Ok(Transformed::yes(d.exprs[i].clone()))
                    }
                    e => Ok(Transformed::no(e)),
                })?
                .data;
            predicates.push(f);
        }
        let stored = d.base.schema();
        let mut columns = std::collections::BTreeSet::new();
        for e in wanted.iter().map(|i| &d.exprs[*i]).chain(predicates.iter()) {
            for c in e.column_refs() {
                columns.insert(stored.index_of(&c.name)?);
            }
        }
        let columns: Vec<usize> = columns.into_iter().collect();
        let mut plan = d
            .base
            .scan(state, Some(&columns), &predicates, None)
            .await?;
        let input = DFSchema::try_from(plan.schema().as_ref().clone())?;
        if let Some(predicate) = conjunction(predicates) {
            let predicate = state.create_physical_expr(predicate, &input)?;
            let selectivity = state.config_options().optimizer.default_filter_selectivity;
            let filter = FilterExecBuilder::new(predicate, plan)
                .with_batch_size(state.config().batch_size())
                .build()?
                .with_default_selectivity(selectivity)?;
            plan = Arc::new(filter);
        }
        let out = self.schema.project(&wanted)?;
        let exprs = wanted
            .iter()
            .map(|i| {
                Ok(ProjectionExpr {
                    expr: state.create_physical_expr(d.exprs[*i].clone(), &input)?,
                    alias: self.schema.field(*i).name().clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let plan = ProjectionExec::try_new_with_schema_metadata(exprs, plan, &out)?;
        let same = plan.schema().fields().len() == out.fields().len()
            && plan
                .schema()
                .fields()
                .iter()
                .zip(out.fields())
                .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
        Ok(same.then(|| Arc::new(plan) as Arc<dyn ExecutionPlan>))
    }
}

fn is_col(e: &Expr) -> bool {
    matches!(e, Expr::Column(_))
}
fn is_lit(e: &Expr) -> bool {
    matches!(e, Expr::Literal(..))
}

/// Whether evaluating `e` can never fail, whatever the row: such a
/// predicate may run below the barrier (it only prunes).
pub fn cannot_fail(e: &Expr) -> bool {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq => (is_col(left) && is_lit(right)) || (is_lit(left) && is_col(right)),
            Operator::And | Operator::Or => cannot_fail(left) && cannot_fail(right),
            _ => false,
        },
        Expr::Not(e) => cannot_fail(e),
        Expr::IsNull(e) | Expr::IsNotNull(e) => is_col(e),
        Expr::InList(l) => is_col(&l.expr) && l.list.iter().all(is_lit),
        Expr::Between(b) => is_col(&b.expr) && is_lit(&b.low) && is_lit(&b.high),
        // A column against a constant pattern (`DGN_PAL LIKE 'I21%'`). With
        // no escape character in play a pattern cannot be malformed, so
        // matching fails on no value; below the barrier it also prunes pages.
        Expr::Like(l) => {
            is_col(&l.expr)
                && l.escape_char.is_none()
                && matches!(
                    l.pattern.as_ref(),
                    Expr::Literal(
                        ScalarValue::Utf8(Some(p))
                            | ScalarValue::Utf8View(Some(p))
                            | ScalarValue::LargeUtf8(Some(p)),
                        _
                    ) if !p.contains('\\')
                )
        }
        _ => false,
    }
}

#[async_trait]
impl TableProvider for PerimeterTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                // `scan` applies every pushable predicate itself, so it is
                // exact: with `Inexact`, DataFusion evaluated it a second
                // time above the barrier and, worse, estimated its
                // selectivity twice, which made a filtered ER_PRS_F look
                // smaller than its refinement table and put 27 M
                // prestations on the build side of the nine-key join.
                if self.pushable(f) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if let Some(d) = &self.direct
            && let Some(plan) = self.scan_direct(d, state, projection, filters).await?
        {
            return Ok(Arc::new(Barrier::passing_join_filters_on(
                plan,
                self.plain_outputs(projection),
            )));
        }
        let mut b = LogicalPlanBuilder::from(self.plan.clone());
        for f in filters.iter().filter(|f| self.pushable(f)) {
            b = b.filter(f.clone())?;
        }
        if let Some(p) = projection {
            let cols = p
                .iter()
                .map(|i| column(self.schema.field(*i).name()))
                .collect::<Vec<_>>();
            b = b.project(cols)?;
        }
        let plan = b.build()?;
        let physical = state.create_physical_plan(&plan).await?;
        Ok(Arc::new(Barrier::passing_join_filters_on(
            physical,
            self.plain_outputs(projection),
        )))
    }
}

/// A pass-through node that accepts no filter from above, so nothing a
/// statement adds is evaluated before the perimeter, with one exception:
/// a dynamic join filter (DataFusion's bounds and hash set of a join's
/// build side, pushed into the probe scan) over columns shown as stored.
///
/// Why the exception is safe: such a filter only drops rows that cannot
/// match the join, so the answer is the same; and it is made of
/// comparisons of a stored column with values of its own type and a
/// membership test, which fail on no row, so a hidden row cannot make it
/// fail either. A filter over a mapped or coarsened column, over a
/// computed join key, or any other filter stays above.
#[derive(Debug)]
pub struct Barrier {
    input: Arc<dyn ExecutionPlan>,
    /// Output columns shown as stored, by position: the only ones a
    /// dynamic join filter may name to cross.
    stored: Arc<[usize]>,
}

impl Barrier {
    /// Wraps `input`; no filter crosses.
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Barrier {
        Barrier::passing_join_filters_on(input, Vec::new())
    }

    /// Wraps `input`; dynamic join filters on the output columns at
    /// `stored` (which must be shown as stored) may cross.
    pub fn passing_join_filters_on(input: Arc<dyn ExecutionPlan>, stored: Vec<usize>) -> Barrier {
        Barrier {
            input,
            stored: stored.into(),
        }
    }
}

/// Whether `f` is a dynamic filter whose keys are bare columns.
fn is_join_filter_on_columns(f: &Arc<dyn PhysicalExpr>) -> bool {
    f.downcast_ref::<DynamicFilterPhysicalExpr>().is_some()
        && f.children()
            .iter()
            .all(|c| c.downcast_ref::<PhysicalColumn>().is_some())
}

impl DisplayAs for Barrier {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "PerimeterBarrier")
    }
}

impl ExecutionPlan for Barrier {
    fn name(&self) -> &str {
        "PerimeterBarrier"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children
            .into_iter()
            .next()
            .ok_or_else(|| DataFusionError::Internal("PerimeterBarrier has one child".into()))?;
        Ok(Arc::new(Barrier {
            input,
            stored: self.stored.clone(),
        }))
    }
    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }
    fn gather_filters_for_pushdown(
        &self,
        phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> Result<FilterDescription> {
        // Dynamic filters arrive in the post-optimisation phase only; one
        // filter that may not cross keeps them all above.
        let crossing = phase == FilterPushdownPhase::Post
            && !self.stored.is_empty()
            && !parent_filters.is_empty()
            && parent_filters.iter().all(is_join_filter_on_columns);
        if !crossing {
            return Ok(FilterDescription::all_unsupported(
                &parent_filters,
                &self.children(),
            ));
        }
        // A filter naming any other column is left unsupported here.
        let child = ChildFilterDescription::from_child_with_allowed_indices(
            &parent_filters,
            self.stored.iter().copied().collect(),
            &self.input,
        )?;
        Ok(FilterDescription::new().with_child(child))
    }
    fn child_stats_requests(
        &self,
        partition: Option<usize>,
    ) -> Vec<datafusion::physical_plan::statistics::ChildStats> {
        crate::limits::pass_through_child_stats(partition)
    }
    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<datafusion::common::Statistics>],
        _args: &datafusion::physical_plan::statistics::StatisticsArgs,
    ) -> Result<Arc<datafusion::common::Statistics>> {
        // Statistics of the view's own output, after the perimeter.
        Ok(crate::limits::pass_through_statistics(
            input_stats,
            &self.input,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Date32Array, TimestampSecondArray};
    use arrow::datatypes::Field;

    fn days(y: i32, m: u32, d: u32) -> i32 {
        use chrono::Datelike;
        chrono::NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .num_days_from_ce()
            - EPOCH_DAYS_CE
    }

    fn apply(f: &TruncDate, a: ArrayRef) -> ArrayRef {
        let n = a.len();
        let field = Arc::new(Field::new("d", a.data_type().clone(), true));
        let out = f
            .invoke_with_args(ScalarFunctionArgs {
                args: vec![ColumnarValue::Array(a)],
                arg_fields: vec![field.clone()],
                number_rows: n,
                return_field: field,
                config_options: Arc::new(Default::default()),
            })
            .unwrap();
        match out {
            ColumnarValue::Array(a) => a,
            ColumnarValue::Scalar(_) => panic!("array expected"),
        }
    }

    #[test]
    fn coarsening_never_fails_even_on_placeholder_dates() {
        let month = TruncDate::new(DatePrecision::Month);
        let year = TruncDate::new(DatePrecision::Year);
        let input: ArrayRef = Arc::new(Date32Array::from(vec![
            Some(days(2022, 3, 17)),
            Some(days(9999, 12, 31)),
            Some(days(1600, 1, 1)),
            None,
        ]));
        let m = apply(&month, input.clone());
        let m = m.as_primitive::<arrow::datatypes::Date32Type>();
        assert_eq!(m.value(0), days(2022, 3, 1));
        assert_eq!(m.value(1), days(9999, 12, 1));
        assert_eq!(m.value(2), days(1600, 1, 1));
        assert!(m.is_null(3));
        let y = apply(&year, input);
        assert_eq!(
            y.as_primitive::<arrow::datatypes::Date32Type>().value(0),
            days(2022, 1, 1)
        );
        let ts: ArrayRef = Arc::new(TimestampSecondArray::from(vec![
            Some(i64::from(days(2021, 7, 9)) * 86_400 + 3_600),
            Some(i64::MAX),
        ]));
        let t = apply(&month, ts);
        let t = t.as_primitive::<arrow::datatypes::TimestampSecondType>();
        assert_eq!(t.value(0), i64::from(days(2021, 7, 1)) * 86_400);
        assert!(t.is_null(1), "out of range becomes NULL, not an error");
    }

    /// Column `a`: 1, 2, 3.
    fn one_column_batch() -> (SchemaRef, arrow::array::RecordBatch) {
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![Field::new(
            "a",
            DataType::Int64,
            false,
        )]));
        let batch = arrow::array::RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(arrow::array::Int64Array::from(vec![1, 2, 3]))],
        )
        .unwrap();
        (schema, batch)
    }

    #[test]
    fn the_barrier_passes_its_view_statistics_to_the_planner() {
        use datafusion::common::stats::Precision;
        use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
        let (schema, batch) = one_column_batch();
        let source = datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            schema,
            None,
        )
        .unwrap();
        let barrier = Barrier::new(source);
        let stats = StatisticsContext::new()
            .compute(&barrier, &StatisticsArgs::new())
            .unwrap();
        assert_eq!(stats.num_rows, Precision::Exact(3));
    }

    /// The values of the first column of `batches`, an `Int64` column.
    fn first_i64_column(batches: &[arrow::array::RecordBatch]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    #[tokio::test]
    async fn a_pushable_predicate_runs_once_below_the_barrier() {
        let (schema, batch) = one_column_batch();
        let mem = datafusion::datasource::MemTable::try_new(schema, vec![vec![batch]]).unwrap();
        let plan = LogicalPlanBuilder::scan("t", provider_as_source(Arc::new(mem)), None)
            .unwrap()
            .build()
            .unwrap();
        let ctx = SessionContext::new();
        ctx.register_table("v", Arc::new(PerimeterTable::new(plan, vec!["a".into()])))
            .unwrap();
        let df = ctx.sql("SELECT a FROM v WHERE a > 1").await.unwrap();
        let physical = df.clone().create_physical_plan().await.unwrap();
        let text = datafusion::physical_plan::displayable(physical.as_ref())
            .indent(true)
            .to_string();
        // Once, and inside the view: an inexact pushdown ran it again above.
        assert_eq!(text.matches("FilterExec").count(), 1, "{text}");
        let barrier = text.find("PerimeterBarrier").unwrap();
        assert!(text.find("FilterExec").unwrap() > barrier, "{text}");
        let rows = first_i64_column(&df.collect().await.unwrap());
        assert_eq!(rows, vec![2, 3]);
    }

    #[test]
    fn only_predicates_that_cannot_fail_may_cross_the_barrier() {
        use datafusion::prelude::col;
        assert!(cannot_fail(&col("A").eq(lit(1))));
        assert!(cannot_fail(&col("A").gt(lit(1)).and(col("B").is_null())));
        assert!(!cannot_fail(&(lit(1) / col("A")).eq(lit(1))));
        assert!(!cannot_fail(&cast(col("A"), DataType::Int32).eq(lit(1))));
        // A constant pattern without escapes, LIKE or NOT LIKE, any case.
        assert!(cannot_fail(&col("D").like(lit("I21%"))));
        assert!(cannot_fail(
            &col("D")
                .not_like(lit("90%"))
                .and(col("D").ilike(lit("e11_")))
        ));
        // Not: a pattern from a column, an escape character, a computed operand.
        assert!(!cannot_fail(&col("D").like(col("E"))));
        assert!(!cannot_fail(&col("D").like(lit("I21\\%"))));
        let escaped = Expr::Like(datafusion::logical_expr::expr::Like::new(
            false,
            Box::new(col("D")),
            Box::new(lit("I21!%")),
            Some('!'),
            false,
        ));
        assert!(!cannot_fail(&escaped));
        assert!(!cannot_fail(
            &datafusion::functions::expr_fn::upper(col("D")).like(lit("I%"))
        ));
    }

    /// Rows of `(k, d, s)`: a key, a date, a code.
    fn dated_rows() -> Arc<dyn TableProvider> {
        use arrow::array::{Int64Array, StringArray};
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("d", DataType::Date32, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let batch = arrow::array::RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5, 6])),
                Arc::new(Date32Array::from(vec![
                    Some(days(2021, 12, 31)),
                    Some(days(2022, 1, 1)),
                    Some(days(2022, 6, 15)),
                    None,
                    Some(days(2022, 12, 31)),
                    Some(days(2023, 1, 1)),
                ])),
                Arc::new(StringArray::from(vec![
                    Some("E110"),
                    Some("E119"),
                    None,
                    Some("I21"),
                    Some("E11"),
                    Some("E14"),
                ])),
            ],
        )
        .unwrap();
        Arc::new(datafusion::datasource::MemTable::try_new(schema, vec![vec![batch]]).unwrap())
    }

    /// A view as [`ViewBuilder`] shapes one with a year restriction:
    /// `k` plain, `d` to the month, `s` to its first two characters.
    fn dated_view(restrict: bool) -> LogicalPlan {
        let mut b = LogicalPlanBuilder::scan("t", provider_as_source(dated_rows()), None).unwrap();
        if restrict {
            let d = cast(column("d"), DataType::Date32);
            b = b
                .filter(
                    d.clone()
                        .gt_eq(Expr::Literal(jan_first(2022).unwrap(), None))
                        .and(d.lt(Expr::Literal(jan_first(2023).unwrap(), None))),
                )
                .unwrap();
        }
        b.project(vec![
            column("k").alias("k"),
            ScalarUDF::new_from_impl(TruncDate::new(DatePrecision::Month))
                .call(vec![column("d")])
                .alias("d"),
            datafusion::functions::unicode::expr_fn::left(column("s"), lit(2i64)).alias("s"),
        ])
        .unwrap()
        .alias(TableReference::bare("t"))
        .unwrap()
        .build()
        .unwrap()
    }

    async fn rows_of(ctx: &SessionContext, sql: &str) -> String {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn a_view_of_one_table_is_planned_directly_and_answers_as_the_general_plan() {
        for restrict in [false, true] {
            let direct = PerimeterTable::new(dated_view(restrict), vec!["k".into()]);
            assert!(direct.direct.is_some(), "restrict={restrict}");
            let mut general = PerimeterTable::new(dated_view(restrict), vec!["k".into()]);
            general.direct = None;
            let ctx = SessionContext::new();
            ctx.register_table("v", Arc::new(direct)).unwrap();
            ctx.register_table("g", Arc::new(general)).unwrap();
            let visible: i64 = if restrict { 3 } else { 6 };
            for (sql, expected_rows) in [
                ("SELECT * FROM {} ORDER BY k", Some(visible)),
                ("SELECT COUNT(*) AS n FROM {}", Some(1)),
                ("SELECT k FROM {} WHERE k > 2 ORDER BY k", None),
                (
                    "SELECT s, COUNT(*) AS n FROM {} GROUP BY s ORDER BY s",
                    None,
                ),
                ("SELECT k, d FROM {} WHERE s = 'E1' ORDER BY k", None),
                ("SELECT d FROM {} WHERE k IN (1, 5, 6) ORDER BY d", None),
            ] {
                let got = rows_of(&ctx, &sql.replace("{}", "v")).await;
                let want = rows_of(&ctx, &sql.replace("{}", "g")).await;
                assert_eq!(got, want, "{sql}, restrict={restrict}");
                if let Some(n) = expected_rows {
                    // A header, a rule, the rows, the frame.
                    assert_eq!(got.lines().count() as i64, n + 4, "{sql}\n{got}");
                }
            }
            let n = rows_of(&ctx, "SELECT COUNT(*) AS n FROM v").await;
            assert!(n.contains(&format!("| {visible} ")), "{n}");
        }
    }

    #[tokio::test]
    async fn a_direct_view_keeps_user_predicates_that_can_fail_above_its_barrier() {
        let ctx = SessionContext::new();
        ctx.register_table(
            "v",
            Arc::new(PerimeterTable::new(dated_view(true), vec!["k".into()])),
        )
        .unwrap();
        let df = ctx
            .sql("SELECT k FROM v WHERE k > 1 AND s = 'E1'")
            .await
            .unwrap();
        let physical = df.create_physical_plan().await.unwrap();
        let text = datafusion::physical_plan::displayable(physical.as_ref())
            .indent(true)
            .to_string();
        let barrier = text.find("PerimeterBarrier").unwrap();
        let (above, below) = text.split_at(barrier);
        // Below the barrier: the restriction and the pushable `k > 1`.
        assert!(below.contains("> 1"), "{text}");
        assert!(below.contains("2022-01-01"), "{text}");
        // The predicate on the coarsened `s` stays above it.
        assert!(above.contains("= E1"), "{text}");
        assert!(!below.contains("= E1"), "{text}");
    }

    #[test]
    fn a_view_joined_to_its_population_is_planned_the_general_way() {
        let pop = LogicalPlanBuilder::scan("p", provider_as_source(dated_rows()), None)
            .unwrap()
            .project(vec![column("k")])
            .unwrap()
            .alias("population")
            .unwrap()
            .build()
            .unwrap();
        let plan = LogicalPlanBuilder::scan("t", provider_as_source(dated_rows()), None)
            .unwrap()
            .join(
                pop,
                JoinType::LeftSemi,
                (
                    vec![Column::new(Some(TableReference::bare("t")), "k")],
                    vec![Column::new(Some(TableReference::bare("population")), "k")],
                ),
                None,
            )
            .unwrap()
            .project(vec![column("k").alias("k")])
            .unwrap()
            .alias(TableReference::bare("t"))
            .unwrap()
            .build()
            .unwrap();
        assert!(PerimeterTable::new(plan, vec!["k".into()]).direct.is_none());
    }

    /// The physical plan of `sql` in a session with `b` (keys 2 and 5, the
    /// code `E1`) and `v`, the view of `dated_view` over Parquet.
    async fn join_plan(sql: &str) -> (String, Vec<arrow::array::RecordBatch>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let writer = SessionContext::new();
        writer.register_table("t", dated_rows()).unwrap();
        writer
            .sql(&format!("COPY t TO '{}' STORED AS PARQUET", path.display()))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        // `b` stays the build side, whatever the statistics of so few rows.
        let ctx = SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new()
                .set_bool("datafusion.optimizer.join_reordering", false),
        );
        ctx.register_parquet("stored", path.to_str().unwrap(), Default::default())
            .await
            .unwrap();
        let stored = ctx.table_provider("stored").await.unwrap();
        let plan = LogicalPlanBuilder::scan("t", provider_as_source(stored), None)
            .unwrap()
            .project(vec![
                column("k").alias("k"),
                datafusion::functions::unicode::expr_fn::left(column("s"), lit(2i64)).alias("s"),
            ])
            .unwrap()
            .alias(TableReference::bare("t"))
            .unwrap()
            .build()
            .unwrap();
        ctx.register_table("v", Arc::new(PerimeterTable::new(plan, vec!["k".into()])))
            .unwrap();
        ctx.sql("CREATE TABLE b AS VALUES (2, 'E1'), (5, 'E1')")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let df = ctx.sql(sql).await.unwrap();
        let physical = df.clone().create_physical_plan().await.unwrap();
        let text = datafusion::physical_plan::displayable(physical.as_ref())
            .indent(true)
            .to_string();
        (text, df.collect().await.unwrap())
    }

    #[tokio::test]
    async fn a_join_filter_crosses_the_barrier_only_on_a_column_shown_as_stored() {
        let (text, rows) =
            join_plan("SELECT v.k FROM b JOIN v ON b.column1 = v.k ORDER BY v.k").await;
        let (_, below) = text.split_at(text.find("PerimeterBarrier").unwrap());
        assert!(below.contains("DynamicFilter"), "{text}");
        assert_eq!(first_i64_column(&rows), vec![2, 5]);
        // `s` is coarsened: the join's filter on it stays above the view.
        let (text, rows) = join_plan("SELECT v.k FROM b JOIN v ON b.column2 = v.s").await;
        let (_, below) = text.split_at(text.find("PerimeterBarrier").unwrap());
        assert!(!below.contains("DynamicFilter"), "{text}");
        // Rows 1, 2, 5 and 6 have codes starting E1, each joined to both
        // rows of b.
        assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 8);
    }
}
