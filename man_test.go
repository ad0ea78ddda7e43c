package main

import (
	"bytes"
	"encoding"
	"errors"
	"flag"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// The man pages' sources, for go-md2man (debian/rules turns them into
// pages). Each command has a section "## NAME" in debusine-signing(1) with
// every option as **--option**; each configuration key is **key** under
// "## [table]" (or "## [[table]]") in signing.toml(5), top-level keys under
// "## Top-level keys".
const (
	manCommands = "docs/man/debusine-signing.1.md"
	manConfig   = "docs/man/signing.toml.5.md"
)

// manSections splits a page at its "## " headings: heading -> text.
func manSections(t *testing.T, path string) (top string, sections map[string]string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sections = map[string]string{}
	parts := strings.Split("\n"+string(data), "\n## ")
	for _, p := range parts[1:] {
		heading, body, _ := strings.Cut(p, "\n")
		// A section ends at the next heading of any level.
		if i := strings.Index(body, "\n# "); i >= 0 {
			body = body[:i]
		}
		sections[strings.TrimSpace(heading)] = body
	}
	return parts[0], sections
}

// commandFlags asks a command for its help and returns its flag names.
func commandFlags(t *testing.T, c command) []string {
	t.Helper()
	e := &env{stdout: io.Discard, stderr: io.Discard}
	var h helpShown
	if err := c.run(e, []string{"--help"}); !errors.As(err, &h) {
		t.Fatalf("%s --help: %v, not its help (does it parse its flags with parseFlags?)", c.name, err)
	}
	var names []string
	h.fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	return names
}

func TestManPageCommands(t *testing.T) {
	top, sections := manSections(t, manCommands)
	for _, c := range commands {
		body, ok := sections[c.name]
		if !ok {
			t.Errorf("%s lacks the command %q: add a section \"## %s\" with its synopsis, what it does and its options", manCommands, c.name, c.name)
			continue
		}
		for _, f := range commandFlags(t, c) {
			if name := flagName(f); !strings.Contains(body, "**"+name+"**") {
				t.Errorf("%s lacks the option %s of %q: add **%s** to the section \"## %s\"", manCommands, name, c.name, name, c.name)
			}
		}
	}
	fs, _ := globalFlags(&env{stdout: io.Discard, stderr: io.Discard})
	fs.VisitAll(func(f *flag.Flag) {
		if !strings.Contains(top, "**--"+f.Name+"**") {
			t.Errorf("%s lacks the global option --%s: add **--%s** to its OPTIONS", manCommands, f.Name, f.Name)
		}
	})
	for _, h := range []string{"# OPTIONS", "# EXIT STATUS", "# FILES", "# ENVIRONMENT", "# SEE ALSO"} {
		if !strings.Contains(top, "\n"+h+"\n") {
			t.Errorf("%s lacks the section %q (before the commands)", manCommands, h)
		}
	}
	for _, v := range programEnvironment(t) {
		if !strings.Contains(top, "**"+v+"**") {
			t.Errorf("%s lacks the environment variable %s, which the program reads: add **%s** to its ENVIRONMENT", manCommands, v, v)
		}
	}
}

// programEnvironment lists the environment variables the program's
// source reads by name.
func programEnvironment(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`os\.(?:Getenv|LookupEnv)\("([A-Za-z0-9_]+)"\)`)
	seen := map[string]bool{}
	var vars []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllSubmatch(data, -1) {
			if v := string(m[1]); !seen[v] {
				seen[v] = true
				vars = append(vars, v)
			}
		}
	}
	return vars
}

func TestManPageConfiguration(t *testing.T) {
	_, sections := manSections(t, manConfig)
	for _, k := range configKeys(reflect.TypeOf(Config{}), "", false) {
		heading := "Top-level keys"
		switch {
		case k.array:
			heading = "[[" + k.table + "]]"
		case k.table != "":
			heading = "[" + k.table + "]"
		}
		if !strings.Contains(sections[heading], "**"+k.name+"**") {
			t.Errorf("%s lacks the configuration key %q: add **%s** under \"## %s\"", manConfig, k.path(), k.name, heading)
		}
	}
}

type configKey struct {
	table, name string
	array       bool // the table is an array of tables
}

func (k configKey) path() string {
	if k.table == "" {
		return k.name
	}
	return k.table + "." + k.name
}

var textUnmarshaler = reflect.TypeOf((*encoding.TextUnmarshaler)(nil)).Elem()

// configKeys walks a configuration struct's toml tags: a struct field is a
// table, a slice of structs an array of tables, anything else a key.
func configKeys(t reflect.Type, table string, array bool) []configKey {
	var keys []configKey
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "" || name == "-" {
			continue
		}
		sub := name
		if table != "" {
			sub = table + "." + name
		}
		ft := f.Type
		switch {
		case ft.Kind() == reflect.Struct && !reflect.PointerTo(ft).Implements(textUnmarshaler):
			keys = append(keys, configKeys(ft, sub, false)...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			keys = append(keys, configKeys(ft.Elem(), sub, true)...)
		default:
			keys = append(keys, configKey{table: table, name: name, array: array})
		}
	}
	return keys
}

// TestManPagesRender: go-md2man makes pages of both sources, and man
// formats them without a warning, within 80 columns.
func TestManPagesRender(t *testing.T) {
	if _, err := exec.LookPath("go-md2man"); err != nil {
		t.Skip("go-md2man is not installed")
	}
	if _, err := exec.LookPath("man"); err != nil {
		t.Skip("man is not installed")
	}
	for _, src := range []string{manCommands, manConfig} {
		page := filepath.Join(t.TempDir(), strings.TrimSuffix(filepath.Base(src), ".md"))
		if out, err := exec.Command("go-md2man", "-in", src, "-out", page).CombinedOutput(); err != nil {
			t.Fatalf("go-md2man %s: %v\n%s", src, err, out)
		}
		cmd := exec.Command("man", "--warnings", "-l", page)
		cmd.Env = append(os.Environ(), "MANWIDTH=80", "LC_ALL=C.UTF-8", "MAN_KEEP_FORMATTING=0")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil || stderr.Len() > 0 {
			t.Errorf("man -l %s: %v\n%s", page, err, stderr.String())
		}
		if len(out) < 1000 {
			t.Errorf("man -l %s: only %d bytes", page, len(out))
		}
	}
}
