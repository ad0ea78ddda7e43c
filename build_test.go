package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

func TestVersionOf(t *testing.T) {
	rev := "4103c517c5ab8471d798db4a9afd3af106f77613"
	for _, tc := range []struct {
		version, modified, want string
	}{
		{"v0.0.0-20261125220953-4103c517c5ab", "false", "v0.0.0-20261125220953-4103c517c5ab"},
		{"v0.0.0-20261125220953-4103c517c5ab+dirty", "true", "v0.0.0-20261125220953-4103c517c5ab+dirty"},
		{"v1.2.0", "false", "v1.2.0 " + rev},
		{"(devel)", "true", "(devel) " + rev + "+modified"},
		{"", "", "(devel)"},
	} {
		bi := &debug.BuildInfo{Main: debug.Module{Version: tc.version}}
		if tc.modified != "" {
			bi.Settings = []debug.BuildSetting{{Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: tc.modified}}
		}
		if got := versionOf(bi); got != tc.want {
			t.Errorf("%q, modified %s: %q, want %q", tc.version, tc.modified, got, tc.want)
		}
	}
}

// TestReproducibleBuild builds the committed tree twice, from two clones in
// two directories, with the README's build command, and compares the
// binaries byte for byte; the binary names the commit it was built from.
func TestReproducibleBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the program twice")
	}
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	out, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skip("not a git checkout")
	}
	rev := strings.TrimSpace(string(out))
	src, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	var bins [][]byte
	for _, dir := range []string{filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "elsewhere", "debusine-signing")} {
		for _, args := range [][]string{
			{"clone", "--quiet", "--no-checkout", src, dir},
			{"-C", dir, "checkout", "--quiet", rev},
		} {
			if out, err := exec.Command("git", args...).CombinedOutput(); err != nil {
				t.Fatalf("git %v: %v\n%s", args, err, out)
			}
		}
		bin := filepath.Join(dir, "debusine-signing")
		build := exec.Command("go", "build", "-trimpath", "-buildvcs=auto", "-o", bin, ".")
		build.Dir = dir
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build in %s: %v\n%s", dir, err, out)
		}
		data, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		bins = append(bins, data)
		report, err := exec.Command(bin, "version").Output()
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"debusine-signing v0.0.0-", rev[:12], "build vcs.revision=" + rev, "build vcs.modified=false", "build CGO_ENABLED=0", "build -trimpath=true"} {
			if !strings.Contains(string(report), want) {
				t.Errorf("version report lacks %q:\n%s", want, report)
			}
		}
	}
	if !bytes.Equal(bins[0], bins[1]) {
		t.Error("two builds of the same commit in two directories differ")
	}
}
