package main

import (
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// postgresWorkers returns n test workers of srv, each with its own token and
// its own connection to one shared PostgreSQL store, all with the same
// service key, as several signing hosts of one deployment.
func postgresWorkers(t *testing.T, srv *fakeServer, n int) ([]*worker, string) {
	t.Helper()
	conninfo := testPostgres(t).newDatabase(t)
	serviceKey := filepath.Join(t.TempDir(), "service-key")
	if err := generateServiceKey(serviceKey); err != nil {
		t.Fatal(err)
	}
	var ws []*worker
	for i := 0; i < n; i++ {
		w, _ := testWorker(t, srv)
		st, err := openStore(conninfo, "", []string{serviceKey})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		w.st = st
		registered(t, srv, w)
		ws = append(ws, w)
	}
	return ws, conninfo
}

// signShim queues a sign work request of shimx64.efi with key fpr.
func signShim(t *testing.T, srv *fakeServer, fpr string) int64 {
	t.Helper()
	files := efiInputs(t)
	in := srv.addArtifact("debusine:signing-input", map[string]any{"binary_package_name": "shim-signed"}, map[string][]byte{"shimx64.efi": files["shimx64.efi"]})
	return srv.addWorkRequest("sign", map[string]any{"purpose": "uefi", "unsigned": "x", "key": fpr},
		map[string]any{"unsigned_ids": []int64{in}, "unsigned_binary_package_names": []string{"shim-signed"}})
}

// TestWorkersShareOnePostgresStore: a key generated through one worker
// signs through another, as Debusine 0.12's scheduler, which ignores
// signing:keys, may send the sign task to any worker.
func TestWorkersShareOnePostgresStore(t *testing.T) {
	needTool(t, "sbverify")
	srv := newFakeServer(t)
	ws, _ := postgresWorkers(t, srv, 2)
	a, b := ws[0], ws[1]
	gen := srv.addWorkRequest("generatekey", map[string]any{"purpose": "uefi", "description": "Shared key"}, map[string]any{})
	runOnce(t, a)
	if c := srv.waitCompleted(t, gen); c.Result != "success" {
		t.Fatalf("generatekey on worker A: %s", c.Result)
	}
	keys, err := b.st.Keys()
	if err != nil || len(keys) != 1 {
		t.Fatalf("worker B sees keys %v %v", keys, err)
	}
	k := servedKey(t, srv, b, "uefi", keys[0].Fingerprint)
	// A key on a YubiKey that is not plugged into this host is shared too,
	// but no worker without the token offers it.
	_, certPEM := testCertificate(t, "token key")
	if _, err := registerPKCS11Key(a.st, "pkcs11:serial=99999999;id=%02", certPEM, "on a YubiKey elsewhere"); err != nil {
		t.Fatal(err)
	}
	for _, w := range ws {
		md, err := w.metadata()
		if err != nil {
			t.Fatal(err)
		}
		if got := md["signing:keys"]; !slices.Equal(got.([]string), []string{"uefi:" + k.Fingerprint}) {
			t.Errorf("signing:keys = %v", got)
		}
	}

	id := signShim(t, srv, k.Fingerprint)
	runOnce(t, b)
	if c := srv.waitCompleted(t, id); c.Result != "success" {
		t.Fatalf("sign on worker B: %s: %s", c.Result, srv.debugLog(t, id, "execution.log"))
	}
	outs := srv.artifactsOf(id, "debusine:signing-output")
	if len(outs) != 1 || outs[0].Files["shimx64.efi.sig"] == nil {
		t.Fatalf("signing outputs %v", outs)
	}
	dir := t.TempDir()
	sig := writeFile(t, dir, "shimx64.efi.sig", outs[0].Files["shimx64.efi.sig"].content)
	cert := writeFile(t, dir, "cert.pem", k.PublicKey)
	if out, ok := sbverify(t, cert, "/usr/lib/shim/shimx64.efi", sig); !ok {
		t.Errorf("sbverify: %s", out)
	}
	// One chain: A's generate, the registration, B's signature.
	rows := auditRows(t, a.st, AuditFilter{})
	if len(rows) != 3 || rows[0].Event != "generate" || *rows[0].WorkRequest != gen || rows[2].Event != "sign" || *rows[2].WorkRequest != id {
		t.Errorf("audit rows %+v", rows)
	}
	if _, err := a.st.VerifyAudit(); err != nil {
		t.Error(err)
	}
}

// TestWorkersSignAtOncePostgres: two workers signing at the same time
// append to one chain without losing a row.
func TestWorkersSignAtOncePostgres(t *testing.T) {
	srv := newFakeServer(t)
	ws, _ := postgresWorkers(t, srv, 2)
	fpr, err := generateOpenPGPKey(ws[0].st, "Archive", nil)
	if err != nil {
		t.Fatal(err)
	}
	srv.addSigningKeyAsset("openpgp", fpr)
	const perWorker = 3
	var ids []int64
	for i := 0; i < 2*perWorker; i++ {
		in := srv.addArtifact("debusine:signing-input", map[string]any{"binary_package_name": "pkg"},
			map[string][]byte{"a.txt": []byte("one\n"), "b.txt": []byte("two\n")})
		ids = append(ids, srv.addWorkRequest("sign", map[string]any{"purpose": "openpgp", "unsigned": "x", "key": fpr},
			map[string]any{"unsigned_ids": []int64{in}}))
	}
	var wg sync.WaitGroup
	for _, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runOnce(t, w)
		}()
	}
	wg.Wait()
	for _, id := range ids {
		if c := srv.waitCompleted(t, id); c.Result != "success" {
			t.Errorf("work request %d: %s", id, c.Result)
		}
	}
	v, err := ws[1].st.VerifyAudit()
	if err != nil || v.Rows != 1+2*2*perWorker {
		t.Errorf("%+v %v, want %d rows", v, err, 1+2*2*perWorker)
	}
}

// TestWorkerPostgresRestartMidTask: PostgreSQL stops while a sign task is
// running (after the inputs are fetched, before the signature's audit row
// is written). The task fails cleanly: no signature uploaded, no audit
// row, no key half-stored. Once the server is back, the same worker takes
// the next task on new connections and signs.
func TestWorkerPostgresRestartMidTask(t *testing.T) {
	c := testPostgres(t)
	if c.data == "" {
		t.Skip("stopping PostgreSQL needs the tests' own cluster (DEBUSINE_SIGNING_TEST_POSTGRES is set)")
	}
	srv := newFakeServer(t)
	ws, _ := postgresWorkers(t, srv, 1)
	w := ws[0]
	fpr, err := generateUEFIKey(w.st, "Restart", nil)
	if err != nil {
		t.Fatal(err)
	}
	servedKey(t, srv, w, "uefi", fpr)
	var once sync.Once
	stopped := false
	srv.hook = func(rw http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/permission") || strings.Contains(r.URL.Path, "sign_with") {
			once.Do(func() { c.stop(t); stopped = true })
		}
		return false
	}
	t.Cleanup(func() {
		if stopped {
			c.start(t)
		}
	})
	id := signShim(t, srv, fpr)
	runOnce(t, w)
	if !stopped {
		t.Fatal("the task never reached its permission check")
	}
	if c := srv.waitCompleted(t, id); c.Result == "success" {
		t.Fatal("the task succeeded with the database down")
	}
	if outs := srv.artifactsOf(id, "debusine:signing-output"); len(outs) != 0 {
		t.Errorf("signatures uploaded without their audit row: %v", outs)
	}
	c.start(t)
	stopped = false
	srv.hook = nil

	id = signShim(t, srv, fpr)
	runOnce(t, w)
	if c := srv.waitCompleted(t, id); c.Result != "success" {
		t.Fatalf("after the restart: %s", c.Result)
	}
	rows := auditRows(t, w.st, AuditFilter{})
	if len(rows) != 2 || rows[1].Event != "sign" || *rows[1].WorkRequest != id {
		t.Errorf("audit rows %+v", rows)
	}
	if _, err := w.st.VerifyAudit(); err != nil {
		t.Error(err)
	}
}
