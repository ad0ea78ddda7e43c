package main

// Key rows are authenticated like audit rows. Someone who can write the
// database but does not hold the service key could otherwise give key A's
// row key B's sealed private key and certificate while keeping A's
// fingerprint: a request authorised for A would be signed with B. So each
// row carries "mac", an HMAC under a key derived from the audit secret
// (auditkey.go: the secret is boxed to the service key, so the database
// alone cannot provide it), over every column but id. Every use checks it
// and, beside it, that the fingerprint is that of the stored public key
// (the SHA-256 of a UEFI certificate's DER, an OpenPGP key's v4
// fingerprint); the signers then check that the unsealed private key
// matches the public key (uefiSigner, openpgpEntity). `audit verify`
// checks every row, unseals each software key to compare it, and names
// the keys the audit log registered that are missing from the table.

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
)

// errKeyRefused marks a key row that fails its checks.
var errKeyRefused = errors.New("key refused")

// keyRowMAC authenticates every column of a key row but its id, each
// length-prefixed so that no two rows encode alike.
func (ak *auditKey) keyRowMAC(k *Key) string {
	m := hmac.New(sha256.New, ak.keys)
	for _, f := range [][]byte{[]byte("debusine-signing key row"), []byte(k.Purpose), []byte(k.Fingerprint),
		k.PrivateKey, k.PublicKey, []byte(k.Description), []byte(k.created), []byte(k.updated)} {
		writeField(m, f)
	}
	return hex.EncodeToString(m.Sum(nil))
}

func writeField(h hash.Hash, f []byte) {
	var n [binary.MaxVarintLen64]byte
	h.Write(n[:binary.PutUvarint(n[:], uint64(len(f)))])
	h.Write(f)
}

// publicKeyFingerprint is the fingerprint of a stored public key: the
// SHA-256 of a UEFI certificate's DER (as Debusine computes it), the v4
// fingerprint of an OpenPGP key.
func publicKeyFingerprint(purpose string, public []byte) (string, error) {
	switch purpose {
	case purposeUEFI:
		cert, err := parseUEFICertificate(public)
		if err != nil {
			return "", err
		}
		return certificateFingerprint(cert), nil
	case purposeOpenPGP:
		block, err := armor.Decode(bytes.NewReader(public))
		if err != nil || block.Type != openpgp.PublicKeyType {
			return "", errors.New("public key: not an armoured OpenPGP public key")
		}
		el, err := openpgp.ReadKeyRing(block.Body)
		if err != nil {
			return "", fmt.Errorf("public key: %v", err)
		}
		if len(el) != 1 {
			return "", fmt.Errorf("public key: %d keys, want exactly one", len(el))
		}
		if v := el[0].PrimaryKey.Version; v != 4 {
			return "", fmt.Errorf("public key: version %d, only v4 keys are supported", v)
		}
		return openpgpFingerprint(el[0]), nil
	}
	return "", fmt.Errorf("unknown purpose %q", purpose)
}

// checkKeyPublic checks that k's fingerprint is that of its public key
// and that its private_key JSON is well formed.
func checkKeyPublic(k *Key) error {
	if _, err := parseProtectedKey(k.PrivateKey); err != nil {
		return err
	}
	got, err := publicKeyFingerprint(k.Purpose, k.PublicKey)
	if err != nil {
		return err
	}
	if got != k.Fingerprint {
		what := "certificate"
		if k.Purpose == purposeOpenPGP {
			what = "public key"
		}
		return fmt.Errorf("its %s has fingerprint %s, not the row's (the row holds another key's %s)", what, got, what)
	}
	return nil
}

// checkKeyPrivate unseals a software key and checks that its private key
// is that of its public key: the same RSA key as the certificate, or the
// OpenPGP secret key of the fingerprint. A token's key is compared with its
// certificate when it signs (uefiSigner). It reports false, without
// unsealing, when no configured service key can open the key.
func (s *Store) checkKeyPrivate(k *Key) (checked bool, err error) {
	p, err := parseProtectedKey(k.PrivateKey)
	if err != nil {
		return false, err
	}
	if p.Storage != storageNaCl {
		return false, nil
	}
	if s.serviceKeyFor(p.PublicKey) == nil {
		return false, nil
	}
	plain, err := s.Unseal(k)
	if err != nil {
		return false, err
	}
	defer clear(plain)
	switch k.Purpose {
	case purposeUEFI:
		if _, _, err := parseUEFIKeyPair(plain, k.PublicKey); err != nil {
			return false, fmt.Errorf("sealed private key: %w", err)
		}
	case purposeOpenPGP:
		got, err := openpgpSecretFingerprint(plain)
		if err != nil {
			return false, fmt.Errorf("sealed private key: %w", err)
		}
		if got != k.Fingerprint {
			return false, fmt.Errorf("the sealed private key is that of %s, not the row's", got)
		}
	}
	return true, nil
}

// openpgpSecretFingerprint is the fingerprint of an armoured secret key,
// whether or not it can sign today.
func openpgpSecretFingerprint(armoured []byte) (string, error) {
	block, err := armor.Decode(bytes.NewReader(armoured))
	if err != nil || block.Type != openpgp.PrivateKeyType {
		return "", errors.New("not an armoured OpenPGP secret key")
	}
	el, err := openpgp.ReadKeyRing(block.Body)
	if err != nil {
		return "", err
	}
	if len(el) != 1 || el[0].PrivateKey == nil {
		return "", errors.New("not exactly one OpenPGP secret key")
	}
	return openpgpFingerprint(el[0]), nil
}

// checkKeyRow checks a row read from the table: its authentication code,
// then its fingerprint against its public key.
func (s *Store) checkKeyRow(ak *auditKey, k *Key) error {
	if k.mac == "" {
		return fmt.Errorf("%w: %s has no authentication code (written without the audit key, or it failed its checks when the store was upgraded to schema version 4)", errKeyRefused, k)
	}
	if !hmac.Equal([]byte(ak.keyRowMAC(k)), []byte(k.mac)) {
		return fmt.Errorf("%w: %s: its authentication code does not match (the row was changed without the audit key: another key's private key or certificate, or an edited field)", errKeyRefused, k)
	}
	if k.CreatedAt.IsZero() || k.UpdatedAt.IsZero() {
		return fmt.Errorf("%w: %s: bad created_at or updated_at", errKeyRefused, k)
	}
	if err := checkKeyPublic(k); err != nil {
		return fmt.Errorf("%w: %s: %v", errKeyRefused, k, err)
	}
	return nil
}

// checkNewKey checks a key before it is stored: the fingerprint against
// the public key and, for a software key, the private key against both.
// A sealed key that no configured service key opens cannot be checked, so
// it is refused.
func (s *Store) checkNewKey(k *Key) error {
	if err := checkKeyPublic(k); err != nil {
		return fmt.Errorf("key %s: %w", k, err)
	}
	p, _ := parseProtectedKey(k.PrivateKey)
	checked, err := s.checkKeyPrivate(k)
	if err != nil {
		return fmt.Errorf("key %s: %w", k, err)
	}
	if p.Storage == storageNaCl && !checked {
		return fmt.Errorf("key %s is sealed to a service key that is not configured, so it cannot be checked", k)
	}
	return nil
}

// keyProblem is a key row that fails its checks, or a key the audit log
// registered that is missing from the table.
type keyProblem struct {
	Key     string // purpose:fingerprint
	Problem string
}

func (p keyProblem) String() string { return p.Key + ": " + p.Problem }

// VerifyKeys checks, without signing, the audit key against its pins
// (auditpin.go: a pin naming another key, or no pin beside any configured
// service key, is a problem) and every key row: its authentication code,
// its fingerprint against its public key, and, for the software keys a
// configured service key opens, its private key against both. It also
// names every key that a generate or register row of the audit log
// recorded and that the table no longer holds (imported Debusine history
// is left out: it may name keys that were never imported).
func (s *Store) VerifyKeys() ([]keyProblem, error) {
	ak, err := s.auditKey(nil)
	if err != nil {
		return nil, err
	}
	vkey, err := s.auditKeyID(nil)
	if err != nil {
		return nil, err
	}
	var problems []keyProblem
	if unpinned, err := s.checkPins(vkey); err != nil {
		problems = append(problems, keyProblem{"audit key", err.Error()})
	} else if unpinned != nil {
		if _, pin, err := s.pinned(); err != nil || pin == "" {
			problems = append(problems, keyProblem{"audit key", fmt.Sprintf("not pinned beside any configured service key; write this line to %s: %s", unpinned.pinPath(), vkey)})
		}
	}
	keys, err := s.keyRows(s.db)
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	for _, k := range keys {
		have[k.String()] = true
		if err := s.checkKeyRow(ak, k); err != nil {
			problems = append(problems, keyProblem{k.String(), strings.TrimPrefix(err.Error(), errKeyRefused.Error()+": "+k.String()+": ")})
			continue
		}
		if _, err := s.checkKeyPrivate(k); err != nil {
			problems = append(problems, keyProblem{k.String(), err.Error()})
		}
	}
	named, err := registeredKeys(s.db)
	if err != nil {
		return nil, err
	}
	for _, r := range named {
		if name := r.Purpose + ":" + r.Fingerprint; !have[name] {
			have[name] = true
			problems = append(problems, keyProblem{name, fmt.Sprintf("missing from the keys table, which audit row %d records (%s): the key row was deleted", r.ID, r.Event)})
		}
	}
	return problems, nil
}

// registeredKeys returns the generate and register rows of the audit log
// that name a signing key, oldest first, leaving out imported history.
func registeredKeys(q querier) ([]AuditRow, error) {
	all, err := selectAuditRows(q, "SELECT "+auditColumns+" FROM audit_log WHERE event IN ('generate', 'register') AND purpose IN ('uefi', 'openpgp') ORDER BY id")
	if err != nil {
		return nil, err
	}
	var out []AuditRow
	for _, r := range all {
		var d struct {
			Import *struct {
				ID *int64 `json:"id"`
			} `json:"debusine_import"`
		}
		if json.Unmarshal(r.Data, &d) == nil && d.Import != nil && d.Import.ID != nil {
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

// keyProblemsError joins the problems into one error.
func keyProblemsError(problems []keyProblem) error {
	if len(problems) == 0 {
		return nil
	}
	s := make([]string, len(problems))
	for i, p := range problems {
		s[i] = p.String()
	}
	return fmt.Errorf("%d key row(s) fail their checks: %s", len(problems), strings.Join(s, "; "))
}

// macKeyRowsV4 is the data step of schema version 4: each key row written
// before is checked (fingerprint against public key, and the sealed
// private key against both when a configured service key opens it), then
// authenticated. A row that fails keeps no mac: it is refused on use, and
// audit verify names it with the reason.
func (s *Store) macKeyRowsV4(tx *sql.Tx) error {
	keys, err := s.keyRows(tx)
	if err != nil || len(keys) == 0 {
		return err
	}
	ak, err := s.auditKey(tx)
	if err != nil {
		return fmt.Errorf("%d key rows must be authenticated with the audit key: %w", len(keys), err)
	}
	for _, k := range keys {
		if checkKeyPublic(k) != nil {
			continue
		}
		if _, err := s.checkKeyPrivate(k); err != nil {
			continue
		}
		if _, err := tx.Exec("UPDATE keys SET mac = $1 WHERE purpose = $2 AND fingerprint = $3", ak.keyRowMAC(k), k.Purpose, k.Fingerprint); err != nil {
			return fmt.Errorf("authenticating key %s: %w", k, err)
		}
	}
	return nil
}
