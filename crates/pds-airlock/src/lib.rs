//! The export airlock: the only way a result leaves a project.
//!
//! 1. A member asks ([`Airlock::request`]): a statement the platform runs
//!    through the gate (the result is frozen with its snapshot), or a file
//!    (a figure). The request carries the requester's account of the
//!    context and of the disclosure controls they applied.
//! 2. The automatic [`checks`] run; a blocking finding refuses the request
//!    and nothing is kept. Otherwise the file is stored encrypted (its own
//!    key, wrapped by the master key) with its SHA-256, and the report is
//!    attached.
//! 3. Two different checkers of the project review it
//!    ([`Airlock::review`]): approve, request changes or reject. The
//!    requester never reviews their own request; one rejection or request
//!    for changes ends it; two approvals release it.
//! 4. The requester, and only them, fetches the released file through a
//!    signed link that expires ([`Airlock::link`], [`Airlock::download`]),
//!    a limited number of times; each download checks the file still has
//!    the recorded hash.
//!
//! Every step is in the audit log, with the file's hash.
#![forbid(unsafe_code)]

pub mod checks;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use hmac::{Hmac, Mac};
use object_store::ObjectStoreExt;
use pds_audit::Record;
use pds_catalog::{ExportRow, ReviewRow};
use pds_gate::{Gate, GateError, Target};
use pds_home::AirlockConfig;
use pds_project::Role;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use checks::{FileType, Report};

/// Errors of the airlock.
#[derive(Debug, thiserror::Error)]
pub enum AirlockError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The caller may not do this.
    #[error("refused: {0}")]
    Denied(String),
    /// No such request.
    #[error("no export request {0}")]
    NotFound(String),
    /// The request is not in a state that allows this.
    #[error("{0}")]
    Conflict(String),
    /// The automatic checks refused the file.
    #[error("the automatic checks refused the file:\n{}", .0.blocking_text())]
    Checks(Box<Report>),
    /// Running the statement failed.
    #[error(transparent)]
    Gate(#[from] GateError),
    /// The catalogue failed.
    #[error(transparent)]
    Catalog(#[from] pds_catalog::CatalogError),
    /// The audit log failed: nothing was done.
    #[error("audit log: {0}")]
    Audit(#[from] pds_audit::AuditError),
    /// A key operation failed.
    #[error(transparent)]
    Keys(#[from] pds_keys::KeyError),
    /// The storage failed.
    #[error("storage: {0}")]
    Storage(String),
}

/// Where the file of a request comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A statement the platform runs through the gate, as the requester.
    Query {
        /// The statement.
        sql: String,
        /// CSV or Parquet.
        format: FileType,
    },
    /// A file the requester made in the project's workspace (a figure).
    File {
        /// Its name.
        name: String,
        /// Its bytes.
        bytes: Vec<u8>,
    },
}

/// A new export request.
#[derive(Debug, Clone)]
pub struct NewRequest {
    /// Project.
    pub project: String,
    /// Who asks.
    pub requester: String,
    /// A short name for the result (`table-2-by-age`).
    pub name: String,
    /// The file.
    pub source: Source,
    /// What the result is and what it is for.
    pub context: String,
    /// The disclosure controls applied (thresholds, rounding, suppression).
    pub controls: String,
}

/// A review decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// Safe to release.
    Approve,
    /// Not as it stands: the requester makes a new request.
    RequestChanges,
    /// Must not leave.
    Reject,
}

impl Decision {
    /// Parses `approve`, `request-changes` or `reject`.
    pub fn parse(s: &str) -> Result<Decision, AirlockError> {
        match s {
            "approve" => Ok(Decision::Approve),
            "request-changes" => Ok(Decision::RequestChanges),
            "reject" => Ok(Decision::Reject),
            _ => Err(AirlockError::Invalid(format!(
                "decision {s:?}: use approve, request-changes or reject"
            ))),
        }
    }

    /// Text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::RequestChanges => "request-changes",
            Decision::Reject => "reject",
        }
    }
}

/// Approvals needed to release a file.
pub const APPROVALS: usize = 2;

/// The state after a set of reviews.
pub fn state_after(reviews: &[ReviewRow]) -> &'static str {
    if reviews.iter().any(|r| r.decision == "reject") {
        "rejected"
    } else if reviews.iter().any(|r| r.decision == "request-changes") {
        "changes-requested"
    } else if reviews
        .iter()
        .filter(|r| r.decision == "approve")
        .map(|r| r.reviewer.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        >= APPROVALS
    {
        "released"
    } else {
        "pending"
    }
}

/// A signed download link's parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    /// Request id.
    pub id: String,
    /// Unix time after which the link is refused.
    pub expires: i64,
    /// HMAC-SHA-256 over the request, the requester and `expires`, hex.
    pub signature: String,
}

/// The airlock of a home.
pub struct Airlock<'a> {
    /// The gate (catalogue, keys, audit log; runs the statements).
    pub gate: &'a Gate,
    /// Where the files are kept.
    pub storage: &'a pds_storage::Storage,
    /// Limits.
    pub config: &'a AirlockConfig,
}

fn random_id() -> Result<String, AirlockError> {
    let k = pds_keys::SecretKey::random()?;
    Ok(hex::encode(&k.expose()[..16]))
}

fn purpose(id: &str) -> String {
    format!("pds/airlock/export/{id}")
}

fn check_name(name: &str) -> Result<(), AirlockError> {
    if name.is_empty()
        || name.len() > 80
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(AirlockError::Invalid(format!(
            "name {name:?}: use 1 to 80 letters, digits, '-', '_' or '.' (for instance table-2-by-age)"
        )));
    }
    Ok(())
}

impl Airlock<'_> {
    fn limits(&self) -> checks::Limits {
        checks::Limits {
            max_bytes: self.config.max_file_mib.saturating_mul(1 << 20),
            max_rows: self.config.max_rows,
        }
    }

    async fn audit(&self, r: Record) -> Result<(), AirlockError> {
        self.gate.audit().append(r).await?;
        Ok(())
    }

    fn record(&self, principal: &str, project: &str, action: &str, decision: &str) -> Record {
        Record {
            principal: principal.to_string(),
            project: Some(project.to_string()),
            action: action.into(),
            decision: decision.into(),
            ..Record::default()
        }
    }

    /// Files a request: runs the statement (or takes the file), checks it,
    /// freezes it. A blocking finding refuses it and nothing is kept.
    pub async fn request(&self, n: NewRequest) -> Result<ExportRow, AirlockError> {
        check_name(&n.name)?;
        if n.context.trim().chars().count() < 20 {
            return Err(AirlockError::Invalid(
                "describe the result for the reviewers (--context, at least 20 characters): what it shows, on which population, for which publication".into(),
            ));
        }
        if n.controls.trim().chars().count() < 10 {
            return Err(AirlockError::Invalid(
                "say which disclosure controls you applied (--controls, at least 10 characters): threshold, rounding, suppressed cells".into(),
            ));
        }
        let cat = self.gate.catalog();
        let today = chrono::Utc::now().date_naive();
        let (project, _) = pds_project::check_access(cat, &n.project, &n.requester, today)
            .await
            .map_err(|e| match e {
                pds_project::ProjectError::Denied(m) => AirlockError::Denied(m),
                e => AirlockError::Invalid(e.to_string()),
            })?;
        let policy = project
            .perimeter
            .disclosure
            .policy()
            .map_err(|e| AirlockError::Invalid(e.to_string()))?;
        let (kind, statement, snapshot, file_name, bytes) = match &n.source {
            Source::Query { sql, format } => {
                let mut rs = self
                    .gate
                    .execute(&n.requester, &Target::Project(n.project.clone()), sql)
                    .await?;
                let schema = rs.schema();
                let mut batches = Vec::new();
                let mut rows = 0u64;
                while let Some(b) = rs.next_batch().await {
                    let b = b?;
                    rows += b.num_rows() as u64;
                    batches.push(b);
                    // Stop reading a result that cannot leave anyway.
                    if rows > self.config.max_rows {
                        rs.close().await?;
                        let report =
                            checks::Report::too_many_rows(&n.name, self.config.max_rows, &policy);
                        let mut r =
                            self.record(&n.requester, &n.project, "export.request", "refused");
                        r.reason = Some(report.blocking_text());
                        r.statement = Some(sql.clone());
                        self.audit(r).await?;
                        return Err(AirlockError::Checks(Box::new(report)));
                    }
                }
                let bytes = encode(&schema, &batches, *format)?;
                (
                    "query",
                    Some(sql.clone()),
                    Some(project.snapshot),
                    format!("{}.{}", n.name, format.as_str()),
                    bytes,
                )
            }
            Source::File { name, bytes } => {
                check_name(name)?;
                ("file", None, None, name.clone(), bytes.clone())
            }
        };
        let report = checks::check(&file_name, &bytes, &policy, self.limits());
        let sha = hex::encode(Sha256::digest(&bytes));
        if report.blocked() {
            let mut r = self.record(&n.requester, &n.project, "export.request", "refused");
            r.reason = Some(report.blocking_text());
            r.result_sha256 = Some(sha);
            r.bytes = Some(bytes.len() as u64);
            self.audit(r).await?;
            return Err(AirlockError::Checks(Box::new(report)));
        }
        let file_type = report
            .file_type
            .ok_or_else(|| AirlockError::Invalid("unknown file type".into()))?;
        let id = random_id()?;
        let (key, wrapped) = self.gate.keys().new_data_key(&purpose(&id))?;
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| AirlockError::Storage(e.to_string()))?;
        let cipher = Aes256Gcm::new(&(*key.expose()).into());
        let sealed = cipher
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: &bytes,
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| AirlockError::Storage("encrypting the file failed".into()))?;
        let object = format!("exports/{}/{id}.bin", n.project);
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&sealed);
        self.storage
            .store()
            .put(
                &object_store::path::Path::from(object.as_str()),
                stored.into(),
            )
            .await
            .map_err(|e| AirlockError::Storage(pds_gate::sanitize(&e.to_string())))?;
        let row = ExportRow {
            id: id.clone(),
            project_id: n.project.clone(),
            requester: n.requester.clone(),
            name: n.name.clone(),
            created_at: chrono::Utc::now()
                .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string(),
            state: "pending".into(),
            kind: kind.into(),
            statement,
            snapshot_id: snapshot,
            file_name,
            file_type: file_type.as_str().into(),
            file_bytes: bytes.len() as i64,
            file_rows: report.rows.map(|r| r as i64),
            sha256: sha.clone(),
            object,
            wrapped_key: serde_json::to_string(&wrapped)
                .map_err(|e| AirlockError::Invalid(e.to_string()))?,
            context: n.context.trim().to_string(),
            controls: n.controls.trim().to_string(),
            checks: serde_json::to_string(&report)
                .map_err(|e| AirlockError::Invalid(e.to_string()))?,
            released_at: None,
            downloads: 0,
            max_downloads: self.config.max_downloads as i64,
        };
        let mut r = self.record(&n.requester, &n.project, "export.request", "allowed");
        r.statement = row.statement.clone();
        r.snapshot = row.snapshot_id;
        r.result_sha256 = Some(sha);
        r.bytes = Some(bytes.len() as u64);
        r.rows = report.rows;
        r.details = Some(serde_json::json!({
            "export": id, "name": row.name, "file_type": row.file_type,
            "warnings": report.findings.iter().filter(|f| f.severity == checks::Severity::Warning).count(),
        }));
        self.audit(r).await?;
        cat.create_export(&row).await?;
        Ok(row)
    }

    /// A request, or `NotFound`.
    pub async fn get(&self, id: &str) -> Result<ExportRow, AirlockError> {
        self.gate
            .catalog()
            .export(id)
            .await?
            .ok_or_else(|| AirlockError::NotFound(id.to_string()))
    }

    /// Whether `principal` may see request `e`: its requester, and the
    /// members of its project (checkers review it).
    pub async fn may_see(&self, e: &ExportRow, principal: &str) -> Result<bool, AirlockError> {
        if e.requester == principal {
            return Ok(true);
        }
        Ok(self
            .gate
            .catalog()
            .members(&e.project_id)
            .await?
            .iter()
            .any(|m| m.principal == principal))
    }

    /// Records a review and moves the request on.
    pub async fn review(
        &self,
        id: &str,
        reviewer: &str,
        decision: Decision,
        comment: &str,
    ) -> Result<ExportRow, AirlockError> {
        let e = self.get(id).await?;
        let refuse = |m: String| async {
            let mut r = self.record(reviewer, &e.project_id, "export.review", "refused");
            r.reason = Some(m.clone());
            r.details = Some(serde_json::json!({"export": id, "decision": decision.as_str()}));
            self.audit(r).await?;
            Err::<ExportRow, AirlockError>(AirlockError::Denied(m))
        };
        if e.requester == reviewer {
            return refuse(format!(
                "{reviewer} asked for export {id}: two other checkers must review it"
            ))
            .await;
        }
        let members = self.gate.catalog().members(&e.project_id).await?;
        let is_checker = members
            .iter()
            .any(|m| m.principal == reviewer && m.role == Role::Checker.as_str());
        if !is_checker {
            return refuse(format!(
                "{reviewer} is not a checker of project {}; only its checkers review its exports",
                e.project_id
            ))
            .await;
        }
        if decision != Decision::Approve && comment.trim().chars().count() < 5 {
            return Err(AirlockError::Invalid(
                "say why (--comment): the requester needs to know what to change".into(),
            ));
        }
        if e.state != "pending" {
            return Err(AirlockError::Conflict(format!(
                "export {id} is {}, not pending: it can no longer be reviewed",
                e.state
            )));
        }
        let already = self
            .gate
            .catalog()
            .reviews(id)
            .await?
            .iter()
            .any(|x| x.reviewer == reviewer);
        if already {
            return Err(AirlockError::Conflict(format!(
                "{reviewer} already reviewed export {id}; the second review must come from another checker"
            )));
        }
        // Audited before it takes effect: no step without a trace.
        let mut r = self.record(reviewer, &e.project_id, "export.review", "allowed");
        r.result_sha256 = Some(e.sha256.clone());
        r.details = Some(serde_json::json!({
            "export": id, "decision": decision.as_str(), "comment": comment.trim(),
        }));
        self.audit(r).await?;
        let review = ReviewRow {
            request_id: id.to_string(),
            reviewer: reviewer.to_string(),
            decision: decision.as_str().into(),
            comment: comment.trim().to_string(),
            created_at: chrono::Utc::now()
                .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string(),
        };
        let state = self
            .gate
            .catalog()
            .add_review(&review, |all| state_after(all).to_string())
            .await
            .map_err(|e| {
                let m = e.to_string().to_lowercase();
                if m.contains("unique") || m.contains("duplicate") {
                    AirlockError::Conflict(format!(
                        "{reviewer} already reviewed export {id}; the second review must come from another checker"
                    ))
                } else {
                    AirlockError::Catalog(e)
                }
            })?;
        let Some(state) = state else {
            return Err(AirlockError::Conflict(format!(
                "export {id} is {}, not pending: it can no longer be reviewed",
                e.state
            )));
        };
        if state == "released" {
            let mut r = self.record(reviewer, &e.project_id, "export.release", "allowed");
            r.result_sha256 = Some(e.sha256.clone());
            r.bytes = Some(e.file_bytes as u64);
            r.details = Some(serde_json::json!({"export": id, "requester": e.requester}));
            self.audit(r).await?;
        }
        self.get(id).await
    }

    /// The requester withdraws a request that is not released.
    pub async fn withdraw(&self, id: &str, requester: &str) -> Result<ExportRow, AirlockError> {
        let e = self.get(id).await?;
        if e.requester != requester {
            return Err(AirlockError::Denied(format!(
                "only {} (who asked) can withdraw export {id}",
                e.requester
            )));
        }
        let mut r = self.record(requester, &e.project_id, "export.withdraw", "allowed");
        r.details = Some(serde_json::json!({"export": id}));
        self.audit(r).await?;
        let cat = self.gate.catalog();
        let moved = cat.set_export_state(id, "pending", "withdrawn").await?
            || cat
                .set_export_state(id, "changes-requested", "withdrawn")
                .await?;
        if !moved {
            return Err(AirlockError::Conflict(format!(
                "export {id} is {}: only a pending request or one with changes requested can be withdrawn",
                e.state
            )));
        }
        self.get(id).await
    }

    fn sign(&self, id: &str, principal: &str, expires: i64) -> Result<Hmac<Sha256>, AirlockError> {
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(
            self.gate.keys().platform_key().expose(),
        )
        .map_err(|e| AirlockError::Invalid(e.to_string()))?;
        mac.update(b"pds/airlock/download/v1\0");
        mac.update(id.as_bytes());
        mac.update(b"\0");
        mac.update(principal.as_bytes());
        mac.update(b"\0");
        mac.update(expires.to_string().as_bytes());
        Ok(mac)
    }

    /// A signed link to a released file, for its requester.
    pub async fn link(&self, id: &str, principal: &str) -> Result<Link, AirlockError> {
        let e = self.get(id).await?;
        if e.requester != principal {
            return Err(AirlockError::Denied(format!(
                "export {id} is released to {} only",
                e.requester
            )));
        }
        if e.state != "released" {
            return Err(AirlockError::Conflict(format!(
                "export {id} is {}: files leave once two checkers have approved them",
                e.state
            )));
        }
        if e.downloads >= e.max_downloads {
            return Err(AirlockError::Conflict(format!(
                "export {id} was downloaded {} times, its limit",
                e.downloads
            )));
        }
        let expires = chrono::Utc::now().timestamp() + 60 * self.config.link_minutes as i64;
        let signature = hex::encode(self.sign(id, principal, expires)?.finalize().into_bytes());
        let mut r = self.record(principal, &e.project_id, "export.link", "allowed");
        r.details = Some(serde_json::json!({"export": id, "expires": expires}));
        self.audit(r).await?;
        Ok(Link {
            id: id.to_string(),
            expires,
            signature,
        })
    }

    /// Fetches a released file through a signed link: checks the link
    /// (constant time), the caller, the downloads left and the file's hash.
    pub async fn download(
        &self,
        id: &str,
        principal: &str,
        expires: i64,
        signature: &str,
    ) -> Result<(ExportRow, Vec<u8>), AirlockError> {
        let e = self.get(id).await?;
        let refuse = |m: String| async {
            let mut r = self.record(principal, &e.project_id, "export.download", "refused");
            r.reason = Some(m.clone());
            r.details = Some(serde_json::json!({"export": id}));
            self.audit(r).await?;
            Err::<(ExportRow, Vec<u8>), AirlockError>(AirlockError::Denied(m))
        };
        let sig = hex::decode(signature).unwrap_or_default();
        if self
            .sign(id, principal, expires)?
            .verify_slice(&sig)
            .is_err()
        {
            return refuse(format!(
                "the download link of export {id} is not valid for {principal}; ask for a new one"
            ))
            .await;
        }
        if expires < chrono::Utc::now().timestamp() {
            return refuse(format!(
                "the download link of export {id} has expired; ask for a new one"
            ))
            .await;
        }
        if e.requester != principal {
            return refuse(format!("export {id} is released to {} only", e.requester)).await;
        }
        let exhausted = format!(
            "export {id} is {} with {} of {} downloads used: nothing more can be fetched",
            e.state, e.downloads, e.max_downloads
        );
        if e.state != "released" || e.downloads >= e.max_downloads {
            return refuse(exhausted).await;
        }
        let stored = self
            .storage
            .get(&e.object)
            .await
            .map_err(|x| AirlockError::Storage(pds_gate::sanitize(&x.to_string())))?;
        if stored.len() < 12 {
            return Err(AirlockError::Storage(format!(
                "the file of export {id} is damaged"
            )));
        }
        let w: pds_keys::WrappedKey = serde_json::from_str(&e.wrapped_key)
            .map_err(|x| AirlockError::Invalid(format!("export {id}: bad key record: {x}")))?;
        let key = self.gate.keys().unwrap_data_key(&w, &purpose(id))?;
        let cipher = Aes256Gcm::new(&(*key.expose()).into());
        let nonce: [u8; 12] = stored[..12]
            .try_into()
            .map_err(|_| AirlockError::Storage("nonce".into()))?;
        let bytes = cipher
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: &stored[12..],
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| {
                AirlockError::Storage(format!("the file of export {id} fails its integrity check"))
            })?;
        let sha = hex::encode(Sha256::digest(&bytes));
        if sha != e.sha256 {
            return Err(AirlockError::Storage(format!(
                "the file of export {id} no longer has its recorded SHA-256"
            )));
        }
        // Counted once the file is known good; the conditional update
        // settles a race between two downloads of the last one.
        if !self.gate.catalog().count_download(id).await? {
            return refuse(exhausted).await;
        }
        let e = self.get(id).await?;
        let mut r = self.record(principal, &e.project_id, "export.download", "allowed");
        r.result_sha256 = Some(sha);
        r.bytes = Some(bytes.len() as u64);
        r.details = Some(serde_json::json!({
            "export": id, "download": e.downloads, "of": e.max_downloads,
        }));
        self.audit(r).await?;
        Ok((e, bytes))
    }
}

/// Encodes a result as CSV (with a header) or Parquet.
pub fn encode(
    schema: &arrow::datatypes::SchemaRef,
    batches: &[arrow::array::RecordBatch],
    format: FileType,
) -> Result<Vec<u8>, AirlockError> {
    let bad = |e: String| AirlockError::Invalid(format!("writing the result: {e}"));
    match format {
        FileType::Csv => {
            let mut out = Vec::new();
            {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out);
                for b in batches {
                    w.write(b).map_err(|e| bad(e.to_string()))?;
                }
            }
            Ok(out)
        }
        FileType::Parquet => {
            let mut out = Vec::new();
            let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema.clone(), None)
                .map_err(|e| bad(e.to_string()))?;
            for b in batches {
                w.write(b).map_err(|e| bad(e.to_string()))?;
            }
            w.close().map_err(|e| bad(e.to_string()))?;
            Ok(out)
        }
        other => Err(AirlockError::Invalid(format!(
            "a query result is written as CSV or Parquet, not {}",
            other.as_str()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(who: &str, d: &str) -> ReviewRow {
        ReviewRow {
            request_id: "x".into(),
            reviewer: who.into(),
            decision: d.into(),
            comment: String::new(),
            created_at: String::new(),
        }
    }

    #[test]
    fn two_different_approvals_release_and_any_objection_ends() {
        assert_eq!(state_after(&[]), "pending");
        assert_eq!(state_after(&[review("a", "approve")]), "pending");
        assert_eq!(
            state_after(&[review("a", "approve"), review("a", "approve")]),
            "pending",
            "one checker twice is one approval"
        );
        assert_eq!(
            state_after(&[review("a", "approve"), review("b", "approve")]),
            "released"
        );
        assert_eq!(
            state_after(&[review("a", "approve"), review("b", "reject")]),
            "rejected"
        );
        assert_eq!(
            state_after(&[review("a", "request-changes")]),
            "changes-requested"
        );
    }
}
