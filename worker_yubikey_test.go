package main

import (
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestWorkerYubiKey runs the worker with a key held on the virtual
// YubiKey: advertised and used while the token is plugged in, signatures
// verified with sbverify; not advertised, and a sign failing with a clear
// message and no audit row, once it is pulled out.
func TestWorkerYubiKey(t *testing.T) {
	needTool(t, "sbverify")
	files := efiInputs(t)
	card := startVirtualYubiKey(t, testTokenSerial)
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	pinFile := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pinFile, []byte("123456\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w.st.yubikey = YubiKeyConfig{PINFile: pinFile}
	_, cert := loadTokenKey(t, card, 0x9c, 1, false)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	fpr, err := registerYubiKeyKey(w.st, testTokenSerial, 0x9c, "Token key", certPEM)
	if err != nil {
		t.Fatal(err)
	}
	srv.addSigningKeyAsset("uefi", fpr)
	certPath := filepath.Join(t.TempDir(), "cert.pem")
	os.WriteFile(certPath, certPEM, 0o644)

	md, err := w.metadata()
	if err != nil {
		t.Fatal(err)
	}
	if got := md["signing:keys"].([]string); !slices.Equal(got, []string{"uefi:" + fpr}) {
		t.Errorf("token plugged in: signing:keys = %v", got)
	}
	signRequest := func() int64 {
		in := srv.addArtifact("debusine:signing-input", map[string]any{"binary_package_name": "shim-signed"},
			map[string][]byte{"shimx64.efi": files["shimx64.efi"]})
		return srv.addWorkRequest("sign", map[string]any{"purpose": "uefi", "unsigned": []int64{in}, "key": fpr},
			map[string]any{"unsigned_ids": []int64{in}, "unsigned_binary_package_names": []string{"shim-signed"}})
	}
	id := signRequest()
	runOnce(t, w)
	if c := srv.waitCompleted(t, id); c.Result != "success" {
		t.Fatalf("result %s: %s", c.Result, srv.debugLog(t, id, "execution.log"))
	}
	sbverifyShimOutput(t, srv, id, files["shimx64.efi"], certPath)
	if n := len(signAudits(t, w.st)); n != 1 {
		t.Fatalf("%d sign audit rows, want 1", n)
	}

	resetTokenPool()
	card.remove()
	if md, err = w.metadata(); err != nil {
		t.Fatal(err)
	}
	if got := md["signing:keys"].([]string); len(got) != 0 {
		t.Errorf("token pulled out: signing:keys = %v", got)
	}
	id = signRequest()
	runOnce(t, w)
	if c := srv.waitCompleted(t, id); c.Result != "failure" {
		t.Fatalf("token pulled out: result %s", c.Result)
	}
	if log := srv.debugLog(t, id, "fetch_input.log"); !strings.Contains(log, "is not connected to this host") {
		t.Errorf("the failure does not say the token is absent:\n%s", log)
	}
	if outs := srv.artifactsOf(id, "debusine:signing-output"); len(outs) != 0 {
		data, _ := json.Marshal(outs)
		t.Errorf("signing outputs with the token out: %s", data)
	}
	if n := len(signAudits(t, w.st)); n != 1 {
		t.Errorf("%d sign audit rows after a failed sign, want 1", n)
	}
}
