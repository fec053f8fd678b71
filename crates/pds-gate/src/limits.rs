//! Resource limits of statements: memory per statement within a global
//! cap, concurrency, time and rows.

use std::fmt;
use std::sync::Arc;

use datafusion::error::Result;
use datafusion::execution::memory_pool::{
    FairSpillPool, GreedyMemoryPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};

/// The memory pool of one statement: every reservation counts against the
/// statement's own limit and against the pool shared by all statements.
#[derive(Debug)]
pub struct StatementPool {
    local: Box<dyn MemoryPool>,
    global: Arc<GreedyMemoryPool>,
    local_limit: usize,
}

impl StatementPool {
    /// A pool of `limit` bytes drawing on `global`, first come first served
    /// within the statement: the fastest when the statement fits.
    pub fn new(limit: usize, global: Arc<GreedyMemoryPool>) -> StatementPool {
        StatementPool {
            local: Box::new(GreedyMemoryPool::new(limit)),
            global,
            local_limit: limit,
        }
    }

    /// A pool of `limit` bytes drawing on `global` that shares the memory
    /// left by the operators that cannot spill equally among those that can
    /// (DataFusion's `FairSpillPool`). For a statement that must spill: under
    /// a greedy pool the first sort to grow keeps the memory the next needs
    /// even to start, and the statement stops where every sort could have
    /// spilled its share.
    pub fn fair(limit: usize, global: Arc<GreedyMemoryPool>) -> StatementPool {
        StatementPool {
            local: Box::new(FairSpillPool::new(limit)),
            global,
            local_limit: limit,
        }
    }
}

impl fmt::Display for StatementPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "statement pool ({} bytes)", self.local_limit)
    }
}

impl MemoryPool for StatementPool {
    fn name(&self) -> &str {
        "pds-statement"
    }
    fn register(&self, consumer: &MemoryConsumer) {
        self.local.register(consumer);
    }
    fn unregister(&self, consumer: &MemoryConsumer) {
        self.local.unregister(consumer);
    }
    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.global.grow(reservation, additional);
        self.local.grow(reservation, additional);
    }
    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.local.shrink(reservation, shrink);
        self.global.shrink(reservation, shrink);
    }
    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        self.local.try_grow(reservation, additional)?;
        if let Err(e) = self.global.try_grow(reservation, additional) {
            self.local.shrink(reservation, additional);
            return Err(e);
        }
        Ok(())
    }
    fn reserved(&self) -> usize {
        self.local.reserved()
    }
    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.local_limit)
    }
}

/// Limits applied to every statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Statement timeout.
    pub timeout: std::time::Duration,
    /// Memory per statement, bytes.
    pub query_memory: usize,
    /// Memory of all statements, bytes.
    pub total_memory: usize,
    /// Rows per result.
    pub max_rows: u64,
    /// Statements at once.
    pub concurrent: usize,
    /// Longest statement text, bytes.
    pub max_sql_bytes: usize,
}

impl Limits {
    /// The limits of a home's `[gate]` section.
    pub fn from_config(c: &pds_home::GateConfig) -> Limits {
        Limits {
            timeout: std::time::Duration::from_secs(c.statement_timeout_secs.max(1)),
            query_memory: (c.query_memory_mib.max(1) as usize) << 20,
            total_memory: (c.total_memory_mib.max(1) as usize) << 20,
            max_rows: c.max_result_rows,
            concurrent: c.max_concurrent_statements.max(1) as usize,
            max_sql_bytes: 100 * 1024,
        }
    }
}

/// What a node that passes its only input through unchanged asks of its
/// input's statistics: all of them. DataFusion skips a child unless asked,
/// and a wrapper that did not ask hid every statistic below it from the
/// planner (joins then kept the written order).
pub(crate) fn pass_through_child_stats(
    partition: Option<usize>,
) -> Vec<datafusion::physical_plan::statistics::ChildStats> {
    vec![datafusion::physical_plan::statistics::ChildStats::At(
        partition,
    )]
}

/// The statistics of a node that passes its only input through unchanged.
pub(crate) fn pass_through_statistics(
    input_stats: &[Arc<datafusion::common::Statistics>],
    input: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
) -> Arc<datafusion::common::Statistics> {
    input_stats
        .first()
        .cloned()
        .unwrap_or_else(|| Arc::new(datafusion::common::Statistics::new_unknown(&input.schema())))
}

/// The message a [`DeadlineExec`] fails with (recognised by the gate).
pub const DEADLINE_PASSED: &str = "pds: statement deadline passed";

/// The message a [`DeadlineExec`] fails with when its statement is
/// cancelled by the client (recognised by the gate).
pub const CANCELLED: &str = "pds: statement cancelled by the client";

/// A flag a front-end raises to cancel a running statement.
pub type CancelFlag = Arc<std::sync::atomic::AtomicBool>;

/// Fails its output once the statement's deadline has passed.
///
/// DataFusion cancels by dropping streams, and a timeout around the result
/// stream only fires when the engine yields to the runtime. Some operators
/// (a cross join feeding an aggregate) produce batch after batch without
/// yielding, so the gate wraps every node of the physical plan with this
/// check: whichever loop is spinning, its next batch is an error and the
/// whole statement unwinds.
#[derive(Debug)]
pub struct DeadlineExec {
    input: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    deadline: std::time::Instant,
    cancel: Option<CancelFlag>,
}

impl DeadlineExec {
    /// Wraps every node of `plan`; `cancel`, when raised, stops it like
    /// the deadline does.
    pub fn wrap_all(
        plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        deadline: std::time::Instant,
        cancel: Option<CancelFlag>,
    ) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        use datafusion::common::tree_node::{Transformed, TreeNode};
        plan.transform_up(|node| {
            Ok(Transformed::yes(Arc::new(DeadlineExec {
                input: node,
                deadline,
                cancel: cancel.clone(),
            })
                as Arc<dyn datafusion::physical_plan::ExecutionPlan>))
        })
        .map(|t| t.data)
    }
}

impl datafusion::physical_plan::DisplayAs for DeadlineExec {
    fn fmt_as(
        &self,
        _t: datafusion::physical_plan::DisplayFormatType,
        f: &mut fmt::Formatter,
    ) -> fmt::Result {
        write!(f, "Deadline")
    }
}

impl datafusion::physical_plan::ExecutionPlan for DeadlineExec {
    fn name(&self) -> &str {
        "Deadline"
    }
    fn child_stats_requests(
        &self,
        partition: Option<usize>,
    ) -> Vec<datafusion::physical_plan::statistics::ChildStats> {
        pass_through_child_stats(partition)
    }
    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<datafusion::common::Statistics>],
        _args: &datafusion::physical_plan::statistics::StatisticsArgs,
    ) -> Result<Arc<datafusion::common::Statistics>> {
        Ok(pass_through_statistics(input_stats, &self.input))
    }
    fn properties(&self) -> &Arc<datafusion::physical_plan::PlanProperties> {
        self.input.properties()
    }
    fn children(&self) -> Vec<&Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        vec![&self.input]
    }
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_plan::PhysicalExpr>,
        ) -> Result<datafusion::common::tree_node::TreeNodeRecursion>,
    ) -> Result<datafusion::common::tree_node::TreeNodeRecursion> {
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    }
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
    ) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let input = children.into_iter().next().ok_or_else(|| {
            datafusion::error::DataFusionError::Internal("Deadline has one child".into())
        })?;
        Ok(Arc::new(DeadlineExec {
            input,
            deadline: self.deadline,
            cancel: self.cancel.clone(),
        }))
    }
    fn execute(
        &self,
        partition: usize,
        context: Arc<datafusion::execution::TaskContext>,
    ) -> Result<datafusion::execution::SendableRecordBatchStream> {
        let inner = self.input.execute(partition, context)?;
        Ok(Box::pin(DeadlineStream {
            inner,
            deadline: self.deadline,
            cancel: self.cancel.clone(),
        }))
    }
}

struct DeadlineStream {
    inner: datafusion::execution::SendableRecordBatchStream,
    deadline: std::time::Instant,
    cancel: Option<CancelFlag>,
}

impl futures::Stream for DeadlineStream {
    type Item = Result<arrow::array::RecordBatch>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if std::time::Instant::now() >= self.deadline {
            return std::task::Poll::Ready(Some(Err(
                datafusion::error::DataFusionError::Execution(DEADLINE_PASSED.into()),
            )));
        }
        if self
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        {
            return std::task::Poll::Ready(Some(Err(
                datafusion::error::DataFusionError::Execution(CANCELLED.into()),
            )));
        }
        self.inner.as_mut().poll_next(cx)
    }
}

impl datafusion::execution::RecordBatchStream for DeadlineStream {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.inner.schema()
    }
}
