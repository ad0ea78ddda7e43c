package main

import (
	"bytes"
	"crypto/rand"
	"database/sql"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/curve25519"
	"golang.org/x/crypto/nacl/box"
	_ "modernc.org/sqlite"
)

//go:embed schema.sql
var schemaSQL string

// applicationID marks a SQLite file as a debusine-signing database ("DBSG"),
// so that a foreign database is refused instead of being written to.
const applicationID = 0x44425347

const (
	purposeUEFI    = "uefi"
	purposeOpenPGP = "openpgp"

	storageNaCl   = "nacl"
	storagePKCS11 = "pkcs11-static"
)

var (
	errUnknownKey   = errors.New("unknown key")
	errDuplicateKey = errors.New("key already in the store")
)

// Store is the key store and audit log, in SQLite or PostgreSQL (db.go).
type Store struct {
	db          *sql.DB
	engine      *engine
	path        string
	serviceKeys []*serviceKey
	// yubikey configures access to keys held on a YubiKey, pkcs11 the
	// providers of keys on other PKCS#11 tokens; set by main.
	yubikey YubiKeyConfig
	pkcs11  PKCS11Config
	// auditOrigin is the audit log's origin (audit_origin), "" for the
	// default derived from the audit key (checkpoint.go); set by main.
	auditOrigin string
	// witnesses cosign its checkpoints ([[witness]], witness.go).
	witnesses []WitnessConfig

	auditKeyMu    sync.Mutex
	auditKeyCache *auditKey // unsealed on first use (auditkey.go)

	// upgradeV1 lets the migration adopt a version 1 store (upgrade-store);
	// migratingFrom is the version being migrated from, and adopted what
	// an upgrade adopted (auditpin.go).
	upgradeV1     bool
	migratingFrom int
	adopted       *AuditVerification
	// warnings are said once the store is open: a pin that could not be
	// written.
	warnings []string
}

// Key is one row of the keys table.
type Key struct {
	Purpose     string
	Fingerprint string
	PrivateKey  []byte // the protected representation, JSON; never plaintext
	PublicKey   []byte
	Description string
	CreatedAt   time.Time
	UpdatedAt   time.Time

	// The times as stored, and the row's authentication code (keyrows.go).
	created, updated, mac string
}

// protectedKey is the private_key JSON, in the two storage kinds Debusine
// writes, so that keys move between a Debusine database and this one as is.
type protectedKey struct {
	Storage   string `json:"storage"`
	PublicKey []byte `json:"public_key,omitempty"`
	Encrypted []byte `json:"encrypted,omitempty"`
	PKCS11URI string `json:"pkcs11_uri,omitempty"`
}

func parseProtectedKey(data []byte) (*protectedKey, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var p protectedKey
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("malformed private_key JSON: %v", err)
	}
	if dec.More() {
		return nil, errors.New("malformed private_key JSON: trailing data")
	}
	switch p.Storage {
	case storageNaCl:
		if len(p.PublicKey) != 32 {
			return nil, fmt.Errorf("malformed private_key JSON: nacl public_key has %d bytes, want 32", len(p.PublicKey))
		}
		if len(p.Encrypted) <= box.AnonymousOverhead {
			return nil, errors.New("malformed private_key JSON: nacl encrypted data missing or too short")
		}
		if p.PKCS11URI != "" {
			return nil, errors.New("malformed private_key JSON: nacl storage with a pkcs11_uri")
		}
	case storagePKCS11:
		if !strings.HasPrefix(p.PKCS11URI, "pkcs11:") {
			return nil, errors.New("malformed private_key JSON: pkcs11-static storage needs a pkcs11_uri starting with \"pkcs11:\"")
		}
		if p.PublicKey != nil || p.Encrypted != nil {
			return nil, errors.New("malformed private_key JSON: pkcs11-static storage with nacl fields")
		}
	default:
		return nil, fmt.Errorf("malformed private_key JSON: unknown storage %q", p.Storage)
	}
	return &p, nil
}

func (k *Key) String() string { return k.Purpose + ":" + k.Fingerprint }

// Storage returns the storage kind of the key: "nacl" or "pkcs11-static".
func (k *Key) Storage() (string, error) {
	p, err := parseProtectedKey(k.PrivateKey)
	if err != nil {
		return "", fmt.Errorf("key %s: %w", k, err)
	}
	return p.Storage, nil
}

// PKCS11URI returns the token URI of a pkcs11-static key.
func (k *Key) PKCS11URI() (string, error) {
	p, err := parseProtectedKey(k.PrivateKey)
	if err != nil {
		return "", fmt.Errorf("key %s: %w", k, err)
	}
	if p.Storage != storagePKCS11 {
		return "", fmt.Errorf("key %s is not held on a token (storage %s)", k, p.Storage)
	}
	return p.PKCS11URI, nil
}

// pkcs11KeyJSON is the private_key JSON of a key that stays on a token.
func pkcs11KeyJSON(uri string) ([]byte, error) {
	if !strings.HasPrefix(uri, "pkcs11:") {
		return nil, fmt.Errorf("PKCS#11 URI %q does not start with \"pkcs11:\"", uri)
	}
	return json.Marshal(protectedKey{Storage: storagePKCS11, PKCS11URI: uri})
}

// serviceKey is a Curve25519 key pair; the private half is the 32 raw bytes
// of the file, as PyNaCl's bytes(PrivateKey) writes them.
type serviceKey struct {
	path    string
	private [32]byte
	public  [32]byte
}

func loadServiceKey(path string) (*serviceKey, error) {
	harden()
	f, fi, err := openInput(path)
	if err != nil {
		return nil, fmt.Errorf("service key: %w", err)
	}
	defer f.Close()
	if err := checkSecretMode(path, "service key", fi); err != nil {
		return nil, err
	}
	buf, err := io.ReadAll(io.LimitReader(f, 33))
	if err != nil {
		return nil, fmt.Errorf("service key %s: %w", path, err)
	}
	if len(buf) != 32 {
		return nil, fmt.Errorf("service key %s: not a service key (want exactly 32 bytes)", path)
	}
	k := &serviceKey{path: path}
	copy(k.private[:], buf)
	pub, err := curve25519.X25519(k.private[:], curve25519.Basepoint)
	if err != nil {
		return nil, fmt.Errorf("service key %s: %w", path, err)
	}
	copy(k.public[:], pub)
	return k, nil
}

// generateServiceKey writes a new service key to path, never overwriting one.
func generateServiceKey(path string) error {
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("service key %s already exists; refusing to overwrite it", path)
	}
	if err != nil {
		return fmt.Errorf("service key: %w", err)
	}
	if _, err := f.Write(key[:]); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("service key %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("service key %s: %w", path, err)
	}
	return f.Close()
}

// openStore opens (creating or migrating as needed) the database at dbPath
// and loads the service keys. The first service key seals new keys; any of
// them may unseal. The database is a SQLite file or a PostgreSQL
// connection string; passwordFile holds a PostgreSQL password, if any.
func openStore(dbPath, passwordFile string, serviceKeyPaths []string) (*Store, error) {
	return openOrUpgradeStore(dbPath, passwordFile, serviceKeyPaths, false)
}

// openOrUpgradeStore is openStore that, with upgradeV1, also adopts a store
// at schema version 1 (upgrade-store).
func openOrUpgradeStore(dbPath, passwordFile string, serviceKeyPaths []string, upgradeV1 bool) (*Store, error) {
	s := &Store{path: dbPath, engine: sqliteEngine, upgradeV1: upgradeV1}
	for _, p := range serviceKeyPaths {
		k, err := loadServiceKey(p)
		if err != nil {
			return nil, err
		}
		s.serviceKeys = append(s.serviceKeys, k)
	}
	if isPostgres(dbPath) {
		return s.openPostgres(dbPath, passwordFile)
	}
	if strings.ContainsAny(dbPath, "?#") {
		return nil, fmt.Errorf("database %s: the path may not contain '?' or '#'", dbPath)
	}
	// Creating and migrating the schema is one exclusive step: a process
	// that finds the database new or old waits here until the one before
	// it has finished, instead of seeing half a schema.
	unlock, err := lockDatabaseDir(dbPath)
	if err != nil {
		return nil, fmt.Errorf("database %s: %w", dbPath, err)
	}
	defer unlock()
	// Create the file ourselves so that it is not world-readable; SQLite
	// gives its -wal and -shm files the same permissions.
	if f, err := os.OpenFile(dbPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600); err == nil {
		f.Close()
	} else if !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("database: %w", err)
	}
	// sqliteDSN's busy_timeout makes a second process wait for the lock
	// instead of failing; _txlock=immediate takes the write lock at BEGIN,
	// so that a transaction never has to upgrade a read lock, which SQLite
	// cannot wait for ("database is locked" despite the timeout). None of
	// its pragmas writes to the file.
	db, err := sql.Open("sqlite", sqliteDSN(dbPath))
	if err != nil {
		return nil, fmt.Errorf("database %s: %w", dbPath, err)
	}
	// Look before writing: switching to WAL changes the header of the
	// file, which must not happen to somebody else's database. The mode is
	// stored in the file, so it holds for every later connection.
	if err := checkDatabase(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("database %s: %w", dbPath, err)
	}
	if _, err := db.Exec("PRAGMA journal_mode = WAL"); err != nil {
		db.Close()
		return nil, fmt.Errorf("database %s: %w", dbPath, sqliteError(err))
	}
	s.db = db
	if err := s.migrate(); err != nil {
		db.Close()
		return nil, fmt.Errorf("database %s: %w", dbPath, err)
	}
	return s, nil
}

func (s *Store) Close() error { return s.db.Close() }

// sqliteDSN is how the store opens a SQLite file; see openStore.
func sqliteDSN(dbPath string) string {
	return "file:" + dbPath + "?_pragma=busy_timeout(30000)" +
		"&_pragma=synchronous(FULL)&_pragma=foreign_keys(1)&_txlock=immediate"
}

// lockDatabaseDir takes an exclusive flock(2) on the directory holding the
// database, waiting for it. It locks the directory rather than the file: a
// descriptor this program opened and closed on the database file itself
// would drop the POSIX locks SQLite holds on it in this process. The
// returned function releases it.
func lockDatabaseDir(dbPath string) (func(), error) {
	d, err := os.Open(filepath.Dir(dbPath))
	if err != nil {
		return nil, err
	}
	for {
		err = syscall.Flock(int(d.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("locking %s: %w", d.Name(), err)
	}
	return func() { d.Close() }, nil
}

// schemaSections splits a schema file into its "-- version N" sections.
func schemaSections(schema string) []string {
	var sections []string
	for i, part := range strings.Split(schema, "\n-- version ") {
		if i == 0 {
			continue
		}
		nl := strings.IndexByte(part, '\n')
		if n, err := strconv.Atoi(part[:nl]); err != nil || n != i {
			panic(fmt.Sprintf("schema: section %d is numbered %q", i, part[:nl]))
		}
		sections = append(sections, part[nl+1:])
	}
	return sections
}

// checkDatabase refuses, without writing to it, a file that is not a
// SQLite database or is somebody else's. It reads through the store's own
// connection: opening a second one costs a process more than the rest of
// opening the store.
func checkDatabase(db *sql.DB) error {
	var appID, tables int
	if err := db.QueryRow("PRAGMA application_id").Scan(&appID); err != nil {
		return sqliteError(err)
	}
	if err := db.QueryRow("SELECT count(*) FROM sqlite_schema").Scan(&tables); err != nil {
		return sqliteError(err)
	}
	switch {
	case appID == 0 && tables > 0:
		return errors.New("not a debusine-signing database (it holds other tables); refusing to touch it")
	case appID != 0 && appID != applicationID:
		return fmt.Errorf("not a debusine-signing database (application_id %#x)", appID)
	}
	return nil
}

// migrationSteps are the data steps that run right after a schema
// section, in the same transaction: migrationSteps[N] after section N.
var migrationSteps = map[int]func(*Store, *sql.Tx) error{
	2: (*Store).sealAuditRowsV2,
	4: (*Store).macKeyRowsV4,
	5: (*Store).buildAuditTreeV5,
}

// migrate brings the schema to this program's version, every pending
// section in one transaction, then checks the audit key against its pins
// (creating it for a store that holds nothing yet; auditpin.go). A
// version 1 store is migrated only by upgrade-store, which adds an audit
// row saying what it adopted. openStore runs it under the directory lock
// (SQLite), or under the store's advisory lock (PostgreSQL, Store.begin).
func (s *Store) migrate() error {
	sections := schemaSections(s.engine.schema)
	tx, err := s.begin()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	version, err := s.engine.version(tx)
	if err != nil {
		return sqliteError(err)
	}
	if version > len(sections) {
		return fmt.Errorf("schema version %d is newer than this program knows (%d); upgrade debusine-signing", version, len(sections))
	}
	if version == 1 {
		if err := s.refuseV1(tx); err != nil {
			return err
		}
	}
	s.migratingFrom = version
	for i, section := range sections[version:] {
		n := version + i + 1
		if _, err := tx.Exec(section); err != nil {
			return fmt.Errorf("migrating schema to version %d: %w", n, err)
		}
		if step := migrationSteps[n]; step != nil {
			if err := step(s, tx); err != nil {
				return fmt.Errorf("migrating schema to version %d: %w", n, err)
			}
		}
	}
	if version < len(sections) {
		if err := s.engine.setVersion(tx, len(sections)); err != nil {
			return fmt.Errorf("migrating schema: %w", err)
		}
	}
	unpinned, err := s.checkAuditKey(tx)
	if err != nil {
		return err
	}
	if s.adopted != nil {
		vkey, err := s.auditKeyID(tx)
		if err != nil {
			return err
		}
		if err := s.appendAudit(tx, AuditEntry{Event: "register", Purpose: "audit", Fingerprint: vkey, Data: map[string]any{
			"upgrade_store": map[string]any{"from_schema_version": 1, "adopted_rows": s.adopted.Rows, "adopted_head": s.adopted.Head},
		}}); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	if unpinned != nil {
		vkey, err := s.auditKeyID(nil)
		if err != nil {
			return err
		}
		if err := writePin(unpinned, vkey); errors.Is(err, errPinMismatch) {
			return err
		} else if err != nil {
			s.warnings = append(s.warnings, fmt.Sprintf("the audit key is not pinned beside service key %s (%v): a wiped database would not be noticed on this host; write this line to %s (mode 0644): %s", unpinned.path, err, unpinned.pinPath(), vkey))
		}
	}
	return nil
}

// sqliteError makes SQLite's answer to a file that is not a database (or a
// damaged one) say what it means to an operator.
func sqliteError(err error) error {
	msg := err.Error()
	if strings.Contains(msg, "file is not a database") || strings.Contains(msg, "malformed") {
		return fmt.Errorf("not a SQLite database or damaged (%v)", err)
	}
	return err
}

const timeFormat = "2006-01-02T15:04:05.000000Z"

func nowUTC() string { return time.Now().UTC().Format(timeFormat) }

// keyColumns are the columns a new row is written with; a row is read with
// its mac as well (keyReadColumns).
const (
	keyColumns     = "purpose, fingerprint, private_key, public_key, description, created_at, updated_at"
	keyReadColumns = keyColumns + ", coalesce(mac, '')"
)

func scanKey(row interface{ Scan(...any) error }) (*Key, error) {
	var k Key
	var privateKey string
	if err := row.Scan(&k.Purpose, &k.Fingerprint, &privateKey, &k.PublicKey, &k.Description, &k.created, &k.updated, &k.mac); err != nil {
		return nil, err
	}
	k.PrivateKey = []byte(privateKey)
	// A time that does not parse stays zero: the row's authentication
	// code covers the text, so checkKeyRow refuses that one row, and a
	// listing goes on with the others.
	k.CreatedAt, _ = time.Parse(timeFormat, k.created)
	k.UpdatedAt, _ = time.Parse(timeFormat, k.updated)
	return &k, nil
}

// Key returns the key with this purpose and fingerprint (case-insensitive),
// once its row has passed its checks (checkKeyRow): a row changed without
// the audit key, or whose public key is another key's, is refused with the
// reason.
func (s *Store) Key(purpose, fingerprint string) (*Key, error) {
	fingerprint = strings.ToUpper(fingerprint)
	row := s.db.QueryRow("SELECT "+keyReadColumns+" FROM keys WHERE purpose = $1 AND fingerprint = $2", purpose, fingerprint)
	k, err := scanKey(row)
	if errors.Is(err, sql.ErrNoRows) {
		var other string
		if s.db.QueryRow("SELECT purpose FROM keys WHERE fingerprint = $1", fingerprint).Scan(&other) == nil {
			return nil, fmt.Errorf("key %s is a %s key, not %s: %w", fingerprint, other, purpose, errUnknownKey)
		}
		var id int64
		if s.db.QueryRow("SELECT id FROM audit_log WHERE event IN ('generate', 'register') AND purpose = $1 AND fingerprint = $2 ORDER BY id LIMIT 1", purpose, fingerprint).Scan(&id) == nil {
			return nil, fmt.Errorf("%w: %s:%s is missing from the keys table, but audit row %d records it: the key row was deleted", errUnknownKey, purpose, fingerprint, id)
		}
		return nil, fmt.Errorf("%w: %s:%s", errUnknownKey, purpose, fingerprint)
	}
	if err != nil {
		return nil, sqliteError(err)
	}
	ak, err := s.auditKey(nil)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", k, err)
	}
	if err := s.checkKeyRow(ak, k); err != nil {
		return nil, err
	}
	return k, nil
}

// keyRows reads every key row, unchecked, ordered by purpose and creation.
func (s *Store) keyRows(q querier) ([]*Key, error) {
	rows, err := q.Query("SELECT " + keyReadColumns + " FROM keys ORDER BY purpose, created_at, fingerprint")
	if err != nil {
		return nil, sqliteError(err)
	}
	defer rows.Close()
	var keys []*Key
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, rows.Err()
}

// Keys returns every key whose row passes its checks (checkKeyRow),
// ordered by purpose and creation. When some rows fail, it returns the
// others with an error naming each refused row and why.
func (s *Store) Keys() ([]*Key, error) {
	rows, err := s.keyRows(s.db)
	if err != nil || len(rows) == 0 {
		return nil, err
	}
	ak, err := s.auditKey(nil)
	if err != nil {
		return nil, err
	}
	var keys []*Key
	var refused []error
	for _, k := range rows {
		if err := s.checkKeyRow(ak, k); err != nil {
			refused = append(refused, err)
			continue
		}
		keys = append(keys, k)
	}
	return keys, errors.Join(refused...)
}

// AddKey stores a key and its "generate" or "register" audit row in one
// transaction: a key is never in the store without its audit row.
func (s *Store) AddKey(k *Key, event string, workRequest *int64) error {
	return s.AddKeyWithData(k, event, map[string]any{"description": k.Description}, workRequest)
}

// AddKeyWithData is AddKey with the audit row's data given in full (for
// example with a token's attestation beside the description).
func (s *Store) AddKeyWithData(k *Key, event string, data map[string]any, workRequest *int64) error {
	if event != "generate" && event != "register" {
		return fmt.Errorf("AddKey: event %q is neither generate nor register", event)
	}
	k.Fingerprint = strings.ToUpper(k.Fingerprint)
	if err := s.checkNewKey(k); err != nil {
		return err
	}
	tx, err := s.begin()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var exists int
	err = tx.QueryRow("SELECT 1 FROM keys WHERE purpose = $1 AND fingerprint = $2", k.Purpose, k.Fingerprint).Scan(&exists)
	if err == nil {
		return fmt.Errorf("%w: %s", errDuplicateKey, k)
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return sqliteError(err)
	}
	ak, err := s.auditKey(tx)
	if err != nil {
		return fmt.Errorf("storing key %s: %w", k, err)
	}
	k.created = nowUTC()
	k.updated = k.created
	if err := insertKey(tx, ak, k); err != nil {
		return err
	}
	if err := s.appendAudit(tx, AuditEntry{Event: event, Purpose: k.Purpose, Fingerprint: k.Fingerprint, Data: data, WorkRequest: workRequest}); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("storing key %s: %w", k, err)
	}
	k.CreatedAt, _ = time.Parse(timeFormat, k.created)
	k.UpdatedAt = k.CreatedAt
	return nil
}

// insertKey writes a new key row, authenticated, inside tx.
func insertKey(tx *sql.Tx, ak *auditKey, k *Key) error {
	k.mac = ak.keyRowMAC(k)
	if _, err := tx.Exec("INSERT INTO keys ("+keyColumns+", mac) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
		k.Purpose, k.Fingerprint, string(k.PrivateKey), k.PublicKey, k.Description, k.created, k.updated, k.mac); err != nil {
		return fmt.Errorf("storing key %s: %w", k, err)
	}
	return nil
}

// Seal protects a plaintext private key with the first service key.
func (s *Store) Seal(plaintext []byte) ([]byte, error) {
	if len(s.serviceKeys) == 0 {
		return nil, errors.New("no service key configured (service_keys in the configuration)")
	}
	sk := s.serviceKeys[0]
	sealed, err := box.SealAnonymous(nil, plaintext, &sk.public, rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("sealing with service key %s: %w", sk.path, err)
	}
	return json.Marshal(protectedKey{Storage: storageNaCl, PublicKey: sk.public[:], Encrypted: sealed})
}

// Unseal returns the plaintext private key of a nacl key. The plaintext
// lives in memory only; callers must never write it anywhere.
func (s *Store) Unseal(k *Key) ([]byte, error) {
	p, err := parseProtectedKey(k.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", k, err)
	}
	if p.Storage != storageNaCl {
		return nil, fmt.Errorf("key %s is held on a token (%s), it cannot be unsealed", k, p.Storage)
	}
	harden()
	sk := s.serviceKeyFor(p.PublicKey)
	if sk == nil {
		return nil, fmt.Errorf("key %s is sealed to service public key %s, and no configured service key matches it", k, base64.StdEncoding.EncodeToString(p.PublicKey))
	}
	plain, ok := box.OpenAnonymous(nil, p.Encrypted, &sk.public, &sk.private)
	if !ok {
		return nil, fmt.Errorf("key %s: cannot decrypt with service key %s (corrupt data)", k, sk.path)
	}
	return plain, nil
}

func (s *Store) serviceKeyFor(public []byte) *serviceKey {
	for _, sk := range s.serviceKeys {
		if bytes.Equal(sk.public[:], public) {
			return sk
		}
	}
	return nil
}

// ReencryptKeys re-seals every software key, and the audit key, that is
// not sealed to the first service key, with one audit row per key, all in
// one transaction: either every key moves to the new service key or none
// does.
func (s *Store) ReencryptKeys() (moved []*Key, auditKeyMoved bool, err error) {
	if len(s.serviceKeys) == 0 {
		return nil, false, errors.New("no service key configured (service_keys in the configuration)")
	}
	first := s.serviceKeys[0]
	tx, err := s.begin()
	if err != nil {
		return nil, false, err
	}
	defer tx.Rollback()
	keys, err := s.keyRows(tx)
	if err != nil {
		return nil, false, err
	}
	auditMoved, err := s.reencryptAuditKey(tx)
	if err != nil {
		return nil, false, err
	}
	ak, err := s.auditKey(tx)
	if err != nil {
		return nil, false, err
	}
	for _, k := range keys {
		// A row that fails its checks must not get a new authentication
		// code: the whole re-encryption is refused instead.
		if err := s.checkKeyRow(ak, k); err != nil {
			return nil, false, fmt.Errorf("re-encrypting keys: %w", err)
		}
		p, err := parseProtectedKey(k.PrivateKey)
		if err != nil {
			return nil, false, fmt.Errorf("key %s: %w", k, err)
		}
		if p.Storage != storageNaCl || bytes.Equal(p.PublicKey, first.public[:]) {
			continue
		}
		plain, err := s.Unseal(k)
		if err != nil {
			return nil, false, err
		}
		sealed, err := s.Seal(plain)
		clear(plain)
		if err != nil {
			return nil, false, err
		}
		k.PrivateKey, k.updated = sealed, nowUTC()
		if _, err := tx.Exec("UPDATE keys SET private_key = $1, updated_at = $2, mac = $3 WHERE purpose = $4 AND fingerprint = $5",
			string(sealed), k.updated, ak.keyRowMAC(k), k.Purpose, k.Fingerprint); err != nil {
			return nil, false, fmt.Errorf("re-encrypting key %s: %w", k, err)
		}
		data := map[string]any{
			"from_service_key": base64.StdEncoding.EncodeToString(p.PublicKey),
			"to_service_key":   base64.StdEncoding.EncodeToString(first.public[:]),
		}
		if err := s.appendAudit(tx, AuditEntry{Event: "reencrypt", Purpose: k.Purpose, Fingerprint: k.Fingerprint, Data: data}); err != nil {
			return nil, false, err
		}
		moved = append(moved, k)
	}
	if err := tx.Commit(); err != nil {
		return nil, false, fmt.Errorf("re-encrypting keys: %w", err)
	}
	return moved, auditMoved, nil
}

// defaultStateDir is where the embedded default keeps its database and
// service key when no configuration file is given.
func defaultStateDir() (string, error) {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "debusine-signing"), nil
	}
	if os.Geteuid() == 0 {
		return "/var/lib/debusine-signing", nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no state directory: set XDG_STATE_HOME or HOME, or give --config: %w", err)
	}
	return filepath.Join(home, ".local", "state", "debusine-signing"), nil
}
