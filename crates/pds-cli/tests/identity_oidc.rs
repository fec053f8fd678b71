//! Identity against a real OpenID Provider (panva/oidc-provider, configured
//! like Pro Santé Connect in tests/oidc/provider.mjs): the browser-less code
//! flow with PKCE, PostgreSQL and Flight SQL sign-in with the tokens it
//! yields, logout and revocation, an attack suite that must all be refused,
//! JWKS rotation, authorisation separate from authentication, and the local
//! second factor's replay and lockout rules over HTTP.
//!
//! Needs `npm ci` in tests/oidc (done by .ci/run), psql, curl and python3
//! with adbc-driver-flightsql.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{curl, ok, post_json, stderr};

const PASSWORD: &str = "correct horse battery staple";
const JEANNE: &str = "psc-810001234567";
const PAUL: &str = "psc-810009999999";

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Env {
    dir: tempfile::TempDir,
    home: PathBuf,
    issuer: String,
    http: String,
    pg: (String, u16),
    flight: String,
    _idp: Kill,
    _server: Option<Kill>,
}

impl Env {
    fn pds(&self, who: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pds"));
        c.arg("--home").arg(&self.home).arg("--as").arg(who);
        c
    }

    fn run(&self, who: &str, args: &[&str]) -> String {
        ok(&self.pds(who).args(args).output().unwrap())
    }

    fn base(&self) -> String {
        format!("https://{}", self.http)
    }

    fn psql(&self, user: &str, password: &str, sql: &str) -> Output {
        Command::new("psql")
            .arg(format!(
                "host={} port={} dbname=p-row user={user} sslmode=require",
                self.pg.0, self.pg.1
            ))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("psql must be installed")
    }

    /// Mints a token at the provider (test route) and returns it.
    fn mint(&self, spec: serde_json::Value) -> String {
        let (code, body) = post_json(&format!("{}/test/mint", self.issuer), None, &spec);
        assert_eq!(code, 200, "{body}");
        json(&body)["token"].as_str().unwrap().to_string()
    }

    /// Who signs in at the provider next; a fresh browser (no provider session).
    fn next_login(&self, account: &str, acr: &str) {
        let _ = std::fs::remove_file(self.dir.path().join("cookies.txt"));
        let (code, body) = post_json(
            &format!("{}/test/next-login", self.issuer),
            None,
            &serde_json::json!({"accountId": account, "acr": acr}),
        );
        assert_eq!(code, 200, "{body}");
    }

    fn jar(&self) -> String {
        self.dir.path().join("cookies.txt").display().to_string()
    }

    /// GET with the browser's cookies.
    fn get(&self, url: &str) -> (u16, String) {
        let jar = self.jar();
        curl(&["-c", &jar, "-b", &jar, url])
    }

    /// Follows redirects like a browser (cookie jar) from `start` until one
    /// points at `stop_prefix`; returns that address.
    fn browse(&self, start: &str, stop_prefix: &str) -> String {
        let jar = self.dir.path().join("cookies.txt");
        let mut url = start.to_string();
        for _ in 0..12 {
            let o = Command::new("curl")
                .args([
                    "-sk",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code} %{redirect_url}",
                ])
                .arg("-c")
                .arg(&jar)
                .arg("-b")
                .arg(&jar)
                .arg(&url)
                .output()
                .unwrap();
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            let (code, next) = out.split_once(' ').unwrap_or((&out, ""));
            assert!(
                code.starts_with('3') && !next.is_empty(),
                "{url} answered {out}"
            );
            if next.starts_with(stop_prefix) {
                return next.to_string();
            }
            url = next.to_string();
        }
        panic!("too many redirects from {start}");
    }

    /// PDS's browser login up to the callback address the provider sends
    /// the browser to (code and state in it).
    fn pds_login_callback(&self) -> String {
        let jar = self.jar();
        let (code, headers) = curl(&[
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-c",
            &jar,
            "-b",
            &jar,
            &format!("{}/api/v1/oidc/psc/login", self.base()),
        ]);
        assert_eq!(code, 303, "{headers}");
        let location = headers
            .lines()
            .find_map(|l| {
                l.strip_prefix("location: ")
                    .or_else(|| l.strip_prefix("Location: "))
            })
            .unwrap()
            .trim()
            .to_string();
        // The authorization request PSC expects.
        let u = url_params(&location);
        assert!(
            location.starts_with(&format!("{}/auth?", self.issuer)),
            "{location}"
        );
        assert_eq!(u["scope"], "openid scope_all");
        assert_eq!(u["acr_values"], "eidas1");
        assert_eq!(u["code_challenge_method"], "S256");
        assert_eq!(u["response_type"], "code");
        assert!(u["state"].len() >= 43 && u["nonce"].len() >= 43);
        self.browse(
            &location,
            &format!("{}/api/v1/oidc/psc/callback", self.base()),
        )
    }

    /// The provider's own code flow with PKCE for the public client
    /// `pds-cli`: returns its JWT access token.
    fn idp_access_token(&self) -> String {
        use base64::Engine;
        use sha2::Digest;
        let verifier = "a-test-pkce-verifier-of-enough-length-0123456789";
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(verifier.as_bytes()));
        let authorize = format!(
            "{}/auth?response_type=code&client_id=pds-cli&redirect_uri=http%3A%2F%2F127.0.0.1%2Fcli-callback&scope=openid%20scope_all&state=s123&nonce=n123&code_challenge={challenge}&code_challenge_method=S256&acr_values=eidas1",
            self.issuer
        );
        let back = self.browse(&authorize, "http://127.0.0.1/cli-callback");
        let code = url_params(&back)["code"].clone();
        let (status, body) = curl(&[
            "-X",
            "POST",
            &format!("{}/token", self.issuer),
            "-d",
            "grant_type=authorization_code",
            "-d",
            &format!("code={code}"),
            "-d",
            "redirect_uri=http://127.0.0.1/cli-callback",
            "-d",
            "client_id=pds-cli",
            "-d",
            &format!("code_verifier={verifier}"),
        ]);
        assert_eq!(status, 200, "{body}");
        json(&body)["access_token"].as_str().unwrap().to_string()
    }

    /// POSTs JSON to PDS, with a bearer token if given.
    fn post(&self, path: &str, bearer: Option<&str>, body: serde_json::Value) -> (u16, String) {
        post_json(&format!("{}{path}", self.base()), bearer, &body)
    }

    fn me(&self, token: &str) -> (u16, String) {
        curl(&[
            "-H",
            &format!("authorization: Bearer {token}"),
            &format!("{}/api/v1/me", self.base()),
        ])
    }
}

fn url_params(u: &str) -> std::collections::HashMap<String, String> {
    url::Url::parse(u)
        .unwrap_or_else(|e| panic!("{u}: {e}"))
        .query_pairs()
        .into_owned()
        .collect()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_idp(redirect: &str) -> (Kill, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
    assert!(
        dir.join("node_modules/oidc-provider").exists(),
        "run `npm ci` in {} first (.ci/run does)",
        dir.display()
    );
    let mut child = Command::new("node")
        .arg(dir.join("provider.mjs"))
        .args(["0", redirect])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node must be installed");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let issuer = json(line.trim())["issuer"].as_str().unwrap().to_string();
    (Kill(child), issuer)
}

const PERIMETER: &str = r#"
years = [2022, 2022]
[tables]
IR_BEN_R = ["BEN_NIR_PSA", "BEN_SEX_COD", "BEN_NAI_ANN"]
ER_PRS_F = ["BEN_NIR_PSA", "EXE_SOI_DTD", "PRS_NAT_REF", "PRS_ACT_QTE"]
"#;

fn setup() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let port = free_port();
    let redirect = format!("https://127.0.0.1:{port}/api/v1/oidc/psc/callback");
    let (idp, issuer) = start_idp(&redirect);
    let mut env = Env {
        home: home.clone(),
        issuer,
        http: format!("127.0.0.1:{port}"),
        pg: (String::new(), 0),
        flight: String::new(),
        _idp: idp,
        _server: None,
        dir,
    };
    let base = env.dir.path().to_path_buf();
    env.run(
        "steward",
        &[
            "init",
            "--master-key-file",
            base.join("k").to_str().unwrap(),
        ],
    );
    let delivery = base.join("delivery");
    ok(&Command::new(env!("CARGO_BIN_EXE_pds"))
        .args(["synth", "-q", "-n", "200", "--years", "2022", "--out"])
        .arg(&delivery)
        .output()
        .unwrap());
    env.run("steward", &["load", "-q", delivery.to_str().unwrap()]);
    let per = base.join("perimeter.toml");
    std::fs::write(&per, PERIMETER).unwrap();
    env.run(
        "steward",
        &[
            "project",
            "create",
            "p-row",
            "--title",
            "Study",
            "--authorisation",
            "CNIL DR-2026-042",
            "--expires",
            "2099-12-31",
            "--mode",
            "row-level",
            "--perimeter",
            per.to_str().unwrap(),
        ],
    );
    // The habilitation list names people by their national identifier.
    env.run(
        "steward",
        &["project", "grant", "p-row", JEANNE, "--role", "researcher"],
    );
    env.run(
        "steward",
        &["project", "grant", "p-row", "carol", "--role", "researcher"],
    );
    ok(&env
        .pds("steward")
        .args(["user", "add", "carol"])
        .env("PDS_NEW_PASSWORD", PASSWORD)
        .output()
        .unwrap());
    env.run("steward", &["tls", "self-signed"]);
    let cfg = env.home.join("config.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text = text
        .replace(
            "login_attempts_per_minute = 30",
            "login_attempts_per_minute = 50",
        )
        .replace("lock_after_failures = 5", "lock_after_failures = 3");
    text.push_str(&format!(
        r#"
[[identity.oidc]]
name = "psc"
profile = "pro-sante-connect"
issuer = "{issuer}"
client_id = "pds"
client_secret_env = "PDS_TEST_PSC_SECRET"
redirect_uri = "{redirect}"
audiences = ["urn:pds:api"]
jwks_min_refresh_secs = 1
default_roles = []

[[identity.oidc.roles]]
claim = "SubjectRefPro.exercices[].codeProfession"
any_of = ["10", "21"]
roles = ["researcher", "lead"]
"#,
        issuer = env.issuer
    ));
    std::fs::write(&cfg, text).unwrap();
    let ready = env.home.join("ready.json");
    let child = env
        .pds("steward")
        .args([
            "serve",
            "--pg-listen",
            "127.0.0.1:0",
            "--flight-listen",
            "127.0.0.1:0",
        ])
        .args(["--http-listen", &env.http.clone(), "--ready-file"])
        .arg(&ready)
        .env("PDS_TEST_PSC_SECRET", "pds-test-secret-not-for-production")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    env._server = Some(Kill(child));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "pds serve did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let j = json(&std::fs::read_to_string(&ready).unwrap());
    let (h, p) = j["pg"].as_str().unwrap().rsplit_once(':').unwrap();
    env.pg = (h.to_string(), p.parse().unwrap());
    env.flight = j["flight"].as_str().unwrap().to_string();
    env
}

#[test]
fn oidc_code_flow_tokens_attacks_and_local_second_factor() {
    let env = setup();
    let count = "SELECT COUNT(*) FROM \"IR_BEN_R\"";
    let expected = ok(&env
        .pds(JEANNE)
        .args(["sql", "--project", "p-row", "--format", "csv", count])
        .output()
        .unwrap())
    .lines()
    .nth(1)
    .unwrap()
    .to_string();
    let (code, body) = curl(&[&format!("{}/api/v1/oidc/providers", env.base())]);
    assert_eq!(
        (code, json(&body)["providers"][0].as_str()),
        (200, Some("psc"))
    );

    // 1. The browser-less code flow with PKCE: PDS session for Jeanne.
    env.next_login("810001234567", "eidas1");
    let cb = env.pds_login_callback();
    // The callback must come from the browser that started the login.
    let (code, body) = curl(&[&cb]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("another browser"), "{body}");
    let cb = env.pds_login_callback();
    let (code, body) = env.get(&cb);
    assert_eq!(code, 200, "{body}");
    let session = json(&body);
    let token = session["access_token"].as_str().unwrap().to_string();
    assert!(token.starts_with("pds_at_"), "{body}");
    let (code, body) = env.me(&token);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["name"], JEANNE);
    // The replayed callback (same code and state) is refused.
    let (code, body) = env.get(&cb);
    assert_eq!(code, 400, "{body}");
    // A state PDS never issued is refused.
    let cb2 = env.pds_login_callback();
    let p2 = url_params(&cb2);
    let forged = cb2.replace(&p2["state"], "forged-state-forged-state-forged-state-1234");
    assert_ne!(forged, cb2);
    let (code, body) = env.get(&forged);
    assert_eq!(code, 400, "{body}");
    // A used authorization code with a fresh, valid state: the provider
    // refuses the code, PDS refuses the login.
    let cb3 = env.pds_login_callback();
    let p3 = url_params(&cb3);
    let p1 = url_params(&cb);
    let replayed = cb3.replace(&p3["code"], &p1["code"]);
    let (code, body) = env.get(&replayed);
    assert_eq!(code, 401, "{body}");

    // 2. PostgreSQL with the PDS token of that login: same answer as pds sql.
    let o = env.psql(JEANNE, &token, count);
    assert_eq!(ok(&o).trim(), expected);

    // 3. The provider's own JWT access token, on PostgreSQL and Flight SQL.
    let jwt = env.idp_access_token();
    assert_eq!(jwt.split('.').count(), 3, "{jwt}");
    assert_eq!(ok(&env.psql(JEANNE, &jwt, count)).trim(), expected);
    let o = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/adbc_client.py"))
        .args([
            &format!("grpc+tls://{}", env.flight),
            "p-row",
            JEANNE,
            &jwt,
            count,
        ])
        .output()
        .unwrap();
    let j = json(ok(&o).trim());
    assert_eq!(
        j["results"][0]["rows"][0][0].as_str().unwrap(),
        expected,
        "{j}"
    );
    // Someone else's token does not open Jeanne's account.
    assert!(!env.psql("carol", &jwt, count).status.success());

    // 4. Logout: the PDS session, and the provider's session and token, are
    //    refused from then on.
    let (code, body) = env.post("/api/v1/logout", Some(&jwt), serde_json::json!({}));
    assert_eq!(code, 200, "{body}");
    assert!(
        json(&body)["end_session_url"]
            .as_str()
            .unwrap()
            .contains("/session/end")
    );
    let o = env.psql(JEANNE, &jwt, count);
    assert!(
        !o.status.success(),
        "a logged-out provider token still works"
    );
    let (code, _) = env.post("/api/v1/logout", Some(&token), serde_json::json!({}));
    assert_eq!(code, 200);
    assert!(!env.psql(JEANNE, &token, count).status.success());
    assert_eq!(env.me(&token).0, 401);

    // 5. The attack suite: every token below is refused, on HTTP and on the
    //    PostgreSQL protocol, and the audit log says why. A control first:
    //    the same minting path with honest claims is accepted.
    let good = env.mint(serde_json::json!({}));
    assert_eq!(env.me(&good).0, 200, "the control token must be accepted");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let attacks: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "alg none",
            serde_json::json!({"key": "none"}),
            "not a valid JWT header",
        ),
        (
            "HS256 keyed with the public key",
            serde_json::json!({"key": "hs256-public"}),
            "HS256 is not accepted",
        ),
        (
            "wrong issuer",
            serde_json::json!({"claims": {"iss": "http://127.0.0.1:1/evil"}}),
            "issuer that is not configured",
        ),
        (
            "wrong audience",
            serde_json::json!({"claims": {"aud": "someone-else"}}),
            "wrong audience",
        ),
        (
            "expired",
            serde_json::json!({"claims": {"exp": now - 600}}),
            "token expired",
        ),
        (
            "not yet valid",
            serde_json::json!({"claims": {"nbf": now + 600}}),
            "not yet valid",
        ),
        (
            "issued in the future",
            serde_json::json!({"claims": {"iat": now + 600}}),
            "issued in the future",
        ),
        (
            "missing acr",
            serde_json::json!({"remove": ["acr"]}),
            "acr missing",
        ),
        (
            "weak acr",
            serde_json::json!({"claims": {"acr": "eidas0"}}),
            "below the required level",
        ),
        (
            "unknown kid",
            serde_json::json!({"key": "other"}),
            "in the provider's key set",
        ),
        (
            "an ID token as an access token",
            serde_json::json!({"claims": {"nonce": "n-0123456789"}}),
            "an ID token is not an access token",
        ),
    ];
    for (name, spec, _) in &attacks {
        let t = env.mint(spec.clone());
        let (code, body) = env.me(&t);
        assert_eq!(code, 401, "{name}: {body}");
    }
    for (name, spec, _) in attacks.iter().take(2).chain(attacks.iter().skip(7).take(1)) {
        let t = env.mint(spec.clone());
        let o = env.psql(JEANNE, &t, count);
        assert!(
            !o.status.success(),
            "{name} passed on the PostgreSQL protocol"
        );
    }
    let log = env.run("steward", &["audit", "show", "--json"]);
    for (name, _, reason) in &attacks {
        assert!(
            log.contains(reason),
            "{name}: no `{reason}` refusal in the audit log"
        );
    }

    // 6. Key rotation: a token signed with a newly published key is
    //    accepted after PDS fetches the key set again.
    let (code, _) = curl(&["-X", "POST", &format!("{}/test/rotate", env.issuer)]);
    assert_eq!(code, 200);
    std::thread::sleep(Duration::from_millis(1100));
    let rotated = env.mint(serde_json::json!({"key": "rotated"}));
    assert_eq!(env.me(&rotated).0, 200, "rotated key not picked up");

    // 7. Authentication is not authorisation. Paul (a masseur-kiné, code
    //    70) signs in, but is no member: refused. Made a member, his
    //    claims still do not allow the researcher role: refused, saying so.
    env.next_login("810009999999", "eidas1");
    let (code, body) = env.get(&env.pds_login_callback());
    assert_eq!(code, 200, "{body}");
    let paul = json(&body)["access_token"].as_str().unwrap().to_string();
    let o = env.psql(PAUL, &paul, count);
    assert!(stderr(&o).contains("not a member"), "{}", stderr(&o));
    env.run(
        "steward",
        &["project", "grant", "p-row", PAUL, "--role", "researcher"],
    );
    let o = env.psql(PAUL, &paul, count);
    assert!(
        stderr(&o).contains("do not allow the `researcher` role"),
        "{}",
        stderr(&o)
    );

    // 8. Local accounts over HTTP: enrolment, a TOTP code used once, and
    //    the lock after repeated failures.
    let login = |body: serde_json::Value| env.post("/api/v1/login", None, body);
    let (code, body) = login(serde_json::json!({"user": "carol", "password": PASSWORD}));
    assert_eq!(code, 200, "{body}");
    let et = json(&body)["enrolment_token"].as_str().unwrap().to_string();
    let (_, body) = env.post("/api/v1/mfa/enrol", Some(&et), serde_json::json!({}));
    let uri = json(&body)["otpauth_uri"].as_str().unwrap().to_string();
    let t0 = now as u64;
    let c0 = pds_accounts::mfa::code_at(&uri, t0).unwrap();
    let (code, body) = env.post(
        "/api/v1/mfa/confirm",
        Some(&et),
        serde_json::json!({"code": c0}),
    );
    assert_eq!(code, 200, "{body}");
    let refresh = json(&body)["session"]["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    // The enrolment token is spent.
    let (code, _) = env.post("/api/v1/mfa/enrol", Some(&et), serde_json::json!({}));
    assert_eq!(code, 401);
    // The confirming code cannot sign in again (replay); the next one can, once.
    let (code, body) =
        login(serde_json::json!({"user": "carol", "password": PASSWORD, "totp": c0}));
    assert_eq!(code, 401, "{body}");
    let c1 = pds_accounts::mfa::code_at(&uri, t0 + 30).unwrap();
    let (code, body) =
        login(serde_json::json!({"user": "carol", "password": PASSWORD, "totp": c1}));
    assert_eq!(code, 200, "{body}");
    let (code, _) = login(serde_json::json!({"user": "carol", "password": PASSWORD, "totp": c1}));
    assert_eq!(code, 401);
    // Refresh rotates; the old refresh token then ends the session.
    let (code, body) = env.post(
        "/api/v1/token/refresh",
        None,
        serde_json::json!({"refresh_token": refresh}),
    );
    assert_eq!(code, 200, "{body}");
    let renewed = json(&body)["access_token"].as_str().unwrap().to_string();
    assert_eq!(ok(&env.psql("carol", &renewed, count)).trim(), expected);
    let (code, body) = env.post(
        "/api/v1/token/refresh",
        None,
        serde_json::json!({"refresh_token": refresh}),
    );
    assert_eq!(code, 401, "{body}");
    assert!(!env.psql("carol", &renewed, count).status.success());
    // Three failures lock the name (known or not) for 30 s, then 60 s...
    env.run("steward", &["user", "unlock", "carol"]);
    for user in ["carol", "nobody-at-all"] {
        for _ in 0..2 {
            let (code, _) =
                login(serde_json::json!({"user": user, "password": "wrong password, surely"}));
            assert_eq!(code, 401);
        }
        let (code, body) =
            login(serde_json::json!({"user": user, "password": PASSWORD, "totp": "000000"}));
        assert_eq!(code, 401, "{body}");
        let (code, body) = login(serde_json::json!({"user": user, "password": PASSWORD}));
        assert_eq!(code, 429, "{user}: {body}");
        assert!(body.contains("try again in"), "{body}");
    }
    let list = env.run("steward", &["user", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("carol") && l.contains("locked")),
        "{list}"
    );
    env.run("steward", &["user", "unlock", "carol"]);

    // 9. Sign-in attempts per address are limited (50 a minute here).
    let mut limited = false;
    for _ in 0..55 {
        let (code, body) = login(serde_json::json!({"user": "x", "password": "y"}));
        if code == 429 && body.contains("from this address") {
            limited = true;
            break;
        }
    }
    assert!(limited, "no per-address limit on sign-in attempts");
    ok(&env
        .pds("steward")
        .args(["audit", "verify"])
        .output()
        .unwrap());
}

/// `pds user enrol` with the person at the terminal: the QR code and the
/// secret on stderr, a wrong code refused and asked again, recovery codes
/// once enrolled; `pds user list` shows the second factor and
/// `pds user reset-mfa` removes it.
#[test]
fn cli_enrol_list_and_reset_mfa() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let pds = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pds"));
        c.arg("--home")
            .arg(&home)
            .args(["--as", "steward"])
            .args(args);
        c
    };
    ok(&pds(&[
        "init",
        "--master-key-file",
        dir.path().join("k").to_str().unwrap(),
    ])
    .output()
    .unwrap());
    ok(&pds(&["user", "add", "dora"])
        .env("PDS_NEW_PASSWORD", PASSWORD)
        .output()
        .unwrap());
    let mut child = pds(&["user", "enrol", "dora"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut secret = None;
    let mut qr_lines = 0;
    let mut line = String::new();
    while err.read_line(&mut line).unwrap() > 0 {
        if let Some(rest) = line.split("type the secret ").nth(1) {
            secret = Some(rest.trim().trim_end_matches(").").to_string());
            break;
        }
        qr_lines += 1;
        line.clear();
    }
    let secret = secret.expect("no secret printed");
    assert!(qr_lines > 10, "no QR code drawn");
    let uri = format!(
        "otpauth://totp/PDS:dora?secret={secret}&algorithm=SHA256&digits=6&period=30&issuer=PDS"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good = pds_accounts::mfa::code_at(&uri, now).unwrap();
    let wrong = format!(
        "{:06}",
        (good.parse::<u32>().unwrap() + 500_000) % 1_000_000
    );
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{wrong}").unwrap();
    writeln!(stdin, "{good}").unwrap();
    drop(stdin);
    let mut rest = String::new();
    use std::io::Read;
    err.read_to_string(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{rest}");
    assert!(rest.contains("does not match"), "{rest}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let codes: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.len() == 19 && l.matches('-').count() == 3)
        .collect();
    assert_eq!(codes.len(), 10, "{stdout}");
    // Columns: name, kind, [admin], mfa, status; dora is no admin.
    let mfa_of = |list: &str| -> Vec<String> {
        list.lines()
            .find(|l| l.starts_with("dora"))
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .unwrap()
    };
    let list = ok(&pds(&["user", "list"]).output().unwrap());
    assert_eq!(mfa_of(&list)[2], "yes", "{list}");
    // Enrolled: a second enrolment is refused, naming the way out.
    let o = pds(&["user", "enrol", "dora"]).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("reset-mfa"), "{}", stderr(&o));
    ok(&pds(&["user", "reset-mfa", "dora"]).output().unwrap());
    let list = ok(&pds(&["user", "list"]).output().unwrap());
    assert_eq!(mfa_of(&list)[2], "active", "{list}");
}
