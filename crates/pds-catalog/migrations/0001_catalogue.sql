-- PDS catalogue, version 1. Portable SQL: the same statements run on SQLite
-- and PostgreSQL; times are RFC 3339 text, sizes BIGINT.
CREATE TABLE datasets (
    id          TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE snapshots (
    id          BIGINT PRIMARY KEY,
    dataset_id  TEXT NOT NULL REFERENCES datasets (id),
    parent_id   BIGINT REFERENCES snapshots (id),
    created_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    source_dir  TEXT NOT NULL,
    storage_prefix TEXT NOT NULL,
    wrapped_key TEXT NOT NULL,
    note        TEXT NOT NULL
);

CREATE TABLE source_files (
    snapshot_id BIGINT NOT NULL REFERENCES snapshots (id),
    name        TEXT NOT NULL,
    table_name  TEXT NOT NULL,
    bytes       BIGINT NOT NULL,
    sha256      TEXT NOT NULL,
    rows_loaded BIGINT NOT NULL,
    rows_rejected BIGINT NOT NULL,
    PRIMARY KEY (snapshot_id, name)
);

CREATE TABLE snapshot_tables (
    snapshot_id BIGINT NOT NULL REFERENCES snapshots (id),
    name        TEXT NOT NULL,
    title       TEXT NOT NULL,
    row_count   BIGINT NOT NULL,
    bytes       BIGINT NOT NULL,
    PRIMARY KEY (snapshot_id, name)
);

CREATE TABLE table_columns (
    snapshot_id BIGINT NOT NULL,
    table_name  TEXT NOT NULL,
    position    BIGINT NOT NULL,
    name        TEXT NOT NULL,
    data_type   TEXT NOT NULL,
    description TEXT NOT NULL,
    nomenclature TEXT NOT NULL,
    PRIMARY KEY (snapshot_id, table_name, position),
    FOREIGN KEY (snapshot_id, table_name) REFERENCES snapshot_tables (snapshot_id, name)
);

CREATE TABLE data_files (
    snapshot_id BIGINT NOT NULL,
    table_name  TEXT NOT NULL,
    path        TEXT NOT NULL,
    partition_value TEXT NOT NULL,
    row_count   BIGINT NOT NULL,
    bytes       BIGINT NOT NULL,
    sha256      TEXT NOT NULL,
    PRIMARY KEY (snapshot_id, path),
    FOREIGN KEY (snapshot_id, table_name) REFERENCES snapshot_tables (snapshot_id, name)
);
