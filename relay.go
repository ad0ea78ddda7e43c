package main

// The relay (docs/relay.md): `relay fetch` on a connected host takes work
// requests for keys held on an air-gapped host and writes them to a bundle,
// `relay sign` on the offline host signs them into a result, and `relay
// complete` back on the connected host checks the result and delivers it to
// the server as the worker would. This file holds the configuration, the
// relay's state and `relay fetch`; relay_sign.go and relay_complete.go the
// two other steps, relay_bundle.go the file formats.

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/mod/sumdb/note"
)

// relayTasks are the tasks a relay takes: those signing with a stored key.
var relayTasks = map[string]bool{"sign": true, "debsign": true, "signrepositoryindex": true}

// RelayConfig is the [relay] table.
type RelayConfig struct {
	// StateDir keeps, on the connected host, the bundles sent and not yet
	// completed, and on the offline host the record of bundles signed.
	StateDir string `toml:"state_dir"`
	// Connected host: the key that signs bundles, the offline host's
	// public key that results must be signed with, how many work requests
	// a bundle may carry (one worker identity each), and the keys held
	// offline.
	BundleKeyFile   string     `toml:"bundle_key_file"`
	ResultPublicKey string     `toml:"result_public_key"`
	Workers         int        `toml:"workers"`
	Keys            []RelayKey `toml:"keys"`
	// AuditPublicKey, when set, is the offline host's audit verifier key
	// (`audit key` there): results' checkpoints must verify with it.
	AuditPublicKey string `toml:"audit_public_key"`
	// Offline host: the relay's public key that bundles must be signed
	// with, and the key that signs results.
	BundlePublicKey string `toml:"bundle_public_key"`
	ResultKeyFile   string `toml:"result_key_file"`
}

// RelayKey is one key held on the offline host, as the relay knows it.
type RelayKey struct {
	Purpose       string `toml:"purpose"`
	Fingerprint   string `toml:"fingerprint"`
	PublicKeyFile string `toml:"public_key_file"`
}

// relayKey is a configured offline key with its public key read.
type relayKey struct {
	RelayKey
	publicKey []byte
}

func (k *relayKey) slug() string { return k.Purpose + ":" + k.Fingerprint }

// paths lists the [relay] paths, which loadConfig makes absolute.
func (rc *RelayConfig) paths() []*string {
	ps := []*string{&rc.StateDir, &rc.BundleKeyFile, &rc.ResultKeyFile}
	for i := range rc.Keys {
		ps = append(ps, &rc.Keys[i].PublicKeyFile)
	}
	return ps
}

// readRelayKeys reads the public key of every configured offline key and
// checks that it has the configured fingerprint, so that a wrong file is
// found now rather than when an output fails to verify.
func readRelayKeys(cfg *Config) (map[string]*relayKey, error) {
	keys := map[string]*relayKey{}
	for _, rk := range cfg.Relay.Keys {
		k := &relayKey{RelayKey: rk}
		k.Fingerprint = normalFingerprint(k.Fingerprint)
		data, err := readInput(k.PublicKeyFile, "public_key_file", maxKeyFileSize)
		if err != nil {
			return nil, fmt.Errorf("configuration %s: [[relay.keys]] %s: %w", cfg.path, k.slug(), err)
		}
		var got string
		switch k.Purpose {
		case purposeUEFI:
			cert, err := parseCertificatePEM(data)
			if err != nil {
				return nil, fmt.Errorf("configuration %s: [[relay.keys]] %s: %w", cfg.path, k.PublicKeyFile, err)
			}
			got = certificateFingerprint(cert)
		case purposeOpenPGP:
			el, err := readOpenPGPKeys(data)
			if err != nil || len(el) != 1 {
				return nil, fmt.Errorf("configuration %s: [[relay.keys]] %s: want one armoured OpenPGP public key (%v)", cfg.path, k.PublicKeyFile, err)
			}
			got = openpgpFingerprint(el[0])
		default:
			return nil, fmt.Errorf("configuration %s: [[relay.keys]] purpose %q: want %s or %s", cfg.path, k.Purpose, purposeUEFI, purposeOpenPGP)
		}
		if got != k.Fingerprint {
			return nil, fmt.Errorf("configuration %s: [[relay.keys]] %s holds the key %s, not %s", cfg.path, k.PublicKeyFile, got, k.Fingerprint)
		}
		k.publicKey = data
		keys[k.slug()] = k
	}
	return keys, nil
}

// parseInterspersed parses flags given before or after the positional
// arguments (relay sign BUNDLE --output RESULT), which flag alone does not.
func parseInterspersed(fs *flag.FlagSet, e *env, args []string) ([]string, error) {
	var positional []string
	for {
		if err := parseFlags(fs, e, args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return positional, nil
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func cmdRelayGenerateKey(e *env, args []string) error {
	fs := flag.NewFlagSet("relay generate-key", flag.ContinueOnError)
	name := fs.String("name", "", "the key's `name`, e.g. the host's name")
	pos, err := parseInterspersed(fs, e, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *name == "" {
		return usagef("relay generate-key takes --name NAME and the PATH of the new private key file")
	}
	vkey, err := generateNoteKey(pos[0], *name)
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, vkey)
	return nil
}

// relayConfig loads the configuration and checks the [relay] settings
// named by need.
func relayConfig(e *env, need ...string) (*Config, error) {
	cfg, err := e.config()
	if err != nil {
		return nil, err
	}
	if cfg.path == "" {
		return nil, errors.New("the relay needs a configuration file with a [relay] table (--config FILE; see signing.toml.example)")
	}
	rc := cfg.Relay
	values := map[string]string{"state_dir": rc.StateDir, "bundle_key_file": rc.BundleKeyFile, "result_public_key": rc.ResultPublicKey,
		"bundle_public_key": rc.BundlePublicKey, "result_key_file": rc.ResultKeyFile,
		"api_url": cfg.Worker.APIURL, "token_file": cfg.Worker.TokenFile}
	for _, n := range need {
		if values[n] == "" {
			table := "relay"
			if n == "api_url" || n == "token_file" {
				table = "worker"
			}
			return nil, fmt.Errorf("configuration %s: [%s] %s is not set", cfg.path, table, n)
		}
	}
	if err := os.MkdirAll(rc.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("[relay] state_dir: %w", err)
	}
	return cfg, nil
}

// lockState holds the state directory's lock until the returned function
// runs: one relay command at a time changes the state.
func lockState(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: another relay command is running (%v)", dir, err)
	}
	return func() { f.Close() }, nil
}

// relayLogAndLock opens the worker log and takes the state directory's
// lock, for the commands that change the state; done releases both.
func relayLogAndLock(cfg *Config, stderr io.Writer) (log *slog.Logger, done func(), err error) {
	log, closeLog, err := workerLogger(cfg.Worker, stderr)
	if err != nil {
		return nil, nil, err
	}
	unlock, err := lockState(cfg.Relay.StateDir)
	if err != nil {
		closeLog()
		return nil, nil, err
	}
	return log, func() {
		unlock()
		closeLog()
	}, nil
}

// relayState is what the relay remembers of a bundle it sent, in
// <state_dir>/outstanding/<id>.json next to a copy of the bundle, until
// every work request of it is completed; then both move to completed/.
type relayState struct {
	ID             string            `json:"id"`
	ManifestSHA256 string            `json:"manifest_sha256"`
	CreatedAt      string            `json:"created_at"`
	CompletedAt    string            `json:"completed_at,omitempty"`
	WorkRequests   []*relayWorkState `json:"work_requests"`
}

// relayWorkState is one work request of a bundle on the relay.
type relayWorkState struct {
	ID   int64 `json:"id"`
	Slot int   `json:"slot"` // the worker identity that holds it
	// Logs and Sources are the fetch stage's debug logs and input
	// artifacts, uploaded with the rest at completion.
	Logs      map[string]string `json:"logs"`
	Sources   []int64           `json:"sources"`
	FetchMS   int64             `json:"fetch_ms"`
	FetchCPU  int64             `json:"fetch_cpu_ms"`
	StartedAt string            `json:"started_at"`
	// Completion is the body sent to the server, saved before sending so
	// that a completion interrupted by a crash is resent as is, never
	// made twice; Completed is when the server took it.
	Completion json.RawMessage `json:"completion,omitempty"`
	Completed  string          `json:"completed,omitempty"`
}

func outstandingDir(stateDir string) string { return filepath.Join(stateDir, "outstanding") }
func completedDir(stateDir string) string   { return filepath.Join(stateDir, "completed") }

// saveState writes st durably to dir/<id>.json.
func saveState(dir string, st *relayState) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	p := filepath.Join(dir, st.ID+".json")
	if err := writeFileSync(p+".tmp", b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		return err
	}
	syncDir(dir)
	return nil
}

func loadState(p string) (*relayState, error) {
	b, err := readInput(p, "relay state", maxTextSize)
	if err != nil {
		return nil, err
	}
	var st relayState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("relay state %s: %w", p, err)
	}
	return &st, nil
}

// busySlots lists the worker identities holding a work request that is not
// completed yet: calling get-next with one of them would make the server
// abort and retry that work request.
func busySlots(stateDir string) (map[int]int64, error) {
	busy := map[int]int64{}
	entries, err := os.ReadDir(outstandingDir(stateDir))
	if errors.Is(err, fs.ErrNotExist) {
		return busy, nil
	}
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		st, err := loadState(filepath.Join(outstandingDir(stateDir), e.Name()))
		if err != nil {
			return nil, err
		}
		for _, w := range st.WorkRequests {
			if w.Completed == "" {
				busy[w.Slot] = w.ID
			}
		}
	}
	return busy, nil
}

// relayWorkers returns the relay's worker identities: slot 1 is the
// [worker] table's, slot n > 1 has its token in <state_dir>/worker-n/ and
// registers as n.<fqdn>.
func relayWorkers(cfg *Config, keys map[string]*relayKey, log *slog.Logger) ([]*worker, error) {
	wc := cfg.Worker
	trusted, err := trustedCerts(cfg)
	if err != nil {
		return nil, err
	}
	fqdn := wc.FQDN
	if fqdn == "" {
		if fqdn, err = os.Hostname(); err != nil {
			return nil, fmt.Errorf("fqdn: %w (set [worker] fqdn)", err)
		}
	}
	advertised := []string{}
	for slug := range keys {
		advertised = append(advertised, slug)
	}
	slices.Sort(advertised)
	n := max(cfg.Relay.Workers, 1)
	var ws []*worker
	for slot := 1; slot <= n; slot++ {
		api, err := newAPIClient(wc.APIURL, wc.CAFile, log.With("slot", slot))
		if err != nil {
			return nil, err
		}
		w := &worker{api: api, log: log.With("slot", slot), fqdn: fqdn, tokenFile: wc.TokenFile, activationTokenFile: wc.ActivationTokenFile,
			trusted: trusted, once: true, workDir: os.TempDir(), wsDelay: wsJitter, relayKeys: advertised}
		if slot > 1 {
			dir := filepath.Join(cfg.Relay.StateDir, fmt.Sprintf("worker-%d", slot))
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return nil, err
			}
			w.fqdn, w.tokenFile, w.activationTokenFile = fmt.Sprintf("%d.%s", slot, fqdn), filepath.Join(dir, "token"), ""
		}
		ws = append(ws, w)
	}
	return ws, nil
}

// trustedCerts reads trusted_certs into the form the worker checks.
func trustedCerts(cfg *Config) (map[string]bool, error) {
	trusted := map[string]bool{}
	for _, c := range cfg.TrustedCerts {
		f := normalFingerprint(c)
		if _, err := hex.DecodeString(f); err != nil || len(f) != 64 {
			return nil, fmt.Errorf("configuration %s: trusted_certs: %q is not a SHA-256 fingerprint", cfg.path, c)
		}
		trusted[f] = true
	}
	return trusted, nil
}

// takeOne connects w like the worker, sends its metadata and takes one work
// request: nil when none arrived within wait.
func (w *worker) takeOne(ctx context.Context, wait time.Duration) (*workRequest, error) {
	w.wake = make(chan struct{}, 1)
	w.metadataSent.Store(false)
	if err := w.ensureToken(ctx); err != nil {
		return nil, err
	}
	if err := w.flushPendingCompletion(ctx); err != nil {
		return nil, err
	}
	fatal, stopWS := w.startWebsocket(ctx)
	defer stopWS()
	timeout := time.After(wait)
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case err := <-fatal:
			return nil, err
		case <-timeout:
			return nil, nil
		case <-w.wake:
		}
		if !w.metadataSent.Load() {
			continue
		}
		wr, err := w.api.getNext(ctx)
		if err != nil || wr != nil {
			return wr, err
		}
	}
}

// relayFetch is the state of one relay fetch.
type relayFetch struct {
	cfg     *Config
	keys    map[string]*relayKey
	log     *slog.Logger
	staging string // the bundle's files, wr-<id>/in/…
	state   *relayState
	entries []bundleWorkRequest
}

func cmdRelayFetch(e *env, args []string) error {
	fs := flag.NewFlagSet("relay fetch", flag.ContinueOnError)
	output := fs.String("output", "", "the bundle `file` to write")
	wait := fs.Duration("wait", 10*time.Second, "how long each worker identity waits for work")
	pos, err := parseInterspersed(fs, e, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 || *output == "" {
		return usagef("relay fetch takes --output BUNDLE and no other argument")
	}
	cfg, err := relayConfig(e, "state_dir", "bundle_key_file", "api_url", "token_file")
	if err != nil {
		return err
	}
	signer, err := loadNoteSigner(cfg.Relay.BundleKeyFile)
	if err != nil {
		return err
	}
	keys, err := readRelayKeys(cfg)
	if err != nil {
		return err
	}
	if len(keys) == 0 {
		return fmt.Errorf("configuration %s: no [[relay.keys]]: the relay has nothing to take work for", cfg.path)
	}
	log, done, err := relayLogAndLock(cfg, e.stderr)
	if err != nil {
		return err
	}
	defer done()
	workers, err := relayWorkers(cfg, keys, log)
	if err != nil {
		return err
	}
	busy, err := busySlots(cfg.Relay.StateDir)
	if err != nil {
		return err
	}
	id, err := newBundleID()
	if err != nil {
		return err
	}
	f := &relayFetch{cfg: cfg, keys: keys, log: log, staging: filepath.Join(cfg.Relay.StateDir, "fetch-"+id),
		state: &relayState{ID: id, CreatedAt: nowRFC3339()}}
	if err := os.Mkdir(f.staging, 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(f.staging)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var fillErr error
	for i, w := range workers {
		slot := i + 1
		if wr, ok := busy[slot]; ok {
			log.Info("worker identity busy with a work request sent offline; skipped", "slot", slot, "work_request", wr)
			continue
		}
		// Work already taken goes into the bundle even when another
		// identity fails: left out, it would wait for the next get-next
		// of its identity to be aborted and retried.
		if fillErr = f.fill(ctx, w, slot, *wait); fillErr != nil {
			break
		}
	}
	if len(f.entries) == 0 {
		if fillErr == nil {
			fmt.Fprintln(e.stderr, "debusine-signing: no work for the offline keys; no bundle written")
		}
		return fillErr
	}
	// One line for both errors: errors.Join would give two.
	if err := f.write(signer, *output, e); err != nil {
		if fillErr != nil {
			return fmt.Errorf("%w; and before that: %w", err, fillErr)
		}
		return err
	}
	return fillErr
}

// fill takes work with slot's worker identity until it holds one work
// request for the bundle, or the server has none.
func (f *relayFetch) fill(ctx context.Context, w *worker, slot int, wait time.Duration) error {
	for {
		wr, err := w.takeOne(ctx, wait)
		if err != nil {
			return fmt.Errorf("worker identity %d (%s): %w", slot, w.fqdn, err)
		}
		if wr == nil {
			return nil
		}
		entry, ws, err := f.prepare(ctx, w, wr)
		if err != nil {
			return err
		}
		if entry != nil {
			ws.Slot = slot
			f.entries = append(f.entries, *entry)
			f.state.WorkRequests = append(f.state.WorkRequests, ws)
			return nil
		}
	}
}

// prepare runs the fetch stage of wr as the worker does: inputs downloaded
// and checked, permissions asked. A work request the worker would fail
// before signing is failed now, exactly as the worker would, and prepare
// returns nil.
func (f *relayFetch) prepare(ctx context.Context, w *worker, wr *workRequest) (*bundleWorkRequest, *relayWorkState, error) {
	log := w.log.With("work_request", wr.ID, "task", wr.TaskName)
	log.Info("work request taken for the offline host")
	deliver := func(c completion) (*bundleWorkRequest, *relayWorkState, error) {
		body, err := json.Marshal(c)
		if err != nil {
			return nil, nil, err
		}
		return nil, nil, w.deliver(ctx, wr.ID, body)
	}
	if _, bad := w.configure(wr); bad != nil {
		return deliver(*bad)
	}
	start, cpu0 := time.Now(), cpuTime()
	dir := filepath.Join(f.staging, wrDir(wr.ID))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, nil, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, nil, err
	}
	defer root.Close()
	tr := &taskRun{wr: wr, log: log, dir: dir, root: root, logs: map[string]*bytes.Buffer{}}
	tr.enter("fetch_input")
	entry, err := f.fetchInputs(ctx, w, tr)
	if ctx.Err() != nil {
		return nil, nil, ctx.Err()
	}
	if err != nil {
		c, uerr := w.finish(ctx, tr, false, err, time.Since(start), cpuTime()-cpu0)
		if uerr != nil {
			c = executeFailedCompletion(wr, uerr)
		}
		os.RemoveAll(dir)
		return deliver(c)
	}
	tr.logf("fetch_input.log", "sent to the offline host in bundle %s\n", f.state.ID)
	ws := &relayWorkState{ID: wr.ID, Logs: map[string]string{}, Sources: tr.sources, StartedAt: nowRFC3339(),
		FetchMS: time.Since(start).Milliseconds(), FetchCPU: (cpuTime() - cpu0).Milliseconds()}
	for name, b := range tr.logs {
		ws.Logs[name] = b.String()
	}
	return entry, ws, nil
}

// fetchInputs runs the task's own fetch stage and checks that the offline
// host holds every key it needs.
func (f *relayFetch) fetchInputs(ctx context.Context, w *worker, tr *taskRun) (*bundleWorkRequest, error) {
	wr := tr.wr
	entry := &bundleWorkRequest{WorkRequest: *wr}
	var inputs []*input
	switch strings.ToLower(wr.TaskName) {
	case "sign":
		t, err := parseSignTask(wr)
		if err != nil {
			return nil, err
		}
		for i := range t.UnsignedIDs {
			in, err := w.describeSignInput(ctx, tr, t, i)
			if err != nil {
				return nil, err
			}
			for _, name := range in.files {
				if err := w.downloadFile(ctx, tr, in, name); err != nil {
					return nil, err
				}
			}
			tr.sources = append(tr.sources, in.id)
			tr.logf("fetch_input.log", "downloaded artifact %d (%s): %d file(s)\n", in.id, in.art.Category, len(in.files))
			inputs = append(inputs, in)
		}
		entry.Keys = []string{t.Purpose + ":" + t.Fingerprint}
	case "debsign":
		t, err := parseDebsignTask(wr)
		if err != nil {
			return nil, err
		}
		in, err := w.fetchDebsignInput(ctx, tr, t)
		if err != nil {
			return nil, err
		}
		inputs, entry.Keys = []*input{in}, []string{purposeOpenPGP + ":" + t.Fingerprint}
	case "signrepositoryindex":
		t, err := parseRepositoryIndexTask(wr)
		if err != nil {
			return nil, err
		}
		in, err := w.fetchRepositoryIndexInput(ctx, tr, t)
		if err != nil {
			return nil, err
		}
		inputs = []*input{in}
		for _, fpr := range t.SigningKeys {
			entry.Keys = append(entry.Keys, purposeOpenPGP+":"+fpr)
		}
	}
	for _, slug := range entry.Keys {
		if f.keys[slug] == nil {
			return nil, fmt.Errorf("key %s: %w (not among the relay's [[relay.keys]])", slug, errUnknownKey)
		}
	}
	for _, in := range inputs {
		entry.Inputs = append(entry.Inputs, bundleInput{Artifact: in.id, Category: in.art.Category, Data: in.art.Data,
			Dir: in.dir, Files: in.files, Permission: in.perm})
	}
	return entry, nil
}

// write signs the manifest and writes the bundle: first the relay's copy
// and state (so that what is carried is always known here), then output.
func (f *relayFetch) write(signer note.Signer, output string, e *env) error {
	files, err := describeFiles(f.staging, "")
	if err != nil {
		return err
	}
	newest, err := readOptional(filepath.Join(f.cfg.Relay.StateDir, newestCheckpointName))
	if err != nil {
		return err
	}
	m := bundleManifest{Format: bundleFormat, ID: f.state.ID, CreatedAt: f.state.CreatedAt, Server: f.cfg.Worker.APIURL,
		WorkRequests: f.entries, Files: files, AuditCheckpoint: string(newest)}
	manifest, err := signManifest(m, signer)
	if err != nil {
		return err
	}
	f.state.ManifestSHA256 = (&openedArchive{Manifest: manifest}).SHA256()
	dir := outstandingDir(f.cfg.Relay.StateDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	kept := filepath.Join(dir, f.state.ID+".tar")
	if err := writeArchive(kept, manifest, f.staging, files); err != nil {
		return err
	}
	if err := saveState(dir, f.state); err != nil {
		return err
	}
	if err := writeArchive(output, manifest, f.staging, files); err != nil {
		return fmt.Errorf("%w (the bundle is kept as %s: copy that file instead)", err, kept)
	}
	ids := make([]string, len(f.state.WorkRequests))
	for i, w := range f.state.WorkRequests {
		ids[i] = fmt.Sprint(w.ID)
	}
	fmt.Fprintf(e.stdout, "bundle %s: %d work request(s) (%s), %d file(s), written to %s\n", f.state.ID, len(ids), strings.Join(ids, ", "), len(files), output)
	return nil
}
