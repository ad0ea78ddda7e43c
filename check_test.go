package main

import (
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// checkRig is a working set-up: a store with a key and audit rows, a
// worker whose server accepts its token, and a relay's keys.
type checkRig struct {
	te     *testEnv
	srv    *fakeServer
	base   string // the configuration without [worker] and [relay]
	fpr    string
	worker string // the [worker] table
	relay  string // the [relay] table
}

func newCheckRig(t *testing.T, te *testEnv) *checkRig {
	t.Helper()
	base, err := os.ReadFile(te.configPath)
	if err != nil {
		t.Fatal(err)
	}
	r := &checkRig{te: te, srv: newFakeServer(t), base: string(base)}
	r.fpr = strings.TrimSpace(te.mustRun(t, "generate-key", "--purpose", "openpgp", "--description", "Check <check@example.org>"))
	token := strings.Repeat("ab", 32)
	writeFile(t, te.dir, "token", []byte(token+"\n"))
	r.srv.addWorker(token, true)
	r.worker = fmt.Sprintf("[worker]\napi_url = %q\ntoken_file = \"token\"\nca_file = %q\n", r.srv.apiURL(), r.srv.caFile(te.dir))
	bundlePub, err := generateNoteKey(filepath.Join(te.dir, "bundle.key"), "relay.example.org")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := generateNoteKey(filepath.Join(te.dir, "result.key"), "offline.example.org"); err != nil {
		t.Fatal(err)
	}
	r.relay = fmt.Sprintf("[relay]\nstate_dir = \"relay\"\nbundle_public_key = %q\nresult_key_file = \"result.key\"\n", bundlePub)
	r.write(t)
	return r
}

func (r *checkRig) write(t *testing.T) {
	t.Helper()
	r.te.writeConfig(t, r.base+r.worker+r.relay)
}

// check runs check and returns its exit status and the lines it printed.
func (r *checkRig) check(t *testing.T, args ...string) (int, string) {
	t.Helper()
	status, stdout, stderr := r.te.run(t, append([]string{"check"}, args...)...)
	return status, stdout + stderr
}

func failLines(out string) []string {
	var fails []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "FAIL ") {
			fails = append(fails, l)
		}
	}
	return fails
}

// wantFail checks that check exits 3 and says want on a FAIL line.
func wantFail(t *testing.T, status int, out, want string) {
	t.Helper()
	if status != exitError {
		t.Errorf("exit %d, want %d:\n%s", status, exitError, out)
	}
	for _, l := range failLines(out) {
		if strings.Contains(l, want) {
			return
		}
	}
	t.Errorf("no FAIL line says %q:\n%s", want, out)
}

func TestCheckGood(t *testing.T) {
	engines(t, func(t *testing.T, te *testEnv) {
		r := newCheckRig(t, te)
		for _, args := range [][]string{nil, {"--full"}} {
			status, out := r.check(t, args...)
			if status != exitOK || len(failLines(out)) > 0 {
				t.Fatalf("check %v: exit %d:\n%s", args, status, out)
			}
			for _, want := range []string{
				"OK  configuration " + te.configPath,
				"OK  service key " + filepath.Join(te.dir, "service-key") + ": present, private",
				"reachable, schema and triggers as expected",
				"writable by this user",
				"OK  1 stored software key(s) unseal",
				"OK  token file " + filepath.Join(te.dir, "token") + ": present, private",
				": reachable over HTTPS, token accepted",
				"OK  [relay] result_key_file",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("check %v does not say %q:\n%s", args, want, out)
				}
			}
			if args == nil && !strings.Contains(out, "OK  audit log: newest 1 row(s) verified") ||
				args != nil && !strings.Contains(out, "OK  audit log: all 1 rows verified") {
				t.Errorf("check %v: audit log line:\n%s", args, out)
			}
		}
		// Nothing was taken or changed on the server.
		r.srv.mu.Lock()
		defer r.srv.mu.Unlock()
		for _, req := range r.srv.requests {
			if req != "GET /api/1.0/whoami/" {
				t.Errorf("check sent %s", req)
			}
		}
	})
}

// TestCheckChangesNothing: on a configuration whose database does not exist
// yet, check says so and creates nothing (the state directory stays empty).
func TestCheckChangesNothing(t *testing.T) {
	te := newTestEnv(t)
	state := filepath.Join(te.dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	te.writeConfig(t, "database = \"state/signing.sqlite3\"\nservice_keys = [\"service-key\"]\n")
	status, stdout, stderr := te.run(t, "check")
	if status != exitOK || !strings.Contains(stdout, "not created yet") {
		t.Fatalf("exit %d:\n%s%s", status, stdout, stderr)
	}
	if entries, _ := os.ReadDir(state); len(entries) != 0 {
		t.Errorf("check created %v", entries)
	}
}

func TestCheckServiceKeyMode(t *testing.T) {
	r := newCheckRig(t, newTestEnv(t))
	if err := os.Chmod(filepath.Join(r.te.dir, "service-key"), 0o644); err != nil {
		t.Fatal(err)
	}
	status, out := r.check(t)
	wantFail(t, status, out, "service key "+filepath.Join(r.te.dir, "service-key")+": service key")
	wantFail(t, status, out, "permissions 0644 are too open")
}

func TestCheckWrongServiceKey(t *testing.T) {
	engines(t, func(t *testing.T, te *testEnv) {
		r := newCheckRig(t, te)
		p := filepath.Join(te.dir, "service-key")
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		if err := generateServiceKey(p); err != nil {
			t.Fatal(err)
		}
		status, out := r.check(t)
		wantFail(t, status, out, "stored keys: the audit key is sealed to service public key")
	})
}

func TestCheckTokenFileReadable(t *testing.T) {
	r := newCheckRig(t, newTestEnv(t))
	p := filepath.Join(r.te.dir, "token")
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	status, out := r.check(t)
	wantFail(t, status, out, "token file "+p+": permissions 0644 are too open")
}

func TestCheckServerRefusesToken(t *testing.T) {
	r := newCheckRig(t, newTestEnv(t))
	writeFile(t, r.te.dir, "token", []byte(strings.Repeat("cd", 32)))
	status, out := r.check(t)
	wantFail(t, status, out, "server "+r.srv.apiURL()+": refuses the token (GET ")
	if !strings.Contains(out, "HTTP 403") {
		t.Errorf("the failure does not give the server's answer:\n%s", out)
	}
}

func TestCheckServerUntrusted(t *testing.T) {
	r := newCheckRig(t, newTestEnv(t))
	r.worker = fmt.Sprintf("[worker]\napi_url = %q\ntoken_file = \"token\"\n", r.srv.apiURL())
	r.write(t)
	status, out := r.check(t)
	wantFail(t, status, out, "certificate signed by unknown authority")
}

func TestCheckPcscdUnreachable(t *testing.T) {
	r := newCheckRig(t, newTestEnv(t))
	writeFile(t, r.te.dir, "pin", []byte("123456\n"))
	r.relay += "[yubikey]\npin_file = \"pin\"\n"
	r.write(t)
	t.Setenv("PCSCLITE_CSOCK_NAME", filepath.Join(r.te.dir, "no-pcscd.comm"))
	status, out := r.check(t)
	wantFail(t, status, out, "pcscd: pcscd is not running")
	if !strings.Contains(out, "OK  [yubikey] pin_file") {
		t.Errorf("the PIN file is not checked:\n%s", out)
	}
}

func TestCheckRelayKeyMissing(t *testing.T) {
	r := newCheckRig(t, newTestEnv(t))
	if err := os.Remove(filepath.Join(r.te.dir, "result.key")); err != nil {
		t.Fatal(err)
	}
	status, out := r.check(t)
	wantFail(t, status, out, "[relay] result_key_file: relay key: open ")
}

func TestCheckBadConfiguration(t *testing.T) {
	te := newTestEnv(t)
	te.writeConfig(t, "database = \"signing.sqlite3\"\n")
	writeFile(t, te.dir, "signing.toml", []byte("database = \"signing.sqlite3\"\nservice_key = []\n"))
	status, stdout, stderr := te.run(t, "check")
	wantFail(t, status, stdout+stderr, "configuration: configuration "+te.configPath+":2: unknown key \"service_key\"")
}

// TestCheckDatabaseReadOnlyPostgres: a database this user may read but not
// write (here: read-only transactions by default) fails the write check.
func TestCheckDatabaseReadOnlyPostgres(t *testing.T) {
	te := newPostgresTestEnv(t)
	newCheckRig(t, te)
	db := rawDB(t, te.cfg.Database)
	var name string
	if err := db.QueryRow("SELECT current_database()").Scan(&name); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("ALTER DATABASE " + name + " SET default_transaction_read_only = on"); err != nil {
		t.Fatal(err)
	}
	status, stdout, stderr := te.run(t, "check")
	wantFail(t, status, stdout+stderr, "not writable by this user: keys: ")
	wantFail(t, status, stdout+stderr, "read-only transaction")
}

// TestCheckDatabaseReadOnlySQLite: a database file, or its directory, that
// the user cannot write fails the write check. As root, check runs as
// nobody, for whom file modes count.
func TestCheckDatabaseReadOnlySQLite(t *testing.T) {
	for _, tc := range []struct {
		name        string
		file, dir   os.FileMode
		want, want2 string
	}{
		{"file", 0o400, 0o700, "not writable by this user: ", "readonly database"},
		{"directory", 0o600, 0o500, "not writable by this user: directory ", "permission denied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, runCheck := checkAsUser(t)
			if err := generateServiceKey(filepath.Join(dir, "service-key")); err != nil {
				t.Fatal(err)
			}
			te := &testEnv{dir: dir, configPath: filepath.Join(dir, "signing.toml")}
			te.writeConfig(t, "database = \"signing.sqlite3\"\nservice_keys = [\"service-key\"]\n")
			te.mustRun(t, "generate-key", "--purpose", "openpgp", "--description", "Check <check@example.org>")
			status, out := runCheck(te.configPath)
			if status != exitOK {
				t.Fatalf("before: exit %d:\n%s", status, out)
			}
			if err := os.Chmod(filepath.Join(dir, "signing.sqlite3"), tc.file); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, tc.dir); err != nil {
				t.Fatal(err)
			}
			defer os.Chmod(dir, 0o700)
			status, out = runCheck(te.configPath)
			wantFail(t, status, out, tc.want)
			wantFail(t, status, out, tc.want2)
		})
	}
}

// checkAsUser returns a directory for a set-up and a function running
// check on it: in this process, or as root, as user nobody in a process of
// its own (after handing the directory to nobody).
func checkAsUser(t *testing.T) (string, func(config string) (int, string)) {
	t.Helper()
	if os.Geteuid() != 0 {
		dir := t.TempDir()
		return dir, func(config string) (int, string) {
			te := &testEnv{dir: dir, configPath: config}
			status, stdout, stderr := te.run(t, "check")
			return status, stdout + stderr
		}
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("running as root, and there is no user nobody to run check as")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("running as root, and setpriv (util-linux) is not installed")
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	// A directory nobody can reach, holding a copy of this test binary.
	top, err := os.MkdirTemp("", "debusine-signing-check-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(top) })
	if err := os.Chmod(top, 0o755); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(top, "debusine-signing.test")
	copyFile(t, exe, bin)
	dir := filepath.Join(top, "set-up")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir, func(config string) (int, string) {
		filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error { return os.Lchown(p, uid, gid) })
		cmd := exec.Command("setpriv", "--reuid="+nobody.Uid, "--regid="+nobody.Gid, "--clear-groups", "--",
			bin, "-test.run=^TestCheckSubprocess$")
		cmd.Env = append(os.Environ(), "DEBUSINE_SIGNING_TEST_CHECK="+config, "HOME="+dir)
		out, err := cmd.CombinedOutput()
		status := cmd.ProcessState.ExitCode()
		if err != nil && status < 0 {
			t.Fatalf("check as nobody: %v\n%s", err, out)
		}
		return status, string(out)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestCheckSubprocess is check run by checkAsUser in a process of its own.
func TestCheckSubprocess(t *testing.T) {
	config := os.Getenv("DEBUSINE_SIGNING_TEST_CHECK")
	if config == "" {
		t.Skip("run by checkAsUser only")
	}
	os.Exit(run([]string{"--config", config, "check"}, os.Stdout, os.Stdout))
}

// TestCheckAuditTail: check verifies the newest rows (here all of them),
// --full the whole log; a row changed behind the triggers' back (dropped to
// do it) is named, and only once the window reaches it.
func TestCheckAuditTail(t *testing.T) {
	te := newTestEnv(t)
	for i := 0; i < 3; i++ {
		te.mustRun(t, "generate-key", "--purpose", "openpgp", "--description", fmt.Sprintf("Key %d <k%d@example.org>", i, i))
	}
	db := rawDB(t, te.cfg.Database)
	if _, err := db.Exec(`DROP TRIGGER audit_log_no_update; UPDATE audit_log SET data = '{}' WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	st := te.store(t)
	for n, want := range map[int]string{1: "", 2: "", 3: "audit log broken at row 1: its contents do not match its hash"} {
		checked, err := st.verifyAuditTail(n)
		if want == "" && (err != nil || checked != n) || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("newest %d rows: %d checked, %v; want %q", n, checked, err, want)
		}
	}
	for _, args := range [][]string{{"check"}, {"check", "--full"}} {
		status, stdout, stderr := te.run(t, args...)
		wantFail(t, status, stdout+stderr, "audit log: audit log broken at row 1: its contents do not match its hash")
		wantFail(t, status, stdout+stderr, "trigger audit_log_no_update is missing")
	}
}

// TestCheckYubiKey: with a key on the virtual YubiKey, check reaches pcscd
// and finds the token; pulled out, the key's own line fails.
func TestCheckYubiKey(t *testing.T) {
	card := startVirtualYubiKey(t, testTokenSerial)
	te := newTestEnv(t)
	writeFile(t, te.dir, "pin", []byte("123456\n"))
	te.writeConfig(t, "database = \"signing.sqlite3\"\nservice_keys = [\"service-key\"]\n[yubikey]\npin_file = \"pin\"\n")
	st := te.store(t)
	_, cert := loadTokenKey(t, card, 0x9c, 1, false)
	fpr, err := registerYubiKeyKey(st, testTokenSerial, 0x9c, "Token key", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}))
	if err != nil {
		t.Fatal(err)
	}
	resetTokenPool()
	status, stdout, stderr := te.run(t, "check")
	if status != exitOK || !strings.Contains(stdout, "OK  pcscd at ") || !strings.Contains(stdout, "OK  key uefi:"+fpr+": its token is connected") {
		t.Fatalf("token plugged in: exit %d:\n%s%s", status, stdout, stderr)
	}
	resetTokenPool()
	card.remove()
	status, stdout, stderr = te.run(t, "check")
	wantFail(t, status, stdout+stderr, "key uefi:"+fpr+": ")
}

// TestCheckEmptyDatabase: an empty database (a PostgreSQL database made
// for the store, or a SQLite file) is fine, and stays empty.
func TestCheckEmptyDatabase(t *testing.T) {
	engines(t, func(t *testing.T, te *testEnv) {
		if !isPostgres(te.cfg.Database) {
			writeFile(t, te.dir, "signing.sqlite3", nil)
		}
		status, stdout, stderr := te.run(t, "check")
		if status != exitOK || !strings.Contains(stdout, ": empty; the first command that opens the store creates the schema") {
			t.Fatalf("exit %d:\n%s%s", status, stdout, stderr)
		}
		eng := sqliteEngine
		if isPostgres(te.cfg.Database) {
			eng = postgresEngine
		}
		if v, err := eng.version(rawDB(t, te.cfg.Database)); err != nil || v != 0 {
			t.Errorf("after check: schema version %d, %v", v, err)
		}
	})
}

// TestCheckAuditKeyUnpinned: the audit key's pin missing beside the
// service key fails, with the line to pin; check does not write it.
func TestCheckAuditKeyUnpinned(t *testing.T) {
	r := newCheckRig(t, newTestEnv(t))
	pin := filepath.Join(r.te.dir, "service-key"+pinSuffix)
	if err := os.Remove(pin); err != nil {
		t.Fatal(err)
	}
	status, out := r.check(t)
	wantFail(t, status, out, "key row audit key: not pinned beside any configured service key; write this line to "+pin)
	if _, err := os.Stat(pin); err == nil {
		t.Error("check wrote the pin")
	}
}
