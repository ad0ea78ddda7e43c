package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// runOnce runs w with --once until the server has no more work.
func runOnce(t testing.TB, w *worker) {
	t.Helper()
	w.once = true
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := w.run(ctx); err != nil {
		t.Fatal(err)
	}
	if ctx.Err() != nil {
		t.Fatal("the worker did not finish")
	}
}

// debugLog returns a file of the work request's debug-log artifact.
func (s *fakeServer) debugLog(t testing.TB, id int64, name string) string {
	t.Helper()
	a := s.artifactsOf(id, "debusine:work-request-debug-logs")
	if len(a) != 1 {
		t.Fatalf("work request %d: %d debug-log artifacts", id, len(a))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := a[0].Files[name]; f != nil {
		return string(f.content)
	}
	return ""
}

// signAudits returns the sign audit rows of every key.
func signAudits(t testing.TB, st *Store) []AuditRow {
	t.Helper()
	return signRows(t, st, "")
}

// generateKeyTask runs one generatekey work request for purpose through a
// worker and returns the worker, the request, the one key it stored and
// the asset it published for that key; the purposes differ only in what
// the key and asset hold.
func generateKeyTask(t *testing.T, purpose, description string) (*worker, int64, *Key, []byte) {
	t.Helper()
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	id := srv.addWorkRequest("generatekey", map[string]any{"purpose": purpose, "description": description}, map[string]any{})
	runOnce(t, w)
	if c := srv.waitCompleted(t, id); c.Result != "success" {
		t.Fatalf("result %s: %s", c.Result, srv.debugLog(t, id, "execution.log"))
	}
	keys, err := w.st.Keys()
	if err != nil || len(keys) != 1 {
		t.Fatalf("keys %v, %v", keys, err)
	}
	k := keys[0]
	srv.mu.Lock()
	raw := srv.assets[purpose+":"+k.Fingerprint]
	srv.mu.Unlock()
	return w, id, k, raw
}

// signAuditData is the part of a sign audit row's data the sign tests check.
type signAuditData struct {
	Username   string            `json:"username"`
	UserID     int64             `json:"user_id"`
	Resource   map[string]string `json:"resource"`
	DataSHA256 string            `json:"data_sha256"`
}

// checkSignAudits checks that st holds n sign audit rows, each for work
// request id by alice (user 5) and each with data that dataOK accepts. A
// row whose data does not decode has zero fields, which the checks reject.
func checkSignAudits(t *testing.T, st *Store, n int, id int64, dataOK func(signAuditData) bool) {
	t.Helper()
	rows := signAudits(t, st)
	if len(rows) != n {
		t.Fatalf("%d sign audit rows, want %d", len(rows), n)
	}
	for _, r := range rows {
		var d signAuditData
		json.Unmarshal(r.Data, &d)
		if r.WorkRequest == nil || *r.WorkRequest != id || d.Username != "alice" || d.UserID != 5 || !dataOK(d) {
			t.Errorf("audit row %s %v", r.Data, r.WorkRequest)
		}
	}
}

func TestWorkerGenerateKeyOpenPGP(t *testing.T) {
	w, id, k, raw := generateKeyTask(t, "openpgp", "Archive key")
	var data struct {
		Purpose, Fingerprint, PublicKey, Description string
	}
	json.Unmarshal(raw, &struct {
		Purpose     *string `json:"purpose"`
		Fingerprint *string `json:"fingerprint"`
		PublicKey   *string `json:"public_key"`
		Description *string `json:"description"`
	}{&data.Purpose, &data.Fingerprint, &data.PublicKey, &data.Description})
	pub, _ := base64.StdEncoding.DecodeString(data.PublicKey)
	if data.Purpose != "openpgp" || data.Fingerprint != k.Fingerprint || string(pub) != string(k.PublicKey) || data.Description != "Archive key" {
		t.Errorf("asset %s does not match the stored key %s", raw, k)
	}
	rows := auditRows(t, w.st, AuditFilter{})
	if len(rows) != 1 || rows[0].Event != "generate" || rows[0].WorkRequest == nil || *rows[0].WorkRequest != id {
		t.Errorf("audit rows %+v", rows)
	}
}

// servedKey publishes w's key purpose/fpr as a signing-key asset, which
// lets alice use it, and returns the key.
func servedKey(t testing.TB, srv *fakeServer, w *worker, purpose, fpr string) *Key {
	t.Helper()
	srv.addSigningKeyAsset(purpose, fpr)
	k, err := w.st.Key(purpose, fpr)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// signSetup makes an OpenPGP key the server lets alice use.
func signSetup(t *testing.T, srv *fakeServer, w *worker) *Key {
	t.Helper()
	fpr, err := generateOpenPGPKey(w.st, "Signing key", nil)
	if err != nil {
		t.Fatal(err)
	}
	return servedKey(t, srv, w, "openpgp", fpr)
}

func TestWorkerSignOpenPGP(t *testing.T) {
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	k := signSetup(t, srv, w)
	files := map[string][]byte{"a.txt": []byte("first\n"), "sub/b.txt": []byte("second\n"), "mod.ko": []byte("module")}
	in := srv.addArtifact("debusine:signing-input", map[string]any{"binary_package_name": "pkg-signed", "trusted_certs": nil}, files)
	id := srv.addWorkRequest("sign", map[string]any{"purpose": "openpgp", "unsigned": "x", "key": k.Fingerprint},
		map[string]any{"unsigned_ids": []int64{in}, "unsigned_binary_package_names": []string{"pkg-signed"}})
	runOnce(t, w)
	if c := srv.waitCompleted(t, id); c.Result != "success" {
		t.Fatalf("result %s", c.Result)
	}
	outs := srv.artifactsOf(id, "debusine:signing-output")
	if len(outs) != 1 {
		t.Fatalf("%d signing outputs", len(outs))
	}
	var data struct {
		Purpose, Fingerprint string
		BinaryPackageName    *string `json:"binary_package_name"`
		Results              []signResult
	}
	json.Unmarshal(outs[0].Data, &data)
	if data.Purpose != "openpgp" || data.Fingerprint != k.Fingerprint || data.BinaryPackageName == nil || *data.BinaryPackageName != "pkg-signed" || len(data.Results) != 3 {
		t.Fatalf("output data %s", outs[0].Data)
	}
	keyring := keyringFile(t, k.PublicKey)
	dir := t.TempDir()
	for _, r := range data.Results {
		if r.File == "mod.ko" {
			if r.OutputFile != nil || r.ErrorMessage == nil || *r.ErrorMessage != "Skipped kernel module (not yet supported)" {
				t.Errorf("result %+v", r)
			}
			continue
		}
		if r.OutputFile == nil || *r.OutputFile != r.File+".sig" || r.ErrorMessage != nil {
			t.Fatalf("result %+v", r)
		}
		f := outs[0].Files[*r.OutputFile]
		if f == nil || !f.complete {
			t.Fatalf("output %s not uploaded", *r.OutputFile)
		}
		p := filepath.Join(dir, strings.ReplaceAll(*r.OutputFile, "/", "_"))
		os.WriteFile(p, f.content, 0o644)
		if fprs, err := gpgv(t, keyring, p); err != nil || len(fprs) != 1 || fprs[0] != k.Fingerprint {
			t.Errorf("gpgv %s: %v %v", *r.OutputFile, fprs, err)
		}
		if !strings.Contains(string(f.content), string(files[r.File])) {
			t.Errorf("%s does not clearsign %s", *r.OutputFile, r.File)
		}
	}
	if rel := srv.relationsFrom(outs[0].ID); !slices.Equal(rel, []fakeRelation{{outs[0].ID, in, "relates-to"}}) {
		t.Errorf("relations %v", rel)
	}
	logs := srv.artifactsOf(id, "debusine:work-request-debug-logs")
	if rel := srv.relationsFrom(logs[0].ID); !slices.Equal(rel, []fakeRelation{{logs[0].ID, in, "relates-to"}}) {
		t.Errorf("debug-log relations %v", rel)
	}
	checkSignAudits(t, w.st, 2, id, func(d signAuditData) bool {
		return d.Resource["package"] == "pkg-signed" && len(d.DataSHA256) == 64
	})
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.permChecks) != 1 || srv.permChecks[0] != (fakePermissionCheck{"openpgp:" + k.Fingerprint, "sign_with", in, id, "System"}) {
		t.Errorf("permission checks %+v", srv.permChecks)
	}
}

// signFails queues a sign work request on in and checks it fails before
// signing anything, with want in the named debug log.
func signFails(t *testing.T, srv *fakeServer, w *worker, fpr string, in int64, logName, want string) {
	t.Helper()
	id := srv.addWorkRequest("sign", map[string]any{"purpose": "openpgp", "unsigned": "x", "key": fpr},
		map[string]any{"unsigned_ids": []int64{in}})
	runOnce(t, w)
	if c := srv.waitCompleted(t, id); c.Result != "failure" {
		t.Fatalf("result %s", c.Result)
	}
	if got := srv.debugLog(t, id, logName); !strings.Contains(got, want) {
		t.Errorf("%s = %q, want %q in it", logName, got, want)
	}
	if outs := srv.artifactsOf(id, "debusine:signing-output"); len(outs) != 0 {
		t.Errorf("signing outputs uploaded: %v", outs)
	}
	if rows := signAudits(t, w.st); len(rows) != 0 {
		t.Errorf("sign audit rows: %+v", rows)
	}
}

func TestWorkerSignPermissionDenied(t *testing.T) {
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	k := signSetup(t, srv, w)
	srv.denied["openpgp:"+k.Fingerprint] = true
	in := srv.addArtifact("debusine:signing-input", map[string]any{}, map[string][]byte{"a.txt": []byte("x")})
	signFails(t, srv, w, k.Fingerprint, in, "fetch_input.log", "user alice may not sign artifact")
}

func TestWorkerSignUnknownKey(t *testing.T) {
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	fpr := strings.Repeat("AB", 20)
	srv.addSigningKeyAsset("openpgp", fpr)
	in := srv.addArtifact("debusine:signing-input", map[string]any{}, map[string][]byte{"a.txt": []byte("x")})
	signFails(t, srv, w, fpr, in, "fetch_input.log", "unknown key")
}

func TestWorkerSignUntrustedCerts(t *testing.T) {
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	k := signSetup(t, srv, w)
	trusted, untrusted := strings.Repeat("a1", 32), strings.Repeat("B2", 32)
	w.trusted[strings.ToUpper(trusted)] = true
	in := srv.addArtifact("debusine:signing-input", map[string]any{"trusted_certs": []string{trusted, untrusted}}, map[string][]byte{"a.txt": []byte("x")})
	signFails(t, srv, w, k.Fingerprint, in, "fetch_input.log", "names certificate "+untrusted+", which is not in this worker's trusted_certs")
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.permChecks) != 0 {
		t.Errorf("permission checked for an untrusted input: %+v", srv.permChecks)
	}
}

func TestWorkerSignRefusesEscapingNames(t *testing.T) {
	for _, name := range []string{"../escape.txt", "/tmp/absolute.txt", "sub/../../escape.txt"} {
		t.Run(name, func(t *testing.T) {
			srv := newFakeServer(t)
			w, _ := testWorker(t, srv)
			registered(t, srv, w)
			k := signSetup(t, srv, w)
			parent := t.TempDir()
			w.workDir = filepath.Join(parent, "work")
			os.Mkdir(w.workDir, 0o700)
			in := srv.addArtifact("debusine:signing-input", map[string]any{}, map[string][]byte{"ok.txt": []byte("ok"), name: []byte("evil")})
			signFails(t, srv, w, k.Fingerprint, in, "fetch_input.log", "refused")
			entries, _ := os.ReadDir(parent)
			if len(entries) != 1 {
				t.Errorf("written outside the work directory: %v", entries)
			}
			if _, err := os.Stat("/tmp/absolute.txt"); err == nil {
				t.Error("/tmp/absolute.txt was written")
			}
		})
	}
}

func TestWorkerSignChecksumMismatch(t *testing.T) {
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	k := signSetup(t, srv, w)
	in := srv.addArtifact("debusine:signing-input", map[string]any{}, map[string][]byte{"a.txt": []byte("original")})
	srv.mu.Lock()
	srv.artifacts[in].Files["a.txt"].content = []byte("tampered")
	srv.mu.Unlock()
	signFails(t, srv, w, k.Fingerprint, in, "fetch_input.log", "a.txt: sha256")
}

func TestWorkerDebsign(t *testing.T) {
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	k := signSetup(t, srv, w)
	updir := t.TempDir()
	changes := fakeUpload(t, updir)
	files := map[string][]byte{}
	entries, _ := os.ReadDir(updir)
	for _, e := range entries {
		files[e.Name()], _ = os.ReadFile(filepath.Join(updir, e.Name()))
	}
	in := srv.addArtifact("debian:upload", map[string]any{"type": "dpkg", "changes_fields": map[string]any{}}, files)
	id := srv.addWorkRequest("debsign", map[string]any{"unsigned": "x", "key": k.Fingerprint}, map[string]any{"unsigned_id": in})
	runOnce(t, w)
	if c := srv.waitCompleted(t, id); c.Result != "success" {
		t.Fatalf("result %s: %s", c.Result, srv.debugLog(t, id, "execution.log")+srv.debugLog(t, id, "fetch_input.log"))
	}
	outs := srv.artifactsOf(id, "debian:upload")
	if len(outs) != 1 {
		t.Fatalf("%d debian:upload outputs", len(outs))
	}
	var data struct {
		Type          string         `json:"type"`
		ChangesFields map[string]any `json:"changes_fields"`
	}
	json.Unmarshal(outs[0].Data, &data)
	if data.Type != "dpkg" || data.ChangesFields["Source"] != "hello" {
		t.Errorf("data %s", outs[0].Data)
	}
	dir := t.TempDir()
	for name, f := range outs[0].Files {
		if !f.complete {
			t.Errorf("%s not uploaded", name)
		}
		os.WriteFile(filepath.Join(dir, name), f.content, 0o644)
	}
	if len(outs[0].Files) != len(files) {
		t.Errorf("output files %d, input %d", len(outs[0].Files), len(files))
	}
	if out, err := dscverify(t, keyringFile(t, k.PublicKey), filepath.Join(dir, filepath.Base(changes))); err != nil {
		t.Errorf("dscverify: %v\n%s", err, out)
	}
	if rows := signAudits(t, w.st); len(rows) != 3 || !strings.Contains(string(rows[0].Data), `"username":"alice"`) {
		t.Errorf("audit rows %+v", rows)
	}
	if rel := srv.relationsFrom(outs[0].ID); !slices.Equal(rel, []fakeRelation{{outs[0].ID, in, "relates-to"}}) {
		t.Errorf("relations %v", rel)
	}
}

func TestWorkerSignRepositoryIndex(t *testing.T) {
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	k1, k2 := signSetup(t, srv, w), signSetup(t, srv, w)
	release := []byte("Origin: test\nSuite: unstable\n")
	in := srv.addArtifact("debian:repository-index", map[string]any{"path": "Release"}, map[string][]byte{"Release": release})
	id := srv.addWorkRequest("signrepositoryindex", map[string]any{"suite_collection": "x", "unsigned": "y", "mode": "detached", "signed_name": "Release.gpg"},
		map[string]any{"signing_keys": []string{k1.Fingerprint, k2.Fingerprint}, "unsigned_id": in})
	runOnce(t, w)
	if c := srv.waitCompleted(t, id); c.Result != "success" {
		t.Fatalf("result %s: %s", c.Result, srv.debugLog(t, id, "fetch_input.log")+srv.debugLog(t, id, "execution.log"))
	}
	outs := srv.artifactsOf(id, "debian:repository-index")
	if len(outs) != 1 || string(outs[0].Data) != `{"path":"Release.gpg"}` || outs[0].Files["Release.gpg"] == nil {
		t.Fatalf("outputs %+v", outs)
	}
	dir := t.TempDir()
	sig := filepath.Join(dir, "Release.gpg")
	os.WriteFile(sig, outs[0].Files["Release.gpg"].content, 0o644)
	data := filepath.Join(dir, "Release")
	os.WriteFile(data, release, 0o644)
	fprs, err := gpgv(t, keyringFile(t, k1.PublicKey, k2.PublicKey), sig, data)
	slices.Sort(fprs)
	want := []string{k1.Fingerprint, k2.Fingerprint}
	slices.Sort(want)
	if err != nil || !slices.Equal(fprs, want) {
		t.Errorf("gpgv: %v, %v", fprs, err)
	}
	if rows := signAudits(t, w.st); len(rows) != 2 {
		t.Errorf("audit rows %+v", rows)
	}
}
