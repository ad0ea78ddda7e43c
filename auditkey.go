package main

// The audit key authenticates the audit log. The hash chain alone shows
// that rows were changed only to someone who does not recompute it; the
// audit key is a 32-byte secret that only the service holds, from which two
// keys are derived: an HMAC-SHA256 key authenticating each row's hash (the
// "mac" column), and an Ed25519 key signing checkpoints (checkpoint.go).
// Without the secret nobody can write a row that verifies, so a forged,
// changed, reordered or removed row is named by `audit verify`; only
// removing the newest rows leaves a shorter valid log, which a checkpoint
// kept elsewhere reveals.
//
// The secret is kept in the database, in the single row of audit_key,
// encrypted with NaCl box from the first service key to itself. Unlike the
// anonymous sealed boxes of private keys, a box is authenticated by the
// sender's private key: someone who knows only the service public key (it
// is in every sealed key) cannot put an audit key of their own in its
// place. reencrypt-keys moves it to a new service key with the signing keys.

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/crypto/nacl/box"
)

const storageNaClBox = "nacl-box"

// auditKey is the unsealed audit secret's derived keys.
type auditKey struct {
	mac      []byte
	keys     []byte // authenticates key rows (keyrows.go)
	signSeed []byte // of the checkpoint signing key, made on first use
	signOnce sync.Once
	sign     ed25519.PrivateKey
}

func deriveAuditKey(secret []byte) *auditKey {
	derive := func(label string) []byte {
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(label))
		return m.Sum(nil)
	}
	return &auditKey{
		mac:      derive("debusine-signing audit row authentication"),
		keys:     derive("debusine-signing key row authentication"),
		signSeed: derive("debusine-signing audit checkpoint signing"),
	}
}

// signingKey is the checkpoint signing key. It is made on first use: a
// sign command writes rows but no checkpoint, and making an Ed25519 key
// (its first one builds the base point table) cost such a short process a
// tenth of its CPU time.
func (ak *auditKey) signingKey() ed25519.PrivateKey {
	ak.signOnce.Do(func() { ak.sign = ed25519.NewKeyFromSeed(ak.signSeed) })
	return ak.sign
}

// rowMAC authenticates a row's hash, which commits to the row's fields and,
// through prev_hash, to every row before it.
func (ak *auditKey) rowMAC(hash string) string {
	m := hmac.New(sha256.New, ak.mac)
	m.Write([]byte(hash))
	return hex.EncodeToString(m.Sum(nil))
}

func (ak *auditKey) checkRowMAC(hash, mac string) bool {
	return hmac.Equal([]byte(ak.rowMAC(hash)), []byte(mac))
}

// sealedAuditKey is the JSON of audit_key.sealed.
type sealedAuditKey struct {
	Storage   string `json:"storage"`
	PublicKey []byte `json:"public_key"` // the service key it is boxed to and from
	Encrypted []byte `json:"encrypted"`  // 24-byte nonce, then the box
}

// sealAuditSecret boxes secret from the first service key to itself.
func (s *Store) sealAuditSecret(secret []byte) ([]byte, error) {
	if len(s.serviceKeys) == 0 {
		return nil, errors.New("no service key configured (service_keys in the configuration)")
	}
	sk := s.serviceKeys[0]
	var nonce [24]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, err
	}
	enc := box.Seal(nonce[:], secret, &nonce, &sk.public, &sk.private)
	return json.Marshal(sealedAuditKey{Storage: storageNaClBox, PublicKey: sk.public[:], Encrypted: enc})
}

// openAuditSecret opens a sealed audit key with the matching service key.
func (s *Store) openAuditSecret(data []byte) ([]byte, error) {
	var sealed sealedAuditKey
	if err := json.Unmarshal(data, &sealed); err != nil || sealed.Storage != storageNaClBox || len(sealed.Encrypted) < 24+box.Overhead {
		return nil, errors.New("the audit key in the database is malformed")
	}
	sk := s.serviceKeyFor(sealed.PublicKey)
	if sk == nil {
		if len(s.serviceKeys) == 0 {
			return nil, errors.New("no service key configured (service_keys in the configuration): the audit key cannot be unsealed")
		}
		return nil, fmt.Errorf("the audit key is sealed to service public key %s, and no configured service key matches it", base64.StdEncoding.EncodeToString(sealed.PublicKey))
	}
	harden()
	var nonce [24]byte
	copy(nonce[:], sealed.Encrypted)
	secret, ok := box.Open(nil, sealed.Encrypted[24:], &nonce, &sk.public, &sk.private)
	if !ok {
		return nil, fmt.Errorf("the audit key does not open with service key %s (replaced or corrupt: it was not sealed by this service key)", sk.path)
	}
	return secret, nil
}

// querier is what *sql.DB and *sql.Tx have in common for reading.
type querier interface {
	QueryRow(string, ...any) *sql.Row
	Query(string, ...any) (*sql.Rows, error)
}

// auditKey returns the audit key, unsealing it on first use; tx is the
// transaction to read it in, or nil.
func (s *Store) auditKey(tx *sql.Tx) (*auditKey, error) {
	s.auditKeyMu.Lock()
	defer s.auditKeyMu.Unlock()
	if s.auditKeyCache != nil {
		return s.auditKeyCache, nil
	}
	var q querier = s.db
	if tx != nil {
		q = tx
	}
	var sealed string
	err := q.QueryRow("SELECT sealed FROM audit_key WHERE id = 1").Scan(&sealed)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errors.New("the database has no audit key: open it once with a service key configured (service_keys) to create one")
	}
	if err != nil {
		return nil, sqliteError(err)
	}
	secret, err := s.openAuditSecret([]byte(sealed))
	if err != nil {
		return nil, err
	}
	s.auditKeyCache = deriveAuditKey(secret)
	clear(secret)
	return s.auditKeyCache, nil
}

// createAuditKey makes the audit key and stores it inside tx, sealed to
// the first service key. Only a store that holds nothing yet, or the
// explicit upgrade of a version 1 store, gets one (auditpin.go).
func (s *Store) createAuditKey(tx *sql.Tx) error {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return err
	}
	defer clear(secret)
	sealed, err := s.sealAuditSecret(secret)
	if err != nil {
		return err
	}
	if _, err := tx.Exec("INSERT INTO audit_key (id, sealed, created_at) VALUES (1, $1, $2)", string(sealed), nowUTC()); err != nil {
		return fmt.Errorf("storing the audit key: %w", err)
	}
	return nil
}

// reencryptAuditKey re-seals the audit key to the first service key inside
// tx if it is sealed to another one, and audits the move. It reports
// whether it moved.
func (s *Store) reencryptAuditKey(tx *sql.Tx) (bool, error) {
	var data string
	err := tx.QueryRow("SELECT sealed FROM audit_key WHERE id = 1").Scan(&data)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, sqliteError(err)
	}
	var sealed sealedAuditKey
	if err := json.Unmarshal([]byte(data), &sealed); err != nil {
		return false, errors.New("the audit key in the database is malformed")
	}
	first := s.serviceKeys[0]
	if bytes.Equal(sealed.PublicKey, first.public[:]) {
		return false, nil
	}
	secret, err := s.openAuditSecret([]byte(data))
	if err != nil {
		return false, err
	}
	resealed, err := s.sealAuditSecret(secret)
	clear(secret)
	if err != nil {
		return false, err
	}
	if _, err := tx.Exec("UPDATE audit_key SET sealed = $1 WHERE id = 1", string(resealed)); err != nil {
		return false, fmt.Errorf("re-encrypting the audit key: %w", err)
	}
	// The row names the audit key as pins do, whatever the origin.
	vkey, err := s.auditKeyID(tx)
	if err != nil {
		return false, err
	}
	return true, s.appendAudit(tx, AuditEntry{Event: "reencrypt", Purpose: "audit", Fingerprint: vkey, Data: map[string]any{
		"from_service_key": base64.StdEncoding.EncodeToString(sealed.PublicKey),
		"to_service_key":   base64.StdEncoding.EncodeToString(first.public[:]),
	}})
}

// sealAuditRowsV2 is the data step of schema version 2. For a version 1
// store, which only upgrade-store migrates, the rows written before are
// verified as version 1 verified them, then authenticated with a new audit
// key, so that nothing is lost and every row is checked the same way
// afterwards; the head they reach is what the upgrade adopts. A new store
// gets its audit key at the end of the migration (checkAuditKey).
func (s *Store) sealAuditRowsV2(tx *sql.Tx) error {
	if s.migratingFrom != 1 {
		return nil
	}
	rows, err := queryAuditRows(tx, AuditFilter{})
	if err != nil {
		return err
	}
	v, err := verifyChain(rows)
	if err != nil {
		return fmt.Errorf("the existing audit log does not verify, so it is not sealed into the authenticated log: %w", err)
	}
	if len(s.serviceKeys) == 0 {
		return fmt.Errorf("%d audit rows must be authenticated with a new audit key, which needs a service key (service_keys in the configuration)", len(rows))
	}
	if err := s.createAuditKey(tx); err != nil {
		return err
	}
	ak, err := s.auditKey(tx)
	if err != nil {
		return err
	}
	for _, r := range rows {
		if _, err := tx.Exec("UPDATE audit_log SET mac = $1 WHERE id = $2", ak.rowMAC(r.Hash), r.ID); err != nil {
			return err
		}
	}
	s.adopted = &v
	return nil
}
