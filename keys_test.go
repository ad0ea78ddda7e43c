package main

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testEnv is a configuration file, database and service key in a
// temporary directory.
type testEnv struct {
	dir        string
	configPath string
	cfg        *Config
}

func newTestEnv(t testing.TB) *testEnv {
	t.Helper()
	dir := t.TempDir()
	if err := generateServiceKey(filepath.Join(dir, "service-key")); err != nil {
		t.Fatal(err)
	}
	te := &testEnv{dir: dir, configPath: filepath.Join(dir, "signing.toml")}
	te.writeConfig(t, "database = \"signing.sqlite3\"\nservice_keys = [\"service-key\"]\n")
	return te
}

func (te *testEnv) writeConfig(t testing.TB, text string) {
	t.Helper()
	if err := os.WriteFile(te.configPath, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(te.configPath)
	if err != nil {
		t.Fatal(err)
	}
	te.cfg = cfg
}

// store opens the test database; it is closed when the test ends.
func (te *testEnv) store(t testing.TB) *Store {
	t.Helper()
	st, err := openStore(te.cfg.Database, te.cfg.DatabasePasswordFile, te.cfg.ServiceKeys)
	if err != nil {
		t.Fatal(err)
	}
	st.yubikey = te.cfg.YubiKey
	st.pkcs11 = te.cfg.PKCS11
	t.Cleanup(func() { st.Close() })
	return st
}

// run runs the command line against the test configuration.
func (te *testEnv) run(t testing.TB, args ...string) (status int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	status = run(append([]string{"--config", te.configPath}, args...), &out, &errOut)
	return status, out.String(), errOut.String()
}

// mustRun runs a command that must succeed and returns its stdout.
func (te *testEnv) mustRun(t testing.TB, args ...string) string {
	t.Helper()
	status, stdout, stderr := te.run(t, args...)
	if status != 0 {
		t.Fatalf("%v: exit %d: %s", args, status, stderr)
	}
	return stdout
}

// testCertificate makes an RSA key and a self-signed certificate as PEM.
func testCertificate(t testing.TB, cn string) (keyPEM, certPEM []byte) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	cert := selfSigned(t, key, cn)
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

// selfSigned makes a certificate for priv signed by itself, valid for an
// hour either side of now. It lives in this file, not a YubiKey one, because
// both the PEM helper above and the YubiKey tests use it.
func selfSigned(t testing.TB, priv *rsa.PrivateKey, cn string) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// pemBody returns the bytes of the first PEM block in data; with no block
// it fails the test with the caller's message, which says what data was.
func pemBody(t testing.TB, data []byte, format string, args ...any) []byte {
	t.Helper()
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf(format, args...)
	}
	return block.Bytes
}

func writeFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestGenerateServiceKey(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "k")
	var out, errOut bytes.Buffer
	if status := run([]string{"generate-service-key", p}, &out, &errOut); status != 0 {
		t.Fatalf("exit %d: %s", status, errOut.String())
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Size() != 32 {
		t.Errorf("service key mode %v size %d, want 0600 and 32 bytes", fi.Mode().Perm(), fi.Size())
	}
	before, _ := os.ReadFile(p)
	errOut.Reset()
	if status := run([]string{"generate-service-key", p}, &out, &errOut); status != exitError {
		t.Errorf("overwrite: exit %d, want %d", status, exitError)
	}
	if !strings.Contains(errOut.String(), "already exists") {
		t.Errorf("overwrite error %q does not say the key exists", errOut.String())
	}
	if after, _ := os.ReadFile(p); !bytes.Equal(before, after) {
		t.Error("the existing service key was changed")
	}
	if status := run([]string{"generate-service-key"}, &out, &errOut); status != exitUsage {
		t.Errorf("no argument: exit %d, want %d", status, exitUsage)
	}
}

func TestServiceKeyRefused(t *testing.T) {
	dir := t.TempDir()
	open := writeFile(t, dir, "open", bytes.Repeat([]byte{1}, 32))
	os.Chmod(open, 0o640)
	short := writeFile(t, dir, "short", []byte("tooshort"))
	for _, tc := range []struct{ path, want string }{
		{open, "too open"},
		{short, "want exactly 32 bytes"},
		{filepath.Join(dir, "missing"), "no such file"},
	} {
		_, err := openStore(filepath.Join(dir, "db"), "", []string{tc.path})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("service key %s: error %v, want %q", tc.path, err, tc.want)
		}
	}
}

func TestSealRotationAndReencrypt(t *testing.T) {
	te := newTestEnv(t)
	if err := generateServiceKey(filepath.Join(te.dir, "new-key")); err != nil {
		t.Fatal(err)
	}
	keyPEM, certPEM := testCertificate(t, "rotation")
	fpr := strings.TrimSpace(te.mustRun(t, "import-key", "--purpose", "uefi",
		"--private-key", writeFile(t, te.dir, "k.pem", keyPEM), "--certificate", writeFile(t, te.dir, "c.pem", certPEM),
		"--description", "rotation"))

	// The new key first: it encrypts, the old one still decrypts.
	te.writeConfig(t, "database = \"signing.sqlite3\"\nservice_keys = [\"new-key\", \"service-key\"]\n")
	st := te.store(t)
	k, err := st.Key(purposeUEFI, fpr)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := st.Unseal(k)
	if err != nil {
		t.Fatalf("old service key must still decrypt: %v", err)
	}
	if _, _, err := parseUEFIKeyPair(plain, certPEM); err != nil {
		t.Fatalf("unsealed key does not match: %v", err)
	}
	st.Close()

	out := te.mustRun(t, "reencrypt-keys")
	if !strings.Contains(out, fpr) {
		t.Errorf("reencrypt-keys output %q does not name %s", out, fpr)
	}
	rows := auditRows(t, te.store(t), AuditFilter{Fingerprint: fpr})
	if last := rows[len(rows)-1]; last.Event != "reencrypt" {
		t.Errorf("last audit row is %q, want reencrypt", last.Event)
	}
	// Now only the new key is needed.
	te.writeConfig(t, "database = \"signing.sqlite3\"\nservice_keys = [\"new-key\"]\n")
	k, _ = te.store(t).Key(purposeUEFI, fpr)
	if _, err := te.store(t).Unseal(k); err != nil {
		t.Fatalf("after reencrypt-keys the new key alone must decrypt: %v", err)
	}
	// And the old key alone no longer does, with a clear error.
	// The audit key, unsealed when the store opens, says so first.
	te.writeConfig(t, "database = \"signing.sqlite3\"\nservice_keys = [\"service-key\"]\n")
	_, err = openStore(te.cfg.Database, "", te.cfg.ServiceKeys)
	if err == nil || !strings.Contains(err.Error(), "no configured service key matches") {
		t.Errorf("wrong service key: error %v", err)
	}
	if _, err := (&Store{serviceKeys: st.serviceKeys[1:]}).Unseal(k); err == nil || !strings.Contains(err.Error(), "no configured service key matches") {
		t.Errorf("wrong service key: error %v", err)
	}
	// Running it again moves nothing and audits nothing.
	te.writeConfig(t, "database = \"signing.sqlite3\"\nservice_keys = [\"new-key\"]\n")
	before := len(auditRows(t, te.store(t), AuditFilter{}))
	te.mustRun(t, "reencrypt-keys")
	if after := len(auditRows(t, te.store(t), AuditFilter{})); after != before {
		t.Errorf("second reencrypt-keys added %d audit rows", after-before)
	}
}

// TestPyNaClCompatibility checks the service key file and the sealed box
// against PyNaCl, the implementation Debusine uses.
func TestPyNaClCompatibility(t *testing.T) {
	python := "/usr/bin/python3"
	if exec.Command(python, "-c", "import nacl").Run() != nil {
		t.Skip("python3-nacl is not installed")
	}
	dir := t.TempDir()
	script := `
import sys, base64, json
from nacl.public import PrivateKey, SealedBox
key = PrivateKey.generate()
with open(sys.argv[1], "wb") as f:
    f.write(bytes(key))
sealed = SealedBox(key.public_key).encrypt(b"-----BEGIN PRIVATE KEY-----\nfrom pynacl\n")
print(json.dumps({"storage": "nacl", "public_key": base64.b64encode(bytes(key.public_key)).decode(), "encrypted": base64.b64encode(sealed).decode()}))
`
	keyPath := filepath.Join(dir, "pynacl-key")
	out, err := exec.Command(python, "-c", script, keyPath).Output()
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(keyPath, 0o600)
	st, err := openStore(filepath.Join(dir, "db"), "", []string{keyPath})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	plain, err := st.Unseal(&Key{Purpose: purposeUEFI, Fingerprint: "X", PrivateKey: bytes.TrimSpace(out)})
	if err != nil {
		t.Fatal(err)
	}
	if string(plain) != "-----BEGIN PRIVATE KEY-----\nfrom pynacl\n" {
		t.Errorf("unsealed %q", plain)
	}
	// And the other way: PyNaCl opens what we seal.
	sealed, err := st.Seal([]byte("from go"))
	if err != nil {
		t.Fatal(err)
	}
	open := `
import sys, base64, json
from nacl.public import PrivateKey, SealedBox
key = PrivateKey(open(sys.argv[1], "rb").read())
blob = json.loads(sys.argv[2])
sys.stdout.write(SealedBox(key).decrypt(base64.b64decode(blob["encrypted"])).decode())
`
	got, err := exec.Command(python, "-c", open, keyPath, string(sealed)).Output()
	if err != nil || string(got) != "from go" {
		t.Errorf("PyNaCl could not open our sealed box: %q %v", got, err)
	}
}

func TestImportKeyErrors(t *testing.T) {
	te := newTestEnv(t)
	keyPEM, certPEM := testCertificate(t, "one")
	otherKey, _ := testCertificate(t, "two")
	k := writeFile(t, te.dir, "k.pem", keyPEM)
	c := writeFile(t, te.dir, "c.pem", certPEM)
	fpr := strings.TrimSpace(te.mustRun(t, "import-key", "--purpose", "uefi", "--private-key", k, "--certificate", c, "--description", "one"))
	if len(fpr) != 64 || strings.ToUpper(fpr) != fpr {
		t.Fatalf("fingerprint %q is not 64 uppercase hex digits", fpr)
	}
	rowsBefore := len(auditRows(t, te.store(t), AuditFilter{}))
	for _, tc := range []struct {
		name   string
		args   []string
		status int
		want   string
	}{
		{"duplicate", []string{"--private-key", k, "--certificate", c}, exitError, fpr},
		{"mismatch", []string{"--private-key", writeFile(t, te.dir, "o.pem", otherKey), "--certificate", c}, exitError, "does not match"},
		{"not a key", []string{"--private-key", c, "--certificate", c}, exitError, "private key"},
		{"no certificate", []string{"--private-key", k}, exitUsage, "--certificate"},
		{"missing file", []string{"--private-key", filepath.Join(te.dir, "nope"), "--certificate", c}, exitError, "no such file"},
		{"bad flag", []string{"--bogus"}, exitUsage, "bogus"},
	} {
		status, _, stderr := te.run(t, append([]string{"import-key", "--purpose", "uefi", "--description", "x"}, tc.args...)...)
		if status != tc.status || !strings.Contains(stderr, tc.want) {
			t.Errorf("%s: exit %d %q, want exit %d and %q", tc.name, status, stderr, tc.status, tc.want)
		}
	}
	if n := len(auditRows(t, te.store(t), AuditFilter{})); n != rowsBefore {
		t.Errorf("failed imports added %d audit rows", n-rowsBefore)
	}
	if status, _, _ := te.run(t, "import-key", "--purpose", "pgp", "--private-key", k); status != exitUsage {
		t.Errorf("bad purpose: exit %d", status)
	}
}

func TestKeysAndExport(t *testing.T) {
	te := newTestEnv(t)
	if out := te.mustRun(t, "keys", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("empty store lists %q", out)
	}
	keyPEM, certPEM := testCertificate(t, "listed")
	fpr := strings.TrimSpace(te.mustRun(t, "import-key", "--purpose", "uefi", "--private-key", writeFile(t, te.dir, "k", keyPEM),
		"--certificate", writeFile(t, te.dir, "c", certPEM), "--description", "Listed key"))
	_, tokenCert := testCertificate(t, "token")
	uri := "pkcs11:serial=123;id=%02?pin-source=file:/run/pin"
	tfpr := strings.TrimSpace(te.mustRun(t, "register-pkcs11-static-key", "uefi", uri, writeFile(t, te.dir, "t", tokenCert), "Token key"))
	out := te.mustRun(t, "keys")
	for _, want := range []string{fpr, tfpr, "nacl", "pkcs11-static", "Listed key", "Token key"} {
		if !strings.Contains(out, want) {
			t.Errorf("keys output lacks %q:\n%s", want, out)
		}
	}
	if got := te.mustRun(t, "export-public-key", "--purpose", "uefi", "--key", strings.ToLower(fpr)); got != string(certPEM) {
		t.Errorf("exported public key differs from the certificate:\n%s", got)
	}
	k, err := te.store(t).Key(purposeUEFI, tfpr)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := k.PKCS11URI(); got != uri {
		t.Errorf("stored URI %q, want %q", got, uri)
	}
	if status, _, stderr := te.run(t, "export-public-key", "--purpose", "openpgp", "--key", fpr); status != exitError || !strings.Contains(stderr, "not openpgp") {
		t.Errorf("wrong purpose: exit %d %q", status, stderr)
	}
	if status, _, stderr := te.run(t, "export-public-key", "--purpose", "uefi", "--key", "00FF"); status != exitError || !strings.Contains(stderr, "unknown key") {
		t.Errorf("unknown key: exit %d %q", status, stderr)
	}
	if status, _, _ := te.run(t, "register-pkcs11-static-key", "uefi", "notauri", writeFile(t, te.dir, "t2", tokenCert), "x"); status != exitError {
		t.Errorf("bad URI: exit %d", status)
	}
}

func TestMalformedPrivateKeyJSON(t *testing.T) {
	te := newTestEnv(t)
	st := te.store(t)
	_, certPEM := testCertificate(t, "malformed")
	cert, err := parseCertificatePEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	fpr := certificateFingerprint(cert)
	for _, bad := range []string{
		`{"storage": "nacl"}`,
		`{"storage": "vault", "x": 1}`,
		`{"storage": "pkcs11-static", "pkcs11_uri": "http://x"}`,
		`{"storage": "nacl", "public_key": "AAAA", "encrypted": "AAAA"}`,
	} {
		k := &Key{Purpose: purposeUEFI, Fingerprint: fpr, PrivateKey: []byte(bad), PublicKey: certPEM}
		if _, err := st.Unseal(k); err == nil || !strings.Contains(err.Error(), "malformed private_key JSON") {
			t.Errorf("%s: unseal error %v", bad, err)
		}
		// Even with a valid authentication code, as only the service
		// could write it, the row is refused on use.
		insertTestKeyRow(t, st, k)
		if _, err := st.Key(purposeUEFI, fpr); err == nil || !strings.Contains(err.Error(), "malformed private_key JSON") {
			t.Errorf("%s: key error %v", bad, err)
		}
		status, _, stderr := te.run(t, "keys")
		if status != exitError || !strings.Contains(stderr, "malformed private_key JSON") {
			t.Errorf("keys with a malformed row: exit %d %q", status, stderr)
		}
		if _, err := st.db.Exec("DELETE FROM keys"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.db.Exec("INSERT INTO keys ("+keyColumns+", mac) VALUES ('uefi', 'B', 'not json', x'00', '', ?, ?, 'm')", nowUTC(), nowUTC()); err == nil {
		t.Error("the schema accepted a private_key that is not JSON")
	}
}

// insertTestKeyRow stores k as it is, with a valid authentication code and
// no other check, as only someone holding the audit key could.
func insertTestKeyRow(t testing.TB, st *Store, k *Key) {
	t.Helper()
	tx, err := st.begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	ak, err := st.auditKey(tx)
	if err != nil {
		t.Fatal(err)
	}
	k.created = nowUTC()
	k.updated = k.created
	if err := insertKey(tx, ak, k); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

func TestForeignAndCorruptDatabase(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "sk")
	generateServiceKey(key)
	garbage := bytes.Repeat([]byte("this is not sqlite "), 300)
	corrupt := writeFile(t, dir, "corrupt.db", garbage)
	foreign := filepath.Join(dir, "foreign.db")
	db, err := sql.Open("sqlite", foreign)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("CREATE TABLE keys (x); INSERT INTO keys VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	foreignBefore, _ := os.ReadFile(foreign)
	for _, tc := range []struct{ path, want string }{
		{corrupt, "not a SQLite database"},
		{foreign, "not a debusine-signing database"},
	} {
		_, err := openStore(tc.path, "", []string{key})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path) {
			t.Errorf("%s: error %v, want %q and the path", tc.path, err, tc.want)
		}
	}
	if after, _ := os.ReadFile(corrupt); !bytes.Equal(after, garbage) {
		t.Error("the corrupt file was changed")
	}
	if after, _ := os.ReadFile(foreign); !bytes.Equal(after, foreignBefore) {
		t.Error("the foreign database was changed")
	}
}

func TestSchemaVersion(t *testing.T) {
	te := newTestEnv(t)
	st := te.store(t)
	var version, appID int
	st.db.QueryRow("PRAGMA user_version").Scan(&version)
	st.db.QueryRow("PRAGMA application_id").Scan(&appID)
	if version != len(schemaSections(schemaSQL)) || appID != applicationID {
		t.Fatalf("user_version %d application_id %#x", version, appID)
	}
	if _, err := st.db.Exec(fmt.Sprintf("PRAGMA user_version = %d", version+1)); err != nil {
		t.Fatal(err)
	}
	st.Close()
	_, err := openStore(te.cfg.Database, te.cfg.DatabasePasswordFile, te.cfg.ServiceKeys)
	if err == nil || !strings.Contains(err.Error(), "newer than this program") {
		t.Errorf("newer schema: error %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	te := newTestEnv(t)
	for _, tc := range []struct{ text, want string }{
		{"database = \"x\"\n\n[worker]\napi_url = \"https://x\"\ntoken_fiel = \"t\"\n", `signing.toml:5: unknown key "worker.token_fiel"`},
		{"databse = \"x\"\n", `signing.toml:1: unknown key "databse"`},
		{"database = \n", "signing.toml:1:"},
		{"service_keys = []\n", `"database" is not set`},
	} {
		os.WriteFile(te.configPath, []byte(tc.text), 0o644)
		status, _, stderr := te.run(t, "keys")
		if status != exitError || !strings.Contains(stderr, tc.want) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("config %q: exit %d %q, want exit 3 and one line with %q", tc.text, status, stderr, tc.want)
		}
	}
	var out, errOut bytes.Buffer
	if status := run([]string{"--config", filepath.Join(te.dir, "missing.toml"), "keys"}, &out, &errOut); status != exitError {
		t.Errorf("missing config: exit %d", status)
	}
	t.Setenv("DEBUSINE_SIGNING_CONFIG", filepath.Join(te.dir, "missing.toml"))
	if status := run([]string{"keys"}, &out, &errOut); status != exitError || !strings.Contains(errOut.String(), "missing.toml") {
		t.Errorf("DEBUSINE_SIGNING_CONFIG is not used: exit %d %q", status, errOut.String())
	}
}

func TestDefaultStore(t *testing.T) {
	state := t.TempDir()
	t.Setenv("XDG_STATE_HOME", state)
	t.Setenv("DEBUSINE_SIGNING_CONFIG", "")
	var out, errOut bytes.Buffer
	if status := run([]string{"keys"}, &out, &errOut); status != 0 {
		t.Fatalf("exit %d: %s", status, errOut.String())
	}
	dir := filepath.Join(state, "debusine-signing")
	if !strings.Contains(errOut.String(), dir) || !strings.Contains(errOut.String(), "created service key") {
		t.Errorf("stderr does not say which default store is used: %q", errOut.String())
	}
	fi, err := os.Stat(filepath.Join(dir, "service-key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("default service key: %v %v", fi, err)
	}
	errOut.Reset()
	run([]string{"keys"}, &out, &errOut)
	if strings.Contains(errOut.String(), "created service key") {
		t.Error("the service key was created twice")
	}
}

func TestExitStatuses(t *testing.T) {
	var out, errOut bytes.Buffer
	for _, tc := range []struct {
		args   []string
		status int
	}{
		{[]string{}, exitUsage},
		{[]string{"no-such-command"}, exitUsage},
		{[]string{"help"}, exitOK},
		{[]string{"--bogus"}, exitUsage},
	} {
		if status := run(tc.args, &out, &errOut); status != tc.status {
			t.Errorf("%v: exit %d, want %d", tc.args, status, tc.status)
		}
	}
}

func auditRows(t testing.TB, st *Store, f AuditFilter) []AuditRow {
	t.Helper()
	rows, err := st.AuditRows(f)
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

// FuzzParseProtectedKey feeds the private_key JSON parser, which reads rows
// that may come from another Debusine database or a hand edit.
func FuzzParseProtectedKey(f *testing.F) {
	f.Add([]byte(`{"storage": "nacl", "public_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "encrypted": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="}`))
	f.Add([]byte(`{"storage": "pkcs11-static", "pkcs11_uri": "pkcs11:serial=1;id=%02"}`))
	f.Add([]byte(`{"storage": "nacl"} {}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := parseProtectedKey(data)
		if err != nil {
			return
		}
		switch p.Storage {
		case storageNaCl:
			if len(p.PublicKey) != 32 {
				t.Fatalf("accepted a nacl key with a %d-byte public key", len(p.PublicKey))
			}
		case storagePKCS11:
			if !strings.HasPrefix(p.PKCS11URI, "pkcs11:") {
				t.Fatalf("accepted URI %q", p.PKCS11URI)
			}
		default:
			t.Fatalf("accepted storage %q", p.Storage)
		}
	})
}
