package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCLIChild runs the command line in CLI_CHILD_ARGS (JSON) in its own
// process, prints whether the process was left dumpable, its core size
// limits, and on the last line of standard error how long it took, and
// exits with its status: the tests' way to time a command that might hang,
// or to kill one.
func TestCLIChild(t *testing.T) {
	enc := os.Getenv("CLI_CHILD_ARGS")
	if enc == "" {
		t.Skip("run by other tests")
	}
	var args []string
	if err := json.Unmarshal([]byte(enc), &args); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	status := run(args, os.Stdout, os.Stderr)
	elapsed := time.Since(start)
	dumpable, _ := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	var core unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_CORE, &core)
	fmt.Fprintf(os.Stderr, "\ndumpable %d core %d %d\nelapsed %d ms\n", dumpable, core.Cur, core.Max, elapsed.Milliseconds())
	os.Exit(status)
}

// cliCommand is the command line args against te's configuration, as a
// process of its own.
func cliCommand(ctx context.Context, te *testEnv, args ...string) *exec.Cmd {
	enc, _ := json.Marshal(append([]string{"--config", te.configPath}, args...))
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCLIChild$")
	cmd.Env = append(os.Environ(), "CLI_CHILD_ARGS="+string(enc))
	return cmd
}

// TestInputsNotRegularRefused: a FIFO without a writer, /dev/zero, a
// directory and an oversized key file are refused with a clear error, in
// well under a second of the command's own time (a hang is killed after
// 20 s and fails the test).
func TestInputsNotRegularRefused(t *testing.T) {
	te := newTestEnv(t)
	uefiFpr := strings.TrimSpace(te.mustRun(t, "generate-key", "--purpose", "uefi", "--description", "inputs"))
	pgpFpr := strings.TrimSpace(te.mustRun(t, "generate-key", "--purpose", "openpgp", "--description", "Inputs <inputs@example.org>"))
	st := te.store(t)
	k, err := st.Key(purposeUEFI, uefiFpr)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	cert := writeFile(t, te.dir, "cert.pem", k.PublicKey)
	fifo := filepath.Join(te.dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := writeFile(t, te.dir, "big.pem", bytes.Repeat([]byte("A"), maxKeyFileSize+1))
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"sign", "--purpose", "uefi", "--key", uefiFpr, fifo}, "not a regular file (a FIFO)"},
		{[]string{"sign", "--purpose", "uefi", "--key", uefiFpr, "/dev/zero"}, "not a regular file (a device)"},
		{[]string{"sign", "--purpose", "uefi", "--key", uefiFpr, "--mode", "attached", te.dir}, "not a regular file (a directory)"},
		{[]string{"import-key", "--purpose", "uefi", "--private-key", "/dev/zero", "--certificate", cert}, "private key: /dev/zero: not a regular file (a device)"},
		{[]string{"import-key", "--purpose", "uefi", "--private-key", fifo, "--certificate", cert}, "not a regular file (a FIFO)"},
		{[]string{"import-key", "--purpose", "uefi", "--private-key", big, "--certificate", cert}, "more than the 1048576 this accepts"},
		{[]string{"import-key", "--purpose", "uefi", "--private-key", cert, "--certificate", "/dev/zero"}, "certificate: /dev/zero: not a regular file"},
		{[]string{"sign", "--purpose", "openpgp", "--key", pgpFpr, "/dev/zero"}, "not a regular file (a device)"},
		{[]string{"sign", "--purpose", "openpgp", "--key", pgpFpr, fifo}, "not a regular file (a FIFO)"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		var stderr bytes.Buffer
		cmd := cliCommand(ctx, te, tc.args...)
		cmd.Stderr = &stderr
		err := cmd.Run()
		cancel()
		var ms int
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		fmt.Sscanf(lines[len(lines)-1], "elapsed %d ms", &ms)
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitError || !strings.Contains(stderr.String(), tc.want) || ms >= 1000 {
			t.Errorf("%v: %v, %d ms, stderr %q; want exit 3 within a second naming %q", tc.args, err, ms, stderr.String(), tc.want)
		}
	}
	if status, _, stderr := te.run(t, "--config", fifo, "keys"); status != exitError || !strings.Contains(stderr, "configuration: "+fifo+": not a regular file (a FIFO)") {
		t.Errorf("--config FIFO: exit %d %q", status, stderr)
	}
	if n := len(auditRows(t, te.store(t), AuditFilter{Fingerprint: uefiFpr})); n != 1 {
		t.Errorf("%d audit rows for the UEFI key, want only its generate row", n)
	}
}

// TestFilesNotRegularRefused: certificates, bundles, results, and the
// password, key and token files named by the configuration are refused with
// a clear error when they are a FIFO, standard input (a pipe nobody writes
// to) or /dev/zero, within a second of the command's own time; files
// holding secrets are also refused when group or others can read them.
func TestFilesNotRegularRefused(t *testing.T) {
	te := newTestEnv(t)
	fpr := strings.TrimSpace(te.mustRun(t, "generate-key", "--purpose", "uefi", "--description", "files"))
	st := te.store(t)
	k, err := st.Key(purposeUEFI, fpr)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	dir := te.dir
	writeFile(t, dir, "uefi.pem", k.PublicKey)
	bundlePub, err := generateNoteKey(filepath.Join(dir, "bundle.key"), "relay.example.org")
	if err != nil {
		t.Fatal(err)
	}
	resultPub, err := generateNoteKey(filepath.Join(dir, "result.key"), "offline.example.org")
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := newSecret()
	writeFile(t, dir, "token", []byte(tok+"\n"))
	writeFile(t, dir, "open-token", []byte(tok+"\n"))
	os.Chmod(filepath.Join(dir, "open-token"), 0o644)
	writeFile(t, dir, "open-password", []byte("secret\n"))
	os.Chmod(filepath.Join(dir, "open-password"), 0o640)
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// config writes a configuration of its own, for one case.
	n := 0
	config := func(format string, args ...any) *testEnv {
		n++
		c := &testEnv{dir: dir, configPath: filepath.Join(dir, fmt.Sprintf("config-%d.toml", n))}
		writeFile(t, dir, filepath.Base(c.configPath), fmt.Appendf(nil, format, args...))
		return c
	}
	connected := func(bundleKey, publicKey string) *testEnv {
		return config(`[worker]
api_url = "https://127.0.0.1:9/api"
token_file = "token"
[relay]
state_dir = "state"
bundle_key_file = %q
result_public_key = %q
workers = 1
[[relay.keys]]
purpose = "uefi"
fingerprint = %q
public_key_file = %q
`, bundleKey, resultPub, fpr, publicKey)
	}
	relay := connected("bundle.key", "uefi.pem")
	offline := config("database = \"signing.sqlite3\"\nservice_keys = [\"service-key\"]\n[relay]\nstate_dir = \"offline-state\"\nbundle_public_key = %q\nresult_key_file = \"result.key\"\n", bundlePub)
	postgres := func(passwordFile string) *testEnv {
		return config("database = \"postgresql:///signing?host=/nonexistent\"\ndatabase_password_file = %q\nservice_keys = [\"service-key\"]\n", passwordFile)
	}
	worker := func(token, activation string) *testEnv {
		return config("database = \"signing.sqlite3\"\nservice_keys = [\"service-key\"]\n[worker]\napi_url = \"https://127.0.0.1:9/api\"\nfqdn = \"worker.example.org\"\ntoken_file = %q\nactivation_token_file = %q\n", token, activation)
	}
	register := []string{"register-yubikey-key", "--purpose", "uefi", "--serial", "12345678", "--slot", "9c", "--description", "x", "--certificate"}
	fetch := []string{"relay", "fetch", "--output", filepath.Join(dir, "bundle.tar")}
	tooOpen := "permissions 0644 are too open (readable by group or others); run chmod 600 " + filepath.Join(dir, "open-token")
	for _, tc := range []struct {
		te   *testEnv
		args []string
		want string
	}{
		{te, append(register, fifo), "certificate: " + fifo + ": not a regular file (a FIFO)"},
		{te, append(register, "/dev/stdin"), "certificate: /dev/stdin: not a regular file (a FIFO)"},
		{te, append(register, "/dev/zero"), "certificate: /dev/zero: not a regular file (a device)"},
		{offline, []string{"relay", "sign", fifo, "--output", filepath.Join(dir, "result.tar")}, "relay bundle: " + fifo + ": not a regular file (a FIFO)"},
		{offline, []string{"relay", "sign", "/dev/stdin", "--output", filepath.Join(dir, "result.tar")}, "relay bundle: /dev/stdin: not a regular file (a FIFO)"},
		{relay, []string{"relay", "complete", fifo}, "relay result: " + fifo + ": not a regular file (a FIFO)"},
		{relay, []string{"relay", "complete", "/dev/stdin"}, "relay result: /dev/stdin: not a regular file (a FIFO)"},
		{connected("fifo", "uefi.pem"), fetch, "relay key: " + fifo + ": not a regular file (a FIFO)"},
		{connected("bundle.key", "fifo"), fetch, "public_key_file: " + fifo + ": not a regular file (a FIFO)"},
		{connected("bundle.key", "/dev/zero"), fetch, "public_key_file: /dev/zero: not a regular file (a device)"},
		{postgres(fifo), []string{"keys"}, "database password file: " + fifo + ": not a regular file (a FIFO)"},
		{postgres("open-password"), []string{"keys"}, "database password file " + filepath.Join(dir, "open-password") + ": permissions 0640 are too open"},
		{worker("open-token", ""), []string{"worker", "--once"}, tooOpen},
		{worker("no-token", "open-token"), []string{"worker", "--once"}, tooOpen},
		{worker("fifo", ""), []string{"worker", "--once"}, fifo + ": not a regular file (a FIFO)"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		// Standard input is a pipe that stays open and silent.
		stdin, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd := cliCommand(ctx, tc.te, tc.args...)
		cmd.Stdin, cmd.Stderr = stdin, &stderr
		err = cmd.Run()
		cancel()
		stdin.Close()
		w.Close()
		var ms int
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		fmt.Sscanf(lines[len(lines)-1], "elapsed %d ms", &ms)
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitError || !strings.Contains(stderr.String(), tc.want) || ms >= 1000 {
			t.Errorf("%v: %v, %d ms, stderr %q; want exit 3 within a second naming %q", tc.args, err, ms, stderr.String(), tc.want)
		}
	}
}
