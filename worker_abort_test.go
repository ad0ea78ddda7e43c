package main

// A work request aborted in the middle of an input, and a worker killed in
// the middle of a task.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// abortWatch is a fake server hook that aborts the work request id when
// trigger says so, then holds every request that would create, upload or
// attach something, and every download, until the worker drops it or for
// at most hold: those it had to let through were made after the abort, or
// kept going for hold after it.
type abortWatch struct {
	mu        sync.Mutex
	aborted   bool
	afterward []string // requests let through after the abort
}

func (a *abortWatch) hook(srv *fakeServer, id int64, trigger func(r *http.Request) bool, hold time.Duration) func(http.ResponseWriter, *http.Request) bool {
	return func(rw http.ResponseWriter, r *http.Request) bool {
		write := r.Method != "GET" && !strings.HasSuffix(r.URL.Path, "/sign_with/")
		if !write && !strings.Contains(r.URL.Path, "/download/") {
			return false
		}
		a.mu.Lock()
		if !a.aborted && trigger(r) {
			a.aborted = true
			srv.mu.Lock()
			srv.abort(id)
			srv.mu.Unlock()
		}
		aborted := a.aborted
		a.mu.Unlock()
		if !aborted {
			return false
		}
		// Read the request first: the server notices a client that
		// gives up only once it has.
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		select {
		case <-r.Context().Done():
			return true
		case <-time.After(hold):
		}
		a.mu.Lock()
		a.afterward = append(a.afterward, r.Method+" "+r.URL.Path)
		a.mu.Unlock()
		return false
	}
}

// TestWorkerAbortedWithinInput: the work request is aborted in the middle
// of one input of 33 files (after 24 downloads), and in the middle of the
// uploads of 33 inputs (at the fifth): the watch sees it within its period,
// wherever the task is; from then on nothing is uploaded, created or
// attached, nothing more is signed once the downloads stop, and no result
// is sent.
func TestWorkerAbortedWithinInput(t *testing.T) {
	for _, layout := range []string{"1x33 downloading", "33x1 uploading"} {
		t.Run(layout, func(t *testing.T) {
			srv := newFakeServer(t)
			w, logs := testWorker(t, srv)
			registered(t, srv, w)
			k := signSetup(t, srv, w)
			// Only the watch can see the abort: the check before each
			// input is made once.
			w.watchEvery, w.statusEvery = 20*time.Millisecond, time.Hour
			var ins []int64
			files := map[string][]byte{}
			for i := range 33 {
				name := fmt.Sprintf("f%02d.txt", i)
				if layout == "1x33 downloading" {
					files[name] = []byte(name + "\n")
				} else {
					ins = append(ins, srv.addArtifact("debusine:signing-input", map[string]any{}, map[string][]byte{name: []byte(name + "\n")}))
				}
			}
			if len(ins) == 0 {
				ins = append(ins, srv.addArtifact("debusine:signing-input", map[string]any{}, files))
			}
			id := srv.addWorkRequest("sign", map[string]any{"purpose": "openpgp", "unsigned": "x", "key": k.Fingerprint},
				map[string]any{"unsigned_ids": ins})
			var mu sync.Mutex
			n := 0
			trigger := func(r *http.Request) bool {
				what := "/files/" // uploads
				at := 5
				if layout == "1x33 downloading" {
					what, at = "/download/", 24
				}
				if !strings.Contains(r.URL.Path, what) {
					return false
				}
				mu.Lock()
				defer mu.Unlock()
				n++
				return n == at
			}
			var a abortWatch
			srv.hook = a.hook(srv, id, trigger, 3*time.Second)
			runOnce(t, w)

			a.mu.Lock()
			defer a.mu.Unlock()
			if !a.aborted {
				t.Fatal("the abort was never triggered")
			}
			if len(a.afterward) != 0 {
				t.Errorf("made, or still going 3 s, after the abort: %q", a.afterward)
			}
			if c := srv.completionsOf(id); len(c) != 0 {
				t.Errorf("a result was sent: %s", c[0].Body)
			}
			if got := srv.artifactsOf(id, "debusine:work-request-debug-logs"); len(got) != 0 {
				t.Errorf("debug logs attached to the aborted work request")
			}
			if layout == "1x33 downloading" {
				if rows := signAudits(t, w.st); len(rows) >= 33 {
					t.Errorf("%d files signed: the signing went on after the abort", len(rows))
				}
				if got := srv.artifactsOf(id, "debusine:signing-output"); len(got) != 0 {
					t.Errorf("%d outputs created", len(got))
				}
			}
			if !strings.Contains(logs.String(), "the work request was taken away while it ran") ||
				!strings.Contains(logs.String(), "work request stopped: it is no longer this worker's") {
				t.Errorf("not logged:\n%.3000s", logs)
			}
		})
	}
}

// workDirsIn counts the work directories in dir, ours or the old
// work-request-ID-RANDOM ones.
func workDirsIn(dir string) int {
	entries, _ := os.ReadDir(dir)
	n := 0
	for _, e := range entries {
		if strings.Contains(e.Name(), "work-request-") {
			n++
		}
	}
	return n
}

// TestWorkerKilledLeavesNoWorkDir kills (SIGKILL) a worker process in the
// middle of a task, then starts the worker again on the same TMPDIR: the
// killed task's work directory is gone, and the retried work request runs.
func TestWorkerKilledLeavesNoWorkDir(t *testing.T) {
	srv := newFakeServer(t)
	te, _ := workerProcessEnv(t, srv, "")
	tmp := t.TempDir()
	inTask := make(chan struct{})
	srv.stallArtifactCreation(func() { close(inTask) }, 20*time.Second)
	id := srv.addWorkRequest("noop", map[string]any{"result": true}, nil)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := cliCommand(ctx, te, "worker")
	cmd.Env = append(cmd.Env, "TMPDIR="+tmp)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-inTask:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the task never started")
	}
	if n := workDirsIn(tmp); n != 1 {
		cmd.Process.Kill()
		t.Fatalf("%d work directories in TMPDIR during the task, want 1: nothing to test", n)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	srv.hook = nil

	t.Setenv("TMPDIR", tmp)
	if status, _, stderr := te.run(t, "worker", "--once"); status != 0 {
		t.Fatalf("restart: exit %d: %s", status, stderr)
	}
	if n := workDirsIn(tmp); n != 0 {
		entries, _ := os.ReadDir(tmp)
		t.Errorf("%d work directories survived the restart: %v", n, entries)
	}
	srv.mu.Lock()
	var statuses []string
	for _, wr := range srv.workReqs {
		statuses = append(statuses, wr.Status)
	}
	srv.mu.Unlock()
	if len(statuses) != 2 || statuses[0] != "aborted" || statuses[1] != "completed" || len(srv.completionsOf(id)) != 0 {
		t.Errorf("work requests %v: want the killed one aborted and its retry completed", statuses)
	}
}
