package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPublishReadmeWalkthrough runs the README's walk-through of audit
// serve, monitors and witnesses as written, with the built binary, its
// server on a loopback port, and litewitness as the witness: the host's
// /etc/debusine-signing and /var/lib/debusine-signing are the test's
// directory, the witness's URL and key litewitness's.
func TestPublishReadmeWalkthrough(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	requireTool(t, "go", "bash", "curl")
	blocks := readmeBlocks(t, "publish-walkthrough")
	var hosts []string
	for _, b := range blocks {
		hosts = append(hosts, b.host)
	}
	if strings.Join(hosts, " ") != "host anywhere host witness host anywhere" {
		t.Fatalf("README.md: publish walk-through blocks on %v", hosts)
	}
	w := startLitewitness(t)
	bin := buildStatic(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	te := newTestEnv(t)
	appendTestRows(t, te.store(t), 3)
	anywhere := t.TempDir()
	env := append(os.Environ(), "PATH="+bin+":"+w.bin+":"+os.Getenv("PATH"), "DEBUSINE_SIGNING_CONFIG="+te.configPath)
	run := func(i int, dir string) string {
		t.Helper()
		script := blocks[i].script
		for old, repl := range map[string]string{"/etc/debusine-signing": te.dir, "/var/lib/debusine-signing": te.dir, "localhost:8380": addr,
			"http://witness.example.org:7380": w.url, "witness.example.org/w1+0c5a1f6b+BJ8wGrcYqXY5Rg2CsYwOyA/ELMtdTAA9Y5r4ZIBX/KUx": w.vkey} {
			script = strings.ReplaceAll(script, old, repl)
		}
		cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
		cmd.Dir, cmd.Env = dir, env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s:\n%s\n%v\n%s", blocks[i].host, script, err, out)
		}
		return string(out)
	}

	run(0, te.dir)
	serve := exec.Command(filepath.Join(bin, "debusine-signing"), "audit", "serve")
	serve.Env = env
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { serve.Process.Kill(); serve.Wait() })
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("audit serve did not start")
		}
	}
	// The third party got the verifier key and a first checkpoint; the
	// log grows before it looks.
	for _, name := range []string{"audit.pub", "audit-checkpoint"} {
		writeFile(t, anywhere, name, mustRead(t, filepath.Join(te.dir, name)))
	}
	appendTestRows(t, te.store(t), 2)
	te.mustRun(t, "audit", "checkpoint", "--output", filepath.Join(te.dir, "audit-checkpoint"))
	if out := run(1, anywhere); !strings.Contains(out, "log consistent: size 5 extends the kept size 3") {
		t.Errorf("monitor: %s", out)
	}
	if out := run(2, te.dir); !strings.Contains(out, "receipt verifies: row 1 is in the audit log") {
		t.Errorf("receipt: %s", out)
	}
	witnessDir := filepath.Dir(w.db)
	writeFile(t, witnessDir, "audit.pub", mustRead(t, filepath.Join(te.dir, "audit.pub")))
	run(3, witnessDir)
	appendTestRows(t, te.store(t), 1)
	run(4, te.dir)
	if !strings.Contains(string(mustRead(t, filepath.Join(te.dir, "audit-checkpoint"))), "— witness.test/w1 ") {
		t.Fatal("the checkpoint is not cosigned")
	}
	if out := run(5, anywhere); !strings.Contains(out, "log consistent: size 6 extends the kept size 5") {
		t.Errorf("monitor with a witness: %s", out)
	}
}
