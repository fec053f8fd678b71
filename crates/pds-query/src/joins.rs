//! Join order for the standard SNDS analyses.
//!
//! Researchers write the DCIR join as SNDS documentation teaches it: the
//! prestation table first, then its refinement table on the 9 keys, then
//! the referential that selects what the analysis is about:
//!
//! ```sql
//! FROM ER_PRS_F p JOIN ER_PHA_F f ON <9 keys> JOIN IR_PHA_R r ON r.PHA_CIP_C13 = f.PHA_PRS_C13
//! WHERE r.PHA_ATC_C07 LIKE 'C10AA%'
//! ```
//!
//! DataFusion keeps the written order, so the 9-key join of every
//! prestation with every dispensing runs before the referential throws
//! most of them away. [`FilteredReferentialFirst`] joins a filtered small
//! table (by the catalogue's row counts) to the table it is joined with
//! first (associativity of inner joins): `(p ⋈ f) ⋈ σ(r)` becomes
//! `(σ(r) ⋈ f) ⋈ p`, the small sides on the left where hash joins build
//! their table, and the columns put back in the written order. The
//! results are the same; the measured effect is in `docs/performance.md`.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, Result};
use datafusion::logical_expr::{Expr, Join, JoinType, LogicalPlan, Projection};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

/// The rule; see the module documentation. `rows` are the catalogue's row
/// counts of the snapshot's tables: a filtered table moves down only when
/// it is at least ten times smaller than the table it is joined with.
#[derive(Debug, Default)]
pub struct FilteredReferentialFirst {
    rows: HashMap<String, i64>,
}

impl FilteredReferentialFirst {
    /// The rule for a snapshot whose tables have these row counts.
    pub fn new(rows: HashMap<String, i64>) -> FilteredReferentialFirst {
        FilteredReferentialFirst { rows }
    }

    /// The rows of the one table `plan` reads, when it reads one and
    /// filters it.
    fn filtered_table(&self, plan: &LogicalPlan) -> Option<i64> {
        let mut tables = Vec::new();
        let mut filtered = false;
        let mut simple = true;
        let _ = plan.apply(|p| {
            match p {
                LogicalPlan::TableScan(s) => {
                    tables.push(self.rows.get(s.table_name.table()).copied());
                    filtered |= !s.filters.is_empty();
                }
                LogicalPlan::Filter(_) => filtered = true,
                LogicalPlan::Join(_) | LogicalPlan::Aggregate(_) | LogicalPlan::Union(_) => {
                    simple = false;
                }
                _ => {}
            }
            Ok(TreeNodeRecursion::Continue)
        });
        match tables.as_slice() {
            [Some(rows)] if filtered && simple => Some(*rows),
            _ => None,
        }
    }

    /// The rows of the largest table `plan` reads (0 if unknown).
    fn largest(&self, plan: &LogicalPlan) -> i64 {
        let mut max = 0;
        let _ = plan.apply(|p| {
            if let LogicalPlan::TableScan(s) = p {
                max = max.max(self.rows.get(s.table_name.table()).copied().unwrap_or(0));
            }
            Ok(TreeNodeRecursion::Continue)
        });
        max
    }
}

/// Whether every column `e` uses is in `schema`.
fn within(e: &Expr, schema: &DFSchema) -> bool {
    e.column_refs().iter().all(|c| schema.has_column(c))
}

impl OptimizerRule for FilteredReferentialFirst {
    fn name(&self) -> &str {
        "pds_filtered_referential_first"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Join(outer) = &plan else {
            return Ok(Transformed::no(plan));
        };
        // The inner join, possibly under a projection of its columns.
        let (kept, inner) = match outer.left.as_ref() {
            LogicalPlan::Join(j) => (None, j),
            LogicalPlan::Projection(p) if p.expr.iter().all(|e| matches!(e, Expr::Column(_))) => {
                match p.input.as_ref() {
                    LogicalPlan::Join(j) => (Some(&p.expr), j),
                    _ => return Ok(Transformed::no(plan)),
                }
            }
            _ => return Ok(Transformed::no(plan)),
        };
        let (a, b, c) = (&inner.left, &inner.right, &outer.right);
        let movable = outer.join_type == JoinType::Inner
            && inner.join_type == JoinType::Inner
            && !outer.null_aware
            && !outer.on.is_empty()
            && self
                .filtered_table(c)
                .is_some_and(|rows| rows.saturating_mul(10) <= self.largest(b))
            // The outer join only involves the inner join's right side.
            && outer.on.iter().all(|(l, _)| within(l, b.schema()))
            && outer.filter.as_ref().is_none_or(|f| {
                let both = b.schema().as_ref().clone().join(c.schema());
                both.is_ok_and(|s| within(f, &s))
            });
        if !movable {
            return Ok(Transformed::no(plan));
        }
        // The left input of a hash join is the side it builds a table of:
        // the small, filtered table first, then its join with `b`, and the
        // large `a` streams through.
        let swap = |on: &[(Expr, Expr)]| on.iter().map(|(l, r)| (r.clone(), l.clone())).collect();
        let cb = Join::try_new(
            Arc::clone(c),
            Arc::clone(b),
            swap(&outer.on),
            outer.filter.clone(),
            JoinType::Inner,
            outer.join_constraint,
            outer.null_equality,
            false,
        )?;
        let cba = Join::try_new(
            Arc::new(LogicalPlan::Join(cb)),
            Arc::clone(a),
            swap(&inner.on),
            inner.filter.clone(),
            JoinType::Inner,
            inner.join_constraint,
            inner.null_equality,
            false,
        )?;
        // The same columns in the same order as the written plan.
        let columns = |p: &LogicalPlan| -> Vec<Expr> {
            p.schema().columns().into_iter().map(Expr::Column).collect()
        };
        let mut exprs = match kept {
            Some(e) => e.clone(),
            None => [columns(a), columns(b)].concat(),
        };
        exprs.extend(columns(c));
        let out = Projection::try_new(exprs, Arc::new(LogicalPlan::Join(cba)))?;
        Ok(Transformed::yes(LogicalPlan::Projection(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    fn table(cols: &[(&str, Vec<i64>)], text: Option<(&str, Vec<String>)>) -> Arc<MemTable> {
        let mut fields: Vec<Field> = cols
            .iter()
            .map(|(n, _)| Field::new(*n, DataType::Int64, false))
            .collect();
        let mut arrays: Vec<arrow::array::ArrayRef> = cols
            .iter()
            .map(|(_, v)| Arc::new(Int64Array::from(v.clone())) as _)
            .collect();
        if let Some((n, v)) = text {
            fields.push(Field::new(n, DataType::Utf8, false));
            arrays.push(Arc::new(StringArray::from(v)));
        }
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(schema.clone(), arrays).unwrap();
        Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap())
    }

    /// `p` (prestations), `f` (their dispensings, on `k`), `r` (a
    /// referential of `c` codes); `r_rows` is what the catalogue says of r.
    fn session(rule: Option<i64>) -> SessionContext {
        let ctx = SessionContext::new();
        let n = 2000i64;
        ctx.register_table(
            "p",
            table(
                &[
                    ("k", (0..n).collect()),
                    ("v", (0..n).map(|i| i % 7).collect()),
                ],
                None,
            ),
        )
        .unwrap();
        ctx.register_table(
            "f",
            table(
                &[
                    ("k", (0..n).map(|i| (i * 3) % n).collect()),
                    ("c", (0..n).map(|i| i % 50).collect()),
                ],
                None,
            ),
        )
        .unwrap();
        ctx.register_table(
            "r",
            table(
                &[("c", (0..50).collect())],
                Some((
                    "atc",
                    (0..50)
                        .map(|i| format!("{}{i}", if i % 5 == 0 { "A" } else { "B" }))
                        .collect(),
                )),
            ),
        )
        .unwrap();
        if let Some(r_rows) = rule {
            let rows = [
                ("p".to_string(), n),
                ("f".to_string(), n),
                ("r".to_string(), r_rows),
            ];
            ctx.add_optimizer_rule(Arc::new(FilteredReferentialFirst::new(
                rows.into_iter().collect(),
            )));
        }
        ctx
    }

    const SQL: &str = "SELECT p.v, r.atc, count(*) AS n FROM p JOIN f ON f.k = p.k \
                       JOIN r ON r.c = f.c WHERE r.atc LIKE 'A%' GROUP BY 1, 2";

    /// Whether the top join streams `p` (its right, probe side) through
    /// the join of the others.
    async fn moved(ctx: &SessionContext) -> bool {
        let plan = ctx.sql(SQL).await.unwrap().into_optimized_plan().unwrap();
        let mut found = None;
        let _ = plan.apply(|p| {
            if let LogicalPlan::Join(j) = p {
                let mut names = Vec::new();
                let _ = j.right.apply(|q| {
                    if let LogicalPlan::TableScan(s) = q {
                        names.push(s.table_name.table().to_string());
                    }
                    Ok(TreeNodeRecursion::Continue)
                });
                found = Some(names == ["p"]);
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        });
        found.expect("a join")
    }

    async fn rows(ctx: &SessionContext) -> Vec<String> {
        let b = ctx
            .sql(&format!("{SQL} ORDER BY 1, 2"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        arrow::util::pretty::pretty_format_batches(&b)
            .unwrap()
            .to_string()
            .lines()
            .map(String::from)
            .collect()
    }

    #[tokio::test]
    async fn a_filtered_small_table_is_joined_first_with_the_same_results() {
        let written = session(None);
        let reordered = session(Some(50));
        assert!(!moved(&written).await, "DataFusion keeps the written order");
        assert!(
            moved(&reordered).await,
            "the referential joins the dispensings first"
        );
        let want = rows(&written).await;
        assert!(want.len() > 5, "{want:?}");
        assert_eq!(rows(&reordered).await, want);
    }

    #[tokio::test]
    async fn a_table_that_is_not_much_smaller_stays_where_it_was_written() {
        assert!(!moved(&session(Some(1000))).await);
    }
}
