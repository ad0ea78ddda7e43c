//go:build !cgo

package main

import (
	"strings"
	"testing"
)

// TestYubiKeyWithoutCGO: the static build's YubiKey command fails with the
// one line, exit status 3, and its keys are never advertised.
func TestYubiKeyWithoutCGO(t *testing.T) {
	te := newTestEnv(t)
	status, _, stderr := te.run(t, "register-yubikey-key", "--purpose", "uefi", "--serial", "1", "--slot", "9c", "--description", "x")
	if want := "debusine-signing: this build has no PC/SC (YubiKey) support: rebuild with CGO_ENABLED=1\n"; status != 3 || stderr != want {
		t.Errorf("exit %d, stderr %q; want 3, %q", status, stderr, want)
	}
	status, _, stderr = te.run(t, "generate-key", "--purpose", "uefi", "--description", "x", "--yubikey", "1", "--slot", "9c")
	if !strings.HasSuffix(stderr, "no PC/SC (YubiKey) support: rebuild with CGO_ENABLED=1\n") || status != 3 {
		t.Errorf("generate-key --yubikey: exit %d, stderr %q", status, stderr)
	}
	uri, _ := tokenKeyURI(1, 0x9c)
	if _, err := tokenSigner(YubiKeyConfig{}, uri); err == nil || !strings.Contains(err.Error(), "rebuild with CGO_ENABLED=1") {
		t.Errorf("tokenSigner: %v", err)
	}
	if err := tokenKeyAvailable(YubiKeyConfig{}, uri); err != errNoPCSC {
		t.Errorf("tokenKeyAvailable: %v", err)
	}
	if tokenKeyAvailable(YubiKeyConfig{}, uri) == nil {
		t.Error("token present without PC/SC")
	}
}
