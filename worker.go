package main

// The signing worker: registration, the WebSocket that tells it about work,
// the loop that takes work requests one at a time, and result delivery
// (docs/protocol.md §1–§3).

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

type worker struct {
	api                 *apiClient
	st                  *Store
	log                 *slog.Logger
	fqdn                string
	tokenFile           string
	activationTokenFile string
	trusted             map[string]bool // trusted_certs, upper-case hex
	once                bool
	workDir             string // where per-task directories are made
	checkpointFile      string // [worker] checkpoint_file, "" for none
	skipKernelModules   bool   // sign_kernel_modules = false: skip .ko files as Debusine does
	// relayKeys, on a relay (relay fetch), are the keys it advertises
	// instead of the store's: keys held on the offline host. A relay
	// advertises only the tasks the offline host runs (relayTasks).
	relayKeys []string

	// wsDelay is the pause before reconnecting the WebSocket; onceQuiet is
	// how long --once waits for a notification after the server said it had
	// no work. Both are fields so that tests run fast.
	wsDelay   func() time.Duration
	onceQuiet time.Duration
	// statusEvery: before an input is signed, the work request's status is
	// read again unless the last reading is younger than this.
	statusEvery time.Duration
	// watchEvery: while a task runs, its status is read this often
	// (defaultWatchEvery when 0).
	watchEvery time.Duration
	// wsPingEvery: the WebSocket is pinged this often, and dropped when
	// no pong comes back within as long (defaultWSPingEvery when 0).
	wsPingEvery time.Duration

	wake         chan struct{} // "call get-next", capacity 1
	metadataMu   sync.Mutex
	metadataSent atomic.Bool
}

// defaultWSPingEvery is the WebSocket's ping period, and how long a pong
// may take: a dead connection is noticed within 40 s, under the minute.
const defaultWSPingEvery = 20 * time.Second

// wsJitter is the reference worker's reconnection pause: random, 1–6 s.
func wsJitter() time.Duration {
	return time.Second + mrand.N(5*time.Second)
}

func (w *worker) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// run registers if needed, then takes work until ctx ends (SIGTERM), or,
// with --once, until the server has nothing more to give.
func (w *worker) run(ctx context.Context) error {
	if w.wake == nil {
		w.wake = make(chan struct{}, 1)
	}
	w.metadataSent.Store(false)
	// The work directories of tasks killed mid-way (kill -9, power loss)
	// go now: nothing of theirs survives a restart.
	if w.workDir != "" {
		sweepTemps(w.workDir)
	}
	if err := w.ensureToken(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	fatal, stopWS := w.startWebsocket(ctx)
	defer stopWS()

	var quiet <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			w.log.Info("stopping on signal")
			return nil
		case err := <-fatal:
			return err
		case <-quiet:
			w.log.Info("no more work, exiting (--once)")
			return nil
		case <-w.wake:
		}
		quiet = nil
		if err := w.drain(ctx); err != nil {
			if ctx.Err() != nil {
				w.log.Info("stopping on signal")
				return nil
			}
			if w.once {
				return err
			}
			w.log.Error("taking work failed; waiting for the next notification", "error", err)
		}
		if w.once && w.metadataSent.Load() {
			quiet = time.After(w.onceQuiet)
		}
	}
}

// drain delivers a result left over from an earlier run, then takes and
// runs work requests until the server has none. It is the only caller of
// get-next, which aborts whatever the server thinks this worker is
// running, so it is only ever called between tasks.
func (w *worker) drain(ctx context.Context) error {
	if err := w.flushPendingCompletion(ctx); err != nil {
		return err
	}
	unreadable := 0
	for {
		wr, err := w.api.getNext(ctx)
		var bad *unreadableWorkRequest
		if errors.As(err, &bad) {
			if err := w.refuse(ctx, bad, unreadable); err != nil {
				return err
			}
			unreadable++
			continue
		}
		unreadable = 0
		if err != nil {
			if httpStatus(err) == http.StatusForbidden {
				return fmt.Errorf("the server refuses this worker's token (not enabled yet, or disabled): %w", err)
			}
			return err
		}
		if wr == nil {
			return nil
		}
		if err := w.execute(ctx, wr); err != nil {
			return err
		}
		witnessErrs, err := writeCheckpointFile(w.st, w.checkpointFile)
		if err != nil {
			w.log.Error("cannot write the audit checkpoint", "file", w.checkpointFile, "error", err)
		}
		for _, err := range witnessErrs {
			w.log.Warn("the audit checkpoint was not cosigned", "error", err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// refuse ends a work request the worker could not read, so that neither
// the server nor the worker waits on it, before the next get-next: one
// whose id could be read is completed as an error that says why; for one
// without, the next get-next, after a pause that grows with each such
// answer in a row, aborts it on the server (docs/protocol.md §2.2).
func (w *worker) refuse(ctx context.Context, bad *unreadableWorkRequest, inRow int) error {
	if bad.id == 0 {
		d := w.api.delay(inRow)
		w.log.Error("unreadable work request, without a readable id; asking for work again, which aborts it on the server", "error", bad.reason, "retry_in", d)
		return sleepCtx(ctx, d)
	}
	w.log.Error("unreadable work request; completing it as an error", "work_request", bad.id, "error", bad.reason)
	body, err := json.Marshal(errorCompletion("configure-failed", fmt.Sprintf("Work request %d could not be read by the signing worker: %s", bad.id, bad.reason)))
	if err != nil {
		return err
	}
	return w.deliver(ctx, bad.id, body)
}

// ensureToken loads the worker's secret, registering a new one when there
// is none. The secret is written (0600, synced) to a side file before the
// server sees it and renamed into place once the server accepted it, so a
// secret the server may hold is never lost: when a registration's answer
// never arrived, the side file is adopted as the token.
func (w *worker) ensureToken(ctx context.Context) error {
	tok, err := readSecret(w.tokenFile)
	if err == nil {
		w.api.token = tok
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	pending := w.tokenFile + ".new"
	if tok, err := readSecret(pending); err == nil {
		w.log.Warn("a registration was interrupted before its answer arrived; keeping its token (the server may hold it)", "token_file", w.tokenFile)
		return w.adoptToken(pending, tok)
	}
	activation := ""
	if w.activationTokenFile != "" {
		activation, err = readSecret(w.activationTokenFile)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	for attempt := 0; ; attempt++ {
		secret, err := newSecret()
		if err != nil {
			return err
		}
		if err := writeFileSync(pending, []byte(secret+"\n"), 0o600); err != nil {
			return fmt.Errorf("token_file: %w", err)
		}
		var wrote atomic.Bool
		tctx := httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
			WroteRequest: func(httptrace.WroteRequestInfo) { wrote.Store(true) },
		})
		err = w.api.register(tctx, secret, w.fqdn, activation)
		if err == nil {
			w.log.Info("registered with the server", "fqdn", w.fqdn, "activation_token", activation != "")
			if activation == "" {
				w.log.Warn("an administrator must now enable this worker: debusine-admin worker enable --worker-type signing NAME")
			}
			return w.adoptToken(pending, secret)
		}
		status := httpStatus(err)
		if status == 0 && wrote.Load() {
			// The server may have stored the secret; keep it.
			w.log.Warn("registration answer lost; keeping the token the server may hold", "error", err)
			if aerr := w.adoptToken(pending, secret); aerr != nil {
				return aerr
			}
			return ctx.Err()
		}
		os.Remove(pending)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if status != 0 && status < 500 {
			return fmt.Errorf("registering with the server: %w", err)
		}
		d := w.api.delay(attempt)
		w.log.Warn("registration failed, retrying with a new token", "error", err, "retry_in", d)
		if err := sleepCtx(ctx, d); err != nil {
			return err
		}
	}
}

func (w *worker) adoptToken(pending, secret string) error {
	if err := os.Rename(pending, w.tokenFile); err != nil {
		return fmt.Errorf("token_file: %w", err)
	}
	syncDir(filepath.Dir(w.tokenFile))
	w.api.token = secret
	return nil
}

func newSecret() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generating the worker token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// readSecret reads a one-line secret file (token, activation token),
// refused if group or others can read it.
func readSecret(p string) (string, error) {
	b, err := readSecretInput(p, "secret file", maxSecretSize)
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s: empty", p)
	}
	return s, nil
}

// writeFileSync writes data to p (created with mode, or truncated), synced
// to disk.
func writeFileSync(p string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	return writeSyncClose(f, data)
}

// writeSyncClose writes data to the new file f, syncs and closes it, and
// removes it if any of that fails.
func writeSyncClose(f *os.File, data []byte) error {
	_, err := f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// errTokenDisabled: the server closed the WebSocket with TOKEN_DISABLED.
var errTokenDisabled = errors.New("the server does not accept this worker's token yet (TOKEN_DISABLED): an administrator must enable the worker")

// startWebsocket runs websocketLoop until stop, which waits for it to end.
// An error that ends the loop for good arrives on fatal.
func (w *worker) startWebsocket(ctx context.Context) (fatal <-chan error, stop func()) {
	ch := make(chan error, 1)
	wsCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { w.websocketLoop(wsCtx, ch) })
	return ch, func() {
		cancel()
		wg.Wait()
	}
}

// websocketLoop keeps the notification channel open, reconnecting after
// errors, server closes and TOKEN_DISABLED with the reference worker's 1–6 s
// random pause, for as long as ctx lasts.
func (w *worker) websocketLoop(ctx context.Context, fatal chan<- error) {
	disabled, failures := 0, 0
	for ctx.Err() == nil {
		err := w.websocketSession(ctx)
		if ctx.Err() != nil {
			return
		}
		switch {
		case errors.Is(err, errTokenDisabled):
			if w.once {
				fatal <- err
				return
			}
			if disabled == 0 {
				w.log.Warn("waiting for an administrator to enable this worker", "fqdn", w.fqdn)
			} else {
				w.log.Debug("still not enabled", "attempts", disabled+1)
			}
			disabled++
		default:
			failures++
			w.log.Warn("WebSocket connection lost, reconnecting", "error", err)
			if w.once && failures >= 5 {
				fatal <- fmt.Errorf("WebSocket: %w", err)
				return
			}
		}
		if sleepCtx(ctx, w.wsDelay()) != nil {
			return
		}
	}
}

// wsMessage is any frame the server sends (docs/protocol.md §2.1).
type wsMessage struct {
	Type       string `json:"type"`
	Text       string `json:"text"`
	Reason     string `json:"reason"`
	ReasonCode string `json:"reason_code"`
}

func (w *worker) websocketURL() string {
	return strings.Replace(w.api.base, "http", "ws", 1) + "/ws/1.0/worker/connect/"
}

// websocketSession runs one WebSocket connection until it breaks.
func (w *worker) websocketSession(ctx context.Context) error {
	conn, _, err := websocket.Dial(ctx, w.websocketURL(), &websocket.DialOptions{
		HTTPClient: w.api.hc,
		HTTPHeader: http.Header{"Token": {w.api.token}},
	})
	if err != nil {
		return err
	}
	defer conn.CloseNow()
	conn.SetReadLimit(1 << 20)

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		// A dead connection, or a server that no longer reads, is
		// noticed within two ping periods instead of at the next TCP
		// timeout; the server's own pings are answered by conn.Read.
		every := w.wsPingEvery
		if every <= 0 {
			every = defaultWSPingEvery
		}
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-t.C:
				pctx, pcancel := context.WithTimeout(sctx, every)
				err := conn.Ping(pctx)
				pcancel()
				if err != nil && sctx.Err() == nil {
					w.log.Warn("WebSocket ping unanswered, reconnecting", "error", err, "waited", every)
					conn.CloseNow()
					return
				}
			}
		}
	}()

	for {
		_, data, err := conn.Read(sctx)
		if err != nil {
			return err
		}
		var m wsMessage
		if err := json.Unmarshal(data, &m); err != nil {
			w.log.Warn("unreadable WebSocket message", "error", err)
			continue
		}
		switch {
		case m.Text == "connected":
			w.log.Info("connected to the server")
			w.signal()
		case m.Text == "request_dynamic_metadata":
			go w.sendMetadata(sctx)
		case m.Text == "work_request_available":
			w.signal()
		case m.ReasonCode == "TOKEN_DISABLED":
			conn.Close(websocket.StatusNormalClosure, "")
			return errTokenDisabled
		default:
			w.log.Info("message from the server", "type", m.Type, "text", m.Text, "reason", m.Reason, "reason_code", m.ReasonCode)
		}
	}
}

// sendMetadata answers request_dynamic_metadata; the PUT also makes the
// server schedule, so a successful one is followed by a look for work.
func (w *worker) sendMetadata(ctx context.Context) {
	w.metadataMu.Lock()
	defer w.metadataMu.Unlock()
	md, err := w.metadata()
	if err == nil {
		err = w.api.putMetadata(ctx, md)
	}
	if err != nil {
		if ctx.Err() == nil {
			w.log.Error("sending the dynamic metadata failed", "error", err)
		}
		return
	}
	w.log.Debug("dynamic metadata sent", "metadata", md)
	w.metadataSent.Store(true)
	w.signal()
}

// debianArch maps GOARCH to the Debian architecture name.
func debianArch(goarch string) string {
	switch goarch {
	case "386":
		return "i386"
	case "arm":
		return "armhf"
	case "ppc64le":
		return "ppc64el"
	case "mips64le":
		return "mips64el"
	case "mipsle":
		return "mipsel"
	}
	return goarch
}

// metadata is the dynamic metadata: exactly what the scheduler reads
// (docs/protocol.md §1.3) for the tasks this build can run, plus signing:keys,
// the keys this worker can use, so that work can be routed to it.
func (w *worker) metadata() (map[string]any, error) {
	arch := debianArch(runtime.GOARCH)
	md := map[string]any{
		"system:worker_type":       "signing",
		"system:host_architecture": arch,
		"system:architectures":     []string{arch},
	}
	for name, t := range w.tasks() {
		if w.relayKeys != nil && !relayTasks[name] {
			continue
		}
		md["signing:"+name+":version"] = t.version
		for k, v := range t.available {
			if k == "" {
				md["signing:"+name+":available"] = v
			} else {
				md["signing:"+name+":available:"+k] = v
			}
		}
	}
	keys := w.relayKeys
	if keys == nil {
		var err error
		if keys, err = w.usableKeys(); err != nil {
			return nil, err
		}
	}
	md["signing:keys"] = keys
	return md, nil
}

// completion is the body of PUT …/completed/ (docs/protocol.md §3).
type completion struct {
	Result     string      `json:"result"`
	OutputData *outputData `json:"output_data,omitempty"`
}

type outputData struct {
	RuntimeStatistics *runtimeStatistics `json:"runtime_statistics,omitempty"`
	Errors            []taskError        `json:"errors,omitempty"`
}

type runtimeStatistics struct {
	Duration int64 `json:"duration"`
	CPUTime  int64 `json:"cpu_time"`
}

type taskError struct {
	Message string `json:"message"`
	Code    string `json:"code"`
}

// pendingCompletion is a result that has not reached the server yet,
// kept on disk so that neither a network outage nor a restart loses it,
// and the exact same bytes are sent however many attempts it takes.
type pendingCompletion struct {
	WorkRequest int64           `json:"work_request"`
	Body        json.RawMessage `json:"body"`
}

func (w *worker) pendingCompletionPath() string {
	return filepath.Join(filepath.Dir(w.tokenFile), "pending-completion.json")
}

// deliver sends a completion, retrying until it gets through. Only the
// server refusing it (4xx) drops it; 403 keeps it for later, since it
// means this worker's token is disabled, not that the result is wrong.
func (w *worker) deliver(ctx context.Context, id int64, body []byte) error {
	p := w.pendingCompletionPath()
	rec, _ := json.Marshal(pendingCompletion{WorkRequest: id, Body: body})
	if err := writeFileSync(p+".tmp", rec, 0o600); err != nil {
		w.log.Error("cannot save the result before sending it", "work_request", id, "error", err)
	} else if err := os.Rename(p+".tmp", p); err != nil {
		w.log.Error("cannot save the result before sending it", "work_request", id, "error", err)
	}
	err := w.api.complete(ctx, id, body)
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case httpStatus(err) == http.StatusForbidden:
		return err
	case httpStatus(err) == http.StatusUnauthorized:
		w.log.Warn("the work request is no longer this worker's (aborted, or given to another worker): result dropped", "work_request", id, "error", err)
	case err != nil:
		w.log.Error("the server refused the result", "work_request", id, "error", err)
	default:
		w.log.Info("result delivered", "work_request", id, "body", string(body))
	}
	os.Remove(p)
	return nil
}

func (w *worker) flushPendingCompletion(ctx context.Context) error {
	b, err := readInput(w.pendingCompletionPath(), "saved result", maxTextSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var pc pendingCompletion
	if err := json.Unmarshal(b, &pc); err != nil || pc.WorkRequest == 0 {
		w.log.Error("discarding an unreadable saved result", "file", w.pendingCompletionPath(), "error", err)
		os.Remove(w.pendingCompletionPath())
		return nil
	}
	w.log.Info("delivering a result saved by an earlier run", "work_request", pc.WorkRequest)
	return w.deliver(ctx, pc.WorkRequest, pc.Body)
}

// usableKeys lists purpose:fingerprint of the keys this worker can use.
func (w *worker) usableKeys() ([]string, error) {
	keys, err := w.st.Keys()
	if errors.Is(err, errKeyRefused) {
		// Rows that fail their checks are not offered; the others are.
		w.log.Error("key rows refused by their checks are not offered", "error", err)
	} else if err != nil {
		return nil, err
	}
	out := []string{}
	for _, k := range keys {
		if w.keyUsable(k) == nil {
			out = append(out, k.Purpose+":"+k.Fingerprint)
		}
	}
	return out, nil
}

// keyUsable says why a key cannot be used on this worker, or nil: a key
// held on a hardware token is usable only while the token is plugged in.
func (w *worker) keyUsable(k *Key) error {
	storage, err := k.Storage()
	if err != nil {
		return err
	}
	switch storage {
	case storageNaCl:
		return nil
	case storagePKCS11:
		uri, err := k.PKCS11URI()
		if err != nil {
			return err
		}
		if err := keyAvailable(w.st, uri); err != nil {
			return fmt.Errorf("key %s cannot be used on this worker: %w", k, err)
		}
		return nil
	}
	return fmt.Errorf("key %s: unsupported storage %q", k, storage)
}

// cmdWorker is `debusine-signing worker [--once]`.
func cmdWorker(e *env, args []string) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	once := fs.Bool("once", false, "take work until the server has none, then exit (for cron)")
	if err := parseFlags(fs, e, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("worker takes no positional arguments")
	}
	cfg, err := e.config()
	if err != nil {
		return err
	}
	wc := cfg.Worker
	if cfg.path == "" {
		return errors.New("the worker needs a configuration file with a [worker] table (--config FILE; see signing.toml.example)")
	}
	if wc.APIURL == "" || wc.TokenFile == "" {
		return fmt.Errorf("configuration %s: the worker needs [worker] api_url and token_file", cfg.path)
	}
	trusted, err := trustedCerts(cfg)
	if err != nil {
		return err
	}
	log, closeLog, err := workerLogger(wc, e.stderr)
	if err != nil {
		return err
	}
	defer closeLog()
	api, err := newAPIClient(wc.APIURL, wc.CAFile, log)
	if err != nil {
		return err
	}
	if wc.RetryFor.Duration > 0 {
		api.retryFor = wc.RetryFor.Duration
	}
	st, err := e.openStore()
	if err != nil {
		return err
	}
	fqdn := wc.FQDN
	if fqdn == "" {
		if fqdn, err = os.Hostname(); err != nil {
			return fmt.Errorf("fqdn: %w (set [worker] fqdn)", err)
		}
	}
	w := &worker{
		api: api, st: st, log: log, fqdn: fqdn,
		tokenFile: wc.TokenFile, activationTokenFile: wc.ActivationTokenFile,
		trusted: trusted, once: *once, workDir: os.TempDir(), checkpointFile: wc.CheckpointFile,
		wsDelay: wsJitter, onceQuiet: 10 * time.Second, statusEvery: time.Second, watchEvery: defaultWatchEvery,
		skipKernelModules: !wc.signKernelModules(),
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log.Info("signing worker starting", "api_url", wc.APIURL, "fqdn", fqdn, "once", *once)
	return w.run(ctx)
}

// parseLogLevel reads [worker] log_level.
func parseLogLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "", "info":
		return slog.LevelInfo, nil
	case "debug":
		return slog.LevelDebug, nil
	case "warning", "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("[worker] log_level %q: want debug, info, warning or error", s)
}

// workerLogger logs to log_file (appending) or to stderr, which systemd
// sends to the journal.
func workerLogger(wc WorkerConfig, stderr io.Writer) (*slog.Logger, func(), error) {
	level, err := parseLogLevel(wc.LogLevel)
	if err != nil {
		return nil, nil, fmt.Errorf("configuration: %w", err)
	}
	out, done := stderr, func() {}
	if wc.LogFile != "" {
		f, err := os.OpenFile(wc.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return nil, nil, fmt.Errorf("log_file: %w", err)
		}
		out, done = f, func() { f.Close() }
	}
	return slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: level})), done, nil
}
