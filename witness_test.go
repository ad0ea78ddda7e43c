package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// The witness tests run litewitness (filippo.io/torchwood, a C2SP
// tlog-witness by another author), built by the tests into a temporary
// directory from a throw-away module: it is never a dependency of the
// program. v0.6.1 is the newest that builds with this Go.
const litewitnessModule = "filippo.io/torchwood@v0.6.1"

var litewitnessBuild struct {
	once     sync.Once
	dir, err string
}

// buildLitewitness builds litewitness and witnessctl once per test run, or
// skips when that is not possible (no go, or the module cannot be
// downloaded).
func buildLitewitness(t testing.TB) string {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go is not installed")
	}
	litewitnessBuild.once.Do(func() {
		dir, err := os.MkdirTemp("", "litewitness-")
		if err != nil {
			litewitnessBuild.err = err.Error()
			return
		}
		mod := filepath.Join(dir, "mod")
		os.Mkdir(mod, 0o755)
		module, version, _ := strings.Cut(litewitnessModule, "@")
		os.WriteFile(filepath.Join(mod, "go.mod"), []byte("module litewitnessbuild\n\ngo 1.24\n\nrequire "+module+" "+version+"\n"), 0o644)
		cmd := exec.Command("go", "build", "-o", dir+"/", module+"/cmd/litewitness", module+"/cmd/witnessctl")
		cmd.Dir = mod
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod", "GOWORK=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			litewitnessBuild.err = fmt.Sprintf("building litewitness from %s: %v\n%s", litewitnessModule, err, out)
			os.RemoveAll(dir)
			return
		}
		litewitnessBuild.dir = dir
	})
	if litewitnessBuild.err != "" {
		t.Skip(litewitnessBuild.err)
	}
	return litewitnessBuild.dir
}

// testWitness is a running litewitness.
type testWitness struct {
	url, vkey, db, bin string
}

// startLitewitness runs litewitness on a loopback port with a new Ed25519
// key held by its own ssh-agent, as its README sets it up, and knowing no
// log yet (addLog).
func startLitewitness(t *testing.T) *testWitness {
	t.Helper()
	requireTool(t, "ssh-agent", "ssh-add", "ssh-keygen")
	bin := buildLitewitness(t)
	// ssh-agent's socket path must stay short: not under t.TempDir.
	dir, err := os.MkdirTemp("", "lw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "agent.sock")
	agent := exec.Command("ssh-agent", "-D", "-a", sock)
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Process.Kill(); agent.Wait() })
	key := filepath.Join(dir, "witness")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "witness", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := os.Stat(sock); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	add := exec.Command("ssh-add", key)
	add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v\n%s", err, out)
	}
	fp, err := exec.Command("ssh-keygen", "-l", "-f", key+".pub").Output()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	w := &testWitness{url: "http://" + addr, db: filepath.Join(dir, "litewitness.db"), bin: bin}
	var logs bytes.Buffer
	cmd := exec.Command(filepath.Join(bin, "litewitness"), "-name", "witness.test/w1", "-db", w.db,
		"-ssh-agent", sock, "-key", strings.Fields(string(fp))[1], "-listen", addr)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("litewitness:\n%s", logs.String())
		}
	})
	// It logs its verifier key, then listens.
	for deadline := time.Now().Add(30 * time.Second); ; {
		if i := strings.Index(logs.String(), "vkey="); i >= 0 && w.vkey == "" {
			w.vkey = strings.Fields(logs.String()[i+len("vkey="):])[0]
		}
		if c, err := net.Dial("tcp", addr); err == nil && w.vkey != "" {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("litewitness did not start:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return w
}

// addLog makes the witness know a log by its origin and verifier key.
func (w *testWitness) addLog(t *testing.T, origin, vkey string) {
	t.Helper()
	for _, args := range [][]string{{"add-log", "-db", w.db, "-origin", origin}, {"add-key", "-db", w.db, "-origin", origin, "-key", vkey}} {
		if out, err := exec.Command(filepath.Join(w.bin, "witnessctl"), args...).CombinedOutput(); err != nil {
			t.Fatalf("witnessctl %v: %v\n%s", args, err, out)
		}
	}
}

// memLog is a log kept in memory: the witness's side of the protocol
// does not need the store.
type memLog struct {
	hashes []tlog.Hash
	n      int64
}

func (m *memLog) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if x >= int64(len(m.hashes)) {
			return nil, fmt.Errorf("no hash %d", x)
		}
		out[i] = m.hashes[x]
	}
	return out, nil
}

func (m *memLog) add(t testing.TB, data string) {
	hs, err := tlog.StoredHashes(m.n, []byte(data), m)
	if err != nil {
		t.Fatal(err)
	}
	m.hashes = append(m.hashes, hs...)
	m.n++
}

func (m *memLog) tree(t testing.TB) tlog.Tree {
	h, err := tlog.TreeHash(m.n, m)
	if err != nil {
		t.Fatal(err)
	}
	return tlog.Tree{N: m.n, Hash: h}
}

// testNoteKey is a log's note signer and verifier key.
func testNoteKey(t testing.TB, name string) (note.Signer, string) {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		t.Fatal(err)
	}
	s, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	return s, vkey
}

func signTree(t testing.TB, s note.Signer, origin string, tree tlog.Tree) []byte {
	t.Helper()
	msg, err := note.Sign(&note.Note{Text: fmt.Sprintf("%s\n%d\n%s\nchain-head %s\n", origin, tree.N, tree.Hash, genesisHash)}, s)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// TestWitnessLitewitness: litewitness accepts our checkpoints and
// consistency proofs (from the size it knows, learnt from its 409), its
// cosignatures verify with our cosignature/v1 verifier under a policy, and
// it refuses a fork: another checkpoint of a size it has cosigned.
func TestWitnessLitewitness(t *testing.T) {
	w := startLitewitness(t)
	const origin = "log.test/audit"
	signer, vkey := testNoteKey(t, origin)
	w.addLog(t, origin, vkey)
	witnesses := []WitnessConfig{{URL: w.url, Key: w.vkey}}
	policy := witnessPolicy{keys: stringList{w.vkey}, quorum: 1}
	if err := policy.parse(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	var l memLog
	for i := range 3 {
		l.add(t, fmt.Sprintf("row %d\n", i))
	}
	cp3 := signTree(t, signer, origin, l.tree(t))
	if _, err := policy.check(cp3, vkey); err == nil {
		t.Fatal("a checkpoint without cosignatures passes a quorum of 1")
	}
	cosigned3, errs := cosign(ctx, witnesses, cp3, l.tree(t), 0, &l)
	if errs != nil {
		t.Fatal(errs)
	}
	if _, err := policy.check(cosigned3, vkey); err != nil {
		t.Fatalf("cosigned checkpoint: %v\n%s", err, cosigned3)
	}

	// Grown to 7, submitted as if the last one had been size 1: the
	// witness answers 409 with 3, and the proof from 3 convinces it.
	for i := 3; i < 7; i++ {
		l.add(t, fmt.Sprintf("row %d\n", i))
	}
	cp7 := signTree(t, signer, origin, l.tree(t))
	cosigned7, errs := cosign(ctx, witnesses, cp7, l.tree(t), 1, &l)
	if errs != nil {
		t.Fatal(errs)
	}
	if _, err := policy.check(cosigned7, vkey); err != nil {
		t.Fatalf("cosigned checkpoint of 7: %v", err)
	}
	// A cosignature moved onto another checkpoint does not verify.
	sigs := cosigned7[bytes.LastIndex(cosigned7, []byte("\n\n"))+2:]
	moved := append(bytes.Clone(cp3), sigs[bytes.IndexByte(sigs, '\n')+1:]...)
	if _, err := policy.check(moved, vkey); err == nil {
		t.Error("a cosignature of size 7 verifies on the checkpoint of size 3")
	}

	// A fork: another log of 7 rows under the same key.
	var fork memLog
	for i := range 7 {
		fork.add(t, fmt.Sprintf("forked row %d\n", i))
	}
	forked := signTree(t, signer, origin, fork.tree(t))
	if out, errs := cosign(ctx, witnesses, forked, fork.tree(t), 7, &fork); errs == nil || !bytes.Equal(out, forked) {
		t.Fatalf("litewitness cosigned a fork: %s", out)
	} else if !strings.Contains(errs[0].Error(), "422") {
		t.Errorf("fork refused with %v, want 422 (bad consistency proof)", errs)
	}
	// A log that was cut: smaller than what the witness has seen.
	var cut memLog
	cut.add(t, "row 0\n")
	cutCP := signTree(t, signer, origin, cut.tree(t))
	if _, errs := cosign(ctx, witnesses, cutCP, cut.tree(t), 0, &cut); errs == nil || !strings.Contains(errs[0].Error(), "another log") {
		t.Errorf("cut log: %v", errs)
	}
	// A witness that is down is an error to log, not a failure: the
	// checkpoint comes back signed by the log alone.
	down := []WitnessConfig{{URL: "http://127.0.0.1:1", Key: w.vkey}}
	if out, errs := cosign(ctx, down, cp7, l.tree(t), 3, &l); len(errs) != 1 || !bytes.Equal(out, cp7) {
		t.Errorf("witness down: %v", errs)
	}
}

// TestCosignatureVerifier checks key parsing and the signed message
// against a cosignature made as C2SP tlog-cosignature says.
func TestCosignatureVerifier(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	key := append([]byte{algCosignatureV1}, pub...)
	vkey := fmt.Sprintf("w.test+%08x+%s", keyHash("w.test", key), base64.StdEncoding.EncodeToString(key))
	v, err := newCosignatureVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
	sig := []byte{0, 0, 0, 0, 0x65, 0, 0, 0}
	sig = append(sig, ed25519.Sign(priv, fmt.Appendf(nil, "cosignature/v1\ntime %d\n%s", 0x65000000, msg))...)
	if !v.Verify(msg, sig) {
		t.Error("a valid cosignature does not verify")
	}
	sig[3] ^= 1 // another time
	if v.Verify(msg, sig) {
		t.Error("a cosignature verifies with another timestamp")
	}
	for _, bad := range []string{
		strings.Replace(vkey, "w.test+", "x.test+", 1),                                                        // hash of another name
		fmt.Sprintf("w.test+%08x+%s", keyHash("w.test", key[1:]), base64.StdEncoding.EncodeToString(key[1:])), // no type byte
		"w.test+0000+AAAA",
		"w test+00000000+" + base64.StdEncoding.EncodeToString(key),
	} {
		if _, err := newCosignatureVerifier(bad); err == nil {
			t.Errorf("key %q accepted", bad)
		}
	}
	// An Ed25519 note key (type 0x01) is not a witness key.
	_, logKey := testNoteKey(t, "log.test")
	if _, err := newCosignatureVerifier(logKey); err == nil {
		t.Errorf("note key accepted as a witness key: %v", err)
	}
}
