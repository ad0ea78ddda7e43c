package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// relayRig is a fake Debusine server, a connected relay host and an
// offline host with its own store and no [worker] table, each with its own
// configuration file, as an operator would set them up.
type relayRig struct {
	t                    *testing.T
	srv                  *fakeServer
	relayDir, offlineDir string
	relayCfg, offlineCfg string
	st                   *Store // the offline store
	uefi, pgp1, pgp2     *Key
	uefiCert             string
	bundlePub, resultPub string
	auditPub             string // the offline store's checkpoint verifier key
	work                 relayWork
}

// relayWork is one of each task the relay carries, with what checking
// their outputs needs.
type relayWork struct {
	sign, debsign, index int64
	efi                  map[string][]byte
	changes              string // the upload's .changes name
	release              []byte
}

func newRelayRig(t *testing.T, workers int) *relayRig {
	t.Helper()
	r := &relayRig{t: t, srv: newFakeServer(t), relayDir: t.TempDir()}
	offline := newTestEnv(t)
	r.offlineDir, r.st = offline.dir, offline.store(t)
	var err error
	fpr, err := generateUEFIKey(r.st, "Relay UEFI test", nil)
	if err != nil {
		t.Fatal(err)
	}
	r.uefi, _ = r.st.Key(purposeUEFI, fpr)
	for _, k := range []**Key{&r.pgp1, &r.pgp2} {
		fpr, err := generateOpenPGPKey(r.st, "Relay OpenPGP test", nil)
		if err != nil {
			t.Fatal(err)
		}
		*k, _ = r.st.Key(purposeOpenPGP, fpr)
	}
	if r.bundlePub, err = generateNoteKey(filepath.Join(r.relayDir, "bundle.key"), "relay.example.org"); err != nil {
		t.Fatal(err)
	}
	if r.resultPub, err = generateNoteKey(filepath.Join(r.offlineDir, "result.key"), "offline.example.org"); err != nil {
		t.Fatal(err)
	}
	r.uefiCert = writeFile(t, r.relayDir, "uefi.pem", r.uefi.PublicKey)
	writeFile(t, r.relayDir, "pgp1.asc", r.pgp1.PublicKey)
	writeFile(t, r.relayDir, "pgp2.asc", r.pgp2.PublicKey)
	r.srv.caFile(r.relayDir)
	if r.auditPub, err = r.st.CheckpointVerifierKey(); err != nil {
		t.Fatal(err)
	}
	r.writeConfigs(workers)
	for slot := 1; slot <= workers; slot++ {
		tokenFile := filepath.Join(r.relayDir, "token")
		if slot > 1 {
			tokenFile = filepath.Join(r.relayDir, "state", fmt.Sprintf("worker-%d", slot), "token")
			os.MkdirAll(filepath.Dir(tokenFile), 0o700)
		}
		tok, _ := newSecret()
		writeFile(t, filepath.Dir(tokenFile), filepath.Base(tokenFile), []byte(tok+"\n"))
		os.Chmod(tokenFile, 0o600)
		r.srv.addWorker(tok, true)
	}
	for _, k := range []*Key{r.uefi, r.pgp1, r.pgp2} {
		r.srv.addSigningKeyAsset(k.Purpose, k.Fingerprint)
	}
	return r
}

func (r *relayRig) writeConfigs(workers int) {
	r.relayCfg = writeFile(r.t, r.relayDir, "relay.toml", []byte(fmt.Sprintf(`[worker]
api_url = %q
ca_file = "ca.pem"
token_file = "token"
fqdn = "relay.example.org"
[relay]
state_dir = "state"
bundle_key_file = "bundle.key"
result_public_key = %q
audit_public_key = %q
workers = %d
[[relay.keys]]
purpose = "uefi"
fingerprint = %q
public_key_file = "uefi.pem"
[[relay.keys]]
purpose = "openpgp"
fingerprint = %q
public_key_file = "pgp1.asc"
[[relay.keys]]
purpose = "openpgp"
fingerprint = %q
public_key_file = "pgp2.asc"
`, r.srv.apiURL(), r.resultPub, r.auditPub, workers, r.uefi.Fingerprint, r.pgp1.Fingerprint, r.pgp2.Fingerprint)))
	r.offlineCfg = writeFile(r.t, r.offlineDir, "offline.toml", []byte(fmt.Sprintf(`database = "signing.sqlite3"
service_keys = ["service-key"]
[relay]
state_dir = "relay-state"
bundle_public_key = %q
result_key_file = "result.key"
`, r.bundlePub)))
}

func (r *relayRig) relay(args ...string) (int, string, string) { return runRelay(r.relayCfg, args...) }

func (r *relayRig) offline(args ...string) (int, string, string) {
	return runRelay(r.offlineCfg, args...)
}

// runRelay runs debusine-signing --config cfg relay args... in process.
func runRelay(cfg string, args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	status := run(append([]string{"--config", cfg, "relay"}, args...), &out, &errOut)
	return status, out.String(), errOut.String()
}

func (r *relayRig) must(status int, stdout, stderr string) string {
	r.t.Helper()
	if status != 0 {
		r.t.Fatalf("exit %d: %s%s", status, stdout, stderr)
	}
	return stdout
}

// refusal is the outcome of a command that should have been refused.
type refusal struct {
	t              *testing.T
	status         int
	stdout, stderr string
}

func (r *relayRig) refused(status int, stdout, stderr string) refusal {
	return refusal{r.t, status, stdout, stderr}
}

// says checks that the command failed with an error saying want.
func (f refusal) says(want string) {
	f.t.Helper()
	if f.status == 0 || !strings.Contains(f.stderr, want) {
		f.t.Fatalf("want a refusal saying %q; exit %d: %s%s", want, f.status, f.stdout, f.stderr)
	}
}

func (r *relayRig) path(name string) string { return filepath.Join(r.relayDir, name) }

// addWork queues a sign of several EFI files, a debsign and a
// signrepositoryindex on srv, for the rig's keys.
func (r *relayRig) addWork(srv *fakeServer) relayWork {
	t := r.t
	w := relayWork{efi: efiInputs(t), release: []byte("Origin: test\nSuite: unstable\n")}
	stub, err := os.ReadFile("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
	if err != nil {
		t.Skipf("linuxx64.efi.stub: %v (install systemd-boot-efi)", err)
	}
	w.efi["linuxx64.efi.stub"] = stub
	const module = "lib/modules/6.1.0-test-amd64/kernel/lib/synthetic.ko"
	w.efi[module] = testModule(7000, 9)
	in1 := srv.addArtifact("debusine:signing-input", map[string]any{"binary_package_name": "shim-signed"},
		map[string][]byte{"shimx64.efi": w.efi["shimx64.efi"]})
	in2 := srv.addArtifact("debusine:signing-input", map[string]any{"binary_package_name": "systemd-boot-efi-amd64-signed"},
		map[string][]byte{"boot/systemd-bootx64.efi": w.efi["boot/systemd-bootx64.efi"], "linuxx64.efi.stub": stub, module: w.efi[module]})
	w.sign = srv.addWorkRequest("sign", map[string]any{"purpose": "uefi", "unsigned": []string{"a", "b"}, "key": r.uefi.Fingerprint},
		map[string]any{"unsigned_ids": []int64{in1, in2}, "unsigned_binary_package_names": []string{"shim-signed", "systemd-boot-efi-amd64-signed"}})

	updir := t.TempDir()
	w.changes = filepath.Base(fakeUpload(t, updir))
	files := map[string][]byte{}
	entries, _ := os.ReadDir(updir)
	for _, e := range entries {
		files[e.Name()], _ = os.ReadFile(filepath.Join(updir, e.Name()))
	}
	up := srv.addArtifact("debian:upload", map[string]any{"type": "dpkg", "changes_fields": map[string]any{}}, files)
	w.debsign = srv.addWorkRequest("debsign", map[string]any{"unsigned": "x", "key": r.pgp1.Fingerprint}, map[string]any{"unsigned_id": up})

	idx := srv.addArtifact("debian:repository-index", map[string]any{"path": "Release"}, map[string][]byte{"Release": w.release})
	w.index = srv.addWorkRequest("signrepositoryindex", map[string]any{"suite_collection": "x", "unsigned": "y", "mode": "detached", "signed_name": "Release.gpg"},
		map[string]any{"signing_keys": []string{r.pgp1.Fingerprint, r.pgp2.Fingerprint}, "unsigned_id": idx})
	return w
}

// roundTrip queues the work and carries it through fetch, sign, complete.
func (r *relayRig) roundTrip() {
	r.t.Helper()
	r.work = r.addWork(r.srv)
	r.must(r.relay("fetch", "--output", r.path("bundle.tar"), "--wait", "2s"))
	r.must(r.offline("sign", r.path("bundle.tar"), "--output", r.path("result.tar")))
	r.must(r.relay("complete", r.path("result.tar")))
}

// checkOutputs verifies what the server received with sbverify, gpgv and
// dscverify.
func (r *relayRig) checkOutputs(srv *fakeServer, w relayWork) {
	t := r.t
	t.Helper()
	for _, id := range []int64{w.sign, w.debsign, w.index} {
		if c := srv.completionsOf(id); len(c) != 1 || c[0].Result != "success" {
			t.Fatalf("work request %d: completions %+v; logs %s", id, c, srv.debugLog(t, id, "execution.log")+srv.debugLog(t, id, "fetch_input.log"))
		}
	}
	dir := t.TempDir()
	signed := 0
	for _, out := range srv.artifactsOf(w.sign, "debusine:signing-output") {
		var data struct {
			Results []signResult `json:"results"`
		}
		json.Unmarshal(out.Data, &data)
		for _, res := range data.Results {
			img, sig := filepath.Join(dir, filepath.Base(res.File)), filepath.Join(dir, filepath.Base(res.File)+".sig")
			os.WriteFile(img, w.efi[res.File], 0o644)
			os.WriteFile(sig, out.Files[*res.OutputFile].content, 0o644)
			if strings.HasSuffix(res.File, kmodSuffix) {
				if !cmsVerify(t, r.uefiCert, sig, img) {
					t.Errorf("openssl cms -verify %s failed", res.File)
				}
			} else if o, err := exec.Command("sbverify", "--cert", r.uefiCert, "--detached", sig, img).CombinedOutput(); err != nil {
				t.Errorf("sbverify %s: %v\n%s", res.File, err, o)
			}
			signed++
		}
	}
	if signed != 4 {
		t.Errorf("%d EFI files and modules signed, want 4", signed)
	}
	up := srv.artifactsOf(w.debsign, "debian:upload")
	if len(up) != 1 {
		t.Fatalf("%d debian:upload outputs", len(up))
	}
	updir := t.TempDir()
	for name, f := range up[0].Files {
		os.WriteFile(filepath.Join(updir, name), f.content, 0o644)
	}
	if out, err := dscverify(t, keyringFile(t, r.pgp1.PublicKey), filepath.Join(updir, w.changes)); err != nil {
		t.Errorf("dscverify: %v\n%s", err, out)
	}
	idx := srv.artifactsOf(w.index, "debian:repository-index")
	if len(idx) != 1 || idx[0].Files["Release.gpg"] == nil {
		t.Fatalf("repository index outputs %+v", idx)
	}
	sig := writeFile(t, dir, "Release.gpg", idx[0].Files["Release.gpg"].content)
	rel := writeFile(t, dir, "Release", w.release)
	fprs, err := gpgv(t, keyringFile(t, r.pgp1.PublicKey, r.pgp2.PublicKey), sig, rel)
	want := []string{r.pgp1.Fingerprint, r.pgp2.Fingerprint}
	slices.Sort(fprs)
	slices.Sort(want)
	if err != nil || !slices.Equal(fprs, want) {
		t.Errorf("gpgv: %v, %v", fprs, err)
	}
}

// serverView is what the server holds of a work request, without what
// differs from run to run (signature bytes, ids, times): its completion,
// and each artifact's category, data, file names and types, relations and
// debug-log names.
func serverView(srv *fakeServer, id int64) string {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	var lines []string
	for _, c := range srv.completions {
		if c.WorkRequest == id {
			var body struct {
				Result     string         `json:"result"`
				OutputData map[string]any `json:"output_data"`
			}
			json.Unmarshal(c.Body, &body)
			lines = append(lines, fmt.Sprintf("completed %s %v", body.Result, slices.Sorted(mapsKeys(body.OutputData))))
		}
	}
	for _, a := range srv.artifacts {
		if a.WorkRequest != id {
			continue
		}
		data := string(a.Data)
		if a.Category == "debian:upload" {
			var d map[string]any
			json.Unmarshal(a.Data, &d)
			fields, _ := d["changes_fields"].(map[string]any)
			data = fmt.Sprint(d["type"], slices.Sorted(mapsKeys(fields)))
		}
		var files []string
		for name, f := range a.Files {
			files = append(files, fmt.Sprintf("%s(%s,%v)", name, *f.ContentType, f.complete))
		}
		slices.Sort(files)
		var rels []string
		for _, rel := range srv.relations {
			if rel.Artifact == a.ID {
				rels = append(rels, rel.Type+" "+srv.artifacts[rel.Target].Category)
			}
		}
		slices.Sort(rels)
		if a.Category == "debusine:work-request-debug-logs" {
			data = ""
		}
		lines = append(lines, fmt.Sprintf("%s %s %v %v", a.Category, data, files, rels))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func mapsKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// TestRelayRoundTrip carries a sign of three EFI files and a kernel module,
// a debsign and a
// signrepositoryindex to a separate offline store and back, checks the
// outputs with sbverify, dscverify and gpgv, and checks that the server
// sees what it sees from the online worker doing the same work.
func TestRelayRoundTrip(t *testing.T) {
	requireTool(t, "sbverify", "openssl")
	r := newRelayRig(t, 3)
	r.roundTrip()
	r.checkOutputs(r.srv, r.work)

	// The upload's unchanged files do not travel back.
	copyArchive(t, r.path("result.tar"), func(name string, b []byte) []byte {
		if strings.HasSuffix(name, ".deb") || strings.HasSuffix(name, ".tar.xz") {
			t.Errorf("the result carries %s back", name)
		}
		return b
	})
	// The offline audit log names each work request and the bundle.
	rows := signAudits(t, r.st)
	if len(rows) != 4+3+2 {
		t.Errorf("%d sign audit rows, want 9", len(rows))
	}
	for _, row := range rows {
		if row.WorkRequest == nil || !strings.Contains(string(row.Data), `"relay_bundle"`) || !strings.Contains(string(row.Data), `"username":"alice"`) {
			t.Errorf("audit row %+v", row)
		}
	}
	kept, _ := filepath.Glob(filepath.Join(r.relayDir, "state", "completed", "*.checkpoint"))
	if len(kept) != 1 {
		t.Errorf("kept checkpoints %v", kept)
	}
	if cp, err := OpenCheckpoint(mustRead(t, filepath.Join(r.relayDir, "state", "newest.checkpoint")), r.auditPub); err != nil || cp.Size != int64(len(auditRows(t, r.st, AuditFilter{}))) {
		t.Errorf("newest checkpoint %+v, %v", cp, err)
	}
	if _, err := r.st.VerifyAudit(); err != nil {
		t.Errorf("offline audit log: %v", err)
	}

	// The same work through the online worker, on a server of its own.
	online := newFakeServer(t)
	online.nextID = 5000
	w, _ := testWorker(t, online)
	registered(t, online, w)
	w.st = r.st
	for _, k := range []*Key{r.uefi, r.pgp1, r.pgp2} {
		online.addSigningKeyAsset(k.Purpose, k.Fingerprint)
	}
	ow := r.addWork(online)
	runOnce(t, w)
	r.checkOutputs(online, ow)
	for _, pair := range [][2]int64{{r.work.sign, ow.sign}, {r.work.debsign, ow.debsign}, {r.work.index, ow.index}} {
		if got, want := serverView(r.srv, pair[0]), serverView(online, pair[1]); got != want {
			t.Errorf("the server sees from the relay:\n%s\nfrom the worker:\n%s", got, want)
		}
	}
}

// TestRelayRefusals: a bundle or result replayed, forged, modified or
// truncated, or asking for a key the offline host does not hold, is refused
// with a clear error, and nothing is signed or completed because of it.
func TestRelayRefusals(t *testing.T) {
	r := newRelayRig(t, 3)
	r.work = r.addWork(r.srv)
	bundle, result := r.path("bundle.tar"), r.path("result.tar")
	r.must(r.relay("fetch", "--output", bundle, "--wait", "2s"))
	data, _ := os.ReadFile(bundle)

	noSignatures := func() {
		t.Helper()
		if rows := signAudits(t, r.st); len(rows) != 0 {
			t.Fatalf("something was signed: %+v", rows)
		}
	}
	// Truncated.
	writeFile(t, r.relayDir, "truncated.tar", data[:len(data)/2])
	r.refused(r.offline("sign", r.path("truncated.tar"), "--output", result)).says("truncated")
	// An input modified after the relay signed the manifest.
	r.refused(r.offline("sign", rewriteMember(t, bundle, "wr-", func(b []byte) []byte { b[len(b)/2] ^= 1; return b }), "--output", result)).says("was modified")
	// Signed by another relay's key.
	other := filepath.Join(t.TempDir(), "other.key")
	generateNoteKey(other, "relay.example.org")
	r.refused(r.offline("sign", resign(t, bundle, other, nil), "--output", result)).says("not signed by relay.example.org")
	noSignatures()

	// A bundle asking for keys an offline host does not hold: here, a
	// host configured alike but with a store of its own.
	elsewhere := newTestEnv(t)
	writeFile(t, elsewhere.dir, "result.key", mustRead(t, filepath.Join(r.offlineDir, "result.key")))
	os.Chmod(filepath.Join(elsewhere.dir, "result.key"), 0o600)
	cfg, _ := os.ReadFile(r.offlineCfg)
	r.refused(runRelay(writeFile(t, elsewhere.dir, "offline.toml", cfg), "sign", bundle, "--output", result)).says("which this host does not hold")
	if _, err := os.Stat(result); err == nil {
		t.Fatal("a result was written")
	}

	// Signed once; the same bundle again is a replay.
	r.must(r.offline("sign", bundle, "--output", result))
	r.refused(r.offline("sign", bundle, "--output", r.path("again.tar"))).says("already signed")

	// A result whose output is signed by another key, re-signed with the
	// offline host's own result key: the relay checks the signature itself.
	forged := resign(t, result, filepath.Join(r.offlineDir, "result.key"), func(name string, b []byte) []byte {
		if strings.HasSuffix(name, ".efi.sig") {
			b[len(b)-5] ^= 1
		}
		return b
	})
	r.refused(r.relay("complete", forged)).says("does not verify")
	// A result cut short on the way.
	res, _ := os.ReadFile(result)
	writeFile(t, r.relayDir, "short.tar", res[:len(res)-2000])
	r.refused(r.relay("complete", r.path("short.tar"))).says("truncated")
	// A result member changed after the offline host signed it.
	r.refused(r.relay("complete", rewriteMember(t, result, "wr-", func(b []byte) []byte { b[0] ^= 1; return b }))).says("was modified")
	// A result whose audit checkpoint is another host's.
	otherCheckpoint, err := newTestEnv(t).store(t).Checkpoint()
	if err != nil {
		t.Fatal(err)
	}
	r.refused(r.relay("complete", resign(t, result, filepath.Join(r.offlineDir, "result.key"), func(name string, b []byte) []byte {
		if name == checkpointName {
			return otherCheckpoint
		}
		return b
	}))).says("offline audit checkpoint")
	// A result signed by someone else.
	r.refused(r.relay("complete", resign(t, result, other, nil))).says("not signed by offline.example.org")
	for _, id := range []int64{r.work.sign, r.work.debsign, r.work.index} {
		if c := r.srv.completionsOf(id); len(c) != 0 || len(r.srv.artifactsOf(id, "debusine:work-request-debug-logs")) != 0 {
			t.Fatalf("work request %d got something from a refused result: %+v", id, c)
		}
	}

	r.must(r.relay("complete", result))
	r.refused(r.relay("complete", result)).says("delivered already")
	for _, id := range []int64{r.work.sign, r.work.debsign, r.work.index} {
		if c := r.srv.completionsOf(id); len(c) != 1 || c[0].Result != "success" {
			t.Errorf("work request %d: completions %+v", id, c)
		}
	}
}

// rewriteMember writes a copy of the archive p with the first member whose
// name starts with prefix changed by edit, keeping the manifest.
func rewriteMember(t *testing.T, p, prefix string, edit func([]byte) []byte) string {
	t.Helper()
	done := false
	return copyArchive(t, p, func(name string, b []byte) []byte {
		if !done && strings.HasPrefix(name, prefix) {
			done = true
			return edit(b)
		}
		return b
	})
}

// resign writes a copy of the archive p with its members changed by edit
// (when not nil) and its manifest rebuilt and signed with the note key in
// keyFile: what a forger holding that key could write.
func resign(t *testing.T, p, keyFile string, edit func(string, []byte) []byte) string {
	t.Helper()
	signer, err := loadNoteSigner(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	members := map[string][]byte{}
	copyArchive(t, p, func(name string, b []byte) []byte {
		if edit != nil && name != manifestName {
			b = edit(name, b)
		}
		members[name] = b
		return b
	})
	i := bytes.LastIndex(members[manifestName], []byte("\n\n"))
	var m map[string]any
	if err := json.Unmarshal(members[manifestName][:i+1], &m); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var files []archiveFile
	for name, b := range members {
		if name != manifestName {
			os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o700)
			writeFile(t, dir, name, b)
		}
	}
	files, _ = describeFiles(dir, "")
	m["files"] = files
	manifest, err := signManifest(m, signer)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "resigned.tar")
	if err := writeArchive(out, manifest, dir, files); err != nil {
		t.Fatal(err)
	}
	return out
}

// copyArchive copies the tar file p through edit, member by member.
func copyArchive(t *testing.T, p string, edit func(string, []byte) []byte) string {
	t.Helper()
	in, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out := filepath.Join(t.TempDir(), filepath.Base(p))
	f, _ := os.Create(out)
	defer f.Close()
	tr, tw := tar.NewReader(in), tar.NewWriter(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		b = edit(hdr.Name, b)
		hdr.Size = int64(len(b))
		tw.WriteHeader(hdr)
		tw.Write(b)
	}
	tw.Close()
	return out
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRelayRestart: each step runs as a new process would, from the state
// directory alone. While a bundle is out, another fetch leaves its work
// requests alone (a get-next would make the server abort them); a complete
// cut short resumes where it stopped, completing nothing twice.
func TestRelayRestart(t *testing.T) {
	requireTool(t, "sbverify")
	r := newRelayRig(t, 3)
	r.work = r.addWork(r.srv)
	r.must(r.relay("fetch", "--output", r.path("bundle.tar"), "--wait", "2s"))
	getNexts := func() int {
		r.srv.mu.Lock()
		defer r.srv.mu.Unlock()
		return len(keep(r.srv.requests, func(s string) bool { return strings.Contains(s, "get-next-for-worker") }))
	}
	before := getNexts()
	status, _, stderr := r.relay("fetch", "--output", r.path("bundle2.tar"), "--wait", "1s")
	if status != 0 || !strings.Contains(stderr, "no work") || getNexts() != before {
		t.Fatalf("a second fetch: exit %d: %s; get-next calls %d -> %d", status, stderr, before, getNexts())
	}
	if _, err := os.Stat(r.path("bundle2.tar")); err == nil {
		t.Error("an empty bundle was written")
	}
	r.srv.mu.Lock()
	for _, wr := range r.srv.workReqs {
		if wr.Status != "running" {
			t.Errorf("work request %d is %s", wr.ID, wr.Status)
		}
	}
	r.srv.mu.Unlock()

	r.must(r.offline("sign", r.path("bundle.tar"), "--output", r.path("result.tar")))
	refusedOnce := false
	r.srv.mu.Lock()
	r.srv.hook = func(w http.ResponseWriter, req *http.Request) bool {
		if !refusedOnce && req.Method == "PUT" && req.URL.Path == fmt.Sprintf("/api/1.0/work-request/%d/completed/", r.work.debsign) {
			refusedOnce = true
			problem(w, 403, "You do not have permission to perform this action.", "")
			return true
		}
		return false
	}
	r.srv.mu.Unlock()
	r.refused(r.relay("complete", r.path("result.tar"))).says("run relay complete again")
	if len(r.srv.completionsOf(r.work.sign)) != 1 || len(r.srv.completionsOf(r.work.debsign)) != 0 || len(r.srv.completionsOf(r.work.index)) != 0 {
		t.Fatal("the first complete did not stop at the refused completion")
	}
	stdout := r.must(r.relay("complete", r.path("result.tar")))
	if !strings.Contains(stdout, fmt.Sprintf("work request %d: already completed", r.work.sign)) {
		t.Errorf("second complete: %s", stdout)
	}
	r.checkOutputs(r.srv, r.work)
	if n := len(r.srv.artifactsOf(r.work.debsign, "debian:upload")); n != 1 {
		t.Errorf("%d debian:upload outputs after the resumed completion", n)
	}
}

// TestRelayFailsAtFetch: a work request the worker would fail before
// signing (here, the server denies sign_with) is failed by relay fetch as
// the worker fails it, and travels no further.
func TestRelayFailsAtFetch(t *testing.T) {
	r := newRelayRig(t, 1)
	r.srv.mu.Lock()
	r.srv.denied[purposeOpenPGP+":"+r.pgp1.Fingerprint] = true
	r.srv.mu.Unlock()
	idx := r.srv.addArtifact("debian:repository-index", map[string]any{"path": "Release"}, map[string][]byte{"Release": []byte("Suite: x\n")})
	id := r.srv.addWorkRequest("signrepositoryindex", map[string]any{"mode": "clear", "signed_name": "InRelease"},
		map[string]any{"signing_keys": []string{r.pgp1.Fingerprint}, "unsigned_id": idx})
	_, _, stderr := r.relay("fetch", "--output", r.path("bundle.tar"), "--wait", "1s")
	if !strings.Contains(stderr, "no work for the offline keys") {
		t.Errorf("fetch: %s", stderr)
	}
	if c := r.srv.completionsOf(id); len(c) != 1 || c[0].Result != "failure" {
		t.Fatalf("completions %+v", c)
	}
	if log := r.srv.debugLog(t, id, "fetch_input.log"); !strings.Contains(log, "no sign_with permission") {
		t.Errorf("fetch_input.log: %q", log)
	}
	if _, err := os.Stat(r.path("bundle.tar")); err == nil {
		t.Error("a bundle was written")
	}
}

// TestRelayFetchKeepsWhatItTook: an identity the server does not accept
// yet (registered, not enabled) fails the fetch, but the work another
// identity took is in the bundle all the same.
func TestRelayFetchKeepsWhatItTook(t *testing.T) {
	r := newRelayRig(t, 1)
	r.writeConfigs(2)
	idx := r.srv.addArtifact("debian:repository-index", map[string]any{"path": "Release"}, map[string][]byte{"Release": []byte("Suite: x\n")})
	r.srv.addWorkRequest("signrepositoryindex", map[string]any{"mode": "clear", "signed_name": "InRelease"},
		map[string]any{"signing_keys": []string{r.pgp1.Fingerprint}, "unsigned_id": idx})
	r.refused(r.relay("fetch", "--output", r.path("bundle.tar"), "--wait", "1s")).says("worker identity 2 (2.relay.example.org)")
	r.must(r.offline("sign", r.path("bundle.tar"), "--output", r.path("result.tar")))
}

// TestRelayAbortedWhileOut: a work request aborted on the server while its
// bundle was out gets nothing at completion, as the worker stops on one;
// the others of the bundle are completed.
func TestRelayAbortedWhileOut(t *testing.T) {
	requireTool(t, "sbverify", "openssl")
	r := newRelayRig(t, 3)
	r.work = r.addWork(r.srv)
	r.must(r.relay("fetch", "--output", r.path("bundle.tar"), "--wait", "2s"))
	r.must(r.offline("sign", r.path("bundle.tar"), "--output", r.path("result.tar")))
	r.srv.mu.Lock()
	for _, wr := range r.srv.workReqs {
		if wr.ID == r.work.debsign {
			wr.Status = "aborted"
		}
	}
	r.srv.mu.Unlock()
	out := r.must(r.relay("complete", r.path("result.tar")))
	if !strings.Contains(out, fmt.Sprintf("work request %d: not completed, nothing uploaded", r.work.debsign)) {
		t.Errorf("complete: %s", out)
	}
	if len(r.srv.completionsOf(r.work.debsign)) != 0 || len(r.srv.artifactsOf(r.work.debsign, "debian:upload")) != 0 {
		t.Error("the aborted work request got outputs or a completion")
	}
	for _, id := range []int64{r.work.sign, r.work.index} {
		if c := r.srv.completionsOf(id); len(c) != 1 || c[0].Result != "success" {
			t.Errorf("work request %d: completions %+v", id, c)
		}
	}
}
