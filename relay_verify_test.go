package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestRelayOutputChecks: the relay's own checks of outputs refuse a module
// signature over another module or by another key, and OpenPGP signatures
// by too few, too many or other keys, or over other data.
func TestRelayOutputChecks(t *testing.T) {
	keyPEM, certPEM, err := newUEFIKeyPair("Relay check", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	signer, cert, err := parseUEFIKeyPair(keyPEM, certPEM)
	if err != nil {
		t.Fatal(err)
	}
	_, otherPEM := testCertificate(t, "Other")
	other, _ := parseCertificatePEM(otherPEM)
	module := testModule(5000, 3)
	s, err := signKmod(bytes.NewReader(module), int64(len(module)), false, signer, cert, make([]byte, peCopyBufferSize), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyKmodSignature(s.pkcs7, bytes.NewReader(module), int64(len(module)), cert); err != nil {
		t.Errorf("the module's own signature: %v", err)
	}
	changed := bytes.Clone(module)
	changed[100] ^= 1
	if err := verifyKmodSignature(s.pkcs7, bytes.NewReader(changed), int64(len(changed)), cert); err == nil {
		t.Error("a signature verified over another module")
	}
	if err := verifyKmodSignature(s.pkcs7, bytes.NewReader(module), int64(len(module)), other); err == nil {
		t.Error("a signature verified with another certificate")
	}
	if err := verifyKmodSignature(append(bytes.Clone(s.pkcs7), 0), bytes.NewReader(module), int64(len(module)), cert); err == nil {
		t.Error("trailing bytes accepted")
	}

	st := newTestEnv(t).store(t)
	var keys []*Key
	for _, name := range []string{"A", "B", "C"} {
		fpr, err := generateOpenPGPKey(st, name, nil)
		if err != nil {
			t.Fatal(err)
		}
		k, _ := st.Key(purposeOpenPGP, fpr)
		keys = append(keys, k)
	}
	keyring, err := readOpenPGPKeys(keys[0].PublicKey, keys[1].PublicKey, keys[2].PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("Origin: test\n")
	for _, mode := range []string{openpgpModeDetached, openpgpModeClear} {
		sig, err := signAudited(st, keys[:2], data, mode, auditContext{})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			data []byte
			want []string
			ok   bool
		}{
			{data, []string{keys[0].Fingerprint, keys[1].Fingerprint}, true},
			{data, []string{keys[1].Fingerprint, keys[0].Fingerprint}, true},
			{data, []string{keys[0].Fingerprint}, false},
			{data, []string{keys[0].Fingerprint, keys[2].Fingerprint}, false},
			{[]byte("Origin: other\n"), []string{keys[0].Fingerprint, keys[1].Fingerprint}, false},
		} {
			err := verifyOpenPGP(sig, c.data, mode, keyring, c.want)
			if (err == nil) != c.ok {
				t.Errorf("%s over %q, want %v: %v", mode, c.data, c.want, err)
			}
		}
		unknown, _ := readOpenPGPKeys(keys[2].PublicKey)
		if err := verifyOpenPGP(sig, data, mode, unknown, []string{keys[0].Fingerprint, keys[1].Fingerprint}); err == nil || !strings.Contains(err.Error(), "unknown key") {
			t.Errorf("%s by keys not in the keyring: %v", mode, err)
		}
	}
}
