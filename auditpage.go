package main

// The page of `audit serve` for people: the newest rows, filtered by key,
// purpose, work request and user, a plot of signatures per day per key
// drawn here as inline SVG, and for each row whether it is in the tree and
// a link to its receipt. Whether the log verifies is checked on each load:
// the checkpoint's signature (with [audit_serve] audit_public_key), its
// cosignatures, and its root against the tree in the database. No script,
// no external asset: the page works in any browser, and with none.

import (
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/tlog"
)

// pageRows is how many rows the page lists; plotDays how many days it plots.
const (
	pageRows = 100
	plotDays = 30
)

// pageRow is one row as the page shows it.
type pageRow struct {
	AuditRow
	Created, User, DataSHA256 string
	InTree, Covered           bool // leaf hash as stored; under the checkpoint
}

// logStatus is what the page says of the log as a whole.
type logStatus struct {
	Origin     string // the checkpoint's
	Size       int64
	Rows       int64  // the database's
	Root       string // the checkpoint's, base64
	Signed     string // "verified" or the error
	Cosigned   []string
	Consistent string // the database's tree against the checkpoint: "" if it matches
	OK         bool
}

// pageFilter is the page's query.
type pageFilter struct {
	Key, Purpose, WorkRequest, User string
}

func (s *auditServer) servePage(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := pageFilter{Key: q.Get("key"), Purpose: q.Get("purpose"), WorkRequest: q.Get("work_request"), User: q.Get("user")}
	status := s.logStatus()
	rows, err := s.pageRows(f, status.Size)
	if err != nil {
		s.fail(w, "page", err)
		return
	}
	plot, err := s.plot(f)
	if err != nil {
		s.fail(w, "page", err)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'")
	if err := pageTemplate.Execute(w, map[string]any{"Filter": f, "Status": status, "Rows": rows, "Plot": plot, "Prefix": s.prefix}); err != nil {
		s.log.Error("page", "error", err)
	}
}

// serveReceipt answers receipt/ROW with the row's receipt (receipt.go)
// under the served checkpoint, cosignatures included: what `audit prove
// --checkpoint` writes, made without the audit key.
func (s *auditServer) serveReceipt(w http.ResponseWriter, row string) {
	id, err := strconv.ParseInt(row, 10, 64)
	if err != nil || id < 1 || strconv.FormatInt(id, 10) != row {
		http.Error(w, "receipt/ROW: ROW is a row number", http.StatusNotFound)
		return
	}
	r, err := scanAuditRow(s.st.db.QueryRow("SELECT "+auditColumns+" FROM audit_log WHERE id = $1", id))
	if errors.Is(err, sql.ErrNoRows) {
		http.Error(w, fmt.Sprintf("no row %d", id), http.StatusNotFound)
		return
	}
	if err != nil {
		s.fail(w, "receipt", err)
		return
	}
	if r.computeHash() != r.Hash {
		http.Error(w, fmt.Sprintf("row %d does not match its hash: the log does not verify", id), http.StatusConflict)
		return
	}
	cp, err := readInput(s.checkpointFile, "checkpoint", maxKeyFileSize)
	if err != nil {
		s.fail(w, "receipt", err)
		return
	}
	rc, err := s.st.proveRow(r, cp, s.verifiers, s.vkey)
	if err != nil {
		http.Error(w, fmt.Sprintf("no receipt of row %d: %v", id, err), http.StatusConflict)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=receipt-%d.json", id))
	w.Header().Set("Cache-Control", "no-cache")
	w.Write(rc)
}

// logStatus checks the served checkpoint: its signature, cosignatures,
// and that the database's tree at its size has its root.
func (s *auditServer) logStatus() logStatus {
	var st logStatus
	fail := func(format string, args ...any) logStatus {
		st.Consistent = fmt.Sprintf(format, args...)
		return st
	}
	if err := s.st.db.QueryRow("SELECT coalesce(max(id), 0) FROM audit_log").Scan(&st.Rows); err != nil {
		return fail("reading the database: %v", err)
	}
	msg, err := readInput(s.checkpointFile, "checkpoint", maxKeyFileSize)
	if err != nil {
		return fail("%v", err)
	}
	cp, _, err := parseCheckpoint(msg, s.verifiers)
	if err != nil {
		st.Signed = err.Error()
		return fail("the checkpoint file %s does not verify", s.checkpointFile)
	}
	st.Signed, st.Cosigned = "verified", cp.Cosigners
	if cp.Legacy {
		return fail("the checkpoint has no tree root (the first form): run audit checkpoint")
	}
	tree := cp.Tree()
	st.Origin, st.Size, st.Root = cp.Origin, tree.N, tree.Hash.String()
	if tree.N > st.Rows {
		return fail("the checkpoint covers %d rows, the database has %d: rows removed", tree.N, st.Rows)
	}
	if tree.N > 0 {
		root, err := tlog.TreeHash(tree.N, treeHashReader(s.st.db))
		if err != nil {
			return fail("the tree in the database: %v", err)
		}
		if root != tree.Hash {
			return fail("the database's tree at size %d has root %s, the checkpoint %s: the log was rewritten", tree.N, root, tree.Hash)
		}
	}
	st.OK = true
	return st
}

// filterSQL turns the page's filters into SQL conditions and arguments;
// the user, in the row's JSON data, is matched in Go (rowUser).
func (f pageFilter) filterSQL() (string, []any) {
	var where string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		where += fmt.Sprintf(" AND %s = $%d", cond, len(args))
	}
	if f.Key != "" {
		add("fingerprint", strings.ToUpper(f.Key))
	}
	if f.Purpose != "" {
		add("purpose", f.Purpose)
	}
	if n, err := strconv.ParseInt(f.WorkRequest, 10, 64); err == nil {
		add("created_by_work_request_id", n)
	} else if f.WorkRequest != "" {
		where += " AND false"
	}
	return where, args
}

// rowUser is the user a row names: the worker copies the server's
// permission check (username, user_id) into each signature's row.
func rowUser(data json.RawMessage) string {
	var d struct {
		Username string `json:"username"`
		UserID   *int64 `json:"user_id"`
	}
	json.Unmarshal(data, &d)
	if d.Username == "" && d.UserID != nil {
		return "#" + strconv.FormatInt(*d.UserID, 10)
	}
	return d.Username
}

// pageRows reads the newest rows matching f, newest first, and checks each
// one's leaf hash against the tree.
func (s *auditServer) pageRows(f pageFilter, covered int64) ([]pageRow, error) {
	where, args := f.filterSQL()
	// Without a user to match, the newest pageRows rows are all needed.
	limit := pageRows
	if f.User != "" {
		limit = 50 * pageRows
	}
	rows, err := s.st.db.Query(fmt.Sprintf("SELECT %s FROM audit_log WHERE 1 = 1%s ORDER BY id DESC LIMIT %d", auditColumns, where, limit), args...)
	if err != nil {
		return nil, sqliteError(err)
	}
	defer rows.Close()
	var out []pageRow
	for rows.Next() && len(out) < pageRows {
		r, err := scanAuditRow(rows)
		if err != nil {
			return nil, err
		}
		user := rowUser(r.Data)
		if f.User != "" && user != f.User {
			continue
		}
		var d struct {
			SHA256 string `json:"data_sha256"`
		}
		json.Unmarshal(r.Data, &d)
		created := r.CreatedAt
		if t, err := time.Parse(timeFormat, r.CreatedAt); err == nil {
			created = t.Format("2006-01-02 15:04:05Z")
		}
		out = append(out, pageRow{AuditRow: r, Created: created, User: user, DataSHA256: d.SHA256, Covered: r.ID <= covered})
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	hr := treeHashReader(s.st.db)
	for i := range out {
		h, err := hr.ReadHashes([]int64{tlog.StoredHashIndex(0, out[i].ID-1)})
		out[i].InTree = err == nil && len(h) == 1 && h[0] == tlog.RecordHash(out[i].leafData())
	}
	return out, nil
}

// plotData is the SVG plot of signatures per day per key.
type plotData struct {
	Width, Height, Top, Bottom, Left int
	Max                              int
	Bars                             []plotBar
	Days                             []plotLabel
	Ticks                            []plotLabel
	Legend                           []plotLabel
}

type plotBar struct {
	X, Y, W, H int
	Color      string
	Title      string
}

type plotLabel struct {
	X, Y  int
	Text  string
	Color string
}

// plotColors tell keys apart, also to the colour-blind (Okabe and Ito).
var plotColors = []string{"#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000"}

// plot counts the signatures of the plotDays days up to the newest one,
// per day and key, matching f, and lays them out as stacked bars.
func (s *auditServer) plot(f pageFilter) (*plotData, error) {
	where, args := f.filterSQL()
	var newest string
	if err := s.st.db.QueryRow("SELECT coalesce(max(created_at), '') FROM audit_log WHERE event = 'sign'"+where, args...).Scan(&newest); err != nil {
		return nil, sqliteError(err)
	}
	end := time.Now().UTC()
	if t, err := time.Parse(timeFormat, newest); err == nil {
		end = t
	}
	end = end.Truncate(24 * time.Hour)
	start := end.AddDate(0, 0, -(plotDays - 1))
	args = append(args, start.Format(timeFormat))
	rows, err := s.st.db.Query(fmt.Sprintf("SELECT created_at, fingerprint, purpose, data FROM audit_log WHERE event = 'sign'%s AND created_at >= $%d", where, len(args)), args...)
	if err != nil {
		return nil, sqliteError(err)
	}
	defer rows.Close()
	counts := map[int]map[string]int{} // day index, key
	var keys []string
	for rows.Next() {
		var created, fpr, purpose, data string
		if err := rows.Scan(&created, &fpr, &purpose, &data); err != nil {
			return nil, err
		}
		if f.User != "" && rowUser(json.RawMessage(data)) != f.User {
			continue
		}
		t, err := time.Parse(timeFormat, created)
		if err != nil {
			continue
		}
		day := int(t.Sub(start) / (24 * time.Hour))
		key := purpose + ":" + fpr
		if counts[day] == nil {
			counts[day] = map[string]int{}
		}
		if counts[day][key] == 0 && !slices.Contains(keys, key) {
			keys = append(keys, key)
		}
		counts[day][key]++
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	slices.Sort(keys)
	p := &plotData{Width: 760, Top: 10, Bottom: 190, Left: 40, Max: 1}
	p.Height = p.Bottom + 30 + 18*len(keys)
	for _, c := range counts {
		total := 0
		for _, n := range c {
			total += n
		}
		p.Max = max(p.Max, total)
	}
	step := (p.Width - p.Left - 10) / plotDays
	scale := func(n int) int { return n * (p.Bottom - p.Top) / p.Max }
	for day := range plotDays {
		x := p.Left + day*step
		y := p.Bottom
		for i, key := range keys {
			n := counts[day][key]
			if n == 0 {
				continue
			}
			h := max(scale(n), 1)
			y -= h
			p.Bars = append(p.Bars, plotBar{X: x + 1, Y: y, W: step - 2, H: h, Color: plotColors[i%len(plotColors)],
				Title: fmt.Sprintf("%s: %d signature(s) with %s", start.AddDate(0, 0, day).Format("2006-01-02"), n, key)})
		}
		if day%5 == 0 || day == plotDays-1 {
			p.Days = append(p.Days, plotLabel{X: x, Y: p.Bottom + 14, Text: start.AddDate(0, 0, day).Format("01-02")})
		}
	}
	for _, n := range []int{0, p.Max / 2, p.Max} {
		p.Ticks = append(p.Ticks, plotLabel{X: p.Left - 6, Y: p.Bottom - scale(n) + 4, Text: strconv.Itoa(n)})
	}
	for i, key := range keys {
		p.Legend = append(p.Legend, plotLabel{X: p.Left, Y: p.Bottom + 34 + 18*i, Text: key, Color: plotColors[i%len(plotColors)]})
	}
	return p, nil
}

var pageTemplate = template.Must(template.New("page").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>debusine-signing audit log</title>
<style>
body { font-family: sans-serif; margin: 1em auto; max-width: 80em; padding: 0 1em; color: #222; }
code, td.mono { font-family: monospace; font-size: 90%; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 0.2em 0.5em; border-bottom: 1px solid #ddd; vertical-align: top; }
.ok { color: #05702b; } .bad { color: #b00020; font-weight: bold; }
form label { margin-right: 1em; }
svg text { font-family: sans-serif; font-size: 11px; }
</style>
</head>
<body>
<h1>debusine-signing audit log</h1>
<section id="status">
{{with .Status}}
{{with .Origin}}<p>Log <code>{{.}}</code></p>{{end}}
<p class="{{if .OK}}ok{{else}}bad{{end}}" id="verdict">{{if .OK}}The log verifies{{else}}The log does not verify{{end}}:
checkpoint of {{.Size}} rows (the database has {{.Rows}}), root <code>{{.Root}}</code>;
signature {{.Signed}};
{{if .Consistent}}{{.Consistent}}{{else}}the tree in the database has the checkpoint's root{{end}}.</p>
<p>Cosigned by: {{range $i, $w := .Cosigned}}{{if $i}}, {{end}}<code>{{$w}}</code>{{else}}no witness{{end}}.</p>
{{end}}
</section>
<form method="get" action="{{.Prefix}}">
<label>Key <input name="key" value="{{.Filter.Key}}" size="20"></label>
<label>Purpose <input name="purpose" value="{{.Filter.Purpose}}" size="8"></label>
<label>Work request <input name="work_request" value="{{.Filter.WorkRequest}}" size="8"></label>
<label>User <input name="user" value="{{.Filter.User}}" size="12"></label>
<button type="submit">Filter</button> <a href="{{.Prefix}}">all</a>
</form>
<h2>Signatures per day and key</h2>
{{with .Plot}}
<svg id="plot" xmlns="http://www.w3.org/2000/svg" width="{{.Width}}" height="{{.Height}}" viewBox="0 0 {{.Width}} {{.Height}}" role="img" aria-label="signatures per day per key">
<line x1="{{.Left}}" y1="{{.Bottom}}" x2="{{.Width}}" y2="{{.Bottom}}" stroke="#888"/>
<line x1="{{.Left}}" y1="{{.Top}}" x2="{{.Left}}" y2="{{.Bottom}}" stroke="#888"/>
{{range .Ticks}}<text x="{{.X}}" y="{{.Y}}" text-anchor="end">{{.Text}}</text>
{{end}}{{range .Days}}<text x="{{.X}}" y="{{.Y}}">{{.Text}}</text>
{{end}}{{range .Bars}}<rect class="bar" x="{{.X}}" y="{{.Y}}" width="{{.W}}" height="{{.H}}" fill="{{.Color}}"><title>{{.Title}}</title></rect>
{{end}}{{range .Legend}}<rect x="{{.X}}" y="{{.Y}}" width="12" height="12" fill="{{.Color}}"/><text x="{{.X}}" y="{{.Y}}" dx="18" dy="10">{{.Text}}</text>
{{end}}</svg>
{{end}}
<h2>Newest rows</h2>
<table id="rows">
<thead><tr><th>Row</th><th>Time (UTC)</th><th>Event</th><th>Purpose</th><th>Key</th><th>Work request</th><th>User</th><th>Data SHA-256</th><th>In the tree</th><th>Receipt</th></tr></thead>
<tbody>
{{range .Rows}}<tr>
<td>{{.ID}}</td><td>{{.Created}}</td><td>{{.Event}}</td><td>{{.Purpose}}</td>
<td class="mono"><a href="?key={{.Fingerprint}}">{{printf "%.16s" .Fingerprint}}</a></td>
<td>{{with .WorkRequest}}<a href="?work_request={{.}}">{{.}}</a>{{end}}</td>
<td>{{with .User}}<a href="?user={{.}}">{{.}}</a>{{end}}</td>
<td class="mono">{{printf "%.16s" .DataSHA256}}</td>
<td>{{if .InTree}}<span class="ok">yes</span>{{else}}<span class="bad">NO</span>{{end}}</td>
<td>{{if .Covered}}<a href="receipt/{{.ID}}">receipt</a>{{else}}after the checkpoint{{end}}</td>
</tr>
{{else}}<tr><td colspan="10">No rows.</td></tr>
{{end}}</tbody>
</table>
</body>
</html>
`))
