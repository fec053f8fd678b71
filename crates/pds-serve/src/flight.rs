//! The Arrow Flight SQL front-end: bulk results for ADBC clients.
//!
//! Sign-in: a handshake with HTTP Basic credentials (local accounts) returns
//! a bearer token; or the client sends a token it already has. The project
//! is the `x-pds-project` call header (ADBC option
//! `adbc.flight.sql.rpc.call_header.x-pds-project`). A statement runs
//! through the gate when `GetFlightInfo` is called; its ticket is a random
//! handle, valid once, for the same account, for one minute.
//! `GetTables` lists the project's views (read through the gate too).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::datatypes::Schema;
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};
use base64::Engine;
use futures::{Stream, StreamExt, TryStreamExt, stream};
use pds_gate::{GateError, StatementOptions, Target};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use pds_accounts::Principal;

use crate::Shared;

const TICKET_TTL: Duration = Duration::from_secs(60);

struct Pending {
    principal: String,
    stream: crate::Rows,
    created: Instant,
}

struct Prepared {
    principal: String,
    project: String,
    sql: String,
}

/// The Flight SQL service.
pub struct PdsFlight {
    shared: Arc<Shared>,
    pending: Mutex<HashMap<String, Pending>>,
    prepared: Mutex<HashMap<String, Prepared>>,
    info: SqlInfoData,
}

fn gate_status(e: GateError) -> Status {
    let m = e.to_string();
    match e {
        GateError::Refused(_) => Status::permission_denied(m),
        GateError::Failed(_) => Status::invalid_argument(m),
        GateError::Limit(_) => Status::resource_exhausted(m),
        GateError::Audit(_) | GateError::Setup(_) => Status::internal(m),
    }
}

fn header<'a>(m: &'a MetadataMap, name: &str) -> Option<&'a str> {
    m.get(name).and_then(|v| v.to_str().ok())
}

impl PdsFlight {
    /// A service over the shared state.
    pub fn new(shared: Arc<Shared>) -> Result<PdsFlight, Status> {
        let mut b = SqlInfoDataBuilder::new();
        b.append(SqlInfo::FlightSqlServerName, "PDS");
        b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        b.append(SqlInfo::FlightSqlServerArrowVersion, "59");
        b.append(SqlInfo::FlightSqlServerReadOnly, true);
        b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        let info = b.build().map_err(|e| Status::internal(e.to_string()))?;
        Ok(PdsFlight {
            shared,
            pending: Mutex::new(HashMap::new()),
            prepared: Mutex::new(HashMap::new()),
            info,
        })
    }

    /// The signed-in account, from the bearer token.
    async fn principal(&self, m: &MetadataMap) -> Result<Principal, Status> {
        let token = header(m, "authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("sign in first: handshake with Basic credentials, or send authorization: Bearer <token>"))?;
        self.authenticate(token).await
    }

    async fn authenticate(&self, token: &str) -> Result<Principal, Status> {
        match self.shared.authenticate(token).await {
            Ok(p) => Ok(p),
            Err(reason) => {
                self.shared.audit_refused_token("flight-sql", &reason).await;
                Err(Status::unauthenticated("invalid credentials"))
            }
        }
    }

    /// Checks the handshake's credentials; returns the token to use.
    async fn handshake(
        &self,
        request: &Request<Streaming<HandshakeRequest>>,
    ) -> Result<String, Status> {
        let auth = header(request.metadata(), "authorization")
            .ok_or_else(|| Status::unauthenticated("send authorization: Basic <user:password>"))?;
        let token = if let Some(b) = auth.strip_prefix("Basic ") {
            // Go's Flight client omits the padding; accept both forms.
            let b = b.trim();
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b))
                .map_err(|_| {
                    Status::invalid_argument("authorization: Basic value is not base64")
                })?;
            let text = String::from_utf8(decoded)
                .map_err(|_| Status::invalid_argument("credentials are not UTF-8"))?;
            let (user, password) = text
                .split_once(':')
                .ok_or_else(|| Status::invalid_argument("credentials must be user:password"))?;
            // As on the PostgreSQL protocol, the password is a token: a
            // password alone is one factor.
            if !pds_accounts::is_pds_token(password.trim())
                && !pds_oidc::looks_like_jwt(password.trim())
            {
                self.shared
                    .audit_refused_token("flight-sql", "a password instead of a token")
                    .await;
                return Err(Status::unauthenticated(
                    "invalid credentials: the password must be an access token (sign in with your password and second factor at POST /api/v1/login, or through your identity provider; see docs/identity.md)",
                ));
            }
            let p = self.authenticate(password).await?;
            if p.name != user {
                self.shared
                    .audit_refused_token("flight-sql", "token of another account")
                    .await;
                return Err(Status::unauthenticated("invalid credentials"));
            }
            password.trim().to_string()
        } else if let Some(t) = auth.strip_prefix("Bearer ") {
            self.authenticate(t).await?;
            t.trim().to_string()
        } else {
            return Err(Status::unauthenticated(
                "authorization must be Basic or Bearer",
            ));
        };
        Ok(token)
    }

    fn project(m: &MetadataMap) -> Result<String, Status> {
        header(m, "x-pds-project").map(str::to_string).ok_or_else(|| {
            Status::invalid_argument(
                "no project: send the x-pds-project header (ADBC option adbc.flight.sql.rpc.call_header.x-pds-project)",
            )
        })
    }

    fn options() -> StatementOptions {
        StatementOptions {
            channel: Some("flight-sql".into()),
            ..StatementOptions::default()
        }
    }

    /// Runs a statement through the gate and keeps its rows for one `DoGet`.
    async fn start(
        &self,
        principal: Principal,
        project: String,
        sql: &str,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let rs = self
            .shared
            .run(
                "flight-sql",
                &principal,
                Target::Project(project),
                sql,
                Self::options(),
            )
            .await
            .map_err(gate_status)?;
        let schema = rs.schema();
        let handle = crate::random_token(32).map_err(|e| Status::internal(e.to_string()))?;
        if let Ok(mut p) = self.pending.lock() {
            // Unclaimed results hold a statement slot: drop stale ones.
            p.retain(|_, v| v.created.elapsed() < TICKET_TTL);
            p.insert(
                handle.clone(),
                Pending {
                    principal: principal.name,
                    stream: rs,
                    created: Instant::now(),
                },
            );
        }
        let ticket = TicketStatementQuery {
            statement_handle: handle.into_bytes().into(),
        };
        let endpoint =
            FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()));
        FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Status::internal(e.to_string()))
            .map(|i| {
                i.with_endpoint(endpoint)
                    .with_descriptor(descriptor)
                    .with_total_records(-1)
            })
    }

    /// A `DoGet` answer of one batch (the metadata commands).
    fn one_batch<E: std::fmt::Display>(
        &self,
        schema: arrow::datatypes::SchemaRef,
        batch: Result<arrow::array::RecordBatch, E>,
    ) -> Result<Response<DoGetStream>, Status> {
        let batch = batch.map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(self.encode(schema, None, vec![batch])))
    }

    fn encode(
        &self,
        schema: arrow::datatypes::SchemaRef,
        rs: Option<crate::Rows>,
        batches: Vec<arrow::array::RecordBatch>,
    ) -> DoGetStream {
        let shared = self.shared.clone();
        let rows = stream::unfold(rs, move |rs| {
            let shared = shared.clone();
            async move {
                let mut rs = rs?;
                match rs.next_batch().await {
                    Some(Ok(b)) => {
                        shared.metrics.rows_sent("flight-sql", b.num_rows() as u64);
                        Some((Ok(b), Some(rs)))
                    }
                    Some(Err(e)) => Some((Err(FlightError::Tonic(Box::new(gate_status(e)))), None)),
                    None => None,
                }
            }
        });
        let all = stream::iter(batches.into_iter().map(Ok)).chain(rows);
        Box::pin(
            FlightDataEncoderBuilder::new()
                .with_schema(schema)
                .build(all)
                .map_err(Status::from),
        )
    }

    /// The project's views, read through the gate.
    async fn tables(
        &self,
        principal: &Principal,
        project: &str,
    ) -> Result<Vec<(String, Schema)>, Status> {
        let batches = self
            .shared
            .run(
                "flight-sql",
                principal,
                Target::Project(project.to_string()),
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name",
                Self::options(),
            )
            .await
            .map_err(gate_status)?
            .collect()
            .await
            .map_err(gate_status)?;
        let mut names = Vec::new();
        for b in &batches {
            let col = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)
                .map_err(|e| Status::internal(e.to_string()))?;
            let col = col
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .ok_or_else(|| Status::internal("table names are not text"))?;
            names.extend(col.iter().flatten().map(str::to_string));
        }
        let mut out = Vec::new();
        for n in names {
            let d = self
                .shared
                .gate
                .describe(
                    &principal.name,
                    &Target::Project(project.to_string()),
                    &format!("SELECT * FROM \"{n}\""),
                    &Self::options(),
                )
                .await
                .map_err(gate_status)?;
            out.push((n, (*d.schema).clone()));
        }
        Ok(out)
    }
}

/// A `FlightInfo` whose one endpoint's ticket is the command itself (the
/// metadata commands are answered at `DoGet`, after the same sign-in check).
fn command_info(
    ticket: Vec<u8>,
    schema: &Schema,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket));
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(endpoint)
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

/// The one `GetTableTypes` column.
fn table_types_schema() -> arrow::datatypes::SchemaRef {
    Arc::new(Schema::new(vec![arrow::datatypes::Field::new(
        "table_type",
        arrow::datatypes::DataType::Utf8,
        false,
    )]))
}

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

type HandshakeStream = Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FlightSqlService for PdsFlight {
    type FlightService = PdsFlight;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<HandshakeStream>, Status> {
        let peer = request.remote_addr().map(|a| a.ip());
        if let Some(wait) = peer.and_then(|ip| self.shared.attempts.blocked(ip)) {
            return Err(Status::resource_exhausted(format!(
                "too many failed sign-ins from this address: try again in {wait} s"
            )));
        }
        let result = self.handshake(&request).await;
        if result.is_err()
            && let Some(ip) = peer
        {
            // Failed sign-ins count towards the address's limit.
            let _ = self.shared.attempts.attempt(ip);
        }
        let token = result?;
        let bearer = format!("Bearer {token}");
        let out: HandshakeStream = Box::pin(stream::iter(vec![Ok(HandshakeResponse {
            protocol_version: 0,
            payload: token.into_bytes().into(),
        })]));
        let mut resp = Response::new(out);
        resp.metadata_mut().insert(
            "authorization",
            bearer
                .parse()
                .map_err(|_| Status::internal("token is not a header value"))?,
        );
        Ok(resp)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let principal = self.principal(request.metadata()).await?;
        let project = Self::project(request.metadata())?;
        let info = self
            .start(principal, project, &query.query, request.into_inner())
            .await?;
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<
        Response<<Self as arrow_flight::flight_service_server::FlightService>::DoGetStream>,
        Status,
    > {
        let principal = self.principal(request.metadata()).await?;
        let handle = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("bad ticket"))?;
        let pending = self
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(&handle))
            .filter(|p| p.principal == principal.name && p.created.elapsed() < TICKET_TTL)
            .ok_or_else(|| {
                Status::not_found("unknown or expired ticket: call GetFlightInfo again")
            })?;
        let schema = pending.stream.schema();
        Ok(Response::new(self.encode(
            schema,
            Some(pending.stream),
            Vec::new(),
        )))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let principal = self.principal(request.metadata()).await?;
        let project = Self::project(request.metadata())?;
        self.shared
            .authorize(&principal, &project)
            .await
            .map_err(gate_status)?;
        let d = self
            .shared
            .gate
            .describe(
                &principal.name,
                &Target::Project(project.clone()),
                &query.query,
                &Self::options(),
            )
            .await
            .map_err(gate_status)?;
        if !d.params.is_empty() {
            return Err(Status::unimplemented(
                "parameters are not supported over Flight SQL yet: put the values in the SQL text, or use the PostgreSQL protocol",
            ));
        }
        let IpcMessage(schema_bytes) = SchemaAsIpc::new(&d.schema, &IpcWriteOptions::default())
            .try_into()
            .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
        let handle = crate::random_token(32).map_err(|e| Status::internal(e.to_string()))?;
        if let Ok(mut p) = self.prepared.lock() {
            p.insert(
                handle.clone(),
                Prepared {
                    principal: principal.name,
                    project,
                    sql: query.query,
                },
            );
        }
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into_bytes().into(),
            dataset_schema: schema_bytes,
            parameter_schema: Default::default(),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        let principal = self.principal(request.metadata()).await?;
        let handle = String::from_utf8_lossy(&query.prepared_statement_handle).to_string();
        if let Ok(mut p) = self.prepared.lock()
            && p.get(&handle)
                .is_some_and(|s| s.principal == principal.name)
        {
            p.remove(&handle);
        }
        Ok(())
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let principal = self.principal(request.metadata()).await?;
        let handle = String::from_utf8_lossy(&cmd.prepared_statement_handle).to_string();
        let (project, sql) = self
            .prepared
            .lock()
            .ok()
            .and_then(|p| {
                p.get(&handle)
                    .filter(|s| s.principal == principal.name)
                    .map(|s| (s.project.clone(), s.sql.clone()))
            })
            .ok_or_else(|| Status::not_found("unknown prepared statement"))?;
        let info = self
            .start(principal, project, &sql, request.into_inner())
            .await?;
        Ok(Response::new(info))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(request.metadata()).await?;
        let ticket = query.as_any().encode_to_vec();
        command_info(
            ticket,
            query.into_builder(&self.info).schema().as_ref(),
            request.into_inner(),
        )
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<
        Response<<Self as arrow_flight::flight_service_server::FlightService>::DoGetStream>,
        Status,
    > {
        self.principal(request.metadata()).await?;
        let builder = query.into_builder(&self.info);
        self.one_batch(builder.schema(), builder.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(request.metadata()).await?;
        let ticket = query.as_any().encode_to_vec();
        command_info(ticket, &query.into_builder().schema(), request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<
        Response<<Self as arrow_flight::flight_service_server::FlightService>::DoGetStream>,
        Status,
    > {
        let principal = self.principal(request.metadata()).await?;
        let project = Self::project(request.metadata())?;
        let tables = self.tables(&principal, &project).await?;
        let mut builder = query.into_builder();
        for (name, schema) in &tables {
            builder
                .append("datafusion", "public", name, "VIEW", schema)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        self.one_batch(builder.schema(), builder.build())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(request.metadata()).await?;
        let ticket = query.as_any().encode_to_vec();
        command_info(ticket, &query.into_builder().schema(), request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<
        Response<<Self as arrow_flight::flight_service_server::FlightService>::DoGetStream>,
        Status,
    > {
        self.principal(request.metadata()).await?;
        let mut builder = query.into_builder();
        builder.append("datafusion");
        self.one_batch(builder.schema(), builder.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(request.metadata()).await?;
        let ticket = query.as_any().encode_to_vec();
        command_info(ticket, &query.into_builder().schema(), request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<
        Response<<Self as arrow_flight::flight_service_server::FlightService>::DoGetStream>,
        Status,
    > {
        self.principal(request.metadata()).await?;
        let mut builder = query.into_builder();
        builder.append("datafusion", "public");
        self.one_batch(builder.schema(), builder.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(request.metadata()).await?;
        let ticket = query.as_any().encode_to_vec();
        command_info(ticket, &table_types_schema(), request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        _query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<
        Response<<Self as arrow_flight::flight_service_server::FlightService>::DoGetStream>,
        Status,
    > {
        self.principal(request.metadata()).await?;
        let schema = table_types_schema();
        let batch = arrow::array::RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(arrow::array::StringArray::from(vec!["VIEW"]))],
        );
        self.one_batch(schema, batch)
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// Serves Flight SQL until `stopped` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    identity: Option<tonic::transport::Identity>,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let service = match PdsFlight::new(shared) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("Flight SQL service: {e}");
            return;
        }
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(id) = identity {
        builder = match builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(id)) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("Flight SQL TLS: {e}");
                return;
            }
        };
    }
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let signal = async move {
        let _ = stopped.changed().await;
    };
    let server = builder
        .add_service(FlightServiceServer::new(service).max_decoding_message_size(16 << 20))
        .serve_with_incoming_shutdown(incoming, signal);
    // After the stop signal tonic drains open calls; `Server::shutdown`
    // aborts this task when the grace period ends.
    if let Err(e) = server.await {
        tracing::error!("Flight SQL server: {e}");
    }
}
