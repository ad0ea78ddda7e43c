package main

// The worker's HTTP against a hostile or broken server: redirects that
// would carry the Token away, answers that stall, a WebSocket that dies
// quietly, and get-next answers the worker cannot read.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// tokenSink is a server on another origin that records the Token header
// of every request it gets ("" when there was none) and answers with
// answer.
type tokenSink struct {
	srv    *httptest.Server
	mu     sync.Mutex
	tokens []string
}

func newTokenSink(t *testing.T, tls bool, answer http.HandlerFunc) *tokenSink {
	s := &tokenSink{}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.tokens = append(s.tokens, r.Header.Get("Token"))
		s.mu.Unlock()
		answer(w, r)
	})
	if tls {
		s.srv = httptest.NewTLSServer(h)
	} else {
		s.srv = httptest.NewServer(h)
	}
	t.Cleanup(s.srv.Close)
	return s
}

func (s *tokenSink) got() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.tokens)
}

// TestRedirectsCarryNoToken: a 302 to another port, a 307 to http://, and a
// download redirected to a storage server: the Token reaches none of them,
// the http one gets no request at all, and a redirect on the server's own
// origin keeps the Token (the server still authenticates the call).
func TestRedirectsCarryNoToken(t *testing.T) {
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	w.api.token, _ = readSecret(w.tokenFile)
	content := []byte("an EFI image")
	id := srv.addArtifact("debusine:signing-input", map[string]any{}, map[string][]byte{"a.efi": content})
	srv.mu.Lock()
	artifactJSON, _ := json.Marshal(srv.artifactJSON(srv.artifacts[id]))
	srv.mu.Unlock()
	other := newTokenSink(t, true, func(rw http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/storage/") {
			rw.Write(content)
			return
		}
		rw.Header().Set("Content-Type", "application/json")
		rw.Write(artifactJSON)
	})
	plain := newTokenSink(t, false, func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Type", "application/json")
		rw.Write(artifactJSON)
	})
	artifactPath := fmt.Sprintf("/api/1.0/artifact/%d/", id)
	var redirect atomic.Value
	var sameOrigin atomic.Bool
	srv.hook = func(rw http.ResponseWriter, r *http.Request) bool {
		switch {
		case r.URL.Path == artifactPath && r.URL.RawQuery == "" && sameOrigin.Load():
			http.Redirect(rw, r, artifactPath+"?again=1", http.StatusFound)
			return true
		case r.URL.Path == artifactPath && r.URL.RawQuery == "":
			code, to := redirect.Load().([2]string)[0], redirect.Load().([2]string)[1]
			n, _ := strconv.Atoi(code)
			http.Redirect(rw, r, to, n)
			return true
		case strings.Contains(r.URL.Path, "/download/"):
			http.Redirect(rw, r, other.srv.URL+"/storage/a.efi", http.StatusFound)
			return true
		}
		return false
	}
	ctx := context.Background()

	redirect.Store([2]string{"302", other.srv.URL + "/elsewhere/"})
	a, err := w.api.getArtifact(ctx, id)
	if err != nil {
		t.Fatalf("302 to another port: %v", err)
	}
	if got := other.got(); len(got) != 1 || got[0] != "" {
		t.Errorf("302 to another port: the other origin got Token %q", got)
	}

	redirect.Store([2]string{"307", plain.srv.URL + "/cleartext/"})
	if _, err := w.api.getArtifact(ctx, id); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("307 to http:// = %v, want a refused redirect", err)
	}
	if got := plain.got(); len(got) != 0 {
		t.Errorf("307 to http://: the cleartext server got %d requests, Token %q", len(got), got)
	}

	root, err := os.OpenRoot(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if err := w.api.download(ctx, root, "a.efi", a.Files["a.efi"]); err != nil {
		t.Fatalf("download redirected to storage: %v", err)
	}
	if got := other.got(); len(got) != 2 || got[1] != "" {
		t.Errorf("download redirected to storage: the storage server got Token %q", got)
	}

	sameOrigin.Store(true)
	if _, err := w.api.getArtifact(ctx, id); err != nil {
		t.Errorf("a redirect on the server's own origin lost the Token: %v", err)
	}
}

// TestOrigin: the origin the Token is bound to does not depend on how a URL
// spells it.
func TestOrigin(t *testing.T) {
	for in, want := range map[string]string{
		"https://Debusine.Example.org/api":       "https://debusine.example.org",
		"https://debusine.example.org:443/x":     "https://debusine.example.org",
		"https://debusine.example.org:8443/x":    "https://debusine.example.org:8443",
		"http://debusine.example.org:80/x":       "http://debusine.example.org",
		"https://[::1]:443/x":                    "https://[::1]",
		"https://[::1]:8443/x":                   "https://[::1]:8443",
		"https://user@debusine.example.org/x":    "https://debusine.example.org",
		"https://debusine.example.org.evil.com/": "https://debusine.example.org.evil.com",
	} {
		u, err := url.Parse(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := origin(u); got != want {
			t.Errorf("origin(%s) = %s, want %s", in, got, want)
		}
	}
}

// stall answers r as the server would, but stops after half of the body
// (or, with headersToo, before the headers) until the client gives up, or
// for at most limit; it says whether the client gave up.
func stall(srv *fakeServer, rw http.ResponseWriter, r *http.Request, headersToo bool, limit time.Duration) bool {
	// Read the request first: the server notices a client that gives up
	// only once it has.
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	if !headersToo {
		rec := httptest.NewRecorder()
		srv.handle(rec, r)
		for k, v := range rec.Header() {
			rw.Header()[k] = v
		}
		rw.Header().Set("Content-Length", strconv.Itoa(rec.Body.Len()))
		rw.WriteHeader(rec.Code)
		rw.Write(rec.Body.Bytes()[:rec.Body.Len()/2])
		http.NewResponseController(rw).Flush()
	}
	select {
	case <-r.Context().Done():
		return true
	case <-time.After(limit):
		return false
	}
}

// TestWorkerStalledAnswersRetried: an artifact description and a download
// whose bodies stop half-way, and a permission check answered with no
// headers at all, are each abandoned once nothing moved for the idle
// deadline (or no headers came within the header deadline), logged and
// retried, and the task succeeds.
func TestWorkerStalledAnswersRetried(t *testing.T) {
	srv := newFakeServer(t)
	w, logs := testWorker(t, srv)
	registered(t, srv, w)
	w.api.idle, w.api.header = 100*time.Millisecond, 200*time.Millisecond
	k := signSetup(t, srv, w)
	in := srv.addArtifact("debusine:signing-input", map[string]any{}, map[string][]byte{"a.txt": []byte(strings.Repeat("signed text\n", 1000))})
	id := srv.addWorkRequest("sign", map[string]any{"purpose": "openpgp", "unsigned": "x", "key": k.Fingerprint},
		map[string]any{"unsigned_ids": []int64{in}})
	var mu sync.Mutex
	stalled := map[string]bool{} // the kinds stalled once, true when the worker gave up
	srv.hook = func(rw http.ResponseWriter, r *http.Request) bool {
		kind := ""
		switch {
		case r.Method == "GET" && r.URL.Path == fmt.Sprintf("/api/1.0/artifact/%d/", in):
			kind = "artifact"
		case r.Method == "GET" && strings.Contains(r.URL.Path, "/download/"):
			kind = "download"
		case r.Method == "POST" && strings.HasSuffix(r.URL.Path, "/sign_with/"):
			kind = "permission"
		default:
			return false
		}
		mu.Lock()
		_, done := stalled[kind]
		if !done {
			stalled[kind] = false
		}
		mu.Unlock()
		if done {
			return false
		}
		gaveUp := stall(srv, rw, r, kind == "permission", 5*time.Second)
		mu.Lock()
		stalled[kind] = gaveUp
		mu.Unlock()
		return true
	}
	runOnce(t, w)
	if c := srv.waitCompleted(t, id); c.Result != "success" {
		t.Errorf("result %s:\n%s", c.Result, logs)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, kind := range []string{"artifact", "download", "permission"} {
		if gaveUp, ok := stalled[kind]; !ok || !gaveUp {
			t.Errorf("%s: stalled %v, the worker gave up %v (it waited for the server to give up)", kind, ok, gaveUp)
		}
	}
	if n := strings.Count(logs.String(), "stalled: nothing moved"); n < 3 {
		t.Errorf("%d stalls logged, want 3:\n%s", n, logs)
	}
}

// TestWorkerWebSocketDeadNoticed: a WebSocket whose server stops reading
// (so no pong comes back) is dropped and opened again within two ping
// periods; on the new connection, the server's own pings are answered.
func TestWorkerWebSocketDeadNoticed(t *testing.T) {
	srv := newFakeServer(t)
	w, logs := testWorker(t, srv)
	registered(t, srv, w)
	w.wsPingEvery = 50 * time.Millisecond
	var conns atomic.Int32
	pong := make(chan error, 1)
	testDone := make(chan struct{})
	t.Cleanup(func() { close(testDone) })
	srv.hook = func(rw http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/api/ws/1.0/worker/connect/" {
			return false
		}
		c, err := websocket.Accept(rw, r, nil)
		if err != nil {
			return true
		}
		defer c.CloseNow()
		if conns.Add(1) == 1 {
			// Dead: never read, so the worker's pings go unanswered.
			<-testDone
			return true
		}
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			pong <- c.Ping(ctx)
		}()
		for {
			if _, _, err := c.Read(context.Background()); err != nil {
				return true
			}
		}
	}
	stop := start(t, w)
	defer stop()
	deadline := time.After(10 * time.Second)
	select {
	case err := <-pong:
		if err != nil {
			t.Errorf("the server's ping on the new connection: %v", err)
		}
	case <-deadline:
		t.Fatalf("no new WebSocket after the dead one (%d connections):\n%s", conns.Load(), logs)
	}
	if !strings.Contains(logs.String(), "WebSocket ping unanswered, reconnecting") {
		t.Errorf("the dead connection is not logged:\n%s", logs)
	}
}

// TestWorkerUnreadableWorkRequest: a get-next answer over 16 MiB, or broken,
// does not wedge the worker. When its id comes first, the work request is
// completed as an error saying why; when it does not, the next get-next
// aborts it on the server. Either way the next work request runs.
func TestWorkerUnreadableWorkRequest(t *testing.T) {
	huge := strings.Repeat("p", maxJSONBody)
	for _, tc := range []struct {
		name   string
		answer func(id int64) string
		want   string // in the error completion; "" when the id cannot be read
	}{
		{"huge, id first", func(id int64) string {
			return fmt.Sprintf(`{"id": %d, "task_name": "sign", "dynamic_task_data": {"unsigned_binary_package_names": ["%s"]}}`, id, huge)
		}, "larger than 16 MiB"},
		{"broken, id first", func(id int64) string {
			return fmt.Sprintf(`{"id": %d, "task_name": "noop", "task_data": {"result": tru`, id)
		}, "could not be read by the signing worker"},
		{"huge, id last", func(id int64) string {
			return fmt.Sprintf(`{"task_name": "sign", "dynamic_task_data": {"x": "%s"}, "id": %d}`, huge, id)
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newFakeServer(t)
			w, logs := testWorker(t, srv)
			registered(t, srv, w)
			bad := srv.addWorkRequest("noop", map[string]any{"result": true}, nil)
			next := srv.addWorkRequest("noop", map[string]any{"result": true}, nil)
			var mu sync.Mutex
			served := false
			srv.hook = func(rw http.ResponseWriter, r *http.Request) bool {
				mu.Lock()
				defer mu.Unlock()
				if served || r.URL.Path != "/api/1.0/work-request/get-next-for-worker/" {
					return false
				}
				// The server hands out bad (and marks it running); the
				// worker gets an answer it cannot read.
				rec := httptest.NewRecorder()
				srv.handle(rec, r)
				if rec.Code != http.StatusOK {
					rw.WriteHeader(rec.Code)
					return true
				}
				served = true
				rw.Header().Set("Content-Type", "application/json")
				fmt.Fprint(rw, tc.answer(bad))
				return true
			}
			runOnce(t, w)
			if c := srv.waitCompleted(t, next); c.Result != "success" {
				t.Errorf("the next work request: %s", c.Result)
			}
			srv.mu.Lock()
			status := srv.workRequestByID(bad).Status
			srv.mu.Unlock()
			if tc.want == "" {
				if status != "aborted" || len(srv.completionsOf(bad)) != 0 {
					t.Errorf("the unreadable work request: %s, completions %v; want aborted by the next get-next", status, srv.completionsOf(bad))
				}
				if !strings.Contains(logs.String(), "without a readable id") {
					t.Errorf("not logged:\n%.2000s", logs)
				}
				return
			}
			c := srv.waitCompleted(t, bad)
			var body completion
			json.Unmarshal(c.Body, &body)
			if body.Result != "error" || body.OutputData == nil || len(body.OutputData.Errors) != 1 ||
				body.OutputData.Errors[0].Code != "configure-failed" || !strings.Contains(body.OutputData.Errors[0].Message, tc.want) {
				t.Errorf("the unreadable work request's completion: %s", c.Body)
			}
		})
	}
}

// FuzzLeadingID: reading the id from the start of an answer never fails
// another way than with 0, and never finds an id in a cut answer that the
// whole answer does not have.
func FuzzLeadingID(f *testing.F) {
	f.Add([]byte(`{"id": 12, "x": "y"}`), 5)
	f.Add([]byte(`{"x": {"a": [1, 2]}, "id": 7}`), 20)
	f.Add([]byte(`{"id": "12"}`), 3)
	f.Fuzz(func(t *testing.T, data []byte, cut int) {
		whole := leadingID(data)
		if whole < 0 {
			t.Fatalf("leadingID = %d", whole)
		}
		if cut < 0 || cut > len(data) {
			return
		}
		if part := leadingID(data[:cut]); part != 0 && part != whole {
			t.Fatalf("leadingID of %q = %d, of its start %q = %d", data, whole, data[:cut], part)
		}
	})
}
