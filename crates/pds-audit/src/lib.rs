//! The PDS audit log: append-only, tamper-evident, stored in the catalogue.
//!
//! Every access, statement, refusal and administrative change is an
//! [`Entry`]. Entries are the leaves of an RFC 9162 Merkle tree
//! ([`merkle`]); each carries the leaf hash of the one before it (a hash
//! chain) and an Ed25519 *seal* over its position and leaf hash, and signed
//! [`checkpoint`]s (C2SP signed notes) fix the tree head at least once per
//! checkpoint interval (default: hourly, when there is activity) and on
//! demand.
//!
//! [`verify`] re-reads the whole log and proves that every entry is present,
//! unmodified and in order, naming the first bad entry otherwise:
//!
//! * a modified entry breaks its seal (the signing key never reaches the
//!   database);
//! * a deleted entry leaves a gap in the positions, or a broken chain;
//! * moved entries break the position recorded in their bodies;
//! * a truncated log no longer reaches the size of its last checkpoint.
//!   Entries appended after the last checkpoint can be cut off unseen by
//!   someone who can write the database: that is why `pds audit export`
//!   copies checkpoints out, and `verify --against` checks an outside copy.
#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod merkle;

use std::time::Duration;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use pds_catalog::{AuditFilter, AuditKeyRow, AuditRow, Catalog, CheckpointRow};
use pds_keys::{KeyStore, WrappedKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use checkpoint::Checkpoint;

/// The key name in checkpoint signature lines.
pub const KEY_NAME: &str = "pds-audit";
/// The purpose the signing key is wrapped for.
pub const KEY_PURPOSE: &str = "pds/audit/signing-key";

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The catalogue failed.
    #[error(transparent)]
    Catalog(#[from] pds_catalog::CatalogError),
    /// Key handling failed.
    #[error(transparent)]
    Keys(#[from] pds_keys::KeyError),
    /// A checkpoint is malformed or its signature is wrong.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The stored key is unusable.
    #[error("audit key: {0}")]
    Key(String),
    /// Concurrent writers kept taking the next position.
    #[error("audit log busy: could not append after {0} attempts")]
    Busy(usize),
    /// Encoding an entry failed.
    #[error("audit entry: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A table and the columns a statement read from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableAccess {
    /// Table name as the project sees it.
    pub table: String,
    /// Columns read.
    pub columns: Vec<String>,
}

/// What an entry records, before it gets a position.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Who (an account name).
    pub principal: String,
    /// Which project, if any.
    pub project: Option<String>,
    /// What: `statement`, `statement.end`, `project.create`, `keys.rotate`...
    pub action: String,
    /// `allowed`, `refused`, `completed`, `failed`, `cancelled`, `done`.
    pub decision: String,
    /// Why a refusal or failure happened (never data values).
    pub reason: Option<String>,
    /// Links the entries of one statement.
    pub request_id: Option<String>,
    /// The statement text as submitted.
    pub statement: Option<String>,
    /// SHA-256 of the optimised logical plan.
    pub plan_fingerprint: Option<String>,
    /// Snapshot read.
    pub snapshot: Option<i64>,
    /// Tables and columns read.
    pub objects: Vec<TableAccess>,
    /// Rows returned.
    pub rows: Option<u64>,
    /// Bytes returned (Arrow IPC stream).
    pub bytes: Option<u64>,
    /// SHA-256 of the result as an Arrow IPC stream.
    pub result_sha256: Option<String>,
    /// Wall time, milliseconds.
    pub duration_ms: Option<u64>,
    /// Administrative details (what changed).
    pub details: Option<serde_json::Value>,
}

/// A logged entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position from 1.
    pub seq: i64,
    /// RFC 3339 UTC time with milliseconds, from the host clock.
    pub time: String,
    /// Leaf hash of the previous entry (hex; zeros for the first).
    pub prev: String,
    /// What is recorded.
    #[serde(flatten)]
    pub record: Record,
}

fn seal_message(seq: i64, leaf: &str) -> String {
    format!("pds-audit-seal\n{seq}\n{leaf}\n")
}

fn key_id(public: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(public.as_bytes())[..8])
}

/// Parses a hex Ed25519 public key.
pub fn parse_public_key(hex_key: &str) -> Result<VerifyingKey, AuditError> {
    let bytes: [u8; 32] = hex::decode(hex_key.trim())
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| AuditError::Key("a public key is 64 hexadecimal characters".into()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| AuditError::Key(e.to_string()))
}

/// The audit log of one catalogue, able to append.
pub struct AuditLog {
    cat: Catalog,
    key: SigningKey,
    origin: String,
    checkpoint_every: Duration,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("origin", &self.origin)
            .field("public_key", &self.public_key_hex())
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens the log, creating its signing key (wrapped by the master key)
    /// on first use.
    pub async fn open(
        cat: Catalog,
        keys: &KeyStore,
        origin: &str,
        checkpoint_every: Duration,
    ) -> Result<AuditLog, AuditError> {
        let key = match cat.audit_key().await? {
            Some(row) => {
                let w: WrappedKey = serde_json::from_str(&row.wrapped_secret)
                    .map_err(|e| AuditError::Key(format!("bad key record: {e}")))?;
                let seed = keys.unwrap_data_key(&w, KEY_PURPOSE)?;
                let key = SigningKey::from_bytes(seed.expose());
                if hex::encode(key.verifying_key().as_bytes()) != row.public_key {
                    return Err(AuditError::Key(
                        "the stored public key does not match the wrapped secret key".into(),
                    ));
                }
                key
            }
            None => {
                // The seed is a fresh random 256-bit key from the OS.
                let (seed, wrapped) = keys.new_data_key(KEY_PURPOSE)?;
                let key = SigningKey::from_bytes(seed.expose());
                let public = key.verifying_key();
                cat.insert_audit_key(&AuditKeyRow {
                    key_id: key_id(&public),
                    public_key: hex::encode(public.as_bytes()),
                    wrapped_secret: serde_json::to_string(&wrapped)?,
                    created_at: now(),
                })
                .await?;
                key
            }
        };
        Ok(AuditLog {
            cat,
            key,
            origin: origin.to_string(),
            checkpoint_every,
        })
    }

    /// The log's public key, hex: what verifiers need.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// Appends a record and returns its position. Writes a checkpoint when
    /// the last one is older than the checkpoint interval.
    pub async fn append(&self, record: Record) -> Result<i64, AuditError> {
        const ATTEMPTS: usize = 50;
        for attempt in 0..ATTEMPTS {
            let (seq, prev) = match self.cat.audit_tail().await? {
                Some((s, leaf)) => (s + 1, leaf),
                None => (1, hex::encode([0u8; 32])),
            };
            let entry = Entry {
                seq,
                time: now_millis(),
                prev,
                record: record.clone(),
            };
            let body = serde_json::to_string(&entry)?;
            let leaf = hex::encode(merkle::leaf_hash(body.as_bytes()));
            let seal = hex::encode(
                self.key
                    .sign(seal_message(seq, &leaf).as_bytes())
                    .to_bytes(),
            );
            let row = AuditRow {
                seq,
                logged_at: entry.time.clone(),
                principal: record.principal.clone(),
                project_id: record.project.clone(),
                action: record.action.clone(),
                decision: record.decision.clone(),
                body,
                leaf_hash: leaf,
                seal,
            };
            if self.cat.insert_audit_entry(&row).await? {
                // The entry is stored: a checkpoint that cannot be signed now
                // (another writer is signing one) is retried by the next append.
                let _ = self.checkpoint_if_due().await;
                return Ok(seq);
            }
            // Another writer took `seq`: back off a little and rebuild.
            tokio::time::sleep(Duration::from_millis(1 + attempt as u64)).await;
        }
        Err(AuditError::Busy(ATTEMPTS))
    }

    async fn checkpoint_if_due(&self) -> Result<(), AuditError> {
        let due = match self.cat.last_checkpoint().await? {
            None => true,
            Some(c) => chrono::DateTime::parse_from_rfc3339(&c.created_at)
                .map(|t| {
                    let age = chrono::Utc::now().signed_duration_since(t);
                    age.to_std().unwrap_or_default() >= self.checkpoint_every
                })
                .unwrap_or(true),
        };
        if due {
            self.checkpoint().await?;
        }
        Ok(())
    }

    /// Signs and stores a checkpoint of the whole log now.
    pub async fn checkpoint(&self) -> Result<CheckpointRow, AuditError> {
        let mut f = merkle::Frontier::new();
        for (seq, leaf) in self.cat.audit_leaves().await? {
            let h: merkle::Hash = hex::decode(&leaf)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| {
                    AuditError::Key(format!("entry {seq}: stored leaf hash is not hex"))
                })?;
            f.push(h);
        }
        let c = Checkpoint {
            origin: self.origin.clone(),
            size: f.size(),
            root: f.root(),
        };
        let mut row = CheckpointRow {
            id: 0,
            tree_size: f.size() as i64,
            root_hash: hex::encode(c.root),
            created_at: now(),
            note: c.sign(KEY_NAME, &self.key),
        };
        row.id = self.cat.insert_checkpoint(&row).await?;
        Ok(row)
    }
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn now_millis() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Entries read.
    pub entries: u64,
    /// Checkpoints checked.
    pub checkpoints: usize,
    /// Size of the last checkpoint.
    pub last_checkpoint_size: u64,
    /// Entries after the last checkpoint (sealed, not yet checkpointed).
    pub unchecked_tail: u64,
    /// The first problem, if any.
    pub problem: Option<Problem>,
}

/// The first inconsistency found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The first bad entry's position, when one can be named.
    pub seq: Option<i64>,
    /// What is wrong.
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            Some(s) => write!(f, "entry {s}: {}", self.what),
            None => write!(f, "{}", self.what),
        }
    }
}

/// Verifies the whole log against a trusted public key (and, optionally,
/// checkpoints kept outside: `outside` notes from an earlier export).
pub async fn verify(
    cat: &Catalog,
    trusted: &VerifyingKey,
    outside: &[String],
) -> Result<Report, AuditError> {
    let rows = cat.audit_entries(&AuditFilter::default()).await?;
    let checkpoints = cat.checkpoints().await?;
    let mut notes: Vec<(String, String)> = checkpoints
        .iter()
        .map(|c| (format!("checkpoint {}", c.id), c.note.clone()))
        .collect();
    notes.extend(
        outside
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("outside checkpoint {}", i + 1), n.clone())),
    );
    Ok(verify_rows(&rows, &notes, trusted))
}

/// The checks of [`verify`] on rows already read.
pub fn verify_rows(
    rows: &[AuditRow],
    notes: &[(String, String)],
    trusted: &VerifyingKey,
) -> Report {
    let mut report = Report {
        entries: rows.len() as u64,
        checkpoints: 0,
        last_checkpoint_size: 0,
        unchecked_tail: 0,
        problem: None,
    };
    let fail = |mut r: Report, seq: Option<i64>, what: String| {
        r.problem = Some(Problem { seq, what });
        r
    };
    // Checkpoints first: their signatures must hold whatever the entries say.
    let mut wanted: Vec<(String, Checkpoint)> = Vec::new();
    for (label, note) in notes {
        match Checkpoint::open(note, KEY_NAME, trusted) {
            Ok(c) => wanted.push((label.clone(), c)),
            Err(e) => return fail(report, None, format!("{label}: {e}")),
        }
    }
    wanted.sort_by_key(|(_, c)| c.size);
    let mut next_cp = 0;
    let mut frontier = merkle::Frontier::new();
    let mut prev = hex::encode([0u8; 32]);
    for (i, row) in rows.iter().enumerate() {
        let expected = i as i64 + 1;
        // A checkpoint whose size we reached must match the tree so far.
        while next_cp < wanted.len() && wanted[next_cp].1.size == frontier.size() {
            let (label, c) = &wanted[next_cp];
            if c.root != frontier.root() {
                return fail(
                    report,
                    None,
                    format!(
                        "the first {} entries do not match {label}: an entry was changed, removed or inserted before it",
                        c.size
                    ),
                );
            }
            next_cp += 1;
        }
        if row.seq != expected {
            let what = if row.seq > expected {
                format!(
                    "missing (deleted); the log jumps from {} to {}",
                    expected - 1,
                    row.seq
                )
            } else {
                format!("position {} appears twice or out of order", row.seq)
            };
            return fail(report, Some(expected), what);
        }
        let leaf = merkle::leaf_hash(row.body.as_bytes());
        let leaf_hex = hex::encode(leaf);
        let sealed = hex::decode(&row.seal)
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok())
            .is_some_and(|sig| {
                trusted
                    .verify(seal_message(row.seq, &leaf_hex).as_bytes(), &sig)
                    .is_ok()
            });
        if !sealed || leaf_hex != row.leaf_hash {
            return fail(
                report,
                Some(row.seq),
                "modified: its content no longer matches its seal".into(),
            );
        }
        let entry: Entry = match serde_json::from_str(&row.body) {
            Ok(e) => e,
            Err(e) => return fail(report, Some(row.seq), format!("unreadable body: {e}")),
        };
        if entry.seq != row.seq {
            return fail(
                report,
                Some(row.seq),
                format!(
                    "holds the sealed entry {}: entries were reordered",
                    entry.seq
                ),
            );
        }
        if entry.prev != prev {
            return fail(
                report,
                Some(row.seq),
                "does not follow the entry before it: an entry was removed or reordered".into(),
            );
        }
        if entry.time != row.logged_at
            || entry.record.principal != row.principal
            || entry.record.project != row.project_id
            || entry.record.action != row.action
            || entry.record.decision != row.decision
        {
            return fail(report, Some(row.seq), "modified: its indexed columns (time, principal, project, action, decision) differ from its sealed body".into());
        }
        prev = leaf_hex;
        frontier.push(leaf);
    }
    while next_cp < wanted.len() {
        let (label, c) = &wanted[next_cp];
        if c.size > frontier.size() {
            return fail(
                report,
                Some(frontier.size() as i64 + 1),
                format!(
                    "missing: {label} covers {} entries but the log holds {} (truncated)",
                    c.size,
                    frontier.size()
                ),
            );
        }
        if c.root != frontier.root() {
            return fail(report, None, format!("the log does not match {label}"));
        }
        next_cp += 1;
    }
    report.checkpoints = wanted.len();
    report.last_checkpoint_size = wanted.last().map(|(_, c)| c.size).unwrap_or(0);
    report.unchecked_tail = frontier.size().saturating_sub(report.last_checkpoint_size);
    report
}
