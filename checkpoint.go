package main

// Signed checkpoints of the audit log. The row authentication codes show
// that every row was written by the service, but not that the newest rows
// are still there, nor that everybody is shown the same log. A checkpoint
// is the log's tree head in C2SP tlog-checkpoint form: the log's origin,
// its size and the Merkle root (tlog.go), with the hash chain's head as an
// extension line, signed with the Ed25519 key derived from the audit key
// as a signed note (golang.org/x/mod/sumdb/note), under the origin as key
// name. Shipped off the host (the worker writes one after each task), it
// lets `audit verify --checkpoint` prove that the log still holds exactly
// the rows it covered, and lets anybody with the verifier key (`audit
// key`) check inclusion and consistency proofs, and witnesses cosign it.
//
// The first checkpoints had another form: the text "debusine-signing audit
// log", the size and the chain head, signed under the key name
// "debusine-signing-audit". They still verify, with the old verifier key
// or the new one (the same Ed25519 key under another name).

import (
	"crypto/ed25519"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

const (
	// legacyKeyName and legacyOrigin are the key name and the first line
	// of the first checkpoints' form.
	legacyKeyName = "debusine-signing-audit"
	legacyOrigin  = "debusine-signing audit log"
	// chainHeadPrefix starts the extension line naming the hash chain's
	// head, the last row's hash.
	chainHeadPrefix = "chain-head "
	// maxOriginSize is the longest origin C2SP tlog-cosignature allows.
	maxOriginSize = 255
)

// checkOrigin refuses an origin that cannot also be a note key name (no
// spaces, no "+"), as C2SP tlog-checkpoint recommends the log's key name
// be its origin.
func checkOrigin(origin string) error {
	if len(origin) > maxOriginSize {
		return fmt.Errorf("audit origin %q: longer than %d bytes", origin, maxOriginSize)
	}
	vkey, err := note.NewEd25519VerifierKey(origin, make([]byte, ed25519.PublicKeySize))
	if err == nil {
		_, err = note.NewVerifier(vkey)
	}
	if err != nil || origin == legacyKeyName {
		return fmt.Errorf("audit origin %q: must be a schema-less URL such as signing.example.org/audit, without spaces or \"+\"", origin)
	}
	return nil
}

// defaultOrigin is the origin of a log whose configuration sets none:
// unique to the audit key, so to the log.
func (ak *auditKey) defaultOrigin() string {
	h := sha256.Sum256(ak.signingKey().Public().(ed25519.PublicKey))
	return "debusine-signing/" + hex.EncodeToString(h[:8])
}

// origin is this log's origin: audit_origin, or the default.
func (s *Store) origin(ak *auditKey) string {
	if s.auditOrigin != "" {
		return s.auditOrigin
	}
	return ak.defaultOrigin()
}

// noteSigner is a note.Signer over the audit key's Ed25519 key.
type noteSigner struct {
	key  ed25519.PrivateKey
	name string
	hash uint32
}

func (n *noteSigner) Name() string                    { return n.name }
func (n *noteSigner) KeyHash() uint32                 { return n.hash }
func (n *noteSigner) Sign(msg []byte) ([]byte, error) { return ed25519.Sign(n.key, msg), nil }

// verifierKey is the note verifier key of the audit key under name.
func (ak *auditKey) verifierKey(name string) (string, error) {
	return note.NewEd25519VerifierKey(name, ak.signingKey().Public().(ed25519.PublicKey))
}

func (ak *auditKey) noteSigner(name string) (*noteSigner, error) {
	vkey, err := ak.verifierKey(name)
	if err != nil {
		return nil, err
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, err
	}
	return &noteSigner{key: ak.signingKey(), name: name, hash: v.KeyHash()}, nil
}

// auditKeyID names the audit key where the name must not change with the
// configured origin (pins beside the service keys, audit rows about the
// key): its verifier key under the default origin.
func (s *Store) auditKeyID(tx *sql.Tx) (string, error) {
	ak, err := s.auditKey(tx)
	if err != nil {
		return "", fmt.Errorf("audit log: %w", err)
	}
	return ak.verifierKey(ak.defaultOrigin())
}

// CheckpointVerifierKey returns the note verifier key that checks this
// store's checkpoints ("ORIGIN+HASH+KEY").
func (s *Store) CheckpointVerifierKey() (string, error) {
	ak, err := s.auditKey(nil)
	if err != nil {
		return "", fmt.Errorf("audit log: %w", err)
	}
	return ak.verifierKey(s.origin(ak))
}

// Checkpoint returns a signed checkpoint of the audit log as it is now.
func (s *Store) Checkpoint() ([]byte, error) { return s.signedCheckpoint(s.db) }

// signedCheckpoint returns a signed checkpoint of the log as q (the
// database or a transaction) sees it. The head row is checked first (its
// hash, authentication code and leaf), so that the service never signs a
// head it did not write.
func (s *Store) signedCheckpoint(q querier) ([]byte, error) {
	tx, _ := q.(*sql.Tx)
	ak, err := s.auditKey(tx)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	size, head := int64(0), genesisHash
	r, err := scanAuditRow(q.QueryRow("SELECT " + auditColumns + " FROM audit_log ORDER BY id DESC LIMIT 1"))
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
	reader := treeHashReader(q)
	if size > 0 {
		leaf, err := reader.ReadHashes([]int64{tlog.StoredHashIndex(0, size-1)})
		if err != nil {
			return nil, err
		}
		if leaf[0] != tlog.RecordHash(r.leafData()) {
			return nil, fmt.Errorf("audit log: the newest row %d is not the tree's last leaf; run audit verify", r.ID)
		}
	}
	root, err := tlog.TreeHash(size, reader)
	if err != nil {
		return nil, err
	}
	origin := s.origin(ak)
	signer, err := ak.noteSigner(origin)
	if err != nil {
		return nil, err
	}
	text := fmt.Sprintf("%s\n%d\n%s\n%s%s\n", origin, size, base64.StdEncoding.EncodeToString(root[:]), chainHeadPrefix, head)
	return note.Sign(&note.Note{Text: text}, signer)
}

// AuditCheckpoint is what a checkpoint covers: the first Size rows, the
// last of which has hash Head, whose tree has root Root.
type AuditCheckpoint struct {
	Origin string
	Size   int64
	Root   tlog.Hash
	Head   string
	// Legacy marks the first form, which has no tree root.
	Legacy bool
	// Cosigners names the other signatures that verified (witnesses').
	Cosigners []string
}

// Tree is the tree head the checkpoint signs.
func (cp AuditCheckpoint) Tree() tlog.Tree { return tlog.Tree{N: cp.Size, Hash: cp.Root} }

// auditVerifiers finds the log's verifier for a signature by the audit
// key (under the name of its verifier key, or under the legacy name; a
// legacy verifier key accepts any name), and any other verifiers, such as
// witnesses', in others.
type auditVerifiers struct {
	name    string
	anyName bool
	pub     ed25519.PublicKey
	others  note.Verifiers
}

func (a *auditVerifiers) Verifier(name string, hash uint32) (note.Verifier, error) {
	if a.others != nil {
		if v, err := a.others.Verifier(name, hash); err == nil {
			return v, nil
		}
	}
	if name != a.name && name != legacyKeyName && !a.anyName {
		return nil, &note.UnknownVerifierError{Name: name, KeyHash: hash}
	}
	vkey, err := note.NewEd25519VerifierKey(name, a.pub)
	if err != nil {
		return nil, &note.UnknownVerifierError{Name: name, KeyHash: hash}
	}
	v, err := note.NewVerifier(vkey)
	if err != nil || v.KeyHash() != hash {
		return nil, &note.UnknownVerifierError{Name: name, KeyHash: hash}
	}
	return v, nil
}

// checkpointVerifiers makes the verifiers of checkpoints signed by the
// log whose verifier key is vkey (`audit key`, new or legacy form), and
// cosigned by others (nil for none).
func checkpointVerifiers(vkey string, others note.Verifiers) (note.Verifiers, error) {
	if _, err := note.NewVerifier(vkey); err != nil {
		return nil, fmt.Errorf("checkpoint verifier key: %w", err)
	}
	parts := strings.SplitN(vkey, "+", 3)
	key, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(key) != 1+ed25519.PublicKeySize || key[0] != 1 {
		return nil, errors.New("checkpoint verifier key: not an Ed25519 key")
	}
	return &auditVerifiers{name: parts[0], anyName: parts[0] == legacyKeyName, pub: ed25519.PublicKey(key[1:]), others: others}, nil
}

// parseCheckpoint opens a signed checkpoint with verifiers (from
// checkpointVerifiers) and reads what it covers. The log's own signature
// must be there, under the checkpoint's origin (the legacy key name for
// the legacy form); the other signatures that verify are listed in
// Cosigners, those of unknown keys ignored.
func parseCheckpoint(text []byte, verifiers note.Verifiers) (AuditCheckpoint, *note.Note, error) {
	var cp AuditCheckpoint
	n, err := note.Open(text, verifiers)
	if err != nil {
		return cp, nil, fmt.Errorf("checkpoint: %w", err)
	}
	lines := strings.Split(n.Text, "\n")
	if lines[0] == legacyOrigin {
		if len(lines) != 4 || lines[3] != "" {
			return cp, nil, errors.New("checkpoint: not an audit log checkpoint")
		}
		cp.Origin, cp.Legacy, cp.Head = legacyOrigin, true, lines[2]
		if err := parseCheckpointSize(&cp, lines[1]); err != nil {
			return cp, nil, err
		}
	} else {
		if len(lines) < 5 || lines[len(lines)-1] != "" {
			return cp, nil, errors.New("checkpoint: not an audit log checkpoint (origin, size, root and chain head lines)")
		}
		cp.Origin = lines[0]
		if err := parseCheckpointSize(&cp, lines[1]); err != nil {
			return cp, nil, err
		}
		root, err := base64.StdEncoding.DecodeString(lines[2])
		if err != nil || len(root) != tlog.HashSize || base64.StdEncoding.EncodeToString(root) != lines[2] {
			return cp, nil, fmt.Errorf("checkpoint: bad root hash %q", lines[2])
		}
		cp.Root = tlog.Hash(root)
		for _, ext := range lines[3 : len(lines)-1] {
			if ext == "" {
				return cp, nil, errors.New("checkpoint: empty extension line")
			}
			if h, ok := strings.CutPrefix(ext, chainHeadPrefix); ok && cp.Head == "" {
				cp.Head = h
			}
		}
		if cp.Head == "" {
			return cp, nil, errors.New("checkpoint: no chain-head line: not an audit log checkpoint")
		}
	}
	if len(cp.Head) != 64 || strings.Trim(cp.Head, "0123456789abcdef") != "" {
		return cp, nil, fmt.Errorf("checkpoint: bad chain head %q", cp.Head)
	}
	logName := cp.Origin
	if cp.Legacy {
		logName = legacyKeyName
	}
	signed := false
	for _, sig := range n.Sigs {
		if sig.Name == logName && !signed {
			signed = true
		} else {
			cp.Cosigners = append(cp.Cosigners, sig.Name)
		}
	}
	if !signed {
		return cp, nil, fmt.Errorf("checkpoint: not signed by the log under its origin %q", logName)
	}
	return cp, n, nil
}

func parseCheckpointSize(cp *AuditCheckpoint, line string) error {
	size, err := strconv.ParseInt(line, 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != line {
		return fmt.Errorf("checkpoint: bad size %q", line)
	}
	cp.Size = size
	return nil
}

// OpenCheckpoint checks a checkpoint's signature against the verifier key
// vkey and returns what it covers.
func OpenCheckpoint(msg []byte, vkey string) (AuditCheckpoint, error) {
	verifiers, err := checkpointVerifiers(vkey, nil)
	if err != nil {
		return AuditCheckpoint{}, err
	}
	return openCheckpoint(msg, verifiers, vkey)
}

// openCheckpoint is parseCheckpoint, naming both keys when the checkpoint
// is signed by another key than vkey's, where the note package would say
// only "no verifiable signatures".
func openCheckpoint(msg []byte, verifiers note.Verifiers, vkey string) (AuditCheckpoint, error) {
	cp, _, err := parseCheckpoint(msg, verifiers)
	var unverified *note.UnverifiedNoteError
	if errors.As(err, &unverified) {
		var signers []string
		for _, sig := range unverified.Note.UnverifiedSigs {
			signers = append(signers, fmt.Sprintf("%s+%08x", sig.Name, sig.Hash))
		}
		return cp, fmt.Errorf("checkpoint signed by another audit key (%s), not by %s: the audit key was replaced, or the checkpoint is another store's", strings.Join(signers, ", "), vkeyName(vkey))
	}
	return cp, err
}

// storeVerifiers verifies this store's checkpoints under any name: the
// log's origin may have been configured since one was signed. vkey is the
// verifier key under the origin, which errors name.
func (s *Store) storeVerifiers() (note.Verifiers, string, error) {
	vkey, err := s.CheckpointVerifierKey()
	if err != nil {
		return nil, "", err
	}
	v, err := checkpointVerifiers(vkey, nil)
	if err != nil {
		return nil, "", err
	}
	v.(*auditVerifiers).anyName = true
	return v, vkey, nil
}

// VerifyCheckpoint verifies the whole audit log (VerifyAudit), then the
// checkpoint msg against this store's audit key, and checks that the log
// still holds exactly the rows the checkpoint covered, with anything
// appended since: the chain head at its size is the same, and (for a
// checkpoint with a tree root) the tree now is consistent with the tree it
// signed, by a consistency proof. A checkpoint of a second log kept under
// the same key fails here.
func (s *Store) VerifyCheckpoint(msg []byte) (AuditVerification, AuditCheckpoint, error) {
	v, err := s.VerifyAudit()
	if err != nil {
		return v, AuditCheckpoint{}, err
	}
	verifiers, vkey, err := s.storeVerifiers()
	if err != nil {
		return v, AuditCheckpoint{}, err
	}
	cp, err := openCheckpoint(msg, verifiers, vkey)
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
	if cp.Legacy {
		return v, cp, nil
	}
	proof, err := tlog.ProveTree(int64(v.Rows), cp.Size, treeHashReader(s.db))
	if err != nil {
		return v, cp, err
	}
	if err := tlog.CheckTree(proof, int64(v.Rows), v.Root, cp.Size, cp.Root); err != nil {
		return v, cp, fmt.Errorf("audit log forked: the tree of %d rows is not consistent with the checkpoint's tree of %d rows (%v): the checkpoint is of another log under the same key, or the log was rewritten", v.Rows, cp.Size, err)
	}
	return v, cp, nil
}

// readCheckpointFlag reads the checkpoint a --checkpoint flag names, nil
// when it names none.
func readCheckpointFlag(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	return readInput(path, "checkpoint", maxKeyFileSize)
}

// writeCheckpointFile replaces path (if not "") with a new checkpoint,
// cosigned by the configured witnesses, so that whatever ships it off the
// host always finds a whole one. A witness that does not cosign is among
// witnessErrs, to be logged: the checkpoint is written all the same.
func writeCheckpointFile(st *Store, path string) (witnessErrs []error, err error) {
	if path == "" {
		return nil, nil
	}
	prev, _ := readInput(path, "checkpoint", maxKeyFileSize)
	cp, witnessErrs, err := st.witnessedCheckpoint(prev)
	if err != nil {
		return nil, err
	}
	return witnessErrs, writeFileAtomic(path, func(f *os.File) error {
		_, err := f.Write(cp)
		return err
	})
}
