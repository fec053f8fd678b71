//! The gate: the one path every statement takes, whatever the front-end.
//!
//! [`Gate::execute`] does, for each statement:
//!
//! 1. checks the principal and the project (membership, role, dates);
//! 2. builds a fresh DataFusion session in which only the project's views
//!    exist ([`views`]): granted tables and columns, rows within the years
//!    and population, identifiers mapped to project pseudonyms, potential
//!    identifiers coarsened. Nothing else is registered: no base table, no
//!    `file://` store, no table factory, no spill directory;
//! 3. plans the statement and refuses anything but a read (DDL, DML, COPY,
//!    SET, transactions: `SQLOptions::verify_plan`, subqueries included),
//!    `EXPLAIN` for projects (plans show storage paths), per-row results for
//!    aggregate-only projects;
//! 4. bounds it: memory per statement inside a global cap, a timeout, a
//!    result-row cap, a number of statements at once, a maximum text size;
//! 5. writes the audit entry (statement, plan fingerprint, tables and
//!    columns) **before** the first row: if the audit write fails, the
//!    statement fails;
//! 6. streams rows ([`ResultStream`]), hashing them as an Arrow IPC stream,
//!    and writes a closing entry (rows, bytes, SHA-256, duration, outcome).
//!
//! Errors say what was refused and why, never data values from outside the
//! perimeter, storage paths or other projects' objects.
#![forbid(unsafe_code)]

pub mod contributors;
pub mod disclosure;
pub mod late;
pub mod limits;
pub mod pgcompat;
pub mod views;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::StreamWriter;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{ParamValues, TableReference};
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use pds_audit::{AuditLog, Record, TableAccess};
use pds_catalog::Catalog;
use pds_home::Home;
use pds_keys::KeyStore;
use pds_project::AccessMode;
use pds_query::OpenSnapshot;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use limits::Limits;

/// Errors of the gate. Every one is also in the audit log.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The statement or the access is not allowed.
    #[error("refused: {0}")]
    Refused(String),
    /// The statement is allowed but failed (syntax, unknown name, ...).
    #[error("{0}")]
    Failed(String),
    /// A resource limit stopped the statement.
    #[error("stopped: {0}")]
    Limit(String),
    /// The audit log could not be written: nothing was returned.
    #[error("audit log unavailable, statement not run: {0}")]
    Audit(String),
    /// The platform could not set the statement up.
    #[error("{0}")]
    Setup(String),
}

/// What a statement runs against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A project's views.
    Project(String),
    /// The whole snapshot with platform pseudonyms: data stewards checking
    /// loads. Audited like everything else.
    Operator {
        /// Snapshot (latest when `None`).
        snapshot: Option<i64>,
    },
}

/// The gate of one home.
pub struct Gate {
    cat: Catalog,
    keys: Arc<KeyStore>,
    audit: Arc<AuditLog>,
    storage: pds_storage::Storage,
    limits: Limits,
    global: Arc<GreedyMemoryPool>,
    running: Arc<Semaphore>,
    snapshots: Mutex<HashMap<i64, Arc<OpenSnapshot>>>,
    views: Mutex<HashMap<String, Arc<ProjectViews>>>,
    /// PostgreSQL compatibility, built on first use.
    pg: OnceLock<Result<Arc<pgcompat::PgCompat>, String>>,
    /// Serialises the query-set tracker's compare-then-record.
    tracker_lock: Arc<tokio::sync::Mutex<()>>,
    /// Project pseudonyms mapped where first needed ([`late`]) rather than
    /// in the views.
    late_pseudonyms: std::sync::atomic::AtomicBool,
    /// Where statements spill (`None`: they do not).
    spill: Option<Arc<pds_query::spill::EncryptedSpill>>,
}

/// How a front-end wants one statement run. The defaults are those of
/// `pds sql`.
#[derive(Debug, Clone, Default)]
pub struct StatementOptions {
    /// The statement comes from a PostgreSQL client: parse it with the
    /// PostgreSQL compatibility rewrites and give it a `pg_catalog` listing
    /// the views it may see.
    pub postgres: bool,
    /// Values of the `$1`, `$2`... placeholders.
    pub params: Option<ParamValues>,
    /// A client-side timeout (PostgreSQL's `statement_timeout`); the gate's
    /// own limit still applies when it is shorter.
    pub timeout: Option<Duration>,
    /// The front-end (`pgwire`, `flight-sql`, `http`), kept in the audit log.
    pub channel: Option<String>,
    /// Raised by the front-end to cancel the statement while it runs.
    pub cancel: Option<limits::CancelFlag>,
}

/// What a statement would return, without running it (prepared statements).
#[derive(Debug, Clone)]
pub struct Description {
    /// The result columns.
    pub schema: SchemaRef,
    /// The placeholders `$1`, `$2`... in order, with the type the planner
    /// inferred (`None` when it could not).
    pub params: Vec<Option<DataType>>,
}

/// The view plans of a project, valid while its definition is unchanged.
struct ProjectViews {
    /// Digest of everything the plans depend on.
    fingerprint: String,
    /// The project's `pg_catalog`, built on first use and kept with the
    /// views, so object ids stay the same from one statement to the next
    /// (psql's `\d` looks a table up, then its columns, by id).
    pg_catalog: OnceLock<Arc<dyn datafusion::catalog::SchemaProvider>>,
    /// Per granted table, its view, built once: a statement registers
    /// these (the late-mapping variant is derived once too).
    tables: Vec<(String, Arc<views::PerimeterTable>)>,
    /// Per table holding patients, the view with the stored patient
    /// identifier (disclosure control only).
    patient_plans: HashMap<String, LogicalPlan>,
    /// Per table, the columns shown as stored (the only ones a pushed-down
    /// predicate may name).
    plain: HashMap<String, Vec<String>>,
    /// Columns showing a potential identifier at full precision.
    full_precision: HashSet<String>,
    /// Tables about people whose rows carry no patient column: the parent
    /// and keys that attribute them (`None`: they cannot be attributed).
    unattributed: HashMap<String, Option<(String, Vec<String>)>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The file holding the audit log's trusted public key, in the key store
/// directory: `pds audit verify` trusts it rather than the database.
pub const AUDIT_PUBLIC_KEY_FILE: &str = "audit.pub";

/// Opens the audit log of a home, creating its key on first use, and checks
/// the catalogue's public key against the trusted copy beside the key store.
pub async fn open_audit(home: &Home, cat: Catalog, keys: &KeyStore) -> Result<AuditLog, GateError> {
    let a = &home.config.audit;
    let log = AuditLog::open(
        cat,
        keys,
        &a.origin,
        std::time::Duration::from_secs(a.checkpoint_interval_minutes.max(1) * 60),
    )
    .await
    .map_err(|e| GateError::Audit(e.to_string()))?;
    let path = home.keys_dir().join(AUDIT_PUBLIC_KEY_FILE);
    let public = log.public_key_hex();
    match std::fs::read_to_string(&path) {
        Ok(t) if t.trim() == public => {}
        Ok(_) => {
            return Err(GateError::Audit(format!(
                "the audit key in the catalogue differs from the trusted one in {}: the catalogue was altered or belongs to another home",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&path, format!("{public}\n"))
                .map_err(|e| GateError::Audit(format!("writing {}: {e}", path.display())))?;
        }
        Err(e) => return Err(GateError::Audit(format!("reading {}: {e}", path.display()))),
    }
    Ok(log)
}

fn request_id() -> String {
    // An id only links entries; a clock fallback is fine if the OS fails.
    match pds_keys::SecretKey::random() {
        Ok(k) => hex::encode(&k.expose()[..8]),
        Err(_) => format!(
            "{:016x}",
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
        ),
    }
}

/// Replaces every token starting with `marker` (up to a blank, quote,
/// parenthesis or comma) by `<snapshot file>`.
fn mask_tokens(msg: &str, marker: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(marker) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | ')' | ','))
            .unwrap_or(tail.len());
        out.push_str("<snapshot file>");
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Removes storage paths (with or without the `pds://` scheme) from an
/// engine message.
pub fn sanitize(msg: &str) -> String {
    mask_tokens(&mask_tokens(msg, "pds://"), "snapshots/")
}

/// The spill files of a home's `[gate]` section (`None` when
/// `max_spill_mib` is 0).
fn spill_of(home: &Home) -> Result<Option<Arc<pds_query::spill::EncryptedSpill>>, GateError> {
    let mib = home.config.gate.max_spill_mib;
    if mib == 0 {
        return Ok(None);
    }
    pds_query::spill::EncryptedSpill::new(&home.spill_dir(), mib << 20)
        .map(|s| Some(Arc::new(s)))
        .map_err(|e| {
            GateError::Setup(format!(
                "{e} (set [gate] spill_dir, or max_spill_mib = 0 to turn spilling off)"
            ))
        })
}

fn engine_error(e: &DataFusionError, limits: &Limits) -> GateError {
    let msg = e.to_string();
    if let Some(i) = msg.find(disclosure::REFUSED) {
        GateError::Refused(msg[i + disclosure::REFUSED.len()..].to_string())
    } else if msg.contains(limits::CANCELLED) {
        GateError::Limit("canceling statement due to user request".into())
    } else if msg.contains(limits::DEADLINE_PASSED) {
        GateError::Limit(format!(
            "the statement ran longer than its {} s timeout and was cancelled",
            limits.timeout.as_secs()
        ))
    } else if msg.contains(pds_query::spill::QUOTA_EXCEEDED) {
        GateError::Limit(format!(
            "the statement needs more temporary disk space than allowed ({}); filter or aggregate earlier, or ask the administrator about [gate] max_spill_mib",
            &msg[msg.find(pds_query::spill::QUOTA_EXCEEDED).unwrap_or(0)..]
        ))
    } else if out_of_memory(e) {
        GateError::Limit(format!(
            "the statement needs more memory than allowed ({} MiB per statement, {} MiB for all running statements; sorts, aggregations and joins spill to disk, but a cross join keeps one side in memory{}); filter or aggregate earlier, or ask the administrator about [gate] query_memory_mib",
            limits.query_memory >> 20,
            limits.total_memory >> 20,
            memory_consumer(&msg).map_or(String::new(), |c| format!("; it ran out in {c}"))
        ))
    } else {
        GateError::Failed(sanitize(&msg))
    }
}

/// The engine's operator that asked for memory in vain ("Failed to
/// allocate additional 1.0 MB for ExternalSorterMerge[1] with …"): names
/// and sizes only, for the researcher and the operator to see which part of
/// the statement to make smaller.
fn memory_consumer(msg: &str) -> Option<&str> {
    let rest = &msg[msg.find("Failed to allocate additional ")?..];
    let name = &rest[rest.find(" for ")? + 5..];
    let name = &name[..name.find(" with ")?];
    name.chars()
        .all(|c| c.is_ascii_alphanumeric() || "[]_".contains(c))
        .then_some(name)
}

/// Whether the engine stopped on a memory limit (and so might complete with
/// operators that spill).
fn out_of_memory(e: &DataFusionError) -> bool {
    e.to_string().contains("Resources exhausted")
}

/// Whether a physical plan builds a hash table for a join: the one operator
/// of these plans that cannot spill, and that a sort-merge join replaces.
fn has_hash_join(plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> bool {
    plan.is::<datafusion::physical_plan::joins::HashJoinExec>()
        || plan.children().into_iter().any(has_hash_join)
}

/// Why a plan is refused, if it is.
fn refusal(
    plan: &LogicalPlan,
    project: bool,
    mode: Option<AccessMode>,
    full_precision: &HashSet<String>,
) -> Option<String> {
    if let Err(e) = pds_query::read_only().verify_plan(plan) {
        return Some(format!(
            "only reads are allowed (SELECT, WITH, SHOW, DESCRIBE); {}",
            sanitize(&e.to_string())
        ));
    }
    if project && matches!(plan, LogicalPlan::Explain(_) | LogicalPlan::Analyze(_)) {
        return Some(
            "EXPLAIN is not available to projects: plans show how and where data are stored".into(),
        );
    }
    // Catalogue queries (information_schema, pg_catalog) read no data: they
    // list the views, which the project may see in any mode.
    if mode == Some(AccessMode::AggregateOnly) && reads_views(plan) {
        return aggregate_only(plan, full_precision).err();
    }
    None
}

/// Whether a plan reads a project view (anywhere, subqueries included).
fn reads_views(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let is_view = datafusion::datasource::source_as_provider(&scan.source)
                .map(|p| {
                    let any: &dyn std::any::Any = p.as_ref();
                    any.is::<views::PerimeterTable>()
                })
                .unwrap_or(true);
            if is_view {
                found = true;
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// Whether a column name carries a patient identifier: the column itself or
/// an expression over it (an unaliased derived column is named after its
/// expression). Counts of identifiers are aggregates, not identifiers.
fn identifierish(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    // A window's output is named after its function, then its PARTITION BY
    // and ORDER BY: only the function's own arguments say what it returns.
    let name = [" PARTITION BY [", " ORDER BY ["]
        .iter()
        .filter_map(|m| name.find(m))
        .min()
        .map_or(name, |i| &name[..i]);
    !(lower.starts_with("count(") || lower.starts_with("approx_distinct("))
        && pds_snds::identifiers::PATIENT_ID_COLUMNS
            .iter()
            .any(|id| name.contains(id))
}

fn identifier_refs(e: &Expr) -> Vec<String> {
    // A window partitioned or ordered by a patient returns a value of the
    // patient's rows (a rank, a first date), not the identifier.
    let refs = match e.clone().unalias() {
        Expr::WindowFunction(w) => w
            .params
            .args
            .iter()
            .flat_map(|a| a.column_refs().into_iter().cloned().collect::<Vec<_>>())
            .collect::<Vec<_>>(),
        other => other.column_refs().into_iter().cloned().collect(),
    };
    refs.into_iter()
        .filter(|c| identifierish(&c.name))
        .map(|c| c.name)
        .collect()
}

/// The scalar subqueries of an expression (values it returns).
fn scalar_subqueries(e: &Expr) -> Vec<LogicalPlan> {
    let mut out = Vec::new();
    let _ = e.apply(|x| {
        if let Expr::ScalarSubquery(s) = x {
            out.push(s.subquery.as_ref().clone());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// Aggregate-only projects get aggregates: every row of the result comes
/// from an aggregation that is not keyed by a patient identifier or a
/// potential identifier at full precision and does not return identifiers
/// or lists of values, and no subquery returns values of the data either.
/// Inner aggregates may be per patient: disclosure control counts the
/// patients behind each published row.
fn aggregate_only(plan: &LogicalPlan, full: &HashSet<String>) -> Result<(), String> {
    aggregate_top(plan, full)?;
    // Everywhere in the plan, subqueries included.
    let mut problem = None;
    let _ = plan.apply_with_subqueries(|node| {
        let found = match node {
            LogicalPlan::Aggregate(a) => aggregate_node(a, None).err(),
            LogicalPlan::Projection(p) => p.expr.iter().find_map(|e| match e {
                // Renaming an identifier would hide it from the checks.
                Expr::Alias(a) if !identifier_refs(&a.expr).is_empty() => Some(format!(
                    "this project is aggregate-only: the patient identifier {} cannot be renamed or transformed",
                    identifier_refs(&a.expr).join(", ")
                )),
                // Nor may something else take an identifier's name: inner
                // aggregates grouped by it count as per patient.
                Expr::Alias(a)
                    if identifierish(&a.name)
                        && !matches!(a.expr.as_ref(), Expr::Column(c) if c.name == a.name) =>
                {
                    Some(format!(
                        "this project is aggregate-only: {} is the name of a patient identifier and cannot be given to another value",
                        a.name
                    ))
                }
                _ => None,
            }),
            _ => None,
        };
        if let Some(f) = found {
            problem = Some(f);
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    match problem {
        Some(p) => Err(p),
        None => Ok(()),
    }
}

fn aggregate_top(plan: &LogicalPlan, full: &HashSet<String>) -> Result<(), String> {
    let rows = "this project is aggregate-only: results must be aggregates (GROUP BY with COUNT, SUM, AVG...), not rows of the data";
    // Values computed by a scalar subquery reach the result too.
    let subqueries = |exprs: &[Expr]| -> Result<(), String> {
        for e in exprs {
            for q in scalar_subqueries(e) {
                aggregate_top(&q, full)?;
            }
        }
        Ok(())
    };
    match plan {
        LogicalPlan::Projection(p) => {
            subqueries(&p.expr)?;
            aggregate_top(&p.input, full)
        }
        LogicalPlan::Sort(s) => aggregate_top(&s.input, full),
        LogicalPlan::Limit(l) => aggregate_top(&l.input, full),
        LogicalPlan::Filter(f) => aggregate_top(&f.input, full),
        LogicalPlan::SubqueryAlias(a) => aggregate_top(&a.input, full),
        LogicalPlan::Window(w) => {
            subqueries(&w.window_expr)?;
            aggregate_top(&w.input, full)
        }
        LogicalPlan::Distinct(d) => aggregate_top(d.input(), full),
        LogicalPlan::Union(u) => u.inputs.iter().try_for_each(|i| aggregate_top(i, full)),
        LogicalPlan::Values(v) => {
            for row in &v.values {
                subqueries(row)?;
            }
            Ok(())
        }
        LogicalPlan::DescribeTable(_) | LogicalPlan::EmptyRelation(_) => Ok(()),
        LogicalPlan::Aggregate(a) => {
            subqueries(&a.aggr_expr)?;
            subqueries(&a.group_expr)?;
            aggregate_node(a, Some(full))
        }
        _ => Err(rows.into()),
    }
}

/// Whether a group key coarsens what it reads: a date to its month,
/// quarter or year, a place to its département.
fn coarsens(e: &Expr) -> bool {
    let Expr::ScalarFunction(f) = e else {
        return false;
    };
    let unit = |x: Option<&Expr>| match x {
        Some(Expr::Literal(datafusion::common::ScalarValue::Utf8(Some(u)), _)) => {
            matches!(
                u.to_ascii_lowercase().as_str(),
                "year" | "quarter" | "month"
            )
        }
        _ => false,
    };
    let small = |x: Option<&Expr>, max: i64| match x {
        Some(Expr::Literal(v, _)) => v
            .to_string()
            .parse::<i64>()
            .is_ok_and(|n| (0..=max).contains(&n)),
        _ => false,
    };
    match f.name() {
        "date_trunc" | "date_part" | "datepart" => unit(f.args.first()),
        "left" => small(f.args.get(1), 2),
        "substr" | "substring" => small(f.args.get(1), 1) && small(f.args.get(2), 2),
        _ => false,
    }
}

/// Checks one aggregate; `top` holds the columns shown at full precision
/// when the aggregate's rows are published.
fn aggregate_node(
    a: &datafusion::logical_expr::Aggregate,
    top: Option<&HashSet<String>>,
) -> Result<(), String> {
    if let Some(full) = top {
        for g in &a.group_expr {
            let ids = identifier_refs(g);
            if !ids.is_empty() {
                return Err(format!(
                    "this project is aggregate-only: grouping by the patient identifier {} gives one row per person",
                    ids.join(", ")
                ));
            }
        }
        let keys = datafusion::logical_expr::utils::grouping_set_to_exprlist(&a.group_expr)
            .map_err(|e| e.to_string())?;
        for g in keys {
            let exact: Vec<String> = g
                .column_refs()
                .into_iter()
                .filter(|c| full.iter().any(|f| c.name.contains(f.as_str())))
                .map(|c| c.name.clone())
                .collect();
            if !exact.is_empty() && !coarsens(&g.clone().unalias_nested().data) {
                return Err(format!(
                    "this project is aggregate-only: {} is a potential identifier shown at full precision, and results may not be keyed by it; coarsen it (date_trunc('month', ...), EXTRACT(YEAR FROM ...), left(..., 2))",
                    exact.join(", ")
                ));
            }
        }
        for e in &a.aggr_expr {
            let text = e.schema_name().to_string().to_lowercase();
            if (text.starts_with("min(") || text.starts_with("max("))
                && e.column_refs()
                    .iter()
                    .any(|c| full.iter().any(|f| c.name.contains(f.as_str())))
            {
                return Err(format!(
                    "this project is aggregate-only: {} would publish one person's exact value of a potential identifier",
                    e.schema_name()
                ));
            }
        }
    }
    for e in &a.aggr_expr {
        let text = e.schema_name().to_string().to_lowercase();
        if text.contains("array_agg") || text.contains("string_agg") {
            return Err(
                "this project is aggregate-only: array_agg and string_agg return the values themselves"
                    .into(),
            );
        }
        let ids = identifier_refs(e);
        let counts = text.starts_with("count") || text.starts_with("approx_distinct");
        if !ids.is_empty() && !counts {
            return Err(format!(
                "this project is aggregate-only: only COUNT may use the patient identifier {}",
                ids.join(", ")
            ));
        }
    }
    Ok(())
}

/// Tables and columns a plan reads.
fn objects(plan: &LogicalPlan) -> Vec<TableAccess> {
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let _ = plan.apply_with_subqueries(|p| {
        if let LogicalPlan::TableScan(s) = p {
            let e = seen.entry(s.table_name.table().to_string()).or_default();
            for f in s.projected_schema.fields() {
                e.insert(f.name().clone());
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    seen.into_iter()
        .map(|(table, cols)| TableAccess {
            table,
            columns: cols.into_iter().collect(),
        })
        .collect()
}

impl Gate {
    /// Opens the gate of a home: catalogue, keys (the master key is needed)
    /// and audit log.
    pub async fn open(home: &Home) -> Result<Gate, GateError> {
        let setup = |e: String| GateError::Setup(e);
        let cat = home.catalog().await.map_err(|e| setup(e.to_string()))?;
        let keys = home.keys().map_err(|e| setup(e.to_string()))?;
        let storage = home.storage().map_err(|e| setup(e.to_string()))?;
        let audit = open_audit(home, cat.clone(), &keys).await?;
        let limits = Limits::from_config(&home.config.gate);
        let spill = spill_of(home)?;
        Ok(Gate {
            cat,
            keys: Arc::new(keys),
            audit: Arc::new(audit),
            storage,
            global: Arc::new(GreedyMemoryPool::new(limits.total_memory)),
            running: Arc::new(Semaphore::new(limits.concurrent)),
            limits,
            snapshots: Mutex::new(HashMap::new()),
            views: Mutex::new(HashMap::new()),
            pg: OnceLock::new(),
            tracker_lock: Arc::new(tokio::sync::Mutex::new(())),
            late_pseudonyms: std::sync::atomic::AtomicBool::new(late_mapping()),
            spill,
        })
    }

    fn pg(&self) -> Result<Arc<pgcompat::PgCompat>, GateError> {
        self.pg
            .get_or_init(|| {
                pgcompat::PgCompat::new()
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|e| GateError::Setup(format!("PostgreSQL compatibility: {e}")))
    }

    /// Replaces where statements spill (tests and benchmarks; `None`: they
    /// do not).
    pub fn with_spill(mut self, spill: Option<Arc<pds_query::spill::EncryptedSpill>>) -> Gate {
        self.spill = spill;
        self
    }

    /// Where statements spill, if they do.
    pub fn spill(&self) -> Option<&pds_query::spill::EncryptedSpill> {
        self.spill.as_deref()
    }

    /// Replaces the limits (tests and benchmarks).
    pub fn with_limits(mut self, limits: Limits) -> Gate {
        self.global = Arc::new(GreedyMemoryPool::new(limits.total_memory));
        self.running = Arc::new(Semaphore::new(limits.concurrent));
        self.limits = limits;
        self
    }

    /// Maps project pseudonyms in the views (`false`) or where their value
    /// is first needed (`true`, the default; `PDS_PSEUDONYMS=early` in the
    /// environment turns it off). Results are the same either way; tests
    /// and benchmarks compare the two.
    pub fn set_late_pseudonyms(&self, on: bool) {
        self.late_pseudonyms
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The catalogue.
    pub fn catalog(&self) -> &Catalog {
        &self.cat
    }

    /// The key store.
    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// Project administration acting as `actor`, on this gate's catalogue,
    /// keys and audit log.
    pub fn admin(&self, actor: &str) -> pds_project::Admin<'_> {
        pds_project::Admin {
            cat: &self.cat,
            audit: &self.audit,
            keys: &self.keys,
            actor: actor.to_string(),
        }
    }

    async fn snapshot(&self, id: Option<i64>) -> Result<Arc<OpenSnapshot>, GateError> {
        if let Some(id) = id
            && let Some(s) = self.snapshots.lock().ok().and_then(|m| m.get(&id).cloned())
        {
            return Ok(s);
        }
        let open = pds_query::open_snapshot(&self.cat, &self.keys, &self.storage, id)
            .await
            .map_err(|e| GateError::Setup(sanitize(&e.to_string())))?;
        let open = Arc::new(open);
        if let Ok(mut m) = self.snapshots.lock() {
            m.insert(open.id, open.clone());
        }
        Ok(open)
    }

    fn session(&self, open: &OpenSnapshot) -> Result<SessionContext, GateError> {
        let pool = Arc::new(limits::StatementPool::new(
            self.limits.query_memory,
            self.global.clone(),
        ));
        let ctx = pds_query::context(
            self.storage.store(),
            open.keys.clone(),
            Some(pool),
            self.spill.clone(),
        )
        .map_err(|e| GateError::Setup(e.to_string()))?;
        // The disclosure rewrite adds conditions (`c IS TRUE`) that
        // DataFusion's common-subexpression rule moves into projections whose
        // logical fields say "never null" where the physical ones say
        // "maybe": a difference DataFusion's own option exists to tolerate
        // (the physical side is the conservative one).
        ctx.state_ref()
            .write()
            .config_mut()
            .options_mut()
            .execution
            .skip_physical_aggregate_schema_check = true;
        // The disclosure-control node needs its own physical planner.
        let state = datafusion::execution::SessionStateBuilder::new_from_existing(ctx.state())
            .with_query_planner(Arc::new(GatePlanner))
            .build();
        let ctx = SessionContext::new_with_state(state);
        open.add_join_order(&ctx);
        Ok(ctx)
    }

    /// The session of a project: its views only.
    async fn project_session(
        &self,
        id: &str,
        project: &pds_project::Project,
    ) -> Result<(SessionContext, Arc<ProjectViews>), GateError> {
        let open = self.snapshot(Some(project.snapshot)).await?;
        let setup = |e: String| GateError::Setup(e);
        let key_rows = self
            .cat
            .project_keys(id)
            .await
            .map_err(|e| setup(e.to_string()))?;
        let cohort = self
            .cat
            .cohort(id)
            .await
            .map_err(|e| setup(e.to_string()))?;
        // The plans depend on the perimeter, the snapshot, the live key and
        // the cohort: any change (from any process) gives a new digest.
        let fingerprint = hex::encode(Sha256::digest(
            serde_json::json!({
                "perimeter": project.perimeter, "snapshot": project.snapshot,
                "mode": project.mode.as_str(),
                "keys": key_rows.iter().map(|k| (k.version, k.created_at.clone(), k.retired_at.clone())).collect::<Vec<_>>(),
                "cohort": hex::encode(Sha256::digest(cohort.join("\n"))),
            })
            .to_string(),
        ));
        let ctx = self.session(&open)?;
        let cached = self
            .views
            .lock()
            .ok()
            .and_then(|m| m.get(id).cloned())
            .filter(|v| v.fingerprint == fingerprint);
        let views = match cached {
            Some(v) => v,
            None => {
                let tables = self
                    .cat
                    .tables(project.snapshot)
                    .await
                    .map_err(|e| setup(e.to_string()))?;
                let resolved = pds_project::perimeter::resolve(
                    &project.perimeter,
                    &tables,
                    !cohort.is_empty(),
                )
                .map_err(|e| setup(e.to_string()))?;
                let pseudo = pds_project::pseudonymiser(&self.keys, id, &key_rows)
                    .map_err(|e| setup(e.to_string()))?;
                let builder = views::ViewBuilder {
                    ctx: &ctx,
                    base: &open.tables,
                    perimeter: &resolved,
                    udf: Arc::new(views::PseudonymUdf::udf_with_numbers(
                        id,
                        pseudo,
                        open.identifiers.clone(),
                    )),
                    cohort: &cohort,
                };
                let mut tables = Vec::new();
                let mut patient_plans = HashMap::new();
                let mut plain = HashMap::new();
                let mut full_precision = HashSet::new();
                let mut unattributed = HashMap::new();
                for t in &resolved.tables {
                    if !open.tables.iter().any(|(n, _)| n == &t.name) {
                        // A table without any file (no rows delivered) has no
                        // schema to show: it is left out rather than failing
                        // the whole project.
                        continue;
                    }
                    plain.insert(
                        t.name.clone(),
                        t.columns
                            .iter()
                            .filter(|c| c.view == pds_project::perimeter::ColumnView::Plain)
                            .map(|c| c.name.clone())
                            .collect::<Vec<_>>(),
                    );
                    let plan = builder.view(t).map_err(|e| {
                        setup(format!(
                            "building the view of {}: {}",
                            t.name,
                            sanitize(&e.to_string())
                        ))
                    })?;
                    tables.push((
                        t.name.clone(),
                        Arc::new(views::PerimeterTable::new(
                            plan,
                            plain.get(&t.name).cloned().unwrap_or_default(),
                        )),
                    ));
                    if project.mode == AccessMode::AggregateOnly {
                        let with = builder.view_with_patient(t).map_err(|e| {
                            setup(format!(
                                "building the view of {}: {}",
                                t.name,
                                sanitize(&e.to_string())
                            ))
                        })?;
                        match with {
                            Some(with) => {
                                patient_plans.insert(t.name.clone(), with);
                            }
                            None if pds_project::perimeter::family(&t.name).is_some() => {
                                let link = match &t.rows {
                                    pds_project::perimeter::RowFilter::Via { parent, keys } => {
                                        Some((parent.clone(), keys.clone()))
                                    }
                                    _ => None,
                                };
                                unattributed.insert(t.name.clone(), link);
                            }
                            None => {}
                        }
                    }
                    full_precision.extend(
                        t.columns
                            .iter()
                            .filter(|c| c.potential.is_some())
                            .map(|c| c.name.clone()),
                    );
                }
                let v = Arc::new(ProjectViews {
                    fingerprint,
                    pg_catalog: OnceLock::new(),
                    tables,
                    patient_plans,
                    plain,
                    full_precision,
                    unattributed,
                });
                if let Ok(mut m) = self.views.lock() {
                    m.insert(id.to_string(), v.clone());
                }
                v
            }
        };
        for (name, table) in &views.tables {
            ctx.register_table(TableReference::bare(name.as_str()), table.clone())
                .map_err(|e| setup(e.to_string()))?;
        }
        Ok((ctx, views))
    }

    /// Runs one statement for `principal` against `target`. Returns the
    /// result stream once the statement is checked, planned and audited.
    pub async fn execute(
        &self,
        principal: &str,
        target: &Target,
        sql: &str,
    ) -> Result<ResultStream, GateError> {
        self.execute_with(principal, target, sql, &StatementOptions::default())
            .await
    }

    /// [`Gate::execute`] with a front-end's options (PostgreSQL parsing,
    /// placeholder values, a client timeout).
    pub async fn execute_with(
        &self,
        principal: &str,
        target: &Target,
        sql: &str,
        opts: &StatementOptions,
    ) -> Result<ResultStream, GateError> {
        let start = Instant::now();
        let timeout = opts
            .timeout
            .map_or(self.limits.timeout, |t| t.min(self.limits.timeout));
        let deadline = tokio::time::Instant::now() + timeout;
        let base = self.statement_record(principal, target, sql, opts, "statement");
        match self
            .prepare(
                principal,
                target,
                sql,
                deadline,
                opts,
                base.request_id.as_deref(),
            )
            .await
        {
            Ok(prepared) => {
                let limits = Limits {
                    timeout,
                    ..self.limits
                };
                self.run(prepared, base, start, deadline, limits, opts.cancel.clone())
                    .await
            }
            Err((decision, e)) => {
                let mut r = base.clone();
                r.decision = decision.into();
                r.reason = Some(e.to_string());
                r.duration_ms = Some(start.elapsed().as_millis() as u64);
                self.audit
                    .append(r)
                    .await
                    .map_err(|a| GateError::Audit(a.to_string()))?;
                Err(e)
            }
        }
    }

    /// The audit record every entry of one statement starts from.
    fn statement_record(
        &self,
        principal: &str,
        target: &Target,
        sql: &str,
        opts: &StatementOptions,
        action: &str,
    ) -> Record {
        Record {
            principal: principal.to_string(),
            project: match target {
                Target::Project(p) => Some(p.clone()),
                Target::Operator { .. } => None,
            },
            action: action.into(),
            request_id: Some(request_id()),
            // An oversized statement is refused; its record keeps a prefix.
            statement: Some(truncate(sql, self.limits.max_sql_bytes)),
            details: opts
                .channel
                .as_ref()
                .map(|c| serde_json::json!({ "channel": c })),
            ..Record::default()
        }
    }

    /// Splits and parses PostgreSQL-flavoured SQL, with the rewrites applied
    /// to statements from PostgreSQL clients. Front-ends use it to find the
    /// statements they answer themselves (`SET`, `BEGIN`, cursors); parsing
    /// reads nothing.
    pub fn parse_postgres(
        &self,
        sql: &str,
    ) -> Result<Vec<datafusion::sql::sqlparser::ast::Statement>, GateError> {
        if sql.len() > self.limits.max_sql_bytes {
            return Err(GateError::Refused(format!(
                "the statement is {} bytes long; the limit is {} bytes",
                sql.len(),
                self.limits.max_sql_bytes
            )));
        }
        self.pg()?
            .parse(sql)
            .map_err(|e| GateError::Failed(format!("syntax error: {e}")))
    }

    /// Plans a statement with every check of [`Gate::execute`] and returns
    /// its result columns and placeholders, without running it or writing
    /// to the audit log (no data is read). A refusal here is the refusal
    /// `execute` would give.
    pub async fn describe(
        &self,
        principal: &str,
        target: &Target,
        sql: &str,
        opts: &StatementOptions,
    ) -> Result<Description, GateError> {
        let deadline = tokio::time::Instant::now() + self.limits.timeout;
        let opts = StatementOptions {
            params: None,
            ..opts.clone()
        };
        let plan = match self
            .plan(principal, target, sql, deadline, &opts, None)
            .await
        {
            Ok((_, plan)) => plan,
            Err((decision, e)) => {
                // A refusal is a security event even when nothing ran.
                if decision == "refused" {
                    let mut r =
                        self.statement_record(principal, target, sql, &opts, "statement.describe");
                    r.decision = "refused".into();
                    r.reason = Some(e.to_string());
                    self.audit
                        .append(r)
                        .await
                        .map_err(|a| GateError::Audit(a.to_string()))?;
                }
                return Err(e);
            }
        };
        let types = plan
            .get_parameter_types()
            .map_err(|e| GateError::Failed(sanitize(&e.to_string())))?;
        let mut numbered: Vec<(usize, Option<DataType>)> = Vec::new();
        for (name, ty) in types {
            let n = name
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    GateError::Failed(format!(
                        "placeholder {name}: use $1, $2... (numbered from 1)"
                    ))
                })?;
            numbered.push((n, ty));
        }
        numbered.sort_by_key(|(n, _)| *n);
        let count = numbered.last().map_or(0, |(n, _)| *n);
        let mut params = vec![None; count];
        for (n, ty) in numbered {
            params[n - 1] = ty;
        }
        Ok(Description {
            schema: Arc::new(plan.schema().as_arrow().clone()),
            params,
        })
    }

    async fn prepare(
        &self,
        principal: &str,
        target: &Target,
        sql: &str,
        deadline: tokio::time::Instant,
        opts: &StatementOptions,
        request: Option<&str>,
    ) -> Result<Prepared, (&'static str, GateError)> {
        let ((ctx, snapshot, permit, report), plan) = self
            .plan(principal, target, sql, deadline, opts, request)
            .await?;
        let state = ctx.state();
        let optimized = state
            .optimize(&plan)
            .map_err(|e| ("failed", self.explain(e, &ctx)))?;
        // After every optimizer pass: a rule running after it could move
        // a stored identifier past its mapping.
        let optimized = if self
            .late_pseudonyms
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            late::map_late(optimized).map_err(|e| ("failed", self.explain(e, &ctx)))?
        } else {
            optimized
        };
        // A plan that turns identifier numbers back into pseudonyms reads
        // the snapshot's dictionary: read once, then kept in memory.
        for dictionary in views::PseudonymUdf::dictionaries(&optimized) {
            dictionary
                .load()
                .await
                .map_err(|e| ("failed", GateError::Setup(sanitize(&e.to_string()))))?;
        }
        let fingerprint = hex::encode(Sha256::digest(optimized.display_indent().to_string()));
        Ok(Prepared {
            ctx,
            plan: optimized,
            fingerprint,
            snapshot,
            permit,
            report,
        })
    }

    /// Checks, builds the session and the checked logical plan.
    #[allow(clippy::type_complexity)]
    async fn plan(
        &self,
        principal: &str,
        target: &Target,
        sql: &str,
        deadline: tokio::time::Instant,
        opts: &StatementOptions,
        request: Option<&str>,
    ) -> Result<
        (
            (
                SessionContext,
                i64,
                OwnedSemaphorePermit,
                Option<Arc<disclosure::Report>>,
            ),
            LogicalPlan,
        ),
        (&'static str, GateError),
    > {
        let refused = |m: String| ("refused", GateError::Refused(m));
        let failed = |e: GateError| ("failed", e);
        pds_project::check_principal(principal).map_err(|e| refused(e.to_string()))?;
        if sql.len() > self.limits.max_sql_bytes {
            return Err(refused(format!(
                "the statement is {} bytes long; the limit is {} bytes",
                sql.len(),
                self.limits.max_sql_bytes
            )));
        }
        let permit = tokio::time::timeout_at(deadline, self.running.clone().acquire_owned())
            .await
            .map_err(|_| {
                (
                    "refused",
                    GateError::Limit(format!(
                        "{} statements are already running; try again later",
                        self.limits.concurrent
                    )),
                )
            })?
            .map_err(|_| failed(GateError::Setup("the gate is closing".into())))?;
        let mut project_rules = None;
        let (ctx, snapshot, mode, views) = match target {
            Target::Project(id) => {
                let today = chrono::Utc::now().date_naive();
                let (project, _role) = pds_project::check_access(&self.cat, id, principal, today)
                    .await
                    .map_err(|e| match e {
                        pds_project::ProjectError::Denied(m) => refused(m),
                        e => failed(GateError::Setup(e.to_string())),
                    })?;
                let (ctx, views) = self.project_session(id, &project).await.map_err(failed)?;
                let policy = project
                    .perimeter
                    .disclosure
                    .policy()
                    .map_err(|e| failed(GateError::Setup(e.to_string())))?;
                project_rules = Some((id.clone(), policy));
                (ctx, project.snapshot, Some(project.mode), Some(views))
            }
            Target::Operator { snapshot } => {
                let open = self.snapshot(*snapshot).await.map_err(failed)?;
                let ctx = self.session(&open).map_err(failed)?;
                for (name, t) in &open.tables {
                    ctx.register_table(TableReference::bare(name.as_str()), t.clone())
                        .map_err(|e| failed(GateError::Setup(e.to_string())))?;
                }
                (ctx, open.id, None, None)
            }
        };
        let pg = if opts.postgres {
            let pg = self.pg().map_err(failed)?;
            let provider = match &views {
                Some(v) => match v.pg_catalog.get() {
                    Some(p) => p.clone(),
                    None => {
                        let p = pg
                            .catalog_of(&ctx)
                            .await
                            .map_err(|e| failed(GateError::Setup(e.to_string())))?;
                        v.pg_catalog.get_or_init(|| p).clone()
                    }
                },
                None => pg
                    .catalog_of(&ctx)
                    .await
                    .map_err(|e| failed(GateError::Setup(e.to_string())))?,
            };
            pg.register(&ctx, provider)
                .map_err(|e| failed(GateError::Setup(e.to_string())))?;
            Some(pg)
        } else {
            None
        };
        let state = ctx.state();
        let planning = async {
            match &pg {
                None => state.create_logical_plan(sql).await,
                Some(pg) => {
                    let mut statements = pg.parse(sql).map_err(|e| {
                        DataFusionError::SQL(
                            Box::new(
                                datafusion::sql::sqlparser::parser::ParserError::ParserError(e),
                            ),
                            None,
                        )
                    })?;
                    if statements.len() != 1 {
                        return Err(DataFusionError::Plan(format!(
                            "send one statement at a time (this text holds {})",
                            statements.len()
                        )));
                    }
                    let statement = statements.remove(0);
                    state
                        .statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(
                            statement,
                        )))
                        .await
                }
            }
        };
        let plan = tokio::time::timeout_at(deadline, planning)
            .await
            .map_err(|_| {
                (
                    "failed",
                    GateError::Limit("planning took longer than the statement timeout".into()),
                )
            })?
            .map_err(|e| {
                let msg = e.to_string();
                if msg.contains("Unsupported SQL statement") {
                    refused(format!(
                        "only reads are allowed (SELECT, WITH, SHOW, DESCRIBE); {}",
                        sanitize(&msg)
                    ))
                } else {
                    failed(self.explain(e, &ctx))
                }
            })?;
        let plan = match &opts.params {
            Some(values) => plan
                .replace_params_with_values(values)
                .map_err(|e| failed(GateError::Failed(sanitize(&e.to_string()))))?,
            None => plan,
        };
        let no_columns = HashSet::new();
        let full = views.as_ref().map_or(&no_columns, |v| &v.full_precision);
        if let Some(why) = refusal(&plan, is_project(target), mode, full) {
            return Err(refused(why));
        }
        // Aggregate-only: every published value gets disclosure control.
        let mut report = None;
        let plan = match (&views, project_rules) {
            (Some(v), Some((project, policy)))
                if mode == Some(AccessMode::AggregateOnly) && reads_views(&plan) =>
            {
                let r = Arc::new(disclosure::Report::new(&policy));
                let rewriter = disclosure::Rewriter {
                    patient_views: &v.patient_plans,
                    unattributed: &v.unattributed,
                    plain: &v.plain,
                    key: contributors::PatientKey::derive(self.keys.platform_key().expose()),
                    policy,
                    report: r.clone(),
                    tracker: Arc::new(disclosure::Tracker {
                        cat: self.cat.clone(),
                        project,
                        principal: principal.to_string(),
                        request_id: request.map(str::to_string),
                        policy,
                        lock: self.tracker_lock.clone(),
                    }),
                    reads_views: &reads_views,
                    state: Default::default(),
                };
                report = Some(r);
                rewriter.rewrite(plan).map_err(|e| {
                    let msg = e.to_string();
                    match msg.find(disclosure::REFUSED) {
                        Some(i) => refused(msg[i + disclosure::REFUSED.len()..].to_string()),
                        None => failed(GateError::Failed(sanitize(&msg))),
                    }
                })?
            }
            _ => plan,
        };
        Ok(((ctx, snapshot, permit, report), plan))
    }

    fn explain(&self, e: DataFusionError, ctx: &SessionContext) -> GateError {
        let msg = sanitize(&e.to_string());
        if msg.contains("not found") && msg.contains("table") {
            let mut names: Vec<String> = ctx
                .catalog("datafusion")
                .and_then(|c| c.schema("public"))
                .map(|s| s.table_names())
                .unwrap_or_default();
            names.sort();
            GateError::Failed(format!(
                "{msg}\nhint: table names are upper case, as in the SNDS documentation; the tables you can query are: {}",
                names.join(", ")
            ))
        } else {
            engine_error(&e, &self.limits)
        }
    }

    async fn run(
        &self,
        p: Prepared,
        mut base: Record,
        start: Instant,
        deadline: tokio::time::Instant,
        limits: Limits,
        cancel: Option<limits::CancelFlag>,
    ) -> Result<ResultStream, GateError> {
        let mut allowed = base.clone();
        allowed.decision = "allowed".into();
        allowed.plan_fingerprint = Some(p.fingerprint.clone());
        allowed.snapshot = Some(p.snapshot);
        allowed.objects = objects(&p.plan);
        base.action = "statement.end".into();
        base.statement = None;
        base.snapshot = Some(p.snapshot);
        let state = p.ctx.state();
        let spilled = pds_query::spill::statement_counters(state.config());
        // The entry is made durable while the physical plan is built (which
        // reads no row): the wait on the catalogue's commit then costs the
        // statement nothing. Fail closed: no audit entry, no statement, and
        // the plan is dropped unexecuted.
        let (logged, planned) = tokio::join!(
            self.audit.append(allowed),
            tokio::time::timeout_at(
                deadline,
                state.query_planner().create_physical_plan(&p.plan, &state),
            )
        );
        logged.map_err(|e| GateError::Audit(e.to_string()))?;
        let physical = match planned {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                let err = engine_error(&e, &limits);
                self.close(&base, "failed", Some(err.to_string()), start, None)
                    .await?;
                return Err(err);
            }
            Err(_) => {
                let err =
                    GateError::Limit("planning took longer than the statement timeout".into());
                self.close(&base, "failed", Some(err.to_string()), start, None)
                    .await?;
                return Err(err);
            }
        };
        // A hash join's table cannot spill; if the statement runs out of
        // memory before its first row, it runs again with sort-merge joins.
        let retry = has_hash_join(&physical).then(|| Retry {
            ctx: p.ctx.clone(),
            plan: p.plan.clone(),
            cancel: cancel.clone(),
            global: self.global.clone(),
        });
        let physical = match limits::DeadlineExec::wrap_all(physical, deadline.into_std(), cancel) {
            Ok(p) => p,
            Err(e) => {
                let err = GateError::Setup(e.to_string());
                self.close(&base, "failed", Some(err.to_string()), start, None)
                    .await?;
                return Err(err);
            }
        };
        let schema = physical.schema();
        let stream = match datafusion::physical_plan::execute_stream(physical, p.ctx.task_ctx()) {
            Ok(s) => s,
            Err(e) => {
                let err = engine_error(&e, &limits);
                self.close(&base, "failed", Some(err.to_string()), start, None)
                    .await?;
                return Err(err);
            }
        };
        let ipc = match StreamWriter::try_new(HashWriter::default(), &schema) {
            Ok(w) => w,
            Err(e) => {
                let err = GateError::Setup(format!("hashing the result: {e}"));
                self.close(&base, "failed", Some(err.to_string()), start, None)
                    .await?;
                return Err(err);
            }
        };
        Ok(ResultStream {
            schema,
            stream: Some(stream),
            ipc: Some(ipc),
            deadline,
            rows: 0,
            limits,
            audit: self.audit.clone(),
            record: base,
            start,
            finished: false,
            report: p.report,
            retry,
            spilled,
            _permit: p.permit,
        })
    }

    async fn close(
        &self,
        base: &Record,
        decision: &str,
        reason: Option<String>,
        start: Instant,
        result: Option<(u64, u64, String)>,
    ) -> Result<(), GateError> {
        close_entry(&self.audit, base, decision, reason, start, result).await
    }
}

/// The physical planner of gate sessions: DataFusion's, plus the
/// disclosure-control node.
#[derive(Debug)]
struct GatePlanner;

#[async_trait::async_trait]
impl datafusion::execution::context::QueryPlanner for GatePlanner {
    async fn create_physical_plan(
        &self,
        plan: &LogicalPlan,
        state: &dyn datafusion::catalog::Session,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        use datafusion::physical_planner::PhysicalPlanner;
        datafusion::physical_planner::DefaultPhysicalPlanner::with_extension_planners(vec![
            Arc::new(disclosure::DisclosurePlanner),
        ])
        .create_physical_plan(plan, state)
        .await
    }
}

/// Whether project pseudonyms are mapped late ([`late`]); the operator can
/// set `PDS_PSEUDONYMS=early` to map them in the views, to compare plans.
fn late_mapping() -> bool {
    std::env::var("PDS_PSEUDONYMS").map_or(true, |v| v != "early")
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... [{} bytes in all]", &s[..end], s.len())
}

fn is_project(t: &Target) -> bool {
    matches!(t, Target::Project(_))
}

async fn close_entry(
    audit: &AuditLog,
    base: &Record,
    decision: &str,
    reason: Option<String>,
    start: Instant,
    result: Option<(u64, u64, String)>,
) -> Result<(), GateError> {
    let mut r = base.clone();
    r.decision = decision.into();
    r.reason = reason;
    r.duration_ms = Some(start.elapsed().as_millis() as u64);
    if let Some((rows, bytes, sha)) = result {
        r.rows = Some(rows);
        r.bytes = Some(bytes);
        r.result_sha256 = Some(sha);
    }
    audit
        .append(r)
        .await
        .map(|_| ())
        .map_err(|e| GateError::Audit(e.to_string()))
}

struct Prepared {
    ctx: SessionContext,
    plan: LogicalPlan,
    fingerprint: String,
    snapshot: i64,
    permit: OwnedSemaphorePermit,
    report: Option<Arc<disclosure::Report>>,
}

/// Counts and hashes what is written.
#[derive(Default)]
struct HashWriter {
    sha: Sha256,
    bytes: u64,
}

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sha.update(buf);
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The rows of an admitted statement. Read it with
/// [`ResultStream::next_batch`] to the end (or [`ResultStream::collect`]);
/// the closing audit entry is written when the stream ends, fails or is
/// dropped.
pub struct ResultStream {
    schema: SchemaRef,
    stream: Option<SendableRecordBatchStream>,
    ipc: Option<StreamWriter<HashWriter>>,
    deadline: tokio::time::Instant,
    rows: u64,
    limits: Limits,
    audit: Arc<AuditLog>,
    record: Record,
    start: Instant,
    finished: bool,
    report: Option<Arc<disclosure::Report>>,
    retry: Option<Retry>,
    spilled: Option<Arc<pds_query::spill::SpillCounters>>,
    _permit: OwnedSemaphorePermit,
}

/// What running a statement again takes: its session and optimised plan.
struct Retry {
    ctx: SessionContext,
    plan: LogicalPlan,
    cancel: Option<limits::CancelFlag>,
    /// The memory shared by all statements, which the second attempt's own
    /// pool draws on as the first's did.
    global: Arc<GreedyMemoryPool>,
}

impl ResultStream {
    /// The result's schema.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Rows returned so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Whether the statement ran again with sort-merge joins after its hash
    /// joins ran out of memory.
    pub fn rerun(&self) -> bool {
        self.record
            .details
            .as_ref()
            .is_some_and(|d| d.get("rerun").is_some())
    }

    /// Adds one detail to the statement's closing entry.
    fn detail(&mut self, key: &str, value: serde_json::Value) {
        let mut d = self
            .record
            .details
            .take()
            .unwrap_or_else(|| serde_json::json!({}));
        d[key] = value;
        self.record.details = Some(d);
    }

    /// What disclosure control withheld (aggregate-only projects), complete
    /// once the stream has ended.
    pub fn disclosure(&self) -> Option<disclosure::Summary> {
        self.report.as_ref().map(|r| r.summary())
    }

    /// Puts what the statement wrote to spill files into its closing entry.
    fn note_spill(&mut self) {
        if let Some(bytes) = self.spilled.as_ref().map(|c| c.bytes()).filter(|b| *b > 0) {
            self.detail("spilled_bytes", bytes.into());
        }
    }

    async fn fail(&mut self, err: GateError) -> GateError {
        // Drop the engine's stream first: that cancels its work.
        self.stream = None;
        self.note_spill();
        self.ipc = None;
        self.finished = true;
        let decision = match err {
            GateError::Limit(_) => "stopped",
            GateError::Refused(_) => "refused",
            _ => "failed",
        };
        match close_entry(
            &self.audit,
            &self.record,
            decision,
            Some(err.to_string()),
            self.start,
            None,
        )
        .await
        {
            Ok(()) => err,
            Err(a) => a,
        }
    }

    /// The next batch, `None` at the end.
    pub async fn next_batch(&mut self) -> Option<Result<RecordBatch, GateError>> {
        if self.finished {
            return None;
        }
        let next = loop {
            let stream = self.stream.as_mut()?;
            let next = tokio::time::timeout_at(self.deadline, stream.next()).await;
            if let Ok(Some(Err(e))) = &next
                && self.rows == 0
                && out_of_memory(e)
                && let Some(retry) = self.retry.take()
            {
                match self.sort_merge(retry).await {
                    Ok(()) => continue,
                    Err(err) => return Some(Err(self.fail(err).await)),
                }
            }
            break next;
        };
        let batch = match next {
            Err(_) => {
                let e = GateError::Limit(format!(
                    "the statement ran longer than its {} s timeout and was cancelled",
                    self.limits.timeout.as_secs()
                ));
                return Some(Err(self.fail(e).await));
            }
            Ok(None) => {
                self.stream = None;
                self.finished = true;
                self.note_spill();
                let (bytes, sha) = match self.ipc.take().map(|mut w| {
                    w.finish()?;
                    w.into_inner()
                }) {
                    Some(Ok(h)) => (h.bytes, hex::encode(h.sha.finalize())),
                    _ => (0, String::new()),
                };
                let mut record = self.record.clone();
                if let Some(summary) = self.disclosure() {
                    let mut d = record
                        .details
                        .take()
                        .unwrap_or_else(|| serde_json::json!({}));
                    d["disclosure"] = serde_json::to_value(&summary).unwrap_or_default();
                    record.details = Some(d);
                }
                let r = close_entry(
                    &self.audit,
                    &record,
                    "completed",
                    None,
                    self.start,
                    Some((self.rows, bytes, sha)),
                )
                .await;
                return r.err().map(Err);
            }
            Ok(Some(Err(e))) => {
                let err = engine_error(&e, &self.limits);
                return Some(Err(self.fail(err).await));
            }
            Ok(Some(Ok(b))) => b,
        };
        self.rows += batch.num_rows() as u64;
        if self.rows > self.limits.max_rows {
            let e = GateError::Limit(format!(
                "the result has more than {} rows, the limit of [gate] max_result_rows; aggregate, filter or add LIMIT",
                self.limits.max_rows
            ));
            return Some(Err(self.fail(e).await));
        }
        if let Some(w) = self.ipc.as_mut()
            && let Err(e) = w.write(&batch)
        {
            let e = GateError::Setup(format!("hashing the result: {e}"));
            return Some(Err(self.fail(e).await));
        }
        Some(Ok(batch))
    }

    /// Runs the statement again with sort-merge joins, which spill, after
    /// its hash joins ran out of memory before the first row: the client
    /// has seen nothing, so it gets the same rows, later. Recorded in the
    /// closing audit entry.
    async fn sort_merge(&mut self, r: Retry) -> Result<(), GateError> {
        // Dropping the stream cancels the first attempt; its tasks give
        // their memory back as they wind down (on a busy machine, after a
        // while): the second attempt starts once they have (or after 30 s,
        // or when the statement's time is up).
        self.stream = None;
        let pool = r.ctx.runtime_env().memory_pool.clone();
        let until = self
            .deadline
            .min(tokio::time::Instant::now() + Duration::from_secs(30));
        while pool.reserved() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut state = r.ctx.state();
        let options = state.config_mut().options_mut();
        options.optimizer.prefer_hash_join = false;
        // Each sort of a sort-merge join sets this much aside to merge what
        // it spilled. DataFusion's 10 MiB leaves the merges of a large join
        // short under a greedy pool (q10 of SNDS-bench under 1 GiB stopped
        // in `ExternalSorterMerge`); a sixteenth of the statement's memory
        // completed it (`docs/performance.md`).
        options.execution.sort_spill_reservation_bytes = options
            .execution
            .sort_spill_reservation_bytes
            .max(self.limits.query_memory / 16);
        let physical = match tokio::time::timeout_at(
            self.deadline,
            state.query_planner().create_physical_plan(&r.plan, &state),
        )
        .await
        {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return Err(engine_error(&e, &self.limits)),
            Err(_) => {
                return Err(GateError::Limit(
                    "planning took longer than the statement timeout".into(),
                ));
            }
        };
        let physical = limits::DeadlineExec::wrap_all(physical, self.deadline.into_std(), r.cancel)
            .map_err(|e| GateError::Setup(e.to_string()))?;
        // Every sort of the second attempt spills: they share the statement's
        // memory fairly (`StatementPool::fair`), each after the merge
        // reservations above, so none starves another.
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::from_runtime_env(
            state.runtime_env(),
        )
        .with_memory_pool(Arc::new(limits::StatementPool::fair(
            self.limits.query_memory,
            r.global,
        )))
        .build_arc()
        .map_err(|e| GateError::Setup(e.to_string()))?;
        let task = Arc::new(datafusion::execution::TaskContext::from(&state).with_runtime(runtime));
        let stream = datafusion::physical_plan::execute_stream(physical, task)
            .map_err(|e| engine_error(&e, &self.limits))?;
        if let Some(report) = &self.report {
            report.restart();
        }
        self.detail(
            "rerun",
            "sort-merge joins: the hash joins ran out of memory".into(),
        );
        self.stream = Some(stream);
        Ok(())
    }

    /// Reads the whole result.
    pub async fn collect(mut self) -> Result<(SchemaRef, Vec<RecordBatch>), GateError> {
        let mut out = Vec::new();
        while let Some(b) = self.next_batch().await {
            out.push(b?);
        }
        Ok((self.schema.clone(), out))
    }
}

fn stopped_reading(rows: u64) -> String {
    format!("the client stopped reading after {rows} rows")
}

impl ResultStream {
    /// Stops reading: the statement is cancelled and its closing entry is
    /// written before this returns (dropping the stream writes it in the
    /// background instead).
    pub async fn close(mut self) -> Result<(), GateError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        self.stream = None;
        self.note_spill();
        close_entry(
            &self.audit,
            &self.record,
            "cancelled",
            Some(stopped_reading(self.rows)),
            self.start,
            None,
        )
        .await
    }
}

impl Drop for ResultStream {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.stream = None;
        self.note_spill();
        let audit = self.audit.clone();
        let record = self.record.clone();
        let start = self.start;
        let rows = self.rows;
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                let reason = stopped_reading(rows);
                let _ = close_entry(&audit, &record, "cancelled", Some(reason), start, None).await;
            });
        }
    }
}
