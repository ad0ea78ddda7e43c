package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// walkthroughBlock is one shell block of a README walk-through and the
// host it runs on.
type walkthroughBlock struct {
	host, script string
}

// readmeBlocks returns the README's ```sh blocks that follow a
// "<!-- MARKER HOST -->" line, in order.
func readmeBlocks(t *testing.T, marker string) []walkthroughBlock {
	t.Helper()
	f, err := os.Open("README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []walkthroughBlock
	var cur *walkthroughBlock
	inBlock := false
	for sc := bufio.NewScanner(f); sc.Scan(); {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "<!-- "+marker+" "):
			cur = &walkthroughBlock{host: strings.TrimSuffix(strings.TrimPrefix(line, "<!-- "+marker+" "), " -->")}
		case cur != nil && !inBlock && line == "```sh":
			inBlock = true
		case cur != nil && inBlock && line == "```":
			blocks = append(blocks, *cur)
			cur, inBlock = nil, false
		case inBlock:
			cur.script += line + "\n"
		}
	}
	return blocks
}

// buildStatic builds the static binary the README's walk-throughs run, and
// returns the directory holding it.
func buildStatic(t *testing.T) string {
	t.Helper()
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(bin, "debusine-signing"), ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestReceiptReadmeWalkthrough runs the README's receipt commands as
// written, with the built binary: on the signing host after a real UEFI
// signature, then in an empty directory holding only the receipt, the
// verifier key and the file; the same receipt is refused for another file.
func TestReceiptReadmeWalkthrough(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	requireTool(t, "go", "bash")
	blocks := readmeBlocks(t, "receipt-walkthrough")
	if len(blocks) != 2 || blocks[0].host != "host" || blocks[1].host != "anywhere" {
		t.Fatalf("README.md: receipt walk-through blocks %+v", blocks)
	}
	bin := buildStatic(t)
	te := newTestEnv(t)
	fpr, err := generateUEFIKey(te.store(t), "Secure Boot 2026", nil)
	if err != nil {
		t.Fatal(err)
	}
	shim := efiInputs(t)["shimx64.efi"]
	writeFile(t, te.dir, "shimx64.efi", shim)
	te.mustRun(t, "sign", "--purpose", "uefi", "--key", fpr, filepath.Join(te.dir, "shimx64.efi"))
	run := func(dir string, b walkthroughBlock, env ...string) (string, error) {
		cmd := exec.Command("bash", "-euo", "pipefail", "-c", b.script)
		cmd.Dir = dir
		cmd.Env = append(append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH")), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run(te.dir, blocks[0], "DEBUSINE_SIGNING_CONFIG="+te.configPath); err != nil {
		t.Fatalf("%s\n%v\n%s", blocks[0].script, err, out)
	}
	anywhere := t.TempDir()
	for _, name := range []string{"shimx64.efi.receipt", "audit.pub", "shimx64.efi"} {
		writeFile(t, anywhere, name, mustRead(t, filepath.Join(te.dir, name)))
	}
	out, err := run(anywhere, blocks[1])
	if err != nil || !strings.Contains(out, "receipt verifies: row 2 is in the audit log") || !strings.Contains(out, "uefi:"+fpr) {
		t.Fatalf("%s\n%v\n%s", blocks[1].script, err, out)
	}
	writeFile(t, anywhere, "shimx64.efi", append(shim, 0))
	if out, err := run(anywhere, blocks[1]); err == nil || !strings.Contains(out, "the receipt is not for shimx64.efi") {
		t.Errorf("another file: %v\n%s", err, out)
	}
}
