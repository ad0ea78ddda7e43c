package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestStartPCSCDMirror: .ci/start-pcscd takes the Debian archive for the
// trixie root from the machine's apt sources, deb822 or one-line, skipping
// the security archive, and fails clearly without one, falling back on no
// host of its own.
func TestStartPCSCDMirror(t *testing.T) {
	if _, err := exec.LookPath("apt-get"); err != nil {
		t.Skip("apt-get not installed")
	}
	for _, tc := range []struct {
		name, file, text, want string
	}{
		{"deb822", "sources.list.d/debian.sources", `Types: deb
URIs: http://security.example.org/debian-security
Suites: trixie-security
Components: main

Types: deb deb-src
URIs: https://archive.example.org/debian http://other.example.org/debian
Suites: trixie trixie-updates
Components: main
`, "https://archive.example.org/debian/"},
		{"one-line", "sources.list", `# the archive
deb-src http://src.example.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://security.example.org/debian-security bookworm-security main
deb [ arch=amd64 ] http://line.example.org/debian bookworm main
`, "http://line.example.org/debian/"},
		{"none", "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			etc := filepath.Join(dir, "etc")
			os.MkdirAll(filepath.Join(etc, "sources.list.d"), 0o755)
			if tc.file != "" {
				writeFile(t, etc, tc.file, []byte(tc.text))
			}
			conf := writeFile(t, dir, "apt.conf", []byte(`Dir::Etc "`+etc+`";
Dir::State "`+dir+`";
Dir::Cache "`+dir+`";
`))
			cmd := exec.Command("bash", ".ci/start-pcscd", "mirror")
			cmd.Env = append(os.Environ(), "APT_CONFIG="+conf)
			out, err := cmd.Output()
			got := strings.TrimSpace(string(out))
			if tc.want == "" {
				ee, ok := err.(*exec.ExitError)
				if !ok || got != "" || !strings.Contains(string(ee.Stderr), "no Debian archive in this machine's apt sources") {
					t.Errorf("no sources: %v, printed %q", err, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("%v, printed %q; want %q", err, got, tc.want)
			}
		})
	}
}

// mirrorHosts matches the host names of package archives and registries,
// which belong in a machine's configuration, never in the repository.
var mirrorHosts = regexp.MustCompile(`\b((deb|ftp|snapshot|security|archive|httpredir|cdn-fastly\.deb|ftp\.[a-z]{2})\.debian\.org|(proxy|sum|index)\.golang\.org|[a-z.]*archive\.ubuntu\.com|registry\.npmjs\.org|pypi\.org|crates\.io)\b`)

// TestNoMirrorHostNames: no committed file (scripts, tests, docs) names a
// package archive's or registry's host.
func TestNoMirrorHostNames(t *testing.T) {
	out, err := exec.Command("git", "ls-files", "-z").Output()
	if err != nil {
		t.Skip("not a git checkout")
	}
	for name := range strings.SplitSeq(strings.TrimRight(string(out), "\x00"), "\x00") {
		if name == "go.sum" || name == "go.mod" {
			continue
		}
		data, err := os.ReadFile(name)
		if err != nil {
			continue // deleted in the work tree
		}
		for i, line := range strings.Split(string(data), "\n") {
			if m := mirrorHosts.FindString(line); m != "" {
				t.Errorf("%s:%d names the archive or registry host %s: take it from the machine's configuration", name, i+1, m)
			}
		}
	}
}
