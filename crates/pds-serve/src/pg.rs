//! The PostgreSQL wire protocol front-end (pgwire).
//!
//! One [`PgConnection`] per socket holds that connection's session: its
//! settings (`SET` from a short allow-list), its cursors and its cancel key.
//! Nothing is shared between connections, so no client can change another's
//! settings.
//!
//! Sign-in is PDS's own: the server asks for a password over TLS and takes
//! a token (a session's access token, a service token or an identity
//! provider's JWT), never a password alone. The database name is the
//! project; the project access, and what signed the caller in, are checked
//! again before every statement. Every statement,
//! catalogue queries included, goes through [`pds_gate::Gate`] with
//! PostgreSQL parsing on, so `pg_catalog` lists the project's views only.
//! `BEGIN`/`COMMIT`/`ROLLBACK` are acknowledged and do nothing: every
//! statement reads one immutable snapshot, and nothing can be written.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use async_trait::async_trait;
use datafusion::sql::sqlparser::ast::{self, Statement};
use futures::{Sink, SinkExt, StreamExt, stream};
use pds_accounts::Principal;
use pds_gate::{Description, GateError, StatementOptions, Target};
use pgwire::api::Type;
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler, send_describe_response};
use pgwire::api::results::{
    DescribePortalResponse, DescribeStatementResponse, FieldInfo, QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, METADATA_DATABASE, METADATA_USER, PgWireConnectionState,
    PgWireServerHandlers,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::extendedquery::Describe;
use pgwire::messages::startup::{Authentication, SecretKey};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::{Shared, gate_error_code};

/// Settings a client may change with `SET`, and their initial values. Any
/// other `SET` is refused: limits, search paths and roles are the
/// platform's, not the session's.
pub const SETTINGS: &[(&str, &str)] = &[
    ("application_name", ""),
    ("client_encoding", "UTF8"),
    ("datestyle", "ISO, MDY"),
    ("extra_float_digits", "1"),
    ("intervalstyle", "postgres"),
    ("search_path", "public"),
    ("standard_conforming_strings", "on"),
    ("statement_timeout", "0"),
    ("timezone", "UTC"),
];

fn user_error(severity: &str, code: &str, msg: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        severity.to_string(),
        code.to_string(),
        msg.into(),
    )))
}

fn gate_error(e: GateError) -> PgWireError {
    user_error("ERROR", gate_error_code(&e), e.to_string())
}

/// A connection's cancel secret and the signal it fires.
type CancelKey = ([u8; 4], watch::Sender<u64>);

/// Cancel keys of live connections: `(pid, secret) -> cancel signal`.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    next_pid: AtomicI32,
    live: Mutex<HashMap<i32, CancelKey>>,
}

impl CancelRegistry {
    fn register(&self) -> Result<(i32, [u8; 4], watch::Receiver<u64>), PgWireError> {
        let pid = self.next_pid.fetch_add(1, Ordering::Relaxed) + 1;
        let mut secret = [0u8; 4];
        getrandom::fill(&mut secret)
            .map_err(|e| user_error("FATAL", "58000", format!("no randomness: {e}")))?;
        let (tx, rx) = watch::channel(0u64);
        if let Ok(mut m) = self.live.lock() {
            m.insert(pid, (secret, tx));
        }
        Ok((pid, secret, rx))
    }

    fn unregister(&self, pid: i32) {
        if let Ok(mut m) = self.live.lock() {
            m.remove(&pid);
        }
    }

    fn cancel(&self, pid: i32, secret: &[u8]) -> bool {
        let Ok(m) = self.live.lock() else {
            return false;
        };
        match m.get(&pid) {
            Some((s, tx)) if bool::from(s.as_slice().ct_eq(secret)) => {
                tx.send_modify(|g| *g += 1);
                true
            }
            _ => false,
        }
    }
}

/// The signed-in identity of a connection.
#[derive(Debug, Clone)]
struct Session {
    principal: Principal,
    project: String,
    pid: i32,
    cancel: watch::Receiver<u64>,
}

/// A cursor declared with `DECLARE ... CURSOR FOR`.
struct Cursor {
    stream: crate::Rows,
    pending: Option<RecordBatch>,
}

/// Per-connection state, shared by the handlers of one socket.
struct ConnState {
    shared: Arc<Shared>,
    cancels: Arc<CancelRegistry>,
    session: Mutex<Option<Session>>,
    settings: Mutex<BTreeMap<String, String>>,
    cursors: tokio::sync::Mutex<HashMap<String, Cursor>>,
    auth: tokio::sync::Mutex<AuthState>,
}

impl Drop for ConnState {
    fn drop(&mut self) {
        if let Ok(s) = self.session.lock()
            && let Some(s) = s.as_ref()
        {
            self.cancels.unregister(s.pid);
        }
    }
}

enum AuthState {
    Initial,
    /// Waiting for the password message, which carries a token.
    Token {
        user: String,
    },
    Done,
}

/// The handlers of one PostgreSQL connection.
pub struct PgConnection {
    query: Arc<PgQuery>,
    startup: Arc<PgStartup>,
    cancel: Arc<PgCancel>,
}

impl PgConnection {
    /// A new connection's handlers.
    pub fn new(shared: Arc<Shared>, cancels: Arc<CancelRegistry>) -> PgConnection {
        let state = Arc::new(ConnState {
            shared,
            cancels: cancels.clone(),
            session: Mutex::new(None),
            settings: Mutex::new(
                SETTINGS
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            cursors: tokio::sync::Mutex::new(HashMap::new()),
            auth: tokio::sync::Mutex::new(AuthState::Initial),
        });
        PgConnection {
            query: Arc::new(PgQuery {
                state: state.clone(),
                parser: Arc::new(PgParser {
                    state: state.clone(),
                }),
            }),
            startup: Arc::new(PgStartup {
                state: state.clone(),
            }),
            cancel: Arc::new(PgCancel { cancels }),
        }
    }
}

impl Debug for PgConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgConnection")
    }
}

impl PgWireServerHandlers for PgConnection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.query.clone()
    }
    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.query.clone()
    }
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancel.clone()
    }
}

/// Answers cancel requests (a separate connection carrying a key).
pub struct PgCancel {
    cancels: Arc<CancelRegistry>,
}

#[async_trait]
impl CancelHandler for PgCancel {
    async fn on_cancel_request(&self, req: CancelRequest) {
        let secret = match &req.secret_key {
            SecretKey::I32(i) => i.to_be_bytes().to_vec(),
            SecretKey::Bytes(b) => b.to_vec(),
        };
        self.cancels.cancel(req.pid, &secret);
    }
}

/// Sign-in.
pub struct PgStartup {
    state: Arc<ConnState>,
}

impl PgStartup {
    async fn login_audit(
        &self,
        user: &str,
        project: Option<&str>,
        decision: &str,
        reason: Option<String>,
    ) {
        let _ = self
            .state
            .shared
            .gate
            .audit()
            .append(pds_audit::Record {
                principal: user.to_string(),
                project: project.map(str::to_string),
                action: "connect".into(),
                decision: decision.into(),
                reason,
                details: Some(serde_json::json!({"channel": "pgwire"})),
                ..Default::default()
            })
            .await;
    }

    async fn refuse_login(
        &self,
        ip: std::net::IpAddr,
        user: &str,
        project: Option<&str>,
        reason: &str,
    ) -> PgWireError {
        // Failed sign-ins count towards the address's limit.
        let _ = self.state.shared.attempts.attempt(ip);
        self.state.shared.metrics.login_failed("pgwire");
        self.login_audit(user, project, "refused", Some(reason.to_string()))
            .await;
        user_error(
            "FATAL",
            "28P01",
            format!("password authentication failed for user \"{user}\""),
        )
    }

    async fn complete<C>(&self, client: &mut C, principal: Principal) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let user = principal.name.clone();
        let project = client
            .metadata()
            .get(METADATA_DATABASE)
            .cloned()
            .unwrap_or_else(|| user.clone());
        let shared = &self.state.shared;
        if let Err(e) = shared.authorize(&principal, &project).await {
            let msg = match e {
                GateError::Refused(m) => m,
                e => e.to_string(),
            };
            self.login_audit(&user, Some(&project), "refused", Some(msg.clone()))
                .await;
            return Err(user_error("FATAL", "42501", msg));
        }
        self.login_audit(&user, Some(&project), "allowed", None)
            .await;
        let (pid, secret, cancel) = self.state.cancels.register()?;
        client.set_pid_and_secret_key(pid, SecretKey::I32(i32::from_be_bytes(secret)));
        if let Ok(mut s) = self.state.session.lock() {
            *s = Some(Session {
                principal,
                project,
                pid,
                cancel,
            });
        }
        let mut params = DefaultServerParameterProvider::default();
        params.server_version = "16.0 (PDS)".into();
        params.is_superuser = false;
        finish_authentication(client, &params).await
    }
}

#[async_trait]
impl StartupHandler for PgStartup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let shared = self.state.shared.clone();
        let mut auth = self.state.auth.lock().await;
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if shared.tls && !client.is_secure() {
                    return Err(user_error(
                        "FATAL",
                        "28000",
                        "this server accepts TLS connections only: connect with sslmode=require (or verify-full)",
                    ));
                }
                let Some(user) = client.metadata().get(METADATA_USER).cloned() else {
                    return Err(user_error("FATAL", "28000", "no user name given"));
                };
                if let Some(wait) = shared.attempts.blocked(client.socket_addr().ip()) {
                    return Err(user_error(
                        "FATAL",
                        "53300",
                        format!(
                            "too many sign-in attempts from this address: try again in {wait} s"
                        ),
                    ));
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                // The password is a token (a session access token, a
                // service token or an identity provider's JWT): a password
                // alone is one factor, which SNDS access does not allow.
                *auth = AuthState::Token { user };
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(msg) => {
                match std::mem::replace(&mut *auth, AuthState::Done) {
                    AuthState::Token { user } => {
                        let pw = msg.into_password()?;
                        let db = client.metadata().get(METADATA_DATABASE).cloned();
                        let ip = client.socket_addr().ip();
                        let token = pw.password.trim();
                        if !pds_accounts::is_pds_token(token) && !pds_oidc::looks_like_jwt(token) {
                            // Audited like any refusal; the answer says how to sign in.
                            let _ = self
                                .refuse_login(
                                    ip,
                                    &user,
                                    db.as_deref(),
                                    "a password instead of a token",
                                )
                                .await;
                            return Err(user_error(
                                "FATAL",
                                "28P01",
                                format!(
                                    "password authentication failed for user \"{user}\": the password must be an access token, \
                                     obtained by signing in with your password and second factor (POST /api/v1/login) \
                                     or through your identity provider; see docs/identity.md"
                                ),
                            ));
                        }
                        match shared.authenticate(token).await {
                            Ok(p) if p.name == user => self.complete(client, p).await?,
                            Ok(p) => {
                                return Err(self
                                    .refuse_login(
                                        ip,
                                        &user,
                                        db.as_deref(),
                                        &format!("token of `{}` used as `{user}`", p.name),
                                    )
                                    .await);
                            }
                            Err(reason) => {
                                return Err(self
                                    .refuse_login(ip, &user, db.as_deref(), &reason)
                                    .await);
                            }
                        }
                    }
                    AuthState::Initial | AuthState::Done => {
                        return Err(user_error(
                            "FATAL",
                            "08P01",
                            "unexpected authentication message",
                        ));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// A parsed statement of the extended protocol.
#[derive(Debug, Clone)]
pub struct PgStatement {
    sql: String,
    kind: Kind,
    description: Option<Description>,
}

#[derive(Debug, Clone)]
enum Kind {
    /// A query for the gate.
    Query,
    /// Handled by the connection (SET, SHOW, BEGIN, DECLARE...).
    Session(Box<Statement>),
}

/// Parses statements, classifying what the connection handles itself.
pub struct PgParser {
    state: Arc<ConnState>,
}

impl PgParser {
    fn parse(&self, sql: &str) -> PgWireResult<Vec<(String, Kind)>> {
        let statements = self
            .state
            .shared
            .gate
            .parse_postgres(sql)
            .map_err(|e| user_error("ERROR", "42601", e.to_string()))?;
        let single = statements.len() == 1;
        Ok(statements
            .into_iter()
            .map(|s| {
                let text = if single {
                    sql.to_string()
                } else {
                    s.to_string()
                };
                let kind = if is_session_statement(&s) {
                    Kind::Session(Box::new(s))
                } else {
                    Kind::Query
                };
                (text, kind)
            })
            .collect())
    }
}

fn is_session_statement(s: &Statement) -> bool {
    matches!(
        s,
        Statement::Set(_)
            | Statement::ShowVariable { .. }
            | Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Declare { .. }
            | Statement::Fetch { .. }
            | Statement::Close { .. }
            | Statement::Discard { .. }
            | Statement::Deallocate { .. }
    )
}

#[async_trait]
impl QueryParser for PgParser {
    type Statement = PgStatement;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<PgStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut parsed = self.parse(sql)?;
        if parsed.is_empty() {
            return Ok(None);
        }
        if parsed.len() > 1 {
            return Err(user_error(
                "ERROR",
                "42601",
                "cannot insert multiple commands into a prepared statement",
            ));
        }
        let (sql, kind) = parsed.remove(0);
        let description = match &kind {
            Kind::Query => {
                let (principal, target) = self.state.identity()?;
                if let Target::Project(project) = &target {
                    self.state
                        .shared
                        .authorize(&principal, project)
                        .await
                        .map_err(gate_error)?;
                }
                Some(
                    self.state
                        .shared
                        .gate
                        .describe(&principal.name, &target, &sql, &self.state.options(None))
                        .await
                        .map_err(gate_error)?,
                )
            }
            Kind::Session(_) => None,
        };
        Ok(Some(PgStatement {
            sql,
            kind,
            description,
        }))
    }

    fn get_parameter_types(&self, stmt: &PgStatement) -> PgWireResult<Vec<Type>> {
        Ok(stmt
            .description
            .as_ref()
            .map(|d| {
                d.params
                    .iter()
                    .map(|t| {
                        t.as_ref()
                            .and_then(|t| arrow_pg::datatypes::into_pg_type(t).ok())
                            .unwrap_or(Type::UNKNOWN)
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    fn get_result_schema(
        &self,
        stmt: &PgStatement,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match &stmt.description {
            Some(d) => {
                arrow_schema_to_pg_fields(&d.schema, format.unwrap_or(&Format::UnifiedText), None)
            }
            None => Ok(session_result_fields(&stmt.kind)),
        }
    }
}

/// Result columns of the statements the connection answers itself.
fn session_result_fields(kind: &Kind) -> Vec<FieldInfo> {
    match kind {
        Kind::Session(s) => match s.as_ref() {
            Statement::ShowVariable { variable } => vec![FieldInfo::new(
                variable
                    .iter()
                    .map(|i| i.value.clone())
                    .collect::<Vec<_>>()
                    .join("."),
                None,
                None,
                Type::TEXT,
                pgwire::api::results::FieldFormat::Text,
            )],
            _ => vec![],
        },
        Kind::Query => vec![],
    }
}

impl ConnState {
    fn cursor_schema(&self, name: &str) -> Option<SchemaRef> {
        self.cursors
            .try_lock()
            .ok()
            .and_then(|c| c.get(name).map(|c| c.stream.schema()))
    }

    fn identity(&self) -> PgWireResult<(Principal, Target)> {
        let s = self
            .session
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .ok_or_else(|| user_error("FATAL", "08P01", "not signed in"))?;
        Ok((s.principal, Target::Project(s.project)))
    }

    fn cancel_signal(&self) -> Option<watch::Receiver<u64>> {
        self.session
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|s| s.cancel.clone()))
    }

    fn options(&self, params: Option<datafusion::common::ParamValues>) -> StatementOptions {
        let timeout = self
            .settings
            .lock()
            .ok()
            .and_then(|s| s.get("statement_timeout").cloned())
            .and_then(|v| parse_timeout(&v).ok())
            .filter(|d| !d.is_zero());
        StatementOptions {
            postgres: true,
            params,
            timeout,
            channel: Some("pgwire".into()),
            cancel: None,
        }
    }

    /// Runs a statement. Results under disclosure control (small: they are
    /// aggregates) are read whole first, so that what was withheld can be
    /// told in a notice before the rows.
    async fn run_query<C>(
        &self,
        client: &mut C,
        sql: &str,
        params: Option<datafusion::common::ParamValues>,
        format: &Format,
    ) -> PgWireResult<Response>
    where
        C: Sink<PgWireBackendMessage> + Unpin + Send,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (principal, target) = self.identity()?;
        let cancel = self.cancel_signal();
        let mut rows = self
            .shared
            .run("pgwire", &principal, target, sql, self.options(params))
            .await
            .map_err(gate_error)?;
        let fields = Arc::new(arrow_schema_to_pg_fields(&rows.schema(), format, None)?);
        if rows.controlled() {
            let mut batches = Vec::new();
            while let Some(b) = rows.next_batch().await {
                batches.push(b.map_err(gate_error)?);
            }
            if let Some(summary) = rows.disclosure().filter(|s| s.withheld() || s.rounding > 1) {
                let notice = ErrorInfo::new("NOTICE".into(), "01000".into(), summary.notice());
                client
                    .send(PgWireBackendMessage::NoticeResponse(notice.into()))
                    .await?;
            }
            let n: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
            self.shared.metrics.rows_sent("pgwire", n);
            let encoded: Vec<PgWireResult<pgwire::messages::data::DataRow>> = batches
                .into_iter()
                .flat_map(|b| encode_recordbatch(fields.clone(), b).collect::<Vec<_>>())
                .collect();
            return Ok(Response::Query(QueryResponse::new(
                fields,
                stream::iter(encoded),
            )));
        }
        Ok(Response::Query(QueryResponse::new(
            fields.clone(),
            encode_rows(rows, fields, cancel, self.shared.clone()),
        )))
    }

    async fn session_statement(&self, s: &Statement) -> PgWireResult<Response> {
        match s {
            Statement::Set(set) => self.set(set),
            Statement::ShowVariable { variable } => {
                let name = variable
                    .iter()
                    .map(|i| i.value.to_ascii_lowercase())
                    .collect::<Vec<_>>()
                    .join(".");
                let value = self
                    .settings
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&name).cloned())
                    .ok_or_else(|| {
                        user_error(
                            "ERROR",
                            "42704",
                            format!("unrecognized configuration parameter \"{name}\""),
                        )
                    })?;
                let fields = Arc::new(vec![FieldInfo::new(
                    name,
                    None,
                    None,
                    Type::TEXT,
                    pgwire::api::results::FieldFormat::Text,
                )]);
                let mut enc = pgwire::api::results::DataRowEncoder::new(fields.clone());
                enc.encode_field(&Some(value))?;
                let row = enc.take_row();
                Ok(Response::Query(QueryResponse::new(
                    fields,
                    stream::iter(vec![Ok(row)]),
                )))
            }
            Statement::StartTransaction { .. } => Ok(Response::TransactionStart(Tag::new("BEGIN"))),
            Statement::Commit { .. } => Ok(Response::TransactionEnd(Tag::new("COMMIT"))),
            Statement::Rollback { .. } => Ok(Response::TransactionEnd(Tag::new("ROLLBACK"))),
            Statement::Discard { .. } => {
                self.cursors.lock().await.clear();
                Ok(Response::Execution(Tag::new("DISCARD ALL")))
            }
            Statement::Deallocate { .. } => Ok(Response::Execution(Tag::new("DEALLOCATE"))),
            Statement::Declare { stmts } => {
                let d = stmts
                    .first()
                    .ok_or_else(|| user_error("ERROR", "42601", "DECLARE without a cursor"))?;
                let name = d
                    .names
                    .first()
                    .map(|i| i.value.clone())
                    .ok_or_else(|| user_error("ERROR", "42601", "DECLARE without a name"))?;
                let query = d.for_query.as_ref().ok_or_else(|| {
                    user_error("ERROR", "42601", "DECLARE needs CURSOR FOR <query>")
                })?;
                let (principal, target) = self.identity()?;
                let rs = self
                    .shared
                    .run(
                        "pgwire",
                        &principal,
                        target,
                        &query.to_string(),
                        self.options(None),
                    )
                    .await
                    .map_err(gate_error)?;
                self.cursors.lock().await.insert(
                    name,
                    Cursor {
                        stream: rs,
                        pending: None,
                    },
                );
                Ok(Response::Execution(Tag::new("DECLARE CURSOR")))
            }
            Statement::Fetch {
                name, direction, ..
            } => {
                let n: usize = match direction {
                    ast::FetchDirection::Count { limit }
                    | ast::FetchDirection::Forward { limit: Some(limit) } => {
                        limit.to_string().parse().map_err(|_| {
                            user_error("ERROR", "42601", "FETCH count must be a number")
                        })?
                    }
                    ast::FetchDirection::Next | ast::FetchDirection::Forward { limit: None } => 1,
                    ast::FetchDirection::All | ast::FetchDirection::ForwardAll => usize::MAX,
                    _ => {
                        return Err(user_error(
                            "ERROR",
                            "0A000",
                            "cursors only move forward (FETCH n, FETCH FORWARD n, FETCH ALL)",
                        ));
                    }
                };
                self.fetch(&name.value, n).await
            }
            Statement::Close { cursor } => {
                match cursor {
                    ast::CloseCursor::All => self.cursors.lock().await.clear(),
                    ast::CloseCursor::Specific { name } => {
                        if self.cursors.lock().await.remove(&name.value).is_none() {
                            return Err(user_error(
                                "ERROR",
                                "34000",
                                format!("cursor \"{}\" does not exist", name.value),
                            ));
                        }
                    }
                }
                Ok(Response::Execution(Tag::new("CLOSE CURSOR")))
            }
            _ => Err(user_error("ERROR", "0A000", "statement not supported")),
        }
    }

    fn set(&self, set: &ast::Set) -> PgWireResult<Response> {
        let (name, value) = match set {
            ast::Set::SingleAssignment {
                variable, values, ..
            } => (
                variable.to_string().to_ascii_lowercase(),
                values
                    .iter()
                    .map(|v| v.to_string().trim_matches('\'').to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            ast::Set::SetTimeZone { value, .. } => (
                "timezone".to_string(),
                value.to_string().trim_matches('\'').to_string(),
            ),
            ast::Set::SetNames { charset_name, .. } => (
                "client_encoding".to_string(),
                charset_name.to_string().trim_matches('\'').to_string(),
            ),
            other => {
                return Err(user_error(
                    "ERROR",
                    "42501",
                    format!(
                        "{other} is not allowed; SET accepts only: {}",
                        allowed_settings()
                    ),
                ));
            }
        };
        if !SETTINGS.iter().any(|(k, _)| *k == name) {
            return Err(user_error(
                "ERROR",
                "42501",
                format!(
                    "SET {name} is not allowed; SET accepts only: {}",
                    allowed_settings()
                ),
            ));
        }
        let value = check_setting(&name, &value)?;
        if let Ok(mut m) = self.settings.lock() {
            m.insert(name, value);
        }
        Ok(Response::Execution(Tag::new("SET")))
    }

    async fn fetch(&self, name: &str, n: usize) -> PgWireResult<Response> {
        let mut cursors = self.cursors.lock().await;
        let c = cursors.get_mut(name).ok_or_else(|| {
            user_error(
                "ERROR",
                "34000",
                format!("cursor \"{name}\" does not exist"),
            )
        })?;
        let schema = c.stream.schema();
        let mut out: Vec<RecordBatch> = Vec::new();
        let mut want = n;
        while want > 0 {
            let batch = match c.pending.take() {
                Some(b) => b,
                None => match c.stream.next_batch().await {
                    Some(Ok(b)) => b,
                    Some(Err(e)) => return Err(gate_error(e)),
                    None => break,
                },
            };
            if batch.num_rows() > want {
                out.push(batch.slice(0, want));
                c.pending = Some(batch.slice(want, batch.num_rows() - want));
                want = 0;
            } else {
                want -= batch.num_rows();
                out.push(batch);
            }
        }
        let fields = Arc::new(arrow_schema_to_pg_fields(
            &schema,
            &Format::UnifiedText,
            None,
        )?);
        let f = fields.clone();
        let rows = stream::iter(
            out.into_iter()
                .flat_map(move |b| encode_recordbatch(f.clone(), b)),
        );
        let mut resp = QueryResponse::new(fields, rows);
        resp.command_tag = "FETCH".into();
        Ok(Response::Query(resp))
    }
}

fn allowed_settings() -> String {
    SETTINGS
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `statement_timeout` values: milliseconds, or a number with `ms`, `s`, `min`.
fn parse_timeout(v: &str) -> Result<Duration, ()> {
    let v = v.trim().trim_matches('\'').to_ascii_lowercase();
    let (num, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&v[..i], v[i..].trim()),
        None => (v.as_str(), "ms"),
    };
    let n: u64 = num.parse().map_err(|_| ())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "min" => Ok(Duration::from_secs(n * 60)),
        _ => Err(()),
    }
}

fn check_setting(name: &str, value: &str) -> PgWireResult<String> {
    let bad = |why: &str| {
        user_error(
            "ERROR",
            "22023",
            format!("invalid value for parameter \"{name}\": \"{value}\" ({why})"),
        )
    };
    match name {
        "client_encoding"
            if !value.eq_ignore_ascii_case("utf8")
                && !value.eq_ignore_ascii_case("utf-8")
                && !value.eq_ignore_ascii_case("unicode") =>
        {
            Err(bad("PDS speaks UTF8 only"))
        }
        "timezone" if !value.eq_ignore_ascii_case("utc") && value != "0" => {
            Err(bad("PDS answers in UTC only"))
        }
        "statement_timeout" => parse_timeout(value)
            .map(|_| value.to_string())
            .map_err(|_| bad("use milliseconds, or a number with ms, s or min")),
        "extra_float_digits" => value
            .parse::<i32>()
            .map(|_| value.to_string())
            .map_err(|_| bad("an integer")),
        _ => Ok(value.to_string()),
    }
}

/// The rows of a result, encoded as the client asked. A cancel request
/// raises the statement's cancel flag; its next batch is then the
/// `57014` error.
fn encode_rows(
    rows: crate::Rows,
    fields: Arc<Vec<FieldInfo>>,
    cancel: Option<watch::Receiver<u64>>,
    shared: Arc<Shared>,
) -> impl futures::Stream<Item = PgWireResult<pgwire::messages::data::DataRow>> + Send + 'static {
    let mut cancel = cancel;
    if let Some(c) = cancel.as_mut() {
        c.mark_unchanged();
    }
    let batches = stream::unfold(
        (Box::new(rows), cancel, false),
        move |(mut rows, mut cancel, done)| {
            let shared = shared.clone();
            async move {
                if done {
                    return None;
                }
                let next = loop {
                    match cancel.as_mut() {
                        Some(c) => tokio::select! {
                            b = rows.next_batch() => break b,
                            changed = c.changed() => {
                                if changed.is_ok() {
                                    rows.cancel();
                                } else {
                                    cancel = None;
                                }
                            }
                        },
                        None => break rows.next_batch().await,
                    }
                };
                match next {
                    Some(Ok(b)) => {
                        shared.metrics.rows_sent("pgwire", b.num_rows() as u64);
                        Some((Ok(b), (rows, cancel, false)))
                    }
                    Some(Err(e)) => Some((Err(e), (rows, cancel, true))),
                    None => None,
                }
            }
        },
    );
    batches.flat_map(move |b: Result<RecordBatch, GateError>| {
        let items: Vec<PgWireResult<pgwire::messages::data::DataRow>> = match b {
            Ok(b) => encode_recordbatch(fields.clone(), b).collect(),
            Err(e) => vec![Err(gate_error(e))],
        };
        stream::iter(items)
    })
}

/// Simple and extended query protocols.
pub struct PgQuery {
    state: Arc<ConnState>,
    parser: Arc<PgParser>,
}

#[async_trait]
impl SimpleQueryHandler for PgQuery {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let parsed = self.parser.parse(query)?;
        if parsed.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut out = Vec::with_capacity(parsed.len());
        for (sql, kind) in parsed {
            let r = match kind {
                Kind::Query => {
                    self.state
                        .run_query(client, &sql, None, &Format::UnifiedText)
                        .await
                }
                Kind::Session(s) => self.state.session_statement(&s).await,
            };
            match r {
                Ok(r) => out.push(r),
                // Later statements of the text are not run, as in PostgreSQL.
                Err(PgWireError::UserError(e)) => {
                    out.push(Response::Error(e));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl ExtendedQueryHandler for PgQuery {
    type Statement = PgStatement;
    type QueryParser = PgParser;

    fn query_parser(&self) -> Arc<PgParser> {
        self.parser.clone()
    }

    /// Declared cursors are portals too (psycopg describes them by name).
    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if message.target_type == b'P'
            && let Some(name) = message.name.as_deref()
            && client.portal_store().get_portal(name).is_none()
            && let Some(schema) = self.state.cursor_schema(name)
        {
            let fields = arrow_schema_to_pg_fields(&schema, &Format::UnifiedText, None)?;
            return send_describe_response(client, &DescribePortalResponse::new(fields)).await;
        }
        self._on_describe(client, message).await
    }

    async fn do_describe_statement<C>(
        &self,
        _client: &mut C,
        target: &StoredStatement<PgStatement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let server = self.parser.get_parameter_types(&target.statement)?;
        let n = server.len().max(target.parameter_types.len());
        let params = (0..n)
            .map(|i| {
                target
                    .parameter_types
                    .get(i)
                    .cloned()
                    .flatten()
                    .filter(|t| *t != Type::UNKNOWN)
                    .or_else(|| server.get(i).cloned())
                    .unwrap_or(Type::UNKNOWN)
            })
            .collect();
        let fields = self.parser.get_result_schema(&target.statement, None)?;
        Ok(DescribeStatementResponse::new(params, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        _client: &mut C,
        portal: &Portal<PgStatement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let fields = self.parser.get_result_schema(
            &portal.statement.statement,
            Some(&portal.result_column_format),
        )?;
        Ok(DescribePortalResponse::new(fields))
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<PgStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stmt = &portal.statement.statement;
        match &stmt.kind {
            Kind::Session(s) => self.state.session_statement(s).await,
            Kind::Query => {
                let params = match &stmt.description {
                    Some(d) if !d.params.is_empty() => {
                        let inferred: Vec<Option<&arrow::datatypes::DataType>> =
                            d.params.iter().map(|t| t.as_ref()).collect();
                        Some(arrow_pg::datatypes::df::deserialize_parameters(
                            portal, &inferred,
                        )?)
                    }
                    _ => None,
                };
                self.state
                    .run_query(client, &stmt.sql, params, &portal.result_column_format)
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("1500"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("'2s'"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_timeout("3min"), Ok(Duration::from_secs(180)));
        assert!(parse_timeout("soon").is_err());
    }

    #[test]
    fn cancel_needs_the_secret() {
        let r = CancelRegistry::default();
        let (pid, secret, rx) = r.register().unwrap();
        assert!(!r.cancel(pid, &[0, 0, 0, 0]) || secret == [0, 0, 0, 0]);
        assert!(r.cancel(pid, &secret));
        assert!(rx.has_changed().unwrap());
        r.unregister(pid);
        assert!(!r.cancel(pid, &secret));
    }
}
