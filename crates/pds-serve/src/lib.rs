//! `pds serve`: the network front-ends of PDS.
//!
//! Three listeners, one gate behind each:
//!
//! - [`pg`]: the PostgreSQL wire protocol (psql, R's DBI, psycopg, DBeaver);
//! - [`flight`]: Arrow Flight SQL (ADBC from Python and R) for bulk results;
//! - [`http`]: a JSON API described by an OpenAPI document, with health,
//!   readiness and Prometheus metrics endpoints.
//!
//! Every statement from every listener goes through
//! [`pds_gate::Gate::execute_with`]; nothing here touches DataFusion or the
//! data files. TLS (rustls) is on for every listener, from the configured
//! certificate; if it cannot be loaded the server does not start. Plaintext
//! exists only as [`TlsMode::InsecureLocal`], which binds loopback
//! addresses only.
#![forbid(unsafe_code)]

mod auth;
pub mod flight;
pub mod http;
pub mod metrics;
pub mod pg;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use base64::Engine;
use pds_accounts::{Accounts, Principal};
use pds_gate::limits::CancelFlag;
use pds_gate::{Gate, GateError, StatementOptions, Target};
use std::sync::atomic::AtomicBool;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// TLS could not be set up: the server refuses to start.
    #[error("TLS: {0}")]
    Tls(String),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Options that do not make sense together.
    #[error("{0}")]
    Config(String),
}

/// How the listeners are protected.
#[derive(Debug, Clone)]
pub enum TlsMode {
    /// TLS from these PEM files (certificate chain, private key).
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// No TLS: loopback addresses only, for a laptop or a test.
    InsecureLocal,
}

/// What to serve.
#[derive(Debug, Clone)]
pub struct Options {
    /// PostgreSQL protocol listener, if any.
    pub pg: Option<SocketAddr>,
    /// Arrow Flight SQL listener, if any.
    pub flight: Option<SocketAddr>,
    /// HTTP listener, if any.
    pub http: Option<SocketAddr>,
    /// TLS.
    pub tls: TlsMode,
    /// Sign-in rules (second factor, lockout, session lifetimes).
    pub policy: pds_accounts::Policy,
    /// Identity providers.
    pub federation: pds_oidc::Federation,
    /// Sign-in attempts per minute from one address (0: no limit).
    pub attempts_per_minute: u32,
    /// Connections at once per listener.
    pub max_connections: usize,
    /// On shutdown, how long running statements may take to finish before
    /// they are cancelled.
    pub grace: Duration,
    /// The export airlock: where files are kept and its limits (`None`:
    /// the export endpoints answer 503).
    pub airlock: Option<(pds_storage::Storage, pds_home::AirlockConfig)>,
}

/// State shared by the listeners.
pub struct Shared {
    gate: Arc<Gate>,
    /// The runtime statements execute on: DataFusion work never runs on the
    /// runtime that accepts connections, so a heavy statement cannot stall
    /// sign-ins, cancels or other clients.
    exec: tokio::runtime::Handle,
    /// Whether TLS is on (plaintext connections are refused).
    tls: bool,
    policy: pds_accounts::Policy,
    federation: pds_oidc::Federation,
    attempts: auth::AttemptLimiter,
    metrics: metrics::Metrics,
    active: AtomicUsize,
    idle: Notify,
    airlock: Option<(pds_storage::Storage, pds_home::AirlockConfig)>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// Counts a running statement while alive.
pub(crate) struct Active(Arc<Shared>);

impl Drop for Active {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Shared {
    pub(crate) fn accounts(&self) -> Accounts<'_> {
        Accounts::new(self.gate.catalog(), self.gate.audit())
    }

    pub(crate) fn statement_started(self: &Arc<Self>, channel: &str) -> Active {
        self.active.fetch_add(1, Ordering::SeqCst);
        self.metrics.statement(channel);
        Active(self.clone())
    }

    /// Waits until no statement runs (their closing audit entries written),
    /// or `limit` passes. Returns whether it became idle.
    async fn wait_idle(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, async {
            loop {
                let idle = self.idle.notified();
                if self.active.load(Ordering::SeqCst) == 0 {
                    break;
                }
                idle.await;
            }
        })
        .await
        .is_ok()
    }

    /// Runs a statement through the gate on the execution runtime. The
    /// rows come back through a small channel; dropping the [`Rows`]
    /// cancels the statement.
    pub(crate) async fn run(
        self: &Arc<Self>,
        channel: &str,
        principal: &Principal,
        target: Target,
        sql: &str,
        mut opts: StatementOptions,
    ) -> Result<Rows, GateError> {
        if let Target::Project(project) = &target {
            self.authorize(principal, project).await?;
        }
        let cancel: CancelFlag = Arc::new(AtomicBool::new(false));
        opts.cancel = Some(cancel.clone());
        opts.channel = Some(channel.to_string());
        let active = self.statement_started(channel);
        let (first_tx, first_rx) = oneshot::channel();
        let (tx, rx) = mpsc::channel(4);
        let gate = self.gate.clone();
        let principal = principal.name.clone();
        let sql = sql.to_string();
        let summary: Arc<Mutex<Option<pds_gate::disclosure::Summary>>> = Arc::new(Mutex::new(None));
        let summary_out = summary.clone();
        // The statement counts as running until this task ends, that is
        // until its closing audit entry is written.
        self.exec.spawn(async move {
            let _active = active;
            match gate.execute_with(&principal, &target, &sql, &opts).await {
                Err(e) => {
                    let _ = first_tx.send(Err(e));
                }
                Ok(mut rs) => {
                    let controlled = rs.disclosure().is_some();
                    if first_tx.send(Ok((rs.schema(), controlled))).is_err() {
                        let _ = rs.close().await;
                        return;
                    }
                    while let Some(b) = rs.next_batch().await {
                        // The summary is complete before the last batch is
                        // handed over: readers see it once the rows end.
                        if let Ok(mut s) = summary_out.lock() {
                            *s = rs.disclosure();
                        }
                        if tx.send(b).await.is_err() {
                            let _ = rs.close().await;
                            return;
                        }
                    }
                    if let Ok(mut s) = summary_out.lock() {
                        *s = rs.disclosure();
                    }
                }
            }
        });
        let (schema, controlled) = match first_rx.await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.metrics.statement_failed(channel);
                return Err(e);
            }
            Err(_) => return Err(GateError::Setup("the statement task stopped".into())),
        };
        Ok(Rows {
            schema,
            rx,
            cancel,
            controlled,
            summary,
        })
    }
}

/// The rows of a running statement (see [`Shared::run`]).
pub(crate) struct Rows {
    schema: SchemaRef,
    rx: mpsc::Receiver<Result<RecordBatch, GateError>>,
    cancel: CancelFlag,
    /// Disclosure control applies (aggregate-only project).
    controlled: bool,
    summary: Arc<Mutex<Option<pds_gate::disclosure::Summary>>>,
}

impl Rows {
    pub(crate) fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub(crate) async fn next_batch(&mut self) -> Option<Result<RecordBatch, GateError>> {
        self.rx.recv().await
    }

    /// Whether disclosure control applies to these rows.
    pub(crate) fn controlled(&self) -> bool {
        self.controlled
    }

    /// What disclosure control withheld; complete once the rows have ended.
    pub(crate) fn disclosure(&self) -> Option<pds_gate::disclosure::Summary> {
        self.summary.lock().ok().and_then(|s| s.clone())
    }

    /// Asks the statement to stop; its next batch is the cancellation error.
    pub(crate) fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    pub(crate) async fn collect(mut self) -> Result<Vec<RecordBatch>, GateError> {
        let mut out = Vec::new();
        while let Some(b) = self.next_batch().await {
            out.push(b?);
        }
        Ok(out)
    }
}

impl Drop for Rows {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// How long a shutdown waits for cancelled statements to write their
/// closing audit entries.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// A random URL-safe string of `bytes` random bytes.
pub(crate) fn random_token(bytes: usize) -> std::io::Result<String> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).map_err(|e| std::io::Error::other(format!("no randomness: {e}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// The SQLSTATE of a gate error.
pub fn gate_error_code(e: &GateError) -> &'static str {
    match e {
        GateError::Refused(_) => "42501",
        GateError::Limit(m) if m.contains("timeout") || m.contains("user request") => "57014",
        GateError::Limit(_) => "54000",
        GateError::Failed(m) if m.contains("not found") && m.contains("table") => "42P01",
        GateError::Failed(m)
            if m.contains("No field named") || m.contains("column") && m.contains("not found") =>
        {
            "42703"
        }
        GateError::Failed(m)
            if m.contains("syntax") || m.contains("SQL error") || m.contains("ParserError") =>
        {
            "42601"
        }
        GateError::Failed(_) => "42000",
        GateError::Audit(_) => "58000",
        GateError::Setup(_) => "XX000",
    }
}

/// A running server.
pub struct Server {
    /// Where the PostgreSQL listener is.
    pub pg_addr: Option<SocketAddr>,
    /// Where the Flight SQL listener is.
    pub flight_addr: Option<SocketAddr>,
    /// Where the HTTP listener is.
    pub http_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    grace: Duration,
    exec: Option<tokio::runtime::Runtime>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.exec.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("pg", &self.pg_addr)
            .field("flight", &self.flight_addr)
            .field("http", &self.http_addr)
            .finish()
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// What a shutdown did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shutdown {
    /// Statements still running when the grace period ended (cancelled).
    pub cancelled: usize,
}

impl Server {
    /// Binds the listeners and starts serving.
    pub async fn start(gate: Arc<Gate>, opts: Options) -> Result<Server, ServeError> {
        let tls = match &opts.tls {
            TlsMode::Files { cert, key } => Some(tls::load(cert, key)?),
            TlsMode::InsecureLocal => {
                for a in [opts.pg, opts.flight, opts.http].into_iter().flatten() {
                    if !a.ip().is_loopback() {
                        return Err(ServeError::Config(format!(
                            "--insecure-local serves without TLS, so it binds loopback addresses only; {a} is not one"
                        )));
                    }
                }
                None
            }
        };
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let exec = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("pds-exec")
            .enable_all()
            .build()
            .map_err(|e| ServeError::Config(format!("starting the execution runtime: {e}")))?;
        let shared = Arc::new(Shared {
            gate,
            exec: exec.handle().clone(),
            tls: tls.is_some(),
            policy: opts.policy.clone(),
            federation: opts.federation.clone(),
            attempts: auth::AttemptLimiter::new(opts.attempts_per_minute),
            metrics: metrics::Metrics::new(),
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            airlock: opts.airlock.clone(),
        });
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut server = Server {
            pg_addr: None,
            flight_addr: None,
            http_addr: None,
            stop,
            tasks: Vec::new(),
            shared: shared.clone(),
            grace: opts.grace,
            exec: Some(exec),
        };
        if let Some(addr) = opts.pg {
            let l = bind(addr).await?;
            server.pg_addr = l.local_addr().ok();
            let acceptor = tls.as_ref().map(|t| tls::acceptor(t.clone(), &[]));
            tasks.push(tokio::spawn(pg_loop(
                l,
                acceptor,
                shared.clone(),
                stopped.clone(),
                opts.max_connections,
                opts.grace,
            )));
        }
        if let Some(addr) = opts.flight {
            let l = bind(addr).await?;
            server.flight_addr = l.local_addr().ok();
            let identity = match &opts.tls {
                TlsMode::Files { cert, key } => Some(tls::identity(cert, key)?),
                TlsMode::InsecureLocal => None,
            };
            tasks.push(tokio::spawn(flight::serve(
                l,
                identity,
                shared.clone(),
                stopped.clone(),
            )));
        }
        if let Some(addr) = opts.http {
            let l = bind(addr).await?;
            server.http_addr = l.local_addr().ok();
            let acceptor = tls
                .as_ref()
                .map(|t| tls::acceptor(t.clone(), &[b"http/1.1".to_vec()]));
            tasks.push(tokio::spawn(http::serve(
                l,
                acceptor,
                shared.clone(),
                stopped.clone(),
                opts.max_connections,
            )));
        }
        server.tasks = tasks;
        Ok(server)
    }

    /// Stops accepting, lets running statements finish for the grace
    /// period, cancels the rest, then signs an audit checkpoint so the log's
    /// state at shutdown is sealed.
    pub async fn shutdown(mut self) -> Shutdown {
        let _ = self.stop.send(true);
        let shared = self.shared.clone();
        let cancelled = if shared.wait_idle(self.grace).await {
            0
        } else {
            shared.active.load(Ordering::SeqCst)
        };
        for t in &self.tasks {
            t.abort();
        }
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        // Aborting the connections dropped their statements' rows: each
        // statement stops at its next batch and writes its closing entry.
        if !shared.wait_idle(CLOSE_WAIT).await {
            tracing::warn!(
                "statements still running after the grace period; sealing the log anyway"
            );
        }
        if let Err(e) = shared.gate.audit().checkpoint().await {
            tracing::warn!("audit checkpoint at shutdown failed: {e}");
        }
        Shutdown { cancelled }
    }
}

async fn pg_loop(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
    max_connections: usize,
    grace: Duration,
) {
    let cancels = Arc::new(pg::CancelRegistry::default());
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((socket, _peer)) = accepted else {
                    // Out of file descriptors and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    shared.metrics.connection_refused("pgwire");
                    drop(socket);
                    continue;
                };
                let _ = socket.set_nodelay(true);
                let handlers = Arc::new(pg::PgConnection::new(shared.clone(), cancels.clone()));
                let acceptor = acceptor.clone();
                let shared = shared.clone();
                conns.spawn(async move {
                    shared.metrics.connection_opened("pgwire");
                    let _ = pgwire::tokio::process_socket(socket, acceptor, handlers).await;
                    shared.metrics.connection_closed("pgwire");
                    drop(slot);
                });
            }
        }
    }
    // Connections stay up while their statements finish (or the grace period ends).
    shared.wait_idle(grace).await;
    conns.shutdown().await;
}
