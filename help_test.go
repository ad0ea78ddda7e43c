package main

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestHelpFits80Columns: the program's help and every command's, asked
// for either way, exits 0 and fits an 80-column terminal.
func TestHelpFits80Columns(t *testing.T) {
	calls := [][]string{{"help"}, {"--help"}}
	for _, c := range commands {
		name := strings.Fields(c.name)
		calls = append(calls, append([]string{"help"}, name...), append(name, "--help"))
	}
	for _, args := range calls {
		var out, errOut bytes.Buffer
		if status := run(args, &out, &errOut); status != exitOK {
			t.Errorf("%v: exit %d: %s", args, status, errOut.String())
		}
		text := out.String() + errOut.String()
		if !strings.Contains(text, "usage: debusine-signing ") {
			t.Errorf("%v: no usage line:\n%s", args, text)
		}
		for _, line := range strings.Split(text, "\n") {
			if n := utf8.RuneCountInString(strings.ReplaceAll(line, "\t", "        ")); n > helpWidth {
				t.Errorf("%v: a line of %d columns:\n%s", args, n, line)
			}
		}
	}
}

// TestHelpSameBothWays: "help sign" and "sign --help" print the same help
// on stdout, with the command's options.
func TestHelpSameBothWays(t *testing.T) {
	var a, b, errOut bytes.Buffer
	run([]string{"help", "relay", "fetch"}, &a, &errOut)
	run([]string{"relay", "fetch", "--help"}, &b, &errOut)
	if a.String() != b.String() || !strings.Contains(a.String(), "  --wait duration\n") {
		t.Errorf("help relay fetch:\n%s\nrelay fetch --help:\n%s", a.String(), b.String())
	}
}
