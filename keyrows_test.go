package main

import (
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The attacks of someone who can write the database but does not hold the
// service key, run through the engines' own command line clients (sqlite3,
// psql), each on SQLite and PostgreSQL.

// dbSession runs script on the test store's database with sqlite3 or psql,
// and fails the test if the client does.
func dbSession(t *testing.T, te *testEnv, script string) {
	t.Helper()
	var out string
	var err error
	if isPostgres(te.cfg.Database) {
		out, err = psql(t, te.cfg.Database, script)
	} else {
		out, err = sqlite3(t, te.cfg.Database, script)
	}
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
}

// sqlText quotes s as an SQL string literal.
func sqlText(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// sqlBlob is b as a literal of the engine's binary type.
func sqlBlob(te *testEnv, b []byte) string {
	if isPostgres(te.cfg.Database) {
		return `'\x` + hex.EncodeToString(b) + `'::bytea`
	}
	return "X'" + hex.EncodeToString(b) + "'"
}

// twoKeys makes a store with two UEFI keys, a (the test key) and b (the
// production key), and returns their fingerprints.
func twoKeys(t *testing.T, te *testEnv) (a, b string) {
	t.Helper()
	st := te.store(t)
	a, err := generateUEFIKey(st, "test key", nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, err = generateUEFIKey(st, "production key", nil); err != nil {
		t.Fatal(err)
	}
	st.Close()
	return a, b
}

// TestKeyRowSwap gives key A's row key B's sealed private key and
// certificate, keeping A's fingerprint, as the attacker did:
// signing with A, listing and export are refused naming the reason, audit
// verify names the row, and reencrypt-keys does not bless it.
func TestKeyRowSwap(t *testing.T) {
	engines(t, func(t *testing.T, te *testEnv) {
		a, b := twoKeys(t, te)
		dbSession(t, te, fmt.Sprintf(
			"UPDATE keys SET private_key = (SELECT private_key FROM keys WHERE fingerprint = '%[2]s'), public_key = (SELECT public_key FROM keys WHERE fingerprint = '%[2]s') WHERE fingerprint = '%[1]s'", a, b))
		shim := writeFile(t, te.dir, "image.efi", []byte("not even a PE image"))
		for _, args := range [][]string{
			{"sign", "--purpose", "uefi", "--key", a, shim},
			{"export-public-key", "--purpose", "uefi", "--key", a},
			{"keys"},
			{"audit", "verify"},
		} {
			status, _, stderr := te.run(t, args...)
			if status != exitError || !strings.Contains(stderr, "uefi:"+a) || !strings.Contains(stderr, "authentication code does not match") {
				t.Errorf("%v: exit %d %q", args, status, stderr)
			}
		}
		if _, err := os.Stat(shim + ".sig"); err == nil {
			t.Error("a signature was written")
		}
		// B itself still works, and is listed.
		if out, stderr := runBoth(t, te, "keys"); !strings.Contains(out, b) || strings.Contains(out, a) || !strings.Contains(stderr, a) {
			t.Errorf("keys: %q %q", out, stderr)
		}
		te.mustRun(t, "export-public-key", "--purpose", "uefi", "--key", b)
		if status, _, stderr := te.run(t, "reencrypt-keys"); status != exitError || !strings.Contains(stderr, "uefi:"+a) {
			t.Errorf("reencrypt-keys: exit %d %q", status, stderr)
		}
	})
}

// runBoth runs a command whatever its exit status and returns its
// outputs.
func runBoth(t *testing.T, te *testEnv, args ...string) (stdout, stderr string) {
	t.Helper()
	_, stdout, stderr = te.run(t, args...)
	return stdout, stderr
}

// TestKeyRowSwapWithFingerprint: the whole content of B's row, its MAC
// included, under A's fingerprint. The code then matches nothing either;
// and if the attacker also recomputes nothing but moves the fingerprint,
// the certificate gives it away.
func TestKeyRowSwapWithFingerprint(t *testing.T) {
	engines(t, func(t *testing.T, te *testEnv) {
		a, b := twoKeys(t, te)
		dbSession(t, te, fmt.Sprintf(
			"UPDATE keys SET private_key = (SELECT private_key FROM keys WHERE fingerprint = '%[2]s'), public_key = (SELECT public_key FROM keys WHERE fingerprint = '%[2]s'), "+
				"description = (SELECT description FROM keys WHERE fingerprint = '%[2]s'), created_at = (SELECT created_at FROM keys WHERE fingerprint = '%[2]s'), "+
				"updated_at = (SELECT updated_at FROM keys WHERE fingerprint = '%[2]s'), mac = (SELECT mac FROM keys WHERE fingerprint = '%[2]s') WHERE fingerprint = '%[1]s'", a, b))
		status, _, stderr := te.run(t, "export-public-key", "--purpose", "uefi", "--key", a)
		if status != exitError || !strings.Contains(stderr, "authentication code does not match") {
			t.Errorf("exit %d %q", status, stderr)
		}
		// With a valid code (as if the audit key had leaked, or a bug), the
		// fingerprint check still refuses it: the certificate is B's.
		st := te.store(t)
		kb, err := st.Key(purposeUEFI, b)
		if err != nil {
			t.Fatal(err)
		}
		dbSession(t, te, "DELETE FROM keys WHERE fingerprint = '"+a+"'")
		insertTestKeyRow(t, st, &Key{Purpose: purposeUEFI, Fingerprint: a, PrivateKey: kb.PrivateKey, PublicKey: kb.PublicKey})
		if _, err := st.Key(purposeUEFI, a); err == nil || !strings.Contains(err.Error(), "its certificate has fingerprint "+b) {
			t.Errorf("certificate of another key: %v", err)
		}
	})
}

// TestKeyRowEdited: an edited description or created_at is refused and
// reported.
func TestKeyRowEdited(t *testing.T) {
	for _, edit := range []string{"description = 'production key'", "created_at = '2020-01-01T00:00:00.000000Z'", "updated_at = 'yesterday'"} {
		t.Run(strings.Fields(edit)[0], func(t *testing.T) {
			engines(t, func(t *testing.T, te *testEnv) {
				a, _ := twoKeys(t, te)
				dbSession(t, te, "UPDATE keys SET "+edit+" WHERE fingerprint = '"+a+"'")
				for _, args := range [][]string{{"export-public-key", "--purpose", "uefi", "--key", a}, {"keys"}, {"audit", "verify"}} {
					status, _, stderr := te.run(t, args...)
					if status != exitError || !strings.Contains(stderr, "uefi:"+a) || !strings.Contains(stderr, "authentication code does not match") {
						t.Errorf("%v: exit %d %q", args, status, stderr)
					}
				}
			})
		})
	}
}

// TestKeyRowDeleted: a key row deleted is named by audit verify (its
// generate row records it) and by its use.
func TestKeyRowDeleted(t *testing.T) {
	engines(t, func(t *testing.T, te *testEnv) {
		a, _ := twoKeys(t, te)
		if out := te.mustRun(t, "audit", "verify"); !strings.Contains(out, "2 rows") {
			t.Fatalf("audit verify before: %q", out)
		}
		dbSession(t, te, "DELETE FROM keys WHERE fingerprint = '"+a+"'")
		status, _, stderr := te.run(t, "audit", "verify")
		if status != exitError || !strings.Contains(stderr, "uefi:"+a+": missing from the keys table, which audit row 1 records (generate): the key row was deleted") {
			t.Errorf("audit verify: exit %d %q", status, stderr)
		}
		status, _, stderr = te.run(t, "export-public-key", "--purpose", "uefi", "--key", a)
		if status != exitError || !strings.Contains(stderr, "audit row 1 records it: the key row was deleted") {
			t.Errorf("export: exit %d %q", status, stderr)
		}
	})
}

// TestKeyRowMigrationV4: a version 3 store's key rows get their codes when
// it is opened, once each is checked; a row swapped before the upgrade is
// left without one, and refused.
func TestKeyRowMigrationV4(t *testing.T) {
	engines(t, func(t *testing.T, te *testEnv) {
		a, b := twoKeys(t, te)
		pgp := strings.TrimSpace(te.mustRun(t, "generate-key", "--purpose", "openpgp", "--description", "Archive <archive@example.org>"))
		// Back to version 3 as it was: no mac column, no triggers on keys,
		// no audit tree (version 5), A's row swapped meanwhile.
		if isPostgres(te.cfg.Database) {
			dbSession(t, te, "DROP TABLE audit_tree; DROP FUNCTION audit_tree_refuse(); DROP FUNCTION audit_tree_check_insert(); DROP TRIGGER keys_needs_mac ON keys; DROP FUNCTION keys_check_mac(); ALTER TABLE keys DROP COLUMN mac; UPDATE debusine_signing_schema SET version = 3")
		} else {
			dbSession(t, te, "DROP TABLE audit_tree; DROP TRIGGER keys_insert_needs_mac; DROP TRIGGER keys_update_needs_mac; ALTER TABLE keys DROP COLUMN mac; PRAGMA user_version = 3")
		}
		dbSession(t, te, fmt.Sprintf("UPDATE keys SET private_key = (SELECT private_key FROM keys WHERE fingerprint = '%[2]s') WHERE fingerprint = '%[1]s'", a, b))
		out, stderr := runBoth(t, te, "keys")
		if !strings.Contains(out, b) || !strings.Contains(out, pgp) || strings.Contains(out, a) || !strings.Contains(stderr, "uefi:"+a+" has no authentication code") {
			t.Errorf("keys after the migration: %q %q", out, stderr)
		}
		status, _, stderr := te.run(t, "audit", "verify")
		if status != exitError || !strings.Contains(stderr, "1 key row(s) fail") || !strings.Contains(stderr, "uefi:"+a) {
			t.Errorf("audit verify: exit %d %q", status, stderr)
		}
		data := writeFile(t, te.dir, "Release", []byte("Origin: test\n"))
		te.mustRun(t, "sign", "--purpose", "openpgp", "--key", pgp, data)
	})
}

// TestDowngradeToV1: the database rewritten as schema version 1, with no
// audit key or codes, a past row edited and another deleted, the chain
// recomputed so that it verifies as version 1 verified it. Every command,
// upgrade-store included, refuses it, naming the pin.
func TestDowngradeToV1(t *testing.T) {
	engines(t, func(t *testing.T, te *testEnv) {
		st := te.store(t)
		fpr, err := generateUEFIKey(st, "downgraded", nil)
		if err != nil {
			t.Fatal(err)
		}
		appendTestRows(t, st, 3)
		rows := auditRows(t, st, AuditFilter{})
		k, err := st.Key(purposeUEFI, fpr)
		if err != nil {
			t.Fatal(err)
		}
		eng := st.engine
		st.Close()
		// Row 2 edited, row 3 deleted, the rest renumbered and chained as
		// version 1 hashed them.
		rows[1].Data = []byte(`{"data_sha256":"forged"}`)
		rows = append(rows[:2], rows[3:]...)
		var script strings.Builder
		if eng == postgresEngine {
			script.WriteString("DROP SCHEMA public CASCADE; CREATE SCHEMA public;\n")
		} else {
			os.Remove(te.cfg.Database)
			os.Remove(te.cfg.Database + "-wal")
			os.Remove(te.cfg.Database + "-shm")
		}
		script.WriteString(schemaSections(eng.schema)[0])
		if eng == postgresEngine {
			script.WriteString("INSERT INTO debusine_signing_schema VALUES ('debusine-signing', 1);\n")
		} else {
			fmt.Fprintf(&script, "PRAGMA application_id = %d; PRAGMA user_version = 1;\n", applicationID)
		}
		fmt.Fprintf(&script, "INSERT INTO keys (%s) VALUES (%s, %s, %s, %s, %s, %s, %s);\n", keyColumns,
			sqlText(k.Purpose), sqlText(k.Fingerprint), sqlText(string(k.PrivateKey)), sqlBlob(te, k.PublicKey), sqlText(k.Description), sqlText(k.created), sqlText(k.updated))
		prev := genesisHash
		for i, r := range rows {
			r.ID, r.ProgramVersion, r.PrevHash = int64(i+1), "", prev
			r.Hash = r.computeHash()
			prev = r.Hash
			wr := "NULL"
			if r.WorkRequest != nil {
				wr = fmt.Sprint(*r.WorkRequest)
			}
			fmt.Fprintf(&script, "INSERT INTO audit_log (id, event, purpose, fingerprint, data, created_at, created_by_work_request_id, prev_hash, hash) VALUES (%d, %s, %s, %s, %s, %s, %s, %s, %s);\n",
				r.ID, sqlText(r.Event), sqlText(r.Purpose), sqlText(r.Fingerprint), sqlText(string(r.Data)), sqlText(r.CreatedAt), wr, sqlText(r.PrevHash), sqlText(r.Hash))
		}
		dbSession(t, te, script.String())
		for _, args := range [][]string{{"audit", "verify"}, {"keys"}, {"upgrade-store"}} {
			status, _, stderr := te.run(t, args...)
			if status != exitError || !strings.Contains(stderr, "schema version 1") || !strings.Contains(stderr, "rewritten as an older version") || !strings.Contains(stderr, "service-key"+pinSuffix) {
				t.Errorf("%v: exit %d %q", args, status, stderr)
			}
		}
		if eng == sqliteEngine {
			if out, _ := sqlite3(t, te.cfg.Database, "PRAGMA user_version;"); strings.TrimSpace(out) != "1" {
				t.Errorf("user_version %q: the forgery was migrated", out)
			}
		}
	})
}

// TestAuditKeyDeleted: the audit key removed (its trigger disabled for
// the purpose) is named, pinned or not; no new key is made.
func TestAuditKeyDeleted(t *testing.T) {
	engines(t, func(t *testing.T, te *testEnv) {
		st := te.store(t)
		appendTestRows(t, st, 2)
		vkey, err := st.CheckpointVerifierKey()
		if err != nil {
			t.Fatal(err)
		}
		st.Close()
		if isPostgres(te.cfg.Database) {
			dbSession(t, te, "ALTER TABLE audit_key DISABLE TRIGGER USER; DELETE FROM audit_key; ALTER TABLE audit_key ENABLE TRIGGER USER")
		} else {
			dbSession(t, te, "DROP TRIGGER audit_key_no_delete; DELETE FROM audit_key; CREATE TRIGGER audit_key_no_delete BEFORE DELETE ON audit_key\nBEGIN\n    SELECT RAISE(ABORT, 'audit_key cannot be deleted');\nEND;")
		}
		status, _, stderr := te.run(t, "audit", "verify")
		if status != exitError || !strings.Contains(stderr, "the audit key is missing from the database, though service key") || !strings.Contains(stderr, vkeyName(vkey)) {
			t.Errorf("pinned: exit %d %q", status, stderr)
		}
		// Without the pin (a store that predates pins), still refused.
		os.Remove(filepath.Join(te.dir, "service-key"+pinSuffix))
		status, _, stderr = te.run(t, "audit", "key")
		if status != exitError || !strings.Contains(stderr, "the audit key is missing from the database (deleted?)") {
			t.Errorf("not pinned: exit %d %q", status, stderr)
		}
		if _, err := os.Stat(filepath.Join(te.dir, "service-key"+pinSuffix)); err == nil {
			t.Error("a new pin was written")
		}
	})
}

// TestAuditKeyPinned: the pin is written beside the service key when the
// store is made, holds what audit key prints, and catches a store whose
// audit key was replaced by another store's (sealed with the same service
// key, so it opens) and a wiped store.
func TestAuditKeyPinned(t *testing.T) {
	engines(t, func(t *testing.T, te *testEnv) {
		appendTestRows(t, te.store(t), 1)
		pin := filepath.Join(te.dir, "service-key"+pinSuffix)
		data, err := os.ReadFile(pin)
		fi, _ := os.Stat(pin)
		if err != nil || string(data) != te.mustRun(t, "audit", "key") || fi.Mode().Perm() != 0o644 {
			t.Fatalf("pin %q %v %v", data, fi.Mode(), err)
		}
		// Another store under a copy of the same service key.
		other := newTestEnv(t)
		key, _ := os.ReadFile(filepath.Join(te.dir, "service-key"))
		writeFile(t, other.dir, "service-key", key)
		appendTestRows(t, other.store(t), 1)
		otherKey := other.mustRun(t, "audit", "key")
		var sealed string
		if err := other.store(t).db.QueryRow("SELECT sealed FROM audit_key").Scan(&sealed); err != nil {
			t.Fatal(err)
		}
		if isPostgres(te.cfg.Database) {
			dbSession(t, te, "ALTER TABLE audit_key DISABLE TRIGGER USER; UPDATE audit_key SET sealed = "+sqlText(sealed)+"; ALTER TABLE audit_key ENABLE TRIGGER USER")
		} else {
			dbSession(t, te, "DROP TRIGGER audit_key_once; DROP TRIGGER audit_key_reseal_only; UPDATE audit_key SET sealed = "+sqlText(sealed)+";")
		}
		status, _, stderr := te.run(t, "audit", "key")
		if status != exitError || !strings.Contains(stderr, "the audit key was replaced") || !strings.Contains(stderr, vkeyName(strings.TrimSpace(otherKey))) {
			t.Errorf("replaced: exit %d %q", status, stderr)
		}
		// Wiped: an empty database under a pinned service key.
		if isPostgres(te.cfg.Database) {
			dbSession(t, te, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
		} else {
			for _, suffix := range []string{"", "-wal", "-shm"} {
				os.Remove(te.cfg.Database + suffix)
			}
		}
		status, _, stderr = te.run(t, "keys")
		if status != exitError || !strings.Contains(stderr, "the database is empty, but service key") {
			t.Errorf("wiped: exit %d %q", status, stderr)
		}
	})
}

// TestAuditKeyPinReadOnly: a service key in a directory the service cannot
// write (a systemd credential) leaves the store unpinned, with a warning
// that says how to pin it; once the pin is there it is checked.
func TestAuditKeyPinReadOnly(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root writes into read-only directories")
	}
	te := newTestEnv(t)
	keys := filepath.Join(te.dir, "credentials")
	os.Mkdir(keys, 0o700)
	os.Rename(filepath.Join(te.dir, "service-key"), filepath.Join(keys, "service-key"))
	os.Chmod(keys, 0o500)
	t.Cleanup(func() { os.Chmod(keys, 0o700) })
	te.writeConfig(t, "database = \"signing.sqlite3\"\nservice_keys = [\"credentials/service-key\"]\n")
	status, out, stderr := te.run(t, "audit", "key")
	if status != exitOK || !strings.Contains(stderr, "warning: the audit key is not pinned") || !strings.Contains(stderr, "service-key"+pinSuffix) {
		t.Fatalf("exit %d %q", status, stderr)
	}
	if status, _, stderr := te.run(t, "audit", "verify"); status != exitError || !strings.Contains(stderr, "audit key: not pinned beside any configured service key") {
		t.Errorf("audit verify unpinned: exit %d %q", status, stderr)
	}
	os.Chmod(keys, 0o700)
	writeFile(t, keys, "service-key"+pinSuffix, []byte("debusine-signing-audit+00000000+AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"))
	if status, _, stderr := te.run(t, "keys"); status != exitError || !strings.Contains(stderr, "the audit key was replaced") {
		t.Errorf("wrong pin: exit %d %q", status, stderr)
	}
	writeFile(t, keys, "service-key"+pinSuffix, []byte(out))
	if status, _, stderr := te.run(t, "keys"); status != exitOK || strings.Contains(stderr, "warning") {
		t.Errorf("pinned: exit %d %q", status, stderr)
	}
}

// FuzzPublicKeyFingerprint: whatever a key row's public key holds, reading
// its fingerprint fails cleanly or gives one of the right form.
func FuzzPublicKeyFingerprint(f *testing.F) {
	_, certPEM := testCertificate(f, "fuzz")
	f.Add(certPEM, true)
	f.Add([]byte("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n-----END PGP PUBLIC KEY BLOCK-----\n"), false)
	f.Fuzz(func(t *testing.T, public []byte, uefi bool) {
		purpose, want := purposeOpenPGP, 40
		if uefi {
			purpose, want = purposeUEFI, 64
		}
		fpr, err := publicKeyFingerprint(purpose, public)
		if err == nil && (len(fpr) != want || strings.ToUpper(fpr) != fpr) {
			t.Errorf("fingerprint %q", fpr)
		}
	})
}
