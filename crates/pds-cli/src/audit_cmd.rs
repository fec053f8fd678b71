//! `pds audit`: verify, read, export and checkpoint the audit log.
//!
//! `verify`, `show` and `export` need only the catalogue and the log's
//! public key, not the master key: an auditor can run them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use pds_catalog::AuditFilter;

/// `pds audit` subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum AuditCommand {
    /// Prove every entry is present, unmodified and in order; name the first bad one.
    Verify {
        /// The log's public key: 64 hex characters or a file holding them
        /// (default: audit.pub in the key store directory).
        #[arg(long)]
        public_key: Option<String>,
        /// Checkpoints kept outside (files written by `pds audit export`):
        /// the log must still contain what they cover.
        #[arg(long)]
        against: Vec<PathBuf>,
    },
    /// Print entries, oldest first.
    Show {
        /// Only this project.
        #[arg(long)]
        project: Option<String>,
        /// Only this account.
        #[arg(long)]
        principal: Option<String>,
        /// From this time (RFC 3339 or YYYY-MM-DD).
        #[arg(long)]
        since: Option<String>,
        /// Until this time, excluded (RFC 3339 or YYYY-MM-DD).
        #[arg(long)]
        until: Option<String>,
        /// Print each entry's full JSON body.
        #[arg(long)]
        json: bool,
    },
    /// Write every entry and checkpoint to a directory, for a copy kept elsewhere.
    Export {
        /// Output directory (created; must be empty if it exists).
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a checkpoint of the log now.
    Checkpoint,
}

fn public_key(h: &pds_home::Home, arg: Option<&str>) -> Result<ed25519_dalek::VerifyingKey> {
    let text = match arg {
        Some(a) if a.len() == 64 && a.chars().all(|c| c.is_ascii_hexdigit()) => a.to_string(),
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the public key file {path}"))?,
        None => {
            let p = h.keys_dir().join(pds_gate::AUDIT_PUBLIC_KEY_FILE);
            std::fs::read_to_string(&p).with_context(|| {
                format!(
                    "reading {}: the log has no trusted key yet (it is written when the log is first used); give --public-key",
                    p.display()
                )
            })?
        }
    };
    Ok(pds_audit::parse_public_key(&text)?)
}

fn time_bound(s: Option<String>) -> Option<String> {
    // A date alone means its midnight UTC; RFC 3339 text compares in order.
    s.map(|v| {
        if v.len() == 10 {
            format!("{v}T00:00:00Z")
        } else {
            v
        }
    })
}

/// Runs a `pds audit` subcommand.
pub(crate) async fn run(home: &Path, cmd: AuditCommand) -> Result<()> {
    let h = pds_home::Home::open(home)?;
    let cat = h.catalog().await?;
    match cmd {
        AuditCommand::Verify {
            public_key: k,
            against,
        } => {
            let key = public_key(&h, k.as_deref())?;
            let mut outside = Vec::new();
            for f in &against {
                outside.push(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("reading the checkpoint {}", f.display()))?,
                );
            }
            let r = pds_audit::verify(&cat, &key, &outside).await?;
            if let Some(p) = r.problem {
                bail!(
                    "the audit log FAILED verification: {p}\n({} entries read; restore the log from an exported copy and investigate who changed the catalogue)",
                    r.entries
                );
            }
            println!(
                "Audit log verified: {} entries, all present, unmodified and in order; {} signed checkpoint(s), the last covering {} entries{}.",
                r.entries,
                r.checkpoints,
                r.last_checkpoint_size,
                if r.unchecked_tail > 0 {
                    format!(
                        " ({} later entries are sealed; the next checkpoint will cover them)",
                        r.unchecked_tail
                    )
                } else {
                    String::new()
                }
            );
        }
        AuditCommand::Show {
            project,
            principal,
            since,
            until,
            json,
        } => {
            let f = AuditFilter {
                project,
                principal,
                since: time_bound(since),
                until: time_bound(until),
            };
            use std::io::Write;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            for e in cat.audit_entries(&f).await? {
                // A closed pipe (`| head`) ends the listing quietly.
                if json {
                    if writeln!(out, "{}", e.body).is_err() {
                        break;
                    }
                    continue;
                }
                let body: serde_json::Value = serde_json::from_str(&e.body).unwrap_or_default();
                let what = body["statement"]
                    .as_str()
                    .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
                    .or_else(|| {
                        body["details"]
                            .as_object()
                            .map(|d| serde_json::Value::Object(d.clone()).to_string())
                    })
                    .unwrap_or_default();
                let mut extra = String::new();
                if let Some(n) = body["rows"].as_u64() {
                    extra.push_str(&format!(" rows={n}"));
                }
                if let Some(r) = body["reason"].as_str() {
                    extra.push_str(&format!(" reason={r:?}"));
                }
                let line = format!(
                    "{:>6} {} {} {} {} {}{} {}",
                    e.seq,
                    e.logged_at,
                    e.principal,
                    e.project_id.as_deref().unwrap_or("-"),
                    e.action,
                    e.decision,
                    extra,
                    what
                );
                if writeln!(out, "{line}").is_err() {
                    break;
                }
            }
        }
        AuditCommand::Export { out } => {
            if out.exists()
                && std::fs::read_dir(&out)
                    .with_context(|| format!("reading {}", out.display()))?
                    .next()
                    .is_some()
            {
                bail!(
                    "{} is not empty; export into a new directory",
                    out.display()
                );
            }
            std::fs::create_dir_all(out.join("checkpoints"))
                .with_context(|| format!("creating {}", out.display()))?;
            let entries = cat.audit_entries(&AuditFilter::default()).await?;
            let mut lines = String::new();
            for e in &entries {
                lines.push_str(&serde_json::to_string(&serde_json::json!({
                    "seq": e.seq, "leaf_hash": e.leaf_hash, "seal": e.seal, "body": e.body,
                }))?);
                lines.push('\n');
            }
            std::fs::write(out.join("entries.jsonl"), lines)?;
            let cps = cat.checkpoints().await?;
            for c in &cps {
                std::fs::write(
                    out.join("checkpoints").join(format!("{:06}.note", c.id)),
                    &c.note,
                )?;
            }
            let key = cat
                .audit_key()
                .await?
                .map(|k| k.public_key)
                .unwrap_or_default();
            std::fs::write(out.join("audit.pub"), format!("{key}\n"))?;
            println!(
                "Exported {} entries and {} checkpoint(s) to {}. Keep the copy elsewhere; `pds audit verify --against {}/checkpoints/<last>.note` later proves the log still holds them.",
                entries.len(),
                cps.len(),
                out.display(),
                out.display()
            );
        }
        AuditCommand::Checkpoint => {
            let keys = h.keys()?;
            let log = pds_gate::open_audit(&h, cat.clone(), &keys).await?;
            let c = log.checkpoint().await?;
            println!(
                "Checkpoint {} signed over {} entries:\n{}",
                c.id, c.tree_size, c.note
            );
        }
    }
    Ok(())
}
