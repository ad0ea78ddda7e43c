package main

// A fake Debusine server that follows docs/protocol.md to the letter (status
// codes, problem+json errors, the upload Range quirk, 403 while disabled,
// TOKEN_DISABLED on the WebSocket, scheduling on the dynamic metadata) and
// records everything the worker sent, so that tests can assert on it.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

type fakeFile struct {
	Size        int64
	SHA256      string
	ContentType *string
	content     []byte // what was received (uploads) or served (inputs)
	complete    bool
}

type fakeArtifact struct {
	ID          int64
	Category    string
	Workspace   string
	Data        json.RawMessage
	Files       map[string]*fakeFile
	WorkRequest int64
}

type fakeWorkRequest struct {
	ID              int64
	TaskType        string
	TaskName        string
	TaskData        json.RawMessage
	DynamicTaskData json.RawMessage
	Workspace       string
	CreatedBy       int64
	Status          string // pending, running, completed, aborted
	Worker          string // token hash of the assigned worker
}

type fakeWorker struct {
	ID         int64
	Name       string
	FQDN       string
	WorkerType string
	Enabled    bool
	Metadata   map[string]any
	conns      []*websocket.Conn
}

type fakeRelation struct {
	Artifact, Target int64
	Type             string
}

type fakeRegistration struct {
	Token, FQDN, WorkerType, ActivationToken string
}

type fakeCompletion struct {
	WorkRequest int64
	Body        json.RawMessage
	Result      string
}

type fakePermissionCheck struct {
	Slug        string
	Permission  string
	ArtifactID  int64
	WorkRequest int64
	Workspace   string
}

// fakeServer is the fake. Lock mu to read its records.
type fakeServer struct {
	t   testing.TB
	srv *httptest.Server
	mu  sync.Mutex

	workers     map[string]*fakeWorker // by sha256(token) hex
	activation  map[string]string      // activation token -> worker name
	workReqs    []*fakeWorkRequest
	artifacts   map[int64]*fakeArtifact
	assets      map[string]json.RawMessage // "purpose:fingerprint" -> data
	nextID      int64
	relations   []fakeRelation
	registered  []fakeRegistration
	completions []fakeCompletion
	permChecks  []fakePermissionCheck
	requests    []string // "METHOD path" of every HTTP request
	uploadLog   []string // "artifact/path Content-Range" of every upload PUT

	// denied lists asset slugs whose sign_with check answers false.
	denied map[string]bool
	// hook, when set, sees each request first and may answer it itself
	// (return true), e.g. with a 500 or a dropped connection.
	hook func(w http.ResponseWriter, r *http.Request) bool
	// latency delays every answer, as a server across a real network does
	// (round trip, TLS, the application server's own time).
	latency time.Duration
}

func newFakeServer(t testing.TB) *fakeServer {
	s := &fakeServer{t: t, workers: map[string]*fakeWorker{}, activation: map[string]string{},
		artifacts: map[int64]*fakeArtifact{}, assets: map[string]json.RawMessage{}, denied: map[string]bool{}, nextID: 900}
	s.srv = httptest.NewTLSServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.close)
	return s
}

func (s *fakeServer) close() {
	s.mu.Lock()
	for _, w := range s.workers {
		for _, c := range w.conns {
			c.CloseNow()
		}
	}
	s.mu.Unlock()
	s.srv.Close()
}

// apiURL is the worker's api_url.
func (s *fakeServer) apiURL() string { return s.srv.URL + "/api" }

// caFile writes the server's certificate where the worker's ca_file reads it.
func (s *fakeServer) caFile(dir string) string {
	p := filepath.Join(dir, "ca.pem")
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.srv.Certificate().Raw})
	if err := os.WriteFile(p, b, 0o644); err != nil {
		s.t.Fatal(err)
	}
	return p
}

func hashToken(tok string) string {
	h := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(h[:])
}

func problem(w http.ResponseWriter, status int, title, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	m := map[string]any{"title": title}
	if detail != "" {
		m["detail"] = detail
	}
	json.NewEncoder(w).Encode(m)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// worker returns the enabled worker owning the request's token (mu held).
func (s *fakeServer) worker(r *http.Request) (*fakeWorker, string) {
	h := hashToken(r.Header.Get("Token"))
	if w := s.workers[h]; w != nil && w.Enabled {
		return w, h
	}
	return nil, ""
}

// addWorker creates a worker with a known token (as if registered earlier).
func (s *fakeServer) addWorker(token string, enabled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.workers[hashToken(token)] = &fakeWorker{ID: s.newID(), Name: "signing-test", WorkerType: "signing", Enabled: enabled}
}

// enable enables every registered worker, as debusine-admin worker enable.
func (s *fakeServer) enable() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.workers {
		w.Enabled = true
	}
}

// disconnect closes every worker's WebSocket with TOKEN_DISABLED, as when an
// admin disables a worker (enabled says whether it stays enabled).
func (s *fakeServer) disconnect(enabled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for h, w := range s.workers {
		w.Enabled = enabled
		for _, c := range w.conns {
			msg, _ := json.Marshal(map[string]string{"type": "connection_closed", "reason": fmt.Sprintf("Token has been disabled (token hash: %q)", h), "reason_code": "TOKEN_DISABLED"})
			c.Write(context.Background(), websocket.MessageText, msg)
			c.Close(websocket.StatusNormalClosure, "")
		}
		w.conns = nil
	}
}

func (s *fakeServer) newID() int64 {
	s.nextID++
	return s.nextID
}

// addWorkRequest queues a Signing work request and schedules it.
func (s *fakeServer) addWorkRequest(taskName string, taskData, dynamic any) int64 {
	td, _ := json.Marshal(taskData)
	dd, _ := json.Marshal(dynamic)
	s.mu.Lock()
	defer s.mu.Unlock()
	wr := &fakeWorkRequest{ID: s.newID(), TaskType: "Signing", TaskName: taskName, TaskData: td, DynamicTaskData: dd,
		Workspace: "System", CreatedBy: 5, Status: "pending"}
	s.workReqs = append(s.workReqs, wr)
	s.schedule()
	return wr.ID
}

// addArtifact stores an input artifact with its files' contents.
func (s *fakeServer) addArtifact(category string, data any, files map[string][]byte) int64 {
	d, _ := json.Marshal(data)
	s.mu.Lock()
	defer s.mu.Unlock()
	a := &fakeArtifact{ID: s.newID(), Category: category, Workspace: "System", Data: d, Files: map[string]*fakeFile{}}
	for name, b := range files {
		h := sha256.Sum256(b)
		ct := "application/octet-stream"
		a.Files[name] = &fakeFile{Size: int64(len(b)), SHA256: hex.EncodeToString(h[:]), ContentType: &ct, content: b, complete: true}
	}
	s.artifacts[a.ID] = a
	return a.ID
}

// addSigningKeyAsset makes a debusine:signing-key asset exist (for permission checks).
func (s *fakeServer) addSigningKeyAsset(purpose, fingerprint string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.assets[purpose+":"+fingerprint] = json.RawMessage(`{}`)
}

// taskVersion is the server's TASK_VERSION of each signing task.
var taskVersion = map[string]any{"noop": 1.0, "generatekey": nil, "sign": 1.0, "debsign": 1.0, "signrepositoryindex": 1.0}

// canRunOn is the scheduler's check of a worker's metadata (docs/protocol.md §1.3).
func canRunOn(md map[string]any, wr *fakeWorkRequest) bool {
	if md["system:worker_type"] != "signing" || wr.TaskType != "Signing" {
		return false
	}
	name := strings.ToLower(wr.TaskName)
	want, known := taskVersion[name]
	if !known {
		return false
	}
	got, present := md["signing:"+name+":version"]
	if want == nil {
		if present && got != nil {
			return false
		}
	} else if got != want {
		return false
	}
	if host, ok := md["system:host_architecture"]; ok {
		archs, _ := md["system:architectures"].([]any)
		if !slices.Contains(archs, host) {
			return false
		}
	}
	var td struct {
		Purpose string `json:"purpose"`
	}
	json.Unmarshal(wr.TaskData, &td)
	if name == "sign" && td.Purpose == "uefi" && md["signing:sign:available:uefi"] != true {
		return false
	}
	if name == "debsign" && md["signing:debsign:available"] != true {
		return false
	}
	return true
}

// schedule assigns pending work to connected workers and notifies them (mu
// held). As the real scheduler, it gives a worker (concurrency 1) a work
// request only while it has none pending or running.
func (s *fakeServer) schedule() {
	busy := map[string]bool{}
	for _, wr := range s.workReqs {
		if wr.Worker != "" && (wr.Status == "pending" || wr.Status == "running") {
			busy[wr.Worker] = true
		}
	}
	for _, wr := range s.workReqs {
		if wr.Status != "pending" || wr.Worker != "" {
			continue
		}
		for h, w := range s.workers {
			if !busy[h] && w.Enabled && w.Metadata != nil && len(w.conns) > 0 && canRunOn(w.Metadata, wr) {
				busy[h] = true
				wr.Worker = h
				s.notify(w, "work_request_available")
				break
			}
		}
	}
}

func (s *fakeServer) notify(w *fakeWorker, text string) {
	msg, _ := json.Marshal(map[string]string{"type": "websocket.send", "text": text})
	for _, c := range w.conns {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c.Write(ctx, websocket.MessageText, msg)
		cancel()
	}
}

var (
	reWorkReq    = regexp.MustCompile(`^/api/1\.0/work-request/(\d+)/$`)
	reCompleted  = regexp.MustCompile(`^/api/1\.0/work-request/(\d+)/completed/$`)
	reArtifact   = regexp.MustCompile(`^/api/1\.0/artifact/(\d+)/$`)
	reUpload     = regexp.MustCompile(`^/api/1\.0/artifact/(\d+)/files/(.+)/$`)
	reDownload   = regexp.MustCompile(`^/debusine/System/artifact/(\d+)/download/(.+)$`)
	rePermission = regexp.MustCompile(`^/api/1\.0/asset/([^/]+)/([^/]+)/([^/]+)/$`)
	reHex64      = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

func (s *fakeServer) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests = append(s.requests, r.Method+" "+r.URL.Path)
	hook, latency := s.hook, s.latency
	s.mu.Unlock()
	time.Sleep(latency)
	if hook != nil && hook(w, r) {
		return
	}
	s.handle(w, r)
}

// handle answers r as the real server would.
func (s *fakeServer) handle(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/api/ws/1.0/worker/connect/" {
		s.serveWebSocket(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	defer s.mu.Unlock()
	p := r.URL.EscapedPath()
	switch {
	case r.Method == "POST" && p == "/api/1.0/worker/register/":
		s.register(w, r, body)
	case r.Method == "PUT" && p == "/api/1.0/worker/dynamic-metadata/":
		wk, _ := s.worker(r)
		if wk == nil {
			problem(w, 403, "You do not have permission to perform this action.", "")
			return
		}
		var md map[string]any
		if err := json.Unmarshal(body, &md); err != nil {
			problem(w, 400, "Error", err.Error())
			return
		}
		wk.Metadata = md
		w.WriteHeader(204)
		s.schedule()
	case r.Method == "GET" && p == "/api/1.0/whoami/":
		// Anonymous without a token; a token that is no enabled worker's
		// is refused as the worker endpoints refuse it.
		if r.Header.Get("Token") == "" {
			writeJSON(w, 200, map[string]any{"user": "<anonymous>", "auth": false, "worker_token": false})
		} else if wk, _ := s.worker(r); wk == nil {
			problem(w, 403, "You do not have permission to perform this action.", "")
		} else {
			writeJSON(w, 200, map[string]any{"user": "<anonymous>", "auth": true, "worker_token": true})
		}
	case r.Method == "GET" && p == "/api/1.0/work-request/get-next-for-worker/":
		s.getNext(w, r)
	case r.Method == "GET" && reWorkReq.MatchString(p):
		s.workRequest(w, r, reWorkReq.FindStringSubmatch(p))
	case r.Method == "PUT" && reCompleted.MatchString(p):
		s.completed(w, r, body, reCompleted.FindStringSubmatch(p))
	case r.Method == "GET" && reArtifact.MatchString(p):
		if wk, _ := s.worker(r); wk == nil {
			problem(w, 403, "You do not have permission to perform this action.", "")
			return
		}
		id, _ := strconv.ParseInt(reArtifact.FindStringSubmatch(p)[1], 10, 64)
		a := s.artifacts[id]
		if a == nil {
			problem(w, 404, "No Artifact matches the given query.", "")
			return
		}
		writeJSON(w, 200, s.artifactJSON(a))
	case r.Method == "GET" && reDownload.MatchString(p):
		s.download(w, r, reDownload.FindStringSubmatch(p))
	case r.Method == "POST" && p == "/api/1.0/artifact/":
		s.createArtifact(w, r, body)
	case r.Method == "PUT" && reUpload.MatchString(p):
		s.upload(w, r, body, reUpload.FindStringSubmatch(p))
	case r.Method == "POST" && p == "/api/1.0/artifact-relation/":
		s.relation(w, body)
	case r.Method == "POST" && p == "/api/1.0/asset/":
		s.createAsset(w, r, body)
	case r.Method == "POST" && rePermission.MatchString(p):
		s.permission(w, body, rePermission.FindStringSubmatch(p))
	default:
		problem(w, 404, "Not found", r.Method+" "+p)
	}
}

func (s *fakeServer) register(w http.ResponseWriter, r *http.Request, body []byte) {
	var req struct {
		Token      string `json:"token"`
		FQDN       string `json:"fqdn"`
		WorkerType string `json:"worker_type"`
	}
	if err := json.Unmarshal(body, &req); err != nil || len(req.Token) > 64 || req.Token == "" || len(req.FQDN) > 400 ||
		!slices.Contains([]string{"external", "celery", "signing"}, req.WorkerType) {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(400)
		json.NewEncoder(w).Encode(map[string]any{"title": "Cannot deserialize worker", "validation_errors": map[string]any{"token": []string{"invalid"}}})
		return
	}
	act := r.Header.Get("Token")
	s.registered = append(s.registered, fakeRegistration{Token: req.Token, FQDN: req.FQDN, WorkerType: req.WorkerType, ActivationToken: act})
	h := hashToken(req.Token)
	if s.workers[h] != nil {
		problem(w, 400, "Error", "token already registered")
		return
	}
	if name, ok := s.activation[act]; ok {
		delete(s.activation, act)
		s.workers[h] = &fakeWorker{ID: s.newID(), Name: name, FQDN: req.FQDN, WorkerType: "signing", Enabled: true}
	} else {
		s.workers[h] = &fakeWorker{ID: s.newID(), Name: strings.ReplaceAll(req.FQDN, ".", "-"), FQDN: req.FQDN, WorkerType: req.WorkerType}
	}
	w.WriteHeader(201)
}

func (s *fakeServer) getNext(w http.ResponseWriter, r *http.Request) {
	wk, h := s.worker(r)
	if wk == nil {
		problem(w, 403, "You do not have permission to perform this action.", "")
		return
	}
	// What the server believes this worker runs is aborted and retried.
	for _, wr := range slices.Clone(s.workReqs) {
		if wr.Worker == h && wr.Status == "running" {
			wr.Status = "aborted"
			retry := *wr
			retry.ID, retry.Status, retry.Worker = s.newID(), "pending", ""
			s.workReqs = append(s.workReqs, &retry)
		}
	}
	s.schedule()
	for _, wr := range s.workReqs {
		if wr.Worker == h && wr.Status == "pending" {
			wr.Status = "running"
			var dyn any
			json.Unmarshal(wr.DynamicTaskData, &dyn)
			writeJSON(w, 200, map[string]any{
				"id": wr.ID, "url": fmt.Sprintf("/debusine/System/work-request/%d/", wr.ID), "task_name": wr.TaskName,
				"created_at": "2025-03-01T10:00:00.123456Z", "created_by": wr.CreatedBy, "aborted_by": nil,
				"started_at": nil, "completed_at": nil, "duration": nil, "worker": wk.ID, "task_type": wr.TaskType,
				"task_data": wr.TaskData, "dynamic_task_data": dyn, "priority_base": 0, "priority_adjustment": 0,
				"workflow_data": map[string]any{}, "event_reactions": map[string]any{}, "status": "pending",
				"result": "", "artifacts": []int{}, "scope": "debusine", "workspace": wr.Workspace,
			})
			return
		}
	}
	w.WriteHeader(204)
}

// workRequest answers GET work-request/{id}/ with the fields of a work
// request the worker reads (any enabled worker may read any).
func (s *fakeServer) workRequest(w http.ResponseWriter, r *http.Request, m []string) {
	if wk, _ := s.worker(r); wk == nil {
		problem(w, 403, "You do not have permission to perform this action.", "")
		return
	}
	id, _ := strconv.ParseInt(m[1], 10, 64)
	wr := s.workRequestByID(id)
	if wr == nil {
		problem(w, 404, "No WorkRequest matches the given query.", "")
		return
	}
	var worker any
	for h, wk := range s.workers {
		if h == wr.Worker {
			worker = wk.ID
		}
	}
	writeJSON(w, 200, map[string]any{"id": wr.ID, "task_name": wr.TaskName, "task_type": wr.TaskType, "status": wr.Status,
		"worker": worker, "workspace": wr.Workspace, "scope": "debusine", "task_data": wr.TaskData})
}

func (s *fakeServer) workRequestByID(id int64) *fakeWorkRequest {
	for _, x := range s.workReqs {
		if x.ID == id {
			return x
		}
	}
	return nil
}

// abort aborts work request id as an administrator does in Debusine: the
// status becomes aborted and the worker is unassigned, without a word to
// the worker (mu held).
func (s *fakeServer) abort(id int64) {
	wr := s.workRequestByID(id)
	wr.Status, wr.Worker = "aborted", ""
}

func (s *fakeServer) completed(w http.ResponseWriter, r *http.Request, body []byte, m []string) {
	_, h := s.worker(r)
	if h == "" {
		problem(w, 403, "You do not have permission to perform this action.", "")
		return
	}
	id, _ := strconv.ParseInt(m[1], 10, 64)
	var wr *fakeWorkRequest
	for _, x := range s.workReqs {
		if x.ID == id {
			wr = x
		}
	}
	if wr == nil {
		problem(w, 404, "Work request not found", "")
		return
	}
	if wr.Worker != h {
		problem(w, 401, "Invalid worker to update the work request", "")
		return
	}
	var c struct {
		Result     string                     `json:"result"`
		OutputData map[string]json.RawMessage `json:"output_data"`
	}
	if err := json.Unmarshal(body, &c); err != nil || !slices.Contains([]string{"success", "failure", "error", "skipped"}, c.Result) {
		problem(w, 400, "Cannot change work request as completed", "bad result")
		return
	}
	for k := range c.OutputData {
		if !slices.Contains([]string{"runtime_statistics", "errors", "skip_reason", "regression_analysis"}, k) {
			problem(w, 400, "Cannot change work request as completed", "extra key "+k)
			return
		}
	}
	s.completions = append(s.completions, fakeCompletion{WorkRequest: id, Body: body, Result: c.Result})
	if wr.Status == "pending" || wr.Status == "running" {
		wr.Status = "completed"
	}
	w.WriteHeader(200)
}

func (s *fakeServer) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	s.mu.Lock()
	wk, _ := s.worker(r)
	if wk == nil {
		s.mu.Unlock()
		msg, _ := json.Marshal(map[string]string{"type": "connection_rejected",
			"reason": "No token header, token not associated to a worker or not enabled", "reason_code": "TOKEN_DISABLED"})
		c.Write(r.Context(), websocket.MessageText, msg)
		c.Close(websocket.StatusNormalClosure, "")
		return
	}
	wk.conns = append(wk.conns, c)
	for _, text := range []string{"request_dynamic_metadata", "connected"} {
		msg, _ := json.Marshal(map[string]string{"type": "websocket.send", "text": text})
		c.Write(r.Context(), websocket.MessageText, msg)
	}
	s.schedule()
	_, h := s.worker(r)
	for _, wr := range s.workReqs {
		if wr.Worker == h && (wr.Status == "pending" || wr.Status == "running") {
			s.notify(wk, "work_request_available")
			break
		}
	}
	s.mu.Unlock()
	// The worker sends nothing; reading answers its pings until it goes.
	for {
		if _, _, err := c.Read(context.Background()); err != nil {
			break
		}
	}
	s.mu.Lock()
	for _, x := range s.workers {
		x.conns = slices.DeleteFunc(x.conns, func(y *websocket.Conn) bool { return y == c })
	}
	s.mu.Unlock()
}

// dropResponse lets the real handler process the request, then closes the
// connection without sending its answer: the server acted, the client
// never learnt it.
func (s *fakeServer) dropResponse(w http.ResponseWriter, r *http.Request) {
	s.handle(httptest.NewRecorder(), r)
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		s.t.Errorf("hijack: %v", err)
		return
	}
	conn.Close()
}
