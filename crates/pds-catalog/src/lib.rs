//! The PDS catalogue: what data exist, in which immutable snapshot, in which
//! files, with which provenance.
//!
//! The catalogue is a database (SQLite embedded by default, PostgreSQL in
//! production); the data are files in an object store. The two are kept
//! separable so that a cluster can share them. A snapshot becomes visible in
//! one transaction ([`Catalog::commit_snapshot`]): until it commits, no reader
//! can see any of its tables or files, so an interrupted load leaves the
//! catalogue exactly as it was.
//!
//! One set of portable migrations (`migrations/`) serves both back-ends.
#![forbid(unsafe_code)]

mod accounts;
mod audit;
mod identity;
mod outputs;
mod projects;

pub use accounts::{AccountRow, TokenRow};
pub use audit::{AuditFilter, AuditKeyRow, AuditRow, CheckpointRow};
pub use identity::{PendingLogin, SessionRow};
pub use outputs::{ExportRow, PopulationRow, ReviewRow};
pub use projects::{MemberRow, ProjectKeyRow, ProjectRow};

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

/// Errors of the catalogue.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A project that does not exist was asked for.
    #[error("project `{0}` does not exist; `pds project list` lists them")]
    NoProject(String),
    /// The catalogue URL is not one PDS supports.
    #[error(
        "catalogue URL `{0}` is not supported: use sqlite://PATH or postgres://USER@HOST:PORT/DB"
    )]
    Url(String),
    /// A snapshot that does not exist was asked for.
    #[error("snapshot {0} does not exist; `pds snapshots` lists them")]
    NoSnapshot(i64),
    /// No snapshot has been committed yet.
    #[error("dataset `{0}` has no snapshot yet; load a delivery with `pds load DIR`")]
    Empty(String),
    /// A new snapshot is inconsistent (e.g. a file for an undeclared table).
    #[error("invalid snapshot: {0}")]
    Invalid(String),
    /// Database error.
    #[error("catalogue database: {0}")]
    Db(#[from] sqlx::Error),
    /// Migration error.
    #[error("catalogue migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Which database holds the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// A source file of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// File name in the delivery.
    pub name: String,
    /// Table it was recognised as.
    pub table: String,
    /// Size in bytes.
    pub bytes: i64,
    /// SHA-256, hex.
    pub sha256: String,
    /// Rows loaded.
    pub rows_loaded: i64,
    /// Rows rejected.
    pub rows_rejected: i64,
}

/// A column of a loaded table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    /// Name.
    pub name: String,
    /// Arrow/SQL type name.
    pub data_type: String,
    /// SNDS description.
    pub description: String,
    /// Value list, if any.
    pub nomenclature: String,
}

/// A data file of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    /// Path in the object store.
    pub path: String,
    /// Partition value (`2021-03` for a flow month, `2021` for a PMSI year).
    pub partition: String,
    /// Rows.
    pub rows: i64,
    /// Bytes.
    pub bytes: i64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
}

/// A table of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// Name (`ER_PRS_F`, `T_MCO21B`).
    pub name: String,
    /// Title.
    pub title: String,
    /// Rows.
    pub rows: i64,
    /// Bytes.
    pub bytes: i64,
    /// Columns in order.
    pub columns: Vec<ColumnInfo>,
    /// Files.
    pub files: Vec<DataFile>,
}

/// What a load commits.
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    /// Dataset (`snds`).
    pub dataset: String,
    /// Who loaded it.
    pub created_by: String,
    /// Delivery directory.
    pub source_dir: String,
    /// Prefix of its files in the object store.
    pub storage_prefix: String,
    /// The snapshot data key, wrapped by the master key (JSON).
    pub wrapped_key: String,
    /// Free note.
    pub note: String,
    /// Source files.
    pub sources: Vec<SourceFile>,
    /// Tables with columns and files.
    pub tables: Vec<TableInfo>,
}

/// A committed snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Id (1, 2, ...).
    pub id: i64,
    /// Dataset.
    pub dataset: String,
    /// Previous snapshot of the dataset.
    pub parent: Option<i64>,
    /// RFC 3339 time.
    pub created_at: String,
    /// Who.
    pub created_by: String,
    /// Delivery directory.
    pub source_dir: String,
    /// Object-store prefix.
    pub storage_prefix: String,
    /// Wrapped data key (JSON).
    pub wrapped_key: String,
    /// Note.
    pub note: String,
    /// Tables.
    pub tables: i64,
    /// Rows in all tables.
    pub rows: i64,
    /// Bytes in all tables.
    pub bytes: i64,
}

/// A key stored wrapped in the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredKey {
    /// A snapshot's data key.
    Snapshot(i64),
    /// A project's pseudonymisation key (project, version).
    Project(String, i64),
    /// The audit log's signing key.
    Audit(String),
    /// An account's TOTP seed.
    Totp(String),
    /// The key of an export request's file.
    Export(String),
}

/// A connection pool to the catalogue.
#[derive(Debug, Clone)]
pub struct Catalog {
    pool: AnyPool,
    backend: Backend,
}

pub(crate) fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The snapshot listing query; a macro so that `concat!` keeps every SQL
/// text static (no string built at run time reaches the database).
macro_rules! snapshot_select {
    () => {
        "SELECT s.id, s.dataset_id, s.parent_id, s.created_at, s.created_by, s.source_dir, \
        s.storage_prefix, s.wrapped_key, s.note, \
        (SELECT COUNT(*) FROM snapshot_tables t WHERE t.snapshot_id = s.id) AS n_tables, \
        (SELECT CAST(COALESCE(SUM(row_count), 0) AS BIGINT) FROM snapshot_tables t WHERE t.snapshot_id = s.id) AS n_rows, \
        (SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM snapshot_tables t WHERE t.snapshot_id = s.id) AS n_bytes \
        FROM snapshots s"
    };
}

impl Catalog {
    /// Opens (creating if needed) the catalogue at `url` and migrates it.
    ///
    /// `sqlite://PATH` (the file is created) or `postgres://...`.
    pub async fn connect(url: &str) -> Result<Catalog, CatalogError> {
        install_default_drivers();
        let (backend, url) = if let Some(path) = url.strip_prefix("sqlite://") {
            (Backend::Sqlite, format!("sqlite://{path}?mode=rwc"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(CatalogError::Url(url.to_string()));
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 1 } else { 4 })
            .connect(&url)
            .await?;
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA foreign_keys = ON")
                .execute(&pool)
                .await?;
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
            sqlx::query("PRAGMA synchronous = FULL")
                .execute(&pool)
                .await?;
        }
        // One set of portable migrations serves both back-ends.
        sqlx::migrate!().run(&pool).await?;
        Ok(Catalog { pool, backend })
    }

    /// The back-end in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Declares a dataset if it does not exist yet.
    pub async fn ensure_dataset(&self, id: &str, description: &str) -> Result<(), CatalogError> {
        let exists = sqlx::query("SELECT id FROM datasets WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_none() {
            sqlx::query("INSERT INTO datasets (id, description, created_at) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(description)
                .bind(now())
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// The id the next snapshot will get (used to name its storage prefix;
    /// the commit re-checks it).
    pub async fn next_snapshot_id(&self) -> Result<i64, CatalogError> {
        let row = sqlx::query("SELECT COALESCE(MAX(id), 0) + 1 AS next FROM snapshots")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("next")?)
    }

    /// Commits a snapshot and everything it contains in one transaction.
    pub async fn commit_snapshot(&self, id: i64, s: &NewSnapshot) -> Result<i64, CatalogError> {
        let declared: std::collections::HashSet<&str> =
            s.tables.iter().map(|t| t.name.as_str()).collect();
        if declared.len() != s.tables.len() {
            return Err(CatalogError::Invalid("a table is declared twice".into()));
        }
        if let Some(src) = s
            .sources
            .iter()
            .find(|f| !declared.contains(f.table.as_str()))
        {
            return Err(CatalogError::Invalid(format!(
                "source {} names table {} which the snapshot lacks",
                src.name, src.table
            )));
        }
        let mut tx = self.pool.begin().await?;
        let next: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) + 1 AS next FROM snapshots")
            .fetch_one(&mut *tx)
            .await?
            .try_get("next")?;
        if next != id {
            return Err(CatalogError::Invalid(format!(
                "snapshot {id} is no longer the next one ({next}); another load committed first"
            )));
        }
        let parent: Option<i64> =
            sqlx::query("SELECT MAX(id) AS p FROM snapshots WHERE dataset_id = $1")
                .bind(&s.dataset)
                .fetch_one(&mut *tx)
                .await?
                .try_get("p")?;
        sqlx::query(
            "INSERT INTO snapshots (id, dataset_id, parent_id, created_at, created_by, source_dir, storage_prefix, wrapped_key, note) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id)
        .bind(&s.dataset)
        .bind(parent)
        .bind(now())
        .bind(&s.created_by)
        .bind(&s.source_dir)
        .bind(&s.storage_prefix)
        .bind(&s.wrapped_key)
        .bind(&s.note)
        .execute(&mut *tx)
        .await?;
        for t in &s.tables {
            sqlx::query("INSERT INTO snapshot_tables (snapshot_id, name, title, row_count, bytes) VALUES ($1, $2, $3, $4, $5)")
                .bind(id)
                .bind(&t.name)
                .bind(&t.title)
                .bind(t.rows)
                .bind(t.bytes)
                .execute(&mut *tx)
                .await?;
            for (i, c) in t.columns.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO table_columns (snapshot_id, table_name, position, name, data_type, description, nomenclature) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(id)
                .bind(&t.name)
                .bind(i as i64)
                .bind(&c.name)
                .bind(&c.data_type)
                .bind(&c.description)
                .bind(&c.nomenclature)
                .execute(&mut *tx)
                .await?;
            }
            for f in &t.files {
                sqlx::query(
                    "INSERT INTO data_files (snapshot_id, table_name, path, partition_value, row_count, bytes, sha256) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(id)
                .bind(&t.name)
                .bind(&f.path)
                .bind(&f.partition)
                .bind(f.rows)
                .bind(f.bytes)
                .bind(&f.sha256)
                .execute(&mut *tx)
                .await?;
            }
        }
        for f in &s.sources {
            sqlx::query(
                "INSERT INTO source_files (snapshot_id, name, table_name, bytes, sha256, rows_loaded, rows_rejected) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(id)
            .bind(&f.name)
            .bind(&f.table)
            .bind(f.bytes)
            .bind(&f.sha256)
            .bind(f.rows_loaded)
            .bind(f.rows_rejected)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    fn snapshot_row(r: &sqlx::any::AnyRow) -> Result<SnapshotInfo, CatalogError> {
        Ok(SnapshotInfo {
            id: r.try_get("id")?,
            dataset: r.try_get("dataset_id")?,
            parent: r.try_get("parent_id")?,
            created_at: r.try_get("created_at")?,
            created_by: r.try_get("created_by")?,
            source_dir: r.try_get("source_dir")?,
            storage_prefix: r.try_get("storage_prefix")?,
            wrapped_key: r.try_get("wrapped_key")?,
            note: r.try_get("note")?,
            tables: r.try_get("n_tables")?,
            rows: r.try_get("n_rows")?,
            bytes: r.try_get("n_bytes")?,
        })
    }

    /// All committed snapshots, oldest first.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotInfo>, CatalogError> {
        let rows = sqlx::query(concat!(snapshot_select!(), " ORDER BY s.id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::snapshot_row).collect()
    }

    /// One snapshot.
    pub async fn snapshot(&self, id: i64) -> Result<SnapshotInfo, CatalogError> {
        let row = sqlx::query(concat!(snapshot_select!(), " WHERE s.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => Self::snapshot_row(&r),
            None => Err(CatalogError::NoSnapshot(id)),
        }
    }

    /// The newest snapshot of a dataset.
    pub async fn latest(&self, dataset: &str) -> Result<SnapshotInfo, CatalogError> {
        let row = sqlx::query(concat!(
            snapshot_select!(),
            " WHERE s.dataset_id = $1 ORDER BY s.id DESC LIMIT 1"
        ))
        .bind(dataset)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Self::snapshot_row(&r),
            None => Err(CatalogError::Empty(dataset.to_string())),
        }
    }

    /// The tables of a snapshot, with columns and files, by name.
    pub async fn tables(&self, snapshot: i64) -> Result<Vec<TableInfo>, CatalogError> {
        self.snapshot(snapshot).await?;
        let rows = sqlx::query("SELECT name, title, row_count, bytes FROM snapshot_tables WHERE snapshot_id = $1 ORDER BY name")
            .bind(snapshot)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let name: String = r.try_get("name")?;
            let cols = sqlx::query(
                "SELECT name, data_type, description, nomenclature FROM table_columns \
                 WHERE snapshot_id = $1 AND table_name = $2 ORDER BY position",
            )
            .bind(snapshot)
            .bind(&name)
            .fetch_all(&self.pool)
            .await?;
            let files = sqlx::query(
                "SELECT path, partition_value, row_count, bytes, sha256 FROM data_files \
                 WHERE snapshot_id = $1 AND table_name = $2 ORDER BY path",
            )
            .bind(snapshot)
            .bind(&name)
            .fetch_all(&self.pool)
            .await?;
            out.push(TableInfo {
                title: r.try_get("title")?,
                rows: r.try_get("row_count")?,
                bytes: r.try_get("bytes")?,
                columns: cols
                    .iter()
                    .map(|c| {
                        Ok(ColumnInfo {
                            name: c.try_get("name")?,
                            data_type: c.try_get("data_type")?,
                            description: c.try_get("description")?,
                            nomenclature: c.try_get("nomenclature")?,
                        })
                    })
                    .collect::<Result<_, sqlx::Error>>()?,
                files: files
                    .iter()
                    .map(|f| {
                        Ok(DataFile {
                            path: f.try_get("path")?,
                            partition: f.try_get("partition_value")?,
                            rows: f.try_get("row_count")?,
                            bytes: f.try_get("bytes")?,
                            sha256: f.try_get("sha256")?,
                        })
                    })
                    .collect::<Result<_, sqlx::Error>>()?,
                name,
            });
        }
        Ok(out)
    }

    /// Source files of a snapshot.
    pub async fn sources(&self, snapshot: i64) -> Result<Vec<SourceFile>, CatalogError> {
        let rows = sqlx::query(
            "SELECT name, table_name, bytes, sha256, rows_loaded, rows_rejected FROM source_files WHERE snapshot_id = $1 ORDER BY name",
        )
        .bind(snapshot)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SourceFile {
                    name: r.try_get("name")?,
                    table: r.try_get("table_name")?,
                    bytes: r.try_get("bytes")?,
                    sha256: r.try_get("sha256")?,
                    rows_loaded: r.try_get("rows_loaded")?,
                    rows_rejected: r.try_get("rows_rejected")?,
                })
            })
            .collect()
    }

    /// Replaces the wrapped key of a snapshot (master-key rotation).
    pub async fn set_wrapped_key(&self, snapshot: i64, wrapped: &str) -> Result<(), CatalogError> {
        let r = sqlx::query("UPDATE snapshots SET wrapped_key = $1 WHERE id = $2")
            .bind(wrapped)
            .bind(snapshot)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(CatalogError::NoSnapshot(snapshot));
        }
        Ok(())
    }

    /// Replaces the wrapped keys of several snapshots in one transaction
    /// (master-key rotation): either every key is replaced or none is.
    pub async fn set_wrapped_keys(&self, keys: &[(StoredKey, String)]) -> Result<(), CatalogError> {
        let mut tx = self.pool.begin().await?;
        for (which, wrapped) in keys {
            let r = match which {
                StoredKey::Snapshot(id) => {
                    sqlx::query("UPDATE snapshots SET wrapped_key = $1 WHERE id = $2")
                        .bind(wrapped.as_str())
                        .bind(*id)
                        .execute(&mut *tx)
                        .await?
                }
                StoredKey::Project(id, version) => sqlx::query(
                    "UPDATE project_keys SET wrapped_key = $1 WHERE project_id = $2 AND version = $3",
                )
                .bind(wrapped.as_str())
                .bind(id.as_str())
                .bind(*version)
                .execute(&mut *tx)
                .await?,
                StoredKey::Audit(id) => {
                    sqlx::query("UPDATE audit_keys SET wrapped_secret = $1 WHERE key_id = $2")
                        .bind(wrapped.as_str())
                        .bind(id.as_str())
                        .execute(&mut *tx)
                        .await?
                }
                StoredKey::Totp(name) => {
                    sqlx::query("UPDATE accounts SET totp_seed = $1 WHERE name = $2")
                        .bind(wrapped.as_str())
                        .bind(name.as_str())
                        .execute(&mut *tx)
                        .await?
                }
                StoredKey::Export(id) => {
                    sqlx::query("UPDATE export_requests SET wrapped_key = $1 WHERE id = $2")
                        .bind(wrapped.as_str())
                        .bind(id.as_str())
                        .execute(&mut *tx)
                        .await?
                }
            };
            if r.rows_affected() == 0 {
                return Err(CatalogError::Invalid(format!(
                    "{which:?} is not in the catalogue"
                )));
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every key the catalogue holds wrapped by the master key (snapshot
    /// keys, live project keys, the audit log key, TOTP seeds, export files'
    /// keys), for master
    /// rotation.
    pub async fn wrapped_keys(&self) -> Result<Vec<(StoredKey, String)>, CatalogError> {
        let mut out = Vec::new();
        for r in sqlx::query("SELECT id, wrapped_key FROM snapshots ORDER BY id")
            .fetch_all(&self.pool)
            .await?
        {
            out.push((
                StoredKey::Snapshot(r.try_get("id")?),
                r.try_get("wrapped_key")?,
            ));
        }
        for r in sqlx::query(
            "SELECT project_id, version, wrapped_key FROM project_keys WHERE retired_at IS NULL ORDER BY project_id, version",
        )
        .fetch_all(&self.pool)
        .await?
        {
            out.push((
                StoredKey::Project(r.try_get("project_id")?, r.try_get("version")?),
                r.try_get("wrapped_key")?,
            ));
        }
        for r in sqlx::query("SELECT key_id, wrapped_secret FROM audit_keys ORDER BY key_id")
            .fetch_all(&self.pool)
            .await?
        {
            out.push((
                StoredKey::Audit(r.try_get("key_id")?),
                r.try_get("wrapped_secret")?,
            ));
        }
        for r in sqlx::query(
            "SELECT name, totp_seed FROM accounts WHERE totp_seed IS NOT NULL ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?
        {
            out.push((StoredKey::Totp(r.try_get("name")?), r.try_get("totp_seed")?));
        }
        for r in sqlx::query("SELECT id, wrapped_key FROM export_requests ORDER BY id")
            .fetch_all(&self.pool)
            .await?
        {
            out.push((
                StoredKey::Export(r.try_get("id")?),
                r.try_get("wrapped_key")?,
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::now;

    #[test]
    fn now_is_rfc3339_utc() {
        let n = now();
        assert_eq!(n.len(), 20, "{n}");
        assert!(n.ends_with('Z') && n.as_bytes()[10] == b'T');
        assert!(n.starts_with("20"));
    }
}
