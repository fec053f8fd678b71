//! The export airlock over HTTP: what the portal's researcher and checker
//! views use. Every endpoint needs a signed-in caller; the airlock itself
//! checks who may do what (requester, checkers of the project).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use pds_airlock::{Airlock, AirlockError, Decision, FileType, NewRequest, Source};
use pds_catalog::ExportRow;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, ApiJson, Caller, Failure, S, fail, gate_failure};

fn airlock_failure(e: AirlockError) -> Failure {
    let m = e.to_string();
    match e {
        AirlockError::Invalid(_) => fail(StatusCode::BAD_REQUEST, "invalid", m),
        AirlockError::Denied(_) => fail(StatusCode::FORBIDDEN, "refused", m),
        AirlockError::NotFound(_) => fail(StatusCode::NOT_FOUND, "not_found", m),
        AirlockError::Conflict(_) => fail(StatusCode::CONFLICT, "conflict", m),
        AirlockError::Checks(_) => fail(StatusCode::UNPROCESSABLE_ENTITY, "checks_failed", m),
        AirlockError::Gate(g) => gate_failure(g),
        _ => fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", m),
    }
}

fn airlock(s: &S) -> Result<Airlock<'_>, Failure> {
    let (storage, config) = s.airlock.as_ref().ok_or_else(|| {
        fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the export airlock is not configured on this server",
        )
    })?;
    Ok(Airlock {
        gate: &s.gate,
        storage,
        config,
    })
}

/// A new export request: `sql` (run now through the gate, as you) or a
/// file (`file_name` and `file_base64`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportRequestBody {
    /// Short name (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// The statement whose result should leave.
    #[serde(default)]
    pub sql: Option<String>,
    /// `csv` (default) or `parquet`, for `sql`.
    #[serde(default)]
    pub format: Option<String>,
    /// Name of an uploaded file (CSV, Parquet, PNG, SVG).
    #[serde(default)]
    pub file_name: Option<String>,
    /// Its content, base64.
    #[serde(default)]
    pub file_base64: Option<String>,
    /// For the reviewers: what it shows, on which population, for what.
    pub context: String,
    /// Disclosure controls applied.
    pub controls: String,
}

/// A review.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    /// `approve`, `request-changes` or `reject`.
    pub decision: String,
    /// Why (required unless approving).
    #[serde(default)]
    pub comment: String,
}

/// One review of a request.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReviewDoc {
    /// Checker.
    pub reviewer: String,
    /// Decision.
    pub decision: String,
    /// Comment.
    pub comment: String,
    /// When.
    pub created_at: String,
}

/// An export request.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportDoc {
    /// Id.
    pub id: String,
    /// Project.
    pub project: String,
    /// Who asked.
    pub requester: String,
    /// Name.
    pub name: String,
    /// `pending`, `changes-requested`, `rejected`, `released`, `withdrawn`.
    pub state: String,
    /// When.
    pub created_at: String,
    /// `query` or `file`.
    pub kind: String,
    /// The statement (queries).
    pub statement: Option<String>,
    /// Its snapshot (queries).
    pub snapshot: Option<i64>,
    /// File name.
    pub file_name: String,
    /// `csv`, `parquet`, `png`, `svg`.
    pub file_type: String,
    /// Size.
    pub file_bytes: i64,
    /// Rows (tables).
    pub file_rows: Option<i64>,
    /// SHA-256 of the file.
    pub sha256: String,
    /// Context given by the requester.
    pub context: String,
    /// Controls the requester applied.
    pub controls: String,
    /// The automatic checks' report.
    #[schema(value_type = Object)]
    pub checks: serde_json::Value,
    /// Reviews so far.
    pub reviews: Vec<ReviewDoc>,
    /// Release time.
    pub released_at: Option<String>,
    /// Downloads used.
    pub downloads: i64,
    /// Downloads allowed.
    pub max_downloads: i64,
}

async fn doc(s: &S, e: ExportRow) -> Result<ExportDoc, Failure> {
    let reviews = s
        .gate
        .catalog()
        .reviews(&e.id)
        .await
        .map_err(|x| fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", x.to_string()))?;
    Ok(ExportDoc {
        checks: serde_json::from_str(&e.checks).unwrap_or_default(),
        reviews: reviews
            .into_iter()
            .map(|r| ReviewDoc {
                reviewer: r.reviewer,
                decision: r.decision,
                comment: r.comment,
                created_at: r.created_at,
            })
            .collect(),
        id: e.id,
        project: e.project_id,
        requester: e.requester,
        name: e.name,
        state: e.state,
        created_at: e.created_at,
        kind: e.kind,
        statement: e.statement,
        snapshot: e.snapshot_id,
        file_name: e.file_name,
        file_type: e.file_type,
        file_bytes: e.file_bytes,
        file_rows: e.file_rows,
        sha256: e.sha256,
        context: e.context,
        controls: e.controls,
        released_at: e.released_at,
        downloads: e.downloads,
        max_downloads: e.max_downloads,
    })
}

/// Asks for a result to leave the project. The automatic checks run
/// first; a blocking finding answers 422 with the report and keeps nothing.
#[utoipa::path(post, path = "/api/v1/projects/{project}/exports", security(("bearer" = [])),
    request_body = ExportRequestBody,
    responses((status = 201, body = ExportDoc), (status = 422, body = ApiError), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 503, body = ApiError)))]
pub(crate) async fn create(
    State(s): State<S>,
    caller: Caller,
    Path(project): Path<String>,
    ApiJson(b): ApiJson<ExportRequestBody>,
) -> Result<Response, Failure> {
    s.authorize(&caller.principal, &project)
        .await
        .map_err(gate_failure)?;
    let bad = |m: &str| fail(StatusCode::BAD_REQUEST, "invalid", m);
    let source = match (b.sql, b.file_name, b.file_base64) {
        (Some(sql), None, None) => Source::Query {
            sql,
            format: match b.format.as_deref().unwrap_or("csv") {
                "csv" => FileType::Csv,
                "parquet" => FileType::Parquet,
                _ => return Err(bad("format: use csv or parquet")),
            },
        },
        (None, Some(name), Some(data)) => Source::File {
            name,
            bytes: base64::engine::general_purpose::STANDARD
                .decode(data.as_bytes())
                .map_err(|e| bad(&format!("file_base64 is not base64: {e}")))?,
        },
        _ => return Err(bad("send either sql, or file_name with file_base64")),
    };
    let e = airlock(&s)?
        .request(NewRequest {
            project,
            requester: caller.principal.name.clone(),
            name: b.name,
            source,
            context: b.context,
            controls: b.controls,
        })
        .await
        .map_err(airlock_failure)?;
    Ok((StatusCode::CREATED, Json(doc(&s, e).await?)).into_response())
}

/// Export requests the caller may see: their own, and those of the
/// projects they are a member of (checkers review them).
#[utoipa::path(get, path = "/api/v1/exports", security(("bearer" = [])),
    params(("project" = Option<String>, Query, description = "only this project")),
    responses((status = 200, body = Vec<ExportDoc>), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 503, body = ApiError)))]
pub(crate) async fn list(
    State(s): State<S>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<ExportDoc>>, Failure> {
    let a = airlock(&s)?;
    let rows = s
        .gate
        .catalog()
        .exports(q.get("project").map(String::as_str))
        .await
        .map_err(|x| fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", x.to_string()))?;
    let mut out = Vec::new();
    for e in rows {
        if a.may_see(&e, &caller.principal.name)
            .await
            .map_err(airlock_failure)?
        {
            out.push(doc(&s, e).await?);
        }
    }
    Ok(Json(out))
}

async fn visible(s: &S, caller: &Caller, id: &str) -> Result<ExportRow, Failure> {
    let a = airlock(s)?;
    let e = a.get(id).await.map_err(airlock_failure)?;
    // Someone outside the project learns nothing, not even that it exists.
    if !a
        .may_see(&e, &caller.principal.name)
        .await
        .map_err(airlock_failure)?
    {
        return Err(airlock_failure(AirlockError::NotFound(id.to_string())));
    }
    Ok(e)
}

/// One export request with its checks and reviews.
#[utoipa::path(get, path = "/api/v1/exports/{id}", security(("bearer" = [])),
    responses((status = 200, body = ExportDoc), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 503, body = ApiError)))]
pub(crate) async fn show(
    State(s): State<S>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ExportDoc>, Failure> {
    let e = visible(&s, &caller, &id).await?;
    Ok(Json(doc(&s, e).await?))
}

/// A checker's review. The requester cannot review; a checker reviews once;
/// two approvals release.
#[utoipa::path(post, path = "/api/v1/exports/{id}/reviews", security(("bearer" = [])),
    request_body = ReviewBody,
    responses((status = 200, body = ExportDoc), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 503, body = ApiError)))]
pub(crate) async fn review(
    State(s): State<S>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<ReviewBody>,
) -> Result<Json<ExportDoc>, Failure> {
    let e = visible(&s, &caller, &id).await?;
    s.authorize_role(&caller.principal, &e.project_id, "checker")
        .await
        .map_err(gate_failure)?;
    let decision = Decision::parse(&b.decision).map_err(airlock_failure)?;
    let e = airlock(&s)?
        .review(&id, &caller.principal.name, decision, &b.comment)
        .await
        .map_err(airlock_failure)?;
    Ok(Json(doc(&s, e).await?))
}

/// The requester withdraws their request.
#[utoipa::path(post, path = "/api/v1/exports/{id}/withdraw", security(("bearer" = [])),
    responses((status = 200, body = ExportDoc), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 503, body = ApiError)))]
pub(crate) async fn withdraw(
    State(s): State<S>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ExportDoc>, Failure> {
    visible(&s, &caller, &id).await?;
    let e = airlock(&s)?
        .withdraw(&id, &caller.principal.name)
        .await
        .map_err(airlock_failure)?;
    Ok(Json(doc(&s, e).await?))
}

/// A signed download link.
#[derive(Debug, Serialize, ToSchema)]
pub struct LinkDoc {
    /// Path to GET (with the same bearer token).
    pub url: String,
    /// Unix time it stops working.
    pub expires: i64,
}

/// A signed, expiring link to a released file (its requester only).
#[utoipa::path(post, path = "/api/v1/exports/{id}/link", security(("bearer" = [])),
    responses((status = 200, body = LinkDoc), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 503, body = ApiError)))]
pub(crate) async fn link(
    State(s): State<S>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<LinkDoc>, Failure> {
    let e = visible(&s, &caller, &id).await?;
    s.authorize(&caller.principal, &e.project_id)
        .await
        .map_err(gate_failure)?;
    let l = airlock(&s)?
        .link(&id, &caller.principal.name)
        .await
        .map_err(airlock_failure)?;
    Ok(Json(LinkDoc {
        url: format!(
            "/api/v1/exports/{}/download?expires={}&signature={}",
            l.id, l.expires, l.signature
        ),
        expires: l.expires,
    }))
}

/// Downloads a released file through its signed link; counted, audited
/// with the file's SHA-256 (also sent as `x-pds-sha256`).
#[utoipa::path(get, path = "/api/v1/exports/{id}/download", security(("bearer" = [])),
    params(("expires" = i64, Query, description = "from the link"), ("signature" = String, Query, description = "from the link")),
    responses((status = 200, description = "the file"), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 503, body = ApiError)))]
pub(crate) async fn download(
    State(s): State<S>,
    caller: Caller,
    Path(id): Path<String>,
    // A map of text, so that any malformed query gets this API's error.
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Failure> {
    let expires = q.get("expires").and_then(|e| e.parse::<i64>().ok());
    let (Some(expires), Some(signature)) = (expires, q.get("signature").cloned()) else {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "invalid",
            "a download needs the expires and signature of a link (POST /api/v1/exports/{id}/link)",
        ));
    };
    let e = visible(&s, &caller, &id).await?;
    s.authorize(&caller.principal, &e.project_id)
        .await
        .map_err(gate_failure)?;
    let (e, bytes) = airlock(&s)?
        .download(&id, &caller.principal.name, expires, &signature)
        .await
        .map_err(airlock_failure)?;
    let media = match e.file_type.as_str() {
        "csv" => FileType::Csv,
        "parquet" => FileType::Parquet,
        "png" => FileType::Png,
        _ => FileType::Svg,
    }
    .media_type();
    Ok((
        [
            (header::CONTENT_TYPE, media.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}\"", e.file_name.replace('"', "")),
            ),
            (HeaderName::from_static("x-pds-sha256"), e.sha256.clone()),
            // A figure is data to save, never a page to run.
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; sandbox".to_string(),
            ),
        ],
        bytes,
    )
        .into_response())
}
