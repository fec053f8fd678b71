//! Sign-in endpoints: password + TOTP, enrolment, refresh, logout, the
//! OIDC browser login, and the administrator's identity actions.
//!
//! A person with a local account signs in with `POST /api/v1/login`
//! (`user`, `password`, `totp` or `recovery_code`). Until they have
//! enrolled an authenticator, a correct password yields an enrolment token
//! that opens `/api/v1/mfa/enrol` and `/api/v1/mfa/confirm` only. A person
//! with a health-professional identity goes to
//! `/api/v1/oidc/{provider}/login`, which sends the browser to the identity
//! provider; its callback opens a PDS session.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pds_accounts::{LoginOutcome, Scope, SecondFactor, Tokens};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, ApiJson, Caller, Failure, S, account_failure, bearer, fail};

/// Credentials of a person with a local account.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    /// Account name.
    pub user: String,
    /// Password.
    pub password: String,
    /// The 6-digit code of the authenticator app.
    #[serde(default)]
    pub totp: Option<String>,
    /// A recovery code (when the phone is lost); each works once.
    #[serde(default)]
    pub recovery_code: Option<String>,
}

/// A session's tokens.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionTokens {
    /// Send it as `Authorization: Bearer <token>`; it is also the password
    /// on the PostgreSQL protocol and Flight SQL.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Access token expiry, RFC 3339 UTC.
    pub expires_at: String,
    /// Exchange it at `/api/v1/token/refresh` before `expires_at`; it works once.
    pub refresh_token: String,
    /// The session ends then at the latest.
    pub session_expires_at: String,
}

fn session_tokens(t: Tokens) -> SessionTokens {
    SessionTokens {
        access_token: t.access_token,
        token_type: "Bearer".into(),
        expires_at: t.access_expires_at,
        refresh_token: t.refresh_token,
        session_expires_at: t.session_expires_at,
    }
}

/// The answer to a correct password.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    /// `signed_in`, or `enrolment_required` (no second factor yet).
    pub status: String,
    /// The session (when signed in).
    pub session: Option<SessionTokens>,
    /// Opens `/api/v1/mfa/enrol` and `/api/v1/mfa/confirm` only (when
    /// enrolment is required).
    pub enrolment_token: Option<String>,
    /// Expiry of the enrolment token.
    pub enrolment_expires_at: Option<String>,
}

fn too_many(wait: u64, msg: String) -> Response {
    let mut r = fail(StatusCode::TOO_MANY_REQUESTS, "limit", msg).into_response();
    if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// The refusal when `peer` has made too many sign-in attempts.
fn limited(s: &S, peer: SocketAddr) -> Option<Response> {
    s.attempts.attempt(peer.ip()).err().map(|wait| {
        too_many(
            wait,
            format!("too many sign-in attempts from this address: try again in {wait} s"),
        )
    })
}

/// Signs in with a password and a second factor.
#[utoipa::path(post, path = "/api/v1/login", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 400, body = ApiError),
        (status = 401, body = ApiError, description = "`unauthenticated`, or `mfa_required` when the second factor is missing"),
        (status = 429, body = ApiError, description = "locked after repeated failures, or too many attempts from this address")))]
pub(super) async fn login(
    State(s): State<S>,
    ConnectInfo(super::Peer(peer)): ConnectInfo<super::Peer>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<LoginResponse>, Response> {
    if let Some(r) = limited(&s, peer) {
        return Err(r);
    }
    let second = match (&req.totp, &req.recovery_code) {
        (Some(_), Some(_)) => {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "invalid",
                "send either `totp` or `recovery_code`, not both",
            )
            .into_response());
        }
        (Some(t), None) => SecondFactor::Totp(t),
        (None, Some(r)) => SecondFactor::Recovery(r),
        (None, None) => SecondFactor::None,
    };
    let outcome = s
        .accounts()
        .login(
            s.gate.keys(),
            &s.policy,
            &req.user,
            &req.password,
            second,
            "http",
        )
        .await;
    match outcome {
        Ok(LoginOutcome::Signed(t)) => Ok(Json(LoginResponse {
            status: "signed_in".into(),
            session: Some(session_tokens(t)),
            enrolment_token: None,
            enrolment_expires_at: None,
        })),
        Ok(LoginOutcome::EnrolmentRequired { token, expires_at }) => Ok(Json(LoginResponse {
            status: "enrolment_required".into(),
            session: None,
            enrolment_token: Some(token),
            enrolment_expires_at: Some(expires_at),
        })),
        Err(pds_accounts::AccountError::Locked(wait)) => {
            s.metrics.login_failed("http");
            Err(too_many(
                wait,
                format!("too many failed sign-ins: try again in {wait} s"),
            ))
        }
        Err(e) => {
            s.metrics.login_failed("http");
            Err(account_failure(e).into_response())
        }
    }
}

/// A request to renew a session's tokens.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshRequest {
    /// The session's current refresh token.
    pub refresh_token: String,
}

/// Renews a session's tokens; the refresh token works once.
#[utoipa::path(post, path = "/api/v1/token/refresh", request_body = RefreshRequest,
    responses((status = 200, body = SessionTokens), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub(super) async fn refresh(
    State(s): State<S>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> Result<Json<SessionTokens>, Failure> {
    s.accounts()
        .refresh(&s.policy, req.refresh_token.trim())
        .await
        .map(|t| Json(session_tokens(t)))
        .map_err(account_failure)
}

/// The end of a session.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogoutResponse {
    /// Always true.
    pub logged_out: bool,
    /// For identity-provider sessions: where to send the browser to end
    /// the provider's session too.
    pub end_session_url: Option<String>,
}

/// Ends the caller's session: every token of it stops working, and an
/// identity provider's session or token used here is refused from now on.
#[utoipa::path(post, path = "/api/v1/logout", security(("bearer" = [])),
    responses((status = 200, body = LogoutResponse), (status = 401, body = ApiError)))]
pub(super) async fn logout(
    State(s): State<S>,
    caller: Caller,
) -> Result<Json<LogoutResponse>, Failure> {
    let cat = s.gate.catalog();
    let now = chrono::Utc::now();
    let at = now.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let internal = |e: pds_catalog::CatalogError| {
        fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    };
    let mut end_session_url = None;
    // An identity provider's own token: refuse its session and itself here.
    if let Some(idp) = &caller.principal.idp {
        let until = chrono::DateTime::from_timestamp(idp.exp, 0)
            .unwrap_or(now)
            .max(now)
            + chrono::Duration::days(1);
        let until = until.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        for (kind, v) in idp.revocation_keys() {
            cat.revoke_idp(&idp.provider, kind, v, &at, &until)
                .await
                .map_err(internal)?;
        }
        let _ = s
            .gate
            .audit()
            .append(pds_audit::Record {
                principal: caller.name.clone(),
                action: "logout".into(),
                decision: "done".into(),
                details: Some(serde_json::json!({"idp": idp.provider, "sid": idp.sid.is_some(), "jti": idp.jti.is_some()})),
                ..Default::default()
            })
            .await;
        if let Some(p) = s.federation.get(&idp.provider) {
            end_session_url = p.end_session_url(None, None).await.ok().flatten();
        }
    } else {
        let session = s
            .accounts()
            .logout(&caller.name, &caller.token)
            .await
            .map_err(account_failure)?;
        if let Some(sess) = session
            && let (Some(idp), Some(sid)) = (&sess.idp, &sess.idp_sid)
        {
            cat.revoke_idp(idp, "sid", sid, &at, &sess.expires_at)
                .await
                .map_err(internal)?;
            if let Some(p) = s.federation.get(idp) {
                end_session_url = p.end_session_url(None, None).await.ok().flatten();
            }
        }
    }
    Ok(Json(LogoutResponse {
        logged_out: true,
        end_session_url,
    }))
}

/// The enrolment token of the request.
async fn enrolling(s: &S, headers: &HeaderMap) -> Result<String, Failure> {
    let token = bearer(headers).ok_or_else(|| {
        fail(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "send the enrolment token from /api/v1/login as Authorization: Bearer <token>",
        )
    })?;
    s.accounts().enrolment_account(&token).await.map_err(|_| {
        fail(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "invalid or expired enrolment token: sign in again with your password",
        )
    })
}

/// What to add to an authenticator app.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Enrolment {
    /// The `otpauth://` URI (what the QR code holds).
    pub otpauth_uri: String,
    /// The secret in base32, to type in by hand.
    pub secret: String,
    /// The QR code, as a `data:image/svg+xml` URL.
    pub qr_svg: String,
    /// Digits per code.
    pub digits: u8,
    /// Seconds per code.
    pub period: u64,
}

/// Starts enrolling a TOTP authenticator (enrolment token).
#[utoipa::path(post, path = "/api/v1/mfa/enrol", security(("bearer" = [])),
    responses((status = 200, body = Enrolment), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub(super) async fn mfa_enrol(
    State(s): State<S>,
    headers: HeaderMap,
) -> Result<Json<Enrolment>, Failure> {
    let name = enrolling(&s, &headers).await?;
    let e = s
        .accounts()
        .begin_enrolment(s.gate.keys(), &s.policy, &name, &name)
        .await
        .map_err(account_failure)?;
    Ok(Json(Enrolment {
        otpauth_uri: e.otpauth_uri,
        secret: e.secret_base32,
        qr_svg: pds_accounts::mfa::svg_data_url(&e.qr_svg),
        digits: pds_accounts::mfa::DIGITS,
        period: pds_accounts::mfa::STEP_SECS,
    }))
}

/// The first code from the authenticator.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ConfirmRequest {
    /// The 6-digit code shown now.
    pub code: String,
}

/// Enrolment done.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConfirmResponse {
    /// Keep these somewhere safe: each signs in once without the phone.
    /// They are shown only now.
    pub recovery_codes: Vec<String>,
    /// The session that starts now.
    pub session: SessionTokens,
}

/// Confirms the authenticator with its first code (enrolment token); returns
/// recovery codes and opens a session.
#[utoipa::path(post, path = "/api/v1/mfa/confirm", security(("bearer" = [])), request_body = ConfirmRequest,
    responses((status = 200, body = ConfirmResponse), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub(super) async fn mfa_confirm(
    State(s): State<S>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ConfirmRequest>,
) -> Result<Json<ConfirmResponse>, Failure> {
    let name = enrolling(&s, &headers).await?;
    let accounts = s.accounts();
    let codes = accounts
        .confirm_enrolment(s.gate.keys(), &s.policy, &name, &name, &req.code)
        .await
        .map_err(account_failure)?;
    if let Some(t) = bearer(&headers) {
        accounts.logout(&name, &t).await.map_err(account_failure)?;
    }
    let tokens = accounts
        .start_session(&name, "password+totp", None, &s.policy, "http")
        .await
        .map_err(account_failure)?;
    Ok(Json(ConfirmResponse {
        recovery_codes: codes,
        session: session_tokens(tokens),
    }))
}

/// The identity providers this server accepts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Providers {
    /// Names, for `/api/v1/oidc/{provider}/login`.
    pub providers: Vec<String>,
}

/// Lists the identity providers (the portal offers one button each).
#[utoipa::path(get, path = "/api/v1/oidc/providers", responses((status = 200, body = Providers)))]
pub(super) async fn oidc_providers(State(s): State<S>) -> Json<Providers> {
    Json(Providers {
        providers: s
            .federation
            .providers()
            .iter()
            .map(|p| p.name().to_string())
            .collect(),
    })
}

fn provider(s: &S, name: &str) -> Result<std::sync::Arc<pds_oidc::Provider>, Failure> {
    s.federation.get(name).cloned().ok_or_else(|| {
        fail(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no identity provider `{name}`; /api/v1/oidc/providers lists them"),
        )
    })
}

fn oidc_failure(e: pds_oidc::OidcError) -> Failure {
    match e {
        pds_oidc::OidcError::Refused(_) => fail(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "the identity provider's answer was refused",
        ),
        e => fail(StatusCode::BAD_GATEWAY, "unavailable", e.to_string()),
    }
}

/// Starts a browser login with an identity provider: redirects to it.
#[utoipa::path(get, path = "/api/v1/oidc/{provider}/login",
    params(("provider" = String, Path, description = "Identity provider")),
    responses((status = 303, description = "to the identity provider"), (status = 404, body = ApiError), (status = 502, body = ApiError)))]
pub(super) async fn oidc_login(
    State(s): State<S>,
    ConnectInfo(super::Peer(peer)): ConnectInfo<super::Peer>,
    Path(name): Path<String>,
) -> Result<Response, Response> {
    if let Some(r) = limited(&s, peer) {
        return Err(r);
    }
    let p = provider(&s, &name).map_err(IntoResponse::into_response)?;
    let a = p
        .authorization()
        .await
        .map_err(|e| oidc_failure(e).into_response())?;
    // Ties the login to this browser: the callback must bring the cookie
    // back, so a leaked callback address opens nothing elsewhere.
    let browser = crate::random_token(32).map_err(|e| {
        fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()).into_response()
    })?;
    let now = chrono::Utc::now();
    let fmt = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    s.gate
        .catalog()
        .insert_pending_login(&pds_catalog::PendingLogin {
            state_sha256: pds_accounts::token_digest(&a.state),
            provider: name,
            nonce: a.nonce,
            pkce_verifier: a.pkce_verifier,
            browser_sha256: pds_accounts::token_digest(&browser),
            created_at: fmt(now),
            expires_at: fmt(now + chrono::Duration::seconds(p.config().state_ttl_secs as i64)),
        })
        .await
        .map_err(|e| {
            fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()).into_response()
        })?;
    let mut r = StatusCode::SEE_OTHER.into_response();
    let loc = HeaderValue::from_str(&a.url).map_err(|_| {
        fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "authorization URL is not a header value",
        )
        .into_response()
    })?;
    r.headers_mut().insert(header::LOCATION, loc);
    let cookie = format!(
        "{LOGIN_COOKIE}={browser}; Path=/api/v1/oidc/; Max-Age={}; HttpOnly; SameSite=Lax{}",
        p.config().state_ttl_secs,
        if s.tls { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// The cookie tying a browser login to the browser that started it.
const LOGIN_COOKIE: &str = "pds_oidc_login";

fn login_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == LOGIN_COOKIE)
        .map(|(_, v)| v.to_string())
}

/// What the identity provider sends back.
#[derive(Debug, Deserialize)]
pub(super) struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

async fn refuse_login(s: &S, provider: &str, reason: &str) {
    s.metrics.login_failed("http");
    let _ = s
        .gate
        .audit()
        .append(pds_audit::Record {
            principal: "?".into(),
            action: "login".into(),
            decision: "refused".into(),
            reason: Some(reason.to_string()),
            details: Some(serde_json::json!({"channel": "http", "idp": provider})),
            ..Default::default()
        })
        .await;
}

/// Audits a refused browser login and answers the provider's error.
async fn refused<T>(
    s: &S,
    provider: &str,
    r: Result<T, pds_oidc::OidcError>,
) -> Result<T, Failure> {
    match r {
        Ok(v) => Ok(v),
        Err(e) => {
            refuse_login(s, provider, &e.to_string()).await;
            Err(oidc_failure(e))
        }
    }
}

/// The identity provider's callback: checks `state`, exchanges the code
/// (PKCE), validates the ID token (signature, issuer, audience, expiry,
/// nonce, acr), and opens a PDS session.
#[utoipa::path(get, path = "/api/v1/oidc/{provider}/callback",
    params(("provider" = String, Path, description = "Identity provider"),
        ("code" = Option<String>, Query, description = "Authorization code"),
        ("state" = Option<String>, Query, description = "The login's state"),
        ("error" = Option<String>, Query, description = "The provider's error")),
    responses((status = 200, body = SessionTokens), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError), (status = 502, body = ApiError)))]
pub(super) async fn oidc_callback(
    State(s): State<S>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(cb): Query<Callback>,
) -> Result<Json<SessionTokens>, Failure> {
    let p = provider(&s, &name)?;
    if let Some(err) = &cb.error {
        refuse_login(&s, &name, &format!("identity provider error: {err}")).await;
        return Err(fail(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            format!("the identity provider did not sign you in ({err})"),
        ));
    }
    let (Some(code), Some(state)) = (&cb.code, &cb.state) else {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the callback needs `code` and `state`",
        ));
    };
    let pending = s
        .gate
        .catalog()
        .take_pending_login(&pds_accounts::token_digest(state))
        .await
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let Some(pending) = pending.filter(|p| p.provider == name && p.expires_at > now) else {
        refuse_login(&s, &name, "unknown, used or expired state").await;
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "invalid",
            "this login is unknown, already used or expired: start again from /api/v1/oidc/{provider}/login",
        ));
    };
    let browser = login_cookie(&headers).map(|c| pds_accounts::token_digest(&c));
    if browser.as_deref() != Some(pending.browser_sha256.as_str()) {
        refuse_login(&s, &name, "callback from another browser than the login").await;
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "invalid",
            "this login was started in another browser (or its cookie is missing): start again from /api/v1/oidc/{provider}/login",
        ));
    }
    let tokens = refused(&s, &name, p.exchange(code, &pending.pkce_verifier).await).await?;
    let Some(id_token) = &tokens.id_token else {
        refuse_login(&s, &name, "no ID token").await;
        return Err(fail(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "the identity provider sent no ID token",
        ));
    };
    let validated = refused(
        &s,
        &name,
        p.validate_id_token(id_token, &pending.nonce).await,
    )
    .await?;
    let mut claims = validated.claims;
    let sub = claims
        .get("sub")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string();
    let extra = refused(&s, &name, p.userinfo(&tokens.access_token, &sub).await).await?;
    for (k, v) in extra {
        claims.entry(k).or_insert(v);
    }
    let id = refused(&s, &name, p.identity(&claims)).await?;
    let accounts = s.accounts();
    let account = accounts
        .provision_federated(&id.principal, &name)
        .await
        .map_err(account_failure)?;
    if account.disabled {
        refuse_login(&s, &name, "account disabled").await;
        return Err(fail(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "invalid credentials",
        ));
    }
    let t = accounts
        .start_session(
            &account.name,
            "oidc",
            Some(&pds_accounts::Federated {
                provider: &name,
                acr: id.acr.as_deref(),
                sid: id.sid.as_deref(),
                eligible_roles: id.eligible_roles.as_deref(),
            }),
            &s.policy,
            "http",
        )
        .await
        .map_err(account_failure)?;
    Ok(Json(session_tokens(t)))
}

/// Removes an account's second factor and ends its sessions (admin).
#[utoipa::path(post, path = "/api/v1/admin/users/{name}/reset-mfa", security(("bearer" = [])),
    params(("name" = String, Path, description = "Account")),
    responses((status = 204), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(super) async fn admin_reset_mfa(
    State(s): State<S>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, Failure> {
    caller.require_admin()?;
    s.accounts()
        .reset_mfa(&caller.name, &name)
        .await
        .map_err(account_failure)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lifts a lock after failed sign-ins (admin).
#[utoipa::path(post, path = "/api/v1/admin/users/{name}/unlock", security(("bearer" = [])),
    params(("name" = String, Path, description = "Account")),
    responses((status = 204), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(super) async fn admin_unlock(
    State(s): State<S>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, Failure> {
    caller.require_admin()?;
    s.accounts()
        .unlock(&caller.name, &name)
        .await
        .map_err(account_failure)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A service token to issue.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ServiceTokenRequest {
    /// The only project it opens.
    pub project: String,
    /// The role it carries (the account's role in that project).
    pub role: String,
    /// Days until it expires.
    #[serde(deserialize_with = "super::integer", default)]
    pub days: Option<i64>,
}

/// A new service token, shown once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServiceToken {
    /// The token: store it in the program's secret store now.
    pub token: String,
    /// Expiry, RFC 3339 UTC.
    pub expires_at: String,
}

/// Issues a scoped API token to a service account (admin).
#[utoipa::path(post, path = "/api/v1/admin/users/{name}/tokens", security(("bearer" = [])), request_body = ServiceTokenRequest,
    params(("name" = String, Path, description = "Service account")),
    responses((status = 201, body = ServiceToken), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(super) async fn admin_service_token(
    State(s): State<S>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ServiceTokenRequest>,
) -> Result<(StatusCode, Json<ServiceToken>), Failure> {
    caller.require_admin()?;
    let days = req.days.unwrap_or(90);
    if !(1..=36_600).contains(&days) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "invalid",
            "days must be between 1 and the configured maximum",
        ));
    }
    let (token, expires_at) = s
        .accounts()
        .issue_service_token(
            &caller.name,
            &s.policy,
            &name,
            &Scope {
                project: req.project,
                role: req.role,
            },
            chrono::Duration::days(days),
        )
        .await
        .map_err(account_failure)?;
    Ok((
        StatusCode::CREATED,
        Json(ServiceToken { token, expires_at }),
    ))
}
