package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// syncBuffer collects the worker's log lines from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testWorker is a worker wired to srv with fast retries, plus its log.
func testWorker(t testing.TB, srv *fakeServer) (*worker, *syncBuffer) {
	t.Helper()
	dir := t.TempDir()
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	api, err := newAPIClient(srv.apiURL(), srv.caFile(dir), log)
	if err != nil {
		t.Fatal(err)
	}
	api.delay = func(int) time.Duration { return time.Millisecond }
	w := &worker{
		api:       api,
		st:        newTestEnv(t).store(t),
		log:       log,
		fqdn:      "signing1.example.org",
		tokenFile: filepath.Join(dir, "token"),
		trusted:   map[string]bool{},
		workDir:   t.TempDir(),
		wsDelay:   func() time.Duration { return 20 * time.Millisecond },
		onceQuiet: 300 * time.Millisecond,
	}
	return w, logs
}

// registered gives w a token the server knows and has enabled.
func registered(t testing.TB, srv *fakeServer, w *worker) string {
	tok, err := newSecret()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(w.tokenFile, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv.addWorker(tok, true)
	return tok
}

// start runs w in the background; the returned function stops it and
// returns what run returned.
func start(t testing.TB, w *worker) func() error {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.run(ctx) }()
	t.Cleanup(cancel)
	return func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("worker did not stop")
			return nil
		}
	}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// keep returns, in a new slice, the items of all for which want is true
// (nil if none): the fake server's lookups hand out copies so that callers
// can read them after releasing s.mu.
func keep[T any](all []T, want func(T) bool) []T {
	var out []T
	for _, x := range all {
		if want(x) {
			out = append(out, x)
		}
	}
	return out
}

// completionsOf returns the completions the server received for id.
func (s *fakeServer) completionsOf(id int64) []fakeCompletion {
	s.mu.Lock()
	defer s.mu.Unlock()
	return keep(s.completions, func(c fakeCompletion) bool { return c.WorkRequest == id })
}

func (s *fakeServer) waitCompleted(t testing.TB, id int64) fakeCompletion {
	t.Helper()
	waitFor(t, fmt.Sprintf("completion of work request %d", id), func() bool { return len(s.completionsOf(id)) > 0 })
	c := s.completionsOf(id)
	if len(c) != 1 {
		t.Fatalf("work request %d completed %d times", id, len(c))
	}
	return c[0]
}

// artifactsOf returns the artifacts a work request created, by category.
func (s *fakeServer) artifactsOf(id int64, category string) []*fakeArtifact {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*fakeArtifact
	for _, a := range s.artifacts {
		if a.WorkRequest == id && a.Category == category {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, func(a, b *fakeArtifact) int { return int(a.ID - b.ID) })
	return out
}

func (s *fakeServer) relationsFrom(id int64) []fakeRelation {
	s.mu.Lock()
	defer s.mu.Unlock()
	return keep(s.relations, func(r fakeRelation) bool { return r.Artifact == id })
}

// stallArtifactCreation makes srv answer no artifact creation: it reads the
// request, calls entered (the worker is now inside a task) and holds the
// request until the client drops it or for at most limit, so that tests can
// stop the worker in the middle of a task.
func (s *fakeServer) stallArtifactCreation(entered func(), limit time.Duration) {
	s.hook = func(rw http.ResponseWriter, r *http.Request) bool {
		if r.Method == "POST" && r.URL.Path == "/api/1.0/artifact/" {
			io.ReadAll(r.Body)
			entered()
			select {
			case <-r.Context().Done():
			case <-time.After(limit):
			}
			return true
		}
		return false
	}
}

func checkNoSecretsLogged(t testing.TB, logs *syncBuffer, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s != "" && strings.Contains(logs.String(), s) {
			t.Errorf("the log contains a secret %q", s)
		}
	}
}

func TestWorkerRegistrationThenEnablement(t *testing.T) {
	srv := newFakeServer(t)
	w, logs := testWorker(t, srv)
	stop := start(t, w)

	waitFor(t, "registration", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.registered) == 1
	})
	srv.mu.Lock()
	reg := srv.registered[0]
	srv.mu.Unlock()
	if !reHex64.MatchString(reg.Token) || reg.FQDN != "signing1.example.org" || reg.WorkerType != "signing" || reg.ActivationToken != "" {
		t.Errorf("registration = %+v", reg)
	}
	waitFor(t, "token file", func() bool { _, err := os.Stat(w.tokenFile); return err == nil })
	st, _ := os.Stat(w.tokenFile)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("token file mode %v", st.Mode())
	}
	if b, _ := os.ReadFile(w.tokenFile); strings.TrimSpace(string(b)) != reg.Token {
		t.Errorf("token file holds %q, registered %q", b, reg.Token)
	}
	if _, err := os.Stat(w.tokenFile + ".new"); err == nil {
		t.Error("the pending token file was left behind")
	}

	id := srv.addWorkRequest("noop", map[string]any{"result": true}, map[string]any{})
	time.Sleep(300 * time.Millisecond) // several WebSocket attempts, all TOKEN_DISABLED
	if len(srv.completionsOf(id)) != 0 {
		t.Fatal("a disabled worker got work")
	}
	if !strings.Contains(logs.String(), "waiting for an administrator to enable this worker") {
		t.Errorf("the wait is not logged:\n%s", logs)
	}
	srv.enable()
	if c := srv.waitCompleted(t, id); c.Result != "success" {
		t.Errorf("result %s", c.Result)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	srv.mu.Lock()
	var md map[string]any
	for _, wk := range srv.workers {
		md = wk.Metadata
	}
	srv.mu.Unlock()
	arch := debianArch(runtime.GOARCH)
	want := map[string]any{
		"system:worker_type": "signing", "system:host_architecture": arch, "system:architectures": []any{arch},
		"signing:noop:version": 1.0, "signing:generatekey:version": nil, "signing:sign:version": 1.0,
		"signing:sign:available:uefi": true,
		"signing:debsign:version":     1.0, "signing:debsign:available": true, "signing:signrepositoryindex:version": 1.0,
		"signing:keys": []any{},
	}
	for k, v := range want {
		if got, ok := md[k]; !ok || fmt.Sprint(got) != fmt.Sprint(v) {
			t.Errorf("metadata %s = %v, want %v", k, got, v)
		}
	}
	for k := range md {
		if _, ok := want[k]; !ok {
			t.Errorf("metadata has %s, which the scheduler does not need", k)
		}
	}
	checkNoSecretsLogged(t, logs, reg.Token)
}

func TestWorkerActivationToken(t *testing.T) {
	srv := newFakeServer(t)
	w, logs := testWorker(t, srv)
	act := strings.Repeat("ab", 32)
	srv.activation[act] = "signing-precreated"
	w.activationTokenFile = filepath.Join(t.TempDir(), "activation-token")
	os.WriteFile(w.activationTokenFile, []byte(act+"\n"), 0o600)

	id := srv.addWorkRequest("noop", map[string]any{"result": true}, nil)
	w.once = true
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.run(ctx); err != nil {
		t.Fatal(err)
	}
	srv.mu.Lock()
	regs := slices.Clone(srv.registered)
	_, actLeft := srv.activation[act]
	srv.mu.Unlock()
	if len(regs) != 1 || regs[0].ActivationToken != act || actLeft {
		t.Fatalf("registrations %+v, activation token left: %v", regs, actLeft)
	}
	if c := srv.waitCompleted(t, id); c.Result != "success" {
		t.Errorf("result %s", c.Result)
	}
	checkNoSecretsLogged(t, logs, act, regs[0].Token)
}

func TestWorkerNoop(t *testing.T) {
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	ok := srv.addWorkRequest("noop", map[string]any{"result": true}, map[string]any{})
	bad := srv.addWorkRequest("Noop", map[string]any{"result": false}, nil)
	stop := start(t, w)
	c1, c2 := srv.waitCompleted(t, ok), srv.waitCompleted(t, bad)
	stop()

	for _, tc := range []struct {
		c    fakeCompletion
		want string
		logs []string
	}{{c1, "success", nil}, {c2, "failure", []string{"stages.log"}}} {
		var body struct {
			Result     string `json:"result"`
			OutputData struct {
				RuntimeStatistics map[string]*int64 `json:"runtime_statistics"`
			} `json:"output_data"`
		}
		json.Unmarshal(tc.c.Body, &body)
		if body.Result != tc.want || body.OutputData.RuntimeStatistics["duration"] == nil || body.OutputData.RuntimeStatistics["cpu_time"] == nil {
			t.Errorf("completion %s", tc.c.Body)
		}
		logsArt := srv.artifactsOf(tc.c.WorkRequest, "debusine:work-request-debug-logs")
		if len(logsArt) != 1 {
			t.Fatalf("work request %d: %d debug-log artifacts", tc.c.WorkRequest, len(logsArt))
		}
		var names []string
		for n, f := range logsArt[0].Files {
			names = append(names, n)
			if !f.complete || *f.ContentType != "text/plain; charset=utf-8" {
				t.Errorf("debug log %s: %+v", n, f)
			}
		}
		slices.Sort(names)
		if !slices.Equal(names, tc.logs) {
			t.Errorf("work request %d: debug logs %v, want %v", tc.c.WorkRequest, names, tc.logs)
		}
	}
}

func TestWorkerRejectsBadWorkRequests(t *testing.T) {
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	unknown := srv.addWorkRequest("noop", map[string]any{"result": "yes"}, nil)
	srv.mu.Lock()
	wrongType := &fakeWorkRequest{ID: srv.newID(), TaskType: "Worker", TaskName: "sbuild", Workspace: "System", Status: "pending"}
	srv.workReqs = append(srv.workReqs, wrongType)
	srv.mu.Unlock()
	stop := start(t, w)
	// The fake's scheduler never gives a Worker task to a signing worker;
	// hand it over directly.
	waitFor(t, "metadata", func() bool { return w.metadataSent.Load() })
	srv.mu.Lock()
	for h := range srv.workers {
		wrongType.Worker = h
	}
	srv.mu.Unlock()
	w.signal()
	c1, c2 := srv.waitCompleted(t, unknown), srv.waitCompleted(t, wrongType.ID)
	stop()
	for _, tc := range []struct {
		c          fakeCompletion
		code, text string
	}{{c1, "configure-failed", "Task: noop Error configure:"}, {c2, "wrong-task-type", "Task: sbuild is of type Worker, not Signing"}} {
		var body completion
		json.Unmarshal(tc.c.Body, &body)
		if body.Result != "error" || body.OutputData == nil || len(body.OutputData.Errors) != 1 ||
			body.OutputData.Errors[0].Code != tc.code || !strings.HasPrefix(body.OutputData.Errors[0].Message, tc.text) ||
			body.OutputData.RuntimeStatistics != nil {
			t.Errorf("completion %s", tc.c.Body)
		}
	}
}

func TestWorkerServerErrorsRetried(t *testing.T) {
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	var mu sync.Mutex
	failures := map[string]int{}
	srv.hook = func(rw http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		defer mu.Unlock()
		key := r.Method + " " + r.URL.Path
		if strings.Contains(key, "get-next") || strings.Contains(key, "completed") || strings.HasPrefix(key, "POST /api/1.0/artifact/") {
			if failures[key] < 2 {
				failures[key]++
				problem(rw, 500, "Server Error (500)", "")
				return true
			}
		}
		return false
	}
	id := srv.addWorkRequest("noop", map[string]any{"result": true}, nil)
	stop := start(t, w)
	if c := srv.waitCompleted(t, id); c.Result != "success" {
		t.Errorf("result %s", c.Result)
	}
	stop()
	mu.Lock()
	defer mu.Unlock()
	if len(failures) < 3 {
		t.Errorf("500s were served to %v only", failures)
	}
}

func TestWorkerTokenDisabledReconnect(t *testing.T) {
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	stop := start(t, w)
	waitFor(t, "metadata", func() bool { return w.metadataSent.Load() })
	srv.disconnect(false)
	time.Sleep(100 * time.Millisecond)
	id := srv.addWorkRequest("noop", map[string]any{"result": true}, nil)
	time.Sleep(100 * time.Millisecond)
	if len(srv.completionsOf(id)) != 0 {
		t.Fatal("a disabled worker got work")
	}
	srv.enable()
	if c := srv.waitCompleted(t, id); c.Result != "success" {
		t.Errorf("result %s", c.Result)
	}
	stop()
	srv.mu.Lock()
	defer srv.mu.Unlock()
	n := 0
	for _, r := range srv.requests {
		if r == "GET /api/ws/1.0/worker/connect/" {
			n++
		}
	}
	if n < 3 {
		t.Errorf("%d WebSocket connections, want a reconnection after TOKEN_DISABLED", n)
	}
}

func TestWorkerOnceThreeWorkRequests(t *testing.T) {
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	w.once = true
	var ids []int64
	for i := range 3 {
		ids = append(ids, srv.addWorkRequest("noop", map[string]any{"result": i != 1}, nil))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.run(ctx); err != nil {
		t.Fatal(err)
	}
	if ctx.Err() != nil {
		t.Fatal("--once did not exit by itself")
	}
	for i, id := range ids {
		c := srv.completionsOf(id)
		want := map[bool]string{true: "success", false: "failure"}[i != 1]
		if len(c) != 1 || c[0].Result != want {
			t.Errorf("work request %d: completions %+v, want one %s", id, c, want)
		}
	}
}

func TestWorkerOnceNotEnabled(t *testing.T) {
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	w.once = true
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := w.run(ctx)
	if !errors.Is(err, errTokenDisabled) {
		t.Fatalf("run = %v, want %v", err, errTokenDisabled)
	}
}

// TestWorkerSignalDuringTask cancels the worker while its task uploads: the
// work request is abandoned without a result, and the next worker's
// get-next makes the server retry it.
func TestWorkerSignalDuringTask(t *testing.T) {
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv.stallArtifactCreation(cancel, 5*time.Second)
	id := srv.addWorkRequest("noop", map[string]any{"result": true}, nil)
	if err := w.run(ctx); err != nil {
		t.Fatalf("run after the signal = %v, want nil", err)
	}
	if c := srv.completionsOf(id); len(c) != 0 {
		t.Fatalf("an abandoned task reported %+v", c)
	}
	srv.hook = nil

	w2, _ := testWorker(t, srv)
	w2.tokenFile, w2.api.token = w.tokenFile, ""
	w2.once = true
	if err := w2.run(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	var statuses []string
	for _, wr := range srv.workReqs {
		statuses = append(statuses, wr.Status)
	}
	if !slices.Equal(statuses, []string{"aborted", "completed"}) {
		t.Errorf("work request statuses %v, want the first aborted and its retry completed", statuses)
	}
}

// TestWorkerCompletionKept: a result the server could not take survives a
// restart and is sent again byte for byte, before any new work is taken.
func TestWorkerCompletionKept(t *testing.T) {
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var attempts [][]byte
	srv.hook = func(rw http.ResponseWriter, r *http.Request) bool {
		if strings.HasSuffix(r.URL.Path, "/completed/") {
			b, _ := io.ReadAll(r.Body)
			mu.Lock()
			attempts = append(attempts, b)
			if len(attempts) == 3 {
				cancel()
			}
			mu.Unlock()
			problem(rw, 503, "Service Unavailable", "")
			return true
		}
		return false
	}
	id := srv.addWorkRequest("noop", map[string]any{"result": true}, nil)
	if err := w.run(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(w.pendingCompletionPath()); err != nil {
		t.Fatalf("the undelivered result was not kept: %v", err)
	}
	srv.hook = nil
	w.once = true
	if err := w.run(context.Background()); err != nil {
		t.Fatal(err)
	}
	c := srv.waitCompleted(t, id)
	for _, a := range attempts {
		if !bytes.Equal(a, c.Body) {
			t.Errorf("sent %s, then %s", a, c.Body)
		}
	}
	if _, err := os.Stat(w.pendingCompletionPath()); err == nil {
		t.Error("the delivered result is still kept")
	}
}

func TestNewAPIClientRefusesHTTP(t *testing.T) {
	for _, u := range []string{"http://debusine.example.org/api", "ws://x/api", "debusine.example.org/api"} {
		if _, err := newAPIClient(u, "", slog.Default()); err == nil || !strings.Contains(err.Error(), "https://") {
			t.Errorf("newAPIClient(%q) = %v", u, err)
		}
	}
	if _, err := newAPIClient("https://debusine.example.org/api", "/nonexistent/ca.pem", slog.Default()); err == nil {
		t.Error("a missing ca_file was accepted")
	}
}

// TestAPIClientVerifiesTLS: without ca_file, the fake's self-signed
// certificate is refused.
func TestAPIClientVerifiesTLS(t *testing.T) {
	srv := newFakeServer(t)
	api, err := newAPIClient(srv.apiURL(), "", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	api.retryFor = 0
	_, err = api.getNext(context.Background())
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("getNext with an unknown CA = %v", err)
	}
}

func TestCheckName(t *testing.T) {
	for _, n := range []string{"a.efi", "dir/b.efi", "x..y"} {
		if err := checkName(n); err != nil {
			t.Errorf("checkName(%q) = %v", n, err)
		}
	}
	for _, n := range []string{"", "/etc/passwd", "../x", "a/../../x", "a/..", "./a", "a//b", "a\\..\\b", "a\x00b", "a/"} {
		if err := checkName(n); err == nil {
			t.Errorf("checkName(%q) accepted", n)
		}
	}
}

// uploadTest creates an artifact with one file of size bytes through api,
// with small chunks, and returns the server's view.
func uploadTest(t *testing.T, srv *fakeServer, size int) (*fakeArtifact, []byte) {
	t.Helper()
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	w.api.token, _ = readSecret(w.tokenFile)
	w.api.chunkSize = 1000
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i * 7)
	}
	id, err := w.api.createArtifact(context.Background(), "debusine:test", "System", 0, map[string]any{}, []outFile{{Name: "dir/big file.bin", Data: data}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return srv.artifacts[id], data
}

func TestUploadResumesAfterDroppedConnection(t *testing.T) {
	srv := newFakeServer(t)
	chunks := 0
	srv.hook = func(rw http.ResponseWriter, r *http.Request) bool {
		if r.Method == "PUT" && strings.Contains(r.URL.Path, "/files/") && !strings.HasPrefix(r.Header.Get("Content-Range"), "bytes */") {
			chunks++
			if chunks == 3 {
				srv.dropResponse(rw, r)
				return true
			}
		}
		return false
	}
	a, data := uploadTest(t, srv, 4500)
	f := a.Files["dir/big file.bin"]
	if !f.complete || !bytes.Equal(f.content, data) {
		t.Fatalf("file complete=%v, %d bytes", f.complete, len(f.content))
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	var ranges []string
	for _, l := range srv.uploadLog {
		ranges = append(ranges, l[strings.Index(l, " bytes ")+1:])
	}
	// No probe before the first chunk; one after the dropped answer.
	want := []string{"bytes 0-999/4500", "bytes 1000-1999/4500", "bytes 2000-2999/4500",
		"bytes */4500", "bytes 3000-3999/4500", "bytes 4000-4499/4500"}
	if !slices.Equal(ranges, want) {
		t.Errorf("upload requests:\n%s\nwant\n%s", strings.Join(ranges, "\n"), strings.Join(want, "\n"))
	}
}

func TestUploadRestartsOnConflict(t *testing.T) {
	srv := newFakeServer(t)
	corrupted := false
	srv.hook = func(rw http.ResponseWriter, r *http.Request) bool {
		if !corrupted && r.Method == "PUT" && r.Header.Get("Content-Range") == "bytes 1000-1999/2500" {
			corrupted = true
			b, _ := io.ReadAll(r.Body)
			b[10] ^= 0xff
			r.Body = io.NopCloser(bytes.NewReader(b))
		}
		return false
	}
	a, data := uploadTest(t, srv, 2500)
	f := a.Files["dir/big file.bin"]
	if !f.complete || !bytes.Equal(f.content, data) {
		t.Fatalf("file complete=%v", f.complete)
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	n := 0
	for _, l := range srv.uploadLog {
		if strings.HasSuffix(l, " bytes 0-999/2500") {
			n++
		}
	}
	if n != 2 {
		t.Errorf("the upload started from 0 %d times, want 2 (a restart after 409):\n%s", n, strings.Join(srv.uploadLog, "\n"))
	}
}

func TestDownloadChecks(t *testing.T) {
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	w.api.token, _ = readSecret(w.tokenFile)
	content := []byte("hello")
	id := srv.addArtifact("debusine:signing-input", map[string]any{}, map[string][]byte{"a.efi": content})
	a, err := w.api.getArtifact(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	outside := t.TempDir()
	work := filepath.Join(outside, "work")
	os.Mkdir(work, 0o700)
	root, err := os.OpenRoot(work)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	fi := a.Files["a.efi"]
	if err := w.api.download(context.Background(), root, "sub/a.efi", fi); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(work, "sub/a.efi")); !bytes.Equal(b, content) {
		t.Errorf("downloaded %q", b)
	}

	bad := fi
	bad.Checksums = map[string]string{"sha256": hex.EncodeToString(make([]byte, 32))}
	err = w.api.download(context.Background(), root, "b.efi", bad)
	if err == nil || !strings.Contains(err.Error(), "sha256") {
		t.Errorf("download with a wrong sha256 = %v", err)
	}
	if _, err := os.Stat(filepath.Join(work, "b.efi")); err == nil {
		t.Error("a file with a wrong sha256 was kept")
	}

	for _, name := range []string{"../escape.efi", "/tmp/abs.efi", "sub/../../escape.efi"} {
		if err := w.api.download(context.Background(), root, name, fi); err == nil {
			t.Errorf("download to %q accepted", name)
		}
	}
	// A symbolic link planted in the work directory does not lead out of it.
	os.Symlink(outside, filepath.Join(work, "link"))
	if err := w.api.download(context.Background(), root, "link/escape.efi", fi); err == nil {
		t.Error("download through a symbolic link accepted")
	}
	entries, _ := os.ReadDir(outside)
	if len(entries) != 1 {
		t.Errorf("files written outside the work directory: %v", entries)
	}

	other := fi
	other.URL = "https://elsewhere.example.org/file"
	if err := w.api.download(context.Background(), root, "c.efi", other); err == nil || !strings.Contains(err.Error(), "is not on") {
		t.Errorf("download from another host = %v", err)
	}
}

func TestSigningTomlExampleWorker(t *testing.T) {
	cfg, err := loadConfig("signing.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Worker.APIURL != "https://debusine.example.org/api" || cfg.Worker.TokenFile == "" {
		t.Errorf("[worker] = %+v", cfg.Worker)
	}
}

// workerProcessEnv is a store whose configuration has a [worker] table for
// srv, with the token it returns (srv knows it and has enabled it), and
// the worker keys in extra: for tests that run the worker as a process.
func workerProcessEnv(t *testing.T, srv *fakeServer, extra string) (*testEnv, string) {
	t.Helper()
	te := newTestEnv(t)
	tok, err := newSecret()
	if err != nil {
		t.Fatal(err)
	}
	srv.addWorker(tok, true)
	tokenFile := filepath.Join(te.dir, "token")
	if err := os.WriteFile(tokenFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	te.writeConfig(t, fmt.Sprintf("database = \"signing.sqlite3\"\nservice_keys = [\"service-key\"]\n[worker]\napi_url = %q\ntoken_file = %q\nca_file = %q\n%s",
		srv.apiURL(), tokenFile, srv.caFile(te.dir), extra))
	return te, tok
}

// TestWorkerProcessSIGTERM runs `debusine-signing worker` as a process (this
// test binary, re-executed) and sends it SIGTERM in the middle of a task:
// it must exit 0 at once without reporting the task.
func TestWorkerProcessSIGTERM(t *testing.T) {
	if os.Getenv("DEBUSINE_SIGNING_WORKER_HELPER") != "" {
		return
	}
	srv := newFakeServer(t)
	te, tok := workerProcessEnv(t, srv, "log_level = \"debug\"\n")
	inTask := make(chan struct{})
	srv.stallArtifactCreation(func() { close(inTask) }, 10*time.Second)
	id := srv.addWorkRequest("noop", map[string]any{"result": true}, nil)

	cmd := exec.Command(os.Args[0], "-test.run=^TestWorkerProcessHelper$")
	cmd.Env = append(os.Environ(), "DEBUSINE_SIGNING_WORKER_HELPER=--config="+te.configPath)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-inTask:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("the task never started:\n%s", stderr.String())
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("worker exited with %v:\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("worker did not stop on SIGTERM:\n%s", stderr.String())
	}
	if c := srv.completionsOf(id); len(c) != 0 {
		t.Errorf("an abandoned task was reported: %+v", c)
	}
	if !strings.Contains(stderr.String(), "abandoned") {
		t.Errorf("no log of the abandoned task:\n%s", stderr.String())
	}
	if strings.Contains(stderr.String(), tok) {
		t.Error("the token was logged")
	}
}

// TestWorkerProcessHelper is the worker process of TestWorkerProcessSIGTERM.
func TestWorkerProcessHelper(t *testing.T) {
	arg := os.Getenv("DEBUSINE_SIGNING_WORKER_HELPER")
	if arg == "" {
		return // only run as TestWorkerProcessSIGTERM's subprocess
	}
	os.Exit(run([]string{arg, "worker"}, os.Stdout, os.Stderr))
}

// TestWorkerMetadataKeys: signing:keys lists the keys this worker can use;
// one on a hardware token that is not here is left out.
func TestWorkerMetadataKeys(t *testing.T) {
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	fpr, err := generateOpenPGPKey(w.st, "Archive", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, certPEM := testCertificate(t, "token key")
	if _, err := registerPKCS11Key(w.st, "pkcs11:serial=99999999;id=%02", certPEM, "on a YubiKey"); err != nil {
		t.Fatal(err)
	}
	md, err := w.metadata()
	if err != nil {
		t.Fatal(err)
	}
	if got := md["signing:keys"]; !slices.Equal(got.([]string), []string{"openpgp:" + fpr}) {
		t.Errorf("signing:keys = %v", got)
	}
}

// TestWorkerCommandConfiguration checks the worker command refuses to start
// without what it needs, in one line, exit 3.
func TestWorkerCommandConfiguration(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", t.TempDir())
	t.Setenv("DEBUSINE_SIGNING_CONFIG", "")
	var out, errOut bytes.Buffer
	if status := run([]string{"worker", "--once"}, &out, &errOut); status != exitError || !strings.Contains(errOut.String(), "the worker needs a configuration file") {
		t.Errorf("no configuration file: exit %d %q", status, errOut.String())
	}
	te := newTestEnv(t)
	for _, tc := range []struct{ table, want string }{
		{"", "needs [worker] api_url and token_file"},
		{"[worker]\napi_url = \"http://debusine.example.org/api\"\ntoken_file = \"token\"\n", "https"},
		{"trusted_certs = [\"nothex\"]\n[worker]\napi_url = \"https://debusine.example.org/api\"\ntoken_file = \"token\"\n", "not a SHA-256 fingerprint"},
	} {
		te.writeConfig(t, "database = \"signing.sqlite3\"\nservice_keys = [\"service-key\"]\n"+tc.table)
		status, _, stderr := te.run(t, "worker", "--once")
		if status != exitError || !strings.Contains(stderr, tc.want) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%q: exit %d %q, want exit 3 and one line with %q", tc.table, status, stderr, tc.want)
		}
	}
}
