package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWorkerWritesCheckpoint: after a task the worker replaces
// [worker] checkpoint_file with a checkpoint covering the task's rows.
func TestWorkerWritesCheckpoint(t *testing.T) {
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	w.checkpointFile = filepath.Join(t.TempDir(), "checkpoint")
	signOnePE(t, srv, w)
	note, err := os.ReadFile(w.checkpointFile)
	if err != nil {
		t.Fatal(err)
	}
	v, cp, err := w.st.VerifyCheckpoint(note)
	if err != nil {
		t.Fatal(err)
	}
	rows := auditRows(t, w.st, AuditFilter{})
	if cp.Size != int64(v.Rows) || cp.Size != int64(len(rows)) || rows[len(rows)-1].Event != "sign" {
		t.Errorf("checkpoint covers %d rows, the log has %d (last %s)", cp.Size, v.Rows, rows[len(rows)-1].Event)
	}
}

// signOnePE has w take and complete one UEFI sign work request.
func signOnePE(t *testing.T, srv *fakeServer, w *worker) {
	t.Helper()
	k, _ := uefiSignSetup(t, srv, w)
	in := srv.addArtifact("debusine:signing-input", map[string]any{"binary_package_name": "test-signed"},
		map[string][]byte{"boot.efi": testPE{plus: true, sections: []int{0x400}}.build()})
	id := srv.addWorkRequest("sign", map[string]any{"purpose": "uefi", "unsigned": []string{"a"}, "key": k.Fingerprint},
		map[string]any{"unsigned_ids": []int64{in}, "unsigned_binary_package_names": []string{"test-signed"}})
	runOnce(t, w)
	if c := srv.waitCompleted(t, id); c.Result != "success" {
		t.Fatalf("result %s", c.Result)
	}
}

// TestWorkerCheckpointWitnesses: after a task the worker has the
// checkpoint cosigned by the configured witnesses: litewitness cosigns it,
// and a witness that is down is logged, failing neither the task nor the
// checkpoint.
func TestWorkerCheckpointWitnesses(t *testing.T) {
	lw := startLitewitness(t)
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	w.checkpointFile = filepath.Join(t.TempDir(), "checkpoint")
	vkey, err := w.st.CheckpointVerifierKey()
	if err != nil {
		t.Fatal(err)
	}
	origin, _, _ := strings.Cut(vkey, "+")
	lw.addLog(t, origin, vkey)
	w.st.witnesses = []WitnessConfig{{URL: "http://127.0.0.1:1", Key: lw.vkey}, {URL: lw.url, Key: lw.vkey}}
	signOnePE(t, srv, w)
	policy := witnessPolicy{keys: stringList{lw.vkey}}
	if err := policy.parse(); err != nil {
		t.Fatal(err)
	}
	cp, err := policy.check(mustRead(t, w.checkpointFile), vkey)
	if err != nil {
		t.Fatal(err)
	}
	if rows := auditRows(t, w.st, AuditFilter{}); cp.Size != int64(len(rows)) {
		t.Errorf("checkpoint of %d rows, the log has %d", cp.Size, len(rows))
	}
}
