package main

// `debusine-signing check`: everything the configuration names, checked
// before it goes live (as nginx -t or sshd -t), without signing or changing
// anything: no database is created or migrated, no audit key made, no
// token registered, no work taken. One line per check; exit status 3 if any
// fails. The systemd unit runs it as ExecStartPre, so that a broken set-up
// stops in the journal with its reason instead of failing tasks.

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/sys/unix"
)

// checkAuditTail is how many of the newest audit rows check verifies
// without --full.
const checkAuditTail = 100

// checker holds what the checks found so far.
type checker struct {
	cfg    *Config
	full   bool
	out    io.Writer
	failed int
	// store is the database opened for checking, nil when it is not
	// there yet or cannot be opened; keys are its keys.
	store *Store
	keys  []*Key
	// schema is the store's schema version, 0 before it is created.
	schema int
}

// checks run in order; each prints one or more lines. Checks that need the
// store skip when an earlier one could not open it.
var checks = []func(c *checker){
	(*checker).serviceKeys,
	(*checker).database,
	(*checker).keyRows,
	(*checker).storedKeys,
	(*checker).auditLog,
	(*checker).workerFiles,
	(*checker).server,
	(*checker).tokens,
	(*checker).relay,
}

func (c *checker) ok(format string, args ...any) {
	fmt.Fprintf(c.out, "OK  "+format+"\n", args...)
}

func (c *checker) fail(what string, err error) {
	c.failed++
	fmt.Fprintf(c.out, "FAIL %s: %v\n", what, err)
}

func cmdCheck(e *env, args []string) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	full := fs.Bool("full", false, "verify the whole audit log, not only its newest rows")
	if err := parseFlags(fs, e, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("check takes no positional arguments")
	}
	c := &checker{full: *full, out: e.stdout}
	if e.configPath == "" {
		// The default store, as the other commands would use it, but
		// nothing is created: a missing service key is reported.
		dir, err := defaultStateDir()
		if err != nil {
			c.fail("configuration", err)
			return c.result()
		}
		c.cfg = &Config{Database: filepath.Join(dir, "signing.sqlite3"), ServiceKeys: []string{filepath.Join(dir, "service-key")}}
		c.ok("configuration: none given; the default store in %s", dir)
	} else {
		cfg, err := loadConfig(e.configPath)
		if err != nil {
			c.fail("configuration", err)
			return c.result()
		}
		if err := checkConfigValues(cfg); err != nil {
			c.fail("configuration "+cfg.path, err)
		} else {
			c.ok("configuration %s", cfg.path)
		}
		c.cfg = cfg
	}
	defer func() {
		if c.store != nil {
			c.store.Close()
		}
	}()
	for _, check := range checks {
		check(c)
	}
	return c.result()
}

func (c *checker) result() error {
	if c.failed > 0 {
		return fmt.Errorf("check: %d check(s) failed", c.failed)
	}
	return nil
}

// checkConfigValues checks the values the commands would refuse only when
// they reach them.
func checkConfigValues(cfg *Config) error {
	if _, err := parsePINPolicy(cfg.YubiKey.PINPolicy); err != nil {
		return fmt.Errorf("[yubikey] pin_policy: %w", err)
	}
	if _, err := parseTouchPolicy(cfg.YubiKey.TouchPolicy); err != nil {
		return fmt.Errorf("[yubikey] touch_policy: %w", err)
	}
	if _, err := parseLogLevel(cfg.Worker.LogLevel); err != nil {
		return err
	}
	if cfg.Worker.APIURL != "" && cfg.Worker.TokenFile == "" {
		return errors.New("[worker] api_url is set but token_file is not")
	}
	_, err := trustedCerts(cfg)
	return err
}

func (c *checker) serviceKeys() {
	if len(c.cfg.ServiceKeys) == 0 {
		c.ok("service keys: none configured (the store can hold token keys only)")
		return
	}
	for _, p := range c.cfg.ServiceKeys {
		if _, err := loadServiceKey(p); err != nil {
			c.fail("service key "+p, err)
			continue
		}
		c.ok("service key %s: present, private", p)
	}
}

// database opens the store as it is: reachable, ours, with the schema and
// triggers this version makes, and writable by this user.
func (c *checker) database() {
	database := c.cfg.Database
	if database == "" {
		c.ok("database: none configured (a relay's connected host needs none)")
		return
	}
	what := "database " + databaseName(database)
	st := &Store{path: databaseName(database), yubikey: c.cfg.YubiKey}
	var db *sql.DB
	var err error
	if isPostgres(database) {
		st.engine = postgresEngine
		db, err = connectPostgres(database, c.cfg.DatabasePasswordFile, false)
	} else {
		st.engine = sqliteEngine
		if _, err := os.Stat(database); errors.Is(err, fs.ErrNotExist) {
			if err := checkWritableDir(filepath.Dir(database)); err != nil {
				c.fail(what, fmt.Errorf("does not exist yet, and cannot be created: %w", err))
				return
			}
			c.ok("%s: not created yet; the first command that opens the store creates it", what)
			return
		}
		// SQLite creates its -wal and -shm files beside the database, even
		// to read it.
		if err := checkWritableDir(filepath.Dir(database)); err != nil {
			c.fail(what, fmt.Errorf("not writable by this user: %w", err))
			return
		}
		if db, err = sql.Open("sqlite", sqliteDSN(database)); err == nil {
			if err = checkDatabase(db); err != nil {
				db.Close()
			}
		}
	}
	if err != nil {
		c.fail(what, err)
		return
	}
	st.db = db
	version, err := st.engine.version(db)
	if err != nil {
		db.Close()
		c.fail(what, sqliteError(err))
		return
	}
	c.store, c.schema = st, version
	for _, p := range c.cfg.ServiceKeys {
		// The service keys' own check has said what is wrong with one.
		if k, err := loadServiceKey(p); err == nil {
			st.serviceKeys = append(st.serviceKeys, k)
		}
	}
	switch n := len(schemaSections(st.engine.schema)); {
	case version == 0:
		c.ok("%s: empty; the first command that opens the store creates the schema", what)
	case version < n:
		c.ok("%s: schema version %d; the next command that opens the store migrates it to %d", what, version, n)
	default:
		if err := st.checkSchema(); err != nil {
			c.fail(what, err)
		} else {
			c.ok("%s: reachable, schema and triggers as expected", what)
		}
	}
	if err := checkStoreWritable(st, version > 0); err != nil {
		c.fail(what, fmt.Errorf("not writable by this user: %w", err))
		return
	}
	c.ok("%s: writable by this user", what)
	if version == 0 {
		return
	}
	// Keys verifies each key row against the audit key (its
	// authentication code, fingerprint and sealed key).
	if c.keys, err = st.Keys(); err != nil {
		c.fail("stored keys", err)
	}
}

// checkStoreWritable takes the store's write lock in a transaction that,
// when the tables exist, inserts nothing into them, and rolls back: a
// read-only file, directory, role or transaction shows, and nothing
// changes. Inserting no rows still needs the right to insert (PostgreSQL),
// and fires no trigger.
func checkStoreWritable(st *Store, tables bool) error {
	tx, err := st.begin()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, table := range []string{"keys", "audit_log"} {
		if !tables {
			break
		}
		if _, err := tx.Exec("INSERT INTO " + table + " SELECT * FROM " + table + " WHERE 1 = 0"); err != nil {
			return fmt.Errorf("%s: %w", table, sqliteError(err))
		}
	}
	return nil
}

// checkWritableDir says why this user cannot create files in dir.
func checkWritableDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if err := unix.Faccessat(unix.AT_FDCWD, dir, unix.W_OK|unix.X_OK, unix.AT_EACCESS); err != nil {
		return fmt.Errorf("directory %s: %w", dir, err)
	}
	return nil
}

// keyRows runs the store's own check of the audit key's pin and of every
// key row (Store.VerifyKeys), one line per problem.
func (c *checker) keyRows() {
	if c.store == nil || c.schema == 0 {
		return
	}
	problems, err := c.store.VerifyKeys()
	if err != nil {
		c.fail("key rows", err)
		return
	}
	for _, p := range problems {
		c.fail("key row "+p.Key, errors.New(p.Problem))
	}
	if len(problems) == 0 {
		c.ok("key rows verified; the audit key is pinned beside the service key")
	}
}

// storedKeys unseals every software key with the service keys (and
// forgets it: nothing is signed); token keys are the tokens check's.
func (c *checker) storedKeys() {
	if c.store == nil || c.keys == nil {
		return
	}
	n := 0
	for _, k := range c.keys {
		storage, err := k.Storage()
		if err != nil {
			c.fail("key "+k.String(), err)
			continue
		}
		if storage != storageNaCl {
			continue
		}
		plain, err := c.store.Unseal(k)
		if err != nil {
			c.fail("key "+k.String(), err)
			continue
		}
		clear(plain)
		n++
	}
	c.ok("%d stored software key(s) unseal with the service keys", n)
}

// auditLog verifies the chain and authentication codes of the newest rows,
// or with --full the whole log and the schema as audit verify does.
func (c *checker) auditLog() {
	if c.store == nil || c.keys == nil {
		return
	}
	if c.full {
		v, err := c.store.VerifyAudit()
		if err != nil {
			c.fail("audit log", err)
			return
		}
		c.ok("audit log: all %d rows verified", v.Rows)
		return
	}
	n, err := c.store.verifyAuditTail(checkAuditTail)
	if err != nil {
		c.fail("audit log", err)
		return
	}
	c.ok("audit log: newest %d row(s) verified (check --full verifies all)", n)
}

// verifyAuditTail checks the newest n rows of the audit log: each one's
// hash, its link to the row before and its authentication code.
func (s *Store) verifyAuditTail(n int) (int, error) {
	var last int64
	if err := s.db.QueryRow("SELECT coalesce(max(id), 0) FROM audit_log").Scan(&last); err != nil {
		return 0, sqliteError(err)
	}
	if last == 0 {
		return 0, nil
	}
	ak, err := s.auditKey(nil)
	if err != nil {
		return 0, err
	}
	// The row before the first one checked is read for its hash; before
	// row 1 is the genesis hash.
	prevID := max(last-int64(n), 0)
	rows, err := s.db.Query("SELECT "+auditColumns+" FROM audit_log WHERE id >= $1 ORDER BY id", prevID)
	if err != nil {
		return 0, sqliteError(err)
	}
	defer rows.Close()
	prevHash, checked := "", 0
	if prevID == 0 {
		prevHash = genesisHash
	}
	for rows.Next() {
		r, err := scanAuditRow(rows)
		if err != nil {
			return checked, err
		}
		if prevHash == "" {
			if r.ID != prevID {
				return checked, fmt.Errorf("audit log broken at row %d: row %d is missing", r.ID, prevID)
			}
			prevHash = r.Hash
			continue
		}
		switch {
		case r.ID != prevID+1:
			return checked, fmt.Errorf("audit log broken at row %d: row %d is missing", r.ID, prevID+1)
		case r.PrevHash != prevHash:
			return checked, fmt.Errorf("audit log broken at row %d: its prev_hash does not match row %d (a row deleted, inserted or reordered)", r.ID, prevID)
		case r.computeHash() != r.Hash:
			return checked, fmt.Errorf("audit log broken at row %d: its contents do not match its hash (row modified)", r.ID)
		case !ak.checkRowMAC(r.Hash, r.MAC):
			return checked, fmt.Errorf("audit log broken at row %d: its authentication code does not match (row written or rewritten without the audit key)", r.ID)
		}
		prevID, prevHash = r.ID, r.Hash
		checked++
	}
	if err := rows.Err(); err != nil {
		return checked, sqliteError(err)
	}
	return checked, nil
}

// workerFiles checks the [worker] secret files: present and private.
func (c *checker) workerFiles() {
	wc := c.cfg.Worker
	if wc.TokenFile != "" {
		if _, err := os.Lstat(wc.TokenFile); errors.Is(err, fs.ErrNotExist) {
			if err := checkWritableDir(filepath.Dir(wc.TokenFile)); err != nil {
				c.fail("token file "+wc.TokenFile, fmt.Errorf("does not exist, and the worker cannot write it: %w", err))
			} else {
				c.ok("token file %s: not there yet; the worker registers and writes it", wc.TokenFile)
			}
		} else if err := checkSecretFile(wc.TokenFile); err != nil {
			c.fail("token file "+wc.TokenFile, err)
		} else {
			c.ok("token file %s: present, private", wc.TokenFile)
		}
	}
	if wc.ActivationTokenFile != "" {
		if err := checkSecretFile(wc.ActivationTokenFile); err != nil {
			c.fail("activation token file "+wc.ActivationTokenFile, err)
		} else {
			c.ok("activation token file %s: present, private", wc.ActivationTokenFile)
		}
	}
}

// checkSecretFile says why a secret file is not a regular, non-empty file
// that only its owner can read.
func checkSecretFile(p string) error {
	f, fi, err := openInput(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("permissions %04o are too open (readable by group or others); run chmod 600 %s", fi.Mode().Perm(), p)
	}
	if fi.Size() == 0 {
		return errors.New("empty")
	}
	return nil
}

// server asks the server who the token is (GET whoami, docs/protocol.md
// §2.4): over HTTPS with the configured CA, and without taking work.
func (c *checker) server() {
	wc := c.cfg.Worker
	if wc.APIURL == "" {
		return
	}
	what := "server " + wc.APIURL
	api, err := newAPIClient(wc.APIURL, wc.CAFile, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		c.fail(what, err)
		return
	}
	if wc.TokenFile != "" {
		if api.token, err = readSecret(wc.TokenFile); err != nil && !errors.Is(err, fs.ErrNotExist) {
			c.fail(what, fmt.Errorf("token: %w", err))
			return
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := api.once(ctx, &request{method: http.MethodGet, url: api.base + "/1.0/whoami/", ok: []int{200}})
	if err != nil {
		if s := httpStatus(err); s == 401 || s == 403 {
			err = fmt.Errorf("refuses the token (%w); a new worker waits for debusine-admin worker enable --worker-type signing NAME", err)
		}
		c.fail(what, err)
		return
	}
	var who struct {
		WorkerToken bool `json:"worker_token"`
	}
	if err := json.Unmarshal(resp.body, &who); err != nil {
		c.fail(what, fmt.Errorf("GET %s/1.0/whoami/: unreadable answer: %w", api.base, err))
		return
	}
	switch {
	case api.token == "":
		c.ok("%s: reachable over HTTPS; no token yet (the worker registers)", what)
	case !who.WorkerToken:
		c.fail(what, errors.New("does not accept the token: it is no enabled worker's"))
	default:
		c.ok("%s: reachable over HTTPS, token accepted", what)
	}
}

// tokens checks pcscd, and the token of each key held on a YubiKey, when
// the store holds such keys or [yubikey] is configured.
func (c *checker) tokens() {
	yc := c.cfg.YubiKey
	var uris []*Key
	for _, k := range c.keys {
		if s, err := k.Storage(); err == nil && s == storagePKCS11 {
			uris = append(uris, k)
		}
	}
	if len(uris) == 0 && yc == (YubiKeyConfig{}) {
		return
	}
	if yc.PINFile != "" {
		if _, err := readSecretFile(yc.PINFile, "PIN"); err != nil {
			c.fail("[yubikey] pin_file", err)
		} else {
			c.ok("[yubikey] pin_file %s: present, private", yc.PINFile)
		}
	}
	if yc.ManagementKeyFile != "" {
		if _, err := readManagementKey(yc); err != nil {
			c.fail("[yubikey] management_key_file", err)
		} else {
			c.ok("[yubikey] management_key_file %s: present, private", yc.ManagementKeyFile)
		}
	}
	ctx, err := pcscEstablish(time.Time{})
	if err != nil {
		c.fail("pcscd", err)
		return
	}
	readers, err := ctx.Readers()
	ctx.Close()
	if err != nil {
		c.fail("pcscd", err)
		return
	}
	c.ok("pcscd at %s: %d reader(s)", pcscSocketPath(), len(readers))
	for _, k := range uris {
		uri, _ := k.PKCS11URI()
		if err := tokenKeyAvailable(yc, uri); err != nil {
			c.fail("key "+k.String(), err)
			continue
		}
		c.ok("key %s: its token is connected", k)
	}
}

// relay checks the [relay] keys and state directory, when [relay] is set.
func (c *checker) relay() {
	rc := c.cfg.Relay
	if rc.StateDir == "" && rc.BundleKeyFile == "" && rc.ResultKeyFile == "" && rc.BundlePublicKey == "" &&
		rc.ResultPublicKey == "" && rc.AuditPublicKey == "" && len(rc.Keys) == 0 {
		return
	}
	if rc.StateDir == "" {
		c.fail("[relay] state_dir", errors.New("not set"))
	} else if fi, err := os.Stat(rc.StateDir); errors.Is(err, fs.ErrNotExist) {
		if err := checkWritableDir(filepath.Dir(rc.StateDir)); err != nil {
			c.fail("[relay] state_dir "+rc.StateDir, fmt.Errorf("does not exist, and cannot be created: %w", err))
		} else {
			c.ok("[relay] state_dir %s: not there yet; the first relay command creates it", rc.StateDir)
		}
	} else if err := checkWritableDir(rc.StateDir); err != nil {
		c.fail("[relay] state_dir "+rc.StateDir, err)
	} else if fi.Mode().Perm()&0o077 != 0 {
		c.fail("[relay] state_dir "+rc.StateDir, fmt.Errorf("permissions %04o are too open; run chmod 700 %s", fi.Mode().Perm(), rc.StateDir))
	} else {
		c.ok("[relay] state_dir %s: writable, private", rc.StateDir)
	}
	for _, k := range []struct{ name, path string }{{"bundle_key_file", rc.BundleKeyFile}, {"result_key_file", rc.ResultKeyFile}} {
		if k.path == "" {
			continue
		}
		if _, err := loadNoteSigner(k.path); err != nil {
			c.fail("[relay] "+k.name, err)
		} else {
			c.ok("[relay] %s %s: present, private", k.name, k.path)
		}
	}
	for _, k := range []struct{ name, key string }{{"bundle_public_key", rc.BundlePublicKey}, {"result_public_key", rc.ResultPublicKey}, {"audit_public_key", rc.AuditPublicKey}} {
		if k.key == "" {
			continue
		}
		if _, err := note.NewVerifier(k.key); err != nil {
			c.fail("[relay] "+k.name, err)
		} else {
			c.ok("[relay] %s: a verifier key", k.name)
		}
	}
	if len(rc.Keys) > 0 {
		if _, err := readRelayKeys(c.cfg); err != nil {
			c.fail("[[relay.keys]]", err)
		} else {
			c.ok("[[relay.keys]]: %d public key(s) with their fingerprints", len(rc.Keys))
		}
	}
}
