package main

// Receipts: proof, for anybody holding the log's verifier key and nothing
// else, that a row is in the audit log. A receipt carries the row's leaf
// data (tlog.go), its inclusion proof, and a signed checkpoint (with any
// witnesses' cosignatures) whose tree holds it. The holder of a signed
// shim or kernel checks, offline, that its signature was logged
// (docs/transparency.md, "Receipts").

import (
	"bytes"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

const (
	receiptFormat = "debusine-signing audit receipt 1"
	// maxReceiptSize bounds a receipt read into memory.
	maxReceiptSize = 4 << 20
)

// receipt is the JSON of a receipt.
type receipt struct {
	Format string `json:"format"`
	// Leaf is the row's leaf data (base64); the row is leaf Leaf.ID-1.
	Leaf []byte `json:"leaf"`
	// Proof is the inclusion proof of the leaf in the checkpoint's tree.
	Proof tlog.RecordProof `json:"proof"`
	// Checkpoint is the signed checkpoint, signature lines included.
	Checkpoint string `json:"checkpoint"`
}

// Prove writes the receipt of row id. The checkpoint is checkpoint, when
// given (one kept with its witnesses' cosignatures), after checking that
// it is of this log and covers the row; else a new one.
func (s *Store) Prove(id int64, checkpoint []byte) ([]byte, error) {
	ak, err := s.auditKey(nil)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	r, err := scanAuditRow(s.db.QueryRow("SELECT "+auditColumns+" FROM audit_log WHERE id = $1", id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("audit log: no row %d", id)
	}
	if err != nil {
		return nil, sqliteError(err)
	}
	if r.computeHash() != r.Hash || !ak.checkRowMAC(r.Hash, r.MAC) {
		return nil, fmt.Errorf("audit log: row %d does not verify; run audit verify", id)
	}
	if checkpoint == nil {
		if checkpoint, err = s.Checkpoint(); err != nil {
			return nil, err
		}
	}
	verifiers, vkey, err := s.storeVerifiers()
	if err != nil {
		return nil, err
	}
	return s.proveRow(r, checkpoint, verifiers, vkey)
}

// proveRow writes the receipt of row r, read by the caller, with
// checkpoint, which must open with verifiers (vkey names the log's key in
// errors) and be of this log's tree: Prove, and audit serve, which has the
// verifier key but not the audit key.
func (s *Store) proveRow(r AuditRow, checkpoint []byte, verifiers note.Verifiers, vkey string) ([]byte, error) {
	id := r.ID
	cp, err := openCheckpoint(checkpoint, verifiers, vkey)
	if err != nil {
		return nil, err
	}
	if cp.Legacy {
		return nil, errors.New("checkpoint: of the first form, without a tree root: take a new one (audit checkpoint)")
	}
	if cp.Size < id {
		return nil, fmt.Errorf("checkpoint: covers %d rows, not row %d: take a newer one", cp.Size, id)
	}
	reader := treeHashReader(s.db)
	root, err := tlog.TreeHash(cp.Size, reader)
	if err != nil {
		return nil, err
	}
	if root != cp.Root {
		return nil, fmt.Errorf("checkpoint: its tree of %d rows is not this log's (forked or rewritten); run audit verify --checkpoint", cp.Size)
	}
	leaf := r.leafData()
	proof, err := tlog.ProveRecord(cp.Size, id-1, reader)
	if err != nil {
		return nil, err
	}
	if err := tlog.CheckRecord(proof, cp.Size, cp.Root, id-1, tlog.RecordHash(leaf)); err != nil {
		return nil, fmt.Errorf("audit tree: row %d's stored hashes do not prove it (%v); run audit verify", id, err)
	}
	out, err := json.MarshalIndent(receipt{Format: receiptFormat, Leaf: leaf, Proof: proof, Checkpoint: string(checkpoint)}, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// signRowFor returns the id of the newest sign row over data whose
// SHA-256 is sum (hex).
func (s *Store) signRowFor(sum string) (int64, error) {
	sum = strings.ToLower(sum)
	if len(sum) != 64 || strings.Trim(sum, "0123456789abcdef") != "" {
		return 0, usagef("--sha256 must be 64 hex digits, not %q", sum)
	}
	// The LIKE narrows the rows the same way on both engines; the JSON
	// decides.
	rows, err := s.db.Query("SELECT id, data FROM audit_log WHERE event = 'sign' AND data LIKE $1 ORDER BY id DESC", "%"+sum+"%")
	if err != nil {
		return 0, fmt.Errorf("audit log: %w", sqliteError(err))
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var data string
		if err := rows.Scan(&id, &data); err != nil {
			return 0, fmt.Errorf("audit log: %w", err)
		}
		if rowDataSHA256([]byte(data)) == sum {
			return id, nil
		}
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("audit log: %w", err)
	}
	return 0, fmt.Errorf("audit log: no signature over data with SHA-256 %s", sum)
}

// rowDataSHA256 is the data_sha256 a sign row's data names, "" if none.
func rowDataSHA256(data []byte) string {
	var d struct {
		SHA256 string `json:"data_sha256"`
	}
	if json.Unmarshal(data, &d) != nil {
		return ""
	}
	return d.SHA256
}

// verifyReceipt checks a receipt offline: its checkpoint with verifiers
// (checkpointVerifiers: the log's key, and witnesses' if any), and the
// inclusion of its leaf in the checkpoint's tree. It returns the row (its
// MAC unknown) and the checkpoint.
func verifyReceipt(data []byte, verifiers note.Verifiers) (AuditRow, AuditCheckpoint, error) {
	var rc receipt
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rc); err != nil {
		return AuditRow{}, AuditCheckpoint{}, fmt.Errorf("receipt: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return AuditRow{}, AuditCheckpoint{}, errors.New("receipt: data after the receipt")
	}
	if rc.Format != receiptFormat {
		return AuditRow{}, AuditCheckpoint{}, fmt.Errorf("receipt: format %q, this program reads %q", rc.Format, receiptFormat)
	}
	r, err := parseLeafData(rc.Leaf)
	if err != nil {
		return r, AuditCheckpoint{}, fmt.Errorf("receipt: %w", err)
	}
	cp, _, err := parseCheckpoint([]byte(rc.Checkpoint), verifiers)
	if err != nil {
		return r, cp, fmt.Errorf("receipt: %w", err)
	}
	if cp.Legacy {
		return r, cp, errors.New("receipt: its checkpoint has no tree root")
	}
	if r.ID > cp.Size {
		return r, cp, fmt.Errorf("receipt: row %d is not in the checkpoint's %d rows", r.ID, cp.Size)
	}
	if err := tlog.CheckRecord(rc.Proof, cp.Size, cp.Root, r.ID-1, tlog.RecordHash(rc.Leaf)); err != nil {
		return r, cp, fmt.Errorf("receipt: the inclusion proof of row %d does not verify: %w", r.ID, err)
	}
	return r, cp, nil
}

// cmdAuditProve writes the receipt of one row.
func cmdAuditProve(e *env, args []string) error {
	fs := flag.NewFlagSet("audit prove", flag.ContinueOnError)
	sum := fs.String("sha256", "", "prove the newest signature over data with this SHA-256 (hex)")
	file := fs.String("file", "", "prove the newest signature over this `file`")
	checkpoint := fs.String("checkpoint", "", "carry this signed checkpoint `file` (with any cosignatures) instead of a new one")
	out := fs.String("o", "", "write the receipt to `file` instead of standard output")
	pos, err := parseInterspersed(fs, e, args)
	if err != nil {
		return err
	}
	var id int64
	given := 0
	for _, set := range []bool{len(pos) > 0, *sum != "", *file != ""} {
		if set {
			given++
		}
	}
	if given != 1 || len(pos) > 1 {
		return usagef("audit prove takes one of: ROW, --sha256 HEX, --file FILE")
	}
	if len(pos) == 1 {
		if id, err = strconv.ParseInt(pos[0], 10, 64); err != nil || id < 1 {
			return usagef("audit prove: ROW must be a row number, not %q", pos[0])
		}
	}
	if *file != "" {
		h, err := fileSHA256(*file)
		if err != nil {
			return err
		}
		*sum = h
	}
	msg, err := readCheckpointFlag(*checkpoint)
	if err != nil {
		return err
	}
	st, err := e.openStore()
	if err != nil {
		return err
	}
	if *sum != "" {
		if id, err = st.signRowFor(*sum); err != nil {
			return err
		}
	}
	rc, err := st.Prove(id, msg)
	if err != nil {
		return err
	}
	if *out == "" {
		_, err = e.stdout.Write(rc)
		return err
	}
	if err := writeFileAtomic(*out, func(f *os.File) error {
		_, err := f.Write(rc)
		return err
	}); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "receipt of row %d written to %s\n", id, *out)
	return nil
}

// cmdAuditVerifyReceipt checks a receipt with the log's verifier key
// alone, and with --file that it is for that file.
func cmdAuditVerifyReceipt(e *env, args []string) error {
	fs := flag.NewFlagSet("audit verify-receipt", flag.ContinueOnError)
	key := fs.String("key", "", "the log's verifier `key` (audit key on the signing host), or a file holding it")
	file := fs.String("file", "", "check that the receipt is for a signature over this `file`")
	var policy witnessPolicy
	policy.addFlags(fs)
	pos, err := parseInterspersed(fs, e, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *key == "" {
		return usagef("audit verify-receipt takes --key VERIFIER and one RECEIPT file")
	}
	if err := policy.parse(); err != nil {
		return err
	}
	vkey, err := verifierKeyArg(*key)
	if err != nil {
		return err
	}
	verifiers, err := checkpointVerifiers(vkey, nil)
	if err != nil {
		return err
	}
	data, err := readInput(pos[0], "receipt", maxReceiptSize)
	if err != nil {
		return err
	}
	r, cp, err := verifyReceipt(data, verifiers)
	if err != nil {
		return fmt.Errorf("%s: %w", pos[0], err)
	}
	if len(policy.witnesses) > 0 {
		var rc receipt
		json.Unmarshal(data, &rc)
		if _, err := policy.check([]byte(rc.Checkpoint), vkey); err != nil {
			return fmt.Errorf("%s: %w", pos[0], err)
		}
	}
	if *file != "" {
		h, err := fileSHA256(*file)
		if err != nil {
			return err
		}
		if r.Event != "sign" || rowDataSHA256(r.Data) != h {
			return fmt.Errorf("%s: the receipt is not for %s: its row %d is a %s row over data_sha256 %q, the file's SHA-256 is %s", pos[0], *file, r.ID, r.Event, rowDataSHA256(r.Data), h)
		}
	}
	fmt.Fprintf(e.stdout, "receipt verifies: row %d is in the audit log %s of %d rows\n", r.ID, cp.Origin, cp.Size)
	if len(policy.witnesses) > 0 {
		fmt.Fprintf(e.stdout, "its checkpoint is cosigned by at least %d of the %d witnesses given\n", policy.quorum, len(policy.witnesses))
	}
	fmt.Fprintln(e.stdout, r.String())
	if *file != "" {
		fmt.Fprintf(e.stdout, "%s: its SHA-256 is the row's data_sha256\n", *file)
	}
	return nil
}

// verifierKeyArg reads a verifier key given on the command line, or the
// first line of the file it names.
func verifierKeyArg(arg string) (string, error) {
	if _, err := note.NewVerifier(arg); err == nil {
		return arg, nil
	}
	data, err := readInput(arg, "verifier key", maxKeyFileSize)
	if err != nil {
		return "", fmt.Errorf("--key is neither a verifier key nor a readable file: %w", err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	return strings.TrimSpace(line), nil
}

// fileSHA256 is the SHA-256 (hex) of a file's contents.
func fileSHA256(path string) (string, error) {
	f, _, err := openInput(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
