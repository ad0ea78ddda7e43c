package main

import (
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// AuditEntry is one event to append to the audit log.
type AuditEntry struct {
	Event       string // generate, register, sign, reencrypt
	Purpose     string
	Fingerprint string
	Data        map[string]any
	WorkRequest *int64 // nil for offline/CLI actions
}

// auditContext is what a signing call knows about why it signs: the work
// request, and the server's permission-check answer (username, user_id,
// resource), copied into each sign row next to data_sha256.
type auditContext struct {
	WorkRequest *int64
	Extra       map[string]any
}

// signEntry is the audit row of one signature over input whose SHA-256 is
// dataSHA256 (hex).
func (ac auditContext) signEntry(k *Key, dataSHA256 string) AuditEntry {
	data := map[string]any{}
	for name, v := range ac.Extra {
		data[name] = v
	}
	data["data_sha256"] = dataSHA256
	return AuditEntry{Event: "sign", Purpose: k.Purpose, Fingerprint: k.Fingerprint, Data: data, WorkRequest: ac.WorkRequest}
}

// AuditRow is a stored audit row.
type AuditRow struct {
	ID          int64           `json:"id"`
	Event       string          `json:"event"`
	Purpose     string          `json:"purpose"`
	Fingerprint string          `json:"fingerprint"`
	Data        json.RawMessage `json:"data"`
	CreatedAt   string          `json:"created_at"`
	WorkRequest *int64          `json:"created_by_work_request_id"`
	PrevHash    string          `json:"prev_hash"`
	Hash        string          `json:"hash"`
}

var genesisHash = strings.Repeat("0", 64)

// hash commits to every field of the row and to the previous row's hash.
// Fields are length-prefixed so that no two different rows encode alike.
func (r *AuditRow) computeHash() string {
	h := sha256.New()
	wr := ""
	if r.WorkRequest != nil {
		wr = strconv.FormatInt(*r.WorkRequest, 10)
	}
	for _, f := range []string{strconv.FormatInt(r.ID, 10), r.Event, r.Purpose, r.Fingerprint, string(r.Data), r.CreatedAt, wr, r.PrevHash} {
		var n [binary.MaxVarintLen64]byte
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(f)))])
		h.Write([]byte(f))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Audit appends one row to the audit log, durably (SQLite's synchronous=FULL,
// PostgreSQL's commit).
func (s *Store) Audit(e AuditEntry) error {
	tx, err := s.begin()
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	defer tx.Rollback()
	if err := appendAudit(tx, e); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	return nil
}

// appendAudit adds a hash-chained row inside tx, which must hold the store's
// write lock (Store.begin) so that no other process can append between
// reading the chain's head and inserting.
func appendAudit(tx *sql.Tx, e AuditEntry) error {
	data, err := json.Marshal(e.Data)
	if err != nil {
		return fmt.Errorf("audit log: encoding data: %w", err)
	}
	if e.Data == nil {
		data = []byte("{}")
	}
	r := AuditRow{Event: e.Event, Purpose: e.Purpose, Fingerprint: e.Fingerprint, Data: data, CreatedAt: nowUTC(), WorkRequest: e.WorkRequest}
	err = tx.QueryRow("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1").Scan(&r.ID, &r.PrevHash)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		r.ID, r.PrevHash = 0, genesisHash
	case err != nil:
		return fmt.Errorf("audit log: %w", sqliteError(err))
	}
	r.ID++
	r.Hash = r.computeHash()
	if _, err := tx.Exec(`INSERT INTO audit_log (id, event, purpose, fingerprint, data, created_at, created_by_work_request_id, prev_hash, hash)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
		r.ID, r.Event, r.Purpose, r.Fingerprint, string(r.Data), r.CreatedAt, r.WorkRequest, r.PrevHash, r.Hash); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	return nil
}

// AuditFilter selects audit rows; zero values select everything.
type AuditFilter struct {
	Fingerprint string
	WorkRequest *int64
}

// AuditRows returns the rows matching f, oldest first.
func (s *Store) AuditRows(f AuditFilter) ([]AuditRow, error) {
	q := "SELECT id, event, purpose, fingerprint, data, created_at, created_by_work_request_id, prev_hash, hash FROM audit_log WHERE 1 = 1"
	var args []any
	if f.Fingerprint != "" {
		args = append(args, strings.ToUpper(f.Fingerprint))
		q += fmt.Sprintf(" AND fingerprint = $%d", len(args))
	}
	if f.WorkRequest != nil {
		args = append(args, *f.WorkRequest)
		q += fmt.Sprintf(" AND created_by_work_request_id = $%d", len(args))
	}
	rows, err := s.db.Query(q+" ORDER BY id", args...)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", sqliteError(err))
	}
	defer rows.Close()
	var out []AuditRow
	for rows.Next() {
		var r AuditRow
		var data string
		if err := rows.Scan(&r.ID, &r.Event, &r.Purpose, &r.Fingerprint, &data, &r.CreatedAt, &r.WorkRequest, &r.PrevHash, &r.Hash); err != nil {
			return nil, fmt.Errorf("audit log: %w", err)
		}
		r.Data = json.RawMessage(data)
		out = append(out, r)
	}
	return out, rows.Err()
}

// AuditVerification is the outcome of recomputing the hash chain.
type AuditVerification struct {
	Rows int
	Head string // hash of the last row: record it elsewhere to detect truncation
}

// VerifyAudit recomputes the hash chain from the first row and reports the
// first row that does not match: edited, deleted (the next row's prev_hash
// then names a hash no row has) or reordered rows all break it.
func (s *Store) VerifyAudit() (AuditVerification, error) {
	rows, err := s.AuditRows(AuditFilter{})
	if err != nil {
		return AuditVerification{}, err
	}
	v := AuditVerification{Head: genesisHash}
	var prevID int64
	for _, r := range rows {
		if r.PrevHash != v.Head {
			if prevID == 0 {
				return v, fmt.Errorf("audit log broken at row %d: it is the first row but does not start the chain (rows before it deleted?)", r.ID)
			}
			return v, fmt.Errorf("audit log broken at row %d: its prev_hash does not match row %d (a row deleted, inserted or reordered)", r.ID, prevID)
		}
		if r.ID != prevID+1 {
			return v, fmt.Errorf("audit log broken at row %d: row %d is missing", r.ID, prevID+1)
		}
		if r.computeHash() != r.Hash {
			return v, fmt.Errorf("audit log broken at row %d: its contents do not match its hash (row modified)", r.ID)
		}
		v.Rows++
		v.Head = r.Hash
		prevID = r.ID
	}
	return v, nil
}

// String formats a row for the audit listing.
func (r *AuditRow) String() string {
	wr := "-"
	if r.WorkRequest != nil {
		wr = strconv.FormatInt(*r.WorkRequest, 10)
	}
	created := r.CreatedAt
	if t, err := time.Parse(timeFormat, r.CreatedAt); err == nil {
		created = t.Format(time.RFC3339)
	}
	return fmt.Sprintf("%d\t%s\t%-9s\t%s:%s\t%s\t%s", r.ID, created, r.Event, r.Purpose, r.Fingerprint, wr, r.Data)
}
