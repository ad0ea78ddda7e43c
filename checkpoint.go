package main

// Signed checkpoints of the audit log. The row authentication codes show
// that every row was written by the service, but not that the newest rows
// are still there: cutting the log after any row leaves a valid, shorter
// log. A checkpoint is the log's size and head hash, signed with the
// Ed25519 key derived from the audit key, in the signed note format of
// golang.org/x/mod/sumdb/note (the format of the Go checksum database's
// tree heads). Shipped off the host (the worker writes one after each
// task), it lets `audit verify --checkpoint` prove that the log still holds
// exactly the rows it covered, with anything added after them. Anybody can
// check a note's signature with the verifier key `audit key` prints.

import (
	"crypto/ed25519"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

const (
	// checkpointKeyName names the note key; it appears in the verifier key
	// and on the signature line.
	checkpointKeyName = "debusine-signing-audit"
	// checkpointOrigin is the first line of the note text.
	checkpointOrigin = "debusine-signing audit log"
)

// noteSigner is a note.Signer over the audit key's Ed25519 key.
type noteSigner struct {
	key  ed25519.PrivateKey
	hash uint32
}

func (n *noteSigner) Name() string                    { return checkpointKeyName }
func (n *noteSigner) KeyHash() uint32                 { return n.hash }
func (n *noteSigner) Sign(msg []byte) ([]byte, error) { return ed25519.Sign(n.key, msg), nil }

func (ak *auditKey) verifierKey() (string, error) {
	return note.NewEd25519VerifierKey(checkpointKeyName, ak.signingKey().Public().(ed25519.PublicKey))
}

func (ak *auditKey) noteSigner() (*noteSigner, error) {
	vkey, err := ak.verifierKey()
	if err != nil {
		return nil, err
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, err
	}
	return &noteSigner{key: ak.signingKey(), hash: v.KeyHash()}, nil
}

// checkpointVerifierKey returns the note verifier key of the audit key,
// read through tx (or the database when nil).
func (s *Store) checkpointVerifierKey(tx *sql.Tx) (string, error) {
	ak, err := s.auditKey(tx)
	if err != nil {
		return "", fmt.Errorf("audit log: %w", err)
	}
	return ak.verifierKey()
}

// CheckpointVerifierKey returns the note verifier key that checks this
// store's checkpoints ("debusine-signing-audit+HASH+KEY").
func (s *Store) CheckpointVerifierKey() (string, error) { return s.checkpointVerifierKey(nil) }

// Checkpoint returns a signed note of the audit log's current size and
// head hash. The head row is checked first (its hash and authentication
// code), so that the service never signs a head it did not write.
func (s *Store) Checkpoint() ([]byte, error) {
	ak, err := s.auditKey(nil)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	size, head := int64(0), genesisHash
	r, err := scanAuditRow(s.db.QueryRow("SELECT " + auditColumns + " FROM audit_log ORDER BY id DESC LIMIT 1"))
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return nil, sqliteError(err)
	default:
		if r.computeHash() != r.Hash || !ak.checkRowMAC(r.Hash, r.MAC) {
			return nil, fmt.Errorf("audit log: the newest row %d does not verify; run audit verify", r.ID)
		}
		size, head = r.ID, r.Hash
	}
	signer, err := ak.noteSigner()
	if err != nil {
		return nil, err
	}
	return note.Sign(&note.Note{Text: fmt.Sprintf("%s\n%d\n%s\n", checkpointOrigin, size, head)}, signer)
}

// AuditCheckpoint is what a checkpoint covers: the first Size rows, the
// last of which has hash Head.
type AuditCheckpoint struct {
	Size int64
	Head string
}

// OpenCheckpoint checks a checkpoint's signature against the verifier key
// vkey and returns what it covers.
func OpenCheckpoint(msg []byte, vkey string) (AuditCheckpoint, error) {
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return AuditCheckpoint{}, fmt.Errorf("checkpoint verifier key: %w", err)
	}
	n, err := note.Open(msg, note.VerifierList(v))
	var unverified *note.UnverifiedNoteError
	if errors.As(err, &unverified) {
		var signers []string
		for _, sig := range unverified.Note.UnverifiedSigs {
			signers = append(signers, fmt.Sprintf("%s+%08x", sig.Name, sig.Hash))
		}
		return AuditCheckpoint{}, fmt.Errorf("checkpoint signed by another audit key (%s), not by %s: the audit key was replaced, or the checkpoint is another store's", strings.Join(signers, ", "), vkeyName(vkey))
	}
	if err != nil {
		return AuditCheckpoint{}, fmt.Errorf("checkpoint: %w", err)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) != 4 || lines[0] != checkpointOrigin || lines[3] != "" {
		return AuditCheckpoint{}, errors.New("checkpoint: not an audit log checkpoint")
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != lines[1] {
		return AuditCheckpoint{}, fmt.Errorf("checkpoint: bad size %q", lines[1])
	}
	if len(lines[2]) != 64 || strings.Trim(lines[2], "0123456789abcdef") != "" {
		return AuditCheckpoint{}, fmt.Errorf("checkpoint: bad head %q", lines[2])
	}
	return AuditCheckpoint{Size: size, Head: lines[2]}, nil
}

// VerifyCheckpoint verifies the whole audit log (VerifyAudit), then the
// checkpoint msg against this store's audit key, and checks that the log
// still holds exactly the rows the checkpoint covered: none removed, none
// rewritten; rows appended since are fine.
func (s *Store) VerifyCheckpoint(msg []byte) (AuditVerification, AuditCheckpoint, error) {
	v, err := s.VerifyAudit()
	if err != nil {
		return v, AuditCheckpoint{}, err
	}
	vkey, err := s.CheckpointVerifierKey()
	if err != nil {
		return v, AuditCheckpoint{}, err
	}
	cp, err := OpenCheckpoint(msg, vkey)
	if err != nil {
		return v, cp, err
	}
	if cp.Size > int64(v.Rows) {
		return v, cp, fmt.Errorf("audit log truncated: the checkpoint covers %d rows, the log has %d (rows %d to %d removed)", cp.Size, v.Rows, v.Rows+1, cp.Size)
	}
	head := genesisHash
	if cp.Size > 0 {
		if err := s.db.QueryRow("SELECT hash FROM audit_log WHERE id = $1", cp.Size).Scan(&head); err != nil {
			return v, cp, fmt.Errorf("audit log: %w", sqliteError(err))
		}
	}
	if head != cp.Head {
		return v, cp, fmt.Errorf("audit log rewritten: row %d is not the row the checkpoint covered (head %s, checkpoint %s)", cp.Size, head, cp.Head)
	}
	return v, cp, nil
}

// writeCheckpointFile replaces path (if not "") with a new checkpoint, so
// that whatever ships it off the host always finds a whole one.
func writeCheckpointFile(st *Store, path string) error {
	if path == "" {
		return nil
	}
	cp, err := st.Checkpoint()
	if err != nil {
		return err
	}
	return writeFileAtomic(path, func(f *os.File) error {
		_, err := f.Write(cp)
		return err
	})
}
