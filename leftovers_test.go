package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// killWhenTempAppears runs the command line args() and kills it (SIGKILL)
// as soon as a temporary of ours appears in dir, trying again if the
// command finishes first; the test fails if it never catches it.
func killWhenTempAppears(t *testing.T, ctx context.Context, dir string, args func() []string, te *testEnv) {
	t.Helper()
	for attempt := range 5 {
		cmd := cliCommand(ctx, te, args()...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		for {
			select {
			case err := <-done:
				t.Logf("attempt %d: the command finished before it could be killed (%v)", attempt, err)
			default:
				if tempsIn(dir) == 0 {
					time.Sleep(time.Millisecond)
					continue
				}
				cmd.Process.Kill()
				<-done
				if tempsIn(dir) == 0 {
					t.Fatal("the killed run left no temporary: nothing was tested")
				}
				return
			}
			break
		}
	}
	t.Fatal("could not kill the command while it was writing")
}

func tempsIn(dir string) int {
	entries, _ := os.ReadDir(dir)
	n := 0
	for _, e := range entries {
		if strings.Contains(e.Name(), tempMarker) {
			n++
		}
	}
	return n
}

// TestKilledUEFISignLeavesNothingBlocking kills an attached signature of a
// large image while its output is being written, then signs again: the
// rerun succeeds, its output verifies, and the leftover is gone.
func TestKilledUEFISignLeavesNothingBlocking(t *testing.T) {
	needTool(t, "sbverify")
	te, st, k, certPath := uefiStoreKey(t)
	st.Close()
	dir := filepath.Join(te.dir, "images")
	os.Mkdir(dir, 0o755)
	in := writeFile(t, dir, "big.efi", testPE{plus: true, sections: []int{64 << 20}, trailing: 3}.build())
	args := func() []string {
		return []string{"sign", "--purpose", "uefi", "--key", k.Fingerprint, "--mode", "attached", in}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	killWhenTempAppears(t, ctx, dir, args, te)
	os.Remove(in + ".signed")
	te.mustRun(t, args()...)
	if n := tempsIn(dir); n != 0 {
		t.Errorf("%d temporaries left after the rerun", n)
	}
	if log, ok := sbverify(t, certPath, in+".signed", ""); !ok {
		t.Errorf("sbverify:\n%s", log)
	}
}

// TestKilledDebsignRerun kills a debsign while it writes the re-signed
// upload, then runs it again into the same output directory: the rerun
// succeeds and leaves no temporary behind.
func TestKilledDebsignRerun(t *testing.T) {
	te := newTestEnv(t)
	fpr := strings.TrimSpace(te.mustRun(t, "generate-key", "--purpose", "openpgp", "--description", "Rerun <rerun@example.org>"))
	src := filepath.Join(te.dir, "upload")
	os.Mkdir(src, 0o755)
	changes := fakeUpload(t, src)
	// A large .deb makes the copy into the output slow enough to be killed.
	deb := bytes.Repeat([]byte("debian "), 12<<20)
	writeFile(t, src, "hello_1.0_amd64.deb", deb)
	d, err := debDigestsOf(bytes.NewReader(deb))
	if err != nil {
		t.Fatal(err)
	}
	text, _ := os.ReadFile(changes)
	fields, err := parseDeb822(changes, text)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, src, filepath.Base(changes), rewriteChangesDigests(fields, map[string]debFileDigests{"hello_1.0_amd64.deb": d}))
	out := filepath.Join(te.dir, "signed")
	args := func() []string {
		return []string{"sign", "--purpose", "openpgp", "--key", fpr, "--mode", "debsign", "--output", out, changes}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	killWhenTempAppears(t, ctx, te.dir, args, te)
	te.mustRun(t, args()...)
	if n := tempsIn(te.dir); n != 0 {
		t.Errorf("%d temporaries left after the rerun", n)
	}
	got, err := os.ReadFile(filepath.Join(out, "hello_1.0_amd64.deb"))
	if err != nil || !bytes.Equal(got, deb) {
		t.Errorf("the re-signed upload's .deb: %d bytes, %v", len(got), err)
	}
	if _, err := os.Stat(filepath.Join(out, filepath.Base(changes))); err != nil {
		t.Error(err)
	}
}
