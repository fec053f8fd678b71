//! Research projects: who may see what of which snapshot, under which
//! pseudonyms.
//!
//! * [`perimeter`]: tables, columns, years, population and coarsening, and
//!   the SNDS rule of at most one potential identifier at full precision.
//! * [`Pseudonymiser`]: a project's pseudonyms, HMAC-SHA256 under the
//!   project's own random 256-bit key (never derived from another key), of
//!   the platform pseudonym. Two projects never share a value for the same
//!   person; linkage inside a project is kept.
//! * [`check_access`]: membership, role and dates, checked for every
//!   statement by the gate.
//! * [`Admin`]: the administrative API (`pds project ...` uses it); every
//!   change is written to the audit log before it is applied.
#![forbid(unsafe_code)]

pub mod perimeter;

use chrono::NaiveDate;
use hmac::{Hmac, KeyInit, Mac};
use pds_audit::{AuditLog, Record};
use pds_catalog::{Catalog, MemberRow, ProjectKeyRow, ProjectRow};
use pds_keys::{KeyStore, SecretKey, WrappedKey};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

pub use perimeter::{Perimeter, ResolvedPerimeter};

/// Errors of the project layer. Messages name what is wrong and how to fix
/// it, never data values.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// A perimeter is invalid.
    #[error("perimeter: {0}")]
    Perimeter(String),
    /// A project field is invalid.
    #[error("{0}")]
    Invalid(String),
    /// Access is refused.
    #[error("{0}")]
    Denied(String),
    /// The catalogue failed.
    #[error(transparent)]
    Catalog(#[from] pds_catalog::CatalogError),
    /// The audit log failed (so the change was not made).
    #[error("audit log: {0}")]
    Audit(#[from] pds_audit::AuditError),
    /// A key operation failed.
    #[error(transparent)]
    Keys(#[from] pds_keys::KeyError),
}

/// How a project sees data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccessMode {
    /// Pseudonymised rows.
    RowLevel,
    /// Only aggregated results.
    AggregateOnly,
}

impl AccessMode {
    /// Text form.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::RowLevel => "row-level",
            AccessMode::AggregateOnly => "aggregate-only",
        }
    }

    /// Parses the text form.
    pub fn parse(s: &str) -> Result<AccessMode, ProjectError> {
        match s {
            "row-level" => Ok(AccessMode::RowLevel),
            "aggregate-only" => Ok(AccessMode::AggregateOnly),
            _ => Err(ProjectError::Invalid(format!(
                "access mode {s:?}: use row-level or aggregate-only"
            ))),
        }
    }
}

/// A member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Leads the project; queries.
    Lead,
    /// Queries.
    Researcher,
    /// Reviews export requests; does not query.
    Checker,
}

impl Role {
    /// Text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Lead => "lead",
            Role::Researcher => "researcher",
            Role::Checker => "checker",
        }
    }

    /// Parses the text form.
    pub fn parse(s: &str) -> Result<Role, ProjectError> {
        match s {
            "lead" => Ok(Role::Lead),
            "researcher" => Ok(Role::Researcher),
            "checker" => Ok(Role::Checker),
            _ => Err(ProjectError::Invalid(format!(
                "role {s:?}: use lead, researcher or checker"
            ))),
        }
    }

    /// Whether the role may run statements.
    pub fn may_query(self) -> bool {
        matches!(self, Role::Lead | Role::Researcher)
    }
}

/// A project, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// Id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Authorisation reference.
    pub authorisation: String,
    /// First day of access.
    pub starts_on: NaiveDate,
    /// Last day of access.
    pub expires_on: NaiveDate,
    /// Access mode.
    pub mode: AccessMode,
    /// Pinned snapshot.
    pub snapshot: i64,
    /// Perimeter.
    pub perimeter: Perimeter,
    /// Explicitly expired at.
    pub expired_at: Option<String>,
}

fn date(s: &str, what: &str) -> Result<NaiveDate, ProjectError> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| ProjectError::Invalid(format!("{what} {s:?} is not a date; write YYYY-MM-DD")))
}

impl Project {
    /// Parses a stored row.
    pub fn from_row(r: &ProjectRow) -> Result<Project, ProjectError> {
        Ok(Project {
            id: r.id.clone(),
            title: r.title.clone(),
            authorisation: r.authorisation.clone(),
            starts_on: date(&r.starts_on, "start date")?,
            expires_on: date(&r.expires_on, "expiry date")?,
            mode: AccessMode::parse(&r.access_mode)?,
            snapshot: r.snapshot_id,
            perimeter: serde_json::from_str(&r.perimeter).map_err(|e| {
                ProjectError::Perimeter(format!("stored perimeter of {} is unreadable: {e}", r.id))
            })?,
            expired_at: r.expired_at.clone(),
        })
    }

    /// Whether the project is open on `day`.
    pub fn open_on(&self, day: NaiveDate) -> Result<(), ProjectError> {
        if self.expired_at.is_some() || day > self.expires_on {
            return Err(ProjectError::Denied(format!(
                "project {} expired on {}; access ended with its authorisation",
                self.id, self.expires_on
            )));
        }
        if day < self.starts_on {
            return Err(ProjectError::Denied(format!(
                "project {} opens on {}",
                self.id, self.starts_on
            )));
        }
        Ok(())
    }
}

/// Checks that `principal` may run statements in project `id` today, and
/// returns the project and the principal's role. A project that does not
/// exist and one the principal is not a member of give the same answer, so
/// that project names cannot be probed.
pub async fn check_access(
    cat: &Catalog,
    id: &str,
    principal: &str,
    today: NaiveDate,
) -> Result<(Project, Role), ProjectError> {
    let hidden = || {
        ProjectError::Denied(format!(
            "project {id} does not exist or {principal} is not a member of it"
        ))
    };
    let row = cat.project(id).await?.ok_or_else(hidden)?;
    let member = cat
        .members(id)
        .await?
        .into_iter()
        .find(|m| m.principal == principal)
        .ok_or_else(hidden)?;
    let project = Project::from_row(&row)?;
    let role = Role::parse(&member.role)?;
    project.open_on(today)?;
    if !role.may_query() {
        return Err(ProjectError::Denied(format!(
            "{principal} is a checker of project {id}: checkers review export requests and do not run statements"
        )));
    }
    Ok((project, role))
}

/// The purpose a project key version is wrapped for.
pub fn key_purpose(project: &str, version: i64) -> String {
    format!("pds/project/{project}/pseudonym/v{version}")
}

/// A project's pseudonymisation function.
#[derive(Clone)]
pub struct Pseudonymiser {
    mac: Hmac<Sha256>,
    /// SHA-256 states after the key's inner and outer pad blocks: with
    /// them, the HMAC of an identifier that fits one block is exactly two
    /// compressions (see [`Pseudonymiser::tag`]).
    inner: [u32; 8],
    outer: [u32; 8],
    prefix: String,
}

impl std::fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Pseudonymiser")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Length of a project pseudonym's hash part: 160 bits in base32.
const HASH_BYTES: usize = 20;

impl Pseudonymiser {
    /// The function of key version `version`.
    pub fn new(key: &SecretKey, version: i64) -> Pseudonymiser {
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose())
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        // RFC 2104: a key no longer than a block is zero-padded to one.
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(key.expose());
        let pad = |byte: u8| {
            let mut state = SHA256_IV;
            let mut b = block;
            b.iter_mut().for_each(|x| *x ^= byte);
            sha2::block_api::compress256(&mut state, &[b]);
            state
        };
        Pseudonymiser {
            mac,
            inner: pad(0x36),
            outer: pad(0x5c),
            prefix: format!("v{version}:"),
        }
    }

    /// HMAC-SHA256 of `msg`. Identifiers are short (17 characters in the
    /// SNDS), and this runs once per row a statement shows: for a message
    /// that fits one padded block it compresses twice from the keyed
    /// states, without the generic MAC's buffering; longer ones take the
    /// generic path. Both give the same tag (tested).
    fn tag(&self, msg: &[u8]) -> [u8; 32] {
        if msg.len() > 55 {
            let mut m = self.mac.clone();
            m.update(msg);
            return m.finalize().into_bytes().into();
        }
        let mut block = [0u8; 64];
        block[..msg.len()].copy_from_slice(msg);
        block[msg.len()] = 0x80;
        block[56..].copy_from_slice(&((64 + msg.len() as u64) * 8).to_be_bytes());
        let mut state = self.inner;
        sha2::block_api::compress256(&mut state, &[block]);
        let mut outer = [0u8; 64];
        outer[..32].copy_from_slice(&digest_bytes(state));
        outer[32] = 0x80;
        outer[56..].copy_from_slice(&((64u64 + 32) * 8).to_be_bytes());
        let mut state = self.outer;
        sha2::block_api::compress256(&mut state, &[outer]);
        digest_bytes(state)
    }

    /// The project pseudonym of a platform pseudonym: `v<version>:` and
    /// 32 base32 characters (160 bits of HMAC-SHA256). PMSI error markers
    /// are kept as they are.
    ///
    /// The set of values is prefix-free (all pseudonyms of a function have
    /// one length and start with `v`; the markers have another length and
    /// start with `x` or `X`): no value followed by any text equals another
    /// value followed by other text. The gate relies on it to group and
    /// count concatenations headed by an identifier without mapping them
    /// (`pds_gate::late`).
    pub fn pseudonym(&self, platform: &str) -> String {
        let mut out = String::with_capacity(self.prefix.len() + 32);
        self.pseudonym_into(platform, &mut out);
        out
    }

    /// [`Pseudonymiser::pseudonym`] into a buffer (cleared first).
    pub fn pseudonym_into(&self, platform: &str, out: &mut String) {
        out.clear();
        if pds_snds::identifiers::PSEUDONYM_ERROR_MARKERS.contains(&platform) {
            out.push_str(platform);
            return;
        }
        let tag = self.tag(platform.as_bytes());
        out.push_str(&self.prefix);
        base32_into(&tag, out);
    }
}

/// A SHA-256 state as digest bytes (big-endian words).
fn digest_bytes(state: [u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const SHA256_IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// Appends the RFC 4648 base32 (no padding) of the first [`HASH_BYTES`]
/// bytes of a tag: 32 characters. A fixed-size encoder, because the
/// general one showed up in profiles of statements that map millions of
/// rows.
fn base32_into(tag: &[u8; 32], out: &mut String) {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    for group in tag[..HASH_BYTES].chunks_exact(5) {
        let mut bits = [0u8; 8];
        bits[3..].copy_from_slice(group);
        let n = u64::from_be_bytes(bits);
        out.extend((0..8).map(|i| char::from(ALPHABET[((n >> (35 - 5 * i)) & 31) as usize])));
    }
}

/// The live key of a project and its function.
pub fn pseudonymiser(
    keys: &KeyStore,
    project: &str,
    rows: &[ProjectKeyRow],
) -> Result<Pseudonymiser, ProjectError> {
    let live = rows
        .iter()
        .rfind(|k| k.retired_at.is_none())
        .ok_or_else(|| ProjectError::Invalid(format!("project {project} has no live key")))?;
    let w: WrappedKey = serde_json::from_str(&live.wrapped_key)
        .map_err(|e| ProjectError::Invalid(format!("project {project}: bad key record: {e}")))?;
    let key = keys.unwrap_data_key(&w, &key_purpose(project, live.version))?;
    Ok(Pseudonymiser::new(&key, live.version))
}

/// A new project.
#[derive(Debug, Clone)]
pub struct NewProject {
    /// Id: lower-case letters, digits and `-`.
    pub id: String,
    /// Title.
    pub title: String,
    /// Authorisation reference.
    pub authorisation: String,
    /// First day, `YYYY-MM-DD`.
    pub starts_on: String,
    /// Last day, `YYYY-MM-DD`.
    pub expires_on: String,
    /// Access mode.
    pub mode: AccessMode,
    /// Snapshot (the latest when `None`).
    pub snapshot: Option<i64>,
    /// Perimeter.
    pub perimeter: Perimeter,
    /// Cohort of platform pseudonyms (empty: none).
    pub cohort: Vec<String>,
}

/// What `show` returns.
#[derive(Debug, Clone)]
pub struct ProjectInfo {
    /// The project.
    pub project: Project,
    /// Members.
    pub members: Vec<MemberRow>,
    /// Key versions (wrapped values omitted).
    pub key_versions: Vec<(i64, String, Option<String>)>,
    /// Cohort size.
    pub cohort: usize,
    /// The perimeter resolved against the pinned snapshot.
    pub resolved: ResolvedPerimeter,
}

fn check_id(id: &str) -> Result<(), ProjectError> {
    let ok = (2..=63).contains(&id.len())
        && id
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ProjectError::Invalid(format!(
            "project id {id:?}: use 2 to 63 lower-case letters, digits and '-', starting with a letter or digit"
        )))
    }
}

/// Checks an account name.
pub fn check_principal(p: &str) -> Result<(), ProjectError> {
    let ok = (1..=128).contains(&p.len())
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ProjectError::Invalid(format!(
            "account name {p:?}: use 1 to 128 letters, digits, '.', '_', '@' or '-'"
        )))
    }
}

/// Checks a cohort and returns it normalised: platform pseudonyms are
/// upper-case hex, sorted, each once.
pub fn normalise_cohort(cohort: &[String]) -> Result<Vec<String>, ProjectError> {
    let mut out = Vec::with_capacity(cohort.len());
    for (i, c) in cohort.iter().enumerate() {
        let c = c.trim();
        if c.len() != 32 || !c.chars().all(|ch| ch.is_ascii_hexdigit()) {
            return Err(ProjectError::Invalid(format!(
                "cohort line {}: not a platform pseudonym (32 hexadecimal characters)",
                i + 1
            )));
        }
        out.push(c.to_ascii_uppercase());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Administrative operations, each audited under `actor`.
pub struct Admin<'a> {
    /// Catalogue.
    pub cat: &'a Catalog,
    /// Audit log.
    pub audit: &'a AuditLog,
    /// Key store (to create and unwrap project keys).
    pub keys: &'a KeyStore,
    /// Who acts.
    pub actor: String,
}

impl Admin<'_> {
    async fn record(
        &self,
        action: &str,
        project: &str,
        details: serde_json::Value,
    ) -> Result<(), ProjectError> {
        self.audit
            .append(Record {
                principal: self.actor.clone(),
                project: Some(project.to_string()),
                action: action.to_string(),
                decision: "done".into(),
                details: Some(details),
                ..Record::default()
            })
            .await?;
        Ok(())
    }

    async fn row(&self, id: &str) -> Result<ProjectRow, ProjectError> {
        self.cat
            .project(id)
            .await?
            .ok_or_else(|| pds_catalog::CatalogError::NoProject(id.to_string()).into())
    }

    /// Creates a project with a fresh random key. Nothing is created if the
    /// perimeter or any field is invalid.
    pub async fn create(&self, p: &NewProject) -> Result<Project, ProjectError> {
        check_id(&p.id)?;
        if p.title.trim().is_empty() || p.authorisation.trim().is_empty() {
            return Err(ProjectError::Invalid(
                "a project needs a title and an authorisation reference (e.g. the CNIL decision number)".into(),
            ));
        }
        let (s, e) = (
            date(&p.starts_on, "start date")?,
            date(&p.expires_on, "expiry date")?,
        );
        if e < s {
            return Err(ProjectError::Invalid(format!(
                "expiry date {e} is before start date {s}"
            )));
        }
        let cohort = normalise_cohort(&p.cohort)?;
        let snapshot = match p.snapshot {
            Some(id) => self.cat.snapshot(id).await?.id,
            None => self.cat.latest("snds").await?.id,
        };
        let tables = self.cat.tables(snapshot).await?;
        let resolved = perimeter::resolve(&p.perimeter, &tables, !cohort.is_empty())?;
        let perimeter_json = serde_json::to_string(&p.perimeter)
            .map_err(|e| ProjectError::Invalid(e.to_string()))?;
        let (_, wrapped) = self.keys.new_data_key(&key_purpose(&p.id, 1))?;
        let row = ProjectRow {
            id: p.id.clone(),
            title: p.title.clone(),
            authorisation: p.authorisation.clone(),
            starts_on: s.to_string(),
            expires_on: e.to_string(),
            access_mode: p.mode.as_str().into(),
            snapshot_id: snapshot,
            perimeter: perimeter_json,
            created_at: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            created_by: self.actor.clone(),
            expired_at: None,
        };
        if self.cat.project(&p.id).await?.is_some() {
            return Err(ProjectError::Invalid(format!(
                "project {} already exists",
                p.id
            )));
        }
        self.record(
            "project.create",
            &p.id,
            serde_json::json!({
                "title": p.title, "authorisation": p.authorisation,
                "starts_on": row.starts_on, "expires_on": row.expires_on,
                "access_mode": row.access_mode, "snapshot": snapshot,
                "perimeter": p.perimeter, "cohort_size": cohort.len(),
                "full_precision": resolved.full_precision.iter().map(|c| c.label()).collect::<Vec<_>>(),
                "key_version": 1,
            }),
        )
        .await?;
        let wrapped =
            serde_json::to_string(&wrapped).map_err(|e| ProjectError::Invalid(e.to_string()))?;
        self.cat.create_project(&row, &wrapped, &cohort).await?;
        Project::from_row(&row)
    }

    /// A project with members, key versions and resolved perimeter.
    pub async fn show(&self, id: &str) -> Result<ProjectInfo, ProjectError> {
        show(self.cat, id).await
    }

    /// Adds a member or changes their role.
    pub async fn grant(&self, id: &str, principal: &str, role: Role) -> Result<(), ProjectError> {
        check_principal(principal)?;
        self.row(id).await?;
        self.record(
            "project.grant",
            id,
            serde_json::json!({"principal": principal, "role": role.as_str()}),
        )
        .await?;
        self.cat
            .set_member(id, principal, role.as_str(), &self.actor)
            .await?;
        Ok(())
    }

    /// Removes a member.
    pub async fn revoke(&self, id: &str, principal: &str) -> Result<(), ProjectError> {
        self.row(id).await?;
        if !self
            .cat
            .members(id)
            .await?
            .iter()
            .any(|m| m.principal == principal)
        {
            return Err(ProjectError::Invalid(format!(
                "{principal} is not a member of project {id}"
            )));
        }
        self.record(
            "project.revoke",
            id,
            serde_json::json!({"principal": principal}),
        )
        .await?;
        self.cat.remove_member(id, principal).await?;
        Ok(())
    }

    /// Replaces the perimeter (and cohort, and optionally the snapshot).
    pub async fn set_perimeter(
        &self,
        id: &str,
        perimeter: &Perimeter,
        cohort: &[String],
        snapshot: Option<i64>,
    ) -> Result<ResolvedPerimeter, ProjectError> {
        let row = self.row(id).await?;
        let cohort = normalise_cohort(cohort)?;
        let cohort = cohort.as_slice();
        let snapshot = match snapshot {
            Some(s) => self.cat.snapshot(s).await?.id,
            None => row.snapshot_id,
        };
        let tables = self.cat.tables(snapshot).await?;
        let resolved = perimeter::resolve(perimeter, &tables, !cohort.is_empty())?;
        let json =
            serde_json::to_string(perimeter).map_err(|e| ProjectError::Invalid(e.to_string()))?;
        self.record(
            "project.perimeter",
            id,
            serde_json::json!({
                "before": serde_json::from_str::<serde_json::Value>(&row.perimeter).unwrap_or(serde_json::Value::Null),
                "after": perimeter, "snapshot": snapshot, "cohort_size": cohort.len(),
            }),
        )
        .await?;
        self.cat.set_perimeter(id, snapshot, &json, cohort).await?;
        Ok(resolved)
    }

    /// Ends access now.
    pub async fn expire(&self, id: &str) -> Result<(), ProjectError> {
        let row = self.row(id).await?;
        let today = chrono::Utc::now().date_naive();
        let expires = date(&row.expires_on, "expiry date")?.min(today);
        let at = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        self.record(
            "project.expire",
            id,
            serde_json::json!({"before": row.expires_on, "after": expires.to_string()}),
        )
        .await?;
        self.cat
            .set_expiry(id, &expires.to_string(), Some(&at))
            .await?;
        Ok(())
    }

    /// Replaces the project's pseudonymisation key by a new random one and
    /// destroys the old one: every project pseudonym changes, linkage
    /// inside the project is kept.
    pub async fn rotate_key(&self, id: &str) -> Result<i64, ProjectError> {
        self.row(id).await?;
        let versions = self.cat.project_keys(id).await?;
        let next = versions.iter().map(|k| k.version).max().unwrap_or(0) + 1;
        let (_, wrapped) = self.keys.new_data_key(&key_purpose(id, next))?;
        self.record(
            "project.rotate-key",
            id,
            serde_json::json!({"retired": versions.iter().filter(|k| k.retired_at.is_none()).map(|k| k.version).collect::<Vec<_>>(), "new_version": next}),
        )
        .await?;
        let wrapped =
            serde_json::to_string(&wrapped).map_err(|e| ProjectError::Invalid(e.to_string()))?;
        self.cat.rotate_project_key(id, next, &wrapped).await?;
        Ok(next)
    }
}

/// A project with members, key versions and resolved perimeter (read-only).
pub async fn show(cat: &Catalog, id: &str) -> Result<ProjectInfo, ProjectError> {
    let row = cat
        .project(id)
        .await?
        .ok_or_else(|| pds_catalog::CatalogError::NoProject(id.to_string()))?;
    let project = Project::from_row(&row)?;
    let members = cat.members(id).await?;
    let keys = cat.project_keys(id).await?;
    let cohort = cat.cohort(id).await?.len();
    let tables = cat.tables(project.snapshot).await?;
    let resolved = perimeter::resolve(&project.perimeter, &tables, cohort > 0)?;
    Ok(ProjectInfo {
        project,
        members,
        key_versions: keys
            .into_iter()
            .map(|k| (k.version, k.created_at, k.retired_at))
            .collect(),
        cohort,
        resolved,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: the generic HMAC and the general base32 encoder.
    fn reference(key: &SecretKey, version: i64, platform: &str) -> String {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose()).unwrap();
        m.update(platform.as_bytes());
        let tag = m.finalize().into_bytes();
        format!(
            "v{version}:{}",
            data_encoding::BASE32_NOPAD.encode(&tag[..HASH_BYTES])
        )
    }

    #[test]
    fn the_two_compression_path_gives_the_generic_hmac_for_every_length() {
        for seed in 0u8..4 {
            let key = SecretKey::from_bytes([seed.wrapping_mul(37).wrapping_add(1); 32]);
            let p = Pseudonymiser::new(&key, i64::from(seed) + 1);
            // Around the one-block limit (55 bytes) and beyond it.
            for len in (0..=130).chain([17, 1000]) {
                let platform: String = (0..len)
                    .map(|i| char::from(b'0' + ((i * 7 + usize::from(seed)) % 43) as u8))
                    .collect();
                let got = p.pseudonym(&platform);
                assert_eq!(
                    got,
                    reference(&key, i64::from(seed) + 1, &platform),
                    "length {len}"
                );
                assert_eq!(got.len(), format!("v{}:", seed + 1).len() + 32);
            }
        }
    }

    #[test]
    fn error_markers_are_kept_and_keys_give_different_pseudonyms() {
        let a = Pseudonymiser::new(&SecretKey::from_bytes([1; 32]), 1);
        let b = Pseudonymiser::new(&SecretKey::from_bytes([2; 32]), 1);
        for m in pds_snds::identifiers::PSEUDONYM_ERROR_MARKERS {
            assert_eq!(a.pseudonym(m), *m);
        }
        assert_ne!(
            a.pseudonym("12345678901234567"),
            b.pseudonym("12345678901234567")
        );
        // One pseudonymiser reuses its buffer without carrying anything over.
        let mut out = String::from("left over");
        a.pseudonym_into("12345678901234567", &mut out);
        assert_eq!(out, a.pseudonym("12345678901234567"));
    }

    #[test]
    fn the_values_of_one_function_are_prefix_free() {
        let p = Pseudonymiser::new(&SecretKey::from_bytes([3; 32]), 12);
        let mut values: Vec<String> = ["", "1", "12345678901234567", "é", "x", &"9".repeat(80)]
            .iter()
            .map(|id| p.pseudonym(id))
            .collect();
        values.extend(
            pds_snds::identifiers::PSEUDONYM_ERROR_MARKERS
                .iter()
                .map(|m| p.pseudonym(m)),
        );
        for (i, a) in values.iter().enumerate() {
            for (j, b) in values.iter().enumerate() {
                if i != j {
                    assert!(!b.starts_with(a.as_str()), "{a} is a prefix of {b}");
                }
            }
        }
    }
}
