package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"
)

// import-debusine-db copies the keys and the audit log of Debusine's own
// signing service (Debusine 0.12, Django app "signing") into this store, so
// that a deployment moves over without re-keying. Debusine's tables, from
// debusine/signing/db/models.py and its migrations 0001-0003:
//
//	signing_key: id, purpose varchar(7), fingerprint varchar(64),
//	  private_key jsonb, public_key bytea, created_at timestamptz,
//	  updated_at timestamptz NULL; unique (purpose, fingerprint)
//	signing_auditlog: id, purpose, fingerprint, event varchar(8),
//	  data jsonb, created_at timestamptz, created_by_work_request_id integer NULL
//
// private_key is the same JSON this store keeps ({"storage": "nacl",
// "public_key": ..., "encrypted": ...} or {"storage": "pkcs11-static",
// "pkcs11_uri": ...}); its nacl boxes open with the same service key files.

// debusineKey is a row of signing_key.
type debusineKey struct {
	id                   int64
	purpose, fingerprint string
	privateKey           string
	publicKey            []byte
	createdAt            time.Time
	updatedAt            sql.NullTime
}

// debusineAudit is a row of signing_auditlog.
type debusineAudit struct {
	id                          int64
	event, purpose, fingerprint string
	data                        string
	createdAt                   time.Time
	workRequest                 sql.NullInt64
}

// importMark is added to the data of every imported audit row: it marks the
// row as history from Debusine (its row id there and its original time),
// and lets a second import recognise rows it already copied.
type importMark struct {
	ID        int64  `json:"id"`
	CreatedAt string `json:"created_at"`
}

const importMarkField = "debusine_import"

// readDebusineDB reads both tables in one read-only snapshot.
func readDebusineDB(db *sql.DB) ([]debusineKey, []debusineAudit, error) {
	ctx := context.Background()
	tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
	if err != nil {
		return nil, nil, err
	}
	defer tx.Rollback()
	var keysTable, auditTable bool
	if err := tx.QueryRow("SELECT to_regclass('signing_key') IS NOT NULL, to_regclass('signing_auditlog') IS NOT NULL").Scan(&keysTable, &auditTable); err != nil {
		return nil, nil, err
	}
	if !keysTable || !auditTable {
		return nil, nil, errors.New("not a Debusine signing database: no signing_key and signing_auditlog tables")
	}
	rows, err := tx.Query("SELECT id, purpose, fingerprint, private_key::text, public_key, created_at, updated_at FROM signing_key ORDER BY id")
	if err != nil {
		return nil, nil, fmt.Errorf("reading signing_key: %w", err)
	}
	var keys []debusineKey
	for rows.Next() {
		var k debusineKey
		if err := rows.Scan(&k.id, &k.purpose, &k.fingerprint, &k.privateKey, &k.publicKey, &k.createdAt, &k.updatedAt); err != nil {
			rows.Close()
			return nil, nil, fmt.Errorf("reading signing_key: %w", err)
		}
		keys = append(keys, k)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("reading signing_key: %w", err)
	}
	rows, err = tx.Query("SELECT id, event, purpose, fingerprint, data::text, created_at, created_by_work_request_id FROM signing_auditlog ORDER BY id")
	if err != nil {
		return nil, nil, fmt.Errorf("reading signing_auditlog: %w", err)
	}
	defer rows.Close()
	var audit []debusineAudit
	for rows.Next() {
		var a debusineAudit
		if err := rows.Scan(&a.id, &a.event, &a.purpose, &a.fingerprint, &a.data, &a.createdAt, &a.workRequest); err != nil {
			return nil, nil, fmt.Errorf("reading signing_auditlog: %w", err)
		}
		audit = append(audit, a)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("reading signing_auditlog: %w", err)
	}
	return keys, audit, nil
}

// importReport counts what an import did (or, dry, would do).
type importReport struct {
	keysImported, keysPresent int
	auditImported, auditSeen  int
	problems                  []string // conflicts and rows that cannot be imported
}

// importDebusine copies keys and audit rows into s in one transaction:
// Debusine's audit rows first, in their order, as imported history, then
// each new key with a "register" row. Rows and keys already copied are
// skipped. Each key is checked as import-key checks one (checkNewKey: its
// fingerprint against its public key or certificate, its sealed private
// key against both). Anything refused (a malformed row, a key that fails
// its checks, a key present here with other content) is listed, and
// nothing at all is committed: the import is all or nothing. dryRun rolls
// the transaction back too.
func (s *Store) importDebusine(keys []debusineKey, audit []debusineAudit, dryRun bool) (*importReport, error) {
	tx, err := s.begin()
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	seen, err := importedMarks(tx)
	if err != nil {
		return nil, err
	}
	ak, err := s.auditKey(tx)
	if err != nil {
		return nil, err
	}
	r := &importReport{}
	descriptions := map[string]string{}
	for _, a := range audit {
		fpr := strings.ToUpper(a.fingerprint)
		var data map[string]any
		if err := json.Unmarshal([]byte(a.data), &data); err != nil || data == nil {
			r.problems = append(r.problems, fmt.Sprintf("audit row %d: data is not a JSON object", a.id))
			continue
		}
		if d, ok := data["description"].(string); ok && (a.event == "generate" || a.event == "register") {
			if _, known := descriptions[a.purpose+":"+fpr]; !known {
				descriptions[a.purpose+":"+fpr] = d
			}
		}
		mark := importMark{ID: a.id, CreatedAt: a.createdAt.UTC().Format(timeFormat)}
		if seen[mark] {
			r.auditSeen++
			continue
		}
		if a.event != "generate" && a.event != "register" && a.event != "sign" {
			r.problems = append(r.problems, fmt.Sprintf("audit row %d: unknown event %q", a.id, a.event))
			continue
		}
		if _, clash := data[importMarkField]; clash {
			r.problems = append(r.problems, fmt.Sprintf("audit row %d: data already has a %q member", a.id, importMarkField))
			continue
		}
		data[importMarkField] = mark
		e := AuditEntry{Event: a.event, Purpose: a.purpose, Fingerprint: fpr, Data: data}
		if a.workRequest.Valid {
			wr := a.workRequest.Int64
			e.WorkRequest = &wr
		}
		if err := s.appendAudit(tx, e); err != nil {
			return nil, fmt.Errorf("importing audit row %d: %w", a.id, err)
		}
		r.auditImported++
	}
	for _, dk := range keys {
		k := &Key{Purpose: dk.purpose, Fingerprint: strings.ToUpper(dk.fingerprint), PrivateKey: []byte(dk.privateKey), PublicKey: dk.publicKey}
		if k.Purpose != purposeUEFI && k.Purpose != purposeOpenPGP {
			r.problems = append(r.problems, fmt.Sprintf("key %s: unknown purpose", k))
			continue
		}
		if err := s.checkNewKey(k); err != nil {
			r.problems = append(r.problems, err.Error())
			continue
		}
		var private string
		var public []byte
		err := tx.QueryRow("SELECT private_key, public_key FROM keys WHERE purpose = $1 AND fingerprint = $2", k.Purpose, k.Fingerprint).Scan(&private, &public)
		if err == nil {
			if sameProtectedKey(private, dk.privateKey) && bytes.Equal(public, dk.publicKey) {
				r.keysPresent++
			} else {
				r.problems = append(r.problems, fmt.Sprintf("key %s: conflict: this store holds a different key under that fingerprint; not overwritten", k))
			}
			continue
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("key %s: %w", k, err)
		}
		k.created = dk.createdAt.UTC().Format(timeFormat)
		k.updated = k.created
		if dk.updatedAt.Valid {
			k.updated = dk.updatedAt.Time.UTC().Format(timeFormat)
		}
		k.Description = descriptions[k.String()]
		if err := insertKey(tx, ak, k); err != nil {
			return nil, err
		}
		data := map[string]any{"description": k.Description, importMarkField: map[string]any{"key_id": dk.id}}
		if err := s.appendAudit(tx, AuditEntry{Event: "register", Purpose: k.Purpose, Fingerprint: k.Fingerprint, Data: data}); err != nil {
			return nil, fmt.Errorf("key %s: %w", k, err)
		}
		r.keysImported++
	}
	if dryRun || len(r.problems) > 0 {
		return r, nil
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	return r, nil
}

// importedMarks returns the marks of the audit rows already imported.
func importedMarks(tx *sql.Tx) (map[importMark]bool, error) {
	rows, err := tx.Query("SELECT data FROM audit_log")
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	defer rows.Close()
	seen := map[importMark]bool{}
	for rows.Next() {
		var data string
		if err := rows.Scan(&data); err != nil {
			return nil, fmt.Errorf("audit log: %w", err)
		}
		if !strings.Contains(data, importMarkField) {
			continue
		}
		var d struct {
			Mark *importMark `json:"debusine_import"`
		}
		if json.Unmarshal([]byte(data), &d) == nil && d.Mark != nil && d.Mark.CreatedAt != "" {
			seen[*d.Mark] = true
		}
	}
	return seen, rows.Err()
}

// sameProtectedKey compares two private_key JSON texts by meaning:
// PostgreSQL's jsonb gives back its own spacing and member order.
func sameProtectedKey(a, b string) bool {
	pa, errA := parseProtectedKey([]byte(a))
	pb, errB := parseProtectedKey([]byte(b))
	return errA == nil && errB == nil && pa.Storage == pb.Storage && pa.PKCS11URI == pb.PKCS11URI &&
		bytes.Equal(pa.PublicKey, pb.PublicKey) && bytes.Equal(pa.Encrypted, pb.Encrypted)
}

// cmdImportDebusineDB is `debusine-signing import-debusine-db [--dry-run]
// [--password-file F] CONNINFO`.
func cmdImportDebusineDB(e *env, args []string) error {
	fs := flag.NewFlagSet("import-debusine-db", flag.ContinueOnError)
	dryRun := fs.Bool("dry-run", false, "report what would be imported, change nothing")
	passwordFile := fs.String("password-file", "", "`file` holding the password of Debusine's database")
	if err := parseFlags(fs, e, args); err != nil {
		return err
	}
	// Flags may also follow CONNINFO.
	if fs.NArg() > 1 {
		conninfo := fs.Arg(0)
		if err := parseFlags(fs, e, fs.Args()[1:]); err != nil {
			return err
		}
		if fs.NArg() != 0 {
			return usagef("import-debusine-db takes one CONNINFO")
		}
		args = []string{conninfo}
	} else {
		args = fs.Args()
	}
	if len(args) != 1 {
		return usagef("usage: import-debusine-db [--dry-run] [--password-file FILE] CONNINFO")
	}
	if !isPostgres(args[0]) {
		return usagef("import-debusine-db: %q is not a PostgreSQL connection string (postgresql://... or key=value conninfo)", args[0])
	}
	src, err := connectPostgres(args[0], *passwordFile, false)
	if err != nil {
		return fmt.Errorf("reading Debusine's database %s: %w", databaseName(args[0]), err)
	}
	defer src.Close()
	keys, audit, err := readDebusineDB(src)
	if err != nil {
		return fmt.Errorf("reading Debusine's database %s: %w", databaseName(args[0]), err)
	}
	st, err := e.openStore()
	if err != nil {
		return err
	}
	r, err := st.importDebusine(keys, audit, *dryRun)
	if err != nil {
		return err
	}
	for _, p := range r.problems {
		fmt.Fprintf(e.stderr, "debusine-signing: %s\n", p)
	}
	verb := "imported"
	if *dryRun || len(r.problems) > 0 {
		verb = "would import"
	}
	fmt.Fprintf(e.stdout, "keys: %d read, %s %d, %d already present\naudit rows: %d read, %s %d, %d already imported\n",
		len(keys), verb, r.keysImported, r.keysPresent, len(audit), verb, r.auditImported, r.auditSeen)
	if len(r.problems) > 0 {
		return fmt.Errorf("%d key(s) or audit row(s) refused (listed above); nothing was imported", len(r.problems))
	}
	return nil
}
