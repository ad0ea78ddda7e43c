-- The debusine-signing database schema, SQLite. schema_postgres.sql is the
-- same for PostgreSQL: keep the two files' sections in step.
--
-- Each "-- version N" section migrates a database from version N-1 to N. The
-- schema version is kept in PRAGMA user_version, and a database is recognised
-- as ours by PRAGMA application_id. Pending sections are applied in one
-- transaction, so an existing database is migrated in place and never left
-- half migrated. Never
-- edit a released section: add a new one. A section may be followed by a
-- data step in Go (migrationSteps in keys.go), run in the same transaction.
--
-- The audit log's guarantees, for a port to another engine: rows are only
-- ever appended (the triggers of version 3: no UPDATE or DELETE, and an
-- INSERT must carry id = last id + 1, prev_hash = the last row's hash, a
-- hash no row has, a program_version and a mac); the audit key row is
-- never deleted or replaced, only re-sealed. Each row's hash and mac, and
-- each key row's mac (version 4), are computed in Go (audit.go,
-- auditkey.go, keyrows.go), not by the database. What else
-- differs between the engines (schema version, write lock, the catalogue
-- checkSchema compares) is in db.go.

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

-- version 2
-- The authenticated audit log (auditkey.go). audit_key holds the one audit
-- key, boxed to the service key; each audit row gets the version of the
-- program that wrote it and "mac", the HMAC of its hash under the audit key.
-- The old triggers are dropped here so that the migration can fill "mac"
-- in the rows written before (sealAuditRowsV2 runs right after this
-- section, in the same transaction), and version 3 puts stricter ones back.
CREATE TABLE audit_key (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    sealed TEXT NOT NULL CHECK (json_valid(sealed)),
    created_at TEXT NOT NULL
);

ALTER TABLE audit_log ADD COLUMN program_version TEXT;
ALTER TABLE audit_log ADD COLUMN mac TEXT;

DROP TRIGGER IF EXISTS audit_log_no_update;
DROP TRIGGER IF EXISTS audit_log_no_delete;

-- version 3
-- The audit log is append-only, enforced by the database itself so that a
-- hand-run sqlite3 session cannot rewrite history either. UPDATE and
-- DELETE are refused outright. INSERT is checked before the row is
-- written: that check runs for every form of INSERT, including INSERT OR
-- REPLACE, REPLACE and upserts, and a new row that must come after the last
-- one, chain to it and carry a hash no row has cannot collide with any
-- existing row, so no conflict resolution can delete or rewrite one (SQLite
-- deletes a row replaced by REPLACE without firing DELETE triggers unless
-- recursive_triggers is on, which this does not rely on).
--
-- These triggers are SQLite's; another engine needs the same rules in its
-- own form. `audit verify` compares them with this file (checkSchema).
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused');
END;

CREATE TRIGGER audit_log_append_only BEFORE INSERT ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: a new row''s id must be the last id + 1')
    WHERE NEW.id IS NOT (SELECT coalesce(max(id), 0) + 1 FROM audit_log);
    SELECT RAISE(ABORT, 'audit_log is append-only: a new row''s prev_hash must be the last row''s hash')
    WHERE NEW.prev_hash IS NOT coalesce((SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1),
                                        '0000000000000000000000000000000000000000000000000000000000000000');
    SELECT RAISE(ABORT, 'audit_log is append-only: a new row''s hash must be new')
    WHERE EXISTS (SELECT 1 FROM audit_log WHERE hash = NEW.hash);
    SELECT RAISE(ABORT, 'audit_log: a new row needs program_version and mac')
    WHERE NEW.program_version IS NULL OR NEW.mac IS NULL;
END;

-- The audit key is never removed (that would orphan every row's mac) and
-- only re-sealed in place by reencrypt-keys.
CREATE TRIGGER audit_key_no_delete BEFORE DELETE ON audit_key
BEGIN
    SELECT RAISE(ABORT, 'audit_key cannot be deleted');
END;

CREATE TRIGGER audit_key_reseal_only BEFORE UPDATE OF id, created_at ON audit_key
BEGIN
    SELECT RAISE(ABORT, 'audit_key: only the sealed key may be updated');
END;

CREATE TRIGGER audit_key_once BEFORE INSERT ON audit_key
WHEN EXISTS (SELECT 1 FROM audit_key)
BEGIN
    SELECT RAISE(ABORT, 'audit_key already holds the audit key');
END;

-- version 4
-- Authenticated key rows (keyrows.go). "mac" is an HMAC, under a key
-- derived from the audit key, of every column of the row but id: a row
-- given another key's private key, public key or certificate, or edited,
-- no longer verifies, and every use of a key checks it, with the
-- fingerprint against the public key. The rows written before get theirs
-- in the data step right after this section (macKeyRowsV4, same
-- transaction), once their fingerprint is checked against their public
-- key and their sealed private key against both; a row that fails keeps
-- no mac and is refused. A new or updated row must carry a mac.
ALTER TABLE keys ADD COLUMN mac TEXT;

CREATE TRIGGER keys_insert_needs_mac BEFORE INSERT ON keys
WHEN NEW.mac IS NULL
BEGIN
    SELECT RAISE(ABORT, 'keys: a row needs a mac');
END;

CREATE TRIGGER keys_update_needs_mac BEFORE UPDATE ON keys
WHEN NEW.mac IS NULL
BEGIN
    SELECT RAISE(ABORT, 'keys: a row needs a mac');
END;

-- version 5
-- The audit log as an RFC 6962 Merkle tree (tlog.go, docs/transparency.md).
-- audit_tree holds the tree's stored hashes in the order and at the
-- indexes of golang.org/x/mod/sumdb/tlog (tlog.StoredHashIndex): the leaf
-- hash of each row, then the interior hashes that row completes. They are
-- appended in the same transaction as the row, and the data step after
-- this section (buildAuditTreeV5) computes them for the rows written
-- before. Like the rows, they are only ever appended: at the next index,
-- 32 bytes each; UPDATE and DELETE are refused. `audit verify` recomputes
-- them from the rows.
CREATE TABLE audit_tree (
    idx INTEGER PRIMARY KEY,
    hash BLOB NOT NULL CHECK (typeof(hash) = 'blob' AND length(hash) = 32)
);

CREATE TRIGGER audit_tree_no_update BEFORE UPDATE ON audit_tree
BEGIN
    SELECT RAISE(ABORT, 'audit_tree is append-only: UPDATE refused');
END;

CREATE TRIGGER audit_tree_no_delete BEFORE DELETE ON audit_tree
BEGIN
    SELECT RAISE(ABORT, 'audit_tree is append-only: DELETE refused');
END;

CREATE TRIGGER audit_tree_append_only BEFORE INSERT ON audit_tree
BEGIN
    SELECT RAISE(ABORT, 'audit_tree is append-only: a new hash''s idx must be the last idx + 1')
    WHERE NEW.idx IS NOT (SELECT coalesce(max(idx) + 1, 0) FROM audit_tree);
END;
