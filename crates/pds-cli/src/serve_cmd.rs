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
            format!("[serve] {what} = {config:?} in pds.toml is not an address like 127.0.0.1:6432")
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
        token_ttl: Duration::from_secs(c.token_ttl_minutes * 60),
        max_connections: c.max_connections as usize,
        grace: Duration::from_secs(a.grace_secs),
    };
    let gate = Arc::new(pds_gate::Gate::open(h).await.context("opening the gate")?);
    let server = pds_serve::Server::start(gate, opts)
        .await
        .context("pds serve did not start")?;
    Ok((server, tls))
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
    /// Create an account. Local accounts get a password (asked for, or read
    /// from the first line of stdin, or from PDS_NEW_PASSWORD).
    Add {
        /// Account name.
        name: String,
        /// The account signs in with access tokens only (no password).
        #[arg(long)]
        federated: bool,
        /// Platform administrator (projects, members, accounts over the HTTP API).
        #[arg(long)]
        admin: bool,
    },
    /// Set a new password (asked for, read from stdin, or PDS_NEW_PASSWORD).
    Passwd {
        /// Account name.
        name: String,
    },
    /// Disable an account and revoke its tokens.
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
    /// Issue an access token (shown once) for an account: service accounts,
    /// federated accounts until the identity provider is configured.
    Token {
        /// Account name.
        name: String,
        /// Lifetime in minutes.
        #[arg(long, default_value_t = 60)]
        minutes: i64,
    },
}

fn read_password() -> Result<String> {
    if let Ok(p) = std::env::var("PDS_NEW_PASSWORD") {
        return Ok(p);
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!(
            "New password (echoed; at least {} characters): ",
            pds_accounts::MIN_PASSWORD_CHARS
        );
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let p = line.trim_end_matches(['\n', '\r']).to_string();
    if p.is_empty() {
        bail!("no password given: type it, pipe it on stdin, or set PDS_NEW_PASSWORD");
    }
    Ok(p)
}

/// Runs `pds user`.
pub(crate) async fn user(home: &Path, who: Option<&str>, c: UserCommand) -> Result<()> {
    let actor = crate::sql_cmd::principal(who)?;
    let h = pds_home::Home::open(home)?;
    let gate = pds_gate::Gate::open(&h).await.context("opening the gate")?;
    let accounts = pds_accounts::Accounts::new(gate.catalog(), gate.audit());
    match c {
        UserCommand::Add {
            name,
            federated,
            admin,
        } => {
            let (kind, password) = if federated {
                (pds_accounts::Kind::Federated, None)
            } else {
                (pds_accounts::Kind::Local, Some(read_password()?))
            };
            accounts
                .add(&actor, &name, kind, password.as_deref(), admin)
                .await?;
            println!(
                "Account {name} created ({}{}).",
                if federated {
                    "federated: signs in with an access token"
                } else {
                    "local: password"
                },
                if admin { ", admin" } else { "" }
            );
        }
        UserCommand::Passwd { name } => {
            let p = read_password()?;
            accounts.set_password(&actor, &name, &p).await?;
            println!("Password of {name} changed.");
        }
        UserCommand::Disable { name } => {
            accounts.set_disabled(&actor, &name, true).await?;
            println!("Account {name} disabled; its tokens are revoked.");
        }
        UserCommand::Enable { name } => {
            accounts.set_disabled(&actor, &name, false).await?;
            println!("Account {name} enabled.");
        }
        UserCommand::List => {
            println!(
                "{:<24} {:<10} {:<6} {:<9} created",
                "name", "kind", "admin", "status"
            );
            for a in accounts.list().await? {
                println!(
                    "{:<24} {:<10} {:<6} {:<9} {}",
                    a.name,
                    match a.kind {
                        pds_accounts::Kind::Local => "local",
                        pds_accounts::Kind::Federated => "federated",
                    },
                    if a.admin { "yes" } else { "" },
                    if a.disabled { "disabled" } else { "active" },
                    a.created_at
                );
            }
        }
        UserCommand::Token { name, minutes } => {
            if !(1..=60 * 24 * 30).contains(&minutes) {
                bail!("--minutes {minutes}: give 1 to 43200 (30 days)");
            }
            let (token, expires) = accounts
                .issue_token(&actor, &name, "cli", chrono::Duration::minutes(minutes))
                .await?;
            eprintln!("Token for {name}, valid until {expires} (shown once; keep it secret):");
            println!("{token}");
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
