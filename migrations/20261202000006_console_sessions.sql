-- Ops console sessions, shared by every replica. The cookie's value is never stored, only its SHA-256
-- digest; the token's digest ties the session to an ops token still configured, whose scopes apply.
CREATE TABLE console_sessions (
    id_digest    bytea PRIMARY KEY,
    token_digest bytea NOT NULL,
    csrf         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);
