package main

// The audit log is also an RFC 6962 Merkle tree, as the Go checksum
// database, Certificate Transparency and Sigsum keep theirs: row N is leaf
// N-1, whose hash is tlog.RecordHash of the row's leaf data (leafData). The
// tree's stored hashes (golang.org/x/mod/sumdb/tlog's layout: each leaf
// hash, then the interior hashes it completes) are kept in audit_tree and
// appended in the same transaction as their row, so that inclusion and
// consistency proofs take O(log n) reads, and anybody holding only a
// checkpoint (checkpoint.go) can check them. docs/transparency.md
// describes the leaf format for verifiers written in other languages.

import (
	"bytes"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/tlog"
)

// leafData is the canonical encoding of a row: its fields in a fixed
// order, each preceded by its length as a uvarint, so that no two rows
// encode alike. It is what the row's hash commits to (hash = SHA-256 of
// it, which the row's authentication code covers), and its leaf in the
// tree is tlog.RecordHash of it (SHA-256 of 0x00 || it). The fields: id,
// event, purpose, fingerprint, data (the JSON text as stored: for a sign
// row it names the signed data's SHA-256, and the user), created_at, the
// work request ("" for none), prev_hash, and program_version, absent for
// rows written before rows recorded it (schema version 1).
func (r *AuditRow) leafData() []byte {
	wr := ""
	if r.WorkRequest != nil {
		wr = strconv.FormatInt(*r.WorkRequest, 10)
	}
	fields := []string{strconv.FormatInt(r.ID, 10), r.Event, r.Purpose, r.Fingerprint, string(r.Data), r.CreatedAt, wr, r.PrevHash}
	if r.ProgramVersion != "" {
		fields = append(fields, r.ProgramVersion)
	}
	n := 0
	for _, f := range fields {
		n += binary.MaxVarintLen64 + len(f)
	}
	b := make([]byte, 0, n)
	for _, f := range fields {
		b = binary.AppendUvarint(b, uint64(len(f)))
		b = append(b, f...)
	}
	return b
}

// maxLeafSize bounds a leaf a verifier accepts: far above any row (a
// row's data is a few hundred bytes), far below what could hurt.
const maxLeafSize = 1 << 20

// parseLeafData decodes leaf data (leafData) back into the row it encodes,
// with Hash recomputed; MAC is not part of a leaf. It refuses anything
// leafData would not have written, so that one row has one leaf.
func parseLeafData(b []byte) (AuditRow, error) {
	var r AuditRow
	if len(b) > maxLeafSize {
		return r, errors.New("leaf: too large")
	}
	var fields []string
	for rest := b; len(rest) > 0; {
		n, k := binary.Uvarint(rest)
		if k <= 0 || n > uint64(len(rest)-k) {
			return r, errors.New("leaf: truncated field")
		}
		if !bytes.Equal(binary.AppendUvarint(nil, n), rest[:k]) {
			return r, errors.New("leaf: non-minimal field length")
		}
		fields = append(fields, string(rest[k:k+int(n)]))
		rest = rest[k+int(n):]
	}
	if len(fields) != 8 && len(fields) != 9 {
		return r, fmt.Errorf("leaf: %d fields, want 8 or 9", len(fields))
	}
	id, err := strconv.ParseInt(fields[0], 10, 64)
	if err != nil || id < 1 || strconv.FormatInt(id, 10) != fields[0] {
		return r, fmt.Errorf("leaf: bad row id %q", fields[0])
	}
	r.ID, r.Event, r.Purpose, r.Fingerprint = id, fields[1], fields[2], fields[3]
	r.Data, r.CreatedAt, r.PrevHash = []byte(fields[4]), fields[5], fields[7]
	if fields[6] != "" {
		wr, err := strconv.ParseInt(fields[6], 10, 64)
		if err != nil || strconv.FormatInt(wr, 10) != fields[6] {
			return r, fmt.Errorf("leaf: bad work request %q", fields[6])
		}
		r.WorkRequest = &wr
	}
	if len(fields) == 9 {
		if fields[8] == "" {
			return r, errors.New("leaf: empty program version")
		}
		r.ProgramVersion = fields[8]
	}
	r.Hash = r.computeHash()
	return r, nil
}

// treeHashReader reads the tree's stored hashes from audit_tree through q
// (the database or a transaction).
func treeHashReader(q querier) tlog.HashReader {
	return tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		if len(indexes) == 0 {
			return nil, nil
		}
		var sb strings.Builder
		sb.WriteString("SELECT idx, hash FROM audit_tree WHERE idx IN (")
		args := make([]any, len(indexes))
		for i, idx := range indexes {
			if i > 0 {
				sb.WriteString(", ")
			}
			fmt.Fprintf(&sb, "$%d", i+1)
			args[i] = idx
		}
		sb.WriteString(")")
		rows, err := q.Query(sb.String(), args...)
		if err != nil {
			return nil, fmt.Errorf("audit tree: %w", sqliteError(err))
		}
		defer rows.Close()
		found := make(map[int64]tlog.Hash, len(indexes))
		for rows.Next() {
			var idx int64
			var h []byte
			if err := rows.Scan(&idx, &h); err != nil {
				return nil, fmt.Errorf("audit tree: %w", err)
			}
			if len(h) != tlog.HashSize {
				return nil, fmt.Errorf("audit tree: stored hash %d is %d bytes", idx, len(h))
			}
			found[idx] = tlog.Hash(h)
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("audit tree: %w", err)
		}
		out := make([]tlog.Hash, len(indexes))
		for i, idx := range indexes {
			h, ok := found[idx]
			if !ok {
				return nil, fmt.Errorf("audit tree: stored hash %d is missing (run audit verify)", idx)
			}
			out[i] = h
		}
		return out, nil
	})
}

// appendTree stores the tree hashes that row r (the next row, just
// inserted in tx) adds.
func appendTree(tx *sql.Tx, r *AuditRow) error {
	n := r.ID - 1
	hashes, err := tlog.StoredHashesForRecordHash(n, tlog.RecordHash(r.leafData()), treeHashReader(tx))
	if err != nil {
		return err
	}
	return insertTreeHashes(tx, tlog.StoredHashIndex(0, n), hashes)
}

// insertTreeHashes inserts hashes at consecutive indexes from first, in
// one statement per few hundred.
func insertTreeHashes(tx *sql.Tx, first int64, hashes []tlog.Hash) error {
	const batch = 200
	for len(hashes) > 0 {
		k := min(len(hashes), batch)
		var sb strings.Builder
		sb.WriteString("INSERT INTO audit_tree (idx, hash) VALUES ")
		args := make([]any, 0, 2*k)
		for i, h := range hashes[:k] {
			if i > 0 {
				sb.WriteString(", ")
			}
			fmt.Fprintf(&sb, "($%d, $%d)", 2*i+1, 2*i+2)
			args = append(args, first+int64(i), h[:])
		}
		if _, err := tx.Exec(sb.String(), args...); err != nil {
			return fmt.Errorf("audit tree: %w", err)
		}
		first += int64(k)
		hashes = hashes[k:]
	}
	return nil
}

// treeHead returns the tree of the whole log as q sees it: its size is the
// number of rows.
func (s *Store) treeHead(q querier) (tlog.Tree, error) {
	var size int64
	if err := q.QueryRow("SELECT coalesce(max(id), 0) FROM audit_log").Scan(&size); err != nil {
		return tlog.Tree{}, fmt.Errorf("audit log: %w", sqliteError(err))
	}
	h, err := tlog.TreeHash(size, treeHashReader(q))
	if err != nil {
		return tlog.Tree{}, err
	}
	return tlog.Tree{N: size, Hash: h}, nil
}

// memoryTree is a tree's stored hashes in memory, built from rows.
type memoryTree []tlog.Hash

func (m *memoryTree) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, idx := range indexes {
		if idx < 0 || idx >= int64(len(*m)) {
			return nil, fmt.Errorf("stored hash %d is not in the tree", idx)
		}
		out[i] = (*m)[idx]
	}
	return out, nil
}

// add appends the stored hashes of the next row.
func (m *memoryTree) add(r *AuditRow) error {
	hashes, err := tlog.StoredHashesForRecordHash(r.ID-1, tlog.RecordHash(r.leafData()), m)
	if err != nil {
		return err
	}
	*m = append(*m, hashes...)
	return nil
}

// verifyTree recomputes the tree from rows (the whole log as read, whose
// chain verified) and compares it with audit_tree, hash by hash: a stored
// hash rewritten, missing or added is named with the row it belongs to.
// Rows appended since rows were read are checked next time.
func verifyTree(q querier, rows []AuditRow) (tlog.Hash, error) {
	var want memoryTree
	for i := range rows {
		if err := want.add(&rows[i]); err != nil {
			return tlog.Hash{}, err
		}
	}
	// The row whose stored hashes include idx: the last n with
	// StoredHashIndex(0, n) <= idx.
	rowOf := func(idx int64) int64 {
		lo, hi := int64(0), int64(len(rows))
		for lo+1 < hi {
			mid := (lo + hi) / 2
			if tlog.StoredHashIndex(0, mid) <= idx {
				lo = mid
			} else {
				hi = mid
			}
		}
		return lo + 1
	}
	dbRows, err := q.Query("SELECT idx, hash FROM audit_tree WHERE idx < $1 ORDER BY idx", len(want))
	if err != nil {
		return tlog.Hash{}, fmt.Errorf("audit tree: %w", sqliteError(err))
	}
	defer dbRows.Close()
	var next int64
	for dbRows.Next() {
		var idx int64
		var h []byte
		if err := dbRows.Scan(&idx, &h); err != nil {
			return tlog.Hash{}, fmt.Errorf("audit tree: %w", err)
		}
		if idx != next {
			return tlog.Hash{}, fmt.Errorf("audit tree broken at row %d: stored hash %d is missing", rowOf(next), next)
		}
		if !bytes.Equal(h, want[idx][:]) {
			return tlog.Hash{}, fmt.Errorf("audit tree broken at row %d: stored hash %d does not match the rows (hash rewritten)", rowOf(idx), idx)
		}
		next++
	}
	if err := dbRows.Err(); err != nil {
		return tlog.Hash{}, fmt.Errorf("audit tree: %w", err)
	}
	if next != int64(len(want)) {
		return tlog.Hash{}, fmt.Errorf("audit tree broken at row %d: stored hash %d is missing", rowOf(next), next)
	}
	// One statement sees one state of both tables: the tree must hold the
	// hashes of exactly the rows there are, not one more or less.
	var hashes, size int64
	if err := q.QueryRow("SELECT (SELECT count(*) FROM audit_tree), (SELECT coalesce(max(id), 0) FROM audit_log)").Scan(&hashes, &size); err != nil {
		return tlog.Hash{}, fmt.Errorf("audit tree: %w", sqliteError(err))
	}
	if hashes != tlog.StoredHashCount(size) {
		return tlog.Hash{}, fmt.Errorf("audit tree broken: it holds %d stored hashes, %d rows need %d (hashes added or removed)", hashes, size, tlog.StoredHashCount(size))
	}
	return tlog.TreeHash(int64(len(rows)), &want)
}

// buildAuditTreeV5 is the data step of schema version 5: the tree hashes
// of the rows written before it, computed from the rows once their chain
// verifies. The rows, their chain and authentication codes are unchanged.
func (s *Store) buildAuditTreeV5(tx *sql.Tx) error {
	rows, err := queryAuditRows(tx, AuditFilter{})
	if err != nil {
		return err
	}
	if _, err := verifyChain(rows); err != nil {
		return fmt.Errorf("the existing audit log does not verify, so no tree is built over it: %w", err)
	}
	var tree memoryTree
	for i := range rows {
		if err := tree.add(&rows[i]); err != nil {
			return err
		}
	}
	return insertTreeHashes(tx, 0, tree)
}
