//! The HTTP API (axum), described by the OpenAPI document at `/openapi.json`.
//!
//! Sign in with `POST /api/v1/login` (password and TOTP code) or through an
//! identity provider (`/api/v1/oidc/{provider}/login`) to get a session's
//! bearer token; see [`identity`].
//! Queries run through the gate like every other front-end; results come as
//! JSON (row objects) or as an Arrow IPC stream, with a row limit. Admin
//! endpoints need the platform `admin` role. `/healthz`, `/readyz` and
//! `/metrics` (Prometheus, counts only) need no sign-in and show no data.

use std::net::SocketAddr;
use std::sync::Arc;

use arrow::array::RecordBatch;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use pds_gate::{GateError, StatementOptions, Target};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::Shared;

mod exports;
mod identity;

type S = Arc<Shared>;

/// An error answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// What went wrong and how to fix it.
    pub error: String,
    /// A stable code: `unauthenticated`, `forbidden`, `refused`, `invalid`, `limit`, `not_found`, `internal`.
    pub code: String,
}

/// An error with its HTTP status.
pub struct Failure(StatusCode, ApiError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

fn fail(status: StatusCode, code: &str, msg: impl Into<String>) -> Failure {
    Failure(
        status,
        ApiError {
            error: msg.into(),
            code: code.into(),
        },
    )
}

fn gate_failure(e: GateError) -> Failure {
    let m = e.to_string();
    match e {
        GateError::Refused(_) => fail(StatusCode::FORBIDDEN, "refused", m),
        GateError::Failed(_) => fail(StatusCode::BAD_REQUEST, "invalid", m),
        GateError::Limit(_) => fail(StatusCode::TOO_MANY_REQUESTS, "limit", m),
        GateError::Audit(_) => fail(StatusCode::SERVICE_UNAVAILABLE, "internal", m),
        GateError::Setup(_) => fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", m),
    }
}

fn account_failure(e: pds_accounts::AccountError) -> Failure {
    use pds_accounts::AccountError as E;
    let m = e.to_string();
    match e {
        E::BadCredentials => fail(StatusCode::UNAUTHORIZED, "unauthenticated", m),
        E::SecondFactorRequired => fail(StatusCode::UNAUTHORIZED, "mfa_required", m),
        E::SessionEnded(_) => fail(StatusCode::UNAUTHORIZED, "session_ended", m),
        E::Locked(_) => fail(StatusCode::TOO_MANY_REQUESTS, "locked", m),
        E::Invalid(_) => fail(StatusCode::BAD_REQUEST, "invalid", m),
        E::NoAccount(_) => fail(StatusCode::NOT_FOUND, "not_found", m),
        E::Audit(_) | E::Internal(_) => fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", m),
    }
}

fn project_failure(e: pds_project::ProjectError) -> Failure {
    use pds_project::ProjectError as E;
    let m = e.to_string();
    match e {
        E::Perimeter(_) | E::Invalid(_) => fail(StatusCode::BAD_REQUEST, "invalid", m),
        E::Denied(_) => fail(StatusCode::FORBIDDEN, "refused", m),
        E::Catalog(pds_catalog::CatalogError::NoProject(_)) => {
            fail(StatusCode::NOT_FOUND, "not_found", m)
        }
        E::Catalog(pds_catalog::CatalogError::Invalid(_)) => {
            fail(StatusCode::BAD_REQUEST, "invalid", m)
        }
        _ => fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", m),
    }
}

/// An optional integer that JSON may also write as `3.0` (JSON Schema
/// counts it as an integer; serde alone would not).
fn integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let v: Option<serde_json::Number> = Option::deserialize(d)?;
    match v {
        None => Ok(None),
        Some(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(Some(i)),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
            _ => Err(serde::de::Error::custom(format!("{n} is not an integer"))),
        },
    }
}

/// A JSON body whose errors (not JSON, wrong content type, missing
/// fields) are answered like every other error: 400 with an [`ApiError`].
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned, St: Send + Sync> axum::extract::FromRequest<St>
    for ApiJson<T>
{
    type Rejection = Failure;

    async fn from_request(req: axum::extract::Request, state: &St) -> Result<Self, Failure> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(r) => Err(fail(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!(
                    "{} (send Content-Type: application/json; /openapi.json describes the body)",
                    r.body_text()
                ),
            )),
        }
    }
}

/// The signed-in caller.
pub struct Caller {
    name: String,
    admin: bool,
    token: String,
    principal: pds_accounts::Principal,
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
}

impl FromRequestParts<S> for Caller {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Caller, Failure> {
        let token = bearer(&parts.headers).ok_or_else(|| {
            fail(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "sign in with POST /api/v1/login (or your identity provider) and send Authorization: Bearer <token>",
            )
        })?;
        match state.authenticate(&token).await {
            Ok(p) => Ok(Caller {
                name: p.name.clone(),
                admin: p.admin,
                token,
                principal: p,
            }),
            Err(reason) => {
                state.audit_refused_token("http", &reason).await;
                Err(fail(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "invalid or expired token",
                ))
            }
        }
    }
}

impl Caller {
    fn require_admin(&self) -> Result<(), Failure> {
        if self.admin {
            Ok(())
        } else {
            Err(fail(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this endpoint needs the platform admin role",
            ))
        }
    }
}

/// A project the caller belongs to.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProjectSummary {
    /// Id (the PostgreSQL database name).
    pub id: String,
    /// Title.
    pub title: String,
    /// The caller's role: `lead`, `researcher` or `checker`.
    pub role: String,
    /// `row-level` or `aggregate-only`.
    pub access_mode: String,
    /// Last day of access.
    pub expires_on: String,
    /// Pinned snapshot.
    pub snapshot: i64,
}

/// The caller.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Me {
    /// Account name.
    pub name: String,
    /// Platform administrator.
    pub admin: bool,
}

/// Who the token belongs to.
#[utoipa::path(get, path = "/api/v1/me", security(("bearer" = [])),
    responses((status = 200, body = Me), (status = 401, body = ApiError)))]
async fn me(caller: Caller) -> Json<Me> {
    Json(Me {
        name: caller.name,
        admin: caller.admin,
    })
}

/// The caller's projects with their role, or (`None`) every project.
async fn memberships(s: &Shared, who: Option<&str>) -> Result<Vec<ProjectSummary>, Failure> {
    let cat = s.gate.catalog();
    let rows = match who {
        Some(w) => cat.memberships(w).await,
        None => cat
            .projects()
            .await
            .map(|ps| ps.into_iter().map(|p| (p, String::new())).collect()),
    }
    .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(rows
        .into_iter()
        .map(|(p, role)| ProjectSummary {
            id: p.id,
            title: p.title,
            role,
            access_mode: p.access_mode,
            expires_on: p.expires_on,
            snapshot: p.snapshot_id,
        })
        .collect())
}

/// The projects the caller is a member of.
#[utoipa::path(get, path = "/api/v1/projects", security(("bearer" = [])),
    responses((status = 200, body = Vec<ProjectSummary>), (status = 401, body = ApiError)))]
async fn projects(
    State(s): State<S>,
    caller: Caller,
) -> Result<Json<Vec<ProjectSummary>>, Failure> {
    let mut list = memberships(&s, Some(&caller.name)).await?;
    // A service token shows only the project it opens.
    if let Some(scope) = &caller.principal.scope {
        list.retain(|p| p.id == scope.project);
    }
    Ok(Json(list))
}

/// A column of a project view.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ColumnDoc {
    /// Name.
    pub name: String,
    /// SQL type.
    pub data_type: String,
    /// SNDS description (empty for columns PDS derives, such as coarsened dates).
    pub description: String,
}

/// A table of the project (a view of the perimeter).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TableDoc {
    /// Name.
    pub name: String,
    /// SNDS title.
    pub title: String,
    /// Columns.
    pub columns: Vec<ColumnDoc>,
}

/// The project's tables and columns, with SNDS descriptions. Read through
/// the gate: only the perimeter is listed.
#[utoipa::path(get, path = "/api/v1/projects/{project}/tables", security(("bearer" = [])),
    params(("project" = String, Path, description = "Project id")),
    responses((status = 200, body = Vec<TableDoc>), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
async fn tables(
    State(s): State<S>,
    caller: Caller,
    Path(project): Path<String>,
) -> Result<Json<Vec<TableDoc>>, Failure> {
    let batches = s
        .run(
            "http",
            &caller.principal,
            Target::Project(project),
            "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = 'public' ORDER BY table_name, ordinal_position",
            options(),
        )
        .await
        .map_err(gate_failure)?
        .collect()
        .await
        .map_err(gate_failure)?;
    let mut out: Vec<TableDoc> = Vec::new();
    for b in &batches {
        let col = |i: usize| -> Result<arrow::array::StringArray, Failure> {
            let c = arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Utf8)
                .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
            c.as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .cloned()
                .ok_or_else(|| {
                    fail(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "catalogue columns are not text",
                    )
                })
        };
        let (t, c, d) = (col(0)?, col(1)?, col(2)?);
        for i in 0..b.num_rows() {
            let table = t.value(i).to_string();
            if out.last().is_none_or(|l| l.name != table) {
                let title = pds_snds::schema::table(&table)
                    .map(|(s, _)| s.title.clone())
                    .unwrap_or_default();
                out.push(TableDoc {
                    name: table.clone(),
                    title,
                    columns: Vec::new(),
                });
            }
            let name = c.value(i).to_string();
            let description = pds_snds::schema::table(&table)
                .ok()
                .and_then(|(s, _)| {
                    s.columns
                        .iter()
                        .find(|x| x.name == name)
                        .map(|x| x.description.clone())
                })
                .unwrap_or_default();
            if let Some(l) = out.last_mut() {
                l.columns.push(ColumnDoc {
                    name,
                    data_type: d.value(i).to_string(),
                    description,
                });
            }
        }
    }
    Ok(Json(out))
}

fn options() -> StatementOptions {
    StatementOptions {
        channel: Some("http".into()),
        ..StatementOptions::default()
    }
}

/// A statement to run.
#[derive(Debug, Deserialize, ToSchema)]
pub struct QueryRequest {
    /// SQL (one read statement).
    pub sql: String,
    /// Rows to return at most (default 10 000, at most 1 000 000). Use Flight
    /// SQL or the PostgreSQL protocol for bigger results.
    #[serde(default, deserialize_with = "integer")]
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 1000000)]
    pub max_rows: Option<i64>,
    /// `json` (default) or `arrow` (an Arrow IPC stream). The `Accept`
    /// header `application/vnd.apache.arrow.stream` also selects Arrow.
    pub format: Option<ResultFormat>,
}

/// Result encodings.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResultFormat {
    /// JSON row objects.
    Json,
    /// An Arrow IPC stream.
    Arrow,
}

/// A result column.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ResultColumn {
    /// Name.
    pub name: String,
    /// Arrow type.
    pub data_type: String,
}

/// A JSON result.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueryResult {
    /// Columns in order.
    pub columns: Vec<ResultColumn>,
    /// One object per row, keyed by column name.
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<serde_json::Value>,
    /// Rows returned.
    pub row_count: usize,
    /// Whether more rows existed than `max_rows`.
    pub truncated: bool,
    /// Aggregate-only projects: what disclosure control withheld (rows
    /// and values; rows with a withheld value have `pds_suppressed` true).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub disclosure: Option<serde_json::Value>,
}

const DEFAULT_ROWS: usize = 10_000;
const MAX_ROWS: usize = 1_000_000;

/// Runs a statement in a project, through the gate.
#[utoipa::path(post, path = "/api/v1/projects/{project}/query", security(("bearer" = [])),
    params(("project" = String, Path, description = "Project id")),
    request_body = QueryRequest,
    responses(
        (status = 200, body = QueryResult, description = "JSON result, or an Arrow IPC stream (application/vnd.apache.arrow.stream)"),
        (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 429, body = ApiError)))]
async fn query(
    State(s): State<S>,
    caller: Caller,
    Path(project): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<QueryRequest>,
) -> Result<Response, Failure> {
    let max = req.max_rows.unwrap_or(DEFAULT_ROWS as i64);
    if !(1..=MAX_ROWS as i64).contains(&max) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("max_rows must be between 1 and {MAX_ROWS}"),
        ));
    }
    let max = max as usize;
    let arrow_wanted = match req.format {
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/vnd.apache.arrow.stream")),
        Some(ResultFormat::Json) => false,
        Some(ResultFormat::Arrow) => true,
    };
    let mut rs = s
        .run(
            "http",
            &caller.principal,
            Target::Project(project),
            &req.sql,
            options(),
        )
        .await
        .map_err(gate_failure)?;
    let schema = rs.schema();
    let mut batches: Vec<RecordBatch> = Vec::new();
    let mut rows = 0usize;
    let mut truncated = false;
    while let Some(b) = rs.next_batch().await {
        let b = b.map_err(gate_failure)?;
        if rows + b.num_rows() > max {
            batches.push(b.slice(0, max - rows));
            rows = max;
            truncated = true;
            break;
        }
        rows += b.num_rows();
        batches.push(b);
    }
    let disclosure = rs.disclosure().and_then(|d| serde_json::to_value(d).ok());
    // Stopping early closes the statement; its audit entry says so.
    drop(rs);
    s.metrics.rows_sent("http", rows as u64);
    let internal = |e: arrow::error::ArrowError| {
        fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    };
    if arrow_wanted {
        let mut buf = Vec::new();
        {
            let mut w =
                arrow::ipc::writer::StreamWriter::try_new(&mut buf, &schema).map_err(internal)?;
            for b in &batches {
                w.write(b).map_err(internal)?;
            }
            w.finish().map_err(internal)?;
        }
        return Ok((
            [
                (
                    header::CONTENT_TYPE,
                    "application/vnd.apache.arrow.stream".to_string(),
                ),
                (
                    header::HeaderName::from_static("x-pds-truncated"),
                    truncated.to_string(),
                ),
                (
                    header::HeaderName::from_static("x-pds-disclosure"),
                    disclosure
                        .as_ref()
                        .map(|d| d.to_string())
                        .unwrap_or_default(),
                ),
            ],
            buf,
        )
            .into_response());
    }
    let mut w = arrow::json::ArrayWriter::new(Vec::new());
    for b in &batches {
        w.write(b).map_err(internal)?;
    }
    w.finish().map_err(internal)?;
    let bytes = w.into_inner();
    let rows_json: Vec<serde_json::Value> = if bytes.is_empty() {
        Vec::new()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    };
    Ok(Json(QueryResult {
        columns: schema
            .fields()
            .iter()
            .map(|f| ResultColumn {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
            })
            .collect(),
        row_count: rows_json.len(),
        rows: rows_json,
        truncated,
        disclosure,
    })
    .into_response())
}

/// An account (admin view).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccountDoc {
    /// Name.
    pub name: String,
    /// `local`, `federated` or `service`.
    pub kind: String,
    /// Platform administrator.
    pub admin: bool,
    /// Disabled.
    pub disabled: bool,
    /// A TOTP second factor is enrolled.
    pub mfa: bool,
    /// Locked after failed sign-ins until then.
    pub locked_until: Option<String>,
}

/// How an account signs in.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccountKind {
    /// A person: password and TOTP second factor.
    Local,
    /// A person signed in by an identity provider.
    Federated,
    /// A program: scoped API tokens.
    Service,
}

/// A new account.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewAccount {
    /// Name.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,128}$")]
    pub name: String,
    /// `local` (default), `federated` or `service`.
    pub kind: Option<AccountKind>,
    /// Password (local accounts).
    pub password: Option<String>,
    /// Platform administrator.
    #[serde(default)]
    pub admin: bool,
}

fn account_doc(a: pds_accounts::Account) -> AccountDoc {
    AccountDoc {
        name: a.name,
        kind: match a.kind {
            pds_accounts::Kind::Local => "local".into(),
            pds_accounts::Kind::Federated => "federated".into(),
            pds_accounts::Kind::Service => "service".into(),
        },
        admin: a.admin,
        disabled: a.disabled,
        mfa: a.mfa,
        locked_until: a.locked_until,
    }
}

/// Every account (admin).
#[utoipa::path(get, path = "/api/v1/admin/users", security(("bearer" = [])),
    responses((status = 200, body = Vec<AccountDoc>), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
async fn admin_users(State(s): State<S>, caller: Caller) -> Result<Json<Vec<AccountDoc>>, Failure> {
    caller.require_admin()?;
    let list = s.accounts().list().await.map_err(account_failure)?;
    Ok(Json(list.into_iter().map(account_doc).collect()))
}

/// Creates an account (admin).
#[utoipa::path(post, path = "/api/v1/admin/users", security(("bearer" = [])), request_body = NewAccount,
    responses((status = 201, body = AccountDoc), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
async fn admin_add_user(
    State(s): State<S>,
    caller: Caller,
    ApiJson(req): ApiJson<NewAccount>,
) -> Result<(StatusCode, Json<AccountDoc>), Failure> {
    caller.require_admin()?;
    let kind = match req.kind {
        None | Some(AccountKind::Local) => pds_accounts::Kind::Local,
        Some(AccountKind::Federated) => pds_accounts::Kind::Federated,
        Some(AccountKind::Service) => pds_accounts::Kind::Service,
    };
    let a = s
        .accounts()
        .add(
            &caller.name,
            &req.name,
            kind,
            req.password.as_deref(),
            req.admin,
        )
        .await
        .map_err(account_failure)?;
    Ok((StatusCode::CREATED, Json(account_doc(a))))
}

/// Disables an account and revokes its tokens (admin).
#[utoipa::path(post, path = "/api/v1/admin/users/{name}/disable", security(("bearer" = [])),
    params(("name" = String, Path, description = "Account")),
    responses((status = 204), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn admin_disable_user(
    State(s): State<S>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, Failure> {
    caller.require_admin()?;
    s.accounts()
        .set_disabled(&caller.name, &name, true)
        .await
        .map_err(account_failure)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every project (admin).
#[utoipa::path(get, path = "/api/v1/admin/projects", security(("bearer" = [])),
    responses((status = 200, body = Vec<ProjectSummary>), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
async fn admin_projects(
    State(s): State<S>,
    caller: Caller,
) -> Result<Json<Vec<ProjectSummary>>, Failure> {
    caller.require_admin()?;
    Ok(Json(memberships(&s, None).await?))
}

/// A project's access mode.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
pub enum ModeDoc {
    /// Pseudonymised rows.
    #[serde(rename = "row-level")]
    RowLevel,
    /// Aggregates only.
    #[serde(rename = "aggregate-only")]
    AggregateOnly,
}

/// A new project.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewProjectRequest {
    /// Id: lower-case letters, digits and `-`.
    pub id: String,
    /// Title.
    pub title: String,
    /// Authorisation reference (CNIL decision).
    pub authorisation: String,
    /// First day, `YYYY-MM-DD`.
    pub starts_on: String,
    /// Last day, `YYYY-MM-DD`.
    pub expires_on: String,
    /// `row-level` or `aggregate-only`.
    pub access_mode: ModeDoc,
    /// The perimeter, as the TOML text of `pds project create --perimeter`.
    pub perimeter_toml: String,
    /// Snapshot (latest when absent).
    #[serde(default, deserialize_with = "integer")]
    pub snapshot: Option<i64>,
}

/// Creates a project (admin).
#[utoipa::path(post, path = "/api/v1/admin/projects", security(("bearer" = [])), request_body = NewProjectRequest,
    responses((status = 201, body = ProjectSummary), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
async fn admin_create_project(
    State(s): State<S>,
    caller: Caller,
    ApiJson(req): ApiJson<NewProjectRequest>,
) -> Result<(StatusCode, Json<ProjectSummary>), Failure> {
    caller.require_admin()?;
    let perimeter = pds_project::perimeter::Perimeter::from_toml(&req.perimeter_toml)
        .map_err(project_failure)?;
    let mode = match req.access_mode {
        ModeDoc::RowLevel => pds_project::AccessMode::RowLevel,
        ModeDoc::AggregateOnly => pds_project::AccessMode::AggregateOnly,
    };
    let p = s
        .gate
        .admin(&caller.name)
        .create(&pds_project::NewProject {
            id: req.id,
            title: req.title,
            authorisation: req.authorisation,
            starts_on: req.starts_on,
            expires_on: req.expires_on,
            mode,
            snapshot: req.snapshot,
            perimeter,
            cohort: Vec::new(),
        })
        .await
        .map_err(project_failure)?;
    Ok((
        StatusCode::CREATED,
        Json(ProjectSummary {
            id: p.id,
            title: p.title,
            role: String::new(),
            access_mode: p.mode.as_str().into(),
            expires_on: p.expires_on.to_string(),
            snapshot: p.snapshot,
        }),
    ))
}

/// A member's role.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    /// Leads the project.
    Lead,
    /// Queries the project.
    Researcher,
    /// Reviews exports; does not query.
    Checker,
}

/// A membership.
#[derive(Debug, Deserialize, ToSchema)]
pub struct MemberRequest {
    /// `lead`, `researcher` or `checker`.
    pub role: MemberRole,
}

/// Adds a member or changes their role (admin).
#[utoipa::path(put, path = "/api/v1/admin/projects/{project}/members/{principal}", security(("bearer" = [])),
    params(("project" = String, Path, description = "Project id"), ("principal" = String, Path, description = "Account")),
    request_body = MemberRequest,
    responses((status = 204), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn admin_grant(
    State(s): State<S>,
    caller: Caller,
    Path((project, principal)): Path<(String, String)>,
    ApiJson(req): ApiJson<MemberRequest>,
) -> Result<StatusCode, Failure> {
    caller.require_admin()?;
    let role = match req.role {
        MemberRole::Lead => pds_project::Role::Lead,
        MemberRole::Researcher => pds_project::Role::Researcher,
        MemberRole::Checker => pds_project::Role::Checker,
    };
    s.gate
        .admin(&caller.name)
        .grant(&project, &principal, role)
        .await
        .map_err(project_failure)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a member (admin).
#[utoipa::path(delete, path = "/api/v1/admin/projects/{project}/members/{principal}", security(("bearer" = [])),
    params(("project" = String, Path, description = "Project id"), ("principal" = String, Path, description = "Account")),
    responses((status = 204), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn admin_revoke(
    State(s): State<S>,
    caller: Caller,
    Path((project, principal)): Path<(String, String)>,
) -> Result<StatusCode, Failure> {
    caller.require_admin()?;
    s.gate
        .admin(&caller.name)
        .revoke(&project, &principal)
        .await
        .map_err(project_failure)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not ready`.
    pub status: String,
    /// The catalogue answers.
    pub catalogue: bool,
}

/// Readiness: the catalogue answers.
#[utoipa::path(get, path = "/readyz", responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
async fn readyz(State(s): State<S>) -> (StatusCode, Json<Readiness>) {
    let ok = s.gate.catalog().snapshots().await.is_ok();
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(Readiness {
            status: if ok { "ready" } else { "not ready" }.into(),
            catalogue: ok,
        }),
    )
}

/// Prometheus metrics (counts only; no names, statements or values).
#[utoipa::path(get, path = "/metrics", responses((status = 200, body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
async fn metrics(State(s): State<S>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = openapi.components.as_mut() {
            c.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The OpenAPI description of the API.
#[derive(OpenApi)]
#[openapi(
    info(title = "PDS API", description = "Pseudonymised, audited access to SNDS data: sign-in, projects, catalogue, queries, export airlock, administration."),
    paths(identity::login, identity::logout, identity::refresh, identity::mfa_enrol, identity::mfa_confirm,
        identity::oidc_providers, identity::oidc_login, identity::oidc_callback,
        identity::admin_reset_mfa, identity::admin_unlock, identity::admin_service_token,
        me, projects, tables, query, exports::create, exports::list, exports::show, exports::review, exports::withdraw,
        exports::link, exports::download, admin_users, admin_add_user, admin_disable_user, admin_projects, admin_create_project, admin_grant, admin_revoke, healthz, readyz, metrics),
    components(schemas(AccountKind, ResultFormat, MemberRole, ModeDoc, ApiError, identity::LoginRequest, identity::LoginResponse, identity::SessionTokens,
        identity::RefreshRequest, identity::Enrolment, identity::ConfirmRequest, identity::ConfirmResponse, identity::LogoutResponse,
        identity::Providers, identity::ServiceTokenRequest, identity::ServiceToken, Me, ProjectSummary, TableDoc, ColumnDoc, QueryRequest, QueryResult, ResultColumn, AccountDoc, NewAccount, NewProjectRequest, MemberRequest, Readiness,
        exports::ExportRequestBody, exports::ReviewBody, exports::ReviewDoc, exports::ExportDoc, exports::LinkDoc)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn not_found() -> Failure {
    fail(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; /openapi.json lists them",
    )
}

/// The router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/v1/login", post(identity::login))
        .route("/api/v1/logout", post(identity::logout))
        .route("/api/v1/token/refresh", post(identity::refresh))
        .route("/api/v1/mfa/enrol", post(identity::mfa_enrol))
        .route("/api/v1/mfa/confirm", post(identity::mfa_confirm))
        .route("/api/v1/oidc/providers", get(identity::oidc_providers))
        .route("/api/v1/oidc/{provider}/login", get(identity::oidc_login))
        .route(
            "/api/v1/oidc/{provider}/callback",
            get(identity::oidc_callback),
        )
        .route(
            "/api/v1/admin/users/{name}/reset-mfa",
            post(identity::admin_reset_mfa),
        )
        .route(
            "/api/v1/admin/users/{name}/unlock",
            post(identity::admin_unlock),
        )
        .route(
            "/api/v1/admin/users/{name}/tokens",
            post(identity::admin_service_token),
        )
        .route("/api/v1/me", get(me))
        .route("/api/v1/projects", get(projects))
        .route("/api/v1/projects/{project}/tables", get(tables))
        .route("/api/v1/projects/{project}/query", post(query))
        .route("/api/v1/admin/users", get(admin_users).post(admin_add_user))
        .route(
            "/api/v1/admin/users/{name}/disable",
            post(admin_disable_user),
        )
        .route(
            "/api/v1/admin/projects",
            get(admin_projects).post(admin_create_project),
        )
        .route(
            "/api/v1/admin/projects/{project}/members/{principal}",
            put(admin_grant).delete(admin_revoke),
        )
        .route(
            "/api/v1/projects/{project}/exports",
            post(exports::create).layer(axum::extract::DefaultBodyLimit::max(32 << 20)),
        )
        .route("/api/v1/exports", get(exports::list))
        .route("/api/v1/exports/{id}", get(exports::show))
        .route("/api/v1/exports/{id}/reviews", post(exports::review))
        .route("/api/v1/exports/{id}/withdraw", post(exports::withdraw))
        .route("/api/v1/exports/{id}/link", post(exports::link))
        .route("/api/v1/exports/{id}/download", get(exports::download))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20))
        .with_state(shared)
}

/// Serves until `stopped` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
    max_connections: usize,
) {
    let app = router(shared);
    let signal = async move {
        let _ = stopped.changed().await;
    };
    let result = match acceptor {
        None => {
            axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                .with_graceful_shutdown(signal)
                .await
        }
        Some(acceptor) => {
            let tls = TlsListener::start(listener, acceptor, max_connections);
            axum::serve(tls, app.into_make_service_with_connect_info::<Peer>())
                .with_graceful_shutdown(signal)
                .await
        }
    };
    if let Err(e) = result {
        tracing::error!("HTTP server: {e}");
    }
}

/// The client address of a request (sign-in rate limits).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub(crate) SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(s: axum::serve::IncomingStream<'_, TlsListener>) -> Peer {
        Peer(*s.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(s: axum::serve::IncomingStream<'_, TcpListener>) -> Peer {
        Peer(*s.remote_addr())
    }
}

/// A listener that hands axum TLS streams; handshakes run in their own
/// tasks so a slow client cannot hold up others.
struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    addr: SocketAddr,
}

impl TlsListener {
    fn start(
        listener: TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
        max: usize,
    ) -> TlsListener {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let (tx, rx) = tokio::sync::mpsc::channel(max.max(1));
        tokio::spawn(async move {
            loop {
                let Ok((sock, peer)) = listener.accept().await else {
                    // Out of file descriptors and the like: do not spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                if tx.is_closed() {
                    break;
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let hs = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(sock),
                    )
                    .await;
                    if let Ok(Ok(stream)) = hs {
                        let _ = tx.send((stream, peer)).await;
                    }
                });
            }
        });
        TlsListener { rx, addr }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}
