package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/tlog"
)

// serveTest is a store with rows, its checkpoint file and `audit serve`
// on two loopback servers: public (TCP: the token opens the rows) and
// trusted (as the Unix socket: everything).
type serveTest struct {
	te               *testEnv
	st               *Store
	srv              *auditServer
	public, trusted  *httptest.Server
	vkey, token, cpf string
}

const serveTestToken = "0123456789abcdef0123456789abcdef"

// newServeTest appends rows to te's store, writes a checkpoint and
// configures [audit_serve] (with extra configuration lines), then starts
// the servers on the store opened read-only.
func newServeTest(t testing.TB, te *testEnv, rows int, extra string) *serveTest {
	t.Helper()
	s := &serveTest{te: te, st: te.store(t), token: serveTestToken}
	appendTestRows(t, s.st, rows)
	s.vkey = strings.TrimSpace(te.mustRun(t, "audit", "key"))
	s.cpf = filepath.Join(te.dir, "checkpoint")
	writeFile(t, te.dir, "serve-token", []byte(s.token+"\n"))
	base, err := os.ReadFile(te.configPath)
	if err != nil {
		t.Fatal(err)
	}
	te.writeConfig(t, string(base)+extra+fmt.Sprintf("[audit_serve]\ntoken_file = \"serve-token\"\ncheckpoint_file = \"checkpoint\"\naudit_public_key = %q\n", s.vkey))
	te.mustRun(t, "audit", "checkpoint", "--output", s.cpf)
	ro, err := openStoreReadOnly(te.cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ro.Close() })
	if s.srv, err = newAuditServer(ro, te.cfg, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
	s.public = httptest.NewServer(s.srv.handler(false))
	s.trusted = httptest.NewServer(s.srv.handler(true))
	t.Cleanup(s.public.Close)
	t.Cleanup(s.trusted.Close)
	return s
}

// get fetches path from server with token ("" for none).
func get(t testing.TB, server *httptest.Server, path, token string) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, server.URL+"/"+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := server.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, body
}

// TestAuditServeBothEngines: the tiles of a 300-row log give the
// checkpoint's root through tlog.TileHashReader, and an inclusion proof
// from them verifies; entry bundles hold the rows' leaves; tiles outside
// the tree are 404; entry bundles and the page need the token (or the
// socket); the database is opened read-only.
func TestAuditServeBothEngines(t *testing.T) {
	engines(t, func(t *testing.T, te *testEnv) {
		s := newServeTest(t, te, 300, "")
		status, h, cpText := get(t, s.public, "checkpoint", "")
		if want, _ := os.ReadFile(s.cpf); status != 200 || !bytes.Equal(cpText, want) || h.Get("Cache-Control") != "no-cache" {
			t.Fatalf("checkpoint: %d %q %q", status, h.Get("Cache-Control"), cpText)
		}
		cp, err := OpenCheckpoint(cpText, s.vkey)
		if err != nil || cp.Size != 300 {
			t.Fatalf("served checkpoint: %+v %v", cp, err)
		}
		// The tiles, read and checked by tlog's own client, give the
		// checkpoint's root, and prove row 42 (leaf 41) is in it.
		c := &tileClient{ctx: context.Background(), base: s.public.URL + "/", hc: s.public.Client()}
		thr := tlog.TileHashReader(cp.Tree(), c)
		if root, err := tlog.TreeHash(cp.Size, thr); err != nil || root != cp.Root {
			t.Fatalf("root from the tiles %v %v, checkpoint %v", root, err, cp.Root)
		}
		rows := auditRows(t, s.st, AuditFilter{})
		proof, err := tlog.ProveRecord(cp.Size, 41, thr)
		if err != nil {
			t.Fatal(err)
		}
		if err := tlog.CheckRecord(proof, cp.Size, cp.Root, 41, tlog.RecordHash(rows[41].leafData())); err != nil {
			t.Errorf("inclusion proof from the tiles: %v", err)
		}

		for _, tc := range []struct {
			path   string
			status int
			size   int
			cache  string
		}{
			{"tile/0/000", 200, 256 * 32, "immutable"},
			{"tile/0/001.p/44", 200, 44 * 32, "no-cache"},
			{"tile/0/001.p/10", 200, 10 * 32, "no-cache"},
			{"tile/1/000.p/1", 200, 32, "no-cache"},
			// Outside the tree of 300 rows.
			{"tile/0/001.p/45", 404, -1, ""},
			{"tile/0/001", 404, -1, ""},
			{"tile/0/x001/000", 404, -1, ""},
			{"tile/1/000.p/2", 404, -1, ""},
			{"tile/1/000", 404, -1, ""},
			{"tile/2/000.p/1", 404, -1, ""},
			// Not tile paths.
			{"tile/8/0/000", 404, -1, ""},
			{"tile/data/000", 404, -1, ""},
			{"tile/0/0", 404, -1, ""},
			{"tile/0/000.p/256", 404, -1, ""},
			{"tile/-1/000", 404, -1, ""},
			{"tile/0/000.p/0", 404, -1, ""},
			{"checkpoint/x", 404, -1, ""},
		} {
			status, h, body := get(t, s.public, tc.path, "")
			if status != tc.status || (tc.size >= 0 && len(body) != tc.size) || !strings.Contains(h.Get("Cache-Control"), tc.cache) {
				t.Errorf("%s: %d, %d bytes, Cache-Control %q; want %d, %d bytes, %q", tc.path, status, len(body), h.Get("Cache-Control"), tc.status, tc.size, tc.cache)
			}
		}

		// Entry bundles: the rows' leaves, each after its 2-byte length.
		for _, path := range []string{"tile/entries/000", "tile/entries/001.p/44", ""} {
			for _, token := range []string{"", "wrong" + serveTestToken[5:], serveTestToken[:31]} {
				if status, h, _ := get(t, s.public, path, token); status != http.StatusUnauthorized || h.Get("WWW-Authenticate") == "" {
					t.Errorf("%q with token %q: %d, want 401", path, token, status)
				}
			}
		}
		status, h, bundle := get(t, s.public, "tile/entries/001.p/44", s.token)
		if status != 200 || h.Get("Cache-Control") != "no-cache" {
			t.Fatalf("entry bundle with the token: %d", status)
		}
		entries, err := parseEntryBundle(bundle, 44)
		if err != nil {
			t.Fatal(err)
		}
		for k, leaf := range entries {
			r, err := parseLeafData(leaf)
			if err != nil || r.ID != int64(257+k) || !bytes.Equal(leaf, rows[256+k].leafData()) {
				t.Fatalf("entry %d: row %d %v", k, r.ID, err)
			}
		}
		if status, _, full := get(t, s.trusted, "tile/entries/000", ""); status != 200 || bytes.Count(full, []byte(`"data_sha256"`)) != 256 {
			t.Errorf("entry bundle on the socket: %d", status)
		}
		for _, path := range []string{"tile/entries/001.p/45", "tile/entries/001", "tile/entries/002.p/1"} {
			if status, _, _ := get(t, s.trusted, path, ""); status != 404 {
				t.Errorf("%s: %d, want 404", path, status)
			}
		}
		if status, _, page := get(t, s.public, "", s.token); status != 200 || !strings.Contains(string(page), "The log verifies") {
			t.Errorf("page with the token: %d\n%s", status, page)
		}
		// Receipts of covered rows, as audit verify-receipt checks them.
		status, _, rc := get(t, s.public, "receipt/42", s.token)
		if status != 200 {
			t.Fatalf("receipt/42: %d %s", status, rc)
		}
		if out := te.mustRun(t, "audit", "verify-receipt", "--key", s.vkey, writeFile(t, t.TempDir(), "receipt", rc)); !strings.Contains(out, "row 42 is in the audit log") {
			t.Errorf("verify-receipt: %s", out)
		}
		for path, want := range map[string]int{"receipt/42": 401, "receipt/301": 404, "receipt/0": 404, "receipt/042": 404, "receipt/x": 404} {
			token := s.token
			if want == 401 {
				token = ""
			}
			if status, _, body := get(t, s.public, path, token); status != want {
				t.Errorf("%s: %d %s, want %d", path, status, body, want)
			}
		}
		resp, err := s.public.Client().Post(s.public.URL+"/checkpoint", "text/plain", strings.NewReader("x"))
		if err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST: %v %v", resp.Status, err)
		}

		// Read-only: the server's connection cannot write.
		if _, err := s.srv.st.db.Exec("CREATE TABLE intruder (x INTEGER)"); err == nil || !strings.Contains(strings.ToLower(err.Error()), "read") {
			t.Errorf("the server's connection wrote: %v", err)
		}
	})
}

// TestAuditServePrefix: under a prefix, the log is there and nowhere else.
func TestAuditServePrefix(t *testing.T) {
	s := newServeTest(t, newTestEnv(t), 3, "")
	s.te.cfg.AuditServe.Prefix = "/log/"
	srv, err := newAuditServer(s.srv.st, s.te.cfg, s.srv.log)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.handler(false))
	defer ts.Close()
	if status, _, _ := get(t, ts, "log/checkpoint", ""); status != 200 {
		t.Errorf("log/checkpoint: %d", status)
	}
	if status, _, _ := get(t, ts, "checkpoint", ""); status != 404 {
		t.Errorf("checkpoint outside the prefix: %d", status)
	}
	os.Remove(s.cpf)
	if status, _, body := get(t, ts, "log/checkpoint", ""); status != http.StatusServiceUnavailable {
		t.Errorf("no checkpoint file: %d %s", status, body)
	}
	s.te.cfg.AuditServe.Prefix = "log"
	if _, err := newAuditServer(s.srv.st, s.te.cfg, s.srv.log); err == nil {
		t.Error("prefix without slashes accepted")
	}
}

// BenchmarkServeTile measures audit serve answering tile requests over
// loopback HTTP, in parallel, client included: full tiles and the partial
// tiles at the tree's edge, answered from memory once read, and (database)
// partial tiles read from the database every time, on a SQLite store of
// 1,100 rows. bench/serve-tiles.sh measures the server alone with wrk.
func BenchmarkServeTile(b *testing.B) {
	s := newServeTest(b, newTestEnv(b), 1100, "")
	for _, bc := range []struct {
		name  string
		paths []string
	}{
		{"full", []string{"tile/0/000", "tile/0/001", "tile/0/002", "tile/0/003"}},
		{"partial", []string{"tile/0/004.p/76", "tile/1/000.p/4"}},
		{"database", nil},
	} {
		b.Run(bc.name, func(b *testing.B) {
			tr := &http.Transport{MaxIdleConnsPerHost: 64}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr}
			var n atomic.Int64
			b.SetParallelism(4)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					var path string
					if i := n.Add(1); bc.paths != nil {
						path = bc.paths[i%int64(len(bc.paths))]
					} else {
						s.srv.mu.Lock()
						clear(s.srv.tiles)
						s.srv.mu.Unlock()
						path = fmt.Sprintf("tile/0/%03d.p/%d", i%4, 1+i%255)
					}
					resp, err := client.Get(s.public.URL + "/" + path)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Errorf("%s: %s", path, resp.Status)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "requests/s")
		})
	}
}

// unitDirectives reads a systemd unit's Key=Value lines, repeated keys
// joined by newlines.
func unitDirectives(t *testing.T, path string) map[string]string {
	t.Helper()
	d := map[string]string{}
	for _, line := range strings.Split(string(mustRead(t, path)), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			if d[k] != "" {
				v = d[k] + "\n" + v
			}
			d[k] = v
		}
	}
	return d
}

// TestAuditServeUnit: debusine-signing-audit.service is hardened as the
// worker's unit is, runs audit serve with the database read-only, and
// systemd-analyze verify accepts it.
func TestAuditServeUnit(t *testing.T) {
	worker := unitDirectives(t, "debusine-signing.service")
	audit := unitDirectives(t, "debusine-signing-audit.service")
	for k, v := range worker {
		switch k {
		// The worker's alone: it waits for its service key, which the
		// audit server never reads, and checks its set-up first.
		case "Description", "After", "ExecStart", "TimeoutStopSec", "LoadCredential", "StateDirectory", "StateDirectoryMode",
			"ConditionPathExists", "ExecStartPre":
			continue
		}
		if audit[k] != v {
			t.Errorf("%s=%q in the worker's unit, %q in the audit server's", k, v, audit[k])
		}
	}
	if !strings.HasSuffix(audit["ExecStart"], " audit serve") || audit["ReadOnlyPaths"] != "/var/lib/debusine-signing" || audit["LoadCredential"] != "" {
		t.Errorf("ExecStart %q, ReadOnlyPaths %q, LoadCredential %q", audit["ExecStart"], audit["ReadOnlyPaths"], audit["LoadCredential"])
	}
	requireTool(t, "systemd-analyze")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	unit := writeFile(t, t.TempDir(), "debusine-signing-audit.service",
		[]byte(strings.ReplaceAll(string(mustRead(t, "debusine-signing-audit.service")), "/usr/bin/debusine-signing", self)))
	if out, err := exec.Command("systemd-analyze", "verify", "--man=no", unit).CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// FuzzParseServedTilePath: any path either parses to a tile whose path is
// the input, or is refused.
func FuzzParseServedTilePath(f *testing.F) {
	for _, p := range []string{"tile/0/000", "tile/1/x001/234.p/5", "tile/entries/000.p/1", "tile/data/000", "tile/8/0/000", "tile/0/000.p/0", "tile//"} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, path string) {
		tile, err := parseServedTilePath(path)
		if err != nil {
			return
		}
		again := "tile/" + strings.TrimPrefix(tile.Path(), "tile/8/")
		if tile.L < 0 {
			again = "tile/entries/" + strings.TrimPrefix(tile.Path(), "tile/8/data/")
		}
		if again != path || tile.H != 8 || tile.W < 1 || tile.W > 256 || tile.N < 0 {
			t.Errorf("%q parsed as %+v (%q)", path, tile, again)
		}
	})
}

// TestAuditServeProcess runs `audit serve` as a process (this test binary,
// re-executed) with a Unix socket and a TCP address: through the socket
// the rows need no token, over TCP they do; SIGTERM stops it with status
// 0 and removes the socket.
func TestAuditServeProcess(t *testing.T) {
	s := newServeTest(t, newTestEnv(t), 3, "")
	sock := filepath.Join(s.te.dir, "audit.sock")
	base, _ := os.ReadFile(s.te.configPath)
	s.te.writeConfig(t, strings.Replace(string(base), "[audit_serve]\n", fmt.Sprintf("[audit_serve]\nsocket = %q\nlisten = \"127.0.0.1:0\"\n", sock), 1))
	cmd := exec.Command(os.Args[0], "-test.run=^TestAuditServeProcessHelper$")
	cmd.Env = append(os.Environ(), "DEBUSINE_SIGNING_SERVE_HELPER=--config="+s.te.configPath)
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	var resp *http.Response
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var err error
		if resp, err = client.Get("http://socket/tile/entries/000.p/3"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit serve did not start: %v\n%s", err, logs.String())
		}
	}
	bundle, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || bytes.Count(bundle, []byte(`"data_sha256"`)) != 3 {
		t.Errorf("entry bundle on the socket: %s %q", resp.Status, bundle)
	}
	addr := regexp.MustCompile(`address=(127\.0\.0\.1:\d+)`).FindStringSubmatch(logs.String())
	if addr == nil {
		t.Fatalf("no TCP address in the log:\n%s", logs.String())
	}
	if resp, err := http.Get("http://" + addr[1] + "/tile/entries/000.p/3"); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("entry bundle over TCP without the token: %v %v", resp.Status, err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("after SIGTERM: %v\n%s", err, logs.String())
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the socket is left behind: %v", err)
	}
}

func TestAuditServeProcessHelper(t *testing.T) {
	arg := os.Getenv("DEBUSINE_SIGNING_SERVE_HELPER")
	if arg == "" {
		return // only run as TestAuditServeProcess's subprocess
	}
	os.Exit(run([]string{arg, "audit", "serve"}, os.Stdout, os.Stderr))
}

// FuzzParseEntryBundle: a bundle parses into entries that encode back to
// exactly it, or is refused.
func FuzzParseEntryBundle(f *testing.F) {
	f.Add([]byte("\x00\x01a\x00\x00"), 2)
	f.Add([]byte("\x00\x05abc"), 1)
	f.Add([]byte{}, 1)
	f.Fuzz(func(t *testing.T, bundle []byte, w int) {
		if w < 1 || w > 256 {
			return
		}
		entries, err := parseEntryBundle(bundle, w)
		if err != nil {
			return
		}
		var again []byte
		for _, e := range entries {
			again = binary.BigEndian.AppendUint16(again, uint16(len(e)))
			again = append(again, e...)
		}
		if len(entries) != w || !bytes.Equal(again, bundle) {
			t.Errorf("%q (%d) parsed as %q", bundle, w, entries)
		}
	})
}
