package main

// The worker under server faults: an outage longer than a few retries, a
// work request aborted while it is signed, a 401 on an upload, an answer
// over the size limit.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// oldAttempts is how many times a call was tried before retry_for: six,
// about 34 s with the production pauses.
const oldAttempts = 6

// outage makes srv fail every request (but the WebSocket) from the moment
// begin accepts one until d later: a 502 from the proxy in front of a dead
// application server, or, for uploads, a connection reset. It returns the
// largest number of times one request (method and path) failed in a row.
func outage(srv *fakeServer, begin func(*http.Request) bool, d time.Duration) func() int {
	var mu sync.Mutex
	var until time.Time
	inRow := map[string]int{}
	most := 0
	srv.hook = func(rw http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, "/api/ws/") {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		if until.IsZero() && begin(r) {
			until = time.Now().Add(d)
		}
		key := r.Method + " " + r.URL.Path
		if until.IsZero() || time.Now().After(until) {
			inRow[key] = 0
			return false
		}
		inRow[key]++
		most = max(most, inRow[key])
		if r.Method == "PUT" {
			conn, _, err := http.NewResponseController(rw).Hijack()
			if err == nil {
				conn.Close()
				return true
			}
		}
		problem(rw, 502, "Bad Gateway", "")
		return true
	}
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return most
	}
}

// scaledBackoff is the production backoff a thousand times faster: a
// millisecond here stands for a second.
func scaledBackoff(n int) time.Duration { return backoffDelay(n) / 1000 }

// TestWorkerSignThroughOutage: the server goes away once the signatures are
// made, for longer than the old six tries lasted (400 ms here stands for
// 6.7 minutes; six tries lasted about 31 ms); the signatures wait on disk,
// and the task succeeds when the server comes back, each file signed and
// uploaded once.
func TestWorkerSignThroughOutage(t *testing.T) {
	needTool(t, "sbverify")
	srv := newFakeServer(t)
	w, logs := testWorker(t, srv)
	registered(t, srv, w)
	w.api.delay, w.api.retryFor = scaledBackoff, defaultRetryFor/1000
	k, certPath := uefiSignSetup(t, srv, w)
	files := efiInputs(t)
	in := srv.addArtifact("debusine:signing-input", map[string]any{"binary_package_name": "shim-signed"}, files)
	id := srv.addWorkRequest("sign", map[string]any{"purpose": "uefi", "unsigned": "x", "key": k.Fingerprint},
		map[string]any{"unsigned_ids": []int64{in}})
	most := outage(srv, func(r *http.Request) bool { return r.Method == "POST" && r.URL.Path == "/api/1.0/artifact/" }, 400*time.Millisecond)
	runOnce(t, w)
	if c := srv.waitCompleted(t, id); c.Result != "success" {
		t.Fatalf("result %s:\n%s", c.Result, logs)
	}
	if most() <= oldAttempts {
		t.Fatalf("one request failed at most %d times in a row: the outage was not longer than the old budget of %d tries", most(), oldAttempts)
	}
	outs := srv.artifactsOf(id, "debusine:signing-output")
	if len(outs) != 1 {
		t.Fatalf("%d signing outputs, want 1", len(outs))
	}
	dir := t.TempDir()
	for name, data := range files {
		f := outs[0].Files[name+".sig"]
		if f == nil || !f.complete {
			t.Fatalf("%s.sig not uploaded", name)
		}
		img := filepath.Join(dir, filepath.Base(name))
		os.WriteFile(img, data, 0o644)
		os.WriteFile(img+".sig", f.content, 0o644)
		if o, err := exec.Command("sbverify", "--cert", certPath, "--detached", img+".sig", img).CombinedOutput(); err != nil {
			t.Errorf("sbverify %s: %v\n%s", name, err, o)
		}
	}
	if rows := signAudits(t, w.st); len(rows) != len(files) {
		t.Errorf("%d sign audit rows for %d files", len(rows), len(files))
	}
	if !strings.Contains(logs.String(), "retry_in") {
		t.Error("the retries are not logged")
	}
}

// TestWorkerRetryForEnds: an outage longer than retry_for fails the task,
// saying how long it retried.
func TestWorkerRetryForEnds(t *testing.T) {
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	w.api.delay, w.api.retryFor = scaledBackoff, 200*time.Millisecond
	k := signSetup(t, srv, w)
	in := srv.addArtifact("debusine:signing-input", map[string]any{}, map[string][]byte{"a.txt": []byte("x")})
	id := srv.addWorkRequest("sign", map[string]any{"purpose": "openpgp", "unsigned": "x", "key": k.Fingerprint},
		map[string]any{"unsigned_ids": []int64{in}})
	start := time.Now()
	// Only the signatures' uploads fail, so that the failure can be reported.
	srv.hook = func(rw http.ResponseWriter, r *http.Request) bool {
		if r.Method == "PUT" && strings.HasSuffix(r.URL.Path, ".sig/") {
			problem(rw, 503, "Service Unavailable", "")
			return true
		}
		return false
	}
	runOnce(t, w)
	if c := srv.waitCompleted(t, id); c.Result != "failure" {
		t.Fatalf("result %s", c.Result)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("gave up after %v", d)
	}
	if got := srv.debugLog(t, id, "post_execution.log"); !strings.Contains(got, "HTTP 503") || !strings.Contains(got, "still failing after retrying for 200ms, [worker] retry_for") {
		t.Errorf("post_execution.log = %q", got)
	}
}

// abortTask queues a sign work request of three OpenPGP inputs, one file
// each, and returns the worker, its log, the server, the work request and
// the inputs.
func abortTask(t *testing.T) (*worker, *syncBuffer, *fakeServer, int64, []int64) {
	srv := newFakeServer(t)
	w, logs := testWorker(t, srv)
	registered(t, srv, w)
	k := signSetup(t, srv, w)
	var ins []int64
	for i := range 3 {
		ins = append(ins, srv.addArtifact("debusine:signing-input", map[string]any{}, map[string][]byte{fmt.Sprintf("f%d.txt", i): []byte(fmt.Sprintf("file %d\n", i))}))
	}
	id := srv.addWorkRequest("sign", map[string]any{"purpose": "openpgp", "unsigned": "x", "key": k.Fingerprint},
		map[string]any{"unsigned_ids": ins})
	return w, logs, srv, id, ins
}

// checkStopped checks that the task of abortTask signed only the first
// input, uploaded no output of the others, sent no result and said why.
func checkStopped(t *testing.T, w *worker, logs *syncBuffer, srv *fakeServer, id int64, ins []int64) {
	t.Helper()
	rows := signAudits(t, w.st)
	if len(rows) != 1 {
		t.Errorf("%d files signed, want 1 (the first input's)", len(rows))
	}
	for _, a := range srv.artifactsOf(id, "debusine:signing-output") {
		var d struct {
			Results []signResult `json:"results"`
		}
		json.Unmarshal(a.Data, &d)
		if len(d.Results) != 1 || d.Results[0].File != "f0.txt" {
			t.Errorf("output uploaded after the work request was taken away: %s", a.Data)
		}
	}
	if a := srv.artifactsOf(id, "debusine:work-request-debug-logs"); len(a) != 0 {
		t.Errorf("debug logs uploaded: %+v", a)
	}
	if c := srv.completionsOf(id); len(c) != 0 {
		t.Errorf("a result was sent: %s", c[0].Body)
	}
	if !strings.Contains(logs.String(), "work request stopped: it is no longer this worker's; nothing more is signed or uploaded") {
		t.Errorf("no clear log line:\n%s", logs)
	}
}

// TestWorkerSignAbortedMidTask: an administrator aborts the work request
// after the first of three inputs is signed; the worker notices before the
// next input (reading the work request's status), signs nothing more and
// uploads nothing more.
func TestWorkerSignAbortedMidTask(t *testing.T) {
	w, logs, srv, id, ins := abortTask(t)
	reads := 0
	srv.hook = func(rw http.ResponseWriter, r *http.Request) bool {
		if r.Method == "GET" && r.URL.Path == fmt.Sprintf("/api/1.0/work-request/%d/", id) {
			srv.mu.Lock()
			if reads++; reads == 2 {
				srv.abort(id)
			}
			srv.mu.Unlock()
		}
		return false
	}
	runOnce(t, w)
	srv.mu.Lock()
	n := reads
	srv.mu.Unlock()
	if n != 2 {
		t.Errorf("the status was read %d times, want once before each input until the abort", n)
	}
	checkStopped(t, w, logs, srv, id, ins)
	if !strings.Contains(logs.String(), "its status is aborted") {
		t.Errorf("the reason is not logged:\n%s", logs)
	}
}

// TestWorkerSignUpload401: the server answers an upload with 401 (the work
// request is not this worker's): the task ends there.
func TestWorkerSignUpload401(t *testing.T) {
	w, logs, srv, id, ins := abortTask(t)
	var mu sync.Mutex
	reads := 0
	srv.hook = func(rw http.ResponseWriter, r *http.Request) bool {
		switch {
		case r.Method == "PUT" && strings.HasSuffix(r.URL.Path, "/f0.txt.sig/"):
			// A server that refuses the upload has taken the work
			// request away (else its next get-next would hand it out
			// again).
			io.ReadAll(r.Body)
			srv.mu.Lock()
			srv.abort(id)
			srv.mu.Unlock()
			problem(rw, 401, "Invalid worker to update the work request", "")
			return true
		case r.Method == "GET" && r.URL.Path == fmt.Sprintf("/api/1.0/work-request/%d/", id):
			mu.Lock()
			reads++
			n := reads
			mu.Unlock()
			if n == 2 {
				// Hold the check before the second input until the
				// worker gives it up, as it does once the first input's
				// upload is refused: the test then knows where the
				// signing stands.
				select {
				case <-r.Context().Done():
				case <-time.After(10 * time.Second):
				}
			}
		}
		return false
	}
	runOnce(t, w)
	checkStopped(t, w, logs, srv, id, ins)
	if !strings.Contains(logs.String(), "HTTP 401 Invalid worker to update the work request") {
		t.Errorf("the reason is not logged:\n%s", logs)
	}
}

// TestWorkerOversizedAnswer: an artifact description larger than the limit
// is reported as such, naming the limit.
func TestWorkerOversizedAnswer(t *testing.T) {
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	k := signSetup(t, srv, w)
	in := srv.addArtifact("debusine:signing-input", map[string]any{}, map[string][]byte{"a.txt": []byte("x")})
	srv.hook = func(rw http.ResponseWriter, r *http.Request) bool {
		if r.Method == "GET" && r.URL.Path == fmt.Sprintf("/api/1.0/artifact/%d/", in) {
			rw.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(rw, `{"id": %d, "data": {"padding": "%s"}}`, in, strings.Repeat("x", maxJSONBody))
			return true
		}
		return false
	}
	signFails(t, srv, w, k.Fingerprint, in, "fetch_input.log", "HTTP 200: the answer is larger than 16 MiB, the most this worker reads from the API")
}

func TestCPUSeconds(t *testing.T) {
	for d, want := range map[time.Duration]int64{0: 0, time.Nanosecond: 1, 300 * time.Millisecond: 1, time.Second: 1, 1200 * time.Millisecond: 2} {
		if got := cpuSeconds(d); got != want {
			t.Errorf("cpuSeconds(%v) = %d, want %d", d, got, want)
		}
	}
}

// TestUploadWithoutProbe: a file is sent from offset 0 without a probe,
// which Debusine accepts whatever it holds of the file: nothing, part of
// it (it writes over it), or all of it.
func TestUploadWithoutProbe(t *testing.T) {
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	w.api.token, _ = readSecret(w.tokenFile)
	w.api.chunkSize = 1000
	data := []byte(strings.Repeat("0123456789", 250))
	for _, held := range []int{0, 1500, len(data)} {
		a, err := w.api.newArtifact(context.Background(), "debusine:test", "System", 0, map[string]any{}, []outFile{{Name: "f", Data: data}})
		if err != nil {
			t.Fatal(err)
		}
		srv.mu.Lock()
		f := srv.artifacts[a.ID].Files["f"]
		f.content = append([]byte(nil), data[:held]...)
		f.complete = held == len(data)
		srv.uploadLog = nil
		srv.mu.Unlock()
		if err := w.api.upload(context.Background(), a.ID, "f", strings.NewReader(string(data)), int64(len(data))); err != nil {
			t.Fatalf("holding %d bytes: %v", held, err)
		}
		srv.mu.Lock()
		if !f.complete || string(f.content) != string(data) || strings.Contains(strings.Join(srv.uploadLog, "\n"), "*/") {
			t.Errorf("holding %d bytes: complete %v, uploads %q", held, f.complete, srv.uploadLog)
		}
		srv.mu.Unlock()
	}
}
