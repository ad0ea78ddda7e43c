package main

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

func requireTool(t *testing.T, names ...string) {
	t.Helper()
	for _, name := range names {
		if _, err := exec.LookPath(name); err != nil {
			t.Skipf("%s is not installed", name)
		}
	}
}

// gpgHome makes a throw-away GNUPGHOME. It lives under /tmp, not t.TempDir,
// because gpg-agent's socket path must stay short.
func gpgHome(t *testing.T) string {
	t.Helper()
	requireTool(t, "gpg", "gpgconf")
	home, err := os.MkdirTemp("/tmp", "gpg")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(home, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		kill := exec.Command("gpgconf", "--kill", "all")
		kill.Env = append(os.Environ(), "GNUPGHOME="+home)
		_ = kill.Run()
		os.RemoveAll(home)
	})
	return home
}

// runGPG runs gpg in home in batch mode and returns its standard output.
func runGPG(t *testing.T, home string, stdin []byte, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("gpg", append([]string{"--homedir", home, "--batch", "--no-tty", "--pinentry-mode", "loopback"}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("gpg %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// keyringFile writes a binary keyring made by gpg --dearmor from armoured
// public keys, the form gpgv, dscverify and apt's Signed-By read.
func keyringFile(t *testing.T, publics ...[]byte) string {
	t.Helper()
	home := gpgHome(t)
	var ring []byte
	for _, pub := range publics {
		ring = append(ring, runGPG(t, home, pub, "--dearmor")...)
	}
	path := filepath.Join(t.TempDir(), "keyring.gpg")
	if err := os.WriteFile(path, ring, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// gpgv verifies a signature file (and, for a detached signature, the data
// file) and returns the primary-key fingerprints of the good signatures.
func gpgv(t *testing.T, keyring string, files ...string) ([]string, error) {
	t.Helper()
	requireTool(t, "gpgv")
	cmd := exec.Command("gpgv", append([]string{"--keyring", keyring, "--status-fd", "1"}, files...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var fprs []string
	for _, line := range strings.Split(string(out), "\n") {
		// [GNUPG:] VALIDSIG <sig-key-fpr> <date> <ts> <expiry> <ver> <res> <pk-algo> <hash-algo> <class> <primary-fpr>
		f := strings.Fields(line)
		if len(f) >= 12 && f[1] == "VALIDSIG" {
			if f[9] != "10" {
				t.Errorf("signature by %s uses hash algorithm %s, want 10 (SHA-512)", f[11], f[9])
			}
			fprs = append(fprs, f[11])
		}
	}
	if err != nil {
		return fprs, &gpgvError{err, stderr.String()}
	}
	return fprs, nil
}

type gpgvError struct {
	err    error
	stderr string
}

func (e *gpgvError) Error() string { return e.err.Error() + ": " + e.stderr }

func newTestEntity(t *testing.T, description string) *openpgp.Entity {
	t.Helper()
	e, err := newOpenPGPEntity(description, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func publicOf(t *testing.T, e *openpgp.Entity) []byte {
	t.Helper()
	pub, err := armoredOpenPGPPublic(e)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func writeTemp(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]int{}
	for _, x := range a {
		seen[x]++
	}
	for _, x := range b {
		seen[x]--
	}
	for _, n := range seen {
		if n != 0 {
			return false
		}
	}
	return true
}

func TestOpenPGPGeneratedKeyImportsIntoGPG(t *testing.T) {
	const description = "Debusine archive key (test) <archive@example.org>"
	e := newTestEntity(t, description)
	fpr := openpgpFingerprint(e)
	if len(fpr) != 40 || strings.ToUpper(fpr) != fpr {
		t.Fatalf("fingerprint %q: want 40 uppercase hex digits", fpr)
	}
	secret, err := armoredOpenPGPSecret(e)
	if err != nil {
		t.Fatal(err)
	}
	home := gpgHome(t)
	runGPG(t, home, secret, "--import")
	listing := string(runGPG(t, home, nil, "--with-colons", "--list-secret-keys", fpr))
	var sawSec, sawUID bool
	for _, line := range strings.Split(listing, "\n") {
		f := strings.Split(line, ":")
		switch f[0] {
		case "sec":
			sawSec = true
			// field 4: algorithm (22 = EdDSA), 7: expiry (empty), 12: capabilities, 17: curve
			if f[3] != "22" || f[16] != "ed25519" {
				t.Errorf("key algorithm %s curve %s, want 22 ed25519", f[3], f[16])
			}
			if f[6] != "" {
				t.Errorf("key expires at %s, want never", f[6])
			}
			if !strings.Contains(f[11], "s") || !strings.Contains(f[11], "S") {
				t.Errorf("key capabilities %q, want signing", f[11])
			}
		case "ssb":
			t.Errorf("generated key has a subkey: %s", line)
		case "uid":
			sawUID = true
			if f[9] != strings.ReplaceAll(description, ":", `\x3a`) {
				t.Errorf("user ID %q, want %q", f[9], description)
			}
		}
	}
	if !sawSec || !sawUID {
		t.Fatalf("gpg does not list the imported secret key:\n%s", listing)
	}
	// The minimal public export imports too and is the same key.
	pubHome := gpgHome(t)
	runGPG(t, pubHome, publicOf(t, e), "--import")
	if out := runGPG(t, pubHome, nil, "--with-colons", "--list-keys", fpr); !strings.Contains(string(out), "fpr:::::::::"+fpr+":") {
		t.Fatalf("public key does not list as %s:\n%s", fpr, out)
	}
}

func TestOpenPGPSignVerifiesWithGPGV(t *testing.T) {
	requireTool(t, "gpgv")
	keys := []*openpgp.Entity{newTestEntity(t, "Key one"), newTestEntity(t, "Key two"), newTestEntity(t, "Key three")}
	var publics [][]byte
	var allFprs []string
	for _, e := range keys {
		publics = append(publics, publicOf(t, e))
		allFprs = append(allFprs, openpgpFingerprint(e))
	}
	keyring := keyringFile(t, publics...)
	data := []byte("Origin: Debusine\nSuite: test\n-----BEGIN dash line that needs escaping\nFrom the start\n")
	for _, n := range []int{1, 3} {
		for _, mode := range []string{openpgpModeDetached, openpgpModeClear} {
			t.Run(mode+"/"+string(rune('0'+n)), func(t *testing.T) {
				dir := t.TempDir()
				dataPath := writeTemp(t, dir, "Release", data)
				sig, err := signOpenPGP(keys[:n], data, mode, time.Now())
				if err != nil {
					t.Fatal(err)
				}
				sigPath := writeTemp(t, dir, "Release.asc", sig)
				args := []string{sigPath}
				if mode == openpgpModeDetached {
					args = append(args, dataPath)
					if !bytes.HasPrefix(sig, []byte("-----BEGIN PGP SIGNATURE-----")) {
						t.Errorf("detached signature is not armoured:\n%s", sig)
					}
				} else if !bytes.HasPrefix(sig, []byte("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n")) {
					t.Errorf("clear signature header:\n%s", sig)
				}
				fprs, err := gpgv(t, keyring, args...)
				if err != nil {
					t.Fatal(err)
				}
				if !sameSet(fprs, allFprs[:n]) {
					t.Fatalf("good signatures from %v, want %v", fprs, allFprs[:n])
				}
				// The same check must fail on altered data.
				if mode == openpgpModeDetached {
					writeTemp(t, dir, "Release", append([]byte("X"), data...))
				} else {
					writeTemp(t, dir, "Release.asc", bytes.Replace(sig, []byte("Suite: test"), []byte("Suite: tesT"), 1))
				}
				if fprs, err := gpgv(t, keyring, args...); err == nil || len(fprs) != 0 {
					t.Fatalf("gpgv accepted altered data (good signatures %v)", fprs)
				}
			})
		}
	}
}

func TestOpenPGPClearSignKeepsText(t *testing.T) {
	requireTool(t, "gpg")
	e := newTestEntity(t, "Text key")
	home := gpgHome(t)
	runGPG(t, home, publicOf(t, e), "--import")
	for _, text := range []string{"a\nb\n", "no final newline", "- dash\n\ntrailing blank\n\n"} {
		sig, err := signOpenPGP([]*openpgp.Entity{e}, []byte(text), openpgpModeClear, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		got := runGPG(t, home, sig, "--decrypt")
		want := strings.TrimSuffix(text, "\n") + "\n"
		if string(got) != want {
			t.Errorf("gpg extracts %q from clear-signed %q, want %q", got, text, want)
		}
	}
}

// gpgSecretKey makes a key with gpg and returns its fingerprint and its
// armoured secret export.
func gpgSecretKey(t *testing.T, home, uid, algo, usage string, subkeys [][2]string, passphrase string) (string, []byte) {
	t.Helper()
	runGPG(t, home, nil, "--passphrase", passphrase, "--quick-gen-key", uid, algo, usage, "never")
	listing := runGPG(t, home, nil, "--with-colons", "--list-secret-keys", uid)
	var fpr string
	for _, line := range strings.Split(string(listing), "\n") {
		if strings.HasPrefix(line, "fpr:") {
			fpr = strings.Split(line, ":")[9]
			break
		}
	}
	for _, sub := range subkeys {
		runGPG(t, home, nil, "--passphrase", passphrase, "--quick-add-key", fpr, sub[0], sub[1], "never")
	}
	return fpr, runGPG(t, home, nil, "--passphrase", passphrase, "--armor", "--export-secret-keys", fpr)
}

func TestOpenPGPImportGPGKeys(t *testing.T) {
	home := gpgHome(t)
	cases := []struct {
		name, uid, algo, usage, passphrase string
		subkeys                            [][2]string
	}{
		{"rsa", "RSA key <rsa@example.org>", "rsa2048", "sign", "", nil},
		{"rsa-subkeys", "RSA subkeys <rsa-sub@example.org>", "rsa2048", "cert", "", [][2]string{{"rsa2048", "encr"}, {"rsa2048", "sign"}}},
		{"ed25519", "Ed key <ed@example.org>", "ed25519", "sign", "", nil},
		{"ed25519-subkeys", "Ed subkeys <ed-sub@example.org>", "ed25519", "sign", "", [][2]string{{"cv25519", "encr"}, {"ed25519", "sign"}}},
		{"ed25519-passphrase", "Ed protected <ed-pass@example.org>", "ed25519", "sign", "sekrit", [][2]string{{"cv25519", "encr"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fpr, secret := gpgSecretKey(t, home, c.uid, c.algo, c.usage, c.subkeys, c.passphrase)
			if c.passphrase != "" {
				_, err := parseOpenPGPSecretKey(secret, nil, time.Now())
				if err == nil || !strings.Contains(err.Error(), "passphrase") {
					t.Fatalf("protected key without passphrase: err = %v, want a passphrase error", err)
				}
				_, err = parseOpenPGPSecretKey(secret, []byte("wrong"), time.Now())
				if err == nil || !strings.Contains(err.Error(), "wrong passphrase") {
					t.Fatalf("protected key with a wrong passphrase: err = %v", err)
				}
			}
			e, err := parseOpenPGPSecretKey(secret, []byte(c.passphrase), time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if got := openpgpFingerprint(e); got != fpr {
				t.Fatalf("fingerprint %s, gpg says %s", got, fpr)
			}
			// What is stored must load again without a passphrase.
			stored, err := armoredOpenPGPSecret(e)
			if err != nil {
				t.Fatal(err)
			}
			if e, err = parseOpenPGPSecretKey(stored, nil, time.Now()); err != nil {
				t.Fatalf("stored key does not load: %v", err)
			}
			data := []byte("signed by an imported key\n")
			dir := t.TempDir()
			dataPath := writeTemp(t, dir, "data", data)
			for _, pub := range [][]byte{runGPG(t, home, nil, "--armor", "--export", fpr), publicOf(t, e)} {
				keyring := keyringFile(t, pub)
				for _, mode := range []string{openpgpModeDetached, openpgpModeClear} {
					sig, err := signOpenPGP([]*openpgp.Entity{e}, data, mode, time.Now())
					if err != nil {
						t.Fatal(err)
					}
					args := []string{writeTemp(t, dir, "data.asc", sig)}
					if mode == openpgpModeDetached {
						args = append(args, dataPath)
					}
					fprs, err := gpgv(t, keyring, args...)
					if err != nil || !sameSet(fprs, []string{fpr}) {
						t.Fatalf("%s signature: good signatures %v, err %v", mode, fprs, err)
					}
				}
			}
		})
	}
}

// reSelfSign replaces the key's self-signature, for making keys gpg would
// call expired.
func reSelfSign(t *testing.T, e *openpgp.Entity, edit func(*packet.Signature)) {
	t.Helper()
	for _, id := range e.Identities {
		sig := *id.SelfSignature
		edit(&sig)
		if err := sig.SignUserId(id.UserId.Id, e.PrimaryKey, e.PrivateKey, &packet.Config{DefaultHash: crypto.SHA512}); err != nil {
			t.Fatal(err)
		}
		id.SelfSignature = &sig
		id.Signatures = []*packet.Signature{&sig}
	}
}

func TestOpenPGPRefusedKeys(t *testing.T) {
	now := time.Now()
	good := newTestEntity(t, "Good key")
	goodSecret, err := armoredOpenPGPSecret(good)
	if err != nil {
		t.Fatal(err)
	}

	expired, err := newOpenPGPEntity("Expired key", now.Add(-48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	reSelfSign(t, expired, func(s *packet.Signature) {
		day := uint32(24 * 3600)
		s.KeyLifetimeSecs = &day
	})
	expiredSecret, err := armoredOpenPGPSecret(expired)
	if err != nil {
		t.Fatal(err)
	}

	revoked := newTestEntity(t, "Revoked key")
	if err := revoked.RevokeKey(packet.KeyRetired, "replaced by a new archive key", nil); err != nil {
		t.Fatal(err)
	}
	revokedSecret, err := armoredOpenPGPSecret(revoked)
	if err != nil {
		t.Fatal(err)
	}

	noSign := newTestEntity(t, "Certify only")
	reSelfSign(t, noSign, func(s *packet.Signature) { s.FlagSign = false })
	noSignSecret, err := armoredOpenPGPSecret(noSign)
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name   string
		input  []byte
		reason string
	}{
		{"not armour", []byte("this is not a key"), "malformed OpenPGP secret key"},
		{"truncated armour", goodSecret[:len(goodSecret)/2], "malformed OpenPGP secret key"},
		{"public key", publicOf(t, good), "want \"PGP PRIVATE KEY BLOCK\""},
		{"expired", expiredSecret, "expired on"},
		{"revoked", revokedSecret, "revoked (key is no longer used: replaced by a new archive key)"},
		{"no signing capability", noSignSecret, "signing capability"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseOpenPGPSecretKey(c.input, nil, now)
			if err == nil || !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("err = %v, want one containing %q", err, c.reason)
			}
		})
	}
	// A key that goes bad after it was stored is refused when signing.
	if _, err := signOpenPGP([]*openpgp.Entity{good, revoked}, []byte("x"), openpgpModeClear, now); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("signing with a revoked key: err = %v", err)
	}
	if _, err := signOpenPGP([]*openpgp.Entity{good}, []byte("x"), "attached", now); err == nil {
		t.Fatal("unknown mode accepted")
	}
}

func TestOpenPGPGPGMadeNoSignKeyRefused(t *testing.T) {
	home := gpgHome(t)
	_, secret := gpgSecretKey(t, home, "Encrypt only <enc@example.org>", "ed25519", "cert", [][2]string{{"cv25519", "encr"}}, "")
	if _, err := parseOpenPGPSecretKey(secret, nil, time.Now()); err == nil || !strings.Contains(err.Error(), "signing capability") {
		t.Fatalf("err = %v, want a signing capability error", err)
	}
}

func TestValidSignedName(t *testing.T) {
	for _, name := range []string{"InRelease", "Release.gpg", "x_1.0.dsc"} {
		if err := validSignedName(name); err != nil {
			t.Errorf("%q refused: %v", name, err)
		}
	}
	for _, name := range []string{"", ".", "..", "a/b", "/etc/passwd", `..\x`, "a\x00b"} {
		if err := validSignedName(name); err == nil {
			t.Errorf("%q accepted", name)
		}
	}
}

// armourBody is a sanity helper: the armour type of data.
func armourType(t *testing.T, data []byte) string {
	t.Helper()
	b, err := armor.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	return b.Type
}

func TestOpenPGPArmourTypes(t *testing.T) {
	e := newTestEntity(t, "Armour")
	secret, _ := armoredOpenPGPSecret(e)
	if got := armourType(t, secret); got != "PGP PRIVATE KEY BLOCK" {
		t.Errorf("secret key armour %q", got)
	}
	if got := armourType(t, publicOf(t, e)); got != "PGP PUBLIC KEY BLOCK" {
		t.Errorf("public key armour %q", got)
	}
}

// signRows returns the sign audit rows of the key fpr (of every key if fpr
// is empty).
func signRows(t testing.TB, st *Store, fpr string) []AuditRow {
	t.Helper()
	return keep(auditRows(t, st, AuditFilter{Fingerprint: fpr}), func(r AuditRow) bool { return r.Event == "sign" })
}

// signAudited unseals keys and signs data through signOpenPGPAudited; the
// output is returned only when that succeeded.
func signAudited(st *Store, keys []*Key, data []byte, mode string, ac auditContext) ([]byte, error) {
	entities, err := openpgpEntities(st, keys)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if err := signOpenPGPAudited(st, keys, entities, bytes.NewReader(data), &out, mode, ac); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

func TestOpenPGPCommandLine(t *testing.T) {
	te := newTestEnv(t)
	fpr1 := strings.TrimSpace(te.mustRun(t, "generate-key", "--purpose", "openpgp", "--description", "Archive key one"))
	fpr2 := strings.TrimSpace(te.mustRun(t, "generate-key", "--purpose", "openpgp", "--description", "Archive key two"))
	pub1 := te.mustRun(t, "export-public-key", "--purpose", "openpgp", "--key", fpr1)
	pub2 := te.mustRun(t, "export-public-key", "--purpose", "openpgp", "--key", fpr2)
	keyring := keyringFile(t, []byte(pub1), []byte(pub2))

	dir := t.TempDir()
	data := []byte("Origin: test\n")
	release := writeTemp(t, dir, "Release", data)
	te.mustRun(t, "sign", "--purpose", "openpgp", "--key", fpr1, "--key", fpr2, "--mode", "detached", release)
	if fprs, err := gpgv(t, keyring, release+".asc", release); err != nil || !sameSet(fprs, []string{fpr1, fpr2}) {
		t.Fatalf("Release.asc: good signatures %v, err %v", fprs, err)
	}
	inRelease := filepath.Join(dir, "InRelease")
	te.mustRun(t, "sign", "--purpose", "openpgp", "--key", fpr1, "--key", fpr2, "--mode", "clear", "--output", inRelease, release)
	if fprs, err := gpgv(t, keyring, inRelease); err != nil || !sameSet(fprs, []string{fpr1, fpr2}) {
		t.Fatalf("InRelease: good signatures %v, err %v", fprs, err)
	}

	st := te.store(t)
	sum := sha256.Sum256(data)
	for _, fpr := range []string{fpr1, fpr2} {
		rows := signRows(t, st, fpr)
		if len(rows) != 2 {
			t.Fatalf("%s: %d sign rows, want 2 (one per file signed)", fpr, len(rows))
		}
		var d map[string]any
		if err := json.Unmarshal(rows[0].Data, &d); err != nil || d["data_sha256"] != hex.EncodeToString(sum[:]) || rows[0].WorkRequest != nil {
			t.Fatalf("sign row %s: %v", rows[0].Data, err)
		}
	}

	// debsign through the command line, to the default output directory.
	src := t.TempDir()
	changes := fakeUpload(t, src)
	te.mustRun(t, "sign", "--purpose", "openpgp", "--key", fpr1, "--mode", "debsign", changes)
	signed := filepath.Join(src, "hello_1.0_amd64.signed", "hello_1.0_amd64.changes")
	if out, err := dscverify(t, keyringFile(t, []byte(pub1)), signed); err != nil {
		t.Fatalf("dscverify: %v\n%s", err, out)
	}
	if n := len(signRows(t, st, fpr1)); n != 2+3 {
		t.Fatalf("%d sign rows after debsign, want 5 (.dsc, .buildinfo, .changes)", n)
	}
	// A second run refuses the now non-empty directory and audits nothing.
	if status, _, stderr := te.run(t, "sign", "--purpose", "openpgp", "--key", fpr1, "--mode", "debsign", changes); status != exitError || !strings.Contains(stderr, "not empty") {
		t.Fatalf("second debsign: exit %d, %s", status, stderr)
	}

	for _, bad := range [][]string{
		{"sign", "--purpose", "openpgp", "--mode", "clear", release},
		{"sign", "--purpose", "openpgp", "--key", fpr1, "--mode", "attached", release},
		{"sign", "--purpose", "openpgp", "--key", fpr1, "--key", fpr2, "--mode", "debsign", changes},
		{"sign", "--purpose", "openpgp", "--key", fpr1, "--key", fpr1, release},
		{"sign", "--purpose", "openpgp", "--key", fpr1, "--output", "x", release, release},
	} {
		if status, _, stderr := te.run(t, bad...); status != exitUsage {
			t.Errorf("%v: exit %d (%s), want %d", bad, status, stderr, exitUsage)
		}
	}
	if status, _, stderr := te.run(t, "sign", "--purpose", "openpgp", "--key", strings.Repeat("A", 40), release); status != exitError || !strings.Contains(stderr, "unknown key") {
		t.Errorf("unknown key: exit %d, %s", status, stderr)
	}
	if n := len(signRows(t, st, fpr1)); n != 5 {
		t.Fatalf("failed commands audited something: %d sign rows", n)
	}
}

func TestOpenPGPImportCommand(t *testing.T) {
	te := newTestEnv(t)
	home := gpgHome(t)
	fpr, secret := gpgSecretKey(t, home, "Imported <imp@example.org>", "rsa2048", "sign", [][2]string{{"rsa2048", "encr"}}, "pass phrase")
	keyFile := writeTemp(t, t.TempDir(), "key.asc", secret)
	status, _, stderr := te.run(t, "import-key", "--purpose", "openpgp", "--private-key", keyFile)
	if status != exitError || !strings.Contains(stderr, "--passphrase-file") {
		t.Fatalf("import without passphrase: exit %d, %s", status, stderr)
	}
	passFile := writeTemp(t, t.TempDir(), "pass", []byte("pass phrase\n"))
	got := strings.TrimSpace(te.mustRun(t, "import-key", "--purpose", "openpgp", "--private-key", keyFile, "--passphrase-file", passFile))
	if got != fpr {
		t.Fatalf("imported %s, gpg says %s", got, fpr)
	}
	st := te.store(t)
	k, err := st.Key(purposeOpenPGP, fpr)
	if err != nil {
		t.Fatal(err)
	}
	if k.Description != "Imported <imp@example.org>" {
		t.Errorf("description %q", k.Description)
	}
	if bytes.Contains(k.PrivateKey, []byte("PGP PRIVATE KEY")) {
		t.Fatal("the private key is stored in clear")
	}
	rows := auditRows(t, st, AuditFilter{Fingerprint: fpr})
	if len(rows) != 1 || rows[0].Event != "register" {
		t.Fatalf("audit rows %+v, want one register row", rows)
	}
	sig, err := signAudited(st, []*Key{k}, []byte("data\n"), openpgpModeClear, auditContext{Extra: map[string]any{"username": "alice"}})
	if err != nil {
		t.Fatal(err)
	}
	sigPath := writeTemp(t, t.TempDir(), "data.asc", sig)
	if fprs, err := gpgv(t, keyringFile(t, k.PublicKey), sigPath); err != nil || !sameSet(fprs, []string{fpr}) {
		t.Fatalf("good signatures %v, err %v", fprs, err)
	}
	rows = signRows(t, st, fpr)
	if len(rows) != 1 || !strings.Contains(string(rows[0].Data), `"username":"alice"`) {
		t.Fatalf("sign rows %+v", rows)
	}
}

// With the database gone, auditing fails: no signature is returned and no
// output directory is created.
func TestOpenPGPNothingReleasedWithoutAudit(t *testing.T) {
	te := newTestEnv(t)
	st := te.store(t)
	fpr, err := generateOpenPGPKey(st, "Audit key", nil)
	if err != nil {
		t.Fatal(err)
	}
	k, err := st.Key(purposeOpenPGP, fpr)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	if sig, err := signAudited(st, []*Key{k}, []byte("x"), openpgpModeDetached, auditContext{}); err == nil || sig != nil {
		t.Fatalf("signature released without audit: %v", err)
	}
	src := t.TempDir()
	outDir := filepath.Join(t.TempDir(), "out")
	if _, err := debsignUpload(st, k, fakeUpload(t, src), outDir, auditContext{}); err == nil {
		t.Fatal("debsign succeeded without audit")
	}
	if _, err := os.Stat(outDir); !os.IsNotExist(err) {
		t.Fatalf("output directory exists after a failed audit: %v", err)
	}
}

// aptUpdate runs apt-get update against a temporary root that holds only
// a flat file: repository, signed-by keyring, and returns its output.
func aptUpdate(t *testing.T, repo, keyring string) (string, error) {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"etc/apt/sources.list.d", "etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/trusted.gpg.d", "var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "var/lib/dpkg", "var/log/apt"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeTemp(t, filepath.Join(root, "var/lib/dpkg"), "status", nil)
	writeTemp(t, filepath.Join(root, "etc/apt"), "sources.list", []byte("deb [signed-by="+keyring+"] file:"+repo+" ./\n"))
	cmd := exec.Command("apt-get", "update",
		"-o", "Dir="+root,
		"-o", "Dir::State="+filepath.Join(root, "var/lib/apt"),
		"-o", "Dir::State::status="+filepath.Join(root, "var/lib/dpkg/status"),
		"-o", "Dir::Cache="+filepath.Join(root, "var/cache/apt"),
		"-o", "Dir::Etc="+filepath.Join(root, "etc/apt"),
		"-o", "Dir::Etc::SourceList="+filepath.Join(root, "etc/apt/sources.list"),
		"-o", "Dir::Etc::SourceParts="+filepath.Join(root, "etc/apt/sources.list.d"),
		"-o", "Dir::Etc::Trusted="+filepath.Join(root, "etc/apt/trusted.gpg"),
		"-o", "Dir::Etc::TrustedParts="+filepath.Join(root, "etc/apt/trusted.gpg.d"),
		"-o", "Dir::Log="+filepath.Join(root, "var/log/apt"),
		"-o", "APT::Sandbox::User=root",
		"-o", "Debug::NoLocking=1",
		"-o", "APT::Update::Error-Mode=any",
	)
	// An empty main configuration keeps the host's apt.conf out.
	cmd.Env = append(os.Environ(), "APT_CONFIG="+writeTemp(t, filepath.Join(root, "etc/apt"), "apt.conf", nil))
	out, err := cmd.CombinedOutput()
	if err == nil && strings.Contains(string(out), "W: ") {
		err = fmt.Errorf("apt-get update warned")
	}
	return string(out), err
}

func TestOpenPGPRepositoryAcceptedByAPT(t *testing.T) {
	requireTool(t, "apt-get")
	if os.Geteuid() != 0 {
		t.Skip("apt-get update needs root here")
	}
	keys := []*openpgp.Entity{newTestEntity(t, "Repo key one"), newTestEntity(t, "Repo key two")}
	keyring := keyringFile(t, publicOf(t, keys[0]), publicOf(t, keys[1]))
	for _, mode := range []string{openpgpModeClear, openpgpModeDetached} {
		t.Run(mode, func(t *testing.T) {
			repo := t.TempDir()
			packages := []byte("Package: hello\nVersion: 1.0\nArchitecture: all\nMaintainer: Test <test@example.org>\nFilename: ./hello_1.0_all.deb\nSize: 4\nSHA256: 0000000000000000000000000000000000000000000000000000000000000000\nDescription: test\n")
			writeTemp(t, repo, "Packages", packages)
			sum := sha256.Sum256(packages)
			release := []byte(fmt.Sprintf("Origin: Debusine test\nLabel: test\nSuite: test\nCodename: test\nDate: %s\nArchitectures: all amd64\nSHA256:\n %x %d Packages\n",
				time.Now().UTC().Format(time.RFC1123Z), sum, len(packages)))
			writeTemp(t, repo, "Release", release)
			sig, err := signOpenPGP(keys, release, mode, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			sigName := "InRelease"
			if mode == openpgpModeDetached {
				sigName = "Release.gpg"
			}
			writeTemp(t, repo, sigName, sig)
			if out, err := aptUpdate(t, repo, keyring); err != nil {
				t.Fatalf("apt-get update refused the repository: %v\n%s", err, out)
			}
			// One byte of Release changed: apt must refuse.
			tampered := bytes.Replace(release, []byte("Label: test"), []byte("Label: tesT"), 1)
			if mode == openpgpModeDetached {
				writeTemp(t, repo, "Release", tampered)
			} else {
				writeTemp(t, repo, sigName, bytes.Replace(sig, []byte("Label: test"), []byte("Label: tesT"), 1))
			}
			out, err := aptUpdate(t, repo, keyring)
			if err == nil {
				t.Fatalf("apt-get update accepted a changed Release:\n%s", out)
			}
			if !strings.Contains(out, "BADSIG") {
				t.Errorf("apt-get update failed for another reason than the signature:\n%s", out)
			}
		})
	}
}

func BenchmarkOpenPGPSign(b *testing.B) {
	var keys []*openpgp.Entity
	for _, name := range []string{"Bench one", "Bench two", "Bench three"} {
		e, err := newOpenPGPEntity(name, time.Now())
		if err != nil {
			b.Fatal(err)
		}
		keys = append(keys, e)
	}
	data := bytes.Repeat([]byte("SHA256:\n 0123456789abcdef 1234 main/binary-amd64/Packages\n"), 20000) // ~1 MB, a large Release
	for _, mode := range []string{openpgpModeClear, openpgpModeDetached} {
		b.Run(mode+"/3keys", func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := signOpenPGP(keys, data, mode, time.Now()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("generate", func(b *testing.B) {
		for b.Loop() {
			if _, err := newOpenPGPEntity("Bench", time.Now()); err != nil {
				b.Fatal(err)
			}
		}
	})
}
