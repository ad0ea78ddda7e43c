package main

// The HTTP side of the worker <-> server protocol (docs/protocol.md §1–§4): one
// client (httpclient.go), every call retried on connection errors, stalls
// and 5xx (with exponential backoff, for [worker] retry_for), a few calls in
// flight at a time, RFC 7807 errors turned into Go errors, resumable uploads
// and hash-checked downloads.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// maxChunk is the largest upload chunk: the reference client's 50 MiB, well
// under the 100M body limit of Debusine's sample nginx configuration.
const maxChunk = 50 << 20

// maxJSONBody bounds the API responses read into memory.
const maxJSONBody = 16 << 20

// defaultRetryFor is how long a failing call is retried when [worker]
// retry_for is not set: long enough for a server restart or a database
// failover, short enough that a task does not hang for hours.
const defaultRetryFor = 10 * time.Minute

// maxInFlight is how many calls the client has in flight at once: enough
// to hide a network's round trips, few enough not to load the server (the
// reference worker has one) or the disk.
const maxInFlight = 4

type apiClient struct {
	base   string // api_url without a trailing slash
	origin string // origin() of api_url: the only one that gets the token
	token  string // the worker's secret; empty before registration
	hc     *http.Client
	log    *slog.Logger

	// idle and header are the stall deadlines of every request
	// (idleTimeout, headerTimeout; tests make them short).
	idle, header time.Duration

	// retryFor is how long a call is retried when the connection fails or
	// the server answers 5xx, from its first failure; delay is the pause
	// before try n+1.
	retryFor time.Duration
	delay    func(attempt int) time.Duration
	// chunkSize is the upload chunk size (maxChunk; tests make it small).
	chunkSize int64
	// slots holds one token per call in flight (capacity maxInFlight).
	slots chan struct{}
}

// newAPIClient checks api_url and builds the TLS client. Certificate
// verification is always on; caFile, when set, adds a private CA to the
// system pool instead of replacing it.
func newAPIClient(apiURL, caFile string, log *slog.Logger) (*apiClient, error) {
	u, err := url.Parse(apiURL)
	if err != nil {
		return nil, fmt.Errorf("api_url %q: %w", apiURL, err)
	}
	if u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("api_url %q: the signing worker only talks to https:// servers", apiURL)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if caFile != "" {
		pem, err := readInput(caFile, "ca_file", maxTextSize)
		if err != nil {
			return nil, err
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no PEM certificate in it", caFile)
		}
	}
	return &apiClient{
		base:      strings.TrimRight(apiURL, "/"),
		origin:    origin(u),
		hc:        newHTTPClient(pool, origin(u)),
		log:       log,
		idle:      idleTimeout,
		header:    headerTimeout,
		retryFor:  defaultRetryFor,
		delay:     backoffDelay,
		chunkSize: maxChunk,
		slots:     make(chan struct{}, maxInFlight),
	}, nil
}

// backoffDelay grows 1 s, 2 s, 4 s … up to a minute, with ±25 % jitter so
// that a fleet of workers does not hammer a recovering server in step.
func backoffDelay(attempt int) time.Duration {
	d := time.Second << min(attempt, 6)
	d = min(d, time.Minute)
	return d*3/4 + rand.N(d/2)
}

// apiError is a non-success answer of the server, with the RFC 7807 body
// decoded when there is one.
type apiError struct {
	Method, URL string
	Status      int
	Title       string
	Detail      string
	Validation  json.RawMessage
	Body        string // a plain-text body (middleware 403s)
}

func (e *apiError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: HTTP %d", e.Method, e.URL, e.Status)
	if e.Title != "" {
		fmt.Fprintf(&b, " %s", e.Title)
	}
	if e.Detail != "" {
		fmt.Fprintf(&b, ": %s", e.Detail)
	}
	if len(e.Validation) > 0 && string(e.Validation) != "null" {
		fmt.Fprintf(&b, " %s", e.Validation)
	}
	if e.Title == "" && e.Body != "" {
		fmt.Fprintf(&b, ": %s", e.Body)
	}
	return b.String()
}

func newAPIError(method, u string, resp *http.Response, body []byte) *apiError {
	e := &apiError{Method: method, URL: u, Status: resp.StatusCode}
	var p struct {
		Title      string          `json:"title"`
		Detail     string          `json:"detail"`
		Validation json.RawMessage `json:"validation_errors"`
	}
	if json.Unmarshal(body, &p) == nil && p.Title != "" {
		e.Title, e.Detail, e.Validation = p.Title, p.Detail, p.Validation
	} else {
		e.Body = strings.TrimSpace(string(body[:min(len(body), 200)]))
	}
	return e
}

// httpStatus returns the status of an apiError, or 0.
func httpStatus(err error) int {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

// retrier paces the retries of one call: exponential backoff (c.delay)
// for as long as c.retryFor since the first failure, or until ctx ends
// when forever is set.
type retrier struct {
	c       *apiClient
	forever bool
	n       int // failures since the last success
	first   time.Time
}

// again decides after a failed attempt: nil when the call should be tried
// again (after the pause, which it sleeps), else the error to give up with.
// msg and args describe the call in the log.
func (r *retrier) again(ctx context.Context, err error, msg string, args ...any) error {
	if !retryable(ctx, err) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	if r.n == 0 {
		r.first = time.Now()
	}
	d := r.c.delay(r.n)
	if !r.forever {
		left := r.c.retryFor - time.Since(r.first)
		if left <= 0 {
			return fmt.Errorf("%w (still failing after retrying for %s, [worker] retry_for)", err, r.c.retryFor)
		}
		d = min(d, left)
	}
	r.n++
	r.c.log.Warn(msg, append(args, "error", err, "retry_in", d)...)
	return sleepCtx(ctx, d)
}

// retryable says whether a failed attempt may succeed when repeated: the
// connection failed, or the server had a 5xx moment.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.Status >= 500
	}
	var re *redirectError
	return !errors.As(err, &re)
}

// request is one API call, re-sendable on retry because the body is bytes.
type request struct {
	method string
	url    string // absolute
	body   []byte
	header http.Header
	noAuth bool // registration sends the activation token or nothing
	// unslotted calls do not wait for a slot: the watch's small status
	// reads must not queue behind stalled transfers (watch.go).
	unslotted bool
	ok        []int // success statuses; anything else is an apiError
	limit     int64 // response body bytes to keep (maxJSONBody when 0)
	sink      func(*http.Response) error
}

// response is a successful answer with its (bounded) body.
type response struct {
	status int
	header http.Header
	body   []byte
}

// tooLarge says that an answer is over limit.
func tooLarge(limit int64) string {
	return fmt.Sprintf("the answer is larger than %s, the most this worker reads from the API", sizeString(limit))
}

// sizeString says n bytes in MiB when it is a whole number of them.
func sizeString(n int64) string {
	if n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}

// send performs r, repeating it after connection errors and 5xx answers
// for c.retryFor (until ctx ends when forever is set).
func (c *apiClient) send(ctx context.Context, r *request, forever bool) (*response, error) {
	rt := &retrier{c: c, forever: forever}
	for {
		resp, err := c.once(ctx, r)
		if err == nil {
			return resp, nil
		}
		if err := rt.again(ctx, err, "API call failed, retrying", "method", r.method, "url", r.url); err != nil {
			return nil, err
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// call sends in (JSON, when not nil) to {api_url}/1.0/{p} and decodes the
// answer into out (when not nil). It returns the success status.
func (c *apiClient) call(ctx context.Context, method, p string, in, out any, ok ...int) (int, error) {
	r := &request{method: method, url: c.base + "/1.0/" + p, ok: ok}
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, fmt.Errorf("%s %s: %w", method, r.url, err)
		}
		r.body = b
	}
	resp, err := c.send(ctx, r, false)
	if err != nil {
		return 0, err
	}
	if out != nil {
		if err := json.Unmarshal(resp.body, out); err != nil {
			return 0, fmt.Errorf("%s %s: HTTP %d with an unreadable body: %w", method, r.url, resp.status, err)
		}
	}
	return resp.status, nil
}

// register posts a new worker secret (docs/protocol.md §1.2). activation is the
// one-time activation token, or empty.
func (c *apiClient) register(ctx context.Context, secret, fqdn, activation string) error {
	body, _ := json.Marshal(map[string]string{"token": secret, "fqdn": fqdn, "worker_type": "signing"})
	r := &request{method: http.MethodPost, url: c.base + "/1.0/worker/register/", body: body, noAuth: true, ok: []int{201}}
	if activation != "" {
		r.header = http.Header{"Token": {activation}}
	}
	_, err := c.once(ctx, r)
	return err
}

func (c *apiClient) putMetadata(ctx context.Context, md map[string]any) error {
	_, err := c.call(ctx, http.MethodPut, "worker/dynamic-metadata/", md, nil, 204, 200)
	return err
}

// workRequest holds the fields of get-next-for-worker the worker uses (§2.2).
type workRequest struct {
	ID              int64           `json:"id"`
	TaskType        string          `json:"task_type"`
	TaskName        string          `json:"task_name"`
	TaskData        json.RawMessage `json:"task_data"`
	DynamicTaskData json.RawMessage `json:"dynamic_task_data"`
	Workspace       string          `json:"workspace"`
	// Worker is this worker's id on the server, which assigned it the
	// work request.
	Worker *int64 `json:"worker"`
}

// getNext asks for work; nil, nil means none (204). A work request that
// cannot be read is an unreadableWorkRequest error.
func (c *apiClient) getNext(ctx context.Context) (*workRequest, error) {
	var data []byte
	r := &request{method: http.MethodGet, url: c.base + "/1.0/work-request/get-next-for-worker/", ok: []int{200, 204},
		sink: func(resp *http.Response) error {
			if resp.StatusCode == http.StatusNoContent {
				return nil
			}
			var err error
			data, err = io.ReadAll(io.LimitReader(resp.Body, maxJSONBody+1))
			if err != nil {
				return fmt.Errorf("GET %s: reading the answer: %w", resp.Request.URL.Redacted(), err)
			}
			return nil
		}}
	resp, err := c.send(ctx, r, false)
	if err != nil {
		return nil, err
	}
	if resp.status == http.StatusNoContent {
		return nil, nil
	}
	if len(data) > maxJSONBody {
		return nil, &unreadableWorkRequest{id: leadingID(data), reason: tooLarge(maxJSONBody)}
	}
	var wr workRequest
	switch err := json.Unmarshal(data, &wr); {
	case err != nil:
		return nil, &unreadableWorkRequest{id: leadingID(data), reason: err.Error()}
	case wr.ID <= 0:
		return nil, &unreadableWorkRequest{reason: "it has no id"}
	}
	return &wr, nil
}

// unreadableWorkRequest is a get-next answer the worker cannot use, with
// the id of its work request when that much could be read (else 0).
type unreadableWorkRequest struct {
	id     int64
	reason string
}

func (e *unreadableWorkRequest) Error() string {
	if e.id == 0 {
		return "get-next-for-worker: unreadable work request (no readable id): " + e.reason
	}
	return fmt.Sprintf("get-next-for-worker: work request %d is unreadable: %s", e.id, e.reason)
}

// leadingID reads the "id" of a work request from the start of its JSON,
// which may be cut short or broken further on: Debusine serializes the id
// first, so it can be read from an answer too large to keep. It returns 0
// when the id does not come before the first value that cannot be read.
func leadingID(data []byte) int64 {
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return 0
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return 0
		}
		if key == "id" {
			var id int64
			if dec.Decode(&id) != nil || id <= 0 {
				return 0
			}
			// The number must be whole: "12" cut from "1234" is not it.
			rest := bytes.TrimLeft(data[dec.InputOffset():], " \t\r\n")
			if len(rest) == 0 || (rest[0] != ',' && rest[0] != '}') {
				return 0
			}
			return id
		}
		var skip json.RawMessage
		if dec.Decode(&skip) != nil {
			return 0
		}
	}
	return 0
}

// workRequestState is what the server says of a work request: its status
// (pending, running, completed, aborted, blocked) and the worker it is
// assigned to (null once aborted or de-assigned).
type workRequestState struct {
	Status string `json:"status"`
	Worker *int64 `json:"worker"`
}

// workRequestState reads GET work-request/{id}/, which Debusine lets worker
// tokens read (its view allows a worker's GET; workers may display any work
// request). The server never tells a worker that a work request it runs
// was aborted: this is how the worker finds out.
func (c *apiClient) workRequestState(ctx context.Context, id int64) (*workRequestState, error) {
	r := &request{method: http.MethodGet, url: fmt.Sprintf("%s/1.0/work-request/%d/", c.base, id), ok: []int{200}, unslotted: true}
	resp, err := c.send(ctx, r, false)
	if err != nil {
		return nil, err
	}
	var st workRequestState
	if err := json.Unmarshal(resp.body, &st); err != nil {
		return nil, fmt.Errorf("GET %s: HTTP 200 with an unreadable body: %w", r.url, err)
	}
	return &st, nil
}

// complete delivers a completion body, retrying connection errors and 5xx
// until ctx ends: a result is never dropped while the server can be reached.
func (c *apiClient) complete(ctx context.Context, id int64, body []byte) error {
	r := &request{method: http.MethodPut, url: fmt.Sprintf("%s/1.0/work-request/%d/completed/", c.base, id), body: body, ok: []int{200}}
	_, err := c.send(ctx, r, true)
	return err
}

// fileInfo is one entry of an artifact's "files".
type fileInfo struct {
	Size        int64             `json:"size"`
	Checksums   map[string]string `json:"checksums"`
	Type        string            `json:"type"`
	URL         string            `json:"url,omitempty"`
	ContentType *string           `json:"content_type"`
}

// artifact is the §4.1 shape (the fields the worker uses).
type artifact struct {
	ID            int64               `json:"id"`
	Category      string              `json:"category"`
	Workspace     string              `json:"workspace"`
	Data          json.RawMessage     `json:"data"`
	Files         map[string]fileInfo `json:"files"`
	FilesToUpload []string            `json:"files_to_upload"`
}

func (c *apiClient) getArtifact(ctx context.Context, id int64) (*artifact, error) {
	var a artifact
	if _, err := c.call(ctx, http.MethodGet, fmt.Sprintf("artifact/%d/", id), nil, &a, 200); err != nil {
		return nil, err
	}
	return &a, nil
}

// checkName refuses artifact file names that could land outside the work
// directory: absolute, with a ".." element, empty elements or odd bytes.
func checkName(name string) error {
	if name == "" || strings.ContainsAny(name, "\\\x00") || !filepath.IsLocal(name) || path.Clean(name) != name {
		return fmt.Errorf("artifact file name %q: refused (not a plain relative path)", name)
	}
	for _, el := range strings.Split(name, "/") {
		if el == ".." || el == "." {
			return fmt.Errorf("artifact file name %q: refused (contains %q)", name, el)
		}
	}
	return nil
}

// download fetches one artifact file into root/name, checking its size and
// SHA-256; a file that does not match is removed and reported.
func (c *apiClient) download(ctx context.Context, root *os.Root, name string, fi fileInfo) error {
	if err := checkName(name); err != nil {
		return err
	}
	if u, err := url.Parse(fi.URL); err != nil || origin(u) != c.origin || u.User != nil {
		// Files come from the server named by api_url; where it
		// redirects them, checkRedirect decides.
		return fmt.Errorf("artifact file %s: URL %q is not on %s", name, fi.URL, c.origin)
	}
	want := strings.ToLower(fi.Checksums["sha256"])
	if len(want) != 64 {
		return fmt.Errorf("artifact file %s: no sha256 checksum", name)
	}
	if dir := path.Dir(name); dir != "." {
		if err := root.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("artifact file %s: %w", name, err)
		}
	}
	f, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("artifact file %s: %w", name, err)
	}
	h := sha256.New()
	r := &request{method: http.MethodGet, url: fi.URL, ok: []int{200}, sink: func(resp *http.Response) error {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
		if err := f.Truncate(0); err != nil {
			return err
		}
		h.Reset()
		n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(resp.Body, fi.Size+1))
		if err != nil {
			return fmt.Errorf("GET %s: %w", fi.URL, err)
		}
		if n != fi.Size {
			return &apiError{Method: "GET", URL: fi.URL, Status: 200, Body: fmt.Sprintf("got %d bytes, the artifact says %d", n, fi.Size)}
		}
		return nil
	}}
	_, err = c.send(ctx, r, false)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		if got := hex.EncodeToString(h.Sum(nil)); got != want {
			err = fmt.Errorf("artifact file %s: sha256 %s, the artifact says %s", name, got, want)
		}
	}
	if err != nil {
		root.Remove(name)
		return err
	}
	return nil
}

// outFile is a file to put in a new artifact under Name: Data in memory,
// or the file Path under Root.
type outFile struct {
	Name        string
	ContentType string
	Data        []byte
	Root        *os.Root
	Path        string
}

func (o *outFile) open() (io.ReaderAt, int64, func(), error) {
	if o.Root == nil {
		return bytes.NewReader(o.Data), int64(len(o.Data)), func() {}, nil
	}
	f, err := o.Root.Open(o.Path)
	if err != nil {
		return nil, 0, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, nil, err
	}
	return f, st.Size(), func() { f.Close() }, nil
}

// createArtifact creates an artifact holding files, uploads the contents the
// server still lacks, then adds a relates-to relation to each of relatesTo.
func (c *apiClient) createArtifact(ctx context.Context, category, workspace string, workRequest int64, data any, files []outFile, relatesTo []int64) (int64, error) {
	a, err := c.newArtifact(ctx, category, workspace, workRequest, data, files)
	if err != nil {
		return 0, err
	}
	return a.ID, c.finishArtifact(ctx, a, files, relatesTo)
}

// newArtifact creates an artifact holding files (their names, sizes and
// SHA-256), without their contents.
func (c *apiClient) newArtifact(ctx context.Context, category, workspace string, workRequest int64, data any, files []outFile) (*artifact, error) {
	meta := make(map[string]fileInfo, len(files))
	for i := range files {
		o := &files[i]
		ra, size, done, err := o.open()
		if err != nil {
			return nil, fmt.Errorf("artifact file %s: %w", o.Name, err)
		}
		h := sha256.New()
		_, err = io.Copy(h, io.NewSectionReader(ra, 0, size))
		done()
		if err != nil {
			return nil, fmt.Errorf("artifact file %s: %w", o.Name, err)
		}
		ct := o.ContentType
		meta[o.Name] = fileInfo{Size: size, Checksums: map[string]string{"sha256": hex.EncodeToString(h.Sum(nil))}, Type: "file", ContentType: &ct}
	}
	body := map[string]any{"category": category, "workspace": workspace, "files": meta, "data": data, "work_request": workRequest}
	var a artifact
	if _, err := c.call(ctx, http.MethodPost, "artifact/", body, &a, 201); err != nil {
		return nil, fmt.Errorf("creating the %s artifact: %w", category, err)
	}
	return &a, nil
}

// finishArtifact uploads, a few at a time, the files of a (created from
// files) that the server still lacks, then relates a to each of relatesTo.
func (c *apiClient) finishArtifact(ctx context.Context, a *artifact, files []outFile, relatesTo []int64) error {
	byName := make(map[string]*outFile, len(files))
	for i := range files {
		byName[files[i].Name] = &files[i]
	}
	for _, name := range a.FilesToUpload {
		if byName[name] == nil {
			return fmt.Errorf("artifact %d: the server wants file %q, which was not sent", a.ID, name)
		}
	}
	err := parallel(ctx, len(a.FilesToUpload), cap(c.slots), func(ctx context.Context, i int) error {
		name := a.FilesToUpload[i]
		ra, size, done, err := byName[name].open()
		if err != nil {
			return fmt.Errorf("artifact file %s: %w", name, err)
		}
		defer done()
		return c.upload(ctx, a.ID, name, ra, size)
	})
	if err != nil {
		return err
	}
	return parallel(ctx, len(relatesTo), cap(c.slots), func(ctx context.Context, i int) error {
		return c.relate(ctx, a.ID, relatesTo[i])
	})
}

// parallel runs fn(ctx, i) for every i in [0, n), in order of i, at most
// limit at a time. The first failure cancels the calls still running,
// starts no more, and is what parallel returns.
func parallel(ctx context.Context, n, limit int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(n, max(limit, 1)) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(ctx, i); err != nil {
					cancel(err)
				}
			}
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return nil
}

func (c *apiClient) relate(ctx context.Context, from, to int64) error {
	body := map[string]any{"artifact": from, "target": to, "type": "relates-to"}
	if _, err := c.call(ctx, http.MethodPost, "artifact-relation/", body, nil, 200, 201); err != nil {
		return fmt.Errorf("relating artifact %d to %d: %w", from, to, err)
	}
	return nil
}

// uploadURL quotes each element of name, keeping the slashes.
func (c *apiClient) uploadURL(id int64, name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return fmt.Sprintf("%s/1.0/artifact/%d/files/%s/", c.base, id, strings.Join(parts, "/"))
}

// upload sends one file's content with the resumable protocol of §4.3:
// send chunks from offset 0, re-probe for the offset the server holds
// after any connection error or 5xx (so a broken connection resumes rather
// than restarts), and start again from zero when the server answers 409
// (its hash check failed and it dropped the partial file).
//
// Unlike Debusine's own client, the first chunk is sent without probing
// first (a probe is a round trip per file): Debusine's upload view accepts
// a chunk starting at 0 whatever it holds of the file, since it only
// refuses a chunk that would leave a gap (nothing yet: it starts the file;
// part of it: it writes over it from the start; all of it: it answers 201).
// An empty file is probed, as a chunk cannot be empty.
func (c *apiClient) upload(ctx context.Context, id int64, name string, ra io.ReaderAt, size int64) error {
	u := c.uploadURL(id, name)
	rt := &retrier{c: c}
	restarts := 0
	probe := size == 0
	var off int64
	for {
		var r *request
		if probe {
			r = &request{method: http.MethodPut, url: u, ok: []int{200, 201, 206},
				header: http.Header{"Content-Range": {fmt.Sprintf("bytes */%d", size)}}}
		} else {
			end := min(off+c.chunkSize, size)
			chunk := make([]byte, end-off)
			if _, err := ra.ReadAt(chunk, off); err != nil && !(errors.Is(err, io.EOF) && int64(len(chunk)) == end-off) {
				return fmt.Errorf("uploading %s: %w", name, err)
			}
			r = &request{method: http.MethodPut, url: u, body: chunk, ok: []int{200, 201},
				header: http.Header{
					"Content-Range": {fmt.Sprintf("bytes %d-%d/%d", off, end-1, size)},
					"Content-Type":  {"application/octet-stream"},
				}}
		}
		resp, err := c.once(ctx, r)
		switch {
		case err == nil:
			rt.n = 0
		case httpStatus(err) == http.StatusConflict && restarts < 3:
			restarts++
			c.log.Warn("upload hash mismatch at the server, restarting the file", "artifact", id, "file", name, "error", err)
			off, probe = 0, false
			continue
		default:
			if err := rt.again(ctx, err, "upload interrupted, resuming", "artifact", id, "file", name); err != nil {
				if ctx.Err() != nil {
					return err
				}
				return fmt.Errorf("uploading %s to artifact %d: %w", name, id, err)
			}
			probe = true
			continue
		}
		if resp.status == 201 || (probe && resp.status == 200) {
			return nil
		}
		n, err := parseRangeHeader(resp.header.Get("Range"))
		if err != nil {
			return fmt.Errorf("uploading %s to artifact %d: %w", name, id, err)
		}
		if n > size {
			return fmt.Errorf("uploading %s to artifact %d: the server holds %d bytes of %d", name, id, n, size)
		}
		off, probe = n, n == size
	}
}

// parseRangeHeader reads the server's "Range: bytes=0-N", where N is the
// number of bytes received, not an inclusive end (docs/protocol.md §4.3).
func parseRangeHeader(h string) (int64, error) {
	rest, ok := strings.CutPrefix(h, "bytes=0-")
	if !ok {
		return 0, fmt.Errorf("unexpected Range header %q", h)
	}
	n, err := strconv.ParseInt(rest, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("unexpected Range header %q", h)
	}
	return n, nil
}

// permission is the answer of the asset permission check (§4.6).
type permission struct {
	HasPermission bool            `json:"has_permission"`
	Username      *string         `json:"username"`
	UserID        *int64          `json:"user_id"`
	Resource      json.RawMessage `json:"resource"`
}

// auditExtra is what the audit row of a signature records from the check.
func (p *permission) auditExtra() map[string]any {
	m := map[string]any{}
	if p.Username != nil {
		m["username"] = *p.Username
	}
	if p.UserID != nil {
		m["user_id"] = *p.UserID
	}
	if len(p.Resource) > 0 && string(p.Resource) != "null" {
		var r any
		if json.Unmarshal(p.Resource, &r) == nil {
			m["resource"] = r
		}
	}
	return m
}

func (c *apiClient) checkPermission(ctx context.Context, purpose, fingerprint string, artifactID, workRequest int64, workspace string) (*permission, error) {
	p := fmt.Sprintf("asset/debusine:signing-key/%s:%s/sign_with/", url.PathEscape(purpose), url.PathEscape(fingerprint))
	body := map[string]any{"artifact_id": artifactID, "work_request_id": workRequest, "workspace": workspace}
	var perm permission
	if _, err := c.call(ctx, http.MethodPost, p, body, &perm, 200); err != nil {
		return nil, fmt.Errorf("permission check for %s:%s on artifact %d: %w", purpose, fingerprint, artifactID, err)
	}
	return &perm, nil
}

// createSigningKeyAsset records a generated key on the server (§4.5). A 200
// means the asset already exists, which after a retried POST is ours.
func (c *apiClient) createSigningKeyAsset(ctx context.Context, purpose, fingerprint string, publicKey []byte, description, workspace string, workRequest int64) error {
	body := map[string]any{
		"category": "debusine:signing-key",
		"data": map[string]any{"purpose": purpose, "fingerprint": fingerprint,
			"public_key": base64.StdEncoding.EncodeToString(publicKey), "description": description},
		"work_request": workRequest,
		"workspace":    workspace,
	}
	if _, err := c.call(ctx, http.MethodPost, "asset/", body, nil, 201, 200); err != nil {
		return fmt.Errorf("creating the debusine:signing-key asset: %w", err)
	}
	return nil
}
