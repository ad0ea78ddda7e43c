package main

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const testTokenSerial = 13572468

// startVirtualYubiKey plugs a fresh virtual YubiKey into vpcd's first
// reader; it is pulled out, and the session pool emptied, when the test ends.
func startVirtualYubiKey(t testing.TB, serial uint32) *virtualYubiKey {
	t.Helper()
	needVirtualReader(t)
	card := newVirtualYubiKey(t, serial, vpcdFirstPort)
	card.insert(t)
	t.Cleanup(func() {
		resetTokenPool()
		card.remove()
	})
	return card
}

// resetTokenPool ends every session, as the end of the process would, so
// that another program (yubico-piv-tool) can use the token.
func resetTokenPool() {
	tokens.mu.Lock()
	defer tokens.mu.Unlock()
	for _, t := range tokens.bySerial {
		t.mu.Lock()
		t.close()
		t.mu.Unlock()
	}
	tokens.bySerial = map[uint32]*token{}
}

// loadTokenKey puts an RSA key in a slot of the card and returns it with a
// certificate for it (written into the slot too when inSlot).
func loadTokenKey(t testing.TB, card *virtualYubiKey, slot byte, pinPolicy byte, inSlot bool) (*rsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	card.putKey(slot, priv, pinPolicy)
	cert := selfSigned(t, priv, "Token test key")
	if inSlot {
		card.putCertificate(slot, cert.Raw)
	}
	return priv, cert
}

// yubiKeyTestEnv is a test store whose [yubikey] table names a PIN file
// (and a management key file holding the factory default key).
func yubiKeyTestEnv(t testing.TB, pin string) (*testEnv, string) {
	t.Helper()
	te := newTestEnv(t)
	pinFile := writeFile(t, te.dir, "pin", []byte(pin+"\n"))
	writeFile(t, te.dir, "management-key", []byte("010203040506070801020304050607080102030405060708\n"))
	te.writeConfig(t, "database = \"signing.sqlite3\"\nservice_keys = [\"service-key\"]\n"+
		"[yubikey]\npin_file = \"pin\"\nmanagement_key_file = \"management-key\"\n")
	return te, pinFile
}

func signDigest(t testing.TB, signer crypto.Signer, msg string) ([]byte, []byte, error) {
	t.Helper()
	digest := sha256.Sum256([]byte(msg))
	sig, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	return digest[:], sig, err
}

// signVerified signs msg with signer and checks the signature against pub.
func signVerified(t testing.TB, signer crypto.Signer, pub crypto.PublicKey, msg string) {
	t.Helper()
	digest, sig, err := signDigest(t, signer, msg)
	if err != nil {
		t.Fatalf("signing %q: %v", msg, err)
	}
	if err := rsa.VerifyPKCS1v15(pub.(*rsa.PublicKey), crypto.SHA256, digest, sig); err != nil {
		t.Fatalf("token signature does not verify: %v", err)
	}
}

func TestYubiKeyRegisterAndSign(t *testing.T) {
	card := startVirtualYubiKey(t, testTokenSerial)
	_, cert := loadTokenKey(t, card, 0x9c, 3, true)
	te, _ := yubiKeyTestEnv(t, "123456")

	out := te.mustRun(t, "register-yubikey-key", "--purpose", "uefi", "--serial", fmt.Sprint(testTokenSerial),
		"--slot", "9c", "--description", "Secure Boot 2026 (YubiKey)")
	fpr := strings.TrimSpace(out)
	if fpr != certificateFingerprint(cert) {
		t.Fatalf("fingerprint %s, want %s", fpr, certificateFingerprint(cert))
	}
	st := te.store(t)
	k, err := st.Key(purposeUEFI, fpr)
	if err != nil {
		t.Fatal(err)
	}
	uri, err := k.PKCS11URI()
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("pkcs11:serial=%d;id=%%02;type=private", testTokenSerial); uri != want {
		t.Errorf("URI %s, want %s", uri, want)
	}
	rows := auditRows(t, st, AuditFilter{Fingerprint: fpr})
	if len(rows) != 1 || rows[0].Event != "register" || !strings.Contains(string(rows[0].Data), "Secure Boot 2026 (YubiKey)") {
		t.Fatalf("audit rows: %+v", rows)
	}

	resetTokenPool() // the command's session belongs to "another process"
	signer, err := tokenSigner(st.yubikey, uri)
	if err != nil {
		t.Fatal(err)
	}
	signVerified(t, signer, cert.PublicKey, "a PE image hash")

	// A registered Debusine-style URI with pin-source works unchanged.
	pin2 := writeFile(t, te.dir, "other-pin", []byte("123456"))
	signer, err = tokenSigner(YubiKeyConfig{}, fmt.Sprintf("pkcs11:token=YubiKey%%20PIV%%20%%23%d;id=%%02?pin-source=file://%s", testTokenSerial, pin2))
	if err != nil {
		t.Fatal(err)
	}
	signVerified(t, signer, cert.PublicKey, "again")
}

func TestYubiKeyRegisterRefusals(t *testing.T) {
	card := startVirtualYubiKey(t, testTokenSerial)
	loadTokenKey(t, card, 0x9c, 2, true)
	loadTokenKey(t, card, 0x9d, 2, false)
	te, _ := yubiKeyTestEnv(t, "123456")
	_, other := testCertificate(t, "some other key")
	otherFile := writeFile(t, te.dir, "other.pem", other)
	serial := fmt.Sprint(testTokenSerial)
	for _, tc := range []struct {
		args   []string
		status int
		msg    string
	}{
		{[]string{"--slot", "9c", "--certificate", otherFile}, 3, "does not belong to the key in PIV slot 9c"},
		{[]string{"--slot", "9d"}, 3, "PIV slot 9d holds no certificate: give one with --certificate"},
		{[]string{"--slot", "9a"}, 3, "PIV slot 9a holds no key"},
		{[]string{"--slot", "9b"}, 2, "not a key slot"},
		{[]string{"--slot", "9c", "--serial", "1"}, 3, "YubiKey 1 is not connected"},
		{[]string{"--slot", "9c", "--purpose", "openpgp"}, 2, "--purpose must be uefi"},
	} {
		args := append([]string{"register-yubikey-key", "--purpose", "uefi", "--serial", serial, "--description", "x"}, tc.args...)
		status, _, stderr := te.run(t, args...)
		if status != tc.status || !strings.Contains(stderr, tc.msg) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%v: exit %d, %q; want exit %d and %q", tc.args, status, stderr, tc.status, tc.msg)
		}
	}
	if rows := auditRows(t, te.store(t), AuditFilter{}); len(rows) != 0 {
		t.Errorf("refused registrations left audit rows: %+v", rows)
	}
}

func TestYubiKeyGenerate(t *testing.T) {
	card := startVirtualYubiKey(t, testTokenSerial)
	te, _ := yubiKeyTestEnv(t, "123456")
	fpr := strings.TrimSpace(te.mustRun(t, "generate-key", "--purpose", "uefi", "--description", "Debusine UEFI on a token",
		"--yubikey", fmt.Sprint(testTokenSerial), "--slot", "9c"))
	resetTokenPool()
	st := te.store(t)
	k, err := st.Key(purposeUEFI, fpr)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := parseCertificatePEM(k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "Debusine UEFI on a token" || cert.CheckSignatureFrom(cert) != nil {
		t.Errorf("certificate %q is not self-signed by the token key: %v", cert.Subject, cert.CheckSignatureFrom(cert))
	}
	card.mu.Lock()
	onCard := card.keys[0x9c]
	certObj := card.objects[pivSlotObjects[0x9c]]
	card.mu.Unlock()
	if onCard == nil || onCard.origin != 1 || onCard.pinPolicy != 3 || onCard.touchPolicy != 1 {
		t.Fatalf("key on the card: %+v", onCard)
	}
	if !onCard.priv.PublicKey.Equal(cert.PublicKey) {
		t.Fatal("certificate is not for the key generated on the card")
	}
	if string(certObj) != string(certObject(cert.Raw)) {
		t.Error("certificate not written into slot 9c")
	}

	rows := auditRows(t, st, AuditFilter{Fingerprint: fpr})
	if len(rows) != 1 || rows[0].Event != "generate" {
		t.Fatalf("audit rows: %+v", rows)
	}
	var data struct {
		Description string   `json:"description"`
		Attestation []string `json:"attestation"`
	}
	if err := json.Unmarshal(rows[0].Data, &data); err != nil {
		t.Fatal(err)
	}
	if data.Description != "Debusine UEFI on a token" || len(data.Attestation) != 2 {
		t.Fatalf("audit data: %s", rows[0].Data)
	}
	var chain []*x509.Certificate
	for _, p := range data.Attestation {
		c, err := parseCertificatePEM([]byte(p))
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	// The chain: slot certificate <- token attestation certificate <- root,
	// with Yubico's extensions naming the token and the key's policies.
	if err := chain[1].CheckSignatureFrom(card.rootCert); err != nil {
		t.Fatalf("attestation certificate not signed by the root: %v", err)
	}
	if err := chain[0].CheckSignatureFrom(chain[1]); err != nil {
		t.Fatalf("slot attestation not signed by the token's attestation key: %v", err)
	}
	ext := map[string][]byte{}
	for _, e := range chain[0].Extensions {
		ext[e.Id.String()] = e.Value
	}
	var attSerial int64
	if _, err := asn1.Unmarshal(ext[oidYubicoSerial.String()], &attSerial); err != nil || attSerial != testTokenSerial {
		t.Errorf("attested serial %d (%v), want %d", attSerial, err, testTokenSerial)
	}
	if p := ext[oidYubicoPolicy.String()]; !bytes.Equal(p, []byte{pivPINPolicyAlways, pivTouchPolicyNever}) {
		t.Errorf("attested policies % x", p)
	}
	if cn := chain[0].Subject.CommonName; cn != "YubiKey PIV Attestation 9c" {
		t.Errorf("attested slot: %q", cn)
	}
	if !chain[0].PublicKey.(*rsa.PublicKey).Equal(cert.PublicKey) {
		t.Error("attestation is for another key")
	}

	signer, err := tokenSigner(st.yubikey, mustURI(t, k))
	if err != nil {
		t.Fatal(err)
	}
	signVerified(t, signer, cert.PublicKey, "data")

	// Never over an existing key; the management key is required.
	if _, err := generateYubiKeyCommand(st, purposeUEFI, "again", fmt.Sprint(testTokenSerial), "9c"); err == nil || !strings.Contains(err.Error(), "already holds a key") {
		t.Errorf("generating over a key: %v", err)
	}
	st.yubikey.ManagementKeyFile = ""
	if _, err := generateYubiKeyCommand(st, purposeUEFI, "x", fmt.Sprint(testTokenSerial), "9d"); err == nil || !strings.Contains(err.Error(), "management_key_file") {
		t.Errorf("no management key: %v", err)
	}
	st.yubikey.ManagementKeyFile = writeFile(t, te.dir, "wrong-management-key", []byte("0f0e0d0c0b0a09080f0e0d0c0b0a09080f0e0d0c0b0a0908"))
	if _, err := generateYubiKeyCommand(st, purposeUEFI, "x", fmt.Sprint(testTokenSerial), "9d"); err == nil || !strings.Contains(err.Error(), "management key") {
		t.Errorf("wrong management key: %v", err)
	}
	if _, err := generateYubiKeyCommand(st, purposeOpenPGP, "x", fmt.Sprint(testTokenSerial), "9d"); err == nil {
		t.Error("openpgp key generated on a YubiKey")
	}
	// A wrong PIN is found before the key is made, not when the new key
	// would sign its certificate.
	st.yubikey.ManagementKeyFile = filepath.Join(te.dir, "management-key")
	st.yubikey.PINFile = writeFile(t, te.dir, "wrong-pin", []byte("999999"))
	if _, err := generateYubiKeyCommand(st, purposeUEFI, "x", fmt.Sprint(testTokenSerial), "9d"); err == nil || !strings.Contains(err.Error(), "wrong PIN") {
		t.Errorf("wrong PIN: %v", err)
	}
	card.mu.Lock()
	stranded := card.keys[0x9d]
	card.mu.Unlock()
	if stranded != nil {
		t.Error("a key was generated although the PIN was wrong")
	}
	if rows := auditRows(t, st, AuditFilter{}); len(rows) != 1 {
		t.Errorf("%d audit rows, want the one generate", len(rows))
	}
}

// TestYubiKeyConcurrentSigners: goroutines signing with one token share its
// session and take turns.
func TestYubiKeyConcurrentSigners(t *testing.T) {
	card := startVirtualYubiKey(t, testTokenSerial)
	_, cert := loadTokenKey(t, card, 0x9c, 2, true)
	te, _ := yubiKeyTestEnv(t, "123456")
	uri, _ := tokenKeyURI(testTokenSerial, 0x9c)
	errs := make(chan error, 4)
	for g := range 4 {
		go func() {
			for i := range 5 {
				signer, err := tokenSigner(te.cfg.YubiKey, uri)
				if err != nil {
					errs <- err
					return
				}
				digest := sha256.Sum256([]byte(fmt.Sprint(g, i)))
				sig, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256)
				if err == nil {
					err = rsa.VerifyPKCS1v15(cert.PublicKey.(*rsa.PublicKey), crypto.SHA256, digest[:], sig)
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if selects, signs, _ := card.counters(); selects != 1 || signs != 20 {
		t.Errorf("%d sessions, %d signatures; want 1, 20", selects, signs)
	}
}

func TestYubiKeyGeneratePoliciesAndAES(t *testing.T) {
	card := startVirtualYubiKey(t, testTokenSerial)
	aesKey := "000102030405060708090a0b0c0d0e0f1011121314151617"
	card.mu.Lock()
	card.mgmtAlg, card.mgmtKey = 0x0a, []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23}
	card.mu.Unlock()
	te, _ := yubiKeyTestEnv(t, "123456")
	st := te.store(t)
	st.yubikey.ManagementKeyFile = writeFile(t, te.dir, "aes-key", []byte(aesKey))
	st.yubikey.PINPolicy = "once"
	if _, err := generateYubiKeyCommand(st, purposeUEFI, "AES-managed", fmt.Sprint(testTokenSerial), "82"); err != nil {
		t.Fatal(err)
	}
	card.mu.Lock()
	k := card.keys[0x82]
	card.mu.Unlock()
	if k == nil || k.pinPolicy != 2 {
		t.Fatalf("key in retired slot 82: %+v", k)
	}
	st.yubikey.PINPolicy = "sometimes"
	if _, err := generateYubiKeyCommand(st, purposeUEFI, "x", fmt.Sprint(testTokenSerial), "83"); err == nil || !strings.Contains(err.Error(), "pin_policy") {
		t.Errorf("bad pin_policy: %v", err)
	}
}

func mustURI(t testing.TB, k *Key) string {
	t.Helper()
	uri, err := k.PKCS11URI()
	if err != nil {
		t.Fatal(err)
	}
	return uri
}

func TestYubiKeyWrongPIN(t *testing.T) {
	card := startVirtualYubiKey(t, testTokenSerial)
	_, cert := loadTokenKey(t, card, 0x9c, 3, true)
	te, pinFile := yubiKeyTestEnv(t, "654321")
	uri, _ := tokenKeyURI(testTokenSerial, 0x9c)
	signer, err := tokenSigner(te.cfg.YubiKey, uri)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = signDigest(t, signer, "x")
	if err == nil || !strings.Contains(err.Error(), "wrong PIN in "+pinFile) || !strings.Contains(err.Error(), "2 retries left") {
		t.Fatalf("wrong PIN: %v", err)
	}
	if strings.Contains(err.Error(), "654321") {
		t.Fatalf("the PIN appears in the error: %v", err)
	}
	// The same PIN is not presented again: the card sees no second VERIFY.
	_, _, err = signDigest(t, signer, "x")
	if err == nil || !strings.Contains(err.Error(), "not presenting the PIN") || strings.Contains(err.Error(), "654321") {
		t.Fatalf("second try: %v", err)
	}
	if _, _, verifys := card.counters(); verifys != 1 {
		t.Fatalf("the card saw %d PIN verifications, want 1", verifys)
	}
	card.mu.Lock()
	retries := card.pinRetries
	card.mu.Unlock()
	if retries != 2 {
		t.Fatalf("card PIN retries %d, want 2", retries)
	}
	// Fixing the file is enough.
	if err := os.WriteFile(pinFile, []byte("123456\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	signVerified(t, signer, cert.PublicKey, "x")

	// A PIN file others can read is refused before the token sees it.
	if err := os.Chmod(pinFile, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := signDigest(t, signer, "x"); err == nil || !strings.Contains(err.Error(), "too open") {
		t.Errorf("world-readable PIN file: %v", err)
	}
	// No PIN configured for a slot that needs one.
	signer, err = tokenSigner(YubiKeyConfig{}, uri)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := signDigest(t, signer, "x"); err == nil || !strings.Contains(err.Error(), "needs the PIN: set pin_file") {
		t.Errorf("no PIN: %v", err)
	}
}

func TestYubiKeyBlockedPIN(t *testing.T) {
	card := startVirtualYubiKey(t, testTokenSerial)
	loadTokenKey(t, card, 0x9c, 2, true)
	card.mu.Lock()
	card.pinRetries = 1
	card.mu.Unlock()
	te, _ := yubiKeyTestEnv(t, "000000")
	uri, _ := tokenKeyURI(testTokenSerial, 0x9c)
	signer, err := tokenSigner(te.cfg.YubiKey, uri)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := signDigest(t, signer, "x"); err == nil || !strings.Contains(err.Error(), "PIN is now blocked") {
		t.Fatalf("last retry: %v", err)
	}
}

func TestYubiKeyAbsent(t *testing.T) {
	startVirtualYubiKey(t, 11111111) // another token is present
	uri, _ := tokenKeyURI(testTokenSerial, 0x9c)
	if tokenKeyAvailable(YubiKeyConfig{}, uri) == nil {
		t.Fatal("absent token reported present")
	}
	present, _ := tokenKeyURI(11111111, 0x9c)
	if tokenKeyAvailable(YubiKeyConfig{}, present) != nil {
		t.Fatal("present token reported absent")
	}
	_, err := tokenSigner(YubiKeyConfig{}, uri)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("YubiKey %d is not connected to this host", testTokenSerial)) {
		t.Fatalf("absent token: %v", err)
	}
	if tokenKeyAvailable(YubiKeyConfig{}, "pkcs11:id=%02") == nil {
		t.Fatal("unmappable URI reported present")
	}
	if err := tokenKeyAvailable(YubiKeyConfig{}, uri); err == nil || !strings.Contains(err.Error(), "is not connected to this host") {
		t.Fatalf("tokenKeyAvailable: %v", err)
	}
}

func TestYubiKeyRemovedAndBack(t *testing.T) {
	card := startVirtualYubiKey(t, testTokenSerial)
	_, cert := loadTokenKey(t, card, 0x9c, 2, true)
	te, _ := yubiKeyTestEnv(t, "123456")
	uri, _ := tokenKeyURI(testTokenSerial, 0x9c)
	signer, err := tokenSigner(te.cfg.YubiKey, uri)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := signDigest(t, signer, "before"); err != nil {
		t.Fatal(err)
	}

	// Pulled out and plugged back between two signatures: the broken
	// session is replaced without the caller noticing.
	card.remove()
	card.insert(t)
	signVerified(t, signer, cert.PublicKey, "after reinsertion")

	// Pulled out: a clear error and not present; back: signing again.
	card.remove()
	if _, _, err := signDigest(t, signer, "while out"); err == nil || !strings.Contains(err.Error(), "is not connected") {
		t.Fatalf("while removed: %v", err)
	}
	if tokenKeyAvailable(te.cfg.YubiKey, uri) == nil {
		t.Fatal("removed token reported present")
	}
	card.insert(t)
	if tokenKeyAvailable(te.cfg.YubiKey, uri) != nil {
		t.Fatal("reinserted token not present")
	}
	signVerified(t, signer, cert.PublicKey, "back")
	if selects, _, _ := card.counters(); selects != 3 {
		t.Errorf("%d sessions opened, want 3 (one per insertion)", selects)
	}
}

// TestYubiKeySessionPool: signing many files, each through a fresh
// tokenSigner as the UEFI code path gets one per file, uses one session.
func TestYubiKeySessionPool(t *testing.T) {
	card := startVirtualYubiKey(t, testTokenSerial)
	loadTokenKey(t, card, 0x9c, 2, true)
	te, _ := yubiKeyTestEnv(t, "123456")
	uri, _ := tokenKeyURI(testTokenSerial, 0x9c)
	for i := range 10 {
		signer, err := tokenSigner(te.cfg.YubiKey, uri)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := signDigest(t, signer, fmt.Sprint("file ", i)); err != nil {
			t.Fatal(err)
		}
	}
	selects, signs, verifys := card.counters()
	if selects != 1 || signs != 10 || verifys != 1 {
		t.Errorf("card saw %d applet selections, %d signatures, %d PIN verifications; want 1, 10, 1", selects, signs, verifys)
	}
}

// TestVirtualYubiKeyWithYubicoPIVTool shows the virtual card passes for a
// YubiKey with Yubico's own tool, which shares no code with piv.go.
func TestVirtualYubiKeyWithYubicoPIVTool(t *testing.T) {
	if _, err := exec.LookPath("yubico-piv-tool"); err != nil {
		t.Skip("yubico-piv-tool not installed")
	}
	card := startVirtualYubiKey(t, testTokenSerial)
	_, cert := loadTokenKey(t, card, 0x9c, 3, true)
	tool := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("yubico-piv-tool", append([]string{"-r", "Virtual PCD 00 00"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("yubico-piv-tool %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	status := tool("-a", "status")
	for _, want := range []string{"Version:\t5.4.3", fmt.Sprintf("Serial Number:\t%d", testTokenSerial),
		"Slot 9c:", "Algorithm:\tRSA2048", "Subject DN:\tCN=Token test key", "PIN tries left:\t3"} {
		if !strings.Contains(status, want) {
			t.Errorf("status lacks %q:\n%s", want, status)
		}
	}
	dir := t.TempDir()
	certFile := writeFile(t, dir, "cert.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}))
	// test-signature signs on the card and verifies with the certificate.
	out := tool("-a", "verify-pin", "-P", "123456", "-a", "test-signature", "-s", "9c", "-i", certFile)
	if !strings.Contains(out, "Successful") {
		t.Errorf("test-signature:\n%s", out)
	}
	_, signs, _ := card.counters()
	if signs != 1 {
		t.Errorf("card made %d signatures for yubico-piv-tool, want 1", signs)
	}

	// Key generation and attestation through yubico-piv-tool.
	pub := pivToolGenerate(t, tool, dir, "9a")
	attPEM := tool("-a", "attest", "-s", "9a")
	att, err := parseCertificatePEM([]byte(attPEM))
	if err != nil {
		t.Fatalf("attest: %v\n%s", err, attPEM)
	}
	if !att.PublicKey.(*rsa.PublicKey).Equal(pub) {
		t.Error("attestation certificate is not for the generated key")
	}
}

// pivToolGenerate has yubico-piv-tool (run by tool) generate an RSA-2048
// key in slot and returns the public key it wrote.
func pivToolGenerate(t *testing.T, tool func(args ...string) string, dir, slot string) any {
	t.Helper()
	pubFile := filepath.Join(dir, "pub-"+slot+".pem")
	tool("-a", "generate", "-s", slot, "-A", "RSA2048", "-o", pubFile)
	pubPEM, err := os.ReadFile(pubFile)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.ParsePKIXPublicKey(pemBody(t, pubPEM, "generate wrote no public key:\n%s", pubPEM))
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// BenchmarkTokenSign is the cost of one signature on the virtual token
// through the whole PC/SC stack, the session already open: what each file
// of a signing task adds. The card's own RSA operation is included.
func BenchmarkTokenSign(b *testing.B) {
	for _, bc := range []struct {
		name   string
		policy byte
	}{{"pin-once", 2}, {"pin-always", 3}} {
		b.Run(bc.name, func(b *testing.B) {
			card := startVirtualYubiKey(b, testTokenSerial)
			loadTokenKey(b, card, 0x9c, bc.policy, true)
			te, _ := yubiKeyTestEnv(b, "123456")
			uri, _ := tokenKeyURI(testTokenSerial, 0x9c)
			signer, err := tokenSigner(te.cfg.YubiKey, uri)
			if err != nil {
				b.Fatal(err)
			}
			digest := sha256.Sum256([]byte("x"))
			for b.Loop() {
				if _, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	// What the pool saves: a session opened (reader scan, applet selection,
	// key lookup, PIN) for every signature.
	b.Run("new-session-each", func(b *testing.B) {
		card := startVirtualYubiKey(b, testTokenSerial)
		loadTokenKey(b, card, 0x9c, 2, true)
		te, _ := yubiKeyTestEnv(b, "123456")
		uri, _ := tokenKeyURI(testTokenSerial, 0x9c)
		digest := sha256.Sum256([]byte("x"))
		for b.Loop() {
			resetTokenPool()
			signer, err := tokenSigner(te.cfg.YubiKey, uri)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestYubiKeyPCSCDProtocol checks which pcscd protocol version the tests
// went through, when CI says which it started (.ci/test runs the YubiKey
// tests through Debian 12's pcscd, 4:4, and Debian 13's, 4:5).
func TestYubiKeyPCSCDProtocol(t *testing.T) {
	want := os.Getenv("DEBUSINE_SIGNING_TEST_PCSC_PROTOCOL")
	if want == "" {
		t.Skip("DEBUSINE_SIGNING_TEST_PCSC_PROTOCOL not set (.ci/test sets it)")
	}
	needVirtualReader(t)
	c, err := pcscEstablish(time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := fmt.Sprintf("4:%d", c.minor); got != want {
		t.Errorf("pcscd at %s accepted protocol %s, want %s", c.path, got, want)
	}
}

// TestYubiKeyInteropWithYubicoPIVTool: a key generated here is listed and
// used by yubico-piv-tool (Yubico's tool, on libpcsclite), and a key that
// yubico-piv-tool generated is registered here and signs an EFI binary
// that sbverify accepts. (Debian 12's yubico-piv-tool 2.2 fails to
// self-sign with OpenSSL 3 before touching the card, so the certificate
// it stores in the slot is one the key signed through this program.)
func TestYubiKeyInteropWithYubicoPIVTool(t *testing.T) {
	if _, err := exec.LookPath("yubico-piv-tool"); err != nil {
		t.Skip("yubico-piv-tool not installed")
	}
	needTool(t, "sbverify")
	image, err := os.ReadFile("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
	if err != nil {
		t.Skipf("no EFI binary to sign (systemd-boot-efi): %v", err)
	}
	startVirtualYubiKey(t, testTokenSerial)
	te, _ := yubiKeyTestEnv(t, "123456")
	dir := t.TempDir()
	tool := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("yubico-piv-tool", append([]string{"-r", "Virtual PCD 00 00"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("yubico-piv-tool %v: %v\n%s", args, err, out)
		}
		return string(out)
	}

	// Generated here, in slot 9a; the session ends so the tool can connect.
	ours := strings.TrimSpace(te.mustRun(t, "generate-key", "--purpose", "uefi", "--description", "Made by debusine-signing",
		"--yubikey", fmt.Sprint(testTokenSerial), "--slot", "9a"))
	resetTokenPool()
	if status := tool("-a", "status"); !strings.Contains(status, "Slot 9a:") || !strings.Contains(status, "Subject DN:\tCN=Made by debusine-signing") {
		t.Errorf("yubico-piv-tool status does not list the key made here:\n%s", status)
	}
	ourCert := writeFile(t, dir, "ours.pem", []byte(te.mustRun(t, "export-public-key", "--purpose", "uefi", "--key", ours)))
	if out := tool("-a", "verify-pin", "-P", "123456", "-a", "test-signature", "-s", "9a", "-i", ourCert); !strings.Contains(out, "Successful") {
		t.Errorf("yubico-piv-tool test-signature with the key made here:\n%s", out)
	}

	// Generated by yubico-piv-tool, in slot 9d; its certificate goes into
	// the slot with yubico-piv-tool too.
	pub := pivToolGenerate(t, tool, dir, "9d")
	uri, _ := tokenKeyURI(testTokenSerial, 0x9d)
	signer, err := tokenSigner(te.cfg.YubiKey, uri)
	if err != nil {
		t.Fatal(err)
	}
	der, err := uefiSelfSignedCertificate("Made by yubico-piv-tool", pub, signer, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	resetTokenPool()
	tool("-a", "import-certificate", "-s", "9d", "-i", writeFile(t, dir, "leaf.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	theirs := strings.TrimSpace(te.mustRun(t, "register-yubikey-key", "--purpose", "uefi", "--serial", fmt.Sprint(testTokenSerial),
		"--slot", "9d", "--description", "Made by yubico-piv-tool"))
	leafCert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if want := certificateFingerprint(leafCert); theirs != want {
		t.Errorf("registered %s, want the certificate yubico-piv-tool stored (%s)", theirs, want)
	}
	in := writeFile(t, dir, "systemd-bootx64.efi", image)
	te.mustRun(t, "sign", "--purpose", "uefi", "--key", theirs, in)
	certFile := writeFile(t, dir, "cert.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	if out, err := exec.Command("sbverify", "--cert", certFile, "--detached", in+".sig", in).CombinedOutput(); err != nil {
		t.Errorf("sbverify of the signature by the key yubico-piv-tool made: %v\n%s", err, out)
	}
}
