package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/tlog"
)

// TestRelayAuditFork: the relay checks, from the proofs in each result,
// that the offline audit log only grows. Two honest round trips pass; then
// the offline log is restored from a "backup" (cut) and regrown: the
// offline host refuses a bundle carrying the relay's newest checkpoint,
// and when the bundle carries none and the offline host's own record is
// gone (a host that lies), the relay refuses the result.
func TestRelayAuditFork(t *testing.T) {
	requireTool(t, "sbverify", "openssl")
	r := newRelayRig(t, 3)
	r.roundTrip()
	r.roundTrip()
	newest := filepath.Join(r.relayDir, "state", newestCheckpointName)
	cp1, err := OpenCheckpoint(mustRead(t, newest), r.auditPub)
	if err != nil {
		t.Fatal(err)
	}
	offline := &testEnv{cfg: &Config{Database: filepath.Join(r.offlineDir, "signing.sqlite3")}}
	cut := cp1.Size - 3
	tamper(t, offline, fmt.Sprintf("DELETE FROM audit_log WHERE id > %d; DELETE FROM audit_tree WHERE idx >= %d", cut, tlog.StoredHashCount(cut)))
	for i := 0; i < 5; i++ {
		signRow(t, r.st, []byte{byte(i)})
	}
	if _, err := r.st.VerifyAudit(); err != nil {
		t.Fatalf("the regrown offline log does not verify alone: %v", err)
	}
	// An honest offline host refuses the bundle before signing.
	_, err = r.st.relayBases(&bundleManifest{AuditCheckpoint: string(mustRead(t, newest))}, filepath.Join(r.offlineDir, "relay-state"))
	if err == nil || !strings.Contains(err.Error(), "the relay's newest audit checkpoint (in the bundle) is not of this audit log's tree") {
		t.Errorf("offline host: %v", err)
	}
	// A lying one: no checkpoint reaches it, it forgets its own.
	os.Rename(newest, newest+".away")
	os.Remove(filepath.Join(r.offlineDir, "relay-state", lastResultCheckpointName))
	r.work = r.addWork(r.srv)
	r.must(r.relay("fetch", "--output", r.path("bundle.tar"), "--wait", "2s"))
	r.must(r.offline("sign", r.path("bundle.tar"), "--output", r.path("result.tar")))
	os.Rename(newest+".away", newest)
	r.refused(r.relay("complete", r.path("result.tar"))).says(fmt.Sprintf("no consistency proof from the relay's newest checkpoint (%d rows) to the offline audit log", cp1.Size))
}
