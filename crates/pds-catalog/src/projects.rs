//! Project rows: definition, members, key versions and cohort.
//!
//! The catalogue stores what the project layer (`pds-project`) decides; it
//! does not interpret perimeters (kept as JSON text).

use sqlx::Row;

use crate::{Catalog, CatalogError, now};

/// A project as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRow {
    /// Id (`p-diab-2026`).
    pub id: String,
    /// Title.
    pub title: String,
    /// Authorisation reference (CNIL decision number).
    pub authorisation: String,
    /// First day of access, `YYYY-MM-DD`.
    pub starts_on: String,
    /// Last day of access, `YYYY-MM-DD`.
    pub expires_on: String,
    /// `row-level` or `aggregate-only`.
    pub access_mode: String,
    /// The pinned snapshot.
    pub snapshot_id: i64,
    /// The perimeter, JSON.
    pub perimeter: String,
    /// Creation time.
    pub created_at: String,
    /// Who created it.
    pub created_by: String,
    /// When it was expired by an administrator, if it was.
    pub expired_at: Option<String>,
}

/// A member of a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    /// Principal (user name).
    pub principal: String,
    /// `lead`, `researcher` or `checker`.
    pub role: String,
    /// When.
    pub granted_at: String,
    /// By whom.
    pub granted_by: String,
}

/// A version of a project's pseudonymisation key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectKeyRow {
    /// Version (1, 2, ...).
    pub version: i64,
    /// Wrapped key (JSON); empty once retired.
    pub wrapped_key: String,
    /// When it was created.
    pub created_at: String,
    /// When it was retired.
    pub retired_at: Option<String>,
}

fn project_from(r: &sqlx::any::AnyRow) -> Result<ProjectRow, sqlx::Error> {
    Ok(ProjectRow {
        id: r.try_get("id")?,
        title: r.try_get("title")?,
        authorisation: r.try_get("authorisation")?,
        starts_on: r.try_get("starts_on")?,
        expires_on: r.try_get("expires_on")?,
        access_mode: r.try_get("access_mode")?,
        snapshot_id: r.try_get("snapshot_id")?,
        perimeter: r.try_get("perimeter")?,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
        expired_at: r.try_get("expired_at")?,
    })
}

/// A macro so that `concat!` keeps every SQL text static.
macro_rules! project_select {
    () => {
        "SELECT id, title, authorisation, starts_on, expires_on, access_mode, snapshot_id, perimeter, created_at, created_by, expired_at FROM projects"
    };
}

impl Catalog {
    /// Creates a project with its first key version and cohort, in one
    /// transaction. Fails if the id is taken.
    pub async fn create_project(
        &self,
        p: &ProjectRow,
        wrapped_key: &str,
        cohort: &[String],
    ) -> Result<(), CatalogError> {
        let mut tx = self.pool.begin().await?;
        let exists = sqlx::query("SELECT id FROM projects WHERE id = $1")
            .bind(&p.id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(CatalogError::Invalid(format!(
                "project `{}` already exists; `pds project show {}` describes it",
                p.id, p.id
            )));
        }
        let snap = sqlx::query("SELECT id FROM snapshots WHERE id = $1")
            .bind(p.snapshot_id)
            .fetch_optional(&mut *tx)
            .await?;
        if snap.is_none() {
            return Err(CatalogError::NoSnapshot(p.snapshot_id));
        }
        sqlx::query(
            "INSERT INTO projects (id, title, authorisation, starts_on, expires_on, access_mode, snapshot_id, perimeter, created_at, created_by, expired_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL)",
        )
        .bind(&p.id)
        .bind(&p.title)
        .bind(&p.authorisation)
        .bind(&p.starts_on)
        .bind(&p.expires_on)
        .bind(&p.access_mode)
        .bind(p.snapshot_id)
        .bind(&p.perimeter)
        .bind(&p.created_at)
        .bind(&p.created_by)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO project_keys (project_id, version, wrapped_key, created_at, retired_at) VALUES ($1, 1, $2, $3, NULL)",
        )
        .bind(&p.id)
        .bind(wrapped_key)
        .bind(&p.created_at)
        .execute(&mut *tx)
        .await?;
        for c in cohort {
            sqlx::query("INSERT INTO project_cohort (project_id, pseudonym) VALUES ($1, $2)")
                .bind(&p.id)
                .bind(c)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// One project, if it exists.
    pub async fn project(&self, id: &str) -> Result<Option<ProjectRow>, CatalogError> {
        let row = sqlx::query(concat!(project_select!(), " WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(project_from).transpose()?)
    }

    /// Every project, by id.
    pub async fn projects(&self) -> Result<Vec<ProjectRow>, CatalogError> {
        let rows = sqlx::query(concat!(project_select!(), " ORDER BY id"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(project_from).collect::<Result<_, _>>()?)
    }

    /// Replaces a project's perimeter, snapshot and cohort in one transaction.
    pub async fn set_perimeter(
        &self,
        id: &str,
        snapshot_id: i64,
        perimeter: &str,
        cohort: &[String],
    ) -> Result<(), CatalogError> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("UPDATE projects SET perimeter = $1, snapshot_id = $2 WHERE id = $3")
            .bind(perimeter)
            .bind(snapshot_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(CatalogError::NoProject(id.to_string()));
        }
        sqlx::query("DELETE FROM project_cohort WHERE project_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        for c in cohort {
            sqlx::query("INSERT INTO project_cohort (project_id, pseudonym) VALUES ($1, $2)")
                .bind(id)
                .bind(c)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Sets the expiry date; `expired_at` records an explicit expiry.
    pub async fn set_expiry(
        &self,
        id: &str,
        expires_on: &str,
        expired_at: Option<&str>,
    ) -> Result<(), CatalogError> {
        let r = sqlx::query("UPDATE projects SET expires_on = $1, expired_at = $2 WHERE id = $3")
            .bind(expires_on)
            .bind(expired_at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(CatalogError::NoProject(id.to_string()));
        }
        Ok(())
    }

    /// The cohort of a project (platform pseudonyms), sorted.
    pub async fn cohort(&self, id: &str) -> Result<Vec<String>, CatalogError> {
        let rows = sqlx::query(
            "SELECT pseudonym FROM project_cohort WHERE project_id = $1 ORDER BY pseudonym",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get::<String, _>("pseudonym"))
            .collect::<Result<_, _>>()?)
    }

    /// Adds or replaces a member.
    pub async fn set_member(
        &self,
        id: &str,
        principal: &str,
        role: &str,
        by: &str,
    ) -> Result<(), CatalogError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM project_members WHERE project_id = $1 AND principal = $2")
            .bind(id)
            .bind(principal)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO project_members (project_id, principal, role, granted_at, granted_by) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(principal)
        .bind(role)
        .bind(now())
        .bind(by)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes a member; returns whether there was one.
    pub async fn remove_member(&self, id: &str, principal: &str) -> Result<bool, CatalogError> {
        let r = sqlx::query("DELETE FROM project_members WHERE project_id = $1 AND principal = $2")
            .bind(id)
            .bind(principal)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// The projects a principal is a member of, with their role, by id.
    pub async fn memberships(
        &self,
        principal: &str,
    ) -> Result<Vec<(ProjectRow, String)>, CatalogError> {
        let rows = sqlx::query(
            "SELECT p.id, p.title, p.authorisation, p.starts_on, p.expires_on, p.access_mode, p.snapshot_id, p.perimeter, p.created_at, p.created_by, p.expired_at, m.role \
             FROM projects p JOIN project_members m ON m.project_id = p.id WHERE m.principal = $1 ORDER BY p.id",
        )
        .bind(principal)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((project_from(r)?, r.try_get("role")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Members of a project, by principal.
    pub async fn members(&self, id: &str) -> Result<Vec<MemberRow>, CatalogError> {
        let rows = sqlx::query(
            "SELECT principal, role, granted_at, granted_by FROM project_members WHERE project_id = $1 ORDER BY principal",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MemberRow {
                    principal: r.try_get("principal")?,
                    role: r.try_get("role")?,
                    granted_at: r.try_get("granted_at")?,
                    granted_by: r.try_get("granted_by")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Key versions of a project, oldest first.
    pub async fn project_keys(&self, id: &str) -> Result<Vec<ProjectKeyRow>, CatalogError> {
        let rows = sqlx::query(
            "SELECT version, wrapped_key, created_at, retired_at FROM project_keys WHERE project_id = $1 ORDER BY version",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ProjectKeyRow {
                    version: r.try_get("version")?,
                    wrapped_key: r.try_get("wrapped_key")?,
                    created_at: r.try_get("created_at")?,
                    retired_at: r.try_get("retired_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Adds key `version` and erases every older one, in one transaction.
    pub async fn rotate_project_key(
        &self,
        id: &str,
        version: i64,
        wrapped_key: &str,
    ) -> Result<(), CatalogError> {
        let mut tx = self.pool.begin().await?;
        let t = now();
        let r = sqlx::query(
            "UPDATE project_keys SET wrapped_key = '', retired_at = $1 WHERE project_id = $2 AND retired_at IS NULL",
        )
        .bind(&t)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Err(CatalogError::NoProject(id.to_string()));
        }
        sqlx::query(
            "INSERT INTO project_keys (project_id, version, wrapped_key, created_at, retired_at) VALUES ($1, $2, $3, $4, NULL)",
        )
        .bind(id)
        .bind(version)
        .bind(wrapped_key)
        .bind(&t)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
