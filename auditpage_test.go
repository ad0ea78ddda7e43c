package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pageTestRows adds sign rows of two keys and three users, one of whom
// has a name that is HTML, to s's store.
func pageTestRows(t *testing.T, s *serveTest) {
	t.Helper()
	wr := int64(4242)
	for i, u := range []struct {
		key, user string
		id        int64
	}{{"AAAA1111", "alice", 7}, {"BBBB2222", "bob", 8}, {"AAAA1111", "alice", 7}, {"BBBB2222", `<script>alert("x")</script>`, 9}} {
		err := s.st.Audit(AuditEntry{Event: "sign", Purpose: purposeUEFI, Fingerprint: u.key, WorkRequest: &wr,
			Data: map[string]any{"data_sha256": strings.Repeat(string(rune('a'+i)), 64), "username": u.user, "user_id": u.id}})
		if err != nil {
			t.Fatal(err)
		}
	}
	s.te.mustRun(t, "audit", "checkpoint", "--output", s.cpf)
}

// TestAuditPageBothEngines: the page lists the rows, filtered by key,
// purpose, work request and user, escapes what the rows hold, plots
// signatures per day and key, and says whether the log verifies, on both
// engines.
func TestAuditPageBothEngines(t *testing.T) {
	engines(t, testAuditPage)
}

func testAuditPage(t *testing.T, te *testEnv) {
	s := newServeTest(t, te, 2, "")
	pageTestRows(t, s)
	page := func(query string) string {
		t.Helper()
		status, _, body := get(t, s.trusted, query, "")
		if status != 200 {
			t.Fatalf("page %q: %d", query, status)
		}
		return string(body)
	}
	all := page("")
	for _, want := range []string{"The log verifies", "checkpoint of 6 rows", `<svg id="plot"`, `class="bar"`, "uefi:AAAA1111", "uefi:BBBB2222",
		`href="receipt/6"`, "&lt;script&gt;", ">alice<", ">bob<"} {
		if !strings.Contains(all, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(all, "<script>") || strings.Contains(all, ">NO<") {
		t.Errorf("page holds a script, or a row not in the tree:\n%s", all)
	}
	if n := strings.Count(all, "<tr>\n<td>"); n != 6 {
		t.Errorf("%d rows listed, want 6", n)
	}
	for query, rows := range map[string]int{"?user=alice": 2, "?user=bob": 1, "?key=aaaa1111": 2, "?work_request=4242": 4,
		"?work_request=100": 1, "?purpose=openpgp": 0, "?work_request=x": 0, "?key=BBBB2222&user=bob": 1} {
		body := page(query)
		if n := strings.Count(body, "<tr>\n<td>"); n != rows {
			t.Errorf("%s: %d rows, want %d", query, n, rows)
		}
	}
	if body := page("?user=bob"); strings.Count(body, `class="bar"`) != 1 {
		t.Errorf("plot for bob: %d bars", strings.Count(body, `class="bar"`))
	}
	// A checkpoint that does not match the database shows.
	os.WriteFile(s.cpf, []byte("garbage"), 0o600)
	if body := page(""); !strings.Contains(body, "The log does not verify") {
		t.Error("a bad checkpoint file passes")
	}
}

// TestAuditPageChromium loads the page in headless Chromium: the rows and
// the plot are in the DOM it built, and a screenshot is taken.
func TestAuditPageChromium(t *testing.T) {
	requireTool(t, "chromium")
	s := newServeTest(t, newTestEnv(t), 2, "")
	pageTestRows(t, s)
	chromium := func(args ...string) []byte {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "chromium", append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
			"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
			"--user-data-dir=" + t.TempDir(), "--window-size=1280,900"}, args...)...)
		cmd.Dir = t.TempDir()
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("chromium %v: %v", args, err)
		}
		return out
	}
	dom := string(chromium("--dump-dom", s.trusted.URL+"/"))
	for _, want := range []string{`id="verdict"`, "The log verifies", `<svg id="plot"`, `<rect class="bar"`, "uefi:AAAA1111",
		`<td>6</td>`, `<td>1</td>`, "&lt;script&gt;alert"} {
		if !strings.Contains(dom, want) {
			t.Errorf("Chromium's DOM lacks %q", want)
		}
	}
	if strings.Contains(dom, `<script>alert`) {
		t.Error("a user name became a script")
	}
	png := filepath.Join(t.TempDir(), "page.png")
	chromium("--screenshot="+png, s.trusted.URL+"/")
	if data, err := os.ReadFile(png); err != nil || len(data) < 10000 || string(data[1:4]) != "PNG" {
		t.Errorf("screenshot: %d bytes, %v", len(data), err)
	}
}
