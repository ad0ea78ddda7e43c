package main

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestYubiKeyUEFISign signs real EFI binaries with a registered and a
// generated token key through the sign command, and checks the signatures
// with sbverify and osslsigncode.
func TestYubiKeyUEFISign(t *testing.T) {
	needTool(t, "sbverify")
	image, err := os.ReadFile("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
	if err != nil {
		t.Skipf("no EFI binary to sign (systemd-boot-efi): %v", err)
	}
	card := startVirtualYubiKey(t, testTokenSerial)
	te, _ := yubiKeyTestEnv(t, "123456")

	// Slot 9c: a key made elsewhere, registered with a UEFI certificate.
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := uefiSelfSignedCertificate("Registered token key", &priv.PublicKey, priv, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	card.putKey(0x9c, priv, 3)
	certFile := writeFile(t, te.dir, "registered.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	registered := strings.TrimSpace(te.mustRun(t, "register-yubikey-key", "--purpose", "uefi", "--serial", fmt.Sprint(testTokenSerial),
		"--slot", "9c", "--certificate", certFile, "--description", "Registered token key"))
	// Slot 9d: generated on the token.
	generated := strings.TrimSpace(te.mustRun(t, "generate-key", "--purpose", "uefi", "--description", "Generated token key",
		"--yubikey", fmt.Sprint(testTokenSerial), "--slot", "9d"))
	resetTokenPool()

	for _, fpr := range []string{registered, generated} {
		cert := writeFile(t, te.dir, fpr+".pem", []byte(te.mustRun(t, "export-public-key", "--purpose", "uefi", "--key", fpr)))
		for _, mode := range []string{uefiModeDetached, uefiModeAttached} {
			in := writeFile(t, t.TempDir(), "systemd-bootx64.efi", image)
			te.mustRun(t, "sign", "--purpose", "uefi", "--key", fpr, "--mode", mode, in)
			sbOK, osslOK, out := verifyBoth(t, cert, in, uefiOutputName(in, mode), mode)
			if !sbOK || !osslOK {
				t.Errorf("%s, %s: sbverify %v, osslsigncode %v\n%s", fpr, mode, sbOK, osslOK, out)
			}
		}
		if rows := auditRows(t, te.store(t), AuditFilter{Fingerprint: fpr}); len(rows) != 3 || rows[1].Event != "sign" || rows[2].Event != "sign" {
			t.Errorf("%s: audit rows %+v", fpr, rows)
		}
	}

	// The token pulled out: the sign command fails in one line, writes
	// nothing and audits nothing.
	resetTokenPool()
	card.remove()
	in := writeFile(t, t.TempDir(), "systemd-bootx64.efi", image)
	status, _, stderr := te.run(t, "sign", "--purpose", "uefi", "--key", generated, in)
	if status != 3 || !strings.Contains(stderr, fmt.Sprintf("YubiKey %d is not connected to this host", testTokenSerial)) || strings.Count(stderr, "\n") != 1 {
		t.Errorf("sign with the token out: exit %d, %q", status, stderr)
	}
	if _, err := os.Stat(uefiOutputName(in, uefiModeDetached)); !os.IsNotExist(err) {
		t.Errorf("output written without the token: %v", err)
	}
	if rows := auditRows(t, te.store(t), AuditFilter{Fingerprint: generated}); len(rows) != 3 {
		t.Errorf("%d audit rows after the failed signature, want 3", len(rows))
	}
}
