package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// TestAuditAppendOnlyBypass runs, through the sqlite3 command line, every
// statement that could rewrite or remove a row despite the UPDATE and
// DELETE triggers (REPLACE deletes without firing DELETE triggers), and
// inserts that do not extend the chain: each must be refused, and the log
// must still verify with every row.
func TestAuditAppendOnlyBypass(t *testing.T) {
	te := newTestEnv(t)
	st := te.store(t)
	appendTestRows(t, st, 3)
	rows := auditRows(t, st, AuditFilter{})
	st.Close()
	head, h2 := rows[2].Hash, rows[1].Hash
	cols := "(id, event, purpose, fingerprint, data, created_at, created_by_work_request_id, program_version, prev_hash, hash, mac)"
	row := func(id int, prev, hash string) string {
		return fmt.Sprintf("(%d, 'sign', 'uefi', 'ABCD', '{}', 'x', NULL, 'v', '%s', '%s', 'm')", id, prev, hash)
	}
	fresh := strings.Repeat("e", 64)
	for _, tc := range []struct{ script, want string }{
		{"UPDATE audit_log SET data = '{}' WHERE id = 2;", "UPDATE refused"},
		{"UPDATE OR REPLACE audit_log SET id = 1 WHERE id = 2;", "UPDATE refused"},
		{"DELETE FROM audit_log WHERE id = 3;", "DELETE refused"},
		{"DELETE FROM audit_log;", "DELETE refused"},
		{"INSERT OR REPLACE INTO audit_log " + cols + " VALUES " + row(2, rows[0].Hash, fresh) + ";", "id must be the last id + 1"},
		{"REPLACE INTO audit_log " + cols + " VALUES " + row(3, h2, fresh) + ";", "id must be the last id + 1"},
		{"INSERT INTO audit_log " + cols + " VALUES " + row(3, h2, fresh) + " ON CONFLICT (id) DO UPDATE SET data = '{\"x\":1}';", "id must be the last id + 1"},
		{"INSERT INTO audit_log " + cols + " VALUES " + row(4, head, head) + " ON CONFLICT (hash) DO UPDATE SET data = '{\"x\":1}';", "hash must be new"},
		// A row past the end that would replace the head through the
		// UNIQUE hash.
		{"INSERT OR REPLACE INTO audit_log " + cols + " VALUES " + row(4, head, head) + ";", "hash must be new"},
		// Not past the end, or leaving a gap.
		{"INSERT INTO audit_log " + cols + " VALUES " + row(0, genesisHash, fresh) + ";", "id must be the last id + 1"},
		{"INSERT INTO audit_log " + cols + " VALUES " + row(5, head, fresh) + ";", "id must be the last id + 1"},
		// Not chained to the head.
		{"INSERT INTO audit_log " + cols + " VALUES " + row(4, h2, fresh) + ";", "prev_hash must be the last row's hash"},
		// Without a mac.
		{"INSERT INTO audit_log (id, event, purpose, fingerprint, data, created_at, prev_hash, hash) VALUES (4, 'sign', 'uefi', 'ABCD', '{}', 'x', '" + head + "', '" + fresh + "');", "needs program_version and mac"},
		{"DELETE FROM audit_key;", "audit_key cannot be deleted"},
		{"INSERT OR REPLACE INTO audit_key (id, sealed, created_at) VALUES (1, '{}', 'x');", "audit_key already holds the audit key"},
	} {
		out, err := sqlite3(t, te.cfg.Database, tc.script)
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("sqlite3 %q: %v %q, want it refused: %s", tc.script, err, out, tc.want)
		}
	}
	if out := te.mustRun(t, "audit", "verify"); !strings.Contains(out, "3 rows, head "+head) {
		t.Errorf("audit verify: %q", out)
	}
}

// forgeRow appends a row with a correct chain hash but without the audit
// key, as someone who can write the file could.
func forgeRow(t *testing.T, db string, prev AuditRow, mac string) {
	t.Helper()
	r := AuditRow{ID: prev.ID + 1, Event: "sign", Purpose: purposeUEFI, Fingerprint: "ABCD", Data: []byte(`{"data_sha256":"forged"}`),
		CreatedAt: prev.CreatedAt, ProgramVersion: prev.ProgramVersion, PrevHash: prev.Hash}
	r.Hash = r.computeHash()
	if mac == "" {
		mac = strings.Repeat("0", 64)
	}
	script := fmt.Sprintf("INSERT INTO audit_log (id, event, purpose, fingerprint, data, created_at, program_version, prev_hash, hash, mac) VALUES (%d, '%s', '%s', '%s', '%s', '%s', '%s', '%s', '%s', '%s');",
		r.ID, r.Event, r.Purpose, r.Fingerprint, r.Data, r.CreatedAt, r.ProgramVersion, r.PrevHash, r.Hash, mac)
	if out, err := sqlite3(t, db, script); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
}

// TestAuditForgery: rows added or rewritten with correct chain hashes but
// without the audit key are named by audit verify, even with the
// triggers in place (an insert that extends the chain passes them).
func TestAuditForgery(t *testing.T) {
	t.Run("appended", func(t *testing.T) {
		te := newTestEnv(t)
		st := te.store(t)
		appendTestRows(t, st, 3)
		rows := auditRows(t, st, AuditFilter{})
		st.Close()
		forgeRow(t, te.cfg.Database, rows[2], rows[2].MAC) // a MAC copied from another row
		status, _, stderr := te.run(t, "audit", "verify")
		if status != exitError || !strings.Contains(stderr, "row 4: its authentication code does not match") {
			t.Errorf("exit %d %q", status, stderr)
		}
	})
	t.Run("rewritten", func(t *testing.T) {
		te := newTestEnv(t)
		st := te.store(t)
		appendTestRows(t, st, 4)
		rows := auditRows(t, st, AuditFilter{})
		st.Close()
		// Rewrite rows 2 to 4 with recomputed hashes, triggers dropped and
		// put back as they were.
		rows[1].Data = []byte(`{"data_sha256":"evil"}`)
		var b strings.Builder
		b.WriteString("DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE id > 1;")
		prev := rows[0].Hash
		for _, r := range rows[1:] {
			r.PrevHash = prev
			r.Hash = r.computeHash()
			prev = r.Hash
			fmt.Fprintf(&b, "INSERT INTO audit_log (id, event, purpose, fingerprint, data, created_at, created_by_work_request_id, program_version, prev_hash, hash, mac) VALUES (%d, '%s', '%s', '%s', '%s', '%s', %d, '%s', '%s', '%s', '%s');",
				r.ID, r.Event, r.Purpose, r.Fingerprint, r.Data, r.CreatedAt, *r.WorkRequest, r.ProgramVersion, r.PrevHash, r.Hash, r.MAC)
		}
		b.WriteString("CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log\nBEGIN\n    SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused');\nEND;")
		if out, err := sqlite3(t, te.cfg.Database, b.String()); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		status, _, stderr := te.run(t, "audit", "verify")
		if status != exitError || !strings.Contains(stderr, "row 2: its authentication code does not match") || strings.Contains(stderr, "schema") {
			t.Errorf("exit %d %q", status, stderr)
		}
	})
	t.Run("audit key replaced", func(t *testing.T) {
		// Someone who knows the service public key (it is in every sealed
		// key) seals a key of their own with it: it does not open.
		te := newTestEnv(t)
		st := te.store(t)
		appendTestRows(t, st, 1)
		other := &Store{serviceKeys: st.serviceKeys}
		mine := *other.serviceKeys[0]
		mine.private = [32]byte{1} // not the service key's private half
		other.serviceKeys = []*serviceKey{&mine}
		sealed, err := other.sealAuditSecret(make([]byte, 32))
		if err != nil {
			t.Fatal(err)
		}
		st.Close()
		if out, err := sqlite3(t, te.cfg.Database, "DROP TRIGGER audit_key_once; DROP TRIGGER audit_key_reseal_only; UPDATE audit_key SET sealed = '"+string(sealed)+"';"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		status, _, stderr := te.run(t, "audit", "verify")
		if status != exitError || !strings.Contains(stderr, "audit key does not open") {
			t.Errorf("exit %d %q", status, stderr)
		}
	})
}

// TestAuditSchemaCheck: audit verify notices a dropped or added trigger
// even when every row verifies, and says so when the log is empty.
func TestAuditSchemaCheck(t *testing.T) {
	te := newTestEnv(t)
	te.store(t).Close()
	if out := te.mustRun(t, "audit", "verify"); !strings.Contains(out, "audit log is empty") {
		t.Errorf("empty log: %q", out)
	}
	for _, tc := range []struct{ script, want string }{
		{"DROP TRIGGER audit_log_append_only;", "trigger audit_log_append_only is missing"},
		{"DROP TRIGGER audit_log_no_update; CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log WHEN 0 BEGIN SELECT 1; END;", "trigger audit_log_no_update is not what this version expects"},
		{"CREATE TRIGGER sneaky AFTER INSERT ON audit_log BEGIN SELECT 1; END;", "unexpected trigger sneaky"},
	} {
		te := newTestEnv(t)
		appendTestRows(t, te.store(t), 2)
		if out, err := sqlite3(t, te.cfg.Database, tc.script); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		status, _, stderr := te.run(t, "audit", "verify")
		if status != exitError || !strings.Contains(stderr, tc.want) {
			t.Errorf("%s: exit %d %q, want %q", tc.script, status, stderr, tc.want)
		}
	}
}

// TestAuditCheckpoint: a checkpoint taken earlier still holds after more
// rows are appended, and catches truncation (the newest rows removed, the
// triggers put back: every row that is left verifies) and a rewrite.
func TestAuditCheckpoint(t *testing.T) {
	te := newTestEnv(t)
	appendTestRows(t, te.store(t), 3)
	cp := writeFile(t, te.dir, "checkpoint", []byte(te.mustRun(t, "audit", "checkpoint")))
	appendTestRows(t, te.store(t), 2)
	if out := te.mustRun(t, "audit", "verify", "--checkpoint", cp); !strings.Contains(out, "still contains the 3 rows it covered (2 added since)") {
		t.Errorf("verify --checkpoint: %q", out)
	}
	cp5 := writeFile(t, te.dir, "checkpoint5", []byte(te.mustRun(t, "audit", "checkpoint")))

	// The rows and their tree hashes cut (tlog.StoredHashCount(3) = 4).
	const restore = "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log\nBEGIN\n    SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused');\nEND;\n" +
		"CREATE TRIGGER audit_tree_no_delete BEFORE DELETE ON audit_tree\nBEGIN\n    SELECT RAISE(ABORT, 'audit_tree is append-only: DELETE refused');\nEND;"
	if out, err := sqlite3(t, te.cfg.Database, "DROP TRIGGER audit_log_no_delete; DROP TRIGGER audit_tree_no_delete; DELETE FROM audit_log WHERE id > 3; DELETE FROM audit_tree WHERE idx >= 4; "+restore); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out := te.mustRun(t, "audit", "verify"); !strings.Contains(out, "3 rows") {
		t.Fatalf("truncated log: %q", out)
	}
	status, _, stderr := te.run(t, "audit", "verify", "--checkpoint", cp5)
	if status != exitError || !strings.Contains(stderr, "audit log truncated: the checkpoint covers 5 rows, the log has 3 (rows 4 to 5 removed)") {
		t.Errorf("truncation: exit %d %q", status, stderr)
	}
	// A checkpoint altered or signed by another key is refused.
	other := newTestEnv(t)
	appendTestRows(t, other.store(t), 3)
	foreign := writeFile(t, te.dir, "foreign", []byte(other.mustRun(t, "audit", "checkpoint")))
	altered, _ := os.ReadFile(cp)
	altered = []byte(strings.Replace(string(altered), "\n3\n", "\n2\n", 1))
	if status, _, stderr := te.run(t, "audit", "verify", "--checkpoint", writeFile(t, te.dir, "altered", altered)); status != exitError || !strings.Contains(stderr, "checkpoint: invalid signature") {
		t.Errorf("altered: exit %d %q", status, stderr)
	}
	// Signed by another audit key: both keys named, where the note
	// package said only "no verifiable signatures".
	mine, theirs := vkeyName(strings.TrimSpace(te.mustRun(t, "audit", "key"))), vkeyName(strings.TrimSpace(other.mustRun(t, "audit", "key")))
	status, _, stderr = te.run(t, "audit", "verify", "--checkpoint", foreign)
	if status != exitError || !strings.Contains(stderr, "checkpoint signed by another audit key ("+theirs+"), not by "+mine) {
		t.Errorf("foreign: exit %d %q", status, stderr)
	}
}

// TestAuditCheckpointPyNaCl checks the note's Ed25519 signature with
// PyNaCl from the note text and the printed verifier key alone.
func TestAuditCheckpointPyNaCl(t *testing.T) {
	// Debian's python3, where python3-nacl installs: not a python3 earlier
	// on PATH (pyenv's, say) that lacks it and would skip the test.
	const python = "/usr/bin/python3"
	if err := exec.Command(python, "-c", "import nacl.signing").Run(); err != nil {
		t.Skip("python3 with nacl (python3-nacl) is not installed")
	}
	te := newTestEnv(t)
	appendTestRows(t, te.store(t), 2)
	note := te.mustRun(t, "audit", "checkpoint")
	vkey := strings.TrimSpace(te.mustRun(t, "audit", "key"))
	const script = `
import base64, hashlib, struct, sys, nacl.signing
note, vkey = open(sys.argv[1]).read(), sys.argv[2]
name, khash, kdata = vkey.split("+", 2)
kdata = base64.b64decode(kdata)
assert kdata[0] == 1 and len(kdata) == 33, "not an Ed25519 key"
assert hashlib.sha256(name.encode() + b"\n" + kdata).digest()[:4] == bytes.fromhex(khash), "key hash"
text, sigs = note.split("\n\n", 1)
text += "\n"
ok = False
for line in sigs.splitlines():
    prefix, signame, sig = line.split(" ")
    assert prefix == "\u2014"
    sig = base64.b64decode(sig)
    if signame == name and sig[:4] == bytes.fromhex(khash):
        nacl.signing.VerifyKey(kdata[1:]).verify(text.encode(), sig[4:])
        ok = True
assert ok, "no signature by the key"
lines = text.split("\n")
assert lines[0] == name, "origin is the key name"
assert lines[3].startswith("chain-head "), "chain head extension line"
print(lines[1], lines[3].split(" ")[1])
`
	notePath := writeFile(t, te.dir, "note", []byte(note))
	out, err := exec.Command(python, "-c", script, notePath, vkey).CombinedOutput()
	head := auditRows(t, te.store(t), AuditFilter{})[1].Hash
	if err != nil || strings.TrimSpace(string(out)) != "2 "+head {
		t.Fatalf("PyNaCl: %v %s", err, out)
	}
	// And a changed text fails PyNaCl's check: the test can fail.
	bad := writeFile(t, te.dir, "bad", []byte(strings.Replace(note, "\n2\n", "\n1\n", 1)))
	if out, err := exec.Command(python, "-c", script, bad, vkey).CombinedOutput(); err == nil {
		t.Fatalf("PyNaCl accepted an altered note: %s", out)
	}
}

// TestAuditReencryptCarriesAuditKey: after reencrypt-keys the new service
// key alone verifies the log, appends to it and signs checkpoints with the
// same key.
func TestAuditReencryptCarriesAuditKey(t *testing.T) {
	te := newTestEnv(t)
	appendTestRows(t, te.store(t), 2)
	vkey := te.mustRun(t, "audit", "key")
	if err := generateServiceKey(filepath.Join(te.dir, "new-key")); err != nil {
		t.Fatal(err)
	}
	te.writeConfig(t, "database = \"signing.sqlite3\"\nservice_keys = [\"new-key\", \"service-key\"]\n")
	if out := te.mustRun(t, "reencrypt-keys"); !strings.Contains(out, "re-encrypted the audit key") {
		t.Errorf("reencrypt-keys: %q", out)
	}
	te.writeConfig(t, "database = \"signing.sqlite3\"\nservice_keys = [\"new-key\"]\n")
	appendTestRows(t, te.store(t), 1)
	if out := te.mustRun(t, "audit", "verify"); !strings.Contains(out, "4 rows") {
		t.Errorf("verify with the new key: %q", out)
	}
	if got := te.mustRun(t, "audit", "key"); got != vkey {
		t.Errorf("verifier key changed: %q, was %q", got, vkey)
	}
	te.writeConfig(t, "database = \"signing.sqlite3\"\nservice_keys = [\"service-key\"]\n")
	if status, _, stderr := te.run(t, "audit", "verify"); status != exitError || !strings.Contains(stderr, "no configured service key matches") {
		t.Errorf("old key alone: exit %d %q", status, stderr)
	}
}

// v1Fixture copies testdata/audit-v1, a database written by the version
// before the authenticated log (a UEFI key generated, a file signed, an
// OpenPGP key generated) and its service key, into a test environment.
func v1Fixture(t *testing.T) *testEnv {
	t.Helper()
	te := newTestEnv(t)
	for _, name := range []string{"signing.sqlite3", "service-key"} {
		data, err := os.ReadFile(filepath.Join("testdata", "audit-v1", name))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, te.dir, name, data)
	}
	return te
}

const v1Head = "4bcc7364f0baa98d23740691d12b9851d89210c409f87044739cf79d8f5f4f13"

// TestAuditMigrationV1: a version 1 store is refused by ordinary commands,
// which name its head and upgrade-store; upgrade-store verifies its rows as
// before, authenticates them and its keys, prints the head it adopts and
// audits that; the log and the keys then go on as usual.
func TestAuditMigrationV1(t *testing.T) {
	te := v1Fixture(t)
	db, sk := te.cfg.Database, te.cfg.ServiceKeys
	status, _, stderr := te.run(t, "keys")
	if status != exitError || !strings.Contains(stderr, "schema version 1") || !strings.Contains(stderr, "3 rows, head "+v1Head) || !strings.Contains(stderr, "upgrade-store") {
		t.Errorf("keys on a version 1 store: exit %d %q", status, stderr)
	}
	// Without a service key the rows cannot be sealed: refused, unchanged.
	if _, err := openOrUpgradeStore(db, "", nil, true); err == nil || !strings.Contains(err.Error(), "3 audit rows must be authenticated") {
		t.Fatalf("upgrade without a service key: %v", err)
	}
	if out, _ := sqlite3(t, db, "PRAGMA user_version;"); strings.TrimSpace(out) != "1" {
		t.Fatalf("user_version %q after a refused migration", out)
	}
	out := te.mustRun(t, "upgrade-store")
	vkey := strings.TrimSpace(te.mustRun(t, "audit", "key"))
	if !strings.Contains(out, "adopted the audit log: 3 rows, head "+v1Head) || !strings.Contains(out, vkeyName(vkey)) {
		t.Errorf("upgrade-store: %q", out)
	}
	if out := te.mustRun(t, "upgrade-store"); !strings.Contains(out, "nothing to adopt") {
		t.Errorf("second upgrade-store: %q", out)
	}
	st, err := openStore(db, "", sk)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rows := auditRows(t, st, AuditFilter{})
	if len(rows) != 4 || rows[0].Event != "generate" || rows[1].Event != "sign" || rows[2].Event != "generate" || rows[0].ProgramVersion != "" || rows[0].MAC == "" {
		t.Fatalf("migrated rows: %+v", rows)
	}
	if r := rows[3]; r.Event != "register" || r.Purpose != "audit" || r.Fingerprint != vkey || r.PrevHash != v1Head ||
		!strings.Contains(string(r.Data), `"adopted_head":"`+v1Head+`"`) || !strings.Contains(string(r.Data), `"adopted_rows":3`) {
		t.Errorf("upgrade row: %+v %s", r, r.Data)
	}
	// The keys were checked and authenticated: they list and sign.
	keys, err := st.Keys()
	if err != nil || len(keys) != 2 {
		t.Fatalf("keys after the upgrade: %v %v", keys, err)
	}
	appendTestRows(t, st, 1)
	if v, err := st.VerifyAudit(); err != nil || v.Rows != 5 {
		t.Errorf("after appending: %+v %v", v, err)
	}
}

// TestAuditMigrationRefusesBrokenLog: a version-1 log that does not verify
// is not sealed (that would bless the damage): the migration stops, and the
// database is left as it was.
func TestAuditMigrationRefusesBrokenLog(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"signing.sqlite3", "service-key"} {
		data, _ := os.ReadFile(filepath.Join("testdata", "audit-v1", name))
		writeFile(t, dir, name, data)
		os.Chmod(filepath.Join(dir, name), 0o600)
	}
	db := filepath.Join(dir, "signing.sqlite3")
	if out, err := sqlite3(t, db, "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET data = '{}' WHERE id = 2;"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	_, err := openStore(db, "", []string{filepath.Join(dir, "service-key")})
	if err == nil || !strings.Contains(err.Error(), "does not verify") || !strings.Contains(err.Error(), "row 2") {
		t.Fatalf("error %v", err)
	}
}

// TestConcurrentFirstOpen: 8 processes open a database that does not exist
// yet and append to it, 20 rounds, each on a fresh database: none may fail.
func TestConcurrentFirstOpen(t *testing.T) {
	if os.Getenv("AUDIT_CHILD_DB") != "" {
		return
	}
	if testing.Short() {
		t.Skip("-short")
	}
	const procs, rounds = 8, 20
	dir := t.TempDir()
	failures := 0
	for round := range rounds {
		// A service key per store: the first store pins its own.
		db := filepath.Join(dir, strconv.Itoa(round), "signing.sqlite3")
		os.Mkdir(filepath.Dir(db), 0o700)
		sk := filepath.Join(filepath.Dir(db), "service-key")
		if err := generateServiceKey(sk); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, procs)
		for range procs {
			wg.Go(func() {
				cmd := exec.Command(os.Args[0], "-test.run=^TestAuditChild$")
				cmd.Env = append(os.Environ(), "AUDIT_CHILD_DB="+db, "AUDIT_CHILD_KEY="+sk, "AUDIT_CHILD_N=1")
				if out, err := cmd.CombinedOutput(); err != nil {
					errs <- fmt.Errorf("round %d: %v: %s", round, err, out)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			failures++
			t.Error(err)
		}
		st, err := openStore(db, "", []string{sk})
		if err != nil {
			t.Fatal(err)
		}
		if v, err := st.VerifyAudit(); err != nil || v.Rows != procs {
			t.Errorf("round %d: %+v %v", round, v, err)
		}
		st.Close()
	}
	if failures > 0 {
		t.Errorf("%d of %d processes failed", failures, procs*rounds)
	}
}

// TestNoCoreDump reads the core size limit from /proc/self/limits in a
// process that holds an unsealed key, and checks it is not dumpable.
func TestNoCoreDump(t *testing.T) {
	if os.Getenv("CORE_CHILD_CONFIG") != "" {
		te := &testEnv{configPath: os.Getenv("CORE_CHILD_CONFIG")}
		cfg, err := loadConfig(te.configPath)
		if err != nil {
			t.Fatal(err)
		}
		st, err := openStore(cfg.Database, cfg.DatabasePasswordFile, cfg.ServiceKeys)
		if err != nil {
			t.Fatal(err)
		}
		keys, err := st.Keys()
		if err != nil || len(keys) != 1 {
			t.Fatal(keys, err)
		}
		plain, err := st.Unseal(keys[0])
		if err != nil {
			t.Fatal(err)
		}
		limits, _ := os.ReadFile("/proc/self/limits")
		dumpable, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
		fmt.Printf("key %d bytes\ndumpable %d %v\n%s\n", len(plain), dumpable, err, limits)
		return
	}
	if _, err := os.Stat("/proc/self/limits"); err != nil {
		t.Skip("no /proc/self/limits")
	}
	te := newTestEnv(t)
	te.mustRun(t, "generate-key", "--purpose", "uefi", "--description", "core")
	// The child starts with core dumps allowed, as far as the hard limit
	// lets it, so that only the program itself can bring the limit to 0.
	cmd := exec.Command("sh", "-c", `ulimit -c unlimited 2>/dev/null; exec "$0" "$@"`, os.Args[0], "-test.run=^TestNoCoreDump$", "-test.v")
	cmd.Env = append(os.Environ(), "CORE_CHILD_CONFIG="+te.configPath)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var core string
	for line := range strings.Lines(string(out)) {
		if strings.HasPrefix(line, "Max core file size") {
			core = strings.Join(strings.Fields(line)[4:6], " ")
		}
	}
	if !strings.Contains(string(out), "key ") || core != "0 0" || !strings.Contains(string(out), "dumpable 0 <nil>") {
		t.Errorf("core file size %q while a key is unsealed:\n%s", core, out)
	}
}
