//! Resource limits of statements: memory per statement within a global
//! cap, concurrency, time and rows.

use std::fmt;
use std::sync::Arc;

use datafusion::error::Result;
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryLimit, MemoryPool, MemoryReservation,
};

/// The memory pool of one statement: every reservation counts against the
/// statement's own limit and against the pool shared by all statements.
#[derive(Debug)]
pub struct StatementPool {
    local: GreedyMemoryPool,
    global: Arc<GreedyMemoryPool>,
    local_limit: usize,
}

impl StatementPool {
    /// A pool of `limit` bytes drawing on `global`.
    pub fn new(limit: usize, global: Arc<GreedyMemoryPool>) -> StatementPool {
        StatementPool {
            local: GreedyMemoryPool::new(limit),
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
