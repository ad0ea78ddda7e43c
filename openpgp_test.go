package main

import (
	"bytes"
	"crypto"
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
