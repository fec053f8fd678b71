//! The nine-key DCIR join, run on the prestation key.
//!
//! `pds load` stores [`PRESTATION_KEY`] in `ER_PRS_F` and every refinement
//! table: a digest of the eight join keys other than `FLX_DIS_DTD`
//! (`pds-load`'s `prskey` module says how and why it is exact).
//! [`PrestationKeyJoin`] finds a join that compares the eight keys column
//! by column between two tables that both carry the key, and compares the
//! key instead; the other comparisons (the flow date, anything else the
//! researcher wrote) stay. A hash join then hashes, compares and holds one
//! fixed-width value where it had eight, and the scans below it stop
//! reading the eight columns unless the statement uses them elsewhere.
//! The researcher's SQL is unchanged; the results are the same.
//!
//! The key is exposed through the nodes between the join and the scans
//! that keep rows whole (aliases, filters, projections of bare columns,
//! sorts, limits, other joins); anything else (an aggregate, a union, a
//! computed key) leaves the join as written. `PDS_PRESTATION_KEY=off`
//! turns the rule off, to compare plans and timings.

use std::sync::Arc;

use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, NullEquality, Result};
use datafusion::logical_expr::logical_plan::TableScanBuilder;
use datafusion::logical_expr::{Expr, Filter, Join, LogicalPlan, Projection, SubqueryAlias};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use pds_snds::arrow::PRESTATION_KEY_TYPE;
use pds_snds::schema::{DCIR_JOIN_KEYS, PRESTATION_KEY};

/// The rule; see the module documentation.
#[derive(Debug, Default)]
pub struct PrestationKeyJoin;

/// The join keys the prestation key stands for.
fn digested() -> &'static [&'static str] {
    &DCIR_JOIN_KEYS[1..]
}

impl OptimizerRule for PrestationKeyJoin {
    fn name(&self) -> &str {
        "pds_prestation_key_join"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        // Any reason not to rewrite leaves the plan as written: the rule
        // only ever makes a join cheaper, never a statement fail.
        match rewrite_join(&plan) {
            Some(p) => Ok(Transformed::yes(p)),
            None => Ok(Transformed::no(plan)),
        }
    }
}

fn rewrite_join(plan: &LogicalPlan) -> Option<LogicalPlan> {
    let LogicalPlan::Join(j) = plan else {
        return None;
    };
    // `IS NOT DISTINCT FROM` matches nulls, the key does not.
    if j.null_equality != NullEquality::NullEqualsNothing || j.null_aware {
        return None;
    }
    let mut left = vec![None; digested().len()];
    let mut right = vec![None; digested().len()];
    let mut kept = Vec::new();
    for (l, r) in &j.on {
        if let (Expr::Column(lc), Expr::Column(rc)) = (l, r)
            && lc.name == rc.name
            && let Some(i) = digested().iter().position(|k| *k == lc.name)
            && left[i].is_none()
        {
            left[i] = Some(lc.clone());
            right[i] = Some(rc.clone());
        } else {
            kept.push((l.clone(), r.clone()));
        }
    }
    let left: Vec<Column> = left.into_iter().collect::<Option<_>>()?;
    let right: Vec<Column> = right.into_iter().collect::<Option<_>>()?;
    let (new_left, lk) = expose(&j.left, &left)?;
    let (new_right, rk) = expose(&j.right, &right)?;
    kept.push((Expr::Column(lk), Expr::Column(rk)));
    let join = rejoin(j, Arc::new(new_left), Arc::new(new_right), kept)?;
    // The join's columns as written: the keys are an implementation detail.
    let exprs = j.schema.columns().into_iter().map(Expr::Column).collect();
    Projection::try_new(exprs, Arc::new(LogicalPlan::Join(join)))
        .ok()
        .map(LogicalPlan::Projection)
}

/// `j` with other inputs and equalities, everything else kept.
fn rejoin(
    j: &Join,
    left: Arc<LogicalPlan>,
    right: Arc<LogicalPlan>,
    on: Vec<(Expr, Expr)>,
) -> Option<Join> {
    Join::try_new(
        left,
        right,
        on,
        j.filter.clone(),
        j.join_type,
        j.join_constraint,
        j.null_equality,
        j.null_aware,
    )
    .ok()
}

/// `plan` rewritten to also output the prestation key of the rows whose
/// eight digested keys are `cols` (in [`digested`] order), with the key's
/// column; `None` when the key cannot be traced to the same rows.
fn expose(plan: &LogicalPlan, cols: &[Column]) -> Option<(LogicalPlan, Column)> {
    let schema = plan.schema();
    if !cols.iter().all(|c| schema.has_column(c)) {
        return None;
    }
    match plan {
        LogicalPlan::TableScan(s) => {
            if !cols.iter().zip(digested()).all(|(c, k)| c.name == *k) {
                return None;
            }
            let source = s.source.schema();
            let at = source.index_of(PRESTATION_KEY).ok()?;
            if source.field(at).data_type() != &PRESTATION_KEY_TYPE {
                return None;
            }
            let key = Column::new(Some(s.table_name.clone()), PRESTATION_KEY);
            if schema.has_column(&key) {
                return Some((plan.clone(), key));
            }
            let mut projection = s.projection.clone()?;
            projection.push(at);
            let scan = TableScanBuilder::from(s.clone())
                .with_projection(Some(projection))
                .build()
                .ok()?;
            Some((LogicalPlan::TableScan(scan), key))
        }
        LogicalPlan::SubqueryAlias(a) => {
            let inner = a.input.schema();
            let below = cols
                .iter()
                .map(|c| {
                    let i = schema.index_of_column(c).ok()?;
                    let (q, f) = inner.qualified_field(i);
                    Some(Column::new(q.cloned(), f.name()))
                })
                .collect::<Option<Vec<_>>>()?;
            let (input, key) = expose(&a.input, &below)?;
            if key.name != PRESTATION_KEY {
                return None;
            }
            let alias = SubqueryAlias::try_new(Arc::new(input), a.alias.clone()).ok()?;
            let key = Column::new(Some(a.alias.clone()), PRESTATION_KEY);
            alias
                .schema
                .has_column(&key)
                .then_some((LogicalPlan::SubqueryAlias(alias), key))
        }
        LogicalPlan::Filter(f) => {
            let (input, key) = expose(&f.input, cols)?;
            let filter = Filter::try_new(f.predicate.clone(), Arc::new(input)).ok()?;
            Some((LogicalPlan::Filter(filter), key))
        }
        LogicalPlan::Projection(p) => {
            let below = cols
                .iter()
                .map(|c| match &p.expr[schema.index_of_column(c).ok()?] {
                    Expr::Column(b) if b.name == c.name => Some(b.clone()),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            let (input, key) = expose(&p.input, &below)?;
            let mut exprs = p.expr.clone();
            let k = Expr::Column(key.clone());
            if !exprs.contains(&k) {
                exprs.push(k);
            }
            let proj = Projection::try_new(exprs, Arc::new(input)).ok()?;
            Some((LogicalPlan::Projection(proj), key))
        }
        LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => {
            let input = plan.inputs().into_iter().next()?;
            let (input, key) = expose(input, cols)?;
            let node = plan.with_new_exprs(plan.expressions(), vec![input]).ok()?;
            Some((node, key))
        }
        LogicalPlan::Join(j) => {
            let on_left = cols.iter().all(|c| j.left.schema().has_column(c));
            let on_right = cols.iter().all(|c| j.right.schema().has_column(c));
            let (l, r, key) = match (on_left, on_right) {
                (true, false) => {
                    let (l, key) = expose(&j.left, cols)?;
                    (Arc::new(l), Arc::clone(&j.right), key)
                }
                (false, true) => {
                    let (r, key) = expose(&j.right, cols)?;
                    (Arc::clone(&j.left), Arc::new(r), key)
                }
                _ => return None,
            };
            let join = rejoin(j, l, r, j.on.clone())?;
            // Exactly one column of that name: the other side has no key
            // under the same qualifier.
            let found = join.schema.columns().iter().filter(|c| **c == key).count();
            (found == 1).then_some((LogicalPlan::Join(join), key))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        ArrayRef, Date32Array, Decimal128Array, Int64Array, RecordBatch, StringArray,
    };
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::SessionContext;

    /// A DCIR-like table: the nine keys, a value, and the key as the
    /// loader computes it (here a stand-in injective function of the eight,
    /// which is all the rule relies on).
    fn table(rows: &[(i32, i64, &str)], value: &str) -> Arc<MemTable> {
        let mut fields = vec![
            Field::new("FLX_DIS_DTD", DataType::Date32, true),
            Field::new("FLX_TRT_DTD", DataType::Date32, true),
        ];
        let n = rows.len();
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(Date32Array::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(Date32Array::from(vec![7; n])),
        ];
        for k in ["FLX_EMT_TYP", "FLX_EMT_NUM", "FLX_EMT_ORD"] {
            fields.push(Field::new(k, DataType::Int64, true));
            cols.push(Arc::new(Int64Array::from(vec![1; n])));
        }
        fields.push(Field::new("ORG_CLE_NUM", DataType::Utf8, true));
        cols.push(Arc::new(StringArray::from(
            rows.iter().map(|r| r.2).collect::<Vec<_>>(),
        )));
        for k in ["DCT_ORD_NUM", "PRS_ORD_NUM", "REM_TYP_AFF"] {
            fields.push(Field::new(k, DataType::Int64, true));
            cols.push(Arc::new(Int64Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )));
        }
        fields.push(Field::new(value, DataType::Int64, true));
        cols.push(Arc::new(Int64Array::from(
            (0..n as i64).collect::<Vec<_>>(),
        )));
        fields.push(Field::new(PRESTATION_KEY, PRESTATION_KEY_TYPE, true));
        cols.push(Arc::new(
            Decimal128Array::from(
                rows.iter()
                    .map(|r| r.1 as i128 * 1000 + r.2.len() as i128)
                    .collect::<Vec<_>>(),
            )
            .with_data_type(PRESTATION_KEY_TYPE),
        ));
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
        Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap())
    }

    fn session(rule: bool) -> SessionContext {
        // SNDS names are upper case: no folding, as in PDS's sessions.
        let mut config = datafusion::prelude::SessionConfig::new();
        config.options_mut().sql_parser.enable_ident_normalization = false;
        let ctx = SessionContext::new_with_config(config);
        if rule {
            ctx.add_optimizer_rule(Arc::new(PrestationKeyJoin));
        }
        let p: Vec<(i32, i64, &str)> = (0..300)
            .map(|i: i64| ((i % 3) as i32, i / 2, if i % 2 == 0 { "a" } else { "bb" }))
            .collect();
        let f: Vec<(i32, i64, &str)> = (0..200)
            .map(|i: i64| ((i % 3) as i32, i / 3, if i % 3 == 0 { "a" } else { "bb" }))
            .collect();
        // `bare` keeps the case (a `&str` would be folded).
        use datafusion::common::TableReference;
        ctx.register_table(TableReference::bare("ER_PRS_F"), table(&p, "PRS_VAL"))
            .unwrap();
        ctx.register_table(TableReference::bare("ER_PHA_F"), table(&f, "PHA_VAL"))
            .unwrap();
        ctx
    }

    const NINE_KEYS: &str = "SELECT p.PRS_VAL, f.PHA_VAL, f.FLX_EMT_NUM FROM ER_PRS_F p JOIN ER_PHA_F f \
        ON f.FLX_DIS_DTD = p.FLX_DIS_DTD AND f.FLX_TRT_DTD = p.FLX_TRT_DTD AND f.FLX_EMT_TYP = p.FLX_EMT_TYP \
        AND f.FLX_EMT_NUM = p.FLX_EMT_NUM AND f.FLX_EMT_ORD = p.FLX_EMT_ORD AND f.ORG_CLE_NUM = p.ORG_CLE_NUM \
        AND f.DCT_ORD_NUM = p.DCT_ORD_NUM AND f.PRS_ORD_NUM = p.PRS_ORD_NUM AND f.REM_TYP_AFF = p.REM_TYP_AFF \
        WHERE p.PRS_VAL > 10 ORDER BY 1, 2";

    async fn run(ctx: &SessionContext, sql: &str) -> (String, String) {
        let df = ctx.sql(sql).await.unwrap();
        let plan = df.clone().create_physical_plan().await.unwrap();
        let text = displayable(plan.as_ref()).indent(false).to_string();
        let rows = arrow::util::pretty::pretty_format_batches(&df.collect().await.unwrap())
            .unwrap()
            .to_string();
        (text, rows)
    }

    #[tokio::test]
    async fn the_nine_key_join_runs_on_the_flow_date_and_the_key_with_the_same_rows() {
        let (plan, rows) = run(&session(true), NINE_KEYS).await;
        let (written, expected) = run(&session(false), NINE_KEYS).await;
        assert_eq!(rows, expected);
        assert!(rows.lines().count() > 10, "{rows}");
        let join = plan.lines().find(|l| l.contains("HashJoinExec")).unwrap();
        assert!(
            join.contains(PRESTATION_KEY) && join.contains("FLX_DIS_DTD"),
            "{join}"
        );
        assert!(!join.contains("ORG_CLE_NUM"), "{join}");
        assert!(
            written
                .lines()
                .any(|l| l.contains("HashJoinExec") && l.contains("ORG_CLE_NUM"))
        );
        // The eight columns are no longer read from the prestations.
        let scan = plan
            .lines()
            .find(|l| l.contains("PRS_VAL") && l.contains("projection"))
            .unwrap();
        assert!(!scan.contains("DCT_ORD_NUM"), "{scan}");
    }

    #[tokio::test]
    async fn a_join_on_fewer_keys_or_with_computed_keys_is_left_as_written() {
        let fewer = NINE_KEYS.replace("AND f.REM_TYP_AFF = p.REM_TYP_AFF", "");
        let computed = NINE_KEYS.replace(
            "f.DCT_ORD_NUM = p.DCT_ORD_NUM",
            "f.DCT_ORD_NUM + 0 = p.DCT_ORD_NUM",
        );
        for sql in [fewer, computed] {
            let (plan, rows) = run(&session(true), &sql).await;
            let (_, expected) = run(&session(false), &sql).await;
            assert_eq!(rows, expected);
            assert!(!plan.contains(PRESTATION_KEY), "{plan}");
        }
    }

    #[tokio::test]
    async fn the_key_is_found_through_subqueries_and_other_joins() {
        let sql = "SELECT p.PRS_VAL, f.PHA_VAL FROM (SELECT * FROM ER_PRS_F WHERE PRS_VAL > 3) p \
            JOIN ER_PRS_F q ON q.PRS_VAL = p.PRS_VAL \
            JOIN (SELECT FLX_DIS_DTD, FLX_TRT_DTD, FLX_EMT_TYP, FLX_EMT_NUM, FLX_EMT_ORD, ORG_CLE_NUM, DCT_ORD_NUM, PRS_ORD_NUM, REM_TYP_AFF, PHA_VAL FROM ER_PHA_F) f \
            ON f.FLX_DIS_DTD = p.FLX_DIS_DTD AND f.FLX_TRT_DTD = p.FLX_TRT_DTD AND f.FLX_EMT_TYP = p.FLX_EMT_TYP \
            AND f.FLX_EMT_NUM = p.FLX_EMT_NUM AND f.FLX_EMT_ORD = p.FLX_EMT_ORD AND f.ORG_CLE_NUM = p.ORG_CLE_NUM \
            AND f.DCT_ORD_NUM = p.DCT_ORD_NUM AND f.PRS_ORD_NUM = p.PRS_ORD_NUM AND f.REM_TYP_AFF = p.REM_TYP_AFF \
            ORDER BY 1, 2";
        let (plan, rows) = run(&session(true), sql).await;
        let (_, expected) = run(&session(false), sql).await;
        assert_eq!(rows, expected);
        assert!(plan.contains(PRESTATION_KEY), "{plan}");
    }
}
