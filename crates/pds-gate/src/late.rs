//! Project pseudonyms, mapped late.
//!
//! A project view shows every patient identifier as its project pseudonym
//! (HMAC-SHA256 of the stored platform pseudonym, [`PseudonymUdf`]).
//! Mapped in the view, every row a statement reads is mapped, before its
//! joins and its grouping: 27 million HMACs for a statement over one year
//! of prestations, and joins and hash tables on 36-character strings.
//!
//! The mapping is one-to-one, so an equality between two identifiers, a
//! `GROUP BY`, a `DISTINCT`, a `COUNT(DISTINCT ...)` give the same answer
//! on stored values as on mapped ones. [`map_late`] rewrites an optimised
//! plan so that the views show stored values and each identifier is mapped
//! at the first place where its value matters:
//!
//! - kept stored through: equality joins and filters between two
//!   identifiers mapped by the same function, `IS [NOT] NULL`, `GROUP BY`
//!   and window `PARTITION BY` on the bare column, `count(...)` of the bare
//!   column, projections that pass the column on unchanged, aliases,
//!   limits, `DISTINCT`, unions where every branch holds a stored identifier
//!   in that place;
//! - kept as a *delimited key*: a concatenation headed by an identifier
//!   (`BEN_NIR_PSA || BEN_RNG_GEM`, the SNDS's patient key) that is only
//!   grouped, compared or counted. The identifier becomes `17:<stored>`
//!   ([`DelimitedUdf`]); pseudonyms and delimited keys are both prefix-free,
//!   so keys are equal exactly when the mapped concatenations are, and no
//!   row is hashed. Where the value is read, `project_pseudonym_prefixed`
//!   turns the key into the mapped concatenation;
//! - mapped (a projection below the node, same name, type and nullability)
//!   before anything else: a comparison with a literal, a function, a cast,
//!   `ORDER BY`, `min`/`max`, a join with a value that is not a stored
//!   identifier, and every node this module does not know;
//! - and always before the result: the root maps whatever is still stored.
//!
//! Order is data too. A hash table or a sort keyed by stored values emits
//! rows in an order that follows the *platform* pseudonyms, the same in
//! every project: two projects' lists of patients would line up row by
//! row. So when anything was keyed on a stored value, a result that shows
//! identifiers is sorted by them (project pseudonyms: a different order in
//! each project), and a statement whose answer could depend on row order
//! (a `LIMIT`, a window, `first_value`, `array_agg`, a user's `ORDER BY`
//! with ties between people) keeps the mapping in the views.
//!
//! Fail closed: a view is swapped for its stored variant only by this
//! module, so a plan it does not rewrite maps in the views, as before. A
//! plan with subqueries left in expressions (correlated references cross
//! node boundaries this analysis does not follow), or with a column it
//! cannot place, is left as it is.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    Aggregate, BinaryExpr, Distinct, Expr, JoinType, LogicalPlan, Operator, Projection, ScalarUDF,
    Sort, SortExpr, TableScan, TableScanBuilder,
};

use crate::views::{DelimitedUdf, PerimeterTable, PseudonymUdf};

/// Per output column of a plan: the function that maps it when it holds a
/// stored identifier, `None` when it holds anything else.
type Flags = Vec<Option<Arc<ScalarUDF>>>;

/// Rewrites an optimised plan so that project pseudonyms are mapped where
/// their value is first needed rather than in the views. The result has
/// the same schema and, row for row, the same values.
pub fn map_late(plan: LogicalPlan) -> Result<LogicalPlan> {
    if !eligible(&plan) {
        return Ok(plan);
    }
    // Fail safe: a plan this module cannot rewrite maps in the views, and
    // a rewrite must give the statement's own schema.
    match rewrite(plan.clone()) {
        Ok(late) if same_schema(late.schema(), plan.schema()) => Ok(late),
        _ => Ok(plan),
    }
}

fn rewrite(plan: LogicalPlan) -> Result<LogicalPlan> {
    let mut keyed = false;
    let (late, flags) = lift(plan.clone(), &mut keyed)?;
    let ids_out: Vec<usize> = stored(&flags).collect();
    if keyed && (order_dependent(&late) || (!ids_out.is_empty() && sorts(&late))) {
        // A hash table or a sort keyed by stored values orders rows by
        // platform pseudonym, the same way in every project. Where that
        // order could choose rows (a LIMIT, a window, an order-sensitive
        // aggregate) or break a user's ORDER BY ties between people, the
        // views map, as before.
        return Ok(plan);
    }
    let all: HashSet<usize> = ids_out.iter().copied().collect();
    let mapped = materialise(late, &flags, &all)?;
    if !keyed || ids_out.is_empty() {
        return Ok(mapped);
    }
    // Identifiers leave in an order that may follow stored values: sort
    // them by project pseudonym, so no two projects see the same order.
    let schema = mapped.schema().clone();
    let keys = ids_out
        .iter()
        .map(|i| {
            let (q, f) = schema.qualified_field(*i);
            SortExpr::new(Expr::Column(Column::from((q, f))), true, false)
        })
        .collect();
    Ok(LogicalPlan::Sort(Sort {
        expr: keys,
        input: Arc::new(mapped),
        fetch: None,
    }))
}

/// Aggregates whose result does not depend on the order of their input.
const ORDER_FREE_AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "mean",
    "min",
    "max",
    "median",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "var",
    "var_pop",
    "var_samp",
    "var_population",
    "var_sample",
    "bool_and",
    "bool_or",
    "bit_and",
    "bit_or",
    "bit_xor",
    "approx_distinct",
    "pds_contributors",
];

/// Whether a result of `plan` could depend on the order of rows: a limit,
/// a window, an aggregate such as `first_value` or `array_agg`.
fn order_dependent(plan: &LogicalPlan) -> bool {
    plan.exists(|node| {
        Ok(match node {
            LogicalPlan::Limit(_)
            | LogicalPlan::Window(_)
            | LogicalPlan::Distinct(Distinct::On(_))
            | LogicalPlan::Unnest(_) => true,
            LogicalPlan::Sort(s) => s.fetch.is_some(),
            LogicalPlan::Aggregate(a) => a.aggr_expr.iter().any(|e| {
                e.exists(|x| {
                    Ok(match x {
                        Expr::AggregateFunction(af) => {
                            !ORDER_FREE_AGGREGATES.contains(&af.func.name())
                        }
                        _ => false,
                    })
                })
                .unwrap_or(true)
            }),
            LogicalPlan::TableScan(t) => t.fetch.is_some(),
            _ => false,
        })
    })
    .unwrap_or(true)
}

fn sorts(plan: &LogicalPlan) -> bool {
    plan.exists(|node| Ok(matches!(node, LogicalPlan::Sort(_))))
        .unwrap_or(true)
}

/// Whether every part of `plan` is one this module can follow.
fn eligible(plan: &LogicalPlan) -> bool {
    let mut ok = true;
    let _ = plan.apply(|node| {
        let unknown_node = matches!(
            node,
            LogicalPlan::Subquery(_)
                | LogicalPlan::RecursiveQuery(_)
                | LogicalPlan::Dml(_)
                | LogicalPlan::Ddl(_)
                | LogicalPlan::Copy(_)
                | LogicalPlan::Statement(_)
                | LogicalPlan::Explain(_)
                | LogicalPlan::Analyze(_)
                | LogicalPlan::DescribeTable(_)
        );
        let subquery = node
            .expressions()
            .iter()
            .any(|e| e.exists(|x| Ok(is_subquery(x))).unwrap_or(true));
        if unknown_node || subquery {
            ok = false;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    ok
}

fn is_subquery(e: &Expr) -> bool {
    matches!(
        e,
        Expr::Exists(_)
            | Expr::InSubquery(_)
            | Expr::ScalarSubquery(_)
            | Expr::OuterReferenceColumn(..)
            | Expr::Placeholder(_)
    )
}

fn stored(flags: &Flags) -> impl Iterator<Item = usize> + '_ {
    flags
        .iter()
        .enumerate()
        .filter_map(|(i, f)| f.as_ref().map(|_| i))
}

/// `plan` with the columns of `which` (positions in its schema, holding
/// stored identifiers per `flags`) mapped, under the same names.
fn materialise(plan: LogicalPlan, flags: &Flags, which: &HashSet<usize>) -> Result<LogicalPlan> {
    if !which
        .iter()
        .any(|i| flags.get(*i).is_some_and(Option::is_some))
    {
        return Ok(plan);
    }
    let schema = plan.schema().clone();
    let mut exprs = Vec::with_capacity(schema.fields().len());
    for (i, (qualifier, field)) in schema.iter().enumerate() {
        let col = Expr::Column(Column::from((qualifier, field.as_ref())));
        match (which.contains(&i), flags.get(i).and_then(Option::as_ref)) {
            (true, Some(udf)) => exprs.push(
                udf.call(vec![col])
                    .alias_qualified(qualifier.cloned(), field.name()),
            ),
            _ => exprs.push(col),
        }
    }
    let mapped = LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(plan))?);
    // Only the mapped columns may change, and only their type (a number
    // becomes the view's string).
    let (a, b) = (mapped.schema().as_arrow(), schema.as_arrow());
    let kept = a.fields().len() == b.fields().len()
        && a.fields()
            .iter()
            .zip(b.fields())
            .enumerate()
            .all(|(i, (x, y))| {
                x.name() == y.name()
                    && x.is_nullable() == y.is_nullable()
                    && (which.contains(&i) || x.data_type() == y.data_type())
            });
    if !kept {
        return Err(DataFusionError::Internal(
            "mapping pseudonyms late changed a schema".into(),
        ));
    }
    Ok(mapped)
}

/// A column of one of a node's inputs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Slot {
    input: usize,
    index: usize,
}

/// What one node does with its inputs' stored identifiers.
struct Uses<'a> {
    schemas: Vec<&'a DFSchema>,
    flags: &'a [Flags],
    /// Slots that must be mapped below the node.
    map: HashSet<Slot>,
    /// Pairs compared for equality while stored: mapped together or not at
    /// all.
    pairs: Vec<(Slot, Slot)>,
    /// Slots a hash table or a sort is keyed on (joins, grouping,
    /// `DISTINCT`): the order of the node's output may follow them.
    keys: Vec<Slot>,
    /// The node with its expressions rewritten to build delimited keys
    /// (see [`head_key`]), when it has any.
    replacement: Option<LogicalPlan>,
}

impl<'a> Uses<'a> {
    fn new(schemas: Vec<&'a DFSchema>, flags: &'a [Flags]) -> Uses<'a> {
        Uses {
            schemas,
            flags,
            map: HashSet::new(),
            pairs: Vec::new(),
            keys: Vec::new(),
            replacement: None,
        }
    }

    /// Whether the node keys anything on a value left stored.
    fn keyed(&self) -> bool {
        self.keys.iter().any(|s| !self.map.contains(s))
            || self.pairs.iter().any(|(a, _)| !self.map.contains(a))
    }

    /// The slot of `c`; `Err` when no input (or more than one) holds it.
    fn slot(&self, c: &Column) -> std::result::Result<Slot, ()> {
        let mut found = None;
        for (input, s) in self.schemas.iter().enumerate() {
            if let Some(index) = s.maybe_index_of_column(c) {
                if found.is_some() {
                    return Err(());
                }
                found = Some(Slot { input, index });
            }
        }
        found.ok_or(())
    }

    fn udf(&self, s: Slot) -> Option<&Arc<ScalarUDF>> {
        self.flags
            .get(s.input)
            .and_then(|f| f.get(s.index))
            .and_then(Option::as_ref)
    }

    /// The stored slot `e` is, if `e` is a bare column holding one.
    fn bare(&self, e: &Expr) -> Option<Slot> {
        let e = match e {
            Expr::Alias(a) => a.expr.as_ref(),
            e => e,
        };
        match e {
            Expr::Column(c) => self.slot(c).ok().filter(|s| self.udf(*s).is_some()),
            _ => None,
        }
    }

    /// Every stored identifier `e` reads must be mapped. `Err` when a
    /// column cannot be placed.
    fn map_all(&mut self, e: &Expr) -> std::result::Result<(), ()> {
        for c in e.column_refs() {
            let s = self.slot(c)?;
            if self.udf(s).is_some() {
                self.map.insert(s);
            }
        }
        Ok(())
    }

    /// A predicate: equalities between stored identifiers of one function
    /// and null tests stay stored; the rest is mapped.
    fn predicate(&mut self, e: &Expr) -> std::result::Result<(), ()> {
        match e {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::And,
                right,
            }) => {
                self.predicate(left)?;
                self.predicate(right)
            }
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq | Operator::IsNotDistinctFrom,
                right,
            }) => self.equality(left, right),
            Expr::IsNull(x) | Expr::IsNotNull(x) if self.bare(x).is_some() => Ok(()),
            e => self.map_all(e),
        }
    }

    fn equality(&mut self, l: &Expr, r: &Expr) -> std::result::Result<(), ()> {
        if !matches!(l, Expr::Column(_)) || !matches!(r, Expr::Column(_)) {
            self.map_all(l)?;
            return self.map_all(r);
        }
        match (self.bare(l), self.bare(r)) {
            (Some(a), Some(b)) if self.udf(a) == self.udf(b) => {
                self.pairs.push((a, b));
                Ok(())
            }
            _ => {
                self.map_all(l)?;
                self.map_all(r)
            }
        }
    }

    /// Closes `map` over the equality pairs.
    fn close(&mut self) {
        loop {
            let mut changed = false;
            for (a, b) in &self.pairs {
                if self.map.contains(a) != self.map.contains(b) {
                    self.map.insert(*a);
                    self.map.insert(*b);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }

    fn of_input(&self, input: usize) -> HashSet<usize> {
        self.map
            .iter()
            .filter(|s| s.input == input)
            .map(|s| s.index)
            .collect()
    }

    /// The flags of input `input` after the mapping below the node.
    fn after(&self, input: usize) -> Flags {
        let mut f = self.flags.get(input).cloned().unwrap_or_default();
        for s in self.map.iter().filter(|s| s.input == input) {
            if let Some(x) = f.get_mut(s.index) {
                *x = None;
            }
        }
        f
    }

    /// The flag of `slot` after the mapping below the node.
    fn still(&self, slot: Option<Slot>) -> Option<Arc<ScalarUDF>> {
        let s = slot?;
        if self.map.contains(&s) {
            return None;
        }
        self.udf(s).cloned()
    }
}

/// Swaps the views read by `plan` for their stored variants and maps what
/// each node needs mapped. Returns the plan and its output flags.
fn lift(plan: LogicalPlan, keyed: &mut bool) -> Result<(LogicalPlan, Flags)> {
    if let LogicalPlan::TableScan(scan) = &plan {
        return Ok(scan_stored(scan).unwrap_or_else(|| {
            let n = plan.schema().fields().len();
            (plan.clone(), vec![None; n])
        }));
    }
    // The node's schema as the statement wrote it: a delimited key keeps
    // the type of the concatenation it replaces.
    let written = plan.schema().clone();
    let mut child_flags: Vec<Flags> = Vec::new();
    let plan = plan
        .map_children(|c| {
            let (c, f) = lift(c, keyed)?;
            child_flags.push(f);
            Ok(Transformed::yes(c))
        })?
        .data;
    // Numbered identifiers reach the node as `Int64`: its schema follows.
    // A node that cannot be typed so gets them mapped first.
    let plan = match retyped(plan.clone()) {
        Ok(p) => p,
        Err(_) => {
            let mut i = 0;
            let mapped = plan
                .map_children(|c| {
                    let flags = child_flags.get(i).cloned().unwrap_or_default();
                    let numbers: HashSet<usize> = numbered(&flags).collect();
                    if let Some(f) = child_flags.get_mut(i) {
                        for n in &numbers {
                            f[*n] = None;
                        }
                    }
                    i += 1;
                    Ok(Transformed::yes(materialise(c, &flags, &numbers)?))
                })?
                .data;
            retyped(mapped)?
        }
    };
    let schemas: Vec<&DFSchema> = plan
        .inputs()
        .into_iter()
        .map(|i| i.schema().as_ref())
        .collect();
    let mut uses = Uses::new(schemas, &child_flags);
    let out = match analyse(&plan, &written, &mut uses) {
        Ok(out) => out,
        Err(()) => {
            // A node or a column this module cannot follow: map every
            // stored identifier of its inputs.
            uses.map = child_flags
                .iter()
                .enumerate()
                .flat_map(|(input, f)| stored(f).map(move |index| Slot { input, index }))
                .collect();
            vec![None; plan.schema().fields().len()]
        }
    };
    uses.close();
    *keyed |= uses.keyed();
    let which: Vec<HashSet<usize>> = (0..child_flags.len()).map(|i| uses.of_input(i)).collect();
    let plan = uses.replacement.take().unwrap_or(plan);
    let mut i = 0;
    let plan = plan
        .map_children(|c| {
            let flags = child_flags.get(i).cloned().unwrap_or_default();
            let w = which.get(i).cloned().unwrap_or_default();
            i += 1;
            Ok(Transformed::yes(materialise(c, &flags, &w)?))
        })?
        .data;
    let plan = retyped(plan)?;
    if out.len() != plan.schema().fields().len() {
        return Err(DataFusionError::Internal(
            "mapping pseudonyms late lost track of a column".into(),
        ));
    }
    Ok((plan, out))
}

/// The stored variant of a scan of a project view, with its flags.
fn scan_stored(scan: &TableScan) -> Option<(LogicalPlan, Flags)> {
    let provider = source_as_provider(&scan.source).ok()?;
    let any: &dyn std::any::Any = provider.as_ref();
    let table = any.downcast_ref::<PerimeterTable>()?;
    let (variant, columns) = table.stored_variant()?;
    let udf_of = |name: &str| {
        columns
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, u)| u.clone())
    };
    // A filter handed to the view is evaluated on what the view shows: none
    // may read an identifier (the views never accept one; checked anyway).
    if scan
        .filters
        .iter()
        .flat_map(|f| f.column_refs())
        .any(|c| udf_of(&c.name).is_some())
    {
        return None;
    }
    let flags: Flags = scan
        .projected_schema
        .fields()
        .iter()
        .map(|f| udf_of(f.name()))
        .collect();
    // Built again, so that its schema shows numbers where the variant does.
    let swapped = TableScanBuilder::new(
        scan.table_name.clone(),
        provider_as_source(Arc::new(variant)),
    )
    .with_projection(scan.projection.clone())
    .with_filters(scan.filters.clone())
    .with_fetch(scan.fetch)
    .build()
    .ok()?;
    Some((LogicalPlan::TableScan(swapped), flags))
}

/// The output flags of `plan`, recording in `uses` what must be mapped
/// below it. `Err` for what this module does not follow.
fn analyse(
    plan: &LogicalPlan,
    written: &DFSchema,
    uses: &mut Uses,
) -> std::result::Result<Flags, ()> {
    let n_out = plan.schema().fields().len();
    match plan {
        LogicalPlan::Projection(p) => {
            let mut outs = Vec::with_capacity(p.expr.len());
            for e in &p.expr {
                outs.push(classify(e, uses)?);
            }
            if settle(&mut outs, &p.expr, uses)? {
                let keys: Vec<bool> = outs.iter().map(|o| matches!(o, Out::Key(..))).collect();
                let new = with_keys(&outs, &p.expr, &p.schema, 0, true)
                    .ok()
                    .and_then(|exprs| Projection::try_new(exprs, p.input.clone()).ok())
                    .filter(|new| same_schema_keyed(&new.schema, &p.schema, written, &keys));
                match new {
                    Some(new) => uses.replacement = Some(LogicalPlan::Projection(new)),
                    None => demote(&mut outs, &p.expr, uses, |_, _| true)?,
                }
            }
            Ok(outs.iter().map(|o| o.flag(uses)).collect())
        }
        LogicalPlan::Filter(f) => {
            uses.predicate(&f.predicate)?;
            uses.close();
            Ok(uses.after(0))
        }
        LogicalPlan::Join(j) => {
            for (l, r) in &j.on {
                uses.equality(l, r)?;
            }
            if let Some(f) = &j.filter {
                uses.predicate(f)?;
            }
            uses.close();
            let (left, right) = (uses.after(0), uses.after(1));
            let out = match j.join_type {
                JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => {
                    left.into_iter().chain(right).collect()
                }
                JoinType::LeftSemi | JoinType::LeftAnti => left,
                JoinType::RightSemi | JoinType::RightAnti => right,
                JoinType::LeftMark => left.into_iter().chain([None]).collect(),
                JoinType::RightMark => right.into_iter().chain([None]).collect(),
            };
            if out.len() == n_out { Ok(out) } else { Err(()) }
        }
        LogicalPlan::Aggregate(a) => {
            let mut groups = Vec::with_capacity(a.group_expr.len());
            for g in &a.group_expr {
                if matches!(g, Expr::GroupingSet(_)) {
                    return Err(());
                }
                groups.push(classify(g, uses)?);
            }
            // Arguments of `count`, per aggregate.
            let mut counts = Vec::new();
            for (i, e) in a.aggr_expr.iter().enumerate() {
                if let Some(count) = aggregate_use(i, e, uses)? {
                    counts.push(count);
                }
            }
            let mut any = settle(&mut groups, &a.group_expr, uses)?;
            for (_, args, outs) in counts.iter_mut() {
                any |= settle(outs, args, uses)?;
            }
            if any {
                match aggregate_with_keys(a, written, &groups, &counts) {
                    Some(new) => uses.replacement = Some(LogicalPlan::Aggregate(new)),
                    None => {
                        demote(&mut groups, &a.group_expr, uses, |_, _| true)?;
                        for (_, args, outs) in counts.iter_mut() {
                            demote(outs, args, uses, |_, _| true)?;
                        }
                    }
                }
            }
            for g in &groups {
                match g {
                    Out::Bare(s) | Out::Key(s, ..) => uses.keys.push(*s),
                    Out::Other => {}
                }
            }
            let mut out: Flags = groups.iter().map(|o| o.flag(uses)).collect();
            out.resize(n_out, None);
            Ok(out)
        }
        LogicalPlan::Window(w) => {
            for e in &w.window_expr {
                let inner = match e {
                    Expr::Alias(a) => a.expr.as_ref(),
                    e => e,
                };
                match inner {
                    Expr::WindowFunction(wf) => {
                        // Partitions are the same on stored values; every
                        // other part of the window sees mapped ones.
                        let mut rest = wf.as_ref().clone();
                        let partition = std::mem::take(&mut rest.params.partition_by);
                        for p in &partition {
                            match uses.bare(p) {
                                Some(s) => uses.keys.push(s),
                                None => uses.map_all(p)?,
                            }
                        }
                        uses.map_all(&Expr::WindowFunction(Box::new(rest)))?;
                    }
                    e => uses.map_all(e)?,
                }
            }
            let mut out = uses.after(0);
            out.resize(n_out, None);
            Ok(out)
        }
        LogicalPlan::Sort(s) => {
            for e in &s.expr {
                uses.map_all(&e.expr)?;
            }
            Ok(uses.after(0))
        }
        LogicalPlan::Distinct(Distinct::All(_)) => {
            let keys: Vec<Slot> = uses
                .flags
                .first()
                .map(|f| stored(f).map(|index| Slot { input: 0, index }).collect())
                .unwrap_or_default();
            uses.keys.extend(keys);
            Ok(uses.after(0))
        }
        LogicalPlan::Limit(_) | LogicalPlan::SubqueryAlias(_) => Ok(uses.after(0)),
        LogicalPlan::Union(_) => {
            let branches = uses.flags.len();
            let mut out = Vec::with_capacity(n_out);
            for i in 0..n_out {
                let first = uses.flags.first().and_then(|f| f.get(i)).cloned().flatten();
                // A union keeps the schema it was built with: numbers are
                // mapped before it.
                let same = !first.as_ref().is_some_and(|u| PseudonymUdf::is_numbered(u))
                    && (0..branches).all(|b| {
                        uses.flags.get(b).and_then(|f| f.get(i)).cloned().flatten() == first
                    });
                if same {
                    out.push(first);
                } else {
                    for b in 0..branches {
                        uses.map.insert(Slot { input: b, index: i });
                    }
                    out.push(None);
                }
            }
            Ok(out)
        }
        LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => Ok(vec![None; n_out]),
        _ => Err(()),
    }
}

/// What one output expression of a projection, or one grouping
/// expression, does with a stored identifier.
enum Out {
    /// The bare column: passed on stored.
    Bare(Slot),
    /// A concatenation headed by the identifier, rewritten to head with
    /// its delimited key instead (see [`head_key`]), and the function that
    /// maps the key.
    Key(Slot, Expr, Arc<ScalarUDF>),
    /// Anything else: what it reads is mapped.
    Other,
}

impl Out {
    /// The output's flag once the node's mapping is settled.
    fn flag(&self, uses: &Uses) -> Option<Arc<ScalarUDF>> {
        match self {
            Out::Bare(s) => uses.still(Some(*s)),
            Out::Key(s, _, prefixed) if !uses.map.contains(s) => Some(prefixed.clone()),
            Out::Key(..) | Out::Other => None,
        }
    }
}

fn classify(e: &Expr, uses: &mut Uses) -> std::result::Result<Out, ()> {
    if let Some(s) = uses.bare(e) {
        return Ok(Out::Bare(s));
    }
    let inner = match e {
        Expr::Alias(a) => a.expr.as_ref(),
        e => e,
    };
    // A key of a key, or of a value mapped by another kind of function,
    // has no mapping: only pseudonyms head keys.
    if let Some((s, rest, key)) = head_key(inner, uses)
        && let Some(prefixed) = uses.udf(s).and_then(|u| PseudonymUdf::prefixed_of(u))
    {
        // The rest of the concatenation is read as values.
        for r in rest {
            uses.map_all(r)?;
        }
        return Ok(Out::Key(s, key, Arc::new(prefixed)));
    }
    uses.map_all(e)?;
    Ok(Out::Other)
}

/// Demotes the keys whose identifier the node maps anyway (a delimited key
/// of a mapped value would be mapped twice). Returns whether any key
/// remains.
fn settle(outs: &mut [Out], exprs: &[Expr], uses: &mut Uses) -> std::result::Result<bool, ()> {
    // Demoting maps only what is mapped already (the identifier and the
    // rest of the concatenation), so no other key is demoted in turn.
    demote(outs, exprs, uses, |s, uses| uses.map.contains(s))?;
    Ok(outs.iter().any(|o| matches!(o, Out::Key(..))))
}

/// Turns the keys whose slot meets `when` back into values that are
/// mapped (all of them when a rewritten node could not be built: fail
/// safe).
fn demote(
    outs: &mut [Out],
    exprs: &[Expr],
    uses: &mut Uses,
    when: impl Fn(&Slot, &Uses) -> bool,
) -> std::result::Result<(), ()> {
    for (o, e) in outs.iter_mut().zip(exprs) {
        if let Out::Key(s, ..) = o
            && when(s, uses)
        {
            uses.map_all(e)?;
            *o = Out::Other;
        }
    }
    Ok(())
}

/// `exprs` with their keys in place; a key keeps the name (and qualifier)
/// of field `offset + i` of `schema` when `named`.
fn with_keys(
    outs: &[Out],
    exprs: &[Expr],
    schema: &DFSchema,
    offset: usize,
    named: bool,
) -> std::result::Result<Vec<Expr>, ()> {
    let mut new = Vec::with_capacity(exprs.len());
    for (i, (o, e)) in outs.iter().zip(exprs).enumerate() {
        new.push(match o {
            Out::Key(_, key, _) if named => {
                if offset + i >= schema.fields().len() {
                    return Err(());
                }
                let (q, f) = schema.qualified_field(offset + i);
                key.clone().alias_qualified(q.cloned(), f.name())
            }
            Out::Key(_, key, _) => key.clone(),
            _ => e.clone(),
        });
    }
    Ok(new)
}

/// Arguments of the `count` at a position of an aggregate's list, and
/// what each does.
type CountArgs = (usize, Vec<Expr>, Vec<Out>);

/// `a` with its grouping and `count` arguments rewritten to their keys;
/// `None` when the result would not keep `a`'s schema.
fn aggregate_with_keys(
    a: &Aggregate,
    written: &DFSchema,
    groups: &[Out],
    counts: &[CountArgs],
) -> Option<Aggregate> {
    let group_expr = with_keys(groups, &a.group_expr, &a.schema, 0, true).ok()?;
    let mut aggr_expr = a.aggr_expr.clone();
    for (i, args, outs) in counts {
        if outs.iter().any(|o| matches!(o, Out::Key(..))) {
            let at = a.group_expr.len() + i;
            aggr_expr[*i] = count_with_keys(&a.aggr_expr[*i], args, outs, &a.schema, at).ok()?;
        }
    }
    let keys: Vec<bool> = groups.iter().map(|o| matches!(o, Out::Key(..))).collect();
    Aggregate::try_new(a.input.clone(), group_expr, aggr_expr)
        .ok()
        .filter(|new| same_schema_keyed(&new.schema, &a.schema, written, &keys))
}

/// The aggregate `e` (a `count`) with the keys of `outs` as arguments,
/// under the name of field `at` of `schema`.
fn count_with_keys(
    e: &Expr,
    args: &[Expr],
    outs: &[Out],
    schema: &DFSchema,
    at: usize,
) -> std::result::Result<Expr, ()> {
    let inner = match e {
        Expr::Alias(a) => a.expr.as_ref(),
        e => e,
    };
    let Expr::AggregateFunction(af) = inner else {
        return Err(());
    };
    if at >= schema.fields().len() {
        return Err(());
    }
    let mut af = af.clone();
    af.params.args = with_keys(outs, args, schema, 0, false)?;
    let (q, f) = schema.qualified_field(at);
    Ok(Expr::AggregateFunction(af).alias_qualified(q.cloned(), f.name()))
}

fn same_schema(a: &DFSchema, b: &DFSchema) -> bool {
    a.as_arrow() == b.as_arrow() && a.iter().map(|(q, _)| q).eq(b.iter().map(|(q, _)| q))
}

/// Whether a node rewritten with delimited keys (`new`) has the schema of
/// the node it replaces (`current`), where the fields at `keys` hold keys
/// and so have the type the statement gave them (`written`): a key is a
/// string even where its identifier is a number.
fn same_schema_keyed(
    new: &DFSchema,
    current: &DFSchema,
    written: &DFSchema,
    keys: &[bool],
) -> bool {
    let n = new.fields().len();
    if current.fields().len() != n || written.fields().len() != n {
        return false;
    }
    (0..n).all(|i| {
        let (qn, fnew) = new.qualified_field(i);
        let (qc, fcur) = current.qualified_field(i);
        let want = if keys.get(i).copied().unwrap_or(false) {
            written.field(i).data_type()
        } else {
            fcur.data_type()
        };
        qn == qc
            && fnew.name() == fcur.name()
            && fnew.is_nullable() == fcur.is_nullable()
            && fnew.data_type() == want
    })
}

/// `plan` with its schema derived again from its inputs and expressions
/// (after an input changed a column's type).
fn retyped(plan: LogicalPlan) -> Result<LogicalPlan> {
    match plan {
        // These take their schema from their input and store none.
        LogicalPlan::Sort(_) | LogicalPlan::Limit(_) | LogicalPlan::Distinct(Distinct::All(_)) => {
            Ok(plan)
        }
        // DataFusion keeps a union's schema when the width is unchanged;
        // numbers never pass a union (see `analyse`), so it is right.
        LogicalPlan::Union(_) => Ok(plan),
        plan => plan.recompute_schema(),
    }
}

/// Positions of `flags` holding identifier numbers.
fn numbered(flags: &Flags) -> impl Iterator<Item = usize> + '_ {
    flags.iter().enumerate().filter_map(|(i, f)| {
        f.as_ref()
            .filter(|u| PseudonymUdf::is_numbered(u))
            .map(|_| i)
    })
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8)
}

/// `x || …` headed by a stored identifier `x` (the bare column, or the
/// column cast to another string type): its slot, the operands after it,
/// and the expression with `x` replaced by its delimited key
/// ([`DelimitedUdf`]). The project pseudonyms form a prefix-free set, as
/// do delimited keys, so two such concatenations are equal exactly when
/// their identifiers and their tails are: grouping, comparing or counting
/// them on keys gives the answer the mapped values give, without hashing
/// each row; where the value itself is read, `project_pseudonym_prefixed`
/// turns the key into it. A `NULL` identifier gives a `NULL` key, as it
/// gives a `NULL` pseudonym, and `||` propagates both.
fn head_key<'e>(e: &'e Expr, uses: &Uses) -> Option<(Slot, Vec<&'e Expr>, Expr)> {
    let Expr::BinaryExpr(BinaryExpr {
        left,
        op: Operator::StringConcat,
        right,
    }) = e
    else {
        return None;
    };
    let (slot, mut rest, head) = match head_key(left, uses) {
        Some(found) => found,
        None => {
            let (slot, key) = delimited_leaf(left, uses)?;
            (slot, Vec::new(), key)
        }
    };
    rest.push(right.as_ref());
    Some((
        slot,
        rest,
        Expr::BinaryExpr(BinaryExpr::new(
            Box::new(head),
            Operator::StringConcat,
            right.clone(),
        )),
    ))
}

fn delimited_leaf(e: &Expr, uses: &Uses) -> Option<(Slot, Expr)> {
    match e {
        Expr::Column(_) => {
            let s = uses.bare(e)?;
            let key = PseudonymUdf::delimiter_of(uses.udf(s)?, None)?;
            Some((s, key.call(vec![e.clone()])))
        }
        Expr::Cast(c)
            if is_string(c.field.data_type()) && matches!(c.expr.as_ref(), Expr::Column(_)) =>
        {
            let s = uses.bare(&c.expr)?;
            let udf = uses.udf(s)?;
            if PseudonymUdf::is_numbered(udf) {
                // A number's key is made in the cast's type directly.
                let key = PseudonymUdf::delimiter_of(udf, Some(c.field.data_type()))?;
                return Some((s, key.call(vec![c.expr.as_ref().clone()])));
            }
            let from = uses.schemas.get(s.input)?.field(s.index).data_type();
            if !is_string(from) {
                return None;
            }
            Some((
                s,
                Expr::Cast(datafusion::logical_expr::Cast::new_from_field(
                    Box::new(DelimitedUdf::udf().call(vec![c.expr.as_ref().clone()])),
                    c.field.clone(),
                )),
            ))
        }
        _ => None,
    }
}

/// `count(x)` and `count(DISTINCT x)` of a bare stored identifier, or of a
/// concatenation it heads (as a delimited key), count the same on stored
/// values; any other use maps it. For a `count` (aggregate `at` of its
/// node), returns its arguments and what each does.
fn aggregate_use(
    at: usize,
    e: &Expr,
    uses: &mut Uses,
) -> std::result::Result<Option<CountArgs>, ()> {
    let inner = match e {
        Expr::Alias(a) => a.expr.as_ref(),
        e => e,
    };
    match inner {
        Expr::AggregateFunction(af) if af.func.name() == "count" => {
            let mut rest = af.clone();
            let args = std::mem::take(&mut rest.params.args);
            let mut outs = Vec::with_capacity(args.len());
            for x in &args {
                outs.push(classify(x, uses)?);
            }
            // Its filter and ordering see mapped values.
            uses.map_all(&Expr::AggregateFunction(rest))?;
            Ok(Some((at, args, outs)))
        }
        e => uses.map_all(e).map(|()| None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::PseudonymUdf;
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::logical_expr::LogicalPlanBuilder;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::{SessionContext, col};

    /// Two project views over in-memory tables, `A(id, x)` and `B(id, y)`,
    /// whose `id` is mapped by one project's function.
    async fn session() -> SessionContext {
        session_with(false).await
    }

    /// [`session`], with the identifiers numbered (`PDS_id_ID` beside
    /// `id`, as `pds load` stores them) when `numbered`.
    async fn session_with(numbered: bool) -> SessionContext {
        let rows = |ids: Vec<&'static str>| {
            ids.into_iter()
                .enumerate()
                .map(|(i, id)| (Some(id), i as i64))
                .collect::<Vec<_>>()
        };
        session_numbered(
            vec![
                ("A", "x", rows(vec!["P01", "P02", "P02", "P03", "P04"])),
                ("B", "y", rows(vec!["P02", "P03", "P03", "P05"])),
            ],
            numbered,
        )
        .await
    }

    /// Rows of a test view: identifier (or none) and value.
    type Rows = Vec<(Option<&'static str>, i64)>;

    /// Views `name(id, value)` over in-memory rows; `id` is nullable when
    /// a row has none.
    async fn session_of(tables: Vec<(&str, &str, Rows)>) -> SessionContext {
        session_numbered(tables, false).await
    }

    /// [`session_of`]; when `numbered`, each table also stores `PDS_id_ID`,
    /// one numbering over all tables (in the order identifiers are met),
    /// and the project's function knows the dictionary.
    async fn session_numbered(tables: Vec<(&str, &str, Rows)>, numbered: bool) -> SessionContext {
        let ctx = SessionContext::new();
        let key = pds_keys::SecretKey::from_bytes([7; 32]);
        let mut dictionary: Vec<String> = Vec::new();
        let mut number = |id: &str| match dictionary.iter().position(|d| d == id) {
            Some(n) => n as i64,
            None => {
                dictionary.push(id.to_string());
                dictionary.len() as i64 - 1
            }
        };
        let numbers: Vec<Vec<Option<i64>>> = tables
            .iter()
            .map(|(_, _, rows)| rows.iter().map(|(id, _)| id.map(&mut number)).collect())
            .collect();
        let numbers_of = numbered.then(|| {
            Arc::new(pds_query::ids::IdDictionary::in_memory(
                1,
                dictionary.iter().map(String::as_str),
            ))
        });
        let udf = Arc::new(PseudonymUdf::udf_with_numbers(
            "p",
            pds_project::Pseudonymiser::new(&key, 1),
            numbers_of,
        ));
        for ((name, value, rows), numbers) in tables.into_iter().zip(numbers) {
            let nullable = rows.iter().any(|(id, _)| id.is_none());
            let mut fields = vec![
                Field::new("id", DataType::Utf8, nullable),
                Field::new(value, DataType::Int64, false),
            ];
            let (ids, values): (Vec<_>, Vec<_>) = rows.into_iter().unzip();
            let mut columns: Vec<arrow::array::ArrayRef> = vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(Int64Array::from(values)),
            ];
            if numbered {
                fields.push(Field::new("PDS_id_ID", DataType::Int64, nullable));
                columns.push(Arc::new(Int64Array::from(numbers)));
            }
            let schema = Arc::new(Schema::new(fields));
            let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
            let base = format!("{name}_base");
            ctx.register_table(
                base.as_str(),
                Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap()),
            )
            .unwrap();
            let scan = ctx
                .table(base.as_str())
                .await
                .unwrap()
                .into_unoptimized_plan();
            let view = LogicalPlanBuilder::from(scan)
                .project(vec![udf.call(vec![col("id")]).alias("id"), col(value)])
                .unwrap()
                .alias(name)
                .unwrap()
                .build()
                .unwrap();
            ctx.register_table(
                name,
                Arc::new(PerimeterTable::new(view, vec![value.to_string()])),
            )
            .unwrap();
        }
        ctx
    }

    async fn rows(ctx: &SessionContext, plan: &LogicalPlan) -> Vec<String> {
        let state = ctx.state();
        let physical = state
            .query_planner()
            .create_physical_plan(plan, &state)
            .await
            .unwrap();
        let batches = collect(physical, ctx.task_ctx()).await.unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with('|'))
            .skip(1)
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    }

    /// The optimised plan of `sql`, as the views map it and as mapped late.
    async fn plans(ctx: &SessionContext, sql: &str) -> (LogicalPlan, LogicalPlan) {
        let state = ctx.state();
        let plan = state.create_logical_plan(sql).await.unwrap();
        let early = state.optimize(&plan).unwrap();
        let late = map_late(early.clone()).unwrap();
        (early, late)
    }

    /// Plans `sql` both ways and checks that mapping late changes nothing
    /// a user sees: the same rows, no stored value, the same schema.
    /// Returns the late plan and its rows.
    async fn same_answer(ctx: &SessionContext, sql: &str) -> (LogicalPlan, Vec<String>) {
        let (early, late) = plans(ctx, sql).await;
        let (a, b) = (rows(ctx, &early).await, rows(ctx, &late).await);
        assert_eq!(a, b, "{sql}\n{}", late.display_indent());
        assert!(!b.iter().any(|r| r.contains("P0")), "{sql}: {b:?}");
        assert_same_schema(&early, &late);
        (late, b)
    }

    /// Same names, qualifiers, types and nullability (functional
    /// dependencies, which only the optimizer reads, may be dropped).
    fn assert_same_schema(a: &LogicalPlan, b: &LogicalPlan) {
        assert_eq!(a.schema().as_arrow(), b.schema().as_arrow());
        let q = |p: &LogicalPlan| {
            p.schema()
                .iter()
                .map(|(q, _)| q.cloned())
                .collect::<Vec<_>>()
        };
        assert_eq!(q(a), q(b));
    }

    fn mapped_line(plan: &LogicalPlan) -> Vec<usize> {
        plan.display_indent()
            .to_string()
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains("project_pseudonym"))
            .map(|(i, _)| i)
            .collect()
    }

    fn line_of(plan: &LogicalPlan, what: &str) -> usize {
        plan.display_indent()
            .to_string()
            .lines()
            .position(|l| l.trim_start().starts_with(what))
            .unwrap_or_else(|| panic!("no {what} in\n{}", plan.display_indent()))
    }

    #[tokio::test]
    async fn joins_and_grouping_run_on_stored_values_and_the_result_is_mapped() {
        let ctx = session().await;
        let sql = "SELECT A.id, COUNT(*) AS n, SUM(B.y) AS s, COUNT(DISTINCT B.id) AS d \
                   FROM A JOIN B ON A.id = B.id GROUP BY A.id";
        let (early, late) = plans(&ctx, sql).await;
        assert!(mapped_line(&early).is_empty(), "{}", early.display_indent());
        // Mapped once, above the aggregate: the join and the grouping saw
        // stored values.
        let at = mapped_line(&late);
        assert_eq!(at.len(), 1, "{}", late.display_indent());
        assert!(
            at[0] < line_of(&late, "Aggregate"),
            "{}",
            late.display_indent()
        );
        // The identifiers leave sorted by project pseudonym, not in the
        // order of the stored values the grouping was keyed on.
        assert_eq!(line_of(&late, "Sort"), 0, "{}", late.display_indent());
        let (a, b) = (rows(&ctx, &early).await, rows(&ctx, &late).await);
        assert_eq!(a, b);
        assert_eq!(a.len(), 2);
        assert!(a[0].contains("| 2 ") || a[1].contains("| 2 "), "{a:?}");
        assert!(a.iter().all(|r| r.contains("v1:")), "{a:?}");
        assert!(
            !a.iter().any(|r| r.contains("P0")),
            "a stored value leaked: {a:?}"
        );
        assert_same_schema(&early, &late);
    }

    #[tokio::test]
    async fn a_value_that_matters_is_mapped_before_it_is_used() {
        let ctx = session().await;
        // Order, comparison with a literal, min/max, string functions and a
        // join with a value that is not an identifier all see mapped values.
        for sql in [
            "SELECT id FROM A ORDER BY id LIMIT 2",
            "SELECT id FROM A WHERE id > 'v1:M'",
            "SELECT MIN(id), MAX(id) FROM A",
            "SELECT substr(id, 1, 6) AS s, COUNT(*) FROM A GROUP BY substr(id, 1, 6)",
            "SELECT A.id FROM A JOIN (VALUES ('P02')) v(k) ON A.id = v.k",
            "SELECT A.id, B.id FROM A LEFT JOIN B ON A.id = B.id WHERE B.id IS NULL",
            "SELECT id FROM A UNION SELECT id FROM B",
            "SELECT id, ROW_NUMBER() OVER (PARTITION BY id ORDER BY x) AS r FROM A",
            "SELECT id FROM A WHERE id IN (SELECT id FROM B)",
            "SELECT id, (SELECT COUNT(*) FROM B WHERE B.id = A.id) AS c FROM A",
        ] {
            same_answer(&ctx, sql).await;
        }
        // The stored-value join against a literal table found nothing, as
        // the mapped one does.
        let (_, late) = plans(
            &ctx,
            "SELECT A.id FROM A JOIN (VALUES ('P02')) v(k) ON A.id = v.k",
        )
        .await;
        assert!(rows(&ctx, &late).await.is_empty());
        // A filter on the value maps below the filter.
        let (_, late) = plans(&ctx, "SELECT id, x FROM A WHERE id > 'v1:M'").await;
        let at = mapped_line(&late);
        assert!(
            at.iter().any(|i| *i > line_of(&late, "Filter")),
            "{}",
            late.display_indent()
        );
    }

    #[tokio::test]
    async fn what_could_follow_the_stored_order_keeps_the_mapping_in_the_views() {
        let ctx = session().await;
        for sql in [
            "SELECT id FROM A GROUP BY id LIMIT 1",
            "SELECT A.id FROM A JOIN B ON A.id = B.id ORDER BY A.x",
            "SELECT id, ROW_NUMBER() OVER (PARTITION BY id) AS r FROM A",
            "SELECT x, array_agg(y) FROM (SELECT A.x, B.y FROM A JOIN B ON A.id = B.id) GROUP BY x",
        ] {
            let (early, late) = plans(&ctx, sql).await;
            assert_eq!(
                early.display_indent().to_string(),
                late.display_indent().to_string(),
                "{sql}"
            );
        }
        // Nothing keyed on a stored value: mapped at the end, no sort added.
        let (_, late) = plans(&ctx, "SELECT id, x FROM A WHERE x > 1").await;
        let text = late.display_indent().to_string();
        assert!(!text.contains("Sort"), "{text}");
        assert_eq!(mapped_line(&late), vec![0], "{text}");
        // Keyed, but no identifier leaves: no sort either.
        let (_, late) = plans(&ctx, "SELECT COUNT(*) FROM A JOIN B ON A.id = B.id").await;
        assert!(!late.display_indent().to_string().contains("Sort"));
        assert!(mapped_line(&late).is_empty(), "{}", late.display_indent());
    }

    #[tokio::test]
    async fn counting_patients_by_identifier_and_rank_hashes_no_row() {
        let ctx = session().await;
        // The SNDS's way of counting patients (`COUNT(DISTINCT BEN_NIR_PSA
        // || BEN_RNG_GEM)`): the identifier heads a concatenation that is
        // only grouped, counted or compared.
        for sql in [
            "SELECT x % 2 AS k, COUNT(DISTINCT id || x) AS n, SUM(x) AS s FROM A GROUP BY x % 2",
            "SELECT COUNT(DISTINCT id || CAST(x AS VARCHAR) || 'z') AS n FROM A",
            "SELECT COUNT(*) AS n FROM (SELECT DISTINCT id || '-' FROM A)",
            "SELECT COUNT(*) AS n FROM (SELECT id || 'k' AS k FROM A) a \
             JOIN (SELECT id || 'k' AS k FROM B) b ON a.k = b.k",
        ] {
            let (late, _) = same_answer(&ctx, sql).await;
            let text = late.display_indent().to_string();
            assert!(mapped_line(&late).is_empty(), "{sql}\n{text}");
            assert!(text.contains("pds_delimited"), "{sql}\n{text}");
        }
        // Where the concatenation's value is read, it is the project
        // pseudonym followed by the rest, as the views would show it.
        for sql in [
            "SELECT id || x AS k FROM A",
            "SELECT DISTINCT id || '-' || x AS k FROM A",
            "SELECT k, COUNT(*) AS n FROM (SELECT id || 'k' AS k FROM A) GROUP BY k",
            "SELECT A.id || B.y AS k FROM A JOIN B ON A.id = B.id",
            "SELECT upper(id || x) AS k FROM A",
            "SELECT x || id AS k FROM A",
            "SELECT id || id AS k, COUNT(*) AS n FROM A GROUP BY id || id",
        ] {
            let (_, b) = same_answer(&ctx, sql).await;
            assert!(
                b.iter().all(|r| r.to_lowercase().contains("v1:")),
                "{sql}: {b:?}"
            );
        }
    }

    #[tokio::test]
    async fn delimited_keys_count_as_pseudonyms_do_on_nulls_markers_and_lengths() {
        // Stored "P1" || 23 and "P12" || 3 are the same string; their
        // pseudonyms followed by the rank are not. The error markers map
        // to themselves; a NULL identifier is not counted.
        let ctx = session_of(vec![(
            "C",
            "r",
            vec![
                (Some("P1"), 23),
                (Some("P12"), 3),
                (Some("P1"), 23),
                (None, 1),
                (Some("xxxxxxxxxxxxxxxxx"), 5),
                (Some("XXXXXXXXXXXXXXXXD"), 5),
                (Some(""), 7),
            ],
        )])
        .await;
        let sql = "SELECT COUNT(DISTINCT id || r) AS n, COUNT(id || r) AS m FROM C";
        let (late, b) = same_answer(&ctx, sql).await;
        assert!(mapped_line(&late).is_empty(), "{}", late.display_indent());
        assert_eq!(b, vec!["| 5 | 6 |".to_string()]);
        let naive = rows(
            &ctx,
            &ctx.sql("SELECT COUNT(DISTINCT id || r) AS n FROM C_base")
                .await
                .unwrap()
                .into_optimized_plan()
                .unwrap(),
        )
        .await;
        assert_eq!(
            naive,
            vec!["| 4 |".to_string()],
            "the stored strings collide"
        );
        same_answer(&ctx, "SELECT DISTINCT id || r AS k FROM C").await;
    }

    #[tokio::test]
    async fn numbered_identifiers_are_joined_grouped_and_counted_as_numbers() {
        let ctx = session_with(true).await;
        let sql = "SELECT A.id, COUNT(*) AS n, SUM(B.y) AS s, COUNT(DISTINCT B.id) AS d \
                   FROM A JOIN B ON A.id = B.id GROUP BY A.id";
        let (late, _) = same_answer(&ctx, sql).await;
        let text = late.display_indent().to_string();
        // The join and the grouping read the numbers (both scans show `id`
        // as `Int64`); the one mapping, above the aggregate, goes from
        // number to pseudonym.
        let mut scanned = Vec::new();
        late.apply(|node| {
            if let LogicalPlan::TableScan(t) = node {
                let f = t.projected_schema.field_with_unqualified_name("id")?;
                scanned.push(f.data_type().clone());
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        assert_eq!(scanned, vec![DataType::Int64, DataType::Int64], "{text}");
        let at = mapped_line(&late);
        assert_eq!(at.len(), 1, "{text}");
        assert!(at[0] < line_of(&late, "Aggregate"), "{text}");
        assert!(text.contains("project_pseudonym_of_number"), "{text}");
        // Counting by identifier and rank: keys made of numbers, nothing mapped.
        for sql in [
            "SELECT COUNT(DISTINCT id || CAST(x AS VARCHAR) || 'z') AS n FROM A",
            "SELECT x % 2 AS k, COUNT(DISTINCT id || x) AS n FROM A GROUP BY x % 2",
            "SELECT COUNT(*) AS n FROM (SELECT id || 'k' AS k FROM A) a \
             JOIN (SELECT id || 'k' AS k FROM B) b ON a.k = b.k",
        ] {
            let (late, _) = same_answer(&ctx, sql).await;
            let text = late.display_indent().to_string();
            assert!(mapped_line(&late).is_empty(), "{sql}\n{text}");
            assert!(text.contains("pds_number_key"), "{sql}\n{text}");
        }
        // Wherever a value is read, it is the pseudonym the views show.
        for sql in [
            "SELECT id, x FROM A",
            "SELECT A.id, B.id AS other FROM A LEFT JOIN B ON A.id = B.id",
            "SELECT id || x AS k FROM A",
            "SELECT DISTINCT id || '-' || x AS k FROM A",
            "SELECT MIN(id) AS lo, MAX(id) AS hi FROM A",
            "SELECT id FROM A UNION SELECT id FROM B",
            "SELECT id FROM A UNION ALL SELECT id FROM B",
            "SELECT upper(id) AS u, COUNT(*) AS n FROM A GROUP BY upper(id)",
            "SELECT id FROM A WHERE id IN (SELECT id FROM B)",
            "SELECT id, ROW_NUMBER() OVER (PARTITION BY id ORDER BY x) AS r FROM A",
            "SELECT k, COUNT(*) AS n FROM (SELECT id || 'k' AS k FROM A) GROUP BY k",
        ] {
            let (_, b) = same_answer(&ctx, sql).await;
            assert!(
                b.iter().all(|r| r.to_lowercase().contains("v1:")),
                "{sql}: {b:?}"
            );
        }
        // A literal compared with an identifier meets the mapped value.
        let some = rows(&ctx, &plans(&ctx, "SELECT MIN(id) FROM B").await.1).await;
        let literal = some[0]
            .trim_matches(|c: char| c == '|' || c == ' ')
            .to_string();
        let sql = format!("SELECT A.id, A.x FROM A JOIN B ON A.id = B.id WHERE A.id = '{literal}'");
        let (_, b) = same_answer(&ctx, &sql).await;
        assert!(
            !b.is_empty() && b.iter().all(|r| r.contains(&literal)),
            "{b:?}"
        );
    }

    #[tokio::test]
    async fn numbered_keys_count_as_pseudonyms_do_on_nulls_and_markers() {
        let ctx = session_numbered(
            vec![(
                "C",
                "r",
                vec![
                    (Some("P1"), 23),
                    (Some("P12"), 3),
                    (Some("P1"), 23),
                    (None, 1),
                    (Some("xxxxxxxxxxxxxxxxx"), 5),
                    (Some("XXXXXXXXXXXXXXXXD"), 5),
                    (Some(""), 7),
                ],
            )],
            true,
        )
        .await;
        let sql = "SELECT COUNT(DISTINCT id || r) AS n, COUNT(id || r) AS m FROM C";
        let (late, b) = same_answer(&ctx, sql).await;
        assert!(mapped_line(&late).is_empty(), "{}", late.display_indent());
        assert!(late.display_indent().to_string().contains("pds_number_key"));
        assert_eq!(b, vec!["| 5 | 6 |".to_string()]);
        let (_, b) = same_answer(&ctx, "SELECT DISTINCT id || r AS k FROM C").await;
        assert!(b.iter().any(|r| r.contains("xxxxxxxxxxxxxxxxx5")), "{b:?}");
    }
}
