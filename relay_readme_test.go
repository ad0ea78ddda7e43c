package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestRelayReadmeWalkthrough follows the README's relay walk-through as
// written, with the built (static) binary: the hosts' /etc/debusine-signing
// and the media's /media/usb are temporary directories, the configuration
// files are the README's with this test's server, paths and keys.
func TestRelayReadmeWalkthrough(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	requireTool(t, "go", "tar", "bash", "sbverify")
	blocks := readmeBlocks(t, "relay-walkthrough")
	if len(blocks) != 5 {
		t.Fatalf("README.md: %d relay walk-through blocks, want 5", len(blocks))
	}
	bin := buildStatic(t)

	srv := newFakeServer(t)
	offline := newTestEnv(t)
	offline.writeConfig(t, "database = \"signing.sqlite3\"\nservice_keys = [\"service-key\"]\n")
	fpr, err := generateUEFIKey(offline.store(t), "Secure Boot 2026", nil)
	if err != nil {
		t.Fatal(err)
	}
	connected, media := t.TempDir(), t.TempDir()
	dirs := map[string]string{"offline": offline.dir, "connected": connected}
	runBlock := func(b walkthroughBlock) string {
		t.Helper()
		script := strings.ReplaceAll(b.script, "/etc/debusine-signing", dirs[b.host])
		script = strings.ReplaceAll(script, "/media/usb", media)
		cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
		cmd.Dir = dirs[b.host]
		cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "FPR="+fpr)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s host:\n%s\n%v\n%s", b.host, script, err, out)
		}
		return string(out)
	}

	runBlock(blocks[0])
	runBlock(blocks[1])
	bundlePub := strings.TrimSpace(string(mustRead(t, filepath.Join(media, "relay-bundle.pub"))))
	resultPub := strings.TrimSpace(string(mustRead(t, filepath.Join(media, "relay-result.pub"))))
	auditPub := strings.TrimSpace(string(mustRead(t, filepath.Join(media, "audit.pub"))))
	offline.writeConfig(t, fmt.Sprintf("database = \"signing.sqlite3\"\nservice_keys = [\"service-key\"]\n[relay]\nstate_dir = \"relay\"\nbundle_public_key = %q\nresult_key_file = \"relay-result.key\"\n", bundlePub))
	tok, _ := newSecret()
	writeFile(t, connected, "token", []byte(tok))
	os.Chmod(filepath.Join(connected, "token"), 0o600)
	srv.addWorker(tok, true)
	srv.addSigningKeyAsset(purposeUEFI, fpr)
	writeFile(t, connected, "relay.toml", []byte(fmt.Sprintf(`trusted_certs = []
[worker]
api_url = %q
ca_file = %q
token_file = "token"
fqdn = "relay.example.org"
[relay]
state_dir = "relay"
bundle_key_file = "relay-bundle.key"
result_public_key = %q
audit_public_key = %q
workers = 1
[[relay.keys]]
purpose = "uefi"
fingerprint = %q
public_key_file = "sb2026.pem"
`, srv.apiURL(), srv.caFile(connected), resultPub, auditPub, fpr)))

	shim := efiInputs(t)["shimx64.efi"]
	in := srv.addArtifact("debusine:signing-input", map[string]any{"binary_package_name": "shim-signed"}, map[string][]byte{"shimx64.efi": shim})
	id := srv.addWorkRequest("sign", map[string]any{"purpose": "uefi", "unsigned": []string{"a"}, "key": fpr},
		map[string]any{"unsigned_ids": []int64{in}, "unsigned_binary_package_names": []string{"shim-signed"}})
	if out := runBlock(blocks[2]); !strings.Contains(out, "wr-") || !strings.Contains(out, "MANIFEST") {
		t.Errorf("fetch and tar tvf:\n%s", out)
	}
	if out := runBlock(blocks[3]); !strings.Contains(out, `"task_name": "sign"`) || !strings.Contains(out, "debusine-signing") {
		t.Errorf("manifest, sign and checkpoint:\n%s", out)
	}
	if out := runBlock(blocks[4]); !strings.Contains(out, "completed: success") {
		t.Errorf("complete:\n%s", out)
	}
	if c := srv.completionsOf(id); len(c) != 1 || c[0].Result != "success" {
		t.Fatalf("completions %+v", c)
	}
	sbverifyShimOutput(t, srv, id, shim, filepath.Join(connected, "sb2026.pem"))
}
