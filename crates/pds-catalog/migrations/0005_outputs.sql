-- PDS catalogue, version 5: safe outputs. Portable SQL (SQLite and PostgreSQL).

-- The populations of earlier aggregate-only results, one row per aggregate
-- a statement published: `sketch` is an invertible Bloom lookup table of the
-- keyed 64-bit hashes of the patients behind it (hex), from which the
-- patients that two results differ by can be recovered when there are few.
-- It holds no identifier in clear and is useless without the home's key.
CREATE TABLE disclosure_populations (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects (id),
    created_at  TEXT NOT NULL,
    principal   TEXT NOT NULL,
    request_id  TEXT,
    patients    BIGINT NOT NULL,
    sketch      TEXT NOT NULL
);
CREATE INDEX disclosure_populations_project ON disclosure_populations (project_id, created_at);

-- Export requests (the airlock). A request freezes one result: the query and
-- its snapshot (or an uploaded file), the file itself (stored encrypted under
-- `object`), its SHA-256, and the requester's account of it.
CREATE TABLE export_requests (
    id             TEXT PRIMARY KEY,
    project_id     TEXT NOT NULL REFERENCES projects (id),
    requester      TEXT NOT NULL,
    name           TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    state          TEXT NOT NULL,
    kind           TEXT NOT NULL,
    statement      TEXT,
    snapshot_id    BIGINT,
    file_name      TEXT NOT NULL,
    file_type      TEXT NOT NULL,
    file_bytes     BIGINT NOT NULL,
    file_rows      BIGINT,
    sha256         TEXT NOT NULL,
    object         TEXT NOT NULL,
    wrapped_key    TEXT NOT NULL,
    context        TEXT NOT NULL,
    controls       TEXT NOT NULL,
    checks         TEXT NOT NULL,
    released_at    TEXT,
    downloads      BIGINT NOT NULL DEFAULT 0,
    max_downloads  BIGINT NOT NULL
);
CREATE INDEX export_requests_project ON export_requests (project_id, created_at);

-- One decision per reviewer and request.
CREATE TABLE export_reviews (
    request_id  TEXT NOT NULL REFERENCES export_requests (id),
    reviewer    TEXT NOT NULL,
    decision    TEXT NOT NULL,
    comment     TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (request_id, reviewer)
);
