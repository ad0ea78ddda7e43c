package main

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// forkEnv copies te's SQLite store as it is now (VACUUM INTO: a
// consistent copy) into a store of its own with the same service key, so
// the same audit key: a second log under the same key, which can then
// grow apart from the first.
func forkEnv(t *testing.T, te *testEnv, st *Store, extra string) *testEnv {
	t.Helper()
	fe := &testEnv{dir: t.TempDir()}
	fe.configPath = filepath.Join(fe.dir, "signing.toml")
	if _, err := st.db.Exec("VACUUM INTO $1", filepath.Join(fe.dir, "signing.sqlite3")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, fe.dir, "service-key", mustRead(t, filepath.Join(te.dir, "service-key")))
	fe.writeConfig(t, "database = \"signing.sqlite3\"\nservice_keys = [\"service-key\"]\n"+extra)
	return fe
}

// TestAuditMonitor: the monitor follows the served log from its tiles
// and updates its checkpoint; shown a second log under the same key (same
// size and another root, or a larger one that does not extend it), or a
// smaller one, it refuses and keeps its checkpoint.
func TestAuditMonitor(t *testing.T) {
	te := newTestEnv(t)
	s := newServeTest(t, te, 5, "")
	first := mustRead(t, s.cpf)
	kept := writeFile(t, t.TempDir(), "kept", first)
	fork := forkEnv(t, te, s.st, "")
	monitor := func(url string) (int, string, string) {
		return te.run(t, "audit", "monitor", url, "--checkpoint", kept, "--key", s.vkey)
	}
	if status, out, errOut := monitor(s.public.URL); status != 0 || !strings.Contains(out, "size 5 extends the kept size 5") {
		t.Fatalf("unchanged log: %d %s %s", status, out, errOut)
	}
	appendTestRows(t, s.st, 300)
	te.mustRun(t, "audit", "checkpoint", "--output", s.cpf)
	// With a wrong token, the rows cannot be read: nothing is updated.
	wrong := writeFile(t, t.TempDir(), "token", []byte("not-the-token-at-all"))
	if status, _, errOut := te.run(t, "audit", "monitor", s.public.URL, "--checkpoint", kept, "--key", s.vkey, "--token-file", wrong); status == 0 || !strings.Contains(errOut, "401") {
		t.Errorf("wrong token: %d %s", status, errOut)
	}
	// With the token, the monitor lists the rows added, each checked
	// against the tree.
	status, out, errOut := te.run(t, "audit", "monitor", s.public.URL, "--checkpoint", kept, "--key", s.vkey, "--token-file", filepath.Join(te.dir, "serve-token"))
	if status != 0 || !strings.Contains(out, "size 305 extends the kept size 5 (300 rows added)") {
		t.Fatalf("grown log: %d %s %s", status, out, errOut)
	}
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 301 || !strings.HasPrefix(lines[0], "6\t") || !strings.HasPrefix(lines[299], "305\t") {
		t.Errorf("rows listed: %d lines, first %q", len(lines), lines[0])
	}
	if !bytes.Equal(mustRead(t, kept), mustRead(t, s.cpf)) {
		t.Fatal("the kept checkpoint was not replaced by the served one")
	}
	// A server whose entry bundles do not match its tiles: a row changed.
	tampered := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		s.srv.handler(false).ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		if strings.HasPrefix(r.URL.Path, "/tile/entries/") && len(body) > 0 {
			body[len(body)-1] ^= 1
		}
		w.WriteHeader(rec.Code)
		w.Write(body)
	}))
	defer tampered.Close()
	appendTestRows(t, s.st, 1)
	te.mustRun(t, "audit", "checkpoint", "--output", s.cpf)
	before := mustRead(t, kept)
	if status, _, errOut := te.run(t, "audit", "monitor", tampered.URL, "--checkpoint", kept, "--key", s.vkey, "--token-file", filepath.Join(te.dir, "serve-token")); status == 0 || !strings.Contains(errOut, "row 306 is not the tree's leaf 305") {
		t.Errorf("tampered entry bundle: %d %s", status, errOut)
	}
	if !bytes.Equal(before, mustRead(t, kept)) {
		t.Error("the monitor took a checkpoint whose rows do not match")
	}
	if status, _, errOut := monitor(s.public.URL); status != 0 {
		t.Fatalf("grown by one: %s", errOut)
	}

	// The fork grows to the same size with other rows.
	fs := newServeTest(t, fork, 300, "")
	for _, tc := range []struct {
		grow int
		want string
	}{
		{1, "the log forked: two checkpoints of size 306 with different roots"},
		{1, "the log forked: the served checkpoint of size 307 does not extend the kept one of size 306"},
	} {
		appendTestRows(t, fs.st, tc.grow)
		fork.mustRun(t, "audit", "checkpoint", "--output", fs.cpf)
		before := mustRead(t, kept)
		if status, _, errOut := monitor(fs.public.URL); status == 0 || !strings.Contains(errOut, tc.want) || !strings.Contains(errOut, "is unchanged") {
			t.Errorf("fork: %d %s, want %q", status, errOut, tc.want)
		}
		if !bytes.Equal(before, mustRead(t, kept)) {
			t.Error("the monitor replaced its checkpoint with a fork's")
		}
	}
	// The server shows an earlier checkpoint of the log: cut back.
	os.WriteFile(s.cpf, first, 0o600)
	if status, _, errOut := monitor(s.public.URL); status == 0 || !strings.Contains(errOut, "the log shrank: the served checkpoint covers 5 rows, the kept one 306") {
		t.Errorf("cut log: %d %s", status, errOut)
	}
	// Another key's checkpoint is refused before anything else.
	other := newServeTest(t, newTestEnv(t), 1, "")
	if status, _, errOut := monitor(other.public.URL); status == 0 || !strings.Contains(errOut, "the served checkpoint") {
		t.Errorf("another log's checkpoint: %d %s", status, errOut)
	}
}

// TestAuditWitnessEndToEndBothEngines: the log's own checkpoints, from `audit
// checkpoint`, go to litewitness with their consistency proofs and come
// back cosigned; `audit verify` and `audit monitor` take them under
// --witness --quorum 1, on both engines. A second log under the same key
// (a copy of the SQLite store grown apart) is refused by the witness, so
// its checkpoints fail the policy.
func TestAuditWitnessEndToEndBothEngines(t *testing.T) {
	w := startLitewitness(t)
	engines(t, func(t *testing.T, te *testEnv) { testAuditWitnessEndToEnd(t, te, w) })
}

func testAuditWitnessEndToEnd(t *testing.T, te *testEnv, w *testWitness) {
	st := te.store(t)
	vkey := strings.TrimSpace(te.mustRun(t, "audit", "key"))
	origin, _, _ := strings.Cut(vkey, "+")
	w.addLog(t, origin, vkey)
	witnessConfig := fmt.Sprintf("[[witness]]\nurl = %q\nkey = %q\n", w.url, w.vkey)
	appendTestRows(t, st, 2)
	var fork *testEnv
	if !isPostgres(te.cfg.Database) {
		fork = forkEnv(t, te, st, witnessConfig)
	}

	s := newServeTest(t, te, 3, witnessConfig)
	if !strings.Contains(string(mustRead(t, s.cpf)), "— witness.test/w1 ") {
		t.Fatalf("not cosigned:\n%s", mustRead(t, s.cpf))
	}
	policy := []string{"--witness", w.vkey, "--quorum", "1"}
	if out := te.mustRun(t, append([]string{"audit", "verify", "--checkpoint", s.cpf}, policy...)...); !strings.Contains(out, "cosigned by at least 1 of the 1 witnesses") {
		t.Errorf("audit verify: %s", out)
	}
	// The server's receipts carry the cosignatures.
	_, _, rc := get(t, s.public, "receipt/5", s.token)
	if out := te.mustRun(t, append([]string{"audit", "verify-receipt", "--key", vkey, writeFile(t, t.TempDir(), "receipt", rc)}, policy...)...); !strings.Contains(out, "cosigned by at least 1 of the 1 witnesses") {
		t.Errorf("audit verify-receipt: %s", out)
	}
	kept := writeFile(t, t.TempDir(), "kept", mustRead(t, s.cpf))
	// The log grows; the witness checks the proof from 5 and cosigns 9.
	appendTestRows(t, s.st, 4)
	te.mustRun(t, "audit", "checkpoint", "--output", s.cpf)
	monitor := func(url string) (int, string, string) {
		return te.run(t, append([]string{"audit", "monitor", url, "--checkpoint", kept, "--key", vkey}, policy...)...)
	}
	if status, out, errOut := monitor(s.public.URL); status != 0 || !strings.Contains(out, "size 9 extends the kept size 5") {
		t.Fatalf("monitor: %d %s %s", status, out, errOut)
	}

	if fork == nil {
		return
	}
	// The second log, grown apart to 9 rows, is refused by the witness.
	appendTestRows(t, fork.store(t), 7)
	forkCP := filepath.Join(fork.dir, "checkpoint")
	status, _, errOut := fork.run(t, "audit", "checkpoint", "--output", forkCP)
	if status != 0 || !strings.Contains(errOut, "warning: not cosigned") || !strings.Contains(errOut, "422") {
		t.Errorf("fork submitted: %d %s", status, errOut)
	}
	if strings.Contains(string(mustRead(t, forkCP)), "witness.test/w1") {
		t.Fatal("litewitness cosigned the fork")
	}
	status, _, errOut = fork.run(t, append([]string{"audit", "verify", "--checkpoint", forkCP}, policy...)...)
	if status == 0 || !strings.Contains(errOut, "cosigned by 0 of the 1 witnesses") {
		t.Errorf("fork's checkpoint under the policy: %d %s", status, errOut)
	}
	fs := newServeTest(t, fork, 0, witnessConfig)
	if status, _, errOut := monitor(fs.public.URL); status == 0 || !strings.Contains(errOut, "cosigned by 0 of the 1 witnesses") {
		t.Errorf("monitor of the fork: %d %s", status, errOut)
	}
}
