package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCommandsHardened runs every command that may hold a secret, the
// relay's four among them, in a process of its own, and checks that it
// left the process non-dumpable with a core size limit of 0, even when it
// failed early: the hardening comes before the command does anything.
func TestCommandsHardened(t *testing.T) {
	var limit unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_CORE, &limit); err != nil {
		t.Skip(err)
	}
	te := newTestEnv(t)
	var lines [][]string
	for _, c := range commands {
		// Subcommands ("relay fetch") are entries of their own.
		if c.secrets {
			lines = append(lines, strings.Fields(c.name))
		}
	}
	for _, name := range []string{"relay", "worker", "reencrypt-keys", "import-key", "import-debusine-db", "register-pkcs11-static-key",
		"register-yubikey-key", "generate-key", "generate-service-key", "sign"} {
		if !strings.Contains(fmt.Sprint(lines), "["+name) {
			t.Errorf("command %s is not marked as holding secrets", name)
		}
	}
	for _, args := range lines {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		var stderr bytes.Buffer
		cmd := cliCommand(ctx, te, args...)
		cmd.Stderr = &stderr
		cmd.Run()
		cancel()
		var dumpable int
		var cur, max uint64
		for line := range strings.Lines(stderr.String()) {
			fmt.Sscanf(line, "dumpable %d core %d %d", &dumpable, &cur, &max)
		}
		if !strings.Contains(stderr.String(), "dumpable ") || dumpable != 0 || cur != 0 || max != 0 {
			t.Errorf("%v: left dumpable %d, core limit %d/%d (started with %d/%d):\n%s", args, dumpable, cur, max, limit.Cur, limit.Max, stderr.String())
		}
	}
}
