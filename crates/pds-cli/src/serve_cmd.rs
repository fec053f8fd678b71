//! `pds serve`, `pds user` and `pds tls`: the network front-ends and the
//! accounts that sign in to them.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Arguments of `pds serve`.
#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// PostgreSQL protocol address (default: [serve] pg_listen, 127.0.0.1:6432).
    #[arg(long)]
    pg_listen: Option<SocketAddr>,
    /// Arrow Flight SQL address (default: [serve] flight_listen, 127.0.0.1:8815).
    #[arg(long)]
    flight_listen: Option<SocketAddr>,
    /// HTTP API address (default: [serve] http_listen, 127.0.0.1:8443).
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Serve WITHOUT TLS, on loopback addresses only (a laptop, a test). Never in production.
    #[arg(long)]
    insecure_local: bool,
    /// Seconds running statements get to finish on SIGTERM / Ctrl-C before they are cancelled.
    #[arg(long, default_value_t = 30)]
    grace_secs: u64,
    /// Write the bound addresses as JSON to this file once listening (for scripts and tests).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

impl ServeArgs {
    /// The configured listeners, with TLS.
    pub(crate) fn defaults() -> ServeArgs {
        ServeArgs {
            pg_listen: None,
            flight_listen: None,
            http_listen: None,
            insecure_local: false,
            grace_secs: 30,
            ready_file: None,
        }
    }
}

fn resolve(home: &pds_home::Home, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        home.root.join(p)
    }
}

fn addr(flag: Option<SocketAddr>, config: &str, what: &str) -> Result<SocketAddr> {
    match flag {
        Some(a) => Ok(a),
        None => config.parse().with_context(|| {
            format!(
                "[serve] {what} = {config:?} in config.toml is not an address like 127.0.0.1:6432"
            )
        }),
    }
}

/// Starts the server from a home's configuration.
pub(crate) async fn start(
    h: &pds_home::Home,
    a: &ServeArgs,
) -> Result<(pds_serve::Server, pds_serve::TlsMode)> {
    let c = &h.config.serve;
    let tls = if a.insecure_local {
        pds_serve::TlsMode::InsecureLocal
    } else {
        pds_serve::TlsMode::Files {
            cert: resolve(h, &c.tls_cert),
            key: resolve(h, &c.tls_key),
        }
    };
    let opts = pds_serve::Options {
        pg: Some(addr(a.pg_listen, &c.pg_listen, "pg_listen")?),
        flight: Some(addr(a.flight_listen, &c.flight_listen, "flight_listen")?),
        http: Some(addr(a.http_listen, &c.http_listen, "http_listen")?),
        tls: tls.clone(),
        policy: policy(h)?,
        federation: federation(h)?,
        attempts_per_minute: h.config.identity.login_attempts_per_minute,
        max_connections: c.max_connections as usize,
        grace: Duration::from_secs(a.grace_secs),
        airlock: Some((h.storage()?, h.config.airlock.clone())),
    };
    let gate = Arc::new(pds_gate::Gate::open(h).await.context("opening the gate")?);
    let server = pds_serve::Server::start(gate, opts)
        .await
        .context("pds serve did not start")?;
    Ok((server, tls))
}

/// The sign-in rules of a home's `[serve]` and `[identity]` sections.
pub(crate) fn policy(h: &pds_home::Home) -> Result<pds_accounts::Policy> {
    let i = &h.config.identity;
    let minutes = |m: u64, what: &str| -> Result<chrono::Duration> {
        if m == 0 || m > 60 * 24 * 366 {
            bail!("{what} = {m} in config.toml: give 1 minute to 366 days");
        }
        Ok(chrono::Duration::minutes(m as i64))
    };
    let p = pds_accounts::Policy {
        free_failures: i.lock_after_failures.max(1),
        lock_base: chrono::Duration::seconds(i.lock_base_seconds.clamp(1, 86_400) as i64),
        lock_max: minutes(i.lock_max_minutes, "[identity] lock_max_minutes")?,
        access_ttl: minutes(
            h.config.serve.token_ttl_minutes,
            "[serve] token_ttl_minutes",
        )?,
        session_idle: minutes(i.session_idle_minutes, "[identity] session_idle_minutes")?,
        session_max: minutes(i.session_max_minutes, "[identity] session_max_minutes")?,
        enrol_ttl: chrono::Duration::minutes(10),
        service_max: chrono::Duration::days(i.service_token_max_days.clamp(1, 3660) as i64),
        totp_algorithm: pds_accounts::mfa::TotpAlgorithm::parse(&i.totp_algorithm)
            .context("[identity] totp_algorithm in config.toml")?,
        totp_issuer: i.totp_issuer.clone(),
    };
    if p.access_ttl > p.session_max {
        bail!("[serve] token_ttl_minutes is longer than [identity] session_max_minutes");
    }
    Ok(p)
}

/// The identity providers of a home, with their client secrets read from
/// the environment variables the configuration names.
pub(crate) fn federation(h: &pds_home::Home) -> Result<pds_oidc::Federation> {
    let mut configs = Vec::new();
    for c in &h.config.identity.oidc {
        let mut c = c.clone();
        if let Some(var) = &c.client_secret_env {
            let secret = std::env::var(var).with_context(|| {
                format!(
                    "identity provider `{}`: client_secret_env = {var:?} but that environment variable is not set",
                    c.name
                )
            })?;
            c.client_secret = Some(secret);
        }
        configs.push(c);
    }
    Ok(pds_oidc::Federation::new(configs)?)
}

fn show(server: &pds_serve::Server, tls: &pds_serve::TlsMode) {
    if matches!(tls, pds_serve::TlsMode::InsecureLocal) {
        eprintln!(
            "WARNING: --insecure-local: no TLS. Passwords, tokens and results cross the network in clear; \
             listening on loopback only. Never use this for real data."
        );
    }
    let https = if matches!(tls, pds_serve::TlsMode::InsecureLocal) {
        "http"
    } else {
        "https"
    };
    if let Some(a) = server.pg_addr {
        println!("PostgreSQL protocol  {a}");
    }
    if let Some(a) = server.flight_addr {
        println!("Arrow Flight SQL     {a}");
    }
    if let Some(a) = server.http_addr {
        println!(
            "HTTP API             {https}://{a}/  (OpenAPI: /openapi.json, metrics: /metrics)"
        );
    }
}

fn write_ready(server: &pds_serve::Server, path: &Path) -> Result<()> {
    let j = serde_json::json!({
        "pg": server.pg_addr.map(|a| a.to_string()),
        "flight": server.flight_addr.map(|a| a.to_string()),
        "http": server.http_addr.map(|a| a.to_string()),
        "pid": std::process::id(),
    });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, j.to_string()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Waits for Ctrl-C or SIGTERM.
pub(crate) async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Stops a server, reporting what happened.
pub(crate) async fn stop(server: pds_serve::Server, grace: u64) {
    eprintln!("Stopping: no new connections; running statements get {grace} s to finish...");
    let s = server.shutdown().await;
    if s.cancelled > 0 {
        eprintln!(
            "{} statement(s) cancelled at the end of the grace period.",
            s.cancelled
        );
    }
    eprintln!("Stopped; the audit log is sealed by a checkpoint.");
}

/// Runs `pds serve`.
pub(crate) async fn serve(home: &Path, a: ServeArgs) -> Result<()> {
    let h = pds_home::Home::open(home)?;
    let (server, tls) = start(&h, &a).await?;
    show(&server, &tls);
    if let Some(p) = &a.ready_file {
        write_ready(&server, p)?;
    }
    println!("Serving; Ctrl-C or SIGTERM stops.");
    stop_signal().await;
    stop(server, a.grace_secs).await;
    Ok(())
}

/// `pds user ...`
#[derive(clap::Subcommand, Debug)]
pub(crate) enum UserCommand {
    /// Create an account. People get a password (asked for, or read from the
    /// first line of stdin, or from PDS_NEW_PASSWORD) and enrol a TOTP
    /// authenticator at their first sign-in (or with `pds user enrol`).
    Add {
        /// Account name.
        name: String,
        /// A person signed in by an identity provider (no password).
        #[arg(long, conflicts_with = "service")]
        federated: bool,
        /// A program: no password, scoped API tokens (`pds user token`).
        #[arg(long)]
        service: bool,
        /// Platform administrator (projects, members, accounts over the HTTP API).
        #[arg(long)]
        admin: bool,
    },
    /// Set a new password (asked for, read from stdin, or PDS_NEW_PASSWORD).
    Passwd {
        /// Account name.
        name: String,
    },
    /// Enrol a TOTP authenticator with the person at your side: shows the QR
    /// code here, then asks for the first code.
    Enrol {
        /// Account name.
        name: String,
    },
    /// Remove an account's second factor and end its sessions (lost phone);
    /// the person enrols again at their next sign-in.
    ResetMfa {
        /// Account name.
        name: String,
    },
    /// Lift a lock after repeated failed sign-ins.
    Unlock {
        /// Account name.
        name: String,
    },
    /// Disable an account and end its sessions and tokens.
    Disable {
        /// Account name.
        name: String,
    },
    /// Enable a disabled account.
    Enable {
        /// Account name.
        name: String,
    },
    /// List accounts.
    List,
    /// Issue an API token to a service account, limited to one project and
    /// role, shown once.
    Token {
        /// Service account name.
        name: String,
        /// The only project the token opens (the account must be a member).
        #[arg(long)]
        project: String,
        /// The role it carries (the account's role in the project).
        #[arg(long, default_value = "researcher")]
        role: String,
        /// Days until it expires.
        #[arg(long, default_value_t = 90)]
        days: i64,
    },
    /// List an account's tokens (ids, kinds, scopes, expiry; never the tokens).
    Tokens {
        /// Account name.
        name: String,
    },
    /// Revoke tokens of an account by id (the prefix `pds user tokens` shows).
    Revoke {
        /// Account name.
        name: String,
        /// Token id (at least 12 hexadecimal digits).
        id: String,
    },
}

fn read_line(prompt: &str) -> Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading from stdin")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

fn read_password() -> Result<String> {
    if let Ok(p) = std::env::var("PDS_NEW_PASSWORD") {
        return Ok(p);
    }
    let p = read_line(&format!(
        "New password (echoed; at least {} characters): ",
        pds_accounts::MIN_PASSWORD_CHARS
    ))?;
    if p.is_empty() {
        bail!("no password given: type it, pipe it on stdin, or set PDS_NEW_PASSWORD");
    }
    Ok(p)
}

fn kind_name(k: pds_accounts::Kind) -> &'static str {
    match k {
        pds_accounts::Kind::Local => "local",
        pds_accounts::Kind::Federated => "federated",
        pds_accounts::Kind::Service => "service",
    }
}

/// Runs `pds user`.
pub(crate) async fn user(home: &Path, who: Option<&str>, c: UserCommand) -> Result<()> {
    let actor = crate::sql_cmd::principal(who)?;
    let h = pds_home::Home::open(home)?;
    let policy = policy(&h)?;
    let gate = pds_gate::Gate::open(&h).await.context("opening the gate")?;
    let accounts = pds_accounts::Accounts::new(gate.catalog(), gate.audit());
    match c {
        UserCommand::Add {
            name,
            federated,
            service,
            admin,
        } => {
            let (kind, password) = if federated {
                (pds_accounts::Kind::Federated, None)
            } else if service {
                (pds_accounts::Kind::Service, None)
            } else {
                (pds_accounts::Kind::Local, Some(read_password()?))
            };
            accounts
                .add(&actor, &name, kind, password.as_deref(), admin)
                .await?;
            println!(
                "Account {name} created ({}{}).",
                match kind {
                    pds_accounts::Kind::Federated =>
                        "federated: signs in through its identity provider",
                    pds_accounts::Kind::Service =>
                        "service: give it scoped tokens with `pds user token`",
                    pds_accounts::Kind::Local =>
                        "local: password, then a TOTP authenticator enrolled at the first sign-in",
                },
                if admin { ", admin" } else { "" }
            );
        }
        UserCommand::Passwd { name } => {
            let p = read_password()?;
            accounts.set_password(&actor, &name, &p).await?;
            println!("Password of {name} changed.");
        }
        UserCommand::Enrol { name } => {
            let e = accounts
                .begin_enrolment(gate.keys(), &policy, &actor, &name)
                .await?;
            eprintln!("{}", e.qr_text);
            eprintln!(
                "Scan this with the authenticator app of {name} (or type the secret {}).",
                e.secret_base32
            );
            let mut tries = 0;
            let codes = loop {
                let code = read_line("Code shown by the app: ")?;
                match accounts
                    .confirm_enrolment(gate.keys(), &policy, &actor, &name, &code)
                    .await
                {
                    Ok(c) => break c,
                    Err(pds_accounts::AccountError::Invalid(m)) if tries < 2 => {
                        eprintln!("{m}");
                        tries += 1;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            println!(
                "Second factor of {name} enrolled. Recovery codes (each works once; shown only now):"
            );
            for c in codes {
                println!("  {c}");
            }
        }
        UserCommand::ResetMfa { name } => {
            accounts.reset_mfa(&actor, &name).await?;
            println!(
                "Second factor of {name} removed and its sessions ended; it enrols again at the next sign-in."
            );
        }
        UserCommand::Unlock { name } => {
            accounts.unlock(&actor, &name).await?;
            println!("Account {name} unlocked.");
        }
        UserCommand::Disable { name } => {
            accounts.set_disabled(&actor, &name, true).await?;
            println!("Account {name} disabled; its sessions and tokens are revoked.");
        }
        UserCommand::Enable { name } => {
            accounts.set_disabled(&actor, &name, false).await?;
            println!("Account {name} enabled.");
        }
        UserCommand::List => {
            println!(
                "{:<24} {:<10} {:<6} {:<4} {:<9} created",
                "name", "kind", "admin", "mfa", "status"
            );
            for a in accounts.list().await? {
                let locked = a.locked_until.as_deref().filter(|u| {
                    *u > chrono::Utc::now()
                        .format("%Y-%m-%dT%H:%M:%SZ")
                        .to_string()
                        .as_str()
                });
                println!(
                    "{:<24} {:<10} {:<6} {:<4} {:<9} {}",
                    a.name,
                    kind_name(a.kind),
                    if a.admin { "yes" } else { "" },
                    if a.mfa { "yes" } else { "" },
                    if a.disabled {
                        "disabled"
                    } else if locked.is_some() {
                        "locked"
                    } else {
                        "active"
                    },
                    a.created_at
                );
            }
        }
        UserCommand::Token {
            name,
            project,
            role,
            days,
        } => {
            if days < 1 {
                bail!("--days {days}: give at least 1");
            }
            let (token, expires) = accounts
                .issue_service_token(
                    &actor,
                    &policy,
                    &name,
                    &pds_accounts::Scope {
                        project: project.clone(),
                        role: role.clone(),
                    },
                    chrono::Duration::days(days),
                )
                .await?;
            eprintln!(
                "Token for {name} in project {project} as {role}, valid until {expires} (shown once; keep it secret):"
            );
            println!("{token}");
        }
        UserCommand::Tokens { name } => {
            println!(
                "{:<14} {:<8} {:<20} {:<11} {:<21} status",
                "id", "kind", "project", "role", "expires"
            );
            let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
            for t in accounts.tokens(&name).await? {
                println!(
                    "{:<14} {:<8} {:<20} {:<11} {:<21} {}",
                    &t.token_sha256[..12],
                    t.kind,
                    t.project.as_deref().unwrap_or("-"),
                    t.role.as_deref().unwrap_or("-"),
                    t.expires_at,
                    if t.revoked_at.is_some() {
                        "revoked"
                    } else if t.expires_at <= now {
                        "expired"
                    } else {
                        "live"
                    }
                );
            }
        }
        UserCommand::Revoke { name, id } => {
            let n = accounts.revoke_token_id(&actor, &name, &id).await?;
            if n == 0 {
                bail!("no live token of {name} has id {id}; `pds user tokens {name}` lists them");
            }
            println!("{n} token(s) of {name} revoked.");
        }
    }
    Ok(())
}

/// `pds tls ...`
#[derive(clap::Subcommand, Debug)]
pub(crate) enum TlsCommand {
    /// Write a self-signed certificate where [serve] tls_cert/tls_key point, for
    /// local testing (clients connect with sslmode=require, without verification).
    SelfSigned {
        /// Host names and addresses the certificate is for.
        #[arg(long = "name", default_values_t = vec!["localhost".to_string(), "127.0.0.1".to_string()])]
        names: Vec<String>,
        /// Replace an existing certificate.
        #[arg(long)]
        force: bool,
    },
}

/// Runs `pds tls`.
pub(crate) fn tls(home: &Path, c: TlsCommand) -> Result<()> {
    let h = pds_home::Home::open(home)?;
    match c {
        TlsCommand::SelfSigned { names, force } => {
            let cert = resolve(&h, &h.config.serve.tls_cert);
            let key = resolve(&h, &h.config.serve.tls_key);
            if (cert.exists() || key.exists()) && !force {
                bail!(
                    "{} or {} exists; pass --force to replace it",
                    cert.display(),
                    key.display()
                );
            }
            pds_serve::tls::self_signed(&cert, &key, &names)?;
            println!(
                "Self-signed certificate for {} written to {} (key {}).",
                names.join(", "),
                cert.display(),
                key.display()
            );
        }
    }
    Ok(())
}
