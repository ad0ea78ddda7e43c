package main

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
)

func appendTestRows(t testing.TB, st *Store, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		wr := int64(100 + i)
		if err := st.Audit(AuditEntry{Event: "sign", Purpose: purposeUEFI, Fingerprint: "ABCD",
			Data: map[string]any{"data_sha256": strconv.Itoa(i)}, WorkRequest: &wr}); err != nil {
			t.Fatal(err)
		}
	}
}

func sqlite3(t *testing.T, db, script string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("sqlite3"); err != nil {
		t.Skip("sqlite3 is not installed")
	}
	out, err := exec.Command("sqlite3", db, script).CombinedOutput()
	return string(out), err
}

// TestAuditAppendOnly shows that a hand-run sqlite3 session cannot rewrite
// the audit log: the triggers live in the database, not in this program.
func TestAuditAppendOnly(t *testing.T) {
	te := newTestEnv(t)
	st := te.store(t)
	appendTestRows(t, st, 3)
	st.Close()
	for _, script := range []string{
		"UPDATE audit_log SET data = '{}' WHERE id = 2;",
		"DELETE FROM audit_log WHERE id = 3;",
		"DELETE FROM audit_log;",
	} {
		out, err := sqlite3(t, te.cfg.Database, script)
		if err == nil || !strings.Contains(out, "append-only") {
			t.Errorf("sqlite3 %q: %v %q, want it refused", script, err, out)
		}
	}
	if out := te.mustRun(t, "audit", "verify"); !strings.Contains(out, "3 rows") {
		t.Errorf("audit verify: %q", out)
	}
}

// TestAuditVerifyTampering breaks the chain the ways an attacker with the
// file could, with the triggers dropped, and checks each is named.
func TestAuditVerifyTampering(t *testing.T) {
	for _, tc := range []struct {
		name, script, want string
	}{
		{"edited", "UPDATE audit_log SET data = '{\"data_sha256\":\"evil\"}' WHERE id = 3;", "row 3: its contents do not match"},
		{"deleted", "DELETE FROM audit_log WHERE id = 3;", "row 4"},
		{"first deleted", "DELETE FROM audit_log WHERE id = 1;", "row 2"},
		{"reordered", "UPDATE audit_log SET id = 100 WHERE id = 2; UPDATE audit_log SET id = 2 WHERE id = 3; UPDATE audit_log SET id = 3 WHERE id = 100;", "row 2"},
		{"rehashed", "UPDATE audit_log SET data = '{}', hash = 'x' WHERE id = 4;", "row 4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			te := newTestEnv(t)
			st := te.store(t)
			appendTestRows(t, st, 5)
			st.Close()
			if out, err := sqlite3(t, te.cfg.Database, "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete; "+tc.script); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			status, _, stderr := te.run(t, "audit", "verify")
			if status != exitError || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d %q, want exit 3 naming %q", status, stderr, tc.want)
			}
		})
	}
}

func TestAuditListing(t *testing.T) {
	te := newTestEnv(t)
	st := te.store(t)
	appendTestRows(t, st, 3)
	if err := st.Audit(AuditEntry{Event: "sign", Purpose: purposeOpenPGP, Fingerprint: "EEEE", Data: map[string]any{"data_sha256": "x", "username": "alice"}}); err != nil {
		t.Fatal(err)
	}
	out := te.mustRun(t, "audit", "--json", "--work-request", "101")
	if strings.Count(out, `"id"`) != 1 || !strings.Contains(out, `"created_by_work_request_id": 101`) {
		t.Errorf("--work-request 101:\n%s", out)
	}
	out = te.mustRun(t, "audit", "--key", "eeee")
	if strings.Count(out, "\n") != 2 || !strings.Contains(out, "alice") {
		t.Errorf("--key:\n%s", out)
	}
	if status, _, _ := te.run(t, "audit", "--work-request", "x"); status != exitUsage {
		t.Errorf("bad --work-request: exit %d", status)
	}
}

// TestAuditConcurrentProcesses runs two processes appending to one
// database at once, as a cron run beside the systemd worker would: neither
// may fail with "database is locked", and the chain must stay whole.
func TestAuditConcurrentProcesses(t *testing.T) {
	if os.Getenv("AUDIT_CHILD_DB") != "" {
		return
	}
	auditFromTwoProcesses(t, newTestEnv(t), 150)
}

// auditFromTwoProcesses runs TestAuditChild in two processes at once, each
// appending perProcess rows to te's store: no row may be lost, and the
// chain must stay whole.
func auditFromTwoProcesses(t *testing.T, te *testEnv, perProcess int) {
	te.store(t).Close()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(os.Args[0], "-test.run=^TestAuditChild$")
			cmd.Env = append(os.Environ(), "AUDIT_CHILD_DB="+te.cfg.Database, "AUDIT_CHILD_KEY="+te.cfg.ServiceKeys[0], fmt.Sprintf("AUDIT_CHILD_N=%d", perProcess))
			if out, err := cmd.CombinedOutput(); err != nil {
				errs <- fmt.Errorf("%v: %s", err, out)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	v, err := te.store(t).VerifyAudit()
	if err != nil {
		t.Fatal(err)
	}
	if v.Rows != 2*perProcess {
		t.Errorf("%d rows, want %d", v.Rows, 2*perProcess)
	}
}

func TestAuditChild(t *testing.T) {
	db := os.Getenv("AUDIT_CHILD_DB")
	if db == "" {
		t.Skip("run by TestAuditConcurrentProcesses")
	}
	n, _ := strconv.Atoi(os.Getenv("AUDIT_CHILD_N"))
	st, err := openStore(db, "", []string{os.Getenv("AUDIT_CHILD_KEY")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	appendTestRows(t, st, n)
}

func BenchmarkAuditAppend(b *testing.B) {
	benchmarkAuditAppend(b, newTestEnv(b))
}

// benchmarkAuditAppend appends sign rows to te's store, one durable commit
// each.
func benchmarkAuditAppend(b *testing.B, te *testEnv) {
	st := te.store(b)
	e := AuditEntry{Event: "sign", Purpose: purposeUEFI, Fingerprint: "ABCD", Data: map[string]any{"data_sha256": strings.Repeat("ab", 32)}}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := st.Audit(e); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
}
