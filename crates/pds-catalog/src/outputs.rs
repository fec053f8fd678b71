//! Rows behind safe outputs: the populations of published aggregates (the
//! query-set tracker) and export requests with their reviews (the airlock).
//! The catalogue only stores what `pds-gate` and `pds-airlock` decided; the
//! state machine's rules live there, but every transition here is one
//! conditional statement, so two reviewers acting at once cannot both move
//! a request from the same state.

use sqlx::Row;

use crate::{Catalog, CatalogError};

/// The population of one published aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PopulationRow {
    /// Random id.
    pub id: String,
    /// Project.
    pub project_id: String,
    /// When.
    pub created_at: String,
    /// Who ran the statement.
    pub principal: String,
    /// The statement's audit request id.
    pub request_id: Option<String>,
    /// Number of distinct patients.
    pub patients: i64,
    /// Invertible Bloom lookup table of the patients' keyed hashes, hex.
    pub sketch: String,
}

/// An export request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRow {
    /// Random id.
    pub id: String,
    /// Project.
    pub project_id: String,
    /// Who asked.
    pub requester: String,
    /// The requester's name for the result.
    pub name: String,
    /// When.
    pub created_at: String,
    /// `pending`, `changes-requested`, `rejected`, `released`, `withdrawn`.
    pub state: String,
    /// `query` (run by the platform) or `file` (uploaded).
    pub kind: String,
    /// The statement (queries).
    pub statement: Option<String>,
    /// Its snapshot (queries).
    pub snapshot_id: Option<i64>,
    /// File name shown at download.
    pub file_name: String,
    /// `csv`, `parquet`, `png` or `svg`.
    pub file_type: String,
    /// Size.
    pub file_bytes: i64,
    /// Rows (tables).
    pub file_rows: Option<i64>,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Where the encrypted file is, in the storage.
    pub object: String,
    /// The file's key, wrapped by the master key.
    pub wrapped_key: String,
    /// The requester's description of the context.
    pub context: String,
    /// The disclosure controls the requester says were applied.
    pub controls: String,
    /// The automatic checks' report (JSON).
    pub checks: String,
    /// Release time.
    pub released_at: Option<String>,
    /// Downloads so far.
    pub downloads: i64,
    /// Downloads allowed.
    pub max_downloads: i64,
}

/// One reviewer's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewRow {
    /// Request.
    pub request_id: String,
    /// Reviewer.
    pub reviewer: String,
    /// `approve`, `request-changes` or `reject`.
    pub decision: String,
    /// Their comment.
    pub comment: String,
    /// When.
    pub created_at: String,
}

/// The export request columns; a macro so that `concat!` keeps every
/// statement a literal.
macro_rules! export_columns {
    () => {
        "id, project_id, requester, name, created_at, state, kind, statement, snapshot_id, file_name, file_type, file_bytes, file_rows, sha256, object, wrapped_key, context, controls, checks, released_at, downloads, max_downloads"
    };
}

fn export_from(r: &sqlx::any::AnyRow) -> Result<ExportRow, sqlx::Error> {
    Ok(ExportRow {
        id: r.try_get("id")?,
        project_id: r.try_get("project_id")?,
        requester: r.try_get("requester")?,
        name: r.try_get("name")?,
        created_at: r.try_get("created_at")?,
        state: r.try_get("state")?,
        kind: r.try_get("kind")?,
        statement: r.try_get("statement")?,
        snapshot_id: r.try_get("snapshot_id")?,
        file_name: r.try_get("file_name")?,
        file_type: r.try_get("file_type")?,
        file_bytes: r.try_get("file_bytes")?,
        file_rows: r.try_get("file_rows")?,
        sha256: r.try_get("sha256")?,
        object: r.try_get("object")?,
        wrapped_key: r.try_get("wrapped_key")?,
        context: r.try_get("context")?,
        controls: r.try_get("controls")?,
        checks: r.try_get("checks")?,
        released_at: r.try_get("released_at")?,
        downloads: r.try_get("downloads")?,
        max_downloads: r.try_get("max_downloads")?,
    })
}

fn review_from(r: &sqlx::any::AnyRow) -> Result<ReviewRow, sqlx::Error> {
    Ok(ReviewRow {
        request_id: r.try_get("request_id")?,
        reviewer: r.try_get("reviewer")?,
        decision: r.try_get("decision")?,
        comment: r.try_get("comment")?,
        created_at: r.try_get("created_at")?,
    })
}

impl Catalog {
    /// Records the population of a published aggregate.
    pub async fn add_population(&self, p: &PopulationRow) -> Result<(), CatalogError> {
        sqlx::query(
            "INSERT INTO disclosure_populations (id, project_id, created_at, principal, request_id, patients, sketch) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&p.id)
        .bind(&p.project_id)
        .bind(&p.created_at)
        .bind(&p.principal)
        .bind(&p.request_id)
        .bind(p.patients)
        .bind(&p.sketch)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The populations a project's results were computed on, oldest first.
    pub async fn populations(&self, project: &str) -> Result<Vec<PopulationRow>, CatalogError> {
        let rows = sqlx::query(
            "SELECT id, project_id, created_at, principal, request_id, patients, sketch FROM disclosure_populations WHERE project_id = $1 ORDER BY created_at, id",
        )
        .bind(project)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PopulationRow {
                    id: r.try_get("id")?,
                    project_id: r.try_get("project_id")?,
                    created_at: r.try_get("created_at")?,
                    principal: r.try_get("principal")?,
                    request_id: r.try_get("request_id")?,
                    patients: r.try_get("patients")?,
                    sketch: r.try_get("sketch")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Stores a new export request.
    pub async fn create_export(&self, e: &ExportRow) -> Result<(), CatalogError> {
        sqlx::query(concat!(
            "INSERT INTO export_requests (",
            export_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)"
        ))
        .bind(&e.id)
        .bind(&e.project_id)
        .bind(&e.requester)
        .bind(&e.name)
        .bind(&e.created_at)
        .bind(&e.state)
        .bind(&e.kind)
        .bind(&e.statement)
        .bind(e.snapshot_id)
        .bind(&e.file_name)
        .bind(&e.file_type)
        .bind(e.file_bytes)
        .bind(e.file_rows)
        .bind(&e.sha256)
        .bind(&e.object)
        .bind(&e.wrapped_key)
        .bind(&e.context)
        .bind(&e.controls)
        .bind(&e.checks)
        .bind(&e.released_at)
        .bind(e.downloads)
        .bind(e.max_downloads)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One export request.
    pub async fn export(&self, id: &str) -> Result<Option<ExportRow>, CatalogError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            export_columns!(),
            " FROM export_requests WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(export_from).transpose()?)
    }

    /// Export requests, newest first, of one project or all.
    pub async fn exports(&self, project: Option<&str>) -> Result<Vec<ExportRow>, CatalogError> {
        let rows = match project {
            Some(p) => {
                sqlx::query(concat!(
                    "SELECT ",
                    export_columns!(),
                    " FROM export_requests WHERE project_id = $1 ORDER BY created_at DESC, id"
                ))
                .bind(p)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(concat!(
                    "SELECT ",
                    export_columns!(),
                    " FROM export_requests ORDER BY created_at DESC, id"
                ))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter()
            .map(export_from)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// The reviews of a request, oldest first.
    pub async fn reviews(&self, id: &str) -> Result<Vec<ReviewRow>, CatalogError> {
        let rows = sqlx::query(
            "SELECT request_id, reviewer, decision, comment, created_at FROM export_reviews WHERE request_id = $1 ORDER BY created_at, reviewer",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(review_from)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Records a review of a `pending` request, in one transaction: the
    /// review (one per reviewer: a second one fails on the key), then the
    /// new state, computed by `next` from every review so far. Returns the
    /// state after the review, or `None` when the request was not pending.
    pub async fn add_review(
        &self,
        r: &ReviewRow,
        next: impl FnOnce(&[ReviewRow]) -> String,
    ) -> Result<Option<String>, CatalogError> {
        let mut tx = self.pool.begin().await?;
        // Claims the request first: a concurrent review waits here (or its
        // conditional update finds the state already changed).
        let claimed = sqlx::query(
            "UPDATE export_requests SET state = state WHERE id = $1 AND state = 'pending'",
        )
        .bind(&r.request_id)
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() != 1 {
            return Ok(None);
        }
        sqlx::query(
            "INSERT INTO export_reviews (request_id, reviewer, decision, comment, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&r.request_id)
        .bind(&r.reviewer)
        .bind(&r.decision)
        .bind(&r.comment)
        .bind(&r.created_at)
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(
            "SELECT request_id, reviewer, decision, comment, created_at FROM export_reviews WHERE request_id = $1 ORDER BY created_at, reviewer",
        )
        .bind(&r.request_id)
        .fetch_all(&mut *tx)
        .await?;
        let reviews = rows
            .iter()
            .map(review_from)
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let state = next(&reviews);
        let released = (state == "released").then(crate::now);
        sqlx::query("UPDATE export_requests SET state = $2, released_at = $3 WHERE id = $1")
            .bind(&r.request_id)
            .bind(&state)
            .bind(&released)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(state))
    }

    /// Moves a request from `from` to `to`; false when it was not in `from`.
    pub async fn set_export_state(
        &self,
        id: &str,
        from: &str,
        to: &str,
    ) -> Result<bool, CatalogError> {
        let r = sqlx::query("UPDATE export_requests SET state = $3 WHERE id = $1 AND state = $2")
            .bind(id)
            .bind(from)
            .bind(to)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Counts one download of a released request if any is left; false
    /// otherwise. One conditional statement: parallel downloads cannot
    /// exceed the limit.
    pub async fn count_download(&self, id: &str) -> Result<bool, CatalogError> {
        let r = sqlx::query(
            "UPDATE export_requests SET downloads = downloads + 1 WHERE id = $1 AND state = 'released' AND downloads < max_downloads",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}
