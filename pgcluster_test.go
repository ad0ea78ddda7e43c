package main

import (
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The PostgreSQL tests run against a real server: the one named by
// DEBUSINE_SIGNING_TEST_POSTGRES (a conninfo for a role that may create
// databases), or else a throw-away cluster the tests start themselves from
// Debian's postgresql package (/usr/lib/postgresql/*/bin), listening only
// on a Unix socket in a temporary directory, and stop at the end. Each test
// gets a database of its own. Without either, the tests skip.

// pgPasswordRole is the role of the tests' own cluster that must give a
// password.
const pgPasswordRole = "signing_pw"

// pgCluster is the server the tests use.
type pgCluster struct {
	admin string // conninfo of the maintenance database, without dbname
	// For a cluster of our own (restartable): its binaries, data directory,
	// and the command prefix that runs them as the cluster's owner.
	bin, data, log string
	asOwner        []string
}

var testPG struct {
	once    sync.Once
	c       *pgCluster
	skip    string
	cleanup func()
	dbs     atomic.Int64
}

// TestMain stops the throw-away cluster, if a test started one, and
// removes litewitness's build, if a test made one.
func TestMain(m *testing.M) {
	code := m.Run()
	if testPG.cleanup != nil {
		testPG.cleanup()
	}
	if litewitnessBuild.dir != "" {
		os.RemoveAll(litewitnessBuild.dir)
	}
	os.Exit(code)
}

// testPostgres returns the test server, starting it on first use, or skips.
func testPostgres(t testing.TB) *pgCluster {
	t.Helper()
	testPG.once.Do(func() {
		if conninfo := os.Getenv("DEBUSINE_SIGNING_TEST_POSTGRES"); conninfo != "" {
			testPG.c = &pgCluster{admin: conninfo}
			return
		}
		testPG.c, testPG.skip = startPGCluster()
	})
	if testPG.c == nil {
		t.Skip(testPG.skip)
	}
	return testPG.c
}

// startPGCluster runs initdb and pg_ctl start in a temporary directory, as
// user postgres when running as root (initdb refuses root).
func startPGCluster() (*pgCluster, string) {
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(bins) == 0 {
		return nil, "no PostgreSQL: install Debian's postgresql package or set DEBUSINE_SIGNING_TEST_POSTGRES"
	}
	sort.Strings(bins)
	c := &pgCluster{bin: filepath.Dir(bins[len(bins)-1])}
	dir, err := os.MkdirTemp("", "debusine-signing-pg-")
	if err != nil {
		return nil, "no PostgreSQL: " + err.Error()
	}
	owner := "postgres"
	if os.Geteuid() == 0 {
		u, err := user.Lookup(owner)
		if err != nil {
			os.RemoveAll(dir)
			return nil, "no PostgreSQL: running as root and there is no user postgres to own a cluster"
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, "no PostgreSQL: " + err.Error()
		}
		c.asOwner = []string{"setpriv", "--reuid=" + u.Uid, "--regid=" + u.Gid, "--init-groups", "--"}
	} else {
		u, err := user.Current()
		if err != nil {
			os.RemoveAll(dir)
			return nil, "no PostgreSQL: " + err.Error()
		}
		owner = u.Username
	}
	os.Chmod(dir, 0o755)
	c.data = filepath.Join(dir, "data")
	if out, err := c.run("initdb", "--pgdata", c.data, "--username", owner, "--auth", "trust", "--no-sync", "--encoding", "UTF8", "--locale", "C"); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Sprintf("no PostgreSQL: initdb: %v: %s", err, out)
	}
	// Only a Unix socket in dir. Commits are durable (fsync stays on), as
	// SQLite's are with synchronous=FULL, so that the benchmarks compare
	// like with like.
	conf := fmt.Sprintf("listen_addresses = ''\nunix_socket_directories = '%s'\nlogging_collector = off\n", dir)
	f, err := os.OpenFile(filepath.Join(c.data, "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err == nil {
		_, err = f.WriteString(conf)
		f.Close()
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, "no PostgreSQL: " + err.Error()
	}
	// One role logs in with a password, to test database_password_file.
	hba := filepath.Join(c.data, "pg_hba.conf")
	rules, err := os.ReadFile(hba)
	if err == nil {
		err = os.WriteFile(hba, append([]byte("local all "+pgPasswordRole+" scram-sha-256\n"), rules...), 0o600)
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, "no PostgreSQL: " + err.Error()
	}
	c.log = filepath.Join(dir, "log")
	if out, err := c.run("pg_ctl", "--pgdata", c.data, "--log", c.log, "--wait", "start"); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "log"))
		os.RemoveAll(dir)
		return nil, fmt.Sprintf("no PostgreSQL: pg_ctl start: %v: %s %s", err, out, log)
	}
	testPG.cleanup = func() {
		c.run("pg_ctl", "--pgdata", c.data, "--mode", "immediate", "--wait", "stop")
		os.RemoveAll(dir)
	}
	c.admin = fmt.Sprintf("host=%s port=5432 user=%s", dir, owner)
	return c, ""
}

// run runs one of the cluster's programs as its owner.
func (c *pgCluster) run(name string, args ...string) ([]byte, error) {
	argv := append(append([]string{}, c.asOwner...), filepath.Join(c.bin, name))
	argv = append(argv, args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = "/"
	// pg_ctl start leaves the server running with the output it was given:
	// never wait for the server to close it.
	cmd.WaitDelay = 5 * time.Second
	return cmd.CombinedOutput()
}

// restart stops the server (fast: sessions are cut) and starts it again.
func (c *pgCluster) restart(t testing.TB) {
	t.Helper()
	if c.data == "" {
		t.Skip("restarting needs the tests' own cluster (DEBUSINE_SIGNING_TEST_POSTGRES is set)")
	}
	if out, err := c.run("pg_ctl", "--pgdata", c.data, "--log", c.log, "--mode", "fast", "--wait", "restart"); err != nil {
		t.Fatalf("pg_ctl restart: %v: %s", err, out)
	}
}

// stop and start split a restart, to act while the server is down.
func (c *pgCluster) stop(t testing.TB) {
	t.Helper()
	if c.data == "" {
		t.Skip("stopping needs the tests' own cluster (DEBUSINE_SIGNING_TEST_POSTGRES is set)")
	}
	if out, err := c.run("pg_ctl", "--pgdata", c.data, "--mode", "fast", "--wait", "stop"); err != nil {
		t.Fatalf("pg_ctl stop: %v: %s", err, out)
	}
}

func (c *pgCluster) start(t testing.TB) {
	t.Helper()
	if out, err := c.run("pg_ctl", "--pgdata", c.data, "--log", c.log, "--wait", "start"); err != nil {
		t.Fatalf("pg_ctl start: %v: %s", err, out)
	}
}

// newDatabase creates an empty database for one test and returns its
// conninfo; it is dropped when the test ends.
func (c *pgCluster) newDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("dst_%d_%d", os.Getpid(), testPG.dbs.Add(1))
	admin := c.adminDB(t)
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		t.Fatalf("CREATE DATABASE: %v", err)
	}
	t.Cleanup(func() {
		db, err := connectPostgres(c.admin+" dbname=postgres", "", false)
		if err != nil {
			return
		}
		defer db.Close()
		db.Exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)")
	})
	return c.admin + " dbname=" + name
}

func (c *pgCluster) adminDB(t testing.TB) *sql.DB {
	t.Helper()
	var db *sql.DB
	var err error
	// Right after a restart the server may still be starting.
	for i := 0; i < 50; i++ {
		if db, err = connectPostgres(c.admin+" dbname=postgres", "", false); err == nil {
			t.Cleanup(func() { db.Close() })
			return db
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("connecting to the test PostgreSQL: %v", err)
	return nil
}

// psql runs a psql script against conninfo and returns its output.
func psql(t testing.TB, conninfo, script string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("psql"); err != nil {
		t.Skip("psql is not installed")
	}
	cmd := exec.Command("psql", "--no-psqlrc", "--set", "ON_ERROR_STOP=1", "--quiet", "--tuples-only", "--no-align", "--dbname", conninfo, "--command", script)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// newPostgresTestEnv is newTestEnv with its store in a database of its own
// on the test PostgreSQL.
func newPostgresTestEnv(t testing.TB) *testEnv {
	t.Helper()
	conninfo := testPostgres(t).newDatabase(t)
	te := newTestEnv(t)
	te.writeConfig(t, fmt.Sprintf("database = %q\nservice_keys = [\"service-key\"]\n", conninfo))
	return te
}

// engines runs f once per store engine, as subtests named after them.
func engines(t *testing.T, f func(t *testing.T, te *testEnv)) {
	t.Run("SQLite", func(t *testing.T) { f(t, newTestEnv(t)) })
	t.Run("PostgreSQL", func(t *testing.T) { f(t, newPostgresTestEnv(t)) })
}
