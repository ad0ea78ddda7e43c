package main

// The worker's HTTP client, hardened against the server it talks to and
// the network in between: the Token goes to api_url's origin and nowhere
// else, redirects never lead to plain http, and no request can hang the
// worker: the answer's headers have a deadline, and a request whose bytes
// stop moving either way is abandoned as stalled, then retried like a
// broken connection.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"time"
)

const (
	// headerTimeout bounds the wait for an answer's headers once the
	// request is sent: generous, since the last chunk of an upload makes
	// the server hash the whole file before it answers.
	headerTimeout = 2 * time.Minute
	// idleTimeout is how long a request or an answer may go without a
	// byte moving before it is abandoned as stalled.
	idleTimeout = time.Minute
	// maxRedirects is the redirects one call follows, as Go's default.
	maxRedirects = 10
)

// errStalled: no byte moved for the idle timeout, or no answer came within
// the header timeout.
var errStalled = errors.New("stalled")

// redirectError is a redirect the worker refuses to follow. It is final:
// the same answer would come back.
type redirectError struct {
	from, to string
	why      string
}

func (e *redirectError) Error() string {
	return fmt.Sprintf("redirect from %s to %s refused: %s", e.from, e.to, e.why)
}

// origin is the scheme, host and port of u, the unit the Token is bound
// to, written the same way whatever the URL spelled: lower case, without
// the default port.
func origin(u *url.URL) string {
	scheme := strings.ToLower(u.Scheme)
	host, port := strings.ToLower(u.Hostname()), u.Port()
	if (scheme == "https" && port == "443") || (scheme == "http" && port == "80") {
		port = ""
	}
	if port != "" {
		return scheme + "://" + net.JoinHostPort(host, port)
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return scheme + "://" + host
}

// newHTTPClient is the client of the worker bound to the origin of
// api_url: certificates checked against pool, TLS 1.2 at least.
//
// Go forwards custom headers such as Token on every redirect, to any host;
// checkRedirect removes it on the way to any other origin (a download
// redirected to a storage server gets the file without the credential),
// and refuses a redirect to http outright, where anything the request
// carries would travel in clear.
func newHTTPClient(pool *x509.CertPool, apiOrigin string) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	tr.ResponseHeaderTimeout = headerTimeout
	tr.MaxIdleConnsPerHost = maxInFlight
	return &http.Client{Transport: tr, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		return checkRedirect(apiOrigin, req, via)
	}}
}

func checkRedirect(apiOrigin string, req *http.Request, via []*http.Request) error {
	from := via[len(via)-1].URL.Redacted()
	if len(via) >= maxRedirects {
		return &redirectError{from, req.URL.Redacted(), fmt.Sprintf("more than %d redirects", maxRedirects)}
	}
	if req.URL.Scheme != "https" {
		return &redirectError{from, req.URL.Redacted(), "the worker only talks https"}
	}
	if origin(req.URL) != apiOrigin {
		req.Header.Del("Token")
	}
	return nil
}

// stallGuard fails a request whose bytes stop moving: armed with the idle
// timeout while the request is sent and while its answer is read, with
// the header timeout in between; every byte that moves re-arms it.
type stallGuard struct {
	t      *time.Timer
	idle   time.Duration
	header time.Duration
}

func newStallGuard(idle, header time.Duration, stall func()) *stallGuard {
	return &stallGuard{t: time.AfterFunc(idle, stall), idle: idle, header: header}
}

func (g *stallGuard) moved()   { g.t.Reset(g.idle) }
func (g *stallGuard) waiting() { g.t.Reset(g.header) }
func (g *stallGuard) stop()    { g.t.Stop() }

// guarded is a request or answer body that re-arms its guard as it moves.
type guarded struct {
	io.Reader
	g *stallGuard
}

func (r *guarded) Read(p []byte) (int, error) {
	n, err := r.Reader.Read(p)
	if n > 0 {
		r.g.moved()
	}
	return n, err
}

// guardedBody is an answer's body under its guard, still closable.
type guardedBody struct {
	guarded
	io.Closer
}

// once performs one attempt of r, abandoned as stalled when its bytes stop
// moving (see stallGuard).
func (c *apiClient) once(ctx context.Context, r *request) (*response, error) {
	if !r.unslotted {
		select {
		case c.slots <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		defer func() { <-c.slots }()
	}
	if err := ctx.Err(); err != nil {
		// Both were ready and the slot won: still send nothing.
		return nil, err
	}
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	g := newStallGuard(c.idle, c.header, func() { cancel(errStalled) })
	defer g.stop()
	resp, err := c.attempt(httptrace.WithClientTrace(actx, &httptrace.ClientTrace{
		WroteRequest: func(httptrace.WroteRequestInfo) { g.waiting() },
	}), r, g)
	if err != nil && ctx.Err() == nil && context.Cause(actx) == errStalled {
		return nil, fmt.Errorf("%s %s: %w: nothing moved for %s (or no answer within %s)", r.method, r.url, errStalled, c.idle, c.header)
	}
	return resp, err
}

func (c *apiClient) attempt(ctx context.Context, r *request, g *stallGuard) (*response, error) {
	var body io.Reader
	if r.body != nil {
		body = &guarded{bytes.NewReader(r.body), g}
	}
	req, err := http.NewRequestWithContext(ctx, r.method, r.url, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", r.method, r.url, err)
	}
	if r.body != nil {
		req.ContentLength = int64(len(r.body))
		req.GetBody = func() (io.ReadCloser, error) {
			return io.NopCloser(&guarded{bytes.NewReader(r.body), g}), nil
		}
	}
	for k, v := range r.header {
		req.Header[k] = v
	}
	if r.body != nil && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if !r.noAuth && c.token != "" && origin(req.URL) == c.origin {
		req.Header.Set("Token", c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	g.moved()
	resp.Body = &guardedBody{guarded{resp.Body, g}, resp.Body}
	good := false
	for _, s := range r.ok {
		good = good || resp.StatusCode == s
	}
	if good && r.sink != nil {
		if err := r.sink(resp); err != nil {
			return nil, err
		}
		return &response{status: resp.StatusCode, header: resp.Header}, nil
	}
	limit := r.limit
	if limit == 0 {
		limit = maxJSONBody
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: reading the answer: %w", r.method, r.url, err)
	}
	if !good {
		return nil, newAPIError(r.method, r.url, resp, data[:min(int64(len(data)), limit)])
	}
	if int64(len(data)) > limit {
		// Not retried (it is an apiError with a status under 500): the
		// same answer would come back.
		return nil, &apiError{Method: r.method, URL: r.url, Status: resp.StatusCode,
			Body: tooLarge(limit)}
	}
	return &response{status: resp.StatusCode, header: resp.Header, body: data}, nil
}
