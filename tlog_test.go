package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// tamper runs SQL against te's database with the append-only triggers of
// both audit tables out of the way (dropped and put back on SQLite,
// disabled and enabled on PostgreSQL), as the database's owner could.
func tamper(t *testing.T, te *testEnv, script string) {
	t.Helper()
	if isPostgres(te.cfg.Database) {
		if out, err := psql(t, te.cfg.Database, "ALTER TABLE audit_log DISABLE TRIGGER USER; ALTER TABLE audit_tree DISABLE TRIGGER USER; "+script+
			"; ALTER TABLE audit_log ENABLE TRIGGER USER; ALTER TABLE audit_tree ENABLE TRIGGER USER;"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		return
	}
	want, err := expectedSchema()
	if err != nil {
		t.Fatal(err)
	}
	var drop, restore strings.Builder
	for _, name := range []string{"audit_log_no_update", "audit_log_no_delete", "audit_log_append_only", "audit_tree_no_update", "audit_tree_no_delete", "audit_tree_append_only"} {
		fmt.Fprintf(&drop, "DROP TRIGGER %s; ", name)
		fmt.Fprintf(&restore, "%s;\n", want[name].sql)
	}
	if out, err := sqlite3(t, te.cfg.Database, drop.String()+script+";\n"+restore.String()); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
}

// signRow appends the sign row of data to te's log, as signing does.
func signRow(t *testing.T, st *Store, data []byte) {
	t.Helper()
	sum := sha256.Sum256(data)
	wr := int64(7)
	ac := auditContext{WorkRequest: &wr, Extra: map[string]any{"username": "alice"}}
	if err := st.Audit(ac.signEntry(&Key{Purpose: purposeUEFI, Fingerprint: "ABCD"}, hex.EncodeToString(sum[:]))); err != nil {
		t.Fatal(err)
	}
}

// TestAuditTreeAppendOnly: the database itself refuses to rewrite, delete
// or misplace a stored tree hash, on both engines.
func TestAuditTreeAppendOnly(t *testing.T) {
	engines(t, func(t *testing.T, te *testEnv) {
		st := te.store(t)
		appendTestRows(t, st, 3)
		for _, q := range []string{
			"UPDATE audit_tree SET hash = (SELECT hash FROM audit_tree WHERE idx = 0) WHERE idx = 1",
			"DELETE FROM audit_tree WHERE idx = 3",
			"INSERT INTO audit_tree (idx, hash) SELECT 10, hash FROM audit_tree WHERE idx = 0",
			"INSERT INTO audit_tree (idx, hash) SELECT 2, hash FROM audit_tree WHERE idx = 0",
		} {
			if _, err := st.db.Exec(q); err == nil || !strings.Contains(err.Error(), "audit_tree") {
				t.Errorf("%s: %v, want it refused", q, err)
			}
		}
		if isPostgres(te.cfg.Database) {
			if _, err := st.db.Exec("TRUNCATE audit_tree"); err == nil {
				t.Error("TRUNCATE audit_tree not refused")
			}
		}
		if out := te.mustRun(t, "audit", "verify"); !strings.Contains(out, "3 rows") {
			t.Errorf("audit verify: %q", out)
		}
	})
}

// TestAuditTreeAttacks: each way of rewriting the log that the tree is
// there to catch is named by audit verify, or by audit verify
// --checkpoint against a checkpoint taken before, on both engines.
func TestAuditTreeAttacks(t *testing.T) {
	for _, tc := range []struct {
		name, script string
		checkpoint   bool // caught only against the checkpoint
		want         string
	}{
		{"row rewritten", `UPDATE audit_log SET data = '{"data_sha256":"evil"}' WHERE id = 3`, false, "row 3: its contents do not match"},
		{"stored hash rewritten", "UPDATE audit_tree SET hash = (SELECT hash FROM audit_tree WHERE idx = 0) WHERE idx = 3", false, "audit tree broken at row 3: stored hash 3 does not match"},
		{"stored hash deleted", "DELETE FROM audit_tree WHERE idx = 4", false, "audit tree broken at row 4: stored hash 4 is missing"},
		{"stored hash added", "INSERT INTO audit_tree (idx, hash) SELECT 100, hash FROM audit_tree WHERE idx = 0", false, "audit tree broken: it holds 9 stored hashes, 5 rows need 8"},
		{"rows cut with their hashes", "DELETE FROM audit_log WHERE id > 3; DELETE FROM audit_tree WHERE idx >= 4", true, "audit log truncated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			engines(t, func(t *testing.T, te *testEnv) {
				appendTestRows(t, te.store(t), 5)
				cp := writeFile(t, te.dir, "checkpoint", []byte(te.mustRun(t, "audit", "checkpoint")))
				tamper(t, te, tc.script)
				args := []string{"audit", "verify"}
				if tc.checkpoint {
					te.mustRun(t, args...)
					args = append(args, "--checkpoint", cp)
				}
				if status, _, stderr := te.run(t, args...); status != exitError || !strings.Contains(stderr, tc.want) {
					t.Errorf("exit %d %q, want exit 3 naming %q", status, stderr, tc.want)
				}
			})
		})
	}
}

// TestAuditTreeCutAndRegrown: the newest rows cut with their tree hashes,
// and as many new rows appended by the service itself: the log verifies
// alone, and the checkpoint taken before names the rewrite.
func TestAuditTreeCutAndRegrown(t *testing.T) {
	engines(t, func(t *testing.T, te *testEnv) {
		appendTestRows(t, te.store(t), 5)
		cp := writeFile(t, te.dir, "checkpoint", []byte(te.mustRun(t, "audit", "checkpoint")))
		tamper(t, te, "DELETE FROM audit_log WHERE id > 3; DELETE FROM audit_tree WHERE idx >= 4")
		st := te.store(t)
		signRow(t, st, []byte("other 4"))
		signRow(t, st, []byte("other 5"))
		signRow(t, st, []byte("other 6"))
		te.mustRun(t, "audit", "verify")
		status, _, stderr := te.run(t, "audit", "verify", "--checkpoint", cp)
		if status != exitError || !strings.Contains(stderr, "audit log rewritten: row 5 is not the row the checkpoint covered") {
			t.Errorf("exit %d %q", status, stderr)
		}
	})
}

// TestAuditTreeFork: a second log kept under the same audit key (a copy of
// the database that grew apart): each verifies alone, and a checkpoint of
// one is refused by the other, on both engines.
func TestAuditTreeFork(t *testing.T) {
	engines(t, func(t *testing.T, te *testEnv) {
		st, err := openStore(te.cfg.Database, "", te.cfg.ServiceKeys)
		if err != nil {
			t.Fatal(err)
		}
		appendTestRows(t, st, 3)
		st.Close()
		fork := newTestEnv(t)
		if err := os.WriteFile(filepath.Join(fork.dir, "service-key"), mustRead(t, filepath.Join(te.dir, "service-key")), 0o600); err != nil {
			t.Fatal(err)
		}
		if isPostgres(te.cfg.Database) {
			admin := testPostgres(t).adminDB(t)
			dbName := func(conninfo string) string { return conninfo[strings.LastIndex(conninfo, "dbname=")+len("dbname="):] }
			name := dbName(te.cfg.Database)
			forkConninfo := testPostgres(t).newDatabase(t)
			forkName := dbName(forkConninfo)
			if _, err := admin.Exec("DROP DATABASE " + forkName); err != nil {
				t.Fatal(err)
			}
			if _, err := admin.Exec("CREATE DATABASE " + forkName + " TEMPLATE " + name); err != nil {
				t.Fatal(err)
			}
			fork.writeConfig(t, fmt.Sprintf("database = %q\nservice_keys = [\"service-key\"]\n", forkConninfo))
		} else {
			if err := os.WriteFile(fork.cfg.Database, mustRead(t, te.cfg.Database), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		signRow(t, te.store(t), []byte("the real shim"))
		signRow(t, fork.store(t), []byte("an evil shim"))
		te.mustRun(t, "audit", "verify")
		fork.mustRun(t, "audit", "verify")
		real := te.mustRun(t, "audit", "checkpoint")
		forked := fork.mustRun(t, "audit", "checkpoint")
		var verifiers = func(env *testEnv) string { return strings.TrimSpace(env.mustRun(t, "audit", "key")) }
		if verifiers(te) != verifiers(fork) {
			t.Fatal("the fork has another key")
		}
		a, _ := OpenCheckpoint([]byte(real), verifiers(te))
		b, _ := OpenCheckpoint([]byte(forked), verifiers(te))
		if a.Size != 4 || b.Size != 4 || a.Root == b.Root {
			t.Fatalf("checkpoints %+v %+v: want two of 4 rows with different roots", a, b)
		}
		for _, tc := range []struct {
			env *testEnv
			cp  string
		}{{te, forked}, {fork, real}} {
			status, _, stderr := tc.env.run(t, "audit", "verify", "--checkpoint", writeFile(t, t.TempDir(), "cp", []byte(tc.cp)))
			if status != exitError || !strings.Contains(stderr, "audit log rewritten: row 4") {
				t.Errorf("exit %d %q", status, stderr)
			}
		}
		// A receipt from the fork does not verify against a checkpoint of
		// the real log: a receipt carries its own checkpoint, so the check
		// is its root against the checkpoints others saw (witnesses).
		rc := fork.mustRun(t, "audit", "prove", "4")
		if _, _, err := verifyReceiptAgainst(t, []byte(rc), verifiers(te), a); err == nil {
			t.Error("a receipt of the fork verifies against the real log's checkpoint")
		}
	})
}

// verifyReceiptAgainst verifies a receipt, then checks its proof against
// the root of another checkpoint of the same size, as a client holding a
// witnessed checkpoint would.
func verifyReceiptAgainst(t *testing.T, rc []byte, vkey string, cp AuditCheckpoint) (AuditRow, AuditCheckpoint, error) {
	t.Helper()
	verifiers, err := checkpointVerifiers(vkey, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, own, err := verifyReceipt(rc, verifiers)
	if err != nil {
		return r, own, err
	}
	var parsed receipt
	if err := json.Unmarshal(rc, &parsed); err != nil {
		t.Fatal(err)
	}
	return r, own, tlog.CheckRecord(parsed.Proof, cp.Size, cp.Root, r.ID-1, tlog.RecordHash(parsed.Leaf))
}

// TestAuditReceipt: audit prove writes receipts (by row, by SHA-256, by
// file, with a given checkpoint) that audit verify-receipt checks with the
// verifier key alone; a receipt for another file, altered, or checked with
// another key is refused, on both engines.
func TestAuditReceipt(t *testing.T) {
	engines(t, func(t *testing.T, te *testEnv) {
		dir := t.TempDir()
		shim := writeFile(t, dir, "shimx64.efi", []byte("a signed shim"))
		other := writeFile(t, dir, "grubx64.efi", []byte("another file"))
		st := te.store(t)
		appendTestRows(t, st, 2)
		signRow(t, st, []byte("a signed shim"))
		appendTestRows(t, st, 3)
		cp := writeFile(t, dir, "checkpoint", []byte(te.mustRun(t, "audit", "checkpoint")))
		appendTestRows(t, st, 2)
		key := strings.TrimSpace(te.mustRun(t, "audit", "key"))
		keyFile := writeFile(t, dir, "audit.pub", []byte(key+"\n"))
		for _, args := range [][]string{
			{"3"},
			{"--file", shim},
			{"--sha256", fmt.Sprintf("%x", sha256.Sum256([]byte("a signed shim")))},
			{"--checkpoint", cp, "3"},
		} {
			rc := filepath.Join(dir, "receipt")
			te.mustRun(t, append([]string{"audit", "prove", "-o", rc}, args...)...)
			out := te.mustRun(t, "audit", "verify-receipt", rc, "--file", shim, "--key", keyFile)
			if !strings.Contains(out, "receipt verifies: row 3 is in the audit log debusine-signing/") || !strings.Contains(out, "its SHA-256 is the row's data_sha256") {
				t.Errorf("%v: %q", args, out)
			}
			if args[0] == "--checkpoint" && !strings.Contains(out, " of 6 rows") {
				t.Errorf("the receipt does not carry the checkpoint given: %q", out)
			}
			status, _, stderr := te.run(t, "audit", "verify-receipt", "--key", key, "--file", other, rc)
			if status != exitError || !strings.Contains(stderr, "the receipt is not for "+other) {
				t.Errorf("another file: exit %d %q", status, stderr)
			}
		}
		rc := mustRead(t, filepath.Join(dir, "receipt"))
		var parsed receipt
		if err := json.Unmarshal(rc, &parsed); err != nil {
			t.Fatal(err)
		}
		otherKey := strings.TrimSpace(newTestEnv(t).mustRun(t, "audit", "key"))
		for _, tc := range []struct {
			name, key string
			edit      func(*receipt)
			want      string
		}{
			{"another key", otherKey, func(*receipt) {}, "checkpoint: note has no verifiable signatures"},
			{"leaf changed", key, func(r *receipt) { r.Leaf = bytes.Replace(r.Leaf, []byte("alice"), []byte("mallo"), 1) }, "the inclusion proof of row 3 does not verify"},
			{"proof changed", key, func(r *receipt) { r.Proof[0][0] ^= 1 }, "the inclusion proof of row 3 does not verify"},
			{"checkpoint changed", key, func(r *receipt) { r.Checkpoint = strings.Replace(r.Checkpoint, "\n6\n", "\n7\n", 1) }, "checkpoint: invalid signature"},
		} {
			var r receipt
			json.Unmarshal(rc, &r)
			tc.edit(&r)
			data, _ := json.Marshal(r)
			p := writeFile(t, dir, "bad", data)
			if status, _, stderr := te.run(t, "audit", "verify-receipt", "--key", tc.key, p); status != exitError || !strings.Contains(stderr, tc.want) {
				t.Errorf("%s: exit %d %q, want %q", tc.name, status, stderr, tc.want)
			}
		}
		// A checkpoint that does not cover the row is not carried.
		early := writeFile(t, dir, "early", []byte(te.mustRun(t, "audit", "checkpoint")))
		signRow(t, st, []byte("later"))
		if status, _, stderr := te.run(t, "audit", "prove", "--checkpoint", early, "--file", writeFile(t, dir, "later", []byte("later"))); status != exitError || !strings.Contains(stderr, "covers 8 rows, not row 9") {
			t.Errorf("early checkpoint: exit %d %q", status, stderr)
		}
	})
}

// TestAuditTreeMigrationV4: a log written before the tree (schema version
// 4) gets its tree when opened; its rows, chain and authentication codes
// are unchanged, and the tree is the one appending would have built.
func TestAuditTreeMigrationV4(t *testing.T) {
	engines(t, func(t *testing.T, te *testEnv) {
		st, err := openStore(te.cfg.Database, "", te.cfg.ServiceKeys)
		if err != nil {
			t.Fatal(err)
		}
		appendTestRows(t, st, 6)
		want, err := st.VerifyAudit()
		if err != nil {
			t.Fatal(err)
		}
		before := auditRows(t, st, AuditFilter{})
		eng := st.engine
		drop := "DROP TABLE audit_tree; "
		if eng == postgresEngine {
			drop += "DROP FUNCTION audit_tree_refuse; DROP FUNCTION audit_tree_check_insert; UPDATE debusine_signing_schema SET version = 4"
		} else {
			drop += "PRAGMA user_version = 4"
		}
		if _, err := st.db.Exec(drop); err != nil {
			t.Fatal(err)
		}
		st.Close()
		st = te.store(t)
		v, err := st.VerifyAudit()
		if err != nil || v != want {
			t.Fatalf("after migration: %+v %v, want %+v", v, err, want)
		}
		a, _ := json.Marshal(auditRows(t, st, AuditFilter{}))
		if b, _ := json.Marshal(before); !bytes.Equal(a, b) {
			t.Errorf("rows changed by the migration")
		}
	})
}

// TestAuditCheckpointForms: a new checkpoint's text, and an old-form
// checkpoint (and old-form verifier key) still verifying.
func TestAuditCheckpointForms(t *testing.T) {
	te := newTestEnv(t)
	st := te.store(t)
	appendTestRows(t, st, 2)
	ak, err := st.auditKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := st.Checkpoint()
	if err != nil {
		t.Fatal(err)
	}
	tree, err := st.treeHead(st.db)
	if err != nil {
		t.Fatal(err)
	}
	var head string
	st.db.QueryRow("SELECT hash FROM audit_log WHERE id = 2").Scan(&head)
	origin := ak.defaultOrigin()
	text := fmt.Sprintf("%s\n2\n%s\nchain-head %s\n\n— %s ", origin, tree.Hash, head, origin)
	if !strings.HasPrefix(string(msg), text) {
		t.Errorf("checkpoint %q, want it to start %q", msg, text)
	}
	legacyKey, _ := ak.verifierKey(legacyKeyName)
	newKey := strings.TrimSpace(te.mustRun(t, "audit", "key"))
	if !strings.HasPrefix(newKey, origin+"+") {
		t.Errorf("audit key %q is not named after the origin %q", newKey, origin)
	}
	signer, _ := ak.noteSigner(legacyKeyName)
	old, err := note.Sign(&note.Note{Text: legacyOrigin + "\n2\n" + head + "\n"}, signer)
	if err != nil {
		t.Fatal(err)
	}
	for _, vkey := range []string{legacyKey, newKey} {
		for _, m := range [][]byte{msg, old} {
			cp, err := OpenCheckpoint(m, vkey)
			if err != nil || cp.Size != 2 || cp.Head != head || cp.Legacy != bytes.Equal(m, old) {
				t.Errorf("%s with %s: %+v %v", m, vkey, cp, err)
			}
		}
	}
	if out := te.mustRun(t, "audit", "verify", "--checkpoint", writeFile(t, te.dir, "old", old)); !strings.Contains(out, "still contains the 2 rows") {
		t.Errorf("old checkpoint: %q", out)
	}
	// A configured origin names the log and its key.
	te.writeConfig(t, "database = \"signing.sqlite3\"\nservice_keys = [\"service-key\"]\naudit_origin = \"signing.example.org/debusine\"\n")
	if key := te.mustRun(t, "audit", "key"); !strings.HasPrefix(key, "signing.example.org/debusine+") {
		t.Errorf("audit key %q", key)
	}
	if cp := te.mustRun(t, "audit", "checkpoint"); !strings.HasPrefix(cp, "signing.example.org/debusine\n2\n") || !strings.Contains(cp, "\n— signing.example.org/debusine ") {
		t.Errorf("checkpoint %q", cp)
	}
	for _, bad := range []string{"two words", "a+b", legacyKeyName} {
		os.WriteFile(te.configPath, []byte(fmt.Sprintf("audit_origin = %q\n", bad)), 0o644)
		if status, _, stderr := te.run(t, "audit", "key"); status == 0 || !strings.Contains(stderr, "audit origin") {
			t.Errorf("origin %q: exit %d %q", bad, status, stderr)
		}
	}
}

// TestAuditTreeIndependent: the tree's root, inclusion and consistency
// proofs verify with a second implementation of RFC 6962's checks,
// github.com/transparency-dev/merkle v0.0.2, built from testdata/merkle in
// a module of its own (never a dependency of the program); and tiles made
// from the stored hashes, read back through tlog.TileHashReader, give the
// same root and proofs.
func TestAuditTreeIndependent(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a verifier with the module proxy")
	}
	engines(t, func(t *testing.T, te *testEnv) {
		st := te.store(t)
		appendTestRows(t, st, 37)
		tree, err := st.treeHead(st.db)
		if err != nil {
			t.Fatal(err)
		}
		reader := treeHashReader(st.db)
		rows := auditRows(t, st, AuditFilter{})
		var in merkleCheckInput
		in.Size, in.Root = tree.N, tree.Hash[:]
		for _, n := range []int64{0, 1, 17, 31, 36} {
			p, err := tlog.ProveRecord(tree.N, n, reader)
			if err != nil {
				t.Fatal(err)
			}
			in.Inclusion = append(in.Inclusion, merkleInclusion{Index: n, Leaf: rows[n].leafData(), Proof: hashBytes(p)})
		}
		for _, old := range []int64{1, 2, 5, 16, 32, 36, 37} {
			p, err := tlog.ProveTree(tree.N, old, reader)
			if err != nil {
				t.Fatal(err)
			}
			h, err := tlog.TreeHash(old, reader)
			if err != nil {
				t.Fatal(err)
			}
			in.Consistency = append(in.Consistency, merkleConsistency{Size: old, Root: h[:], Proof: hashBytes(p)})
		}
		out := runMerkleCheck(t, in)
		if want := fmt.Sprintf("ok: root of %d leaves, %d inclusion proofs, %d consistency proofs", tree.N, len(in.Inclusion), len(in.Consistency)); out != want {
			t.Errorf("independent check: %q, want %q", out, want)
		}
		// The check fails on a proof changed by one bit.
		in.Inclusion[2].Proof[1][0] ^= 1
		if out := runMerkleCheck(t, in); !strings.Contains(out, "inclusion of leaf 17") {
			t.Errorf("changed proof: %q", out)
		}

		// Tiles of height 2, as a server would make them.
		tiles := map[string][]byte{}
		for _, tile := range tlog.NewTiles(2, 0, tree.N) {
			data, err := tlog.ReadTileData(tile, reader)
			if err != nil {
				t.Fatal(err)
			}
			tiles[tile.Path()] = data
		}
		thr := tlog.TileHashReader(tree, mapTileReader(tiles))
		root, err := tlog.TreeHash(tree.N, thr)
		if err != nil || root != tree.Hash {
			t.Errorf("root from tiles %v %v, want %v", root, err, tree.Hash)
		}
		p, err := tlog.ProveRecord(tree.N, 17, thr)
		if err != nil {
			t.Fatal(err)
		}
		if err := tlog.CheckRecord(p, tree.N, tree.Hash, 17, tlog.RecordHash(rows[17].leafData())); err != nil {
			t.Errorf("proof from tiles: %v", err)
		}
	})
}

type merkleInclusion struct {
	Index int64
	Leaf  []byte
	Proof [][]byte
}

type merkleConsistency struct {
	Size  int64
	Root  []byte
	Proof [][]byte
}

// merkleCheckInput is what testdata/merkle reads on its standard input.
type merkleCheckInput struct {
	Size        int64
	Root        []byte
	Inclusion   []merkleInclusion
	Consistency []merkleConsistency
}

func hashBytes(hs []tlog.Hash) [][]byte {
	out := make([][]byte, len(hs))
	for i, h := range hs {
		out[i] = bytes.Clone(h[:])
	}
	return out
}

// runMerkleCheck runs testdata/merkle, copied to a temporary module
// directory, on in, and returns what it says.
func runMerkleCheck(t *testing.T, in merkleCheckInput) string {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go is not installed")
	}
	dir := t.TempDir()
	for _, name := range []string{"main.go", "go.mod", "go.sum"} {
		if err := os.WriteFile(filepath.Join(dir, name), mustRead(t, filepath.Join("testdata", "merkle", name)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	data, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "run", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod")
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.CombinedOutput()
	if err != nil && !bytes.Contains(out, []byte("FAIL")) {
		t.Fatalf("go run testdata/merkle: %v\n%s", err, out)
	}
	return strings.TrimSpace(string(out))
}

// mapTileReader serves tiles from memory, as a tile server would.
type mapTileReader map[string][]byte

func (m mapTileReader) Height() int { return 2 }

func (m mapTileReader) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, tile := range tiles {
		data, ok := m[tile.Path()]
		if !ok {
			return nil, fmt.Errorf("no tile %s", tile.Path())
		}
		out[i] = data
	}
	return out, nil
}

func (m mapTileReader) SaveTiles([]tlog.Tile, [][]byte) {}

// FuzzLeafData: parseLeafData accepts exactly what leafData writes.
func FuzzLeafData(f *testing.F) {
	wr := int64(12)
	for _, r := range []AuditRow{
		{ID: 1, Event: "sign", Purpose: "uefi", Fingerprint: "AB", Data: []byte(`{"data_sha256":"00"}`), CreatedAt: "2026-01-01T00:00:00.000000Z", PrevHash: genesisHash},
		{ID: 42, Event: "generate", Purpose: "openpgp", Fingerprint: "CD", Data: []byte(`{}`), CreatedAt: "x", WorkRequest: &wr, PrevHash: genesisHash, ProgramVersion: "v1"},
	} {
		f.Add(r.leafData())
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := parseLeafData(data)
		if err != nil {
			return
		}
		if !bytes.Equal(r.leafData(), data) {
			t.Fatalf("leaf %x parses to a row encoding as %x", data, r.leafData())
		}
	})
}

// FuzzReceipt: verifyReceipt never accepts a receipt whose leaf, proof or
// checkpoint was changed, and never panics.
func FuzzReceipt(f *testing.F) {
	te := newTestEnv(f)
	st := te.store(f)
	appendTestRows(f, st, 5)
	rc, err := st.Prove(3, nil)
	if err != nil {
		f.Fatal(err)
	}
	vkey, err := st.CheckpointVerifierKey()
	if err != nil {
		f.Fatal(err)
	}
	verifiers, err := checkpointVerifiers(vkey, nil)
	if err != nil {
		f.Fatal(err)
	}
	good, _, err := verifyReceipt(rc, verifiers)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(rc)
	f.Fuzz(func(t *testing.T, data []byte) {
		r, _, err := verifyReceipt(data, verifiers)
		if err == nil && !bytes.Equal(r.leafData(), good.leafData()) {
			t.Fatalf("a receipt for a row the log does not hold verifies: %+v", r)
		}
	})
}

// BenchmarkAuditProof1M: an inclusion proof, and the root it is checked
// against, read from a store whose tree has a million leaves. The tree's
// hashes are put in audit_tree directly (the rows themselves play no part
// in a proof); each op proves a different leaf and checks the proof.
func BenchmarkAuditProof1M(b *testing.B) {
	benchmarkAuditProof1M(b, newTestEnv(b))
}

// BenchmarkAuditProof1MPostgres is BenchmarkAuditProof1M on PostgreSQL.
func BenchmarkAuditProof1MPostgres(b *testing.B) {
	benchmarkAuditProof1M(b, newPostgresTestEnv(b))
}

func benchmarkAuditProof1M(b *testing.B, te *testEnv) {
	const n = 1 << 20
	st := te.store(b)
	var tree memoryTree
	for i := int64(0); i < n; i++ {
		hashes, err := tlog.StoredHashes(i, []byte(fmt.Sprint(i)), &tree)
		if err != nil {
			b.Fatal(err)
		}
		tree = append(tree, hashes...)
	}
	tx, err := st.begin()
	if err != nil {
		b.Fatal(err)
	}
	if err := insertTreeHashes(tx, 0, tree); err != nil {
		b.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	want, err := tlog.TreeHash(n, &tree)
	if err != nil {
		b.Fatal(err)
	}
	reader := treeHashReader(st.db)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		leaf := int64(i*7919) % n
		root, err := tlog.TreeHash(n, reader)
		if err != nil || root != want {
			b.Fatalf("root %v %v", root, err)
		}
		p, err := tlog.ProveRecord(n, leaf, reader)
		if err != nil {
			b.Fatal(err)
		}
		if err := tlog.CheckRecord(p, n, root, leaf, tlog.RecordHash([]byte(fmt.Sprint(leaf)))); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/proof")
}

// FuzzCheckpoint: any text signed by the log's key is parsed without
// panicking, and a checkpoint it accepts has a well-formed head and,
// unless of the first form, the origin it is signed under.
func FuzzCheckpoint(f *testing.F) {
	te := newTestEnv(f)
	st := te.store(f)
	appendTestRows(f, st, 2)
	ak, err := st.auditKey(nil)
	if err != nil {
		f.Fatal(err)
	}
	vkey, _ := ak.verifierKey(legacyKeyName)
	verifiers, err := checkpointVerifiers(vkey, nil)
	if err != nil {
		f.Fatal(err)
	}
	msg, err := st.Checkpoint()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(msg[:bytes.Index(msg, []byte("\n\n"))+1]), ak.defaultOrigin())
	f.Add(legacyOrigin+"\n2\n"+genesisHash+"\n", legacyKeyName)
	f.Fuzz(func(t *testing.T, text, name string) {
		signer, err := ak.noteSigner(name)
		if err != nil {
			return
		}
		signed, err := note.Sign(&note.Note{Text: text}, signer)
		if err != nil {
			return
		}
		cp, _, err := parseCheckpoint(signed, verifiers)
		if err != nil {
			return
		}
		if len(cp.Head) != 64 || cp.Size < 0 || (!cp.Legacy && cp.Origin != name) || (cp.Legacy && name != legacyKeyName) {
			t.Fatalf("%q signed by %q accepted as %+v", text, name, cp)
		}
	})
}

// TestAuditCheckpointOtherTree: a checkpoint signed with the log's key,
// of the right size and chain head, but of another tree (what a second
// log kept under the same key would sign) is refused by the consistency
// proof, on both engines.
func TestAuditCheckpointOtherTree(t *testing.T) {
	engines(t, func(t *testing.T, te *testEnv) {
		st := te.store(t)
		appendTestRows(t, st, 5)
		ak, err := st.auditKey(nil)
		if err != nil {
			t.Fatal(err)
		}
		var head string
		if err := st.db.QueryRow("SELECT hash FROM audit_log WHERE id = 3").Scan(&head); err != nil {
			t.Fatal(err)
		}
		signer, _ := ak.noteSigner(ak.defaultOrigin())
		for _, root := range []tlog.Hash{tlog.RecordHash([]byte("another tree")), {}} {
			msg, err := note.Sign(&note.Note{Text: fmt.Sprintf("%s\n3\n%s\nchain-head %s\n", ak.defaultOrigin(), root, head)}, signer)
			if err != nil {
				t.Fatal(err)
			}
			status, _, stderr := te.run(t, "audit", "verify", "--checkpoint", writeFile(t, t.TempDir(), "cp", msg))
			if status != exitError || !strings.Contains(stderr, "audit log forked: the tree of 5 rows is not consistent with the checkpoint's tree of 3 rows") {
				t.Errorf("exit %d %q", status, stderr)
			}
		}
	})
}

// TestAuditCheckpointCosigned: a checkpoint carrying another signature
// (a witness's) still verifies with the log's key alone, and with the
// witness's verifier among the others it is listed in Cosigners; a
// receipt carries such a checkpoint as given.
func TestAuditCheckpointCosigned(t *testing.T) {
	te := newTestEnv(t)
	st := te.store(t)
	appendTestRows(t, st, 3)
	msg, err := st.Checkpoint()
	if err != nil {
		t.Fatal(err)
	}
	skey, wkey, err := note.GenerateKey(nil, "witness.example.org/w1")
	if err != nil {
		t.Fatal(err)
	}
	wsigner, _ := note.NewSigner(skey)
	wverifier, _ := note.NewVerifier(wkey)
	n, err := note.Open(msg, mustVerifiers(t, st, nil))
	if err != nil {
		t.Fatal(err)
	}
	cosig, err := note.Sign(&note.Note{Text: n.Text}, wsigner)
	if err != nil {
		t.Fatal(err)
	}
	cosigned := append(bytes.Clone(msg), cosig[bytes.Index(cosig, []byte("\n\n"))+2:]...)
	if cp, _, err := parseCheckpoint(cosigned, mustVerifiers(t, st, nil)); err != nil || len(cp.Cosigners) != 0 {
		t.Errorf("log key alone: %+v %v", cp, err)
	}
	if cp, _, err := parseCheckpoint(cosigned, mustVerifiers(t, st, note.VerifierList(wverifier))); err != nil || len(cp.Cosigners) != 1 || cp.Cosigners[0] != "witness.example.org/w1" {
		t.Errorf("with the witness: %+v %v", cp, err)
	}
	rc, err := st.Prove(2, cosigned)
	if err != nil {
		t.Fatal(err)
	}
	var parsed receipt
	if err := json.Unmarshal(rc, &parsed); err != nil || parsed.Checkpoint != string(cosigned) {
		t.Errorf("the receipt's checkpoint %q, want %q (%v)", parsed.Checkpoint, cosigned, err)
	}
}

func mustVerifiers(t *testing.T, st *Store, others note.Verifiers) note.Verifiers {
	t.Helper()
	vkey, err := st.CheckpointVerifierKey()
	if err != nil {
		t.Fatal(err)
	}
	v, err := checkpointVerifiers(vkey, others)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
