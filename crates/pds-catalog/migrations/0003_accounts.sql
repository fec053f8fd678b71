-- PDS catalogue, version 3: accounts and access tokens (`pds serve`).
-- Portable SQL (SQLite and PostgreSQL); times are RFC 3339 text.

-- A local account keeps two verifiers of one password, never the password:
-- an Argon2id PHC string (password logins over HTTP and Flight SQL) and a
-- SCRAM-SHA-256 verifier in PostgreSQL's own format (the wire protocol,
-- where the password never crosses the network). A federated account has
-- neither: it signs in with an access token.
CREATE TABLE accounts (
    name                TEXT PRIMARY KEY,
    kind                TEXT NOT NULL,
    roles               TEXT NOT NULL,
    password_hash       TEXT,
    scram_verifier      TEXT,
    created_at          TEXT NOT NULL,
    created_by          TEXT NOT NULL,
    password_changed_at TEXT,
    disabled_at         TEXT
);

-- Access tokens are random; only their SHA-256 is stored, so a copy of the
-- catalogue gives no usable token.
CREATE TABLE access_tokens (
    token_sha256 TEXT PRIMARY KEY,
    account      TEXT NOT NULL REFERENCES accounts (name),
    purpose      TEXT NOT NULL,
    issued_at    TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    revoked_at   TEXT
);
CREATE INDEX access_tokens_account ON access_tokens (account);
