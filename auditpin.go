package main

// The audit key must never be lost or replaced without notice, and the
// database alone cannot promise that: whoever can write it can delete the
// audit key, or rewrite the whole store as schema version 1 (no audit key,
// no authentication codes) or as an empty store, and a program that then
// made a new audit key would authenticate the forgery. So:
//
//   - a new audit key is made only for a store that holds nothing yet (no
//     key, no audit row), or by the explicit `upgrade-store` of a version 1
//     store; a store that has rows or keys and no audit key is an error;
//   - a version 1 store is refused until `upgrade-store` adopts it, which
//     prints the chain head it adopts and adds an audit row saying so;
//   - the audit key is pinned outside the database, beside the service key
//     that protects it: SERVICE-KEY.audit-verifier holds the checkpoints'
//     verifier key (what `audit key` prints; public, mode 0644), written
//     once, the first time the audit key is unsealed with that service key
//     (or copied there by the administrator when that directory is read
//     only, as systemd's credentials are), and never overwritten. Every
//     open unseals the audit key and compares its verifier key with the pin
//     of every configured service key that has one: another key, no audit
//     key, an empty store or a version 1 store behind a pin is an error
//     that names what happened.
//
// The checkpoints' verifier key is thus the one relation between the
// service key and the audit log, checked on the host (against the pin) and
// off it (checkpoints are verified with the same key). The audit key is
// pinned rather than derived from the service key because it must outlive
// a rotation of the service key: the rows' codes cannot be rewritten in an
// append-only log, and checkpoint verifiers keep one key.

import (
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

const pinSuffix = ".audit-verifier"

// errPinMismatch is a pin that names another audit key.
var errPinMismatch = errors.New("the audit key was replaced")

func (sk *serviceKey) pinPath() string { return sk.path + pinSuffix }

// readPin returns the verifier key pinned beside sk, "" when there is none.
func readPin(sk *serviceKey) (string, error) {
	data, err := readInput(sk.pinPath(), "audit key pin", maxKeyFileSize)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(data)), nil
}

// pinned returns the first configured service key that has a pin, with
// its pin, or nil.
func (s *Store) pinned() (*serviceKey, string, error) {
	for _, sk := range s.serviceKeys {
		pin, err := readPin(sk)
		if err != nil {
			return nil, "", err
		}
		if pin != "" {
			return sk, pin, nil
		}
	}
	return nil, "", nil
}

// checkPins compares the audit key's verifier key with every pin, and
// returns the service key that has no pin yet (the first configured one),
// to pin once the transaction is committed.
func (s *Store) checkPins(vkey string) (*serviceKey, error) {
	var unpinned *serviceKey
	for i, sk := range s.serviceKeys {
		pin, err := readPin(sk)
		if err != nil {
			return nil, err
		}
		switch {
		case pin == "" && i == 0:
			unpinned = sk
		case pin != "" && pin != vkey:
			return nil, fmt.Errorf("the audit key was replaced: the database's audit key has verifier key %s, but service key %s pins %s (%s); restore the database from a backup, or, if this database is meant to be another store, give it its own service key", vkeyName(vkey), sk.path, vkeyName(pin), sk.pinPath())
		}
	}
	return unpinned, nil
}

// vkeyName is a verifier key's name and key hash, as on a checkpoint's
// signature line.
func vkeyName(vkey string) string {
	name, hash, _ := strings.Cut(vkey, "+")
	hash, _, _ = strings.Cut(hash, "+")
	return name + "+" + hash
}

// writePin pins vkey beside sk, unless a pin is already there: it is
// written whole under a temporary name and linked into place, so that
// processes opening the store at once write one pin, and none reads half
// of one. A pin that appeared meanwhile must hold the same key.
func writePin(sk *serviceKey, vkey string) error {
	dir := filepath.Dir(sk.path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(sk.pinPath())+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(vkey + "\n")
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Link(tmp.Name(), sk.pinPath()); errors.Is(err, os.ErrExist) {
		pin, err := readPin(sk)
		if err != nil {
			return err
		}
		if pin != vkey {
			return fmt.Errorf("%w: service key %s pins %s (%s), not this store's audit key %s", errPinMismatch, sk.path, vkeyName(pin), sk.pinPath(), vkeyName(vkey))
		}
		return nil
	} else if err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// storeEmpty reports whether the store holds no key and no audit row.
func storeEmpty(tx *sql.Tx) (bool, error) {
	var n int
	if err := tx.QueryRow("SELECT (SELECT count(*) FROM keys) + (SELECT count(*) FROM audit_log)").Scan(&n); err != nil {
		return false, sqliteError(err)
	}
	return n == 0, nil
}

// checkAuditKey runs at the end of every open, inside the migration's
// transaction: it creates the audit key of a store that holds nothing yet,
// and otherwise unseals the audit key and checks it against the pins. It
// returns the service key to pin after the commit, if any.
func (s *Store) checkAuditKey(tx *sql.Tx) (*serviceKey, error) {
	var n int
	if err := tx.QueryRow("SELECT count(*) FROM audit_key").Scan(&n); err != nil {
		return nil, sqliteError(err)
	}
	if n == 0 {
		empty, err := storeEmpty(tx)
		if err != nil {
			return nil, err
		}
		sk, pin, err := s.pinned()
		if err != nil {
			return nil, err
		}
		switch {
		case !empty && sk != nil:
			return nil, fmt.Errorf("the audit key is missing from the database, though service key %s pins %s (%s): it was deleted, and the rows and keys it authenticated can no longer be verified; restore the database from a backup", sk.path, vkeyName(pin), sk.pinPath())
		case !empty:
			return nil, errors.New("the audit key is missing from the database (deleted?), which holds keys or audit rows: they can no longer be verified, and a new audit key would authenticate whatever is there; restore the database from a backup")
		case sk != nil:
			return nil, fmt.Errorf("the database is empty, but service key %s pins audit key %s (%s) of a store that had keys or rows: the database was wiped or replaced, or this service key belongs to another store; restore the database, or give a new store its own service key (or move the pin away to start over on purpose)", sk.path, vkeyName(pin), sk.pinPath())
		case len(s.serviceKeys) == 0:
			return nil, nil
		}
		if err := s.createAuditKey(tx); err != nil {
			return nil, err
		}
	}
	if len(s.serviceKeys) == 0 {
		return nil, nil
	}
	vkey, err := s.auditKeyID(tx)
	if err != nil {
		return nil, err
	}
	return s.checkPins(vkey)
}

// refuseV1 explains why a version 1 store is not opened: it has never had
// authentication codes, and adopting its rows as they are is an explicit
// step; or a pin shows that it had them, and it was downgraded.
func (s *Store) refuseV1(tx *sql.Tx) error {
	if sk, pin, err := s.pinned(); err != nil {
		return err
	} else if sk != nil {
		return fmt.Errorf("the database is at schema version 1, without audit key or authentication codes, but service key %s pins audit key %s (%s): this store had them, and the database was rewritten as an older version; restore it from a backup", sk.path, vkeyName(pin), sk.pinPath())
	}
	if s.upgradeV1 {
		return nil
	}
	// Version 1 rows have no program_version or mac.
	v1, err := selectAuditRows(tx, "SELECT id, event, purpose, fingerprint, data, created_at, created_by_work_request_id, '', prev_hash, hash, '' FROM audit_log ORDER BY id")
	if err != nil {
		return err
	}
	v, err := verifyChain(v1)
	if err != nil {
		return fmt.Errorf("the database is at schema version 1 (an audit log without authentication codes), and its log does not verify: %w", err)
	}
	return fmt.Errorf("the database is at schema version 1: its audit log (%d rows, head %s) has no authentication codes; check that head against your records, then run `debusine-signing upgrade-store` to adopt it", v.Rows, v.Head)
}
