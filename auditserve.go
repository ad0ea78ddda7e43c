package main

// `audit serve`: the audit log, read-only, over HTTP. At the root of its
// address (or under [audit_serve] prefix) it serves the log as C2SP
// tlog-tiles: the checkpoint (the checkpoint file with its cosignatures),
// hash tiles (tile/<L>/<N>[.p/<W>]) and entry bundles
// (tile/entries/<N>[.p/<W>]), each entry a row's leaf bytes with a 2-byte
// big-endian length before it. Hash tiles and the checkpoint hold no row
// contents and are public. Entry bundles, the page (auditpage.go) and
// receipts name keys, users and packages: they are served only to callers
// with the token ([audit_serve] token_file, as "Authorization: Bearer"), or
// to any caller through the Unix socket ([audit_serve] socket), whose file
// permissions say who may connect.
//
// The server opens the database read-only (SQLite mode=ro and
// query_only; PostgreSQL read-only transactions) and holds no service key:
// it cannot write a row or sign a checkpoint. It serves the checkpoint the
// worker (or `audit checkpoint --output`) wrote.

import (
	"context"
	"crypto/subtle"
	"database/sql"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// AuditServeConfig is the [audit_serve] table.
type AuditServeConfig struct {
	// Listen is the TCP address (default localhost:8380; "" with a socket:
	// the socket only).
	Listen string `toml:"listen"`
	// Socket is a Unix socket path; callers through it see everything.
	Socket string `toml:"socket"`
	// Prefix is the URL path the log is served under (default "/").
	Prefix string `toml:"prefix"`
	// TokenFile holds the bearer token that opens the entry bundles and
	// the page over TCP; without it they are served only on the socket.
	TokenFile string `toml:"token_file"`
	// CheckpointFile is the checkpoint served (default: [worker]
	// checkpoint_file).
	CheckpointFile string `toml:"checkpoint_file"`
	// AuditPublicKey is the log's verifier key (`audit key`): the server
	// checks the checkpoint with it.
	AuditPublicKey string `toml:"audit_public_key"`
}

const defaultServeListen = "localhost:8380"

// openStoreReadOnly opens an existing store for reading only: no schema is
// created or migrated, no service key is loaded, and the connection
// refuses to write.
func openStoreReadOnly(cfg *Config) (*Store, error) {
	s := &Store{path: databaseName(cfg.Database), engine: sqliteEngine}
	var err error
	if isPostgres(cfg.Database) {
		s.engine = postgresEngine
		s.db, err = connectPostgres(cfg.Database, cfg.DatabasePasswordFile, true)
	} else {
		if strings.ContainsAny(cfg.Database, "?#") {
			return nil, fmt.Errorf("database %s: the path may not contain '?' or '#'", cfg.Database)
		}
		if _, err := os.Stat(cfg.Database); err != nil {
			return nil, fmt.Errorf("database: %w", err)
		}
		s.db, err = sql.Open("sqlite", "file:"+cfg.Database+"?mode=ro&_pragma=busy_timeout(30000)&_pragma=query_only(1)")
		if err == nil {
			err = checkDatabase(s.db)
		}
		// A reader of a database in WAL mode needs its -wal and -shm
		// files: without write access to the directory it cannot create
		// them, and they exist while a writer (the worker) has it open.
		if err != nil && strings.Contains(err.Error(), "readonly database") {
			err = fmt.Errorf("%w: its -wal and -shm files are missing and the directory is read-only; they exist while the worker runs, so start it first", err)
		}
	}
	if err == nil {
		err = s.checkVersion()
	}
	if err != nil {
		if s.db != nil {
			s.db.Close()
		}
		return nil, fmt.Errorf("database %s: %w", s.path, err)
	}
	return s, nil
}

// checkVersion refuses a database at another schema version than this
// program's: a read-only opener cannot migrate it.
func (s *Store) checkVersion() error {
	v, err := s.engine.version(s.db)
	if err != nil {
		return sqliteError(err)
	}
	if n := len(schemaSections(s.engine.schema)); v != n {
		return fmt.Errorf("schema version %d, this program expects %d (run a command that opens it read-write, such as audit verify, to migrate it)", v, n)
	}
	return nil
}

// auditServer answers the requests of `audit serve`.
type auditServer struct {
	st             *Store
	prefix         string
	token          []byte // nil: no token opens the private endpoints
	checkpointFile string
	verifiers      note.Verifiers // the log's key and the witnesses'
	vkey           string         // the log's
	log            *slog.Logger

	// tiles caches hash tiles and entry bundles, which never change, by
	// their path: most requests are answered without the database.
	mu    sync.RWMutex
	tiles map[string][]byte
}

// maxCachedTiles bounds the cache: 8 KiB a hash tile, 32 MiB in all.
const maxCachedTiles = 4096

func newAuditServer(st *Store, cfg *Config, log *slog.Logger) (*auditServer, error) {
	sc := cfg.AuditServe
	s := &auditServer{st: st, prefix: sc.Prefix, checkpointFile: sc.CheckpointFile, log: log, tiles: map[string][]byte{}}
	if s.prefix == "" {
		s.prefix = "/"
	}
	if !strings.HasPrefix(s.prefix, "/") || !strings.HasSuffix(s.prefix, "/") {
		return nil, fmt.Errorf("[audit_serve] prefix %q: must start and end with /", sc.Prefix)
	}
	if s.checkpointFile == "" {
		s.checkpointFile = cfg.Worker.CheckpointFile
	}
	if s.checkpointFile == "" {
		return nil, errors.New("[audit_serve] checkpoint_file (or [worker] checkpoint_file) is not set: there is no checkpoint to serve")
	}
	if sc.TokenFile != "" {
		tok, err := readSecret(sc.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("[audit_serve] token_file: %w", err)
		}
		if len(tok) < 16 {
			return nil, fmt.Errorf("[audit_serve] token_file %s: the token is shorter than 16 characters", sc.TokenFile)
		}
		s.token = []byte(tok)
	}
	var witnesses []note.Verifier
	for _, w := range cfg.Witnesses {
		v, err := newCosignatureVerifier(w.Key)
		if err != nil {
			return nil, fmt.Errorf("[[witness]] %s: %w", w.URL, err)
		}
		witnesses = append(witnesses, v)
	}
	if sc.AuditPublicKey == "" {
		return nil, errors.New("[audit_serve] audit_public_key is not set: the server checks the checkpoint it serves with it (audit key prints it)")
	}
	var err error
	s.vkey = sc.AuditPublicKey
	if s.verifiers, err = checkpointVerifiers(sc.AuditPublicKey, note.VerifierList(witnesses...)); err != nil {
		return nil, fmt.Errorf("[audit_serve] audit_public_key: %w", err)
	}
	return s, nil
}

// handler serves the log; trusted callers (the Unix socket) need no token.
func (s *auditServer) handler(trusted bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "read-only: GET and HEAD only", http.StatusMethodNotAllowed)
			return
		}
		path, ok := strings.CutPrefix(r.URL.Path, s.prefix)
		if !ok {
			http.NotFound(w, r)
			return
		}
		private := path == "" || strings.HasPrefix(path, "tile/entries/") || strings.HasPrefix(path, "receipt/")
		if private && !trusted && !s.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="debusine-signing audit log"`)
			http.Error(w, "the audit log's rows are served only with the token ([audit_serve] token_file) or on the Unix socket", http.StatusUnauthorized)
			return
		}
		switch {
		case path == "checkpoint":
			s.serveCheckpoint(w)
		case strings.HasPrefix(path, "tile/"):
			s.serveTile(w, path)
		case path == "":
			s.servePage(w, r)
		case strings.HasPrefix(path, "receipt/"):
			s.serveReceipt(w, strings.TrimPrefix(path, "receipt/"))
		default:
			http.NotFound(w, r)
		}
	})
}

// authorized compares the bearer token in constant time.
func (s *auditServer) authorized(r *http.Request) bool {
	if s.token == nil {
		return false
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), s.token) == 1
}

func (s *auditServer) fail(w http.ResponseWriter, what string, err error) {
	s.log.Error(what, "error", err)
	http.Error(w, what+": internal error (see the server's log)", http.StatusInternalServerError)
}

func (s *auditServer) serveCheckpoint(w http.ResponseWriter) {
	cp, err := readInput(s.checkpointFile, "checkpoint", maxKeyFileSize)
	if errors.Is(err, os.ErrNotExist) {
		http.Error(w, "no checkpoint yet: the worker writes one after its first task", http.StatusServiceUnavailable)
		return
	}
	if err != nil {
		s.fail(w, "checkpoint", err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	w.Write(cp)
}

// parseServedTilePath reads a C2SP tlog-tiles path: tile/<L>/<N>[.p/<W>]
// or tile/entries/<N>[.p/<W>], which are x/mod/sumdb/tlog's tile paths of
// height 8 without the height, "data" named "entries".
func parseServedTilePath(path string) (tlog.Tile, error) {
	rest, ok := strings.CutPrefix(path, "tile/")
	if !ok {
		return tlog.Tile{}, fmt.Errorf("not a tile path: %q", path)
	}
	if e, ok := strings.CutPrefix(rest, "entries/"); ok {
		rest = "data/" + e
	} else if strings.HasPrefix(rest, "data/") {
		return tlog.Tile{}, fmt.Errorf("not a tile path: %q", path)
	}
	t, err := tlog.ParseTilePath("tile/8/" + rest)
	if err != nil || t.L > 60 {
		return tlog.Tile{}, fmt.Errorf("not a tile path: %q", path)
	}
	return t, nil
}

func (s *auditServer) serveTile(w http.ResponseWriter, path string) {
	t, err := parseServedTilePath(path)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	// A tile's path names its contents for good, partial ones included
	// (the width is in the path): once read, it is answered from memory.
	full := t.W == 1<<t.H
	s.mu.RLock()
	data, ok := s.tiles[path]
	s.mu.RUnlock()
	if ok {
		writeTile(w, data, full)
		return
	}
	data, err = s.readTile(t)
	var outside *outsideTreeError
	switch {
	case errors.As(err, &outside):
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	case err != nil:
		s.fail(w, "tile", err)
		return
	}
	s.mu.Lock()
	if len(s.tiles) >= maxCachedTiles {
		clear(s.tiles)
	}
	s.tiles[path] = data
	s.mu.Unlock()
	writeTile(w, data, full)
}

func writeTile(w http.ResponseWriter, data []byte, full bool) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	if full {
		w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		w.Header().Set("Cache-Control", "no-cache")
	}
	w.Write(data)
}

// outsideTreeError is a tile the tree does not reach (yet).
type outsideTreeError struct {
	tile tlog.Tile
	size int64
}

func (e *outsideTreeError) Error() string {
	return fmt.Sprintf("tile %s is outside the tree (size %d)", e.tile.Path(), e.size)
}

// readTile reads a hash tile or an entry bundle in one read transaction,
// after checking that the tree holds all of it.
func (s *auditServer) readTile(t tlog.Tile) ([]byte, error) {
	tx, err := s.st.db.BeginTx(context.Background(), &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	var size int64
	if err := tx.QueryRow("SELECT coalesce(max(id), 0) FROM audit_log").Scan(&size); err != nil {
		return nil, sqliteError(err)
	}
	// The tile holds hashes (or entries) N*256 to N*256+W-1 of its level,
	// which has size >> (8*L) complete ones.
	level := max(t.L, 0) * t.H
	if t.N*(1<<t.H)+int64(t.W) > size>>level {
		return nil, &outsideTreeError{t, size}
	}
	if t.L >= 0 {
		return tlog.ReadTileData(t, treeHashReader(tx))
	}
	first := t.N*(1<<t.H) + 1
	rows, err := tx.Query("SELECT "+auditColumns+" FROM audit_log WHERE id >= $1 AND id < $2 ORDER BY id", first, first+int64(t.W))
	if err != nil {
		return nil, sqliteError(err)
	}
	defer rows.Close()
	var out []byte
	n := 0
	for rows.Next() {
		r, err := scanAuditRow(rows)
		if err != nil {
			return nil, err
		}
		leaf := r.leafData()
		out = binary.BigEndian.AppendUint16(out, uint16(len(leaf)))
		out = append(out, leaf...)
		n++
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if n != t.W {
		return nil, fmt.Errorf("entry bundle %s: %d rows, want %d", t.Path(), n, t.W)
	}
	return out, nil
}

// cmdAuditServe runs the server until SIGTERM or SIGINT.
func cmdAuditServe(e *env, args []string) error {
	fs := flag.NewFlagSet("audit serve", flag.ContinueOnError)
	listen := fs.String("listen", "", "TCP `address` to listen on (default: [audit_serve] listen, else "+defaultServeListen+")")
	if err := parseFlags(fs, e, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("audit serve takes no positional arguments")
	}
	cfg, err := e.config()
	if err != nil {
		return err
	}
	if cfg.Database == "" {
		return fmt.Errorf("configuration %s: \"database\" is not set", cfg.path)
	}
	addr := cfg.AuditServe.Listen
	if *listen != "" {
		addr = *listen
	}
	if addr == "" && cfg.AuditServe.Socket == "" {
		addr = defaultServeListen
	}
	log := slog.New(slog.NewTextHandler(e.stderr, nil))
	st, err := openStoreReadOnly(cfg)
	if err != nil {
		return err
	}
	e.store = st
	srv, err := newAuditServer(st, cfg, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var servers []*http.Server
	errc := make(chan error, 2)
	start := func(l net.Listener, trusted bool) {
		hs := &http.Server{Handler: srv.handler(trusted), ReadHeaderTimeout: 10 * time.Second, WriteTimeout: time.Minute, IdleTimeout: time.Minute}
		servers = append(servers, hs)
		log.Info("serving the audit log", "address", l.Addr().String(), "prefix", srv.prefix, "rows", trusted || srv.token != nil)
		go func() { errc <- hs.Serve(l) }()
	}
	if addr != "" {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		start(l, false)
	}
	if cfg.AuditServe.Socket != "" {
		os.Remove(cfg.AuditServe.Socket)
		l, err := net.Listen("unix", cfg.AuditServe.Socket)
		if err != nil {
			return err
		}
		start(l, true)
	}
	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, hs := range servers {
		hs.Shutdown(shutdown)
	}
	return err
}
