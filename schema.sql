-- The debusine-signing database schema.
--
-- Each "-- version N" section migrates a database from version N-1 to N. The
-- schema version is kept in PRAGMA user_version, and a database is recognised
-- as ours by PRAGMA application_id. Sections are applied in one transaction each, so an
-- existing database is migrated in place and never left half migrated. Never
-- edit a released section: add a new one.

-- version 1
CREATE TABLE keys (
    id INTEGER PRIMARY KEY,
    purpose TEXT NOT NULL CHECK (purpose IN ('uefi', 'openpgp')),
    fingerprint TEXT NOT NULL CHECK (fingerprint <> '' AND fingerprint = upper(fingerprint)),
    -- The protected private key: JSON, {"storage": "nacl", ...} or
    -- {"storage": "pkcs11-static", ...}. Never the plaintext.
    private_key TEXT NOT NULL CHECK (json_valid(private_key)),
    public_key BLOB NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (purpose, fingerprint)
);

CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY,
    event TEXT NOT NULL CHECK (event IN ('generate', 'register', 'sign', 'reencrypt')),
    purpose TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    data TEXT NOT NULL CHECK (json_valid(data)),
    created_at TEXT NOT NULL,
    created_by_work_request_id INTEGER,
    -- Hash chain: prev_hash is the hash of the row before (64 zeros for the
    -- first row), hash commits to this row's fields and prev_hash.
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE
);

CREATE INDEX audit_log_key ON audit_log (fingerprint);
CREATE INDEX audit_log_work_request ON audit_log (created_by_work_request_id);

-- The audit log is append-only, enforced by the database itself so that a
-- hand-run sqlite3 session cannot rewrite history either.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused');
END;
