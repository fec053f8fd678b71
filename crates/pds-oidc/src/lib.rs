//! OpenID Connect federation for PDS: who an identity provider says a
//! person is, checked without trusting anything it should not.
//!
//! One [`Provider`] per configured issuer (Pro Santé Connect, a hospital's
//! Keycloak, an HospiConnect identity provider...). It learns its endpoints
//! by discovery, from a non-standard discovery address (PSC's
//! `wallet-openid-configuration`), or from explicit endpoints, and then:
//!
//! - runs the browser login (authorization code flow with PKCE S256,
//!   random `state` and `nonce`, [`Provider::authorization`] and
//!   [`Provider::exchange`]);
//! - validates tokens ([`Provider::validate`]): the signature with a key of
//!   the provider's JWKS (cached, fetched again when an unknown `kid` shows
//!   up, at most once per `jwks_min_refresh`), an algorithm allow-list
//!   (RS256, ES256, PS256; never `none`, never an HMAC keyed with a public
//!   key), `iss`, `aud`, `exp`, `nbf`, `iat` with a bounded clock skew, the
//!   `nonce` of a browser login, and a required `acr` level;
//! - maps claims to a PDS principal and the project roles it may hold
//!   ([`Provider::identity`]), from configuration, never from code.
//!
//! What this crate does not do: remember revoked sessions (the caller keeps
//! them in the catalogue) or decide project access (the gate does).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Errors of federation.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The configuration is unusable (what and how to fix).
    #[error("identity provider `{provider}`: {message}")]
    Config {
        /// Provider name.
        provider: String,
        /// What is wrong.
        message: String,
    },
    /// A token or response was refused (why, for the audit log; clients
    /// get a generic message).
    #[error("{0}")]
    Refused(String),
    /// The provider could not be reached or answered garbage.
    #[error("identity provider `{provider}` unavailable: {message}")]
    Unavailable {
        /// Provider name.
        provider: String,
        /// What happened.
        message: String,
    },
}

fn refused(m: impl Into<String>) -> OidcError {
    OidcError::Refused(m.into())
}

/// Signature algorithms PDS accepts at most. A provider may narrow them.
pub const ALLOWED_ALGORITHMS: &[&str] = &["RS256", "ES256", "PS256"];

/// Endpoints given explicitly (for providers whose discovery is missing
/// or not trusted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoints {
    /// Where the browser is sent.
    pub authorization_endpoint: String,
    /// Where codes are exchanged.
    pub token_endpoint: String,
    /// The signing keys.
    pub jwks_uri: String,
    /// Claims about the person (optional).
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    /// RP-initiated logout (optional).
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
}

/// A rule giving project roles to people whose claims match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRule {
    /// Claim path: dots between names, `[]` to look into every element of
    /// an array (`SubjectRefPro.exercices[].codeProfession`).
    pub claim: String,
    /// Values that match (compared as strings).
    pub any_of: Vec<String>,
    /// Roles given when one matches.
    pub roles: Vec<String>,
}

/// One identity provider, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Short name (`psc`): in URLs, the audit log and federated account names.
    pub name: String,
    /// `pro-sante-connect` fills in PSC's scopes, acr, claims and
    /// discovery address; `generic` (default) leaves them to you.
    #[serde(default)]
    pub profile: Option<String>,
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// Discovery document address, when not `<issuer>/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery_url: Option<String>,
    /// Explicit endpoints instead of discovery.
    #[serde(default)]
    pub endpoints: Option<Endpoints>,
    /// Client id registered with the provider.
    pub client_id: String,
    /// Client secret (confidential clients); set it through
    /// `client_secret_env` in `config.toml`, never in the file itself.
    #[serde(skip)]
    pub client_secret: Option<String>,
    /// Environment variable holding the client secret.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// The PDS callback registered with the provider.
    pub redirect_uri: String,
    /// Scopes asked for.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `acr_values` sent with the authorization request.
    #[serde(default)]
    pub acr_values: Option<String>,
    /// `acr` values accepted in tokens; empty accepts a missing `acr`.
    #[serde(default)]
    pub accepted_acr: Vec<String>,
    /// Audiences accepted in access tokens presented to PDS directly
    /// (ID tokens must name `client_id`).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accepted signature algorithms (subset of RS256, ES256, PS256).
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "default_skew")]
    pub clock_skew_secs: u64,
    /// The claim naming the person (PSC: `SubjectNameID`).
    #[serde(default)]
    pub principal_claim: Option<String>,
    /// Prefix of the PDS account name (`psc-` + the national identifier).
    #[serde(default)]
    pub principal_prefix: Option<String>,
    /// Role rules; without any, people may hold any role their project
    /// membership gives.
    #[serde(default)]
    pub roles: Vec<RoleRule>,
    /// Roles everyone signed in by this provider may hold (with rules).
    #[serde(default)]
    pub default_roles: Vec<String>,
    /// Minimum seconds between two JWKS fetches caused by unknown `kid`s.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_min_refresh_secs: u64,
    /// How long a browser login may take, in seconds.
    #[serde(default = "default_state_ttl")]
    pub state_ttl_secs: u64,
}

fn default_skew() -> u64 {
    60
}
fn default_jwks_refresh() -> u64 {
    10
}
fn default_state_ttl() -> u64 {
    300
}

/// Pro Santé Connect's profile name.
pub const PSC_PROFILE: &str = "pro-sante-connect";

impl ProviderConfig {
    /// Fills in profile defaults and checks the configuration.
    pub fn resolve(mut self) -> Result<ProviderConfig, OidcError> {
        let cfg_err = |m: String| OidcError::Config {
            provider: self.name.clone(),
            message: m,
        };
        match self.profile.as_deref() {
            None | Some("generic") => {}
            Some(PSC_PROFILE) => {
                if self.scopes.is_empty() {
                    self.scopes = vec!["openid".into(), "scope_all".into()];
                }
                if self.acr_values.is_none() {
                    self.acr_values = Some("eidas1".into());
                }
                if self.accepted_acr.is_empty() {
                    self.accepted_acr = vec!["eidas1".into(), "eidas2".into(), "eidas3".into()];
                }
                if self.principal_claim.is_none() {
                    self.principal_claim = Some("SubjectNameID".into());
                }
                if self.principal_prefix.is_none() {
                    self.principal_prefix = Some("psc-".into());
                }
                if self.discovery_url.is_none() && self.endpoints.is_none() {
                    self.discovery_url = Some(format!(
                        "{}/.well-known/wallet-openid-configuration",
                        self.issuer.trim_end_matches('/')
                    ));
                }
            }
            Some(other) => {
                return Err(cfg_err(format!(
                    "unknown profile {other:?}: use `generic` or `{PSC_PROFILE}`"
                )));
            }
        }
        if self.scopes.is_empty() {
            self.scopes = vec!["openid".into()];
        }
        if !self.scopes.iter().any(|s| s == "openid") {
            return Err(cfg_err("`scopes` must include `openid`".into()));
        }
        if self.algorithms.is_empty() {
            self.algorithms = ALLOWED_ALGORITHMS.iter().map(|s| s.to_string()).collect();
        }
        if let Some(a) = self
            .algorithms
            .iter()
            .find(|a| !ALLOWED_ALGORITHMS.contains(&a.as_str()))
        {
            return Err(cfg_err(format!(
                "algorithm {a:?} is not allowed: use a subset of {ALLOWED_ALGORITHMS:?}"
            )));
        }
        if self.audiences.is_empty() {
            self.audiences = vec![self.client_id.clone()];
        }
        if self.clock_skew_secs > 300 {
            return Err(cfg_err(
                "`clock_skew_secs` above 300 would accept long-expired tokens".into(),
            ));
        }
        if !(30..=900).contains(&self.state_ttl_secs) {
            return Err(cfg_err(
                "`state_ttl_secs` must be between 30 and 900".into(),
            ));
        }
        if self.accepted_acr.is_empty() {
            return Err(cfg_err(
                "`accepted_acr` is empty: list the acr values that prove a multi-factor sign-in at this provider (PSC: eidas1); without them any sign-in level would be accepted".into(),
            ));
        }
        let prefix = self.principal_prefix.clone().unwrap_or_default();
        if prefix.is_empty() {
            return Err(cfg_err(
                "`principal_prefix` is empty: give each provider its own prefix (\"psc-\", \"chu-lyon-\"), so that two providers can never name the same account".into(),
            ));
        }
        if !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c))
        {
            return Err(cfg_err(format!(
                "`principal_prefix` {prefix:?} may only hold letters, digits, '.', '_', '@' or '-'"
            )));
        }
        for u in [
            Some(&self.issuer),
            Some(&self.redirect_uri),
            self.discovery_url.as_ref(),
        ]
        .into_iter()
        .flatten()
        .chain(
            self.endpoints
                .iter()
                .flat_map(|e| [&e.authorization_endpoint, &e.token_endpoint, &e.jwks_uri]),
        ) {
            check_url(u).map_err(&cfg_err)?;
        }
        Ok(self)
    }
}

/// HTTPS only, except plain HTTP on the loopback interface (tests, a
/// provider on the same host).
fn check_url(u: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(u).map_err(|e| format!("{u:?} is not a URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http"
            if matches!(
                url.host_str(),
                Some("127.0.0.1") | Some("localhost") | Some("[::1]")
            ) =>
        {
            Ok(url)
        }
        _ => Err(format!(
            "{u:?}: identity provider addresses must use https (plain http is allowed on 127.0.0.1 only)"
        )),
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    end_session_endpoint: Option<String>,
}

/// How long a fetched key set is trusted without fetching it again.
const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);

struct KeyCache {
    keys: Vec<Jwk>,
    fetched: Option<Instant>,
}

/// What a browser login needs to keep until its callback.
#[derive(Debug, Clone)]
pub struct Authorization {
    /// Where to send the browser.
    pub url: String,
    /// The `state` (compare on callback).
    pub state: String,
    /// The `nonce` the ID token must carry.
    pub nonce: String,
    /// The PKCE verifier (sent with the code).
    pub pkce_verifier: String,
}

/// Tokens from the token endpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenResponse {
    /// The ID token.
    pub id_token: Option<String>,
    /// The access token.
    pub access_token: String,
}

/// What a token says, once validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// All claims.
    pub claims: Map<String, Value>,
}

/// A person as PDS sees them after federation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// PDS account name (`psc-810001234567`).
    pub principal: String,
    /// Assurance level.
    pub acr: Option<String>,
    /// The provider's session id, if it gives one.
    pub sid: Option<String>,
    /// Token id, if any.
    pub jti: Option<String>,
    /// Token expiry (seconds since the epoch).
    pub exp: i64,
    /// Project roles the claims allow (`None`: any).
    pub eligible_roles: Option<Vec<String>>,
}

/// One configured identity provider.
pub struct Provider {
    cfg: ProviderConfig,
    http: reqwest::Client,
    endpoints: tokio::sync::OnceCell<Endpoints>,
    keys: tokio::sync::Mutex<KeyCache>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.cfg.name)
            .field("issuer", &self.cfg.issuer)
            .finish_non_exhaustive()
    }
}

fn random_b64(n: usize) -> Result<String, OidcError> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| refused(format!("no randomness: {e}")))?;
    Ok(B64URL.encode(b))
}

/// Looks up a claim path (`a.b[].c`) and returns every string or number
/// found there, as strings.
pub fn claim_values(claims: &Map<String, Value>, path: &str) -> Vec<String> {
    let mut current: Vec<&Value> = Vec::new();
    let mut parts = path.split('.');
    let Some(first) = parts.next() else {
        return Vec::new();
    };
    let (name, each) = match first.strip_suffix("[]") {
        Some(n) => (n, true),
        None => (first, false),
    };
    if let Some(v) = claims.get(name) {
        push(&mut current, v, each);
    }
    for part in parts {
        let (name, each) = match part.strip_suffix("[]") {
            Some(n) => (n, true),
            None => (part, false),
        };
        let mut next = Vec::new();
        for v in current {
            if let Some(x) = v.get(name) {
                push(&mut next, x, each);
            }
        }
        current = next;
    }
    current
        .into_iter()
        .filter_map(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .collect()
}

fn push<'a>(out: &mut Vec<&'a Value>, v: &'a Value, each: bool) {
    match (each, v) {
        (true, Value::Array(a)) => out.extend(a.iter()),
        (true, _) => {}
        (false, v) => out.push(v),
    }
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Provider {
    /// A provider from a resolved configuration (see [`ProviderConfig::resolve`]).
    pub fn new(cfg: ProviderConfig) -> Result<Provider, OidcError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| OidcError::Config {
                provider: cfg.name.clone(),
                message: format!("HTTP client: {e}"),
            })?;
        let endpoints = tokio::sync::OnceCell::new();
        if let Some(e) = &cfg.endpoints {
            let _ = endpoints.set(e.clone());
        }
        Ok(Provider {
            cfg,
            http,
            endpoints,
            keys: tokio::sync::Mutex::new(KeyCache {
                keys: Vec::new(),
                fetched: None,
            }),
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &ProviderConfig {
        &self.cfg
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    fn unavailable(&self, m: impl std::fmt::Display) -> OidcError {
        OidcError::Unavailable {
            provider: self.cfg.name.clone(),
            message: m.to_string(),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, OidcError> {
        let r = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| self.unavailable(format!("GET {url}: {e}")))?;
        if !r.status().is_success() {
            return Err(self.unavailable(format!("GET {url}: HTTP {}", r.status())));
        }
        r.json()
            .await
            .map_err(|e| self.unavailable(format!("GET {url}: {e}")))
    }

    /// The endpoints: explicit, or discovered once. A discovery document
    /// naming another issuer is refused (mix-up attack).
    pub async fn endpoints(&self) -> Result<&Endpoints, OidcError> {
        self.endpoints
            .get_or_try_init(|| async {
                let url = self.cfg.discovery_url.clone().unwrap_or_else(|| {
                    format!(
                        "{}/.well-known/openid-configuration",
                        self.cfg.issuer.trim_end_matches('/')
                    )
                });
                let d: Discovery = self.get_json(&url).await?;
                if d.issuer != self.cfg.issuer {
                    return Err(self.unavailable(format!(
                        "discovery at {url} names issuer {:?}, not the configured {:?}",
                        d.issuer, self.cfg.issuer
                    )));
                }
                for u in [&d.authorization_endpoint, &d.token_endpoint, &d.jwks_uri]
                    .into_iter()
                    .chain(d.userinfo_endpoint.as_ref())
                    .chain(d.end_session_endpoint.as_ref())
                {
                    check_url(u).map_err(|m| self.unavailable(m))?;
                }
                Ok(Endpoints {
                    authorization_endpoint: d.authorization_endpoint,
                    token_endpoint: d.token_endpoint,
                    jwks_uri: d.jwks_uri,
                    userinfo_endpoint: d.userinfo_endpoint,
                    end_session_endpoint: d.end_session_endpoint,
                })
            })
            .await
    }

    /// Starts a browser login: the authorization URL with PKCE (S256),
    /// `state` and `nonce` (256 random bits each).
    pub async fn authorization(&self) -> Result<Authorization, OidcError> {
        let e = self.endpoints().await?;
        let state = random_b64(32)?;
        let nonce = random_b64(32)?;
        let verifier = random_b64(32)?;
        let challenge = B64URL.encode(Sha256::digest(verifier.as_bytes()));
        let mut url = url::Url::parse(&e.authorization_endpoint)
            .map_err(|err| self.unavailable(format!("authorization endpoint: {err}")))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &self.cfg.client_id)
                .append_pair("redirect_uri", &self.cfg.redirect_uri)
                .append_pair("scope", &self.cfg.scopes.join(" "))
                .append_pair("state", &state)
                .append_pair("nonce", &nonce)
                .append_pair("code_challenge", &challenge)
                .append_pair("code_challenge_method", "S256");
            if let Some(acr) = &self.cfg.acr_values {
                q.append_pair("acr_values", acr);
            }
        }
        Ok(Authorization {
            url: url.to_string(),
            state,
            nonce,
            pkce_verifier: verifier,
        })
    }

    /// Exchanges an authorization code (with its PKCE verifier).
    pub async fn exchange(&self, code: &str, verifier: &str) -> Result<TokenResponse, OidcError> {
        let e = self.endpoints().await?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.cfg.redirect_uri.as_str()),
            ("code_verifier", verifier),
            ("client_id", self.cfg.client_id.as_str()),
        ];
        let mut req = self.http.post(&e.token_endpoint);
        if let Some(secret) = &self.cfg.client_secret {
            req = req.basic_auth(&self.cfg.client_id, Some(secret));
        }
        let r = req
            .form(&form)
            .send()
            .await
            .map_err(|err| self.unavailable(format!("token endpoint: {err}")))?;
        let status = r.status();
        let body: Value = r
            .json()
            .await
            .map_err(|err| self.unavailable(format!("token endpoint: {err}")))?;
        if !status.is_success() {
            let code = body.get("error").and_then(Value::as_str).unwrap_or("?");
            return Err(refused(format!(
                "the identity provider refused the authorization code ({code}): it may have been used already or expired"
            )));
        }
        serde_json::from_value(body)
            .map_err(|err| self.unavailable(format!("token response: {err}")))
    }

    /// Userinfo claims (JSON or a signed JWT), checked to be about `sub`.
    pub async fn userinfo(
        &self,
        access_token: &str,
        sub: &str,
    ) -> Result<Map<String, Value>, OidcError> {
        let e = self.endpoints().await?;
        let Some(u) = &e.userinfo_endpoint else {
            return Ok(Map::new());
        };
        let r = self
            .http
            .get(u)
            .bearer_auth(access_token)
            .send()
            .await
            .map_err(|err| self.unavailable(format!("userinfo: {err}")))?;
        if !r.status().is_success() {
            return Err(self.unavailable(format!("userinfo: HTTP {}", r.status())));
        }
        let jwt = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/jwt"));
        let text = r
            .text()
            .await
            .map_err(|err| self.unavailable(format!("userinfo: {err}")))?;
        let claims = if jwt {
            self.verify(text.trim(), Audience::Client, None, false)
                .await?
                .claims
        } else {
            serde_json::from_str(&text)
                .map_err(|err| self.unavailable(format!("userinfo is not JSON: {err}")))?
        };
        if claims.get("sub").and_then(Value::as_str) != Some(sub) {
            return Err(refused(
                "userinfo is about another subject than the ID token",
            ));
        }
        Ok(claims)
    }

    async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<Jwk, OidcError> {
        let min = Duration::from_secs(self.cfg.jwks_min_refresh_secs);
        let mut cache = self.keys.lock().await;
        // Keys the provider has withdrawn stop working within the hour.
        if cache.fetched.is_some_and(|t| t.elapsed() >= JWKS_MAX_AGE) {
            cache.keys.clear();
            cache.fetched = None;
        }
        for attempt in 0..2 {
            if let Some(k) = pick(&cache.keys, kid, alg) {
                return Ok(k);
            }
            let stale = cache.fetched.is_none_or(|t| t.elapsed() >= min);
            if attempt == 1 || !stale {
                break;
            }
            let e = self.endpoints().await?;
            let set: JwkSet = self.get_json(&e.jwks_uri).await?;
            cache.keys = set.keys;
            cache.fetched = Some(Instant::now());
        }
        Err(refused(format!(
            "no key {} for {alg:?} in the provider's key set",
            kid.map(|k| format!("{k:?}"))
                .unwrap_or_else(|| "(no kid)".into())
        )))
    }

    async fn verify(
        &self,
        token: &str,
        aud: Audience,
        nonce: Option<&str>,
        require_acr: bool,
    ) -> Result<Validated, OidcError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| refused(format!("not a valid JWT header: {e}")))?;
        let alg_name = format!("{:?}", header.alg);
        if !self.cfg.algorithms.contains(&alg_name) {
            return Err(refused(format!(
                "signature algorithm {alg_name} is not accepted (allowed: {})",
                self.cfg.algorithms.join(", ")
            )));
        }
        let jwk = self.key_for(header.kid.as_deref(), header.alg).await?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| refused(format!("unusable key: {e}")))?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.cfg.issuer]);
        match aud {
            Audience::Client => v.set_audience(&[&self.cfg.client_id]),
            Audience::Api => v.set_audience(&self.cfg.audiences),
        }
        v.leeway = self.cfg.clock_skew_secs;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub", "iat"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            refused(match e.kind() {
                K::ExpiredSignature => "token expired".to_string(),
                K::ImmatureSignature => "token not yet valid (nbf)".to_string(),
                K::InvalidIssuer => "wrong issuer".to_string(),
                K::InvalidAudience => "wrong audience".to_string(),
                K::InvalidSignature => "bad signature".to_string(),
                K::MissingRequiredClaim(c) => format!("claim `{c}` missing"),
                other => format!("invalid token: {other:?}"),
            })
        })?;
        let claims = data.claims;
        let iat = claims
            .get("iat")
            .and_then(Value::as_i64)
            .unwrap_or(i64::MAX);
        if iat > now_secs() + self.cfg.clock_skew_secs as i64 {
            return Err(refused("token issued in the future (iat)"));
        }
        if let Some(n) = nonce {
            let got = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
            if !bool::from(subtle::ConstantTimeEq::ct_eq(got.as_bytes(), n.as_bytes())) {
                return Err(refused("nonce mismatch"));
            }
        }
        if require_acr && !self.cfg.accepted_acr.is_empty() {
            match claims.get("acr").and_then(Value::as_str) {
                None => return Err(refused("acr missing: the sign-in level is unknown")),
                Some(a) if !self.cfg.accepted_acr.iter().any(|x| x == a) => {
                    return Err(refused(format!(
                        "acr {a:?} is below the required level (accepted: {})",
                        self.cfg.accepted_acr.join(", ")
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(Validated { claims })
    }

    /// Validates an ID token from a browser login: audience = client id,
    /// the login's nonce, and the acr level.
    pub async fn validate_id_token(
        &self,
        token: &str,
        nonce: &str,
    ) -> Result<Validated, OidcError> {
        self.verify(token, Audience::Client, Some(nonce), true)
            .await
    }

    /// Validates an access token presented to PDS directly (HTTP bearer,
    /// PostgreSQL password, Flight SQL): audience among `audiences`, and
    /// the acr level.
    pub async fn validate(&self, token: &str) -> Result<Validated, OidcError> {
        let v = self.verify(token, Audience::Api, None, true).await?;
        // An ID token says who signed in to a client; it is not a
        // credential for an API (RFC 9068 access tokens carry no nonce).
        if v.claims.contains_key("nonce")
            || v.claims.get("typ").and_then(Value::as_str) == Some("ID")
        {
            return Err(refused("an ID token is not an access token"));
        }
        Ok(v)
    }

    /// Maps validated claims to a PDS identity.
    pub fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, OidcError> {
        if !claims.get("sub").is_some_and(Value::is_string) {
            return Err(refused("claim `sub` missing"));
        }
        let claim = self.cfg.principal_claim.as_deref().unwrap_or("sub");
        let id = claim_values(claims, claim)
            .into_iter()
            .next()
            .ok_or_else(|| refused(format!("claim `{claim}` missing: cannot name the person")))?;
        let principal = format!(
            "{}{}",
            self.cfg.principal_prefix.as_deref().unwrap_or(""),
            id
        );
        if principal.is_empty()
            || principal.len() > 128
            || !principal
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c))
        {
            return Err(refused(format!(
                "claim `{claim}` does not make a valid account name"
            )));
        }
        let eligible = if self.cfg.roles.is_empty() {
            None
        } else {
            let mut roles = self.cfg.default_roles.clone();
            for rule in &self.cfg.roles {
                let values = claim_values(claims, &rule.claim);
                if values.iter().any(|v| rule.any_of.contains(v)) {
                    roles.extend(rule.roles.iter().cloned());
                }
            }
            roles.sort();
            roles.dedup();
            Some(roles)
        };
        Ok(Identity {
            principal,
            acr: claims
                .get("acr")
                .and_then(Value::as_str)
                .map(str::to_string),
            sid: claims
                .get("sid")
                .and_then(Value::as_str)
                .map(str::to_string),
            jti: claims
                .get("jti")
                .and_then(Value::as_str)
                .map(str::to_string),
            exp: claims.get("exp").and_then(Value::as_i64).unwrap_or(0),
            eligible_roles: eligible,
        })
    }

    /// Where to send the browser to end the provider's session too.
    pub async fn end_session_url(
        &self,
        id_token_hint: Option<&str>,
        post_logout_redirect_uri: Option<&str>,
    ) -> Result<Option<String>, OidcError> {
        let e = self.endpoints().await?;
        let Some(end) = &e.end_session_endpoint else {
            return Ok(None);
        };
        let mut url = url::Url::parse(end).map_err(|err| self.unavailable(err))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("client_id", &self.cfg.client_id);
            if let Some(h) = id_token_hint {
                q.append_pair("id_token_hint", h);
            }
            if let Some(p) = post_logout_redirect_uri {
                q.append_pair("post_logout_redirect_uri", p);
            }
        }
        Ok(Some(url.to_string()))
    }
}

#[derive(Clone, Copy)]
enum Audience {
    Client,
    Api,
}

/// Picks the key for a token: by `kid`, else the only key usable for
/// `alg`. The key's type must match the algorithm's family, and a key that
/// names its own `alg` must name this one: an RSA public key never
/// verifies an HMAC.
fn pick(keys: &[Jwk], kid: Option<&str>, alg: Algorithm) -> Option<Jwk> {
    let fits = |k: &Jwk| {
        let family_ok = matches!(
            (&k.algorithm, alg),
            (
                AlgorithmParameters::RSA(_),
                Algorithm::RS256 | Algorithm::PS256
            ) | (AlgorithmParameters::EllipticCurve(_), Algorithm::ES256)
        );
        let alg_ok = k
            .common
            .key_algorithm
            .is_none_or(|ka| format!("{ka:?}") == format!("{alg:?}"));
        let use_ok = k
            .common
            .public_key_use
            .as_ref()
            .is_none_or(|u| matches!(u, jsonwebtoken::jwk::PublicKeyUse::Signature));
        family_ok && alg_ok && use_ok
    };
    match kid {
        Some(kid) => keys
            .iter()
            .find(|k| k.common.key_id.as_deref() == Some(kid) && fits(k))
            .cloned(),
        None => {
            let mut usable = keys.iter().filter(|k| fits(k));
            match (usable.next(), usable.next()) {
                (Some(k), None) => Some(k.clone()),
                _ => None,
            }
        }
    }
}

/// The configured providers.
#[derive(Debug, Default, Clone)]
pub struct Federation {
    providers: Vec<Arc<Provider>>,
}

impl Federation {
    /// Builds the providers; names must be unique.
    pub fn new(configs: Vec<ProviderConfig>) -> Result<Federation, OidcError> {
        let mut seen = HashMap::new();
        let mut prefixes: HashMap<String, String> = HashMap::new();
        let mut providers = Vec::new();
        for c in configs {
            let c = c.resolve()?;
            if seen.insert(c.name.clone(), ()).is_some() {
                return Err(OidcError::Config {
                    provider: c.name.clone(),
                    message: "two identity providers have this name".into(),
                });
            }
            let prefix = c.principal_prefix.clone().unwrap_or_default();
            // Neither equal nor one the start of another: with "chu-" and
            // "chu-lyon-", a "chu-" person called "lyon-bob" would be
            // "chu-lyon-bob".
            if let Some(other) = prefixes
                .iter()
                .find(|(p, _)| p.starts_with(prefix.as_str()) || prefix.starts_with(p.as_str()))
                .map(|(_, n)| n.clone())
            {
                return Err(OidcError::Config {
                    provider: c.name.clone(),
                    message: format!(
                        "`principal_prefix` {prefix:?} overlaps `{other}`'s: each provider needs a prefix that neither equals nor starts another"
                    ),
                });
            }
            prefixes.insert(prefix.clone(), c.name.clone());
            providers.push(Arc::new(Provider::new(c)?));
        }
        Ok(Federation { providers })
    }

    /// A provider by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.cfg.name == name)
    }

    /// Every provider.
    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    /// The provider whose issuer this (unverified) token names; the token
    /// is then verified by that provider only.
    pub fn for_token(&self, token: &str) -> Option<&Arc<Provider>> {
        // Claims only: the header (and its `alg`) is judged by the provider.
        let claims: Map<String, Value> =
            jsonwebtoken::dangerous::insecure_decode_claims(token).ok()?;
        let iss = claims.get("iss")?.as_str()?;
        self.providers.iter().find(|p| p.cfg.issuer == iss)
    }
}

/// Whether a string has the shape of a JWT (three base64url parts).
pub fn looks_like_jwt(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn psc() -> ProviderConfig {
        ProviderConfig {
            name: "psc".into(),
            profile: Some(PSC_PROFILE.into()),
            issuer: "https://auth.esw.esante.gouv.fr/auth/realms/esante-wallet".into(),
            discovery_url: None,
            endpoints: None,
            client_id: "pds".into(),
            client_secret: None,
            client_secret_env: None,
            redirect_uri: "https://pds.example/api/v1/oidc/psc/callback".into(),
            scopes: vec![],
            acr_values: None,
            accepted_acr: vec![],
            audiences: vec![],
            algorithms: vec![],
            clock_skew_secs: 60,
            principal_claim: None,
            principal_prefix: None,
            roles: vec![],
            default_roles: vec![],
            jwks_min_refresh_secs: 10,
            state_ttl_secs: 300,
        }
    }

    #[test]
    fn psc_profile_defaults() {
        let c = psc().resolve().unwrap();
        assert_eq!(c.scopes, vec!["openid", "scope_all"]);
        assert_eq!(c.acr_values.as_deref(), Some("eidas1"));
        assert_eq!(c.principal_claim.as_deref(), Some("SubjectNameID"));
        assert_eq!(
            c.discovery_url.as_deref(),
            Some(
                "https://auth.esw.esante.gouv.fr/auth/realms/esante-wallet/.well-known/wallet-openid-configuration"
            )
        );
        assert_eq!(c.algorithms, vec!["RS256", "ES256", "PS256"]);
    }

    #[test]
    fn config_errors_say_what_to_fix() {
        let mut c = psc();
        c.algorithms = vec!["HS256".into()];
        assert!(c.resolve().unwrap_err().to_string().contains("HS256"));
        let mut c = psc();
        c.issuer = "http://idp.example".into();
        assert!(c.resolve().unwrap_err().to_string().contains("https"));
        let mut c = psc();
        c.profile = Some("franceconnect".into());
        assert!(
            c.resolve()
                .unwrap_err()
                .to_string()
                .contains("unknown profile")
        );
    }

    #[test]
    fn providers_need_their_own_prefix() {
        let mut other = psc();
        other.name = "chu".into();
        other.principal_prefix = Some("psc-lyon-".into());
        let e = Federation::new(vec![psc(), other.clone()]).unwrap_err();
        assert!(e.to_string().contains("overlaps"), "{e}");
        other.principal_prefix = Some("chu-".into());
        assert!(Federation::new(vec![psc(), other.clone()]).is_ok());
        other.accepted_acr = vec![];
        other.profile = None;
        let e = Federation::new(vec![other]).unwrap_err();
        assert!(e.to_string().contains("accepted_acr"), "{e}");
    }

    #[tokio::test]
    async fn authorization_url_has_psc_parameters() {
        let mut c = psc();
        c.endpoints = Some(Endpoints {
            authorization_endpoint: "https://wallet.esw.esante.gouv.fr/auth".into(),
            token_endpoint: "https://auth.esw.esante.gouv.fr/t".into(),
            jwks_uri: "https://auth.esw.esante.gouv.fr/certs".into(),
            userinfo_endpoint: None,
            end_session_endpoint: None,
        });
        let p = Provider::new(c.resolve().unwrap()).unwrap();
        let a = p.authorization().await.unwrap();
        let b = p.authorization().await.unwrap();
        let url = url::Url::parse(&a.url).unwrap();
        // The authorization endpoint is used as given (another host than the issuer).
        assert_eq!(url.host_str(), Some("wallet.esw.esante.gouv.fr"));
        let q: HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["scope"], "openid scope_all");
        assert_eq!(q["acr_values"], "eidas1");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(
            q["code_challenge"],
            B64URL.encode(Sha256::digest(a.pkce_verifier.as_bytes()))
        );
        assert_eq!(q["state"], a.state);
        assert_eq!(B64URL.decode(&a.nonce).unwrap().len(), 32);
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.state, b.state);
    }

    #[test]
    fn claim_paths_and_roles() {
        let claims: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "sub": "f:abc:810001234567",
            "SubjectNameID": "810001234567",
            "SubjectRefPro": {"exercices": [
                {"codeProfession": "10", "activities": [{"codeModeExercice": "S"}]},
                {"codeProfession": "21"}
            ]}
        }))
        .unwrap();
        assert_eq!(
            claim_values(&claims, "SubjectRefPro.exercices[].codeProfession"),
            vec!["10", "21"]
        );
        assert_eq!(
            claim_values(
                &claims,
                "SubjectRefPro.exercices[].activities[].codeModeExercice"
            ),
            vec!["S"]
        );
        let mut c = psc();
        c.roles = vec![RoleRule {
            claim: "SubjectRefPro.exercices[].codeProfession".into(),
            any_of: vec!["10".into()],
            roles: vec!["lead".into()],
        }];
        c.default_roles = vec!["researcher".into()];
        let p = Provider::new(c.resolve().unwrap()).unwrap();
        let id = p.identity(&claims).unwrap();
        assert_eq!(id.principal, "psc-810001234567");
        assert_eq!(
            id.eligible_roles,
            Some(vec!["lead".into(), "researcher".into()])
        );
        let mut bad = claims.clone();
        bad.insert("SubjectNameID".into(), Value::String("81 0/..".into()));
        assert!(p.identity(&bad).is_err());
    }
}
