//! Audit-log rows. The log's rules (hashing, seals, checkpoints,
//! verification) live in `pds-audit`; this module only stores rows.

use sqlx::Row;

use crate::{Catalog, CatalogError};

/// An audit entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// Position in the log, from 1, without gaps.
    pub seq: i64,
    /// RFC 3339 UTC time.
    pub logged_at: String,
    /// Who.
    pub principal: String,
    /// Which project, if any.
    pub project_id: Option<String>,
    /// What (`statement`, `project.create`, ...).
    pub action: String,
    /// `allowed`, `refused`, `completed`, `failed`, `done`.
    pub decision: String,
    /// Canonical JSON of the entry.
    pub body: String,
    /// SHA-256(0x00 || body), hex.
    pub leaf_hash: String,
    /// Ed25519 seal, hex.
    pub seal: String,
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRow {
    /// Id (1, 2, ...).
    pub id: i64,
    /// Number of entries it covers.
    pub tree_size: i64,
    /// Merkle tree head, hex.
    pub root_hash: String,
    /// When.
    pub created_at: String,
    /// The signed note (C2SP tlog-checkpoint).
    pub note: String,
}

/// The log's signing key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditKeyRow {
    /// Key id (hex of the first bytes of the public key's hash).
    pub key_id: String,
    /// Ed25519 public key, hex.
    pub public_key: String,
    /// Secret key wrapped by the master key (JSON).
    pub wrapped_secret: String,
    /// When.
    pub created_at: String,
}

/// Filters of [`Catalog::audit_entries`].
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this project.
    pub project: Option<String>,
    /// Only this principal.
    pub principal: Option<String>,
    /// From this time (RFC 3339, inclusive).
    pub since: Option<String>,
    /// Until this time (RFC 3339, exclusive).
    pub until: Option<String>,
}

fn entry_from(r: &sqlx::any::AnyRow) -> Result<AuditRow, sqlx::Error> {
    Ok(AuditRow {
        seq: r.try_get("seq")?,
        logged_at: r.try_get("logged_at")?,
        principal: r.try_get("principal")?,
        project_id: r.try_get("project_id")?,
        action: r.try_get("action")?,
        decision: r.try_get("decision")?,
        body: r.try_get("body")?,
        leaf_hash: r.try_get("leaf_hash")?,
        seal: r.try_get("seal")?,
    })
}

fn checkpoint_from(r: &sqlx::any::AnyRow) -> Result<CheckpointRow, sqlx::Error> {
    Ok(CheckpointRow {
        id: r.try_get("id")?,
        tree_size: r.try_get("tree_size")?,
        root_hash: r.try_get("root_hash")?,
        created_at: r.try_get("created_at")?,
        note: r.try_get("note")?,
    })
}

impl Catalog {
    /// The log's signing key, if one was created.
    pub async fn audit_key(&self) -> Result<Option<AuditKeyRow>, CatalogError> {
        let row = sqlx::query(
            "SELECT key_id, public_key, wrapped_secret, created_at FROM audit_keys ORDER BY created_at DESC, key_id LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(AuditKeyRow {
                key_id: r.try_get("key_id")?,
                public_key: r.try_get("public_key")?,
                wrapped_secret: r.try_get("wrapped_secret")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .transpose()
        .map_err(|e: sqlx::Error| e.into())
    }

    /// Stores the log's signing key.
    pub async fn insert_audit_key(&self, k: &AuditKeyRow) -> Result<(), CatalogError> {
        sqlx::query(
            "INSERT INTO audit_keys (key_id, public_key, wrapped_secret, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&k.key_id)
        .bind(&k.public_key)
        .bind(&k.wrapped_secret)
        .bind(&k.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The last entry's position and leaf hash.
    pub async fn audit_tail(&self) -> Result<Option<(i64, String)>, CatalogError> {
        let row = sqlx::query("SELECT seq, leaf_hash FROM audit_entries ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|r| Ok::<_, sqlx::Error>((r.try_get("seq")?, r.try_get("leaf_hash")?)))
            .transpose()?)
    }

    /// Appends an entry. Returns `false` when its position was taken by a
    /// concurrent writer (read the tail again and rebuild the entry).
    pub async fn insert_audit_entry(&self, e: &AuditRow) -> Result<bool, CatalogError> {
        let r = sqlx::query(
            "INSERT INTO audit_entries (seq, logged_at, principal, project_id, action, decision, body, leaf_hash, seal) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(e.seq)
        .bind(&e.logged_at)
        .bind(&e.principal)
        .bind(e.project_id.as_deref())
        .bind(&e.action)
        .bind(&e.decision)
        .bind(&e.body)
        .bind(&e.leaf_hash)
        .bind(&e.seal)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Positions and stored leaf hashes of every entry, in log order (for
    /// checkpoints; verification recomputes leaves from bodies instead).
    pub async fn audit_leaves(&self) -> Result<Vec<(i64, String)>, CatalogError> {
        let rows = sqlx::query("SELECT seq, leaf_hash FROM audit_entries ORDER BY seq")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("seq")?, r.try_get("leaf_hash")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// The latest checkpoint.
    pub async fn last_checkpoint(&self) -> Result<Option<CheckpointRow>, CatalogError> {
        let row = sqlx::query(
            "SELECT id, tree_size, root_hash, created_at, note FROM audit_checkpoints ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(checkpoint_from).transpose()?)
    }

    /// Entries in log order, filtered.
    pub async fn audit_entries(&self, f: &AuditFilter) -> Result<Vec<AuditRow>, CatalogError> {
        // Fixed SQL text: absent filters bind NULL and match everything.
        let rows = sqlx::query(
            "SELECT seq, logged_at, principal, project_id, action, decision, body, leaf_hash, seal FROM audit_entries \
             WHERE ($1 IS NULL OR project_id = $2) AND ($3 IS NULL OR principal = $4) \
             AND ($5 IS NULL OR logged_at >= $6) AND ($7 IS NULL OR logged_at < $8) ORDER BY seq",
        )
        // Each value twice: SQLite numbers parameters by position.
        .bind(f.project.as_deref())
        .bind(f.project.as_deref())
        .bind(f.principal.as_deref())
        .bind(f.principal.as_deref())
        .bind(f.since.as_deref())
        .bind(f.since.as_deref())
        .bind(f.until.as_deref())
        .bind(f.until.as_deref())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(entry_from).collect::<Result<_, _>>()?)
    }

    /// Stores a checkpoint; its id is the next one.
    pub async fn insert_checkpoint(&self, c: &CheckpointRow) -> Result<i64, CatalogError> {
        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) + 1 AS next FROM audit_checkpoints")
            .fetch_one(&mut *tx)
            .await?
            .try_get("next")?;
        sqlx::query(
            "INSERT INTO audit_checkpoints (id, tree_size, root_hash, created_at, note) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(c.tree_size)
        .bind(&c.root_hash)
        .bind(&c.created_at)
        .bind(&c.note)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Every checkpoint, oldest first.
    pub async fn checkpoints(&self) -> Result<Vec<CheckpointRow>, CatalogError> {
        let rows = sqlx::query(
            "SELECT id, tree_size, root_hash, created_at, note FROM audit_checkpoints ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(checkpoint_from).collect::<Result<_, _>>()?)
    }
}
