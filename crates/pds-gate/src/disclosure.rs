//! Disclosure control of aggregate-only results, inside the plan.
//!
//! After a statement of an aggregate-only project passes the checks, the
//! gate rewrites its plan ([`Rewriter`]):
//!
//! 1. every scan of a project view that holds patients gets a hidden column,
//!    the stored patient identifier, carried up through projections,
//!    filters, joins, windows, unions and per-patient aggregates to each
//!    aggregate whose rows are published (the "result aggregates");
//! 2. each result aggregate gets one more aggregate, [`Contributors`], that
//!    counts the distinct patients behind each group and behind each value;
//! 3. a [`DisclosureNode`] above it withholds, before anything else sees
//!    them: rows computed on fewer patients than the threshold (primary
//!    suppression), values computed on too few patients (a `count(x)`, a
//!    `sum(...) FILTER (WHERE ...)`, a `min`, an `avg`), sums dominated by
//!    a few patients, and, in tables with margins (`ROLLUP`, `CUBE`,
//!    `GROUPING SETS`), enough other cells that no withheld cell can be
//!    recovered from its margin (secondary suppression). It rounds counts
//!    when the project's rules say so, adds the `pds_suppressed` column,
//!    and asks the query-set [`Tracker`] whether the population is too
//!    close to an earlier one before it lets any row out.
//!
//! The user's own expressions above the aggregate (ratios, `HAVING`,
//! windows, `ORDER BY`) only ever see controlled values.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray, RecordBatch, UInt64Array,
};
use arrow::compute::{cast, concat_batches, filter_record_batch, nullif};
use arrow::datatypes::{DataType, Field, SchemaRef};
use async_trait::async_trait;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, DFSchemaRef, ScalarValue};
use datafusion::datasource::provider_as_source;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::utils::grouping_set_to_exprlist;
use datafusion::logical_expr::{
    Aggregate, AggregateUDF, Distinct, Expr, ExprSchemable, Extension, LogicalPlan,
    LogicalPlanBuilder, Projection, SubqueryAlias, Union, UserDefinedLogicalNode,
    UserDefinedLogicalNodeCore, cast as cast_expr, lit, when,
};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, Partitioning, PhysicalExpr,
    PlanProperties,
};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use futures::TryStreamExt;
use pds_catalog::{Catalog, PopulationRow};
use pds_project::perimeter::DisclosurePolicy;
use pds_snds::identifiers::is_patient_id;
use serde::Serialize;

use crate::contributors::{Contributors, Iblt, PatientKey, PopulationSink};
use crate::views::{PATIENT_COLUMN, PerimeterTable};

/// The column added to aggregate-only results: true on a row where a value
/// was withheld.
pub const FLAG: &str = "pds_suppressed";

/// Messages of statements refused by disclosure control while they ran
/// start with this.
pub const REFUSED: &str = "[disclosure refused] ";

const HIDDEN: &str = "__pds_p";

fn refuse<T>(msg: impl Into<String>) -> Result<T> {
    Err(DataFusionError::Plan(format!("{REFUSED}{}", msg.into())))
}

/// What disclosure control did to one statement's result.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Threshold applied (distinct patients).
    pub threshold: u64,
    /// Counts rounded to a multiple of this (1: exact).
    pub rounding: u64,
    /// Rows withheld: fewer patients than the threshold.
    pub rows_suppressed: u64,
    /// Rows withheld so that a withheld row cannot be recovered from a
    /// margin.
    pub rows_secondary: u64,
    /// Values withheld: computed on fewer patients than the threshold.
    pub cells_suppressed: u64,
    /// Values withheld so that another cannot be recovered from a margin.
    pub cells_secondary: u64,
    /// Sums withheld by the dominance rule.
    pub cells_dominance: u64,
    /// Earlier populations this result was compared with.
    pub populations_compared: u64,
}

impl Summary {
    /// Whether anything was withheld.
    pub fn withheld(&self) -> bool {
        self.rows_suppressed
            + self.rows_secondary
            + self.cells_suppressed
            + self.cells_secondary
            + self.cells_dominance
            > 0
    }

    /// One line for people (a PostgreSQL notice, a CLI footer).
    pub fn notice(&self) -> String {
        let mut parts = Vec::new();
        if self.rows_suppressed + self.rows_secondary > 0 {
            parts.push(format!(
                "{} row(s) withheld ({} under {} patients, {} to protect them in margins)",
                self.rows_suppressed + self.rows_secondary,
                self.rows_suppressed,
                self.threshold,
                self.rows_secondary
            ));
        }
        let cells = self.cells_suppressed + self.cells_secondary + self.cells_dominance;
        if cells > 0 {
            parts.push(format!(
                "{cells} value(s) set to NULL ({} under {} patients, {} in margins, {} sums dominated by a few patients); rows with a withheld value have pds_suppressed = true",
                self.cells_suppressed,
                self.threshold,
                self.cells_secondary,
                self.cells_dominance
            ));
        }
        if self.rounding > 1 {
            parts.push(format!("counts rounded to the nearest {}", self.rounding));
        }
        format!("disclosure control: {}", parts.join("; "))
    }
}

/// The [`Summary`] of a statement, filled while it runs.
#[derive(Debug, Default)]
pub struct Report(Mutex<Summary>);

impl Report {
    pub(crate) fn new(p: &DisclosurePolicy) -> Report {
        Report(Mutex::new(Summary {
            threshold: p.threshold,
            rounding: p.rounding,
            ..Summary::default()
        }))
    }

    /// Forgets what an abandoned attempt of the statement counted, before
    /// it runs again (the gate's retry with sort-merge joins).
    pub(crate) fn restart(&self) {
        self.add(|s| {
            *s = Summary {
                threshold: s.threshold,
                rounding: s.rounding,
                ..Summary::default()
            }
        });
    }

    /// A copy of the summary so far.
    pub fn summary(&self) -> Summary {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn add(&self, f: impl FnOnce(&mut Summary)) {
        if let Ok(mut s) = self.0.lock() {
            f(&mut s);
        }
    }
}

/// The query-set tracker of one statement: refuses a population that
/// differs from an earlier one of the project by 1 to `threshold - 1`
/// patients, and records the new one.
#[derive(Debug)]
pub struct Tracker {
    /// The catalogue holding earlier populations.
    pub cat: Catalog,
    /// Project.
    pub project: String,
    /// Who runs the statement.
    pub principal: String,
    /// The statement's request id.
    pub request_id: Option<String>,
    /// Rules.
    pub policy: DisclosurePolicy,
    /// Held from the comparison to the record, so two statements of this
    /// gate cannot both pass against the state before the other.
    pub lock: Arc<tokio::sync::Mutex<()>>,
}

impl Tracker {
    async fn check_and_record(&self, populations: &[HashSet<u64>], report: &Report) -> Result<()> {
        let mut seen = HashSet::new();
        for p in populations {
            // The same set twice (a value without its own condition) is
            // checked once.
            if seen.insert((p.len(), p.iter().fold(0u64, |a, x| a ^ x))) {
                self.check_one(p, report).await?;
            }
        }
        Ok(())
    }

    async fn check_one(&self, patients: &HashSet<u64>, report: &Report) -> Result<()> {
        let t = self.policy.threshold;
        // A population under the threshold publishes nothing: every value
        // of it is withheld.
        if !self.policy.track_populations || (patients.len() as u64) < t {
            return Ok(());
        }
        let mut sketch = Iblt::new(Iblt::cells_for(t));
        for p in patients {
            sketch.insert(*p);
        }
        let cat_err = |e: pds_catalog::CatalogError| {
            DataFusionError::Execution(format!("query-set tracker: {e}"))
        };
        let _guard = self.lock.lock().await;
        let earlier = self.cat.populations(&self.project).await.map_err(cat_err)?;
        for e in &earlier {
            let Some(other) = Iblt::from_hex(&e.sketch) else {
                continue;
            };
            if let Some(d) = sketch.subtract(&other).and_then(Iblt::difference_size)
                && d > 0
                && (d as u64) < t
            {
                // Neither the number of patients apart nor who ran the
                // earlier statement: either would tell something.
                return refuse(format!(
                    "the population of a value of this result differs from that of an earlier result of project {} by fewer than the threshold of {t} patients: subtracting one from the other would describe them. Change the population by at least {t} patients (or run the earlier statement again unchanged)",
                    self.project
                ));
            }
        }
        report.add(|s| s.populations_compared += earlier.len() as u64);
        self.cat
            .add_population(&PopulationRow {
                id: crate::request_id(),
                project_id: self.project.clone(),
                created_at: chrono::Utc::now()
                    .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                    .to_string(),
                principal: self.principal.clone(),
                request_id: self.request_id.clone(),
                patients: patients.len() as i64,
                sketch: sketch.to_hex(),
            })
            .await
            .map_err(cat_err)
    }
}

/// How one published value of a result aggregate is controlled.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
struct CellSpec {
    /// Column in the aggregate's output.
    col: usize,
    /// Which contributor count applies (0: the group's).
    bit: usize,
    /// Index of its dominance share, for sums and averages.
    dominance: Option<usize>,
    /// A count: rounded under a rounding profile.
    count: bool,
    /// Conditions inside the value (each side of every boolean in its
    /// arguments): each must hold for no patient or for enough of them.
    branches: Vec<usize>,
}

/// Everything the disclosure node needs about its aggregate.
#[derive(Debug)]
struct Spec {
    id: u64,
    /// Columns passed through (groups, grouping id, values).
    n_out: usize,
    /// Group columns.
    groups: usize,
    /// The grouping id column, for tables with margins.
    grouping_id: Option<usize>,
    cells: Vec<CellSpec>,
    conditions: usize,
    /// The `pds_contributors` columns, one per patient column carried.
    contributors: Vec<usize>,
    policy: DisclosurePolicy,
    report: Arc<Report>,
    tracker: Arc<Tracker>,
    sink: PopulationSink,
}

/// The logical node that applies disclosure control to its input, a
/// result aggregate with its contributor counts.
#[derive(Debug, Clone)]
pub struct DisclosureNode {
    input: LogicalPlan,
    schema: DFSchemaRef,
    spec: Arc<Spec>,
}

impl PartialEq for DisclosureNode {
    fn eq(&self, other: &Self) -> bool {
        self.spec.id == other.spec.id && self.input == other.input
    }
}
impl Eq for DisclosureNode {}
impl std::hash::Hash for DisclosureNode {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.spec.id.hash(state);
    }
}
impl PartialOrd for DisclosureNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.spec.id.partial_cmp(&other.spec.id)
    }
}

fn node_schema(input: &LogicalPlan, spec: &Spec) -> Result<DFSchemaRef> {
    let cells: HashSet<usize> = spec.cells.iter().map(|c| c.col).collect();
    let mut fields: Vec<(Option<datafusion::common::TableReference>, Arc<Field>)> = input
        .schema()
        .iter()
        .take(spec.n_out)
        .enumerate()
        .map(|(i, (q, f))| {
            let f = if cells.contains(&i) {
                Arc::new(f.as_ref().clone().with_nullable(true))
            } else {
                f.clone()
            };
            (q.cloned(), f)
        })
        .collect();
    fields.push((None, Arc::new(Field::new(FLAG, DataType::Boolean, false))));
    Ok(Arc::new(DFSchema::new_with_metadata(
        fields,
        HashMap::new(),
    )?))
}

impl UserDefinedLogicalNodeCore for DisclosureNode {
    fn name(&self) -> &str {
        "DisclosureControl"
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }
    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }
    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "DisclosureControl: threshold={}, rounding={}",
            self.spec.policy.threshold, self.spec.policy.rounding
        )
    }
    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        let input = inputs
            .into_iter()
            .next()
            .ok_or_else(|| DataFusionError::Internal("DisclosureControl has one input".into()))?;
        let schema = node_schema(&input, &self.spec)?;
        Ok(DisclosureNode {
            input,
            schema,
            spec: self.spec.clone(),
        })
    }
}

/// Plans [`DisclosureNode`]s.
#[derive(Debug)]
pub struct DisclosurePlanner;

#[async_trait]
impl ExtensionPlanner for DisclosurePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn datafusion::catalog::Session,
        _ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(n) = node.as_any().downcast_ref::<DisclosureNode>() else {
            return Ok(None);
        };
        let input = physical_inputs
            .first()
            .cloned()
            .ok_or_else(|| DataFusionError::Internal("DisclosureControl has one input".into()))?;
        Ok(Some(Arc::new(DisclosureExec::new(
            input,
            Arc::new(n.schema.as_arrow().clone()),
            n.spec.clone(),
        ))))
    }
}

/// The physical side of [`DisclosureNode`]: reads the whole aggregate (it
/// is small, and margins need all of it), controls it, then emits it.
#[derive(Debug)]
pub struct DisclosureExec {
    input: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    spec: Arc<Spec>,
    props: Arc<PlanProperties>,
}

impl DisclosureExec {
    fn new(input: Arc<dyn ExecutionPlan>, schema: SchemaRef, spec: Arc<Spec>) -> DisclosureExec {
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        DisclosureExec {
            input,
            schema,
            spec,
            props,
        }
    }
}

impl DisplayAs for DisclosureExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "DisclosureControlExec: threshold={}, rounding={}",
            self.spec.policy.threshold, self.spec.policy.rounding
        )
    }
}

impl ExecutionPlan for DisclosureExec {
    fn name(&self) -> &str {
        "DisclosureControlExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
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
        let input = children.into_iter().next().ok_or_else(|| {
            DataFusionError::Internal("DisclosureControlExec has one child".into())
        })?;
        Ok(Arc::new(DisclosureExec::new(
            input,
            self.schema.clone(),
            self.spec.clone(),
        )))
    }
    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "DisclosureControlExec has one partition, not {partition}"
            )));
        }
        let input_schema = self.input.schema();
        let input = datafusion::physical_plan::execute_stream(self.input.clone(), context)?;
        let spec = self.spec.clone();
        let schema = self.schema.clone();
        let out_schema = schema.clone();
        let fut = async move {
            let batches: Vec<RecordBatch> = input.try_collect().await?;
            let batch = concat_batches(&input_schema, &batches)?;
            let out = spec.apply(&batch, &out_schema)?;
            let populations = spec
                .sink
                .lock()
                // The statement's populations are read once, here.
                .map(|mut s| std::mem::take(&mut *s))
                .map_err(|_| DataFusionError::Internal("population poisoned".into()))?;
            spec.tracker
                .check_and_record(&populations, &spec.report)
                .await?;
            Ok(out)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::once(fut),
        )))
    }
}

/// The contributor numbers of one row: counts then dominance shares.
fn row_numbers(lists: &[&ListArray], row: usize, len: usize) -> Result<Vec<f64>> {
    let mut out: Option<Vec<f64>> = None;
    for l in lists {
        if l.is_null(row) {
            return Ok(vec![0.0; len]);
        }
        let v = l.value(row);
        let v = v.as_primitive::<arrow::datatypes::Float64Type>();
        if v.len() != len {
            return Err(DataFusionError::Internal(
                "contributor counts have the wrong length".into(),
            ));
        }
        out = Some(match out {
            None => v.values().to_vec(),
            // Several patient columns: the fewest patients (the caller
            // takes the largest dominance share instead).
            Some(prev) => prev
                .iter()
                .zip(v.values().iter())
                .map(|(a, b)| a.min(*b))
                .collect(),
        });
    }
    Ok(out.unwrap_or_else(|| vec![0.0; len]))
}

impl Spec {
    fn apply(&self, batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
        let n = batch.num_rows();
        let t = self.policy.threshold as f64;
        let lists: Vec<&ListArray> = self
            .contributors
            .iter()
            .map(|c| {
                batch
                    .column(*c)
                    .as_any()
                    .downcast_ref::<ListArray>()
                    .ok_or_else(|| {
                        DataFusionError::Internal("contributor counts are not a list".into())
                    })
            })
            .collect::<Result<_>>()?;
        let dominance_len = self.cells.iter().filter(|c| c.dominance.is_some()).count();
        let len = 1 + self.conditions + dominance_len;
        let mut numbers = Vec::with_capacity(n);
        for row in 0..n {
            let mut v = row_numbers(&lists, row, len)?;
            // Counts take the minimum over patient columns, shares the
            // maximum: row_numbers took the minimum of all, redo shares.
            if lists.len() > 1 {
                for (k, slot) in v.iter_mut().enumerate().skip(1 + self.conditions) {
                    *slot = lists
                        .iter()
                        .filter(|l| l.is_valid(row))
                        .map(|l| l.value(row))
                        .filter(|v| v.len() == len)
                        .map(|v| v.as_primitive::<arrow::datatypes::Float64Type>().value(k))
                        .fold(0.0, f64::max);
                }
            }
            numbers.push(v);
        }
        // Primary suppression of rows.
        let mut keep: Vec<bool> = numbers.iter().map(|v| v[0] >= t).collect();
        let weight: Vec<f64> = numbers.iter().map(|v| v[0]).collect();
        let primary_rows = keep.iter().filter(|k| !**k).count() as u64;
        let margins = self.margins(batch)?;
        let mut hidden: Vec<bool> = keep.iter().map(|k| !k).collect();
        let secondary_rows = margins
            .as_ref()
            .map_or(0, |m| m.protect(&mut hidden, &vec![true; n], &weight));
        for (k, h) in keep.iter_mut().zip(&hidden) {
            *k = !h;
        }
        // Values.
        let mut flag = vec![false; n];
        let (mut cells_small, mut cells_secondary, mut cells_dom) = (0u64, 0u64, 0u64);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.n_out + 1);
        let mut masks: HashMap<usize, Vec<bool>> = HashMap::new();
        let mut d_index = 0;
        for c in &self.cells {
            let mut mask = vec![false; n];
            for row in 0..n {
                if !keep[row] {
                    continue;
                }
                // A side of a condition inside the value (CASE, a
                // comparison) held by a few patients shapes the value too.
                let small_branch = c.branches.iter().any(|b| {
                    let p = numbers[row][*b];
                    p > 0.0 && p < t
                });
                if numbers[row][c.bit] < t || small_branch {
                    mask[row] = true;
                    cells_small += 1;
                }
            }
            if let Some(_d) = c.dominance {
                let at = 1 + self.conditions + d_index;
                let limit = f64::from(self.policy.dominance_percent) / 100.0;
                for row in 0..n {
                    if keep[row] && !mask[row] && limit < 1.0 && numbers[row][at] > limit {
                        mask[row] = true;
                        cells_dom += 1;
                    }
                }
                d_index += 1;
            }
            if let Some(m) = &margins {
                let mut h: Vec<bool> = (0..n).map(|r| !keep[r] || mask[r]).collect();
                cells_secondary += m.protect(&mut h, &keep, &weight);
                for r in 0..n {
                    if keep[r] && h[r] {
                        mask[r] = true;
                    }
                }
            }
            for (f, m) in flag.iter_mut().zip(&mask) {
                *f |= *m;
            }
            masks.insert(c.col, mask);
        }
        for i in 0..self.n_out {
            let col = batch.column(i).clone();
            let Some(mask) = masks.get(&i) else {
                columns.push(col);
                continue;
            };
            let spec = self.cells.iter().find(|c| c.col == i);
            let col = if spec.is_some_and(|c| c.count) && self.policy.rounding > 1 {
                round(&col, self.policy.rounding)?
            } else {
                col
            };
            let col = nullif(&col, &BooleanArray::from(mask.clone()))?;
            let target = schema.field(i).data_type();
            columns.push(if col.data_type() == target {
                col
            } else {
                cast(&col, target)?
            });
        }
        columns.push(Arc::new(BooleanArray::from(flag)));
        let out = RecordBatch::try_new(schema.clone(), columns)?;
        let out = filter_record_batch(&out, &BooleanArray::from(keep))?;
        self.report.add(|s| {
            s.rows_suppressed += primary_rows;
            s.rows_secondary += secondary_rows;
            s.cells_suppressed += cells_small;
            s.cells_secondary += cells_secondary;
            s.cells_dominance += cells_dom;
        });
        Ok(out)
    }

    fn margins(&self, batch: &RecordBatch) -> Result<Option<Margins>> {
        let Some(g) = self.grouping_id else {
            return Ok(None);
        };
        let ids = cast(batch.column(g), &DataType::UInt64)?;
        let ids = ids
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or_else(|| DataFusionError::Internal("grouping id".into()))?;
        let dims = self.groups;
        let low = if dims >= 64 {
            u64::MAX
        } else {
            (1u64 << dims) - 1
        };
        let mut sets = Vec::with_capacity(batch.num_rows());
        let mut values = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            // A set bit marks a column the row is NOT grouped by; the first
            // group column is the highest bit.
            let id = ids.value(row) & low;
            let grouped: u64 = (0..dims)
                .filter(|c| (id >> (dims - 1 - c)) & 1 == 0)
                .fold(0, |acc, c| acc | (1 << c));
            sets.push(grouped);
            let mut v = Vec::with_capacity(dims);
            for c in 0..dims {
                v.push(format!(
                    "{:?}",
                    ScalarValue::try_from_array(batch.column(c), row)?
                ));
            }
            values.push(v);
        }
        Ok(Some(Margins::new(sets, values, dims)))
    }
}

/// Parent/children relations of a table with margins: a row grouped by a
/// set S of columns is the margin of the rows grouped by S + {d} that agree
/// with it on S.
struct Margins {
    /// (parent row, its children).
    groups: Vec<(usize, Vec<usize>)>,
}

impl Margins {
    fn new(sets: Vec<u64>, values: Vec<Vec<String>>, dims: usize) -> Margins {
        let key = |set: u64, vals: &[String]| -> (u64, Vec<String>) {
            let v = (0..dims)
                .filter(|c| set & (1 << c) != 0)
                .map(|c| vals[c].clone())
                .collect();
            (set, v)
        };
        let mut rows: HashMap<(u64, Vec<String>), usize> = HashMap::new();
        for (r, s) in sets.iter().enumerate() {
            rows.insert(key(*s, &values[r]), r);
        }
        // A set S is the margin of a set T ⊃ S when no set in between is
        // in the result (GROUPING SETS may skip levels: ((a, b), ())).
        let present: std::collections::BTreeSet<u64> = sets.iter().copied().collect();
        let mut children: HashMap<(u64, u64, Vec<String>), Vec<usize>> = HashMap::new();
        for (r, t) in sets.iter().enumerate() {
            for s in &present {
                let proper = s & t == *s && s != t;
                let between = present
                    .iter()
                    .any(|m| m != s && m != t && s & m == *s && m & t == *m);
                if proper && !between {
                    let (set, vals) = key(*s, &values[r]);
                    children.entry((*t, set, vals)).or_default().push(r);
                }
            }
        }
        let mut groups = Vec::new();
        for ((_, set, vals), kids) in children {
            if let Some(p) = rows.get(&(set, vals)) {
                groups.push((*p, kids));
            }
        }
        groups.sort();
        Margins { groups }
    }

    /// Hides more rows until no margin that is shown has exactly one hidden
    /// child (which would be the margin minus the others). Only rows in
    /// `present` are shown at all. Returns how many it hid.
    fn protect(&self, hidden: &mut [bool], present: &[bool], weight: &[f64]) -> u64 {
        let mut added = 0;
        loop {
            let mut changed = false;
            for (parent, kids) in &self.groups {
                if !present[*parent] || hidden[*parent] {
                    continue;
                }
                let hid = kids.iter().filter(|k| hidden[**k]).count();
                if hid != 1 {
                    continue;
                }
                let other = kids
                    .iter()
                    .filter(|k| !hidden[**k] && present[**k])
                    .min_by(|a, b| weight[**a].total_cmp(&weight[**b]));
                match other {
                    Some(k) => hidden[*k] = true,
                    // The only other way to protect the child.
                    None => hidden[*parent] = true,
                }
                added += 1;
                changed = true;
            }
            if !changed {
                return added;
            }
        }
    }
}

fn round(col: &ArrayRef, base: u64) -> Result<ArrayRef> {
    let ints = cast(col, &DataType::Int64)?;
    let ints = ints.as_primitive::<arrow::datatypes::Int64Type>();
    let b = base as i64;
    let out: Int64Array = ints
        .iter()
        .map(|v| v.map(|v| ((v + b / 2).div_euclid(b)) * b))
        .collect();
    Ok(cast(&(Arc::new(out) as ArrayRef), col.data_type())?)
}

/// Rewrites the plan of an aggregate-only statement (already checked to be
/// made of aggregates) so that every published value is controlled.
pub struct Rewriter<'a> {
    /// Per table, the view with the stored patient identifier as
    /// [`PATIENT_COLUMN`] (tables without patients are absent).
    pub patient_views: &'a HashMap<String, LogicalPlan>,
    /// Tables about people whose rows carry no patient column, with the
    /// parent and keys that attribute them.
    pub unattributed: &'a HashMap<String, Link>,
    /// Per table, the columns shown as stored.
    pub plain: &'a HashMap<String, Vec<String>>,
    /// The patient hash key.
    pub key: PatientKey,
    /// Rules.
    pub policy: DisclosurePolicy,
    /// Filled while the statement runs.
    pub report: Arc<Report>,
    /// The query-set tracker.
    pub tracker: Arc<Tracker>,
    /// Whether a plan reads a project view.
    pub reads_views: &'a dyn Fn(&LogicalPlan) -> bool,
    /// Leave empty: what the rewrite tracks while it walks the plan.
    pub state: RewriteState,
}

/// The parent table and join keys that attribute a table's rows to
/// patients (`None`: nothing does).
pub type Link = Option<(String, Vec<String>)>;

/// What [`Rewriter`] tracks while it walks a plan.
#[derive(Debug, Default)]
pub struct RewriteState {
    /// Scans of tables whose rows carry no patient and are not yet joined
    /// to the parent that attributes them: (table, parent and keys).
    pending: std::cell::RefCell<Vec<(String, Link)>>,
    /// The table each hidden patient column comes from.
    sources: std::cell::RefCell<HashMap<String, String>>,
}

fn is_patient_col(e: &Expr) -> bool {
    match e {
        Expr::Column(c) => is_patient_id(&c.name),
        Expr::OuterReferenceColumn(_, c) => is_patient_id(&c.name),
        Expr::Cast(c) => is_patient_col(&c.expr),
        Expr::TryCast(c) => is_patient_col(&c.expr),
        _ => false,
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

fn hidden_col(schema: &DFSchema, name: &str) -> Result<Expr> {
    let (q, f) = schema.qualified_field_with_unqualified_name(name)?;
    Ok(Expr::Column(Column::new(q.cloned(), f.name())))
}

fn visible_cols(schema: &DFSchema, hidden: &[String]) -> Vec<Expr> {
    schema
        .iter()
        .filter(|(_, f)| !hidden.contains(f.name()))
        .map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name())))
        .collect()
}

fn with_false_flag(plan: LogicalPlan) -> Result<LogicalPlan> {
    let mut exprs = visible_cols(plan.schema(), &[]);
    exprs.push(lit(false).alias(FLAG));
    Ok(LogicalPlan::Projection(Projection::try_new(
        exprs,
        Arc::new(plan),
    )?))
}

fn flag_expr(schema: &DFSchema) -> Expr {
    match schema.qualified_field_with_unqualified_name(FLAG) {
        Ok((q, f)) => Expr::Column(Column::new(q.cloned(), f.name())),
        Err(_) => lit(false).alias(FLAG),
    }
}

fn unwrap(p: Arc<LogicalPlan>) -> LogicalPlan {
    Arc::unwrap_or_clone(p)
}

fn groups_by_patient(group_expr: &[Expr]) -> Result<bool> {
    Ok(grouping_set_to_exprlist(group_expr)?
        .iter()
        .any(|e| matches!(e, Expr::Column(c) if is_patient_id(&c.name))))
}

const NOT_PER_PATIENT: &str = "this project is aggregate-only, and PDS counts the patients behind every published value: it cannot follow them through an inner aggregate or DISTINCT that is not per patient. Group the inner query by the patient identifier (BEN_NIR_PSA), or aggregate in one step";

impl Rewriter<'_> {
    /// Rewrites a checked plan.
    pub fn rewrite(&self, plan: LogicalPlan) -> Result<LogicalPlan> {
        self.top(plan, true)
    }

    /// Subqueries that decide which rows count: a filter that reads people
    /// must work per patient (`BEN_NIR_PSA IN (SELECT ...)`, an `EXISTS`
    /// correlated on the patient), or whether a row appears at all would
    /// answer a question about a few people. Values computed by a
    /// subquery below an aggregate would escape its control.
    fn check_subqueries(&self, exprs: &[Expr], scalar_ok: bool) -> Result<()> {
        let mut problem = None;
        for e in exprs {
            let _ = e.apply(|x| {
                let bad = match x {
                    Expr::ScalarSubquery(q) if !scalar_ok => (self.reads_views)(&q.subquery),
                    Expr::Exists(ex) => {
                        (self.reads_views)(&ex.subquery.subquery)
                            && !ex.subquery.outer_ref_columns.iter().any(is_patient_col)
                    }
                    Expr::InSubquery(i) => {
                        (self.reads_views)(&i.subquery.subquery) && !is_patient_col(&i.expr)
                    }
                    _ => false,
                };
                if bad {
                    problem = Some(x.to_string());
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            });
            if problem.is_some() {
                break;
            }
        }
        match problem {
            Some(_) => refuse(
                "this project is aggregate-only: a subquery that reads people may only select patients (BEN_NIR_PSA IN (SELECT BEN_NIR_PSA ...), or EXISTS correlated on the patient identifier); otherwise whether a row appears, or a value computed beside the aggregate, would tell something about a few people",
            ),
            None => Ok(()),
        }
    }

    /// Refuses if scans below the current point left rows that no patient
    /// column attributes (a refinement table not joined to its parent).
    fn attributed_since(&self, mark: usize) -> Result<()> {
        let pending = self.state.pending.borrow();
        match pending.get(mark..).and_then(|p| p.first()) {
            None => Ok(()),
            Some((table, Some((parent, keys)))) => refuse(format!(
                "this project is aggregate-only, and the rows of {table} carry no patient identifier: join {table} to {parent} on {} so PDS can count the patients behind them",
                keys.join(", ")
            )),
            Some((table, None)) => refuse(format!(
                "this project is aggregate-only, and PDS cannot tell which patients the rows of {table} belong to"
            )),
        }
    }

    fn subqueries(&self, e: Expr) -> Result<Expr> {
        e.transform(|x| match x {
            Expr::ScalarSubquery(mut s) => {
                let plan = self.top(unwrap(s.subquery), false)?;
                s.subquery = Arc::new(plan);
                Ok(Transformed::yes(Expr::ScalarSubquery(s)))
            }
            other => Ok(Transformed::no(other)),
        })
        .map(|t| t.data)
    }

    /// The nodes above the result aggregates.
    fn top(&self, plan: LogicalPlan, flag: bool) -> Result<LogicalPlan> {
        match plan {
            LogicalPlan::Projection(p) => {
                // `SELECT EXISTS (...)` would publish a yes or no about a few.
                self.check_subqueries(&p.expr, true)?;
                let input = self.top(unwrap(p.input), flag)?;
                let mut exprs = p
                    .expr
                    .into_iter()
                    .map(|e| self.subqueries(e))
                    .collect::<Result<Vec<_>>>()?;
                if flag {
                    exprs.push(flag_expr(input.schema()));
                }
                Ok(LogicalPlan::Projection(Projection::try_new(
                    exprs,
                    Arc::new(input),
                )?))
            }
            LogicalPlan::Aggregate(a) => self.aggregate(a, flag),
            LogicalPlan::SubqueryAlias(a) => {
                let input = self.top(unwrap(a.input), flag)?;
                Ok(LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(
                    Arc::new(input),
                    a.alias,
                )?))
            }
            LogicalPlan::Union(u) => {
                let inputs = u
                    .inputs
                    .into_iter()
                    .map(|i| self.top(unwrap(i), flag).map(Arc::new))
                    .collect::<Result<Vec<_>>>()?;
                Ok(LogicalPlan::Union(Union::try_new_with_loose_types(inputs)?))
            }
            LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => {
                // DataFusion cannot run a subquery in VALUES anyway.
                self.check_subqueries(&plan.expressions(), false)?;
                if flag {
                    with_false_flag(plan)
                } else {
                    Ok(plan)
                }
            }
            LogicalPlan::DescribeTable(_) => Ok(plan),
            p @ (LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::Window(_)
            | LogicalPlan::Distinct(Distinct::All(_))) => {
                self.check_subqueries(&p.expressions(), true)?;
                let exprs = p
                    .expressions()
                    .into_iter()
                    .map(|e| self.subqueries(e))
                    .collect::<Result<Vec<_>>>()?;
                let inputs = p
                    .inputs()
                    .into_iter()
                    .map(|i| self.top(i.clone(), flag))
                    .collect::<Result<Vec<_>>>()?;
                p.with_new_exprs(exprs, inputs)
            }
            other => refuse(format!(
                "this project is aggregate-only: results must be aggregates, and PDS cannot control a result made by {}",
                other.display()
            )),
        }
    }

    /// A result aggregate: counts its contributors and puts the control
    /// node above it.
    fn aggregate(&self, a: Aggregate, flag: bool) -> Result<LogicalPlan> {
        let original_fields = a.schema.fields().len();
        self.check_subqueries(&a.group_expr, false)?;
        self.check_subqueries(&a.aggr_expr, false)?;
        let mark = self.state.pending.borrow().len();
        let (input, hidden) = self.carry(unwrap(a.input))?;
        self.attributed_since(mark)?;
        if hidden.is_empty() {
            // Nothing below reads patients (a referential): nothing to count.
            let agg = LogicalPlan::Aggregate(Aggregate::try_new(
                Arc::new(input),
                a.group_expr,
                a.aggr_expr,
            )?);
            return if flag { with_false_flag(agg) } else { Ok(agg) };
        }
        let schema = input.schema().clone();
        let mut conditions: Vec<(String, Expr)> = Vec::new();
        let mut values: Vec<Expr> = Vec::new();
        let mut cells = Vec::new();
        let first_value = original_fields - a.aggr_expr.len();
        for (i, e) in a.aggr_expr.iter().enumerate() {
            let Expr::AggregateFunction(AggregateFunction { func, params }) = e.clone().unalias()
            else {
                return refuse(format!(
                    "this project is aggregate-only: PDS cannot control the value {e}"
                ));
            };
            let name = func.name().to_ascii_lowercase();
            let args: Vec<Expr> = params
                .args
                .iter()
                .filter(|x| !matches!(x, Expr::Literal(..)))
                .cloned()
                .collect();
            let mut cond: Option<Expr> = params.filter.as_deref().cloned();
            for arg in &args {
                let nn = arg.clone().is_not_null();
                cond = Some(match cond {
                    Some(c) => c.and(nn),
                    None => nn,
                });
            }
            let numeric = args.len() == 1
                && args[0]
                    .get_type(&schema)
                    .map(|t| t.is_numeric())
                    .unwrap_or(false);
            let order_or_count =
                matches!(name.as_str(), "count" | "approx_distinct" | "min" | "max");
            if !order_or_count && numeric {
                let nz = cast_expr(args[0].clone(), DataType::Float64)
                    .not_eq(lit(ScalarValue::Float64(Some(0.0))));
                cond = Some(match cond {
                    Some(c) => c.and(nz),
                    None => nz,
                });
            }
            let mut register = |c: Expr| {
                let k = c.to_string();
                match conditions.iter().position(|(x, _)| *x == k) {
                    Some(p) => p + 1,
                    None => {
                        conditions.push((k, c));
                        conditions.len()
                    }
                }
            };
            let bit = match cond {
                None => 0,
                Some(c) => register(c),
            };
            // Each side of every boolean inside the value (CASE WHEN,
            // comparisons) is a subgroup the value depends on.
            let mut booleans: Vec<Expr> = Vec::new();
            for arg in &args {
                let _ = arg.apply(|x| {
                    if !matches!(x, Expr::Literal(..))
                        && x.get_type(&schema).is_ok_and(|t| t == DataType::Boolean)
                        && !booleans.contains(x)
                    {
                        booleans.push(x.clone());
                    }
                    Ok(TreeNodeRecursion::Continue)
                });
                // CASE x WHEN v THEN ...: the comparisons are implicit.
                let _ = arg.apply(|x| {
                    if let Expr::Case(c) = x
                        && let Some(base) = &c.expr
                    {
                        for (w, _) in &c.when_then_expr {
                            let cmp = (**base).clone().eq((**w).clone());
                            if !booleans.contains(&cmp) {
                                booleans.push(cmp);
                            }
                        }
                    }
                    Ok(TreeNodeRecursion::Continue)
                });
            }
            let mut branches = Vec::new();
            for b in booleans {
                for side in [b.clone().is_true(), b.is_not_true()] {
                    let side = match params.filter.as_deref() {
                        Some(f) => f.clone().and(side),
                        None => side,
                    };
                    branches.push(register(side));
                }
            }
            let dominance = if matches!(name.as_str(), "sum" | "avg" | "mean") && numeric {
                let v = cast_expr(args[0].clone(), DataType::Float64);
                let v = match params.filter.as_deref() {
                    Some(f) => when(f.clone(), v).otherwise(lit(ScalarValue::Float64(None)))?,
                    None => v,
                };
                values.push(v);
                Some(values.len() - 1)
            } else {
                None
            };
            cells.push(CellSpec {
                col: first_value + i,
                bit,
                dominance,
                count: matches!(name.as_str(), "count" | "approx_distinct"),
                branches,
            });
        }
        if conditions.len() > 62 {
            return refuse(
                "this project is aggregate-only: a result may hold at most 62 differently filtered values; split the statement",
            );
        }
        let sink: PopulationSink = Arc::new(Mutex::new(Vec::new()));
        let mut aggr = a.aggr_expr.clone();
        for (j, h) in hidden.iter().enumerate() {
            let id = next_id();
            let udaf = AggregateUDF::new_from_impl(Contributors::new(
                id,
                self.key,
                conditions.len(),
                values.len(),
                self.policy.dominance_n,
                (j == 0).then(|| sink.clone()),
            ));
            let mut args = vec![hidden_col(&schema, h)?];
            args.extend(conditions.iter().map(|(_, c)| c.clone()));
            args.extend(values.iter().cloned());
            aggr.push(udaf.call(args).alias(format!("__pds_contributors_{id}")));
        }
        let groups = grouping_set_to_exprlist(&a.group_expr)?.len();
        if groups > 60 {
            return refuse(
                "this project is aggregate-only: a published aggregate may group by at most 60 columns",
            );
        }
        let is_set = matches!(a.group_expr.as_slice(), [Expr::GroupingSet(_)]);
        let agg = Aggregate::try_new(Arc::new(input), a.group_expr, aggr)?;
        let spec = Spec {
            id: next_id(),
            n_out: original_fields,
            groups,
            grouping_id: is_set.then_some(groups),
            cells,
            conditions: conditions.len(),
            contributors: (original_fields..original_fields + hidden.len()).collect(),
            policy: self.policy,
            report: self.report.clone(),
            tracker: self.tracker.clone(),
            sink,
        };
        let input = LogicalPlan::Aggregate(agg);
        let schema = node_schema(&input, &spec)?;
        let node = LogicalPlan::Extension(Extension {
            node: Arc::new(DisclosureNode {
                input,
                schema,
                spec: Arc::new(spec),
            }),
        });
        if flag {
            Ok(node)
        } else {
            let exprs = visible_cols(node.schema(), &[FLAG.to_string()]);
            Ok(LogicalPlan::Projection(Projection::try_new(
                exprs,
                Arc::new(node),
            )?))
        }
    }

    /// Carries the hidden patient columns up to `plan`'s output; returns
    /// their names.
    fn carry(&self, plan: LogicalPlan) -> Result<(LogicalPlan, Vec<String>)> {
        match plan {
            LogicalPlan::TableScan(s) => {
                let is_view = datafusion::datasource::source_as_provider(&s.source)
                    .map(|p| {
                        let any: &dyn std::any::Any = p.as_ref();
                        any.is::<PerimeterTable>()
                    })
                    .unwrap_or(false);
                let table = s.table_name.table().to_string();
                let view = match self.patient_views.get(&table) {
                    Some(v) if is_view => v.clone(),
                    _ => {
                        if is_view && let Some(link) = self.unattributed.get(&table) {
                            self.state
                                .pending
                                .borrow_mut()
                                .push((table.clone(), link.clone()));
                        }
                        return Ok((LogicalPlan::TableScan(s), vec![]));
                    }
                };
                let name = format!("{HIDDEN}{}", next_id());
                self.state
                    .sources
                    .borrow_mut()
                    .insert(name.clone(), table.clone());
                let provider = Arc::new(PerimeterTable::new(
                    view,
                    self.plain.get(&table).cloned().unwrap_or_default(),
                ));
                let scan = LogicalPlanBuilder::scan_with_filters(
                    s.table_name.clone(),
                    provider_as_source(provider),
                    None,
                    s.filters.clone(),
                )?
                .build()?;
                let mut exprs: Vec<Expr> = s
                    .projected_schema
                    .iter()
                    .map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name())))
                    .collect();
                exprs.push(
                    Expr::Column(Column::new(Some(s.table_name.clone()), PATIENT_COLUMN))
                        .alias(&name),
                );
                let plan = LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(scan))?);
                Ok((plan, vec![name]))
            }
            LogicalPlan::Projection(p) => {
                self.check_subqueries(&p.expr, false)?;
                let (input, hidden) = self.carry(unwrap(p.input))?;
                let mut exprs = p.expr;
                for h in &hidden {
                    exprs.push(hidden_col(input.schema(), h)?);
                }
                Ok((
                    LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(input))?),
                    hidden,
                ))
            }
            LogicalPlan::SubqueryAlias(a) => {
                let (input, hidden) = self.carry(unwrap(a.input))?;
                Ok((
                    LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(Arc::new(input), a.alias)?),
                    hidden,
                ))
            }
            LogicalPlan::Join(ref j) => {
                use datafusion::logical_expr::JoinType::*;
                let keep_left = !matches!(j.join_type, RightSemi | RightAnti | RightMark);
                let keep_right = !matches!(j.join_type, LeftSemi | LeftAnti | LeftMark);
                self.check_subqueries(&plan.expressions(), false)?;
                let m0 = self.state.pending.borrow().len();
                let (l, hl) = self.carry(unwrap(j.left.clone()))?;
                let m1 = self.state.pending.borrow().len();
                let (r, hr) = self.carry(unwrap(j.right.clone()))?;
                {
                    // A refinement table joined to its parent on all the
                    // keys: its rows now have the parent's patient.
                    let sources = self.state.sources.borrow();
                    // Equalities of the join: `on` pairs, and those still in
                    // its filter (SQL puts ON there until the optimiser runs).
                    let mut pairs: Vec<(Expr, Expr)> = j.on.clone();
                    if let Some(f) = &j.filter {
                        for c in datafusion::logical_expr::utils::split_conjunction(f) {
                            if let Expr::BinaryExpr(b) = c
                                && b.op == datafusion::logical_expr::Operator::Eq
                            {
                                pairs.push((*b.left.clone(), *b.right.clone()));
                            }
                        }
                    }
                    let on_keys = |keys: &[String]| {
                        keys.iter().all(|k| {
                            pairs.iter().any(|(a, b)| {
                                matches!((a, b), (Expr::Column(x), Expr::Column(y)) if &x.name == k && &y.name == k)
                            })
                        })
                    };
                    let has_parent = |hidden: &[String], parent: &str| {
                        hidden
                            .iter()
                            .any(|h| sources.get(h).is_some_and(|t| t == parent))
                    };
                    let mut pending = self.state.pending.borrow_mut();
                    let mut i = m0;
                    while i < pending.len() {
                        let other = if i < m1 { &hr } else { &hl };
                        let side_dropped = (i < m1 && !keep_left) || (i >= m1 && !keep_right);
                        let resolved = match &pending[i].1 {
                            Some((parent, keys)) => has_parent(other, parent) && on_keys(keys),
                            None => false,
                        };
                        if resolved || side_dropped {
                            pending.remove(i);
                        } else {
                            i += 1;
                        }
                    }
                }
                let mut hidden = Vec::new();
                if keep_left {
                    hidden.extend(hl);
                }
                if keep_right {
                    hidden.extend(hr);
                }
                let exprs = plan.expressions();
                Ok((plan.with_new_exprs(exprs, vec![l, r])?, hidden))
            }
            p @ (LogicalPlan::Filter(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::Repartition(_)
            | LogicalPlan::Window(_)) => {
                self.check_subqueries(&p.expressions(), false)?;
                if let LogicalPlan::Window(w) = &p {
                    // A window over several patients would hand each row a
                    // value computed on others, beyond the aggregate's reach.
                    let per_patient = w.window_expr.iter().all(|e| match e.clone().unalias() {
                        Expr::WindowFunction(f) => f.params.partition_by.iter().any(is_patient_col),
                        _ => false,
                    });
                    if !per_patient {
                        return refuse(
                            "this project is aggregate-only: a window function below the published aggregate must be PARTITION BY the patient identifier (BEN_NIR_PSA); otherwise each row would carry a value computed on other people",
                        );
                    }
                }
                let input = p
                    .inputs()
                    .first()
                    .map(|i| (*i).clone())
                    .ok_or_else(|| DataFusionError::Internal("node without input".into()))?;
                let (input, hidden) = self.carry(input)?;
                let exprs = p.expressions();
                Ok((p.with_new_exprs(exprs, vec![input])?, hidden))
            }
            LogicalPlan::Aggregate(a) => {
                self.check_subqueries(&a.group_expr, false)?;
                self.check_subqueries(&a.aggr_expr, false)?;
                let mark = self.state.pending.borrow().len();
                let (input, hidden) = self.carry(unwrap(a.input))?;
                self.attributed_since(mark)?;
                if hidden.is_empty() {
                    return Ok((
                        LogicalPlan::Aggregate(Aggregate::try_new(
                            Arc::new(input),
                            a.group_expr,
                            a.aggr_expr,
                        )?),
                        vec![],
                    ));
                }
                if !groups_by_patient(&a.group_expr)? {
                    return refuse(NOT_PER_PATIENT);
                }
                // One patient per group: min() picks it (and, for another
                // patient column of a join, one of its patients, which
                // can only count fewer patients, never more).
                let mut aggr = a.aggr_expr;
                for h in &hidden {
                    aggr.push(
                        datafusion::functions_aggregate::expr_fn::min(hidden_col(
                            input.schema(),
                            h,
                        )?)
                        .alias(h),
                    );
                }
                Ok((
                    LogicalPlan::Aggregate(Aggregate::try_new(
                        Arc::new(input),
                        a.group_expr,
                        aggr,
                    )?),
                    hidden,
                ))
            }
            LogicalPlan::Distinct(Distinct::All(input)) => {
                let mark = self.state.pending.borrow().len();
                let (input, hidden) = self.carry(unwrap(input))?;
                self.attributed_since(mark)?;
                if hidden.is_empty() {
                    return Ok((
                        LogicalPlan::Distinct(Distinct::All(Arc::new(input))),
                        vec![],
                    ));
                }
                let groups = visible_cols(input.schema(), &hidden);
                if !groups_by_patient(&groups)? {
                    return refuse(NOT_PER_PATIENT);
                }
                let aggr = hidden
                    .iter()
                    .map(|h| {
                        Ok(datafusion::functions_aggregate::expr_fn::min(hidden_col(
                            input.schema(),
                            h,
                        )?)
                        .alias(h))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((
                    LogicalPlan::Aggregate(Aggregate::try_new(Arc::new(input), groups, aggr)?),
                    hidden,
                ))
            }
            LogicalPlan::Union(u) => {
                let mut branches = Vec::new();
                for i in u.inputs {
                    branches.push(self.carry(unwrap(i))?);
                }
                if branches.iter().all(|(_, h)| h.is_empty()) {
                    let inputs = branches.into_iter().map(|(p, _)| Arc::new(p)).collect();
                    return Ok((
                        LogicalPlan::Union(Union::try_new_with_loose_types(inputs)?),
                        vec![],
                    ));
                }
                let name = format!("{HIDDEN}{}", next_id());
                let mut inputs = Vec::new();
                for (p, h) in branches {
                    let mut exprs = visible_cols(p.schema(), &h);
                    let patient = match h.first() {
                        Some(first) => cast_expr(hidden_col(p.schema(), first)?, DataType::Utf8),
                        None => lit(ScalarValue::Utf8(None)),
                    };
                    exprs.push(patient.alias(&name));
                    inputs.push(Arc::new(LogicalPlan::Projection(Projection::try_new(
                        exprs,
                        Arc::new(p),
                    )?)));
                }
                Ok((
                    LogicalPlan::Union(Union::try_new_with_loose_types(inputs)?),
                    vec![name],
                ))
            }
            p @ (LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_)) => Ok((p, vec![])),
            other => {
                if (self.reads_views)(&other) {
                    refuse(format!(
                        "this project is aggregate-only, and PDS counts the patients behind every published value: it cannot follow them through {}",
                        other.display()
                    ))
                } else {
                    Ok((other, vec![]))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2 × 3 table with its row margins and grand total, as ROLLUP
    /// (sex, band) gives it: sets are bit masks of grouped columns.
    fn rollup() -> (Vec<u64>, Vec<Vec<String>>) {
        let mut sets = Vec::new();
        let mut values = Vec::new();
        for sex in ["1", "2"] {
            for band in ["a", "b", "c"] {
                sets.push(0b11);
                values.push(vec![sex.to_string(), band.to_string()]);
            }
            sets.push(0b01);
            values.push(vec![sex.to_string(), "NULL".into()]);
        }
        sets.push(0);
        values.push(vec!["NULL".into(), "NULL".into()]);
        (sets, values)
    }

    #[test]
    fn one_hidden_cell_under_a_shown_margin_hides_the_next_smallest() {
        let (sets, values) = rollup();
        let m = Margins::new(sets, values, 2);
        // Rows: 0-2 sex 1 (a, b, c), 3 its margin, 4-6 sex 2, 7 margin, 8 total.
        let weight = [3.0, 40.0, 25.0, 68.0, 30.0, 30.0, 30.0, 90.0, 158.0];
        let mut hidden = vec![false; 9];
        hidden[0] = true; // primary: 3 patients
        let added = m.protect(&mut hidden, &[true; 9], &weight);
        assert_eq!(added, 1);
        assert!(hidden[2], "the smallest other cell of the same margin");
        assert!(!hidden[1] && !hidden[3]);
        // Sex 2 untouched; the total's children (the two margins) both shown.
        assert!(!hidden[4] && !hidden[5] && !hidden[6] && !hidden[7] && !hidden[8]);
    }

    #[test]
    fn two_hidden_cells_need_nothing_more_and_a_lone_child_hides_its_margin() {
        let (sets, values) = rollup();
        let m = Margins::new(sets, values, 2);
        let weight = [3.0, 4.0, 25.0, 32.0, 30.0, 30.0, 30.0, 90.0, 122.0];
        let mut hidden = vec![false; 9];
        hidden[0] = true;
        hidden[1] = true;
        assert_eq!(m.protect(&mut hidden, &[true; 9], &weight), 0);
        // One margin hidden under the shown total: the other margin goes too.
        let mut hidden = vec![false; 9];
        hidden[3] = true;
        assert_eq!(m.protect(&mut hidden, &[true; 9], &weight), 1);
        assert!(hidden[7]);
    }

    #[test]
    fn rounding_is_to_the_nearest_multiple() {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![
            Some(0),
            Some(2),
            Some(3),
            Some(12),
            None,
        ]));
        let r = round(&a, 5).unwrap();
        let r = r.as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(
            r.iter().collect::<Vec<_>>(),
            [Some(0), Some(0), Some(5), Some(10), None]
        );
    }
}
