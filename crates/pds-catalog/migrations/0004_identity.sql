-- PDS catalogue, version 4: multi-factor sign-in, sessions, scoped service
-- tokens and OIDC federation. Portable SQL (SQLite and PostgreSQL).

-- Sign-in needs a second factor now, so the PostgreSQL protocol no longer
-- takes a password: the SCRAM verifiers go.
ALTER TABLE accounts DROP COLUMN scram_verifier;

-- TOTP: the seed is stored wrapped by the master key (AES-256-GCM, bound to
-- the account name), never in clear. `totp_last_step` makes every code
-- usable once. Failed sign-ins lock the account with exponential backoff.
ALTER TABLE accounts ADD COLUMN totp_seed TEXT;
ALTER TABLE accounts ADD COLUMN totp_enrolled_at TEXT;
ALTER TABLE accounts ADD COLUMN totp_last_step BIGINT;
ALTER TABLE accounts ADD COLUMN failed_logins BIGINT NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN locked_until TEXT;
-- The identity provider a federated account belongs to: another provider
-- naming the same person is refused.
ALTER TABLE accounts ADD COLUMN idp TEXT;

-- Tokens now have a kind (access, refresh, service, enrol), belong to a
-- session (access/refresh) and, for service tokens, to one project and role.
ALTER TABLE access_tokens ADD COLUMN kind TEXT NOT NULL DEFAULT 'access';
ALTER TABLE access_tokens ADD COLUMN session_id TEXT;
ALTER TABLE access_tokens ADD COLUMN project TEXT;
ALTER TABLE access_tokens ADD COLUMN role TEXT;
CREATE INDEX access_tokens_session ON access_tokens (session_id);

-- Recovery codes: high-entropy, so a SHA-256 is enough; each works once.
CREATE TABLE recovery_codes (
    account     TEXT NOT NULL REFERENCES accounts (name),
    code_sha256 TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    used_at     TEXT,
    PRIMARY KEY (account, code_sha256)
);

-- A sign-in: what proved it (method, acr), the project roles the identity
-- provider's claims allow (comma-separated; NULL: any), and its lifetime. Refresh
-- tokens rotate within it; logging out revokes it and every token in it.
CREATE TABLE sessions (
    id           TEXT PRIMARY KEY,
    account      TEXT NOT NULL REFERENCES accounts (name),
    method       TEXT NOT NULL,
    acr          TEXT,
    idp          TEXT,
    idp_sid      TEXT,
    roles        TEXT,
    created_at   TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    revoked_at   TEXT
);
CREATE INDEX sessions_account ON sessions (account);

-- Browser logins in flight: `state` (hashed), nonce, PKCE verifier, and the
-- hash of a cookie set in the browser that started it (the callback must
-- come from that browser).
-- A row is deleted when its callback arrives, so a replayed callback finds
-- nothing.
CREATE TABLE oidc_pending (
    state_sha256  TEXT PRIMARY KEY,
    provider      TEXT NOT NULL,
    nonce         TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    browser_sha256 TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    expires_at    TEXT NOT NULL
);

-- Identity-provider sessions and tokens that PDS no longer accepts (after a
-- logout or an administrator's revocation), until their own expiry.
CREATE TABLE oidc_revoked (
    provider   TEXT NOT NULL,
    kind       TEXT NOT NULL,
    value      TEXT NOT NULL,
    revoked_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    PRIMARY KEY (provider, kind, value)
);

-- Failed sign-ins of names that are not accounts, locked like accounts so
-- that a lock says nothing about whether an account exists. Keyed by the
-- SHA-256 of the lower-cased name; rows idle for a day are dropped.
CREATE TABLE login_throttle (
    name_key     TEXT PRIMARY KEY,
    failures     BIGINT NOT NULL,
    locked_until TEXT,
    updated_at   TEXT NOT NULL
);
