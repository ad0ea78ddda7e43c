package main

import (
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/mod/sumdb/tlog"
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
	// ProgramVersion is the build that wrote the row; "" for rows written
	// before rows recorded it (schema version 1), hashed as they were then.
	ProgramVersion string `json:"program_version"`
	PrevHash       string `json:"prev_hash"`
	Hash           string `json:"hash"`
	// MAC authenticates Hash with the audit key (see auditkey.go).
	MAC string `json:"mac"`
}

var genesisHash = strings.Repeat("0", 64)

// computeHash is the row's link in the hash chain: the SHA-256 of its leaf
// data (tlog.go), which commits to every field of the row and to the
// previous row's hash, and which the row's authentication code covers.
// Rows of schema version 1 had no program version and are encoded without
// it, so that their hashes, and the chain through them, stay valid.
func (r *AuditRow) computeHash() string {
	h := sha256.Sum256(r.leafData())
	return hex.EncodeToString(h[:])
}

// Audit appends one row to the audit log, durably (SQLite's synchronous=FULL,
// PostgreSQL's commit).
func (s *Store) Audit(e AuditEntry) error {
	return s.auditAll([]AuditEntry{e})
}

// auditAll appends the entries to the audit log in one transaction: all of
// them or none.
func (s *Store) auditAll(entries []AuditEntry) error {
	tx, err := s.begin()
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	defer tx.Rollback()
	for _, e := range entries {
		if err := s.appendAudit(tx, e); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	return nil
}

// appendAudit adds a hash-chained, authenticated row, and its hashes in
// the Merkle tree (appendTree), inside tx, which must hold the store's
// write lock (Store.begin) so that no other process can append between
// reading the chain's head and inserting.
func (s *Store) appendAudit(tx *sql.Tx, e AuditEntry) error {
	ak, err := s.auditKey(tx)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	data, err := json.Marshal(e.Data)
	if err != nil {
		return fmt.Errorf("audit log: encoding data: %w", err)
	}
	if e.Data == nil {
		data = []byte("{}")
	}
	r := AuditRow{Event: e.Event, Purpose: e.Purpose, Fingerprint: e.Fingerprint, Data: data, CreatedAt: nowUTC(),
		WorkRequest: e.WorkRequest, ProgramVersion: programVersion()}
	err = tx.QueryRow("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1").Scan(&r.ID, &r.PrevHash)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		r.ID, r.PrevHash = 0, genesisHash
	case err != nil:
		return fmt.Errorf("audit log: %w", sqliteError(err))
	}
	r.ID++
	r.Hash = r.computeHash()
	r.MAC = ak.rowMAC(r.Hash)
	if _, err := tx.Exec(`INSERT INTO audit_log (id, event, purpose, fingerprint, data, created_at, created_by_work_request_id, program_version, prev_hash, hash, mac)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
		r.ID, r.Event, r.Purpose, r.Fingerprint, string(r.Data), r.CreatedAt, r.WorkRequest, r.ProgramVersion, r.PrevHash, r.Hash, r.MAC); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	return appendTree(tx, &r)
}

// AuditFilter selects audit rows; zero values select everything.
type AuditFilter struct {
	Fingerprint string
	WorkRequest *int64
}

// AuditRows returns the rows matching f, oldest first.
func (s *Store) AuditRows(f AuditFilter) ([]AuditRow, error) {
	return queryAuditRows(s.db, f)
}

// auditColumns are the columns scanAuditRow reads, in its order.
const auditColumns = "id, event, purpose, fingerprint, data, created_at, created_by_work_request_id, coalesce(program_version, ''), prev_hash, hash, coalesce(mac, '')"

func scanAuditRow(rows interface{ Scan(...any) error }) (AuditRow, error) {
	var r AuditRow
	var data string
	if err := rows.Scan(&r.ID, &r.Event, &r.Purpose, &r.Fingerprint, &data, &r.CreatedAt, &r.WorkRequest, &r.ProgramVersion, &r.PrevHash, &r.Hash, &r.MAC); err != nil {
		return r, fmt.Errorf("audit log: %w", err)
	}
	r.Data = json.RawMessage(data)
	return r, nil
}

// queryAuditRows reads the rows matching f, oldest first, through db or a
// transaction.
func queryAuditRows(db interface {
	Query(string, ...any) (*sql.Rows, error)
}, f AuditFilter) ([]AuditRow, error) {
	q := "SELECT " + auditColumns + " FROM audit_log WHERE 1 = 1"
	var args []any
	if f.Fingerprint != "" {
		args = append(args, strings.ToUpper(f.Fingerprint))
		q += fmt.Sprintf(" AND fingerprint = $%d", len(args))
	}
	if f.WorkRequest != nil {
		args = append(args, *f.WorkRequest)
		q += fmt.Sprintf(" AND created_by_work_request_id = $%d", len(args))
	}
	return selectAuditRows(db, q+" ORDER BY id", args...)
}

// selectAuditRows runs query, which selects auditColumns (or columns in
// their order), and reads every row it returns.
func selectAuditRows(db interface {
	Query(string, ...any) (*sql.Rows, error)
}, query string, args ...any) ([]AuditRow, error) {
	rows, err := db.Query(query, args...)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", sqliteError(err))
	}
	defer rows.Close()
	var out []AuditRow
	for rows.Next() {
		r, err := scanAuditRow(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// AuditVerification is the outcome of verifying the audit log.
type AuditVerification struct {
	Rows int
	Head string    // hash of the last row: a checkpoint signs it with the size
	Root tlog.Hash // of the Merkle tree over the rows (tlog.go)
}

// VerifyAudit checks the schema and triggers, recomputes the hash chain
// from the first row and checks every row's authentication code, and
// reports the first row that does not match: edited, deleted (the next
// row's prev_hash then names a hash no row has), reordered, or written by
// someone without the audit key; then recomputes the Merkle tree from the
// rows and compares it with the stored one (verifyTree). Removing the newest rows leaves a valid
// shorter log: only a checkpoint kept elsewhere shows that (VerifyCheckpoint).
//
// It also checks every key row (VerifyKeys): a key row swapped, edited or
// deleted is named as well.
func (s *Store) VerifyAudit() (AuditVerification, error) {
	v, err := s.verifyRows()
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	if schemaErr := s.checkSchema(); schemaErr != nil {
		errs = append(errs, schemaErr)
	}
	if problems, keysErr := s.VerifyKeys(); keysErr != nil {
		errs = append(errs, keysErr)
	} else if err := keyProblemsError(problems); err != nil {
		errs = append(errs, err)
	}
	switch len(errs) {
	case 0:
		return v, nil
	case 1:
		return v, errs[0]
	}
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return v, fmt.Errorf("%w; and %s", errs[0], strings.Join(msgs[1:], "; and "))
}

func (s *Store) verifyRows() (AuditVerification, error) {
	ak, err := s.auditKey(nil)
	if err != nil {
		return AuditVerification{}, fmt.Errorf("audit log: %w", err)
	}
	rows, err := s.AuditRows(AuditFilter{})
	if err != nil {
		return AuditVerification{}, err
	}
	// The first row that fails either check is the one named: the chain
	// names a row changed without recomputing hashes, the authentication
	// code one rewritten with recomputed hashes.
	v, err := verifyChain(rows)
	for i, r := range rows {
		if i >= v.Rows && err != nil {
			break
		}
		if !ak.checkRowMAC(r.Hash, r.MAC) {
			return v, fmt.Errorf("audit log broken at row %d: its authentication code does not match (row written or rewritten without the audit key)", r.ID)
		}
	}
	if err != nil {
		return v, err
	}
	v.Root, err = verifyTree(s.db, rows)
	return v, err
}

// verifyChain recomputes the hash chain of rows, which must be the whole
// log, oldest first.
func verifyChain(rows []AuditRow) (AuditVerification, error) {
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

// schemaObject is one table, index or trigger of the database.
type schemaObject struct{ kind, name, sql string }

// schemaObjects lists the tables, indexes and triggers of db (SQLite's own
// catalogue; another engine would compare its own).
func schemaObjects(db querier) (map[string]schemaObject, error) {
	rows, err := db.Query("SELECT type, name, coalesce(sql, '') FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'")
	if err != nil {
		return nil, sqliteError(err)
	}
	defer rows.Close()
	objs := map[string]schemaObject{}
	for rows.Next() {
		var o schemaObject
		if err := rows.Scan(&o.kind, &o.name, &o.sql); err != nil {
			return nil, err
		}
		objs[o.name] = o
	}
	return objs, rows.Err()
}

// expectedSchema is what schema.sql makes of an empty database.
var expectedSchema = sync.OnceValues(func() (map[string]schemaObject, error) {
	db, err := sql.Open("sqlite", ":memory:")
	if err != nil {
		return nil, err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	for _, section := range schemaSections(schemaSQL) {
		if _, err := db.Exec(section); err != nil {
			return nil, fmt.Errorf("schema.sql: %w", err)
		}
	}
	return schemaObjects(db)
})

// checkSchema checks that the database's schema version, tables, indexes
// and triggers are exactly those this version makes: a dropped or altered
// trigger no longer protects the log, even if every row still verifies.
func (s *Store) checkSchema() error {
	version, err := s.engine.version(s.db)
	if err != nil {
		return sqliteError(err)
	}
	if n := len(schemaSections(s.engine.schema)); version != n {
		return fmt.Errorf("database schema version %d, this program expects %d", version, n)
	}
	want, err := s.engine.expectedSchema(s.db)
	if err != nil {
		return err
	}
	have, err := s.engine.schemaObjects(s.db)
	if err != nil {
		return err
	}
	names := slices.Sorted(maps.Keys(want))
	for _, name := range names {
		o, ok := have[name]
		switch {
		case !ok:
			return fmt.Errorf("database schema changed: %s %s is missing (dropped?); the audit log is not protected", want[name].kind, name)
		case o != want[name]:
			return fmt.Errorf("database schema changed: %s %s is not what this version expects (altered?)", o.kind, name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(have)) {
		if _, ok := want[name]; !ok {
			return fmt.Errorf("database schema changed: unexpected %s %s", have[name].kind, name)
		}
	}
	return nil
}
