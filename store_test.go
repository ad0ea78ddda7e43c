package main

import (
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// The store's behaviour on both engines: SQLite and PostgreSQL.

func TestStoreKeysBothEngines(t *testing.T) {
	engines(t, func(t *testing.T, te *testEnv) {
		st := te.store(t)
		uefi, err := generateUEFIKey(st, "Secure Boot", nil)
		if err != nil {
			t.Fatal(err)
		}
		pgp, err := generateOpenPGPKey(st, "Archive <archive@example.org>", nil)
		if err != nil {
			t.Fatal(err)
		}
		k, err := st.Key(purposeUEFI, strings.ToLower(uefi))
		if err != nil {
			t.Fatal(err)
		}
		// Unique keys: the same purpose and fingerprint twice is refused,
		// and nothing (key or audit row) is added.
		dup := *k
		if err := st.AddKey(&dup, "register", nil); !errors.Is(err, errDuplicateKey) {
			t.Errorf("duplicate key: %v", err)
		}
		// Sealed: the stored private key is a nacl box that opens.
		if storage, err := k.Storage(); err != nil || storage != storageNaCl {
			t.Errorf("storage %q %v", storage, err)
		}
		if strings.Contains(string(k.PrivateKey), "PRIVATE KEY") {
			t.Error("the private key is stored in the clear")
		}
		if plain, err := st.Unseal(k); err != nil || !strings.Contains(string(plain), "PRIVATE KEY") {
			t.Errorf("unseal: %v", err)
		}
		if _, err := st.Key(purposeOpenPGP, uefi); !errors.Is(err, errUnknownKey) || !strings.Contains(err.Error(), "is a uefi key") {
			t.Errorf("wrong purpose: %v", err)
		}
		keys, err := st.Keys()
		if err != nil || len(keys) != 2 || keys[0].Fingerprint != pgp || keys[1].Fingerprint != uefi {
			t.Errorf("keys %v %v", keys, err)
		}
		// Signing through the command line, then the audit rows.
		shim := writeFile(t, te.dir, "data.txt", []byte("signed on both engines\n"))
		te.mustRun(t, "sign", "--purpose", "openpgp", "--key", pgp, shim)
		rows := auditRows(t, st, AuditFilter{})
		if len(rows) != 3 || rows[0].Event != "generate" || rows[2].Event != "sign" || rows[2].Fingerprint != pgp {
			t.Errorf("audit rows %+v", rows)
		}
		if out := te.mustRun(t, "audit", "verify"); !strings.Contains(out, "3 rows") {
			t.Errorf("audit verify: %q", out)
		}
		if out := te.mustRun(t, "audit", "--key", strings.ToLower(pgp)); strings.Count(out, pgp) != 2 {
			t.Errorf("audit --key:\n%s", out)
		}
	})
}

func TestStoreReencryptBothEngines(t *testing.T) {
	engines(t, func(t *testing.T, te *testEnv) {
		fpr, err := generateUEFIKey(te.store(t), "rotation", nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := generateServiceKey(filepath.Join(te.dir, "new-key")); err != nil {
			t.Fatal(err)
		}
		text, _ := os.ReadFile(te.configPath)
		te.writeConfig(t, strings.Replace(string(text), `["service-key"]`, `["new-key", "service-key"]`, 1))
		te.mustRun(t, "reencrypt-keys")
		te.writeConfig(t, strings.Replace(string(text), `["service-key"]`, `["new-key"]`, 1))
		st := te.store(t)
		k, err := st.Key(purposeUEFI, fpr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Unseal(k); err != nil {
			t.Errorf("after re-encryption, the new key alone: %v", err)
		}
		rows := auditRows(t, st, AuditFilter{Fingerprint: fpr})
		if len(rows) != 2 || rows[1].Event != "reencrypt" {
			t.Errorf("audit rows %+v", rows)
		}
	})
}

// TestStoreSchemaVersionBothEngines: a database from a newer program is
// refused, and one at an older version is migrated in place, keeping its
// rows.
func TestStoreSchemaVersionBothEngines(t *testing.T) {
	engines(t, func(t *testing.T, te *testEnv) {
		st := te.store(t)
		appendTestRows(t, st, 2)
		sections := schemaSections(st.engine.schema)
		tx, err := st.begin()
		if err != nil {
			t.Fatal(err)
		}
		if v, err := st.engine.version(tx); err != nil || v != len(sections) {
			t.Fatalf("version %d %v, want %d", v, err, len(sections))
		}
		if err := st.engine.setVersion(tx, len(sections)+1); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		st.Close()
		_, err = openStore(te.cfg.Database, te.cfg.DatabasePasswordFile, te.cfg.ServiceKeys)
		if err == nil || !strings.Contains(err.Error(), "newer than this program") {
			t.Errorf("newer schema: %v", err)
		}
	})
}

// TestStoreMigrationInPlaceBothEngines: a database as version 1 of the
// schema left it, holding a key and audit rows, from before pins, is
// adopted by upgrade-store in place.
func TestStoreMigrationInPlaceBothEngines(t *testing.T) {
	engines(t, func(t *testing.T, te *testEnv) {
		st := te.store(t)
		fpr, err := generateUEFIKey(st, "old", nil)
		if err != nil {
			t.Fatal(err)
		}
		k, err := st.Key(purposeUEFI, fpr)
		if err != nil {
			t.Fatal(err)
		}
		eng := st.engine
		st.Close()
		os.Remove(filepath.Join(te.dir, "service-key"+pinSuffix))
		if eng == sqliteEngine {
			os.Remove(te.cfg.Database)
		}
		db := rawDB(t, te.cfg.Database)
		if eng == postgresEngine {
			if _, err := db.Exec("DROP SCHEMA public CASCADE; CREATE SCHEMA public"); err != nil {
				t.Fatal(err)
			}
		}
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(schemaSections(eng.schema)[0]); err != nil {
			t.Fatal(err)
		}
		if err := eng.setVersion(tx, 1); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec("INSERT INTO keys ("+keyColumns+") VALUES ('uefi', $1, $2, $3, 'old', $4, $4)", fpr, string(k.PrivateKey), k.PublicKey, k.created); err != nil {
			t.Fatal(err)
		}
		// Two audit rows as version 1 wrote them: chained, no mac.
		prev := genesisHash
		for id := int64(1); id <= 2; id++ {
			r := AuditRow{ID: id, Event: "sign", Purpose: purposeUEFI, Fingerprint: "AB", Data: []byte(`{"data_sha256":"00"}`), CreatedAt: nowUTC(), PrevHash: prev}
			r.Hash = r.computeHash()
			if _, err := tx.Exec("INSERT INTO audit_log (id, event, purpose, fingerprint, data, created_at, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
				r.ID, r.Event, r.Purpose, r.Fingerprint, string(r.Data), r.CreatedAt, r.PrevHash, r.Hash); err != nil {
				t.Fatal(err)
			}
			prev = r.Hash
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		db.Close()
		// Opening refuses it; upgrade-store migrates it to the current
		// version and keeps the key.
		if status, _, stderr := te.run(t, "keys"); status != exitError || !strings.Contains(stderr, "upgrade-store") {
			t.Errorf("keys: exit %d %q", status, stderr)
		}
		if out := te.mustRun(t, "upgrade-store"); !strings.Contains(out, "adopted the audit log: 2 rows") {
			t.Errorf("upgrade-store: %q", out)
		}
		st = te.store(t)
		tx, err = st.begin()
		if err != nil {
			t.Fatal(err)
		}
		v, err := st.engine.version(tx)
		tx.Rollback()
		if err != nil || v != len(schemaSections(eng.schema)) {
			t.Errorf("version %d %v after migration", v, err)
		}
		if k, err := st.Key(purposeUEFI, fpr); err != nil || k.Description != "old" {
			t.Errorf("the key did not survive the migration: %+v %v", k, err)
		}
		// The old rows were authenticated by the migration; new ones chain on.
		appendTestRows(t, st, 2)
		if v, err := st.VerifyAudit(); err != nil || v.Rows != 5 {
			t.Errorf("after migration: %+v %v", v, err)
		}
	})
}

// rawDB opens a store's database directly, without the store's checks.
func rawDB(t *testing.T, database string) *sql.DB {
	t.Helper()
	if isPostgres(database) {
		db, err := connectPostgres(database, "", false)
		if err != nil {
			t.Fatal(err)
		}
		return db
	}
	db, err := sql.Open("sqlite", database)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// TestPostgresAppendOnly shows that a hand-run psql session cannot rewrite
// the audit log: the PL/pgSQL triggers live in the database.
func TestPostgresAppendOnly(t *testing.T) {
	te := newPostgresTestEnv(t)
	st := te.store(t)
	appendTestRows(t, st, 3)
	const forged = "INSERT INTO audit_log (id, event, purpose, fingerprint, data, created_at, prev_hash, hash, program_version, mac) VALUES "
	for _, tc := range []struct{ script, want string }{
		{"UPDATE audit_log SET data = '{}' WHERE id = 2", "append-only: UPDATE refused"},
		{"UPDATE audit_log SET data = data WHERE false", "append-only: UPDATE refused"},
		{"DELETE FROM audit_log WHERE id = 3", "append-only: DELETE refused"},
		{"DELETE FROM audit_log", "append-only: DELETE refused"},
		{"TRUNCATE audit_log", "append-only: TRUNCATE refused"},
		{"INSERT INTO audit_log SELECT * FROM audit_log WHERE id = 1 ON CONFLICT (id) DO UPDATE SET data = '{}'", "append-only"},
		{forged + "(2, 'sign', 'uefi', 'X', '{}', 'now', 'x', 'y', 'v', 'm')", "id must be the last id + 1"},
		{forged + "(4, 'sign', 'uefi', 'X', '{}', 'now', 'x', 'y', 'v', 'm')", "prev_hash must be the last row's hash"},
		{forged + "(4, 'sign', 'uefi', 'X', '{}', 'now', (SELECT hash FROM audit_log WHERE id = 3), (SELECT hash FROM audit_log WHERE id = 3), 'v', 'm')", "hash must be new"},
		{"DELETE FROM audit_key", "audit_key cannot be deleted"},
		{"TRUNCATE audit_key", "audit_key cannot be deleted"},
		{"UPDATE audit_key SET created_at = 'x'", "only the sealed key may be updated"},
		{"INSERT INTO audit_key SELECT 2, sealed, created_at FROM audit_key", "already holds the audit key"},
	} {
		out, err := psql(t, te.cfg.Database, tc.script)
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("psql %q: %v %q, want it refused with %q", tc.script, err, out, tc.want)
		}
	}
	if out := te.mustRun(t, "audit", "verify"); !strings.Contains(out, "3 rows") {
		t.Errorf("audit verify: %q", out)
	}
}

// TestPostgresVerifyTampering breaks the chain the ways the database's
// owner could, with the triggers disabled, and checks each is named.
func TestPostgresVerifyTampering(t *testing.T) {
	for _, tc := range []struct{ name, script, want string }{
		{"edited", `UPDATE audit_log SET data = '{"data_sha256":"evil"}' WHERE id = 3`, "row 3: its contents do not match"},
		{"deleted", "DELETE FROM audit_log WHERE id = 3", "row 4"},
		{"first deleted", "DELETE FROM audit_log WHERE id = 1", "row 2"},
		{"rehashed", "UPDATE audit_log SET data = '{}', hash = 'x' WHERE id = 4", "row 4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			te := newPostgresTestEnv(t)
			appendTestRows(t, te.store(t), 5)
			if out, err := psql(t, te.cfg.Database, "ALTER TABLE audit_log DISABLE TRIGGER USER; "+tc.script); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			status, _, stderr := te.run(t, "audit", "verify")
			if status != exitError || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d %q, want exit 3 naming %q", status, stderr, tc.want)
			}
		})
	}
}

// TestPostgresForeignDatabase: a database holding other tables (Debusine's
// own signing database, for one) is refused and left as it was.
func TestPostgresForeignDatabase(t *testing.T) {
	c := testPostgres(t)
	conninfo := c.newDatabase(t)
	if out, err := psql(t, conninfo, "CREATE TABLE signing_key (id bigint)"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	key := filepath.Join(t.TempDir(), "sk")
	generateServiceKey(key)
	_, err := openStore(conninfo, "", []string{key})
	if err == nil || !strings.Contains(err.Error(), "not a debusine-signing database") {
		t.Errorf("foreign database: %v", err)
	}
	if out, _ := psql(t, conninfo, "SELECT string_agg(tablename, ',') FROM pg_tables WHERE schemaname = 'public'"); out != "signing_key" {
		t.Errorf("the foreign database was changed: tables %q", out)
	}
}

// TestPostgresFirstOpenConcurrent: workers starting at once on an empty
// database create the schema once.
func TestPostgresFirstOpenConcurrent(t *testing.T) {
	te := newPostgresTestEnv(t)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := openStore(te.cfg.Database, "", te.cfg.ServiceKeys)
			if err == nil {
				err = st.Audit(AuditEntry{Event: "sign", Purpose: purposeUEFI, Fingerprint: "ABCD", Data: map[string]any{}})
				st.Close()
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if v, err := te.store(t).VerifyAudit(); err != nil || v.Rows != 4 {
		t.Errorf("%+v %v", v, err)
	}
}

// TestPostgresConcurrentProcesses runs two processes appending to one
// PostgreSQL store at once, as two workers on two hosts would: no row is
// lost and the chain stays whole (TestAuditChild appends).
func TestPostgresConcurrentProcesses(t *testing.T) {
	auditFromTwoProcesses(t, newPostgresTestEnv(t), 150)
}

// TestPostgresRestart: the server restarting between two uses costs the
// store nothing (database/sql drops the dead connections and reconnects),
// and a write while it is down fails whole, with nothing half-written.
func TestPostgresRestart(t *testing.T) {
	c := testPostgres(t)
	te := newPostgresTestEnv(t)
	st := te.store(t)
	appendTestRows(t, st, 2)
	c.restart(t)
	appendTestRows(t, st, 1)
	c.stop(t)
	_, err := generateUEFIKey(st, "while down", nil)
	c.start(t)
	if err == nil {
		t.Fatal("generating a key with the server down succeeded")
	}
	if keys, err := st.Keys(); err != nil || len(keys) != 0 {
		t.Errorf("keys after a failed generate: %v %v", keys, err)
	}
	if v, err := st.VerifyAudit(); err != nil || v.Rows != 3 {
		t.Errorf("%+v %v", v, err)
	}
}

func TestPostgresPasswordRefusedInConninfo(t *testing.T) {
	key := filepath.Join(t.TempDir(), "sk")
	generateServiceKey(key)
	for _, conninfo := range []string{
		"postgresql://signer:secret@db.example.org/signing",
		"postgresql:///signing?host=/run/postgresql&password=secret",
		"host=/run/postgresql dbname=signing password=secret",
	} {
		_, err := openStore(conninfo, "", []string{key})
		if err == nil || !strings.Contains(err.Error(), "password file") || strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: %v", conninfo, err)
		}
	}
	dir := t.TempDir()
	open := writeFile(t, dir, "pw", []byte("secret\n"))
	os.Chmod(open, 0o644)
	_, err := openStore("host=/nonexistent dbname=x", open, []string{key})
	if err == nil || !strings.Contains(err.Error(), "too open") {
		t.Errorf("open password file: %v", err)
	}
}

func TestIsPostgres(t *testing.T) {
	for db, want := range map[string]bool{
		"postgresql:///debusine-signing?host=/run/postgresql": true,
		"postgres://db.example.org/signing":                   true,
		"host=/run/postgresql dbname=signing":                 true,
		"  dbname=signing":                                    true,
		"/var/lib/debusine-signing/signing.sqlite3":           false,
		"signing.sqlite3":                                     false,
		"dbname.sqlite3":                                      false,
	} {
		if isPostgres(db) != want {
			t.Errorf("isPostgres(%q) = %v", db, !want)
		}
	}
}

// BenchmarkAuditAppendPostgres is BenchmarkAuditAppend on PostgreSQL: one
// durable commit per row, each taking the store's advisory lock, over a
// Unix socket.
func BenchmarkAuditAppendPostgres(b *testing.B) {
	benchmarkAuditAppend(b, newPostgresTestEnv(b))
}

// TestPostgresPasswordFile logs in as a role that needs a password, given
// by database_password_file.
func TestPostgresPasswordFile(t *testing.T) {
	c := testPostgres(t)
	if c.data == "" {
		t.Skip("needs the tests' own cluster (DEBUSINE_SIGNING_TEST_POSTGRES is set)")
	}
	conninfo := c.newDatabase(t)
	if out, err := psql(t, conninfo, "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '"+pgPasswordRole+"') THEN CREATE ROLE "+pgPasswordRole+" LOGIN PASSWORD 'correct horse'; END IF; END$$; GRANT CREATE ON SCHEMA public TO "+pgPasswordRole); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	te := newTestEnv(t)
	pw := writeFile(t, te.dir, "db-password", []byte("correct horse\n"))
	os.Chmod(pw, 0o600)
	// A later keyword wins, as in libpq.
	database := conninfo + " user=" + pgPasswordRole
	te.writeConfig(t, fmt.Sprintf("database = %q\ndatabase_password_file = \"db-password\"\nservice_keys = [\"service-key\"]\n", database))
	if out := te.mustRun(t, "keys"); strings.Count(out, "\n") != 1 {
		t.Errorf("keys: %q", out)
	}
	os.WriteFile(pw, []byte("wrong\n"), 0o600)
	status, _, stderr := te.run(t, "keys")
	if status != exitError || !strings.Contains(stderr, "password authentication failed") || strings.Contains(stderr, "wrong") {
		t.Errorf("wrong password: exit %d %q", status, stderr)
	}
}

// TestPostgresSchemaChecked: a trigger disabled, dropped or replaced by the
// database's owner no longer protects the log; audit verify says so even
// when every row still verifies.
func TestPostgresSchemaChecked(t *testing.T) {
	for _, tc := range []struct{ name, script, want string }{
		{"disabled", "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update", "trigger audit_log_no_update is not what this version expects"},
		{"dropped", "DROP TRIGGER audit_log_no_delete ON audit_log", "audit_log_no_delete is missing"},
		{"replaced", "CREATE OR REPLACE FUNCTION audit_log_refuse() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END;$$", "audit_log_refuse() is not what this version expects"},
		{"added", "CREATE TABLE audit_log_copy (id bigint)", "unexpected table audit_log_copy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			te := newPostgresTestEnv(t)
			appendTestRows(t, te.store(t), 2)
			if out := te.mustRun(t, "audit", "verify"); !strings.Contains(out, "2 rows") {
				t.Fatalf("audit verify before: %q", out)
			}
			if out, err := psql(t, te.cfg.Database, tc.script); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			status, _, stderr := te.run(t, "audit", "verify")
			if status != exitError || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d %q, want exit 3 naming %q", status, stderr, tc.want)
			}
		})
	}
}

// BenchmarkKeyLookup is Store.Key for a UEFI and an OpenPGP key: one row
// read, its authentication code and its fingerprint against its public key
// checked.
func BenchmarkKeyLookup(b *testing.B) {
	te := newTestEnv(b)
	st := te.store(b)
	uefi, err := generateUEFIKey(st, "bench", nil)
	if err != nil {
		b.Fatal(err)
	}
	pgp, err := generateOpenPGPKey(st, "Bench <bench@example.org>", nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, k := range []struct{ name, purpose, fpr string }{{"uefi", purposeUEFI, uefi}, {"openpgp", purposeOpenPGP, pgp}} {
		b.Run(k.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := st.Key(k.purpose, k.fpr); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
