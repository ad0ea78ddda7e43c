package main

import (
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The PKCS#11 modules of other vendors in front of the project's virtual
// PIV card (pivcard_test.go) through pcscd: the card is reached through
// `p11-kit remote MODULE`, as an administrator would configure it, not
// through the YubiKey path.
const (
	openSCModule = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"
	ykcs11Module = "/usr/lib/x86_64-linux-gnu/libykcs11.so"
	shimImage    = "/usr/lib/shim/shimx64.efi"
)

// pivModuleEnv plugs the virtual card in with keys in slots 9a (PIN
// policy once) and 9c (PIN policy always, a YubiKey's default for 9c), and
// returns a test store whose provider is `p11-kit remote module`, with
// certificate files for both keys and a PIN file.
func pivModuleEnv(t *testing.T, module string) (te *testEnv, st *Store, card *virtualYubiKey, cert9a, cert9c, pinFile string) {
	t.Helper()
	requireTool(t, "p11-kit")
	for _, f := range []string{module, shimImage} {
		if _, err := os.Stat(f); err != nil {
			t.Skipf("%s: %v (install opensc-pkcs11, ykcs11 and shim-unsigned)", f, err)
		}
	}
	card = startVirtualYubiKey(t, testTokenSerial)
	// OpenSC labels the token with the CN of slot 9a's certificate,
	// which loadTokenKey makes "Token test key".
	_, a := loadTokenKey(t, card, 0x9a, pivPINPolicyOnce, true)
	_, c := loadTokenKey(t, card, 0x9c, pivPINPolicyAlways, true)
	te, st = p11TestEnv(t, `exec:command="p11-kit remote `+module+`"`)
	cert9a = writeFile(t, te.dir, "9a.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.Raw}))
	cert9c = writeFile(t, te.dir, "9c.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	pinFile = writeFile(t, te.dir, "pin", []byte("123456\n"))
	return te, st, card, cert9a, cert9c, pinFile
}

// signShimOnToken signs shimx64.efi (attached) with the key and checks the result
// with sbverify and the certificate.
func signShimOnToken(t *testing.T, te *testEnv, fpr, certPath, name string) {
	t.Helper()
	out := filepath.Join(te.dir, name)
	te.mustRun(t, "sign", "--purpose", "uefi", "--key", fpr, "--mode", "attached", "--output", out, shimImage)
	if o, ok := sbverify(t, certPath, out, ""); !ok {
		t.Errorf("sbverify %s: %s", name, o)
	}
}

// TestPKCS11OpenSCVirtualPIV: OpenSC's opensc-pkcs11.so serves the virtual
// PIV card; its keys, named by the URIs `p11tool --list-all-privkeys`
// prints for them, are registered with Debusine's command (a test
// signature on the card each) and sign shimx64.efi for sbverify. OpenSC
// marks slot 9c's key (id 02) CKA_ALWAYS_AUTHENTICATE and the card wants
// the PIN before each of its signatures: every signature logs in for
// itself, so the second and third signatures work too, and so does 9a's
// key after them.
func TestPKCS11OpenSCVirtualPIV(t *testing.T) {
	te, st, card, cert9a, cert9c, pinFile := pivModuleEnv(t, openSCModule)
	token := "pkcs11:model=PKCS%2315%20emulated;manufacturer=piv_II;serial=00000000;token=Token%20test%20key"
	uri9a := token + ";id=%01;object=PIV%20AUTH%20key;type=private;pin-source=" + pinFile
	uri9c := token + ";id=%02;object=SIGN%20key;type=private;pin-source=" + pinFile

	fpr9a := strings.TrimSpace(te.mustRun(t, "register-pkcs11-static-key", "uefi", uri9a, cert9a, "PIV card 9a"))
	signShimOnToken(t, te, fpr9a, cert9a, "9a.efi")
	_, signs, _ := card.counters()
	fpr9c := strings.TrimSpace(te.mustRun(t, "register-pkcs11-static-key", "uefi", uri9c, cert9c, "PIV card 9c"))
	signShimOnToken(t, te, fpr9c, cert9c, "9c-1.efi")
	signShimOnToken(t, te, fpr9c, cert9c, "9c-2.efi")
	if _, after, _ := card.counters(); after-signs != 3 {
		t.Errorf("%d signatures on the card with 9c's key, want 3 (the test signature and two images)", after-signs)
	}
	// The card forgot the PIN with 9c's signature; OpenSC still holds the
	// login, so 9a's key gets CKR_USER_NOT_LOGGED_IN and logs in again.
	signShimOnToken(t, te, fpr9a, cert9a, "9a-2.efi")
	for fpr, uri := range map[string]string{fpr9a: uri9a, fpr9c: uri9c} {
		k, err := st.Key(purposeUEFI, fpr)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := k.PKCS11URI(); got != uri {
			t.Errorf("stored URI %q, want %q unchanged", got, uri)
		}
	}
}

// TestPKCS11YKCS11VirtualPIV: Yubico's ykcs11 in front of the same card.
// The URI names no YubiKey (no token label, model or serial), so it goes
// to PKCS#11 rather than to the YubiKey path. ykcs11 only takes PC/SC
// readers whose name begins with "Yubico" (is_yubico_reader in ykcs11's
// utils.c), and vpcd's reader is "Virtual PCD 00 00": when ykcs11 sees no
// token for that reason, the test skips, quoting ykcs11's own log line.
func TestPKCS11YKCS11VirtualPIV(t *testing.T) {
	te, _, _, cert9a, _, pinFile := pivModuleEnv(t, ykcs11Module)
	uri := "pkcs11:id=%01;type=private;pin-source=" + pinFile
	status, stdout, stderr := te.run(t, "register-pkcs11-static-key", "uefi", uri, cert9a, "PIV card 9a through ykcs11")
	if status != 0 {
		reader := "Virtual PCD 00 00"
		if strings.Contains(stderr, "no token present") && !strings.HasPrefix(reader, "Yubico") {
			t.Skipf("ykcs11 sees no token in reader %q (it takes only readers whose name begins with \"Yubico\"; %s): %s",
				reader, ykcs11SlotLog(), strings.TrimSpace(stderr))
		}
		t.Fatalf("register-pkcs11-static-key through ykcs11: exit %d: %s", status, stderr)
	}
	signShimOnToken(t, te, strings.TrimSpace(stdout), cert9a, "ykcs11.efi")
}

// ykcs11SlotLog is ykcs11's debug line on the slots it found, from
// `pkcs11-tool -L` with YKCS11_DBG=1.
func ykcs11SlotLog() string {
	cmd := exec.Command("pkcs11-tool", "--module", ykcs11Module, "-L")
	cmd.Env = append(os.Environ(), "YKCS11_DBG=1")
	out, _ := cmd.CombinedOutput()
	if m := regexp.MustCompile(`\(C_GetSlotList\): number of slots is \d+`).Find(out); m != nil {
		return "ykcs11 logs " + string(m)
	}
	return "pkcs11-tool -L with YKCS11_DBG=1 shows no slot count"
}
