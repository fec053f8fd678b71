-- PDS catalogue, version 2: research projects and the audit log.
-- Portable SQL (SQLite and PostgreSQL); times are RFC 3339 text.
CREATE TABLE projects (
    id            TEXT PRIMARY KEY,
    title         TEXT NOT NULL,
    authorisation TEXT NOT NULL,
    starts_on     TEXT NOT NULL,
    expires_on    TEXT NOT NULL,
    access_mode   TEXT NOT NULL,
    snapshot_id   BIGINT NOT NULL REFERENCES snapshots (id),
    perimeter     TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    created_by    TEXT NOT NULL,
    expired_at    TEXT
);

-- One row per key version; a retired key's wrapped value is erased, so the
-- old pseudonyms cannot be recomputed (crypto-shredding).
CREATE TABLE project_keys (
    project_id  TEXT NOT NULL REFERENCES projects (id),
    version     BIGINT NOT NULL,
    wrapped_key TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    retired_at  TEXT,
    PRIMARY KEY (project_id, version)
);

CREATE TABLE project_members (
    project_id TEXT NOT NULL REFERENCES projects (id),
    principal  TEXT NOT NULL,
    role       TEXT NOT NULL,
    granted_at TEXT NOT NULL,
    granted_by TEXT NOT NULL,
    PRIMARY KEY (project_id, principal)
);

-- A cohort of platform pseudonyms restricting a project's population.
CREATE TABLE project_cohort (
    project_id TEXT NOT NULL REFERENCES projects (id),
    pseudonym  TEXT NOT NULL,
    PRIMARY KEY (project_id, pseudonym)
);

-- Append-only. `body` is the canonical JSON of the entry; `leaf_hash` is
-- SHA-256(0x00 || body) (RFC 9162); `seal` is the log key's Ed25519
-- signature over (seq, leaf_hash). The other columns repeat body fields for
-- filtering; `pds audit verify` checks they agree with the body.
CREATE TABLE audit_entries (
    seq        BIGINT PRIMARY KEY,
    logged_at  TEXT NOT NULL,
    principal  TEXT NOT NULL,
    project_id TEXT,
    action     TEXT NOT NULL,
    decision   TEXT NOT NULL,
    body       TEXT NOT NULL,
    leaf_hash  TEXT NOT NULL,
    seal       TEXT NOT NULL
);
CREATE INDEX audit_entries_project ON audit_entries (project_id, seq);
CREATE INDEX audit_entries_principal ON audit_entries (principal, seq);

-- Signed tree heads (C2SP tlog-checkpoint signed notes).
CREATE TABLE audit_checkpoints (
    id         BIGINT PRIMARY KEY,
    tree_size  BIGINT NOT NULL,
    root_hash  TEXT NOT NULL,
    created_at TEXT NOT NULL,
    note       TEXT NOT NULL
);

-- The log's Ed25519 key: public part in clear, secret wrapped by the master key.
CREATE TABLE audit_keys (
    key_id         TEXT PRIMARY KEY,
    public_key     TEXT NOT NULL,
    wrapped_secret TEXT NOT NULL,
    created_at     TEXT NOT NULL
);
